/* Request ids and W3C Trace Context (proxy/trace.h, docs/observability.md). */
#include "proxy/trace.h"

#include <errno.h>
#include <mbedtls/chacha20.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/log.h"
#include "proxy/conn.h"
#include "proxy/http.h"
#include "proxy/stream.h"

/* ---- random bytes ------------------------------------------------------------------
 * A ChaCha20 keystream keyed once from getrandom(). Each refill produces
 * 32 + RNG_BUF bytes: the first 32 become the next key (so a later memory
 * read cannot recover ids already handed out, and the block counter never
 * nears its wrap), the rest are handed out in order. Per-process state: the
 * generator is the process's, like pki_rng(); the proxy is single-threaded. */
#define RNG_BUF 1024

static struct {
    bool keyed;
    uint8_t key[32];
    uint8_t buf[RNG_BUF];
    size_t pos; /* next unused byte of buf; RNG_BUF: empty */
} rng = {.pos = RNG_BUF};

static void rng_seed(void)
{
    size_t got = 0;
    while (got < sizeof(rng.key)) {
        ssize_t n = getrandom(rng.key + got, sizeof(rng.key) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* no kernel entropy: ids would be guessable; refuse to go on */
            cm_error("trace: getrandom failed: %s", strerror(errno));
            abort();
        }
        got += (size_t)n;
    }
    rng.keyed = true;
}

static void rng_refill(void)
{
    static const uint8_t zero[32 + RNG_BUF];
    static const uint8_t nonce[12];
    uint8_t out[32 + RNG_BUF];
    if (!rng.keyed)
        rng_seed();
    if (mbedtls_chacha20_crypt(rng.key, nonce, 0, sizeof(out), zero, out) != 0) {
        cm_error("trace: chacha20 failed");
        abort();
    }
    memcpy(rng.key, out, 32);
    memcpy(rng.buf, out + 32, RNG_BUF);
    memset(out, 0, sizeof(out));
    rng.pos = 0;
}

void px_trace_random(void *buf, size_t n)
{
    uint8_t *b = buf;
    while (n > 0) {
        if (rng.pos == RNG_BUF)
            rng_refill();
        size_t k = RNG_BUF - rng.pos < n ? RNG_BUF - rng.pos : n;
        memcpy(b, rng.buf + rng.pos, k);
        memset(rng.buf + rng.pos, 0, k); /* handed out once */
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
    memset(&rng, 0, sizeof(rng));
    rng.pos = RNG_BUF;
}

/* ---- formats ---------------------------------------------------------------------- */

static const char hexdig[] = "0123456789abcdef";

void px_trace_hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdig[b[i] >> 4];
        out[2 * i + 1] = hexdig[b[i] & 15];
    }
    out[2 * n] = '\0';
}

bool px_reqid_valid(const char *s, size_t len)
{
    if (len == 0 || len > PX_REQID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

void px_reqid_generate(char *out)
{
    uint8_t u[16];
    px_trace_random(u, sizeof(u));
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* variant 10 */
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hexdig[u[i] >> 4];
        out[o++] = hexdig[u[i] & 15];
    }
    out[o] = '\0';
}

/* Lower-case hex only (W3C: "HEXDIGLC"); -1 for anything else. */
static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static bool unhex(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
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
    if (px_msg_add(&s->arena, &s->req, "x-request-id", 12, id, PX_UUID_LEN, NOLIMIT, NOLIMIT) ==
        0)
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
        px_trace_random_id(tp.trace_id, sizeof(tp.trace_id));
        tp.flags = px_trace_sample(sample_percent) ? 0x01 : 0x00;
        t->started = true;
    }
    px_trace_random_id(tp.parent_id, sizeof(tp.parent_id)); /* our span is the next parent */
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
