/* Unit tests of proxy/routes.c: parsing errors name the key, matching, the
 * endpoint pick (locality, failover, avoid, power of two choices), outlier
 * ejection (never the last healthy endpoint), the retry budget and retry_on. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "proxy/routes.c"

static struct px_routes *parse_ok(const char *json)
{
    struct px_routes *r = NULL;
    char *err = NULL;
    int rc = px_routes_parse("t.json", json, strlen(json), &r, &err);
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    bind_states(r);
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
    px_routes_shutdown();
}

static struct px_server fake_srv;
static struct px_config fake_cfg;

static void locality_and_failover(void **state)
{
    (void)state;
    fake_cfg.cluster = "east";
    fake_srv.cfg = &fake_cfg;
    px_srv = &fake_srv;
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
    assert_int_equal(R.ejections_total, 2);
    /* ejection ends: local again */
    rt->eps[0].st->ejected_until_ms = 1;
    for (int i = 0; i < 20; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), &rt->eps[0]);
    px_routes_unref(r);
    px_routes_shutdown();
    px_srv = NULL;
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
    px_routes_shutdown();
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
    px_routes_shutdown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(errors_name_the_key),   cmocka_unit_test(matching),
        cmocka_unit_test(locality_and_failover), cmocka_unit_test(p2c_prefers_less_loaded),
        cmocka_unit_test(budget_and_retry_on),
    };
    int rc = cmocka_run_group_tests_name("proxy/routes", tests, NULL, NULL);
    pki_rng_free();
    return rc;
}
