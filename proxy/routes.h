/* Routes (docs/contract.md "Routes file"): which endpoints serve a request, how it
 * is retried and timed out, load balancing, outlier ejection and failover
 * between clusters (localities).
 *
 * The routes file compiles into an immutable, refcounted snapshot swapped on
 * reload (SIGHUP, POST /routes/reload, a watch on the file); a stream keeps
 * the snapshot it started under. Endpoint health state (outstanding
 * requests, consecutive failures, ejections) lives in per-address records
 * shared by all snapshots, so a reload neither forgets an ejection nor lets
 * a request touch freed memory. */
#ifndef PX_ROUTES_H
#define PX_ROUTES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/net.h"
#include "proxy/config.h"
#include "proxy/stream.h"

/* retry_on bits */
#define PX_RETRY_CONNECT_FAILURE 0x01 /* refused, unreachable, connect timeout, TLS */
#define PX_RETRY_RESET           0x02 /* reset / closed before a full response */
#define PX_RETRY_5XX             0x04 /* any 5xx response, and per-try timeouts */
#define PX_RETRY_GATEWAY         0x08 /* 502, 503, 504 responses */

/* Health record of one endpoint address; lives as long as the process. */
struct px_ep_state {
    struct cm_addr addr;
    uint32_t outstanding; /* requests in flight now */
    uint32_t tcp_conns;   /* opaque TCP connections open now (proxy/service.c; not a latency
                           * signal: a long-lived tunnel is not a stalled request) */
    uint32_t consecutive_failures;
    uint32_t ejections;        /* how many times ejected so far */
    uint64_t ejected_until_ms; /* monotonic; 0 = healthy */
    uint64_t requests, successes;
    uint64_t fail_connect, fail_reset, fail_timeout, fail_5xx;
    /* Latency, peak-EWMA (docs/routes.md "Choosing an endpoint"): a slower
     * sample replaces the estimate at once, a faster one moves it a fifth of
     * the way, and without samples it decays toward 0 (time constant 2 s). */
    double ewma_ms;
    uint64_t ewma_at_us;  /* monotonic time of the last sample; 0 = never measured */
    uint64_t progress_us; /* the last response head or end of a try here, or when
                           * outstanding went 0 -> 1: while requests are
                           * outstanding, now - progress_us is a lower bound of
                           * this endpoint's latency (a hung one shows at once) */
    /* the routes state's records: a list (admin, metrics) and a hash chain;
     * refs counts the bound endpoints naming it. With none left it goes, unless
     * it is ejected (then it is kept until the ejection ends, so an endpoint
     * that leaves and comes back is still ejected): records stay bounded while
     * discovered endpoints come and go. */
    struct px_ep_state *next, *prev, *hnext;
    uint32_t refs;
};

/* How a try reaches an endpoint (px_upstream_resolve). */
enum px_ep_via {
    PX_EP_VIA_LISTENER = 0, /* a routes-file endpoint: as the listener says (tls, protocol) */
    PX_EP_VIA_MESH,         /* discovered, meshed: mTLS (secure naming on identity) + HTTP/2 */
    PX_EP_VIA_PLAIN,        /* discovered, not meshed: as the app sent it, no mTLS */
    PX_EP_VIA_PLAIN_H2C     /* discovered, not meshed, protocol http2/grpc: h2c */
};

struct px_endpoint {
    struct cm_addr addr;
    char *cluster;   /* locality, or NULL */
    char *identity;  /* SPIFFE ID the endpoint must present over mTLS, or NULL */
    uint32_t weight; /* >= 1 */
    bool local;      /* in our cluster (ranked by the route's LB view) */
    uint8_t via;     /* enum px_ep_via */
    struct px_ep_state *st;
};

struct px_routes_state;

struct px_route {
    struct px_routes_state *rs; /* the state its snapshot is bound to; NULL when unbound */
    char *name;                 /* "routes[i]" or the given name */
    char *match_host;           /* lower case, no port; or NULL */
    char *match_service;        /* "ns/name" (match.service: a discovered Service), or NULL */
    bool has_match_addr;
    struct cm_addr match_addr;
    uint32_t timeout_ms; /* whole request, 0 = none */
    uint32_t attempts;   /* total tries, >= 1 */
    uint32_t per_try_timeout_ms;
    uint32_t retry_on; /* PX_RETRY_* */
    int retry_codes[8];
    unsigned nretry_codes;
    uint32_t retry_grpc; /* bit n: retry on gRPC status n (proxy/grpc.h) */
    uint32_t budget_percent;
    uint32_t backoff_base_ms;
    uint32_t outlier_failures; /* 0 = no ejection */
    uint32_t outlier_base_ms;
    struct px_endpoint *eps;
    size_t neps;
    /* retry budget: requests and retries in the last 10 s, one bucket a second */
    uint64_t budget_sec[10];
    uint32_t budget_req[10], budget_retry[10];
    /* The LB view, derived from the endpoints' health and rebuilt only when
     * an ejection starts or ends (lb_refresh in lb.c): lb_order holds the
     * healthy local endpoints, then the healthy remote ones, then the ejected
     * ones, so each candidate tier is a prefix and a pick draws two directly. */
    struct px_endpoint **lb_order;
    struct px_endpoint **lb_cand; /* neps slots: lb.c's scratch when a retry filters a tier */
    size_t lb_nlocal, lb_nhealthy;
    uint64_t lb_gen;       /* the ejection generation it reflects */
    uint64_t lb_until_ms;  /* it is stale from then on (the first ejection to end) */
    uint64_t lb_zone_gen;  /* the routes state's zone_gen endpoints were ranked at: our
                            * locality changes only with it (proxy/zone.c) */
    double lat_typical_ms; /* EWMA of the route's latency samples: the estimate of
                            * an endpoint never measured (0: none yet) */
    /* "circuit_breakers": per-endpoint overrides of limits.upstream_*;
     * PX_BREAKER_UNSET where the route keeps the default */
    struct px_breakers cb;
};
#define PX_BREAKER_UNSET UINT32_MAX

struct px_routes {
    int refs;   /* also a Service's route (proxy/service.c): one route, no index */
    bool bound; /* px_routes_bind_states ran: its endpoints hold references on the records */
    struct px_route *routes;
    size_t n;
    json_t *raw;
    /* exact-match indexes built at parse time (open addressing, idx_mask + 1
     * slots): route position + 1 of the FIRST route with that host / that
     * address, 0 = empty slot */
    uint32_t *host_idx, *addr_idx;
    size_t idx_mask;
};

/* Create srv->routes (our locality: cfg->cluster), load srv->cfg->routes_file
 * if set (a bad file at startup is an error; srv->routes is set either way)
 * and start its watch on srv's loop. */
struct px_server;
struct px_admin;
int px_routes_start(struct px_server *srv, char **errmsg);
/* A routes state without a file (tests, benchmarks): endpoint records and
 * ejection counters for snapshots bound with px_routes_bind_states. */
struct px_routes_state *px_routes_state_new(const char *cluster);
/* Re-read the routes file (SIGHUP, POST /routes/reload, the watch); without
 * one, nothing to do. */
int px_routes_reload(struct px_routes_state *rs, char **errmsg);
/* GET /clusters and POST /routes/reload (only with a routes file). */
void px_routes_admin_routes(struct px_routes_state *rs, struct px_admin *admin);
/* Unregister, stop the watch, drop the snapshot and the endpoint records (NULL is fine). */
void px_routes_state_free(struct px_routes_state *rs);
/* Parse a routes document (tests, fuzzing). */
int px_routes_parse(const char *name, const char *buf, size_t len, struct px_routes **out,
                    char **errmsg);
/* Read and parse a routes file (at most 16 MiB; --check-config, reloads). */
int px_routes_load_file(const char *file, struct px_routes **out, char **errmsg);

/* The snapshot in force (borrowed; px_routes_ref to keep it), or NULL. */
struct px_routes *px_routes_current_of(const struct px_routes_state *rs);
struct px_routes *px_routes_ref(struct px_routes *r);
void px_routes_unref(struct px_routes *r);

/* The route for a request: by Host/:authority (port ignored) or by the
 * original destination address. NULL when none matches. The route is r's
 * own (its LB and budget state change as requests use it), hence not const. */
struct px_route *px_routes_match(struct px_routes *r, const char *authority,
                                 const struct cm_addr *orig_dst);
/* The first route in file order whose match.service is svc ("ns/name"), or NULL. */
struct px_route *px_routes_match_service(struct px_routes *r, const char *svc);
/* Pick an endpoint: healthy ones of our own cluster first (all traffic
 * stays local while any is healthy), else the other clusters; power of two
 * choices on cost = latency estimate x (outstanding + 1) / weight; endpoints
 * in `avoid` (the ones this request already failed on; navoid may be 0) are
 * not picked while another candidate exists. Never NULL for a route with
 * endpoints (when all are ejected, all are candidates again). O(1) per pick
 * but for the rare rebuild of rt's LB view after an ejection change. */
struct px_endpoint *px_route_pick(struct px_route *rt, const struct px_ep_state *const *avoid,
                                  size_t navoid);
/* Outcome of one try on an endpoint: success, or a failure of a kind. */
enum px_try_outcome { PX_TRY_OK = 0, PX_TRY_CONNECT, PX_TRY_RESET, PX_TRY_TIMEOUT, PX_TRY_5XX };
/* The life of one try on ep, for outstanding counts and latency:
 * px_route_try_start when it is sent; px_route_try_head when its response
 * head arrives (latency_us since the start: the balancer's sample); then
 * exactly one of px_route_report (the verdict) or px_route_try_abandon (the
 * client went away: no verdict). */
void px_route_try_start(struct px_endpoint *ep);
void px_route_try_head(struct px_route *rt, struct px_endpoint *ep, uint64_t latency_us);
void px_route_try_abandon(struct px_endpoint *ep);
/* The verdict of a try. latency_us: how long a try that ended WITHOUT a
 * response head waited, 0 when it had one (sampled by px_route_try_head). A
 * timeout's duration is a latency sample that only ever raises the estimate;
 * other failures are not samples. */
void px_route_report(struct px_route *rt, struct px_endpoint *ep, enum px_try_outcome o,
                     uint64_t latency_us);
/* Apply rt's circuit_breakers overrides to cb (the limits.upstream_* defaults). */
void px_route_breakers(const struct px_route *rt, struct px_breakers *cb);
/* May this route retry now (budget)? Counts the retry when it returns true. */
bool px_route_budget_retry(struct px_route *rt);
void px_route_budget_request(struct px_route *rt);
/* Does this failure qualify for a retry under rt's retry_on? status: the
 * response code for PX_TRY_5XX. */
bool px_route_retry_on(const struct px_route *rt, enum px_try_outcome o, int status);

/* Prometheus text for per-endpoint requests/outcomes and ejections. */
struct evbuffer;
void px_routes_write_prometheus(struct evbuffer *out, void *rs);
uint64_t px_routes_ejections_total(const struct px_routes_state *rs);

#endif
