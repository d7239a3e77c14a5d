/* HTTP/1.1 Upgrade and extended CONNECT through a stream (split from
 * stream.c): which requests ask for an upgrade, keeping the Upgrade field past
 * the hop-by-hop strip, the upstream's 101, and the opaque tunnel after it
 * (bytes both ways, early client bytes, the idle timeout). Shared with stream.c
 * through proxy/stream_int.h. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/log.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "proxy/stream_int.h"
#include "proxy/upstream.h"

/* px_stream_upgrade_requested past its inline checks (stream_int.h). An
 * HTTP/1.1 Upgrade request (RFC 9110 7.8): an Upgrade field and
 * "upgrade" among the Connection options. Returns the Upgrade value (the
 * protocols asked for, in the arena), or NULL. Only toward an HTTP/1.1
 * upstream: toward HTTP/2 the request goes as plain HTTP, which RFC 9110
 * allows (extended CONNECT between sidecars is not done yet). */
const char *px_stream_upgrade_scan(struct px_stream *s)
{
    const struct px_msg *r = &s->req;
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
int px_stream_keep_upgrade(struct px_stream *s, struct px_msg *m, const char *value)
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
    px_stream_abort_side(s, PX_UP);
    px_stream_abort_side(s, PX_DOWN);
}

/* The upstream accepted the upgrade: from now on both directions carry
 * opaque bytes. The request timeout ends (a tunnel lives as long as it is
 * used); the TCP idle timeout starts. The request direction is open again:
 * what the client sends next is tunnel data, its EOF the half-close. */
static void start_tunnel(struct px_stream *s)
{
    const struct px_limits *lim = &s->srv->cfg->limits;
    s->tunnel = true;
    px_stream_report_try(s, PX_TRY_OK);
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
        struct timeval tv = cm_tv_ms(ms);
        evtimer_add(s->timer, &tv);
    }
}

/* A 101 Switching Protocols head from the upstream: only as the answer to an
 * Upgrade request we forwarded, and only once the whole request went up (what
 * follows the head is the new protocol). Anything else is a 502. */
void px_stream_on_switching(struct px_stream *s)
{
    const struct px_hdr *up = px_msg_find(&s->resp, "upgrade");
    const char *why = s->upgrade == NULL ? "101 Switching Protocols we never asked for"
                      : !s->req_complete ? "101 before the request body was complete"
                      : up == NULL       ? "101 without an Upgrade field"
                                         : NULL;
    if (why != NULL) {
        s->cause_detail = why;
        px_stream_report_try(s, PX_TRY_RESET);
        s->cause = PX_CAUSE_UPSTREAM_PROTO;
        px_stream_respond(s, 502, why);
        return;
    }
    const char *proto = up->value;
    px_msg_strip_hop_by_hop(&s->resp, false);
    if (px_stream_keep_upgrade(s, &s->resp, proto) != 0)
        return;
    start_tunnel(s);
    s->head_sent[PX_DOWN] = true;
    s->ops[PX_DOWN]->send_head(s);
}

/* Request bytes of a tunnel (s->tunnel), or behind an Upgrade request before
 * its answer: forwarded, or kept for the tunnel. Returns true to pause the
 * client (as px_stream_on_req_data). */
bool px_stream_tunnel_data(struct px_stream *s, const uint8_t *data, size_t len)
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
    return false; /* not reached: the caller checked one of the two */
}
