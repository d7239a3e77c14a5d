/* Unit tests of proxy/trace.c: what a well-formed x-request-id is, the
 * generated UUIDv4s (format, uniqueness over 1e5), the traceparent grammar
 * (W3C Trace Context level 1), the sampled-flag rate, and the two stream
 * hooks on a request head: ids kept, generated or replaced, the parent-id
 * rewritten with this sidecar's span, tracestate and B3 headers untouched. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http.h"
#include "proxy/stream.h"
#include "proxy/trace.h"

#define BIG UINT32_MAX

static void test_reqid_valid(void **state)
{
    (void)state;
    char big[PX_REQID_MAX + 2];
    memset(big, 'a', sizeof(big));
    assert_true(px_reqid_valid("a", 1));
    assert_true(px_reqid_valid("f47ac10b-58cc-4372-a567-0e02b2c3d479", 36));
    assert_true(px_reqid_valid("req:42/\"x\"~!", 12));
    assert_true(px_reqid_valid(big, PX_REQID_MAX));
    assert_false(px_reqid_valid(big, PX_REQID_MAX + 1));
    assert_false(px_reqid_valid("", 0));
    assert_false(px_reqid_valid("a b", 3));
    assert_false(px_reqid_valid("a\tb", 3));
    assert_false(px_reqid_valid("a\x7f", 2));
    assert_false(px_reqid_valid("caf\xc3\xa9", 5));
    assert_false(px_reqid_valid("a\0b", 3));
    assert_false(px_reqid_valid("a\r\n", 3));
}

static bool is_uuid4(const char *u)
{
    if (strlen(u) != PX_UUID_LEN)
        return false;
    for (int i = 0; i < PX_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (u[i] != '-')
                return false;
        } else if (!((u[i] >= '0' && u[i] <= '9') || (u[i] >= 'a' && u[i] <= 'f'))) {
            return false;
        }
    }
    return u[14] == '4' && strchr("89ab", u[19]) != NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

#define NIDS 100000

static void test_uuid_format_and_unique(void **state)
{
    (void)state;
    char(*ids)[PX_UUID_LEN + 1] = malloc(NIDS * sizeof(*ids));
    assert_non_null(ids);
    for (int i = 0; i < NIDS; i++) {
        px_reqid_generate(ids[i]);
        if (!is_uuid4(ids[i]))
            fail_msg("not a UUIDv4: %s", ids[i]);
        assert_true(px_reqid_valid(ids[i], PX_UUID_LEN));
    }
    qsort(ids, NIDS, sizeof(*ids), cmp_str);
    for (int i = 1; i < NIDS; i++)
        if (strcmp(ids[i - 1], ids[i]) == 0)
            fail_msg("duplicate id %s", ids[i]);
    /* every hex digit of the random part shows up in each position: not a constant */
    unsigned seen[PX_UUID_LEN] = {0};
    for (int i = 0; i < NIDS; i++)
        for (int k = 0; k < PX_UUID_LEN; k++)
            if (ids[i][k] != '-')
                seen[k] |= 1u << (ids[i][k] <= '9' ? ids[i][k] - '0' : ids[i][k] - 'a' + 10);
    for (int k = 0; k < PX_UUID_LEN; k++) {
        if (k == 8 || k == 13 || k == 18 || k == 23)
            continue;
        unsigned want = k == 14 ? 1u << 4 : k == 19 ? 0xf00u : 0xffffu;
        assert_int_equal(seen[k], want);
    }
    free(ids);
}

static void test_random_reseed(void **state)
{
    (void)state;
    /* after a shutdown the generator keys itself again from the kernel */
    char a[PX_UUID_LEN + 1], b[PX_UUID_LEN + 1];
    px_reqid_generate(a);
    px_trace_shutdown();
    px_reqid_generate(b);
    assert_true(is_uuid4(a) && is_uuid4(b));
    assert_string_not_equal(a, b);
    uint8_t id[8];
    for (int i = 0; i < 1000; i++) {
        px_trace_random_id(id, sizeof(id));
        uint8_t acc = 0;
        for (size_t k = 0; k < sizeof(id); k++)
            acc |= id[k];
        assert_int_not_equal(acc, 0);
    }
}

#define TP_OK "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static int parse(const char *s)
{
    struct px_traceparent tp;
    return px_traceparent_parse(s, strlen(s), &tp);
}

static void test_traceparent_grammar(void **state)
{
    (void)state;
    struct px_traceparent tp;
    assert_int_equal(px_traceparent_parse(TP_OK, strlen(TP_OK), &tp), 0);
    assert_int_equal(tp.version, 0);
    assert_int_equal(tp.trace_id[0], 0x4b);
    assert_int_equal(tp.trace_id[15], 0x36);
    assert_int_equal(tp.parent_id[0], 0x00);
    assert_int_equal(tp.parent_id[7], 0xb7);
    assert_int_equal(tp.flags, 1);
    char out[PX_TRACEPARENT_LEN + 1];
    px_traceparent_format(&tp, out);
    assert_string_equal(out, TP_OK);

    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), 0);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"), 0);
    /* a later version: the known fields, and more after a '-' */
    assert_int_equal(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), 0);
    assert_int_equal(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever"), 0);
    assert_int_equal(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x"), -1);
    /* version 00 is exactly 55 chars */
    assert_int_equal(parse(TP_OK "-x"), -1);
    assert_int_equal(parse(TP_OK " "), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"), -1);
    /* version ff is invalid */
    assert_int_equal(parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), -1);
    /* lower-case hex only */
    assert_int_equal(parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067aa0ba902b7-01"), -1);
    assert_int_equal(parse("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x"), -1);
    /* all-zero ids are invalid */
    assert_int_equal(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), -1);
    /* delimiters and lengths */
    assert_int_equal(parse("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01"), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01"), -1);
    assert_int_equal(parse("00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01"), -1);
    assert_int_equal(parse(""), -1);
    assert_int_equal(parse("00"), -1);
    /* a NUL inside is not hex */
    assert_int_equal(
        px_traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\0", 55, &tp),
        -1);
}

/* Every byte value at every position of the hex fields (and of a request id), against a
 * one-char-at-a-time reference: the word-at-a-time checks must agree with it. */
static bool ref_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void test_every_byte_every_position(void **state)
{
    (void)state;
    char tp[PX_TRACEPARENT_LEN + 1];
    for (int pos = 0; pos < PX_TRACEPARENT_LEN; pos++) {
        if (pos == 2 || pos == 35 || pos == 52)
            continue;
        for (int c = 0; c < 256; c++) {
            memcpy(tp, TP_OK, sizeof(tp));
            tp[pos] = (char)c;
            bool want = ref_hex((unsigned char)c) && !(pos < 2 && memcmp(tp, "ff", 2) == 0);
            struct px_traceparent p;
            int rc = px_traceparent_parse(tp, PX_TRACEPARENT_LEN, &p);
            if ((rc == 0) != want)
                fail_msg("traceparent with 0x%02x at %d: got %d", c, pos, rc);
            if (rc == 0) {
                char back[PX_TRACEPARENT_LEN + 1];
                px_traceparent_format(&p, back);
                if (pos >= 3 && memcmp(back, tp, PX_TRACEPARENT_LEN) != 0)
                    fail_msg("round trip of %s gave %s", tp, back);
            }
        }
    }
    char id[41];
    for (size_t len = 1; len <= sizeof(id) - 1; len++)
        for (size_t pos = 0; pos < len; pos++)
            for (int c = 0; c < 256; c++) {
                memset(id, 'x', sizeof(id));
                id[pos] = (char)c;
                bool want = c >= 0x21 && c <= 0x7e;
                if (px_reqid_valid(id, len) != want)
                    fail_msg("id of %zu with 0x%02x at %zu", len, c, pos);
            }
    /* random ids round-trip through format and parse */
    for (int i = 0; i < 10000; i++) {
        struct px_traceparent a, b;
        px_trace_random(&a, sizeof(a));
        a.version = 0;
        px_trace_random_id(a.trace_id, 16);
        px_trace_random_id(a.parent_id, 8);
        px_traceparent_format(&a, tp);
        assert_int_equal(px_traceparent_parse(tp, PX_TRACEPARENT_LEN, &b), 0);
        assert_memory_equal(a.trace_id, b.trace_id, 16);
        assert_memory_equal(a.parent_id, b.parent_id, 8);
        assert_int_equal(a.flags, b.flags);
    }
}

static unsigned sampled_of(uint32_t percent, unsigned n)
{
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++)
        k += px_trace_sample(percent);
    return k;
}

static void test_sample_rate(void **state)
{
    (void)state;
    const unsigned n = 100000;
    assert_int_equal(sampled_of(0, n), 0);
    assert_int_equal(sampled_of(100, n), n);
    /* binomial: sd = sqrt(n p (1-p)); the bounds are more than 6 sd away */
    unsigned k10 = sampled_of(10, n), k1 = sampled_of(1, n), k50 = sampled_of(50, n);
    print_message("sampled: 1%% -> %u, 10%% -> %u, 50%% -> %u of %u\n", k1, k10, k50, n);
    assert_in_range(k1, 800, 1200);
    assert_in_range(k10, 9200, 10800);
    assert_in_range(k50, 49000, 51000);
}

/* ---- the hooks on a request head ------------------------------------------------- */

struct fx {
    struct px_stream s;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    px_arena_init(&f->s.arena);
    px_msg_init(&f->s.req);
    px_msg_init(&f->s.resp);
    f->s.req.method = "GET";
    f->s.req.path = "/";
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    px_arena_deinit(&f->s.arena);
    free(f);
    return 0;
}

static void add(struct px_msg *m, struct px_stream *s, const char *name, const char *value)
{
    assert_int_equal(px_msg_add(&s->arena, m, name, strlen(name), value, strlen(value), BIG, BIG),
                     0);
}

static int count(const struct px_msg *m, const char *name)
{
    int n = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++)
        n += strcmp(m->hdrs[i].name, name) == 0;
    return n;
}

static const char *value(const struct px_msg *m, const char *name)
{
    const struct px_hdr *h = px_msg_find(m, name);
    return h ? h->value : NULL;
}

static void test_hook_keeps_ids(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    add(&s->req, s, "X-Request-Id", "caller-id-42");
    add(&s->req, s, "traceparent", TP_OK);
    add(&s->req, s, "tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    add(&s->req, s, "b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90");
    add(&s->req, s, "x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7");
    px_trace_on_req_head(s, false, 0);
    assert_string_equal(value(&s->req, "x-request-id"), "caller-id-42");
    assert_int_equal(count(&s->req, "x-request-id"), 1);
    assert_string_equal(s->tr.request_id, "caller-id-42");
    const char *tp = value(&s->req, "traceparent");
    assert_int_equal(strlen(tp), PX_TRACEPARENT_LEN);
    /* same trace and flags, a new parent: this sidecar's span */
    assert_memory_equal(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    assert_string_equal(tp + 52, "-01");
    assert_memory_not_equal(tp + 36, "00f067aa0ba902b7", 16);
    char span[17];
    px_trace_hex(s->tr.span_id, 8, span);
    assert_memory_equal(tp + 36, span, 16);
    assert_true(s->tr.traced && s->tr.has_parent && !s->tr.started);
    assert_int_equal(s->tr.parent_id[7], 0xb7);
    assert_string_equal(value(&s->req, "tracestate"), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_string_equal(value(&s->req, "b3"),
                        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90");
    assert_string_equal(value(&s->req, "x-b3-traceid"), "80f198ee56343ba864fe8b2a57d3eff7");
    /* a local reply carries the same id */
    px_trace_on_respond(s);
    assert_string_equal(value(&s->resp, "x-request-id"), "caller-id-42");
}

static void test_hook_generates(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    px_trace_on_req_head(s, true, 100);
    assert_true(is_uuid4(value(&s->req, "x-request-id")));
    const char *tp = value(&s->req, "traceparent");
    assert_non_null(tp);
    struct px_traceparent p;
    assert_int_equal(px_traceparent_parse(tp, strlen(tp), &p), 0);
    assert_int_equal(p.flags, 1); /* sample_percent 100 */
    assert_memory_equal(p.trace_id, s->tr.trace_id, 16);
    assert_memory_equal(p.parent_id, s->tr.span_id, 8);
    assert_true(s->tr.started && !s->tr.has_parent);
}

static void test_hook_outbound_unsampled(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    px_trace_on_req_head(s, true, 0);
    assert_string_equal(value(&s->req, "traceparent") + 52, "-00");
}

static void test_hook_inbound_absent(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    add(&s->req, s, "tracestate", "a=b");
    px_trace_on_req_head(s, false, 100);
    assert_null(value(&s->req, "traceparent")); /* inbound starts no trace */
    assert_false(s->tr.traced);
    assert_string_equal(value(&s->req, "tracestate"), "a=b");
    assert_true(is_uuid4(value(&s->req, "x-request-id")));
}

static void test_hook_replaces_malformed(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    add(&s->req, s, "x-request-id", "has space");
    add(&s->req, s, "traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01");
    add(&s->req, s, "tracestate", "rojo=1");
    add(&s->req, s, "x-b3-sampled", "1");
    px_trace_on_req_head(s, false, 0);
    assert_int_equal(count(&s->req, "x-request-id"), 1);
    assert_true(is_uuid4(value(&s->req, "x-request-id")));
    assert_int_equal(count(&s->req, "traceparent"), 1);
    const char *tp = value(&s->req, "traceparent");
    assert_int_equal(parse(tp), 0);
    assert_memory_not_equal(tp + 3, "00000000000000000000000000000000", 32);
    assert_null(value(&s->req, "tracestate")); /* the old trace's state goes with it */
    assert_string_equal(value(&s->req, "x-b3-sampled"), "1");
    assert_true(s->tr.started);
}

static void test_hook_repeated(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    add(&s->req, s, "x-request-id", "one");
    add(&s->req, s, "x-request-id", "two");
    add(&s->req, s, "traceparent", TP_OK);
    add(&s->req, s, "traceparent", TP_OK);
    px_trace_on_req_head(s, true, 0);
    assert_int_equal(count(&s->req, "x-request-id"), 1);
    assert_true(is_uuid4(value(&s->req, "x-request-id")));
    assert_int_equal(count(&s->req, "traceparent"), 1);
    assert_memory_not_equal(value(&s->req, "traceparent") + 3, &TP_OK[3], 32);
}

static void test_restore_after_hop_by_hop(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    add(&s->req, s, "connection", "x-request-id, traceparent, tracestate");
    add(&s->req, s, "x-request-id", "keep-me");
    add(&s->req, s, "traceparent", TP_OK);
    add(&s->req, s, "tracestate", "a=b");
    px_trace_on_req_head(s, false, 0);
    char want[PX_TRACEPARENT_LEN + 1];
    snprintf(want, sizeof(want), "%s", value(&s->req, "traceparent"));
    px_msg_strip_hop_by_hop(&s->req, false);
    assert_null(value(&s->req, "x-request-id")); /* what the client asked for */
    px_trace_restore(s);
    assert_string_equal(value(&s->req, "x-request-id"), "keep-me");
    assert_string_equal(value(&s->req, "traceparent"), want);
    assert_int_equal(count(&s->req, "x-request-id"), 1);
    assert_int_equal(count(&s->req, "traceparent"), 1);
    assert_null(value(&s->req, "tracestate")); /* hop-by-hop as the client said: not ours */
    px_trace_restore(s);                       /* again: nothing added twice */
    assert_int_equal(count(&s->req, "x-request-id"), 1);
}

static void test_respond_before_head(void **state)
{
    struct fx *f = *state;
    struct px_stream *s = &f->s;
    add(&s->req, s, "x-request-id", "early");
    px_trace_on_respond(s); /* refused before the head was complete */
    assert_string_equal(value(&s->resp, "x-request-id"), "early");
    assert_string_equal(s->tr.request_id, "early");
    px_trace_set_rule(s, "allow-frontend");
    assert_string_equal(s->tr.rule, "allow-frontend");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reqid_valid),
        cmocka_unit_test(test_uuid_format_and_unique),
        cmocka_unit_test(test_random_reseed),
        cmocka_unit_test(test_traceparent_grammar),
        cmocka_unit_test(test_every_byte_every_position),
        cmocka_unit_test(test_sample_rate),
        cmocka_unit_test_setup_teardown(test_hook_keeps_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_generates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_outbound_unsampled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_inbound_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_replaces_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_repeated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_after_hop_by_hop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_respond_before_head, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
