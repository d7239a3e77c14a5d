/* Routes files -> struct px_routes (docs/routes.md): every key checked, an
 * error names the bad key, defaults filled in, the match index built
 * (routes_index.c). Also px_route_breakers, which applies a route's parsed
 * circuit_breakers overrides. */
#include "proxy/routes.h"

#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/err.h"
#include "common/json.h"
#include "common/net.h"
#include "common/xalloc.h"
#include "proxy/grpc.h"
#include "proxy/routes_int.h"
#include "proxy/service.h"

/* Length of a Host value without its ":port" (digits only; "[v6]:port" too). */
size_t px_routes_host_len(const char *h)
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

static int parse_retry_on(const struct cm_jpath *p, json_t *arr, struct px_route *rt, char **errmsg)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return cm_json_fail(p, errmsg, "expected a non-empty array");
    rt->retry_on = 0;
    rt->nretry_codes = 0;
    rt->retry_grpc = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        struct cm_jpath c;
        cm_jpath_index(&c, p, i);
        const char *s = json_string_value(v);
        int gcode;
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
        else if (px_grpc_status_by_name(s, &gcode) == 0)
            rt->retry_grpc |= 1u << gcode; /* gRPC status names: proxy/grpc.c */
        else {
            char *end;
            long code = strtol(s, &end, 10);
            if (*s == '\0' || *end != '\0' || code < 100 || code > 599)
                return cm_json_fail(&c, errmsg,
                                    "\"%s\" is not connect-failure, reset, 5xx, gateway-error, "
                                    "a status code or a gRPC status (cancelled, "
                                    "deadline-exceeded, internal, resource-exhausted, "
                                    "unavailable)",
                                    s);
            if (rt->nretry_codes >= sizeof(rt->retry_codes) / sizeof(rt->retry_codes[0]))
                return cm_json_fail(&c, errmsg, "at most 8 status codes");
            rt->retry_codes[rt->nretry_codes++] = (int)code;
        }
    }
    return 0;
}

/* "namespace/name": two DNS-1123 labels. */
static bool service_name_ok(const char *svc)
{
    const char *slash = strchr(svc, '/');
    return slash != NULL && cm_dns_label(svc, (size_t)(slash - svc)) &&
           cm_dns_label(slash + 1, strlen(slash + 1));
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

void px_route_set_defaults(struct px_route *rt, uint32_t attempts)
{
    rt->attempts = attempts;
    rt->retry_on = PX_RETRY_CONNECT_FAILURE | PX_RETRY_RESET;
    rt->budget_percent = 20;
    rt->backoff_base_ms = 10;
    rt->outlier_failures = 5;
    rt->outlier_base_ms = 30000;
    rt->cb.max_connections = rt->cb.max_pending_requests = PX_BREAKER_UNSET;
    rt->cb.pending_timeout_ms = rt->cb.max_requests_per_connection = PX_BREAKER_UNSET;
}

static int parse_route(const struct cm_jpath *p, json_t *o, struct px_route *rt, size_t idx,
                       char **errmsg)
{
    static const char *const keys[] = {"name",      "match",   "timeout_ms",       "retries",
                                       "endpoints", "outlier", "circuit_breakers", NULL};
    static const char *const cbkeys[] = {"max_connections", "max_pending_requests",
                                         "pending_timeout_ms", "max_requests_per_connection", NULL};
    static const char *const mkeys[] = {"host", "address", "service", NULL};
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
    px_route_set_defaults(rt, 1); /* one try */

    json_t *m = NULL;
    if (cm_json_get_child(p, o, "match", true, JSON_OBJECT, &m, errmsg) != 0)
        return CM_ERR_INVAL;
    cm_jpath_key(&c, p, "match");
    if (cm_json_check_keys(&c, m, mkeys, errmsg) != 0)
        return CM_ERR_INVAL;
    const char *host = NULL, *addr = NULL, *svc = NULL;
    if (cm_json_get_string(&c, m, "host", false, &host, errmsg) != 0 ||
        cm_json_get_string(&c, m, "address", false, &addr, errmsg) != 0 ||
        cm_json_get_string(&c, m, "service", false, &svc, errmsg) != 0)
        return CM_ERR_INVAL;
    if ((host != NULL) + (addr != NULL) + (svc != NULL) != 1)
        return cm_json_fail(&c, errmsg, "give exactly one of \"host\", \"address\" or \"service\"");
    if (svc != NULL) {
        if (!service_name_ok(svc)) {
            struct cm_jpath h;
            cm_jpath_key(&h, &c, "service");
            return cm_json_fail(&h, errmsg,
                                "\"%s\" is not a Service \"namespace/name\" (lower-case DNS "
                                "labels)",
                                svc);
        }
        rt->match_service = cm_xstrdup(svc);
        rt->attempts = PX_SVC_ATTEMPTS; /* a Service's default until "retries" says */
    } else if (host != NULL) {
        if (host[0] == '\0' || strlen(host) > 253)
            return cm_json_fail(&c, errmsg, "host must be 1..253 characters");
        rt->match_host = cm_xstrndup(host, px_routes_host_len(host)); /* "port ignored" */
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
        if (px_routes_host_len(rt->match_host) != strlen(rt->match_host)) {
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
    /* a "service" route without endpoints runs on the discovered ones */
    if (cm_json_get_child(p, o, "endpoints", svc == NULL, JSON_ARRAY, &eps, errmsg) != 0)
        return CM_ERR_INVAL;
    cm_jpath_key(&c, p, "endpoints");
    size_t n = json_array_size(eps);
    if (eps != NULL && (n == 0 || n > 4096))
        return cm_json_fail(&c, errmsg, "1 to 4096 endpoints");
    rt->eps = cm_xcalloc(n ? n : 1, sizeof(*rt->eps));
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
    px_routes_index_build(r);
    *out = r;
    return 0;
fail:
    px_routes_free(r);
    return CM_ERR_INVAL;
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
