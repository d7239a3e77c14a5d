/* Unit tests of the HTTP/1.1 upstream pool's reuse rules, through the codec's
 * public API (h1_client.o is linked, not included): an exchange that ends
 * cleanly puts its connection in its address's idle list (the pool record,
 * proxy/pool.h); what the upstream sends while the connection idles, or
 * after its response, is never read as the next request's answer: the loop
 * reads it (reads stay armed) and closes the connection, counting stray
 * bytes. A resend (s->resending) never takes an idle connection. Each case
 * runs one exchange against a loopback socket this test accepts. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/net.h"
#include "test/unit/proxy/fake_server.h"
#include "proxy/conn.h"
#include "proxy/h1.h"
#include "proxy/io.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/server.h"
#include "proxy/stream.h"

__attribute__((weak)) struct px_server *px_srv;
void px_stream_gc(struct px_server *srv);
void px_stream_freelist_clear(void);

static struct px_server srv;
static struct px_config cfg;
static struct px_listener_cfg lcfg;
static struct px_conn conn;
static int lfd = -1;
static struct cm_addr up_addr;
static int down_status; /* the response status the fake downstream got */
static bool down_ended;

static void d_head(struct px_stream *s)
{
    down_status = s->resp.status;
}
static void d_data(struct px_stream *s, const uint8_t *d, size_t n)
{
    (void)s;
    (void)d;
    (void)n;
}
static void d_end(struct px_stream *s)
{
    (void)s;
    down_ended = true;
}
static size_t d_pending(struct px_stream *s)
{
    (void)s;
    return 0;
}
static void d_resume(struct px_stream *s)
{
    (void)s;
}
static void d_abort(struct px_stream *s)
{
    (void)s;
}
static const struct px_side_ops down_ops = {"fake-down", d_head,   d_data, d_end,
                                            d_pending,   d_resume, d_abort};

static int setup(void **state)
{
    (void)state;
    fake_server_init(&srv, &cfg);
    memset(&lcfg, 0, sizeof(lcfg));
    memset(&conn, 0, sizeof(conn));
    assert_non_null(srv.base);
    px_io_init(srv.base);
    px_srv = &srv;
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 16), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
    cm_addr_from_sockaddr(&up_addr, (struct sockaddr *)&sin, sl);
    lcfg.name = "t";
    lcfg.direction = PX_DIR_OUTBOUND;
    lcfg.upstream = up_addr;
    lcfg.has_upstream = true;
    conn.srv = &srv;
    conn.lcfg = &lcfg;
    cm_addr_parse("127.0.0.1:40000", &conn.peer);
    cm_addr_parse("127.0.0.1:15001", &conn.local);
    cm_log_set_level(CM_LOG_ERROR); /* the warn lines are not what is tested here */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
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

static void turns(int n)
{
    for (int i = 0; i < n; i++)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
}

/* A body-less GET on the pool (as a try's send_try does), nothing answered yet. */
static struct px_stream *send_get(bool resending)
{
    struct px_stream *s = px_stream_new(&conn, &down_ops, NULL);
    s->req.method = "GET";
    s->req.path = "/";
    s->req.authority = "app";
    s->req.content_length = -1;
    s->req.end_stream = true;
    s->req_complete = true;
    s->state = PX_STREAM_FORWARD;
    s->cb = cfg.limits.upstream;
    s->target.addr = up_addr;
    s->target.proto = PX_TGT_H1;
    s->resending = resending;
    down_status = 0;
    down_ended = false;
    px_h1_client_attach(s);
    assert_true(s->attached[PX_UP]);
    s->head_sent[PX_UP] = true;
    s->ops[PX_UP]->send_head(s);
    s->ended[PX_UP] = true;
    s->ops[PX_UP]->send_end(s);
    return s;
}

/* The upstream end of a new connection, after the request arrived on it. */
static int accept_request(void)
{
    int fd = -1;
    for (int i = 0; i < 2000 && fd < 0; i++) {
        turns(1);
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            usleep(1000);
    }
    assert_true(fd >= 0);
    char buf[512];
    ssize_t n = -1;
    for (int i = 0; i < 2000 && n <= 0; i++) {
        turns(1);
        n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            usleep(1000);
    }
    assert_true(n > 0);
    assert_memory_equal(buf, "GET / HTTP/1.1\r\n", 16);
    return fd;
}

/* Answer, let the exchange finish, let the downstream side go. */
static void answer(struct px_stream *s, int fd, const char *resp)
{
    assert_int_equal(write(fd, resp, strlen(resp)), (ssize_t)strlen(resp));
    for (int i = 0; i < 2000 && !down_ended; i++) {
        turns(1);
        if (!down_ended)
            usleep(1000);
    }
    assert_true(down_ended);
    assert_int_equal(down_status, 200);
    px_stream_detach(s, PX_DOWN);
    turns(3);
}

static const struct px_upstream_ep *rec(void)
{
    const struct px_upstream_ep *ep = px_pool_find(&up_addr);
    assert_non_null(ep);
    return ep;
}

#define OK_RESP "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

/* An idle connection: kept while quiet, dropped when the upstream talks or
 * closes, and what it sends counted as stray. */
static void idle_connection(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *upstream_sends; /* NULL: nothing */
        bool upstream_closes;
        bool stays; /* still pooled after a few loop turns */
        bool counted_stray;
    } cases[] = {
        {"quiet connection", NULL, false, true, false},
        {"stray bytes while idle", "HTTP/1.1 200 OK\r\nx-smuggled: 1\r\n\r\n", false, false, true},
        {"one stray byte", "x", false, false, true},
        {"the upstream closed it", NULL, true, false, false},
        {"bytes then close", "junk", true, false, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct px_stream *s = send_get(false);
        int fd = accept_request();
        answer(s, fd, OK_RESP);
        if (rec()->h1_nidle != 1)
            fail_msg("case '%s': not pooled after a clean exchange", cases[i].name);
        uint64_t stray0 = px_metrics.upstream_cx_stray_bytes;
        if (cases[i].upstream_sends != NULL)
            assert_true(write(fd, cases[i].upstream_sends, strlen(cases[i].upstream_sends)) > 0);
        if (cases[i].upstream_closes)
            shutdown(fd, SHUT_WR);
        for (int t = 0; t < 200 && rec()->h1_nidle == 1 && !cases[i].stays; t++) {
            turns(1);
            usleep(1000);
        }
        turns(3);
        bool stays = rec()->h1_nidle == 1;
        if (stays != cases[i].stays)
            fail_msg("case '%s': pooled %d, want %d", cases[i].name, stays, cases[i].stays);
        assert_int_equal(px_metrics.upstream_cx_stray_bytes - stray0, cases[i].counted_stray);
        assert_int_equal(px_h1_client_has_idle(&up_addr), stays);
        if (stays) {
            /* the next request takes it: no new connection */
            uint64_t reused0 = px_metrics.upstream_cx_reused;
            struct px_stream *s2 = send_get(false);
            assert_int_equal(px_metrics.upstream_cx_reused, reused0 + 1);
            assert_int_equal(rec()->h1_nidle, 0);
            char buf[64];
            ssize_t n = -1;
            for (int t = 0; t < 2000 && n <= 0; t++) {
                turns(1);
                n = read(fd, buf, sizeof(buf));
                if (n <= 0)
                    usleep(1000);
            }
            assert_true(n > 0);
            answer(s2, fd, "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
            assert_int_equal(rec()->h1_nidle, 0); /* "connection: close": not pooled */
        }
        close(fd);
        turns(3);
        assert_int_equal(rec()->nconns, 0);
    }
}

/* Bytes after a complete response (in our buffer when it ends) are never
 * pooled: the connection closes at once, counted as stray. */
static void bytes_after_response(void **state)
{
    (void)state;
    struct px_stream *s = send_get(false);
    int fd = accept_request();
    uint64_t stray0 = px_metrics.upstream_cx_stray_bytes;
    answer(s, fd, OK_RESP "HTTP/1.1 200 OK\r\n\r\n");
    assert_int_equal(rec()->h1_nidle, 0);
    assert_int_equal(px_metrics.upstream_cx_stray_bytes - stray0, 1);
    close(fd);
    turns(3);
    assert_int_equal(rec()->nconns, 0);
}

/* A resend after a stale connection opens a fresh one, leaving the idle one. */
static void resend_takes_a_fresh_connection(void **state)
{
    (void)state;
    struct px_stream *s = send_get(false);
    int fd = accept_request();
    answer(s, fd, OK_RESP);
    assert_int_equal(rec()->h1_nidle, 1);
    uint64_t total0 = px_metrics.upstream_cx_total;
    struct px_stream *r = send_get(true);
    assert_int_equal(px_metrics.upstream_cx_total, total0 + 1);
    assert_int_equal(rec()->h1_nidle, 1);
    assert_int_equal(rec()->nconns, 2);
    int fd2 = accept_request();
    answer(r, fd2, OK_RESP);
    assert_int_equal(rec()->h1_nidle, 2);
    close(fd);
    close(fd2);
    turns(5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(idle_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(bytes_after_response, setup, teardown),
        cmocka_unit_test_setup_teardown(resend_takes_a_fresh_connection, setup, teardown),
    };
    return cmocka_run_group_tests_name("proxy/h1_pool", tests, NULL, NULL);
}
