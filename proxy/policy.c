/* The policy engine: JSON -> compiled rules -> verdicts (docs/policy.md).
 *
 * Compiled form. Everything a policy owns lives in one px_arena, freed whole:
 * rule names, patterns (literal part plus a kind: exact, prefix, suffix, any),
 * methods as a bitmask, ports as sorted arrays, header conditions with
 * lower-case names. A policy is immutable once compiled, so deciding needs no
 * lock and no allocation; the only per-request buffer (the normalized path) is
 * the caller's.
 *
 * Index. Deny rules and allow rules each get an index, so a policy with a
 * thousand rules does not cost a thousand rule checks per request. A rule is
 * filed under one condition that must hold for it to match and that can be
 * looked up, the first of:
 *   - its `principals`, when all are exact SPIFFE IDs;
 *   - its `paths`, when none is "*": exact paths in one hash table, prefixes
 *     and suffixes in two more, looked up once per distinct prefix (suffix)
 *     length with a hash extended along the path (backwards for suffixes);
 *   - its `namespaces`, when all are exact;
 *   - the name of its first `when.headers` entry (the header must be there);
 *   - its `ports`;
 *   - else it is "generic" and looked at for every request.
 * A request looks at the generic rules and at the buckets of its principal,
 * namespace, path, path prefixes and suffixes, header names and port. Each list is
 * in file order; the answer is the smallest rule index that matches in any
 * list, and a list stops at its first match or at the best index found so far.
 * That is exactly the rule a plain scan in file order finds (and so the name in
 * the 403); decide_linear() is that plain scan, and the unit tests and the
 * decision fuzzer hold the two to the same answer. What stays linear: rules
 * with nothing but not_ forms, methods, or a "*" path (docs/policy.md).
 *
 * Missing attributes. A request without a verified peer has no principal and no
 * namespace; a header may be absent or repeated. The rule is that none of this
 * may help a request in: in allow rules a condition on a missing principal or
 * namespace fails (not_ forms included) and a repeated header must match in
 * every copy; in deny rules a not_ condition on a missing principal holds (the
 * request is indeed "not" that principal: Istio's notPrincipals ["*"] idiom) and
 * one matching copy of a repeated header is enough. */
#include "proxy/policy.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certs/pki.h"
#include "common/err.h"
#include "common/json.h"
#include "common/xalloc.h"

#define SPIFFE_PREFIX     "spiffe://"
#define SPIFFE_PREFIX_LEN (sizeof(SPIFFE_PREFIX) - 1)

/* ---- patterns ---------------------------------------------------------------- */

enum pat_kind {
    PAT_EXACT = 0, /* "x": the whole value */
    PAT_PREFIX,    /* "x*": starts with x */
    PAT_SUFFIX,    /* "*x": ends with x */
    PAT_ANY        /* "*": present, any value */
};

struct pat {
    const char *s; /* literal part, without the '*' (NUL-terminated, in the arena) */
    uint32_t len;
    uint8_t kind;
};

struct plist {
    struct pat *v;
    uint32_t n;
};

static bool pat_match(const struct pat *p, const char *v, size_t n)
{
    switch (p->kind) {
    case PAT_EXACT:
        return n == p->len && memcmp(v, p->s, n) == 0;
    case PAT_PREFIX:
        return n >= p->len && memcmp(v, p->s, p->len) == 0;
    case PAT_SUFFIX:
        return n >= p->len && memcmp(v + n - p->len, p->s, p->len) == 0;
    default:
        return true;
    }
}

static bool plist_match(const struct plist *l, const char *v, size_t n)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (pat_match(&l->v[i], v, n))
            return true;
    return false;
}

static bool plist_all_exact(const struct plist *l)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (l->v[i].kind != PAT_EXACT)
            return false;
    return true;
}

/* ---- methods and ports ------------------------------------------------------------ */

static const char *const method_names[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                           "CONNECT", "OPTIONS", "TRACE", "PATCH", NULL};
/* A method outside the list: never in a `methods` mask, so only not_methods
 * (which it passes) can concern it. */
#define METHOD_OTHER (1u << 9)

static uint32_t method_bit(const char *m)
{
    if (m == NULL)
        return METHOD_OTHER;
    for (uint32_t i = 0; method_names[i] != NULL; i++)
        if (strcmp(m, method_names[i]) == 0)
            return 1u << i;
    return METHOD_OTHER;
}

struct portset {
    uint16_t *v; /* sorted, unique */
    uint32_t n;
};

static bool port_in(const struct portset *s, uint16_t port)
{
    uint32_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->v[mid] == port)
            return true;
        if (s->v[mid] < port)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* ---- compiled policy ------------------------------------------------------------- */

enum cond {
    C_PRINCIPALS = 1u << 0,
    C_NOT_PRINCIPALS = 1u << 1,
    C_NAMESPACES = 1u << 2,
    C_NOT_NAMESPACES = 1u << 3,
    C_METHODS = 1u << 4,
    C_NOT_METHODS = 1u << 5,
    C_PORTS = 1u << 6,
    C_NOT_PORTS = 1u << 7,
    C_PATHS = 1u << 8,
    C_NOT_PATHS = 1u << 9,
    C_HEADERS = 1u << 10,
    C_IP_BLOCKS = 1u << 11,
    C_NOT_IP_BLOCKS = 1u << 12
};

/* Conditions a TCP connection has no value for: an allow rule holding one never
 * matches TCP; a deny rule matches TCP with them ignored (Istio, fail closed). */
#define C_HTTP_ONLY (C_METHODS | C_NOT_METHODS | C_PATHS | C_NOT_PATHS | C_HEADERS)

/* One CIDR of from.ip_blocks: IPv4 in the first 4 bytes. */
struct cidr {
    uint8_t addr[16];
    uint8_t family; /* 4 or 6 */
    uint8_t bits;
};

struct cidrset {
    struct cidr *v;
    uint32_t n;
};

struct hcond {
    const char *name; /* lower case */
    uint32_t namelen;
    bool authority; /* "host" / ":authority": matched against the request's authority */
    struct plist values;
};

struct rule {
    const char *name;
    bool deny;
    uint32_t conds; /* enum cond bits: which conditions this rule has (all must hold) */
    uint32_t methods, not_methods;
    struct portset ports, not_ports;
    struct plist principals, not_principals, namespaces, not_namespaces, paths, not_paths;
    struct hcond *headers;
    uint32_t nheaders;
    struct cidrset ip_blocks, not_ip_blocks;
};

/* One hash table slot: a key (principal or namespace) and the rules filed
 * under it, ascending. key == NULL marks a free slot. */
struct bucket {
    const char *key;
    uint32_t len;
    uint32_t n;
    uint64_t hash;
    uint32_t *rules;
    uint32_t last; /* build time: last rule index added + 1 (0: none), to skip repeats */
};

struct table {
    struct bucket *b; /* mask + 1 slots, or NULL when empty */
    uint32_t mask;
    uint32_t nkeys;
};

/* The rules of one action, indexed. */
struct index {
    uint32_t *generic; /* rule indices, ascending */
    uint32_t ngeneric;
    struct table by_principal, by_ns, by_path, by_header, by_port; /* hash_bytes() keys */
    struct table by_prefix, by_suffix;   /* FNV keys (suffixes hashed from their end) */
    uint32_t *prefix_lens, *suffix_lens; /* distinct key lengths of those two, ascending */
    uint32_t nprefix_lens, nsuffix_lens;
};

struct px_policy {
    struct px_arena arena; /* everything below that is not the doc or the name */
    char *name;
    json_t *doc;
    enum px_policy_mode mode;
    bool default_deny;
    bool needs_path; /* some rule looks at the path: normalize (and refuse bad ones) */
    bool needs_ip;   /* some rule has ip_blocks or not_ip_blocks */
    bool index_principal, index_ns, index_path; /* some index has keys of that kind */
    struct rule *rules;
    uint32_t nrules, nallow, ndeny;
    struct index deny, allow;
    /* Header names some rule matches: as written (lower case) and with '_' read as
     * '-', keyed by name_hash(); for the underscore check (PX_POLICY_BAD_HEADER). */
    struct table hdr_exact, hdr_mapped;
    bool hdr_underscore; /* some of those names holds '_' */
};

/* Keys of the principal, namespace and exact-path tables: 8 bytes a step. */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
    return h ^ (h >> 29);
}

/* Keys of the prefix table: FNV-1a, which extends one byte at a time, so the
 * hashes of every prefix of a path cost one pass over it. */
#define FNV_INIT  1469598103934665603ull
#define FNV_PRIME 1099511628211ull

static uint64_t fnv_extend(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= FNV_PRIME;
    }
    return h;
}

/* The same over s[n-1] down to s[0]: suffixes grow leftwards. */
static uint64_t fnv_extend_rev(uint64_t h, const char *s, size_t n)
{
    while (n > 0) {
        h ^= (unsigned char)s[--n];
        h *= FNV_PRIME;
    }
    return h;
}

/* The key under which a header condition is filed and looked up. */
#define AUTHORITY_KEY ":authority"

static const struct bucket *table_get(const struct table *t, const char *k, size_t n, uint64_t h)
{
    if (t->nkeys == 0)
        return NULL;
    for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
        const struct bucket *b = &t->b[i];
        if (b->key == NULL)
            return NULL;
        if (b->hash == h && b->len == n && memcmp(b->key, k, n) == 0)
            return b;
    }
}

/* '_' read as '-': how CGI/WSGI (HTTP_X_DEBUG) see a header name. */
static uint64_t name_hash(const char *s, size_t n)
{
    uint64_t h = FNV_INIT;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)(s[i] == '_' ? '-' : s[i]);
        h *= FNV_PRIME;
    }
    return h;
}

static bool name_eq_mapped(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((a[i] == '_' ? '-' : a[i]) != (b[i] == '_' ? '-' : b[i]))
            return false;
    return true;
}

/* Is a key of t equal to s[0..n) (with '_' read as '-' when `mapped`)? */
static bool table_has(const struct table *t, const char *s, size_t n, uint64_t h, bool mapped)
{
    if (t->nkeys == 0)
        return false;
    for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
        const struct bucket *b = &t->b[i];
        if (b->key == NULL)
            return false;
        if (b->hash == h && b->len == n &&
            (mapped ? name_eq_mapped(b->key, s, n) : memcmp(b->key, s, n) == 0))
            return true;
    }
}

/* ---- path normalization ------------------------------------------------------------ */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 3986 2.3 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~" */
static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

size_t px_policy_scratch_size(const char *path)
{
    return (path ? strlen(path) : 0) + 2;
}

int px_policy_normalize_path(const char *target, char *out, size_t outlen, const char **why)
{
    static const char hex[] = "0123456789ABCDEF";
    const char *s = target ? target : "";
    size_t n = strcspn(s, "?");
    if (outlen < n + 2) {
        *why = "path too long";
        return -1;
    }
    if (n == 1 && s[0] == '*') { /* OPTIONS * */
        memcpy(out, "*", 2);
        return 1;
    }
    if (n > 0 && s[0] != '/') {
        /* absolute-form (RFC 9112 3.2.2): drop scheme and authority */
        size_t skip = 0;
        if (n >= 7 && strncasecmp(s, "http://", 7) == 0)
            skip = 7;
        else if (n >= 8 && strncasecmp(s, "https://", 8) == 0)
            skip = 8;
        else {
            *why = "request target is not a path";
            return -1;
        }
        const char *slash = memchr(s + skip, '/', n - skip);
        if (slash == NULL) {
            s = "/";
            n = 1;
        } else {
            n -= (size_t)(slash - s);
            s = slash;
        }
    }
    if (n == 0) {
        s = "/";
        n = 1;
    }

    /* 1: percent-decoding of unreserved characters, checks */
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                *why = "malformed percent-encoding in path";
                return -1;
            }
            unsigned char v = (unsigned char)(hi * 16 + lo);
            if (v == '/' || v == '\\') {
                *why = "encoded slash or backslash in path";
                return -1;
            }
            if (v == 0) {
                *why = "encoded NUL in path";
                return -1;
            }
            if (unreserved(v)) {
                out[w++] = (char)v;
            } else {
                out[w++] = '%';
                out[w++] = hex[hi];
                out[w++] = hex[lo];
            }
            i += 2;
        } else if (c == '\\') {
            *why = "backslash in path";
            return -1;
        } else if (c == '#') {
            *why = "fragment in request target";
            return -1;
        } else if (c < 0x20 || c == 0x7f) {
            *why = "control character in path";
            return -1;
        } else {
            out[w++] = (char)c;
        }
    }

    /* 2: merge slashes, remove dot segments, in place. out[0] is '/'; o only
     * ever trails r, and out[0..o) always ends with '/'. */
    size_t r = 1, o = 1;
    bool slash_end = true; /* the result ends with '/' */
    while (r < w) {
        if (out[r] == '/') {
            r++;
            slash_end = true;
            continue;
        }
        size_t e = r;
        while (e < w && out[e] != '/')
            e++;
        size_t len = e - r;
        if (len == 1 && out[r] == '.') {
            slash_end = true;
        } else if (len == 2 && out[r] == '.' && out[r + 1] == '.') {
            if (o > 1) {
                o--;
                while (o > 0 && out[o - 1] != '/')
                    o--;
            }
            slash_end = true;
        } else {
            memmove(out + o, out + r, len);
            o += len;
            out[o++] = '/';
            slash_end = false;
        }
        r = e;
    }
    if (!slash_end && o > 1)
        o--;
    out[o] = '\0';
    return (int)o;
}

/* ---- CIDRs ----------------------------------------------------------------------- */

int px_policy_parse_cidr(const char *s, uint8_t addr[16], uint8_t *family, uint8_t *bits,
                         const char **why)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    memset(addr, 0, 16);
    if (hl == 0 || hl >= sizeof(host)) {
        *why = "not an IPv4 or IPv6 address";
        return -1;
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    unsigned max;
    if (inet_pton(AF_INET, host, addr) == 1) {
        *family = 4;
        max = 32;
    } else if (inet_pton(AF_INET6, host, addr) == 1) {
        *family = 6;
        max = 128;
    } else {
        *why = "not an IPv4 or IPv6 address";
        return -1;
    }
    unsigned b = max;
    if (slash != NULL) {
        const char *d = slash + 1;
        size_t dl = strlen(d);
        if (dl == 0 || dl > 3 || strspn(d, "0123456789") != dl || (dl > 1 && d[0] == '0')) {
            *why = "the prefix length is not a number";
            return -1;
        }
        b = (unsigned)strtoul(d, NULL, 10);
        if (b > max) {
            *why = *family == 4 ? "the prefix length of an IPv4 block is at most 32"
                                : "the prefix length of an IPv6 block is at most 128";
            return -1;
        }
    }
    for (unsigned i = b; i < max; i++) {
        if (addr[i / 8] & (0x80u >> (i % 8))) {
            *why = "bits set past the prefix length (write the network address)";
            return -1;
        }
    }
    *bits = (uint8_t)b;
    return 0;
}

/* The source address as 16 bytes and a family (IPv4-mapped IPv6 as IPv4);
 * false when it is neither. */
static bool source_bytes(const struct cm_addr *a, uint8_t out[16], uint8_t *family)
{
    memset(out, 0, 16);
    if (a == NULL)
        return false;
    if (a->ss.ss_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)&a->ss)->sin_addr, 4);
        *family = 4;
        return true;
    }
    if (a->ss.ss_family == AF_INET6) {
        const uint8_t *b = ((const struct sockaddr_in6 *)&a->ss)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(b, mapped, 12) == 0) {
            memcpy(out, b + 12, 4);
            *family = 4;
        } else {
            memcpy(out, b, 16);
            *family = 6;
        }
        return true;
    }
    return false;
}

static bool cidr_match(const struct cidrset *s, const uint8_t ip[16], uint8_t family)
{
    for (uint32_t i = 0; i < s->n; i++) {
        const struct cidr *c = &s->v[i];
        if (c->family != family)
            continue;
        unsigned full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(c->addr, ip, full) != 0)
            continue;
        if (rest == 0 || ((c->addr[full] ^ ip[full]) & (0xffu << (8 - rest)) & 0xffu) == 0)
            return true;
    }
    return false;
}

/* ---- compiling ------------------------------------------------------------------- */

enum pat_use {
    USE_PRINCIPAL = 0, /* SPIFFE IDs */
    USE_NAMESPACE,     /* Kubernetes namespaces */
    USE_PATH,          /* request paths, after normalization */
    USE_HEADER         /* header values */
};

static char *arena_strndup(struct px_policy *p, const char *s, size_t n)
{
    return px_arena_strndup(&p->arena, s, n);
}

/* Is `lit` (with `pre` before it and `post` after it) unchanged by path
 * normalization? When not, *fixed gets the normalized text (heap) or the reason. */
static bool path_is_normal(const char *pre, const char *lit, size_t n, const char *post,
                           char **fixed, const char **why)
{
    size_t a = strlen(pre), b = strlen(post), len = a + n + b;
    char *in = cm_xmalloc(len + 1), *out = cm_xmalloc(len + 2);
    memcpy(in, pre, a);
    memcpy(in + a, lit, n);
    memcpy(in + a + n, post, b);
    in[len] = '\0';
    *why = NULL;
    *fixed = NULL;
    int m = px_policy_normalize_path(in, out, len + 2, why);
    bool ok = m >= 0 && (size_t)m == len && memcmp(in, out, len) == 0;
    if (!ok && m >= 0 && (size_t)m >= a + b) /* show the normal form of the literal */
        *fixed = cm_xstrndup(out + a, (size_t)m - a - b);
    free(in);
    free(out);
    return ok;
}

/* A namespace pattern's literal: DNS-1123 label characters. */
static bool ns_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static bool printable_no_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/* Compile one pattern string for `use`. */
static int compile_pattern(struct px_policy *p, const struct cm_jpath *jp, json_t *v,
                           enum pat_use use, struct pat *out, char **errmsg)
{
    if (!json_is_string(v))
        return cm_json_fail(jp, errmsg, "expected a string");
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (strlen(s) != n)
        return cm_json_fail(jp, errmsg, "contains a NUL character");
    if (n == 0)
        return cm_json_fail(jp, errmsg, "empty pattern (\"*\" matches any value)");
    if (n > PX_POLICY_MAX_PATTERN)
        return cm_json_fail(jp, errmsg, "pattern longer than %d bytes", PX_POLICY_MAX_PATTERN);

    const char *lit = s;
    size_t len = n;
    uint8_t kind = PAT_EXACT;
    bool in_arena = false; /* lit already copied into the policy's arena */
    if (n == 1 && s[0] == '*') {
        kind = PAT_ANY;
        len = 0;
    } else if (s[0] == '*') {
        kind = PAT_SUFFIX;
        lit = s + 1;
        len = n - 1;
    } else if (s[n - 1] == '*') {
        kind = PAT_PREFIX;
        len = n - 1;
    }
    if (memchr(lit, '*', len) != NULL)
        return cm_json_fail(jp, errmsg,
                            "\"%s\": '*' may only stand alone, at the start or at the end", s);

    switch (use) {
    case USE_PRINCIPAL: {
        if (!printable_no_space(lit, len))
            return cm_json_fail(jp, errmsg, "\"%s\": spaces or control characters in a principal",
                                s);
        /* Istio writes principals without the scheme: accept both forms and
         * compare against the full "spiffe://..." ID. */
        bool add = kind != PAT_SUFFIX && kind != PAT_ANY &&
                   (len < SPIFFE_PREFIX_LEN || memcmp(lit, SPIFFE_PREFIX, SPIFFE_PREFIX_LEN) != 0);
        if (add) {
            char *full = px_arena_alloc(&p->arena, SPIFFE_PREFIX_LEN + len + 1);
            memcpy(full, SPIFFE_PREFIX, SPIFFE_PREFIX_LEN);
            memcpy(full + SPIFFE_PREFIX_LEN, lit, len);
            full[SPIFFE_PREFIX_LEN + len] = '\0';
            lit = full;
            len += SPIFFE_PREFIX_LEN;
            in_arena = true;
        }
        if (kind == PAT_EXACT) {
            char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX];
            char *e = NULL;
            if (len >= PKI_SPIFFE_MAX || pki_spiffe_parse(lit, td, ns, sa, &e) != 0) {
                int rc = cm_json_fail(jp, errmsg, "\"%s\" is not a SPIFFE ID: %s", s,
                                      e ? e : "longer than 255 characters");
                free(e);
                return rc;
            }
        }
        break;
    }
    case USE_NAMESPACE:
        if (!ns_chars(lit, len) || (kind == PAT_EXACT && len > 63))
            return cm_json_fail(jp, errmsg,
                                "\"%s\" is not a namespace (DNS-1123 label: a-z, 0-9, '-', "
                                "at most 63)",
                                s);
        break;
    case USE_PATH: {
        if (kind == PAT_ANY)
            break;
        if (memchr(lit, '?', len) != NULL)
            return cm_json_fail(
                jp, errmsg, "\"%s\": a path pattern cannot hold '?' (the query is not matched)", s);
        if (kind != PAT_SUFFIX && (len == 0 || lit[0] != '/'))
            return cm_json_fail(jp, errmsg, "\"%s\": a path must start with '/'", s);
        /* Requests are matched after normalization, so a pattern that is not
         * in normal form could never match: refuse it, and say what to write.
         * A sentinel 'x' makes a trailing "." of a prefix, or a leading one of
         * a suffix, part of a longer segment, as it is in the paths it matches. */
        char *fixed = NULL;
        const char *why = NULL;
        bool ok = kind == PAT_EXACT    ? path_is_normal("", lit, len, "", &fixed, &why)
                  : kind == PAT_PREFIX ? path_is_normal("", lit, len, "x", &fixed, &why)
                                       : path_is_normal("/x", lit, len, "", &fixed, &why);
        if (!ok) {
            int rc;
            if (fixed != NULL)
                rc = cm_json_fail(jp, errmsg,
                                  "\"%s\" is not a normalized path (requests are matched after "
                                  "normalization; write \"%s%s%s\")",
                                  s, kind == PAT_SUFFIX ? "*" : "", fixed,
                                  kind == PAT_PREFIX ? "*" : "");
            else
                rc = cm_json_fail(jp, errmsg, "\"%s\": %s", s, why ? why : "not a path");
            free(fixed);
            return rc;
        }
        break;
    }
    case USE_HEADER:
        if (!px_http_valid_value(lit, len))
            return cm_json_fail(jp, errmsg, "\"%s\": not a valid header value", s);
        break;
    }
    if (!in_arena)
        lit = arena_strndup(p, lit, len);
    out->s = lit;
    out->len = (uint32_t)len;
    out->kind = kind;
    return 0;
}

/* Optional list member: absent leaves *out NULL; present must be a non-empty
 * array of at most PX_POLICY_MAX_LIST entries. */
static int get_list(const struct cm_jpath *parent, json_t *obj, const char *key,
                    struct cm_jpath *lp, json_t **out, char **errmsg)
{
    *out = NULL;
    int rc = cm_json_get_child(parent, obj, key, false, JSON_ARRAY, out, errmsg);
    if (rc != 0 || *out == NULL)
        return rc;
    cm_jpath_key(lp, parent, key);
    size_t n = json_array_size(*out);
    if (n == 0)
        return cm_json_fail(lp, errmsg, "empty list (omit the key, or give at least one entry)");
    if (n > PX_POLICY_MAX_LIST)
        return cm_json_fail(lp, errmsg, "more than %d entries", PX_POLICY_MAX_LIST);
    return 0;
}

static int compile_plist(struct px_policy *p, const struct cm_jpath *lp, json_t *arr,
                         enum pat_use use, struct plist *out, char **errmsg)
{
    size_t n = json_array_size(arr);
    out->v = px_arena_alloc(&p->arena, n * sizeof(*out->v));
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath ep;
        cm_jpath_index(&ep, lp, i);
        if (compile_pattern(p, &ep, json_array_get(arr, i), use, &out->v[i], errmsg) != 0)
            return CM_ERR_INVAL;
        out->n++;
    }
    return 0;
}

/* A list of patterns under `key` of obj, if present: sets `bit` in r->conds. */
static int opt_plist(struct px_policy *p, const struct cm_jpath *parent, json_t *obj,
                     const char *key, enum pat_use use, struct plist *out, struct rule *r,
                     uint32_t bit, char **errmsg)
{
    struct cm_jpath lp;
    json_t *arr;
    if (get_list(parent, obj, key, &lp, &arr, errmsg) != 0)
        return CM_ERR_INVAL;
    if (arr == NULL)
        return 0;
    r->conds |= bit;
    return compile_plist(p, &lp, arr, use, out, errmsg);
}

static int opt_methods(const struct cm_jpath *parent, json_t *obj, const char *key, uint32_t *mask,
                       struct rule *r, uint32_t bit, char **errmsg)
{
    struct cm_jpath lp;
    json_t *arr;
    if (get_list(parent, obj, key, &lp, &arr, errmsg) != 0)
        return CM_ERR_INVAL;
    if (arr == NULL)
        return 0;
    r->conds |= bit;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        struct cm_jpath ep;
        cm_jpath_index(&ep, &lp, i);
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v))
            return cm_json_fail(&ep, errmsg, "expected a string");
        uint32_t b = method_bit(json_string_value(v));
        if (b == METHOD_OTHER || strlen(json_string_value(v)) != json_string_length(v))
            return cm_json_fail(&ep, errmsg,
                                "\"%s\" is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, "
                                "OPTIONS, TRACE, PATCH (upper case)",
                                json_string_value(v));
        *mask |= b;
    }
    return 0;
}

static int cmp_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

static int opt_ports(struct px_policy *p, const struct cm_jpath *parent, json_t *obj,
                     const char *key, struct portset *out, struct rule *r, uint32_t bit,
                     char **errmsg)
{
    struct cm_jpath lp;
    json_t *arr;
    if (get_list(parent, obj, key, &lp, &arr, errmsg) != 0)
        return CM_ERR_INVAL;
    if (arr == NULL)
        return 0;
    r->conds |= bit;
    size_t n = json_array_size(arr);
    out->v = px_arena_alloc(&p->arena, n * sizeof(*out->v));
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath ep;
        cm_jpath_index(&ep, &lp, i);
        json_t *v = json_array_get(arr, i);
        long long port = -1;
        if (json_is_integer(v)) {
            port = json_integer_value(v);
        } else if (json_is_string(v)) { /* Istio writes ports as strings */
            const char *s = json_string_value(v);
            size_t sl = json_string_length(v);
            if (sl > 0 && sl <= 5 && strspn(s, "0123456789") == sl)
                port = strtoll(s, NULL, 10);
        }
        if (port < 1 || port > 65535)
            return cm_json_fail(&ep, errmsg, "expected a port number 1-65535");
        out->v[i] = (uint16_t)port;
    }
    qsort(out->v, n, sizeof(*out->v), cmp_u16);
    uint32_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || out->v[u - 1] != out->v[i])
            out->v[u++] = out->v[i];
    out->n = u;
    return 0;
}

static int opt_cidrs(struct px_policy *p, const struct cm_jpath *parent, json_t *obj,
                     const char *key, struct cidrset *out, struct rule *r, uint32_t bit,
                     char **errmsg)
{
    struct cm_jpath lp;
    json_t *arr;
    if (get_list(parent, obj, key, &lp, &arr, errmsg) != 0)
        return CM_ERR_INVAL;
    if (arr == NULL)
        return 0;
    r->conds |= bit;
    size_t n = json_array_size(arr);
    out->v = px_arena_alloc(&p->arena, n * sizeof(*out->v));
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath ep;
        cm_jpath_index(&ep, &lp, i);
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v))
            return cm_json_fail(&ep, errmsg, "expected a string (a CIDR such as \"10.0.0.0/8\")");
        const char *s = json_string_value(v), *why = NULL;
        struct cidr *c = &out->v[i];
        if (strlen(s) != json_string_length(v) ||
            px_policy_parse_cidr(s, c->addr, &c->family, &c->bits, &why) != 0)
            return cm_json_fail(&ep, errmsg, "\"%s\" is not a CIDR: %s", s,
                                why ? why : "contains a NUL character");
        out->n++;
    }
    return 0;
}

static int compile_from(struct px_policy *p, const struct cm_jpath *fp, json_t *from,
                        struct rule *r, char **errmsg)
{
    static const char *const keys[] = {
        "principals",    "namespaces", "not_principals", "not_namespaces", "ip_blocks",
        "not_ip_blocks", NULL};
    if (cm_json_check_keys(fp, from, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    if (json_object_size(from) == 0)
        return cm_json_fail(fp, errmsg,
                            "empty object (give principals, namespaces, ip_blocks or their "
                            "not_ forms, or omit it)");
    if (opt_cidrs(p, fp, from, "ip_blocks", &r->ip_blocks, r, C_IP_BLOCKS, errmsg) != 0 ||
        opt_cidrs(p, fp, from, "not_ip_blocks", &r->not_ip_blocks, r, C_NOT_IP_BLOCKS, errmsg) != 0)
        return CM_ERR_INVAL;
    if (opt_plist(p, fp, from, "principals", USE_PRINCIPAL, &r->principals, r, C_PRINCIPALS,
                  errmsg) != 0 ||
        opt_plist(p, fp, from, "namespaces", USE_NAMESPACE, &r->namespaces, r, C_NAMESPACES,
                  errmsg) != 0 ||
        opt_plist(p, fp, from, "not_principals", USE_PRINCIPAL, &r->not_principals, r,
                  C_NOT_PRINCIPALS, errmsg) != 0 ||
        opt_plist(p, fp, from, "not_namespaces", USE_NAMESPACE, &r->not_namespaces, r,
                  C_NOT_NAMESPACES, errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

static int compile_to(struct px_policy *p, const struct cm_jpath *tp, json_t *to, struct rule *r,
                      char **errmsg)
{
    static const char *const keys[] = {"methods",   "paths",     "ports", "not_methods",
                                       "not_paths", "not_ports", NULL};
    if (cm_json_check_keys(tp, to, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    if (json_object_size(to) == 0)
        return cm_json_fail(tp, errmsg,
                            "empty object (give methods, paths, ports or their not_ forms, or "
                            "omit it)");
    if (opt_methods(tp, to, "methods", &r->methods, r, C_METHODS, errmsg) != 0 ||
        opt_plist(p, tp, to, "paths", USE_PATH, &r->paths, r, C_PATHS, errmsg) != 0 ||
        opt_ports(p, tp, to, "ports", &r->ports, r, C_PORTS, errmsg) != 0 ||
        opt_methods(tp, to, "not_methods", &r->not_methods, r, C_NOT_METHODS, errmsg) != 0 ||
        opt_plist(p, tp, to, "not_paths", USE_PATH, &r->not_paths, r, C_NOT_PATHS, errmsg) != 0 ||
        opt_ports(p, tp, to, "not_ports", &r->not_ports, r, C_NOT_PORTS, errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

static int compile_when(struct px_policy *p, const struct cm_jpath *wp, json_t *when,
                        struct rule *r, char **errmsg)
{
    static const char *const keys[] = {"headers", NULL};
    if (cm_json_check_keys(wp, when, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    json_t *hdrs = NULL;
    if (cm_json_get_child(wp, when, "headers", true, JSON_OBJECT, &hdrs, errmsg) != 0)
        return CM_ERR_INVAL;
    struct cm_jpath hp;
    cm_jpath_key(&hp, wp, "headers");
    size_t n = json_object_size(hdrs);
    if (n == 0)
        return cm_json_fail(&hp, errmsg, "empty object (give header names, or omit when)");
    if (n > PX_POLICY_MAX_LIST)
        return cm_json_fail(&hp, errmsg, "more than %d headers", PX_POLICY_MAX_LIST);
    r->headers = px_arena_alloc(&p->arena, n * sizeof(*r->headers));
    r->nheaders = 0;
    r->conds |= C_HEADERS;
    const char *key;
    json_t *v;
    json_object_foreach(hdrs, key, v)
    {
        struct cm_jpath kp;
        cm_jpath_key(&kp, &hp, key);
        struct hcond *h = &r->headers[r->nheaders];
        size_t kl = strlen(key);
        char *name = arena_strndup(p, key, kl);
        for (size_t i = 0; i < kl; i++)
            if (name[i] >= 'A' && name[i] <= 'Z')
                name[i] = (char)(name[i] - 'A' + 'a');
        h->authority = strcmp(name, "host") == 0 || strcmp(name, ":authority") == 0;
        if (!h->authority && (kl == 0 || !px_http_valid_name(name, kl)))
            return cm_json_fail(&kp, errmsg,
                                "not a header name (pseudo-headers other than :authority are "
                                "matched by to.methods and to.paths)");
        if (strcmp(name, "x-forwarded-client-cert") == 0)
            return cm_json_fail(&kp, errmsg,
                                "the policy sees this header as the client sent it (the proxy "
                                "sets it after deciding): match the caller with from.principals");
        for (uint32_t i = 0; i < r->nheaders; i++)
            if (strcmp(r->headers[i].name, name) == 0 || (h->authority && r->headers[i].authority))
                return cm_json_fail(&kp, errmsg,
                                    "the same header twice (names are case-insensitive)");
        h->name = name;
        h->namelen = (uint32_t)kl;
        if (json_is_string(v)) {
            h->values.v = px_arena_alloc(&p->arena, sizeof(*h->values.v));
            h->values.n = 1;
            if (compile_pattern(p, &kp, v, USE_HEADER, &h->values.v[0], errmsg) != 0)
                return CM_ERR_INVAL;
        } else if (json_is_array(v)) {
            size_t m = json_array_size(v);
            if (m == 0)
                return cm_json_fail(&kp, errmsg, "empty list (\"*\" matches any value)");
            if (m > PX_POLICY_MAX_LIST)
                return cm_json_fail(&kp, errmsg, "more than %d entries", PX_POLICY_MAX_LIST);
            if (compile_plist(p, &kp, v, USE_HEADER, &h->values, errmsg) != 0)
                return CM_ERR_INVAL;
        } else {
            return cm_json_fail(&kp, errmsg, "expected a string or a list of strings");
        }
        r->nheaders++;
    }
    return 0;
}

static bool name_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':' || c == '/'))
            return false;
    }
    return true;
}

static int compile_rule(struct px_policy *p, const struct cm_jpath *rp, json_t *o, struct rule *r,
                        json_t *names, char **errmsg)
{
    static const char *const keys[] = {"name", "action", "from", "to", "when", NULL};
    static const char *const actions[] = {"allow", "deny", NULL};
    if (!json_is_object(o))
        return cm_json_fail(rp, errmsg, "expected an object");
    if (cm_json_check_keys(rp, o, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    const char *name = NULL;
    int action = 0;
    if (cm_json_get_string(rp, o, "name", true, &name, errmsg) != 0)
        return CM_ERR_INVAL;
    struct cm_jpath np;
    cm_jpath_key(&np, rp, "name");
    size_t nl = json_string_length(json_object_get(o, "name"));
    if (nl == 0 || nl > PX_POLICY_MAX_NAME || strlen(name) != nl || !name_chars(name, nl))
        return cm_json_fail(&np, errmsg,
                            "a rule name is 1 to %d characters from A-Z a-z 0-9 - _ . : /",
                            PX_POLICY_MAX_NAME);
    if (strcmp(name, "default") == 0)
        return cm_json_fail(&np, errmsg,
                            "\"default\" is reserved (it names denials by the default)");
    json_t *seen = json_object_get(names, name);
    if (seen != NULL)
        return cm_json_fail(&np, errmsg, "\"%s\" is also the name of rules[%lld]", name,
                            (long long)json_integer_value(seen));
    json_object_set_new(names, name, json_integer((json_int_t)(r - p->rules)));
    r->name = arena_strndup(p, name, nl);
    if (cm_json_get_enum(rp, o, "action", true, actions, &action, errmsg) != 0)
        return CM_ERR_INVAL;
    r->deny = action == 1;

    json_t *from = NULL, *to = NULL, *when = NULL;
    struct cm_jpath fp, tp, wp;
    cm_jpath_key(&fp, rp, "from");
    cm_jpath_key(&tp, rp, "to");
    cm_jpath_key(&wp, rp, "when");
    if (cm_json_get_child(rp, o, "from", false, JSON_OBJECT, &from, errmsg) != 0 ||
        (from != NULL && compile_from(p, &fp, from, r, errmsg) != 0) ||
        cm_json_get_child(rp, o, "to", false, JSON_OBJECT, &to, errmsg) != 0 ||
        (to != NULL && compile_to(p, &tp, to, r, errmsg) != 0) ||
        cm_json_get_child(rp, o, "when", false, JSON_OBJECT, &when, errmsg) != 0 ||
        (when != NULL && compile_when(p, &wp, when, r, errmsg) != 0))
        return CM_ERR_INVAL;
    return 0;
}

/* ---- index ----------------------------------------------------------------------- */

enum rule_class {
    CLASS_GENERIC = 0,
    CLASS_PRINCIPAL, /* filed under each of its exact principals */
    CLASS_PATH,      /* filed under each of its exact paths, prefixes and suffixes */
    CLASS_NS,        /* filed under each of its exact namespaces */
    CLASS_HEADER,    /* filed under the name of its first header condition */
    CLASS_PORT       /* filed under each of its ports */
};

static bool paths_indexable(const struct plist *l)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (l->v[i].kind == PAT_ANY)
            return false;
    return true;
}

static enum rule_class rule_class(const struct rule *r)
{
    if ((r->conds & C_PRINCIPALS) && plist_all_exact(&r->principals))
        return CLASS_PRINCIPAL;
    if ((r->conds & C_PATHS) && paths_indexable(&r->paths))
        return CLASS_PATH;
    if ((r->conds & C_NAMESPACES) && plist_all_exact(&r->namespaces))
        return CLASS_NS;
    if ((r->conds & C_HEADERS) && r->nheaders > 0)
        return CLASS_HEADER;
    if (r->conds & C_PORTS)
        return CLASS_PORT;
    return CLASS_GENERIC;
}

static void table_init(struct px_policy *p, struct table *t, size_t maxkeys)
{
    if (maxkeys == 0)
        return;
    size_t cap = 8;
    while (cap < maxkeys * 2)
        cap *= 2;
    t->b = px_arena_alloc(&p->arena, cap * sizeof(*t->b));
    memset(t->b, 0, cap * sizeof(*t->b));
    t->mask = (uint32_t)(cap - 1);
}

/* File rule i under key k (hash h): pass 0 counts, pass 1 stores. */
static void table_file_key(struct table *t, const char *k, size_t n, uint64_t h, uint32_t i,
                           int pass)
{
    struct bucket *b = NULL;
    for (uint32_t s = (uint32_t)h & t->mask;; s = (s + 1) & t->mask) {
        b = &t->b[s];
        if (b->key == NULL) {
            b->key = k;
            b->len = (uint32_t)n;
            b->hash = h;
            t->nkeys++;
            break;
        }
        if (b->hash == h && b->len == n && memcmp(b->key, k, n) == 0)
            break;
    }
    if (b->last == i + 1)
        return; /* the same key twice in one rule */
    b->last = i + 1;
    if (pass == 1)
        b->rules[b->n] = i;
    b->n++;
}

/* File rule i under every pattern of l of the given kind. */
static void table_file(struct table *t, const struct plist *l, uint8_t kind, uint32_t i, int pass)
{
    for (uint32_t k = 0; k < l->n; k++) {
        const struct pat *pt = &l->v[k];
        if (pt->kind != kind)
            continue;
        uint64_t h = kind == PAT_PREFIX   ? fnv_extend(FNV_INIT, pt->s, pt->len)
                     : kind == PAT_SUFFIX ? fnv_extend_rev(FNV_INIT, pt->s, pt->len)
                                          : hash_bytes(pt->s, pt->len);
        table_file_key(t, pt->s, pt->len, h, i, pass);
    }
}

static void table_alloc_buckets(struct px_policy *p, struct table *t)
{
    for (uint32_t i = 0; t->b && i <= t->mask; i++) {
        struct bucket *b = &t->b[i];
        if (b->key == NULL)
            continue;
        b->rules = px_arena_alloc(&p->arena, b->n * sizeof(*b->rules));
        b->n = 0;
        b->last = 0;
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The distinct key lengths of a table, ascending. */
static uint32_t key_lengths(struct px_policy *p, const struct table *t, uint32_t **out)
{
    *out = NULL;
    if (t->nkeys == 0)
        return 0;
    uint32_t *v = px_arena_alloc(&p->arena, t->nkeys * sizeof(*v));
    uint32_t n = 0;
    for (uint32_t i = 0; i <= t->mask; i++)
        if (t->b[i].key != NULL)
            v[n++] = t->b[i].len;
    qsort(v, n, sizeof(*v), cmp_u32);
    uint32_t u = 0;
    for (uint32_t i = 0; i < n; i++)
        if (u == 0 || v[u - 1] != v[i])
            v[u++] = v[i];
    *out = v;
    return u;
}

/* Ports are keyed by their two bytes, big-endian. */
static void port_key(uint16_t port, char key[2])
{
    key[0] = (char)(port >> 8);
    key[1] = (char)(port & 0xff);
}

static void file_rule(struct px_policy *p, struct index *ix, const struct rule *r, uint32_t i,
                      int pass)
{
    switch (rule_class(r)) {
    case CLASS_PRINCIPAL:
        table_file(&ix->by_principal, &r->principals, PAT_EXACT, i, pass);
        break;
    case CLASS_PATH:
        table_file(&ix->by_path, &r->paths, PAT_EXACT, i, pass);
        table_file(&ix->by_prefix, &r->paths, PAT_PREFIX, i, pass);
        table_file(&ix->by_suffix, &r->paths, PAT_SUFFIX, i, pass);
        break;
    case CLASS_NS:
        table_file(&ix->by_ns, &r->namespaces, PAT_EXACT, i, pass);
        break;
    case CLASS_HEADER: {
        const struct hcond *h = &r->headers[0];
        const char *k = h->authority ? AUTHORITY_KEY : h->name;
        size_t n = h->authority ? strlen(AUTHORITY_KEY) : h->namelen;
        table_file_key(&ix->by_header, k, n, hash_bytes(k, n), i, pass);
        break;
    }
    case CLASS_PORT:
        for (uint32_t k = 0; k < r->ports.n; k++) {
            char *key = px_arena_alloc(&p->arena, 2);
            port_key(r->ports.v[k], key);
            table_file_key(&ix->by_port, key, 2, hash_bytes(key, 2), i, pass);
        }
        break;
    default:
        if (pass == 1)
            ix->generic[ix->ngeneric++] = i;
    }
}

static void index_build(struct px_policy *p, struct index *ix, bool deny)
{
    size_t ngen = 0, npk = 0, nnk = 0, npath = 0, nhdr = 0, nport = 0;
    for (uint32_t i = 0; i < p->nrules; i++) {
        const struct rule *r = &p->rules[i];
        if (r->deny != deny)
            continue;
        switch (rule_class(r)) {
        case CLASS_PRINCIPAL:
            npk += r->principals.n;
            break;
        case CLASS_PATH:
            npath += r->paths.n;
            break;
        case CLASS_NS:
            nnk += r->namespaces.n;
            break;
        case CLASS_HEADER:
            nhdr++;
            break;
        case CLASS_PORT:
            nport += r->ports.n;
            break;
        default:
            ngen++;
        }
    }
    ix->generic = px_arena_alloc(&p->arena, (ngen ? ngen : 1) * sizeof(*ix->generic));
    table_init(p, &ix->by_principal, npk);
    table_init(p, &ix->by_ns, nnk);
    table_init(p, &ix->by_path, npath);
    table_init(p, &ix->by_prefix, npath);
    table_init(p, &ix->by_suffix, npath);
    table_init(p, &ix->by_header, nhdr);
    table_init(p, &ix->by_port, nport);
    struct table *all[] = {&ix->by_principal, &ix->by_ns,     &ix->by_path, &ix->by_prefix,
                           &ix->by_suffix,    &ix->by_header, &ix->by_port};
    for (int pass = 0; pass < 2; pass++) {
        for (size_t t = 0; pass == 1 && t < sizeof(all) / sizeof(all[0]); t++)
            table_alloc_buckets(p, all[t]);
        for (uint32_t i = 0; i < p->nrules; i++)
            if (p->rules[i].deny == deny)
                file_rule(p, ix, &p->rules[i], i, pass);
    }
    ix->nprefix_lens = key_lengths(p, &ix->by_prefix, &ix->prefix_lens);
    ix->nsuffix_lens = key_lengths(p, &ix->by_suffix, &ix->suffix_lens);
}

/* The header names of every when.headers (Host/:authority aside), for
 * underscore_clash(). Both tables are keyed by name_hash(). */
static void header_names_build(struct px_policy *p)
{
    size_t n = 0;
    for (uint32_t i = 0; i < p->nrules; i++)
        n += p->rules[i].nheaders;
    table_init(p, &p->hdr_exact, n);
    table_init(p, &p->hdr_mapped, n);
    for (uint32_t i = 0; i < p->nrules; i++) {
        const struct rule *r = &p->rules[i];
        for (uint32_t k = 0; k < r->nheaders; k++) {
            const struct hcond *h = &r->headers[k];
            if (h->authority)
                continue;
            uint64_t hash = name_hash(h->name, h->namelen);
            if (!table_has(&p->hdr_exact, h->name, h->namelen, hash, false))
                table_file_key(&p->hdr_exact, h->name, h->namelen, hash, 0, 0);
            if (!table_has(&p->hdr_mapped, h->name, h->namelen, hash, true))
                table_file_key(&p->hdr_mapped, h->name, h->namelen, hash, 0, 0);
            if (memchr(h->name, '_', h->namelen) != NULL)
                p->hdr_underscore = true;
        }
    }
}

/* ---- load ------------------------------------------------------------------------- */

void px_policy_free(struct px_policy *p)
{
    if (p == NULL)
        return;
    px_arena_deinit(&p->arena);
    json_decref(p->doc);
    free(p->name);
    free(p);
}

int px_policy_compile(const char *name, json_t *doc, struct px_policy **out, char **errmsg)
{
    static const char *const keys[] = {"default", "mode", "rules", NULL};
    static const char *const defaults[] = {"allow", "deny", NULL};
    static const char *const modes[] = {"enforce", "audit", NULL};
    struct px_policy *p = cm_xcalloc(1, sizeof(*p));
    px_arena_init(&p->arena);
    p->name = cm_xstrdup(name ? name : "policy");
    json_t *names = json_object();
    struct cm_jpath root;
    cm_jpath_root(&root, p->name);
    if (!json_is_object(doc)) {
        cm_json_fail(&root, errmsg, "expected a JSON object at the top level");
        goto fail;
    }
    p->doc = json_incref(doc);
    int def = 0, mode = 0;
    json_t *rules = NULL;
    if (cm_json_check_keys(&root, doc, keys, errmsg) != 0 ||
        cm_json_get_enum(&root, doc, "default", false, defaults, &def, errmsg) != 0 ||
        cm_json_get_enum(&root, doc, "mode", false, modes, &mode, errmsg) != 0 ||
        cm_json_get_child(&root, doc, "rules", false, JSON_ARRAY, &rules, errmsg) != 0)
        goto fail;
    p->default_deny = def == 1;
    p->mode = mode == 1 ? PX_POLICY_AUDIT : PX_POLICY_ENFORCE;
    size_t n = rules ? json_array_size(rules) : 0;
    if (n > PX_POLICY_MAX_RULES) {
        struct cm_jpath rp;
        cm_jpath_key(&rp, &root, "rules");
        cm_json_fail(&rp, errmsg, "more than %d rules", PX_POLICY_MAX_RULES);
        goto fail;
    }
    p->rules = px_arena_alloc(&p->arena, (n ? n : 1) * sizeof(*p->rules));
    memset(p->rules, 0, (n ? n : 1) * sizeof(*p->rules));
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath rs, rp;
        cm_jpath_key(&rs, &root, "rules");
        cm_jpath_index(&rp, &rs, i);
        struct rule *r = &p->rules[i];
        if (compile_rule(p, &rp, json_array_get(rules, i), r, names, errmsg) != 0)
            goto fail;
        p->nrules++;
        if (r->deny)
            p->ndeny++;
        else
            p->nallow++;
        if (r->conds & (C_PATHS | C_NOT_PATHS))
            p->needs_path = true;
        if (r->conds & (C_IP_BLOCKS | C_NOT_IP_BLOCKS))
            p->needs_ip = true;
    }
    index_build(p, &p->deny, true);
    index_build(p, &p->allow, false);
    header_names_build(p);
    p->index_principal = p->deny.by_principal.nkeys + p->allow.by_principal.nkeys > 0;
    p->index_ns = p->deny.by_ns.nkeys + p->allow.by_ns.nkeys > 0;
    p->index_path = p->deny.by_path.nkeys + p->allow.by_path.nkeys > 0;
    json_decref(names);
    *out = p;
    return 0;

fail:
    json_decref(names);
    px_policy_free(p);
    return CM_ERR_INVAL;
}

int px_policy_parse(const char *name, const char *buf, size_t len, struct px_policy **out,
                    char **errmsg)
{
    json_t *doc;
    if (cm_json_load_buf(name, buf, len, true, &doc, errmsg) != 0)
        return CM_ERR_INVAL;
    int rc = px_policy_compile(name, doc, out, errmsg);
    json_decref(doc);
    return rc;
}

int px_policy_load_file(const char *file, struct px_policy **out, char **errmsg)
{
    json_t *doc;
    if (cm_json_load_file(file, true, &doc, errmsg) != 0)
        return CM_ERR_INVAL;
    int rc = px_policy_compile(file, doc, out, errmsg);
    json_decref(doc);
    return rc;
}

/* ---- deciding --------------------------------------------------------------------- */

/* The request, as rules look at it; computed once per decision. */
struct view {
    const char *principal; /* NULL: no verified peer */
    size_t plen;
    uint64_t phash; /* hash_bytes() of principal, ns, path */
    uint64_t nshash;
    uint64_t pathhash;
    const char *ns; /* the principal's namespace, or NULL */
    size_t nslen;
    uint32_t mbit;
    uint16_t port;
    const char *path; /* normalized; only when the policy looks at paths */
    size_t pathlen;
    const struct px_msg *msg; /* NULL for TCP */
    bool tcp;                 /* an opaque TCP connection: see C_HTTP_ONLY */
    bool has_ip;              /* the source address is known */
    uint8_t ipfamily;
    uint8_t ip[16];
};

/* The namespace of "spiffe://<td>/ns/<ns>/sa/<sa>", or NULL. */
static const char *principal_ns(const char *id, size_t n, size_t *nslen)
{
    if (n < SPIFFE_PREFIX_LEN || memcmp(id, SPIFFE_PREFIX, SPIFFE_PREFIX_LEN) != 0)
        return NULL;
    const char *end = id + n;
    const char *slash = memchr(id + SPIFFE_PREFIX_LEN, '/', n - SPIFFE_PREFIX_LEN);
    if (slash == NULL || end - slash < 4 || memcmp(slash, "/ns/", 4) != 0)
        return NULL;
    const char *ns = slash + 4;
    const char *e = memchr(ns, '/', (size_t)(end - ns));
    if (e == NULL || e == ns)
        return NULL;
    *nslen = (size_t)(e - ns);
    return ns;
}

static bool header_match(const struct hcond *h, const struct px_msg *m, bool deny)
{
    if (m == NULL)
        return false;
    if (h->authority)
        return m->authority != NULL && plist_match(&h->values, m->authority, strlen(m->authority));
    /* A repeated header never helps: a deny rule needs one matching copy, an
     * allow rule needs every copy to match. */
    bool seen = false;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *x = &m->hdrs[i];
        if (x->namelen != h->namelen || memcmp(x->name, h->name, h->namelen) != 0)
            continue;
        bool ok = plist_match(&h->values, x->value ? x->value : "", x->valuelen);
        if (deny && ok)
            return true;
        if (!deny && !ok)
            return false;
        seen = true;
    }
    return !deny && seen;
}

static bool ip_blocks_hold(const struct rule *r, uint32_t c, const struct view *v)
{
    if ((c & C_IP_BLOCKS) && (!v->has_ip || !cidr_match(&r->ip_blocks, v->ip, v->ipfamily)))
        return false;
    if (c & C_NOT_IP_BLOCKS) {
        if (!v->has_ip ? !r->deny : cidr_match(&r->not_ip_blocks, v->ip, v->ipfamily))
            return false;
    }
    return true;
}

static bool rule_match(const struct rule *r, const struct view *v)
{
    uint32_t c = r->conds;
    if (__builtin_expect(v->tcp, 0) && (c & C_HTTP_ONLY)) {
        if (!r->deny)
            return false;            /* an HTTP-only allow never admits a TCP connection */
        c &= ~(uint32_t)C_HTTP_ONLY; /* a deny matches with them ignored */
    }
    if ((c & (C_IP_BLOCKS | C_NOT_IP_BLOCKS)) && !ip_blocks_hold(r, c, v))
        return false;
    if ((c & C_PORTS) && !port_in(&r->ports, v->port))
        return false;
    if ((c & C_NOT_PORTS) && port_in(&r->not_ports, v->port))
        return false;
    if ((c & C_METHODS) && !(r->methods & v->mbit))
        return false;
    if ((c & C_NOT_METHODS) && (r->not_methods & v->mbit))
        return false;
    if ((c & C_PRINCIPALS) &&
        (v->principal == NULL || !plist_match(&r->principals, v->principal, v->plen)))
        return false;
    if (c & C_NOT_PRINCIPALS) {
        if (v->principal == NULL ? !r->deny
                                 : plist_match(&r->not_principals, v->principal, v->plen))
            return false;
    }
    if ((c & C_NAMESPACES) && (v->ns == NULL || !plist_match(&r->namespaces, v->ns, v->nslen)))
        return false;
    if (c & C_NOT_NAMESPACES) {
        if (v->ns == NULL ? !r->deny : plist_match(&r->not_namespaces, v->ns, v->nslen))
            return false;
    }
    if ((c & C_PATHS) && !plist_match(&r->paths, v->path, v->pathlen))
        return false;
    if ((c & C_NOT_PATHS) && plist_match(&r->not_paths, v->path, v->pathlen))
        return false;
    for (uint32_t i = 0; (c & C_HEADERS) && i < r->nheaders; i++)
        if (!header_match(&r->headers[i], v->msg, r->deny))
            return false;
    return true;
}

/* The first rule of `list` that matches, if it comes before *best. */
static void scan(const struct px_policy *p, const uint32_t *list, uint32_t n, const struct view *v,
                 uint32_t *best)
{
    for (uint32_t i = 0; i < n && list[i] < *best; i++) {
        if (rule_match(&p->rules[list[i]], v)) {
            *best = list[i];
            return;
        }
    }
}

static void scan_bucket(const struct px_policy *p, const struct table *t, const char *k, size_t n,
                        uint64_t h, const struct view *v, uint32_t *best)
{
    const struct bucket *b = table_get(t, k, n, h);
    if (b != NULL)
        scan(p, b->rules, b->n, v, best);
}

/* The first rule of this index (in file order) that matches, or -1. */
static int64_t find(const struct px_policy *p, const struct index *ix, const struct view *v)
{
    uint32_t best = UINT32_MAX;
    scan(p, ix->generic, ix->ngeneric, v, &best);
    if (v->principal != NULL && ix->by_principal.nkeys > 0)
        scan_bucket(p, &ix->by_principal, v->principal, v->plen, v->phash, v, &best);
    if (v->ns != NULL && ix->by_ns.nkeys > 0)
        scan_bucket(p, &ix->by_ns, v->ns, v->nslen, v->nshash, v, &best);
    if (v->path != NULL && ix->by_path.nkeys > 0)
        scan_bucket(p, &ix->by_path, v->path, v->pathlen, v->pathhash, v, &best);
    if (v->path != NULL && ix->nprefix_lens > 0) {
        /* every prefix of the path whose length some pattern has */
        uint64_t h = FNV_INIT;
        size_t done = 0;
        for (uint32_t i = 0; i < ix->nprefix_lens && ix->prefix_lens[i] <= v->pathlen; i++) {
            size_t len = ix->prefix_lens[i];
            h = fnv_extend(h, v->path + done, len - done);
            done = len;
            scan_bucket(p, &ix->by_prefix, v->path, len, h, v, &best);
        }
    }
    if (v->path != NULL && ix->nsuffix_lens > 0) {
        /* every suffix likewise, hashed from the end of the path */
        uint64_t h = FNV_INIT;
        size_t done = 0;
        for (uint32_t i = 0; i < ix->nsuffix_lens && ix->suffix_lens[i] <= v->pathlen; i++) {
            size_t len = ix->suffix_lens[i];
            h = fnv_extend_rev(h, v->path + v->pathlen - len, len - done);
            done = len;
            scan_bucket(p, &ix->by_suffix, v->path + v->pathlen - len, len, h, v, &best);
        }
    }
    if (ix->by_header.nkeys > 0 && v->msg != NULL) {
        const struct px_msg *m = v->msg;
        if (m->authority != NULL)
            scan_bucket(p, &ix->by_header, AUTHORITY_KEY, strlen(AUTHORITY_KEY),
                        hash_bytes(AUTHORITY_KEY, strlen(AUTHORITY_KEY)), v, &best);
        for (uint32_t i = 0; i < m->nhdrs; i++) {
            const struct px_hdr *x = &m->hdrs[i];
            if (i > 0 && x->namelen == m->hdrs[i - 1].namelen &&
                memcmp(x->name, m->hdrs[i - 1].name, x->namelen) == 0)
                continue; /* the same name again: already looked at */
            scan_bucket(p, &ix->by_header, x->name, x->namelen, hash_bytes(x->name, x->namelen), v,
                        &best);
        }
    }
    if (ix->by_port.nkeys > 0) {
        char key[2];
        port_key(v->port, key);
        scan_bucket(p, &ix->by_port, key, 2, hash_bytes(key, 2), v, &best);
    }
    return best == UINT32_MAX ? -1 : (int64_t)best;
}

/* The same answer without the index: every rule of the action, in file order. */
static int64_t find_linear(const struct px_policy *p, bool deny, const struct view *v)
{
    for (uint32_t i = 0; i < p->nrules; i++)
        if (p->rules[i].deny == deny && rule_match(&p->rules[i], v))
            return i;
    return -1;
}

/* Does a request header name differ from a name the policy matches only by '_'
 * for '-'? An exact match with some policy name is not a clash. */
static bool underscore_clash(const struct px_policy *p, const struct px_msg *m)
{
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *x = &m->hdrs[i];
        bool us = memchr(x->name, '_', x->namelen) != NULL;
        if (!us && !(p->hdr_underscore && memchr(x->name, '-', x->namelen) != NULL))
            continue;
        uint64_t h = name_hash(x->name, x->namelen);
        if (table_has(&p->hdr_mapped, x->name, x->namelen, h, true) &&
            !table_has(&p->hdr_exact, x->name, x->namelen, h, false))
            return true;
    }
    return false;
}

static int prepare(const struct px_policy *p, const struct px_policy_request *r, char *scratch,
                   size_t scratch_len, struct view *v, struct px_policy_decision *d)
{
    const struct px_msg *m = r->tcp ? NULL : r->req;
    memset(v, 0, sizeof(*v));
    d->enforce = p->mode == PX_POLICY_ENFORCE;
    d->rule = NULL;
    d->why = NULL;
    d->path = NULL;
    d->pathlen = 0;
    v->msg = m;
    v->tcp = r->tcp;
    if (p->needs_ip)
        v->has_ip = source_bytes(r->source, v->ip, &v->ipfamily);
    v->port = r->port;
    v->mbit = method_bit(m ? m->method : NULL);
    if (r->principal != NULL && r->principal[0] != '\0') {
        v->principal = r->principal;
        v->plen = strlen(r->principal);
        v->ns = principal_ns(v->principal, v->plen, &v->nslen);
        if (p->index_principal)
            v->phash = hash_bytes(v->principal, v->plen);
        if (p->index_ns && v->ns != NULL)
            v->nshash = hash_bytes(v->ns, v->nslen);
    }
    if (m != NULL && p->hdr_mapped.nkeys > 0 && underscore_clash(p, m)) {
        d->verdict = PX_POLICY_BAD_HEADER;
        d->why = "a header name differs from one the policy matches only by '_' for '-'";
        return -1;
    }
    if (p->needs_path && !r->tcp) {
        const char *why = "path too long";
        const char *path = m && m->path ? m->path : "";
        int n = scratch != NULL ? px_policy_normalize_path(path, scratch, scratch_len, &why) : -1;
        if (n < 0) {
            d->verdict = PX_POLICY_BAD_PATH;
            d->why = why;
            return -1;
        }
        v->path = scratch;
        v->pathlen = (size_t)n;
        d->path = scratch;
        d->pathlen = (size_t)n;
        if (p->index_path)
            v->pathhash = hash_bytes(v->path, v->pathlen);
    }
    return 0;
}

static void conclude(const struct px_policy *p, int64_t deny, int64_t allow,
                     struct px_policy_decision *d)
{
    if (deny >= 0) {
        d->verdict = PX_POLICY_DENY;
        d->rule = p->rules[deny].name;
    } else if (p->nallow > 0) {
        d->verdict = allow >= 0 ? PX_POLICY_ALLOW : PX_POLICY_DENY;
        d->rule = allow >= 0 ? p->rules[allow].name : "default";
    } else {
        d->verdict = p->default_deny ? PX_POLICY_DENY : PX_POLICY_ALLOW;
        d->rule = "default";
    }
}

void px_policy_decide(const struct px_policy *p, const struct px_policy_request *r, char *scratch,
                      size_t scratch_len, struct px_policy_decision *d)
{
    struct view v;
    if (prepare(p, r, scratch, scratch_len, &v, d) != 0)
        return;
    if (v.tcp) {
        /* A connection is decided once, and the index files rules under HTTP
         * conditions a connection does not have: scan in file order. */
        int64_t tdeny = find_linear(p, true, &v);
        conclude(p, tdeny, tdeny < 0 ? find_linear(p, false, &v) : -1, d);
        return;
    }
    int64_t deny = p->ndeny ? find(p, &p->deny, &v) : -1;
    int64_t allow = deny < 0 && p->nallow ? find(p, &p->allow, &v) : -1;
    conclude(p, deny, allow, d);
}

/* px_policy_decide without the index (tests, fuzzing: the two must agree). */
static void decide_linear(const struct px_policy *p, const struct px_policy_request *r,
                          char *scratch, size_t scratch_len, struct px_policy_decision *d)
    __attribute__((unused));
static void decide_linear(const struct px_policy *p, const struct px_policy_request *r,
                          char *scratch, size_t scratch_len, struct px_policy_decision *d)
{
    struct view v;
    if (prepare(p, r, scratch, scratch_len, &v, d) != 0)
        return;
    int64_t deny = find_linear(p, true, &v);
    int64_t allow = deny < 0 ? find_linear(p, false, &v) : -1;
    conclude(p, deny, allow, d);
}

/* ---- facts ------------------------------------------------------------------------- */

enum px_policy_mode px_policy_mode(const struct px_policy *p)
{
    return p->mode;
}

bool px_policy_default_deny(const struct px_policy *p)
{
    return p->default_deny;
}

size_t px_policy_nrules(const struct px_policy *p)
{
    return p->nrules;
}

size_t px_policy_nallow(const struct px_policy *p)
{
    return p->nallow;
}

size_t px_policy_ndeny(const struct px_policy *p)
{
    return p->ndeny;
}

const char *px_policy_name(const struct px_policy *p)
{
    return p->name;
}

json_t *px_policy_source(const struct px_policy *p)
{
    return p->doc;
}

/* ---- denial counters ---------------------------------------------------------------- */

#define SERIES_SLOTS  8192 /* power of two, twice PX_POLICY_MAX_SERIES */
#define OVERFLOW_NAME "*overflow*"

struct dseries {
    char *rule;
    uint64_t enforced, audit;
};

static struct dseries *dseries; /* PX_POLICY_MAX_SERIES + 1 (the last: overflow), insertion order */
static uint32_t ndseries;
static uint32_t *dslots; /* SERIES_SLOTS: index + 1, 0 = free */

static struct dseries *series_get(const char *rule)
{
    if (dseries == NULL) {
        dseries = cm_xcalloc(PX_POLICY_MAX_SERIES + 1, sizeof(*dseries));
        dslots = cm_xcalloc(SERIES_SLOTS, sizeof(*dslots));
        dseries[0].rule = cm_xstrdup("default"); /* always shown */
        dslots[hash_bytes("default", 7) & (SERIES_SLOTS - 1)] = 1;
        ndseries = 1;
    }
    size_t n = strlen(rule);
    for (uint32_t i = (uint32_t)hash_bytes(rule, n) & (SERIES_SLOTS - 1);;
         i = (i + 1) & (SERIES_SLOTS - 1)) {
        if (dslots[i] == 0) {
            if (ndseries >= PX_POLICY_MAX_SERIES) {
                struct dseries *o = &dseries[PX_POLICY_MAX_SERIES];
                if (o->rule == NULL)
                    o->rule = cm_xstrdup(OVERFLOW_NAME);
                return o;
            }
            dseries[ndseries].rule = cm_xstrdup(rule);
            dslots[i] = ++ndseries;
            return &dseries[ndseries - 1];
        }
        struct dseries *s = &dseries[dslots[i] - 1];
        if (strcmp(s->rule, rule) == 0)
            return s;
    }
}

void px_policy_count_denial(const char *rule, bool audit)
{
    struct dseries *s = series_get(rule ? rule : "default");
    if (audit)
        s->audit++;
    else
        s->enforced++;
}

uint64_t px_policy_denials(const char *rule, bool audit)
{
    if (dseries == NULL)
        return 0;
    for (uint32_t i = 0; i <= PX_POLICY_MAX_SERIES; i++)
        if (dseries[i].rule != NULL && strcmp(dseries[i].rule, rule) == 0)
            return audit ? dseries[i].audit : dseries[i].enforced;
    return 0;
}

void px_policy_metrics_reset(void)
{
    for (uint32_t i = 0; dseries != NULL && i <= PX_POLICY_MAX_SERIES; i++)
        free(dseries[i].rule);
    free(dseries);
    free(dslots);
    dseries = NULL;
    dslots = NULL;
    ndseries = 0;
}

static void write_family(struct evbuffer *out, const char *name, const char *help, bool audit)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    if (dseries == NULL) {
        evbuffer_add_printf(out, "%s{rule=\"default\"} 0\n", name);
        return;
    }
    /* Rule names are [A-Za-z0-9._:/-]: nothing to escape in the label. */
    for (uint32_t i = 0; i <= PX_POLICY_MAX_SERIES; i++) {
        const struct dseries *s = &dseries[i];
        if (s->rule == NULL)
            continue;
        uint64_t v = audit ? s->audit : s->enforced;
        if (v == 0 && i > 0)
            continue; /* a series exists once that kind of denial happened */
        evbuffer_add_printf(out, "%s{rule=\"%s\"} %" PRIu64 "\n", name, s->rule, v);
    }
}

void px_policy_metrics_prometheus(struct evbuffer *out)
{
    write_family(out, "remora_policy_denials_total",
                 "Requests denied by the authorization policy (403) and TCP connections it "
                 "closed, by the rule that decided (rule=\"default\": no rule allowed it).",
                 false);
    write_family(out, "remora_policy_audit_denials_total",
                 "Requests and TCP connections an audit-mode policy would have denied (they were "
                 "let through), by rule.",
                 true);
}

static json_t *family_json(bool audit)
{
    json_t *o = json_object();
    json_object_set_new(o, "default", json_integer(0));
    for (uint32_t i = 0; dseries != NULL && i <= PX_POLICY_MAX_SERIES; i++) {
        const struct dseries *s = &dseries[i];
        uint64_t v = audit ? s->audit : s->enforced;
        if (s->rule != NULL && (v > 0 || i == 0))
            json_object_set_new(o, s->rule,
                                json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v));
    }
    return o;
}

void px_policy_metrics_json(json_t *stats)
{
    json_object_set_new(stats, "policy_denials", family_json(false));
    json_object_set_new(stats, "policy_audit_denials", family_json(true));
}
