/* Request ids and W3C Trace Context (proxy/trace.h, docs/observability.md). */
#include "proxy/trace.h"

#include <errno.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/error.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/log.h"
#include "proxy/conn.h"
#include "proxy/http.h"
#include "proxy/stream.h"

/* ---- random bytes ------------------------------------------------------------------
 * mbedTLS's CTR_DRBG (AES-256 in counter mode, AES-NI where the CPU has it), seeded from
 * getrandom() at first use. Refilled RNG_BUF bytes at a time (the DRBG's largest request),
 * each refill followed by the DRBG's own state update, so a later memory read does not
 * reveal what was handed out before it; the DRBG reseeds from getrandom() every
 * MBEDTLS_CTR_DRBG_RESEED_INTERVAL (10,000) refills, once per ~10 MiB. Bytes are handed out
 * once each and not wiped after: what they become (ids) is sent in headers and logged, not
 * secret. Per-process state, like pki_rng(); the proxy is single-threaded. */
#define RNG_BUF MBEDTLS_CTR_DRBG_MAX_REQUEST

static struct {
    bool seeded;
    mbedtls_ctr_drbg_context drbg;
    uint8_t buf[RNG_BUF];
    size_t pos; /* next unused byte of buf; RNG_BUF: empty */
} rng = {.pos = RNG_BUF};

static int os_entropy(void *ctx, unsigned char *out, size_t len)
{
    (void)ctx;
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(out + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
        got += (size_t)n;
    }
    return 0;
}

static void rng_refill(void)
{
    static const unsigned char pers[] = "remora trace ids";
    int rc = 0;
    if (!rng.seeded) {
        mbedtls_ctr_drbg_init(&rng.drbg);
        rc = mbedtls_ctr_drbg_seed(&rng.drbg, os_entropy, NULL, pers, sizeof(pers) - 1);
        rng.seeded = rc == 0;
    }
    if (rc == 0)
        rc = mbedtls_ctr_drbg_random(&rng.drbg, rng.buf, RNG_BUF);
    if (rc != 0) {
        /* no kernel entropy: ids would be guessable; refuse to go on */
        char msg[128];
        mbedtls_strerror(rc, msg, sizeof(msg));
        cm_error("trace: random generator failed: %s", msg);
        abort();
    }
    rng.pos = 0;
}

void px_trace_random(void *buf, size_t n)
{
    uint8_t *b = buf;
    while (n > 0) {
        if (rng.pos == RNG_BUF)
            rng_refill();
        size_t k = RNG_BUF - rng.pos < n ? RNG_BUF - rng.pos : n;
        memcpy(b, rng.buf + rng.pos, k); /* each byte handed out once */
        rng.pos += k;
        b += k;
        n -= k;
    }
}

static bool all_zero(const uint8_t *b, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= b[i];
    return acc == 0;
}

void px_trace_random_id(uint8_t *buf, size_t n)
{
    do
        px_trace_random(buf, n);
    while (all_zero(buf, n));
}

bool px_trace_sample(uint32_t percent)
{
    if (percent == 0)
        return false;
    if (percent >= 100)
        return true;
    uint32_t r;
    px_trace_random(&r, sizeof(r));
    /* 2^32 mod 10000 != 0: the bias is below 3e-6, far under any sampling need */
    return r % 10000 < percent * 100;
}

void px_trace_shutdown(void)
{
    if (rng.seeded)
        mbedtls_ctr_drbg_free(&rng.drbg);
    memset(&rng, 0, sizeof(rng));
    rng.pos = RNG_BUF;
}

/* ---- formats ---------------------------------------------------------------------- */

/* "00" .. "ff": one 2-byte copy per byte (ids are written on every request). */
static const char hex2[513] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
                              "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
                              "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
                              "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
                              "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
                              "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
                              "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
                              "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

void px_trace_hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        memcpy(out + 2 * i, hex2 + 2 * b[i], 2);
    out[2 * n] = '\0';
}

/* ---- eight bytes at a time -----------------------------------------------------------
 * The checks below run on every request's ids, so they test a 64-bit word per step
 * (the "bit twiddling hacks" byte-range tests): for each byte, without carries from one
 * byte into the next, the high bit says whether it is in a range. */
#define ONES  UINT64_C(0x0101010101010101)
#define HIGHS (ONES * 0x80)
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LITTLE_ENDIAN_HOST 1
#endif
#endif
#ifndef LITTLE_ENDIAN_HOST
#define LITTLE_ENDIAN_HOST 0
#endif

static inline uint64_t load8(const char *s)
{
    uint64_t x;
    memcpy(&x, s, 8);
    return x;
}

/* High bit of each byte set where lo < byte < hi (0 <= lo <= 127, 0 <= hi <= 128); a byte
 * with its own high bit set is never in range. */
static inline uint64_t between(uint64_t x, unsigned lo, unsigned hi)
{
    uint64_t low7 = x & (ONES * 0x7f);
    return (ONES * (127 + hi) - low7) & ~x & (low7 + ONES * (127 - lo)) & HIGHS;
}

bool px_reqid_valid(const char *s, size_t len)
{
    if (len == 0 || len > PX_REQID_MAX)
        return false;
    size_t i = 0;
    for (; i + 8 <= len; i += 8)
        if (between(load8(s + i), 0x20, 0x7f) != HIGHS)
            return false;
    unsigned bad = 0;
    for (; i < len; i++)
        bad |= (uint8_t)((uint8_t)s[i] - 0x21) > 0x7e - 0x21;
    return bad == 0;
}

void px_reqid_generate(char *out)
{
    uint8_t u[16];
    px_trace_random(u, sizeof(u));
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* variant 10 */
    /* 8-4-4-4-12 hex digits */
    px_trace_hex(u, 4, out);
    out[8] = '-';
    px_trace_hex(u + 4, 2, out + 9);
    out[13] = '-';
    px_trace_hex(u + 6, 2, out + 14);
    out[18] = '-';
    px_trace_hex(u + 8, 2, out + 19);
    out[23] = '-';
    px_trace_hex(u + 10, 6, out + 24);
}

/* Lower-case hex digits (W3C: "HEXDIGLC") as value + 1; 0 for anything else. */
static const uint8_t hexv[256] = {
    ['0'] = 1, ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,  ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/* Decode 2n lower-case hex chars into out[n]; false when one is not (out is then
 * partly written). */
static bool unhex(const char *s, size_t n, uint8_t *out)
{
    size_t i = 0;
#if LITTLE_ENDIAN_HOST
    /* 8 chars -> 4 bytes: all in '0'-'9' or 'a'-'f'; a digit's value is its low nibble,
     * plus 9 for a letter (bit 6 set) */
    for (; i + 4 <= n; i += 4) {
        uint64_t x = load8(s + 2 * i);
        if ((between(x, 0x2f, 0x3a) | between(x, 0x60, 0x67)) != HIGHS)
            return false;
        uint64_t nib = (x & (ONES * 0x0f)) + ((x >> 6) & ONES) * 9;
        uint64_t t = ((nib & UINT64_C(0x00ff00ff00ff00ff)) << 4) |
                     ((nib >> 8) & UINT64_C(0x00ff00ff00ff00ff));
        t = (t | (t >> 8)) & UINT64_C(0x0000ffff0000ffff);
        t = (t | (t >> 16)) & UINT64_C(0x00000000ffffffff);
        uint32_t w = (uint32_t)t;
        memcpy(out + i, &w, 4);
    }
#endif
    unsigned bad = 0;
    for (; i < n; i++) {
        unsigned hi = hexv[(uint8_t)s[2 * i]], lo = hexv[(uint8_t)s[2 * i + 1]];
        bad |= (hi == 0) | (lo == 0);
        out[i] = (uint8_t)(((hi - 1) & 15) << 4 | ((lo - 1) & 15));
    }
    return bad == 0;
}

int px_traceparent_parse(const char *s, size_t len, struct px_traceparent *out)
{
    struct px_traceparent tp;
    /* version "-" trace-id "-" parent-id "-" trace-flags */
    if (len < PX_TRACEPARENT_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-')
        return -1;
    if (!unhex(s, 1, &tp.version) || tp.version == 0xff)
        return -1;
    if (tp.version == 0 && len != PX_TRACEPARENT_LEN)
        return -1;
    /* a later version may append fields, each after a '-' */
    if (len > PX_TRACEPARENT_LEN && s[PX_TRACEPARENT_LEN] != '-')
        return -1;
    if (!unhex(s + 3, 16, tp.trace_id) || !unhex(s + 36, 8, tp.parent_id) ||
        !unhex(s + 53, 1, &tp.flags))
        return -1;
    if (all_zero(tp.trace_id, 16) || all_zero(tp.parent_id, 8))
        return -1;
    *out = tp;
    return 0;
}

void px_traceparent_format(const struct px_traceparent *tp, char *out)
{
    out[0] = '0';
    out[1] = '0';
    out[2] = '-';
    px_trace_hex(tp->trace_id, 16, out + 3);
    out[35] = '-';
    px_trace_hex(tp->parent_id, 8, out + 36);
    out[52] = '-';
    px_trace_hex(&tp->flags, 1, out + 53);
}

/* ---- the stream hooks ------------------------------------------------------------- */

#define NOLIMIT UINT32_MAX /* what is added here is bounded by construction */

/* Keep the one well-formed x-request-id (value v of len bytes, n of them in
 * the head), else put a new UUIDv4 in their place. Header values live in the
 * arena: v stays valid when the header array moves. */
static void set_request_id(struct px_stream *s, const char *v, uint32_t len, unsigned n)
{
    if (n == 1 && px_reqid_valid(v, len)) {
        s->tr.request_id = v;
        return;
    }
    if (n > 0)
        px_msg_remove(&s->req, "x-request-id");
    char id[PX_UUID_LEN + 1];
    px_reqid_generate(id);
    if (px_msg_add(&s->arena, &s->req, "x-request-id", 12, id, PX_UUID_LEN, NOLIMIT, NOLIMIT) == 0)
        s->tr.request_id = s->req.hdrs[s->req.nhdrs - 1].value;
}

/* The trace part of px_trace_on_req_head: tp_at is the index of the only
 * traceparent when ntp == 1. */
static void set_trace(struct px_stream *s, uint32_t tp_at, unsigned ntp, bool outbound,
                      uint32_t sample_percent)
{
    struct px_trace *t = &s->tr;
    struct px_traceparent tp;
    bool keep = ntp == 1 && px_traceparent_parse(s->req.hdrs[tp_at].value,
                                                 s->req.hdrs[tp_at].valuelen, &tp) == 0;
    if (keep) {
        t->has_parent = true;
        memcpy(t->parent_id, tp.parent_id, sizeof(t->parent_id));
    } else {
        if (ntp == 0 && !outbound)
            return; /* inbound: the caller is not traced; the app may start its own */
        if (ntp > 0) {
            /* invalid or repeated: a new trace, and the state that went with the old one goes */
            px_msg_remove(&s->req, "traceparent");
            px_msg_remove(&s->req, "tracestate");
        }
        /* trace-id and our span in one draw (non-zero each, redrawn in the 2^-64 case) */
        px_trace_random(tp.trace_id, sizeof(tp.trace_id));
        px_trace_random(tp.parent_id, sizeof(tp.parent_id));
        if (all_zero(tp.trace_id, sizeof(tp.trace_id)))
            px_trace_random_id(tp.trace_id, sizeof(tp.trace_id));
        tp.flags = px_trace_sample(sample_percent) ? 0x01 : 0x00;
        t->started = true;
    }
    if (keep || all_zero(tp.parent_id, sizeof(tp.parent_id)))
        px_trace_random_id(tp.parent_id, sizeof(tp.parent_id)); /* our span: the next parent */
    tp.version = 0;
    memcpy(t->trace_id, tp.trace_id, sizeof(t->trace_id));
    memcpy(t->span_id, tp.parent_id, sizeof(t->span_id));
    t->flags = tp.flags;
    char v[PX_TRACEPARENT_LEN + 1];
    px_traceparent_format(&tp, v);
    if (keep) {
        struct px_hdr *h = &s->req.hdrs[tp_at];
        h->value = px_arena_strndup(&s->arena, v, PX_TRACEPARENT_LEN);
        h->valuelen = PX_TRACEPARENT_LEN;
    } else if (px_msg_add(&s->arena, &s->req, "traceparent", 11, v, PX_TRACEPARENT_LEN, NOLIMIT,
                          NOLIMIT) != 0) {
        return;
    }
    t->traced = true;
}

void px_trace_on_req_head(struct px_stream *s, bool outbound, uint32_t sample_percent)
{
    struct px_trace *t = &s->tr;
    if (t->request_id != NULL)
        return; /* done already */
    /* one pass over the head for both headers */
    const char *idv = NULL;
    uint32_t idlen = 0, tp_at = 0;
    unsigned nid = 0, ntp = 0;
    for (uint32_t i = 0; i < s->req.nhdrs; i++) {
        const struct px_hdr *h = &s->req.hdrs[i];
        if (PX_HDR_IS(h, "x-request-id")) {
            idv = h->value;
            idlen = h->valuelen;
            nid++;
        } else if (PX_HDR_IS(h, "traceparent")) {
            tp_at = i;
            ntp++;
        } else if (PX_HDR_IS(h, "connection")) {
            t->connection = true;
        }
    }
    set_trace(s, tp_at, ntp, outbound, sample_percent); /* first: it uses the index */
    set_request_id(s, idv, idlen, nid);
    if (s->conn != NULL && s->conn->mtls && s->conn->peer_id[0] != '\0')
        t->peer_id = px_arena_strndup(&s->arena, s->conn->peer_id, strlen(s->conn->peer_id));
}

static void decide_request_id(struct px_stream *s)
{
    const char *v = NULL;
    uint32_t len = 0;
    unsigned n = 0;
    for (uint32_t i = 0; i < s->req.nhdrs; i++)
        if (PX_HDR_IS(&s->req.hdrs[i], "x-request-id")) {
            v = s->req.hdrs[i].value;
            len = s->req.hdrs[i].valuelen;
            n++;
        }
    set_request_id(s, v, len, n);
}

void px_trace_restore(struct px_stream *s)
{
    const struct px_trace *t = &s->tr;
    if (!t->connection)
        return;
    bool id = false, tp = false;
    for (uint32_t i = 0; i < s->req.nhdrs; i++) {
        id |= PX_HDR_IS(&s->req.hdrs[i], "x-request-id");
        tp |= PX_HDR_IS(&s->req.hdrs[i], "traceparent");
    }
    if (!id && t->request_id != NULL)
        px_msg_add(&s->arena, &s->req, "x-request-id", 12, t->request_id, strlen(t->request_id),
                   NOLIMIT, NOLIMIT);
    if (!tp && t->traced) {
        struct px_traceparent p = {.version = 0, .flags = t->flags};
        memcpy(p.trace_id, t->trace_id, sizeof(p.trace_id));
        memcpy(p.parent_id, t->span_id, sizeof(p.parent_id));
        char v[PX_TRACEPARENT_LEN + 1];
        px_traceparent_format(&p, v);
        px_msg_add(&s->arena, &s->req, "traceparent", 11, v, PX_TRACEPARENT_LEN, NOLIMIT, NOLIMIT);
    }
}

void px_trace_on_respond(struct px_stream *s)
{
    if (s->tr.request_id == NULL)
        decide_request_id(s); /* refused before its head was complete */
    const char *id = s->tr.request_id;
    if (id != NULL)
        px_msg_add(&s->arena, &s->resp, "x-request-id", 12, id, strlen(id), NOLIMIT, NOLIMIT);
}

void px_trace_set_rule(struct px_stream *s, const char *rule)
{
    if (rule != NULL)
        s->tr.rule = px_arena_strndup(&s->arena, rule, strlen(rule));
}
