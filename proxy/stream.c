#include "proxy/stream.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/net.h"
#include "common/xalloc.h"
#include "proxy/accesslog.h"
#include "proxy/authz.h"
#include "proxy/conn.h"
#include "proxy/discovery.h"
#include "proxy/grpc.h"
#include "proxy/identity.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/resolve.h"
#include "proxy/routes.h"
#include "proxy/server.h"
#include "proxy/service.h"
#include "proxy/stream_int.h"
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
    if (conn->disc_done) {
        s->disc_done = true;
        s->disc_res = conn->disc_res;
        s->dest = conn->dest != NULL ? px_dest_answer_ref(conn->dest) : NULL;
    }
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
    } else {
        int grpc = !s->grpc              ? -2 /* not gRPC */
                   : s->grpc_status >= 0 ? s->grpc_status
                   : status != 0         ? px_grpc_resp_status(&s->resp, s->resp_trailers)
                                         : -1;
        struct px_metrics_labels lab = px_metrics_stream_labels(s); /* issue 18 */
        px_metrics_record_labels(s->srv->metrics, s->lcfg, s->req.method, status, grpc, &lab, dur);
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

/* Stop whatever the stream waits for: a connection from the pool's queue,
 * the lookup of its Host, or that name's check against DNS. */
static void stop_waiting(struct px_stream *s)
{
    px_pool_cancel(s);
    px_disc_cancel(s->disc_wait);
    s->disc_wait = NULL;
    px_name_cancel(s->name_wait);
    s->name_wait = NULL;
}

void px_stream_detach(struct px_stream *s, enum px_side side)
{
    if (!s->attached[side])
        return;
    s->attached[side] = false;
    if (s->attached[PX_DOWN] || s->attached[PX_UP])
        return;
    stop_waiting(s); /* still waiting for a connection or a lookup: leave the queue */
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
    px_dest_answer_unref(s->dest); /* after the target: expected_id may be borrowed from it */
    s->dest = NULL;
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
void px_stream_abort_side(struct px_stream *s, enum px_side side)
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
    stop_waiting(s); /* answered while waiting for a connection or a lookup */
    if (!s->attached[PX_DOWN] || s->aborted || s->ops[PX_DOWN] == NULL) {
        /* the client is gone: nobody to answer, only the upstream to stop */
        px_stream_abort_side(s, PX_UP);
        return;
    }
    if (s->head_sent[PX_DOWN]) {
        px_stream_abort_side(s, PX_DOWN);
        return;
    }
    s->state = PX_STREAM_LOCAL;
    if (status == 502 || status == 503 || status == 504)
        warn_5xx(s, status, body); /* before the codecs may finish the stream */
    if (s->attached[PX_UP])
        px_stream_abort_side(s, PX_UP);
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
        px_stream_abort_side(s, PX_UP);
        if (!px_grpc_end_with(s, PX_GRPC_DEADLINE_EXCEEDED, px_cause_str(s->cause)))
            px_stream_abort_side(s, PX_DOWN);
    } else {
        px_stream_abort_side(s, PX_UP);
        px_stream_abort_side(s, PX_DOWN);
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

/* ---- the Host of an outbound request (service discovery, egress_allow) ---------- */

/* Is name (its first n bytes) shaped like a cluster Service name the
 * discovery service answers for (svc.ns, svc.ns.svc, svc.ns.svc.<cluster
 * domain>)? Other names (an external API's) are never asked about: the
 * answer would be "no". */
static bool service_shaped(const char *name, size_t n)
{
    size_t labels = 1, third = 0; /* the third label's offset, 0: none */
    for (size_t i = 0; i < n; i++) {
        if (name[i] != '.')
            continue;
        if (++labels == 3)
            third = i + 1;
    }
    if (labels == 2)
        return true;
    return third != 0 && n - third >= 3 && memcmp(name + third, "svc", 3) == 0 &&
           (n - third == 3 || name[third + 3] == '.');
}

/* s->egress_host from the request's Host: "name:port" lower-case, without a
 * trailing dot; the port is the Host's, else the destination's. NULL when
 * there is no Host, or it is an address literal (matched by address only). */
static void set_egress_host(struct px_stream *s)
{
    const char *a = s->req.authority;
    if (a == NULL || a[0] == '\0' || a[0] == '[')
        return;
    const char *colon = strchr(a, ':');
    size_t n = colon != NULL ? (size_t)(colon - a) : strlen(a);
    if (n > 0 && a[n - 1] == '.')
        n--;
    if (n == 0 || n > 253)
        return;
    char name[254];
    for (size_t i = 0; i < n; i++)
        name[i] = (a[i] >= 'A' && a[i] <= 'Z') ? (char)(a[i] - 'A' + 'a') : a[i];
    name[n] = '\0';
    struct in_addr a4;
    if (inet_pton(AF_INET, name, &a4) == 1)
        return;
    struct cm_addr dst;
    px_conn_default_upstream(s->conn, &dst);
    uint16_t port = cm_addr_port(&dst);
    if (colon != NULL && colon[1] != '\0' && (cm_port_parse(colon + 1, &port) != 0 || port == 0))
        return; /* not a port: no name to match */
    char buf[264];
    int len = snprintf(buf, sizeof(buf), "%s:%u", name, (unsigned)port);
    s->egress_host = px_arena_strndup(&s->arena, buf, (size_t)len);
}

/* Is the request's destination one the answer vouches for: a meshed endpoint
 * (the peer must then prove its identity over mTLS), or the very address the
 * connection goes to? */
static bool answer_covers(const struct px_dest_answer *a, const struct cm_addr *dst)
{
    for (size_t i = 0; i < a->neps; i++)
        if (a->eps[i].meshed || cm_addr_equal(&a->eps[i].addr, dst))
            return true;
    return false;
}

/* A Host lookup's result replaces the connection's (a 404 for its address)
 * when the Host is in the registry; otherwise the address's result stands
 * and egress_allow decides on the Host name. A found Service's answer then
 * routes the request (balanced over its endpoints; the connection's address
 * only while none is ready). An answer with no meshed endpoint (nothing to
 * verify) is believed only when the connection's address is one of its
 * endpoints, or any app could reach any address under registry_only by
 * naming a plaintext Service in its Host. */
static void host_result(struct px_stream *s, enum px_disc_result r, struct px_dest_answer *ans)
{
    if (r != PX_DISC_FOUND || ans == NULL)
        return;
    struct cm_addr dst;
    px_conn_default_upstream(s->conn, &dst);
    if (!answer_covers(ans, &dst)) {
        char a[CM_ADDR_STRLEN];
        cm_log_limited(CM_LOG_INFO, "egress: host not at its address",
                       "egress: Host %s is %s in the registry, but the connection goes to %s, "
                       "not one of its endpoints, and none is meshed: decided as outside the "
                       "mesh",
                       s->egress_host, ans->service ? ans->service : "a pod",
                       cm_addr_format(&dst, a, sizeof(a)));
        return;
    }
    px_dest_answer_unref(s->dest);
    s->dest = px_dest_answer_ref(ans);
    s->disc_res = (int)PX_DISC_FOUND;
    cm_debug("stream %s %s: Host %s is %s in the registry", s->req.method, s->req.path,
             s->egress_host, ans->service ? ans->service : "a pod");
}

static void route_and_forward(struct px_stream *s);

static void on_host_dest(enum px_disc_result r, struct px_dest_answer *ans, void *arg)
{
    struct px_stream *s = arg;
    s->disc_wait = NULL;
    host_result(s, r, ans);
    if (s->state != PX_STREAM_FORWARD || !s->attached[PX_DOWN] || s->aborted)
        return; /* answered or gone meanwhile */
    route_and_forward(s);
}

/* Outbound with discovery, the connection's destination not in the registry
 * (404) and the Host a Service-shaped name: look the Host up. True when the
 * request waits for the answer (bounded by lookup_timeout_ms; the body is
 * held meanwhile, px_stream_on_req_data). A Host the cache answered costs
 * nothing here. */
static bool host_lookup(struct px_stream *s)
{
    /* egress_host is read only about a destination the registry did not
     * answer with a Service or pod (proxy/upstream.c, name_to_check): a found
     * one, the common case, costs no formatting of the Host */
    if (s->srv->disc == NULL || s->lcfg->direction != PX_DIR_OUTBOUND || !s->disc_done ||
        (s->disc_res == (int)PX_DISC_FOUND && s->dest != NULL))
        return false;
    set_egress_host(s);
    if (s->egress_host == NULL || s->disc_res != (int)PX_DISC_NOT_FOUND)
        return false;
    const char *colon = strrchr(s->egress_host, ':');
    if (!service_shaped(s->egress_host, (size_t)(colon - s->egress_host)))
        return false;
    struct px_dest_answer *ans = NULL;
    enum px_disc_result r =
        px_disc_lookup(s->srv->disc, NULL, s->egress_host, &ans, on_host_dest, s, &s->disc_wait);
    if (s->disc_wait != NULL)
        return true;
    host_result(s, r, ans);
    px_dest_answer_unref(ans);
    return false;
}

/* Body that arrived while the Host was looked up goes into a route's replay
 * buffer too (a retry resends it), or the request is not retried. */
static void keep_held_for_replay(struct px_stream *s)
{
    size_t n = s->held != NULL ? evbuffer_get_length(s->held) : 0;
    if (n == 0 || !s->replayable)
        return;
    if (n > s->srv->cfg->limits.retry_buffer_bytes) {
        s->replayable = false;
        evbuffer_free(s->replay);
        s->replay = NULL;
        return;
    }
    evbuffer_add(s->replay, evbuffer_pullup(s->held, -1), n);
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
    const char *upgrade = px_stream_upgrade_requested(s);
    px_msg_strip_hop_by_hop(&s->req, px_upstream_proto(s->lcfg) == PX_TGT_H2);
    px_trace_restore(s); /* a Connection header cannot strip the request id or trace */
    if (upgrade != NULL && px_stream_keep_upgrade(s, &s->req, upgrade) != 0)
        return;
    /* outbound with discovery: the Host names the destination too */
    if (host_lookup(s))
        return; /* waiting for the answer: on_host_dest routes the request */
    route_and_forward(s);
}

static void forward(struct px_stream *s);

/* The refusal of a destination that is not an address of the name that let
 * it out: 502 naming both. */
static void refuse_name(struct px_stream *s, const struct cm_addr *dst, const char *name,
                        enum px_name_verdict v)
{
    px_disc_egress_refuse_name(s->srv->disc, dst, name, px_name_verdict_str(v));
    char a[CM_ADDR_STRLEN], body[PX_RESOLVE_MAX_NAME + 200];
    snprintf(body, sizeof(body),
             "destination %s is not an address of %s (egress_allow names are checked against "
             "DNS%s%s)",
             cm_addr_format(dst, a, sizeof(a)), name, v == PX_NAME_MISMATCH ? "" : ": ",
             v == PX_NAME_MISMATCH ? "" : px_name_verdict_str(v));
    px_stream_respond(s, 502, body);
}

/* The name the Host matched in egress_allow when it alone lets the request
 * out (no route endpoint, no registry answer, no address entry): false when
 * there is nothing to check. */
static bool name_to_check(struct px_stream *s, struct cm_addr *dst, char *name, size_t cap)
{
    if (s->srv->disc == NULL || s->lcfg->direction != PX_DIR_OUTBOUND || !s->disc_done ||
        s->egress_host == NULL || (s->route != NULL && s->route->neps > 0))
        return false;
    px_conn_default_upstream(s->conn, dst);
    return px_disc_egress_by_name(s->srv->disc, (enum px_disc_result)s->disc_res, s->dest, dst,
                                  s->egress_host, name, cap);
}

static void on_host_name(enum px_name_verdict v, void *arg)
{
    struct px_stream *s = arg;
    s->name_wait = NULL;
    if (s->state != PX_STREAM_FORWARD || !s->attached[PX_DOWN] || s->aborted)
        return; /* answered or gone meanwhile */
    if (v != PX_NAME_MATCH) {
        char name[PX_RESOLVE_MAX_NAME + 1];
        struct cm_addr dst;
        if (name_to_check(s, &dst, name, sizeof(name)))
            refuse_name(s, &dst, name, v);
        else
            px_stream_respond(s, 502, "egress name check failed");
        return;
    }
    forward(s);
}

/* The Host let the request out by name alone: is the destination an address
 * of it? True when the request waits for the answer (body held, bounded by
 * lookup_timeout_ms) or was refused. */
static bool host_name_check(struct px_stream *s)
{
    char name[PX_RESOLVE_MAX_NAME + 1];
    struct cm_addr dst;
    if (!name_to_check(s, &dst, name, sizeof(name)))
        return false;
    enum px_name_verdict v = PX_NAME_BUSY; /* no resolver (its thread failed): fail closed */
    if (s->srv->resolver != NULL)
        v = px_resolver_check(s->srv->resolver, name, &dst, on_host_name, s, &s->name_wait);
    if (s->name_wait != NULL)
        return true;
    if (v == PX_NAME_MATCH)
        return false;
    refuse_name(s, &dst, name, v);
    return true;
}

/* The request chain after the Host lookup: route -> (the Host's name checked
 * against DNS) -> forward. */
static void route_and_forward(struct px_stream *s)
{
    /* a matching route overrides the listener's upstream / original destination */
    s->routes = px_routes_ref(px_routes_current_of(s->srv->routes));
    s->route = px_routes_match(s->routes, s->req.authority, &s->conn->orig_dst);
    if (s->route == NULL && s->dest != NULL)
        px_service_route(s); /* a discovered Service, balanced per request (proxy/service.c) */
    if (host_name_check(s))
        return; /* waiting (on_host_name forwards it) or refused */
    forward(s);
}

static void forward(struct px_stream *s)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
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
            keep_held_for_replay(s);
        }
    } else {
        px_upstream_budget_request(s->start_us); /* the budget of resends no route counts */
    }
    if (timeout_ms > 0) {
        s->timer = evtimer_new(s->srv->base, on_request_timeout, s);
        struct timeval tv = cm_tv_ms(timeout_ms);
        evtimer_add(s->timer, &tv);
    }
    px_stream_start_try(s);
}

bool px_stream_on_req_data(struct px_stream *s, const uint8_t *data, size_t len)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
    if (__builtin_expect(s->tunnel || (s->upgrade != NULL && s->req_complete), 0))
        return px_stream_tunnel_data(s, data, len); /* stream_tunnel.c */
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
    if (s->state == PX_STREAM_FORWARD &&
        (s->queued_on != NULL || s->disc_wait != NULL || s->name_wait != NULL)) {
        /* waiting for a connection (or the Host lookup): keep what came, and hold the client past
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
        px_stream_report_try(s, PX_TRY_5XX); /* a failure of the endpoint, as a 5xx */
        if (px_stream_can_retry_if(s, PX_TRY_5XX, 0, g)) {
            px_stream_abort_side(s, PX_UP); /* drop this answer */
            px_stream_schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
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
        px_stream_report_try(s, PX_TRY_5XX);
        if (px_stream_can_retry(s, PX_TRY_5XX, s->resp.status)) {
            px_stream_abort_side(s, PX_UP); /* drop this answer */
            px_stream_schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
            return;
        }
    }
    if (__builtin_expect(s->resp.status == 101, 0)) {
        px_stream_on_switching(s); /* stream_tunnel.c */
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
    px_stream_report_try(s, PX_TRY_OK);
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
        px_stream_report_try(s, px_stream_outcome_of(cause));
        if (px_stream_can_retry(s, px_stream_outcome_of(cause), 0)) {
            /* the failing side detaches itself; the next try waits for that */
            s->abort_sent[PX_UP] = true;
            px_stream_schedule_retry(s, PX_RETRY_REASON_RETRY_ON);
            return;
        }
        s->cause = cause;
        /* the failing side is finished with the exchange: never abort it back */
        s->abort_sent[PX_UP] = true;
        s->ended[PX_UP] = true;
        if (s->state == PX_STREAM_FORWARD && !s->head_sent[PX_DOWN] && s->attached[PX_DOWN]) {
            cm_debug("%s %s -> %s", s->req.method ? s->req.method : "-",
                     s->req.path ? s->req.path : "-", px_cause_str(cause));
            if (cause == PX_CAUSE_UPSTREAM_TLS && s->tls_detail != NULL) {
                /* secure naming: the body names who answered and who was expected */
                char body[1200];
                snprintf(body, sizeof(body), "%s: %s", px_cause_str(cause), s->tls_detail);
                px_stream_respond(s, px_cause_status(cause), body);
                return;
            }
            px_stream_respond(s, px_cause_status(cause), px_cause_str(cause));
            return;
        }
        s->aborted = true;
        px_stream_abort_side(s, PX_DOWN);
    } else {
        if (s->req_complete && s->ended[PX_DOWN])
            return; /* everything was delivered: nothing to undo */
        s->cause = cause;
        s->abort_sent[PX_DOWN] = true;
        s->ended[PX_DOWN] = true;
        s->aborted = true;
        px_metrics.downstream_resets++;
        stop_waiting(s); /* a waiting try leaves the queue, opening nothing; lookups dropped */
        px_stream_abort_side(s, PX_UP);
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
