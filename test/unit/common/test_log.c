/* Unit tests of common/log.c: level names both ways, the level filter of
 * the macros, and the shape of a line in text and JSON formats (one event,
 * one line, even when the message holds CR/LF or quotes). stderr is sent to
 * a temporary file to read what was written. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

static void level_parse(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        enum cm_log_level l;
    } ok[] = {
        {"error", CM_LOG_ERROR}, {"warn", CM_LOG_WARN},   {"warning", CM_LOG_WARN},
        {"info", CM_LOG_INFO},   {"debug", CM_LOG_DEBUG}, {"trace", CM_LOG_TRACE},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        enum cm_log_level l = CM_LOG_ERROR;
        assert_int_equal(cm_log_level_parse(ok[i].s, &l), 0);
        assert_int_equal(l, ok[i].l);
    }
    static const char *const bad[] = {"", "inf", "infos", "debug ", " info", "fatal", "all"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        enum cm_log_level l = CM_LOG_TRACE;
        if (cm_log_level_parse(bad[i], &l) != CM_ERR_INVAL || l != CM_LOG_TRACE)
            fail_msg("cm_log_level_parse(\"%s\") accepted", bad[i]);
    }
}

static void level_names(void **state)
{
    (void)state;
    assert_string_equal(cm_log_level_name(CM_LOG_ERROR), "error");
    assert_string_equal(cm_log_level_name(CM_LOG_WARN), "warn");
    assert_string_equal(cm_log_level_name(CM_LOG_INFO), "info");
    assert_string_equal(cm_log_level_name(CM_LOG_DEBUG), "debug");
    assert_string_equal(cm_log_level_name(CM_LOG_TRACE), "trace");
    assert_string_equal(cm_log_level_name((enum cm_log_level)5), "unknown");
    assert_string_equal(cm_log_level_name((enum cm_log_level) - 1), "unknown");
    /* every name parses back to its level */
    for (int i = CM_LOG_ERROR; i <= CM_LOG_TRACE; i++) {
        enum cm_log_level l;
        assert_int_equal(cm_log_level_parse(cm_log_level_name((enum cm_log_level)i), &l), 0);
        assert_int_equal(l, i);
    }
}

/* stderr captured into a temporary file */
struct capture {
    FILE *f;
    int saved;
};

static void capture_start(struct capture *c)
{
    fflush(stderr);
    c->f = tmpfile();
    assert_non_null(c->f);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fileno(c->f), STDERR_FILENO) >= 0);
}

/* Restores stderr; returns what was written (caller frees). */
static char *capture_end(struct capture *c)
{
    fflush(stderr);
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    long n = ftell(c->f);
    assert_true(n >= 0);
    char *s = calloc(1, (size_t)n + 1);
    rewind(c->f);
    assert_int_equal(fread(s, 1, (size_t)n, c->f), (size_t)n);
    fclose(c->f);
    return s;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static int evaluated;
static int side_effect(void)
{
    return ++evaluated;
}

static void level_filter(void **state)
{
    (void)state;
    struct capture c;
    cm_log_set_component("test");
    cm_log_set_format(CM_LOG_FORMAT_TEXT);
    cm_log_set_level(CM_LOG_WARN);
    assert_int_equal(cm_log_current_level, CM_LOG_WARN);
    evaluated = 0;
    capture_start(&c);
    cm_error("e %d", side_effect());
    cm_warn("w %d", side_effect());
    cm_info("i %d", side_effect()); /* filtered: arguments are not evaluated */
    cm_debug("d %d", side_effect());
    cm_trace("t %d", side_effect());
    char *out = capture_end(&c);
    assert_int_equal(evaluated, 2);
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, " error test: e 1\n"));
    assert_non_null(strstr(out, " warn  test: w 2\n"));
    free(out);

    cm_log_set_level(CM_LOG_TRACE);
    capture_start(&c);
    cm_trace("t");
    out = capture_end(&c);
    assert_non_null(strstr(out, " trace test: t\n"));
    free(out);
    cm_log_set_level(CM_LOG_INFO);
}

static void text_line(void **state)
{
    (void)state;
    struct capture c;
    cm_log_set_component("proxy");
    cm_log_set_format(CM_LOG_FORMAT_TEXT);
    capture_start(&c);
    cm_log_write(CM_LOG_INFO, "listener %s bound on %s", "inbound", "0.0.0.0:15006");
    cm_log_write(CM_LOG_WARN, "peer said \"%s\"", "evil\r\n2026-01-01T00:00:00.000Z error forged");
    char *out = capture_end(&c);
    /* "2026-11-26T12:00:00.123Z info  proxy: ..." */
    assert_int_equal(count_lines(out), 2);
    assert_true(strlen(out) > 25);
    assert_int_equal(out[4], '-');
    assert_int_equal(out[10], 'T');
    assert_int_equal(out[23], 'Z');
    assert_non_null(strstr(out, "Z info  proxy: listener inbound bound on 0.0.0.0:15006\n"));
    /* CR/LF from a peer cannot forge a line */
    assert_non_null(strstr(out, "warn  proxy: peer said \"evil  2026-01-01"));
    free(out);
    cm_log_set_component("remora");
}

static void json_line(void **state)
{
    (void)state;
    struct capture c;
    cm_log_set_component("injector");
    cm_log_set_format(CM_LOG_FORMAT_JSON);
    capture_start(&c);
    cm_log_write(CM_LOG_ERROR, "quote \" backslash \\ tab \t ctl \x01 nl \n end");
    char *out = capture_end(&c);
    cm_log_set_format(CM_LOG_FORMAT_TEXT);
    cm_log_set_component("remora");
    assert_int_equal(count_lines(out), 1);
    json_error_t jerr;
    json_t *o = json_loads(out, 0, &jerr);
    if (o == NULL)
        fail_msg("log line is not JSON (%s): %s", jerr.text, out);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(o, "component")), "injector");
    assert_string_equal(json_string_value(json_object_get(o, "msg")),
                        "quote \" backslash \\ tab \t ctl \x01 nl   end");
    const char *t = json_string_value(json_object_get(o, "time"));
    assert_non_null(t);
    assert_int_equal(strlen(t), 24);
    json_decref(o);
    free(out);
}

static void long_message_is_cut(void **state)
{
    (void)state;
    struct capture c;
    static char big[10000];
    memset(big, '"', sizeof(big) - 1); /* every byte doubles when escaped */
    cm_log_set_format(CM_LOG_FORMAT_JSON);
    capture_start(&c);
    cm_log_write(CM_LOG_INFO, "%s", big);
    char *out = capture_end(&c);
    cm_log_set_format(CM_LOG_FORMAT_TEXT);
    assert_int_equal(count_lines(out), 1);
    json_t *o = json_loads(out, 0, NULL);
    assert_non_null(o);
    assert_true(strlen(json_string_value(json_object_get(o, "msg"))) < 2048);
    json_decref(o);
    free(out);

    capture_start(&c);
    memset(big, 'x', sizeof(big) - 1);
    cm_log_write(CM_LOG_INFO, "%s", big);
    out = capture_end(&c);
    assert_int_equal(count_lines(out), 1);
    assert_true(strlen(out) < 2200);
    free(out);
}

static size_t count_str(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(s, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* A burst per key per window; the rest counted and reported on the next line
 * written for that key, or by the flush once the window is over; keys apart. */
static void limited_burst_and_counts(void **state)
{
    (void)state;
    struct capture c;
    cm_log_set_component("test");
    cm_log_set_format(CM_LOG_FORMAT_TEXT);
    cm_log_set_level(CM_LOG_INFO);
    cm_log_limited_reset();
    cm_log_limit_burst = 3;
    cm_log_limit_window_ms = 60000; /* nothing ends a window during the loop */
    capture_start(&c);
    unsigned wrote = 0;
    for (int i = 0; i < 20; i++)
        wrote += cm_log_limited(CM_LOG_WARN, "hs", "handshake %d failed", i);
    for (int i = 0; i < 2; i++)
        wrote += cm_log_limited(CM_LOG_WARN, "5xx", "answer %d", i);
    cm_log_limited(CM_LOG_DEBUG, "hs", "below the level: not written, not counted");
    cm_log_limited_flush(); /* the window is not over: nothing yet */
    char *out = capture_end(&c);
    assert_int_equal(wrote, 5);
    assert_int_equal(count_lines(out), 5);
    assert_int_equal(count_str(out, "handshake "), 3);
    assert_non_null(strstr(out, "handshake 2 failed\n"));
    assert_null(strstr(out, "handshake 3 failed"));
    assert_int_equal(count_str(out, "answer "), 2);
    free(out);

    cm_log_limit_window_ms = 0; /* every window is over now */
    capture_start(&c);
    cm_log_limited_flush();
    cm_log_limited_flush(); /* reported once only */
    out = capture_end(&c);
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, " warn  test: hs: suppressed 17 similar lines\n"));
    free(out);

    /* counted lines ride on the next written line when the flush did not run */
    cm_log_limit_window_ms = 60000;
    cm_log_limited_reset();
    capture_start(&c);
    for (int i = 0; i < 5; i++)
        cm_log_limited(CM_LOG_WARN, "k", "x%d", i);
    cm_log_limit_window_ms = 0;
    cm_log_limited(CM_LOG_WARN, "k", "after");
    out = capture_end(&c);
    assert_non_null(strstr(out, "test: after (suppressed 2 similar)\n"));
    free(out);
    cm_log_limit_burst = 5;
    cm_log_limit_window_ms = 1000;
    cm_log_limited_reset();
}

/* More kinds than slots: the one idle longest makes room, its count first. */
static void limited_slot_reuse(void **state)
{
    (void)state;
    struct capture c;
    cm_log_limited_reset();
    cm_log_limit_burst = 1;
    cm_log_limit_window_ms = 60000;
    capture_start(&c);
    cm_log_limited(CM_LOG_WARN, "first", "a");
    cm_log_limited(CM_LOG_WARN, "first", "b"); /* counted */
    char key[16];
    for (int i = 0; i < CM_LOG_LIMIT_KEYS; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cm_log_limited(CM_LOG_WARN, key, "%s", key);
    }
    char *out = capture_end(&c);
    assert_non_null(strstr(out, "first: suppressed 1 similar lines\n"));
    assert_int_equal(count_lines(out), 2 + CM_LOG_LIMIT_KEYS);
    free(out);
    cm_log_limit_burst = 5;
    cm_log_limit_window_ms = 1000;
    cm_log_limited_reset();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(level_parse),
        cmocka_unit_test(level_names),
        cmocka_unit_test(level_filter),
        cmocka_unit_test(text_line),
        cmocka_unit_test(json_line),
        cmocka_unit_test(long_message_is_cut),
        cmocka_unit_test(limited_burst_and_counts),
        cmocka_unit_test(limited_slot_reuse),
    };
    return cmocka_run_group_tests_name("common/log", tests, NULL, NULL);
}
