/* Bootstrap configuration of remora-proxy (docs/contract.md "Bootstrap config").
 * A px_config is an immutable snapshot: loaded, validated, then used; never
 * changed in place. */
#ifndef PX_CONFIG_H
#define PX_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/log.h"
#include "common/net.h"

struct px_disc_cfg;

enum px_direction {
    PX_DIR_INBOUND = 0, /* mesh -> app (15006) */
    PX_DIR_OUTBOUND     /* app -> mesh (15001) */
};

enum px_tls_mode {
    PX_TLS_DISABLED = 0, /* plaintext only */
    PX_TLS_STRICT,       /* inbound: mTLS required */
    PX_TLS_PERMISSIVE,   /* inbound: mTLS or plaintext, told apart by the first bytes */
    PX_TLS_MESH          /* outbound: originate mTLS */
};

enum px_upstream_proto {
    PX_UP_HTTP1 = 0, /* talk HTTP/1.1 to the upstream (default: what apps speak) */
    PX_UP_H2         /* talk HTTP/2 (h2c prior knowledge) to the upstream */
};

/* At most this many entries in a listener's "permissive_ports". */
#define PX_MAX_PERMISSIVE_PORTS 64

struct px_listener_cfg {
    char *name;
    struct cm_addr addr;
    enum px_direction direction;
    bool has_upstream; /* fixed upstream; else the original destination */
    struct cm_addr upstream;
    enum px_tls_mode tls;
    enum px_upstream_proto upstream_protocol;
    bool downstream_h2; /* "downstream_protocol": "h2": every connection is HTTP/2 (no
                         * detection; a wrong preface gets GOAWAY PROTOCOL_ERROR) */
    bool optional;      /* skipped, with a warning, when its address family is not available
                         * here (an IPv6 listener in a pod without IPv6) */
    /* "permissive_ports" (inbound, tls strict only): original destination ports
     * where plaintext is accepted too, as on a permissive listener
     * (proxy/inbound_tls.h); every other port stays strict */
    uint16_t permissive_ports[PX_MAX_PERMISSIVE_PORTS];
    size_t npermissive_ports;
};

/* Upstream circuit breakers, per endpoint (proxy/pool.h): the defaults are
 * limits.upstream_*, a route's "circuit_breakers" overrides them. */
struct px_breakers {
    uint32_t max_connections;             /* connections open or opening to one endpoint */
    uint32_t max_pending_requests;        /* requests waiting for one of them (0: none wait) */
    uint32_t pending_timeout_ms;          /* how long one may wait */
    uint32_t max_requests_per_connection; /* concurrent requests (streams) on one h2 connection */
};

/* Bounds on everything a peer can make us hold ("limits" object). */
struct px_limits {
    uint32_t max_header_bytes;     /* request/response head; over -> 431 / 502 */
    uint32_t max_headers;          /* header count in one head */
    uint64_t max_request_body;     /* 0: unbounded (streamed); over -> 413 */
    uint32_t buffer_bytes;         /* per-direction high watermark for backpressure */
    uint32_t header_timeout_ms;    /* a client must finish a request head within this */
    uint32_t idle_timeout_ms;      /* keep-alive / idle connection timeout */
    uint32_t connect_timeout_ms;   /* upstream connect */
    uint32_t request_timeout_ms;   /* whole request, 0 = none (routes refine later) */
    uint32_t detect_timeout_ms;    /* protocol detection: no bytes -> opaque TCP */
    uint32_t drain_timeout_ms;     /* SIGTERM / drain bound */
    uint32_t max_connections;      /* downstream connections, all listeners */
    uint32_t pool_max_idle;        /* idle upstream h1 connections per address */
    uint32_t pool_idle_timeout_ms; /* an idle upstream connection is closed after this */
    uint32_t h2_max_concurrent_streams;
    uint32_t retry_buffer_bytes; /* request body kept for retries; larger bodies are not retried */
    uint32_t h2_max_resets_per_window; /* stream resets one h2 client may cause per window */
    uint32_t h2_reset_window_ms;       /* ... then GOAWAY(ENHANCE_YOUR_CALM) */
    uint32_t tcp_idle_timeout_ms; /* a TCP tunnel with no byte either way is closed; 0: never */

    /* upstream_max_connections, ...: circuit breakers (proxy/pool.h) */
    struct px_breakers upstream;
};

/* At most this many entries in "opaque_ports". */
#define PX_MAX_OPAQUE_PORTS 64

struct px_config {
    char *file;
    json_t *raw; /* the parsed document, for /config_dump */
    struct cm_addr admin_addr;
    bool has_admin;
    /* the health port (proxy/health_server.c), "health": {"address": ...} */
    struct cm_addr health_addr;
    bool has_health;
    /* "health": {"address6": ...}: a second address for the same port, skipped
     * when its family is not available here (kubelet probes an IPv6 pod IP) */
    struct cm_addr health_addr6;
    bool has_health6;
    struct px_listener_cfg *listeners;
    size_t nlisteners;
    struct px_limits limits;
    enum cm_log_level log_level;
    enum cm_log_format log_format;
    char *access_log; /* NULL: off; "-" : stderr; else a file path (JSON lines) */
    char *cluster;    /* this proxy's locality, or NULL */
    json_t *identity; /* validated later by the identity module; borrowed from raw */
    char *policy_file;
    char *routes_file;
    /* "opaque_ports": server-first / opaque protocols by original destination port:
     * no detection, straight to the TCP policy and the tunnel */
    uint16_t opaque_ports[PX_MAX_OPAQUE_PORTS];
    size_t nopaque_ports;
    /* "discovery", "outbound_policy", "egress_allow" (proxy/discovery.h); never NULL
     * once loaded (enabled false without a "discovery" block) */
    struct px_disc_cfg *discovery;
    /* "tracing": {"sample_percent": 0-100}: the sampled flag of the traces an
     * outbound listener starts (proxy/trace.h); 0 (default): never sampled */
    struct {
        uint32_t sample_percent;
    } tracing;
};

/* Is `port` listed in cfg->opaque_ports? */
bool px_config_opaque_port(const struct px_config *cfg, uint16_t port);

/* Load and validate `file`. Returns 0 and *out (free with px_config_free), or
 * CM_ERR_INVAL with *errmsg naming the file and key (caller frees). */
int px_config_load(const char *file, struct px_config **out, char **errmsg);
/* Same from memory (tests, fuzzing); `name` appears in messages. */
int px_config_parse(const char *name, const char *buf, size_t len, struct px_config **out,
                    char **errmsg);
void px_config_free(struct px_config *cfg);
/* Read the four circuit-breaker keys "<prefix>max_connections", ... of o
 * into b (absent keys keep b's values). Errors name the key under p. */
struct cm_jpath;
int px_breakers_parse(const struct cm_jpath *p, json_t *o, const char *prefix,
                      struct px_breakers *b, char **errmsg);
/* Defaults of the "limits" object. */
void px_limits_default(struct px_limits *l);

#endif
