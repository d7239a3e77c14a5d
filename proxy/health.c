/* Health port of remora-proxy: readiness for kubelet, the app probes the
 * injector rewrote, merged metrics (proxy/health.h; docs/capture.md).
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
 * The prober is a small state machine on a raw non-blocking socket
 * (connect -> [TLS handshake] -> write request -> read status line) rather
 * than evhttp's client, which has no TLS of ours. /metrics uses the evhttp
 * client: there the body matters, and only plaintext is supported. */
#include "proxy/health.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/err.h"
#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/tcp.h" /* issue 14: /healthz/idle */

#define HEALTH_MAX_HEADERS   8192
#define HEALTH_TIMEOUT_S     10 /* kubelet's side of the connection */
#define HEALTH_BACKLOG       64
#define MAX_PROBERS          64          /* entries of REMORA_APP_PROBERS we keep */
#define MAX_PROBERS_ENV      (64 * 1024) /* bytes of REMORA_APP_PROBERS we parse */
#define MAX_PROBE_HEADERS    32          /* httpHeaders per probe */
#define MAX_INFLIGHT         64          /* probes and scrapes at once; more get 503 */
#define PROBE_MAX_TIMEOUT_MS 60000
#define STATUS_LINE_MAX      512 /* bytes read before the status line must end */
#define SCRAPE_TIMEOUT_S     5
#define SCRAPE_MAX_BODY      (8u << 20) /* app metrics text */

/* One rewritten probe, from REMORA_APP_PROBERS. */
struct prober {
    char *path; /* "/app-health/web/readyz", what kubelet asks for */
    uint16_t port;
    bool https;
    char *target; /* request target on the app, printable ASCII only */
    char **hname, **hvalue;
    size_t nheaders;
    unsigned timeout_ms;
};

enum probe_state {
    PROBE_CONNECTING = 0, /* non-blocking connect() in progress */
    PROBE_HANDSHAKE,      /* TLS handshake (HTTPS probes) */
    PROBE_WRITING,        /* sending the request */
    PROBE_READING         /* waiting for the status line */
};

/* One probe in flight: kubelet's request waits for the app's status. */
struct probe {
    struct px_health *h;
    struct cm_list link;
    struct evhttp_request *req; /* kubelet's, answered exactly once */
    const struct prober *pr;
    enum probe_state state;
    int fd;
    struct event *io;    /* fd readiness, re-armed for what the next step needs */
    struct event *timer; /* the probe's timeoutSeconds */
    bool has_ssl;
    mbedtls_ssl_context ssl;
    mbedtls_net_context net;
    char *out; /* the request */
    size_t outlen, outoff;
    char in[STATUS_LINE_MAX];
    size_t inlen;
};

/* One /metrics request waiting for the app's metrics. */
struct scrape {
    struct px_health *h;
    struct cm_list link;
    struct evhttp_request *req; /* the scraper's, answered exactly once */
    struct evhttp_connection *conn;
    struct event *free_ev; /* frees conn on the next loop turn (not inside its callback) */
};

struct px_health {
    struct event_base *base; /* borrowed: the proxy's loop */
    struct evhttp *http;
    struct cm_addr local;
    struct prober *probers;
    size_t nprobers;
    char pod_ip[64]; /* Host header of probes, as kubelet would send it; "" unknown */
    /* REMORA_APP_METRICS_URL */
    bool app_metrics;
    char *metrics_host;
    uint16_t metrics_port;
    char *metrics_target;
    struct cm_list probes, scrapes;
    unsigned ninflight;
    mbedtls_ssl_config tls; /* client, no verification: HTTPS probes */
    bool tls_ready;
};

/* ---- REMORA_APP_PROBERS ------------------------------------------------------ */

/* A header field name: an HTTP token. */
static bool is_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", c) != NULL)
            return false;
    }
    return true;
}

/* A header value: no control characters (CR/LF would inject lines). */
static bool is_field_value(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

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

static void prober_deinit(struct prober *p)
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
    if (path[0] != '/' || !is_field_value(path)) {
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
        if (n == NULL || val == NULL || !is_token(n) || !is_field_value(val)) {
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
static void load_probers(struct px_health *h, const char *env)
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

static const struct prober *find_prober(const struct px_health *h, const char *path)
{
    for (size_t i = 0; i < h->nprobers; i++)
        if (strcmp(h->probers[i].path, path) == 0)
            return &h->probers[i];
    return NULL;
}

/* REMORA_APP_METRICS_URL: "http://<ip>:<port>/<path>", numeric host only. */
static void load_metrics_url(struct px_health *h, const char *url)
{
    if (url == NULL || *url == '\0')
        return;
    struct evhttp_uri *u = evhttp_uri_parse(url);
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    int port = u ? evhttp_uri_get_port(u) : -1;
    struct cm_addr a;
    char hp[CM_ADDR_STRLEN + 8];
    if (host != NULL)
        snprintf(hp, sizeof(hp), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    if (scheme == NULL || strcmp(scheme, "http") != 0 || host == NULL || port < 1 || port > 65535 ||
        cm_addr_parse(hp, &a) != 0) {
        cm_warn("health: REMORA_APP_METRICS_URL \"%.200s\" is not http://<ip>:<port>/<path>; "
                "/metrics serves the proxy's metrics alone",
                url);
        if (u != NULL)
            evhttp_uri_free(u);
        return;
    }
    const char *path = evhttp_uri_get_path(u);
    const char *query = evhttp_uri_get_query(u);
    h->app_metrics = true;
    h->metrics_host = cm_xstrdup(host);
    h->metrics_port = (uint16_t)port;
    h->metrics_target =
        cm_xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    evhttp_uri_free(u);
    cm_info("health: /metrics merges the app's %s", url);
}

/* ---- answering ------------------------------------------------------------------ */

static void reply(struct evhttp_request *req, int status, const char *ctype, struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 503 ? "Service Unavailable"
                         : status < 300  ? "OK"
                         : status < 500  ? "Client Error"
                                         : "Server Error";
    evhttp_send_reply(req, status, reason, body);
}

static void reply_text(struct evhttp_request *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reply_text(struct evhttp_request *req, int status, const char *fmt, ...)
{
    struct evbuffer *b = evbuffer_new();
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(b, fmt, ap);
    va_end(ap);
    evbuffer_add(b, "\n", 1);
    reply(req, status, "text/plain; charset=utf-8", b);
    evbuffer_free(b);
}

/* ---- the app prober ------------------------------------------------------------- */

static void probe_free(struct probe *p)
{
    if (p->io != NULL)
        event_free(p->io);
    if (p->timer != NULL)
        event_free(p->timer);
    if (p->has_ssl)
        mbedtls_ssl_free(&p->ssl);
    if (p->fd >= 0)
        close(p->fd);
    cm_list_remove(&p->link);
    p->h->ninflight--;
    free(p->out);
    free(p);
}

/* Answer kubelet and free. Called from the probe's own events, which are
 * freed here: libevent allows freeing the event whose callback is running. */
static void probe_done(struct probe *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void probe_done(struct probe *p, int status, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (status >= 300 || status < 200)
        cm_debug("health: %s -> %d (%s)", p->pr->path, status, why);
    reply_text(p->req, status, "%s", why);
    probe_free(p);
}

static void on_probe_io(evutil_socket_t fd, short what, void *arg);

static void probe_wait(struct probe *p, short what)
{
    event_del(p->io);
    event_assign(p->io, p->h->base, p->fd, what, on_probe_io, p);
    event_add(p->io, NULL);
}

/* The status code from the bytes read so far: >0 found, 0 need more, -1 bad. */
static int status_line(const char *buf, size_t len)
{
    const char *eol = memchr(buf, '\n', len);
    if (eol == NULL)
        return len >= STATUS_LINE_MAX ? -1 : 0;
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ')
        return -1;
    int code = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        code = code * 10 + (buf[i] - '0');
    }
    return code >= 100 ? code : -1;
}

/* mbedTLS return values WANT_READ / WANT_WRITE: wait; others are final. */
static bool tls_wait(struct probe *p, int r)
{
    if (r == MBEDTLS_ERR_SSL_WANT_READ) {
        probe_wait(p, EV_READ);
        return true;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        probe_wait(p, EV_WRITE);
        return true;
    }
    return false;
}

static void probe_step(struct probe *p)
{
    for (;;) {
        switch (p->state) {
        case PROBE_CONNECTING: {
            int err = 0;
            socklen_t elen = sizeof(err);
            if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
                err = errno;
            if (err != 0) {
                probe_done(p, 503, "app probe: connect to 127.0.0.1:%u: %s", (unsigned)p->pr->port,
                           strerror(err));
                return;
            }
            p->state = p->pr->https ? PROBE_HANDSHAKE : PROBE_WRITING;
            if (p->pr->https) {
                mbedtls_ssl_init(&p->ssl);
                p->has_ssl = true;
                int r = mbedtls_ssl_setup(&p->ssl, &p->h->tls);
                if (r != 0) {
                    probe_done(p, 503, "app probe: TLS setup failed (-0x%04x)", (unsigned)-r);
                    return;
                }
                p->net.fd = p->fd;
                mbedtls_ssl_set_bio(&p->ssl, &p->net, mbedtls_net_send, mbedtls_net_recv, NULL);
            }
            break;
        }
        case PROBE_HANDSHAKE: {
            int r = mbedtls_ssl_handshake(&p->ssl);
            if (tls_wait(p, r))
                return;
            if (r != 0) {
                char e[128];
                mbedtls_strerror(r, e, sizeof(e));
                probe_done(p, 503, "app probe: TLS handshake with 127.0.0.1:%u: %s",
                           (unsigned)p->pr->port, e);
                return;
            }
            p->state = PROBE_WRITING;
            break;
        }
        case PROBE_WRITING: {
            const unsigned char *b = (const unsigned char *)p->out + p->outoff;
            size_t left = p->outlen - p->outoff;
            ssize_t n;
            if (p->has_ssl) {
                int r = mbedtls_ssl_write(&p->ssl, b, left);
                if (tls_wait(p, r))
                    return;
                n = r;
            } else {
                n = send(p->fd, b, left, MSG_NOSIGNAL);
                if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                    probe_wait(p, EV_WRITE);
                    return;
                }
            }
            if (n <= 0) {
                probe_done(p, 503, "app probe: sending the request failed");
                return;
            }
            p->outoff += (size_t)n;
            if (p->outoff == p->outlen)
                p->state = PROBE_READING;
            break;
        }
        case PROBE_READING: {
            unsigned char *b = (unsigned char *)p->in + p->inlen;
            size_t room = sizeof(p->in) - p->inlen;
            ssize_t n;
            if (p->has_ssl) {
                int r = mbedtls_ssl_read(&p->ssl, b, room);
                if (tls_wait(p, r))
                    return;
                n = r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? 0 : r;
            } else {
                n = recv(p->fd, b, room, 0);
                if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                    probe_wait(p, EV_READ);
                    return;
                }
            }
            if (n <= 0) {
                probe_done(p, 503, "app probe: the app closed the connection without a status");
                return;
            }
            p->inlen += (size_t)n;
            int code = status_line(p->in, p->inlen);
            if (code == 0)
                break;
            if (code < 0) {
                probe_done(p, 503, "app probe: malformed status line from the app");
            } else if (code >= 200 && code < 300) {
                probe_done(p, code, "app probe: %d", code);
            } else if (code >= 300 && code < 400) {
                probe_done(p, 200, "app probe: %d (a redirect counts as success)", code);
            } else if (code >= 400 && code < 600) {
                probe_done(p, code, "app probe: %d", code);
            } else {
                probe_done(p, 503, "app probe: status %d", code);
            }
            return;
        }
        }
    }
}

static void on_probe_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    probe_step(arg);
}

static void on_probe_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;
    (void)fd;
    (void)what;
    probe_done(p, 503, "app probe: no status from 127.0.0.1:%u within %u ms", (unsigned)p->pr->port,
               p->pr->timeout_ms);
}

/* Is `name` one of the fields we never copy from kubelet's request? */
static bool hop_header(const char *name)
{
    static const char *const skip[] = {"host",
                                       "connection",
                                       "keep-alive",
                                       "te",
                                       "trailer",
                                       "transfer-encoding",
                                       "upgrade",
                                       "content-length",
                                       "proxy-connection",
                                       "proxy-authorization",
                                       NULL};
    for (int i = 0; skip[i] != NULL; i++)
        if (strcasecmp(name, skip[i]) == 0)
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

/* The request kubelet would have sent: its own headers (User-Agent, Accept)
 * unless the probe sets them, the probe's httpHeaders, Host as the probe's
 * (the pod IP and the app's port) unless httpHeaders names one. */
static char *probe_request(const struct px_health *h, const struct prober *pr,
                           struct evhttp_request *req, size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "GET %s HTTP/1.1\r\n", pr->target);
    if (!prober_sets(pr, "host"))
        evbuffer_add_printf(b, "Host: %s%s%s:%u\r\n", strchr(h->pod_ip, ':') ? "[" : "",
                            h->pod_ip[0] ? h->pod_ip : "127.0.0.1",
                            strchr(h->pod_ip, ':') ? "]" : "", (unsigned)pr->port);
    struct evkeyval *kv;
    for (kv = evhttp_request_get_input_headers(req)->tqh_first; kv != NULL;
         kv = kv->next.tqe_next) { /* TAILQ_FOREACH, which event2 does not export */
        if (!hop_header(kv->key) && !prober_sets(pr, kv->key) && is_field_value(kv->value))
            evbuffer_add_printf(b, "%s: %s\r\n", kv->key, kv->value);
    }
    for (size_t i = 0; i < pr->nheaders; i++)
        evbuffer_add_printf(b, "%s: %s\r\n", pr->hname[i], pr->hvalue[i]);
    evbuffer_add_printf(b, "Connection: close\r\n\r\n");
    *len = evbuffer_get_length(b);
    char *s = cm_xmalloc(*len + 1);
    evbuffer_remove(b, s, *len);
    s[*len] = '\0';
    evbuffer_free(b);
    return s;
}

static bool tls_config_ready(struct px_health *h)
{
    if (h->tls_ready)
        return true;
    mbedtls_ssl_config_init(&h->tls);
    if (mbedtls_ssl_config_defaults(&h->tls, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0) {
        mbedtls_ssl_config_free(&h->tls);
        return false;
    }
    /* kubelet does not verify the app's certificate for HTTPS probes */
    mbedtls_ssl_conf_authmode(&h->tls, MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_rng(&h->tls, pki_rng_fn, pki_rng());
    h->tls_ready = true;
    return true;
}

static void start_probe(struct px_health *h, const struct prober *pr, struct evhttp_request *req)
{
    if (h->ninflight >= MAX_INFLIGHT) {
        reply_text(req, 503, "app probe: too many probes in flight");
        return;
    }
    if (pr->https && !tls_config_ready(h)) {
        reply_text(req, 503, "app probe: cannot set up TLS");
        return;
    }
    struct probe *p = cm_xcalloc(1, sizeof(*p));
    p->h = h;
    p->req = req;
    p->pr = pr;
    p->fd = -1;
    cm_list_insert_tail(&h->probes, &p->link);
    h->ninflight++;
    p->out = probe_request(h, pr, req, &p->outlen);
    p->io = event_new(h->base, -1, 0, on_probe_io, p);
    p->timer = evtimer_new(h->base, on_probe_timeout, p);
    struct timeval tv = {pr->timeout_ms / 1000, (pr->timeout_ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);

    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(pr->port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    p->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        probe_done(p, 503, "app probe: socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(p->fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 && errno != EINPROGRESS) {
        probe_done(p, 503, "app probe: connect to 127.0.0.1:%u: %s", (unsigned)pr->port,
                   strerror(errno));
        return;
    }
    probe_wait(p, EV_WRITE);
}

/* ---- /metrics ------------------------------------------------------------------ */

static void scrape_free(struct scrape *s)
{
    if (s->conn != NULL)
        evhttp_connection_free(s->conn);
    event_free(s->free_ev);
    cm_list_remove(&s->link);
    s->h->ninflight--;
    free(s);
}

static void on_scrape_free(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scrape_free(arg);
}

/* The proxy's metrics, then the app's text (or a comment saying why not). */
static void scrape_answer(struct scrape *s, struct evbuffer *app, const char *why)
{
    struct evbuffer *b = evbuffer_new();
    px_metrics_write_prometheus(b);
    if (app != NULL) {
        evbuffer_add_printf(b, "# remora: the app's metrics (%s:%u%s) follow\n", s->h->metrics_host,
                            (unsigned)s->h->metrics_port, s->h->metrics_target);
        size_t n = evbuffer_get_length(app);
        char last = '\n';
        struct evbuffer_ptr end;
        if (n > 0 && evbuffer_ptr_set(app, &end, n - 1, EVBUFFER_PTR_SET) == 0)
            evbuffer_copyout_from(app, &end, &last, 1);
        evbuffer_add_buffer(b, app);
        if (last != '\n') /* the text format ends every line, the last one too */
            evbuffer_add(b, "\n", 1);
    } else if (why != NULL) {
        evbuffer_add_printf(b, "# remora: the app's metrics are unavailable: %s\n", why);
    }
    reply(s->req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
    s->req = NULL;
}

static void on_scrape_done(struct evhttp_request *resp, void *arg)
{
    struct scrape *s = arg;
    int code = resp != NULL ? evhttp_request_get_response_code(resp) : 0;
    if (s->req != NULL) {
        if (code == 200) {
            scrape_answer(s, evhttp_request_get_input_buffer(resp), NULL);
        } else {
            char why[64];
            if (code == 0)
                snprintf(why, sizeof(why), "no answer");
            else
                snprintf(why, sizeof(why), "status %d", code);
            scrape_answer(s, NULL, why);
        }
    }
    /* evhttp still uses the connection after this callback returns */
    struct timeval now = {0, 0};
    event_add(s->free_ev, &now);
}

static void start_scrape(struct px_health *h, struct evhttp_request *req)
{
    if (!h->app_metrics || h->ninflight >= MAX_INFLIGHT) {
        struct scrape tmp = {.h = h, .req = req};
        scrape_answer(&tmp, NULL, h->app_metrics ? "too many scrapes in flight" : NULL);
        return;
    }
    struct scrape *s = cm_xcalloc(1, sizeof(*s));
    s->h = h;
    s->req = req;
    s->free_ev = evtimer_new(h->base, on_scrape_free, s);
    cm_list_insert_tail(&h->scrapes, &s->link);
    h->ninflight++;
    s->conn = evhttp_connection_base_new(h->base, NULL, h->metrics_host, h->metrics_port);
    struct evhttp_request *r = s->conn ? evhttp_request_new(on_scrape_done, s) : NULL;
    if (r == NULL) {
        scrape_answer(s, NULL, "cannot create a client connection");
        struct timeval now = {0, 0};
        event_add(s->free_ev, &now);
        return;
    }
    evhttp_connection_set_timeout(s->conn, SCRAPE_TIMEOUT_S);
    evhttp_connection_set_max_body_size(s->conn, SCRAPE_MAX_BODY);
    evhttp_connection_set_retries(s->conn, 0);
    char host[CM_ADDR_STRLEN + 8];
    snprintf(host, sizeof(host), strchr(h->metrics_host, ':') ? "[%s]:%u" : "%s:%u",
             h->metrics_host, (unsigned)h->metrics_port);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(r);
    evhttp_add_header(oh, "Host", host);
    evhttp_add_header(oh, "Accept", "text/plain");
    evhttp_add_header(oh, "User-Agent", "remora-proxy-health");
    if (evhttp_make_request(s->conn, r, EVHTTP_REQ_GET, h->metrics_target) != 0 && s->req != NULL) {
        scrape_answer(s, NULL, "cannot send the request");
        struct timeval now = {0, 0};
        event_add(s->free_ev, &now);
    }
}

/* ---- dispatch ------------------------------------------------------------------- */

static void on_request(struct evhttp_request *req, void *arg)
{
    struct px_health *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL || *path == '\0')
        path = "/";
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
        reply_text(req, 405, "the health port takes GET");
        return;
    }
    if (strcmp(path, "/healthz/ready") == 0) {
        if (px_server_ready())
            reply_text(req, 200, "ready");
        else
            reply_text(req, 503, "not ready: %s",
                       px_srv == NULL             ? "server not started"
                       : px_srv->draining         ? "draining"
                       : !px_srv->listeners_bound ? "listeners not bound"
                                                  : "no workload certificate yet");
        return;
    }
    if (strcmp(path, "/healthz/idle") == 0) {
        /* issue 14: what the classic sidecar's preStop waits for. In flight
         * = HTTP requests (either direction) + opaque TCP connections; idle
         * keep-alive connections (a peer's pool) do not count. */
        unsigned nreq = px_srv != NULL ? px_srv->nstreams : 0, ntcp = px_tcp_active();
        if (nreq + ntcp == 0)
            reply_text(req, 200, "idle");
        else
            reply_text(req, 503, "busy: %u requests and %u TCP connections in flight", nreq, ntcp);
        return;
    }
    if (strcmp(path, "/metrics") == 0 || strcmp(path, "/stats/prometheus") == 0) {
        start_scrape(h, req);
        return;
    }
    const struct prober *pr = find_prober(h, path);
    if (pr != NULL) {
        start_probe(h, pr, req);
        return;
    }
    reply_text(req, 404, "unknown path %.200s", path);
}

/* ---- lifecycle ------------------------------------------------------------------ */

int px_health_start(struct event_base *base, const struct cm_addr *addr, struct px_health **out,
                    char **errmsg)
{
    char abuf[CM_ADDR_STRLEN];
    int fd = cm_net_listen(addr, HEALTH_BACKLOG);
    if (fd < 0) {
        *errmsg = cm_xasprintf("health: cannot listen on %s: %s",
                               cm_addr_format(addr, abuf, sizeof(abuf)), strerror(errno));
        return CM_ERR_IO;
    }
    struct px_health *h = cm_xcalloc(1, sizeof(*h));
    h->base = base;
    cm_list_init(&h->probes);
    cm_list_init(&h->scrapes);
    if (cm_net_local_addr(fd, &h->local) != 0)
        h->local = *addr;
    h->http = evhttp_new(base);
    if (h->http == NULL) {
        close(fd);
        free(h);
        *errmsg = cm_xasprintf("health: evhttp_new failed");
        return CM_ERR_IO;
    }
    /* every method reaches on_request, so the 405 is ours */
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(h->http, HEALTH_MAX_HEADERS);
    evhttp_set_max_body_size(h->http, 4096);
    evhttp_set_timeout(h->http, HEALTH_TIMEOUT_S);
    evhttp_set_gencb(h->http, on_request, h);
    if (evhttp_accept_socket_with_handle(h->http, fd) == NULL) {
        evhttp_free(h->http);
        close(fd);
        free(h);
        *errmsg =
            cm_xasprintf("health: cannot serve on %s", cm_addr_format(addr, abuf, sizeof(abuf)));
        return CM_ERR_IO;
    }
    const char *ip = getenv("POD_IP");
    if (ip != NULL && strlen(ip) < sizeof(h->pod_ip) && is_field_value(ip) && !strchr(ip, ' '))
        snprintf(h->pod_ip, sizeof(h->pod_ip), "%s", ip);
    load_probers(h, getenv("REMORA_APP_PROBERS"));
    load_metrics_url(h, getenv("REMORA_APP_METRICS_URL"));
    cm_info("health: serving on %s (%zu app probes)", cm_addr_format(&h->local, abuf, sizeof(abuf)),
            h->nprobers);
    *out = h;
    return 0;
}

int px_health_listen_optional(struct px_health *h, const struct cm_addr *addr, char **errmsg)
{
    char abuf[CM_ADDR_STRLEN];
    int fd = cm_net_listen(addr, HEALTH_BACKLOG);
    if (fd < 0 && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL)) {
        cm_warn("health: %s is not available here (%s): skipped",
                cm_addr_format(addr, abuf, sizeof(abuf)), strerror(errno));
        return 0;
    }
    if (fd < 0) {
        *errmsg = cm_xasprintf("health: cannot listen on %s: %s",
                               cm_addr_format(addr, abuf, sizeof(abuf)), strerror(errno));
        return CM_ERR_IO;
    }
    if (evhttp_accept_socket_with_handle(h->http, fd) == NULL) {
        close(fd);
        *errmsg =
            cm_xasprintf("health: cannot serve on %s", cm_addr_format(addr, abuf, sizeof(abuf)));
        return CM_ERR_IO;
    }
    cm_info("health: also serving on %s", cm_addr_format(addr, abuf, sizeof(abuf)));
    return 0;
}

void px_health_local_addr(const struct px_health *h, struct cm_addr *out)
{
    *out = h->local;
}

void px_health_free(struct px_health *h)
{
    if (h == NULL)
        return;
    struct cm_list *pos, *tmp;
    /* Answer what is in flight: a request whose client already left is freed
     * by the reply, the others go with evhttp_free. */
    cm_list_foreach_safe(pos, tmp, &h->probes)
    {
        struct probe *p = cm_container_of(pos, struct probe, link);
        probe_done(p, 503, "shutting down");
    }
    cm_list_foreach_safe(pos, tmp, &h->scrapes)
    {
        struct scrape *s = cm_container_of(pos, struct scrape, link);
        if (s->req != NULL)
            scrape_answer(s, NULL, "shutting down");
        scrape_free(s);
    }
    evhttp_free(h->http);
    for (size_t i = 0; i < h->nprobers; i++)
        prober_deinit(&h->probers[i]);
    free(h->probers);
    free(h->metrics_host);
    free(h->metrics_target);
    if (h->tls_ready)
        mbedtls_ssl_config_free(&h->tls);
    free(h);
}

/* ---- remora-proxy wait ---------------------------------------------------------- */

/* One blocking GET of `path` (/healthz/ready, /healthz/idle); the status, or
 * 0 when there was none. */
static int status_once(const struct cm_addr *addr, const char *path)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int code = 0;
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) == 0) {
        char req[128];
        int rl = snprintf(req, sizeof(req),
                          "GET %s HTTP/1.1\r\nHost: localhost\r\n"
                          "User-Agent: remora-proxy-wait\r\nConnection: close\r\n\r\n",
                          path);
        char buf[STATUS_LINE_MAX];
        size_t len = 0;
        if (rl > 0 && (size_t)rl < sizeof(req) &&
            send(fd, req, (size_t)rl, MSG_NOSIGNAL) == (ssize_t)rl) {
            while (len < sizeof(buf)) {
                ssize_t n = recv(fd, buf + len, sizeof(buf) - len, 0);
                if (n <= 0)
                    break;
                len += (size_t)n;
                int c = status_line(buf, len);
                if (c != 0) {
                    code = c > 0 ? c : 0;
                    break;
                }
            }
        }
    }
    close(fd);
    return code;
}

static long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* issue 14: `remora-proxy wait --drain [--timeout-ms MS]`, the classic
 * sidecar's preStop. kubelet sends SIGTERM to the app at once and to the proxy
 * only when this returns: until then the proxy listens and serves as usual.
 * Returns once /healthz/idle said 200 twice in a row (nothing in flight), the
 * health port stops answering (the proxy is gone), or at the timeout; exit 0
 * in every case (kubelet goes on with SIGTERM either way; the reason is on
 * stderr). */
static int drain_wait(const struct cm_addr *addr, long timeout_ms)
{
    long start = mono_ms(), now;
    int idle = 0, silent = 0, last = 0;
    char a[CM_ADDR_STRLEN];
    cm_addr_format(addr, a, sizeof(a));
    for (;;) {
        last = status_once(addr, "/healthz/idle");
        idle = last == 200 ? idle + 1 : 0;
        silent = last == 0 ? silent + 1 : 0;
        now = mono_ms();
        if (idle >= 2) {
            fprintf(stderr, "remora-proxy wait --drain: nothing in flight after %ld ms\n",
                    now - start);
            return 0;
        }
        if (silent >= 3) {
            fprintf(stderr, "remora-proxy wait --drain: %s does not answer: nothing to wait for\n",
                    a);
            return 0;
        }
        if (now - start >= timeout_ms)
            break;
        long pause_ms = 200;
        if (timeout_ms - (now - start) < pause_ms)
            pause_ms = timeout_ms - (now - start);
        struct timespec pause = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    fprintf(stderr,
            "remora-proxy wait --drain: still busy after %ld ms (last %d from %s/healthz/idle); "
            "the proxy gets its SIGTERM now\n",
            timeout_ms, last, a);
    return 0;
}

int px_health_wait_main(int argc, char **argv)
{
    long timeout_s = -1, timeout_ms = -1;
    bool drain = false;
    struct cm_addr addr;
    cm_addr_parse("127.0.0.1:15020", &addr);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--drain") == 0) {
            drain = true;
            continue;
        }
        if (strcmp(a, "--timeout-ms") == 0 && i + 1 < argc) {
            const char *v = argv[++i];
            char *end = NULL;
            errno = 0;
            timeout_ms = strtol(v, &end, 10);
            if (errno != 0 || end == v || *end != '\0' || timeout_ms < 0 || timeout_ms > 86400000) {
                fprintf(stderr,
                        "remora-proxy wait: --timeout-ms: \"%s\" is not a number of "
                        "milliseconds (0..86400000)\n",
                        v);
                return 2;
            }
            continue;
        }
        if ((strcmp(a, "--timeout") == 0 || strcmp(a, "--address") == 0) && i + 1 < argc) {
            const char *v = argv[++i];
            if (a[2] == 't') {
                char *end = NULL;
                errno = 0;
                timeout_s = strtol(v, &end, 10);
                if (errno != 0 || end == v || *end != '\0' || timeout_s < 0 || timeout_s > 86400) {
                    fprintf(stderr,
                            "remora-proxy wait: --timeout: \"%s\" is not a number of "
                            "seconds (0..86400)\n",
                            v);
                    return 2;
                }
            } else if (cm_addr_parse(v, &addr) != 0) {
                fprintf(stderr, "remora-proxy wait: --address: \"%s\" is not ip:port\n", v);
                return 2;
            }
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("usage: remora-proxy wait [--timeout SECONDS] [--address IP:PORT]\n"
                   "       remora-proxy wait --drain [--timeout-ms MS] [--address IP:PORT]\n");
            return 0;
        } else {
            fprintf(stderr, "remora-proxy wait: unknown or incomplete flag \"%s\"\n", a);
            return 2;
        }
    }
    if (drain) /* default 5 s, the injector's terminationDrainDuration */
        return drain_wait(&addr, timeout_ms >= 0  ? timeout_ms
                                 : timeout_s >= 0 ? timeout_s * 1000
                                                  : 5000);
    if (timeout_ms >= 0)
        timeout_s = (timeout_ms + 999) / 1000;
    if (timeout_s < 0)
        timeout_s = 60;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int last = 0;
    for (;;) {
        last = status_once(&addr, "/healthz/ready");
        if (last == 200)
            return 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= timeout_s)
            break;
        struct timespec pause = {0, 200 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    char a[CM_ADDR_STRLEN];
    fprintf(stderr, "remora-proxy wait: %s/healthz/ready not 200 after %ld s (last: %d)\n",
            cm_addr_format(&addr, a, sizeof(a)), timeout_s, last);
    return 1;
}
