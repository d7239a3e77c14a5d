/* Unit tests of proxy/stream.c, the exchange state machine, driven through
 * a fake downstream codec and a fake upstream codec that implement
 * px_side_ops and report to the stream as h1_server.c / h1_client.c do, on a
 * real libevent base so the timers fire: a plain exchange (bytes checked on
 * both sides, hop-by-hop headers stripped), request and response
 * backpressure, a retry on another endpoint after a refused connect and
 * after a reset (counted), no retry once the body outgrew
 * retry_buffer_bytes (502), the per-try and the request timeout (504), a
 * client abort mid-request (the upstream is aborted and every record let
 * go: ASan checks the rest), drain, and the circuit breaker's queue (a
 * queued request cancelled by its client, a queued one admitted when the
 * connection frees, with the body that arrived meanwhile).
 *
 * The fake upstream replaces px_stream_attach_upstream (the seam in
 * stream.h); everything else (routes, pool, metrics, server drain) is the
 * real code. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "test/unit/proxy/fake_server.h"
#include "proxy/conn.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/routes.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

__attribute__((weak)) struct px_server *px_srv;

/* stream.c's own, declared there next to their definitions */
void px_stream_gc(struct px_server *srv);
void px_stream_freelist_clear(void);

#define BIG UINT32_MAX

static struct px_server srv;
static struct px_config cfg;
static struct px_listener_cfg lcfg;
static char routes_path[64];

/* ---- the fake codecs ------------------------------------------------------ */

/* One fake side: the downstream (a server codec: it receives the response)
 * or one try's upstream (a client codec: it receives the request). */
struct fake {
    struct px_stream *s;
    enum px_side side;
    struct evbuffer *body; /* body bytes received */
    bool ended, aborted, detached;
    size_t pend; /* what pending() answers */
    int resumes;
    /* downstream */
    struct px_conn conn;
    int status;          /* of the response head sent, 0 before */
    char head_hdrs[512]; /* "name: value\n" of that head */
    char trailers[256];  /* "name: value\n" of the trailers sent at the end */
    /* upstream */
    struct cm_addr addr;
    struct px_upstream_ep *pep; /* the pool record its "connection" counts in */
    char method[16], path[64];
};

static void fake_detach(struct fake *f)
{
    if (f->detached)
        return;
    f->detached = true;
    if (f->side == PX_UP)
        px_pool_conn_closed(f->pep);
    px_stream_detach(f->s, f->side);
}

/* The ops both sides share, for side SIDE (its context in s->ctx[SIDE]). */
#define FAKE_COMMON_OPS(prefix, SIDE)                                                              \
    static void prefix##_send_data(struct px_stream *s, const uint8_t *data, size_t len)           \
    {                                                                                              \
        evbuffer_add(((struct fake *)s->ctx[SIDE])->body, data, len);                              \
    }                                                                                              \
    static size_t prefix##_pending(struct px_stream *s)                                            \
    {                                                                                              \
        return ((struct fake *)s->ctx[SIDE])->pend;                                                \
    }                                                                                              \
    static void prefix##_resume(struct px_stream *s)                                               \
    {                                                                                              \
        ((struct fake *)s->ctx[SIDE])->resumes++;                                                  \
    }                                                                                              \
    static void prefix##_abort(struct px_stream *s)                                                \
    {                                                                                              \
        struct fake *f = s->ctx[SIDE];                                                             \
        f->aborted = true;                                                                         \
        fake_detach(f);                                                                            \
    }
FAKE_COMMON_OPS(fd, PX_DOWN)
FAKE_COMMON_OPS(fu, PX_UP)

static void fd_send_head(struct px_stream *s)
{
    struct fake *d = s->ctx[PX_DOWN];
    d->status = s->resp.status;
    size_t off = 0;
    for (uint32_t i = 0; i < s->resp.nhdrs && off < sizeof(d->head_hdrs); i++)
        off += (size_t)snprintf(d->head_hdrs + off, sizeof(d->head_hdrs) - off, "%s: %s\n",
                                s->resp.hdrs[i].name, s->resp.hdrs[i].value);
}

/* A real server codec lets go of the stream once its response is written. */
static void fd_send_end(struct px_stream *s)
{
    struct fake *d = s->ctx[PX_DOWN];
    const struct px_msg *t = s->resp_trailers;
    size_t off = 0;
    for (uint32_t i = 0; t != NULL && i < t->nhdrs && off < sizeof(d->trailers); i++)
        off += (size_t)snprintf(d->trailers + off, sizeof(d->trailers) - off, "%s: %s\n",
                                t->hdrs[i].name, t->hdrs[i].value);
    d->ended = true;
    fake_detach(d);
}

static const struct px_side_ops fdown_ops = {"fake-down", fd_send_head, fd_send_data, fd_send_end,
                                             fd_pending,  fd_resume,    fd_abort};
/* The same, named as the HTTP/2 server codec: gRPC answers need trailers. */
static const struct px_side_ops fdown_h2_ops = {
    "h2-server", fd_send_head, fd_send_data, fd_send_end, fd_pending, fd_resume, fd_abort};

static void fu_send_head(struct px_stream *s)
{
    struct fake *u = s->ctx[PX_UP];
    snprintf(u->method, sizeof(u->method), "%s", s->req.method);
    snprintf(u->path, sizeof(u->path), "%s", s->req.path);
}

static void fu_send_end(struct px_stream *s)
{
    ((struct fake *)s->ctx[PX_UP])->ended = true;
}

static const struct px_side_ops fup_ops = {"fake-up",  fu_send_head, fu_send_data, fu_send_end,
                                           fu_pending, fu_resume,    fu_abort};

#define MAX_UPS 32
static struct fake ups[MAX_UPS]; /* every try of the test, in order */
static int nups;
static bool attach_fails; /* the next attach answers 503 as a failed connect would */

static void fake_attach(struct px_stream *s)
{
    if (attach_fails) {
        attach_fails = false;
        s->cause = PX_CAUSE_CONNECT_FAILED;
        px_stream_respond(s, 503, px_cause_str(s->cause));
        return;
    }
    if (nups == MAX_UPS)
        fail_msg("more than %d tries", MAX_UPS);
    struct fake *u = &ups[nups++];
    memset(u, 0, sizeof(*u));
    u->s = s;
    u->side = PX_UP;
    u->addr = s->target.addr;
    u->body = evbuffer_new();
    u->pep = px_pool_ep(&srv, &s->target.addr);
    px_pool_conn_opened(u->pep);
    px_stream_attach_up(s, &fup_ops, u);
}

/* The upstream answers: head (status, one end-to-end and one hop-by-hop
 * header), then body chunks, then the end. */
static void up_head(struct fake *u, int status)
{
    struct px_stream *s = u->s;
    px_msg_init(&s->resp);
    s->resp.status = status;
    s->resp.content_length = -1;
    px_msg_add(&s->arena, &s->resp, "x-app", 5, "yes", 3, BIG, BIG);
    px_msg_add(&s->arena, &s->resp, "keep-alive", 10, "timeout=5", 9, BIG, BIG);
    px_stream_on_resp_head(s);
}

static bool up_data(struct fake *u, const char *text)
{
    return px_stream_on_resp_data(u->s, (const uint8_t *)text, strlen(text));
}

/* The try ends: the response completed, or the connection failed. */
static void up_end(struct fake *u)
{
    px_stream_on_resp_end(u->s);
    fake_detach(u);
}

static void up_fail(struct fake *u, enum px_cause cause)
{
    px_stream_on_error(u->s, PX_UP, cause);
    fake_detach(u);
}

/* ---- requests ------------------------------------------------------------ */

static struct fake *req_new(const char *method, const char *path, const char *authority)
{
    struct fake *d = calloc(1, sizeof(*d));
    assert_non_null(d);
    d->side = PX_DOWN;
    d->conn.srv = &srv;
    d->conn.lcfg = &lcfg;
    cm_addr_parse("127.0.0.1:40000", &d->conn.peer);
    cm_addr_parse("127.0.0.1:15001", &d->conn.local);
    cm_addr_parse("10.0.0.9:8080", &d->conn.orig_dst);
    d->body = evbuffer_new();
    d->s = px_stream_new(&d->conn, &fdown_ops, d);
    struct px_stream *s = d->s;
    s->req.method = px_arena_strndup(&s->arena, method, strlen(method));
    s->req.path = px_arena_strndup(&s->arena, path, strlen(path));
    if (authority != NULL)
        s->req.authority = px_arena_strndup(&s->arena, authority, strlen(authority));
    s->req.http_minor = 1;
    s->req.content_length = -1;
    px_msg_add(&s->arena, &s->req, "host", 4, authority ? authority : "app",
               strlen(authority ? authority : "app"), BIG, BIG);
    return d;
}

static bool req_data(struct fake *d, const char *text)
{
    return px_stream_on_req_data(d->s, (const uint8_t *)text, strlen(text));
}

/* The client went away (connection reset) and its codec let go. */
static void down_reset(struct fake *d)
{
    px_stream_on_error(d->s, PX_DOWN, PX_CAUSE_DOWNSTREAM_RESET);
    fake_detach(d);
}

static void req_free(struct fake *d)
{
    if (!d->detached)
        fail_msg("the downstream side still holds its stream");
    evbuffer_free(d->body);
    free(d);
}

static char *text_of(struct evbuffer *b)
{
    static char out[4096];
    size_t n = evbuffer_get_length(b);
    if (n >= sizeof(out))
        n = sizeof(out) - 1;
    evbuffer_copyout(b, out, n);
    out[n] = '\0';
    return out;
}

/* Run the loop until cond() holds, at most ms (generous: a loaded machine). */
static bool run_until(bool (*cond)(void *), void *arg, unsigned ms)
{
    uint64_t end = cm_mono_ms() + ms;
    while (!cond(arg)) {
        if (cm_mono_ms() >= end)
            return false;
        struct timeval tv = {0, 2000};
        event_base_loopexit(srv.base, &tv);
        event_base_loop(srv.base, 0);
    }
    return true;
}

static bool ntries_at_least(void *arg)
{
    return nups >= *(int *)arg;
}

static bool down_answered(void *arg)
{
    return ((struct fake *)arg)->status != 0;
}

static bool no_streams(void *arg)
{
    (void)arg;
    return srv.nstreams == 0 && cm_list_empty(&srv.gc_streams);
}

static void expect_freed(void)
{
    if (!run_until(no_streams, NULL, 5000))
        fail_msg("%u streams still live after 5 s", srv.nstreams);
}

/* A request whose head the downstream codec has read. */
static struct fake *req_start(const char *method, const char *path, const char *authority)
{
    struct fake *d = req_new(method, path, authority);
    px_stream_on_req_head(d->s);
    return d;
}

/* The client's request ends, try u answers 200 with no body, d is done. */
static void answer_ok(struct fake *d, struct fake *u)
{
    if (!d->s->req_complete)
        px_stream_on_req_end(d->s);
    up_head(u, 200);
    up_end(u);
    assert_int_equal(d->status, 200);
    req_free(d);
}

/* Run the loop until the n-th try attached (a retry, an admitted waiter). */
static void wait_tries(int n, const char *what)
{
    if (!run_until(ntries_at_least, &n, 5000))
        fail_msg("%s: no try %d within 5 s", what, n);
}

/* ---- HTTP Upgrade: the tunnel after 101 ------------------------------------ */

/* An Upgrade request as h1_server.c reports it (body-less, Connection lists
 * upgrade and one more hop-by-hop header). */
static struct fake *upgrade_start(void)
{
    struct fake *d = req_new("GET", "/chat", "app");
    struct px_stream *s = d->s;
    s->req.end_stream = true;
    s->upgrade_asked = true; /* llhttp's flag, as h1_server.c passes it */
    px_msg_add(&s->arena, &s->req, "upgrade", 7, "websocket", 9, BIG, BIG);
    px_msg_add(&s->arena, &s->req, "connection", 10, "Upgrade, x-hop", 14, BIG, BIG);
    px_msg_add(&s->arena, &s->req, "x-hop", 5, "1", 1, BIG, BIG);
    px_msg_add(&s->arena, &s->req, "sec-websocket-key", 17, "dGhlIHNhbXBsZSBub25jZQ==", 24, BIG,
               BIG);
    px_stream_on_req_head(s);
    px_stream_on_req_end(s);
    return d;
}

static void up_101(struct fake *u, bool with_upgrade)
{
    struct px_stream *s = u->s;
    px_msg_init(&s->resp);
    s->resp.status = 101;
    s->resp.content_length = -1;
    if (with_upgrade)
        px_msg_add(&s->arena, &s->resp, "upgrade", 7, "websocket", 9, BIG, BIG);
    px_msg_add(&s->arena, &s->resp, "connection", 10, "upgrade", 7, BIG, BIG);
    px_msg_add(&s->arena, &s->resp, "sec-websocket-accept", 20, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 28,
               BIG, BIG);
    px_stream_on_resp_head(s);
}

static void upgrade_tunnel(void **state)
{
    (void)state;
    struct fake *d = upgrade_start();
    struct px_stream *s = d->s;
    assert_int_equal(nups, 1);
    struct fake *u = &ups[0];
    assert_string_equal(s->upgrade, "websocket");
    assert_non_null(px_msg_find(&s->req, "upgrade")); /* kept for the upstream codec */
    assert_null(px_msg_find(&s->req, "connection"));  /* the codec writes its own */
    assert_null(px_msg_find(&s->req, "x-hop"));       /* still hop-by-hop */
    assert_non_null(px_msg_find(&s->req, "sec-websocket-key"));
    assert_true(u->ended); /* the request message ended */
    uint64_t in0 = px_metrics.tcp_bytes_in, out0 = px_metrics.tcp_bytes_out;

    up_101(u, true);
    assert_int_equal(d->status, 101);
    assert_true(s->tunnel);
    assert_non_null(strstr(d->head_hdrs, "upgrade: websocket\n"));
    assert_non_null(strstr(d->head_hdrs, "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\n"));
    assert_null(strstr(d->head_hdrs, "connection"));
    assert_false(s->req_complete); /* the client's bytes follow */

    /* bytes both ways, counted like TCP; backpressure as for bodies */
    u->ended = false;
    assert_false(req_data(d, "ping"));
    assert_string_equal(text_of(u->body), "ping");
    assert_false(up_data(u, "pong"));
    assert_string_equal(text_of(d->body), "pong");
    assert_int_equal(px_metrics.tcp_bytes_in - in0, 4);
    assert_int_equal(px_metrics.tcp_bytes_out - out0, 4);
    u->pend = 4096;
    assert_true(req_data(d, "more"));
    assert_true(s->paused[PX_DOWN]);
    u->pend = 0;
    px_stream_on_drain(s, PX_UP);
    assert_int_equal(d->resumes, 1);

    /* half-close from the client, then the app finishes */
    px_stream_on_req_end(s);
    assert_true(u->ended);
    assert_false(d->ended);
    assert_false(up_data(u, "bye"));
    up_end(u);
    assert_true(d->ended);
    assert_string_equal(text_of(d->body), "pongbye");
    req_free(d);
    expect_freed();
}

static void unasked_101_is_502(void **state)
{
    (void)state;
    struct fake *d = req_start("GET", "/plain", "app");
    px_stream_on_req_end(d->s);
    struct fake *u = &ups[0];
    up_101(u, true);
    assert_int_equal(d->status, 502);
    assert_true(u->aborted);
    assert_false(d->s == NULL);
    req_free(d);
    expect_freed();
}

static void upgrade_101_without_upgrade_is_502(void **state)
{
    (void)state;
    struct fake *d = upgrade_start();
    up_101(&ups[0], false);
    assert_int_equal(d->status, 502);
    req_free(d);
    expect_freed();
}

static void upgrade_declined_is_ordinary(void **state)
{
    (void)state;
    struct fake *d = upgrade_start();
    struct fake *u = &ups[0];
    up_head(u, 426);
    assert_int_equal(d->status, 426);
    assert_false(d->s->tunnel);
    assert_false(up_data(u, "upgrade elsewhere"));
    up_end(u);
    assert_true(d->ended);
    req_free(d);
    expect_freed();
}

static void tunnel_idle_timeout(void **state)
{
    (void)state;
    cfg.limits.tcp_idle_timeout_ms = 60;
    struct fake *d = upgrade_start();
    struct fake *u = &ups[0];
    up_101(u, true);
    assert_false(req_data(d, "x"));
    uint64_t idle0 = px_metrics.tcp_idle_timeout;
    if (!run_until(no_streams, NULL, 5000))
        fail_msg("idle tunnel not closed");
    assert_true(d->aborted);
    assert_true(u->aborted);
    assert_int_equal(px_metrics.tcp_idle_timeout - idle0, 1);
    req_free(d);
}

/* Toward HTTP/2 (the mesh) only what extended CONNECT can carry is an
 * upgrade: one token, no body, never h2c. */
static void upgrade_toward_h2_one_token(void **state)
{
    (void)state;
    lcfg.upstream_protocol = PX_UP_H2;
    struct fake *d = req_new("GET", "/x", "app");
    struct px_stream *s = d->s;
    s->req.end_stream = true;
    s->upgrade_asked = true;
    px_msg_add(&s->arena, &s->req, "upgrade", 7, "h2c", 3, BIG, BIG);
    px_msg_add(&s->arena, &s->req, "connection", 10, "upgrade", 7, BIG, BIG);
    px_stream_on_req_head(s);
    assert_null(s->upgrade); /* plain HTTP */
    assert_null(px_msg_find(&s->req, "upgrade"));
    answer_ok(d, &ups[0]);
    expect_freed();
}

/* ---- fixtures ------------------------------------------------------------ */

static void on_drain_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static bool never_free(struct px_upstream_ep *ep, const struct px_stream *s)
{
    (void)ep;
    (void)s;
    return false; /* no idle connection: only max_connections counts */
}

static int setup(void **state)
{
    (void)state;
    fake_server_init(&srv, &cfg);
    memset(&lcfg, 0, sizeof(lcfg));
    cfg.limits.buffer_bytes = 1024;
    cfg.limits.request_timeout_ms = 0;
    srv.drain_timer = evtimer_new(srv.base, on_drain_timer, NULL);
    px_srv = &srv;
    lcfg.name = "test";
    lcfg.direction = PX_DIR_OUTBOUND; /* no policy check */
    lcfg.has_upstream = true;
    cm_addr_parse("127.0.0.1:9001", &lcfg.upstream);
    lcfg.upstream_protocol = PX_UP_HTTP1;
    px_stream_attach_upstream = fake_attach;
    px_pool_hooks.has_free = never_free;
    nups = 0;
    attach_fails = false;
    routes_path[0] = '\0';
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_stream_gc(&srv);
    for (int i = 0; i < nups; i++)
        evbuffer_free(ups[i].body);
    nups = 0;
    px_routes_state_free(srv.routes);
    srv.routes = NULL;
    cfg.routes_file = NULL;
    if (routes_path[0] != '\0')
        unlink(routes_path);
    px_pool_shutdown();
    px_stream_freelist_clear();
    event_free(srv.gc_ev);
    event_free(srv.drain_timer);
    event_base_free(srv.base);
    px_srv = NULL;
    return 0;
}

/* Load a routes document as the proxy does at start. */
static void load_routes(const char *json)
{
    snprintf(routes_path, sizeof(routes_path), "/tmp/remora-test-stream.XXXXXX");
    int fd = mkstemp(routes_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    cfg.routes_file = routes_path;
    char *err = NULL;
    if (px_routes_start(&srv, &err) != 0)
        fail_msg("routes: %s", err);
}

static const struct px_ep_state *ep_state(const char *addr)
{
    struct px_route *rt = &px_routes_current_of(srv.routes)->routes[0];
    struct cm_addr a;
    cm_addr_parse(addr, &a);
    for (size_t i = 0; i < rt->neps; i++)
        if (cm_addr_equal(&rt->eps[i].addr, &a))
            return rt->eps[i].st;
    fail_msg("no endpoint %s", addr);
    return NULL;
}

/* ---- tests --------------------------------------------------------------- */

static void plain_exchange(void **state)
{
    (void)state;
    struct fake *d = req_start("POST", "/upload?x=1", "app");
    assert_int_equal(nups, 1);
    struct fake *u = &ups[0];
    assert_string_equal(u->method, "POST");
    assert_string_equal(u->path, "/upload?x=1");
    assert_true(cm_addr_equal(&u->addr, &lcfg.upstream));
    assert_false(req_data(d, "abc"));
    assert_false(req_data(d, "defg"));
    px_stream_on_req_end(d->s);
    assert_true(u->ended);
    assert_string_equal(text_of(u->body), "abcdefg");

    up_head(u, 201);
    assert_int_equal(d->status, 201);
    assert_non_null(strstr(d->head_hdrs, "x-app: yes\n"));
    assert_null(strstr(d->head_hdrs, "keep-alive")); /* hop-by-hop: not forwarded */
    assert_false(up_data(u, "hello "));
    assert_false(up_data(u, "world"));
    assert_false(d->ended);
    up_end(u);
    assert_true(d->ended);
    assert_false(d->aborted);
    assert_false(u->aborted);
    assert_string_equal(text_of(d->body), "hello world");
    assert_int_equal(d->s->req_body_bytes, 7);
    assert_int_equal(d->s->resp_body_bytes, 11);
    assert_int_equal(px_pool_ep(&srv, &lcfg.upstream)->nconns, 0);
    req_free(d);
    expect_freed();
}

static void request_backpressure(void **state)
{
    (void)state;
    struct fake *d = req_start("PUT", "/big", "app");
    struct fake *u = &ups[0];
    assert_false(req_data(d, "0123456789"));
    u->pend = cfg.limits.buffer_bytes + 1; /* the upstream stops accepting */
    assert_true(req_data(d, "more"));      /* the client's codec must stop reading */
    assert_true(d->s->paused[PX_DOWN]);
    assert_int_equal(d->resumes, 0);
    /* the upstream's queue fell to half: its codec reports the drain */
    u->pend = cfg.limits.buffer_bytes / 2;
    px_stream_on_drain(d->s, PX_UP);
    assert_int_equal(d->resumes, 1);
    assert_false(d->s->paused[PX_DOWN]);
    px_stream_on_drain(d->s, PX_UP); /* not paused: no second resume */
    assert_int_equal(d->resumes, 1);
    assert_false(req_data(d, "!"));
    px_stream_on_req_end(d->s);
    assert_string_equal(text_of(u->body), "0123456789more!");
    up_head(u, 200);
    up_end(u);
    assert_int_equal(d->status, 200);
    assert_int_equal(u->resumes, 0);
    req_free(d);
    expect_freed();
}

static void response_backpressure(void **state)
{
    (void)state;
    struct fake *d = req_start("GET", "/stream", "app");
    px_stream_on_req_end(d->s);
    struct fake *u = &ups[0];
    up_head(u, 200);
    assert_false(up_data(u, "part1,"));
    d->pend = cfg.limits.buffer_bytes + 1; /* the client reads slowly */
    assert_true(up_data(u, "part2,"));
    assert_true(d->s->paused[PX_UP]);
    d->pend = 0;
    px_stream_on_drain(d->s, PX_DOWN);
    assert_int_equal(u->resumes, 1);
    assert_false(d->s->paused[PX_UP]);
    assert_false(up_data(u, "part3"));
    up_end(u);
    assert_string_equal(text_of(d->body), "part1,part2,part3");
    assert_int_equal(d->resumes, 0);
    req_free(d);
    expect_freed();
}

static const char *const two_eps =
    "{\"routes\": [{\"match\": {\"host\": \"svc\"}, \"retries\": {\"attempts\": 2, "
    "\"backoff_base_ms\": 1, \"on\": [\"connect-failure\", \"reset\"]}, "
    "\"endpoints\": [{\"address\": \"127.0.0.1:9101\"}, {\"address\": \"127.0.0.1:9102\"}]}]}";

/* A try that fails before the response goes to the other endpoint; the
 * retry is counted, the endpoint that failed gets the verdict. */
static void retry_case(enum px_cause cause, bool after_body)
{
    load_routes(two_eps);
    uint64_t retries0 = px_metrics.retries_total;
    struct fake *d = req_start("PUT", "/item", "svc");
    assert_int_equal(nups, 1);
    char first[CM_ADDR_STRLEN];
    cm_addr_format(&ups[0].addr, first, sizeof(first));
    if (after_body) {
        assert_false(req_data(d, "payload"));
        px_stream_on_req_end(d->s);
        assert_string_equal(text_of(ups[0].body), "payload");
    }
    up_fail(&ups[0], cause);
    assert_int_equal(d->status, 0); /* nothing went to the client */
    wait_tries(2, "the retry");
    struct fake *u = &ups[1];
    assert_false(cm_addr_equal(&u->addr, &ups[0].addr)); /* the other endpoint */
    assert_string_equal(u->method, "PUT");
    if (!after_body) {
        assert_false(req_data(d, "payload"));
        px_stream_on_req_end(d->s);
    }
    assert_true(u->ended);
    assert_string_equal(text_of(u->body), "payload"); /* replayed or streamed, once */
    up_head(u, 200);
    assert_false(up_data(u, "ok"));
    up_end(u);
    assert_int_equal(d->status, 200);
    assert_string_equal(text_of(d->body), "ok");
    assert_int_equal(px_metrics.retries_total, retries0 + 1);
    const struct px_ep_state *st = ep_state(first);
    if (cause == PX_CAUSE_CONNECT_REFUSED)
        assert_int_equal(st->fail_connect, 1);
    else
        assert_int_equal(st->fail_reset, 1);
    assert_int_equal(st->outstanding, 0);
    req_free(d);
    expect_freed();
}

static void retry_after_connect_refused(void **state)
{
    (void)state;
    retry_case(PX_CAUSE_CONNECT_REFUSED, false);
}

static void retry_after_reset_replays_body(void **state)
{
    (void)state;
    retry_case(PX_CAUSE_UPSTREAM_RESET, true);
}

/* The upstream never processed a body-less request (a stale keep-alive
 * connection, an h2 REFUSED_STREAM): the stream sends it again at once, to
 * the same address on a fresh connection (s->resending), without a route
 * configuring retries; counted as a retry with reason "unprocessed", and
 * only once per try. */
static void unprocessed_resent_once(void **state)
{
    (void)state;
    uint64_t retries0 = px_metrics.retries_total;
    uint64_t unproc0 = px_upstream_retries(PX_RETRY_REASON_UNPROCESSED);
    struct fake *d = req_new("POST", "/x", NULL);
    d->s->req.end_stream = true;
    px_stream_on_req_head(d->s);
    px_stream_on_req_end(d->s);
    assert_int_equal(nups, 1);
    assert_false(d->s->resending);
    px_stream_on_unprocessed(ups[0].s, PX_CAUSE_UPSTREAM_RESET);
    fake_detach(&ups[0]);
    assert_int_equal(d->status, 0); /* nothing went to the client */
    wait_tries(2, "the resend");
    struct fake *u = &ups[1];
    assert_true(d->s->resending);
    assert_true(cm_addr_equal(&u->addr, &ups[0].addr));
    assert_string_equal(u->method, "POST");
    assert_true(u->ended);
    assert_int_equal(px_metrics.retries_total, retries0 + 1);
    assert_int_equal(px_upstream_retries(PX_RETRY_REASON_UNPROCESSED), unproc0 + 1);
    /* the resend is not processed either: this time the client hears it */
    px_stream_on_unprocessed(u->s, PX_CAUSE_UPSTREAM_RESET);
    fake_detach(u);
    assert_int_equal(d->status, 502);
    assert_int_equal(nups, 2);
    assert_int_equal(px_metrics.retries_total, retries0 + 1);
    req_free(d);
    expect_freed();
}

/* A request with a body is not resent (nothing kept it): the failure goes to
 * the client as any reset, with no retry counted. */
static void unprocessed_with_body_fails(void **state)
{
    (void)state;
    uint64_t retries0 = px_metrics.retries_total;
    struct fake *d = req_start("POST", "/x", NULL);
    assert_false(req_data(d, "payload"));
    px_stream_on_unprocessed(ups[0].s, PX_CAUSE_UPSTREAM_RESET);
    fake_detach(&ups[0]);
    assert_int_equal(d->status, 502);
    assert_int_equal(nups, 1);
    assert_int_equal(px_metrics.retries_total, retries0);
    px_stream_on_req_end(d->s);
    req_free(d);
    expect_freed();
}

/* The body went past retry_buffer_bytes: a reset cannot be retried. */
static void no_retry_past_retry_buffer(void **state)
{
    (void)state;
    cfg.limits.retry_buffer_bytes = 8;
    load_routes(two_eps);
    uint64_t retries0 = px_metrics.retries_total;
    struct fake *d = req_start("PUT", "/item", "svc");
    assert_false(req_data(d, "0123456789abcdef"));
    assert_false(d->s->replayable);
    up_fail(&ups[0], PX_CAUSE_UPSTREAM_RESET);
    assert_int_equal(d->status, 502);
    assert_string_equal(text_of(d->body), "upstream reset before the response completed\n");
    assert_true(d->ended);
    int want = 2;
    assert_false(run_until(ntries_at_least, &want, 100)); /* and none later */
    assert_int_equal(nups, 1);
    assert_int_equal(px_metrics.retries_total, retries0);
    req_free(d);
    expect_freed();
}

/* The retry budget (budget_percent 0: only the floor of 10 retries per
 * 10 s) spent, a refused connect is answered 503 instead of retried. */
static void retry_budget_spent_503(void **state)
{
    (void)state;
    load_routes("{\"routes\": [{\"match\": {\"host\": \"svc\"}, \"retries\": {\"attempts\": 2, "
                "\"backoff_base_ms\": 1, \"budget_percent\": 0}, \"endpoints\": "
                "[{\"address\": \"127.0.0.1:9101\"}, {\"address\": \"127.0.0.1:9102\"}]}]}");
    uint64_t retries0 = px_metrics.retries_total;
    for (int i = 0; i < 11; i++) {
        struct fake *d = req_start("GET", "/r", "svc");
        px_stream_on_req_end(d->s);
        struct fake *first = &ups[nups - 1];
        int want = nups + 1;
        up_fail(first, PX_CAUSE_CONNECT_REFUSED);
        if (i < 10) {
            wait_tries(want, "a retry within the budget");
            answer_ok(d, &ups[nups - 1]);
            continue;
        }
        assert_int_equal(d->status, 503);
        assert_string_equal(text_of(d->body), "upstream connect error: connection refused\n");
        assert_false(run_until(ntries_at_least, &want, 100));
        req_free(d);
    }
    assert_int_equal(px_metrics.retries_total, retries0 + 10);
    expect_freed();
}

/* A failed connect that the codec answers itself (px_h1_client_attach's
 * conn_new failure): 503, no upstream side left. */
static void attach_failure_answers_503(void **state)
{
    (void)state;
    attach_fails = true;
    struct fake *d = req_start("GET", "/", "app");
    assert_int_equal(nups, 0);
    assert_int_equal(d->status, 503);
    assert_string_equal(text_of(d->body), "upstream connect error\n");
    req_free(d);
    expect_freed();
}

static void per_try_timeout_504(void **state)
{
    (void)state;
    load_routes(
        "{\"routes\": [{\"match\": {\"host\": \"svc\"}, \"retries\": {\"attempts\": 1, "
        "\"per_try_timeout_ms\": 50}, \"endpoints\": [{\"address\": \"127.0.0.1:9101\"}]}]}");
    struct fake *d = req_start("GET", "/slow", "svc");
    px_stream_on_req_end(d->s);
    assert_int_equal(nups, 1);
    if (!run_until(down_answered, d, 5000))
        fail_msg("no answer within 5 s");
    assert_int_equal(d->status, 504);
    assert_string_equal(text_of(d->body), "upstream per-try timeout\n");
    assert_true(ups[0].aborted);
    assert_int_equal(ep_state("127.0.0.1:9101")->fail_timeout, 1);
    assert_int_equal(ep_state("127.0.0.1:9101")->outstanding, 0);
    req_free(d);
    expect_freed();
}

static void request_timeout_504(void **state)
{
    (void)state;
    cfg.limits.request_timeout_ms = 50;
    struct fake *d = req_start("POST", "/slow", "app");
    assert_false(req_data(d, "half a body"));
    if (!run_until(down_answered, d, 5000))
        fail_msg("no answer within 5 s");
    assert_int_equal(d->status, 504);
    assert_string_equal(text_of(d->body), "upstream request timeout\n");
    assert_true(ups[0].aborted);
    assert_string_equal(text_of(ups[0].body), "half a body");
    req_free(d);
    expect_freed();
}

/* After the head went down a request timeout can only cut both sides. */
static void request_timeout_mid_response_aborts_both(void **state)
{
    (void)state;
    cfg.limits.request_timeout_ms = 50;
    struct fake *d = req_start("GET", "/slow", "app");
    px_stream_on_req_end(d->s);
    up_head(&ups[0], 200);
    assert_false(up_data(&ups[0], "partial"));
    if (!run_until(no_streams, NULL, 5000))
        fail_msg("the stream outlived its timeout");
    assert_int_equal(d->status, 200);
    assert_true(d->aborted);
    assert_false(d->ended);
    assert_true(ups[0].aborted);
    assert_string_equal(text_of(d->body), "partial");
    req_free(d);
}

/* The client resets mid-body: the upstream is aborted, its endpoint gets
 * no verdict and no outstanding request, the pool no connection. */
static void client_abort_frees_upstream(void **state)
{
    (void)state;
    load_routes(two_eps);
    uint64_t resets0 = px_metrics.downstream_resets;
    struct fake *d = req_start("POST", "/upload", "svc");
    struct fake *u = &ups[0];
    char a[CM_ADDR_STRLEN];
    cm_addr_format(&u->addr, a, sizeof(a));
    assert_false(req_data(d, "first part"));
    down_reset(d);
    assert_true(u->aborted);
    assert_true(u->detached);
    assert_false(u->ended);
    assert_string_equal(text_of(u->body), "first part");
    assert_int_equal(px_metrics.downstream_resets, resets0 + 1);
    const struct px_ep_state *st = ep_state(a);
    assert_int_equal(st->outstanding, 0);
    assert_int_equal(st->fail_reset + st->fail_connect + st->fail_timeout, 0);
    assert_int_equal(u->pep->nconns, 0);
    assert_int_equal(d->status, 0);
    req_free(d);
    expect_freed();
    assert_int_equal(nups, 1);
}

/* SIGTERM's drain (px_server_begin_drain, without the exit): the request in
 * flight completes, byte for byte. New requests are refused before a
 * stream exists (listeners, h1 connection: close, h2 GOAWAY), not here. */
static void drain_completes_in_flight(void **state)
{
    (void)state;
    struct fake *d = req_start("POST", "/x", "app");
    assert_false(req_data(d, "before"));
    px_server_begin_drain(&srv, false);
    assert_true(srv.draining);
    assert_false(px_server_is_ready(&srv));
    assert_false(req_data(d, "-after"));
    px_stream_on_req_end(d->s);
    up_head(&ups[0], 200);
    assert_false(up_data(&ups[0], "done"));
    up_end(&ups[0]);
    assert_string_equal(text_of(ups[0].body), "before-after");
    assert_int_equal(d->status, 200);
    assert_true(d->ended);
    assert_false(d->aborted);
    assert_string_equal(text_of(d->body), "done");
    req_free(d);
    expect_freed();
}

static void one_connection_limits(void)
{
    cfg.limits.upstream.max_connections = 1;
    cfg.limits.upstream.max_pending_requests = 4;
    cfg.limits.upstream.pending_timeout_ms = 10000;
}

/* A request waiting for a connection (max_connections 1) that its client
 * abandons leaves the queue, never opening one. */
static void queued_request_cancelled(void **state)
{
    (void)state;
    one_connection_limits();
    struct fake *d1 = req_start("GET", "/1", "app");
    assert_int_equal(nups, 1);
    struct fake *d2 = req_start("POST", "/2", "app");
    assert_int_equal(nups, 1); /* waits */
    assert_non_null(d2->s->queued_on);
    assert_int_equal(px_pool_pending(), 1);
    assert_false(req_data(d2, "held"));
    down_reset(d2);
    assert_int_equal(px_pool_pending(), 0);
    req_free(d2);
    /* the first completes; nothing was started for the second */
    answer_ok(d1, &ups[0]);
    expect_freed();
    assert_int_equal(nups, 1);
    assert_int_equal(px_pool_ep(&srv, &lcfg.upstream)->nconns, 0);
}

/* ...and one that keeps waiting is admitted when the connection closes,
 * with the body that arrived meanwhile. */
static void queued_request_admitted_with_held_body(void **state)
{
    (void)state;
    one_connection_limits();
    struct fake *d1 = req_start("GET", "/1", "app");
    struct fake *d2 = req_start("POST", "/2", "app");
    assert_false(req_data(d2, "held "));
    assert_false(req_data(d2, "body"));
    px_stream_on_req_end(d2->s);
    answer_ok(d1, &ups[0]);
    wait_tries(2, "the waiting request");
    assert_null(d2->s->queued_on);
    assert_string_equal(ups[1].path, "/2");
    assert_string_equal(text_of(ups[1].body), "held body");
    assert_true(ups[1].ended);
    answer_ok(d2, &ups[1]);
    expect_freed();
}

/* max_pending_requests 1 already waiting: the next is refused at once. */
static void queue_full_overflow_503(void **state)
{
    (void)state;
    one_connection_limits();
    cfg.limits.upstream.max_pending_requests = 1;
    struct fake *d1 = req_start("GET", "/1", "app");
    struct fake *d2 = req_start("GET", "/2", "app");
    assert_int_equal(d2->status, 0);
    struct fake *d3 = req_start("GET", "/3", "app");
    assert_int_equal(d3->status, 503);
    if (strstr(text_of(d3->body), "upstream overflow: max_pending_requests") == NULL)
        fail_msg("503 body: %s", text_of(d3->body));
    assert_int_equal(px_pool_overflows(PX_OVERFLOW_PENDING), 1);
    req_free(d3);
    /* the first completes, the waiting one goes next */
    answer_ok(d1, &ups[0]);
    wait_tries(2, "the waiting request");
    assert_string_equal(ups[1].path, "/2");
    answer_ok(d2, &ups[1]);
    expect_freed();
    assert_int_equal(nups, 2);
}

/* A waiting request past pending_timeout_ms: 503 naming the breaker. */
static void queued_request_times_out_503(void **state)
{
    (void)state;
    one_connection_limits();
    cfg.limits.upstream.pending_timeout_ms = 50;
    struct fake *d1 = req_start("GET", "/1", "app");
    struct fake *d2 = req_start("GET", "/2", "app");
    px_stream_on_req_end(d2->s);
    if (!run_until(down_answered, d2, 5000))
        fail_msg("no answer within 5 s");
    assert_int_equal(d2->status, 503);
    if (strstr(text_of(d2->body), "upstream pending timeout") == NULL)
        fail_msg("503 body: %s", text_of(d2->body));
    assert_int_equal(nups, 1);
    req_free(d2);
    answer_ok(d1, &ups[0]);
    expect_freed();
}

/* ---- gRPC (proxy/grpc.c) ------------------------------------------------------------------ */

/* A gRPC call on an HTTP/2 downstream, head read (extra: "name: value" or NULL). */
static struct fake *grpc_start(const char *authority, const char *extra_name, const char *extra)
{
    struct fake *d = req_new("POST", "/pkg.Svc/Method", authority);
    struct px_stream *s = d->s;
    s->ops[PX_DOWN] = &fdown_h2_ops;
    px_msg_add(&s->arena, &s->req, "content-type", 12, "application/grpc", 16, BIG, BIG);
    if (extra_name != NULL)
        px_msg_add(&s->arena, &s->req, extra_name, strlen(extra_name), extra, strlen(extra), BIG,
                   BIG);
    px_stream_on_req_head(s);
    return d;
}

/* The upstream answers 200 application/grpc; grpc >= 0 adds grpc-status to
 * the head, and end makes it trailers-only. */
static void up_grpc_head(struct fake *u, int grpc, bool end)
{
    struct px_stream *s = u->s;
    px_msg_init(&s->resp);
    s->resp.status = 200;
    s->resp.content_length = -1;
    s->resp.end_stream = end;
    px_msg_add(&s->arena, &s->resp, "content-type", 12, "application/grpc", 16, BIG, BIG);
    if (grpc >= 0) {
        char v[8];
        int n = snprintf(v, sizeof(v), "%d", grpc);
        px_msg_add(&s->arena, &s->resp, "grpc-status", 11, v, (size_t)n, BIG, BIG);
    }
    px_stream_on_resp_head(s);
}

static void up_grpc_trailers(struct fake *u, int grpc)
{
    struct px_stream *s = u->s;
    struct px_msg *t = px_arena_alloc(&s->arena, sizeof(*t));
    px_msg_init(t);
    char v[8];
    int n = snprintf(v, sizeof(v), "%d", grpc);
    px_msg_add(&s->arena, t, "grpc-status", 11, v, (size_t)n, BIG, BIG);
    s->resp_trailers = t;
    up_end(u);
}

static const char grpc_routes[] =
    "{\"routes\": [{\"match\": {\"host\": \"svc\"}, \"retries\": {\"attempts\": 3, \"on\": "
    "[\"unavailable\"], \"backoff_base_ms\": 1}, \"endpoints\": [{\"address\": "
    "\"127.0.0.1:9201\"}, {\"address\": \"127.0.0.1:9202\"}]}]}";

/* A failed connect answers a gRPC call trailers-only: 200, grpc-status 14. */
static void grpc_error_is_trailers_only(void **state)
{
    (void)state;
    attach_fails = true;
    struct fake *d = grpc_start("app", NULL, NULL);
    assert_int_equal(d->status, 200);
    assert_true(d->ended);
    /* and the request id the proxy gave it (a UUIDv4: proxy/trace.h) */
    static const char want[] = "content-type: application/grpc\ngrpc-status: 14\n"
                               "grpc-message: upstream connect error\nserver: remora\n"
                               "x-request-id: ";
    assert_memory_equal(d->head_hdrs, want, sizeof(want) - 1);
    assert_int_equal(strlen(d->head_hdrs), sizeof(want) - 1 + PX_UUID_LEN + 1);
    assert_true(px_reqid_valid(d->head_hdrs + sizeof(want) - 1, PX_UUID_LEN));
    assert_string_equal(text_of(d->body), "");
    req_free(d);
    expect_freed();
}

/* grpc-timeout 50m bounds a request no timeout_ms bounds: grpc-status 4. */
static void grpc_timeout_answers_deadline_exceeded(void **state)
{
    (void)state;
    struct fake *d = grpc_start("app", "grpc-timeout", "50m");
    px_stream_on_req_end(d->s);
    assert_int_equal(nups, 1);
    if (!run_until(down_answered, d, 5000))
        fail_msg("no answer within 5 s");
    assert_int_equal(d->status, 200);
    assert_non_null(
        strstr(d->head_hdrs, "grpc-status: 4\ngrpc-message: upstream request timeout\n"));
    assert_true(ups[0].aborted);
    req_free(d);
    expect_freed();
}

/* A malformed grpc-timeout is refused before any try: grpc-status 13. */
static void grpc_timeout_malformed_refused(void **state)
{
    (void)state;
    struct fake *d = grpc_start("app", "grpc-timeout", "123456789S");
    assert_int_equal(nups, 0);
    assert_int_equal(d->status, 200);
    assert_non_null(
        strstr(d->head_hdrs, "grpc-status: 13\ngrpc-message: malformed grpc-timeout\n"));
    req_free(d);
    expect_freed();
}

/* A gRPC response under way when the deadline passes ends with trailers
 * grpc-status 4 after what was sent. */
static void grpc_timeout_mid_response_trailers(void **state)
{
    (void)state;
    struct fake *d = grpc_start("app", "grpc-timeout", "60m");
    px_stream_on_req_end(d->s);
    up_grpc_head(&ups[0], -1, false);
    assert_false(up_data(&ups[0], "msg"));
    if (!run_until(no_streams, NULL, 5000))
        fail_msg("the stream outlived its timeout");
    assert_int_equal(d->status, 200);
    assert_true(d->ended);
    assert_false(d->aborted);
    assert_true(ups[0].aborted);
    assert_string_equal(text_of(d->body), "msg");
    assert_string_equal(d->trailers, "grpc-status: 4\ngrpc-message: upstream request timeout\n");
    req_free(d);
}

/* retries.on "unavailable": a trailers-only UNAVAILABLE is dropped and the
 * call goes to the other endpoint; nothing reached the client before. */
static void grpc_retry_trailers_only(void **state)
{
    (void)state;
    load_routes(grpc_routes);
    uint64_t retries0 = px_metrics.retries_total;
    struct fake *d = grpc_start("svc", NULL, NULL);
    assert_false(req_data(d, "call"));
    px_stream_on_req_end(d->s);
    up_grpc_head(&ups[0], 14, true);
    assert_int_equal(d->status, 0);
    up_end(&ups[0]);
    assert_int_equal(d->status, 0);
    wait_tries(2, "the retry");
    assert_false(cm_addr_equal(&ups[1].addr, &ups[0].addr));
    assert_string_equal(text_of(ups[1].body), "call");
    up_grpc_head(&ups[1], -1, false);
    assert_int_equal(d->status, 0); /* held until DATA or trailers */
    assert_false(up_data(&ups[1], "reply"));
    assert_int_equal(d->status, 200);
    up_grpc_trailers(&ups[1], 0);
    assert_string_equal(text_of(d->body), "reply");
    assert_string_equal(d->trailers, "grpc-status: 0\n");
    assert_int_equal(px_metrics.retries_total, retries0 + 1);
    req_free(d);
    expect_freed();
}

/* UNAVAILABLE in the trailers of a response without DATA is retried too;
 * once DATA went to the client it is not. */
static void grpc_retry_from_trailers_not_after_data(void **state)
{
    (void)state;
    load_routes(grpc_routes);
    struct fake *d = grpc_start("svc", NULL, NULL);
    px_stream_on_req_end(d->s);
    up_grpc_head(&ups[0], -1, false);
    up_grpc_trailers(&ups[0], 14);
    assert_int_equal(d->status, 0);
    wait_tries(2, "the retry");
    up_grpc_head(&ups[1], -1, false);
    assert_false(up_data(&ups[1], "partial"));
    up_grpc_trailers(&ups[1], 14);
    assert_int_equal(d->status, 200);
    assert_string_equal(text_of(d->body), "partial");
    assert_string_equal(d->trailers, "grpc-status: 14\n");
    assert_int_equal(nups, 2);
    req_free(d);
    expect_freed();
}

/* A status the route does not name goes to the client at once. */
static void grpc_other_status_not_retried(void **state)
{
    (void)state;
    load_routes(grpc_routes);
    struct fake *d = grpc_start("svc", NULL, NULL);
    px_stream_on_req_end(d->s);
    up_grpc_head(&ups[0], 13, true);
    up_end(&ups[0]);
    assert_int_equal(d->status, 200);
    assert_true(d->ended);
    assert_non_null(strstr(d->head_hdrs, "grpc-status: 13\n"));
    assert_int_equal(nups, 1);
    req_free(d);
    expect_freed();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(plain_exchange, setup, teardown),
        cmocka_unit_test_setup_teardown(request_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(response_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(retry_after_connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(retry_after_reset_replays_body, setup, teardown),
        cmocka_unit_test_setup_teardown(no_retry_past_retry_buffer, setup, teardown),
        cmocka_unit_test_setup_teardown(retry_budget_spent_503, setup, teardown),
        cmocka_unit_test_setup_teardown(attach_failure_answers_503, setup, teardown),
        cmocka_unit_test_setup_teardown(per_try_timeout_504, setup, teardown),
        cmocka_unit_test_setup_teardown(request_timeout_504, setup, teardown),
        cmocka_unit_test_setup_teardown(request_timeout_mid_response_aborts_both, setup, teardown),
        cmocka_unit_test_setup_teardown(client_abort_frees_upstream, setup, teardown),
        cmocka_unit_test_setup_teardown(drain_completes_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(queued_request_cancelled, setup, teardown),
        cmocka_unit_test_setup_teardown(queued_request_admitted_with_held_body, setup, teardown),
        cmocka_unit_test_setup_teardown(unprocessed_resent_once, setup, teardown),
        cmocka_unit_test_setup_teardown(unprocessed_with_body_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(queue_full_overflow_503, setup, teardown),
        cmocka_unit_test_setup_teardown(queued_request_times_out_503, setup, teardown),
        cmocka_unit_test_setup_teardown(grpc_error_is_trailers_only, setup, teardown),
        cmocka_unit_test_setup_teardown(grpc_timeout_answers_deadline_exceeded, setup, teardown),
        cmocka_unit_test_setup_teardown(grpc_timeout_malformed_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(grpc_timeout_mid_response_trailers, setup, teardown),
        cmocka_unit_test_setup_teardown(grpc_retry_trailers_only, setup, teardown),
        cmocka_unit_test_setup_teardown(grpc_retry_from_trailers_not_after_data, setup, teardown),
        cmocka_unit_test_setup_teardown(grpc_other_status_not_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(upgrade_tunnel, setup, teardown),
        cmocka_unit_test_setup_teardown(unasked_101_is_502, setup, teardown),
        cmocka_unit_test_setup_teardown(upgrade_101_without_upgrade_is_502, setup, teardown),
        cmocka_unit_test_setup_teardown(upgrade_declined_is_ordinary, setup, teardown),
        cmocka_unit_test_setup_teardown(tunnel_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(upgrade_toward_h2_one_token, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    pki_rng_free();
    return rc;
}
