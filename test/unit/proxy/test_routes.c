/* Unit tests of the routes (proxy/routes*.c, lb.c, outlier.c): parsing errors name the key,
 * matching (and its index keeping file order), the endpoint pick (locality tiers, failover, avoid,
 * power of two choices, never an ejected endpoint), the latency-aware cost (a hung endpoint loses
 * at once, a new one gets traffic, a penalty decays), outlier ejection (never the last healthy
 * endpoint), the retry budget and retry_on. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <unistd.h>

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "proxy/routes.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"

/* The routes state the tests' snapshots are bound to (px_routes_start makes
 * the server's); made on first use, freed by state_free(). */
static struct px_routes_state *rs;

static struct px_routes_state *routes_state(void)
{
    if (rs == NULL)
        rs = px_routes_state_new(NULL);
    return rs;
}

static void state_free(void)
{
    px_routes_state_free(rs);
    rs = NULL;
}

static struct px_routes *parse_ok(const char *json)
{
    struct px_routes *r = NULL;
    char *err = NULL;
    int rc = px_routes_parse("t.json", json, strlen(json), &r, &err);
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    px_routes_bind_states(routes_state(), r);
    return r;
}

static void parse_bad(const char *json, const char *want)
{
    struct px_routes *r = NULL;
    char *err = NULL;
    assert_int_not_equal(px_routes_parse("t.json", json, strlen(json), &r, &err), 0);
    assert_null(r);
    assert_non_null(err);
    if (strstr(err, want) == NULL)
        fail_msg("error '%s' lacks '%s'", err, want);
    free(err);
}

static void errors_name_the_key(void **state)
{
    (void)state;
    parse_bad("{\"routez\": []}", "t.json: routez: unknown key");
    parse_bad("{\"routes\": [{\"match\": {\"hots\": \"a\"}, \"endpoints\": []}]}",
              "routes[0].match.hots: unknown key");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"endpoints\": []}]}",
              "routes[0].endpoints: 1 to 4096 endpoints");
    parse_bad("{\"routes\": [{\"match\": {}, \"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}",
              "routes[0].match: give exactly one");
    parse_bad(
        "{\"routes\": [{\"match\": {\"host\": \"a\"}, \"endpoints\": [{\"address\": \"x\"}]}]}",
        "routes[0].endpoints[0].address: \"x\" is not an address");
    parse_bad(
        "{\"routes\": [{\"match\": {\"host\": \"a\"}, \"retries\": {\"on\": [\"sometimes\"]}, "
        "\"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}",
        "routes[0].retries.on[0]: \"sometimes\" is not");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"retries\": {\"attempts\": 0}, "
              "\"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}",
              "routes[0].retries.attempts: 0 is out of range");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"timeout_ms\": 100, "
              "\"retries\": {\"per_try_timeout_ms\": 200}, \"endpoints\": [{\"address\": "
              "\"1.2.3.4:5\"}]}]}",
              "per_try_timeout_ms: longer than the route's timeout_ms");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"[a:66:66\"}, \"endpoints\": "
              "[{\"address\": \"1.2.3.4:5\"}]}]}",
              "routes[0].match.host: \"[a:66:66\" is not a host[:port]");
    parse_bad("[1]", "expected a JSON object");
}

static void matching(void **state)
{
    (void)state;
    struct px_routes *r = parse_ok("{\"routes\": [{\"match\": {\"host\": \"Reviews.Shop:9080\"}, "
                                   "\"endpoints\": [{\"address\": \"10.0.0.1:1\"}]},"
                                   " {\"match\": {\"address\": \"10.96.0.1:80\"}, \"endpoints\": "
                                   "[{\"address\": \"10.0.0.2:1\"}]}]}");
    assert_ptr_equal(px_routes_match(r, "reviews.shop", NULL), &r->routes[0]);
    assert_ptr_equal(px_routes_match(r, "REVIEWS.shop:1234", NULL), &r->routes[0]);
    assert_null(px_routes_match(r, "reviews.shop.evil", NULL));
    assert_null(px_routes_match(r, "reviews.sho", NULL));
    struct cm_addr a;
    cm_addr_parse("10.96.0.1:80", &a);
    assert_ptr_equal(px_routes_match(r, "other", &a), &r->routes[1]);
    cm_addr_parse("10.96.0.1:81", &a);
    assert_null(px_routes_match(r, NULL, &a));
    px_routes_unref(r);
    state_free();
}

static void locality_and_failover(void **state)
{
    (void)state;
    routes_state()->cluster = "east"; /* what px_routes_start takes from cfg->cluster */
    struct px_routes *r = parse_ok(
        "{\"routes\": [{\"match\": {\"host\": \"s\"}, \"outlier\": {\"consecutive_failures\": 1, "
        "\"base_ejection_ms\": 60000}, \"endpoints\": ["
        "{\"address\": \"10.0.0.1:1\", \"cluster\": \"east\"}, {\"address\": \"10.0.0.2:1\", "
        "\"cluster\": \"east\"},"
        "{\"address\": \"10.0.1.1:1\", \"cluster\": \"west\"}]}]}");
    struct px_route *rt = &r->routes[0];
    int counts[3] = {0, 0, 0};
    for (int i = 0; i < 300; i++)
        counts[px_route_pick(rt, NULL, 0) - rt->eps]++;
    assert_int_equal(counts[2], 0); /* west only as failover */
    assert_true(counts[0] > 50 && counts[1] > 50);
    /* avoid: a retry does not go back to the endpoint that failed */
    const struct px_ep_state *tried[2] = {rt->eps[0].st, rt->eps[1].st};
    for (int i = 0; i < 50; i++)
        assert_ptr_not_equal(px_route_pick(rt, tried, 1), &rt->eps[0]);
    /* every local endpoint tried: the next try goes remote */
    for (int i = 0; i < 20; i++)
        assert_ptr_equal(px_route_pick(rt, tried, 2), &rt->eps[2]);
    /* eject both local endpoints: traffic fails over west; the last healthy is never ejected */
    px_route_report(rt, &rt->eps[0], PX_TRY_CONNECT, 100);
    px_route_report(rt, &rt->eps[1], PX_TRY_CONNECT, 100);
    for (int i = 0; i < 20; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), &rt->eps[2]);
    px_route_report(rt, &rt->eps[2], PX_TRY_CONNECT, 100);
    assert_int_equal(rt->eps[2].st->ejections, 0);
    assert_int_equal(routes_state()->ejections_total, 2);
    /* ejection ends: local again */
    rt->eps[0].st->ejected_until_ms = 1;
    routes_state()->eject_gen++; /* edited behind outlier.c's back: the LB view must rebuild */
    for (int i = 0; i < 20; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), &rt->eps[0]);
    px_routes_unref(r);
    state_free();
}

/* The first route in file order wins, with the index as with a scan: an
 * address route placed before a host route wins a request matching both,
 * a host route placed before an address route wins, duplicates never match. */
static void match_order_with_index(void **state)
{
    (void)state;
    struct px_routes *r = parse_ok(
        "{\"routes\": ["
        "{\"match\": {\"address\": \"10.96.0.1:80\"}, \"endpoints\": [{\"address\": "
        "\"10.0.0.1:1\"}]},"
        "{\"match\": {\"host\": \"x.shop\"}, \"endpoints\": [{\"address\": \"10.0.0.2:1\"}]},"
        "{\"match\": {\"host\": \"X.Shop:80\"}, \"endpoints\": [{\"address\": \"10.0.0.3:1\"}]},"
        "{\"match\": {\"host\": \"y.shop\"}, \"endpoints\": [{\"address\": \"10.0.0.4:1\"}]},"
        "{\"match\": {\"address\": \"10.96.0.2:80\"}, \"endpoints\": [{\"address\": "
        "\"10.0.0.5:1\"}]},"
        "{\"match\": {\"address\": \"10.96.0.1:80\"}, \"endpoints\": [{\"address\": "
        "\"10.0.0.6:1\"}]},"
        "{\"match\": {\"address\": \"[fd00::1]:80\"}, \"endpoints\": [{\"address\": "
        "\"10.0.0.7:1\"}]}"
        "]}");
    struct cm_addr a1, a2, a6, other;
    cm_addr_parse("10.96.0.1:80", &a1);
    cm_addr_parse("10.96.0.2:80", &a2);
    cm_addr_parse("[fd00::1]:80", &a6);
    cm_addr_parse("10.96.0.3:80", &other);
    assert_ptr_equal(px_routes_match(r, "x.shop", &a1), &r->routes[0]); /* address first */
    assert_ptr_equal(px_routes_match(r, "X.SHOP:8080", &other), &r->routes[1]);
    assert_ptr_equal(px_routes_match(r, "x.shop", NULL), &r->routes[1]); /* not the duplicate */
    assert_ptr_equal(px_routes_match(r, "y.shop", &a2), &r->routes[3]);  /* host first */
    assert_ptr_equal(px_routes_match(r, "z.shop", &a2), &r->routes[4]);
    assert_ptr_equal(px_routes_match(r, NULL, &a1), &r->routes[0]);
    assert_ptr_equal(px_routes_match(r, NULL, &a6), &r->routes[6]);
    assert_null(px_routes_match(r, "z.shop", &other));
    assert_null(px_routes_match(r, "x.sho", NULL));
    assert_null(px_routes_match(r, "", NULL));
    assert_null(px_routes_match(NULL, "x.shop", NULL));
    px_routes_unref(r);
    state_free();
}

/* What px_routes_match did before the index: the reference. */
static const struct px_route *match_by_scan(const struct px_routes *r, const char *authority,
                                            const struct cm_addr *orig_dst)
{
    size_t hlen = authority != NULL ? px_routes_host_len(authority) : 0;
    for (size_t i = 0; i < r->n; i++) {
        const struct px_route *rt = &r->routes[i];
        if (rt->match_host != NULL) {
            if (authority != NULL && strlen(rt->match_host) == hlen &&
                strncasecmp(rt->match_host, authority, hlen) == 0)
                return rt;
        } else if (orig_dst != NULL && cm_addr_equal(&rt->match_addr, orig_dst)) {
            return rt;
        }
    }
    return NULL;
}

/* 1,000 routes (hosts, addresses, duplicates mixed): the index answers what
 * the scan answers, for every host and address in the file and some not. */
static void thousand_routes(void **state)
{
    (void)state;
    size_t cap = 256 * 1024, len = 0;
    char *doc = malloc(cap);
    len += (size_t)snprintf(doc + len, cap - len, "{\"routes\": [");
    for (int i = 0; i < 1000; i++) {
        if (i % 7 == 3)
            len += (size_t)snprintf(doc + len, cap - len,
                                    "%s{\"match\": {\"address\": \"10.96.%d.%d:80\"}, "
                                    "\"endpoints\": [{\"address\": \"10.0.0.1:1\"}]}",
                                    i ? "," : "", (i / 2) / 250, (i / 2) % 250);
        else
            len += (size_t)snprintf(doc + len, cap - len,
                                    "%s{\"match\": {\"host\": \"svc%d.ns.svc.cluster.local\"}, "
                                    "\"endpoints\": [{\"address\": \"10.0.0.1:1\"}]}",
                                    i ? "," : "", i >= 900 && i < 990 ? i - 900 : i);
        /* (routes 900..989 repeat the hosts of 0..89: they never match) */
    }
    len += (size_t)snprintf(doc + len, cap - len, "]}");
    assert_true(len < cap);
    struct px_routes *r = parse_ok(doc);
    free(doc);
    assert_int_equal(r->n, 1000);
    for (int i = 0; i < 1100; i++) {
        char host[64], addr[32];
        snprintf(host, sizeof(host), "SVC%d.ns.svc.cluster.local:443", i);
        snprintf(addr, sizeof(addr), "10.96.%d.%d:80", (i / 2) / 250, (i / 2) % 250);
        struct cm_addr a;
        assert_int_equal(cm_addr_parse(addr, &a), 0);
        assert_ptr_equal(px_routes_match(r, host, NULL), match_by_scan(r, host, NULL));
        assert_ptr_equal(px_routes_match(r, NULL, &a), match_by_scan(r, NULL, &a));
        assert_ptr_equal(px_routes_match(r, host, &a), match_by_scan(r, host, &a));
    }
    /* the last route matches, and a duplicate host goes to its first route */
    assert_ptr_equal(px_routes_match(r, "svc999.ns.svc.cluster.local", NULL), &r->routes[999]);
    assert_ptr_equal(px_routes_match(r, "svc5.ns.svc.cluster.local", NULL), &r->routes[5]);
    assert_string_equal(r->routes[905].match_host, "svc5.ns.svc.cluster.local");
    px_routes_unref(r);
    state_free();
}

/* Ejected endpoints are never picked while a healthy one exists, and come
 * back when their ejection ends (the LB view rebuilds by itself). */
static void pick_never_ejected(void **state)
{
    (void)state;
    char doc[4096];
    size_t len = (size_t)snprintf(doc, sizeof(doc),
                                  "{\"routes\": [{\"match\": {\"host\": \"s\"}, \"outlier\": "
                                  "{\"consecutive_failures\": 1, \"base_ejection_ms\": 40}, "
                                  "\"endpoints\": [");
    for (int i = 0; i < 40; i++)
        len += (size_t)snprintf(doc + len, sizeof(doc) - len, "%s{\"address\": \"10.0.0.%d:1\"}",
                                i ? "," : "", i + 1);
    snprintf(doc + len, sizeof(doc) - len, "]}]}");
    struct px_routes *r = parse_ok(doc);
    struct px_route *rt = &r->routes[0];
    for (int i = 0; i < 40; i += 3)
        px_route_report(rt, &rt->eps[i], PX_TRY_CONNECT, 100); /* 14 ejected */
    assert_int_equal(routes_state()->ejections_total, 14);
    int seen[40] = {0};
    for (int i = 0; i < 4000; i++) {
        struct px_endpoint *e = px_route_pick(rt, NULL, 0);
        assert_false(px_ep_ejected(e->st, cm_mono_ms()));
        seen[e - rt->eps]++;
    }
    for (int i = 0; i < 40; i++)
        if (i % 3 != 0)
            assert_true(seen[i] > 0); /* every healthy one gets traffic */
    /* a retry avoiding healthy ones still never lands on an ejected one */
    const struct px_ep_state *tried[3] = {rt->eps[1].st, rt->eps[2].st, rt->eps[4].st};
    for (int i = 0; i < 1000; i++) {
        struct px_endpoint *e = px_route_pick(rt, tried, 3);
        assert_false(px_ep_ejected(e->st, cm_mono_ms()));
        assert_true(e != &rt->eps[1] && e != &rt->eps[2] && e != &rt->eps[4]);
    }
    usleep(60 * 1000); /* the ejections end (40 ms) */
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < 4000; i++)
        seen[px_route_pick(rt, NULL, 0) - rt->eps]++;
    assert_true(seen[0] > 0 && seen[39] > 0);
    px_routes_unref(r);
    state_free();
}

/* Locality tiers with many endpoints: local only while one is healthy (also
 * for a retry avoiding several local ones), remote when every local one is
 * avoided or ejected, back local when one returns. */
static void locality_tiers(void **state)
{
    (void)state;
    routes_state()->cluster = "east"; /* what px_routes_start takes from cfg->cluster */
    char doc[8192];
    size_t len = (size_t)snprintf(doc, sizeof(doc),
                                  "{\"routes\": [{\"match\": {\"host\": \"s\"}, \"outlier\": "
                                  "{\"consecutive_failures\": 1, \"base_ejection_ms\": 60000}, "
                                  "\"endpoints\": [");
    /* 100 endpoints: every 4th in east, the rest in west and south */
    for (int i = 0; i < 100; i++)
        len += (size_t)snprintf(doc + len, sizeof(doc) - len,
                                "%s{\"address\": \"10.0.%d.%d:1\", \"cluster\": \"%s\"}",
                                i ? "," : "", i / 250, i % 250 + 1,
                                i % 4 == 0   ? "east"
                                : i % 4 == 1 ? "south"
                                             : "west");
    snprintf(doc + len, sizeof(doc) - len, "]}]}");
    struct px_routes *r = parse_ok(doc);
    struct px_route *rt = &r->routes[0];
    for (int i = 0; i < 2000; i++)
        assert_true((px_route_pick(rt, NULL, 0) - rt->eps) % 4 == 0);
    /* a retry that already failed on 10 local endpoints: still local */
    const struct px_ep_state *tried[10];
    for (int i = 0; i < 10; i++)
        tried[i] = rt->eps[4 * i].st;
    for (int i = 0; i < 2000; i++) {
        size_t k = (size_t)(px_route_pick(rt, tried, 10) - rt->eps);
        assert_true(k % 4 == 0 && k >= 40);
    }
    /* eject all local ones but two, then avoid those two: remote */
    for (int i = 8; i < 100; i += 4)
        px_route_report(rt, &rt->eps[i], PX_TRY_CONNECT, 100);
    const struct px_ep_state *both[2] = {rt->eps[0].st, rt->eps[4].st};
    for (int i = 0; i < 500; i++) {
        size_t k = (size_t)(px_route_pick(rt, both, 2) - rt->eps);
        assert_true(k % 4 != 0);
        k = (size_t)(px_route_pick(rt, NULL, 0) - rt->eps);
        assert_true(k == 0 || k == 4);
    }
    /* the last two local ones ejected: failover to the remote clusters */
    px_route_report(rt, &rt->eps[0], PX_TRY_CONNECT, 100);
    px_route_report(rt, &rt->eps[4], PX_TRY_CONNECT, 100);
    for (int i = 0; i < 500; i++)
        assert_true((px_route_pick(rt, NULL, 0) - rt->eps) % 4 != 0);
    /* one local endpoint back (its ejection over): all traffic local again */
    rt->eps[48].st->ejected_until_ms = 1;
    routes_state()->eject_gen++;
    for (int i = 0; i < 200; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), &rt->eps[48]);
    px_routes_unref(r);
    state_free();
}

static void p2c_prefers_less_loaded(void **state)
{
    (void)state;
    struct px_routes *r =
        parse_ok("{\"routes\": [{\"match\": {\"host\": \"s\"}, \"endpoints\": ["
                 "{\"address\": \"10.0.0.1:1\"}, {\"address\": \"10.0.0.2:1\"}]}]}");
    struct px_route *rt = &r->routes[0];
    rt->eps[0].st->outstanding = 50;
    for (int i = 0; i < 50; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), &rt->eps[1]);
    px_routes_unref(r);
    state_free();
}

/* Three endpoints measured at ~0.3 ms (samples through the stream hooks). */
static struct px_routes *measured_routes(const char *extra_ep)
{
    char doc[1024];
    snprintf(doc, sizeof(doc),
             "{\"routes\": [{\"match\": {\"host\": \"s\"}, \"outlier\": "
             "{\"consecutive_failures\": 3}, \"endpoints\": [{\"address\": \"10.0.0.1:1\"}, "
             "{\"address\": \"10.0.0.2:1\"}, {\"address\": \"10.0.0.3:1\"}%s]}]}",
             extra_ep);
    struct px_routes *r = parse_ok(doc);
    struct px_route *rt = &r->routes[0];
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 10; i++) {
            px_route_try_start(&rt->eps[k]);
            px_route_try_head(rt, &rt->eps[k], 250 + 50 * (uint64_t)k);
            px_route_report(rt, &rt->eps[k], PX_TRY_OK, 0);
        }
    return r;
}

/* A hung endpoint (a request outstanding, no answer for a while) costs more
 * than healthy ones within milliseconds, long before any timeout: no new
 * request goes there, even against endpoints with requests in flight. */
static void hung_endpoint_loses(void **state)
{
    (void)state;
    struct px_routes *r = measured_routes("");
    struct px_route *rt = &r->routes[0];
    assert_true(rt->eps[0].st->ewma_ms > 0.2 && rt->eps[0].st->ewma_ms < 0.4);
    px_route_try_start(&rt->eps[0]); /* sent, never answered */
    usleep(10 * 1000);
    px_route_try_start(&rt->eps[1]); /* busy too, but just started */
    assert_true(px_lb_estimate_ms(rt, rt->eps[0].st, cm_mono_us()) >= 10.0);
    for (int i = 0; i < 1000; i++)
        assert_ptr_not_equal(px_route_pick(rt, NULL, 0), &rt->eps[0]);
    /* an old request (50 ms) against endpoints with three in flight each */
    rt->eps[0].st->progress_us = cm_mono_us() - 50000;
    rt->eps[1].st->outstanding = rt->eps[2].st->outstanding = 3;
    rt->eps[1].st->progress_us = rt->eps[2].st->progress_us = cm_mono_us();
    for (int i = 0; i < 1000; i++)
        assert_ptr_not_equal(px_route_pick(rt, NULL, 0), &rt->eps[0]);
    rt->eps[1].st->outstanding = rt->eps[2].st->outstanding = 0;
    /* its per-try timeout (200 ms) is a sample: expensive after it, too */
    px_route_report(rt, &rt->eps[0], PX_TRY_TIMEOUT, 200000);
    assert_int_equal(rt->eps[0].st->outstanding, 0);
    assert_true(rt->eps[0].st->ewma_ms >= 199.0);
    for (int i = 0; i < 1000; i++)
        assert_ptr_not_equal(px_route_pick(rt, NULL, 0), &rt->eps[0]);
    /* ... until the penalty decays (2 minutes later, 60 time constants) */
    rt->eps[0].st->ewma_at_us -= 120 * 1000000ULL;
    int n = 0;
    for (int i = 0; i < 3000; i++)
        n += px_route_pick(rt, NULL, 0) == &rt->eps[0];
    assert_true(n > 300);
    /* a fast failure does not make an endpoint look faster, nor a reset after
     * a while slower (it must keep getting the tries that eject it) */
    double before = rt->eps[2].st->ewma_ms;
    px_route_try_start(&rt->eps[2]);
    px_route_report(rt, &rt->eps[2], PX_TRY_CONNECT, 10);
    assert_true(rt->eps[2].st->ewma_ms == before);
    px_route_try_start(&rt->eps[2]);
    px_route_report(rt, &rt->eps[2], PX_TRY_RESET, 50000);
    assert_true(rt->eps[2].st->ewma_ms == before);
    px_route_try_abandon(&rt->eps[1]);
    assert_int_equal(rt->eps[1].st->outstanding, 0);
    px_routes_unref(r);
    state_free();
}

/* An endpoint never measured competes as a typical one: it gets traffic at
 * once, in the snapshot that has it and in a reloaded one (whose neutral
 * estimate is the median of its endpoints'). */
static void new_endpoint_gets_picked(void **state)
{
    (void)state;
    struct px_routes *r = measured_routes(", {\"address\": \"10.0.0.4:1\"}");
    struct px_route *rt = &r->routes[0];
    assert_int_equal(rt->eps[3].st->ewma_at_us, 0);
    int n = 0;
    for (int i = 0; i < 4000; i++)
        n += px_route_pick(rt, NULL, 0) == &rt->eps[3];
    assert_true(n > 400); /* ~1/4 expected */
    /* a reload adds 10.0.0.5: the new snapshot seeds its neutral estimate with
     * the median of its endpoints' (0.25, 0.30, 0.35 ms): it wins against the
     * slower ones */
    struct px_routes *r2 =
        parse_ok("{\"routes\": [{\"match\": {\"host\": \"s\"}, \"endpoints\": [{\"address\": "
                 "\"10.0.0.1:1\"}, {\"address\": \"10.0.0.2:1\"}, {\"address\": \"10.0.0.3:1\"}, "
                 "{\"address\": \"10.0.0.5:1\"}]}]}");
    struct px_route *rt2 = &r2->routes[0];
    assert_ptr_equal(rt2->eps[0].st, rt->eps[0].st); /* health records are shared */
    n = 0;
    for (int i = 0; i < 3000; i++)
        n += px_route_pick(rt2, NULL, 0) == &rt2->eps[3];
    assert_true(rt2->lat_typical_ms > 0.28 && rt2->lat_typical_ms < 0.32);
    assert_true(n > 200); /* ~1/6 expected: paired with the slowest one */
    px_routes_unref(r2);
    px_routes_unref(r);
    state_free();
}

/* Weights: equal latency and load, weight 3 takes about three times the
 * traffic of weight 1 under load. */
static void weights_count(void **state)
{
    (void)state;
    struct px_routes *r = parse_ok("{\"routes\": [{\"match\": {\"host\": \"s\"}, \"endpoints\": ["
                                   "{\"address\": \"10.0.0.1:1\", \"weight\": 1}, "
                                   "{\"address\": \"10.0.0.2:1\", \"weight\": 3}]}]}");
    struct px_route *rt = &r->routes[0];
    int n[2] = {0, 0};
    /* keep requests outstanding (nothing completes): load decides */
    for (int i = 0; i < 400; i++) {
        struct px_endpoint *e = px_route_pick(rt, NULL, 0);
        px_route_try_start(e);
        n[e - rt->eps]++;
    }
    assert_true(n[1] > 2 * n[0]);
    px_routes_unref(r);
    state_free();
}

static void budget_and_retry_on(void **state)
{
    (void)state;
    struct px_routes *r =
        parse_ok("{\"routes\": [{\"match\": {\"host\": \"s\"}, \"retries\": {\"attempts\": 3, "
                 "\"on\": [\"gateway-error\", \"429\"],"
                 " \"budget_percent\": 10}, \"endpoints\": [{\"address\": \"10.0.0.1:1\"}]}]}");
    struct px_route *rt = &r->routes[0];
    assert_true(px_route_retry_on(rt, PX_TRY_5XX, 503));
    assert_true(px_route_retry_on(rt, PX_TRY_5XX, 429));
    assert_false(px_route_retry_on(rt, PX_TRY_5XX, 500));
    assert_false(px_route_retry_on(rt, PX_TRY_CONNECT, 0));
    int allowed = 0;
    for (int i = 0; i < 50; i++)
        allowed += px_route_budget_retry(rt);
    assert_int_equal(allowed, 10); /* nothing sent yet: the floor */
    for (int i = 0; i < 300; i++)
        px_route_budget_request(rt);
    for (int i = 0; i < 100; i++)
        allowed += px_route_budget_retry(rt);
    assert_int_equal(allowed, 30); /* 10 % of 300 */
    px_routes_unref(r);
    state_free();
}

/* circuit_breakers: keys checked and named, unset ones keep the limits'. */
static void circuit_breakers(void **state)
{
    (void)state;
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"circuit_breakers\": "
              "{\"max_conns\": 1}, \"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}",
              "routes[0].circuit_breakers.max_conns: unknown key");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"circuit_breakers\": "
              "{\"max_connections\": 0}, \"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}",
              "routes[0].circuit_breakers.max_connections: 0 is out of range [1, 1000000]");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"circuit_breakers\": "
              "{\"pending_timeout_ms\": 1.5}, \"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}",
              "routes[0].circuit_breakers.pending_timeout_ms: expected an integer");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"circuit_breakers\": "
              "[], \"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}",
              "routes[0].circuit_breakers: expected an object");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"circuit_breakers\": "
              "{\"max_requests_per_connection\": 100001}, \"endpoints\": [{\"address\": "
              "\"1.2.3.4:5\"}]}]}",
              "routes[0].circuit_breakers.max_requests_per_connection: 100001 is out of range");
    struct px_routes *r =
        parse_ok("{\"routes\": [{\"match\": {\"host\": \"a\"}, \"circuit_breakers\": "
                 "{\"max_connections\": 16, \"max_pending_requests\": 0}, \"endpoints\": "
                 "[{\"address\": \"1.2.3.4:5\"}]}, {\"match\": {\"host\": \"b\"}, "
                 "\"endpoints\": [{\"address\": \"1.2.3.4:5\"}]}]}");
    struct px_breakers cb = {100, 200, 300, 400};
    px_route_breakers(&r->routes[0], &cb);
    assert_int_equal(cb.max_connections, 16);
    assert_int_equal(cb.max_pending_requests, 0);
    assert_int_equal(cb.pending_timeout_ms, 300);
    assert_int_equal(cb.max_requests_per_connection, 400);
    struct px_breakers cb2 = {100, 200, 300, 400};
    px_route_breakers(&r->routes[1], &cb2); /* no circuit_breakers: the defaults */
    assert_memory_equal(&cb2, &((struct px_breakers){100, 200, 300, 400}), sizeof(cb2));
    px_routes_unref(r);
    state_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(errors_name_the_key),      cmocka_unit_test(matching),
        cmocka_unit_test(locality_and_failover),    cmocka_unit_test(p2c_prefers_less_loaded),
        cmocka_unit_test(budget_and_retry_on),      cmocka_unit_test(match_order_with_index),
        cmocka_unit_test(thousand_routes),          cmocka_unit_test(pick_never_ejected),
        cmocka_unit_test(locality_tiers),           cmocka_unit_test(hung_endpoint_loses),
        cmocka_unit_test(new_endpoint_gets_picked), cmocka_unit_test(weights_count),
        cmocka_unit_test(circuit_breakers),
    };
    int rc = cmocka_run_group_tests_name("proxy/routes", tests, NULL, NULL);
    pki_rng_free();
    return rc;
}
