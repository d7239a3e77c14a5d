/* Unit tests of the HTTP/1.1 upstream pool's reuse check:
 * an idle pooled connection is only handed to the next request when nothing
 * is waiting on it. What the upstream sends while the connection idles is
 * read by the loop (reads stay armed) and closes it; fit_for_reuse(), right
 * before reuse, refuses one whose bytes are already in our buffer.
 * h1_client.c is included to reach them. Each case: a socket pair, one end as
 * the pooled connection, the other as the upstream. */
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

/* A connection as the pool holds it while a request uses it: BUSY keeps
 * conn_dead() from touching the idle counts. */
static struct h1c *pooled(int fd)
{
    struct h1c *u = cm_xcalloc(1, sizeof(*u));
    u->srv = &srv;
    u->io = px_io_new(srv.base, fd);
    assert_non_null(u->io);
    cm_addr_parse("127.0.0.1:8080", &u->addr);
    u->kick = event_new(srv.base, -1, 0, on_kick, u);
    u->state = H1C_BUSY;
    cm_list_insert_tail(&busy, &u->link);
    px_metrics.upstream_cx_active++;
    return u;
}

/* The same connection put in its address's idle list as release() does:
 * reads armed, the idle timeout set. */
static struct h1c *idle(int fd)
{
    struct h1c *u = pooled(fd);
    px_io_setcb(u->io, on_read, on_write, on_event, u);
    struct bucket *b = &pool[bucket_of(&u->addr)];
    u->state = H1C_IDLE;
    cm_list_remove(&u->link);
    cm_list_insert_head(&b->idle, &u->link);
    b->nidle++;
    px_io_set_timeout(u->io, 60000);
    px_io_read_enable(u->io, true);
    return u;
}

static bool in_idle_list(const struct bucket *b, const struct h1c *u)
{
    for (const struct cm_list *n = b->idle.next; n != &b->idle; n = n->next)
        if (n == &u->link)
            return true;
    return false;
}

static void reuse_check(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *upstream_sends; /* NULL: nothing */
        bool upstream_closes;
        bool stays; /* still pooled after a loop turn */
        bool counted_stray;
    } cases[] = {
        {"quiet connection", NULL, false, true, false},
        {"stray bytes while idle", "HTTP/1.1 200 OK\r\nx-smuggled: 1\r\n\r\n", false, false, true},
        {"one stray byte", "x", false, false, true},
        {"the upstream closed it", NULL, true, false, false},
        {"bytes then close", "junk", true, false, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        struct h1c *u = idle(sv[0]);
        struct bucket *b = &pool[bucket_of(&u->addr)];
        if (cases[i].upstream_sends != NULL)
            assert_true(write(sv[1], cases[i].upstream_sends, strlen(cases[i].upstream_sends)) > 0);
        if (cases[i].upstream_closes)
            shutdown(sv[1], SHUT_WR);
        uint64_t stray0 = px_metrics.upstream_cx_stray_bytes;
        /* the turn in which a request could come for it: the idle read runs */
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
        event_base_loop(srv.base, EVLOOP_NONBLOCK); /* the kick frees a dead one */
        bool stays = in_idle_list(b, u);
        if (stays != cases[i].stays)
            fail_msg("case '%s': pooled after a loop turn %d, want %d", cases[i].name, stays,
                     cases[i].stays);
        assert_int_equal(px_metrics.upstream_cx_stray_bytes - stray0, cases[i].counted_stray);
        if (stays) {
            assert_true(fit_for_reuse(u));
            cm_list_remove(&u->link);
            b->nidle--;
            cm_list_insert_tail(&busy, &u->link);
            u->state = H1C_BUSY;
            conn_dead(u);
            event_base_loop(srv.base, EVLOOP_NONBLOCK);
        }
        assert_true(cm_list_empty(&busy));
        assert_int_equal(b->nidle, 0);
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
