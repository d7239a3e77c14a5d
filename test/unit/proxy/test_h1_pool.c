/* Unit tests of the HTTP/1.1 upstream pool's reuse check (issue 13 row 10):
 * an idle pooled connection is only handed to the next request when nothing
 * is waiting on it. fit_for_reuse() runs right before reuse, possibly before
 * the event loop has read what the upstream sent meanwhile, so it looks in
 * the socket too. h1_client.c is included to reach it. Each case: a socket
 * pair, one end as the pooled connection, the other as the upstream. */
/* first: cmocka's fail() macro would rewrite h1_client.c's fail() */
#include "proxy/h1_client.c"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct px_server srv;

static int setup(void **state)
{
    (void)state;
    static const char cfg[] = "{\"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\","
                              " \"direction\": \"outbound\", \"upstream\": \"127.0.0.1:1\"}]}";
    char *err = NULL;
    memset(&srv, 0, sizeof(srv));
    assert_int_equal(px_config_parse("t.json", cfg, sizeof(cfg) - 1, &srv.cfg, &err), 0);
    cm_list_init(&srv.conns);
    cm_list_init(&srv.streams);
    cm_list_init(&srv.gc_streams);
    srv.base = event_base_new();
    assert_non_null(srv.base);
    px_io_init(srv.base);
    px_srv = &srv;
    init_settings();
    cm_log_set_level(CM_LOG_ERROR); /* the warn line is not what is tested here */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_config_free(srv.cfg);
    event_base_free(srv.base);
    px_srv = NULL;
    return 0;
}

/* A connection as the pool holds it, minus the pool lists: BUSY keeps
 * conn_dead() from touching the idle counts. */
static struct h1c *pooled(int fd)
{
    struct h1c *u = cm_xcalloc(1, sizeof(*u));
    u->io = px_io_new(srv.base, fd);
    assert_non_null(u->io);
    cm_addr_parse("127.0.0.1:8080", &u->addr);
    u->kick = event_new(srv.base, -1, 0, on_kick, u);
    u->state = H1C_BUSY;
    cm_list_insert_tail(&busy, &u->link);
    px_metrics.upstream_cx_active++;
    return u;
}

static void reuse_check(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *upstream_sends; /* NULL: nothing */
        bool upstream_closes;
        bool fit;
        bool counted_stray;
    } cases[] = {
        {"quiet connection", NULL, false, true, false},
        {"stray bytes still in the socket", "HTTP/1.1 200 OK\r\nx-smuggled: 1\r\n\r\n", false,
         false, true},
        {"one stray byte", "x", false, false, true},
        {"the upstream closed it", NULL, true, false, false},
        {"bytes then close", "junk", true, false, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        struct h1c *u = pooled(sv[0]);
        if (cases[i].upstream_sends != NULL)
            assert_true(write(sv[1], cases[i].upstream_sends, strlen(cases[i].upstream_sends)) > 0);
        if (cases[i].upstream_closes)
            shutdown(sv[1], SHUT_WR);
        uint64_t stray0 = px_metrics.upstream_cx_stray_bytes;
        /* no loop turn: what waits is still in the kernel, not in our buffer */
        bool fit = fit_for_reuse(u);
        if (fit != cases[i].fit)
            fail_msg("case '%s': fit_for_reuse %d, want %d", cases[i].name, fit, cases[i].fit);
        assert_int_equal(px_metrics.upstream_cx_stray_bytes - stray0, cases[i].counted_stray);
        assert_int_equal(u->state, fit ? H1C_BUSY : H1C_DEAD);
        if (fit)
            conn_dead(u);
        event_base_loop(srv.base, EVLOOP_NONBLOCK); /* the kick frees it */
        assert_true(cm_list_empty(&busy));
        close(sv[1]);
    }
}

/* Bytes the loop already read into our buffer count the same way. */
static void buffered_bytes(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct h1c *u = pooled(sv[0]);
    evbuffer_add(px_io_input(u->io), "HTTP/1.1 200 OK\r\n\r\n", 19);
    uint64_t stray0 = px_metrics.upstream_cx_stray_bytes;
    assert_false(fit_for_reuse(u));
    assert_int_equal(px_metrics.upstream_cx_stray_bytes - stray0, 1);
    assert_int_equal(u->state, H1C_DEAD);
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
    assert_true(cm_list_empty(&busy));
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(reuse_check, setup, teardown),
        cmocka_unit_test_setup_teardown(buffered_bytes, setup, teardown),
    };
    return cmocka_run_group_tests_name("proxy/h1_pool", tests, NULL, NULL);
}
