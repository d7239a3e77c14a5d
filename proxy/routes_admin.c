/* The routes on the admin port (GET /clusters, POST /routes/reload) and on
 * /metrics (per-endpoint outcomes, ejections). */
#include "proxy/routes.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/xalloc.h"
#include "proxy/admin.h"
#include "proxy/pool.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"
#include "proxy/service.h"
#include "proxy/watch.h"
#include "proxy/zone.h"

static json_t *endpoint_json(const struct px_route *rt, const struct px_endpoint *e, uint64_t now,
                             uint64_t now_us)
{
    char a[CM_ADDR_STRLEN];
    const struct px_ep_state *s = e->st;
    json_t *o = json_object();
    json_object_set_new(o, "address", json_string(cm_addr_format(&e->addr, a, sizeof(a))));
    json_object_set_new(o, "cluster", e->cluster ? json_string(e->cluster) : json_null());
    /* the locality: the endpoint's zone, and whether it is ours now (the
     * balancer's first tier while any local one is healthy) */
    const char *ours = rt->rs != NULL ? rt->rs->cluster : NULL;
    json_object_set_new(o, "zone", e->cluster ? json_string(e->cluster) : json_null());
    json_object_set_new(o, "local", json_boolean(px_ep_is_local(e, ours)));
    json_object_set_new(o, "identity", e->identity ? json_string(e->identity) : json_null());
    json_object_set_new(o, "weight", json_integer(e->weight));
    bool ej = px_ep_ejected(s, now);
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
                        json_real(s->ewma_at_us != 0 ? px_lb_decayed_ms(s, now_us) : 0.0));
    json_object_set_new(o, "latency_estimate_ms", json_real(px_lb_estimate_ms(rt, s, now_us)));
    json_object_set_new(o, "stalled_ms",
                        json_integer(s->outstanding > 0 && now_us > s->progress_us
                                         ? (json_int_t)((now_us - s->progress_us) / 1000)
                                         : 0));
    json_object_set_new(o, "lb_cost", json_real(px_lb_cost(rt, e, now_us)));
    /* circuit breakers: the address's connections and waiters (shared by
     * every route naming it, and by requests to it without a route) */
    json_object_set_new(o, "circuit_breakers", px_pool_ep_json(px_pool_find(&e->addr)));
    return o;
}

/* Endpoints listed under "services" in all (each ~700 bytes of JSON): the
 * cache holds at most PX_SVC_CACHE_MAX destinations of up to
 * PX_DEST_MAX_ENDPOINTS endpoints each; past this the rest are counted, not
 * listed. */
#define CLUSTERS_MAX_SVC_EPS 4096

struct svc_row {
    const struct px_dest_answer *a;
    struct px_route *rt;
    int file_route;
    const char *key; /* "ns/name" or the pod's address: the sort key */
    char pod[CM_ADDR_STRLEN];
};

struct svc_rows {
    struct svc_row *v;
    size_t n;
};

static void collect(const struct px_dest_answer *a, struct px_route *rt, int file_route, void *arg)
{
    struct svc_rows *r = arg;
    struct svc_row *w = &r->v[r->n++];
    w->a = a;
    w->rt = rt;
    w->file_route = file_route;
    w->pod[0] = '\0';
    if (a->service == NULL && a->neps > 0)
        cm_addr_format(&a->eps[0].addr, w->pod, sizeof(w->pod));
    w->key = a->service != NULL ? a->service : w->pod;
}

static int row_cmp(const void *x, const void *y)
{
    const struct svc_row *a = x, *b = y;
    int c = strcmp(a->key, b->key);
    return c != 0 ? c : (int)a->a->port - (int)b->a->port;
}

/* The discovered Services' (and pods') routes of the service cache, by name. */
static json_t *services_json(struct px_routes_state *rs, uint64_t now, uint64_t now_us,
                             size_t *omitted)
{
    json_t *arr = json_array();
    *omitted = 0;
    size_t cap = px_service_cached(rs), listed = 0;
    if (cap == 0)
        return arr;
    struct svc_rows rows = {.v = cm_xcalloc(cap, sizeof(*rows.v))};
    px_service_each(rs, collect, &rows);
    qsort(rows.v, rows.n, sizeof(*rows.v), row_cmp);
    for (size_t i = 0; i < rows.n; i++) {
        const struct svc_row *w = &rows.v[i];
        json_t *so = json_object();
        json_object_set_new(so, "kind",
                            json_string(w->a->kind == PX_DEST_SERVICE ? "service" : "pod"));
        json_object_set_new(so, "service",
                            w->a->service ? json_string(w->a->service) : json_null());
        json_object_set_new(so, "port", json_integer(w->a->port));
        json_object_set_new(so, "protocol", json_string(w->a->protocol));
        json_object_set_new(so, "version", json_string(w->a->version));
        json_object_set_new(so, "route", w->rt ? json_string(w->rt->name) : json_null());
        json_object_set_new(so, "route_source",
                            json_string(w->file_route ? "routes_file" : "discovery"));
        json_t *eps = json_array();
        size_t n = w->rt != NULL ? w->rt->neps : 0, k = 0;
        for (; k < n && listed < CLUSTERS_MAX_SVC_EPS; k++, listed++)
            json_array_append_new(eps, endpoint_json(w->rt, &w->rt->eps[k], now, now_us));
        json_object_set_new(so, "endpoints", eps);
        if (k < n) {
            json_object_set_new(so, "endpoints_omitted", json_integer((json_int_t)(n - k)));
            *omitted += n - k;
        }
        json_array_append_new(arr, so);
    }
    free(rows.v);
    return arr;
}

static int on_clusters(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                       void *arg)
{
    (void)req;
    (void)q;
    struct px_routes_state *rs = arg;
    uint64_t now_us = cm_mono_us(), now = now_us / 1000;
    json_t *o = json_object();
    json_t *routes = json_array();
    const char *local = rs->cluster;
    for (size_t i = 0; rs->cur != NULL && i < rs->cur->n; i++) {
        const struct px_route *rt = &rs->cur->routes[i];
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
        struct px_breakers cb = rs->limits->upstream;
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
    json_t *zone = px_zone_json(rs); /* zone, zone_source, ... */
    json_object_update(o, zone);
    json_decref(zone);
    json_object_set_new(o, "routes_file", rs->file ? json_string(rs->file) : json_null());
    char ts[32];
    json_object_set_new(o, "loaded_at",
                        rs->loaded_at ? json_string(cm_fmt_rfc3339(rs->loaded_at, ts, sizeof(ts)))
                                      : json_null());
    const char *last_error = cm_watch_last_error(&rs->watch.files);
    json_object_set_new(o, "last_error", last_error ? json_string(last_error) : json_null());
    json_object_set_new(o, "ejections_total", json_integer((json_int_t)rs->ejections_total));
    json_object_set_new(o, "routes", routes);
    size_t omitted;
    json_object_set_new(o, "services", services_json(rs, now, now_us, &omitted));
    json_object_set_new(o, "services_endpoints_omitted", json_integer((json_int_t)omitted));
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
    struct px_routes_state *rs = arg; /* registered only with a routes file */
    char *e = NULL;
    if (px_routes_reload(rs, &e) != 0) {
        int rc = px_admin_reply_error(out, 400, "%s", e);
        free(e);
        return rc;
    }
    px_admin_reply_json(
        out, json_pack("{s:s, s:I}", "status", "reloaded", "routes", (json_int_t)rs->cur->n));
    return 200;
}

void px_routes_admin_routes(struct px_routes_state *rs, struct px_admin *admin)
{
    if (rs == NULL || (rs->file == NULL && !rs->discovery) || admin == NULL)
        return; /* like /certs and /policy: 404 "not configured" without a routes file
                 * or discovery */
    rs->admin = admin;
    px_admin_route(admin, PX_ADMIN_GET, "/clusters", on_clusters, rs);
    if (rs->file != NULL)
        px_admin_route(admin, PX_ADMIN_POST, "/routes/reload", on_reload, rs);
}

uint64_t px_routes_ejections_total(const struct px_routes_state *rs)
{
    return rs->ejections_total;
}

/* Bound of this writer's text: about 550 bytes per endpoint. */
#define ROUTES_TEXT_MAX (8u << 20)
/* Endpoint records written (the routes file's and the discovered ones; about
 * 5.5 MB): past this, remora_endpoint_records tells how many there are. */
#define ROUTES_METRICS_MAX_EPS 10000

void px_routes_write_prometheus(struct evbuffer *dst, void *arg)
{
    const struct px_routes_state *rs = arg;
    if (rs->cur == NULL && !rs->discovery)
        return;
    struct cm_prom prom, *out = &prom;
    cm_prom_init(out, ROUTES_TEXT_MAX);
    cm_prom_head(out, "remora_endpoint_requests_total", "counter",
                 "Tries sent to an endpoint, by outcome.");
    size_t nrec = 0;
    for (const struct px_ep_state *s = rs->states; s != NULL && nrec < ROUTES_METRICS_MAX_EPS;
         s = s->next, nrec++) {
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
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
            cm_prom_add(out, "remora_endpoint_requests_total{", 31);
            cm_prom_label(out, "endpoint", a, true);
            cm_prom_label(out, "outcome", rows[i].o, false);
            cm_prom_printf(out, "} %" PRIu64 "\n", rows[i].v);
        }
    }
    cm_prom_head(out, "remora_endpoint_ejected", "gauge", "1 while an endpoint is ejected.");
    uint64_t now = cm_mono_ms();
    nrec = 0;
    for (const struct px_ep_state *s = rs->states; s != NULL && nrec < ROUTES_METRICS_MAX_EPS;
         s = s->next, nrec++) {
        char a[CM_ADDR_STRLEN];
        cm_prom_add(out, "remora_endpoint_ejected{", 24);
        cm_prom_label(out, "endpoint", cm_addr_format(&s->addr, a, sizeof(a)), true);
        cm_prom_printf(out, "} %d\n", px_ep_ejected(s, now) ? 1 : 0);
    }
    cm_prom_u64(out, "remora_outlier_ejections_total", "counter",
                "Endpoints ejected by outlier detection.", rs->ejections_total);
    cm_prom_u64(out, "remora_endpoint_records", "gauge",
                "Endpoint records held (routes file and discovered Services); the "
                "remora_endpoint_* rows list at most 10000.",
                (uint64_t)rs->nstates);
    cm_prom_head(out, "remora_proxy_zone_info", "gauge",
                 "Our locality: the zone and where it came from (config, discovery, none).");
    cm_prom_add(out, "remora_proxy_zone_info{", 23);
    cm_prom_label(out, "zone", rs->cluster != NULL ? rs->cluster : "", true);
    cm_prom_label(out, "source", px_zone_source(rs), false);
    cm_prom_printf(out, "} 1\n");
    size_t len;
    int err;
    char *text = cm_prom_take(out, &len, &err);
    if (err != CM_OK)
        cm_error("routes metrics: text over %u bytes (%s): left out of /metrics", ROUTES_TEXT_MAX,
                 cm_err_str(err));
    else
        evbuffer_add(dst, text, len);
    free(text);
}
