/* libFuzzer target for the header lists of proxy/http.c.
 *
 * Input: byte 0 = flags (bit 0: keep "TE: trailers"; bits 1-7: header count
 * bound - 1), byte 1 = byte bound / 64 - 1, then "name:value" lines split on
 * '\n'. Names and values are checked with px_http_valid_name/_value against
 * reference implementations; the valid ones are added with px_msg_add under
 * the bounds (as the codecs do), then px_msg_strip_hop_by_hop runs.
 *
 * Invariants (a violation traps):
 *   - px_msg_add refuses exactly what passes a bound, and stores a lower-case
 *     copy of the name and an exact copy of the value;
 *   - px_hdr_has_token agrees with a reference on every value;
 *   - after stripping, no hop-by-hop header is left: none of the fixed list,
 *     none named by any Connection field (except content-length and host,
 *     which framing needs), and TE only as exactly "trailers" when asked for;
 *   - every other header is still there, in order;
 *   - the arena is freed (LeakSanitizer checks). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "proxy/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LINES 256

static bool ref_tchar(unsigned char c)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    for (size_t i = 0; i < sizeof(extra) - 1; i++)
        if (c == (unsigned char)extra[i])
            return true;
    return false;
}

static bool ref_valid_name(const uint8_t *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!ref_tchar(s[i]))
            return false;
    return true;
}

/* field-value: VCHAR, obs-text, SP, HTAB */
static bool ref_valid_value(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '\t' || (s[i] >= 0x20 && s[i] != 0x7f)))
            return false;
    return true;
}

/* Does the comma-separated list contain token (case-insensitive, OWS trimmed)? */
static bool ref_has_token(const char *v, size_t n, const char *token)
{
    size_t tlen = strlen(token);
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && v[i] != ',')
            continue;
        size_t a = start, b = i;
        while (a < b && (v[a] == ' ' || v[a] == '\t'))
            a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
            b--;
        if (b - a == tlen && strncasecmp(v + a, token, tlen) == 0)
            return true;
        start = i + 1;
    }
    return false;
}

static bool is_fixed_hop(const char *name)
{
    static const char *const hop[] = {"connection",        "keep-alive", "proxy-connection",
                                      "transfer-encoding", "upgrade",    "http2-settings"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (strcmp(name, hop[i]) == 0)
            return true;
    return false;
}

/* Is `name` listed in any Connection field of the original list? */
static bool named_by_connection(const struct px_hdr *orig, uint32_t n, const char *name)
{
    if (strcmp(name, "content-length") == 0 || strcmp(name, "host") == 0)
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(orig[i].name, "connection") == 0 &&
            ref_has_token(orig[i].value, orig[i].valuelen, name))
            return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    bool keep_te = data[0] & 1;
    uint32_t max_count = (uint32_t)(data[0] >> 1) + 1;
    uint32_t max_bytes = 64u * ((uint32_t)data[1] + 1);
    data += 2;
    size -= 2;

    struct px_arena arena;
    struct px_msg m;
    px_arena_init(&arena);
    px_msg_init(&m);
    uint32_t bytes = 0;
    size_t lines = 0;
    while (size > 0 && lines++ < MAX_LINES) {
        const uint8_t *nl = memchr(data, '\n', size);
        size_t len = nl ? (size_t)(nl - data) : size;
        const uint8_t *colon = memchr(data, ':', len);
        size_t nlen = colon ? (size_t)(colon - data) : len;
        const uint8_t *val = colon ? colon + 1 : data + len;
        size_t vlen = colon ? len - nlen - 1 : 0;
        while (vlen > 0 && (*val == ' ' || *val == '\t')) {
            val++;
            vlen--;
        }
        bool vn = px_http_valid_name((const char *)data, nlen);
        bool vv = px_http_valid_value((const char *)val, vlen);
        if (vn != ref_valid_name(data, nlen) || vv != ref_valid_value(val, vlen))
            __builtin_trap();
        if (vn && vv) {
            uint32_t before = m.nhdrs;
            int rc = px_msg_add(&arena, &m, (const char *)data, nlen, (const char *)val, vlen,
                                max_bytes, max_count);
            bool over = bytes + nlen + vlen > max_bytes || before >= max_count;
            if (over != (rc == CM_ERR_LIMIT) || (rc != 0 && rc != CM_ERR_LIMIT))
                __builtin_trap();
            if (rc == 0) {
                const struct px_hdr *h = &m.hdrs[before];
                if (m.nhdrs != before + 1 || h->namelen != nlen || h->valuelen != vlen ||
                    strncasecmp(h->name, (const char *)data, nlen) != 0 || h->name[nlen] ||
                    memcmp(h->value, val, vlen) != 0 || h->value[vlen] != '\0')
                    __builtin_trap();
                for (size_t i = 0; i < nlen; i++)
                    if (h->name[i] >= 'A' && h->name[i] <= 'Z')
                        __builtin_trap();
                bytes += (uint32_t)(nlen + vlen);
                if (m.head_bytes != bytes)
                    __builtin_trap();
            } else if (m.nhdrs != before) {
                __builtin_trap();
            }
        }
        if (nl == NULL)
            break;
        size -= len + 1;
        data += len + 1;
    }

    /* token matching, on every value, against the reference */
    static const char *const tokens[] = {"close", "keep-alive", "trailers", "upgrade", "x"};
    for (uint32_t i = 0; i < m.nhdrs; i++)
        for (size_t t = 0; t < sizeof(tokens) / sizeof(tokens[0]); t++)
            if (px_hdr_has_token(m.hdrs[i].value, m.hdrs[i].valuelen, tokens[t]) !=
                ref_has_token(m.hdrs[i].value, m.hdrs[i].valuelen, tokens[t]))
                __builtin_trap();

    /* the list before stripping (entries point into the arena: still valid) */
    uint32_t n0 = m.nhdrs;
    struct px_hdr *orig = px_arena_alloc(&arena, (n0 + 1) * sizeof(*orig));
    if (n0)
        memcpy(orig, m.hdrs, n0 * sizeof(*orig));
    bool te_trailers = false;
    for (uint32_t i = 0; i < n0; i++)
        if (strcmp(orig[i].name, "te") == 0 &&
            ref_has_token(orig[i].value, orig[i].valuelen, "trailers"))
            te_trailers = true;

    px_msg_strip_hop_by_hop(&m, keep_te);

    uint32_t te_seen = 0, k = 0;
    for (uint32_t i = 0; i < m.nhdrs; i++) {
        const struct px_hdr *h = &m.hdrs[i];
        if (strcmp(h->name, "te") == 0) {
            if (!keep_te || !te_trailers || ++te_seen > 1 || h->valuelen != 8 ||
                strcmp(h->value, "trailers") != 0)
                __builtin_trap();
            continue;
        }
        if (is_fixed_hop(h->name) || named_by_connection(orig, n0, h->name))
            __builtin_trap();
        /* survivors keep their order: find h among the originals after k */
        while (k < n0 && !(orig[k].name == h->name && orig[k].value == h->value))
            k++;
        if (k == n0)
            __builtin_trap();
        k++;
    }
    /* nothing else went missing */
    uint32_t want = 0;
    for (uint32_t i = 0; i < n0; i++)
        if (strcmp(orig[i].name, "te") != 0 && !is_fixed_hop(orig[i].name) &&
            !named_by_connection(orig, n0, orig[i].name))
            want++;
    if (m.nhdrs - te_seen != want)
        __builtin_trap();

    px_arena_deinit(&arena);
    return 0;
}
