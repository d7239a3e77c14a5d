/* Where a try goes and over what (issue 15 point 1): the one place that turns
 * a request's route endpoint (or its connection's default upstream) into a
 * target {address, protocol, TLS configuration, expected peer identity}, hands
 * the try to the codec of that protocol, and keeps the proxy-wide budget of
 * resends that no route accounts for.
 *
 * A try goes: px_upstream_resolve (this file) -> px_pool_admit (pool.c,
 * circuit breakers) -> px_upstream_attach (this file: an h1 connection or an
 * h2 stream for the target) -> the codec sends the request and reports the
 * outcome to the stream -> the stream decides whether the next try goes
 * (stream.c: retries and resends, docs/internals/upstream.md).
 *
 * The codecs never choose TLS or identity: they take s->target as it is.
 * Service discovery plugs in at px_upstream_resolve. */
#ifndef PX_UPSTREAM_H
#define PX_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/net.h"
#include "proxy/config.h"

struct px_stream;
struct px_conn;
struct px_endpoint;
struct px_tls_conf;
struct px_upstream_ep;
struct evbuffer;

enum px_target_proto {
    PX_TGT_H1 = 0, /* HTTP/1.1 over a pooled connection (proxy/h1_client.c) */
    PX_TGT_H2,     /* HTTP/2 stream on a pooled session (proxy/h2_client.c) */
    PX_TGT_TCP     /* opaque bytes over one connection (proxy/tcp.c) */
};

/* One try's destination. Embedded in the stream (or a tunnel); resolved once
 * per try and released with px_upstream_target_release. */
struct px_upstream_target {
    struct cm_addr addr;
    enum px_target_proto proto;
    struct px_tls_conf *tls; /* mTLS client snapshot (one reference), or NULL: plaintext */
    const char *expected_id; /* SPIFFE ID the peer must present (borrowed from the route
                              * snapshot the stream holds), or NULL: any mesh workload */
    const char *host;        /* outside the mesh: the name egress_allow was matched on (the
                              * HTTP Host "name:port" or the TLS SNI; borrowed from the stream
                              * or connection), or NULL: the address */
};

/* Why a target could not be resolved (the stream answers with the status). */
enum px_resolve {
    PX_RESOLVE_OK = 0,
    PX_RESOLVE_LOOP,           /* the address is one of our listeners -> 508 */
    PX_RESOLVE_ID_NEEDS_MTLS,  /* the endpoint names an identity, the listener is not mesh -> 503 */
    PX_RESOLVE_NO_CERT,        /* mesh, but no workload certificate yet -> 503 */
    PX_RESOLVE_NOT_IN_REGISTRY /* outside the mesh, registry_only, not in egress_allow -> 502 */
};

/* The protocol requests of listener l are sent upstream with: HTTP/2 between
 * sidecars (tls "mesh"), else the listener's upstream_protocol. */
enum px_target_proto px_upstream_proto(const struct px_listener_cfg *l);

/* Resolve s's next try: ep is the route endpoint the balancer picked, or
 * NULL for the connection's default upstream. Fills *t (releasing what it
 * held) and returns PX_RESOLVE_OK; on failure *t holds the address only (for
 * the log line) and no TLS reference. */
enum px_resolve px_upstream_resolve(const struct px_stream *s, const struct px_endpoint *ep,
                                    struct px_upstream_target *t);
/* The same for an opaque TCP connection: ep is the discovered Service's
 * endpoint picked for it (proxy/service.c: its identity is required), or NULL
 * for the connection's default upstream. */
enum px_resolve px_upstream_resolve_tcp(const struct px_conn *c, const struct px_endpoint *ep,
                                        struct px_upstream_target *t);
/* The status and body the client gets for a resolve failure. */
int px_resolve_status(enum px_resolve r);
const char *px_resolve_str(enum px_resolve r);
/* The body for the client: px_resolve_str, or for NOT_IN_REGISTRY the message
 * naming the destination (t->host, else t->addr), written into buf. */
const char *px_resolve_msg(enum px_resolve r, const struct px_upstream_target *t, char *buf,
                           size_t len);
/* Drop the target's TLS reference (idempotent). */
void px_upstream_target_release(struct px_upstream_target *t);

/* Open the upstream side of s's try on s->target: the h1 or h2 codec, which
 * calls px_stream_attach_up() or answers the stream. The default of
 * px_stream_attach_upstream. */
void px_upstream_attach(struct px_stream *s);
/* Could s go now on ep without opening a connection beyond the breaker (an
 * idle h1 connection, an h2 session with a free stream slot)? The default
 * of px_pool_hooks.has_free. */
bool px_upstream_has_free(struct px_upstream_ep *ep, const struct px_stream *s);

/* Retries by reason (remora_retries_by_reason_total{reason}). */
enum px_retry_reason {
    PX_RETRY_REASON_RETRY_ON = 0, /* the route's retry_on matched the failure */
    PX_RETRY_REASON_UNPROCESSED,  /* the upstream never processed the request */
    PX_RETRY_REASON_N
};
void px_upstream_count_retry(enum px_retry_reason r);
uint64_t px_upstream_retries(enum px_retry_reason r);

/* The budget for resends of requests no route accounts for: a request
 * counts with px_upstream_budget_request; a resend is allowed while resends
 * stay under 20 % of the requests of the last 10 s, and always for the
 * first 10 (the same floor as a route's budget: a quiet system never fails
 * a request it would have served). now_us: cm_mono_us(). Counts the resend
 * when it returns true. */
void px_upstream_budget_request(uint64_t now_us);
bool px_upstream_budget_resend(uint64_t now_us);
/* Forget the budget (tests). */
void px_upstream_budget_reset(void);

/* Prometheus: remora_retries_by_reason_total{reason}. */
void px_upstream_write_prometheus(struct evbuffer *out);

#endif
