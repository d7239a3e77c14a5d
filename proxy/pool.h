/* The upstream pool: per upstream endpoint (address), the connections the
 * codecs hand out to tries (idle HTTP/1.1 connections, HTTP/2 client
 * sessions: linked into the endpoint's record by h1_client.c / h2_client.c,
 * looked up through it), and in front of them the circuit breakers.
 *
 * Upstream circuit breakers (issue 13 part D; Envoy's circuit_breakers): per
 * upstream endpoint (address), at most max_connections connections open or
 * opening (HTTP/1.1 and HTTP/2 together), and at most max_pending_requests
 * requests waiting, FIFO, for one of them to become free (an HTTP/1.1
 * connection back in the pool, an HTTP/2 session with a free stream slot, or
 * the connection count dropping below the limit), each for at most
 * pending_timeout_ms. A full queue or an expired wait answers 503 naming the
 * cause (logged with the proxy's other 5xx answers, rate-limited per cause)
 * and counts remora_upstream_overflow_total{reason}.
 *
 * The queue costs no heap per request: a waiting stream is linked into its
 * endpoint's queue through px_stream.qlink, and one timer per endpoint
 * serves every deadline. Endpoint records are keyed by address, created on
 * first use, and kept while they have connections or waiters; idle ones
 * are dropped oldest first past PX_POOL_MAX_IDLE_EPS (their counters with
 * them), so a pod talking to ever new original destinations stays bounded.
 *
 * Everything runs on the event loop; a waiter is never started from inside
 * a codec callback: capacity changes only schedule the endpoint's wake
 * event, which admits waiters on the next loop turn. */
#ifndef PX_POOL_H
#define PX_POOL_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/list.h"
#include "common/net.h"
#include "proxy/config.h"

struct px_stream;
struct evbuffer;

/* Idle endpoint records (no connection, nobody waiting) kept for /clusters. */
#define PX_POOL_MAX_IDLE_EPS 4096

enum px_overflow {
    PX_OVERFLOW_PENDING = 0, /* the queue held max_pending_requests already */
    PX_OVERFLOW_TIMEOUT,     /* waited pending_timeout_ms without a connection */
    PX_OVERFLOW_N
};

/* One upstream endpoint's breaker state. Owned by pool.c; codecs keep a
 * pointer while they hold one of its connections (the record lives at least
 * as long as nconns > 0). */
struct px_upstream_ep {
    struct cm_addr addr;
    uint32_t nconns;        /* connections open or connecting (h1 + h2) */
    uint32_t npending;      /* streams in `pending` */
    uint32_t max_pending;   /* high-water mark of npending */
    struct cm_list pending; /* px_stream.qlink, oldest first */
    uint64_t queued_total;  /* requests that had to wait */
    uint64_t overflows[PX_OVERFLOW_N];
    uint64_t timer_at_ms;         /* the pending timer is armed for then (0: not armed) */
    struct event *wake;           /* admit waiters on the next loop turn */
    struct event *timer;          /* the earliest pending deadline */
    struct px_upstream_ep *hnext; /* hash chain */
    struct cm_list idle;          /* in the idle list while unused, else unlinked */
    /* the connections handed out from here (counted in nconns while open) */
    struct cm_list h1_idle;     /* idle HTTP/1.1 connections, most recently used first */
    uint32_t h1_nidle;          /* their number (bounded by limits.pool_max_idle) */
    struct cm_list h2_sessions; /* HTTP/2 client sessions, newest first (h2_client.c) */
};

/* Hooks into the codecs and the stream; tests replace them. */
struct px_pool_hooks {
    /* May s start now on ep without opening a connection beyond the limit?
     * (an idle h1 connection, or an h2 session with a free stream slot) */
    bool (*has_free)(struct px_upstream_ep *ep, const struct px_stream *s);
    /* s left the queue with room: start its try. */
    void (*admitted)(struct px_stream *s);
    /* s left the queue without room: answer it (why: PX_OVERFLOW_*). */
    void (*refused)(struct px_stream *s, enum px_overflow why, const char *msg);
};
extern struct px_pool_hooks px_pool_hooks;

/* The record of addr, created when missing (its events on srv's loop). Never NULL. */
struct px_server;
struct px_upstream_ep *px_pool_ep(struct px_server *srv, const struct cm_addr *addr);
/* A connection to ep was opened / closed (its socket is gone). Closing
 * wakes the waiters. */
void px_pool_conn_opened(struct px_upstream_ep *ep);
void px_pool_conn_closed(struct px_upstream_ep *ep);
/* A connection of ep became free (h1 back in the pool, an h2 stream ended):
 * waiters are admitted on the next loop turn. Cheap when nobody waits. */
void px_pool_wake(struct px_upstream_ep *ep);

/* Admission of a try to s->target.addr under s->cb: returns 0 when it may go
 * now; 1 when it was queued (px_pool_hooks.admitted or .refused follows,
 * unless px_pool_cancel comes first); -1 when refused (the queue is full):
 * *msg then holds the 503 body (a static buffer, valid until the next call). */
int px_pool_admit(struct px_stream *s, const char **msg);
/* Take a queued stream out of its queue (client gone, request timeout,
 * answered otherwise). No-op when it is not queued. */
void px_pool_cancel(struct px_stream *s);

/* Totals over every endpoint (metrics). */
uint64_t px_pool_overflows(enum px_overflow why);
uint64_t px_pool_pending(void);
/* The breaker view of ep for /clusters: {"active_connections", "pending",
 * "queued_total", "overflows": {"max_pending_requests", "pending_timeout"}}. */
struct json_t;
struct json_t *px_pool_ep_json(const struct px_upstream_ep *ep);
/* Every record, as an array of {"address", ...px_pool_ep_json} (for the
 * endpoints no route names: original destinations, fixed upstreams). */
struct json_t *px_pool_all_json(void);
/* Look a record up without creating it (NULL when unknown). */
struct px_upstream_ep *px_pool_find(const struct cm_addr *addr);
/* Free every record (exit; no connection or waiter may be left). */
void px_pool_shutdown(void);

/* Prometheus: remora_upstream_overflow_total{reason}, remora_upstream_pending. */
void px_pool_write_prometheus(struct evbuffer *out);

#endif
