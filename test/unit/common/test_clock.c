/* Unit tests of common/clock.c: duration parsing (units, bare numbers,
 * refusals, overflow) and RFC 3339 formatting of both precisions. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "common/clock.h"
#include "common/err.h"

static void duration_units(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t ms;
    } cases[] = {
        {"250ms", 250},
        {"10s", 10000},
        {"5m", 300000},
        {"1h", 3600000},
        {"42", 42},
        {"0", 0},
        {"0s", 0},
        {"007ms", 7},
        {"18446744073709551615", UINT64_MAX},
        {"18446744073709551615ms", UINT64_MAX},
        {"5124095576030h", 5124095576030ull * 3600000ull}, /* largest whole hours */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 1;
        int rc = cm_parse_duration_ms(cases[i].s, &v);
        if (rc != 0 || v != cases[i].ms)
            fail_msg("cm_parse_duration_ms(\"%s\") = %d, %llu; want 0, %llu", cases[i].s, rc,
                     (unsigned long long)v, (unsigned long long)cases[i].ms);
    }
}

static void duration_refusals(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "ms",
        "s",
        "-1",
        "+1",
        " 1",
        "1 s",
        "1.5s",
        "1sec",
        "1S",
        "1MS",
        "1d",
        "1ms ",
        "1m s",
        "1mss",
        "0x10",
        "1e3",
        "10us",
        "abc",
        "1,000",
        "\t5",
        "18446744073709551616",    /* one past UINT64_MAX */
        "99999999999999999999999", /* strtoull overflow */
        "18446744073709552s",      /* overflows once multiplied */
        "5124095576031h",          /* one hour too many */
        "307445734561826m",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 77;
        int rc = cm_parse_duration_ms(bad[i], &v);
        if (rc != CM_ERR_INVAL || v != 77)
            fail_msg("cm_parse_duration_ms(\"%s\") = %d, %llu; want CM_ERR_INVAL, untouched",
                     bad[i], rc, (unsigned long long)v);
    }
    uint64_t v = 77;
    assert_int_equal(cm_parse_duration_ms(NULL, &v), CM_ERR_INVAL);
    assert_int_equal(v, 77);
}

static void rfc3339_seconds(void **state)
{
    (void)state;
    char buf[32];
    assert_string_equal(cm_fmt_rfc3339(0, buf, sizeof(buf)), "1970-01-01T00:00:00Z");
    assert_string_equal(cm_fmt_rfc3339(1795694400, buf, sizeof(buf)), "2026-11-26T12:00:00Z");
    assert_string_equal(cm_fmt_rfc3339(951782400, buf, sizeof(buf)), "2000-02-29T00:00:00Z");
    assert_string_equal(cm_fmt_rfc3339(4102444799, buf, sizeof(buf)), "2099-12-31T23:59:59Z");
    assert_string_equal(cm_fmt_rfc3339(-1, buf, sizeof(buf)), "1969-12-31T23:59:59Z");
    /* 21 bytes are enough, as documented */
    char exact[21];
    assert_string_equal(cm_fmt_rfc3339(1795694400, exact, sizeof(exact)), "2026-11-26T12:00:00Z");
    /* a short buffer is cut, never overrun */
    char small[11];
    assert_string_equal(cm_fmt_rfc3339(1795694400, small, sizeof(small)), "2026-11-26");
}

static void rfc3339_millis(void **state)
{
    (void)state;
    char buf[32];
    assert_string_equal(cm_fmt_rfc3339_ms(0, buf, sizeof(buf)), "1970-01-01T00:00:00.000Z");
    assert_string_equal(cm_fmt_rfc3339_ms(1234, buf, sizeof(buf)), "1970-01-01T00:00:01.234Z");
    assert_string_equal(cm_fmt_rfc3339_ms(1795694400123, buf, sizeof(buf)),
                        "2026-11-26T12:00:00.123Z");
    assert_string_equal(cm_fmt_rfc3339_ms(1795694400999, buf, sizeof(buf)),
                        "2026-11-26T12:00:00.999Z");
    char exact[25];
    assert_string_equal(cm_fmt_rfc3339_ms(1795694400007, exact, sizeof(exact)),
                        "2026-11-26T12:00:00.007Z");
}

/* Before the epoch the milliseconds must still be 000..999 of the right
 * second (C division truncates toward zero). */
static void rfc3339_millis_before_epoch(void **state)
{
    (void)state;
    char buf[32];
    assert_string_equal(cm_fmt_rfc3339_ms(-1, buf, sizeof(buf)), "1969-12-31T23:59:59.999Z");
    assert_string_equal(cm_fmt_rfc3339_ms(-1500, buf, sizeof(buf)), "1969-12-31T23:59:58.500Z");
}

static void clocks(void **state)
{
    (void)state;
    uint64_t a = cm_mono_us();
    uint64_t b = cm_mono_us();
    assert_true(b >= a);
    assert_true(cm_mono_ms() >= a / 1000);
    int64_t s = cm_wall_s();
    int64_t ms = cm_wall_ms();
    assert_true(s > 1700000000); /* after 2023 */
    assert_true(ms / 1000 >= s - 1 && ms / 1000 <= s + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(duration_units),
        cmocka_unit_test(duration_refusals),
        cmocka_unit_test(rfc3339_seconds),
        cmocka_unit_test(rfc3339_millis),
        cmocka_unit_test(rfc3339_millis_before_epoch),
        cmocka_unit_test(clocks),
    };
    return cmocka_run_group_tests_name("common/clock", tests, NULL, NULL);
}
