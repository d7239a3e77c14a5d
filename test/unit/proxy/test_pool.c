/* Unit tests of proxy/pool.c, the circuit breakers' queue: admission under
 * max_connections, FIFO order (nobody overtakes a waiter, a freed connection
 * admits the oldest), the bound on waiters (overflow message and counters),
 * cancellation from any position, pending timeouts with mixed deadlines
 * (timer re-armed for the rest), per-stream limits, the Prometheus text and
 * the bound on idle endpoint records. pool.c is included to reach its
 * statics; the codec and stream hooks are replaced by recorders. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/pool.c"

__attribute__((weak)) struct px_server *px_srv;

static struct px_server srv;
static struct px_config cfg;

/* What the hooks saw. */
static struct px_stream *admitted[64], *refused[64];
static enum px_overflow refused_why[64];
static char refused_msg[256];
static int nadmitted, nrefused;
static bool free_conn;     /* has_free answers this */
static bool open_on_admit; /* an admitted try opens a connection (h1 without idle) */

static bool t_has_free(struct px_upstream_ep *ep, const struct px_stream *s)
{
    (void)ep;
    (void)s;
    return free_conn;
}

static void t_admitted(struct px_stream *s)
{
    admitted[nadmitted++] = s;
    if (open_on_admit)
        px_pool_conn_opened(px_pool_ep(&srv, &s->target.addr));
}

static void t_refused(struct px_stream *s, enum px_overflow why, const char *msg)
{
    refused_why[nrefused] = why;
    refused[nrefused++] = s;
    snprintf(refused_msg, sizeof(refused_msg), "%s", msg);
}

static int setup(void **state)
{
    (void)state;
    memset(&srv, 0, sizeof(srv));
    memset(&cfg, 0, sizeof(cfg));
    px_limits_default(&cfg.limits);
    srv.cfg = &cfg;
    srv.base = event_base_new();
    px_srv = &srv;
    px_pool_hooks.has_free = t_has_free;
    px_pool_hooks.admitted = t_admitted;
    px_pool_hooks.refused = t_refused;
    nadmitted = nrefused = 0;
    free_conn = false;
    open_on_admit = true;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_pool_shutdown();
    event_base_free(srv.base);
    px_srv = NULL;
    return 0;
}

/* A stream toward 127.0.0.1:port with the given breakers. */
static struct px_stream *stream_to(struct px_stream *s, int port, uint32_t max_conns,
                                   uint32_t max_pending, uint32_t timeout_ms)
{
    memset(s, 0, sizeof(*s));
    s->srv = &srv;
    char a[32];
    snprintf(a, sizeof(a), "127.0.0.1:%d", port);
    assert_int_equal(cm_addr_parse(a, &s->target.addr), 0);
    s->cb.max_connections = max_conns;
    s->cb.max_pending_requests = max_pending;
    s->cb.pending_timeout_ms = timeout_ms;
    s->cb.max_requests_per_connection = 4;
    s->state = PX_STREAM_FORWARD;
    return s;
}

/* Run what is due on the loop now (wake events). */
static void turn(void)
{
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
}

static void admits_under_the_limit_then_queues(void **state)
{
    (void)state;
    struct px_stream s[4];
    const char *msg = NULL;
    for (int i = 0; i < 2; i++) {
        stream_to(&s[i], 1000, 2, 10, 5000);
        assert_int_equal(px_pool_admit(&s[i], &msg), 0);
        px_pool_conn_opened(px_pool_ep(&srv, &s[i].target.addr)); /* the codec opens one */
    }
    stream_to(&s[2], 1000, 2, 10, 5000);
    assert_int_equal(px_pool_admit(&s[2], &msg), 1);
    struct px_upstream_ep *ep = px_pool_find(&s[2].target.addr);
    assert_non_null(ep);
    assert_ptr_equal(s[2].queued_on, ep);
    assert_int_equal(ep->nconns, 2);
    assert_int_equal(ep->npending, 1);
    assert_int_equal(px_pool_pending(), 1);
    /* a free connection (an idle h1 one) admits without opening */
    free_conn = true;
    stream_to(&s[3], 1001, 1, 10, 5000);
    px_pool_conn_opened(px_pool_ep(&srv, &s[3].target.addr));
    assert_int_equal(px_pool_admit(&s[3], &msg), 0);
    px_pool_cancel(&s[2]);
    assert_int_equal(px_pool_pending(), 0);
}

static void fifo_nobody_overtakes(void **state)
{
    (void)state;
    struct px_stream s[6];
    const char *msg = NULL;
    stream_to(&s[0], 1000, 1, 10, 5000);
    assert_int_equal(px_pool_admit(&s[0], &msg), 0);
    struct px_upstream_ep *ep = px_pool_ep(&srv, &s[0].target.addr);
    px_pool_conn_opened(ep);
    for (int i = 1; i < 5; i++) {
        stream_to(&s[i], 1000, 1, 10, 5000);
        assert_int_equal(px_pool_admit(&s[i], &msg), 1);
    }
    /* a connection comes back to the pool: a newcomer still queues behind */
    free_conn = true;
    stream_to(&s[5], 1000, 1, 10, 5000);
    assert_int_equal(px_pool_admit(&s[5], &msg), 1);
    free_conn = false;
    /* the connection closes: exactly one waiter, the oldest, opens a new one */
    px_pool_conn_closed(ep);
    assert_int_equal(nadmitted, 0); /* never from inside the caller */
    turn();
    assert_int_equal(nadmitted, 1);
    assert_ptr_equal(admitted[0], &s[1]);
    assert_null(s[1].queued_on);
    assert_int_equal(ep->npending, 4);
    /* three more closes admit the next ones in order */
    for (int i = 0; i < 3; i++) {
        px_pool_conn_closed(ep);
        turn();
    }
    assert_int_equal(nadmitted, 4);
    assert_ptr_equal(admitted[1], &s[2]);
    assert_ptr_equal(admitted[2], &s[3]);
    assert_ptr_equal(admitted[3], &s[4]);
    /* an h2 stream slot frees (no close): wake admits while has_free says so */
    free_conn = true;
    open_on_admit = false;
    px_pool_wake(ep);
    turn();
    assert_int_equal(nadmitted, 5);
    assert_ptr_equal(admitted[4], &s[5]);
    assert_int_equal(ep->npending, 0);
    assert_int_equal(ep->queued_total, 5);
}

static void full_queue_overflows(void **state)
{
    (void)state;
    struct px_stream s[5];
    const char *msg = NULL;
    stream_to(&s[0], 1000, 1, 3, 5000);
    assert_int_equal(px_pool_admit(&s[0], &msg), 0);
    struct px_upstream_ep *ep = px_pool_ep(&srv, &s[0].target.addr);
    px_pool_conn_opened(ep);
    for (int i = 1; i < 4; i++) {
        stream_to(&s[i], 1000, 1, 3, 5000);
        assert_int_equal(px_pool_admit(&s[i], &msg), 1);
    }
    stream_to(&s[4], 1000, 1, 3, 5000);
    assert_int_equal(px_pool_admit(&s[4], &msg), -1);
    assert_null(s[4].queued_on);
    assert_non_null(strstr(msg, "upstream overflow: max_pending_requests (3 requests already "
                                "wait for a connection to 127.0.0.1:1000; max_connections 1)"));
    assert_int_equal(ep->overflows[PX_OVERFLOW_PENDING], 1);
    assert_int_equal(px_pool_overflows(PX_OVERFLOW_PENDING), 1);
    assert_int_equal(ep->npending, 3);
    /* max_pending_requests 0: never wait */
    struct px_stream z;
    stream_to(&z, 1000, 1, 0, 5000);
    assert_int_equal(px_pool_admit(&z, &msg), -1);
    assert_int_equal(px_pool_overflows(PX_OVERFLOW_PENDING), 2);
    /* another endpoint is not affected */
    stream_to(&z, 1002, 1, 0, 5000);
    assert_int_equal(px_pool_admit(&z, &msg), 0);
    for (int i = 1; i < 4; i++)
        px_pool_cancel(&s[i]);
}

static void cancel_from_anywhere(void **state)
{
    (void)state;
    struct px_stream s[5];
    const char *msg = NULL;
    stream_to(&s[0], 1000, 1, 10, 5000);
    assert_int_equal(px_pool_admit(&s[0], &msg), 0);
    struct px_upstream_ep *ep = px_pool_ep(&srv, &s[0].target.addr);
    px_pool_conn_opened(ep);
    for (int i = 1; i < 5; i++) {
        stream_to(&s[i], 1000, 1, 10, 5000);
        assert_int_equal(px_pool_admit(&s[i], &msg), 1);
    }
    px_pool_cancel(&s[3]); /* middle */
    px_pool_cancel(&s[1]); /* head */
    px_pool_cancel(&s[1]); /* twice: no-op */
    px_pool_cancel(&s[0]); /* never queued: no-op */
    assert_int_equal(ep->npending, 2);
    px_pool_conn_closed(ep);
    turn();
    assert_int_equal(nadmitted, 1);
    assert_ptr_equal(admitted[0], &s[2]);
    px_pool_cancel(&s[4]); /* tail, the last one */
    assert_int_equal(ep->npending, 0);
    assert_int_equal(px_pool_pending(), 0);
    px_pool_conn_closed(ep);
    turn();
    assert_int_equal(nadmitted, 1); /* nobody left to admit */
    assert_int_equal(nrefused, 0);  /* cancelled ones are not answered here */
}

static void pending_timeouts(void **state)
{
    (void)state;
    struct px_stream s[4];
    const char *msg = NULL;
    stream_to(&s[0], 1000, 1, 10, 5000);
    assert_int_equal(px_pool_admit(&s[0], &msg), 0);
    struct px_upstream_ep *ep = px_pool_ep(&srv, &s[0].target.addr);
    px_pool_conn_opened(ep);
    /* mixed deadlines (two routes to one address): 1 s, 30 ms, 1 s */
    stream_to(&s[1], 1000, 1, 10, 1000);
    stream_to(&s[2], 1000, 1, 10, 30);
    stream_to(&s[3], 1000, 1, 10, 1000);
    for (int i = 1; i < 4; i++)
        assert_int_equal(px_pool_admit(&s[i], &msg), 1);
    uint64_t t0 = cm_mono_ms();
    event_base_loop(srv.base, EVLOOP_ONCE); /* the 30 ms deadline */
    assert_true(cm_mono_ms() - t0 >= 25);
    assert_int_equal(nrefused, 1);
    assert_ptr_equal(refused[0], &s[2]);
    assert_int_equal(refused_why[0], PX_OVERFLOW_TIMEOUT);
    assert_string_equal(refused_msg, "upstream pending timeout: no connection to 127.0.0.1:1000 "
                                     "became free within 30 ms (max_connections 1)");
    assert_null(s[2].queued_on);
    assert_int_equal(ep->npending, 2);
    assert_int_equal(ep->overflows[PX_OVERFLOW_TIMEOUT], 1);
    /* the timer is armed again for the others */
    assert_true(evtimer_pending(ep->timer, NULL));
    event_base_loop(srv.base, EVLOOP_ONCE);
    assert_int_equal(nrefused, 3);
    assert_ptr_equal(refused[1], &s[1]);
    assert_ptr_equal(refused[2], &s[3]);
    assert_int_equal(ep->npending, 0);
    assert_int_equal(px_pool_overflows(PX_OVERFLOW_TIMEOUT), 3);
    assert_false(evtimer_pending(ep->timer, NULL));
}

static void prometheus_text(void **state)
{
    (void)state;
    struct px_stream s[3];
    const char *msg = NULL;
    stream_to(&s[0], 1000, 1, 1, 5000);
    assert_int_equal(px_pool_admit(&s[0], &msg), 0);
    px_pool_conn_opened(px_pool_ep(&srv, &s[0].target.addr));
    stream_to(&s[1], 1000, 1, 1, 5000);
    assert_int_equal(px_pool_admit(&s[1], &msg), 1);
    stream_to(&s[2], 1000, 1, 1, 5000);
    assert_int_equal(px_pool_admit(&s[2], &msg), -1);
    struct evbuffer *b = evbuffer_new();
    px_pool_write_prometheus(b);
    evbuffer_add(b, "", 1);
    const char *t = (const char *)evbuffer_pullup(b, -1);
    assert_non_null(strstr(t, "# TYPE remora_upstream_overflow_total counter\n"));
    assert_non_null(
        strstr(t, "remora_upstream_overflow_total{reason=\"max_pending_requests\"} 1\n"));
    assert_non_null(strstr(t, "remora_upstream_overflow_total{reason=\"pending_timeout\"} 0\n"));
    assert_non_null(strstr(t, "# TYPE remora_upstream_pending gauge\nremora_upstream_pending 1\n"));
    evbuffer_free(b);
    json_t *all = px_pool_all_json();
    assert_int_equal(json_array_size(all), 1);
    json_t *o = json_array_get(all, 0);
    assert_string_equal(json_string_value(json_object_get(o, "address")), "127.0.0.1:1000");
    assert_int_equal(json_integer_value(json_object_get(o, "active_connections")), 1);
    assert_int_equal(json_integer_value(json_object_get(o, "pending")), 1);
    json_t *ov = json_object_get(o, "overflows");
    assert_int_equal(json_integer_value(json_object_get(ov, "max_pending_requests")), 1);
    json_decref(all);
    json_t *none = px_pool_ep_json(NULL); /* an endpoint never used */
    assert_int_equal(json_integer_value(json_object_get(none, "active_connections")), 0);
    json_decref(none);
    px_pool_cancel(&s[1]);
}

static void idle_records_bounded(void **state)
{
    (void)state;
    struct px_stream s;
    const char *msg = NULL;
    /* a busy record survives any number of new addresses */
    stream_to(&s, 1, 1, 1, 5000);
    struct px_upstream_ep *busy = px_pool_ep(&srv, &s.target.addr);
    px_pool_conn_opened(busy);
    for (int port = 2; port < PX_POOL_MAX_IDLE_EPS + 500; port++) {
        stream_to(&s, port, 1, 1, 5000);
        assert_int_equal(px_pool_admit(&s, &msg), 0);
    }
    assert_int_equal(P.nidle, PX_POOL_MAX_IDLE_EPS);
    assert_int_equal(P.neps, PX_POOL_MAX_IDLE_EPS + 1);
    stream_to(&s, 1, 1, 1, 5000);
    assert_ptr_equal(px_pool_find(&s.target.addr), busy);
    stream_to(&s, 2, 1, 1, 5000);
    assert_null(px_pool_find(&s.target.addr)); /* the oldest idle ones went first */
    px_pool_conn_closed(busy);
    assert_int_equal(P.nidle, PX_POOL_MAX_IDLE_EPS); /* and the busy one idles now */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(admits_under_the_limit_then_queues, setup, teardown),
        cmocka_unit_test_setup_teardown(fifo_nobody_overtakes, setup, teardown),
        cmocka_unit_test_setup_teardown(full_queue_overflows, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_from_anywhere, setup, teardown),
        cmocka_unit_test_setup_teardown(pending_timeouts, setup, teardown),
        cmocka_unit_test_setup_teardown(prometheus_text, setup, teardown),
        cmocka_unit_test_setup_teardown(idle_records_bounded, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
