/* Internals shared by the routes files (not an API: proxy/routes.h is).
 *   routes.c         the routes in force: loading, reload, the watch, refcounts,
 *                    the shared per-address endpoint records
 *   routes_config.c  JSON -> routes (parsing, defaults), circuit_breakers overrides
 *   routes_index.c   the exact-match index, px_routes_match
 *   lb.c             endpoint picks: P2C on a peak-EWMA cost, the LB view
 *   outlier.c        the verdict of a try: counts, ejection, retry_on, retry budget
 *   routes_admin.c   GET /clusters, POST /routes/reload, the /metrics rows */
#ifndef PX_ROUTES_INT_H
#define PX_ROUTES_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proxy/routes.h"
#include "proxy/watch.h"

struct px_admin;
struct px_metrics_state;
struct px_svc_cache;

/* The routes state of a server (srv->routes; routes.c owns it): the file,
 * the snapshot in force, the per-address endpoint records, the ejection
 * counters the LB views follow, our locality. Snapshots bound to it and their
 * routes point back at it (px_routes.rs, px_route.rs). */
struct px_routes_state {
    char *file;
    struct px_routes *cur;
    struct px_ep_state *states; /* the endpoint records (see struct px_ep_state) */
    struct px_ep_state **stab;  /* their hash table by address: stab_mask + 1 chains */
    size_t stab_mask, nstates, sweep_at;
    uint64_t ejections_total;
    uint64_t eject_gen; /* bumped when an ejection starts: LB views rebuild */
    int64_t loaded_at;
    struct px_watch watch;            /* routes_file, and the last failed load */
    const char *cluster;              /* our locality (cfg->cluster, borrowed), or NULL */
    const struct px_limits *limits;   /* cfg->limits (borrowed): the breakers' defaults */
    struct px_admin *admin;           /* where GET /clusters is registered, or NULL */
    struct px_metrics_state *metrics; /* where its /metrics rows are registered, or NULL */
    struct px_svc_cache *svc;         /* discovered Services' routes (proxy/service.c), or NULL */
    /* our zone learned from discovery (proxy/zone.c): cluster points at
     * zone_own then; zone_gen is bumped on every change (LB views re-rank) */
    bool zone_config; /* cfg->cluster is set: never learned */
    bool discovery;   /* the bootstrap has "discovery": /clusters and /metrics without a file */
    bool zone_bad_logged;
    char *zone_own;
    uint64_t zone_gen, zone_changes;
    struct px_zone *zone; /* the learner, or NULL */
};

static inline bool px_ep_ejected(const struct px_ep_state *s, uint64_t now)
{
    return s->ejected_until_ms > now;
}

/* Is e in our locality `local` (rs->cluster)? Without one, every endpoint is. */
static inline bool px_ep_is_local(const struct px_endpoint *e, const char *local)
{
    return local == NULL || (e->cluster != NULL && strcmp(e->cluster, local) == 0);
}

/* routes.c */
void px_routes_free(struct px_routes *r);
/* Attach rs's shared health records to r and point r and its routes at rs
 * (only for snapshots that go live). */
void px_routes_bind_states(struct px_routes_state *rs, struct px_routes *r);

/* routes_config.c: a route's defaults (attempts tries, no timeout, Envoy-like
 * outlier settings, a 20% retry budget, the listener's circuit breakers):
 * a routes-file entry's before its keys, a discovered Service's. */
void px_route_set_defaults(struct px_route *rt, uint32_t attempts);
/* routes_config.c: length of a Host value without its ":port". */
size_t px_routes_host_len(const char *h);

/* routes_index.c: hash of what cm_addr_equal compares. */
uint64_t px_routes_hash_addr(const struct cm_addr *a);
/* routes.c: the number of endpoint records held (tests). */
size_t px_routes_nstates(const struct px_routes_state *rs);

/* routes_index.c: fill r's exact-match index (after parsing). */
void px_routes_index_build(struct px_routes *r);

/* lb.c: the latency model (admin output and verdicts use it too) */
double px_lb_decayed_ms(const struct px_ep_state *st, uint64_t now_us);
double px_lb_estimate_ms(const struct px_route *rt, const struct px_ep_state *st, uint64_t now_us);
double px_lb_cost(const struct px_route *rt, const struct px_endpoint *e, uint64_t now_us);
void px_lb_observe(struct px_route *rt, struct px_ep_state *st, double ms, bool failure,
                   uint64_t now_us);

#endif
