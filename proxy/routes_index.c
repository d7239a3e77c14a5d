/* The routes' exact-match index (built at parse time) and px_routes_match. */
#include "proxy/routes.h"

#include <netinet/in.h>
#include <string.h>
#include <strings.h>

#include "common/xalloc.h"
#include "proxy/routes_int.h"

/* Every match kind there is (a host, an original destination address) is an
 * exact key, so "the first route in file order that matches" is the smaller
 * of two positions: the first route with this host and the first with this
 * address, each found in a hash table of first positions. A future non-exact
 * kind (a wildcard, a suffix) must keep that rule: scan only such patterns
 * placed before the exact hit. */

static inline unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* FNV-1a over the host's bytes, lower-cased (routes store hosts lower case). */
static uint64_t hash_host(const char *h, size_t n)
{
    uint64_t x = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        x = (x ^ lower((unsigned char)h[i])) * 0x100000001b3ULL;
    return x ^ (x >> 29);
}

static uint64_t hash_bytes(uint64_t x, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        x = (x ^ b[i]) * 0x100000001b3ULL;
    return x;
}

/* Hash of what cm_addr_equal compares: family, port, address. */
uint64_t px_routes_hash_addr(const struct cm_addr *a)
{
    uint64_t x = hash_bytes(0xcbf29ce484222325ULL, &a->ss.ss_family, sizeof(a->ss.ss_family));
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *v = (const void *)&a->ss;
        x = hash_bytes(x, &v->sin_port, sizeof(v->sin_port));
        x = hash_bytes(x, &v->sin_addr, sizeof(v->sin_addr));
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *v = (const void *)&a->ss;
        x = hash_bytes(x, &v->sin6_port, sizeof(v->sin6_port));
        x = hash_bytes(x, &v->sin6_addr, sizeof(v->sin6_addr));
    }
    return x ^ (x >> 29);
}

static bool host_is(const struct px_route *rt, const char *h, size_t n)
{
    return rt->match_host != NULL && strncasecmp(rt->match_host, h, n) == 0 &&
           rt->match_host[n] == '\0';
}

/* Position of the first route with host h[0..n), or SIZE_MAX. */
static size_t find_host(const struct px_routes *r, const char *h, size_t n)
{
    for (size_t i = hash_host(h, n) & r->idx_mask;; i = (i + 1) & r->idx_mask) {
        uint32_t v = r->host_idx[i];
        if (v == 0)
            return SIZE_MAX;
        if (host_is(&r->routes[v - 1], h, n))
            return v - 1;
    }
}

static size_t find_addr(const struct px_routes *r, const struct cm_addr *a)
{
    for (size_t i = px_routes_hash_addr(a) & r->idx_mask;; i = (i + 1) & r->idx_mask) {
        uint32_t v = r->addr_idx[i];
        if (v == 0)
            return SIZE_MAX;
        const struct px_route *rt = &r->routes[v - 1];
        if (rt->has_match_addr && cm_addr_equal(&rt->match_addr, a))
            return v - 1;
    }
}

/* Fill both tables in file order; a key already present keeps its first
 * route (later duplicates can never match, as with the linear scan). At most
 * half full, so a probe ends on an empty slot soon. */
void px_routes_index_build(struct px_routes *r)
{
    size_t cap = 16;
    while (cap < 2 * r->n)
        cap *= 2;
    r->idx_mask = cap - 1;
    r->host_idx = cm_xcalloc(cap, sizeof(*r->host_idx));
    r->addr_idx = cm_xcalloc(cap, sizeof(*r->addr_idx));
    for (size_t k = 0; k < r->n; k++) {
        const struct px_route *rt = &r->routes[k];
        uint32_t *tab;
        size_t i;
        if (rt->match_host != NULL) {
            size_t n = strlen(rt->match_host);
            if (find_host(r, rt->match_host, n) != SIZE_MAX)
                continue;
            tab = r->host_idx;
            i = hash_host(rt->match_host, n) & r->idx_mask;
        } else if (rt->has_match_addr) {
            if (find_addr(r, &rt->match_addr) != SIZE_MAX)
                continue;
            tab = r->addr_idx;
            i = px_routes_hash_addr(&rt->match_addr) & r->idx_mask;
        } else {
            continue;
        }
        while (tab[i] != 0)
            i = (i + 1) & r->idx_mask;
        tab[i] = (uint32_t)(k + 1);
    }
}

struct px_route *px_routes_match(struct px_routes *r, const char *authority,
                                 const struct cm_addr *orig_dst)
{
    if (r == NULL || r->n == 0)
        return NULL;
    size_t h =
        authority != NULL ? find_host(r, authority, px_routes_host_len(authority)) : SIZE_MAX;
    size_t a = orig_dst != NULL ? find_addr(r, orig_dst) : SIZE_MAX;
    size_t k = h < a ? h : a; /* the first route in file order that matches */
    return k == SIZE_MAX ? NULL : &r->routes[k];
}

struct px_route *px_routes_match_service(struct px_routes *r, const char *svc)
{
    /* only when a Service's route is built (once per answer and snapshot) */
    for (size_t i = 0; r != NULL && svc != NULL && i < r->n; i++)
        if (r->routes[i].match_service != NULL && strcmp(r->routes[i].match_service, svc) == 0)
            return &r->routes[i];
    return NULL;
}
