/* Unit tests of proxy/resolve.c with a fake look-up the test can hold: the
 * verdicts (match, another address, no such name, an IPv4-mapped address),
 * the cache (a hit costs no look-up; positive and negative answers expire),
 * concurrent asks joined, the bounded queue (full: BUSY at once), the wait's
 * bound (TIMEOUT, the late answer still cached), a cancelled wait never
 * called, least-recently-used eviction, and a free with look-ups in flight
 * (the worker joined, nothing leaked). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/net.h"
#include "proxy/resolve.h"

/* ---- the fake look-up: names in a table, held while `held` ------------------------- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static bool held;
static int calls;
static char last_name[300];

static void hold(bool on)
{
    pthread_mutex_lock(&mu);
    held = on;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static int ncalls(void)
{
    pthread_mutex_lock(&mu);
    int n = calls;
    pthread_mutex_unlock(&mu);
    return n;
}

static void set_addr(struct cm_addr *a, const char *ip)
{
    memset(a, 0, sizeof(*a));
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
        s6->sin6_port = htons(443);
        a->len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a->ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
        s4->sin_port = htons(80);
        a->len = sizeof(*s4);
    }
}

static int fake_fn(const char *name, struct cm_addr *out, size_t cap, size_t *n, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    calls++;
    snprintf(last_name, sizeof(last_name), "%s", name);
    while (held)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    *n = 0;
    if (strcmp(name, "nosuch.example") == 0)
        return -2; /* EAI_NONAME */
    /* every other name: 127.0.0.4 and 2001:db8::4 */
    if (cap < 2)
        return -1;
    set_addr(&out[0], "127.0.0.4");
    set_addr(&out[1], "2001:db8::4");
    *n = 2;
    return 0;
}

/* ---- the loop ------------------------------------------------------------------------- */

struct got {
    int n;
    enum px_name_verdict v;
};

static void on_verdict(enum px_name_verdict v, void *arg)
{
    struct got *g = arg;
    g->n++;
    g->v = v;
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
}

/* Run the loop until *n reaches want (n NULL: never), or ms pass. */
static void run_guarded(struct event_base *base, const int *n, int want, int ms)
{
    bool expired = false;
    struct event *guard = evtimer_new(base, on_guard, &expired);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(guard, &tv);
    while ((n == NULL || *n < want) && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(guard);
}

/* Run the loop until *n reaches want, or ms pass (then fail). */
static void run_until(struct event_base *base, const int *n, int want, int ms)
{
    run_guarded(base, n, want, ms);
    assert_int_equal(*n, want);
}

/* Run the loop for ms (nothing may be called meanwhile). */
static void run_for(struct event_base *base, int ms)
{
    run_guarded(base, NULL, 0, ms);
}

struct fx {
    struct event_base *base;
    struct px_resolver *r;
};

static struct fx setup(uint32_t max_queue, uint32_t max_entries, uint32_t pos_ms, uint32_t neg_ms,
                       uint32_t timeout_ms)
{
    pthread_mutex_lock(&mu);
    calls = 0;
    held = false;
    pthread_mutex_unlock(&mu);
    struct fx f;
    f.base = event_base_new();
    assert_non_null(f.base);
    struct px_resolver_opts o;
    px_resolver_opts_default(&o);
    o.max_queue = max_queue;
    o.max_entries = max_entries;
    o.positive_ms = pos_ms;
    o.negative_ms = neg_ms;
    o.timeout_ms = timeout_ms;
    o.fn = fake_fn;
    f.r = px_resolver_new(f.base, &o);
    assert_non_null(f.r);
    return f;
}

static void teardown(struct fx *f)
{
    hold(false);
    px_resolver_free(f->r);
    event_base_free(f->base);
}

/* pending: a check the cache cannot answer yet (it must wait; g gets the verdict) */
static struct px_name_wait *pending(struct fx *f, const char *name, const char *ip, struct got *g)
{
    struct cm_addr a;
    set_addr(&a, ip);
    struct px_name_wait *w;
    px_resolver_check(f->r, name, &a, on_verdict, g, &w);
    assert_non_null(w);
    return w;
}

/* ask: a check that must wait; the verdict once the loop ran */
static enum px_name_verdict ask(struct fx *f, const char *name, const char *ip)
{
    struct cm_addr a;
    set_addr(&a, ip);
    struct got g = {0, PX_NAME_MATCH};
    struct px_name_wait *w;
    enum px_name_verdict v = px_resolver_check(f->r, name, &a, on_verdict, &g, &w);
    if (w == NULL)
        return v;
    run_until(f->base, &g.n, 1, 5000);
    return g.v;
}

/* now: a check the cache must answer at once */
static enum px_name_verdict now(struct fx *f, const char *name, const char *ip)
{
    struct cm_addr a;
    set_addr(&a, ip);
    struct px_name_wait *w;
    enum px_name_verdict v = px_resolver_check(f->r, name, &a, on_verdict, NULL, &w);
    assert_null(w);
    return v;
}

static void test_verdicts(void **state)
{
    (void)state;
    struct fx f = setup(4, 16, 30000, 5000, 5000);
    assert_int_equal(ask(&f, "allowed.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_string_equal(last_name, "allowed.example");
    assert_int_equal(now(&f, "allowed.example", "127.0.0.9"), PX_NAME_MISMATCH);
    assert_int_equal(now(&f, "allowed.example", "2001:db8::4"), PX_NAME_MATCH);
    assert_int_equal(now(&f, "allowed.example", "::ffff:127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(now(&f, "allowed.example", "::ffff:127.0.0.9"), PX_NAME_MISMATCH);
    assert_int_equal(ask(&f, "nosuch.example", "127.0.0.4"), PX_NAME_NONAME);
    assert_int_equal(now(&f, "nosuch.example", "127.0.0.4"), PX_NAME_NONAME);
    assert_int_equal(ncalls(), 2); /* the rest from the cache */
    struct px_resolver_stats s;
    px_resolver_get_stats(f.r, &s);
    assert_int_equal(s.misses, 2);
    assert_int_equal(s.hits, 5);
    assert_int_equal(s.resolved, 1);
    assert_int_equal(s.failed, 1);
    assert_int_equal(s.entries, 2);
    assert_int_equal(s.queued, 0);
    /* an empty or over-long name is no name, never asked */
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(now(&f, "", "127.0.0.4"), PX_NAME_NONAME);
    assert_int_equal(now(&f, longname, "127.0.0.4"), PX_NAME_NONAME);
    assert_int_equal(ncalls(), 2);
    teardown(&f);
}

static void test_expiry(void **state)
{
    (void)state;
    struct fx f = setup(4, 16, 150, 80, 5000);
    assert_int_equal(ask(&f, "a.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(ask(&f, "nosuch.example", "127.0.0.4"), PX_NAME_NONAME);
    assert_int_equal(ncalls(), 2);
    run_for(f.base, 100); /* the negative answer expired, the positive not yet */
    assert_int_equal(now(&f, "a.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(ask(&f, "nosuch.example", "127.0.0.4"), PX_NAME_NONAME);
    assert_int_equal(ncalls(), 3);
    run_for(f.base, 200);
    assert_int_equal(ask(&f, "a.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(ncalls(), 4);
    teardown(&f);
}

static void test_joined(void **state)
{
    (void)state;
    struct fx f = setup(4, 16, 30000, 5000, 5000);
    hold(true);
    struct got g1 = {0, PX_NAME_BUSY}, g2 = {0, PX_NAME_BUSY}, g3 = {0, PX_NAME_BUSY};
    pending(&f, "j.example", "127.0.0.4", &g1);
    pending(&f, "j.example", "127.0.0.9", &g2);
    struct px_name_wait *w3 = pending(&f, "j.example", "127.0.0.4", &g3);
    px_name_cancel(w3); /* a cancelled wait is never called */
    hold(false);
    run_until(f.base, &g2.n, 1, 5000);
    assert_int_equal(g1.n, 1);
    assert_int_equal(g1.v, PX_NAME_MATCH);
    assert_int_equal(g2.v, PX_NAME_MISMATCH);
    run_for(f.base, 50);
    assert_int_equal(g3.n, 0);
    assert_int_equal(ncalls(), 1); /* one look-up for the three */
    struct px_resolver_stats s;
    px_resolver_get_stats(f.r, &s);
    assert_int_equal(s.joined, 2);
    teardown(&f);
}

static void test_queue_full(void **state)
{
    (void)state;
    struct fx f = setup(2, 16, 30000, 5000, 5000);
    hold(true);
    struct cm_addr a;
    set_addr(&a, "127.0.0.4");
    struct got g1 = {0, PX_NAME_BUSY}, g2 = {0, PX_NAME_BUSY};
    pending(&f, "q1.example", "127.0.0.4", &g1);
    pending(&f, "q2.example", "127.0.0.4", &g2);
    /* a third name: refused at once, fail closed */
    struct px_name_wait *w3;
    assert_int_equal(px_resolver_check(f.r, "q3.example", &a, on_verdict, NULL, &w3), PX_NAME_BUSY);
    assert_null(w3);
    /* a name already asked still joins */
    struct got g4 = {0, PX_NAME_BUSY};
    pending(&f, "q1.example", "127.0.0.4", &g4);
    hold(false);
    run_until(f.base, &g2.n, 1, 5000);
    run_until(f.base, &g1.n, 1, 5000);
    assert_int_equal(g4.n, 1);
    assert_int_equal(g4.v, PX_NAME_MATCH);
    /* room again */
    assert_int_equal(ask(&f, "q3.example", "127.0.0.4"), PX_NAME_MATCH);
    struct px_resolver_stats s;
    px_resolver_get_stats(f.r, &s);
    assert_int_equal(s.busy, 1);
    assert_int_equal(s.queued, 0);
    teardown(&f);
}

static void test_timeout(void **state)
{
    (void)state;
    struct fx f = setup(4, 16, 30000, 5000, 120);
    hold(true);
    struct got g = {0, PX_NAME_MATCH};
    pending(&f, "slow.example", "127.0.0.4", &g);
    run_until(f.base, &g.n, 1, 5000);
    assert_int_equal(g.v, PX_NAME_TIMEOUT); /* within the bound: refused */
    struct px_resolver_stats s;
    px_resolver_get_stats(f.r, &s);
    assert_int_equal(s.timeouts, 1);
    assert_int_equal(s.queued, 1);
    hold(false);
    /* the late answer lands in the cache */
    for (int i = 0; i < 100 && (px_resolver_get_stats(f.r, &s), s.queued > 0); i++)
        run_for(f.base, 20);
    assert_int_equal(s.queued, 0);
    assert_int_equal(now(&f, "slow.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(g.n, 1); /* called exactly once */
    teardown(&f);
}

static void test_lru(void **state)
{
    (void)state;
    struct fx f = setup(1, 3, 30000, 5000, 5000);
    assert_int_equal(ask(&f, "a.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(ask(&f, "b.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(ask(&f, "c.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(now(&f, "a.example", "127.0.0.4"), PX_NAME_MATCH); /* a used: b is oldest */
    assert_int_equal(ask(&f, "d.example", "127.0.0.4"), PX_NAME_MATCH);
    struct px_resolver_stats s;
    px_resolver_get_stats(f.r, &s);
    assert_int_equal(s.entries, 3);
    assert_int_equal(s.evicted, 1);
    assert_int_equal(ncalls(), 4);
    assert_int_equal(now(&f, "a.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(now(&f, "d.example", "127.0.0.4"), PX_NAME_MATCH);
    assert_int_equal(ask(&f, "b.example", "127.0.0.4"), PX_NAME_MATCH); /* asked again */
    assert_int_equal(ncalls(), 5);
    teardown(&f);
}

static void test_free_in_flight(void **state)
{
    (void)state;
    struct fx f = setup(4, 16, 30000, 5000, 5000);
    hold(true);
    struct got g1 = {0, PX_NAME_BUSY}, g2 = {0, PX_NAME_BUSY};
    pending(&f, "f1.example", "127.0.0.4", &g1);
    pending(&f, "f2.example", "127.0.0.4", &g2);
    while (ncalls() < 1) /* the worker holds f1, f2 is queued */
        run_for(f.base, 5);
    hold(false);
    px_resolver_free(f.r); /* joins the worker; waits dropped without callbacks */
    event_base_loop(f.base, EVLOOP_NONBLOCK);
    assert_int_equal(g1.n, 0);
    assert_int_equal(g2.n, 0);
    event_base_free(f.base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verdicts),       cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_joined),         cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_timeout),        cmocka_unit_test(test_lru),
        cmocka_unit_test(test_free_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
