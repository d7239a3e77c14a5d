/* Unit tests of proxy/service.c: a discovery answer becomes a route (only
 * ready, serving, not terminating endpoints; identity and transport per
 * endpoint; zones as localities; the Service defaults), built once per answer
 * version, a request in flight keeping its route while a new version replaces
 * it, ejections kept across versions, locality preference, the routes-file
 * "service" override, and its parsing errors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/net.h"
#include "proxy/discovery.h"
#include "proxy/routes.h"
#include "proxy/routes_int.h"
#include "proxy/service.h"
#include "proxy/zone.h"

static struct px_dest_answer *answer(const char *doc)
{
    struct px_dest_answer *a = NULL;
    char *err = NULL;
    if (px_dest_decode(doc, strlen(doc), &a, &err) != 0)
        fail_msg("decode: %s", err);
    return a;
}

#define EP(addr, meshed, sa, zone, ready, serving, term)                                           \
    "{\"address\": \"" addr "\", \"identity\": " sa ", \"meshed\": " meshed ", \"zone\": \"" zone  \
    "\", \"ready\": " ready ", \"serving\": " serving ", \"terminating\": " term                   \
    ", \"pod\": null}"
#define WEB "\"spiffe://cluster.local/ns/shop/sa/web\""
#define API "\"spiffe://cluster.local/ns/shop/sa/api\""

static const char *V1 =
    "{\"kind\": \"service\", \"service\": \"shop/web\", \"port\": 80, \"protocol\": \"http\", "
    "\"version\": \"v1\", \"endpoints\": [" EP(
        "10.0.0.1:8080", "true", WEB, "z1", "true", "true",
        "false") "," EP("10.0.0.2:8080", "false", "null", "z2", "true", "true",
                        "false") "," EP("10.0.0.3:8080", "true", API, "z1", "true", "true",
                                        "true") "," EP("10.0.0.4:8080", "true", WEB, "z1", "false",
                                                       "false", "false") "," EP("10.0.0.5:8080",
                                                                                "true", WEB, "z1",
                                                                                "true", "false",
                                                                                "false") "]}";

/* v2: 10.0.0.2 gone, 10.0.0.6 new */
static const char *V2 =
    "{\"kind\": \"service\", \"service\": \"shop/web\", \"port\": 80, \"protocol\": \"grpc\", "
    "\"version\": \"v2\", \"endpoints\": [" EP("10.0.0.1:8080", "true", WEB, "z1", "true", "true",
                                               "false") "," EP("10.0.0.6:8080", "false", "null", "",
                                                               "true", "true", "false") "]}";

static struct px_endpoint *find_ep(struct px_route *rt, const char *addr)
{
    char b[CM_ADDR_STRLEN];
    for (size_t i = 0; i < rt->neps; i++)
        if (strcmp(cm_addr_format(&rt->eps[i].addr, b, sizeof(b)), addr) == 0)
            return &rt->eps[i];
    return NULL;
}

/* Eject e: the Service default's 5 consecutive connect failures. */
static void eject(struct px_route *rt, struct px_endpoint *e)
{
    for (int i = 0; i < 5; i++) {
        px_route_try_start(e);
        px_route_report(rt, e, PX_TRY_CONNECT, 0);
    }
}

static void answer_becomes_route(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    struct px_dest_answer *a = answer(V1);
    struct px_route *rt;
    struct px_routes *r = px_service_route_for(rs, NULL, a, &rt);
    assert_non_null(r);
    assert_ptr_equal(rt, &r->routes[0]);
    assert_string_equal(rt->name, "service shop/web");
    /* only ready && serving && !terminating: .1 and .2 */
    assert_int_equal(rt->neps, 2);
    struct px_endpoint *e1 = find_ep(rt, "10.0.0.1:8080"), *e2 = find_ep(rt, "10.0.0.2:8080");
    assert_non_null(e1);
    assert_non_null(e2);
    assert_string_equal(e1->identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_int_equal(e1->via, PX_EP_VIA_MESH);
    assert_string_equal(e1->cluster, "z1");
    assert_null(e2->identity);
    assert_int_equal(e2->via, PX_EP_VIA_PLAIN);
    assert_string_equal(e2->cluster, "z2");
    assert_int_equal(e1->weight, 1);
    assert_non_null(e1->st); /* bound to the shared records */
    assert_ptr_equal(rt->rs, rs);
    /* the defaults */
    assert_int_equal(rt->attempts, 2);
    assert_int_equal(rt->retry_on, PX_RETRY_CONNECT_FAILURE | PX_RETRY_RESET);
    assert_int_equal(rt->budget_percent, 20);
    assert_int_equal(rt->timeout_ms, 0);
    assert_int_equal(rt->outlier_failures, 5);
    assert_int_equal(rt->cb.max_connections, PX_BREAKER_UNSET);
    /* built once per version: the same route again, no second build */
    struct px_route *rt2;
    struct px_routes *r2 = px_service_route_for(rs, NULL, a, &rt2);
    assert_ptr_equal(r2, r);
    uint64_t builds, hits;
    px_service_stats(rs, &builds, &hits);
    assert_int_equal(builds, 1);
    assert_int_equal(hits, 1);
    px_routes_unref(r2);
    /* the same version held twice (the discovery cache's entry by address and by
     * Host): the same route, no rebuild */
    struct px_dest_answer *twin = answer(V1);
    r2 = px_service_route_for(rs, NULL, twin, &rt2);
    assert_ptr_equal(r2, r);
    px_routes_unref(r2);
    r2 = px_service_route_for(rs, NULL, a, &rt2);
    assert_ptr_equal(r2, r);
    px_service_stats(rs, &builds, &hits);
    assert_int_equal(builds, 1);
    px_routes_unref(r2);
    px_dest_answer_unref(twin);
    px_routes_unref(r);
    px_dest_answer_unref(a);
    px_routes_state_free(rs);
}

static void swap_keeps_request_route_and_ejections(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    struct px_dest_answer *a1 = answer(V1);
    struct px_route *rt1;
    struct px_routes *r1 = px_service_route_for(rs, NULL, a1, &rt1); /* a request in flight */
    struct px_endpoint *e1 = find_ep(rt1, "10.0.0.1:8080");
    /* eject 10.0.0.1 (5 consecutive connect failures), a request on .2 outstanding */
    eject(rt1, e1);
    assert_true(e1->st->ejected_until_ms > 0);
    px_route_try_start(find_ep(rt1, "10.0.0.2:8080"));
    /* the answer changes: the cache drops v1 (the request still holds it) */
    px_dest_answer_unref(a1);
    struct px_dest_answer *a2 = answer(V2);
    struct px_route *rt2;
    struct px_routes *r2 = px_service_route_for(rs, NULL, a2, &rt2);
    assert_ptr_not_equal(r2, r1);
    assert_int_equal(rt2->neps, 2);
    struct px_endpoint *n1 = find_ep(rt2, "10.0.0.1:8080"), *n6 = find_ep(rt2, "10.0.0.6:8080");
    assert_non_null(n6);
    assert_null(find_ep(rt2, "10.0.0.2:8080"));
    assert_int_equal(n6->via, PX_EP_VIA_PLAIN_H2C); /* protocol grpc: h2c */
    assert_null(n6->cluster);                       /* zone "" */
    /* the ejection is not forgotten: the same record, still ejected */
    assert_ptr_equal(n1->st, e1->st);
    for (int i = 0; i < 50; i++)
        assert_ptr_equal(px_route_pick(rt2, NULL, 0), n6);
    /* the request in flight still has v1's route, whole: it finishes there */
    struct px_endpoint *old2 = find_ep(rt1, "10.0.0.2:8080");
    assert_non_null(old2);
    assert_int_equal(old2->st->outstanding, 1);
    px_route_report(rt1, old2, PX_TRY_OK, 1000);
    assert_int_equal(old2->st->outstanding, 0);
    px_routes_unref(r1); /* freed now: ASan would see any use after */
    /* one cache entry for the destination, not one per version */
    assert_int_equal(px_service_cached(rs), 1);
    px_routes_unref(r2);
    px_dest_answer_unref(a2);
    px_routes_state_free(rs);
}

static void locality_prefers_own_zone(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new("z2");
    struct px_dest_answer *a = answer(V1);
    struct px_route *rt;
    struct px_routes *r = px_service_route_for(rs, NULL, a, &rt);
    struct px_endpoint *e2 = find_ep(rt, "10.0.0.2:8080"), *e1 = find_ep(rt, "10.0.0.1:8080");
    for (int i = 0; i < 100; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), e2);
    /* z2's only endpoint ejected: the other zone takes over */
    eject(rt, e2);
    for (int i = 0; i < 20; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), e1);
    px_routes_unref(r);
    px_dest_answer_unref(a);
    px_routes_state_free(rs);
}

static struct px_routes *parse_ok(const char *json)
{
    struct px_routes *r = NULL;
    char *err = NULL;
    if (px_routes_parse("t.json", json, strlen(json), &r, &err) != 0)
        fail_msg("parse: %s", err);
    return r;
}

static void routes_file_override(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    struct px_dest_answer *a = answer(V1);
    /* timeouts and retries from the file, the discovered endpoints */
    struct px_routes *cur =
        parse_ok("{\"routes\": [{\"name\": \"web\", \"match\": {\"service\": \"shop/web\"}, "
                 "\"timeout_ms\": 1500, \"retries\": {\"attempts\": 3, \"on\": [\"5xx\"]}, "
                 "\"outlier\": {\"consecutive_failures\": 2}, \"circuit_breakers\": "
                 "{\"max_connections\": 7}}, {\"match\": {\"service\": \"shop/other\"}}]}");
    assert_null(px_routes_match(cur, "shop/web", NULL)); /* never matched as a host */
    px_routes_bind_states(rs, cur);
    struct px_route *rt;
    struct px_routes *r = px_service_route_for(rs, cur, a, &rt);
    assert_non_null(r);
    assert_ptr_not_equal(r, cur);
    assert_string_equal(rt->name, "web");
    assert_int_equal(rt->timeout_ms, 1500);
    assert_int_equal(rt->attempts, 3);
    assert_int_equal(rt->retry_on, PX_RETRY_5XX);
    assert_int_equal(rt->outlier_failures, 2);
    assert_int_equal(rt->cb.max_connections, 7);
    assert_int_equal(rt->neps, 2);
    assert_int_equal(cur->routes[1].attempts, 2); /* no "retries": the Service default */
    px_routes_unref(r);
    /* a reload: the route is rebuilt under the new snapshot, whose entry
     * lists endpoints: those win */
    struct px_routes *cur2 =
        parse_ok("{\"routes\": [{\"match\": {\"service\": \"shop/web\"}, \"endpoints\": "
                 "[{\"address\": \"10.9.9.9:1\"}]}]}");
    px_routes_bind_states(rs, cur2);
    r = px_service_route_for(rs, cur2, a, &rt);
    assert_ptr_equal(r, cur2);
    assert_ptr_equal(rt, &cur2->routes[0]);
    assert_int_equal(rt->neps, 1);
    assert_int_equal(rt->eps[0].via, PX_EP_VIA_LISTENER);
    px_routes_unref(r);
    px_routes_unref(cur);
    px_routes_unref(cur2);
    px_dest_answer_unref(a);
    px_routes_state_free(rs);
}

static void parse_bad(const char *json, const char *want)
{
    struct px_routes *r = NULL;
    char *err = NULL;
    assert_int_not_equal(px_routes_parse("t.json", json, strlen(json), &r, &err), 0);
    assert_non_null(err);
    if (strstr(err, want) == NULL)
        fail_msg("error \"%s\" lacks \"%s\"", err, want);
    free(err);
}

static void service_match_errors(void **state)
{
    (void)state;
    parse_bad("{\"routes\": [{\"match\": {\"service\": \"web\"}}]}",
              "routes[0].match.service: \"web\" is not a Service \"namespace/name\"");
    parse_bad("{\"routes\": [{\"match\": {\"service\": \"Shop/web\"}}]}",
              "routes[0].match.service: \"Shop/web\"");
    parse_bad("{\"routes\": [{\"match\": {\"service\": \"shop/web/x\"}}]}",
              "routes[0].match.service");
    parse_bad("{\"routes\": [{\"match\": {\"service\": \"shop/-web\"}}]}",
              "routes[0].match.service");
    parse_bad("{\"routes\": [{\"match\": {\"service\": 7}}]}", "routes[0].match.service");
    parse_bad("{\"routes\": [{\"match\": {\"service\": \"a/b\", \"host\": \"x\"}}]}",
              "routes[0].match: give exactly one of \"host\", \"address\" or \"service\"");
    parse_bad("{\"routes\": [{\"match\": {\"service\": \"a/b\"}, \"endpoints\": []}]}",
              "routes[0].endpoints: 1 to 4096 endpoints");
    parse_bad("{\"routes\": [{\"match\": {\"host\": \"a\"}}]}", "routes[0].endpoints");
}

static void pods_and_empty(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    struct px_dest_answer *p =
        answer("{\"kind\": \"pod\", \"service\": null, \"port\": 9000, \"protocol\": \"\", "
               "\"version\": \"p1\", \"endpoints\": [" EP("10.1.0.1:9000", "true", WEB, "", "true",
                                                          "true", "false") "]}");
    struct px_route *rt;
    struct px_routes *r = px_service_route_for(rs, NULL, p, &rt);
    assert_non_null(r);
    assert_string_equal(rt->name, "pod 10.1.0.1:9000");
    assert_int_equal(rt->neps, 1);
    assert_string_equal(rt->eps[0].identity, "spiffe://cluster.local/ns/shop/sa/web");
    px_routes_unref(r);
    /* nothing ready: no route (the connection's destination, as before) */
    struct px_dest_answer *e = answer(
        "{\"kind\": \"service\", \"service\": \"shop/down\", \"port\": 80, \"protocol\": \"\", "
        "\"version\": \"d1\", \"endpoints\": [" EP("10.2.0.1:80", "false", "null", "", "false",
                                                   "false", "false") "]}");
    assert_null(px_service_route_for(rs, NULL, e, &rt));
    assert_null(rt);
    px_dest_answer_unref(e);
    px_dest_answer_unref(p);
    px_routes_state_free(rs);
}

static void cache_is_bounded(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    for (int i = 0; i < PX_SVC_CACHE_MAX + 50; i++) {
        char doc[512];
        snprintf(doc, sizeof(doc),
                 "{\"kind\": \"service\", \"service\": \"ns/s%d\", \"port\": 80, \"protocol\": "
                 "\"\", \"version\": \"x\", \"endpoints\": [{\"address\": \"10.3.%d.%d:80\", "
                 "\"identity\": null, \"meshed\": false, \"zone\": \"\", \"ready\": true, "
                 "\"serving\": true, \"terminating\": false, \"pod\": null}]}",
                 i, i / 250, i % 250);
        struct px_dest_answer *a = answer(doc);
        struct px_route *rt;
        struct px_routes *r = px_service_route_for(rs, NULL, a, &rt);
        assert_non_null(r);
        px_routes_unref(r);
        px_dest_answer_unref(a);
        assert_true(px_service_cached(rs) <= PX_SVC_CACHE_MAX);
    }
    assert_int_equal(px_service_cached(rs), PX_SVC_CACHE_MAX);
    px_routes_state_free(rs);
}

/* Endpoints come and go: the records stay bounded (one per address named by a
 * live route), but an ejected endpoint that leaves and comes back is still
 * ejected. */
static void records_follow_churn(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    const char *fmt = "{\"kind\": \"service\", \"service\": \"ns/churn\", \"port\": 80, "
                      "\"protocol\": \"\", \"version\": \"v%d\", \"endpoints\": ["
                      "{\"address\": \"10.4.0.1:80\", \"identity\": null, \"meshed\": false, "
                      "\"zone\": \"\", \"ready\": true, \"serving\": true, \"terminating\": "
                      "false, \"pod\": null}, {\"address\": \"10.5.%d.%d:80\", \"identity\": "
                      "null, \"meshed\": false, \"zone\": \"\", \"ready\": true, \"serving\": "
                      "true, \"terminating\": false, \"pod\": null}]}";
    char doc[700];
    for (int i = 0; i < 5000; i++) {
        snprintf(doc, sizeof(doc), fmt, i, i / 250, i % 250);
        struct px_dest_answer *a = answer(doc);
        struct px_route *rt;
        struct px_routes *r = px_service_route_for(rs, NULL, a, &rt);
        assert_int_equal(rt->neps, 2);
        px_routes_unref(r);
        px_dest_answer_unref(a);
        assert_true(px_routes_nstates(rs) <= 3); /* the two in force (and one going) */
    }
    /* 10.5.0.7 ejected, then gone from the answer, then back: still ejected */
    snprintf(doc, sizeof(doc), fmt, 9001, 0, 7);
    struct px_dest_answer *a = answer(doc);
    struct px_route *rt;
    struct px_routes *r = px_service_route_for(rs, NULL, a, &rt);
    struct px_endpoint *e = find_ep(rt, "10.5.0.7:80");
    eject(rt, e);
    assert_true(e->st->ejected_until_ms > 0);
    px_routes_unref(r);
    px_dest_answer_unref(a);
    snprintf(doc, sizeof(doc), fmt, 9002, 0, 8);
    a = answer(doc); /* 10.5.0.7 left */
    r = px_service_route_for(rs, NULL, a, &rt);
    px_routes_unref(r);
    px_dest_answer_unref(a);
    assert_null(px_service_route_for(rs, NULL, NULL, &rt));
    snprintf(doc, sizeof(doc), fmt, 9003, 0, 7);
    a = answer(doc); /* and came back */
    r = px_service_route_for(rs, NULL, a, &rt);
    e = find_ep(rt, "10.5.0.7:80");
    assert_true(e->st->ejected_until_ms > 0);
    assert_int_equal(e->st->ejections, 1);
    for (int i = 0; i < 20; i++)
        assert_ptr_equal(px_route_pick(rt, NULL, 0), find_ep(rt, "10.4.0.1:80"));
    px_routes_unref(r);
    px_dest_answer_unref(a);
    px_routes_state_free(rs);
}

static const char *ZS =
    "{\"kind\": \"service\", \"service\": \"shop/zoned\", \"port\": 80, \"protocol\": \"\", "
    "\"version\": \"z\", \"endpoints\": [" EP(
        "10.0.1.1:80", "false", "null", "z1", "true", "true",
        "false") "," EP("10.0.1.2:80", "false", "null", "z1", "true", "true",
                        "false") "," EP("10.0.2.1:80", "false", "null", "z2", "true", "true",
                                        "false") "]}";

/* picks of rt: how many went to endpoints of zone z (of n) */
static int picks_in(struct px_route *rt, const char *z, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        struct px_endpoint *e = px_route_pick(rt, NULL, 0);
        px_route_try_start(e);
        px_route_try_head(rt, e, 1000);
        px_route_report(rt, e, PX_TRY_OK, 0);
        k += e->cluster != NULL && strcmp(e->cluster, z) == 0;
    }
    return k;
}

/* The own zone from discovery (proxy/zone.c): the zone of the endpoint at our
 * address; a change re-ranks routes already built; "" / 404 -> no preference;
 * unreachable -> the last one stays; a configured cluster is never replaced. */
static void zone_learned_from_discovery(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    struct cm_addr self;
    assert_int_equal(cm_addr_parse("10.9.0.1:15001", &self), 0);
    assert_string_equal(px_zone_source(rs), "none");
    struct px_dest_answer *svc = answer(ZS);
    struct px_route *rt;
    struct px_routes *r = px_service_route_for(rs, NULL, svc, &rt);
    assert_non_null(r);
    /* no zone yet: every endpoint is a candidate */
    int z2 = picks_in(rt, "z2", 300);
    assert_true(z2 > 0 && z2 < 300);

    /* our pod's answer: kind pod, its one endpoint in z1 (any port) */
    struct px_dest_answer *pod = answer(
        "{\"kind\": \"pod\", \"service\": \"shop/client\", \"port\": 80, \"protocol\": \"\", "
        "\"version\": \"p1\", \"endpoints\": [" EP("10.9.0.1:80", "true", WEB, "z1", "true", "true",
                                                   "false") "]}");
    assert_true(px_zone_apply(rs, &self, PX_DISC_FOUND, pod));
    assert_string_equal(rs->cluster, "z1");
    assert_string_equal(px_zone_source(rs), "discovery");
    assert_int_equal(picks_in(rt, "z1", 200), 200); /* the route built before re-ranks */
    assert_false(px_zone_apply(rs, &self, PX_DISC_FOUND, pod));        /* the same: no change */
    assert_false(px_zone_apply(rs, &self, PX_DISC_UNAVAILABLE, NULL)); /* kept */
    assert_string_equal(rs->cluster, "z1");
    assert_int_equal(rs->zone_changes, 1);

    /* both z1 endpoints ejected: failover to z2 */
    for (int k = 0; k < 2; k++) {
        struct px_endpoint *e = &rt->eps[k];
        assert_string_equal(e->cluster, "z1");
        eject(rt, e);
    }
    assert_int_equal(picks_in(rt, "z2", 50), 50);
    px_routes_unref(r);

    /* a newer answer naming our address (another port) among several: z2 now */
    struct px_dest_answer *moved = answer(
        "{\"kind\": \"service\", \"service\": \"shop/client\", \"port\": 80, \"protocol\": \"\", "
        "\"version\": \"p2\", \"endpoints\": [" EP(
            "10.9.0.7:80", "true", WEB, "z1", "true", "true",
            "false") "," EP("10.9.0.1:9090", "true", WEB, "z2", "true", "true", "false") "]}");
    assert_true(px_zone_apply(rs, &self, PX_DISC_FOUND, moved));
    assert_string_equal(rs->cluster, "z2");
    json_t *j = px_zone_json(rs);
    assert_string_equal(json_string_value(json_object_get(j, "zone")), "z2");
    assert_string_equal(json_string_value(json_object_get(j, "zone_source")), "discovery");
    assert_int_equal(json_integer_value(json_object_get(j, "zone_changes")), 2);
    json_decref(j);

    /* zone "" -> no preference; so does a 404 */
    struct px_dest_answer *none =
        answer("{\"kind\": \"pod\", \"service\": null, \"port\": 80, \"protocol\": \"\", "
               "\"version\": \"p3\", \"endpoints\": [" EP("10.9.0.1:80", "true", WEB, "", "true",
                                                          "true", "false") "]}");
    assert_true(px_zone_apply(rs, &self, PX_DISC_FOUND, none));
    assert_null(rs->cluster);
    assert_string_equal(px_zone_source(rs), "none");
    assert_true(px_zone_apply(rs, &self, PX_DISC_FOUND, pod));
    assert_true(px_zone_apply(rs, &self, PX_DISC_NOT_FOUND, NULL));
    assert_null(rs->cluster);
    /* a configured cluster is never replaced */
    struct px_routes_state *cfg = px_routes_state_new("zc");
    assert_false(px_zone_apply(cfg, &self, PX_DISC_FOUND, pod));
    assert_string_equal(cfg->cluster, "zc");
    assert_string_equal(px_zone_source(cfg), "config");
    px_routes_state_free(cfg);

    px_dest_answer_unref(none);
    px_dest_answer_unref(moved);
    px_dest_answer_unref(pod);
    px_dest_answer_unref(svc);
    px_routes_state_free(rs);
}

static void count_each(const struct px_dest_answer *a, struct px_route *rt, int file_route,
                       void *arg)
{
    (void)a;
    size_t *n = arg;
    n[0]++;
    n[1] += rt != NULL ? rt->neps : 0;
    n[2] += (size_t)file_route;
}

/* GET /clusters walks the cache with px_service_each: each destination once. */
static void each_lists_cached(void **state)
{
    (void)state;
    struct px_routes_state *rs = px_routes_state_new(NULL);
    struct px_dest_answer *a = answer(ZS), *b = answer(V1);
    struct px_route *rt;
    struct px_routes *r1 = px_service_route_for(rs, NULL, a, &rt);
    struct px_routes *r2 = px_service_route_for(rs, NULL, b, &rt);
    size_t n[3] = {0, 0, 0};
    px_service_each(rs, count_each, n);
    assert_int_equal(n[0], 2);
    assert_int_equal(n[1], 3 + 2);
    assert_int_equal(n[2], 0);
    px_routes_unref(r1);
    px_routes_unref(r2);
    px_dest_answer_unref(a);
    px_dest_answer_unref(b);
    px_routes_state_free(rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(answer_becomes_route),
        cmocka_unit_test(swap_keeps_request_route_and_ejections),
        cmocka_unit_test(locality_prefers_own_zone),
        cmocka_unit_test(routes_file_override),
        cmocka_unit_test(service_match_errors),
        cmocka_unit_test(pods_and_empty),
        cmocka_unit_test(cache_is_bounded),
        cmocka_unit_test(records_follow_churn),
        cmocka_unit_test(zone_learned_from_discovery),
        cmocka_unit_test(each_lists_cached),
    };
    int rc = cmocka_run_group_tests_name("proxy/service", tests, NULL, NULL);
    pki_rng_free();
    return rc;
}
