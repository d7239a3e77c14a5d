/* Internals shared by the policy engine's files (not an API: proxy/policy.h is).
 *   policy_compile.c  JSON -> compiled rules (patterns, conditions), load, facts
 *   policy_index.c    the rules of each action filed in hash tables
 *   policy_decide.c   a request -> a verdict, through the index
 *   policy_metrics.c  denial counters by rule (/metrics, /stats)
 *   pathnorm.c        request-target normalization (shared with authz.c through policy.h)
 *
 * Compiled form. Everything a policy owns lives in one px_arena, freed whole:
 * rule names, patterns (literal part plus a kind: exact, prefix, suffix, any),
 * methods as a bitmask, ports as sorted arrays, header conditions with
 * lower-case names. A policy is immutable once compiled, so deciding needs no
 * lock and no allocation; the only per-request buffer (the normalized path) is
 * the caller's. The small matchers and hashes below are inline: the decision
 * (hot) and the compiler and index builder (cold) use the same ones. */
#ifndef PX_POLICY_INT_H
#define PX_POLICY_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>

#include "common/net.h"
#include "proxy/http.h"
#include "proxy/policy.h"

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

static inline bool pat_match(const struct pat *p, const char *v, size_t n)
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

static inline bool plist_match(const struct plist *l, const char *v, size_t n)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (pat_match(&l->v[i], v, n))
            return true;
    return false;
}

static inline bool plist_all_exact(const struct plist *l)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (l->v[i].kind != PAT_EXACT)
            return false;
    return true;
}

/* ---- methods and ports ------------------------------------------------------------ */

/* A method outside the list: never in a `methods` mask, so only not_methods
 * (which it passes) can concern it. */
#define METHOD_OTHER (1u << 9)

static inline uint32_t method_bit(const char *m)
{
    static const char *const method_names[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                               "CONNECT", "OPTIONS", "TRACE", "PATCH", NULL};
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

static inline bool port_in(const struct portset *s, uint16_t port)
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
    bool hdr_underscore;           /* some of those names holds '_' */
    bool metrics_source_principal; /* "metrics": {"source_principal": true} (issue 18) */
};

/* Keys of the principal, namespace and exact-path tables: 8 bytes a step. */
static inline uint64_t hash_bytes(const char *s, size_t n)
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

static inline uint64_t fnv_extend(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= FNV_PRIME;
    }
    return h;
}

/* The same over s[n-1] down to s[0]: suffixes grow leftwards. */
static inline uint64_t fnv_extend_rev(uint64_t h, const char *s, size_t n)
{
    while (n > 0) {
        h ^= (unsigned char)s[--n];
        h *= FNV_PRIME;
    }
    return h;
}

/* The key under which a header condition is filed and looked up. */
#define AUTHORITY_KEY ":authority"

/* '_' read as '-': how CGI/WSGI (HTTP_X_DEBUG) see a header name. */
static inline uint64_t name_hash(const char *s, size_t n)
{
    uint64_t h = FNV_INIT;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)(s[i] == '_' ? '-' : s[i]);
        h *= FNV_PRIME;
    }
    return h;
}

static inline bool name_eq_mapped(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((a[i] == '_' ? '-' : a[i]) != (b[i] == '_' ? '-' : b[i]))
            return false;
    return true;
}

/* The bucket of t whose key equals k[0..n) (with '_' read as '-' when `mapped`),
 * or NULL. */
static inline const struct bucket *table_get(const struct table *t, const char *k, size_t n,
                                             uint64_t h, bool mapped)
{
    if (t->nkeys == 0)
        return NULL;
    for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
        const struct bucket *b = &t->b[i];
        if (b->key == NULL)
            return NULL;
        if (b->hash == h && b->len == n &&
            (mapped ? name_eq_mapped(b->key, k, n) : memcmp(b->key, k, n) == 0))
            return b;
    }
}

/* ---- path normalization ------------------------------------------------------------ */

/* Ports are keyed by their two bytes, big-endian. */
static inline void port_key(uint16_t port, char key[2])
{
    key[0] = (char)(port >> 8);
    key[1] = (char)(port & 0xff);
}

/* ---- between the files ------------------------------------------------------------- */

/* policy_index.c: file the compiled rules of p into p->deny and p->allow, build
 * the header-name tables of the underscore check, and set p->index_*. Allocates
 * in p's arena only; called once by px_policy_compile. */
void px_policy_index_build(struct px_policy *p);

/* The request, as rules look at it; computed once per decision. */
struct px_policy_view {
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

/* policy_decide.c, the steps of px_policy_decide (test/unit/proxy/policy_oracle.h
 * puts them together without the index):
 * px_policy_prepare fills *v and resets *d; it returns -1 when the request is
 * refused before any rule (d->verdict BAD_HEADER or BAD_PATH), else 0.
 * px_policy_find_linear is the first rule of the action (deny or allow) in file
 * order that matches, or -1; px_policy_conclude turns the first deny and allow
 * rules found (-1: none) into the verdict. */
int px_policy_prepare(const struct px_policy *p, const struct px_policy_request *r, char *scratch,
                      size_t scratch_len, struct px_policy_view *v, struct px_policy_decision *d);
int64_t px_policy_find_linear(const struct px_policy *p, bool deny, const struct px_policy_view *v);
void px_policy_conclude(const struct px_policy *p, int64_t deny, int64_t allow,
                        struct px_policy_decision *d);

/* ---- source addresses (policy_decide.c; its fuzz target's reference too) ---- */

/* The source address as 16 bytes and a family (IPv4-mapped IPv6 as IPv4);
 * false when it is neither. */
static inline bool px_policy_source_bytes(const struct cm_addr *a, uint8_t out[16], uint8_t *family)
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

static inline bool px_policy_cidr_match(const struct cidrset *s, const uint8_t ip[16],
                                        uint8_t family)
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

#endif
