/* The Kubernetes API client's pure half (kube.h): URL handling, the
 * response parser and the object decoders. The transport is kube_http.c. */
#include "injector/kube_int.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/err.h"
#include "common/xalloc.h"

int ij_kube_fail(char **errmsg, int rc, const char *fmt, ...)
{
    va_list ap;
    char buf[2048];
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (errmsg != NULL) {
        free(*errmsg);
        *errmsg = cm_xstrdup(buf);
    }
    return rc;
}

/* Copy at most max bytes of untrusted text, control bytes and non-ASCII
 * replaced, so a message from a server cannot forge log lines. */
char *ij_kube_sanitize(const char *s, size_t n, size_t max)
{
    bool cut = n > max;
    if (cut)
        n = max;
    char *out = cm_xmalloc(n + 4);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    if (cut)
        memcpy(out + n, "...", 3), n += 3;
    out[n] = '\0';
    return out;
}

/* ---- URLs ------------------------------------------------------------------------ */

int ij_kube_url_parse(const char *url, struct ij_kube_url *out, char **errmsg)
{
    static const char scheme[] = "https://";
    memset(out, 0, sizeof(*out));
    if (url == NULL || strncmp(url, scheme, sizeof(scheme) - 1) != 0)
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: want an https:// URL",
                            url ? url : "(none)");
    const char *p = url + sizeof(scheme) - 1;
    const char *host, *hend;
    if (*p == '[') {
        host = p + 1;
        hend = strchr(host, ']');
        if (hend == NULL)
            return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: unterminated '[' in the host",
                                url);
        p = hend + 1;
    } else {
        host = p;
        hend = host + strcspn(host, ":/?#");
        p = hend;
    }
    size_t hlen = (size_t)(hend - host);
    if (hlen == 0 || hlen >= sizeof(out->host))
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: %s host", url,
                            hlen ? "too long a" : "no");
    memcpy(out->host, host, hlen);
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)out->host[i];
        if (c <= 0x20 || c >= 0x7f || c == '@' || c == '%')
            return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: bad character in the host", url);
    }
    snprintf(out->port, sizeof(out->port), "443");
    if (*p == ':') {
        p++;
        size_t n = strspn(p, "0123456789");
        long port = 0;
        if (n > 0 && n <= 5) {
            char tmp[6] = {0};
            memcpy(tmp, p, n);
            port = strtol(tmp, NULL, 10);
        }
        if (port < 1 || port > 65535)
            return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: bad port", url);
        snprintf(out->port, sizeof(out->port), "%ld", port);
        p += n;
    }
    if (*p != '\0' && *p != '/')
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: unexpected '%c' after the host", url,
                            *p);
    size_t blen = strlen(p);
    while (blen > 0 && p[blen - 1] == '/')
        blen--;
    if (blen >= sizeof(out->base))
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: path too long", url);
    for (size_t i = 0; i < blen; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#')
            return ij_kube_fail(errmsg, CM_ERR_INVAL,
                                "--api %s: the path may not hold a query or '%c'", url,
                                c > 0x20 && c < 0x7f ? c : '?');
    }
    memcpy(out->base, p, blen);
    if (inet_pton(AF_INET, out->host, out->ip) == 1)
        out->iplen = 4;
    else if (inet_pton(AF_INET6, out->host, out->ip) == 1)
        out->iplen = 16;
    else if (host[-1] == '[')
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "--api %s: [%s] is not an IPv6 address", url,
                            out->host);
    return 0;
}

char *ij_kube_default_api(void)
{
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    if (host == NULL || port == NULL || *host == '\0' || *port == '\0')
        return cm_xstrdup(IJ_KUBE_DEFAULT_API);
    if (strchr(host, ':') != NULL) /* net.JoinHostPort */
        return cm_xasprintf("https://[%s]:%s", host, port);
    return cm_xasprintf("https://%s:%s", host, port);
}

char *ij_kube_query_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = cm_xmalloc(n * 3 + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = '\0';
    return out;
}

/* ---- the response parser (llhttp) ------------------------------------------------------ */

static int on_message_begin(llhttp_t *h)
{
    struct ij_kube_rparser *p = h->data;
    p->resp->body_len = 0;
    p->resp->reason[0] = '\0';
    p->reason_len = 0;
    return 0;
}

static int count_head(struct ij_kube_rparser *p, size_t n)
{
    p->head_bytes += n;
    if (p->head_bytes > IJ_KUBE_MAX_HEAD) {
        p->limit = 1;
        return -1;
    }
    return 0;
}

static int on_status(llhttp_t *h, const char *at, size_t n)
{
    struct ij_kube_rparser *p = h->data;
    if (count_head(p, n) != 0)
        return -1;
    char *r = p->resp->reason;
    for (size_t i = 0; i < n && p->reason_len + 1 < sizeof(p->resp->reason); i++) {
        unsigned char c = (unsigned char)at[i];
        r[p->reason_len++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    r[p->reason_len] = '\0';
    return 0;
}

static int on_header_data(llhttp_t *h, const char *at, size_t n)
{
    (void)at;
    return count_head(h->data, n);
}

static int on_headers_complete(llhttp_t *h)
{
    struct ij_kube_rparser *p = h->data;
    if (h->status_code >= 200) {
        p->head_done = true;
        p->resp->status = h->status_code;
    }
    if (p->sink != NULL && h->status_code == 200) /* streamed: the sink bounds what it keeps */
        return p->sink(p->sink_arg, NULL, 0) == 0 ? 0 : (p->limit = 3, -1); /* "the head came" */
    /* A declared length past the bound is refused before reading it. */
    if ((h->flags & F_CONTENT_LENGTH) && h->content_length > p->max_body) {
        p->limit = 2;
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t n)
{
    struct ij_kube_rparser *p = h->data;
    struct ij_kube_resp *r = p->resp;
    if (h->status_code < 200)
        return 0; /* a 1xx has no body; llhttp would not call this, but be sure */
    if (p->sink != NULL && h->status_code == 200) {
        if (p->sink(p->sink_arg, at, n) != 0) {
            p->limit = 3;
            return -1;
        }
        return 0;
    }
    if (n > p->max_body - r->body_len) {
        p->limit = 2;
        return -1;
    }
    if (r->body_len + n + 1 > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        r->body = cm_xrealloc(r->body, cap);
        p->cap = cap;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

static int on_message_complete(llhttp_t *h)
{
    struct ij_kube_rparser *p = h->data;
    if (h->status_code < 200)
        return 0; /* 100 Continue, 103 Early Hints: the final answer follows */
    p->resp->status = h->status_code;
    p->done = true;
    return HPE_PAUSED; /* ignore whatever follows: one request per connection */
}

void ij_kube_rparser_init(struct ij_kube_rparser *p, struct ij_kube_resp *resp, size_t max_body)
{
    memset(p, 0, sizeof(*p));
    memset(resp, 0, sizeof(*resp));
    p->resp = resp;
    p->max_body = max_body;
    p->cap = 1;
    resp->body = cm_xmalloc(1);
    resp->body[0] = '\0';
    llhttp_settings_init(&p->settings);
    p->settings.on_message_begin = on_message_begin;
    p->settings.on_status = on_status;
    p->settings.on_header_field = on_header_data;
    p->settings.on_header_value = on_header_data;
    p->settings.on_headers_complete = on_headers_complete;
    p->settings.on_body = on_body;
    p->settings.on_message_complete = on_message_complete;
    llhttp_init(&p->http, HTTP_RESPONSE, &p->settings);
    p->http.data = p;
}

/* The message for a parser error (llhttp's own, or one of our bounds). */
static int rparser_error(struct ij_kube_rparser *p, llhttp_errno_t e, char **errmsg)
{
    if (p->limit == 1)
        return ij_kube_fail(errmsg, CM_ERR_LIMIT, "response head exceeds %u bytes",
                            IJ_KUBE_MAX_HEAD);
    if (p->limit == 2)
        return ij_kube_fail(errmsg, CM_ERR_LIMIT, "response body exceeds %zu bytes", p->max_body);
    if (p->limit == 3) /* the sink said why in *errmsg, or did not */
        return errmsg != NULL && *errmsg != NULL
                   ? CM_ERR_LIMIT
                   : ij_kube_fail(errmsg, CM_ERR_LIMIT, "streamed body refused");
    if (e == HPE_PAUSED_UPGRADE)
        return ij_kube_fail(errmsg, CM_ERR_PROTO, "unexpected protocol upgrade (status %d)",
                            p->http.status_code);
    const char *reason = llhttp_get_error_reason(&p->http);
    return ij_kube_fail(errmsg, CM_ERR_PROTO, "not a valid HTTP/1.x response: %s (%s)",
                        reason ? reason : "?", llhttp_errno_name(e));
}

/* Feed bytes; returns 0 (p->done tells whether the response is complete) or
 * a negative cm_err. */
int ij_kube_rparser_feed(struct ij_kube_rparser *p, const char *buf, size_t len, char **errmsg)
{
    if (p->done || len == 0)
        return 0;
    llhttp_errno_t e = llhttp_execute(&p->http, buf, len);
    if (e == HPE_OK || (e == HPE_PAUSED && p->done))
        return 0;
    return rparser_error(p, e, errmsg);
}

/* The peer closed the connection. */
int ij_kube_rparser_eof(struct ij_kube_rparser *p, char **errmsg)
{
    if (p->done)
        return 0;
    llhttp_errno_t e = llhttp_finish(&p->http);
    if (e != HPE_OK && e != HPE_INVALID_EOF_STATE && !(e == HPE_PAUSED && p->done))
        return rparser_error(p, e, errmsg);
    if (!p->done)
        return ij_kube_fail(errmsg, CM_ERR_PROTO, "connection closed before the response %s",
                            p->head_bytes || p->http.status_code ? "ended" : "began");
    return 0;
}

int ij_kube_parse_response(const char *buf, size_t len, size_t max_body, struct ij_kube_resp *out,
                           char **errmsg)
{
    struct ij_kube_rparser p;
    ij_kube_rparser_init(&p, out, max_body);
    int rc = ij_kube_rparser_feed(&p, buf, len, errmsg);
    if (rc == 0)
        rc = ij_kube_rparser_eof(&p, errmsg);
    if (rc != 0)
        ij_kube_resp_deinit(out);
    return rc;
}

void ij_kube_resp_deinit(struct ij_kube_resp *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* The body as a Kubernetes Status object, or NULL (caller decrefs). */
static json_t *status_object(const struct ij_kube_resp *r)
{
    if (r->body == NULL || r->body_len == 0 || r->body_len > IJ_KUBE_MAX_BODY)
        return NULL;
    json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
    if (doc == NULL)
        return NULL;
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    if (!json_is_object(doc) || kind == NULL || strcmp(kind, "Status") != 0) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

char *ij_kube_resp_describe(const struct ij_kube_resp *r)
{
    json_t *st = status_object(r);
    json_t *m = st ? json_object_get(st, "message") : NULL;
    char *msg = NULL;
    if (json_is_string(m) && json_string_length(m) > 0)
        msg = ij_kube_sanitize(json_string_value(m), json_string_length(m),
                               IJ_KUBE_STATUS_MESSAGE_MAX);
    json_decref(st);
    char *out = cm_xasprintf("%d%s%s%s%s", r->status, r->reason[0] ? " " : "", r->reason,
                             msg ? ": " : "", msg ? msg : "");
    free(msg);
    return out;
}

char *ij_kube_status_details_kind(const struct ij_kube_resp *r)
{
    json_t *st = status_object(r);
    json_t *k = st ? json_object_get(json_object_get(st, "details"), "kind") : NULL;
    char *out = json_is_string(k)
                    ? ij_kube_sanitize(json_string_value(k), json_string_length(k), 64)
                    : NULL;
    json_decref(st);
    return out;
}

/* ---- objects ------------------------------------------------------------------------- */

static int load_object(const char *what, const char *body, size_t len, json_t **out, char **errmsg)
{
    json_error_t je;
    *out = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (*out == NULL)
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: not JSON: %s (at byte %d)", what, je.text,
                            je.position);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: not a JSON object", what);
    }
    return 0;
}

/* kind, when present, must be `want`. */
static int check_kind(const char *what, json_t *doc, const char *want, char **errmsg)
{
    json_t *k = json_object_get(doc, "kind");
    if (k == NULL)
        return 0;
    if (!json_is_string(k) || strcmp(json_string_value(k), want) != 0) {
        char *got = json_is_string(k)
                        ? ij_kube_sanitize(json_string_value(k), json_string_length(k), 64)
                        : cm_xstrdup("(not a string)");
        ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: kind is %s, want %s", what, got, want);
        free(got);
        return CM_ERR_INVAL;
    }
    return 0;
}

void ij_kube_ns_list_deinit(struct ij_kube_ns_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i].name);
    free(l->items);
    free(l->cont);
    memset(l, 0, sizeof(*l));
}

int ij_kube_ns_list_parse(const char *body, size_t len, struct ij_kube_ns_list *out, char **errmsg)
{
    static const char what[] = "NamespaceList";
    json_t *doc;
    memset(out, 0, sizeof(*out));
    int rc = load_object(what, body, len, &doc, errmsg);
    if (rc != 0)
        return rc;
    if ((rc = check_kind(what, doc, "NamespaceList", errmsg)) != 0)
        goto out;
    json_t *items = json_object_get(doc, "items");
    if (items != NULL && !json_is_array(items) && !json_is_null(items)) {
        rc = ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: items is not an array", what);
        goto out;
    }
    size_t n = json_is_array(items) ? json_array_size(items) : 0;
    if (n > IJ_KUBE_MAX_ITEMS) {
        rc = ij_kube_fail(errmsg, CM_ERR_LIMIT, "%s: %zu items, more than %u in one page", what, n,
                          IJ_KUBE_MAX_ITEMS);
        goto out;
    }
    json_t *md = json_object_get(doc, "metadata");
    json_t *cont = json_object_get(md, "continue");
    if (md != NULL && !json_is_object(md)) {
        rc = ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: metadata is not an object", what);
        goto out;
    }
    if (cont != NULL && !json_is_string(cont)) {
        rc = ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: metadata.continue is not a string", what);
        goto out;
    }
    out->items = cm_xcalloc(n ? n : 1, sizeof(*out->items));
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        json_t *imd = json_object_get(it, "metadata");
        json_t *name = json_object_get(imd, "name");
        if (!json_is_string(name) || json_string_length(name) == 0 ||
            strlen(json_string_value(name)) != json_string_length(name)) {
            rc = ij_kube_fail(errmsg, CM_ERR_INVAL,
                              "%s: items[%zu].metadata.name: want a non-empty string", what, i);
            goto out;
        }
        json_t *phase = json_object_get(json_object_get(it, "status"), "phase");
        json_t *del = json_object_get(imd, "deletionTimestamp");
        out->items[i].name = cm_xstrdup(json_string_value(name));
        out->items[i].terminating =
            (json_is_string(phase) && strcmp(json_string_value(phase), "Terminating") == 0) ||
            (del != NULL && !json_is_null(del));
        out->n++;
    }
    if (json_is_string(cont) && json_string_length(cont) > 0)
        out->cont = cm_xstrndup(json_string_value(cont), json_string_length(cont));
out:
    if (rc != 0)
        ij_kube_ns_list_deinit(out);
    json_decref(doc);
    return rc;
}

int ij_kube_configmap_value(const char *body, size_t len, const char *key, char **value,
                            size_t *vlen, char **errmsg)
{
    static const char what[] = "ConfigMap";
    json_t *doc;
    *value = NULL;
    *vlen = 0;
    int rc = load_object(what, body, len, &doc, errmsg);
    if (rc != 0)
        return rc;
    if ((rc = check_kind(what, doc, "ConfigMap", errmsg)) != 0)
        goto out;
    json_t *data = json_object_get(doc, "data");
    if (data != NULL && !json_is_object(data) && !json_is_null(data)) {
        rc = ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: data is not an object", what);
        goto out;
    }
    json_t *v = json_object_get(data, key);
    if (v == NULL || json_is_null(v))
        goto out;
    if (!json_is_string(v)) {
        rc = ij_kube_fail(errmsg, CM_ERR_INVAL, "%s: data.%s is not a string", what, key);
        goto out;
    }
    *vlen = json_string_length(v);
    *value = cm_xmalloc(*vlen + 1);
    memcpy(*value, json_string_value(v), *vlen);
    (*value)[*vlen] = '\0';
out:
    json_decref(doc);
    return rc;
}
