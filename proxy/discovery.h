/* Service discovery, the proxy side (issue 18): what the proxy asks the
 * injector's discovery service (docs/discovery.md) about a destination, and
 * the cache of those answers.
 *
 * Three parts:
 *  - the bootstrap keys "discovery", "outbound_policy", "egress_allow",
 *    "egress_verify_names" (proxy/discovery_config.c), with the egress_allow
 *    matcher;
 *  - the answer decoder (proxy/discovery_answer.c): the JSON of
 *    GET /v1/destination into a bounded, validated, reference-counted
 *    px_dest_answer (fuzzed by test/fuzz/fuzz_destination.c);
 *  - the cache (proxy/discovery.c): one entry per destination in use, each
 *    fetched once (concurrent lookups share the request), then kept current
 *    by the one POST /v1/watch of every held answer while in use and dropped
 *    after 5 minutes unused. Admin: GET /destinations.
 *
 * Design note: docs/discovery.md, "Proxy side". */
#ifndef PX_DISCOVERY_H
#define PX_DISCOVERY_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/net.h"

struct cm_jpath;
struct evbuffer;
struct px_tls_conf;

/* ---- configuration (proxy/discovery_config.c) ------------------------------------- */

enum px_outbound_policy {
    PX_OUTBOUND_ALLOW_ANY = 0, /* outside the mesh: passed through as the app sent it */
    PX_OUTBOUND_REGISTRY_ONLY  /* outside the mesh: refused unless egress_allow lists it */
};

enum px_egress_kind {
    PX_EGRESS_HOST = 0, /* "api.example.com:443": that name, any case, trailing dot ignored */
    PX_EGRESS_SUFFIX,   /* "*.example.com:443": any name under example.com (not itself) */
    PX_EGRESS_CIDR      /* "203.0.113.0/24:443", "[2001:db8::]/32:443", "10.1.2.3:80" (/32) */
};

struct px_egress_rule {
    enum px_egress_kind kind;
    char *name; /* HOST: lower-case name; SUFFIX: ".example.com" (lower-case) */
    int family; /* CIDR: AF_INET or AF_INET6 */
    uint8_t net[16];
    uint8_t prefix;
    uint16_t port;
};

#define PX_EGRESS_MAX_RULES         256
#define PX_DISC_DEFAULT_SERVER_NAME "remora-injector.remora-system.svc"

struct px_disc_cfg {
    bool enabled;               /* a "discovery" block is present */
    struct cm_addr addr;        /* discovery.address when numeric */
    char *address_name;         /* discovery.address when "name:port": the name, resolved
                                 * without blocking (evdns) before the first connection and
                                 * again after a connect fails; else NULL */
    char address_port[6];       /* its port */
    char *server_name;          /* discovery.server_name: the DNS name its certificate carries */
    uint32_t lookup_timeout_ms; /* discovery.lookup_timeout_ms: a first lookup waits at most this */
    enum px_outbound_policy policy;
    struct px_egress_rule *egress;
    size_t negress;
    bool verify_names; /* egress_verify_names (default true): a destination let out only by a
                        * name entry must be an address of that name (proxy/resolve.h) */
};

/* Read the four top-level keys of the bootstrap document `root` (path p)
 * into *out (zeroed first: absent keys give the defaults). Errors name the
 * key: "proxy.json: egress_allow[2]: ...". has_identity: whether the
 * document has an "identity" block (discovery is mTLS only). Returns 0 or
 * CM_ERR_INVAL with *errmsg (caller frees); *out is then still freeable. */
int px_disc_cfg_parse(const struct cm_jpath *p, json_t *root, bool has_identity,
                      struct px_disc_cfg *out, char **errmsg);
void px_disc_cfg_deinit(struct px_disc_cfg *c);

/* discovery.address as configured, "ip:port" or "name:port", into buf. */
const char *px_disc_cfg_address(const struct px_disc_cfg *c, char *buf, size_t n);

/* Does egress_allow let this destination out under registry_only? host is the
 * HTTP Host or the TLS SNI without its port (NULL: not known), dst the
 * original destination address (NULL: not known), port the destination port.
 * Names match HOST and SUFFIX rules, the address CIDR rules. */
bool px_egress_allowed(const struct px_disc_cfg *c, const char *host, const struct cm_addr *dst,
                       uint16_t port);

/* ---- answers (proxy/discovery_answer.c) -------------------------------------------- */

#define PX_DEST_MAX_ANSWER    (1u << 20) /* bytes of one answer's JSON */
#define PX_DEST_MAX_ENDPOINTS 1000       /* endpoints of one answer (a slice's bound) */
#define PX_DEST_MAX_VERSION   64         /* the injector's version is 16 hex digits */

enum px_dest_kind {
    PX_DEST_SERVICE = 0, /* a Service (ClusterIP or name) with its endpoints */
    PX_DEST_POD          /* one pod's address: one endpoint */
};

struct px_dest_ep {
    struct cm_addr addr;
    char *identity; /* SPIFFE ID the peer must present (meshed), else NULL */
    char *zone;     /* "" when unknown */
    char *pod;      /* "ns/name", or NULL */
    bool meshed, ready, serving, terminating;
};

/* Immutable once decoded; shared by the cache and whoever holds it while a
 * request is in flight (px_dest_answer_ref / _unref). */
struct px_dest_answer {
    unsigned refs;
    enum px_dest_kind kind;
    char *service; /* "ns/name", or NULL (a pod no Service selects) */
    uint16_t port;
    char *protocol; /* "http", "http2", "grpc", "tcp", ... or "" */
    char version[PX_DEST_MAX_VERSION + 1];
    struct px_dest_ep *eps;
    size_t neps;
};

/* Decode one 200 answer. Returns 0 and *out (one reference: the caller
 * unrefs), or CM_ERR_INVAL with *errmsg naming the field
 * ("endpoints[3].address: ..."). Unknown fields are ignored (a newer
 * injector); missing, mistyped or over-bound ones are refused. */
int px_dest_decode(const char *buf, size_t len, struct px_dest_answer **out, char **errmsg);
struct px_dest_answer *px_dest_answer_ref(struct px_dest_answer *a);
void px_dest_answer_unref(struct px_dest_answer *a);
/* The answer as JSON (for /destinations): a new reference. */
json_t *px_dest_answer_json(const struct px_dest_answer *a);

/* ---- the watch's answer (proxy/discovery.c) --------------------------------------- */

#define PX_DISC_MAX_CHANGES_BODY (4u << 20) /* bytes of a POST /v1/watch answer */

/* One entry of the "changed" list of a POST /v1/watch 200. */
struct px_disc_change {
    bool by_host;
    char key[304];              /* the destination as the proxy listed it */
    int status;                 /* 200 (ans set) or 404 */
    struct px_dest_answer *ans; /* one reference, or NULL */
};
/* Decode {"changed": [{"addr"|"host": ..., "status": 200, "answer": {...}} |
 * {..., "status": 404}, ...]} (at most PX_DISC_MAX_ENTRIES entries, each
 * answer as px_dest_decode). Returns 0 with *out (free with
 * px_disc_changes_free) and *n >= 1, or CM_ERR_INVAL with *errmsg naming the
 * field ("changed[2].answer.endpoints[0].address: ..."). Fuzzed by
 * test/fuzz/fuzz_watch_changes.c. */
int px_disc_changes_decode(const char *buf, size_t len, struct px_disc_change **out, size_t *n,
                           char **errmsg);
void px_disc_changes_free(struct px_disc_change *c, size_t n);

/* ---- the cache (proxy/discovery.c) ----------------------------------------------- */

#define PX_DISC_MAX_ENTRIES  4096   /* destinations held; more: the least recently used goes */
#define PX_DISC_IDLE_MS      300000 /* an entry unused this long is dropped (its watch too) */
#define PX_DISC_NEGATIVE_MS  5000   /* a 404 is believed this long (404s are never held) */
#define PX_DISC_WATCH_S      30     /* timeout_s of a long-poll */
#define PX_DISC_KEEPALIVE_MS 100000 /* the warm lookup connection's GET /v1/ping when idle */

/* What a lookup found. */
enum px_disc_result {
    PX_DISC_FOUND = 0,  /* in the registry: the answer (maybe stale, see px_disc_stale) */
    PX_DISC_NOT_FOUND,  /* discovery answered 404: outside the mesh */
    PX_DISC_UNAVAILABLE /* no answer in time (unreachable, timeout, a bad answer, no
                         * workload certificate yet): treated as outside the mesh */
};

struct px_disc;
struct px_disc_wait;

/* How the cache reaches the discovery service. Tests set their own TLS
 * provider and shorter times; the proxy uses px_disc_opts_default. */
struct px_disc_opts {
    /* The client configuration with the workload certificate (a new reference),
     * or NULL while there is none (lookups are then UNAVAILABLE). Default: the
     * identity module's (tls_arg: the struct px_identity *). */
    struct px_tls_conf *(*tls_conf)(void *arg);
    void *tls_arg;
    uint32_t idle_ms;      /* PX_DISC_IDLE_MS */
    uint32_t negative_ms;  /* PX_DISC_NEGATIVE_MS */
    uint32_t watch_s;      /* PX_DISC_WATCH_S */
    uint32_t max_entries;  /* PX_DISC_MAX_ENTRIES */
    uint32_t retry_max_ms; /* backoff of a failed watch and of the warm lookup connection:
                            * 250 ms doubling to this (30 s) */
    bool plaintext;        /* tests only: tls_conf NULL means plain HTTP (never in the proxy:
                            * no configuration key sets it) */
    bool warm;             /* keep one lookup connection open from the start (default) */
    uint32_t keepalive_ms; /* PX_DISC_KEEPALIVE_MS: the warm connection idle this long sends
                            * GET /v1/ping (the injector closes connections idle 120 s) */
};
void px_disc_opts_default(struct px_disc_opts *o);

/* A cache on base for cfg (borrowed: it outlives the cache; cfg->enabled).
 * Free with px_disc_free (pending lookups are dropped without callbacks). */
struct px_disc *px_disc_new(struct event_base *base, const struct px_disc_cfg *cfg,
                            const struct px_disc_opts *opts);
void px_disc_free(struct px_disc *d);

/* The callback of a lookup that had to wait: res and, for FOUND, the answer
 * (borrowed for the call; take a reference to keep it). */
typedef void (*px_disc_cb)(enum px_disc_result res, struct px_dest_answer *ans, void *arg);

/* Look up a destination: dst (an original destination address) or, when dst
 * is NULL, host ("name:port", as an HTTP Host with its port). When the cache
 * knows the answer it returns the result at once (FOUND: *ans is a new
 * reference) and *w is NULL; else it returns PX_DISC_UNAVAILABLE with *w set,
 * and cb runs exactly once from the event loop within lookup_timeout_ms,
 * unless px_disc_cancel(*w) comes first. A host that is not a valid
 * "name:port" is NOT_FOUND at once. */
enum px_disc_result px_disc_lookup(struct px_disc *d, const struct cm_addr *dst, const char *host,
                                   struct px_dest_answer **ans, px_disc_cb cb, void *arg,
                                   struct px_disc_wait **w);
/* Drop a waiting lookup (its cb is not called). NULL is fine. */
void px_disc_cancel(struct px_disc_wait *w);

/* Is the answer of this destination held while the discovery service cannot
 * be reached (its last watch failed)? */
bool px_disc_stale(struct px_disc *d, const struct cm_addr *dst, const char *host);

/* GET /destinations: every entry with its answer, version, age, staleness. */
json_t *px_disc_json(struct px_disc *d);
/* remora_discovery_* series of the proxy (entries, stale entries, lookups by
 * result, requests and failures to the discovery service). */
void px_disc_write_prometheus(struct px_disc *d, struct evbuffer *out);

/* What the outbound path does with a connection's lookup result (px_upstream_resolve). */
enum px_disc_route {
    PX_ROUTE_MESH = 0, /* in the registry with meshed endpoints: mTLS (with *expected_id when
                        * every meshed endpoint is the same workload: secure naming) */
    PX_ROUTE_PLAIN,    /* in the registry, no endpoint meshed: as the app sent it, no mTLS */
    PX_ROUTE_EGRESS,   /* outside the mesh, let out (allow_any, or listed in egress_allow) */
    PX_ROUTE_REFUSED   /* outside the mesh under registry_only, not in egress_allow */
};
/* Decide for a destination dst from a finished lookup (res, and ans for
 * FOUND). host: the name the app gave it when known, else NULL: an HTTP Host
 * ("name" or "name:port": its port then is the one egress_allow names match
 * on, else dst's) or a TLS SNI; an address literal there is ignored (CIDR
 * entries match dst only). Counts the egress decisions
 * (remora_egress_total{decision}) and logs the refusals. *expected_id is
 * borrowed from ans. */
enum px_disc_route px_disc_route(struct px_disc *d, enum px_disc_result res,
                                 const struct px_dest_answer *ans, const struct cm_addr *dst,
                                 const char *host, const char **expected_id);

/* Would px_disc_route let dst out ONLY because host matched a name entry
 * (HOST or SUFFIX; no CIDR entry covers dst), with egress_verify_names on?
 * Then name (cap bytes) is that name, lower-case without a trailing dot: it
 * must resolve to dst first (proxy/resolve.h). */
bool px_disc_egress_by_name(struct px_disc *d, enum px_disc_result res,
                            const struct px_dest_answer *ans, const struct cm_addr *dst,
                            const char *host, char *name, size_t cap);
/* Count (remora_egress_total{decision="refused"}, and
 * remora_egress_refused_dns_total) and log a destination refused because it
 * is not an address of name; why: px_name_verdict_str. */
void px_disc_egress_refuse_name(struct px_disc *d, const struct cm_addr *dst, const char *name,
                                const char *why);

/* In the running proxy (proxy/discovery_server.c): make srv->disc when the
 * bootstrap has "discovery" (after the admin server: GET /destinations), and
 * free it (before the admin server). */
struct px_server;
void px_disc_start(struct px_server *srv);
void px_disc_shutdown(struct px_server *srv);

/* Counters (tests, /stats). */
struct px_disc_stats {
    uint64_t lookups_hit, lookups_miss, lookups_coalesced;
    uint64_t requests, failures, updates;
    uint64_t found, not_found, unavailable; /* results given */
    uint64_t evicted, expired;
    uint64_t lookup_connects, lookup_reused;       /* first lookups: connections opened, requests
                                                    * sent on an open one */
    uint64_t lookup_warm_opens, lookup_keepalives; /* of lookup_connects: opened before any
                                                    * request (warm); GET /v1/ping sent */
    uint64_t lookup_keepalives_answered;
    uint32_t lookup_open, watch_open;                            /* connections open now */
    uint64_t egress_passthrough, egress_allowed, egress_refused; /* remora_egress_total */
    uint64_t egress_refused_dns; /* of the refused: not an address of the name (resolve.h) */
    uint32_t entries, stale;
};
void px_disc_get_stats(struct px_disc *d, struct px_disc_stats *s);

#endif
