/* One HTTP exchange (request + response) crossing the proxy, between a
 * downstream side (the client's codec: h1 server connection or h2 server
 * session) and an upstream side (h1 client connection or h2 client session).
 *
 * The codecs never talk to each other: each reports events to the stream
 * (px_stream_on_*) and the stream drives the other side through its
 * px_side_ops. That keeps h1<->h1, h1<->h2, h2<->h1 and h2<->h2 one path.
 *
 * Flow of a request:
 *   downstream codec: px_stream_new() -> fills s->req -> px_stream_on_req_head()
 *   stream: checks, chooses the upstream, px_upstream_attach() -> up->send_head()
 *   downstream codec: px_stream_on_req_data()* -> px_stream_on_req_end()
 *   upstream codec:   fills s->resp -> px_stream_on_resp_head() -> down->send_head()
 *   upstream codec:   px_stream_on_resp_data()* -> px_stream_on_resp_end()
 *   each side calls px_stream_detach() when it no longer touches the stream;
 *   the stream is freed when both sides have detached.
 *
 * Backpressure: px_stream_on_*_data() returns true when the receiving side
 * holds more than limits.buffer_bytes for this stream; the caller then stops
 * reading (h1: disable reads; h2: stop consuming / defer window updates)
 * until the stream calls its ops->resume(), which happens when the other
 * side reports px_stream_on_drain().
 *
 * Ownership: the stream is created by the downstream codec and freed by the
 * stream module itself once both sides detached; codecs only borrow it. */
#ifndef PX_STREAM_H
#define PX_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/list.h"
#include "common/net.h"
#include "proxy/config.h"
#include "proxy/http.h"
#include "proxy/trace.h"
#include "proxy/upstream.h"

enum px_side {
    PX_DOWN = 0, /* the client side */
    PX_UP = 1    /* the upstream side */
};

struct px_stream;
struct px_conn;
struct px_ep_state;
struct px_upstream_ep;

/* What a codec exposes to the stream for one side of it. */
struct px_side_ops {
    const char *name; /* "h1-server", "h1-client", "h2-server", "h2-client" */
    /* Write the head of this side's message: the response head (s->resp) on
     * the downstream side, the request head (s->req) on the upstream side. */
    void (*send_head)(struct px_stream *s);
    /* Queue body bytes (copied) toward this side's peer. */
    void (*send_data)(struct px_stream *s, const uint8_t *data, size_t len);
    /* End the message (trailers in s->resp_trailers / s->req_trailers if any). */
    void (*send_end)(struct px_stream *s);
    /* Bytes of this stream queued toward this side's peer, not yet written. */
    size_t (*pending)(struct px_stream *s);
    /* The other side drained: read this stream's body again. */
    void (*resume)(struct px_stream *s);
    /* The stream failed elsewhere: reset this side (RST_STREAM, or close an
     * h1 connection), then detach (now or later). Never called twice. */
    void (*abort)(struct px_stream *s);
};

/* Why an exchange failed; picks the status and the short body. */
enum px_cause {
    PX_CAUSE_NONE = 0,
    PX_CAUSE_CONNECT_REFUSED,  /* upstream refused the connection -> 503 */
    PX_CAUSE_CONNECT_FAILED,   /* other connect failure (unreachable...) -> 503 */
    PX_CAUSE_CONNECT_TIMEOUT,  /* connect took too long -> 504 */
    PX_CAUSE_UPSTREAM_RESET,   /* upstream closed/reset before a full response -> 502 */
    PX_CAUSE_UPSTREAM_PROTO,   /* upstream sent something we cannot parse -> 502 */
    PX_CAUSE_UPSTREAM_TIMEOUT, /* no response in time -> 504 */
    PX_CAUSE_DOWNSTREAM_RESET, /* the client went away */
    PX_CAUSE_OVERLOAD,         /* a local bound (connections, streams) -> 503 */
    PX_CAUSE_UPSTREAM_TLS,     /* mTLS to the upstream failed (identity, handshake) -> 503 */
    PX_CAUSE_LOOP,             /* the original destination is the proxy itself -> 508 */
    PX_CAUSE_OVERFLOW,         /* circuit breaker: max_pending_requests reached -> 503 */
    PX_CAUSE_PENDING_TIMEOUT   /* circuit breaker: no connection within pending_timeout_ms -> 503 */
};

enum px_stream_state {
    PX_STREAM_HEAD = 0, /* reading the request head */
    PX_STREAM_FORWARD,  /* request head accepted, exchange in progress */
    PX_STREAM_LOCAL,    /* the proxy answers itself (error, denial) */
    PX_STREAM_DONE      /* both messages complete or aborted */
};

struct px_server;

struct px_dest_answer;
struct px_disc_wait;

struct px_stream {
    struct px_server *srv; /* the proxy this exchange runs in (from conn->srv) */
    struct px_conn *conn;  /* downstream connection: addresses, listener; borrowed */
    const struct px_listener_cfg *lcfg;
    enum px_stream_state state;
    struct px_arena arena;
    struct px_msg req, resp;
    struct px_msg *req_trailers, *resp_trailers; /* NULL when none */

    const struct px_side_ops *ops[2];
    void *ctx[2]; /* the codec's per-stream object on each side */
    bool attached[2];
    bool head_sent[2];  /* request head sent upstream / response head sent downstream */
    bool ended[2];      /* end of message sent toward that side */
    bool req_complete;  /* the downstream finished the request */
    bool resp_complete; /* the upstream finished the response */
    bool aborted;
    bool paused[2]; /* reading from that side is paused for backpressure */
    bool expect_continue;

    struct px_upstream_target
        target; /* where the current try goes and over what (proxy/upstream.h) */
    enum px_cause cause;
    uint64_t start_us;
    uint64_t req_body_bytes, resp_body_bytes;
    struct cm_list link; /* in the server's list of live streams, then the gc list */
    struct event *timer; /* whole-request timeout (limits.request_timeout_ms), or NULL */
    bool metrics_done;
    /* service discovery (proxy/discovery.h): what the registry says about this
     * request's destination. Copied from the connection's lookup at creation
     * (its original destination); a later lookup of the request (by Host)
     * may replace it. */
    bool disc_done;              /* disc_res (and dest) hold a finished lookup */
    int disc_res;                /* enum px_disc_result */
    struct px_dest_answer *dest; /* FOUND: the answer (one reference), else NULL */
    /* outbound with discovery, the destination not found in the registry: the
     * request's Host as "name:port" (the port from the Host, else the original
     * destination's) when it names a host, not an address; egress_allow names
     * match it (in the arena), else NULL */
    const char *egress_host;
    struct px_disc_wait *disc_wait; /* the lookup of egress_host in flight, or NULL */
    /* let out only because egress_host matched a name entry: the destination
     * must be an address of that name (proxy/resolve.h); the check in flight */
    struct px_name_wait *name_wait;
    /* routing and retries (proxy/routes.h) */
    struct px_routes *routes;             /* snapshot reference, or NULL */
    struct px_route *route;               /* matched route in routes, or NULL */
    struct px_endpoint *ep;               /* endpoint of the current try, until reported */
    const struct px_ep_state *failed[10]; /* endpoints this request failed on (avoided) */
    uint8_t nfailed;
    uint32_t tries;      /* tries started (resends included) */
    uint32_t resends;    /* of which resends of a request the upstream never processed */
    bool resending;      /* this try is such a resend: a fresh h1 connection, another h2 session */
    bool resend_due;     /* the retry being scheduled is a resend (same endpoint, no backoff) */
    uint64_t avoid_sess; /* h2: the id of the session that refused the request, or 0 */
    uint64_t try_start_us;
    struct evbuffer *replay; /* request body kept for a retry, or NULL */
    bool replayable;         /* replay holds the whole body read so far */
    bool retrying;           /* between tries: waiting for backoff / old side */
    struct event *try_timer; /* per-try timeout, then retry backoff */
    bool abort_sent[2];
    struct cm_addr conn_peer; /* copied: the connection may go first */
    const char *cause_detail; /* static text refining `cause` for the warn line, or NULL */
    const char *tls_detail;   /* why the upstream mTLS handshake failed (in the arena: "peer
                               * is X, expected Y"), for the 503's body; or NULL */
    /* circuit breakers (proxy/pool.h) */
    struct px_breakers cb;            /* limits.upstream_*, with the route's overrides */
    struct px_upstream_ep *queued_on; /* waiting in this endpoint's queue, or NULL */
    struct cm_list qlink;             /* in queued_on->pending */
    uint64_t queue_deadline_ms;       /* monotonic: 503 when still waiting then */
    struct evbuffer *held;            /* request body that arrived while waiting, or NULL */
    /* gRPC (proxy/grpc.h) */
    bool grpc;          /* content-type application/grpc: errors are gRPC statuses */
    bool resp_held;     /* the response head waits for the first DATA or the trailers
                         * (retries.on names a gRPC status) */
    int8_t grpc_status; /* the status the proxy answered with, or -1 */
    struct px_trace tr; /* request id, trace context, log fields (proxy/trace.h) */
    /* HTTP Upgrade (docs/proxy.md "Upgrade and the tunnel after 101") */
    const char *upgrade;       /* the request's Upgrade value (in the arena), or NULL: no upgrade */
    bool upgrade_asked;        /* h1 codec: Upgrade with Connection: upgrade seen (llhttp's flag) */
    bool tunnel;               /* the upstream answered 101: both directions are a byte tunnel */
    uint64_t tunnel_active_us; /* monotonic: the last tunnel byte either way (idle timeout) */
    struct evbuffer *early;    /* tunnel bytes an h2 client sent before the answer, or NULL */
    bool early_eof;            /* ... and its half-close */
};

/* Create a stream for a request arriving on conn; the downstream codec
 * attaches with its ops and context. */
struct px_stream *px_stream_new(struct px_conn *conn, const struct px_side_ops *down_ops,
                                void *down_ctx);

/* Events from the downstream codec. */
void px_stream_on_req_head(struct px_stream *s);
bool px_stream_on_req_data(struct px_stream *s, const uint8_t *data, size_t len);
void px_stream_on_req_end(struct px_stream *s);

/* Events from the upstream codec. */
void px_stream_on_resp_head(struct px_stream *s);
bool px_stream_on_resp_data(struct px_stream *s, const uint8_t *data, size_t len);
void px_stream_on_resp_end(struct px_stream *s);

/* A side failed (connection error, reset, timeout, protocol error). From the
 * upstream before the response head went down: the client gets a 502/503/504
 * naming the cause; otherwise the other side is aborted. */
void px_stream_on_error(struct px_stream *s, enum px_side side, enum px_cause cause);

/* A side's queued output for this stream fell below half the high
 * watermark: resume reading the other side. */
void px_stream_on_drain(struct px_stream *s, enum px_side side);

/* The codec on `side` no longer references the stream. */
void px_stream_detach(struct px_stream *s, enum px_side side);

/* Answer the request locally (errors, denials): status and a short text body.
 * Only before the response head went downstream. */
void px_stream_respond(struct px_stream *s, int status, const char *body);

/* The upstream codec did not get the request processed: a reused keep-alive
 * connection closed before any response byte, an h2 REFUSED_STREAM (also a
 * stream above a GOAWAY's last id), or HEADERS that never left. The stream
 * sends a body-less request again (once per try, within the retry budget,
 * even when the route configures no retries) and counts it as a retry with
 * reason "unprocessed"; otherwise it is px_stream_on_error(s, PX_UP, cause).
 * The codec detaches afterwards as after an error. */
void px_stream_on_unprocessed(struct px_stream *s, enum px_cause cause);

/* Upstream side attachment, done by the upstream codecs:
 * px_h1_client_attach() / px_h2_client_attach() set ops[PX_UP], ctx[PX_UP]. */
void px_stream_attach_up(struct px_stream *s, const struct px_side_ops *ops, void *ctx);
/* Opens the upstream side of each try on s->target: px_upstream_attach()
 * (proxy/upstream.h), which calls px_stream_attach_up() or answers the
 * stream. The unit tests (test/unit/proxy/test_stream.c) replace it with a
 * fake codec; production never changes it. */
extern void (*px_stream_attach_upstream)(struct px_stream *s);

/* Circuit breakers (proxy/pool.c): a try that waited for a connection may
 * go now / must be answered 503 (cause PX_CAUSE_OVERFLOW or
 * PX_CAUSE_PENDING_TIMEOUT, msg the body). */
void px_stream_admitted(struct px_stream *s);
void px_stream_refused(struct px_stream *s, enum px_cause cause, const char *msg);

const char *px_cause_str(enum px_cause c);
int px_cause_status(enum px_cause c);

/* Recycle the streams both sides have detached from (kept on a bounded
 * freelist for reuse). Runs from the server's gc event, outside every codec
 * callback. */
void px_stream_gc(struct px_server *srv);
/* Release the freelist (at exit, for the leak checks). */
void px_stream_freelist_clear(void);

#endif
