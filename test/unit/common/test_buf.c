/* Unit tests of common/buf.c (bounds, growth, printf at the bound,
 * zero-length appends, take) and common/prom.c (the Prometheus text writer:
 * heads, label escaping, histograms, the sticky error at the bound), and
 * cm_fail of common/err.c. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/prom.h"

static void empty_and_zero_length(void **state)
{
    (void)state;
    struct cm_buf b;
    cm_buf_init(&b, 16);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(cm_buf_add(&b, NULL, 0), CM_OK);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    assert_int_equal(cm_buf_printf(&b, "%s", ""), CM_OK);
    assert_int_equal(b.len, 0);
    cm_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.max, 16);

    /* A zero maximum holds nothing but empty appends. */
    cm_buf_init(&b, 0);
    assert_int_equal(cm_buf_add(&b, "", 0), CM_OK);
    assert_int_equal(cm_buf_add(&b, "x", 1), CM_ERR_LIMIT);
    assert_int_equal(cm_buf_printf(&b, "x"), CM_ERR_LIMIT);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    cm_buf_free(&b);
}

static void bound_is_exact(void **state)
{
    (void)state;
    struct cm_buf b;
    cm_buf_init(&b, 10);
    assert_int_equal(cm_buf_adds(&b, "0123456"), CM_OK);
    assert_int_equal(cm_buf_add(&b, "7890", 4), CM_ERR_LIMIT); /* 11 > 10: nothing added */
    assert_int_equal(b.len, 7);
    assert_string_equal(b.data, "0123456");
    assert_int_equal(cm_buf_add(&b, "789", 3), CM_OK); /* exactly 10 */
    assert_string_equal(b.data, "0123456789");
    assert_int_equal(cm_buf_add(&b, "x", 1), CM_ERR_LIMIT);
    assert_int_equal(cm_buf_add(&b, "", 0), CM_OK);
    assert_true(b.cap <= 11); /* never allocates past the bound */
    /* A huge (untrusted) size is an error, not an abort nor an overflow. */
    assert_int_equal(cm_buf_add(&b, "x", SIZE_MAX), CM_ERR_LIMIT);
    assert_string_equal(b.data, "0123456789");
    cm_buf_free(&b);
}

static void growth_keeps_contents(void **state)
{
    (void)state;
    struct cm_buf b;
    cm_buf_init(&b, 1 << 20);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(cm_buf_printf(&b, "%04d,", i), CM_OK);
    assert_int_equal(b.len, 5000);
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "0000,0001,", 10);
    assert_memory_equal(b.data + 4990, "0998,0999,", 10);
    /* Bytes with NULs inside are kept as they are. */
    assert_int_equal(cm_buf_add(&b, "a\0b", 3), CM_OK);
    assert_memory_equal(b.data + 5000, "a\0b", 4);
    cm_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(cm_buf_adds(&b, "again"), CM_OK);
    assert_string_equal(b.data, "again");
    cm_buf_free(&b);
}

static void printf_at_the_bound(void **state)
{
    (void)state;
    struct cm_buf b;
    cm_buf_init(&b, 12);
    assert_int_equal(cm_buf_printf(&b, "%s-%d", "abc", 42), CM_OK); /* "abc-42" */
    /* 7 more would make 13: refused whole, no truncated prefix left behind. */
    assert_int_equal(cm_buf_printf(&b, "%s", "1234567"), CM_ERR_LIMIT);
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "abc-42");
    assert_int_equal(cm_buf_printf(&b, "%06d", 7), CM_OK); /* exactly 12 */
    assert_string_equal(b.data, "abc-42000007");
    assert_int_equal(cm_buf_printf(&b, "%c", 'x'), CM_ERR_LIMIT);
    assert_string_equal(b.data, "abc-42000007");
    cm_buf_free(&b);

    /* The first printf of a fresh buffer, longer than the initial block. */
    cm_buf_init(&b, 1000);
    assert_int_equal(cm_buf_printf(&b, "%300s", "r"), CM_OK);
    assert_int_equal(b.len, 300);
    assert_int_equal(b.data[299], 'r');
    assert_int_equal(cm_buf_printf(&b, "%701s", "r"), CM_ERR_LIMIT);
    assert_int_equal(b.len, 300);
    assert_int_equal(b.data[300], '\0');
    cm_buf_free(&b);
}

static void take_hands_over(void **state)
{
    (void)state;
    struct cm_buf b;
    cm_buf_init(&b, 64);
    size_t len = 99;
    char *p = cm_buf_take(&b, &len); /* nothing appended: still a string */
    assert_non_null(p);
    assert_int_equal(len, 0);
    assert_string_equal(p, "");
    free(p);
    assert_int_equal(cm_buf_adds(&b, "hello"), CM_OK);
    p = cm_buf_take(&b, &len);
    assert_int_equal(len, 5);
    assert_string_equal(p, "hello");
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 64);
    assert_int_equal(cm_buf_adds(&b, "next"), CM_OK); /* usable again */
    assert_string_equal(b.data, "next");
    assert_string_equal(p, "hello"); /* and the taken data is the caller's */
    free(p);
    cm_buf_free(&b);
}

static char *prom_text(struct cm_prom *p, int *err)
{
    size_t len;
    char *t = cm_prom_take(p, &len, err);
    assert_int_equal(strlen(t), len);
    return t;
}

static void prom_families(void **state)
{
    (void)state;
    struct cm_prom p;
    cm_prom_init(&p, 1 << 16);
    cm_prom_u64(&p, "x_total", "counter", "Things.", UINT64_MAX);
    cm_prom_head(&p, "y", "gauge", "Labelled.");
    cm_prom_add(&p, "y{", 2);
    cm_prom_label(&p, "a", "q\"b\\s\nn", 1);
    cm_prom_label(&p, "b", "", 0);
    cm_prom_printf(&p, "} %d\n", 3);
    cm_prom_add(&p, "z ", 2);
    cm_prom_seconds(&p, 12000345);
    cm_prom_add(&p, "\n", 1);
    int err;
    char *t = prom_text(&p, &err);
    assert_int_equal(err, CM_OK);
    assert_string_equal(t, "# HELP x_total Things.\n# TYPE x_total counter\n"
                           "x_total 18446744073709551615\n"
                           "# HELP y Labelled.\n# TYPE y gauge\n"
                           "y{a=\"q\\\"b\\\\s\\nn\",b=\"\"} 3\n"
                           "z 12.000345\n");
    free(t);
    cm_prom_free(&p);
}

static void prom_histogram(void **state)
{
    (void)state;
    static const uint64_t bounds[] = {25, 1000, 2500000};
    uint64_t counts[] = {1, 0, 2, 4};
    struct cm_prom p;
    cm_prom_init(&p, 1 << 16);
    cm_prom_histogram_us(&p, "h_seconds", bounds, counts, 3, 1500001);
    int err;
    char *t = prom_text(&p, &err);
    assert_int_equal(err, CM_OK);
    assert_string_equal(t, "h_seconds_bucket{le=\"2.5e-05\"} 1\n"
                           "h_seconds_bucket{le=\"0.001\"} 1\n"
                           "h_seconds_bucket{le=\"2.5\"} 3\n"
                           "h_seconds_bucket{le=\"+Inf\"} 7\n"
                           "h_seconds_sum 1.500001\n"
                           "h_seconds_count 7\n");
    free(t);
    cm_prom_free(&p);
}

/* cm_prom_hist: observations land in the first bucket whose bound is not
 * below them (the bound itself included), past the last in +Inf; the family
 * is the head and the same samples cm_prom_histogram_us writes. */
static void prom_hist_observe_and_write(void **state)
{
    (void)state;
    static const uint64_t bounds[] = {25, 1000, 2500000};
    static struct cm_prom_hist h = CM_PROM_HIST_INIT(bounds);
    assert_int_equal(h.n, 3);
    const uint64_t seen[] = {25, 1001, 2500000, 2500001, 0, 999};
    for (size_t i = 0; i < sizeof(seen) / sizeof(seen[0]); i++)
        cm_prom_hist_observe(&h, seen[i]);
    struct cm_prom p;
    cm_prom_init(&p, 1 << 16);
    cm_prom_hist_write(&p, "h_seconds", "H.", &h);
    int err;
    char *t = prom_text(&p, &err);
    assert_int_equal(err, CM_OK);
    assert_string_equal(t, "# HELP h_seconds H.\n# TYPE h_seconds histogram\n"
                           "h_seconds_bucket{le=\"2.5e-05\"} 2\n"
                           "h_seconds_bucket{le=\"0.001\"} 3\n"
                           "h_seconds_bucket{le=\"2.5\"} 5\n"
                           "h_seconds_bucket{le=\"+Inf\"} 6\n"
                           "h_seconds_sum 5.002026\n"
                           "h_seconds_count 6\n");
    free(t);
    cm_prom_free(&p);
}

/* cm_fail: replaces the message, returns the code, cuts at CM_FAIL_MAX - 1
 * bytes, and keeps nothing without an errmsg. */
static void fail_sets_message(void **state)
{
    (void)state;
    char *msg = NULL;
    assert_int_equal(cm_fail(&msg, CM_ERR_PROTO, "a %s %d", "b", 7), CM_ERR_PROTO);
    assert_string_equal(msg, "a b 7");
    assert_int_equal(cm_fail(&msg, CM_ERR_INVAL, "second"), CM_ERR_INVAL);
    assert_string_equal(msg, "second");
    char *big = malloc(CM_FAIL_MAX * 2);
    memset(big, 'x', CM_FAIL_MAX * 2 - 1);
    big[CM_FAIL_MAX * 2 - 1] = '\0';
    cm_fail(&msg, CM_ERR_INVAL, "%s", big);
    assert_int_equal(strlen(msg), CM_FAIL_MAX - 1);
    free(big);
    free(msg);
    assert_int_equal(cm_fail(NULL, CM_ERR_LIMIT, "dropped"), CM_ERR_LIMIT);
}

/* cm_fail_printable: cm_fail with control bytes and DEL of the message
 * replaced by '?' (UTF-8 kept); nothing kept without an errmsg. */
static void fail_printable_masks_controls(void **state)
{
    (void)state;
    char *msg = NULL;
    assert_int_equal(
        cm_fail_printable(&msg, CM_ERR_INVAL, "bad: %s", "a\nb\r\x1b[1m\x7f\tc\xc3\xa9"),
        CM_ERR_INVAL);
    assert_string_equal(msg, "bad: a?b?\?[1m?\?c\xc3\xa9");
    free(msg);
    assert_int_equal(cm_fail_printable(NULL, CM_ERR_LIMIT, "x\ny"), CM_ERR_LIMIT);
}

static void prom_error_is_sticky(void **state)
{
    (void)state;
    struct cm_prom p;
    cm_prom_init(&p, 40);
    cm_prom_u64(&p, "a", "gauge", "A.", 1); /* 36 bytes: fits */
    cm_prom_u64(&p, "b", "gauge", "B.", 2); /* does not */
    cm_prom_add(&p, "c", 1);                /* would fit, but the error stays */
    cm_prom_label(&p, "k", "v", 1);
    int err;
    char *t = prom_text(&p, &err);
    assert_int_equal(err, CM_ERR_LIMIT);
    assert_string_equal(t, "# HELP a A.\n# TYPE a gauge\na 1\n");
    free(t);
    /* take clears the error: the writer starts over. */
    cm_prom_add(&p, "d", 1);
    t = prom_text(&p, &err);
    assert_int_equal(err, CM_OK);
    assert_string_equal(t, "d");
    free(t);
    cm_prom_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(empty_and_zero_length),
        cmocka_unit_test(bound_is_exact),
        cmocka_unit_test(growth_keeps_contents),
        cmocka_unit_test(printf_at_the_bound),
        cmocka_unit_test(take_hands_over),
        cmocka_unit_test(prom_families),
        cmocka_unit_test(prom_histogram),
        cmocka_unit_test(prom_error_is_sticky),
        cmocka_unit_test(prom_hist_observe_and_write),
        cmocka_unit_test(fail_sets_message),
        cmocka_unit_test(fail_printable_masks_controls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
