/* Unit tests of proxy/detect.c: the HTTP/2 preface (whole and partial),
 * HTTP/1.x request lines (whole and partial methods), TLS records, opaque
 * TCP; never UNKNOWN once PX_DETECT_MAX bytes are in, and a decision never
 * changes when more bytes arrive. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "proxy/detect.h"

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static enum px_conn_proto det(const char *s)
{
    return px_detect((const uint8_t *)s, strlen(s));
}

static void h2_preface(void **state)
{
    (void)state;
    assert_int_equal(sizeof(preface) - 1, 24);
    assert_int_equal(det(preface), PX_PROTO_H2);
    /* followed by the client SETTINGS frame */
    uint8_t buf[64];
    memcpy(buf, preface, 24);
    memcpy(buf + 24, "\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9);
    assert_int_equal(px_detect(buf, 33), PX_PROTO_H2);
    /* every proper prefix still waits */
    for (size_t n = 0; n < 24; n++)
        if (px_detect((const uint8_t *)preface, n) != PX_PROTO_UNKNOWN)
            fail_msg("preface prefix of %zu bytes decided %s", n,
                     px_proto_name(px_detect((const uint8_t *)preface, n)));
    /* the preface with a wrong byte late in it is not h2 */
    memcpy(buf, preface, 24);
    buf[20] = 'X';
    assert_int_not_equal(px_detect(buf, 24), PX_PROTO_H2);
    assert_int_not_equal(px_detect(buf, 24), PX_PROTO_UNKNOWN);
}

static void http1_methods(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "GET / HTTP/1.1\r\n",
        "HEAD /x HTTP/1.0\r\n",
        "POST /api HTTP/1.1\r\nHost: a\r\n",
        "PUT /",
        "DELETE /a",
        "OPTIONS * HTTP/1.1\r\n",
        "PATCH /p HTTP/1.1\r\n",
        "TRACE / HTTP/1.1\r\n",
        "CONNECT a:443 HTTP/1.1\r\n",
        "M-SEARCH * HTTP/1.1\r\n",
        "PROPFIND /dav HTTP/1.1\r\n",
        "GET http://example.com/ HTTP/1.1\r\n",
        "PRI /not-the-preface HTTP/1.1\r\n",
        "PRI * HTTP/1.1\r\n\r\n", /* diverges from the preface at byte 11 */
        "GET ",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        if (det(lines[i]) != PX_PROTO_HTTP1)
            fail_msg("\"%s\" decided %s", lines[i], px_proto_name(det(lines[i])));
}

static void partial_waits(void **state)
{
    (void)state;
    static const char *const partial[] = {
        "",
        "G",
        "GE",
        "GET",
        "P",
        "PO",
        "POS",
        "POST",
        "DELETE",
        "M-SEARCH",
        "PRI",
        "PRI ",
        "PRI * HTTP/2.0\r\n",
        "OPTIONS",
    };
    for (size_t i = 0; i < sizeof(partial) / sizeof(partial[0]); i++)
        if (det(partial[i]) != PX_PROTO_UNKNOWN)
            fail_msg("\"%s\" decided %s, want unknown", partial[i], px_proto_name(det(partial[i])));
    /* a single 0x16 may start a TLS record */
    assert_int_equal(px_detect((const uint8_t *)"\x16", 1), PX_PROTO_UNKNOWN);
}

static void tls_records(void **state)
{
    (void)state;
    /* ClientHello record header: handshake, TLS 1.0 record version */
    static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03};
    assert_int_equal(px_detect(hello, sizeof(hello)), PX_PROTO_TLS);
    assert_int_equal(px_detect(hello, 2), PX_PROTO_TLS);
    static const uint8_t v13[] = {0x16, 0x03, 0x03};
    assert_int_equal(px_detect(v13, 3), PX_PROTO_TLS);
    /* 0x16 then not a 3.x version: opaque */
    static const uint8_t not_tls[] = {0x16, 0x02, 0x00};
    assert_int_equal(px_detect(not_tls, 3), PX_PROTO_TCP);
    /* other record types are not a ClientHello */
    static const uint8_t alert[] = {0x15, 0x03, 0x01, 0x00, 0x02};
    assert_int_equal(px_detect(alert, sizeof(alert)), PX_PROTO_TCP);
}

static void opaque_tcp(void **state)
{
    (void)state;
    static const struct {
        const char *b;
        size_t n;
    } cases[] = {
        {"\x00", 1},
        {"\x05\x01\x00", 3},             /* SOCKS5 */
        {"SSH-2.0-OpenSSH_9.2\r\n", 21}, /* '-' then digits */
        {"get / HTTP/1.1\r\n", 16},      /* lower case is no method */
        {"GE\r\n", 4},
        {"GE ", 3}, /* methods have at least 3 letters */
        {"G ", 2},
        {" GET / HTTP/1.1", 15},
        {"GET\t/", 5},
        {"*1\r\n$4\r\nPING\r\n", 14}, /* Redis */
        {"\xff\xfe\xfd", 3},
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 26}, /* no space within the method bound */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum px_conn_proto p = px_detect((const uint8_t *)cases[i].b, cases[i].n);
        if (p != PX_PROTO_TCP)
            fail_msg("case %zu decided %s, want tcp", i, px_proto_name(p));
    }
}

/* RFC 9112 section 2.2: empty lines before a request line are skipped (llhttp
 * and nginx do), up to PX_DETECT_MAX_SKIP bytes; beyond, or before anything
 * but an HTTP/1 request line, the connection is opaque TCP (and the TCP policy
 * decides it). */
static void check_prefixes(const uint8_t *buf, size_t len);

static void leading_empty_lines(void **state)
{
    (void)state;
    assert_int_equal(det("\r\nGET /admin/x HTTP/1.1\r\n"), PX_PROTO_HTTP1);
    assert_int_equal(det("\nGET /admin/x HTTP/1.1\r\n"), PX_PROTO_HTTP1);
    assert_int_equal(det("\r\n\r\n\nPOST / HTTP/1.1"), PX_PROTO_HTTP1);
    assert_int_equal(det("\r\n"), PX_PROTO_UNKNOWN);
    assert_int_equal(det("\r\nGE"), PX_PROTO_UNKNOWN);
    assert_int_equal(det("\r\n\r\n\r\n\r\n"), PX_PROTO_UNKNOWN); /* 8: still may come */
    assert_int_equal(det("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1"), PX_PROTO_TCP);
    assert_int_equal(det("\r\nget / HTTP/1.1"), PX_PROTO_TCP);
    assert_int_equal(det("\r\n GET / HTTP/1.1"), PX_PROTO_TCP);
    assert_int_equal(det("\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), PX_PROTO_HTTP1);
    static const uint8_t crlf_tls[] = {'\r', '\n', 0x16, 0x03, 0x01};
    assert_int_equal(px_detect(crlf_tls, sizeof(crlf_tls)), PX_PROTO_TCP);
    check_prefixes((const uint8_t *)"\r\n\nGET /x HTTP/1.1\r\n", 22);
}

/* Feeds every prefix of buf; fails if UNKNOWN comes at or after
 * PX_DETECT_MAX bytes, or if a decision changes with more bytes. */
static void check_prefixes(const uint8_t *buf, size_t len)
{
    enum px_conn_proto decided = PX_PROTO_UNKNOWN;
    for (size_t n = 0; n <= len; n++) {
        enum px_conn_proto p = px_detect(buf, n);
        if (n >= PX_DETECT_MAX && p == PX_PROTO_UNKNOWN)
            fail_msg("unknown after %zu bytes of \"%.*s\"", n, (int)len, (const char *)buf);
        if (decided != PX_PROTO_UNKNOWN && p != decided)
            fail_msg("\"%.*s\": %s at %zu bytes, %s before", (int)len, (const char *)buf,
                     px_proto_name(p), n, px_proto_name(decided));
        if (p != PX_PROTO_UNKNOWN)
            decided = p;
    }
}

static void never_unknown_at_max(void **state)
{
    (void)state;
    uint8_t buf[64];
    /* every single byte value, repeated */
    for (int c = 0; c < 256; c++) {
        memset(buf, c, sizeof(buf));
        check_prefixes(buf, sizeof(buf));
    }
    /* upper-case runs of every length */
    for (size_t run = 0; run < 40; run++) {
        memset(buf, 'A', run);
        buf[run] = ' ';
        memset(buf + run + 1, 'x', sizeof(buf) - run - 1);
        assert_int_not_equal(px_detect(buf, PX_DETECT_MAX), PX_PROTO_UNKNOWN);
    }
    check_prefixes((const uint8_t *)preface, 24);
    check_prefixes((const uint8_t *)"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    check_prefixes((const uint8_t *)"PRI * HTTP/1.1\r\nHost: x\r\n\r\n", 27);
}

/* A method made of exactly 20 upper-case letters: the listener must not
 * route the same bytes differently depending on how TCP segmented them. */
static void decision_is_final_at_method_bound(void **state)
{
    (void)state;
    for (size_t run = 1; run <= 24; run++) {
        uint8_t buf[48];
        memset(buf, 'A', run);
        memcpy(buf + run, " / HTTP/1.1\r\n", 13);
        check_prefixes(buf, run + 13);
    }
}

static void names(void **state)
{
    (void)state;
    assert_string_equal(px_proto_name(PX_PROTO_HTTP1), "http1");
    assert_string_equal(px_proto_name(PX_PROTO_H2), "h2c");
    assert_string_equal(px_proto_name(PX_PROTO_TLS), "tls");
    assert_string_equal(px_proto_name(PX_PROTO_TCP), "tcp");
    assert_string_equal(px_proto_name(PX_PROTO_UNKNOWN), "unknown");
    assert_string_equal(px_proto_name((enum px_conn_proto)99), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(h2_preface),
        cmocka_unit_test(http1_methods),
        cmocka_unit_test(partial_waits),
        cmocka_unit_test(tls_records),
        cmocka_unit_test(opaque_tcp),
        cmocka_unit_test(leading_empty_lines),
        cmocka_unit_test(never_unknown_at_max),
        cmocka_unit_test(decision_is_final_at_method_bound),
        cmocka_unit_test(names),
    };
    return cmocka_run_group_tests_name("proxy/detect", tests, NULL, NULL);
}
