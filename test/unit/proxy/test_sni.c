/* Unit tests of proxy/sni.c: a real ClientHello (Python's ssl module, SNI
 * api.example.com) at every prefix length; hand-built hellos for the edge
 * cases: no SNI, upper case and a trailing dot, a second server_name, a name
 * with a bad character, a ClientHello fragmented over two records, a record
 * over 2^14, lengths that point past their structure, not TLS at all. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proxy/sni.h"

/* A ClientHello from Python's ssl module (TLS 1.3, SNI "api.example.com"). */
#define REAL_LEN (sizeof(real_hello) - 1) /* the literal's NUL is not sent */
static const uint8_t real_hello[] =
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xa1\xf9\x78\x28\x45\x6a\x59\x34\x30\xa7\x54\x83"
    "\x4e\xc2\x09\x87\x2c\xc3\xd4\xfd\x20\x16\x12\x74\x02"
    "\xc6\x9a\xe1\xc7\x6c\x8d\x15\x20\x30\xe2\x04\x56\xde\x90\xc6\x0d\xcf\x98\x7f\xe8\x39\x31\xac"
    "\x11\x02\x25\x06\x72\xe1\xa1\x7b\xf6\xfb\xde\xf2\xa6"
    "\x9c\x73\xb7\xdb\x00\x24\x13\x02\x13\x03\x13\x01\xc0\x2c\xc0\x30\xc0\x2b\xc0\x2f\xcc\xa9\xcc"
    "\xa8\xc0\x24\xc0\x28\xc0\x23\xc0\x27\x00\x9f\x00\x9e"
    "\x00\x6b\x00\x67\x00\xff\x01\x00\x01\x8f\x00\x00\x00\x14\x00\x12\x00\x00\x0f\x61\x70\x69\x2e"
    "\x65\x78\x61\x6d\x70\x6c\x65\x2e\x63\x6f\x6d\x00\x0b"
    "\x00\x04\x03\x00\x01\x02\x00\x0a\x00\x16\x00\x14\x00\x1d\x00\x17\x00\x1e\x00\x19\x00\x18\x01"
    "\x00\x01\x01\x01\x02\x01\x03\x01\x04\x00\x23\x00\x00"
    "\x00\x16\x00\x00\x00\x17\x00\x00\x00\x0d\x00\x2a\x00\x28\x04\x03\x05\x03\x06\x03\x08\x07\x08"
    "\x08\x08\x09\x08\x0a\x08\x0b\x08\x04\x08\x05\x08\x06"
    "\x04\x01\x05\x01\x06\x01\x03\x03\x03\x01\x03\x02\x04\x02\x05\x02\x06\x02\x00\x2b\x00\x05\x04"
    "\x03\x04\x03\x03\x00\x2d\x00\x02\x01\x01\x00\x33\x00"
    "\x26\x00\x24\x00\x1d\x00\x20\xc6\x23\xae\x06\xe5\xcc\xc8\x52\x88\x78\xac\x23\xa8\xba\xa6\x7b"
    "\x65\x65\xae\x95\xb1\x86\x58\x2e\xa3\x32\x3e\xa0\x55"
    "\xfe\xd8\x6c\x00\x15\x00\xde\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

/* Parse exactly len bytes from a heap copy (ASan sees a read past them). */
static enum px_sni_result parse(const uint8_t *b, size_t len, char *name)
{
    uint8_t *c = malloc(len ? len : 1);
    assert_non_null(c);
    memcpy(c, b, len);
    enum px_sni_result r = px_sni_parse(c, len, name);
    free(c);
    return r;
}

static void real(void **state)
{
    (void)state;
    char name[PX_SNI_NAME_BUF];
    size_t n = REAL_LEN;
    assert_int_equal(parse(real_hello, n, name), PX_SNI_FOUND);
    assert_string_equal(name, "api.example.com");
    for (size_t i = 0; i < n; i++) {
        if (parse(real_hello, i, name) != PX_SNI_MORE)
            fail_msg("a prefix of %zu bytes decided", i);
        assert_string_equal(name, "");
    }
    /* bytes after the record (the app's next record) change nothing */
    uint8_t more[REAL_LEN + 7];
    memcpy(more, real_hello, n);
    memcpy(more + n, "\x14\x03\x03\x00\x01\x01\x17", 7);
    assert_int_equal(parse(more, sizeof(more), name), PX_SNI_FOUND);
    assert_string_equal(name, "api.example.com");
}

/* A minimal ClientHello with the given extensions block (no length prefix). */
static size_t build(uint8_t *out, const uint8_t *ext, size_t elen, int with_ext)
{
    uint8_t body[2048];
    size_t o = 0;
    body[o++] = 3, body[o++] = 3;
    memset(body + o, 0xab, 32), o += 32;
    body[o++] = 0;                                                    /* session_id */
    body[o++] = 0, body[o++] = 2, body[o++] = 0x13, body[o++] = 0x01; /* one suite */
    body[o++] = 1, body[o++] = 0;                                     /* null compression */
    if (with_ext) {
        body[o++] = (uint8_t)(elen >> 8), body[o++] = (uint8_t)elen;
        memcpy(body + o, ext, elen), o += elen;
    }
    size_t n = 0;
    out[n++] = 22, out[n++] = 3, out[n++] = 1;
    out[n++] = (uint8_t)((o + 4) >> 8), out[n++] = (uint8_t)(o + 4);
    out[n++] = 1, out[n++] = 0, out[n++] = (uint8_t)(o >> 8), out[n++] = (uint8_t)o;
    memcpy(out + n, body, o);
    return n + o;
}

/* A server_name extension for name (type 0, one host_name entry). */
static size_t sni_ext(uint8_t *out, const char *name)
{
    size_t l = strlen(name), n = 0;
    out[n++] = 0, out[n++] = 0;
    out[n++] = (uint8_t)((l + 5) >> 8), out[n++] = (uint8_t)(l + 5);
    out[n++] = (uint8_t)((l + 3) >> 8), out[n++] = (uint8_t)(l + 3);
    out[n++] = 0, out[n++] = (uint8_t)(l >> 8), out[n++] = (uint8_t)l;
    memcpy(out + n, name, l);
    return n + l;
}

static enum px_sni_result with_names(const char *a, const char *b, char *name)
{
    uint8_t ext[1024], rec[2048];
    size_t e = sni_ext(ext, a);
    if (b != NULL)
        e += sni_ext(ext + e, b);
    size_t n = build(rec, ext, e, 1);
    return parse(rec, n, name);
}

static void built(void **state)
{
    (void)state;
    char name[PX_SNI_NAME_BUF];
    assert_int_equal(with_names("Allowed.EXAMPLE.", NULL, name), PX_SNI_FOUND);
    assert_string_equal(name, "allowed.example");
    assert_int_equal(with_names("a.example", "b.example", name), PX_SNI_NONE);
    assert_string_equal(name, "");
    assert_int_equal(with_names("a.example", "a.example", name), PX_SNI_NONE);
    assert_int_equal(with_names("bad name.example", NULL, name), PX_SNI_NONE);
    assert_int_equal(with_names("a..example", NULL, name), PX_SNI_NONE);
    assert_int_equal(with_names("10.0.0.1:443", NULL, name), PX_SNI_NONE);
    assert_int_equal(with_names("", NULL, name), PX_SNI_NONE);
    assert_int_equal(with_names(".", NULL, name), PX_SNI_NONE);
    char longname[300];
    memset(longname, 'a', 254), longname[254] = '\0';
    for (int i = 50; i < 254; i += 50)
        longname[i] = '.';
    assert_int_equal(with_names(longname, NULL, name), PX_SNI_NONE);
    longname[253] = '\0';
    assert_int_equal(with_names(longname, NULL, name), PX_SNI_FOUND);
    assert_int_equal(strlen(name), 253);
    memset(longname, 'a', 64), longname[64] = '\0'; /* a label over 63 */
    assert_int_equal(with_names(longname, NULL, name), PX_SNI_NONE);

    uint8_t rec[2048];
    size_t n = build(rec, NULL, 0, 0); /* no extensions at all */
    assert_int_equal(parse(rec, n, name), PX_SNI_NONE);
    uint8_t other[] = {0, 0x10, 0, 5, 0, 3, 2, 'h', '2'}; /* ALPN only */
    n = build(rec, other, sizeof(other), 1);
    assert_int_equal(parse(rec, n, name), PX_SNI_NONE);
}

static void malformed(void **state)
{
    (void)state;
    char name[PX_SNI_NAME_BUF];
    uint8_t ext[64], rec[2048];
    size_t e = sni_ext(ext, "x.example");
    size_t n = build(rec, ext, e, 1);
    assert_int_equal(parse(rec, n, name), PX_SNI_FOUND);
    /* every length byte pushed past its structure, one at a time */
    for (size_t i = 3; i < n; i++) {
        uint8_t c[2048];
        memcpy(c, rec, n);
        c[i] = (uint8_t)(c[i] + 1);
        enum px_sni_result r = parse(c, n, name);
        /* a length that grew points past its structure: refused; a name byte
         * that grew is still a 9-byte name at most */
        if (r == PX_SNI_FOUND && strlen(name) != 9)
            fail_msg("byte %zu: found %s", i, name);
    }
    /* a record over 2^14, and a ClientHello longer than its record */
    uint8_t big[9] = {22, 3, 1, 0x40, 0x01, 1, 0, 0x40, 0};
    assert_int_equal(parse(big, sizeof(big), name), PX_SNI_NONE);
    uint8_t frag[9] = {22, 3, 1, 0, 40, 1, 0, 1, 0};
    assert_int_equal(parse(frag, sizeof(frag), name), PX_SNI_NONE);
    /* the real hello split over two records: no name, decided at once */
    uint8_t two[REAL_LEN + 5];
    size_t body = REAL_LEN - 5, a = 60;
    memcpy(two, real_hello, 5);
    two[3] = 0, two[4] = (uint8_t)a;
    memcpy(two + 5, real_hello + 5, a);
    two[5 + a] = 22, two[6 + a] = 3, two[7 + a] = 1;
    two[8 + a] = (uint8_t)((body - a) >> 8), two[9 + a] = (uint8_t)(body - a);
    memcpy(two + 10 + a, real_hello + 5 + a, body - a);
    assert_int_equal(parse(two, sizeof(two), name), PX_SNI_NONE);
    assert_int_equal(parse(two, 9, name), PX_SNI_NONE);
    /* not a handshake, not TLS */
    assert_int_equal(parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, name), PX_SNI_NONE);
    assert_int_equal(parse((const uint8_t *)"\x17\x03\x03\x00\x05hello", 10, name), PX_SNI_NONE);
    assert_int_equal(parse((const uint8_t *)"\x16\x02", 2, name), PX_SNI_NONE);
    assert_int_equal(parse((const uint8_t *)"\x16\x03\x01\x00\x05\x02", 6, name), PX_SNI_NONE);
    assert_int_equal(parse((const uint8_t *)"", 0, name), PX_SNI_MORE);
    assert_int_equal(parse((const uint8_t *)"\x16\x03\x01", 3, name), PX_SNI_MORE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(real),
        cmocka_unit_test(built),
        cmocka_unit_test(malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
