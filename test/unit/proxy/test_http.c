/* Unit tests of proxy/http.c: the stream arena, header lists with their
 * bounds (CM_ERR_LIMIT), lookup and removal, token matching, hop-by-hop
 * stripping (RFC 9110 7.6.1) including headers named by Connection and
 * "TE: trailers", header name/value validity, method classes and reasons. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "proxy/h1_common.h"
#include "proxy/http.h"

#define BIG UINT32_MAX

/* A message built from "name: value" strings. */
struct fixture {
    struct px_arena arena;
    struct px_msg m;
};

static int setup(void **state)
{
    static struct fixture f;
    px_arena_init(&f.arena);
    px_msg_init(&f.m);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    px_arena_deinit(&f->arena);
    return 0;
}

static void add(struct fixture *f, const char *name, const char *value)
{
    assert_int_equal(
        px_msg_add(&f->arena, &f->m, name, strlen(name), value, strlen(value), BIG, BIG), 0);
}

/* The header list as "name=value;name=value". */
static const char *dump(const struct px_msg *m)
{
    static char buf[4096];
    size_t o = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < m->nhdrs && o < sizeof(buf); i++)
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s=%s", i ? ";" : "", m->hdrs[i].name,
                              m->hdrs[i].value);
    return buf;
}

/* ---- arena ------------------------------------------------------------------ */

static void arena_small_and_big(void **state)
{
    (void)state;
    struct px_arena a;
    px_arena_init(&a);
    assert_null(a.head);
    assert_int_equal(a.used, 0);
    /* many small allocations cross several chunks; each stays writable and
     * 16-byte aligned (ASan would flag an overrun) */
    char *prev = NULL;
    for (int i = 0; i < 1000; i++) {
        char *p = px_arena_alloc(&a, 37);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 'a' + i % 26, 37);
        if (prev != NULL)
            assert_int_equal(prev[36], 'a' + (i - 1) % 26); /* not overwritten */
        prev = p;
    }
    assert_int_equal(a.used, 1000 * 48);
    /* allocations bigger than a chunk get a chunk of their own */
    char *big = px_arena_alloc(&a, 100000);
    memset(big, 'x', 100000);
    char *huge = px_arena_alloc(&a, 1 << 20);
    memset(huge, 'y', 1 << 20);
    assert_int_equal(big[99999], 'x');
    /* and small ones keep working after them */
    char *s = px_arena_strndup(&a, "hello world", 5);
    assert_string_equal(s, "hello");
    assert_int_equal(px_arena_alloc(&a, 0) != NULL, 1);
    px_arena_deinit(&a);
    assert_null(a.head);
    assert_int_equal(a.used, 0);
    /* reusable after deinit */
    assert_string_equal(px_arena_strndup(&a, "abc", 3), "abc");
    px_arena_deinit(&a);
}

static void arena_exact_chunk_sizes(void **state)
{
    (void)state;
    struct px_arena a;
    px_arena_init(&a);
    /* sizes around the 4 KiB chunk boundary */
    static const size_t sizes[] = {4000, 4064, 4080, 4096, 4097, 8192, 1, 4050, 4050, 4050};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        unsigned char *p = px_arena_alloc(&a, sizes[i]);
        memset(p, (int)i, sizes[i]);
        assert_int_equal(p[sizes[i] - 1], (unsigned char)i);
    }
    px_arena_deinit(&a);
}

/* ---- header lists -------------------------------------------------------------- */

static void msg_init_defaults(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(f->m.nhdrs, 0);
    assert_int_equal(f->m.content_length, -1);
    assert_null(f->m.method);
    assert_int_equal(f->m.status, 0);
    assert_null(px_msg_find(&f->m, "host"));
    assert_int_equal(px_msg_remove(&f->m, "host"), 0);
}

static void msg_add_copies_and_lowercases(void **state)
{
    struct fixture *f = *state;
    char name[] = "X-Request-ID";
    char value[] = "AbC 123";
    assert_int_equal(
        px_msg_add(&f->arena, &f->m, name, strlen(name), value, strlen(value), BIG, BIG), 0);
    name[0] = 'Q';
    value[0] = 'Q';
    assert_int_equal(f->m.nhdrs, 1);
    assert_string_equal(f->m.hdrs[0].name, "x-request-id");
    assert_int_equal(f->m.hdrs[0].namelen, 12);
    assert_string_equal(f->m.hdrs[0].value, "AbC 123"); /* values keep their case */
    assert_int_equal(f->m.hdrs[0].valuelen, 7);
    assert_int_equal(f->m.head_bytes, 19);
    /* empty values and values with NULs are stored by length */
    assert_int_equal(px_msg_add(&f->arena, &f->m, "a", 1, "", 0, BIG, BIG), 0);
    assert_int_equal(px_msg_add(&f->arena, &f->m, "b", 1, "x\0y", 3, BIG, BIG), 0);
    assert_int_equal(f->m.hdrs[2].valuelen, 3);
    assert_memory_equal(f->m.hdrs[2].value, "x\0y", 4);
    assert_int_equal(f->m.head_bytes, 19 + 1 + 4);
}

static void msg_add_grows(void **state)
{
    struct fixture *f = *state;
    char n[16], v[16];
    for (int i = 0; i < 300; i++) {
        snprintf(n, sizeof(n), "H-%d", i);
        snprintf(v, sizeof(v), "v%d", i);
        add(f, n, v);
    }
    assert_int_equal(f->m.nhdrs, 300);
    assert_true(f->m.cap >= 300);
    for (int i = 0; i < 300; i++) {
        snprintf(n, sizeof(n), "h-%d", i);
        snprintf(v, sizeof(v), "v%d", i);
        const struct px_hdr *h = px_msg_find(&f->m, n);
        assert_non_null(h);
        assert_string_equal(h->value, v);
        assert_ptr_equal(h, &f->m.hdrs[i]);
    }
}

static void msg_add_bounds(void **state)
{
    struct fixture *f = *state;
    /* bytes: name+value of all headers up to max_bytes, inclusive */
    assert_int_equal(px_msg_add(&f->arena, &f->m, "abc", 3, "defgh", 5, 10, 100), 0);
    assert_int_equal(px_msg_add(&f->arena, &f->m, "x", 1, "y", 1, 10, 100), 0); /* exactly 10 */
    assert_int_equal(px_msg_add(&f->arena, &f->m, "z", 1, "", 0, 10, 100), CM_ERR_LIMIT);
    assert_int_equal(f->m.nhdrs, 2);
    assert_int_equal(f->m.head_bytes, 10);
    /* a single header over the bound */
    struct px_msg m2;
    px_msg_init(&m2);
    assert_int_equal(px_msg_add(&f->arena, &m2, "abcdef", 6, "ghijk", 5, 10, 100), CM_ERR_LIMIT);
    assert_int_equal(m2.nhdrs, 0);
    assert_int_equal(m2.head_bytes, 0);
    /* the bound counts the head so far, not only the new header */
    assert_int_equal(px_msg_add(&f->arena, &m2, "abcde", 5, "", 0, 10, 100), 0);
    assert_int_equal(px_msg_add(&f->arena, &m2, "abc", 3, "de", 2, 10, 100), 0);
    assert_int_equal(px_msg_add(&f->arena, &m2, "", 0, "x", 1, 10, 100), CM_ERR_LIMIT);
    /* count */
    struct px_msg m3;
    px_msg_init(&m3);
    for (int i = 0; i < 5; i++)
        assert_int_equal(px_msg_add(&f->arena, &m3, "a", 1, "b", 1, 1000, 5), 0);
    assert_int_equal(px_msg_add(&f->arena, &m3, "a", 1, "b", 1, 1000, 5), CM_ERR_LIMIT);
    assert_int_equal(m3.nhdrs, 5);
    assert_int_equal(px_msg_add(&f->arena, &m3, "a", 1, "b", 1, 1000, 0), CM_ERR_LIMIT);
}

static void msg_find_and_remove(void **state)
{
    struct fixture *f = *state;
    add(f, "Accept", "a1");
    add(f, "Cookie", "c1");
    add(f, "accept", "a2");
    add(f, "Host", "h");
    add(f, "ACCEPT", "a3");
    const struct px_hdr *h = px_msg_find(&f->m, "accept");
    assert_non_null(h);
    assert_string_equal(h->value, "a1");       /* the first one */
    assert_null(px_msg_find(&f->m, "Accept")); /* lookups take lower-case names */
    assert_null(px_msg_find(&f->m, "accep"));
    assert_null(px_msg_find(&f->m, "accepts"));
    assert_int_equal(px_msg_remove(&f->m, "accept"), 3);
    assert_string_equal(dump(&f->m), "cookie=c1;host=h"); /* order kept */
    assert_int_equal(px_msg_remove(&f->m, "accept"), 0);
    assert_int_equal(px_msg_remove(&f->m, "host"), 1);
    assert_int_equal(px_msg_remove(&f->m, "cookie"), 1);
    assert_int_equal(f->m.nhdrs, 0);
    /* the list is usable after removals */
    add(f, "a", "1");
    assert_string_equal(dump(&f->m), "a=1");
}

/* ---- tokens ------------------------------------------------------------------------ */

static bool tok(const char *value, const char *token)
{
    return px_hdr_has_token(value, strlen(value), token);
}

static void has_token(void **state)
{
    (void)state;
    assert_true(tok("close", "close"));
    assert_true(tok("Close", "close"));
    assert_true(tok("keep-alive, Upgrade", "upgrade"));
    assert_true(tok("keep-alive, Upgrade", "keep-alive"));
    assert_true(tok("  a ,\tb\t, c  ", "b"));
    assert_true(tok(",,,trailers,,", "trailers"));
    assert_true(tok("gzip, TRAILERS", "trailers"));
    assert_false(tok("closed", "close"));
    assert_false(tok("x-close", "close"));
    assert_false(tok("clos", "close"));
    assert_false(tok("", "close"));
    assert_false(tok(" , ,", "close"));
    assert_false(tok("a b", "a")); /* a token ends at a comma, not a space */
    assert_true(tok("a b", "a b"));
    /* only len bytes are looked at */
    assert_false(px_hdr_has_token("upgrade", 6, "upgrade"));
    assert_true(px_hdr_has_token("upgrade, more", 7, "upgrade"));
    assert_false(px_hdr_has_token("close", 0, "close"));
}

/* ---- hop-by-hop ------------------------------------------------------------------ */

static void strip_fixed_list(void **state)
{
    struct fixture *f = *state;
    add(f, "Accept", "*/*");
    add(f, "Connection", "keep-alive");
    add(f, "Keep-Alive", "timeout=5");
    add(f, "Proxy-Connection", "keep-alive");
    add(f, "Transfer-Encoding", "chunked");
    add(f, "Upgrade", "h2c");
    add(f, "HTTP2-Settings", "AAMAAABkAAQAAP__");
    add(f, "Proxy-Authorization", "Basic Zm9vOmJhcg==");
    add(f, "Content-Length", "10");
    add(f, "X-Last", "1");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "accept=*/*;proxy-authorization=Basic Zm9vOmJhcg==;"
                                     "content-length=10;x-last=1");
}

static void strip_connection_named(void **state)
{
    struct fixture *f = *state;
    add(f, "X-Foo", "1");
    add(f, "Connection", "close, X-Foo ,x-bar");
    add(f, "X-Bar", "2");
    add(f, "X-Baz", "3");
    add(f, "x-foo", "4");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "x-baz=3");
}

static void strip_connection_cannot_remove_framing(void **state)
{
    struct fixture *f = *state;
    add(f, "Host", "example.com");
    add(f, "Content-Length", "5");
    add(f, "Connection", "Content-Length, host, x-a");
    add(f, "X-A", "1");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "host=example.com;content-length=5");
}

/* Connection may come in several fields; each names headers to remove,
 * wherever they sit in the list. */
static void strip_several_connection_fields(void **state)
{
    struct fixture *f = *state;
    add(f, "X-A", "1");
    add(f, "Connection", "x-a");
    add(f, "Connection", "x-b");
    add(f, "X-B", "2");
    add(f, "X-C", "3");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "x-c=3");
}

/* A Connection field naming "connection" must not hide the next one. */
static void strip_connection_naming_itself(void **state)
{
    struct fixture *f = *state;
    add(f, "Connection", "connection");
    add(f, "Connection", "x-secret");
    add(f, "X-Secret", "s");
    add(f, "X-Kept", "k");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "x-kept=k");
}

/* A long header name listed in Connection is hop-by-hop like any other. */
static void strip_connection_long_name(void **state)
{
    struct fixture *f = *state;
    char name[101];
    memset(name, 'n', 100);
    name[100] = '\0';
    add(f, name, "v");
    add(f, "Connection", name);
    add(f, "X-Kept", "k");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "x-kept=k");
}

/* However many Connection fields a client sends, each one counts. */
static void strip_many_connection_fields(void **state)
{
    struct fixture *f = *state;
    for (int i = 0; i < 40; i++)
        add(f, "Connection", i % 2 ? "keep-alive" : "");
    add(f, "Connection", "x-late");
    add(f, "X-Late", "must go");
    add(f, "X-Kept", "k");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "x-kept=k");
}

/* RFC 9110 5.3: "TE: gzip" then "TE: trailers" means "TE: gzip, trailers". */
static void strip_te_split_over_fields(void **state)
{
    struct fixture *f = *state;
    add(f, "TE", "gzip");
    add(f, "TE", "trailers");
    add(f, "X-Kept", "k");
    px_msg_strip_hop_by_hop(&f->m, true);
    assert_string_equal(dump(&f->m), "x-kept=k;te=trailers");
}

static void strip_te(void **state)
{
    struct fixture *f = *state;
    /* kept as exactly "trailers" when asked (toward h2: gRPC needs it) */
    add(f, "TE", "deflate, Trailers;q=1");
    add(f, "X-Kept", "k");
    px_msg_strip_hop_by_hop(&f->m, true);
    assert_string_equal(dump(&f->m), "x-kept=k"); /* "trailers;q=1" is not the token */

    struct px_msg m;
    px_msg_init(&m);
    assert_int_equal(px_msg_add(&f->arena, &m, "TE", 2, "gzip, trailers", 14, BIG, BIG), 0);
    assert_int_equal(px_msg_add(&f->arena, &m, "a", 1, "1", 1, BIG, BIG), 0);
    px_msg_strip_hop_by_hop(&m, true);
    assert_string_equal(dump(&m), "a=1;te=trailers");
    const struct px_hdr *te = px_msg_find(&m, "te");
    assert_int_equal(te->namelen, 2);
    assert_int_equal(te->valuelen, 8);

    /* dropped when not asked */
    px_msg_init(&m);
    assert_int_equal(px_msg_add(&f->arena, &m, "te", 2, "trailers", 8, BIG, BIG), 0);
    px_msg_strip_hop_by_hop(&m, false);
    assert_int_equal(m.nhdrs, 0);

    /* dropped when it holds no "trailers" token */
    px_msg_init(&m);
    assert_int_equal(px_msg_add(&f->arena, &m, "te", 2, "gzip", 4, BIG, BIG), 0);
    px_msg_strip_hop_by_hop(&m, true);
    assert_int_equal(m.nhdrs, 0);

    /* several TE fields collapse into one "te: trailers" */
    px_msg_init(&m);
    assert_int_equal(px_msg_add(&f->arena, &m, "te", 2, "trailers", 8, BIG, BIG), 0);
    assert_int_equal(px_msg_add(&f->arena, &m, "te", 2, "gzip", 4, BIG, BIG), 0);
    px_msg_strip_hop_by_hop(&m, true);
    assert_string_equal(dump(&m), "te=trailers");

    /* named in Connection and not asked for: gone */
    px_msg_init(&m);
    assert_int_equal(px_msg_add(&f->arena, &m, "connection", 10, "TE", 2, BIG, BIG), 0);
    assert_int_equal(px_msg_add(&f->arena, &m, "te", 2, "trailers", 8, BIG, BIG), 0);
    px_msg_strip_hop_by_hop(&m, false);
    assert_int_equal(m.nhdrs, 0);
}

/* RFC 9110 10.1.4: a client sending TE must also send "Connection: TE". That
 * option must not defeat keep_te_trailers, or no conforming HTTP/1.1
 * client's "TE: trailers" ever reaches an HTTP/2 upstream. */
static void strip_te_listed_in_connection(void **state)
{
    struct fixture *f = *state;
    add(f, "TE", "trailers");
    add(f, "Connection", "TE");
    add(f, "X-Kept", "k");
    px_msg_strip_hop_by_hop(&f->m, true);
    assert_string_equal(dump(&f->m), "x-kept=k;te=trailers");
}

static void strip_empty_and_clean(void **state)
{
    struct fixture *f = *state;
    px_msg_strip_hop_by_hop(&f->m, true); /* no headers at all */
    assert_int_equal(f->m.nhdrs, 0);
    add(f, "Accept", "a");
    add(f, "Connection", "");
    add(f, "Connection", " , ,");
    px_msg_strip_hop_by_hop(&f->m, false);
    assert_string_equal(dump(&f->m), "accept=a");
}

/* ---- validity -------------------------------------------------------------------- */

static void valid_names(void **state)
{
    (void)state;
    static const char *const ok[] = {"content-type", "X-Foo", "a", "!#$%&'*+-.^_`|~09azAZ"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_true(px_http_valid_name(ok[i], strlen(ok[i])));
    static const char *const bad[] = {"a b",  "a:b", ":path", "a\tb", "a\r", "a\n", "(x)",
                                      "a,b",  "a;b", "\"q\"", "a/b",  "a@b", "{}",  "\x7f",
                                      "\x80", "é",   "a=b",   "[x]",  "a?",  "\\"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (px_http_valid_name(bad[i], strlen(bad[i])))
            fail_msg("\"%s\" accepted as a header name", bad[i]);
    assert_false(px_http_valid_name("", 0));
    assert_false(px_http_valid_name("a\0b", 3));
    assert_true(px_http_valid_name("ab\0", 2)); /* only len bytes count */
}

/* px_http_is_hop_by_hop: the list px_msg_strip_hop_by_hop removes, any case
 * (the health port's prober checks kubelet's field names with it). */
static void hop_by_hop_names(void **state)
{
    (void)state;
    const char *hop[] = {"Connection", "keep-alive", "PROXY-CONNECTION", "Transfer-Encoding",
                         "te",         "Upgrade",    "HTTP2-Settings"};
    const char *not_hop[] = {
        "host", "content-length", "trailer",     "proxy-authorization", "tex", "t",
        "",     "connectio",      "x-connection"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        assert_true(px_http_is_hop_by_hop(hop[i], strlen(hop[i])));
    for (size_t i = 0; i < sizeof(not_hop) / sizeof(not_hop[0]); i++)
        assert_false(px_http_is_hop_by_hop(not_hop[i], strlen(not_hop[i])));
    /* the length is what counts, not a terminator */
    assert_true(px_http_is_hop_by_hop("te: x", 2));
    assert_false(px_http_is_hop_by_hop("upgrade", 6));
}

static void valid_values(void **state)
{
    (void)state;
    static const char *const ok[] = {"",    "text/html; charset=utf-8", "a\tb",
                                     " x ", "\x80\xff obs-text",        "~!@#$%^&*()[]{}\"'"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_true(px_http_valid_value(ok[i], strlen(ok[i])));
    static const char *const bad[] = {"a\rb", "a\nb", "\r\n", "\x01", "a\x1f", "\x7f", "\x0b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (px_http_valid_value(bad[i], strlen(bad[i])))
            fail_msg("value #%zu accepted", i);
    assert_false(px_http_valid_value("a\0b", 3));
    assert_true(px_http_valid_value("a\r", 1));
}

static void method_classes(void **state)
{
    (void)state;
    assert_string_equal(px_method_class("GET"), "read");
    assert_string_equal(px_method_class("HEAD"), "read");
    assert_string_equal(px_method_class("OPTIONS"), "read");
    assert_string_equal(px_method_class("POST"), "write");
    assert_string_equal(px_method_class("PUT"), "write");
    assert_string_equal(px_method_class("PATCH"), "write");
    assert_string_equal(px_method_class("DELETE"), "write");
    assert_string_equal(px_method_class("get"), "other"); /* methods are case-sensitive */
    assert_string_equal(px_method_class("CONNECT"), "other");
    assert_string_equal(px_method_class("TRACE"), "other");
    assert_string_equal(px_method_class("BREW"), "other");
    assert_string_equal(px_method_class(""), "other");
    assert_string_equal(px_method_class(NULL), "other");
}

static void reasons(void **state)
{
    (void)state;
    assert_string_equal(px_http_reason(200), "OK");
    assert_string_equal(px_http_reason(100), "Continue");
    assert_string_equal(px_http_reason(404), "Not Found");
    assert_string_equal(px_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(px_http_reason(503), "Service Unavailable");
    assert_string_equal(px_http_reason(508), "Loop Detected");
    /* unknown codes get their class */
    assert_string_equal(px_http_reason(199), "Informational");
    assert_string_equal(px_http_reason(299), "OK");
    assert_string_equal(px_http_reason(399), "Redirect");
    assert_string_equal(px_http_reason(499), "Client Error");
    assert_string_equal(px_http_reason(599), "Server Error");
    for (int s = 0; s < 1000; s++)
        assert_true(px_http_reason(s)[0] != '\0');
}

/* The HTTP/1.1 head writer: one reserved extent, falling back to plain adds
 * when the size estimate was short; headers the codec frames itself skipped. */
static char *drain_str(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    return s;
}

static void head_writer(void **state)
{
    struct fixture *f = *state;
    add(f, "X-A", "1");
    add(f, "Content-Length", "5");
    add(f, "Connection", "close");
    add(f, "Host", "h");
    add(f, "transfer-encoding", "chunked");
    add(f, "X-Longer-Name", "two words");
    for (size_t need = 0; need <= 256; need += 64) { /* 0: every piece overflows */
        struct evbuffer *b = evbuffer_new();
        struct px_h1_head w;
        px_h1_head_begin(&w, b, need);
        px_h1_put_str(&w, "GET / HTTP/1.1\r\n");
        px_h1_put_headers(&w, &f->m);
        px_h1_put(&w, "content-length: ", 16);
        px_h1_put_u64(&w, 0);
        px_h1_put(&w, " ", 1);
        px_h1_put_u64(&w, 18446744073709551615ull);
        px_h1_put(&w, "\r\n\r\n", 4);
        px_h1_head_end(&w);
        char *s = drain_str(b);
        assert_string_equal(s, "GET / HTTP/1.1\r\nx-a: 1\r\nx-longer-name: two words\r\n"
                               "content-length: 0 18446744073709551615\r\n\r\n");
        free(s);
        evbuffer_free(b);
    }
    assert_int_equal(px_h1_headers_size(&f->m),
                     3 + 1 + 14 + 1 + 10 + 5 + 4 + 1 + 17 + 7 + 13 + 9 + 6 * 4);
}

static void chunk_sizes_in_hex(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    px_h1_write_chunk(b, (const uint8_t *)"", 0); /* nothing: 0 would end the body */
    uint8_t big[0x1a2b];
    memset(big, 'z', sizeof(big));
    px_h1_write_chunk(b, big, sizeof(big));
    px_h1_write_chunk(b, (const uint8_t *)"abc", 3);
    size_t n = evbuffer_get_length(b);
    char *s = drain_str(b);
    assert_int_equal(n, 6 + sizeof(big) + 2 + 3 + 3 + 2);
    assert_memory_equal(s, "1a2b\r\n", 6);
    assert_string_equal(s + 6 + sizeof(big), "\r\n3\r\nabc\r\n");
    free(s);
    evbuffer_free(b);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(arena_small_and_big),
        cmocka_unit_test(arena_exact_chunk_sizes),
        T(msg_init_defaults),
        T(msg_add_copies_and_lowercases),
        T(msg_add_grows),
        T(msg_add_bounds),
        T(msg_find_and_remove),
        cmocka_unit_test(has_token),
        T(strip_fixed_list),
        T(strip_connection_named),
        T(strip_connection_cannot_remove_framing),
        T(strip_several_connection_fields),
        T(strip_connection_naming_itself),
        T(strip_connection_long_name),
        T(strip_many_connection_fields),
        T(strip_te),
        T(strip_te_split_over_fields),
        T(strip_te_listed_in_connection),
        T(strip_empty_and_clean),
        cmocka_unit_test(valid_names),
        cmocka_unit_test(valid_values),
        cmocka_unit_test(hop_by_hop_names),
        cmocka_unit_test(method_classes),
        cmocka_unit_test(reasons),
        T(head_writer),
        cmocka_unit_test(chunk_sizes_in_hex),
    };
    return cmocka_run_group_tests_name("proxy/http", tests, NULL, NULL);
}
