/* The Kubernetes API client of the CA-root publisher (kube.h): URL handling,
 * the response and object decoders, and blocking HTTPS/1.1 requests on
 * mbedTLS with a per-request deadline. */
#include "injector/kube.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/watch.h"
#include "common/xalloc.h"
#include "injector/config.h"

#define STATUS_MESSAGE_MAX 512 /* of a Status.message quoted in an error */

static int kfail(char **errmsg, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int kfail(char **errmsg, int rc, const char *fmt, ...)
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
static char *sanitize(const char *s, size_t n, size_t max)
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
        return kfail(errmsg, CM_ERR_INVAL, "--api %s: want an https:// URL", url ? url : "(none)");
    const char *p = url + sizeof(scheme) - 1;
    const char *host, *hend;
    if (*p == '[') {
        host = p + 1;
        hend = strchr(host, ']');
        if (hend == NULL)
            return kfail(errmsg, CM_ERR_INVAL, "--api %s: unterminated '[' in the host", url);
        p = hend + 1;
    } else {
        host = p;
        hend = host + strcspn(host, ":/?#");
        p = hend;
    }
    size_t hlen = (size_t)(hend - host);
    if (hlen == 0 || hlen >= sizeof(out->host))
        return kfail(errmsg, CM_ERR_INVAL, "--api %s: %s host", url, hlen ? "too long a" : "no");
    memcpy(out->host, host, hlen);
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)out->host[i];
        if (c <= 0x20 || c >= 0x7f || c == '@' || c == '%')
            return kfail(errmsg, CM_ERR_INVAL, "--api %s: bad character in the host", url);
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
            return kfail(errmsg, CM_ERR_INVAL, "--api %s: bad port", url);
        snprintf(out->port, sizeof(out->port), "%ld", port);
        p += n;
    }
    if (*p != '\0' && *p != '/')
        return kfail(errmsg, CM_ERR_INVAL, "--api %s: unexpected '%c' after the host", url, *p);
    size_t blen = strlen(p);
    while (blen > 0 && p[blen - 1] == '/')
        blen--;
    if (blen >= sizeof(out->base))
        return kfail(errmsg, CM_ERR_INVAL, "--api %s: path too long", url);
    for (size_t i = 0; i < blen; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#')
            return kfail(errmsg, CM_ERR_INVAL, "--api %s: the path may not hold a query or '%c'",
                         url, c > 0x20 && c < 0x7f ? c : '?');
    }
    memcpy(out->base, p, blen);
    if (inet_pton(AF_INET, out->host, out->ip) == 1)
        out->iplen = 4;
    else if (inet_pton(AF_INET6, out->host, out->ip) == 1)
        out->iplen = 16;
    else if (host[-1] == '[')
        return kfail(errmsg, CM_ERR_INVAL, "--api %s: [%s] is not an IPv6 address", url, out->host);
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

/* Incremental state of one response being read. */
struct rparser {
    llhttp_t http;
    llhttp_settings_t settings;
    struct ij_kube_resp *resp;
    size_t max_body;
    size_t cap;        /* allocated bytes of resp->body */
    size_t head_bytes; /* status line and header bytes so far, 1xx included */
    size_t reason_len;
    bool done; /* a final response is complete */
    int limit; /* 0, or which bound a callback hit: 1 head, 2 body */
};

static int on_message_begin(llhttp_t *h)
{
    struct rparser *p = h->data;
    p->resp->body_len = 0;
    p->resp->reason[0] = '\0';
    p->reason_len = 0;
    return 0;
}

static int count_head(struct rparser *p, size_t n)
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
    struct rparser *p = h->data;
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
    struct rparser *p = h->data;
    /* A declared length past the bound is refused before reading it. */
    if ((h->flags & F_CONTENT_LENGTH) && h->content_length > p->max_body) {
        p->limit = 2;
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t n)
{
    struct rparser *p = h->data;
    struct ij_kube_resp *r = p->resp;
    if (h->status_code < 200)
        return 0; /* a 1xx has no body; llhttp would not call this, but be sure */
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
    struct rparser *p = h->data;
    if (h->status_code < 200)
        return 0; /* 100 Continue, 103 Early Hints: the final answer follows */
    p->resp->status = h->status_code;
    p->done = true;
    return HPE_PAUSED; /* ignore whatever follows: one request per connection */
}

static void rparser_init(struct rparser *p, struct ij_kube_resp *resp, size_t max_body)
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
static int rparser_error(struct rparser *p, llhttp_errno_t e, char **errmsg)
{
    if (p->limit == 1)
        return kfail(errmsg, CM_ERR_LIMIT, "response head exceeds %u bytes", IJ_KUBE_MAX_HEAD);
    if (p->limit == 2)
        return kfail(errmsg, CM_ERR_LIMIT, "response body exceeds %zu bytes", p->max_body);
    if (e == HPE_PAUSED_UPGRADE)
        return kfail(errmsg, CM_ERR_PROTO, "unexpected protocol upgrade (status %d)",
                     p->http.status_code);
    const char *reason = llhttp_get_error_reason(&p->http);
    return kfail(errmsg, CM_ERR_PROTO, "not a valid HTTP/1.x response: %s (%s)",
                 reason ? reason : "?", llhttp_errno_name(e));
}

/* Feed bytes; returns 0 (p->done tells whether the response is complete) or
 * a negative cm_err. */
static int rparser_feed(struct rparser *p, const char *buf, size_t len, char **errmsg)
{
    if (p->done || len == 0)
        return 0;
    llhttp_errno_t e = llhttp_execute(&p->http, buf, len);
    if (e == HPE_OK || (e == HPE_PAUSED && p->done))
        return 0;
    return rparser_error(p, e, errmsg);
}

/* The peer closed the connection. */
static int rparser_eof(struct rparser *p, char **errmsg)
{
    if (p->done)
        return 0;
    llhttp_errno_t e = llhttp_finish(&p->http);
    if (e != HPE_OK && e != HPE_INVALID_EOF_STATE && !(e == HPE_PAUSED && p->done))
        return rparser_error(p, e, errmsg);
    if (!p->done)
        return kfail(errmsg, CM_ERR_PROTO, "connection closed before the response %s",
                     p->head_bytes || p->http.status_code ? "ended" : "began");
    return 0;
}

int ij_kube_parse_response(const char *buf, size_t len, size_t max_body, struct ij_kube_resp *out,
                           char **errmsg)
{
    struct rparser p;
    rparser_init(&p, out, max_body);
    int rc = rparser_feed(&p, buf, len, errmsg);
    if (rc == 0)
        rc = rparser_eof(&p, errmsg);
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
        msg = sanitize(json_string_value(m), json_string_length(m), STATUS_MESSAGE_MAX);
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
    char *out =
        json_is_string(k) ? sanitize(json_string_value(k), json_string_length(k), 64) : NULL;
    json_decref(st);
    return out;
}

/* ---- objects ------------------------------------------------------------------------- */

static int load_object(const char *what, const char *body, size_t len, json_t **out, char **errmsg)
{
    json_error_t je;
    *out = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (*out == NULL)
        return kfail(errmsg, CM_ERR_INVAL, "%s: not JSON: %s (at byte %d)", what, je.text,
                     je.position);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return kfail(errmsg, CM_ERR_INVAL, "%s: not a JSON object", what);
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
        char *got = json_is_string(k) ? sanitize(json_string_value(k), json_string_length(k), 64)
                                      : cm_xstrdup("(not a string)");
        kfail(errmsg, CM_ERR_INVAL, "%s: kind is %s, want %s", what, got, want);
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
        rc = kfail(errmsg, CM_ERR_INVAL, "%s: items is not an array", what);
        goto out;
    }
    size_t n = json_is_array(items) ? json_array_size(items) : 0;
    if (n > IJ_KUBE_MAX_ITEMS) {
        rc = kfail(errmsg, CM_ERR_LIMIT, "%s: %zu items, more than %u in one page", what, n,
                   IJ_KUBE_MAX_ITEMS);
        goto out;
    }
    json_t *md = json_object_get(doc, "metadata");
    json_t *cont = json_object_get(md, "continue");
    if (md != NULL && !json_is_object(md)) {
        rc = kfail(errmsg, CM_ERR_INVAL, "%s: metadata is not an object", what);
        goto out;
    }
    if (cont != NULL && !json_is_string(cont)) {
        rc = kfail(errmsg, CM_ERR_INVAL, "%s: metadata.continue is not a string", what);
        goto out;
    }
    out->items = cm_xcalloc(n ? n : 1, sizeof(*out->items));
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        json_t *imd = json_object_get(it, "metadata");
        json_t *name = json_object_get(imd, "name");
        if (!json_is_string(name) || json_string_length(name) == 0 ||
            strlen(json_string_value(name)) != json_string_length(name)) {
            rc = kfail(errmsg, CM_ERR_INVAL,
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
        rc = kfail(errmsg, CM_ERR_INVAL, "%s: data is not an object", what);
        goto out;
    }
    json_t *v = json_object_get(data, key);
    if (v == NULL || json_is_null(v))
        goto out;
    if (!json_is_string(v)) {
        rc = kfail(errmsg, CM_ERR_INVAL, "%s: data.%s is not a string", what, key);
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

/* ---- the client ------------------------------------------------------------------------ */

struct ij_kube {
    pthread_mutex_t mu; /* guards token, token_stamp, session, have_session */
    char *token_file;
    struct cm_watch_stamp token_stamp; /* of the token in force (common/watch.h) */
    char agent[64];
    struct ij_kube_url url;
    char endpoint[300]; /* host:port, for messages */
    char host_hdr[300]; /* the Host header: the port only when not 443 */
    char *token;        /* without trailing white space */
    char *ca_file;
    int timeout_ms;
    mbedtls_x509_crt ca;
    mbedtls_ssl_config conf;
    /* The last full handshake's session: the next connection resumes it (a
     * ticket or a session ID; no key exchange, no certificate chain). */
    mbedtls_ssl_session session;
    bool have_session;
};

/* One connection's socket and deadline; the mbedTLS I/O callbacks wait on
 * it with poll() and give up at the deadline. */
struct conn {
    int fd;
    uint64_t deadline_ms; /* cm_mono_ms() */
    bool timed_out;       /* the last failure was the deadline */
    int sys_errno;        /* the last failure's errno, or 0 */
};

/* Wait until fd is ready for `events` or the deadline passes. */
static int conn_wait(struct conn *c, short events)
{
    for (;;) {
        uint64_t now = cm_mono_ms();
        if (now >= c->deadline_ms) {
            c->timed_out = true;
            return -1;
        }
        struct pollfd pfd = {.fd = c->fd, .events = events};
        int n = poll(&pfd, 1, (int)(c->deadline_ms - now));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR) {
            c->sys_errno = errno;
            return -1;
        }
    }
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    struct conn *c = ctx;
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return (int)n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            c->sys_errno = errno;
            return MBEDTLS_ERR_NET_SEND_FAILED;
        }
        if (conn_wait(c, POLLOUT) != 0)
            return MBEDTLS_ERR_NET_SEND_FAILED;
    }
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    struct conn *c = ctx;
    for (;;) {
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n >= 0)
            return (int)n; /* 0: EOF */
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            c->sys_errno = errno;
            return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
        }
        if (conn_wait(c, POLLIN) != 0)
            return MBEDTLS_ERR_NET_RECV_FAILED;
    }
}

/* An IP-literal URL: the leaf must carry that address as an iPAddress SAN
 * (mbedTLS 2.28 matches names only). Called for each certificate of the
 * chain; depth 0 is the server's own. */
static int verify_ip_san(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    const struct ij_kube *k = arg;
    if (depth != 0)
        return 0;
    bool ok = false;
    if (crt->ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME) {
        for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s != NULL; s = s->next) {
            if (s->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_IP_ADDRESS) &&
                s->buf.len == k->url.iplen && memcmp(s->buf.p, k->url.ip, k->url.iplen) == 0)
                ok = true;
        }
    }
    if (!ok)
        *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    return 0;
}

static int read_token(struct ij_kube *k, const char *file, char **errmsg)
{
    unsigned char *buf;
    size_t len;
    char *inner = NULL;
    int rc = pki_read_file(file, IJ_KUBE_MAX_TOKEN, &buf, &len, &inner);
    if (rc != 0) {
        kfail(errmsg, rc, "token: %s", inner);
        free(inner);
        return rc;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                       buf[len - 1] == '\t'))
        len--;
    buf[len] = '\0';
    if (len == 0) {
        free(buf);
        return kfail(errmsg, CM_ERR_INVAL, "token: %s is empty", file);
    }
    for (size_t i = 0; i < len; i++) {
        if (buf[i] <= 0x20 || buf[i] >= 0x7f) {
            free(buf);
            return kfail(errmsg, CM_ERR_INVAL,
                         "token: %s: byte %zu is white space or not ASCII (not a bearer token)",
                         file, i);
        }
    }
    if (k->token != NULL) {
        mbedtls_platform_zeroize(k->token, strlen(k->token));
        free(k->token);
    }
    k->token = (char *)buf;
    return 0;
}

/* Under k->mu: read the token file again when it changed on disk. A file
 * that cannot be read (mid-rotation) keeps the token in force. */
static void maybe_reload_token(struct ij_kube *k)
{
    struct cm_watch_stamp now;
    cm_watch_stamp_get(k->token_file, &now);
    if (!cm_watch_changed(&k->token_stamp, &now))
        return;
    char *err = NULL;
    if (read_token(k, k->token_file, &err) == 0)
        k->token_stamp = now;
    free(err);
}

int ij_kube_new(const struct ij_kube_opts *o, struct ij_kube **out, char **errmsg)
{
    static const char *alpn[] = {"http/1.1", NULL};
    struct ij_kube *k = cm_xcalloc(1, sizeof(*k));
    char *inner = NULL;
    int rc, ret;
    mbedtls_x509_crt_init(&k->ca);
    mbedtls_ssl_config_init(&k->conf);
    mbedtls_ssl_session_init(&k->session);
    pthread_mutex_init(&k->mu, NULL);
    k->token_file = cm_xstrdup(o->token_file);
    snprintf(k->agent, sizeof(k->agent), "%s", o->agent != NULL ? o->agent : "publish-ca-root");
    k->timeout_ms = o->timeout_ms;
    k->ca_file = cm_xstrdup(o->ca_file);
    if ((rc = ij_kube_url_parse(o->api, &k->url, errmsg)) != 0)
        goto fail;
    bool v6 = k->url.iplen == 16;
    bool dflt = strcmp(k->url.port, "443") == 0;
    snprintf(k->endpoint, sizeof(k->endpoint), "%s%s%s:%s", v6 ? "[" : "", k->url.host,
             v6 ? "]" : "", k->url.port);
    snprintf(k->host_hdr, sizeof(k->host_hdr), "%s%s%s%s%s", v6 ? "[" : "", k->url.host,
             v6 ? "]" : "", dflt ? "" : ":", dflt ? "" : k->url.port);
    cm_watch_stamp_get(o->token_file, &k->token_stamp);
    if ((rc = read_token(k, o->token_file, errmsg)) != 0)
        goto fail;
    if ((rc = pki_bundle_load_file(&k->ca, o->ca_file, &inner)) != 0) {
        kfail(errmsg, rc, "--ca-file: %s", inner);
        goto fail;
    }
    ret = mbedtls_ssl_config_defaults(&k->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                      MBEDTLS_SSL_PRESET_DEFAULT);
    if (ret != 0) {
        rc = kfail(errmsg, CM_ERR_INVAL, "TLS config: -0x%04x", (unsigned)-ret);
        goto fail;
    }
    mbedtls_ssl_conf_min_version(&k->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_authmode(&k->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&k->conf, &k->ca, NULL);
    mbedtls_ssl_conf_rng(&k->conf, pki_rng_fn, pki_rng());
    mbedtls_ssl_conf_alpn_protocols(&k->conf, alpn);
    if (k->url.iplen != 0)
        mbedtls_ssl_conf_verify(&k->conf, verify_ip_san, k);
    *out = k;
    return 0;
fail:
    free(inner);
    ij_kube_free(k);
    return rc;
}

void ij_kube_free(struct ij_kube *k)
{
    if (k == NULL)
        return;
    mbedtls_ssl_session_free(&k->session);
    mbedtls_ssl_config_free(&k->conf);
    mbedtls_x509_crt_free(&k->ca);
    if (k->token != NULL)
        mbedtls_platform_zeroize(k->token, strlen(k->token));
    free(k->token);
    free(k->token_file);
    free(k->ca_file);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

const char *ij_kube_endpoint(const struct ij_kube *k)
{
    return k->endpoint;
}

/* Connect to the first address of the host that accepts before the deadline. */
static int do_connect(struct ij_kube *k, struct conn *c, char **errmsg)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    if (k->url.iplen != 0)
        hints.ai_flags |= AI_NUMERICHOST;
    int gai = getaddrinfo(k->url.host, k->url.port, &hints, &res);
    if (gai != 0)
        return kfail(errmsg, CM_ERR_IO, "resolve %s: %s", k->url.host,
                     gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
    int err = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        c->fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (c->fd < 0) {
            err = errno;
            continue;
        }
        /* A handshake is several small writes: without this, Nagle holds
         * each behind the peer's delayed ACK (40 ms a time; Go sets it too). */
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        err = errno;
        if (err == EINPROGRESS) {
            if (conn_wait(c, POLLOUT) == 0) {
                socklen_t sl = sizeof(err);
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl) != 0)
                    err = errno;
                if (err == 0)
                    break;
            } else {
                err = c->timed_out ? ETIMEDOUT : c->sys_errno;
            }
        }
        close(c->fd);
        c->fd = -1;
        if (c->timed_out)
            break;
    }
    freeaddrinfo(res);
    if (c->fd >= 0)
        return 0;
    if (c->timed_out)
        return kfail(errmsg, CM_ERR_TIMEOUT, "connect to %s: no connection within %d ms",
                     k->endpoint, k->timeout_ms);
    return kfail(errmsg, CM_ERR_IO, "connect to %s: %s", k->endpoint, strerror(err));
}

/* The message for a failed mbedTLS call on connection c during `what`. */
static int io_fail(struct ij_kube *k, struct conn *c, mbedtls_ssl_context *ssl, int ret,
                   const char *what, char **errmsg)
{
    if (c->timed_out)
        return kfail(errmsg, CM_ERR_TIMEOUT, "%s %s: no answer within %d ms (--timeout-ms)", what,
                     k->endpoint, k->timeout_ms);
    if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        char info[512];
        uint32_t flags = mbedtls_ssl_get_verify_result(ssl);
        int n = mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
        if (n < 0)
            snprintf(info, sizeof(info), "flags 0x%x", flags);
        /* one reason a line: joined with "; " */
        char joined[600], *save = NULL;
        size_t j = 0;
        joined[0] = '\0';
        for (char *line = strtok_r(info, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            int w = snprintf(joined + j, sizeof(joined) - j, "%s%s", j ? "; " : "", line);
            if (w < 0 || (size_t)w >= sizeof(joined) - j)
                break;
            j += (size_t)w;
        }
        return kfail(
            errmsg, CM_ERR_PROTO,
            "%s %s: the API server's certificate is not trusted (--ca-file %s, name %s): %s", what,
            k->endpoint, k->ca_file, k->url.host, joined);
    }
    char buf[160];
    mbedtls_strerror(ret, buf, sizeof(buf));
    if (c->sys_errno != 0)
        return kfail(errmsg, CM_ERR_IO, "%s %s: %s", what, k->endpoint, strerror(c->sys_errno));
    return kfail(errmsg, CM_ERR_PROTO, "%s %s: %s (-0x%04x)", what, k->endpoint, buf,
                 (unsigned)-ret);
}

static int ssl_write_all(struct ij_kube *k, struct conn *c, mbedtls_ssl_context *ssl, const char *p,
                         size_t n, char **errmsg)
{
    while (n > 0) {
        int ret = mbedtls_ssl_write(ssl, (const unsigned char *)p, n);
        if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (ret < 0)
            return io_fail(k, c, ssl, ret, "write to", errmsg);
        p += ret;
        n -= (size_t)ret;
    }
    return 0;
}

static int exchange(struct ij_kube *k, struct conn *c, mbedtls_ssl_context *ssl, const char *head,
                    const char *body, size_t body_len, struct ij_kube_resp *out, char **errmsg)
{
    int ret, rc;
    if ((ret = mbedtls_ssl_setup(ssl, &k->conf)) != 0)
        return io_fail(k, c, ssl, ret, "TLS setup for", errmsg);
    /* DNS names go through mbedTLS's name check (and SNI); an IP literal is
     * checked by verify_ip_san and sends no SNI (RFC 6066). */
    if (k->url.iplen == 0 && (ret = mbedtls_ssl_set_hostname(ssl, k->url.host)) != 0)
        return io_fail(k, c, ssl, ret, "TLS setup for", errmsg);
    mbedtls_ssl_set_bio(ssl, c, bio_send, bio_recv, NULL);
    /* A session the server no longer knows just costs a full handshake. */
    pthread_mutex_lock(&k->mu);
    if (k->have_session)
        mbedtls_ssl_set_session(ssl, &k->session);
    pthread_mutex_unlock(&k->mu);
    while ((ret = mbedtls_ssl_handshake(ssl)) != 0) {
        if (ret != MBEDTLS_ERR_SSL_WANT_READ && ret != MBEDTLS_ERR_SSL_WANT_WRITE)
            return io_fail(k, c, ssl, ret, "TLS handshake with", errmsg);
    }
    pthread_mutex_lock(&k->mu);
    mbedtls_ssl_session_free(&k->session);
    mbedtls_ssl_session_init(&k->session);
    k->have_session = mbedtls_ssl_get_session(ssl, &k->session) == 0;
    pthread_mutex_unlock(&k->mu);
    /* head and body in one buffer: one TLS record, one segment when small */
    size_t hlen = strlen(head);
    char *req = cm_xmalloc(hlen + body_len);
    memcpy(req, head, hlen);
    if (body_len > 0)
        memcpy(req + hlen, body, body_len);
    rc = ssl_write_all(k, c, ssl, req, hlen + body_len, errmsg);
    mbedtls_platform_zeroize(req, hlen); /* the token is in there */
    free(req);
    if (rc != 0)
        return rc;

    struct rparser p;
    rparser_init(&p, out, IJ_KUBE_MAX_BODY);
    unsigned char buf[16384];
    for (;;) {
        ret = mbedtls_ssl_read(ssl, buf, sizeof(buf));
        if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (ret == 0 || ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ||
            ret == MBEDTLS_ERR_SSL_CONN_EOF) {
            rc = rparser_eof(&p, errmsg);
            break;
        }
        if (ret < 0) {
            rc = io_fail(k, c, ssl, ret, "read from", errmsg);
            break;
        }
        if ((rc = rparser_feed(&p, (const char *)buf, (size_t)ret, errmsg)) != 0 || p.done)
            break;
    }
    if (rc != 0)
        ij_kube_resp_deinit(out);
    return rc;
}

int ij_kube_request(struct ij_kube *k, const char *method, const char *path, const char *ctype,
                    const char *body, size_t body_len, struct ij_kube_resp *out, char **errmsg)
{
    struct conn c = {.fd = -1, .deadline_ms = cm_mono_ms() + (uint64_t)k->timeout_ms};
    char *inner = NULL;
    memset(out, 0, sizeof(*out));
    int rc = do_connect(k, &c, &inner);
    if (rc == 0) {
        char *clen = body ? cm_xasprintf("Content-Type: %s\r\nContent-Length: %zu\r\n",
                                         ctype ? ctype : "application/json", body_len)
                          : cm_xstrdup("");
        pthread_mutex_lock(&k->mu);
        maybe_reload_token(k);
        char *head = cm_xasprintf("%s %s%s HTTP/1.1\r\n"
                                  "Host: %s\r\n"
                                  "Authorization: Bearer %s\r\n"
                                  "User-Agent: remora-injector/%s (%s)\r\n"
                                  "Accept: application/json\r\n"
                                  "Connection: close\r\n"
                                  "%s\r\n",
                                  method, k->url.base, path, k->host_hdr, k->token, IJ_VERSION,
                                  k->agent, clen);
        pthread_mutex_unlock(&k->mu);
        mbedtls_ssl_context ssl;
        mbedtls_ssl_init(&ssl);
        rc = exchange(k, &c, &ssl, head, body, body ? body_len : 0, out, &inner);
        mbedtls_ssl_free(&ssl);
        mbedtls_platform_zeroize(head, strlen(head)); /* the token is in there */
        free(head);
        free(clen);
        close(c.fd);
    }
    if (rc != 0) {
        kfail(errmsg, rc, "%s %s: %s", method, path, inner);
        free(inner);
    }
    return rc;
}
