/* Discovered Services as routes (proxy/service.h). */
#include "proxy/service.h"

#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/conn.h"
#include "proxy/discovery.h"
#include "proxy/routes.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"
#include "proxy/stream.h"

struct svc_entry {
    struct px_dest_answer *ans;   /* a reference: its pointer is the version's key */
    struct px_dest_answer *alias; /* the same version held twice by the discovery cache (by
                                   * address and by Host): a reference, a second key */
    struct px_routes *base;       /* the routes-file snapshot it was built under (a reference) */
    struct px_routes *built;      /* the Service's one-route snapshot, or NULL */
    struct px_route *file_rt;     /* or the routes-file entry with endpoints (in base), or NULL */
    uint64_t used;                /* LRU tick */
};

#define SVC_IDX_SLOTS (4 * PX_SVC_CACHE_MAX) /* two keys an entry, at most half full */

struct px_svc_cache {
    struct svc_entry e[PX_SVC_CACHE_MAX];
    size_t n;
    uint64_t tick;
    uint64_t builds, hits;
    /* entry position + 1 by answer pointer, ans and alias (open addressing,
     * 0 = empty); rebuilt whenever an entry's keys change (a build, a new
     * alias: rare next to lookups) */
    uint16_t idx[SVC_IDX_SLOTS];
};

static size_t slot_of(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (SVC_IDX_SLOTS - 1);
}

static void index_key(struct px_svc_cache *c, const void *key, size_t i)
{
    size_t k = slot_of(key);
    while (c->idx[k] != 0)
        k = (k + 1) & (SVC_IDX_SLOTS - 1);
    c->idx[k] = (uint16_t)(i + 1);
}

static void reindex(struct px_svc_cache *c)
{
    memset(c->idx, 0, sizeof(c->idx));
    for (size_t i = 0; i < c->n; i++) {
        index_key(c, c->e[i].ans, i);
        if (c->e[i].alias != NULL)
            index_key(c, c->e[i].alias, i);
    }
}

static struct svc_entry *find(struct px_svc_cache *c, const struct px_dest_answer *a)
{
    for (size_t k = slot_of(a);; k = (k + 1) & (SVC_IDX_SLOTS - 1)) {
        if (c->idx[k] == 0)
            return NULL;
        struct svc_entry *e = &c->e[c->idx[k] - 1];
        if (e->ans == a || e->alias == a)
            return e;
    }
}

static void entry_clear(struct svc_entry *e)
{
    px_dest_answer_unref(e->ans);
    px_dest_answer_unref(e->alias);
    px_routes_unref(e->base);
    px_routes_unref(e->built);
    memset(e, 0, sizeof(*e));
}

void px_service_cache_free(struct px_routes_state *rs)
{
    if (rs == NULL || rs->svc == NULL)
        return;
    for (size_t i = 0; i < rs->svc->n; i++)
        entry_clear(&rs->svc->e[i]);
    free(rs->svc);
    rs->svc = NULL;
}

size_t px_service_cached(const struct px_routes_state *rs)
{
    return rs != NULL && rs->svc != NULL ? rs->svc->n : 0;
}

void px_service_stats(const struct px_routes_state *rs, uint64_t *builds, uint64_t *hits)
{
    *builds = rs != NULL && rs->svc != NULL ? rs->svc->builds : 0;
    *hits = rs != NULL && rs->svc != NULL ? rs->svc->hits : 0;
}

void px_service_each(struct px_routes_state *rs, px_service_each_fn fn, void *arg)
{
    if (rs == NULL || rs->svc == NULL)
        return;
    for (size_t i = 0; i < rs->svc->n; i++) {
        struct svc_entry *e = &rs->svc->e[i];
        if (e->file_rt != NULL)
            fn(e->ans, e->file_rt, 1, arg);
        else
            fn(e->ans, e->built != NULL ? &e->built->routes[0] : NULL, 0, arg);
    }
}

static bool eligible(const struct px_dest_ep *e)
{
    return e->ready && e->serving && !e->terminating;
}

/* Are a and b answers about the same destination (b a newer version of a)? */
static bool same_dest(const struct px_dest_answer *a, const struct px_dest_answer *b)
{
    if (a->kind != b->kind || a->port != b->port)
        return false;
    if (a->kind == PX_DEST_SERVICE)
        return a->service != NULL && b->service != NULL && strcmp(a->service, b->service) == 0;
    return a->neps == 1 && b->neps == 1 && cm_addr_equal(&a->eps[0].addr, &b->eps[0].addr);
}

/* The route of answer a: the defaults, or the overrides of the routes-file
 * entry ovr (its endpoints are not used here: with endpoints it wins whole). */
static struct px_routes *build(struct px_routes_state *rs, const struct px_dest_answer *a,
                               const struct px_route *ovr)
{
    size_t n = 0;
    for (size_t i = 0; i < a->neps; i++)
        n += eligible(&a->eps[i]);
    if (n == 0)
        return NULL;
    bool h2c = strcmp(a->protocol, "http2") == 0 || strcmp(a->protocol, "grpc") == 0;
    struct px_routes *r = cm_xcalloc(1, sizeof(*r));
    r->refs = 1;
    r->n = 1;
    r->routes = cm_xcalloc(1, sizeof(*r->routes));
    struct px_route *rt = &r->routes[0];
    if (ovr != NULL) {
        rt->name = cm_xstrdup(ovr->name);
        rt->timeout_ms = ovr->timeout_ms;
        rt->attempts = ovr->attempts;
        rt->per_try_timeout_ms = ovr->per_try_timeout_ms;
        rt->retry_on = ovr->retry_on;
        memcpy(rt->retry_codes, ovr->retry_codes, sizeof(rt->retry_codes));
        rt->nretry_codes = ovr->nretry_codes;
        rt->retry_grpc = ovr->retry_grpc;
        rt->budget_percent = ovr->budget_percent;
        rt->backoff_base_ms = ovr->backoff_base_ms;
        rt->outlier_failures = ovr->outlier_failures;
        rt->outlier_base_ms = ovr->outlier_base_ms;
        rt->cb = ovr->cb;
    } else {
        if (a->service != NULL)
            rt->name = cm_xasprintf("service %s", a->service);
        else {
            char ad[CM_ADDR_STRLEN];
            rt->name = cm_xasprintf("pod %s", cm_addr_format(&a->eps[0].addr, ad, sizeof(ad)));
        }
        px_route_set_defaults(rt, PX_SVC_ATTEMPTS); /* docs/routes.md "Services" */
    }
    rt->eps = cm_xcalloc(n, sizeof(*rt->eps));
    for (size_t i = 0; i < a->neps; i++) {
        const struct px_dest_ep *d = &a->eps[i];
        if (!eligible(d))
            continue;
        struct px_endpoint *e = &rt->eps[rt->neps++];
        e->addr = d->addr;
        e->cluster = d->zone != NULL && d->zone[0] != '\0' ? cm_xstrdup(d->zone) : NULL;
        e->weight = 1;
        if (d->meshed) {
            e->via = PX_EP_VIA_MESH;
            e->identity = d->identity != NULL ? cm_xstrdup(d->identity) : NULL;
        } else {
            e->via = h2c ? PX_EP_VIA_PLAIN_H2C : PX_EP_VIA_PLAIN;
        }
    }
    px_routes_bind_states(rs, r); /* the shared per-address health records */
    return r;
}

/* The cache entry of answer a under the routes-file snapshot cur: found,
 * rebuilt (a newer answer of the same destination, another snapshot), or
 * made (evicting the least recently used when full). */
static struct svc_entry *entry_for(struct px_routes_state *rs, struct px_routes *cur,
                                   const struct px_dest_answer *a)
{
    if (rs->svc == NULL)
        rs->svc = cm_xcalloc(1, sizeof(*rs->svc));
    struct px_svc_cache *c = rs->svc;
    struct svc_entry *e = find(c, a);
    if (e != NULL && e->base == cur) {
        c->hits++;
        e->used = ++c->tick;
        return e;
    }
    if (e == NULL)
        for (size_t i = 0; i < c->n; i++)
            if (same_dest(c->e[i].ans, a)) {
                e = &c->e[i];
                break;
            }
    if (e != NULL && e->base == cur && e->ans != a && strcmp(e->ans->version, a->version) == 0) {
        /* the same answer held twice by the discovery cache (looked up by
         * address and by Host): one route, not a rebuild per alternation;
         * a's pointer becomes a key too, so its next requests are found by
         * the index rather than by this scan */
        px_dest_answer_unref(e->alias);
        e->alias = px_dest_answer_ref((struct px_dest_answer *)a);
        reindex(c);
        c->hits++;
        e->used = ++c->tick;
        return e;
    }
    if (e == NULL && c->n < PX_SVC_CACHE_MAX)
        e = &c->e[c->n++];
    if (e == NULL) {
        e = &c->e[0];
        for (size_t i = 1; i < c->n; i++)
            if (c->e[i].used < e->used)
                e = &c->e[i];
    }
    entry_clear(e);
    e->ans = px_dest_answer_ref((struct px_dest_answer *)a);
    e->base = px_routes_ref(cur);
    struct px_route *ovr =
        a->kind == PX_DEST_SERVICE ? px_routes_match_service(cur, a->service) : NULL;
    if (ovr != NULL && ovr->neps > 0)
        e->file_rt = ovr; /* its endpoints win */
    else
        e->built = build(rs, a, ovr);
    c->builds++;
    e->used = ++c->tick;
    reindex(c);
    return e;
}

struct px_routes *px_service_route_for(struct px_routes_state *rs, struct px_routes *cur,
                                       const struct px_dest_answer *a, struct px_route **rt)
{
    *rt = NULL;
    if (rs == NULL || a == NULL)
        return NULL;
    struct svc_entry *e = entry_for(rs, cur, a);
    if (e->file_rt != NULL) {
        *rt = e->file_rt;
        return px_routes_ref(e->base);
    }
    if (e->built == NULL)
        return NULL;
    *rt = &e->built->routes[0];
    return px_routes_ref(e->built);
}

static void ignore_answer(enum px_disc_result res, struct px_dest_answer *ans, void *arg)
{
    (void)res;
    (void)ans;
    (void)arg;
}

/* The connection's answer is as old as the connection: a keep-alive or HTTP/2
 * connection lives across endpoint changes, so each request takes the
 * cache's current answer for the same destination (a hit: no wait; a miss,
 * when the entry went meanwhile, keeps the connection's answer). */
static void refresh_dest(struct px_stream *s)
{
    if (s->srv->disc == NULL || s->dest != s->conn->dest)
        return; /* a per-request lookup (by Host) is current already */
    struct cm_addr dst;
    px_conn_default_upstream(s->conn, &dst);
    struct px_dest_answer *cur = NULL;
    struct px_disc_wait *w = NULL;
    enum px_disc_result r = px_disc_lookup(s->srv->disc, &dst, NULL, &cur, ignore_answer, NULL, &w);
    px_disc_cancel(w);
    if (r == PX_DISC_FOUND && cur != NULL && cur != s->dest) {
        px_dest_answer_unref(s->dest);
        s->dest = cur;
    } else {
        px_dest_answer_unref(cur);
    }
}

void px_service_route(struct px_stream *s)
{
    refresh_dest(s);
    struct px_route *rt;
    struct px_routes *r = px_service_route_for(s->srv->routes, s->routes, s->dest, &rt);
    if (r == NULL)
        return;
    px_routes_unref(s->routes);
    s->routes = r;
    s->route = rt;
}

/* Least connections among rt's healthy endpoints (local ones while any is
 * healthy), scanning from a rotating start so ties spread. */
static struct px_endpoint *least_conn(struct px_route *rt)
{
    static size_t rot;
    uint64_t now = cm_mono_ms();
    const char *local = rt->rs != NULL ? rt->rs->cluster : NULL;
    struct px_endpoint *best = NULL;
    int best_tier = 3;
    size_t start = rot++;
    for (size_t k = 0; k < rt->neps; k++) {
        struct px_endpoint *e = &rt->eps[(start + k) % rt->neps];
        int tier = px_ep_ejected(e->st, now) ? 2 : px_ep_is_local(e, local) ? 0 : 1;
        if (best == NULL || tier < best_tier ||
            (tier == best_tier && (e->st->tcp_conns < best->st->tcp_conns ||
                                   (e->st->tcp_conns == best->st->tcp_conns &&
                                    e->st->outstanding < best->st->outstanding)))) {
            best = e;
            best_tier = tier;
        }
    }
    return best;
}

struct px_routes *px_service_tcp_pick(const struct px_conn *c, struct px_endpoint **ep)
{
    *ep = NULL;
    if (!c->disc_done || c->dest == NULL || c->srv->routes == NULL)
        return NULL;
    struct px_route *rt;
    struct px_routes *r =
        px_service_route_for(c->srv->routes, px_routes_current_of(c->srv->routes), c->dest, &rt);
    if (r == NULL)
        return NULL;
    if (rt->neps == 0) {
        px_routes_unref(r);
        return NULL;
    }
    *ep = least_conn(rt);
    return r;
}

void px_service_tcp_open(struct px_endpoint *ep)
{
    ep->st->tcp_conns++;
}

void px_service_tcp_close(struct px_endpoint *ep)
{
    if (ep->st->tcp_conns > 0)
        ep->st->tcp_conns--;
}
