/* Unit tests of proxy/upstream.c: where a try goes and over what (target
 * resolution: address, protocol, TLS, expected identity; the failures that
 * fail closed), the pool handing a try to the h1 or the h2 codec, the
 * circuit breaker in front of it, and the accounting of retries (reasons,
 * the budget of resends no route counts). The codecs are the real ones,
 * connecting to a loopback listener this test opens. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/net.h"
#include "test/unit/proxy/fake_server.h"
#include "proxy/conn.h"
#include "proxy/h1.h"
#include "proxy/h2.h"
#include "proxy/h2_common.h"
#include "proxy/io.h"
#include "proxy/listener.h"
#include "proxy/pool.h"
#include "proxy/routes.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

__attribute__((weak)) struct px_server *px_srv;
void px_stream_gc(struct px_server *srv);
void px_stream_freelist_clear(void);

static struct px_server srv;
static struct px_config cfg;
static struct px_listener_cfg lcfg;
static struct px_listener self; /* "our" listener: the loop check's reference */
static struct px_listener *selfp = &self;
static struct px_conn conn;
static int lfd = -1; /* the loopback upstream the codecs connect to */
static struct cm_addr up_addr;

/* ---- a do-nothing downstream side ---------------------------------------- */

static void d_head(struct px_stream *s)
{
    (void)s;
}
static void d_data(struct px_stream *s, const uint8_t *d, size_t n)
{
    (void)s;
    (void)d;
    (void)n;
}
static size_t d_pending(struct px_stream *s)
{
    (void)s;
    return 0;
}
static void d_abort(struct px_stream *s)
{
    px_stream_detach(s, PX_DOWN);
}
static const struct px_side_ops down_ops = {"fake-down", d_head, d_data, d_head,
                                            d_pending,   d_head, d_abort};

static int setup(void **state)
{
    (void)state;
    fake_server_init(&srv, &cfg);
    memset(&lcfg, 0, sizeof(lcfg));
    memset(&conn, 0, sizeof(conn));
    assert_non_null(srv.base);
    px_io_init(srv.base);
    cm_addr_parse("127.0.0.1:15001", &self.bound);
    srv.listeners = &selfp;
    srv.nlisteners = 1;
    px_srv = &srv;
    lcfg.name = "t";
    lcfg.direction = PX_DIR_OUTBOUND;
    lcfg.upstream_protocol = PX_UP_HTTP1;
    /* the upstream: a listening socket nobody accepts from (connects succeed) */
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 16), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
    cm_addr_from_sockaddr(&up_addr, (struct sockaddr *)&sin, sl);
    lcfg.upstream = up_addr;
    lcfg.has_upstream = true;
    conn.srv = &srv;
    conn.lcfg = &lcfg;
    cm_addr_parse("127.0.0.1:40000", &conn.peer);
    cm_addr_parse("127.0.0.1:15001", &conn.local);
    conn.orig_dst = conn.local;
    px_upstream_budget_reset();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_h2_shutdown();
    px_h1_shutdown();
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
    px_stream_gc(&srv);
    px_pool_shutdown();
    px_stream_freelist_clear();
    event_free(srv.gc_ev);
    px_io_deinit(); /* its flush event belongs to this base */
    event_base_free(srv.base);
    close(lfd);
    px_srv = NULL;
    return 0;
}

static struct px_stream *stream_new(void)
{
    struct px_stream *s = px_stream_new(&conn, &down_ops, NULL);
    s->req.method = "GET";
    s->req.path = "/";
    s->req.end_stream = true;
    s->state = PX_STREAM_FORWARD;
    s->cb = cfg.limits.upstream;
    return s;
}

/* Both sides let go; the record goes back to the freelist. */
static void stream_end(struct px_stream *s)
{
    if (s->attached[PX_UP])
        s->ops[PX_UP]->abort(s);
    px_stream_detach(s, PX_DOWN);
    for (int i = 0; i < 4; i++)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
}

/* ---- target resolution ------------------------------------------------------ */

static void resolve_default_upstream(void **state)
{
    (void)state;
    struct px_stream *s = stream_new();
    assert_int_equal(px_upstream_resolve(s, NULL, &s->target), PX_RESOLVE_OK);
    assert_true(cm_addr_equal(&s->target.addr, &up_addr));
    assert_int_equal(s->target.proto, PX_TGT_H1);
    assert_null(s->target.tls);
    assert_null(s->target.expected_id);
    /* the listener's upstream_protocol picks the codec */
    lcfg.upstream_protocol = PX_UP_H2;
    assert_int_equal(px_upstream_resolve(s, NULL, &s->target), PX_RESOLVE_OK);
    assert_int_equal(s->target.proto, PX_TGT_H2);
    stream_end(s);
}

static void resolve_endpoint(void **state)
{
    (void)state;
    struct px_stream *s = stream_new();
    struct px_endpoint ep = {.weight = 1};
    cm_addr_parse("10.1.2.3:8080", &ep.addr);
    assert_int_equal(px_upstream_resolve(s, &ep, &s->target), PX_RESOLVE_OK);
    char a[CM_ADDR_STRLEN];
    assert_string_equal(cm_addr_format(&s->target.addr, a, sizeof(a)), "10.1.2.3:8080");
    /* an identity only a peer certificate can prove: fail closed without mTLS */
    ep.identity = "spiffe://cluster.local/ns/a/sa/b";
    assert_int_equal(px_upstream_resolve(s, &ep, &s->target), PX_RESOLVE_ID_NEEDS_MTLS);
    assert_int_equal(px_resolve_status(PX_RESOLVE_ID_NEEDS_MTLS), 503);
    assert_non_null(strstr(px_resolve_str(PX_RESOLVE_ID_NEEDS_MTLS), "only be checked over mTLS"));
    assert_null(s->target.tls);
    /* mesh: HTTP/2 over mTLS, and without a workload certificate nothing goes */
    lcfg.tls = PX_TLS_MESH;
    assert_int_equal(px_upstream_resolve(s, &ep, &s->target), PX_RESOLVE_NO_CERT);
    assert_int_equal(s->target.proto, PX_TGT_H2);
    assert_string_equal(s->target.expected_id, ep.identity);
    assert_null(s->target.tls);
    assert_int_equal(px_resolve_status(PX_RESOLVE_NO_CERT), 503);
    assert_string_equal(px_resolve_str(PX_RESOLVE_NO_CERT),
                        "no workload certificate yet: mTLS not possible");
    stream_end(s);
}

/* A discovered Service's endpoints (proxy/service.c): meshed -> HTTP/2 over
 * mTLS with its identity; unmeshed -> as the app sent it (h2c for http2/grpc),
 * never mTLS, even on a mesh listener; opaque TCP the same way. */
static void resolve_discovered_endpoint(void **state)
{
    (void)state;
    struct px_stream *s = stream_new();
    lcfg.tls = PX_TLS_MESH;
    struct px_endpoint ep = {.weight = 1, .via = PX_EP_VIA_MESH};
    ep.identity = "spiffe://cluster.local/ns/shop/sa/web";
    cm_addr_parse("10.1.2.3:8080", &ep.addr);
    assert_int_equal(px_upstream_resolve(s, &ep, &s->target), PX_RESOLVE_NO_CERT);
    assert_int_equal(s->target.proto, PX_TGT_H2);
    assert_string_equal(s->target.expected_id, ep.identity);
    struct px_endpoint plain = {.weight = 1, .via = PX_EP_VIA_PLAIN};
    cm_addr_parse("10.1.2.4:8080", &plain.addr);
    assert_int_equal(px_upstream_resolve(s, &plain, &s->target), PX_RESOLVE_OK);
    assert_int_equal(s->target.proto, PX_TGT_H1);
    assert_null(s->target.tls);
    assert_null(s->target.expected_id);
    char a[CM_ADDR_STRLEN];
    assert_string_equal(cm_addr_format(&s->target.addr, a, sizeof(a)), "10.1.2.4:8080");
    plain.via = PX_EP_VIA_PLAIN_H2C;
    assert_int_equal(px_upstream_resolve(s, &plain, &s->target), PX_RESOLVE_OK);
    assert_int_equal(s->target.proto, PX_TGT_H2);
    assert_null(s->target.tls);
    stream_end(s);
    struct px_upstream_target t = {0};
    assert_int_equal(px_upstream_resolve_tcp(&conn, &ep, &t), PX_RESOLVE_NO_CERT);
    assert_string_equal(t.expected_id, ep.identity);
    assert_int_equal(px_upstream_resolve_tcp(&conn, &plain, &t), PX_RESOLVE_OK);
    assert_null(t.tls);
    assert_null(t.expected_id);
    assert_string_equal(cm_addr_format(&t.addr, a, sizeof(a)), "10.1.2.4:8080");
    /* a routes-file endpoint with an identity on a listener that is not mesh: fail closed */
    lcfg.tls = PX_TLS_DISABLED;
    struct px_endpoint file = {.weight = 1, .identity = "spiffe://cluster.local/ns/a/sa/b"};
    cm_addr_parse("10.1.2.5:8080", &file.addr);
    assert_int_equal(px_upstream_resolve_tcp(&conn, &file, &t), PX_RESOLVE_ID_NEEDS_MTLS);
    px_upstream_target_release(&t);
}

static void resolve_loop(void **state)
{
    (void)state;
    struct px_stream *s = stream_new();
    struct px_endpoint ep = {.weight = 1};
    cm_addr_parse("127.0.0.1:15001", &ep.addr); /* our own listener */
    assert_int_equal(px_upstream_resolve(s, &ep, &s->target), PX_RESOLVE_LOOP);
    assert_int_equal(px_resolve_status(PX_RESOLVE_LOOP), 508);
    stream_end(s);
    /* opaque TCP: the connection's default upstream, same check */
    struct px_upstream_target t = {0};
    assert_int_equal(px_upstream_resolve_tcp(&conn, NULL, &t), PX_RESOLVE_OK);
    assert_int_equal(t.proto, PX_TGT_TCP);
    assert_true(cm_addr_equal(&t.addr, &up_addr));
    lcfg.upstream = self.bound;
    assert_int_equal(px_upstream_resolve_tcp(&conn, NULL, &t), PX_RESOLVE_LOOP);
    lcfg.tls = PX_TLS_MESH;
    lcfg.upstream = up_addr;
    assert_int_equal(px_upstream_resolve_tcp(&conn, NULL, &t), PX_RESOLVE_NO_CERT);
    px_upstream_target_release(&t);
}

/* ---- the pool hands out an h1 connection or an h2 stream ------------------- */

static void pool_hands_out_h1_and_h2(void **state)
{
    (void)state;
    cfg.limits.upstream.max_connections = 1;
    struct px_stream *a = stream_new();
    assert_int_equal(px_upstream_resolve(a, NULL, &a->target), PX_RESOLVE_OK);
    const char *msg = NULL;
    assert_int_equal(px_pool_admit(a, &msg), 0);
    px_upstream_attach(a);
    assert_true(a->attached[PX_UP]);
    assert_string_equal(a->ops[PX_UP]->name, "h1-client");
    struct px_upstream_ep *pep = px_pool_find(&up_addr);
    assert_non_null(pep);
    assert_int_equal(pep->nconns, 1);
    /* the breaker: one connection, busy, none idle -> the next try waits */
    struct px_stream *b = stream_new();
    assert_int_equal(px_upstream_resolve(b, NULL, &b->target), PX_RESOLVE_OK);
    assert_false(px_upstream_has_free(pep, b));
    assert_int_equal(px_pool_admit(b, &msg), 1);
    assert_ptr_equal(b->queued_on, pep);
    px_pool_cancel(b);
    stream_end(b);
    stream_end(a);
    assert_int_equal(pep->nconns, 0);

    /* h2: a session with stream slots; a second stream joins it */
    lcfg.upstream_protocol = PX_UP_H2;
    cfg.limits.upstream.max_connections = 1024;
    struct px_stream *c = stream_new(), *d = stream_new();
    assert_int_equal(px_upstream_resolve(c, NULL, &c->target), PX_RESOLVE_OK);
    assert_int_equal(px_upstream_resolve(d, NULL, &d->target), PX_RESOLVE_OK);
    assert_false(px_upstream_has_free(pep, c)); /* no session yet */
    px_upstream_attach(c);
    assert_string_equal(c->ops[PX_UP]->name, "h2-client");
    assert_true(px_upstream_has_free(pep, d)); /* room on c's session */
    px_upstream_attach(d);
    assert_string_equal(d->ops[PX_UP]->name, "h2-client");
    assert_int_equal(pep->nconns, 1);
    assert_int_equal(px_h2_client_sessions(), 1);
    /* a resend avoids the session that refused it: no room for it there */
    struct px_stream *e = stream_new();
    assert_int_equal(px_upstream_resolve(e, NULL, &e->target), PX_RESOLVE_OK);
    assert_true(px_upstream_has_free(pep, e));
    const struct px_h2_stream *cst = c->ctx[PX_UP];
    e->avoid_sess = cst->sess->id;
    assert_false(px_upstream_has_free(pep, e));
    stream_end(e);
    stream_end(d);
    stream_end(c);
}

/* ---- retry accounting ------------------------------------------------------- */

static void resend_budget(void **state)
{
    (void)state;
    uint64_t now = 5000000000ull; /* any monotonic time */
    /* a quiet system: the floor (10 per 10 s) always holds */
    for (int i = 0; i < 10; i++)
        assert_true(px_upstream_budget_resend(now));
    assert_false(px_upstream_budget_resend(now));
    /* 100 requests: 20 % of them */
    for (int i = 0; i < 100; i++)
        px_upstream_budget_request(now);
    for (int i = 0; i < 10; i++)
        assert_true(px_upstream_budget_resend(now));
    assert_false(px_upstream_budget_resend(now));
    /* the window moves on: 10 s later it is empty again */
    uint64_t later = now + 10 * 1000000ull;
    assert_true(px_upstream_budget_resend(later));
}

static void retry_reasons_metrics(void **state)
{
    (void)state;
    uint64_t r0 = px_upstream_retries(PX_RETRY_REASON_RETRY_ON);
    uint64_t u0 = px_upstream_retries(PX_RETRY_REASON_UNPROCESSED);
    px_upstream_count_retry(PX_RETRY_REASON_UNPROCESSED);
    px_upstream_count_retry(PX_RETRY_REASON_UNPROCESSED);
    px_upstream_count_retry(PX_RETRY_REASON_RETRY_ON);
    assert_int_equal(px_upstream_retries(PX_RETRY_REASON_RETRY_ON) - r0, 1);
    assert_int_equal(px_upstream_retries(PX_RETRY_REASON_UNPROCESSED) - u0, 2);
    struct evbuffer *out = evbuffer_new();
    px_upstream_write_prometheus(out);
    size_t n = evbuffer_get_length(out);
    char *t = calloc(1, n + 1);
    evbuffer_remove(out, t, n);
    char want[128];
    snprintf(want, sizeof(want), "remora_retries_by_reason_total{reason=\"unprocessed\"} %llu\n",
             (unsigned long long)(u0 + 2));
    assert_non_null(strstr(t, "# TYPE remora_retries_by_reason_total counter\n"));
    assert_non_null(strstr(t, want));
    free(t);
    evbuffer_free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(resolve_default_upstream, setup, teardown),
        cmocka_unit_test_setup_teardown(resolve_endpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(resolve_discovered_endpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(resolve_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(pool_hands_out_h1_and_h2, setup, teardown),
        cmocka_unit_test_setup_teardown(resend_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(retry_reasons_metrics, setup, teardown),
    };
    return cmocka_run_group_tests_name("proxy/upstream", tests, NULL, NULL);
}
