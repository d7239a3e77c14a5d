/* grpc.health.v1.Health/Check against the app for the health port
 * (proxy/grpc_health.h). One check = one h2c connection to 127.0.0.1:port,
 * one stream, a bounded response, a timer; kubelet's own gRPC prober does the
 * same (a fresh connection per probe). */
#include "proxy/grpc_health.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <jansson.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/health_int.h"

#define GRPC_MAX_PROBERS  64
#define GRPC_MAX_ENV      (64 * 1024)
#define GRPC_MAX_SERVICE  200 /* bytes of a service name (one-byte protobuf length) */
#define GRPC_MAX_RESPONSE 128 /* bytes of the response message we read; more is an error */
#define GRPC_MAX_INFLIGHT 64

struct grpc_prober {
    char *path;
    uint16_t port;
    char *service;
    unsigned timeout_ms;
};

struct px_grpc_health {
    struct event_base *base;
    struct grpc_prober *p;
    size_t n;
    struct cm_list checks;
    unsigned ninflight;
};

/* One check in flight. */
struct check {
    struct cm_list link;
    struct px_grpc_health *g;
    const struct grpc_prober *pr;
    struct evhttp_request *req;
    struct bufferevent *bev;
    nghttp2_session *ng;
    struct event *timer;
    uint8_t body[5 + 2 + GRPC_MAX_SERVICE]; /* the request message */
    size_t body_len, body_off;
    uint8_t resp[GRPC_MAX_RESPONSE];
    size_t resp_len;
    bool resp_over;    /* more than GRPC_MAX_RESPONSE bytes of DATA */
    int http_status;   /* :status, 0 unseen */
    int grpc_status;   /* grpc-status, -1 unseen */
    char grpc_msg[96]; /* grpc-message, printable ASCII */
    bool closed;       /* the stream ended */
    uint32_t rst;      /* its error code */
};

/* ---- the response message ------------------------------------------------------ */

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p == end)
            return -1;
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

int px_grpc_health_parse(const uint8_t *buf, size_t len, int64_t *status)
{
    *status = 0;
    if (len < 5 || buf[0] != 0) /* compressed messages are not asked for */
        return -1;
    uint32_t mlen =
        (uint32_t)buf[1] << 24 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 8 | buf[4];
    if (mlen != len - 5)
        return -1;
    const uint8_t *p = buf + 5, *end = buf + len;
    while (p < end) {
        uint64_t key, v;
        if (varint(&p, end, &key) != 0 || key >> 3 == 0 || key >> 3 > 0x1fffffff)
            return -1;
        switch (key & 7) {
        case 0: /* varint */
            if (varint(&p, end, &v) != 0)
                return -1;
            if (key >> 3 == 1)
                *status = (int64_t)(int32_t)(uint32_t)v; /* an enum is an int32 */
            break;
        case 1: /* 64-bit */
            if (end - p < 8)
                return -1;
            p += 8;
            break;
        case 2: /* length-delimited */
            if (varint(&p, end, &v) != 0 || v > (uint64_t)(end - p))
                return -1;
            p += v;
            break;
        case 5: /* 32-bit */
            if (end - p < 4)
                return -1;
            p += 4;
            break;
        default:
            return -1;
        }
        if ((key >> 3) == 1 && (key & 7) != 0)
            return -1; /* status must be a varint */
    }
    return 0;
}

/* ---- probers ------------------------------------------------------------------- */

static bool prober_parse(const char *path, json_t *v, struct grpc_prober *p, const char **why)
{
    json_t *grpc = json_object_get(v, "grpc");
    json_t *port = json_object_get(grpc, "port");
    json_t *svc = json_object_get(grpc, "service");
    json_t *to = json_object_get(v, "timeoutSeconds");
    if (strncmp(path, "/app-health/", 12) != 0 || strlen(path) > 256) {
        *why = "the path is not /app-health/...";
        return false;
    }
    if (!json_is_object(grpc)) {
        *why = "no grpc object";
        return false;
    }
    if (!json_is_integer(port) || json_integer_value(port) < 1 ||
        json_integer_value(port) > 65535) {
        *why = "grpc.port is not a port number";
        return false;
    }
    if (svc != NULL && (!json_is_string(svc) || json_string_length(svc) > GRPC_MAX_SERVICE)) {
        *why = "grpc.service is not a string of at most 200 bytes";
        return false;
    }
    json_int_t t = json_is_integer(to) ? json_integer_value(to) : 1; /* kubelet's default */
    if (t < 1)
        t = 1;
    p->path = cm_xstrdup(path);
    p->port = (uint16_t)json_integer_value(port);
    p->service = cm_xstrdup(svc != NULL ? json_string_value(svc) : "");
    p->timeout_ms = t * 1000 > PROBE_MAX_TIMEOUT_MS ? PROBE_MAX_TIMEOUT_MS : (unsigned)t * 1000;
    return true;
}

struct px_grpc_health *px_grpc_health_new(struct event_base *base, const char *env)
{
    struct px_grpc_health *g = cm_xcalloc(1, sizeof(*g));
    g->base = base;
    cm_list_init(&g->checks);
    if (env == NULL || *env == '\0')
        return g;
    if (strlen(env) > GRPC_MAX_ENV) {
        cm_warn("health: REMORA_APP_GRPC_PROBERS is over %d bytes; gRPC probes are off",
                GRPC_MAX_ENV);
        return g;
    }
    json_error_t jerr;
    json_t *root = json_loads(env, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        cm_warn("health: REMORA_APP_GRPC_PROBERS is not a JSON object (%s); gRPC probes are off",
                root == NULL ? jerr.text : "wrong type");
        json_decref(root);
        return g;
    }
    g->p = cm_xcalloc(GRPC_MAX_PROBERS, sizeof(*g->p));
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        const char *why = NULL;
        if (g->n == GRPC_MAX_PROBERS) {
            cm_warn("health: REMORA_APP_GRPC_PROBERS: only the first %d entries are served",
                    GRPC_MAX_PROBERS);
            break;
        }
        if (prober_parse(key, v, &g->p[g->n], &why)) {
            cm_info("health: %s -> grpc.health.v1.Health/Check \"%s\" at 127.0.0.1:%u",
                    g->p[g->n].path, g->p[g->n].service, (unsigned)g->p[g->n].port);
            g->n++;
        } else {
            cm_warn("health: REMORA_APP_GRPC_PROBERS[\"%.100s\"]: %s; that probe answers 404", key,
                    why);
        }
    }
    json_decref(root);
    return g;
}

size_t px_grpc_health_count(const struct px_grpc_health *g)
{
    return g != NULL ? g->n : 0;
}

/* ---- one check ------------------------------------------------------------------ */

static void check_free(struct check *c)
{
    cm_list_remove(&c->link);
    c->g->ninflight--;
    if (c->ng != NULL)
        nghttp2_session_del(c->ng);
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    if (c->timer != NULL)
        event_free(c->timer);
    free(c);
}

static void check_done(struct check *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void check_done(struct check *c, int status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    px_health_reply_text(c->req, status, "%s", msg);
    check_free(c);
}

/* The stream ended (or the connection did): say what the app answered. */
static void check_finish(struct check *c)
{
    static const char *const names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    int64_t st;
    if (c->http_status != 0 && c->http_status != 200) {
        check_done(c, 503, "gRPC health check: HTTP status %d", c->http_status);
    } else if (c->grpc_status > 0) {
        check_done(c, 503, "gRPC health check: grpc-status %d%s%s%s", c->grpc_status,
                   c->grpc_status == 12 ? " (the app does not serve grpc.health.v1.Health)" : "",
                   c->grpc_msg[0] ? ": " : "", c->grpc_msg);
    } else if (c->grpc_status < 0 || c->rst != 0) {
        check_done(c, 503, "gRPC health check: the stream ended without grpc-status");
    } else if (c->resp_over || px_grpc_health_parse(c->resp, c->resp_len, &st) != 0) {
        check_done(c, 503, "gRPC health check: the response is not a HealthCheckResponse");
    } else if (st == 1) {
        check_done(c, 200, "gRPC health check: SERVING");
    } else {
        check_done(c, 503, "gRPC health check: %s",
                   st >= 0 && st <= 3 ? names[st] : "an unknown status");
    }
}

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    struct check *c = arg;
    (void)s, (void)flags;
    if (bufferevent_write(c->bev, data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *arg)
{
    struct check *c = arg;
    (void)s, (void)flags;
    if (f->hd.stream_id != 1)
        return 0;
    char v[16];
    if (nlen == 7 && memcmp(name, ":status", 7) == 0 && vlen == 3) {
        memcpy(v, value, 3);
        v[3] = '\0';
        c->http_status = (int)strtol(v, NULL, 10);
    } else if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        c->grpc_status = 9999; /* not a number: a failure */
        if (vlen >= 1 && vlen <= 3) {
            memcpy(v, value, vlen);
            v[vlen] = '\0';
            if (strspn(v, "0123456789") == vlen)
                c->grpc_status = (int)strtol(v, NULL, 10);
        }
    } else if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        size_t n = vlen < sizeof(c->grpc_msg) - 1 ? vlen : sizeof(c->grpc_msg) - 1;
        for (size_t i = 0; i < n; i++)
            c->grpc_msg[i] = value[i] >= 0x20 && value[i] < 0x7f ? (char)value[i] : '?';
        c->grpc_msg[n] = '\0';
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *arg)
{
    struct check *c = arg;
    (void)s, (void)flags;
    if (id != 1)
        return 0;
    if (len > sizeof(c->resp) - c->resp_len) {
        c->resp_over = true;
        return 0;
    }
    memcpy(c->resp + c->resp_len, data, len);
    c->resp_len += len;
    return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *arg)
{
    struct check *c = arg;
    (void)s;
    if (id == 1) {
        c->closed = true;
        c->rst = code;
    }
    return 0;
}

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *arg)
{
    struct check *c = arg;
    (void)s, (void)id, (void)src;
    size_t n = c->body_len - c->body_off;
    if (n > len)
        n = len;
    memcpy(buf, c->body + c->body_off, n);
    c->body_off += n;
    if (c->body_off == c->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void on_bev_read(struct bufferevent *bev, void *arg)
{
    struct check *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(in);
    ssize_t r = nghttp2_session_mem_recv(c->ng, evbuffer_pullup(in, (ev_ssize_t)n), n);
    if (r < 0) {
        check_done(c, 503, "gRPC health check: HTTP/2 error from the app: %s",
                   nghttp2_strerror((int)r));
        return;
    }
    evbuffer_drain(in, n);
    if (c->closed) {
        check_finish(c);
        return;
    }
    if (nghttp2_session_send(c->ng) != 0)
        check_done(c, 503, "gRPC health check: HTTP/2 send failed");
}

static void on_bev_event(struct bufferevent *bev, short what, void *arg)
{
    struct check *c = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        const nghttp2_nv nva[] = {
#define NV(n, v)                                                                                   \
    {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME}
            NV(":method", "POST"),
            NV(":scheme", "http"),
            NV(":path", "/grpc.health.v1.Health/Check"),
            NV(":authority", "127.0.0.1"),
            NV("content-type", "application/grpc"),
            NV("te", "trailers"),
            NV("user-agent", "remora-proxy/health"),
#undef NV
        };
        nghttp2_data_provider prd = {.read_callback = body_read};
        if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, NULL, 0) != 0 ||
            nghttp2_submit_request(c->ng, NULL, nva, sizeof(nva) / sizeof(nva[0]), &prd, c) != 1 ||
            nghttp2_session_send(c->ng) != 0)
            check_done(c, 503, "gRPC health check: cannot send the request");
        return;
    }
    if (c->closed) {
        check_finish(c);
        return;
    }
    check_done(c, 503, "gRPC health check: %s 127.0.0.1:%u",
               (what & BEV_EVENT_EOF) ? "connection closed by" : "cannot connect to",
               (unsigned)c->pr->port);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct check *c = arg;
    (void)fd, (void)what;
    check_done(c, 503, "gRPC health check: no answer from 127.0.0.1:%u within %u ms",
               (unsigned)c->pr->port, c->pr->timeout_ms);
}

bool px_grpc_health_handle(struct px_grpc_health *g, const char *path, struct evhttp_request *req)
{
    const struct grpc_prober *pr = NULL;
    for (size_t i = 0; g != NULL && i < g->n && pr == NULL; i++)
        if (strcmp(g->p[i].path, path) == 0)
            pr = &g->p[i];
    if (pr == NULL)
        return false;
    if (g->ninflight >= GRPC_MAX_INFLIGHT) {
        px_health_reply_text(req, 503, "gRPC health check: too many checks in flight");
        return true;
    }
    struct check *c = cm_xcalloc(1, sizeof(*c));
    c->g = g;
    c->pr = pr;
    c->req = req;
    c->grpc_status = -1;
    cm_list_insert_tail(&g->checks, &c->link);
    g->ninflight++;

    /* HealthCheckRequest {string service = 1;} in one uncompressed message */
    size_t slen = strlen(pr->service), m = slen > 0 ? 2 + slen : 0;
    c->body[0] = 0;
    c->body[1] = c->body[2] = c->body[3] = 0;
    c->body[4] = (uint8_t)m;
    if (slen > 0) {
        c->body[5] = 0x0a; /* field 1, length-delimited */
        c->body[6] = (uint8_t)slen;
        memcpy(c->body + 7, pr->service, slen);
    }
    c->body_len = 5 + m;

    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    int rv = nghttp2_session_client_new(&c->ng, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        c->ng = NULL;
        check_done(c, 503, "gRPC health check: nghttp2: %s", nghttp2_strerror(rv));
        return true;
    }
    c->timer = evtimer_new(g->base, on_timeout, c);
    struct timeval tv = cm_tv_ms(pr->timeout_ms);
    evtimer_add(c->timer, &tv);
    c->bev = bufferevent_socket_new(g->base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, on_bev_read, NULL, on_bev_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(pr->port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&sin, sizeof(sin)) != 0)
        check_done(c, 503, "gRPC health check: cannot connect to 127.0.0.1:%u", (unsigned)pr->port);
    return true;
}

void px_grpc_health_free(struct px_grpc_health *g)
{
    if (g == NULL)
        return;
    while (!cm_list_empty(&g->checks)) {
        struct check *c = cm_container_of(g->checks.next, struct check, link);
        check_done(c, 503, "gRPC health check: shutting down");
    }
    for (size_t i = 0; i < g->n; i++) {
        free(g->p[i].path);
        free(g->p[i].service);
    }
    free(g->p);
    free(g);
}
