/* A discovered Service as a route (issue 18; docs/routes.md "Services"): the
 * discovery answer of a request's destination (proxy/discovery.h, kind
 * service, or kind pod with its one endpoint) becomes a px_route that the
 * routes machinery runs as it runs a routes-file route: per-request P2C on
 * peak-EWMA (lb.c), retries within the budget, outlier ejection (outlier.c),
 * locality tiers against the proxy's own cluster.
 *
 * - Candidates: the answer's endpoints that are ready, serving and not
 *   terminating. Meshed ones are reached over mTLS + HTTP/2 and must present
 *   exactly their `identity` (secure naming, per endpoint); the others get
 *   the request as the app sent it (h2c when the Service's protocol is
 *   http2 or grpc).
 * - Defaults: 2 attempts on connect-failure and reset (idempotent methods;
 *   any method when the connection was never made), a 20% retry budget,
 *   outlier ejection after 5 consecutive failures for 30 s, no timeout. A
 *   routes-file entry matching {"service": "ns/name"} overrides them; its
 *   endpoints, if it lists any, win over the discovered ones.
 * - Built once per (answer version, routes-file snapshot) and cached per
 *   destination in the routes state (at most PX_SVC_CACHE_MAX); a route is a
 *   refcounted one-route px_routes snapshot, so a request keeps the route it
 *   started with while a newer answer replaces it. Endpoint health records
 *   are the routes state's per-address ones: ejections survive new answers. */
#ifndef PX_SERVICE_H
#define PX_SERVICE_H

#include <stddef.h>
#include <stdint.h>

struct px_stream;
struct px_conn;
struct px_routes;
struct px_routes_state;
struct px_route;
struct px_endpoint;
struct px_dest_answer;

#define PX_SVC_CACHE_MAX                                                                           \
    1024 /* destinations with a built route; more: the least recently used go */
/* A Service's tries per request (a routes-file "service" entry's too, until
 * its "retries" says); its other defaults are a routes-file entry's. */
#define PX_SVC_ATTEMPTS 2

/* The route for answer a under the routes-file snapshot cur (may be NULL):
 * returns a new reference to the snapshot holding it and sets *rt, or NULL
 * when there is none (no candidate endpoint, and no routes-file entry with
 * endpoints for the Service): the caller then goes to the connection's
 * destination as before. */
struct px_routes *px_service_route_for(struct px_routes_state *rs, struct px_routes *cur,
                                       const struct px_dest_answer *a, struct px_route **rt);

/* stream.c's request chain, when no routes-file route matched: s->dest's
 * route replaces s->routes / s->route (nothing changes without one). */
void px_service_route(struct px_stream *s);

/* Opaque TCP: the route of the connection's answer and the endpoint with the
 * fewest TCP connections, then requests outstanding (healthy local ones
 * first). Returns the snapshot reference (the caller unrefs it after
 * px_service_tcp_close) and *ep, or NULL. */
struct px_routes *px_service_tcp_pick(const struct px_conn *c, struct px_endpoint **ep);

/* A TCP connection on ep opens / closes (the least-connections count). */
void px_service_tcp_open(struct px_endpoint *ep);
void px_service_tcp_close(struct px_endpoint *ep);

/* GET /clusters: fn for each cached destination (at most PX_SVC_CACHE_MAX),
 * with its answer and its route: the one built from discovery, the
 * routes-file entry whose endpoints win (file_route), or NULL (no endpoint
 * is a candidate). */
typedef void (*px_service_each_fn)(const struct px_dest_answer *a, struct px_route *rt,
                                   int file_route, void *arg);
void px_service_each(struct px_routes_state *rs, px_service_each_fn fn, void *arg);

/* Drop the cache (px_routes_state_free). */
void px_service_cache_free(struct px_routes_state *rs);

/* Destinations with a cache entry now (tests). */
size_t px_service_cached(const struct px_routes_state *rs);
/* Counters (tests, benchmarks): routes built, cache hits. */
void px_service_stats(const struct px_routes_state *rs, uint64_t *builds, uint64_t *hits);

#endif
