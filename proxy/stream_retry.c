/* The tries of a stream and every retry decision (split from stream.c): which
 * endpoint a try goes to, its circuit breakers, its per-try timeout, the
 * verdict its endpoint gets, and whether a failed try goes again (retry_on,
 * gRPC statuses, resends of unprocessed requests) after which backoff. Shared
 * with stream.c through proxy/stream_int.h. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <string.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/log.h"
#include "proxy/grpc.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/routes.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "proxy/stream_int.h"
#include "proxy/upstream.h"

static void on_try_timer(evutil_socket_t fd, short what, void *arg);

static bool idempotent(const char *m)
{
    return m != NULL &&
           (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0 ||
            strcmp(m, "PUT") == 0 || strcmp(m, "DELETE") == 0 || strcmp(m, "TRACE") == 0);
}

enum px_try_outcome px_stream_outcome_of(enum px_cause c)
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
void px_stream_report_try_ep(struct px_stream *s, enum px_try_outcome o)
{
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
void px_stream_start_try(struct px_stream *s)
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
                px_stream_report_try(s, PX_TRY_CONNECT);
            /* a refusal by the outbound policy is no upstream failure: the
             * warn line and the access log say it with the body */
            s->cause = r == PX_RESOLVE_LOOP              ? PX_CAUSE_LOOP
                       : r == PX_RESOLVE_NOT_IN_REGISTRY ? PX_CAUSE_NONE
                                                         : PX_CAUSE_UPSTREAM_TLS;
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
        struct timeval tv = cm_tv_ms(ms);
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
bool px_stream_can_retry_if(struct px_stream *s, enum px_try_outcome o, int status, int grpc)
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

bool px_stream_can_retry(struct px_stream *s, enum px_try_outcome o, int status)
{
    return px_stream_can_retry_if(s, o, status, -1);
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
void px_stream_schedule_retry(struct px_stream *s, enum px_retry_reason why)
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
    struct timeval tv = cm_tv_ms(ms);
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
    px_stream_schedule_retry(s, PX_RETRY_REASON_UNPROCESSED);
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
        px_stream_start_try(s);
        return;
    }
    /* per-try timeout */
    if (s->head_sent[PX_DOWN] || s->state != PX_STREAM_FORWARD)
        return;
    px_stream_report_try(s, PX_TRY_TIMEOUT);
    px_stream_abort_side(s, PX_UP);
    if (px_stream_can_retry(s, PX_TRY_TIMEOUT, 0)) {
        px_stream_schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
        return;
    }
    s->cause = PX_CAUSE_UPSTREAM_TIMEOUT;
    px_stream_respond(s, 504, "upstream per-try timeout");
}
