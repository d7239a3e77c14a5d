/* Counters and gauges of the proxy, read by the admin API (/stats as JSON,
 * /metrics as Prometheus text). All updates happen on the event loop thread,
 * so plain integers suffice. */
#ifndef PX_METRICS_H
#define PX_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "proxy/config.h"

/* Histogram buckets of remora_request_duration_seconds, upper bounds in us. */
#define PX_METRICS_NBUCKETS 14

struct px_metrics {
    /* connections */
    uint64_t downstream_cx_total;
    uint64_t downstream_cx_active;
    uint64_t downstream_cx_refused; /* over max_connections */
    uint64_t upstream_cx_total;
    uint64_t upstream_cx_active;       /* remora_upstream_connections_active */
    uint64_t upstream_cx_connect_fail; /* refused, unreachable, timed out */
    uint64_t upstream_cx_reused;       /* requests served on a pooled connection */
    uint64_t upstream_cx_stray_bytes;  /* connections dropped: bytes after a response */
    /* protocols detected on downstream connections */
    uint64_t proto_http1, proto_h2, proto_tls, proto_tcp;
    /* local answers and failures, by cause */
    uint64_t bad_request;     /* 400 */
    uint64_t header_too_big;  /* 431 */
    uint64_t body_too_big;    /* 413 */
    uint64_t header_timeout;  /* 408 / slow clients cut */
    uint64_t upstream_errors; /* 502/503/504 made by the proxy */
    uint64_t downstream_resets;
    /* HTTP/2 server side (proxy/h2_server.c) */
    uint64_t h2_resets_received;   /* RST_STREAM frames from clients */
    uint64_t h2_resets_early;      /* client streams reset before the request went upstream */
    uint64_t h2_reset_flood;       /* connections ended: reset budget spent (ENHANCE_YOUR_CALM) */
    uint64_t h2_protocol_errors;   /* connections ended with GOAWAY for a protocol error */
    uint64_t h2_empty_frame_flood; /* connections ended: too many empty DATA frames in a row */
    /* mTLS */
    uint64_t tls_handshakes;         /* completed, both directions */
    uint64_t tls_handshakes_resumed; /* of which resumed from a session ticket (server side) */
    uint64_t tls_handshake_failures; /* bad certificate, wrong identity, protocol errors */
    uint64_t tls_plaintext_refused;  /* plaintext on a strict listener */
    /* bytes */
    uint64_t tcp_bytes_in, tcp_bytes_out;
    /* opaque TCP and protocol detection */
    uint64_t tcp_idle_timeout; /* tunnels closed after limits.tcp_idle_timeout_ms */
    uint64_t detect_silent;    /* connections closed with no byte within header_timeout_ms */
    /* retries (proxy/stream.c), policy denials (proxy/authz.c), certificate (proxy/identity.c) */
    uint64_t retries_total;
    uint64_t policy_denials_total;
    int64_t cert_expiry_timestamp; /* 0 when no certificate */
};

extern struct px_metrics px_metrics;

/* The labelled request tables and the registered writers of a server
 * (srv->metrics, proxy/metrics_int.h); made by px_server_run. */
struct px_metrics_state;
struct px_metrics_state *px_metrics_state_new(void);
void px_metrics_state_free(struct px_metrics_state *m);

/* Optional labels of a request's series (issue 18); NULL: no such label.
 * Values are interned (a bounded table per label: past 256 distinct values
 * they read as "other"). */
struct px_metrics_labels {
    const char *destination_service; /* outbound: "ns/name", "external" */
    const char *source_principal;    /* inbound: the peer's SPIFFE ID, "unauthenticated" */
};
/* The labels of a finished stream: destination_service on an outbound
 * listener of a proxy with a discovery block, source_principal on an inbound
 * listener when the policy in force asks for it. */
struct px_stream;
struct px_metrics_labels px_metrics_stream_labels(const struct px_stream *s);

/* Count one finished exchange in m: labels listener, direction, method class,
 * response code (0 when no response was sent), and its duration. */
void px_metrics_record(struct px_metrics_state *m, const struct px_listener_cfg *l,
                       const char *method, int status, uint64_t duration_us);
/* The same for a gRPC request: the series also carries grpc_status="0".."16",
 * or "other" (grpc_status < 0: none seen, or out of range). */
void px_metrics_record_grpc(struct px_metrics_state *m, const struct px_listener_cfg *l,
                            const char *method, int status, int grpc_status, uint64_t duration_us);
/* Either of the two with labels (lab NULL: none); grpc_status -2: not gRPC. */
void px_metrics_record_labels(struct px_metrics_state *m, const struct px_listener_cfg *l,
                              const char *method, int status, int grpc_status,
                              const struct px_metrics_labels *lab, uint64_t duration_us);
/* Write all metrics in Prometheus text format into out (an evbuffer); srv's
 * gauges (streams, drain state, start time) when srv is not NULL. */
struct evbuffer;
struct px_server;
void px_metrics_write_prometheus_of(const struct px_server *srv, struct evbuffer *out);
/* Write /stats JSON (srv's keys when srv is not NULL). */
void px_metrics_write_json_of(const struct px_server *srv, struct evbuffer *out);
/* Other modules export their own series (pool: circuit breakers; routes:
 * per-endpoint outcomes; policy: denials by rule) without metrics.c depending on
 * them: a registered writer appends Prometheus text to /metrics, a registered
 * JSON writer adds its keys to the /stats object, in the order registered. At
 * most 8 in all; registering a writer twice is a no-op. */
typedef void (*px_metrics_writer)(struct evbuffer *out);
typedef void (*px_metrics_json_writer)(json_t *stats);
void px_metrics_register_on(struct px_metrics_state *m, px_metrics_writer fn);
void px_metrics_register_json_on(struct px_metrics_state *m, px_metrics_json_writer fn);
/* A Prometheus writer on a module's state: fn(out, arg). The pair (fn, arg)
 * counts once; px_metrics_unregister_with removes it (before arg is freed). */
typedef void (*px_metrics_writer_with)(struct evbuffer *out, void *arg);
void px_metrics_register_with(struct px_metrics_state *m, px_metrics_writer_with fn, void *arg);
void px_metrics_unregister_with(struct px_metrics_state *m, px_metrics_writer_with fn, void *arg);

#endif
