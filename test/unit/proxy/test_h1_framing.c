/* Unit tests of the HTTP/1.1 parsing decisions taken before anything is
 * forwarded: message framing from Content-Length and
 * Transfer-Encoding (px_h1_check_framing, RFC 9112 6), the request-target
 * forms (px_http_parse_target, RFC 9112 3.2), valid authorities for Host and
 * absolute-form targets (px_http_valid_authority), and the log escaping of
 * bytes a log cannot print (cm_log_escape). Each table row is one case. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/h1_common.h"
#include "proxy/http.h"

#define BIG UINT32_MAX

/* A head from "name: value" lines separated by '\n'. */
static void build(struct px_arena *a, struct px_msg *m, const char *lines)
{
    px_msg_init(m);
    const char *p = lines;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        const char *colon = memchr(p, ':', n);
        assert_non_null(colon);
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        assert_int_equal(px_msg_add(a, m, p, (size_t)(colon - p), v, (size_t)(p + n - v), BIG, BIG),
                         0);
        p += n + (nl != NULL);
    }
}

static void framing(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        int minor;
        const char *why; /* NULL: valid */
        int status;      /* when refused */
        int64_t cl;      /* when valid */
        bool chunked;    /* when valid */
    } cases[] = {
        {"", 1, NULL, 0, -1, false},
        {"content-length: 0", 1, NULL, 0, 0, false},
        {"content-length: 42", 1, NULL, 0, 42, false},
        {"content-length: 9223372036854775807", 1, NULL, 0, INT64_MAX, false},
        {"content-length: 9223372036854775808", 1, "Content-Length above 2^63-1", 400, 0, false},
        {"content-length: 18446744073709551615", 1, "Content-Length above 2^63-1", 400, 0, false},
        {"content-length: 99999999999999999999", 1, "Content-Length above 2^63-1", 400, 0, false},
        {"content-length: +5", 1, "Content-Length is not a number", 400, 0, false},
        {"content-length: -1", 1, "Content-Length is not a number", 400, 0, false},
        {"content-length: 5, 5", 1, "Content-Length is not a number", 400, 0, false},
        {"content-length: 0x10", 1, "Content-Length is not a number", 400, 0, false},
        {"content-length: ", 1, "Content-Length is not a number", 400, 0, false},
        {"content-length: 5\ncontent-length: 5", 1, "more than one Content-Length", 400, 0, false},
        {"content-length: 5\ncontent-length: 6", 1, "more than one Content-Length", 400, 0, false},
        {"transfer-encoding: chunked", 1, NULL, 0, -1, true},
        {"transfer-encoding: Chunked", 1, NULL, 0, -1, true},
        {"transfer-encoding: gzip", 1, "Transfer-Encoding does not end with chunked", 400, 0,
         false},
        {"transfer-encoding: identity", 1, "Transfer-Encoding does not end with chunked", 400, 0,
         false},
        {"transfer-encoding: chunked, gzip", 1, "Transfer-Encoding does not end with chunked", 400,
         0, false},
        {"transfer-encoding: gzip, chunked", 1, "transfer coding other than chunked", 501, 0,
         false},
        {"transfer-encoding: gzip\ntransfer-encoding: chunked", 1,
         "transfer coding other than chunked", 501, 0, false},
        {"transfer-encoding: chunked, chunked", 1, "chunked applied twice", 400, 0, false},
        {"transfer-encoding: chunked\ntransfer-encoding: chunked", 1, "chunked applied twice", 400,
         0, false},
        {"transfer-encoding: ", 1, "empty Transfer-Encoding", 400, 0, false},
        {"transfer-encoding: ,", 1, "empty Transfer-Encoding", 400, 0, false},
        {"transfer-encoding: chunked;q=1", 1, "Transfer-Encoding does not end with chunked", 400, 0,
         false},
        {"transfer-encoding: chunked", 0, "Transfer-Encoding in an HTTP/1.0 message", 400, 0,
         false},
        {"content-length: 3\ntransfer-encoding: chunked", 1,
         "both Content-Length and Transfer-Encoding", 400, 0, false},
        {"transfer-encoding: chunked\ncontent-length: 3", 1,
         "both Content-Length and Transfer-Encoding", 400, 0, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct px_arena a;
        struct px_msg m;
        px_arena_init(&a);
        build(&a, &m, cases[i].head);
        struct px_h1_framing fr;
        int st = 0;
        const char *why = px_h1_check_framing(&m, cases[i].minor, &fr, &st);
        if (cases[i].why == NULL) {
            if (why != NULL)
                fail_msg("case %zu (%s): refused: %s", i, cases[i].head, why);
            assert_int_equal(fr.content_length, cases[i].cl);
            assert_int_equal(fr.chunked, cases[i].chunked);
        } else {
            if (why == NULL || strcmp(why, cases[i].why) != 0)
                fail_msg("case %zu (%s): got %s, want %s", i, cases[i].head, why ? why : "valid",
                         cases[i].why);
            assert_int_equal(st, cases[i].status);
        }
        px_arena_deinit(&a);
    }
}

static void targets(void **state)
{
    (void)state;
    static const struct {
        const char *t;
        bool options;
        enum px_target_form form;
        const char *authority; /* ABSOLUTE */
        const char *rest;      /* ABSOLUTE: what follows the authority */
        const char *scheme;
    } cases[] = {
        {"/", false, PX_TARGET_ORIGIN, NULL, NULL, NULL},
        {"/a?b=c", false, PX_TARGET_ORIGIN, NULL, NULL, NULL},
        {"*", true, PX_TARGET_ASTERISK, NULL, NULL, NULL},
        {"*", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"a/b", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"/a#frag", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"http://internal.svc/secret", false, PX_TARGET_ABSOLUTE, "internal.svc", "/secret",
         "http"},
        {"HTTP://Internal.svc:8080", false, PX_TARGET_ABSOLUTE, "Internal.svc:8080", "", "http"},
        {"https://a?q=1", false, PX_TARGET_ABSOLUTE, "a", "?q=1", "https"},
        {"http://[::1]:80/x", false, PX_TARGET_ABSOLUTE, "[::1]:80", "/x", "http"},
        {"http:///x", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"http://", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"http://user@internal.svc/", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"http://a b/", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"ftp://a/", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"http:/a/", false, PX_TARGET_INVALID, NULL, NULL, NULL},
        {"internal.svc:443", false, PX_TARGET_INVALID, NULL, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct px_target tg;
        enum px_target_form f =
            px_http_parse_target(cases[i].t, strlen(cases[i].t), cases[i].options, &tg);
        if (f != cases[i].form || tg.form != f)
            fail_msg("case %zu (%s): form %d, want %d", i, cases[i].t, f, cases[i].form);
        if (f != PX_TARGET_ABSOLUTE)
            continue;
        assert_int_equal(tg.auth_len, strlen(cases[i].authority));
        assert_memory_equal(cases[i].t + tg.auth_off, cases[i].authority, tg.auth_len);
        assert_string_equal(cases[i].t + tg.path_off, cases[i].rest);
        assert_string_equal(tg.scheme, cases[i].scheme);
    }
}

static void authorities(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "",           "a",         "public.svc", "public.svc:8080", "10.0.0.1:80",
        "[::1]:8080", "a-b_c~d.e", "%41b",       "a!$&'()*+,;=b"};
    static const char *const bad[] = {"a b", "a/b", "a?b",  "a#b",  "user@host", "a\\b",  "a\tb",
                                      "%4",  "%zz", "a\"b", "a<b>", "\xff",      "a\x7f", "a%"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (!px_http_valid_authority(ok[i], strlen(ok[i])))
            fail_msg("'%s' should be a valid authority", ok[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (px_http_valid_authority(bad[i], strlen(bad[i])))
            fail_msg("'%s' should not be a valid authority", bad[i]);
    assert_false(px_http_valid_authority("a\0b", 3)); /* NUL inside */
}

static void log_escape(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(cm_log_escape(out, sizeof(out), "/caf\xff", 5), 8);
    assert_string_equal(out, "/caf\\xff");
    cm_log_escape(out, sizeof(out), "a\\b\n\x01\x7f", 6);
    assert_string_equal(out, "a\\x5cb\\x0a\\x01\\x7f");
    cm_log_escape(out, sizeof(out), "a\0b", 3);
    assert_string_equal(out, "a\\x00b");
    /* cut on a whole escape, always terminated */
    cm_log_escape(out, 6, "ab\xff\xff", 4);
    assert_string_equal(out, "ab");
    cm_log_escape(out, 1, "abc", 3);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(framing),
        cmocka_unit_test(targets),
        cmocka_unit_test(authorities),
        cmocka_unit_test(log_escape),
    };
    return cmocka_run_group_tests_name("proxy/h1_framing", tests, NULL, NULL);
}
