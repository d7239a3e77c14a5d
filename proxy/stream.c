#include "proxy/stream.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/accesslog.h"
#include "proxy/authz.h"
#include "proxy/conn.h"
#include "proxy/grpc.h"
#include "proxy/identity.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/routes.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

/* Freed stream records are kept for reuse: no malloc per request once warm.
 * Bounded so that a burst does not pin memory forever. */
#define STREAM_FREELIST_MAX 256
static struct cm_list freelist = {&freelist, &freelist};
static unsigned freelist_len;

const char *px_cause_str(enum px_cause c)
{
    switch (c) {
    case PX_CAUSE_NONE:
        return "none";
    case PX_CAUSE_CONNECT_REFUSED:
        return "upstream connect error: connection refused";
    case PX_CAUSE_CONNECT_FAILED:
        return "upstream connect error";
    case PX_CAUSE_CONNECT_TIMEOUT:
        return "upstream connect timeout";
    case PX_CAUSE_UPSTREAM_RESET:
        return "upstream reset before the response completed";
    case PX_CAUSE_UPSTREAM_PROTO:
        return "upstream sent an invalid response";
    case PX_CAUSE_UPSTREAM_TIMEOUT:
        return "upstream request timeout";
    case PX_CAUSE_DOWNSTREAM_RESET:
        return "downstream reset";
    case PX_CAUSE_OVERLOAD:
        return "proxy overloaded";
    case PX_CAUSE_UPSTREAM_TLS:
        return "upstream mTLS handshake failed";
    case PX_CAUSE_LOOP:
        return "loop detected: the destination is this proxy";
    case PX_CAUSE_OVERFLOW:
        return "upstream overflow: max_pending_requests";
    case PX_CAUSE_PENDING_TIMEOUT:
        return "upstream pending timeout";
    }
    return "unknown";
}

int px_cause_status(enum px_cause c)
{
    switch (c) {
    case PX_CAUSE_CONNECT_REFUSED:
    case PX_CAUSE_CONNECT_FAILED:
    case PX_CAUSE_OVERLOAD:
    case PX_CAUSE_UPSTREAM_TLS:
    case PX_CAUSE_OVERFLOW:
    case PX_CAUSE_PENDING_TIMEOUT:
        return 503;
    case PX_CAUSE_CONNECT_TIMEOUT:
    case PX_CAUSE_UPSTREAM_TIMEOUT:
        return 504;
    case PX_CAUSE_LOOP:
        return 508;
    default:
        return 502;
    }
}

struct px_stream *px_stream_new(struct px_conn *conn, const struct px_side_ops *down_ops,
                                void *down_ctx)
{
    struct px_stream *s;
    struct px_arena arena;
    px_arena_init(&arena);
    if (!cm_list_empty(&freelist)) {
        struct cm_list *n = freelist.next;
        cm_list_remove(n);
        freelist_len--;
        s = cm_container_of(n, struct px_stream, link);
        arena = s->arena; /* its reset chunk: no malloc per request once warm */
    } else {
        s = cm_xmalloc(sizeof(*s));
    }
    memset(s, 0, sizeof(*s));
    s->srv = conn->srv;
    s->conn = conn;
    s->lcfg = conn->lcfg;
    s->state = PX_STREAM_HEAD;
    s->arena = arena;
    px_msg_init(&s->req);
    px_msg_init(&s->resp);
    s->ops[PX_DOWN] = down_ops;
    s->ctx[PX_DOWN] = down_ctx;
    s->attached[PX_DOWN] = true;
    s->conn_peer = conn->peer; /* a stream refused before its head still names its peer */
    s->start_us = cm_mono_us();
    s->grpc_status = -1;
    cm_list_insert_tail(&s->srv->streams, &s->link);
    s->srv->nstreams++;
    return s;
}

static void record(struct px_stream *s)
{
    if (s->metrics_done || s->req.method == NULL)
        return;
    s->metrics_done = true;
    int status = s->head_sent[PX_DOWN] ? s->resp.status : 0;
    uint64_t dur = cm_mono_us() - s->start_us;
    if (s->srv->metrics == NULL) {
        /* no request tables (unit tests without a server's metrics) */
    } else if (s->grpc) {
        int grpc = s->grpc_status >= 0 ? s->grpc_status
                   : status != 0       ? px_grpc_resp_status(&s->resp, s->resp_trailers)
                                       : -1;
        px_metrics_record_grpc(s->srv->metrics, s->lcfg, s->req.method, status, grpc, dur);
    } else {
        px_metrics_record(s->srv->metrics, s->lcfg, s->req.method, status, dur);
    }
    px_accesslog_http(s->srv->access_log, s, status, dur);
}

/* Runs from the server's gc event, outside every codec callback. */
void px_stream_gc(struct px_server *srv)
{
    while (!cm_list_empty(&srv->gc_streams)) {
        struct cm_list *n = srv->gc_streams.next;
        cm_list_remove(n);
        struct px_stream *s = cm_container_of(n, struct px_stream, link);
        if (freelist_len < STREAM_FREELIST_MAX) {
            px_arena_reset(&s->arena);
            cm_list_insert_head(&freelist, &s->link);
            freelist_len++;
        } else {
            px_arena_deinit(&s->arena);
            free(s);
        }
    }
}

/* Release the freelist at exit (leak checks). */
void px_stream_freelist_clear(void)
{
    while (!cm_list_empty(&freelist)) {
        struct cm_list *n = freelist.next;
        cm_list_remove(n);
        struct px_stream *s = cm_container_of(n, struct px_stream, link);
        px_arena_deinit(&s->arena);
        free(s);
    }
    freelist_len = 0;
}

void px_stream_detach(struct px_stream *s, enum px_side side)
{
    if (!s->attached[side])
        return;
    s->attached[side] = false;
    if (s->attached[PX_DOWN] || s->attached[PX_UP])
        return;
    px_pool_cancel(s); /* still waiting for a connection: leave the queue */
    if (s->held != NULL)
        evbuffer_free(s->held);
    s->held = NULL;
    if (s->early != NULL)
        evbuffer_free(s->early);
    s->early = NULL;
    record(s);
    if (s->timer != NULL) {
        event_free(s->timer);
        s->timer = NULL;
    }
    if (s->try_timer != NULL) {
        event_free(s->try_timer);
        s->try_timer = NULL;
    }
    if (s->ep != NULL)
        px_route_try_abandon(s->ep); /* the client went away mid-try: no verdict */
    s->ep = NULL;
    if (s->replay != NULL)
        evbuffer_free(s->replay);
    s->replay = NULL;
    px_upstream_target_release(&s->target);
    s->target.expected_id = NULL; /* borrowed from the routes released next */
    px_routes_unref(s->routes);
    s->routes = NULL;
    cm_list_remove(&s->link);
    s->srv->nstreams--;
    s->state = PX_STREAM_DONE;
    cm_list_insert_tail(&s->srv->gc_streams, &s->link);
    event_active(s->srv->gc_ev, EV_TIMEOUT, 0);
}

void px_stream_attach_up(struct px_stream *s, const struct px_side_ops *ops, void *ctx)
{
    s->ops[PX_UP] = ops;
    s->ctx[PX_UP] = ctx;
    s->attached[PX_UP] = true;
}

/* Tell a side to reset its half of the exchange, once. */
static void abort_side(struct px_stream *s, enum px_side side)
{
    if (!s->attached[side] || s->ops[side] == NULL || s->abort_sent[side])
        return;
    s->abort_sent[side] = true;
    s->ended[side] = true;
    s->ops[side]->abort(s);
}

/* Every 502/503/504 the proxy makes is a warn line naming why and where,
 * rate-limited per cause (a dead upstream fails every request). */
static void warn_5xx(struct px_stream *s, int status, const char *body)
{
    char up[CM_ADDR_STRLEN], peer[CM_ADDR_STRLEN], path[200];
    const char *p = s->req.path ? s->req.path : "-";
    cm_log_escape(path, sizeof(path), p, strlen(p));
    const char *cause = s->cause != PX_CAUSE_NONE ? px_cause_str(s->cause) : body;
    /* a circuit breaker's body says more (how many wait, the limit); the
     * cause stays the rate limiter's key */
    const char *text =
        s->cause == PX_CAUSE_OVERFLOW || s->cause == PX_CAUSE_PENDING_TIMEOUT ? body : cause;
    bool has_up = s->target.addr.len > 0;
    /* the detail belongs to the invalid response it names, not to a later try */
    const char *detail = s->cause == PX_CAUSE_UPSTREAM_PROTO ? s->cause_detail : NULL;
    cm_log_limited(CM_LOG_WARN, cause, "listener %s: %d for %s %s from %s, upstream %s: %s%s%s",
                   s->lcfg->name, status, s->req.method ? s->req.method : "-", path,
                   cm_addr_format(&s->conn_peer, peer, sizeof(peer)),
                   has_up ? cm_addr_format(&s->target.addr, up, sizeof(up)) : "-", text,
                   detail ? ": " : "", detail ? detail : "");
}

void px_stream_respond(struct px_stream *s, int status, const char *body)
{
    px_pool_cancel(s); /* answered while waiting for a connection */
    if (!s->attached[PX_DOWN] || s->aborted || s->ops[PX_DOWN] == NULL) {
        /* the client is gone: nobody to answer, only the upstream to stop */
        abort_side(s, PX_UP);
        return;
    }
    if (s->head_sent[PX_DOWN]) {
        abort_side(s, PX_DOWN);
        return;
    }
    s->state = PX_STREAM_LOCAL;
    if (status == 502 || status == 503 || status == 504)
        warn_5xx(s, status, body); /* before the codecs may finish the stream */
    if (s->attached[PX_UP])
        abort_side(s, PX_UP);
    if (s->grpc && px_grpc_respond(s, status, body)) {
        if (status >= 500)
            px_metrics.upstream_errors++;
        return;
    }
    size_t blen = strlen(body);
    px_msg_init(&s->resp);
    s->resp.status = status;
    char clen[24];
    int n = snprintf(clen, sizeof(clen), "%zu", blen + 1);
    uint32_t big = UINT32_MAX;
    px_msg_add(&s->arena, &s->resp, "content-type", 12, "text/plain", 10, big, big);
    px_msg_add(&s->arena, &s->resp, "content-length", 14, clen, (size_t)n, big, big);
    s->resp.content_length = (int64_t)blen + 1;
    px_msg_add(&s->arena, &s->resp, "server", 6, "remora", 6, big, big);
    px_trace_on_respond(s);
    s->head_sent[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_head(s);
    s->ops[PX_DOWN]->send_data(s, (const uint8_t *)body, blen);
    s->ops[PX_DOWN]->send_data(s, (const uint8_t *)"\n", 1);
    s->ended[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_end(s);
    if (status >= 500)
        px_metrics.upstream_errors++;
}

static void on_request_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_stream *s = arg;
    s->cause = PX_CAUSE_UPSTREAM_TIMEOUT;
    cm_debug("stream %s %s: request timeout", s->req.method, s->req.path);
    if (s->try_timer != NULL)
        evtimer_del(s->try_timer);
    s->retrying = s->resend_due = false;
    if (!s->head_sent[PX_DOWN])
        px_stream_respond(s, 504, px_cause_str(s->cause));
    else if (s->grpc && !s->ended[PX_DOWN]) {
        /* a gRPC response under way ends with DEADLINE_EXCEEDED after what
         * was sent, instead of a reset the client would call INTERNAL */
        abort_side(s, PX_UP);
        if (!px_grpc_end_with(s, PX_GRPC_DEADLINE_EXCEEDED, px_cause_str(s->cause)))
            abort_side(s, PX_DOWN);
    } else {
        abort_side(s, PX_UP);
        abort_side(s, PX_DOWN);
    }
}

/* x-forwarded-client-cert (Envoy's format): what the client sent is never
 * trusted; with a verified mTLS peer the app learns who called. */
static int pass_client_cert(struct px_stream *s)
{
    px_msg_remove(&s->req, "x-forwarded-client-cert");
    if (!s->conn->mtls)
        return 0;
    char v[600];
    int n =
        snprintf(v, sizeof(v), "By=%s;URI=%s", px_identity_id(s->srv->identity), s->conn->peer_id);
    if (n < 0 || (size_t)n >= sizeof(v) ||
        px_msg_add(&s->arena, &s->req, "x-forwarded-client-cert", 23, v, (size_t)n,
                   s->srv->cfg->limits.max_header_bytes + 1024,
                   s->srv->cfg->limits.max_headers + 1) != 0) {
        px_stream_respond(s, 431, "request header fields too large");
        return -1;
    }
    return 0;
}

/* ---- tries and retries ------------------------------------------------------- */

static void on_try_timer(evutil_socket_t fd, short what, void *arg);

static bool idempotent(const char *m)
{
    return m != NULL &&
           (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0 ||
            strcmp(m, "PUT") == 0 || strcmp(m, "DELETE") == 0 || strcmp(m, "TRACE") == 0);
}

static enum px_try_outcome outcome_of(enum px_cause c)
{
    switch (c) {
    case PX_CAUSE_CONNECT_REFUSED:
    case PX_CAUSE_CONNECT_FAILED:
    case PX_CAUSE_CONNECT_TIMEOUT:
    case PX_CAUSE_UPSTREAM_TLS:
        return PX_TRY_CONNECT;
    case PX_CAUSE_UPSTREAM_TIMEOUT:
        return PX_TRY_TIMEOUT;
    default:
        return PX_TRY_RESET;
    }
}

/* Give the current try's endpoint its verdict (once). */
static void report_try(struct px_stream *s, enum px_try_outcome o)
{
    if (s->ep == NULL)
        return;
    /* a try that got its head was sampled then (px_route_try_head); one that
     * failed before it waited this long: also a latency sample */
    bool got_head = o == PX_TRY_OK || o == PX_TRY_5XX || s->head_sent[PX_DOWN];
    px_route_report(s->route, s->ep, o, got_head ? 0 : cm_mono_us() - s->try_start_us);
    if (o != PX_TRY_OK && s->nfailed < sizeof(s->failed) / sizeof(s->failed[0]))
        s->failed[s->nfailed++] = s->ep->st;
    s->ep = NULL;
}

static void send_try(struct px_stream *s);

/* Pick the endpoint of the next try and pass its circuit breakers; then
 * send_try attaches an upstream and sends what the request has so far: the
 * head, the kept body, and its end if the client finished. */
static void start_try(struct px_stream *s)
{
    s->try_start_us = cm_mono_us(); /* before a verdict can be given below */
    if (s->resend_due) {
        /* the upstream never processed the last try: the same endpoint and
         * target again (no verdict was given; s->ep is still in flight) */
        s->resend_due = false;
        s->resending = true;
        s->resends++;
    } else {
        s->resending = false;
        s->avoid_sess = 0;
        if (s->route != NULL)
            s->ep = px_route_pick(s->route, s->failed, s->nfailed);
        enum px_resolve r = px_upstream_resolve(s, s->ep, &s->target);
        if (r == PX_RESOLVE_ID_NEEDS_MTLS)
            s->ep = NULL; /* a configuration error, not the endpoint's: no verdict on it */
        else if (s->ep != NULL)
            px_route_try_start(s->ep);
        if (r != PX_RESOLVE_OK) {
            if (r == PX_RESOLVE_LOOP)
                report_try(s, PX_TRY_CONNECT);
            s->cause = r == PX_RESOLVE_LOOP ? PX_CAUSE_LOOP : PX_CAUSE_UPSTREAM_TLS;
            char msg[192];
            px_stream_respond(s, px_resolve_status(r),
                              px_resolve_msg(r, &s->target, msg, sizeof(msg)));
            return;
        }
    }
    s->tries++;
    /* circuit breakers: every try (retries too) waits for a connection of
     * its endpoint when max_connections are busy */
    const char *msg = NULL;
    int rc = px_pool_admit(s, &msg);
    if (rc < 0)
        px_stream_refused(s, PX_CAUSE_OVERFLOW, msg);
    if (rc != 0)
        return; /* refused, or queued: px_stream_admitted / _refused follows */
    send_try(s);
}

/* The try may use a connection of s->target now (px_pool_hooks.admitted
 * after a wait). */
void px_stream_admitted(struct px_stream *s)
{
    if (s->state != PX_STREAM_FORWARD || !s->attached[PX_DOWN] || s->aborted)
        return; /* answered or gone meanwhile (the queue is left then) */
    send_try(s);
}

/* The try gets no connection: 503 naming the breaker. The endpoint gets no
 * verdict (the limit is ours, not its failure) and nothing is retried. */
void px_stream_refused(struct px_stream *s, enum px_cause cause, const char *msg)
{
    px_pool_cancel(s);
    if (s->ep != NULL)
        px_route_try_abandon(s->ep);
    s->ep = NULL;
    s->cause = cause;
    px_stream_respond(s, 503, msg);
}

void (*px_stream_attach_upstream)(struct px_stream *s) = px_upstream_attach;

/* Attach the upstream codec and send what the request has so far. */
static void send_try(struct px_stream *s)
{
    s->try_start_us = cm_mono_us(); /* a wait for a connection is not the endpoint's latency */
    if (s->route != NULL && s->route->per_try_timeout_ms > 0) {
        if (s->try_timer == NULL)
            s->try_timer = evtimer_new(s->srv->base, on_try_timer, s);
        uint32_t ms = s->route->per_try_timeout_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(s->try_timer, &tv);
    }
    px_stream_attach_upstream(s);
    if (!s->attached[PX_UP])
        return; /* attach failed and already answered */
    s->head_sent[PX_UP] = true;
    s->ops[PX_UP]->send_head(s);
    if (s->tries > 1 && s->replay != NULL) {
        /* a retry: the body read so far, again */
        struct evbuffer_ptr pos;
        struct evbuffer_iovec v[8];
        evbuffer_ptr_set(s->replay, &pos, 0, EVBUFFER_PTR_SET);
        size_t left = evbuffer_get_length(s->replay);
        while (left > 0) {
            int n = evbuffer_peek(s->replay, (ev_ssize_t)left, &pos, v, 8);
            if (n <= 0)
                break;
            for (int i = 0; i < n && i < 8 && left > 0; i++) {
                size_t len = v[i].iov_len < left ? v[i].iov_len : left;
                s->ops[PX_UP]->send_data(s, v[i].iov_base, len);
                left -= len;
                evbuffer_ptr_set(s->replay, &pos, len, EVBUFFER_PTR_ADD);
            }
        }
    } else if (s->held != NULL) {
        /* the body that arrived while the try waited for a connection (a
         * retry's replay above holds it too) */
        struct evbuffer_iovec v[8];
        while (evbuffer_get_length(s->held) > 0) {
            int n = evbuffer_peek(s->held, -1, NULL, v, 8);
            if (n <= 0)
                break;
            size_t used = 0;
            for (int i = 0; i < n && i < 8; i++) {
                s->ops[PX_UP]->send_data(s, v[i].iov_base, v[i].iov_len);
                used += v[i].iov_len;
            }
            evbuffer_drain(s->held, used);
        }
    }
    if (s->held != NULL) {
        evbuffer_free(s->held);
        s->held = NULL;
    }
    if (s->req_complete && !s->ended[PX_UP]) {
        s->ended[PX_UP] = true;
        s->ops[PX_UP]->send_end(s);
    }
    /* the client's body was held while no upstream was attached */
    if (s->paused[PX_DOWN]) {
        s->paused[PX_DOWN] = false;
        s->ops[PX_DOWN]->resume(s);
    }
}

/* After a failed try: may the request go to another endpoint? Only before
 * anything of the response went to the client, within the route's
 * attempts and retry_on, for idempotent methods (any method when the
 * connection was never made), with the whole body kept, within budget. */
static bool can_retry_if(struct px_stream *s, enum px_try_outcome o, int status, int grpc)
{
    struct px_route *rt = s->route;
    if (rt == NULL || s->tries - s->resends >= rt->attempts || s->head_sent[PX_DOWN] ||
        s->state != PX_STREAM_FORWARD || !s->attached[PX_DOWN] || s->aborted)
        return false;
    if (grpc >= 0) {
        /* a gRPC status the route names: every gRPC call is a POST, and
         * naming the status is the route's word that the call may go again */
        if (grpc > PX_GRPC_STATUS_MAX || !(rt->retry_grpc & (1u << grpc)))
            return false;
    } else if (!px_route_retry_on(rt, o, status)) {
        return false;
    } else if (o != PX_TRY_CONNECT && !idempotent(s->req.method)) {
        return false;
    }
    if (s->replay == NULL || !s->replayable)
        return false;
    return px_route_budget_retry(rt);
}

static bool can_retry(struct px_stream *s, enum px_try_outcome o, int status)
{
    return can_retry_if(s, o, status, -1);
}

/* May the request the upstream never processed go again? Body-less only
 * (nothing to keep), once per try, before anything went to the client, and
 * within the route's retry budget or, without a route, the proxy's (both
 * with a floor that a quiet system never reaches). */
static bool can_resend(struct px_stream *s)
{
    if (s->resending || !s->req.end_stream || s->head_sent[PX_DOWN] ||
        s->state != PX_STREAM_FORWARD || !s->attached[PX_DOWN] || s->aborted)
        return false;
    return s->route != NULL ? px_route_budget_retry(s->route)
                            : px_upstream_budget_resend(cm_mono_us());
}

/* Wait (backoff with jitter; none for a resend) and start the next try once
 * the failed upstream side has let go of the stream. */
static void schedule_retry(struct px_stream *s, enum px_retry_reason why)
{
    s->retrying = true;
    px_metrics.retries_total++;
    px_upstream_count_retry(why);
    uint64_t ms = 0;
    if (why == PX_RETRY_REASON_RETRY_ON) {
        uint32_t base = s->route->backoff_base_ms;
        uint32_t n = s->tries - s->resends; /* resends are not the route's tries */
        ms = (uint64_t)base << (n > 4 ? 3 : n - 1);
        if (ms > (uint64_t)base * 10)
            ms = (uint64_t)base * 10;
        if (ms > 0) {
            uint32_t j = 0;
            pki_rng_fn(NULL, (unsigned char *)&j, sizeof(j));
            ms = ms / 2 + j % (ms / 2 + 1);
        }
    }
    if (s->try_timer == NULL)
        s->try_timer = evtimer_new(s->srv->base, on_try_timer, s);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(s->try_timer, &tv);
    char a[CM_ADDR_STRLEN];
    cm_debug("%s %s: try %u %s (%s), %s in %llu ms", s->req.method, s->req.path, s->tries,
             why == PX_RETRY_REASON_RETRY_ON ? "failed" : "not processed",
             cm_addr_format(&s->target.addr, a, sizeof(a)),
             why == PX_RETRY_REASON_RETRY_ON ? "retrying" : "resending", (unsigned long long)ms);
}

void px_stream_on_unprocessed(struct px_stream *s, enum px_cause cause)
{
    if (s->aborted || s->resp_complete || s->retrying)
        return;
    if (!can_resend(s)) {
        px_stream_on_error(s, PX_UP, cause);
        return;
    }
    s->abort_sent[PX_UP] = true; /* the codec detaches itself; the resend waits for that */
    s->resend_due = true;
    schedule_retry(s, PX_RETRY_REASON_UNPROCESSED);
}

/* The timer is the per-try timeout while a try runs, and the backoff
 * between tries. */
static void on_try_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_stream *s = arg;
    if (s->retrying) {
        if (s->attached[PX_UP]) {
            struct timeval tv = {0, 1000}; /* the old side still lets go */
            evtimer_add(s->try_timer, &tv);
            return;
        }
        s->retrying = false;
        s->head_sent[PX_UP] = s->ended[PX_UP] = s->abort_sent[PX_UP] = false;
        s->paused[PX_UP] = false;
        s->resp_complete = false;
        s->resp_held = false;
        px_msg_init(&s->resp);
        s->resp_trailers = NULL;
        s->cause = PX_CAUSE_NONE;
        start_try(s);
        return;
    }
    /* per-try timeout */
    if (s->head_sent[PX_DOWN] || s->state != PX_STREAM_FORWARD)
        return;
    report_try(s, PX_TRY_TIMEOUT);
    abort_side(s, PX_UP);
    if (can_retry(s, PX_TRY_TIMEOUT, 0)) {
        schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
        return;
    }
    s->cause = PX_CAUSE_UPSTREAM_TIMEOUT;
    px_stream_respond(s, 504, "upstream per-try timeout");
}

/* grpc-timeout bounds the request like timeout_ms: the smaller wins. A
 * malformed value is refused (gRPC servers treat it as an error too), so a
 * client never runs without the deadline it thinks it set. */
static int grpc_timeout(struct px_stream *s, uint32_t *timeout_ms)
{
    const struct px_hdr *h = px_msg_find(&s->req, "grpc-timeout");
    uint64_t ms;
    if (h == NULL)
        return 0;
    if (px_grpc_timeout_parse(h->value, h->valuelen, &ms) != 0) {
        px_metrics.bad_request++;
        px_stream_respond(s, 400, "malformed grpc-timeout");
        return -1;
    }
    if (*timeout_ms == 0 || ms < *timeout_ms)
        *timeout_ms = (uint32_t)ms;
    return 0;
}

/* An HTTP/1.1 Upgrade request (RFC 9110 7.8): an Upgrade field and
 * "upgrade" among the Connection options. Returns the Upgrade value (the
 * protocols asked for, in the arena), or NULL. Only toward an HTTP/1.1
 * upstream: toward HTTP/2 the request goes as plain HTTP, which RFC 9110
 * allows (extended CONNECT between sidecars is not done yet). */
static const char *upgrade_requested(struct px_stream *s)
{
    const struct px_msg *r = &s->req;
    if (s->upgrade != NULL)
        return s->upgrade; /* an HTTP/2 client's extended CONNECT (h2_server.c) */
    if (!s->upgrade_asked || r->http_minor < 1)
        return NULL; /* the common case: no header scan */
    const struct px_hdr *up = px_msg_find(r, "upgrade");
    if (up == NULL || up->valuelen == 0)
        return NULL;
    /* toward HTTP/2 (the mesh): extended CONNECT carries one protocol and no
     * request body; h2c is an upgrade to the hop, never tunneled */
    if (px_upstream_proto(s->lcfg) == PX_TGT_H2 &&
        (!r->end_stream || !px_http_valid_name(up->value, up->valuelen) ||
         strcasecmp(up->value, "h2c") == 0))
        return NULL;
    for (uint32_t i = 0; i < r->nhdrs; i++)
        if (PX_HDR_IS(&r->hdrs[i], "connection") &&
            px_hdr_has_token(r->hdrs[i].value, r->hdrs[i].valuelen, "upgrade"))
            return up->value;
    return NULL;
}

/* After the hop-by-hop headers went: put the Upgrade field back (the codec
 * writes "connection: upgrade" itself). Returns 0, or -1 after answering. */
static int keep_upgrade(struct px_stream *s, struct px_msg *m, const char *value)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
    if (px_msg_add(&s->arena, m, "upgrade", 7, value, strlen(value), lim->max_header_bytes + 1024,
                   lim->max_headers + 1) != 0) {
        px_stream_respond(s, 431, "request header fields too large");
        return -1;
    }
    if (m == &s->req)
        s->upgrade = value;
    return 0;
}

/* limits.tcp_idle_timeout_ms without a tunnel byte either way: both sides
 * are closed, as an idle TCP tunnel is (tcp.c). */
static void on_tunnel_idle(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_stream *s = arg;
    uint64_t idle_us = (uint64_t)s->srv->cfg->limits.tcp_idle_timeout_ms * 1000;
    uint64_t now = cm_mono_us();
    if (now - s->tunnel_active_us + 2000 < idle_us) {
        uint64_t left = idle_us - (now - s->tunnel_active_us);
        struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
        evtimer_add(s->timer, &tv);
        return;
    }
    px_metrics.tcp_idle_timeout++;
    cm_debug("upgrade tunnel %s: idle for %u ms: closed", s->req.path ? s->req.path : "-",
             (unsigned)s->srv->cfg->limits.tcp_idle_timeout_ms);
    s->cause = PX_CAUSE_UPSTREAM_TIMEOUT;
    s->aborted = true;
    abort_side(s, PX_UP);
    abort_side(s, PX_DOWN);
}

/* The upstream accepted the upgrade: from now on both directions carry
 * opaque bytes. The request timeout ends (a tunnel lives as long as it is
 * used); the TCP idle timeout starts. The request direction is open again:
 * what the client sends next is tunnel data, its EOF the half-close. */
static void start_tunnel(struct px_stream *s)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
    s->tunnel = true;
    report_try(s, PX_TRY_OK);
    if (s->try_timer != NULL)
        evtimer_del(s->try_timer);
    if (s->timer != NULL)
        event_free(s->timer);
    s->timer = NULL;
    if (s->replay != NULL)
        evbuffer_free(s->replay);
    s->replay = NULL;
    s->replayable = false;
    s->req_complete = false;
    s->ended[PX_UP] = false;
    s->resp.content_length = -1;
    s->resp.end_stream = false;
    s->tunnel_active_us = cm_mono_us();
    if (s->early != NULL) {
        /* an h2 client's DATA ahead of the answer, then maybe its END_STREAM */
        size_t n = evbuffer_get_length(s->early);
        if (n > 0 && s->attached[PX_UP]) {
            s->req_body_bytes += n;
            px_metrics.tcp_bytes_in += n;
            s->ops[PX_UP]->send_data(s, evbuffer_pullup(s->early, -1), n);
        }
        evbuffer_free(s->early);
        s->early = NULL;
    }
    if (s->early_eof && s->attached[PX_UP]) {
        s->req_complete = s->ended[PX_UP] = true;
        s->ops[PX_UP]->send_end(s);
    }
    if (s->paused[PX_DOWN] && s->attached[PX_DOWN]) {
        s->paused[PX_DOWN] = false;
        s->ops[PX_DOWN]->resume(s);
    }
    if (lim->tcp_idle_timeout_ms > 0) {
        s->timer = evtimer_new(s->srv->base, on_tunnel_idle, s);
        uint32_t ms = lim->tcp_idle_timeout_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(s->timer, &tv);
    }
}

void px_stream_on_req_head(struct px_stream *s)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
    s->state = PX_STREAM_FORWARD;
    s->grpc = px_grpc_is_request(&s->req); /* before anything may answer it */
    px_trace_on_req_head(s, s->lcfg->direction == PX_DIR_OUTBOUND,
                         s->srv->cfg->tracing.sample_percent);
    if (lim->max_request_body > 0 && s->req.content_length > 0 &&
        (uint64_t)s->req.content_length > lim->max_request_body) {
        px_metrics.body_too_big++;
        px_stream_respond(s, 413, "request body too large");
        return;
    }
    /* the request chain: authorize -> route -> forward */
    if (s->lcfg->direction == PX_DIR_INBOUND && !px_authz_check(s))
        return;
    if (s->lcfg->direction == PX_DIR_INBOUND && pass_client_cert(s) != 0)
        return;
    /* TE: trailers is meaningful to an HTTP/2 peer (gRPC); HTTP/1.1 drops it */
    const char *upgrade = upgrade_requested(s);
    px_msg_strip_hop_by_hop(&s->req, px_upstream_proto(s->lcfg) == PX_TGT_H2);
    px_trace_restore(s); /* a Connection header cannot strip the request id or trace */
    if (upgrade != NULL && keep_upgrade(s, &s->req, upgrade) != 0)
        return;
    /* a matching route overrides the listener's upstream / original destination */
    s->routes = px_routes_ref(px_routes_current_of(s->srv->routes));
    s->route = px_routes_match(s->routes, s->req.authority, &s->conn->orig_dst);
    s->cb = lim->upstream;
    if (s->route != NULL)
        px_route_breakers(s->route, &s->cb);
    uint32_t timeout_ms = lim->request_timeout_ms;
    if (s->route != NULL && s->route->timeout_ms > 0)
        timeout_ms = s->route->timeout_ms;
    if (s->grpc && grpc_timeout(s, &timeout_ms) != 0)
        return;
    if (s->route != NULL) {
        px_route_budget_request(s->route);
        if (s->route->attempts > 1 && lim->retry_buffer_bytes > 0) {
            s->replay = evbuffer_new();
            s->replayable = s->replay != NULL;
        }
    } else {
        px_upstream_budget_request(s->start_us); /* the budget of resends no route counts */
    }
    if (timeout_ms > 0) {
        s->timer = evtimer_new(s->srv->base, on_request_timeout, s);
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        evtimer_add(s->timer, &tv);
    }
    start_try(s);
}

bool px_stream_on_req_data(struct px_stream *s, const uint8_t *data, size_t len)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
    if (s->tunnel) {
        if (s->state != PX_STREAM_FORWARD || !s->attached[PX_UP] || s->ended[PX_UP])
            return false;
        s->req_body_bytes += len;
        px_metrics.tcp_bytes_in += len;
        s->tunnel_active_us = cm_mono_us();
        s->ops[PX_UP]->send_data(s, data, len);
        if (s->ops[PX_UP]->pending(s) > lim->buffer_bytes) {
            s->paused[PX_DOWN] = true;
            return true;
        }
        return false;
    }
    if (s->upgrade != NULL && s->req_complete) {
        /* bytes behind an Upgrade request before the answer (an h2 client's
         * early DATA; an h1 client's wait unparsed in its input): kept for
         * the tunnel, the client held past buffer_bytes */
        if (s->state != PX_STREAM_FORWARD)
            return false;
        if (s->early == NULL && (s->early = evbuffer_new()) == NULL) {
            cm_error("stream: evbuffer_new failed");
            abort();
        }
        evbuffer_add(s->early, data, len);
        if (evbuffer_get_length(s->early) <= lim->buffer_bytes)
            return false;
        s->paused[PX_DOWN] = true;
        return true;
    }
    if (s->state == PX_STREAM_FORWARD && s->replayable) {
        if (evbuffer_get_length(s->replay) + len > lim->retry_buffer_bytes) {
            s->replayable = false; /* too big to replay: this request is not retried */
            evbuffer_free(s->replay);
            s->replay = NULL;
            if (s->retrying || (s->queued_on != NULL && s->tries > 1)) {
                /* a retry is pending (in its backoff, or waiting for a
                 * connection) and would now miss the start of the body */
                if (s->try_timer != NULL)
                    evtimer_del(s->try_timer);
                s->retrying = false;
                px_stream_respond(s, 502,
                                  "upstream failed; the request body is too large to retry");
                return false;
            }
        } else {
            evbuffer_add(s->replay, data, len);
        }
    }
    if (s->state == PX_STREAM_FORWARD && s->retrying) {
        s->req_body_bytes += len;
        s->paused[PX_DOWN] = true; /* hold the client until the next try starts */
        return true;
    }
    if (s->state == PX_STREAM_FORWARD && s->queued_on != NULL) {
        /* waiting for a connection: keep what came, and hold the client past
         * buffer_bytes as if the upstream were slow (below it the client is
         * still read, so its close is seen and the request leaves the queue) */
        s->req_body_bytes += len;
        if (lim->max_request_body > 0 && s->req_body_bytes > lim->max_request_body) {
            px_metrics.body_too_big++;
            px_stream_respond(s, 413, "request body too large");
            return false;
        }
        if (s->held == NULL && (s->held = evbuffer_new()) == NULL) {
            cm_error("stream: evbuffer_new failed");
            abort();
        }
        evbuffer_add(s->held, data, len);
        if (evbuffer_get_length(s->held) <= lim->buffer_bytes)
            return false;
        s->paused[PX_DOWN] = true;
        return true;
    }
    if (s->state != PX_STREAM_FORWARD || !s->attached[PX_UP] || s->ended[PX_UP])
        return false; /* answered locally or upstream gone: discard */
    s->req_body_bytes += len;
    if (lim->max_request_body > 0 && s->req_body_bytes > lim->max_request_body) {
        px_metrics.body_too_big++;
        px_stream_respond(s, 413, "request body too large");
        return false;
    }
    s->ops[PX_UP]->send_data(s, data, len);
    if (s->ops[PX_UP]->pending(s) > lim->buffer_bytes) {
        s->paused[PX_DOWN] = true;
        return true;
    }
    return false;
}

void px_stream_on_req_end(struct px_stream *s)
{
    if (s->upgrade != NULL && s->req_complete && !s->tunnel) {
        s->early_eof = true; /* the half-close of a tunnel not open yet */
        return;
    }
    s->req_complete = true;
    if (s->state != PX_STREAM_FORWARD || !s->attached[PX_UP] || s->ended[PX_UP])
        return;
    s->ended[PX_UP] = true;
    s->ops[PX_UP]->send_end(s);
}

static void send_resp_head(struct px_stream *s)
{
    s->resp_held = false;
    px_msg_strip_hop_by_hop(&s->resp, false);
    s->head_sent[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_head(s);
}

/* The end of a response whose head was held: retry when its gRPC status is
 * one the route names and a retry is allowed (true); otherwise send the
 * head on (false). */
static bool grpc_retry(struct px_stream *s)
{
    int g = px_grpc_resp_status(&s->resp, s->resp_trailers);
    if (g >= 0 && g <= PX_GRPC_STATUS_MAX && (s->route->retry_grpc & (1u << g)) != 0) {
        report_try(s, PX_TRY_5XX); /* a failure of the endpoint, as a 5xx */
        if (can_retry_if(s, PX_TRY_5XX, 0, g)) {
            abort_side(s, PX_UP); /* drop this answer */
            schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
            return true;
        }
    }
    send_resp_head(s);
    return false;
}

void px_stream_on_resp_head(struct px_stream *s)
{
    if (s->state != PX_STREAM_FORWARD || s->head_sent[PX_DOWN] || !s->attached[PX_DOWN])
        return;
    if (s->try_timer != NULL && !s->retrying)
        evtimer_del(s->try_timer); /* the per-try timeout ends with the response head */
    if (s->ep != NULL)
        px_route_try_head(s->route, s->ep, cm_mono_us() - s->try_start_us);
    if (s->ep != NULL && s->resp.status >= 500) {
        report_try(s, PX_TRY_5XX);
        if (can_retry(s, PX_TRY_5XX, s->resp.status)) {
            abort_side(s, PX_UP); /* drop this answer */
            schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
            return;
        }
    }
    if (__builtin_expect(s->resp.status == 101, 0)) {
        /* Switching Protocols: only as the answer to an Upgrade request we
         * forwarded, and only once the whole request went up (what follows
         * the head is the new protocol) */
        const struct px_hdr *up = px_msg_find(&s->resp, "upgrade");
        const char *why = s->upgrade == NULL ? "101 Switching Protocols we never asked for"
                          : !s->req_complete ? "101 before the request body was complete"
                          : up == NULL       ? "101 without an Upgrade field"
                                             : NULL;
        if (why != NULL) {
            s->cause_detail = why;
            report_try(s, PX_TRY_RESET);
            s->cause = PX_CAUSE_UPSTREAM_PROTO;
            px_stream_respond(s, 502, why);
            return;
        }
        const char *proto = up->value;
        px_msg_strip_hop_by_hop(&s->resp, false);
        if (keep_upgrade(s, &s->resp, proto) != 0)
            return;
        start_tunnel(s);
        s->head_sent[PX_DOWN] = true;
        s->ops[PX_DOWN]->send_head(s);
        return;
    }
    if (s->grpc && s->route != NULL && s->route->retry_grpc != 0 && s->resp.status == 200) {
        /* retries.on names a gRPC status: the head waits until the first
         * DATA (no retry then) or the trailers (a trailers-only response
         * included) tell whether the call failed with it */
        s->resp_held = true;
        return;
    }
    send_resp_head(s);
}

/* A held gRPC head goes down with the first message: the call is answered,
 * no retry. Out of line: plain traffic never takes it. */
static __attribute__((noinline)) void release_held_head(struct px_stream *s)
{
    if (s->state == PX_STREAM_FORWARD && s->attached[PX_DOWN])
        send_resp_head(s);
}

/* The end of a response whose head was held: true when a retry took it. */
static __attribute__((noinline)) bool held_end(struct px_stream *s)
{
    return s->state == PX_STREAM_FORWARD && s->attached[PX_DOWN] && grpc_retry(s);
}

bool px_stream_on_resp_data(struct px_stream *s, const uint8_t *data, size_t len)
{
    if (__builtin_expect(s->resp_held, 0))
        release_held_head(s);
    if (s->state != PX_STREAM_FORWARD || !s->attached[PX_DOWN] || s->ended[PX_DOWN] ||
        !s->head_sent[PX_DOWN]) /* no body bytes ahead of a head (e.g. a 1xx's) */
        return false;
    s->resp_body_bytes += len;
    if (s->tunnel) {
        px_metrics.tcp_bytes_out += len;
        s->tunnel_active_us = cm_mono_us();
    }
    s->ops[PX_DOWN]->send_data(s, data, len);
    if (s->ops[PX_DOWN]->pending(s) > s->srv->cfg->limits.buffer_bytes) {
        s->paused[PX_UP] = true;
        return true;
    }
    return false;
}

void px_stream_on_resp_end(struct px_stream *s)
{
    if (__builtin_expect(s->resp_held, 0) && held_end(s))
        return;
    s->resp_complete = true;
    report_try(s, PX_TRY_OK);
    if (s->timer != NULL && !s->tunnel) /* a tunnel's idle timer watches the other way too */
        evtimer_del(s->timer);
    if (s->state != PX_STREAM_FORWARD || !s->attached[PX_DOWN] || s->ended[PX_DOWN])
        return;
    s->ended[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_end(s);
}

void px_stream_on_error(struct px_stream *s, enum px_side side, enum px_cause cause)
{
    if (s->aborted)
        return;
    if (side == PX_UP) {
        if (s->resp_complete || s->retrying)
            return;
        report_try(s, outcome_of(cause));
        if (can_retry(s, outcome_of(cause), 0)) {
            /* the failing side detaches itself; the next try waits for that */
            s->abort_sent[PX_UP] = true;
            schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
            return;
        }
        s->cause = cause;
        /* the failing side is finished with the exchange: never abort it back */
        s->abort_sent[PX_UP] = true;
        s->ended[PX_UP] = true;
        if (s->state == PX_STREAM_FORWARD && !s->head_sent[PX_DOWN] && s->attached[PX_DOWN]) {
            cm_debug("%s %s -> %s", s->req.method ? s->req.method : "-",
                     s->req.path ? s->req.path : "-", px_cause_str(cause));
            px_stream_respond(s, px_cause_status(cause), px_cause_str(cause));
            return;
        }
        s->aborted = true;
        abort_side(s, PX_DOWN);
    } else {
        if (s->req_complete && s->ended[PX_DOWN])
            return; /* everything was delivered: nothing to undo */
        s->cause = cause;
        s->abort_sent[PX_DOWN] = true;
        s->ended[PX_DOWN] = true;
        s->aborted = true;
        px_metrics.downstream_resets++;
        px_pool_cancel(s); /* a waiting try leaves the queue, opening nothing */
        abort_side(s, PX_UP);
    }
}

void px_stream_on_drain(struct px_stream *s, enum px_side side)
{
    enum px_side other = side == PX_UP ? PX_DOWN : PX_UP;
    if (!s->paused[other])
        return;
    s->paused[other] = false;
    if (s->attached[other] && s->ops[other] != NULL)
        s->ops[other]->resume(s);
}
