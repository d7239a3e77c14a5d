/* The app probes of the health port (proxy/health.h; docs/internals/health.md).
 *
 * App probes. The injector replaces each HTTP probe of an app container by
 * GET :15020/app-health/<container>/<livez|readyz|startupz> and records the
 * original in the env REMORA_APP_PROBERS:
 *   {"/app-health/web/readyz": {"httpGet": {"port": 8080, "path": "/ready",
 *     "scheme": "HTTP", "httpHeaders": [{"name": "X", "value": "y"}]},
 *    "timeoutSeconds": 2}}
 * A probe is sent on as kubelet would have sent it, to 127.0.0.1:<port>
 * (loopback is never captured, so neither the inbound listener nor strict
 * mTLS stands in the way), over TLS without verification when the scheme is
 * HTTPS (kubelet does not verify either). Only the status line is read:
 * kubelet looks at nothing else. 2xx and 4xx/5xx are passed back as they
 * are, 3xx becomes 200 (success for kubelet, and a Location pointing at the
 * app's port must not send kubelet there), anything else (no answer, a
 * timeout, a malformed status line) is 503 with the reason in the body.
 *
 * The request goes out on px_httpc (proxy/httpc.h) with status_only: llhttp
 * reads the status line, px_tls_conf_new_unverified_client is the TLS. The
 * fields copied from kubelet's request leave out http.c's hop-by-hop list
 * (px_http_is_hop_by_hop), whatever its Connection field names, and fields
 * that are not valid HTTP (px_http_valid_name / _value). */
#include "proxy/health.h"

#include <errno.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/health_int.h"
#include "proxy/http.h"
#include "proxy/httpc.h"
#include "proxy/tls.h"

/* One probe in flight: kubelet's request waits for the app's status. */
struct probe {
    struct px_health *h;
    struct cm_list link;
    struct evhttp_request *req; /* kubelet's, answered exactly once */
    const struct prober *pr;
    struct px_httpc *call; /* the request to the app; frees itself after its callback */
};

/* ---- REMORA_APP_PROBERS ------------------------------------------------------ */

/* The request target for `path`: a leading '/', and every byte that cannot
 * appear raw in a request line percent-encoded (kubelet builds a URL). */
static char *encode_target(const char *path)
{
    size_t n = strlen(path);
    char *t = cm_xmalloc(n * 3 + 2), *o = t;
    if (path[0] != '/')
        *o++ = '/';
    for (; *path; path++) {
        unsigned char c = (unsigned char)*path;
        if (c <= 0x20 || c >= 0x7f) {
            static const char hex[] = "0123456789ABCDEF";
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = (char)c;
        }
    }
    *o = '\0';
    return t;
}

void px_health_prober_deinit(struct prober *p)
{
    free(p->path);
    free(p->target);
    for (size_t i = 0; i < p->nheaders; i++) {
        free(p->hname[i]);
        free(p->hvalue[i]);
    }
    free(p->hname);
    free(p->hvalue);
}

/* One entry; false (with *why) when it is unusable. */
static bool prober_parse(const char *path, json_t *v, struct prober *p, const char **why)
{
    memset(p, 0, sizeof(*p));
    json_t *http = json_object_get(v, "httpGet");
    if (path[0] != '/' || !px_http_valid_value(path, strlen(path))) {
        *why = "the key is not a path";
        return false;
    }
    if (!json_is_object(http)) {
        *why = "no httpGet object";
        return false;
    }
    json_t *port = json_object_get(http, "port");
    if (!json_is_integer(port) || json_integer_value(port) < 1 ||
        json_integer_value(port) > 65535) {
        *why = "httpGet.port is not a port number";
        return false;
    }
    json_t *jpath = json_object_get(http, "path");
    const char *target = json_is_string(jpath) ? json_string_value(jpath) : "/";
    json_t *scheme = json_object_get(http, "scheme");
    const char *sch = json_is_string(scheme) ? json_string_value(scheme) : "HTTP";
    if (strcasecmp(sch, "HTTP") != 0 && strcasecmp(sch, "HTTPS") != 0) {
        *why = "httpGet.scheme is neither HTTP nor HTTPS";
        return false;
    }
    json_t *timeout = json_object_get(v, "timeoutSeconds");
    json_int_t tmo = json_is_integer(timeout) ? json_integer_value(timeout) : 1; /* kubelet's */
    if (tmo < 1)
        tmo = 1;
    json_t *hdrs = json_object_get(http, "httpHeaders");
    if (hdrs != NULL && (!json_is_array(hdrs) || json_array_size(hdrs) > MAX_PROBE_HEADERS)) {
        *why = "httpGet.httpHeaders is not a list of at most 32 headers";
        return false;
    }
    size_t i;
    json_t *hv;
    json_array_foreach(hdrs, i, hv)
    {
        const char *n = json_string_value(json_object_get(hv, "name"));
        const char *val = json_string_value(json_object_get(hv, "value"));
        if (n == NULL || val == NULL || !px_http_valid_name(n, strlen(n)) ||
            !px_http_valid_value(val, strlen(val))) {
            *why = "httpGet.httpHeaders has an entry that is not a valid {name, value}";
            return false;
        }
    }
    p->path = cm_xstrdup(path);
    p->port = (uint16_t)json_integer_value(port);
    p->https = strcasecmp(sch, "HTTPS") == 0;
    p->target = encode_target(target);
    p->timeout_ms = tmo * 1000 > PROBE_MAX_TIMEOUT_MS ? PROBE_MAX_TIMEOUT_MS : (unsigned)tmo * 1000;
    p->nheaders = json_array_size(hdrs);
    if (p->nheaders > 0) {
        p->hname = cm_xcalloc(p->nheaders, sizeof(char *));
        p->hvalue = cm_xcalloc(p->nheaders, sizeof(char *));
    }
    json_array_foreach(hdrs, i, hv)
    {
        p->hname[i] = cm_xstrdup(json_string_value(json_object_get(hv, "name")));
        p->hvalue[i] = cm_xstrdup(json_string_value(json_object_get(hv, "value")));
    }
    return true;
}

/* Read the probe table from `env` (NULL: none). Bad input is logged once, here,
 * and leaves the bad entries (or all of them) out: their paths answer 404,
 * which kubelet counts as a failed probe, the honest answer. */
void px_health_load_probers(struct px_health *h, const char *env)
{
    if (env == NULL || *env == '\0')
        return;
    if (strlen(env) > MAX_PROBERS_ENV) {
        cm_warn("health: REMORA_APP_PROBERS is over %d bytes; app probes are off", MAX_PROBERS_ENV);
        return;
    }
    json_error_t jerr;
    json_t *root = json_loads(env, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        cm_warn("health: REMORA_APP_PROBERS is not a JSON object (%s); app probes are off",
                root == NULL ? jerr.text : "wrong type");
        json_decref(root);
        return;
    }
    size_t n = json_object_size(root);
    if (n > MAX_PROBERS) {
        cm_warn("health: REMORA_APP_PROBERS has %zu entries; only the first %d are served", n,
                MAX_PROBERS);
        n = MAX_PROBERS;
    }
    h->probers = cm_xcalloc(n > 0 ? n : 1, sizeof(*h->probers));
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        const char *why = NULL;
        if (h->nprobers == n)
            break;
        if (prober_parse(key, v, &h->probers[h->nprobers], &why))
            h->nprobers++;
        else
            cm_warn("health: REMORA_APP_PROBERS[\"%.100s\"]: %s; that probe answers 404", key, why);
    }
    json_decref(root);
    for (size_t i = 0; i < h->nprobers; i++)
        cm_info("health: %s -> %s://127.0.0.1:%u%s", h->probers[i].path,
                h->probers[i].https ? "https" : "http", (unsigned)h->probers[i].port,
                h->probers[i].target);
}

const struct prober *px_health_find_prober(const struct px_health *h, const char *path)
{
    for (size_t i = 0; i < h->nprobers; i++)
        if (strcmp(h->probers[i].path, path) == 0)
            return &h->probers[i];
    return NULL;
}

/* ---- the app prober ------------------------------------------------------------- */

static void probe_free(struct probe *p)
{
    cm_list_remove(&p->link);
    p->h->ninflight--;
    free(p);
}

/* Answer kubelet with status and the reason in the body. */
static void probe_reply(struct probe *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void probe_reply(struct probe *p, int status, const char *fmt, ...)
{
    char why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (status >= 300 || status < 200)
        cm_debug("health: %s -> %d (%s)", p->pr->path, status, why);
    px_health_reply_text(p->req, status, "%s", why);
}

/* The app's answer (its final status line: status_only), or why there was
 * none; the px_httpc frees itself after this. */
static void on_probe_answer(const struct px_httpc_resp *r, void *arg)
{
    struct probe *p = arg;
    int code = r->status;
    if (code == 0)
        probe_reply(p, 503, "app probe: 127.0.0.1:%u: %s", (unsigned)p->pr->port, r->err);
    else if (code >= 200 && code < 300)
        probe_reply(p, code, "app probe: %d", code);
    else if (code >= 300 && code < 400)
        probe_reply(p, 200, "app probe: %d (a redirect counts as success)", code);
    else if (code >= 400 && code < 600)
        probe_reply(p, code, "app probe: %d", code);
    else
        probe_reply(p, 503, "app probe: status %d", code);
    probe_free(p);
}

/* Not copied from kubelet's request to the app although not hop-by-hop:
 * Host is the probe's, there is no body, and a proxy credential is never the
 * app's. */
static bool probe_own_header(const char *name)
{
    static const char *const own[] = {"host", "content-length", "trailer", "proxy-authorization",
                                      NULL};
    for (int i = 0; own[i] != NULL; i++)
        if (strcasecmp(name, own[i]) == 0)
            return true;
    return false;
}

/* Does a Connection field of kubelet's request name `name`? */
static bool connection_names(struct evkeyvalq *in, const char *name)
{
    struct evkeyval *kv;
    for (kv = in->tqh_first; kv != NULL; kv = kv->next.tqe_next)
        if (strcasecmp(kv->key, "connection") == 0 &&
            px_hdr_has_token(kv->value, strlen(kv->value), name))
            return true;
    return false;
}

static bool prober_sets(const struct prober *pr, const char *name)
{
    for (size_t i = 0; i < pr->nheaders; i++)
        if (strcasecmp(pr->hname[i], name) == 0)
            return true;
    return false;
}

#define PROBE_MAX_FIELDS (MAX_PROBE_HEADERS + 64) /* kubelet's fields, then the probe's */

void px_health_start_probe(struct px_health *h, const struct prober *pr, struct evhttp_request *req)
{
    if (h->ninflight >= MAX_INFLIGHT) {
        px_health_reply_text(req, 503, "app probe: too many probes in flight");
        return;
    }
    if (pr->https && h->probe_tls == NULL) {
        char *err = NULL;
        if (px_tls_conf_new_unverified_client(&h->probe_tls, &err) != 0) {
            px_health_reply_text(req, 503, "app probe: cannot set up TLS: %s", err ? err : "?");
            free(err);
            return;
        }
    }
    /* The request kubelet would have sent: Host as the probe's (the pod IP
     * and the app's port) unless httpHeaders names one, kubelet's own fields
     * (User-Agent, Accept) unless the probe sets them, then httpHeaders. */
    struct px_httpc_hdr f[PROBE_MAX_FIELDS];
    size_t n = 0;
    char host[96];
    if (!prober_sets(pr, "host")) {
        bool v6 = strchr(h->pod_ip, ':') != NULL;
        snprintf(host, sizeof(host), "%s%s%s:%u", v6 ? "[" : "",
                 h->pod_ip[0] ? h->pod_ip : "127.0.0.1", v6 ? "]" : "", (unsigned)pr->port);
        f[n++] = (struct px_httpc_hdr){"Host", host};
    }
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evkeyval *kv;
    for (kv = in->tqh_first; kv != NULL && n < PROBE_MAX_FIELDS - pr->nheaders;
         kv = kv->next.tqe_next) { /* TAILQ_FOREACH, which event2 does not export */
        size_t nl = strlen(kv->key);
        if (!px_http_is_hop_by_hop(kv->key, nl) && !probe_own_header(kv->key) &&
            !connection_names(in, kv->key) && !prober_sets(pr, kv->key) &&
            px_http_valid_name(kv->key, nl) && px_http_valid_value(kv->value, strlen(kv->value)))
            f[n++] = (struct px_httpc_hdr){kv->key, kv->value};
    }
    for (size_t i = 0; i < pr->nheaders; i++)
        f[n++] = (struct px_httpc_hdr){pr->hname[i], pr->hvalue[i]};

    struct cm_addr a;
    char ap[32];
    snprintf(ap, sizeof(ap), "127.0.0.1:%u", (unsigned)pr->port);
    if (cm_addr_parse(ap, &a) != 0) {
        px_health_reply_text(req, 503, "app probe: bad port %u", (unsigned)pr->port);
        return;
    }
    struct px_httpc_req rq = {.addr = &a,
                              .tls = pr->https ? h->probe_tls : NULL,
                              .method = "GET",
                              .target = pr->target,
                              .hdrs = f,
                              .nhdrs = n,
                              .timeout_ms = pr->timeout_ms,
                              .status_only = true};
    struct probe *p = cm_xcalloc(1, sizeof(*p));
    p->h = h;
    p->req = req;
    p->pr = pr;
    p->call = px_httpc_start(h->base, &rq, on_probe_answer, p);
    if (p->call == NULL) {
        px_health_reply_text(req, 503, "app probe: 127.0.0.1:%u: %s", (unsigned)pr->port,
                             strerror(errno));
        free(p);
        return;
    }
    cm_list_insert_tail(&h->probes, &p->link);
    h->ninflight++;
}

void px_health_probes_abort(struct px_health *h)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &h->probes)
    {
        struct probe *p = cm_container_of(pos, struct probe, link);
        px_httpc_cancel(p->call);
        probe_reply(p, 503, "shutting down");
        probe_free(p);
    }
}
