/* remora-injector configuration: the JSON file given with -c.
 * Loaded once at start; a change needs a restart (the serving certificate and
 * the sidecar template, which do change at run time, reload on their own). */
#ifndef IJ_CONFIG_H
#define IJ_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/log.h"
#include "common/net.h"

#define IJ_VERSION "0.1.0"

struct ij_config {
    json_t *root; /* owns every string below */
    const char *file;

    /* webhook: the HTTPS server the API server calls */
    const char *webhook_address; /* default "0.0.0.0:8443" */
    struct cm_addr webhook_addr;
    const char *cert_file;      /* required: PEM chain, leaf first */
    const char *key_file;       /* required: PEM private key */
    int64_t max_body_bytes;     /* 413 above this; default 4 MiB */
    int64_t timeout_seconds;    /* idle / slow connection timeout; default 10 */
    int64_t threads;            /* MHD thread pool size; default 2 */
    int64_t max_connections;    /* default 1024 */
    int64_t reload_interval_ms; /* cert / template change check; default 2000 */
    /* abuse bounds, on both ports (server.c: the guard) */
    int64_t request_timeout_ms;     /* accept (or last answer) to whole request; 10000 */
    int64_t max_connections_per_ip; /* per client address; default 8 */
    int64_t max_buffered_bytes;     /* request bodies held at once, all connections; 64 MiB */

    /* ca: POST /v1/sign (ca.c); a CA exists when cert_file is set */
    const char *ca_address; /* NULL: shares the webhook port */
    struct cm_addr ca_addr;
    const char *ca_cert_file, *ca_key_file, *ca_root_file, *ca_jwks_file;
    const char *ca_audience; /* default "remora-ca" */
    int64_t ca_ttl_seconds;  /* default 86400 */
    /* issue 14: ask the API server (TokenReview, and GET of the bound pod)
     * about every token before signing; answers cached this long */
    bool ca_token_review;                  /* default false */
    int64_t ca_token_review_cache_seconds; /* 0 .. 60, default 60 */

    /* kube: the API server the CA's token reviews go to (kube.h) */
    const char *kube_api;        /* NULL: in-cluster (KUBERNETES_SERVICE_HOST/PORT) */
    const char *kube_token_file; /* default the service-account token */
    const char *kube_ca_file;    /* default the service-account ca.crt */
    int64_t kube_timeout_ms;     /* per API request; default 2000 */

    /* discovery: GET /v1/destination for proxies (issue 17, docs/discovery.md) */
    const char *discovery_address; /* NULL: off */
    struct cm_addr discovery_addr;
    const char *discovery_api;                /* NULL: in-cluster (KUBERNETES_SERVICE_HOST/PORT) */
    const char *discovery_token_file;         /* default the service-account token */
    const char *discovery_ca_file;            /* default the service-account ca.crt */
    const char *discovery_cluster_domain;     /* default "cluster.local" */
    int64_t discovery_timeout_ms;             /* per list page / watch head; default 10000 */
    int64_t discovery_max_connections;        /* default 16384 */
    int64_t discovery_max_connections_per_ip; /* default 64 */

    const char *trust_domain;  /* default "cluster.local" */
    const char *template_file; /* NULL: the built-in template */
    bool native_sidecars;      /* default false */
    enum cm_log_level log_level;
};

/* Load and validate `file` into *cfg (zeroed first). Returns 0, or
 * CM_ERR_INVAL with *errmsg naming the file and key (caller frees). On
 * success the caller releases cfg with ij_config_deinit. */
int ij_config_load(const char *file, struct ij_config *cfg, char **errmsg);
void ij_config_deinit(struct ij_config *cfg);

#endif
