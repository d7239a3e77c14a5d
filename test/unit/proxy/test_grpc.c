/* Unit tests of proxy/grpc.c: the grpc-timeout grammar (every unit, the
 * digit bound, rounding up, refusals), grpc-status values, gRPC content
 * types, the retries.on names (and their parse in a routes file), the
 * status the proxy answers for each HTTP status, and grpc-message
 * percent-encoding. The stream-level behaviour (trailers-only answers,
 * deadlines, retries on a status) is in test_stream.c. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proxy/grpc.h"
#include "proxy/routes.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"

__attribute__((weak)) struct px_server *px_srv;

static int tmo(const char *v, uint64_t *ms)
{
    return px_grpc_timeout_parse(v, strlen(v), ms);
}

static uint64_t tmo_ok(const char *v)
{
    uint64_t ms = 0;
    if (tmo(v, &ms) != 0)
        fail_msg("grpc-timeout '%s' refused", v);
    return ms;
}

static void timeout_units(void **state)
{
    (void)state;
    assert_int_equal(tmo_ok("1H"), 3600000);
    assert_int_equal(tmo_ok("2M"), 120000);
    assert_int_equal(tmo_ok("3S"), 3000);
    assert_int_equal(tmo_ok("250m"), 250);
    assert_int_equal(tmo_ok("1500u"), 2); /* rounded up */
    assert_int_equal(tmo_ok("1000000n"), 1);
    assert_int_equal(tmo_ok("1000001n"), 2);
    assert_int_equal(tmo_ok("0m"), 1); /* already due: the shortest timer */
    assert_int_equal(tmo_ok("1n"), 1);
    assert_int_equal(tmo_ok("00000005S"), 5000); /* 8 digits, leading zeros */
    assert_int_equal(tmo_ok("99999999m"), 99999999);
    assert_int_equal(tmo_ok("99999999H"), PX_GRPC_TIMEOUT_MAX_MS); /* capped */
}

static void timeout_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {"",    "S",   "5",    "5s",         "5 S",  " 5S", "-5S",
                                      "+5S", "5SS", "5.0S", "123456789S", "0x5S", "5h",  "5MS"};
    uint64_t ms = 77;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (tmo(bad[i], &ms) != -1)
            fail_msg("grpc-timeout '%s' accepted", bad[i]);
    assert_int_equal(ms, 77); /* untouched on refusal */
    /* not NUL-terminated: only len bytes count */
    assert_int_equal(px_grpc_timeout_parse("12mXYZ", 3, &ms), 0);
    assert_int_equal(ms, 12);
}

static void status_values(void **state)
{
    (void)state;
    assert_int_equal(px_grpc_status_parse("0", 1), 0);
    assert_int_equal(px_grpc_status_parse("16", 2), 16);
    assert_int_equal(px_grpc_status_parse("17", 2), PX_GRPC_STATUS_MAX + 1);
    assert_int_equal(px_grpc_status_parse("99999999999999999999", 20), PX_GRPC_STATUS_MAX + 1);
    assert_int_equal(px_grpc_status_parse("", 0), -1);
    assert_int_equal(px_grpc_status_parse("1a", 2), -1);
    assert_int_equal(px_grpc_status_parse("-1", 2), -1);
    assert_int_equal(px_grpc_status_parse(" 1", 2), -1);
}

static void resp_status_prefers_trailers(void **state)
{
    (void)state;
    struct px_arena a;
    struct px_msg head, tr;
    px_arena_init(&a);
    px_msg_init(&head);
    px_msg_init(&tr);
    assert_int_equal(px_grpc_resp_status(&head, NULL), -1);
    px_msg_add(&a, &head, "grpc-status", 11, "14", 2, UINT32_MAX, UINT32_MAX);
    assert_int_equal(px_grpc_resp_status(&head, NULL), 14); /* trailers-only */
    assert_int_equal(px_grpc_resp_status(&head, &tr), 14);  /* trailers without one */
    px_msg_add(&a, &tr, "grpc-status", 11, "0", 1, UINT32_MAX, UINT32_MAX);
    assert_int_equal(px_grpc_resp_status(&head, &tr), 0);
    px_arena_deinit(&a);
}

static bool is_grpc(const char *ct)
{
    struct px_arena a;
    struct px_msg m;
    px_arena_init(&a);
    px_msg_init(&m);
    m.method = "POST";
    if (ct != NULL)
        px_msg_add(&a, &m, "content-type", 12, ct, strlen(ct), UINT32_MAX, UINT32_MAX);
    bool r = px_grpc_is_request(&m);
    px_arena_deinit(&a);
    return r;
}

static void content_types(void **state)
{
    (void)state;
    assert_true(is_grpc("application/grpc"));
    assert_true(is_grpc("application/grpc+proto"));
    assert_true(is_grpc("application/grpc;charset=utf-8"));
    assert_true(is_grpc("Application/GRPC"));
    assert_false(is_grpc(NULL));
    assert_false(is_grpc("application/grpc-web"));
    assert_false(is_grpc("application/grpcx"));
    assert_false(is_grpc("application/json"));
    assert_false(is_grpc("application/grp"));
    struct px_arena a;
    struct px_msg m;
    px_arena_init(&a);
    px_msg_init(&m);
    m.method = "GET"; /* gRPC calls are POSTs */
    px_msg_add(&a, &m, "content-type", 12, "application/grpc", 16, UINT32_MAX, UINT32_MAX);
    assert_false(px_grpc_is_request(&m));
    px_arena_deinit(&a);
}

static void retry_names(void **state)
{
    (void)state;
    int c = -1;
    assert_int_equal(px_grpc_status_by_name("cancelled", &c), 0);
    assert_int_equal(c, 1);
    assert_int_equal(px_grpc_status_by_name("deadline-exceeded", &c), 0);
    assert_int_equal(c, 4);
    assert_int_equal(px_grpc_status_by_name("internal", &c), 0);
    assert_int_equal(c, 13);
    assert_int_equal(px_grpc_status_by_name("resource-exhausted", &c), 0);
    assert_int_equal(c, 8);
    assert_int_equal(px_grpc_status_by_name("unavailable", &c), 0);
    assert_int_equal(c, 14);
    assert_int_equal(px_grpc_status_by_name("UNAVAILABLE", &c), -1);
    assert_int_equal(px_grpc_status_by_name("14", &c), -1);

    const char *json =
        "{\"routes\": [{\"match\": {\"host\": \"s\"}, \"retries\": {\"attempts\": 2, "
        "\"on\": [\"unavailable\", \"cancelled\", \"503\"]}, "
        "\"endpoints\": [{\"address\": \"10.0.0.1:1\"}]}]}";
    struct px_routes *r = NULL;
    char *err = NULL;
    if (px_routes_parse("t.json", json, strlen(json), &r, &err) != 0)
        fail_msg("unexpected error: %s", err);
    assert_int_equal(r->routes[0].retry_grpc, (1u << 14) | (1u << 1));
    assert_true(px_route_retry_on(&r->routes[0], PX_TRY_5XX, 503));
    px_routes_unref(r);
    json = "{\"routes\": [{\"match\": {\"host\": \"s\"}, \"retries\": {\"on\": [\"unavaliable\"]}, "
           "\"endpoints\": [{\"address\": \"10.0.0.1:1\"}]}]}";
    r = NULL;
    assert_int_not_equal(px_routes_parse("t.json", json, strlen(json), &r, &err), 0);
    assert_null(r);
    assert_non_null(strstr(err, "routes[0].retries.on[0]: \"unavaliable\" is not"));
    assert_non_null(strstr(err, "unavailable"));
    free(err);
}

static void http_to_grpc(void **state)
{
    (void)state;
    assert_int_equal(px_grpc_status_of_http(503, PX_CAUSE_CONNECT_REFUSED), PX_GRPC_UNAVAILABLE);
    assert_int_equal(px_grpc_status_of_http(503, PX_CAUSE_OVERFLOW), PX_GRPC_UNAVAILABLE);
    assert_int_equal(px_grpc_status_of_http(502, PX_CAUSE_UPSTREAM_RESET), PX_GRPC_UNAVAILABLE);
    assert_int_equal(px_grpc_status_of_http(504, PX_CAUSE_UPSTREAM_TIMEOUT),
                     PX_GRPC_DEADLINE_EXCEEDED);
    assert_int_equal(px_grpc_status_of_http(403, PX_CAUSE_NONE), PX_GRPC_PERMISSION_DENIED);
    assert_int_equal(px_grpc_status_of_http(401, PX_CAUSE_NONE), PX_GRPC_UNAUTHENTICATED);
    assert_int_equal(px_grpc_status_of_http(400, PX_CAUSE_NONE), PX_GRPC_INTERNAL);
    assert_int_equal(px_grpc_status_of_http(404, PX_CAUSE_NONE), PX_GRPC_UNIMPLEMENTED);
    assert_int_equal(px_grpc_status_of_http(405, PX_CAUSE_NONE), PX_GRPC_UNIMPLEMENTED);
    assert_int_equal(px_grpc_status_of_http(413, PX_CAUSE_NONE), PX_GRPC_RESOURCE_EXHAUSTED);
    assert_int_equal(px_grpc_status_of_http(429, PX_CAUSE_NONE), PX_GRPC_RESOURCE_EXHAUSTED);
    assert_int_equal(px_grpc_status_of_http(431, PX_CAUSE_NONE), PX_GRPC_RESOURCE_EXHAUSTED);
    assert_int_equal(px_grpc_status_of_http(508, PX_CAUSE_LOOP), PX_GRPC_INTERNAL);
    assert_int_equal(px_grpc_status_of_http(418, PX_CAUSE_NONE), PX_GRPC_UNKNOWN);
}

static void percent_encoding(void **state)
{
    (void)state;
    char out[32];
    assert_int_equal(px_grpc_percent_encode(out, sizeof(out), "plain text", 10), 10);
    assert_string_equal(out, "plain text");
    px_grpc_percent_encode(out, sizeof(out), "50%\n\xc3\xa9", 6);
    assert_string_equal(out, "50%25%0A%C3%A9");
    /* never a cut escape: "ab%25" needs 5 + NUL, only 5 fit */
    assert_int_equal(px_grpc_percent_encode(out, 5, "ab%", 3), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(px_grpc_percent_encode(out, 1, "x", 1), 0);
    assert_string_equal(out, "");
    assert_int_equal(px_grpc_percent_encode(out, 0, "x", 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(timeout_units), cmocka_unit_test(timeout_malformed),
        cmocka_unit_test(status_values), cmocka_unit_test(resp_status_prefers_trailers),
        cmocka_unit_test(content_types), cmocka_unit_test(retry_names),
        cmocka_unit_test(http_to_grpc),  cmocka_unit_test(percent_encoding),
    };
    return cmocka_run_group_tests_name("proxy/grpc", tests, NULL, NULL);
}
