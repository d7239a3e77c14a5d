#include "injector/config.h"

#include <string.h>

#include "common/err.h"
#include "common/json.h"

static const char *const top_keys[] = {
    "webhook",   "ca", "trust_domain", "template_file", "native_sidecars", "log_level", "kube",
    "discovery", NULL};
static const char *const webhook_keys[] = {"address",
                                           "cert_file",
                                           "key_file",
                                           "max_body_bytes",
                                           "timeout_seconds",
                                           "threads",
                                           "max_connections",
                                           "reload_interval_ms",
                                           "request_timeout_ms",
                                           "max_connections_per_ip",
                                           "max_buffered_bytes",
                                           NULL};
static const char *const ca_keys[] = {"address",     "cert_file",    "key_file",
                                      "root_file",   "jwks_file",    "audience",
                                      "ttl_seconds", "token_review", "token_review_cache_seconds",
                                      NULL};
static const char *const kube_keys[] = {"api", "token_file", "ca_file", "timeout_ms", NULL};
static const char *const discovery_keys[] = {"address",
                                             "api",
                                             "token_file",
                                             "ca_file",
                                             "cluster_domain",
                                             "timeout_ms",
                                             "max_connections",
                                             "max_connections_per_ip",
                                             NULL};

/* SPIFFE trust domains: lowercase letters, digits, '.', '-', '_' (SPIFFE-ID §2.1). */
static bool valid_trust_domain(const char *s)
{
    if (*s == '\0' || strlen(s) > 255)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
            return false;
    }
    return true;
}

static int nonempty(const struct cm_jpath *p, const char *key, const char *v, char **errmsg)
{
    if (v != NULL && *v == '\0') {
        struct cm_jpath c;
        cm_jpath_key(&c, p, key);
        return cm_json_fail(&c, errmsg, "must not be empty");
    }
    return 0;
}

static int load_webhook(const struct cm_jpath *root, json_t *top, struct ij_config *cfg,
                        char **errmsg)
{
    struct cm_jpath p, c;
    json_t *w = NULL;
    int rc;
    if ((rc = cm_json_get_child(root, top, "webhook", true, JSON_OBJECT, &w, errmsg)) != 0)
        return rc;
    cm_jpath_key(&p, root, "webhook");
    if ((rc = cm_json_check_keys(&p, w, webhook_keys, errmsg)) != 0)
        return rc;
    if ((rc = cm_json_get_string(&p, w, "address", false, &cfg->webhook_address, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, w, "cert_file", true, &cfg->cert_file, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, w, "key_file", true, &cfg->key_file, errmsg)) != 0 ||
        (rc = nonempty(&p, "cert_file", cfg->cert_file, errmsg)) != 0 ||
        (rc = nonempty(&p, "key_file", cfg->key_file, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "max_body_bytes", false, 4096, 64 << 20, &cfg->max_body_bytes,
                              errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "timeout_seconds", false, 1, 3600, &cfg->timeout_seconds,
                              errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "threads", false, 1, 64, &cfg->threads, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "max_connections", false, 1, 100000, &cfg->max_connections,
                              errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "reload_interval_ms", false, 100, 3600000,
                              &cfg->reload_interval_ms, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "request_timeout_ms", false, 100, 3600000,
                              &cfg->request_timeout_ms, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "max_connections_per_ip", false, 1, 100000,
                              &cfg->max_connections_per_ip, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, w, "max_buffered_bytes", false, 64 << 10, 1LL << 34,
                              &cfg->max_buffered_bytes, errmsg)) != 0)
        return rc;
    if (cfg->max_buffered_bytes < cfg->max_body_bytes) {
        cm_jpath_key(&c, &p, "max_buffered_bytes");
        return cm_json_fail(&c, errmsg, "%lld is below webhook.max_body_bytes (%lld)",
                            (long long)cfg->max_buffered_bytes, (long long)cfg->max_body_bytes);
    }
    if (cm_addr_parse(cfg->webhook_address, &cfg->webhook_addr) != 0) {
        cm_jpath_key(&c, &p, "address");
        return cm_json_fail(&c, errmsg, "\"%s\" is not a numeric host:port", cfg->webhook_address);
    }
    return 0;
}

static int load_ca(const struct cm_jpath *root, json_t *top, struct ij_config *cfg, char **errmsg)
{
    struct cm_jpath p, c;
    json_t *ca = NULL;
    int rc;
    if ((rc = cm_json_get_child(root, top, "ca", false, JSON_OBJECT, &ca, errmsg)) != 0)
        return rc;
    if (ca == NULL)
        return 0;
    cm_jpath_key(&p, root, "ca");
    if ((rc = cm_json_check_keys(&p, ca, ca_keys, errmsg)) != 0)
        return rc;
    if ((rc = cm_json_get_string(&p, ca, "address", false, &cfg->ca_address, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, ca, "cert_file", false, &cfg->ca_cert_file, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, ca, "key_file", false, &cfg->ca_key_file, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, ca, "root_file", false, &cfg->ca_root_file, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, ca, "jwks_file", false, &cfg->ca_jwks_file, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, ca, "audience", false, &cfg->ca_audience, errmsg)) != 0 ||
        (rc = nonempty(&p, "audience", cfg->ca_audience, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, ca, "ttl_seconds", false, 10, 366 * 86400, &cfg->ca_ttl_seconds,
                              errmsg)) != 0 ||
        (rc = cm_json_get_bool(&p, ca, "token_review", false, &cfg->ca_token_review, errmsg)) !=
            0 ||
        (rc = cm_json_get_int(&p, ca, "token_review_cache_seconds", false, 0, 60,
                              &cfg->ca_token_review_cache_seconds, errmsg)) != 0)
        return rc;
    if (cfg->ca_token_review && cfg->ca_cert_file == NULL) {
        cm_jpath_key(&c, &p, "token_review");
        return cm_json_fail(&c, errmsg, "set, but there is no CA (ca.cert_file unset)");
    }
    if (cfg->ca_address != NULL && cm_addr_parse(cfg->ca_address, &cfg->ca_addr) != 0) {
        cm_jpath_key(&c, &p, "address");
        return cm_json_fail(&c, errmsg, "\"%s\" is not a numeric host:port", cfg->ca_address);
    }
    /* The signing key and its certificate only make sense together. */
    if ((cfg->ca_cert_file == NULL) != (cfg->ca_key_file == NULL)) {
        cm_jpath_key(&c, &p, cfg->ca_cert_file == NULL ? "cert_file" : "key_file");
        return cm_json_fail(&c, errmsg, "required together with ca.%s",
                            cfg->ca_cert_file == NULL ? "key_file" : "cert_file");
    }
    /* A CA needs the keys that sign service-account tokens; an address
     * without a CA to serve on it is a mistake. */
    if (cfg->ca_cert_file != NULL && cfg->ca_jwks_file == NULL) {
        cm_jpath_key(&c, &p, "jwks_file");
        return cm_json_fail(&c, errmsg,
                            "required with ca.cert_file (the cluster's /openid/v1/jwks)");
    }
    if (cfg->ca_address != NULL && cfg->ca_cert_file == NULL) {
        cm_jpath_key(&c, &p, "address");
        return cm_json_fail(&c, errmsg, "set, but there is no CA to serve (ca.cert_file unset)");
    }
    return 0;
}

/* kube: where the CA's token reviews go (issue 14); everything optional. */
static int load_kube(const struct cm_jpath *root, json_t *top, struct ij_config *cfg, char **errmsg)
{
    struct cm_jpath p, c;
    json_t *k = NULL;
    int rc;
    if ((rc = cm_json_get_child(root, top, "kube", false, JSON_OBJECT, &k, errmsg)) != 0)
        return rc;
    if (k == NULL)
        return 0;
    cm_jpath_key(&p, root, "kube");
    if ((rc = cm_json_check_keys(&p, k, kube_keys, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, k, "api", false, &cfg->kube_api, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, k, "token_file", false, &cfg->kube_token_file, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, k, "ca_file", false, &cfg->kube_ca_file, errmsg)) != 0 ||
        (rc = nonempty(&p, "token_file", cfg->kube_token_file, errmsg)) != 0 ||
        (rc = nonempty(&p, "ca_file", cfg->kube_ca_file, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, k, "timeout_ms", false, 100, 30000, &cfg->kube_timeout_ms,
                              errmsg)) != 0)
        return rc;
    if (cfg->kube_api != NULL && strncmp(cfg->kube_api, "https://", 8) != 0) {
        cm_jpath_key(&c, &p, "api");
        return cm_json_fail(&c, errmsg, "\"%s\" is not an https:// URL", cfg->kube_api);
    }
    return 0;
}

/* discovery: the service proxies ask about destinations (issue 17); off
 * without an address. */
static int load_discovery(const struct cm_jpath *root, json_t *top, struct ij_config *cfg,
                          char **errmsg)
{
    struct cm_jpath p, c;
    json_t *d = NULL;
    int rc;
    if ((rc = cm_json_get_child(root, top, "discovery", false, JSON_OBJECT, &d, errmsg)) != 0)
        return rc;
    if (d == NULL)
        return 0;
    cm_jpath_key(&p, root, "discovery");
    if ((rc = cm_json_check_keys(&p, d, discovery_keys, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, d, "address", false, &cfg->discovery_address, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, d, "api", false, &cfg->discovery_api, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, d, "token_file", false, &cfg->discovery_token_file, errmsg)) !=
            0 ||
        (rc = cm_json_get_string(&p, d, "ca_file", false, &cfg->discovery_ca_file, errmsg)) != 0 ||
        (rc = cm_json_get_string(&p, d, "cluster_domain", false, &cfg->discovery_cluster_domain,
                                 errmsg)) != 0 ||
        (rc = nonempty(&p, "token_file", cfg->discovery_token_file, errmsg)) != 0 ||
        (rc = nonempty(&p, "ca_file", cfg->discovery_ca_file, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, d, "timeout_ms", false, 100, 120000, &cfg->discovery_timeout_ms,
                              errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, d, "max_connections", false, 1, 1000000,
                              &cfg->discovery_max_connections, errmsg)) != 0 ||
        (rc = cm_json_get_int(&p, d, "max_connections_per_ip", false, 1, 1000000,
                              &cfg->discovery_max_connections_per_ip, errmsg)) != 0)
        return rc;
    if (cfg->discovery_api != NULL && strncmp(cfg->discovery_api, "https://", 8) != 0) {
        cm_jpath_key(&c, &p, "api");
        return cm_json_fail(&c, errmsg, "\"%s\" is not an https:// URL", cfg->discovery_api);
    }
    if (!valid_trust_domain(cfg->discovery_cluster_domain) ||
        strstr(cfg->discovery_cluster_domain, "..") != NULL ||
        cfg->discovery_cluster_domain[0] == '.' ||
        cfg->discovery_cluster_domain[strlen(cfg->discovery_cluster_domain) - 1] == '.') {
        cm_jpath_key(&c, &p, "cluster_domain");
        return cm_json_fail(&c, errmsg, "\"%s\" is not a DNS domain (a-z 0-9 . - _)",
                            cfg->discovery_cluster_domain);
    }
    if (cfg->discovery_address == NULL)
        return 0;
    if (cm_addr_parse(cfg->discovery_address, &cfg->discovery_addr) != 0) {
        cm_jpath_key(&c, &p, "address");
        return cm_json_fail(&c, errmsg, "\"%s\" is not a numeric host:port",
                            cfg->discovery_address);
    }
    /* its certificate, and the anchors of the proxies' ones, are the CA's */
    if (cfg->ca_cert_file == NULL) {
        cm_jpath_key(&c, &p, "address");
        return cm_json_fail(&c, errmsg,
                            "set, but there is no CA (ca.cert_file unset) to issue the "
                            "discovery port's certificate and check the proxies' ones");
    }
    return 0;
}

int ij_config_load(const char *file, struct ij_config *cfg, char **errmsg)
{
    struct cm_jpath root, c;
    json_t *top = NULL;
    const char *level = NULL;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    cfg->file = file;
    cfg->webhook_address = "0.0.0.0:8443";
    cfg->max_body_bytes = 4 << 20;
    cfg->timeout_seconds = 10;
    cfg->threads = 2;
    cfg->max_connections = 1024;
    cfg->reload_interval_ms = 2000;
    cfg->request_timeout_ms = 10000;
    cfg->max_connections_per_ip = 8;
    cfg->max_buffered_bytes = 64 << 20;
    cfg->ca_audience = "remora-ca";
    cfg->ca_ttl_seconds = 86400;
    cfg->ca_token_review_cache_seconds = 60;
    cfg->kube_timeout_ms = 2000;
    cfg->discovery_cluster_domain = "cluster.local";
    cfg->discovery_timeout_ms = 10000;
    cfg->discovery_max_connections = 16384;
    cfg->discovery_max_connections_per_ip = 64;
    cfg->trust_domain = "cluster.local";
    cfg->log_level = CM_LOG_INFO;

    if ((rc = cm_json_load_file(file, true, &top, errmsg)) != 0)
        return rc;
    cm_jpath_root(&root, file);
    if ((rc = cm_json_check_keys(&root, top, top_keys, errmsg)) != 0 ||
        (rc = load_webhook(&root, top, cfg, errmsg)) != 0 ||
        (rc = load_ca(&root, top, cfg, errmsg)) != 0 ||
        (rc = load_kube(&root, top, cfg, errmsg)) != 0 ||
        (rc = load_discovery(&root, top, cfg, errmsg)) != 0 ||
        (rc = cm_json_get_string(&root, top, "trust_domain", false, &cfg->trust_domain, errmsg)) !=
            0 ||
        (rc = cm_json_get_string(&root, top, "template_file", false, &cfg->template_file,
                                 errmsg)) != 0 ||
        (rc = nonempty(&root, "template_file", cfg->template_file, errmsg)) != 0 ||
        (rc = cm_json_get_bool(&root, top, "native_sidecars", false, &cfg->native_sidecars,
                               errmsg)) != 0 ||
        (rc = cm_json_get_string(&root, top, "log_level", false, &level, errmsg)) != 0)
        goto fail;
    if (!valid_trust_domain(cfg->trust_domain)) {
        cm_jpath_key(&c, &root, "trust_domain");
        rc = cm_json_fail(&c, errmsg, "\"%s\" is not a trust domain (a-z 0-9 . - _)",
                          cfg->trust_domain);
        goto fail;
    }
    if (level != NULL && cm_log_level_parse(level, &cfg->log_level) != 0) {
        cm_jpath_key(&c, &root, "log_level");
        rc =
            cm_json_fail(&c, errmsg, "\"%s\" is not one of error, warn, info, debug, trace", level);
        goto fail;
    }
    cfg->root = top;
    return 0;

fail:
    json_decref(top);
    memset(cfg, 0, sizeof(*cfg));
    return rc;
}

void ij_config_deinit(struct ij_config *cfg)
{
    json_decref(cfg->root);
    memset(cfg, 0, sizeof(*cfg));
}
