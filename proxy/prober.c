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
 * The prober is a small state machine on a raw non-blocking socket
 * (connect -> [TLS handshake] -> write request -> read status line) rather
 * than evhttp's client, which has no TLS of ours. /metrics uses the evhttp
 * client (scrape.c): there the body matters, and only plaintext is supported. */
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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/health_int.h"

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
bool px_health_is_field_value(const char *s)
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
    if (path[0] != '/' || !px_health_is_field_value(path)) {
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
        if (n == NULL || val == NULL || !is_token(n) || !px_health_is_field_value(val)) {
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
    px_health_reply_text(p->req, status, "%s", why);
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
int px_health_status_line(const char *buf, size_t len)
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
            int code = px_health_status_line(p->in, p->inlen);
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
        if (!hop_header(kv->key) && !prober_sets(pr, kv->key) &&
            px_health_is_field_value(kv->value))
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

void px_health_start_probe(struct px_health *h, const struct prober *pr, struct evhttp_request *req)
{
    if (h->ninflight >= MAX_INFLIGHT) {
        px_health_reply_text(req, 503, "app probe: too many probes in flight");
        return;
    }
    if (pr->https && !tls_config_ready(h)) {
        px_health_reply_text(req, 503, "app probe: cannot set up TLS");
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

void px_health_probes_abort(struct px_health *h)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &h->probes)
    {
        struct probe *p = cm_container_of(pos, struct probe, link);
        probe_done(p, 503, "shutting down");
    }
}
