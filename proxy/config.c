#include "proxy/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/json.h"
#include "common/xalloc.h"
#include "proxy/discovery.h"

void px_limits_default(struct px_limits *l)
{
    l->max_header_bytes = 64 * 1024;
    l->max_headers = 100;
    l->max_request_body = 0;
    l->buffer_bytes = 64 * 1024;
    l->header_timeout_ms = 10000;
    l->idle_timeout_ms = 60000;
    l->connect_timeout_ms = 5000;
    l->request_timeout_ms = 0;
    l->detect_timeout_ms = 500;
    l->drain_timeout_ms = 5000;
    l->max_connections = 10000;
    l->pool_max_idle = 1024;
    l->pool_idle_timeout_ms = 30000;
    l->h2_max_concurrent_streams = 128;
    l->retry_buffer_bytes = 64 * 1024;
    l->h2_max_resets_per_window = 200;
    l->h2_reset_window_ms = 10000;
    l->tcp_idle_timeout_ms = 3600000; /* Envoy's tcp_proxy idle_timeout */
    /* circuit breakers (Envoy's defaults but the timeout, which Envoy lacks) */
    l->upstream.max_connections = 1024;
    l->upstream.max_pending_requests = 1024;
    l->upstream.pending_timeout_ms = 5000;
    l->upstream.max_requests_per_connection = 128;
}

void px_config_free(struct px_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        free(cfg->listeners[i].name);
    free(cfg->listeners);
    free(cfg->access_log);
    free(cfg->cluster);
    free(cfg->policy_file);
    free(cfg->routes_file);
    px_disc_cfg_deinit(cfg->discovery);
    free(cfg->discovery);
    free(cfg->file);
    json_decref(cfg->raw);
    free(cfg);
}

static int get_addr(const struct cm_jpath *p, json_t *obj, const char *key, bool required,
                    struct cm_addr *out, bool *present, char **errmsg)
{
    const char *s = NULL;
    int rc = cm_json_get_string(p, obj, key, required, &s, errmsg);
    if (rc != 0)
        return rc;
    if (present != NULL)
        *present = s != NULL;
    if (s == NULL)
        return 0;
    if (cm_addr_parse(s, out) != 0) {
        struct cm_jpath c;
        cm_jpath_key(&c, p, key);
        return cm_json_fail(&c, errmsg,
                            "\"%s\" is not an address (want \"ip:port\" or \"[ipv6]:port\")", s);
    }
    return 0;
}

static int get_u32(const struct cm_jpath *p, json_t *obj, const char *key, int64_t min, int64_t max,
                   uint32_t *out, char **errmsg)
{
    int64_t v = *out;
    int rc = cm_json_get_int(p, obj, key, false, min, max, &v, errmsg);
    if (rc == 0)
        *out = (uint32_t)v;
    return rc;
}

int px_breakers_parse(const struct cm_jpath *p, json_t *o, const char *prefix,
                      struct px_breakers *b, char **errmsg)
{
    char k[64];
    int rc = 0;
    snprintf(k, sizeof(k), "%smax_connections", prefix);
    rc = rc ?: get_u32(p, o, k, 1, 1000000, &b->max_connections, errmsg);
    snprintf(k, sizeof(k), "%smax_pending_requests", prefix);
    rc = rc ?: get_u32(p, o, k, 0, 1000000, &b->max_pending_requests, errmsg);
    snprintf(k, sizeof(k), "%spending_timeout_ms", prefix);
    rc = rc ?: get_u32(p, o, k, 1, 3600000, &b->pending_timeout_ms, errmsg);
    snprintf(k, sizeof(k), "%smax_requests_per_connection", prefix);
    rc = rc ?: get_u32(p, o, k, 1, 100000, &b->max_requests_per_connection, errmsg);
    return rc;
}

static int parse_limits(const struct cm_jpath *p, json_t *o, struct px_limits *l, char **errmsg)
{
    static const char *const keys[] = {"max_header_bytes",
                                       "max_headers",
                                       "max_request_body",
                                       "buffer_bytes",
                                       "header_timeout_ms",
                                       "idle_timeout_ms",
                                       "connect_timeout_ms",
                                       "request_timeout_ms",
                                       "detect_timeout_ms",
                                       "drain_timeout_ms",
                                       "max_connections",
                                       "pool_max_idle",
                                       "pool_idle_timeout_ms",
                                       "h2_max_concurrent_streams",
                                       "retry_buffer_bytes",
                                       "h2_max_resets_per_window",
                                       "h2_reset_window_ms",
                                       "tcp_idle_timeout_ms",
                                       "upstream_max_connections",
                                       "upstream_max_pending_requests",
                                       "upstream_pending_timeout_ms",
                                       "upstream_max_requests_per_connection",
                                       NULL};
    if (cm_json_check_keys(p, o, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    int64_t body = (int64_t)l->max_request_body;
    int rc = 0;
    rc = rc ?: get_u32(p, o, "max_header_bytes", 1024, 1024 * 1024, &l->max_header_bytes, errmsg);
    rc = rc ?: get_u32(p, o, "max_headers", 8, 10000, &l->max_headers, errmsg);
    rc = rc ?: cm_json_get_int(p, o, "max_request_body", false, 0, INT64_MAX, &body, errmsg);
    rc = rc ?: get_u32(p, o, "buffer_bytes", 4096, 64 * 1024 * 1024, &l->buffer_bytes, errmsg);
    rc = rc ?: get_u32(p, o, "header_timeout_ms", 1, 3600000, &l->header_timeout_ms, errmsg);
    rc = rc ?: get_u32(p, o, "idle_timeout_ms", 1, 86400000, &l->idle_timeout_ms, errmsg);
    rc = rc ?: get_u32(p, o, "connect_timeout_ms", 1, 3600000, &l->connect_timeout_ms, errmsg);
    rc = rc ?: get_u32(p, o, "request_timeout_ms", 0, 86400000, &l->request_timeout_ms, errmsg);
    rc = rc ?: get_u32(p, o, "detect_timeout_ms", 1, 60000, &l->detect_timeout_ms, errmsg);
    rc = rc ?: get_u32(p, o, "drain_timeout_ms", 0, 3600000, &l->drain_timeout_ms, errmsg);
    rc = rc ?: get_u32(p, o, "max_connections", 1, 10000000, &l->max_connections, errmsg);
    rc = rc ?: get_u32(p, o, "pool_max_idle", 0, 100000, &l->pool_max_idle, errmsg);
    rc = rc ?: get_u32(p, o, "pool_idle_timeout_ms", 1, 86400000, &l->pool_idle_timeout_ms, errmsg);
    rc = rc
             ?: get_u32(p, o, "h2_max_concurrent_streams", 1, 100000, &l->h2_max_concurrent_streams,
                        errmsg);
    rc = rc
             ?: get_u32(p, o, "retry_buffer_bytes", 0, 16 * 1024 * 1024, &l->retry_buffer_bytes,
                        errmsg);
    rc = rc
             ?: get_u32(p, o, "h2_max_resets_per_window", 1, 1000000, &l->h2_max_resets_per_window,
                        errmsg);
    rc = rc ?: get_u32(p, o, "h2_reset_window_ms", 1, 3600000, &l->h2_reset_window_ms, errmsg);
    rc = rc ?: get_u32(p, o, "tcp_idle_timeout_ms", 0, 604800000, &l->tcp_idle_timeout_ms, errmsg);
    rc = rc ?: px_breakers_parse(p, o, "upstream_", &l->upstream, errmsg);
    l->max_request_body = (uint64_t)body;
    return rc;
}

/* The array at c: at most max port numbers 1-65535, appended to ports[*n]
 * (`distinct`: a port listed twice is refused). Returns 0 or CM_ERR_INVAL. */
static int port_array(const struct cm_jpath *c, json_t *arr, size_t max, bool distinct,
                      uint16_t *ports, size_t *n, char **errmsg)
{
    if (*n > max || json_array_size(arr) > max - *n)
        return cm_json_fail(c, errmsg, "at most %zu ports", max);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        struct cm_jpath e;
        cm_jpath_index(&e, c, i);
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535)
            return cm_json_fail(&e, errmsg, "expected a port number 1-65535");
        uint16_t port = (uint16_t)json_integer_value(v);
        for (size_t j = 0; distinct && j < *n; j++)
            if (ports[j] == port)
                return cm_json_fail(&e, errmsg, "port %u is listed twice", (unsigned)port);
        ports[(*n)++] = port;
    }
    return 0;
}

/* "permissive_ports": [9090, 8080] on an inbound listener with "tls": "strict":
 * at most PX_MAX_PERMISSIVE_PORTS distinct port numbers. Anywhere else it would
 * mean nothing (or, on a permissive listener, less than it says): refused. */
static int parse_permissive_ports(const struct cm_jpath *p, json_t *o, struct px_listener_cfg *l,
                                  char **errmsg)
{
    json_t *arr = NULL;
    if (cm_json_get_child(p, o, "permissive_ports", false, JSON_ARRAY, &arr, errmsg) != 0)
        return CM_ERR_INVAL;
    if (arr == NULL)
        return 0;
    struct cm_jpath c;
    cm_jpath_key(&c, p, "permissive_ports");
    if (l->direction != PX_DIR_INBOUND || l->tls != PX_TLS_STRICT)
        return cm_json_fail(&c, errmsg,
                            "only an inbound listener with \"tls\": \"strict\" takes "
                            "permissive_ports");
    return port_array(&c, arr, PX_MAX_PERMISSIVE_PORTS, true, l->permissive_ports,
                      &l->npermissive_ports, errmsg);
}

static int parse_listener(const struct cm_jpath *p, json_t *o, struct px_listener_cfg *l,
                          char **errmsg)
{
    static const char *const keys[] = {"name",
                                       "address",
                                       "direction",
                                       "upstream",
                                       "tls",
                                       "upstream_protocol",
                                       "optional",
                                       "downstream_protocol",
                                       "permissive_ports",
                                       NULL};
    static const char *const dirs[] = {"inbound", "outbound", NULL};
    static const char *const tls_in[] = {"disabled", "strict", "permissive", NULL};
    static const char *const tls_out[] = {"disabled", "mesh", NULL};
    static const char *const protos[] = {"http1", "h2", NULL};
    static const char *const down_protos[] = {"detect", "h2", NULL};
    const char *name = NULL;
    int dir = 0, tls = 0, proto = 0, down_proto = 0;

    if (!json_is_object(o))
        return cm_json_fail(p, errmsg, "expected an object");
    if (cm_json_check_keys(p, o, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    if (cm_json_get_string(p, o, "name", true, &name, errmsg) != 0 ||
        get_addr(p, o, "address", true, &l->addr, NULL, errmsg) != 0 ||
        cm_json_get_enum(p, o, "direction", true, dirs, &dir, errmsg) != 0 ||
        get_addr(p, o, "upstream", false, &l->upstream, &l->has_upstream, errmsg) != 0 ||
        cm_json_get_enum(p, o, "upstream_protocol", false, protos, &proto, errmsg) != 0 ||
        cm_json_get_bool(p, o, "optional", false, &l->optional, errmsg) != 0 ||
        cm_json_get_enum(p, o, "downstream_protocol", false, down_protos, &down_proto, errmsg) != 0)
        return CM_ERR_INVAL;
    l->downstream_h2 = down_proto == 1;
    if (name[0] == '\0') {
        struct cm_jpath c;
        cm_jpath_key(&c, p, "name");
        return cm_json_fail(&c, errmsg, "must not be empty");
    }
    l->direction = (enum px_direction)dir;
    if (cm_json_get_enum(p, o, "tls", false, dir == PX_DIR_INBOUND ? tls_in : tls_out, &tls,
                         errmsg) != 0)
        return CM_ERR_INVAL;
    if (dir == PX_DIR_INBOUND)
        l->tls = tls == 0 ? PX_TLS_DISABLED : tls == 1 ? PX_TLS_STRICT : PX_TLS_PERMISSIVE;
    else
        l->tls = tls == 0 ? PX_TLS_DISABLED : PX_TLS_MESH;
    l->upstream_protocol = (enum px_upstream_proto)proto;
    if (parse_permissive_ports(p, o, l, errmsg) != 0)
        return CM_ERR_INVAL;
    l->name = cm_xstrdup(name);
    return 0;
}

static int parse_identity(const struct cm_jpath *p, json_t *o, char **errmsg)
{
    static const char *const keys[] = {
        "trust_domain", "namespace", "service_account", "ca_address",     "ca_root", "token_file",
        "cert_file",    "key_file",  "bundle_file",     "ca_server_name", NULL};
    if (cm_json_check_keys(p, o, keys, errmsg) != 0)
        return CM_ERR_INVAL;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        if (!json_is_string(v)) {
            struct cm_jpath c;
            cm_jpath_key(&c, p, key);
            return cm_json_fail(&c, errmsg, "expected a string");
        }
    }
    return 0;
}

static char *dup_opt(const char *s)
{
    return s ? cm_xstrdup(s) : NULL;
}

/* "opaque_ports": [3306, 5432]: at most PX_MAX_OPAQUE_PORTS port numbers. */
static int parse_opaque_ports(const struct cm_jpath *p, json_t *root, struct px_config *cfg,
                              char **errmsg)
{
    json_t *arr = NULL;
    if (cm_json_get_child(p, root, "opaque_ports", false, JSON_ARRAY, &arr, errmsg) != 0)
        return CM_ERR_INVAL;
    if (arr == NULL)
        return 0;
    struct cm_jpath c;
    cm_jpath_key(&c, p, "opaque_ports");
    return port_array(&c, arr, PX_MAX_OPAQUE_PORTS, false, cfg->opaque_ports, &cfg->nopaque_ports,
                      errmsg);
}

bool px_config_opaque_port(const struct px_config *cfg, uint16_t port)
{
    for (size_t i = 0; cfg != NULL && i < cfg->nopaque_ports; i++)
        if (cfg->opaque_ports[i] == port)
            return true;
    return false;
}

/* "tracing": {"sample_percent": N} (docs/config.md, docs/observability.md). */
static int parse_tracing(const struct cm_jpath *p, json_t *root, struct px_config *cfg,
                         char **errmsg)
{
    static const char *const keys[] = {"sample_percent", NULL};
    json_t *tr = NULL;
    struct cm_jpath c;
    if (cm_json_get_child(p, root, "tracing", false, JSON_OBJECT, &tr, errmsg) != 0)
        return CM_ERR_INVAL;
    if (tr == NULL)
        return 0;
    cm_jpath_key(&c, p, "tracing");
    if (cm_json_check_keys(&c, tr, keys, errmsg) != 0 ||
        get_u32(&c, tr, "sample_percent", 0, 100, &cfg->tracing.sample_percent, errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

static int parse_root(const char *name, json_t *root, struct px_config *cfg, char **errmsg)
{
    static const char *const keys[] = {
        "admin",   "listeners",           "identity",   "policy_file",     "routes_file",
        "cluster", "log_level",           "log_format", "access_log",      "limits",
        "health",  "opaque_ports",        "discovery",  "outbound_policy", "egress_allow",
        "tracing", "egress_verify_names", /* proxy/resolve.h */
        NULL};
    static const char *const formats[] = {"text", "json", NULL};
    struct cm_jpath p, c;
    cm_jpath_root(&p, name);
    if (cm_json_check_keys(&p, root, keys, errmsg) != 0)
        return CM_ERR_INVAL;

    json_t *admin = NULL, *listeners = NULL, *limits = NULL;
    if (cm_json_get_child(&p, root, "admin", false, JSON_OBJECT, &admin, errmsg) != 0)
        return CM_ERR_INVAL;
    if (admin != NULL) {
        static const char *const akeys[] = {"address", NULL};
        cm_jpath_key(&c, &p, "admin");
        if (cm_json_check_keys(&c, admin, akeys, errmsg) != 0 ||
            get_addr(&c, admin, "address", true, &cfg->admin_addr, NULL, errmsg) != 0)
            return CM_ERR_INVAL;
        cfg->has_admin = true;
    }

    /* the health port (kubelet probes, merged metrics); off when absent */
    json_t *health = NULL;
    if (cm_json_get_child(&p, root, "health", false, JSON_OBJECT, &health, errmsg) != 0)
        return CM_ERR_INVAL;
    if (health != NULL) {
        static const char *const hkeys[] = {"address", "address6", NULL};
        cm_jpath_key(&c, &p, "health");
        if (cm_json_check_keys(&c, health, hkeys, errmsg) != 0 ||
            get_addr(&c, health, "address", true, &cfg->health_addr, NULL, errmsg) != 0 ||
            get_addr(&c, health, "address6", false, &cfg->health_addr6, &cfg->has_health6,
                     errmsg) != 0)
            return CM_ERR_INVAL;
        cfg->has_health = true;
    }

    if (cm_json_get_child(&p, root, "listeners", true, JSON_ARRAY, &listeners, errmsg) != 0)
        return CM_ERR_INVAL;
    cm_jpath_key(&c, &p, "listeners");
    size_t nl = json_array_size(listeners);
    if (nl == 0)
        return cm_json_fail(&c, errmsg, "at least one listener is required");
    if (nl > 64)
        return cm_json_fail(&c, errmsg, "at most 64 listeners");
    cfg->listeners = cm_xcalloc(nl, sizeof(*cfg->listeners));
    cfg->nlisteners = nl;
    for (size_t i = 0; i < nl; i++) {
        struct cm_jpath li;
        cm_jpath_index(&li, &c, i);
        if (parse_listener(&li, json_array_get(listeners, i), &cfg->listeners[i], errmsg) != 0) {
            cfg->nlisteners = i; /* free only what was filled */
            return CM_ERR_INVAL;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->listeners[j].name, cfg->listeners[i].name) == 0) {
                cfg->nlisteners = i + 1;
                return cm_json_fail(&li, errmsg, "name \"%s\" is used twice",
                                    cfg->listeners[i].name);
            }
        }
    }

    json_t *identity = NULL;
    if (cm_json_get_child(&p, root, "identity", false, JSON_OBJECT, &identity, errmsg) != 0)
        return CM_ERR_INVAL;
    if (identity != NULL) {
        cm_jpath_key(&c, &p, "identity");
        if (parse_identity(&c, identity, errmsg) != 0)
            return CM_ERR_INVAL;
        cfg->identity = identity;
    }

    const char *policy = NULL, *routes = NULL, *cluster = NULL, *level = NULL, *alog = NULL;
    int fmt = 0;
    if (cm_json_get_string(&p, root, "policy_file", false, &policy, errmsg) != 0 ||
        cm_json_get_string(&p, root, "routes_file", false, &routes, errmsg) != 0 ||
        cm_json_get_string(&p, root, "cluster", false, &cluster, errmsg) != 0 ||
        cm_json_get_string(&p, root, "log_level", false, &level, errmsg) != 0 ||
        cm_json_get_string(&p, root, "access_log", false, &alog, errmsg) != 0 ||
        cm_json_get_enum(&p, root, "log_format", false, formats, &fmt, errmsg) != 0)
        return CM_ERR_INVAL;
    if (level != NULL && cm_log_level_parse(level, &cfg->log_level) != 0) {
        cm_jpath_key(&c, &p, "log_level");
        return cm_json_fail(&c, errmsg, "\"%s\" is not one of error, warn, info, debug, trace",
                            level);
    }
    cfg->log_format = (enum cm_log_format)fmt;
    cfg->policy_file = dup_opt(policy);
    cfg->routes_file = dup_opt(routes);
    cfg->cluster = dup_opt(cluster);
    cfg->access_log = dup_opt(alog);

    if (parse_opaque_ports(&p, root, cfg, errmsg) != 0)
        return CM_ERR_INVAL;
    if (parse_tracing(&p, root, cfg, errmsg) != 0)
        return CM_ERR_INVAL;

    cfg->discovery = cm_xcalloc(1, sizeof(*cfg->discovery));
    if (px_disc_cfg_parse(&p, root, cfg->identity != NULL, cfg->discovery, errmsg) != 0)
        return CM_ERR_INVAL;

    if (cm_json_get_child(&p, root, "limits", false, JSON_OBJECT, &limits, errmsg) != 0)
        return CM_ERR_INVAL;
    if (limits != NULL) {
        cm_jpath_key(&c, &p, "limits");
        if (parse_limits(&c, limits, &cfg->limits, errmsg) != 0)
            return CM_ERR_INVAL;
    }
    return 0;
}

static int finish(const char *name, json_t *root, struct px_config **out, char **errmsg)
{
    struct px_config *cfg = cm_xcalloc(1, sizeof(*cfg));
    cfg->raw = root;
    cfg->file = cm_xstrdup(name);
    cfg->log_level = CM_LOG_INFO;
    px_limits_default(&cfg->limits);
    if (parse_root(name, root, cfg, errmsg) != 0) {
        px_config_free(cfg);
        return CM_ERR_INVAL;
    }
    *out = cfg;
    return 0;
}

int px_config_load(const char *file, struct px_config **out, char **errmsg)
{
    json_t *root;
    if (cm_json_load_file(file, true, &root, errmsg) != 0)
        return CM_ERR_INVAL;
    return finish(file, root, out, errmsg);
}

int px_config_parse(const char *name, const char *buf, size_t len, struct px_config **out,
                    char **errmsg)
{
    json_t *root;
    if (cm_json_load_buf(name, buf, len, true, &root, errmsg) != 0)
        return CM_ERR_INVAL;
    return finish(name, root, out, errmsg);
}
