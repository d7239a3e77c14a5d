#include "proxy/routes.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <math.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/json.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/admin.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/server.h"
#include "proxy/watch.h"

#define BUDGET_FLOOR                                                                               \
    10 /* retries always allowed per 10 s window: a cold start or a                                \
        * burst right after an endpoint dies must not fail requests */

static struct {
    char *file;
    struct px_routes *cur;
    struct px_ep_state *states; /* every endpoint address ever seen */
    uint64_t ejections_total;
    uint64_t eject_gen; /* bumped when an ejection starts: LB views rebuild */
    int64_t loaded_at;
    struct px_watch watch; /* routes_file, and the last failed load */
} R;

/* ---- endpoint state ------------------------------------------------------------ */

static struct px_ep_state *state_for(const struct cm_addr *a)
{
    for (struct px_ep_state *s = R.states; s != NULL; s = s->next)
        if (cm_addr_equal(&s->addr, a))
            return s;
    struct px_ep_state *s = cm_xcalloc(1, sizeof(*s));
    s->addr = *a;
    s->next = R.states;
    R.states = s;
    return s;
}

static bool ejected(const struct px_ep_state *s, uint64_t now)
{
    return s->ejected_until_ms > now;
}

/* ---- parsing ---------------------------------------------------------------------- */

/* Length of a Host value without its ":port" (digits only; "[v6]:port" too). */
static size_t host_len(const char *h)
{
    size_t n = strlen(h);
    const char *colon = strrchr(h, ':');
    if (colon == NULL || (h[0] == '[' && strchr(colon, ']') != NULL))
        return n;
    if (h[0] != '[' && strchr(h, ':') != colon)
        return n; /* a bare IPv6 address: no port to strip */
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return n;
    if (colon[1] == '\0')
        return n;
    return (size_t)(colon - h);
}

static void routes_free(struct px_routes *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++) {
        struct px_route *rt = &r->routes[i];
        for (size_t k = 0; k < rt->neps; k++) {
            free(rt->eps[k].cluster);
            free(rt->eps[k].identity);
        }
        free(rt->eps);
        free(rt->lb_order);
        free(rt->name);
        free(rt->match_host);
    }
    free(r->routes);
    free(r->host_idx);
    free(r->addr_idx);
    json_decref(r->raw);
    free(r);
}

struct px_routes *px_routes_ref(struct px_routes *r)
{
    if (r != NULL)
        r->refs++;
    return r;
}

void px_routes_unref(struct px_routes *r)
{
    if (r != NULL && --r->refs == 0)
        routes_free(r);
}

struct px_routes *px_routes_current(void)
{
    return R.cur;
}

static int parse_retry_on(const struct cm_jpath *p, json_t *arr, struct px_route *rt, char **errmsg)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return cm_json_fail(p, errmsg, "expected a non-empty array");
    rt->retry_on = 0;
    rt->nretry_codes = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        struct cm_jpath c;
        cm_jpath_index(&c, p, i);
        const char *s = json_string_value(v);
        if (s == NULL)
            return cm_json_fail(&c, errmsg, "expected a string");
        if (strcmp(s, "connect-failure") == 0)
            rt->retry_on |= PX_RETRY_CONNECT_FAILURE;
        else if (strcmp(s, "reset") == 0)
            rt->retry_on |= PX_RETRY_RESET;
        else if (strcmp(s, "5xx") == 0)
            rt->retry_on |= PX_RETRY_5XX;
        else if (strcmp(s, "gateway-error") == 0)
            rt->retry_on |= PX_RETRY_GATEWAY;
        else {
            char *end;
            long code = strtol(s, &end, 10);
            if (*s == '\0' || *end != '\0' || code < 100 || code > 599)
                return cm_json_fail(&c, errmsg,
                                    "\"%s\" is not connect-failure, reset, 5xx, gateway-error "
                                    "or a status code",
                                    s);
            if (rt->nretry_codes >= sizeof(rt->retry_codes) / sizeof(rt->retry_codes[0]))
                return cm_json_fail(&c, errmsg, "at most 8 status codes");
            rt->retry_codes[rt->nretry_codes++] = (int)code;
        }
    }
    return 0;
}

static int get_u32(const struct cm_jpath *p, json_t *o, const char *key, int64_t min, int64_t max,
                   uint32_t *out, char **errmsg)
{
    int64_t v = *out;
    if (cm_json_get_int(p, o, key, false, min, max, &v, errmsg) != 0)
        return CM_ERR_INVAL;
    *out = (uint32_t)v;
    return 0;
}

static int parse_route(const struct cm_jpath *p, json_t *o, struct px_route *rt, size_t idx,
                       char **errmsg)
{
    static const char *const keys[] = {"name",      "match",   "timeout_ms",       "retries",
                                       "endpoints", "outlier", "circuit_breakers", NULL};
    static const char *const cbkeys[] = {"max_connections", "max_pending_requests",
                                         "pending_timeout_ms", "max_requests_per_connection", NULL};
    static const char *const mkeys[] = {"host", "address", NULL};
    static const char *const rkeys[] = {"attempts",       "per_try_timeout_ms", "on",
                                        "budget_percent", "backoff_base_ms",    NULL};
    static const char *const okeys[] = {"consecutive_failures", "base_ejection_ms", NULL};
    static const char *const ekeys[] = {"address", "cluster", "weight", "identity", NULL};
    struct cm_jpath c;
    if (!json_is_object(o))
        return cm_json_fail(p, errmsg, "expected an object");
    if (cm_json_check_keys(p, o, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    const char *name = NULL;
    if (cm_json_get_string(p, o, "name", false, &name, errmsg) != 0)
        return CM_ERR_INVAL;
    rt->name = name ? cm_xstrdup(name) : cm_xasprintf("routes[%zu]", idx);
    /* defaults: one try, no timeout, Envoy-like outlier settings */
    rt->attempts = 1;
    rt->retry_on = PX_RETRY_CONNECT_FAILURE | PX_RETRY_RESET;
    rt->budget_percent = 20;
    rt->backoff_base_ms = 10;
    rt->outlier_failures = 5;
    rt->outlier_base_ms = 30000;
    rt->cb.max_connections = rt->cb.max_pending_requests = PX_BREAKER_UNSET;
    rt->cb.pending_timeout_ms = rt->cb.max_requests_per_connection = PX_BREAKER_UNSET;

    json_t *m = NULL;
    if (cm_json_get_child(p, o, "match", true, JSON_OBJECT, &m, errmsg) != 0)
        return CM_ERR_INVAL;
    cm_jpath_key(&c, p, "match");
    if (cm_json_check_keys(&c, m, mkeys, errmsg) != 0)
        return CM_ERR_INVAL;
    const char *host = NULL, *addr = NULL;
    if (cm_json_get_string(&c, m, "host", false, &host, errmsg) != 0 ||
        cm_json_get_string(&c, m, "address", false, &addr, errmsg) != 0)
        return CM_ERR_INVAL;
    if ((host == NULL) == (addr == NULL))
        return cm_json_fail(&c, errmsg, "give exactly one of \"host\" or \"address\"");
    if (host != NULL) {
        if (host[0] == '\0' || strlen(host) > 253)
            return cm_json_fail(&c, errmsg, "host must be 1..253 characters");
        rt->match_host = cm_xstrndup(host, host_len(host)); /* "port ignored" */
        for (char *q = rt->match_host; *q; q++) {
            if (*q >= 'A' && *q <= 'Z')
                *q = (char)(*q + 32);
            if (*q == ':' && rt->match_host[0] != '[' && strchr(q + 1, ':') == NULL &&
                strchr(rt->match_host, ':') == q) {
                struct cm_jpath h;
                cm_jpath_key(&h, &c, "host");
                return cm_json_fail(&h, errmsg, "\"%s\" is not a host[:port]", host);
            }
        }
        if (host_len(rt->match_host) != strlen(rt->match_host)) {
            /* "[a:1:2" would keep a ":port" after stripping one: no request could match it */
            struct cm_jpath h;
            cm_jpath_key(&h, &c, "host");
            return cm_json_fail(&h, errmsg, "\"%s\" is not a host[:port]", host);
        }
    } else if (cm_addr_parse(addr, &rt->match_addr) != 0) {
        struct cm_jpath a;
        cm_jpath_key(&a, &c, "address");
        return cm_json_fail(&a, errmsg, "\"%s\" is not an address (ip:port)", addr);
    } else {
        rt->has_match_addr = true;
    }

    if (get_u32(p, o, "timeout_ms", 0, 86400000, &rt->timeout_ms, errmsg) != 0)
        return CM_ERR_INVAL;
    json_t *r = NULL;
    if (cm_json_get_child(p, o, "retries", false, JSON_OBJECT, &r, errmsg) != 0)
        return CM_ERR_INVAL;
    if (r != NULL) {
        cm_jpath_key(&c, p, "retries");
        if (cm_json_check_keys(&c, r, rkeys, errmsg) != 0 ||
            get_u32(&c, r, "attempts", 1, 10, &rt->attempts, errmsg) != 0 ||
            get_u32(&c, r, "per_try_timeout_ms", 0, 86400000, &rt->per_try_timeout_ms, errmsg) !=
                0 ||
            get_u32(&c, r, "budget_percent", 0, 100, &rt->budget_percent, errmsg) != 0 ||
            get_u32(&c, r, "backoff_base_ms", 0, 10000, &rt->backoff_base_ms, errmsg) != 0)
            return CM_ERR_INVAL;
        json_t *on = json_object_get(r, "on");
        if (on != NULL) {
            struct cm_jpath onp;
            cm_jpath_key(&onp, &c, "on");
            if (parse_retry_on(&onp, on, rt, errmsg) != 0)
                return CM_ERR_INVAL;
        }
    }
    json_t *ol = NULL;
    if (cm_json_get_child(p, o, "outlier", false, JSON_OBJECT, &ol, errmsg) != 0)
        return CM_ERR_INVAL;
    if (ol != NULL) {
        cm_jpath_key(&c, p, "outlier");
        if (cm_json_check_keys(&c, ol, okeys, errmsg) != 0 ||
            get_u32(&c, ol, "consecutive_failures", 0, 1000, &rt->outlier_failures, errmsg) != 0 ||
            get_u32(&c, ol, "base_ejection_ms", 1, 86400000, &rt->outlier_base_ms, errmsg) != 0)
            return CM_ERR_INVAL;
    }
    json_t *cbo = NULL;
    if (cm_json_get_child(p, o, "circuit_breakers", false, JSON_OBJECT, &cbo, errmsg) != 0)
        return CM_ERR_INVAL;
    if (cbo != NULL) {
        cm_jpath_key(&c, p, "circuit_breakers");
        if (cm_json_check_keys(&c, cbo, cbkeys, errmsg) != 0 ||
            px_breakers_parse(&c, cbo, "", &rt->cb, errmsg) != 0)
            return CM_ERR_INVAL;
    }
    json_t *eps = NULL;
    if (cm_json_get_child(p, o, "endpoints", true, JSON_ARRAY, &eps, errmsg) != 0)
        return CM_ERR_INVAL;
    cm_jpath_key(&c, p, "endpoints");
    size_t n = json_array_size(eps);
    if (n == 0 || n > 4096)
        return cm_json_fail(&c, errmsg, "1 to 4096 endpoints");
    rt->eps = cm_xcalloc(n, sizeof(*rt->eps));
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath e;
        cm_jpath_index(&e, &c, i);
        json_t *eo = json_array_get(eps, i);
        const char *ea = NULL, *cl = NULL, *id = NULL;
        uint32_t w = 1;
        if (!json_is_object(eo))
            return cm_json_fail(&e, errmsg, "expected an object");
        if (cm_json_check_keys(&e, eo, ekeys, errmsg) != 0 ||
            cm_json_get_string(&e, eo, "address", true, &ea, errmsg) != 0 ||
            cm_json_get_string(&e, eo, "cluster", false, &cl, errmsg) != 0 ||
            cm_json_get_string(&e, eo, "identity", false, &id, errmsg) != 0 ||
            get_u32(&e, eo, "weight", 1, 10000, &w, errmsg) != 0)
            return CM_ERR_INVAL;
        if (id != NULL) {
            /* secure naming: the workload the endpoint must prove it is */
            char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX];
            char *why = NULL;
            if (strlen(id) >= PKI_SPIFFE_MAX || pki_spiffe_parse(id, td, ns, sa, &why) != 0) {
                struct cm_jpath k;
                cm_jpath_key(&k, &e, "identity");
                int rc = cm_json_fail(&k, errmsg,
                                      "\"%s\" is not a SPIFFE ID "
                                      "(spiffe://TRUST_DOMAIN/ns/NS/sa/SA)%s%s",
                                      id, why ? ": " : "", why ? why : "");
                free(why);
                return rc;
            }
        }
        struct px_endpoint *ep = &rt->eps[rt->neps];
        if (cm_addr_parse(ea, &ep->addr) != 0) {
            struct cm_jpath a;
            cm_jpath_key(&a, &e, "address");
            return cm_json_fail(&a, errmsg, "\"%s\" is not an address (ip:port)", ea);
        }
        ep->cluster = cl ? cm_xstrdup(cl) : NULL;
        ep->identity = id ? cm_xstrdup(id) : NULL;
        ep->weight = w;
        rt->neps++;
    }
    if (rt->per_try_timeout_ms > 0 && rt->timeout_ms > 0 &&
        rt->per_try_timeout_ms > rt->timeout_ms) {
        cm_jpath_key(&c, p, "retries");
        cm_jpath_key(&c, &c, "per_try_timeout_ms");
        return cm_json_fail(&c, errmsg, "longer than the route's timeout_ms");
    }
    return 0;
}

/* ---- the exact-match index -------------------------------------------------------- */

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
static uint64_t hash_addr(const struct cm_addr *a)
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
    for (size_t i = hash_addr(a) & r->idx_mask;; i = (i + 1) & r->idx_mask) {
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
static void build_index(struct px_routes *r)
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
            i = hash_addr(&rt->match_addr) & r->idx_mask;
        } else {
            continue;
        }
        while (tab[i] != 0)
            i = (i + 1) & r->idx_mask;
        tab[i] = (uint32_t)(k + 1);
    }
}

int px_routes_parse(const char *name, const char *buf, size_t len, struct px_routes **out,
                    char **errmsg)
{
    json_t *root;
    if (cm_json_load_buf(name, buf, len, true, &root, errmsg) != 0)
        return CM_ERR_INVAL;
    struct px_routes *r = cm_xcalloc(1, sizeof(*r));
    r->refs = 1;
    r->raw = root;
    struct cm_jpath p, c;
    cm_jpath_root(&p, name);
    static const char *const keys[] = {"routes", NULL};
    json_t *arr = NULL;
    if (cm_json_check_keys(&p, root, keys, errmsg) != 0 ||
        cm_json_get_child(&p, root, "routes", true, JSON_ARRAY, &arr, errmsg) != 0)
        goto fail;
    cm_jpath_key(&c, &p, "routes");
    size_t n = json_array_size(arr);
    if (n > 10000) {
        cm_json_fail(&c, errmsg, "at most 10000 routes");
        goto fail;
    }
    r->routes = cm_xcalloc(n ? n : 1, sizeof(*r->routes));
    for (size_t i = 0; i < n; i++) {
        struct cm_jpath ri;
        cm_jpath_index(&ri, &c, i);
        r->n = i + 1; /* what was (partly) filled is freed on failure */
        if (parse_route(&ri, json_array_get(arr, i), &r->routes[i], i, errmsg) != 0)
            goto fail;
    }
    build_index(r);
    *out = r;
    return 0;
fail:
    routes_free(r);
    return CM_ERR_INVAL;
}

/* Attach the shared health records (only for snapshots that go live). */
static void bind_states(struct px_routes *r)
{
    for (size_t i = 0; i < r->n; i++)
        for (size_t k = 0; k < r->routes[i].neps; k++)
            r->routes[i].eps[k].st = state_for(&r->routes[i].eps[k].addr);
}

/* ---- matching and picking --------------------------------------------------------- */

struct px_route *px_routes_match(struct px_routes *r, const char *authority,
                                 const struct cm_addr *orig_dst)
{
    if (r == NULL || r->n == 0)
        return NULL;
    size_t h = authority != NULL ? find_host(r, authority, host_len(authority)) : SIZE_MAX;
    size_t a = orig_dst != NULL ? find_addr(r, orig_dst) : SIZE_MAX;
    size_t k = h < a ? h : a; /* the first route in file order that matches */
    return k == SIZE_MAX ? NULL : &r->routes[k];
}

/* Load balancing needs spread, not secrecy: xorshift64* seeded once from the
 * CSPRNG (two CTR_DRBG draws cost more than the rest of a pick). */
static uint32_t rnd(void)
{
    static uint64_t x;
    if (x == 0) {
        pki_rng_fn(NULL, (unsigned char *)&x, sizeof(x));
        x |= 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* ---- latency-aware cost (peak-EWMA, as linkerd2-proxy balances) ------------------ */

/* Time constant of the decay toward 0. Linkerd's is 10 s, but its samples
 * start on a ready connection; ours include setting up a fresh upstream
 * connection (and its TLS handshake), so first samples are often peaks, as
 * are scheduling hiccups on a busy node. With 10 s one such peak kept an
 * endpoint nearly idle for a whole benchmark run (perf/sec-failure.sh: the
 * victims got 1, 7 and 95 of 3,000 requests; 450-850 with 2 s); with 2 s it
 * fades in seconds, while a 200 ms timeout still keeps an endpoint of
 * 0.2 ms peers out for ~14 s at low load. */
#define LAT_DECAY_US   2e6
#define LAT_ALPHA      0.2  /* weight of a sample faster than the estimate */
#define LAT_DEFAULT_MS 1.0  /* a route none of whose endpoints was ever measured */
#define LAT_FLOOR_MS   1e-3 /* a decayed estimate never reaches 0: load still counts */

/* The EWMA decayed to now: an endpoint nobody sends to loses its penalty. */
static double decayed_ms(const struct px_ep_state *st, uint64_t now_us)
{
    if (now_us <= st->ewma_at_us)
        return st->ewma_ms;
    return st->ewma_ms * exp(-(double)(now_us - st->ewma_at_us) / LAT_DECAY_US);
}

/* What we believe of st's latency from its samples; never measured: the
 * route's typical latency (a new endpoint competes as an average one). */
static double believed_ms(const struct px_route *rt, const struct px_ep_state *st, uint64_t now_us)
{
    if (st->ewma_at_us == 0)
        return rt->lat_typical_ms > 0 ? rt->lat_typical_ms : LAT_DEFAULT_MS;
    return decayed_ms(st, now_us);
}

/* The balancer's latency estimate: the belief, raised to how long st has gone
 * without a response while it has requests outstanding (a hung endpoint
 * becomes expensive within its first milliseconds, not after its timeouts). */
static double estimate_ms(const struct px_route *rt, const struct px_ep_state *st, uint64_t now_us)
{
    double est = believed_ms(rt, st, now_us);
    if (st->outstanding > 0 && now_us > st->progress_us) {
        double stalled = (double)(now_us - st->progress_us) / 1000.0;
        if (stalled > est)
            est = stalled;
    }
    return est > LAT_FLOOR_MS ? est : LAT_FLOOR_MS;
}

/* lower is better: latency estimate x (outstanding + 1) / weight */
static double cost_of(const struct px_route *rt, const struct px_endpoint *e, uint64_t now_us)
{
    return estimate_ms(rt, e->st, now_us) * ((double)e->st->outstanding + 1.0) / (double)e->weight;
}

/* One latency sample. Peak-EWMA: a slower sample is believed at once, a
 * faster one moves the estimate by LAT_ALPHA; a failure's (a timeout's)
 * duration only ever raises it. */
static void observe(struct px_route *rt, struct px_ep_state *st, double ms, bool failure,
                    uint64_t now_us)
{
    double cur = believed_ms(rt, st, now_us);
    if (ms > cur || (st->ewma_at_us == 0 && !failure))
        st->ewma_ms = ms;
    else if (!failure)
        st->ewma_ms = cur + LAT_ALPHA * (ms - cur);
    else
        st->ewma_ms = cur;
    st->ewma_at_us = now_us > 0 ? now_us : 1;
    if (!failure)
        rt->lat_typical_ms =
            rt->lat_typical_ms > 0 ? rt->lat_typical_ms + 0.1 * (ms - rt->lat_typical_ms) : ms;
}

void px_route_try_start(struct px_endpoint *ep)
{
    struct px_ep_state *st = ep->st;
    if (st->outstanding++ == 0)
        st->progress_us = cm_mono_us(); /* busy from now: the stall clock starts */
}

void px_route_try_head(struct px_route *rt, struct px_endpoint *ep, uint64_t latency_us)
{
    uint64_t now = cm_mono_us();
    ep->st->progress_us = now;
    observe(rt, ep->st, (double)latency_us / 1000.0, false, now);
}

void px_route_try_abandon(struct px_endpoint *ep)
{
    if (ep->st->outstanding > 0)
        ep->st->outstanding--;
}

static bool avoided(const struct px_ep_state *st, const struct px_ep_state *const *avoid, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (avoid[i] == st)
            return true;
    return false;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A new snapshot's neutral estimate: the median of its endpoints' estimates
 * (their records outlive reloads), so a new address competes as a typical one. */
static void seed_typical(struct px_route *rt, uint64_t now_us)
{
    double *v = cm_xcalloc(rt->neps, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < rt->neps; i++)
        if (rt->eps[i].st->ewma_at_us != 0)
            v[n++] = decayed_ms(rt->eps[i].st, now_us);
    if (n > 0) {
        qsort(v, n, sizeof(*v), cmp_double);
        rt->lat_typical_ms = v[(n - 1) / 2]; /* the lower middle one: new ones get tried */
    }
    free(v);
}

/* Rebuild rt's LB view: rank endpoints against our locality (once per
 * snapshot and locality), then order them healthy local, healthy remote,
 * ejected, and note when the first ejection ends. O(endpoints), only after an
 * ejection started (R.eject_gen) or ended (lb_until_ms). */
static void lb_refresh(struct px_route *rt, uint64_t now, const char *local)
{
    if (rt->lb_order == NULL) {
        rt->lb_order = cm_xcalloc(rt->neps, sizeof(*rt->lb_order));
        if (rt->lat_typical_ms == 0)
            seed_typical(rt, now * 1000);
    }
    if (rt->lb_order[0] == NULL || rt->lb_cluster != local) {
        for (size_t i = 0; i < rt->neps; i++) {
            struct px_endpoint *e = &rt->eps[i];
            e->local = local == NULL || (e->cluster != NULL && strcmp(e->cluster, local) == 0);
        }
        rt->lb_cluster = local;
    }
    size_t n = 0;
    uint64_t until = UINT64_MAX;
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < rt->neps; i++) {
            struct px_endpoint *e = &rt->eps[i];
            bool ej = ejected(e->st, now);
            if (pass == 0 ? !ej && e->local : pass == 1 ? !ej && !e->local : ej)
                rt->lb_order[n++] = e;
            if (pass == 0 && ej && e->st->ejected_until_ms < until)
                until = e->st->ejected_until_ms;
        }
        if (pass == 0)
            rt->lb_nlocal = n;
        else if (pass == 1)
            rt->lb_nhealthy = n;
    }
    rt->lb_gen = R.eject_gen;
    rt->lb_until_ms = until;
}

/* Power of two choices among c[0..n), n >= 1: two distinct random ones, the
 * cheaper wins. */
static struct px_endpoint *p2c(const struct px_route *rt, struct px_endpoint *const *c, size_t n,
                               uint64_t now_us)
{
    if (n == 1)
        return c[0];
    size_t i = rnd() % n, j = rnd() % (n - 1);
    if (j >= i)
        j++;
    return cost_of(rt, c[i], now_us) <= cost_of(rt, c[j], now_us) ? c[i] : c[j];
}

/* P2C among the endpoints of c[0..n) not in avoid (a retry), or NULL when all
 * are. navoid <= 10, so in a large tier random draws almost always miss the
 * avoided ones; a small tier is filtered instead. */
static struct px_endpoint *p2c_avoiding(const struct px_route *rt, struct px_endpoint *const *c,
                                        size_t n, const struct px_ep_state *const *avoid,
                                        size_t navoid, uint64_t now_us)
{
    static struct px_endpoint *cand[4096]; /* single-threaded; routes hold <= 4096 */
    if (n > 4 * navoid + 8) {
        struct px_endpoint *a = NULL, *b = NULL;
        for (int tries = 0; tries < 64 && b == NULL; tries++) {
            struct px_endpoint *e = c[rnd() % n];
            if (e == a || avoided(e->st, avoid, navoid))
                continue;
            if (a == NULL)
                a = e;
            else
                b = e;
        }
        if (b != NULL)
            return cost_of(rt, a, now_us) <= cost_of(rt, b, now_us) ? a : b;
        /* unlucky draws (or duplicate addresses): filter */
    }
    size_t nc = 0;
    for (size_t i = 0; i < n; i++)
        if (!avoided(c[i]->st, avoid, navoid))
            cand[nc++] = c[i];
    return nc == 0 ? NULL : p2c(rt, cand, nc, now_us);
}

struct px_endpoint *px_route_pick(struct px_route *rt, const struct px_ep_state *const *avoid,
                                  size_t navoid)
{
    uint64_t now_us = cm_mono_us(), now = now_us / 1000;
    const char *local = px_srv != NULL ? px_srv->cfg->cluster : NULL;
    if (rt->lb_order == NULL || rt->lb_gen != R.eject_gen || now >= rt->lb_until_ms ||
        rt->lb_cluster != local)
        lb_refresh(rt, now, local);
    /* tiers, each a prefix of lb_order: healthy and local (or no locality),
     * healthy anywhere (failover), everything (all ejected: a guess beats a
     * certain failure) */
    const size_t tier[3] = {rt->lb_nlocal, rt->lb_nhealthy, rt->neps};
    for (int t = 0; t < 3; t++) {
        if (tier[t] == 0 || (t > 0 && tier[t] == tier[t - 1]))
            continue; /* empty, or the same set as the tier before */
        if (navoid == 0)
            return p2c(rt, rt->lb_order, tier[t], now_us);
        struct px_endpoint *e = p2c_avoiding(rt, rt->lb_order, tier[t], avoid, navoid, now_us);
        if (e != NULL)
            return e;
    }
    /* only endpoints this request already tried are left: any of them */
    return &rt->eps[rnd() % rt->neps];
}

static size_t healthy_count(const struct px_route *rt, uint64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < rt->neps; i++)
        if (!ejected(rt->eps[i].st, now))
            n++;
    return n;
}

void px_route_report(struct px_route *rt, struct px_endpoint *ep, enum px_try_outcome o,
                     uint64_t latency_us)
{
    struct px_ep_state *st = ep->st;
    uint64_t now_us = cm_mono_us();
    st->requests++;
    if (st->outstanding > 0)
        st->outstanding--;
    st->progress_us = now_us;
    /* Of the failures before a response head only a timeout's duration is a
     * latency sample: a refusal or a reset (a process dying with requests in
     * flight) says nothing of speed, and making such an endpoint look slow
     * would starve outlier detection of the failures that eject it. */
    if (latency_us > 0 && (o == PX_TRY_OK || o == PX_TRY_TIMEOUT))
        observe(rt, st, (double)latency_us / 1000.0, o != PX_TRY_OK, now_us);
    switch (o) {
    case PX_TRY_OK:
        st->successes++;
        st->consecutive_failures = 0;
        return;
    case PX_TRY_CONNECT:
        st->fail_connect++;
        break;
    case PX_TRY_RESET:
        st->fail_reset++;
        break;
    case PX_TRY_TIMEOUT:
        st->fail_timeout++;
        break;
    case PX_TRY_5XX:
        st->fail_5xx++;
        break;
    }
    st->consecutive_failures++;
    uint64_t now = now_us / 1000;
    if (rt->outlier_failures == 0 || st->consecutive_failures < rt->outlier_failures ||
        ejected(st, now))
        return;
    /* never eject the last healthy endpoint of the set */
    if (healthy_count(rt, now) <= 1)
        return;
    st->ejections++;
    st->ejected_until_ms = now + (uint64_t)rt->outlier_base_ms * st->ejections;
    st->consecutive_failures = 0;
    R.ejections_total++;
    R.eject_gen++;
    char a[CM_ADDR_STRLEN];
    cm_warn("route %s: endpoint %s ejected for %u ms (ejection %u)", rt->name,
            cm_addr_format(&st->addr, a, sizeof(a)), rt->outlier_base_ms * st->ejections,
            st->ejections);
}

void px_route_breakers(const struct px_route *rt, struct px_breakers *cb)
{
    if (rt->cb.max_connections != PX_BREAKER_UNSET)
        cb->max_connections = rt->cb.max_connections;
    if (rt->cb.max_pending_requests != PX_BREAKER_UNSET)
        cb->max_pending_requests = rt->cb.max_pending_requests;
    if (rt->cb.pending_timeout_ms != PX_BREAKER_UNSET)
        cb->pending_timeout_ms = rt->cb.pending_timeout_ms;
    if (rt->cb.max_requests_per_connection != PX_BREAKER_UNSET)
        cb->max_requests_per_connection = rt->cb.max_requests_per_connection;
}

bool px_route_retry_on(const struct px_route *rt, enum px_try_outcome o, int status)
{
    switch (o) {
    case PX_TRY_CONNECT:
        return (rt->retry_on & PX_RETRY_CONNECT_FAILURE) != 0;
    case PX_TRY_RESET:
        return (rt->retry_on & PX_RETRY_RESET) != 0;
    case PX_TRY_TIMEOUT:
        return (rt->retry_on & (PX_RETRY_5XX | PX_RETRY_RESET)) != 0;
    case PX_TRY_5XX:
        if (rt->retry_on & PX_RETRY_5XX)
            return status >= 500;
        if ((rt->retry_on & PX_RETRY_GATEWAY) && (status == 502 || status == 503 || status == 504))
            return true;
        for (unsigned i = 0; i < rt->nretry_codes; i++)
            if (rt->retry_codes[i] == status)
                return true;
        return false;
    default:
        return false;
    }
}

/* The budget window: 10 one-second buckets, stale ones cleared lazily. */
static unsigned bucket(struct px_route *rt)
{
    uint64_t sec = cm_mono_ms() / 1000;
    unsigned i = (unsigned)(sec % 10);
    if (rt->budget_sec[i] != sec) {
        rt->budget_sec[i] = sec;
        rt->budget_req[i] = rt->budget_retry[i] = 0;
    }
    return i;
}

void px_route_budget_request(struct px_route *rt)
{
    rt->budget_req[bucket(rt)]++;
}

bool px_route_budget_retry(struct px_route *rt)
{
    unsigned cur = bucket(rt);
    uint64_t sec = cm_mono_ms() / 1000;
    uint64_t req = 0, retry = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (rt->budget_sec[i] + 10 <= sec)
            continue;
        req += rt->budget_req[i];
        retry += rt->budget_retry[i];
    }
    uint64_t allowed = req * rt->budget_percent / 100;
    if (allowed < BUDGET_FLOOR)
        allowed = BUDGET_FLOOR;
    if (retry >= allowed)
        return false;
    rt->budget_retry[cur]++;
    return true;
}

/* ---- loading, reload, watch --------------------------------------------------------- */

int px_routes_load_file(const char *file, struct px_routes **out, char **errmsg)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    if (pki_read_file(file, 16 * 1024 * 1024, &buf, &len, errmsg) != 0)
        return CM_ERR_INVAL;
    int rc = px_routes_parse(file, (const char *)buf, len, out, errmsg);
    free(buf);
    return rc;
}

static int load(char **errmsg)
{
    struct px_routes *r = NULL;
    int rc = px_routes_load_file(R.file, &r, errmsg);
    if (rc != 0)
        return rc;
    bind_states(r);
    px_routes_unref(R.cur);
    R.cur = r;
    R.loaded_at = cm_wall_s();
    cm_watch_set_error(&R.watch.files, NULL);
    cm_info("routes: loaded %zu routes from %s", r->n, R.file);
    return 0;
}

int px_routes_reload(char **errmsg)
{
    if (R.file == NULL)
        return 0;
    char *e = NULL;
    if (load(&e) != 0) {
        cm_watch_set_error(&R.watch.files, "%s", e);
        cm_warn("routes: reload failed, keeping the last good routes: %s", e);
        if (errmsg != NULL)
            *errmsg = e;
        else
            free(e);
        return CM_ERR_INVAL;
    }
    return 0;
}

static void on_watch(void *arg, bool gone)
{
    (void)arg;
    if (!gone) /* gone: the watch said so; the routes in force stay */
        px_routes_reload(NULL);
}

int px_routes_start(const struct px_config *cfg, char **errmsg)
{
    if (cfg->routes_file == NULL)
        return 0;
    px_metrics_register(px_routes_write_prometheus);
    R.file = cm_xstrdup(cfg->routes_file);
    const char *path = R.file;
    px_watch_start(&R.watch, "routes", px_srv->base, &path, 1, on_watch, NULL);
    if (load(errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

void px_routes_shutdown(void)
{
    px_watch_stop(&R.watch);
    px_routes_unref(R.cur);
    while (R.states != NULL) {
        struct px_ep_state *n = R.states->next;
        free(R.states);
        R.states = n;
    }
    free(R.file);
    memset(&R, 0, sizeof(R));
}

/* ---- admin and metrics ---------------------------------------------------------------- */

static json_t *endpoint_json(const struct px_route *rt, const struct px_endpoint *e, uint64_t now,
                             uint64_t now_us)
{
    char a[CM_ADDR_STRLEN];
    const struct px_ep_state *s = e->st;
    json_t *o = json_object();
    json_object_set_new(o, "address", json_string(cm_addr_format(&e->addr, a, sizeof(a))));
    json_object_set_new(o, "cluster", e->cluster ? json_string(e->cluster) : json_null());
    json_object_set_new(o, "identity", e->identity ? json_string(e->identity) : json_null());
    json_object_set_new(o, "weight", json_integer(e->weight));
    bool ej = ejected(s, now);
    json_object_set_new(o, "health", json_string(ej ? "ejected" : "healthy"));
    json_object_set_new(o, "ejected_for_ms",
                        json_integer(ej ? (json_int_t)(s->ejected_until_ms - now) : 0));
    json_object_set_new(o, "ejections", json_integer(s->ejections));
    json_object_set_new(o, "consecutive_failures", json_integer(s->consecutive_failures));
    json_object_set_new(o, "outstanding", json_integer(s->outstanding));
    json_object_set_new(o, "requests", json_integer((json_int_t)s->requests));
    json_object_set_new(o, "successes", json_integer((json_int_t)s->successes));
    json_t *f = json_pack("{s:I, s:I, s:I, s:I}", "connect", (json_int_t)s->fail_connect, "reset",
                          (json_int_t)s->fail_reset, "timeout", (json_int_t)s->fail_timeout, "5xx",
                          (json_int_t)s->fail_5xx);
    json_object_set_new(o, "failures", f);
    /* the balancer's view: the EWMA decayed to now, the estimate it uses
     * (never measured: the route's typical latency; raised to the stall) */
    json_object_set_new(o, "latency_ewma_ms",
                        json_real(s->ewma_at_us != 0 ? decayed_ms(s, now_us) : 0.0));
    json_object_set_new(o, "latency_estimate_ms", json_real(estimate_ms(rt, s, now_us)));
    json_object_set_new(o, "stalled_ms",
                        json_integer(s->outstanding > 0 && now_us > s->progress_us
                                         ? (json_int_t)((now_us - s->progress_us) / 1000)
                                         : 0));
    json_object_set_new(o, "lb_cost", json_real(cost_of(rt, e, now_us)));
    /* circuit breakers: the address's connections and waiters (shared by
     * every route naming it, and by requests to it without a route) */
    json_object_set_new(o, "circuit_breakers", px_pool_ep_json(px_pool_find(&e->addr)));
    return o;
}

static int on_clusters(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                       void *arg)
{
    (void)req;
    (void)q;
    (void)arg;
    uint64_t now_us = cm_mono_us(), now = now_us / 1000;
    json_t *o = json_object();
    json_t *routes = json_array();
    const char *local = px_srv->cfg->cluster;
    for (size_t i = 0; R.cur != NULL && i < R.cur->n; i++) {
        const struct px_route *rt = &R.cur->routes[i];
        json_t *ro = json_object();
        json_object_set_new(ro, "name", json_string(rt->name));
        if (rt->match_host != NULL)
            json_object_set_new(ro, "match", json_pack("{s:s}", "host", rt->match_host));
        else {
            char a[CM_ADDR_STRLEN];
            json_object_set_new(
                ro, "match",
                json_pack("{s:s}", "address", cm_addr_format(&rt->match_addr, a, sizeof(a))));
        }
        struct px_breakers cb = px_srv->cfg->limits.upstream;
        px_route_breakers(rt, &cb);
        json_object_set_new(ro, "circuit_breakers",
                            json_pack("{s:i, s:i, s:i, s:i}", "max_connections",
                                      (int)cb.max_connections, "max_pending_requests",
                                      (int)cb.max_pending_requests, "pending_timeout_ms",
                                      (int)cb.pending_timeout_ms, "max_requests_per_connection",
                                      (int)cb.max_requests_per_connection));
        json_t *eps = json_array();
        for (size_t k = 0; k < rt->neps; k++)
            json_array_append_new(eps, endpoint_json(rt, &rt->eps[k], now, now_us));
        json_object_set_new(ro, "endpoints", eps);
        json_array_append_new(routes, ro);
    }
    json_object_set_new(o, "cluster", local ? json_string(local) : json_null());
    json_object_set_new(o, "routes_file", R.file ? json_string(R.file) : json_null());
    char ts[32];
    json_object_set_new(o, "loaded_at",
                        R.loaded_at ? json_string(cm_fmt_rfc3339(R.loaded_at, ts, sizeof(ts)))
                                    : json_null());
    const char *last_error = cm_watch_last_error(&R.watch.files);
    json_object_set_new(o, "last_error", last_error ? json_string(last_error) : json_null());
    json_object_set_new(o, "ejections_total", json_integer((json_int_t)R.ejections_total));
    json_object_set_new(o, "routes", routes);
    /* every upstream address with connections, waiters or a recent
     * overflow, routed or not (original destinations, fixed upstreams) */
    json_object_set_new(o, "upstreams", px_pool_all_json());
    px_admin_reply_json(out, o);
    return 200;
}

static int on_reload(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                     void *arg)
{
    (void)req;
    (void)q;
    (void)arg;
    if (R.file == NULL)
        return px_admin_reply_error(out, 404, "no routes_file configured");
    char *e = NULL;
    if (px_routes_reload(&e) != 0) {
        int rc = px_admin_reply_error(out, 400, "%s", e);
        free(e);
        return rc;
    }
    px_admin_reply_json(
        out, json_pack("{s:s, s:I}", "status", "reloaded", "routes", (json_int_t)R.cur->n));
    return 200;
}

void px_routes_admin_routes(void)
{
    if (R.file == NULL)
        return; /* like /certs and /policy: 404 "not configured" without a routes file */
    px_admin_route(px_srv->admin, PX_ADMIN_GET, "/clusters", on_clusters, NULL);
    px_admin_route(px_srv->admin, PX_ADMIN_POST, "/routes/reload", on_reload, NULL);
}

uint64_t px_routes_ejections_total(void)
{
    return R.ejections_total;
}

void px_routes_write_prometheus(struct evbuffer *out)
{
    if (R.cur == NULL)
        return;
    evbuffer_add_printf(out, "# HELP remora_endpoint_requests_total Tries sent to an endpoint, by "
                             "outcome.\n# TYPE remora_endpoint_requests_total counter\n");
    for (const struct px_ep_state *s = R.states; s != NULL; s = s->next) {
        char a[CM_ADDR_STRLEN];
        cm_addr_format(&s->addr, a, sizeof(a));
        const struct {
            const char *o;
            uint64_t v;
        } rows[] = {{"success", s->successes},
                    {"connect_failure", s->fail_connect},
                    {"reset", s->fail_reset},
                    {"timeout", s->fail_timeout},
                    {"5xx", s->fail_5xx}};
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
            evbuffer_add_printf(out,
                                "remora_endpoint_requests_total{endpoint=\"%s\",outcome=\"%s\"} "
                                "%llu\n",
                                a, rows[i].o, (unsigned long long)rows[i].v);
    }
    evbuffer_add_printf(out, "# HELP remora_endpoint_ejected 1 while an endpoint is ejected.\n"
                             "# TYPE remora_endpoint_ejected gauge\n");
    uint64_t now = cm_mono_ms();
    for (const struct px_ep_state *s = R.states; s != NULL; s = s->next) {
        char a[CM_ADDR_STRLEN];
        evbuffer_add_printf(out, "remora_endpoint_ejected{endpoint=\"%s\"} %d\n",
                            cm_addr_format(&s->addr, a, sizeof(a)), ejected(s, now) ? 1 : 0);
    }
    evbuffer_add_printf(out,
                        "# HELP remora_outlier_ejections_total Endpoints ejected by outlier "
                        "detection.\n# TYPE remora_outlier_ejections_total counter\n"
                        "remora_outlier_ejections_total %llu\n",
                        (unsigned long long)R.ejections_total);
}
