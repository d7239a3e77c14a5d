/* HTTP/2 client side: pooled h2c sessions to upstream addresses, each
 * carrying many px_streams whose upstream side is "h2-client".
 *
 * Pool: the sessions of an address are linked in its pool record
 * (px_upstream_ep.h2_sessions, proxy/pool.h). A request joins a session to
 * its target that is connecting or
 * open and has fewer streams than the peer's SETTINGS_MAX_CONCURRENT_STREAMS
 * and the request's circuit breaker (s->cb.max_requests_per_connection);
 * else a new connection is opened - the stream passed px_pool_admit, so the
 * address is below its max_connections, or a session has room. A
 * session without streams closes after pool_idle_timeout_ms; one that got
 * GOAWAY takes no new streams and closes when its last stream ends. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/h2.h"
#include "proxy/h2_common.h"
#include "proxy/tls.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/routes.h"
#include "proxy/server.h"

static struct px_h2_stream *stream_of(nghttp2_session *ng, int32_t id)
{
    return nghttp2_session_get_stream_user_data(ng, id);
}

/* The upstream did not process st's request: REFUSED_STREAM (also what
 * nghttp2 reports for streams above a GOAWAY's last id), or its HEADERS never
 * left. The stream decides whether it goes again, on another session
 * (avoid_sess), and counts that as a retry (px_stream_on_unprocessed). */
static void unprocessed(struct px_h2_stream *st, enum px_cause cause)
{
    st->s->avoid_sess = st->sess->id;
    st->failing = true;
    px_stream_on_unprocessed(st->s, cause);
    st->failing = false;
}

/* The stream failed on our side: reset it, tell the px_stream, detach. */
static void fail_stream(struct px_h2_stream *st, enum px_cause cause, uint32_t code)
{
    if (st->s == NULL)
        return;
    if (st->id > 0 && st->sess->state != PX_H2_CLOSING)
        nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, code);
    st->out = PX_H2_OUT_DONE;
    st->in = PX_H2_IN_DONE;
    px_h2_stream_fail(st, cause);
    px_h2_stream_detach(st);
    px_h2_session_schedule(st->sess);
}

/* ---- ops: the stream drives the request through these ---- */

/* The request's fields as extended CONNECT: :method CONNECT and :protocol
 * (the Upgrade token) among the pseudo fields; the rest as they were
 * (Sec-WebSocket-Key among them: docs/h2.md). Replaces *nva; returns the
 * new count. */
static size_t extended_connect_nv(const struct px_stream *s, nghttp2_nv **nva, size_t n)
{
    nghttp2_nv *old = *nva, *nv = cm_xmalloc((n + 1) * sizeof(*nv));
    size_t o = 0, i = 0;
    for (; i < n && old[i].namelen > 0 && old[i].name[0] == ':'; i++) {
        nv[o] = old[i];
        if (old[i].namelen == 7 && memcmp(old[i].name, ":method", 7) == 0) {
            nv[o].value = (uint8_t *)"CONNECT";
            nv[o].valuelen = 7;
        }
        o++;
    }
    nv[o].name = (uint8_t *)":protocol";
    nv[o].namelen = 9;
    nv[o].value = (uint8_t *)s->upgrade;
    nv[o].valuelen = strlen(s->upgrade);
    nv[o++].flags = NGHTTP2_NV_FLAG_NONE;
    for (; i < n; i++)
        nv[o++] = old[i];
    free(old);
    *nva = nv;
    return o;
}

#define NO_CONNECT_MSG                                                                             \
    "the peer sidecar does not accept extended CONNECT (RFC 8441 "                                 \
    "SETTINGS_ENABLE_CONNECT_PROTOCOL): no WebSocket over this mesh connection"

/* The peer did not enable extended CONNECT: a clear 502, not a silent
 * downgrade to plain HTTP. */
static void refuse_no_connect(struct px_h2_stream *st)
{
    struct px_stream *s = st->s;
    st->failing = true;
    s->cause = PX_CAUSE_UPSTREAM_PROTO;
    s->cause_detail = "no extended CONNECT";
    px_stream_respond(s, 502, NO_CONNECT_MSG);
    st->failing = false;
    px_h2_stream_detach(st);
}

static void cli_send_head(struct px_stream *s)
{
    struct px_h2_stream *st = s->ctx[PX_UP];
    struct px_h2_session *sess = st->sess;
    if (sess->state == PX_H2_CLOSING || st->out != PX_H2_OUT_IDLE)
        return; /* a closing session reports its streams when it is freed */
    nghttp2_nv *nva;
    char *clmem;
    size_t n = px_h2_make_nv(&s->req, true, &nva, NULL, &clmem);
    bool body = !s->req.end_stream;
    if (s->upgrade != NULL) {
        /* an HTTP Upgrade goes as extended CONNECT (RFC 8441), if the peer
         * enabled it; its stream stays open for the tunnel */
        if (sess->got_settings && nghttp2_session_get_remote_settings(
                                      sess->ng, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) == 0) {
            free(nva);
            free(clmem);
            st->no_connect = true;
            st->out = PX_H2_OUT_DONE;
            st->orphan = true; /* answered from `defer`, never from inside send_head */
            sess->norphans++;
            px_h2_session_schedule(sess);
            return;
        }
        n = extended_connect_nv(s, &nva, n);
        st->connect = true;
        body = true;
    }
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = px_h2_read_body};
    int32_t id = nghttp2_submit_request(sess->ng, NULL, nva, n, body ? &prd : NULL, st);
    free(nva);
    free(clmem);
    if (id < 0) {
        cm_debug("h2 client session %llu: request: %s", (unsigned long long)sess->id,
                 nghttp2_strerror(id));
        /* reported from the event loop, never from inside send_head */
        st->out = PX_H2_OUT_DONE;
        st->orphan = true;
        sess->norphans++;
        st->fail = PX_CAUSE_UPSTREAM_RESET;
    } else {
        st->id = id;
        st->out = body ? PX_H2_OUT_BODY : PX_H2_OUT_DONE;
        sess->nrequests++;
    }
    px_h2_session_schedule(sess);
}

static void cli_send_data(struct px_stream *s, const uint8_t *data, size_t len)
{
    px_h2_stream_queue(s->ctx[PX_UP], data, len);
}

static void cli_send_end(struct px_stream *s)
{
    struct px_h2_stream *st = s->ctx[PX_UP];
    if (st->connect && !s->tunnel)
        return; /* the Upgrade request ended; its stream carries the tunnel */
    px_h2_stream_queue_end(st);
}

static size_t cli_pending(struct px_stream *s)
{
    return px_h2_stream_pending(s->ctx[PX_UP]);
}

static void cli_resume(struct px_stream *s)
{
    px_h2_stream_resume(s->ctx[PX_UP]);
}

static void cli_abort(struct px_stream *s)
{
    struct px_h2_stream *st = s->ctx[PX_UP];
    if (st->failing)
        return;
    if (st->id > 0 && st->sess->state != PX_H2_CLOSING &&
        (st->out != PX_H2_OUT_DONE || st->in != PX_H2_IN_DONE))
        nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    if (st->id < 0) {
        st->orphan = true; /* nghttp2 never saw it: free it from `defer` */
        st->sess->norphans++;
    }
    st->out = PX_H2_OUT_DONE;
    st->in = PX_H2_IN_DONE;
    px_h2_stream_detach(st);
    px_h2_session_schedule(st->sess);
}

static const struct px_side_ops client_ops = {
    .name = "h2-client",
    .send_head = cli_send_head,
    .send_data = cli_send_data,
    .send_end = cli_send_end,
    .pending = cli_pending,
    .resume = cli_resume,
    .abort = cli_abort,
};

/* ---- nghttp2 callbacks ---- */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user_data)
{
    (void)user_data;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct px_h2_stream *st = stream_of(ng, f->hd.stream_id);
    if (st == NULL || st->s == NULL)
        return 0;
    if (st->in == PX_H2_IN_HEAD) {
        /* a fresh head: the previous one was an interim 1xx */
        px_msg_init(&st->s->resp);
        st->too_big = false;
    } else if (st->in == PX_H2_IN_BODY) {
        px_h2_stream_begin_trailers(st);
    }
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    (void)flags;
    (void)user_data;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct px_h2_stream *st = stream_of(ng, f->hd.stream_id);
    if (st == NULL || st->s == NULL || st->too_big)
        return 0;
    if (px_h2_stream_add_field(st, &st->s->resp, name, namelen, value, valuelen) != 0) {
        cm_debug("h2 client session %llu stream %d: invalid field %.*s from upstream",
                 (unsigned long long)st->sess->id, st->id, (int)namelen, name);
        fail_stream(st, PX_CAUSE_UPSTREAM_PROTO, NGHTTP2_PROTOCOL_ERROR);
    }
    return 0;
}

static void on_response_head(struct px_h2_stream *st, bool end_stream)
{
    struct px_stream *s = st->s;
    if (st->too_big) {
        cm_debug("h2 client session %llu stream %d: response head too large",
                 (unsigned long long)st->sess->id, st->id);
        fail_stream(st, PX_CAUSE_UPSTREAM_PROTO, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (s->resp.status < 200) {
        /* interim responses are not forwarded (the h1 side answers its own
         * 100-continue); bound how many we swallow */
        if (++st->n1xx > PX_H2_MAX_1XX)
            fail_stream(st, PX_CAUSE_UPSTREAM_PROTO, NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    s->resp.end_stream = end_stream;
    st->in = end_stream ? PX_H2_IN_DONE : PX_H2_IN_BODY;
    if (st->connect && nghttp2_session_get_remote_settings(
                           st->sess->ng, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) == 0) {
        /* sent before the peer's SETTINGS, answered by a peer that never
         * enabled extended CONNECT: whatever it answered, it is no tunnel */
        nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        st->out = PX_H2_OUT_DONE;
        st->in = PX_H2_IN_DONE;
        refuse_no_connect(st);
        px_h2_session_schedule(st->sess);
        return;
    }
    if (st->connect && s->resp.status / 100 == 2 && !end_stream) {
        /* the tunnel is open: to the stream, the 101 it stands for */
        s->resp.status = 101;
        s->resp.content_length = -1;
        uint32_t big = UINT32_MAX;
        px_msg_remove(&s->resp, "upgrade");
        px_msg_add(&s->arena, &s->resp, "upgrade", 7, s->upgrade, strlen(s->upgrade), big, big);
    } else if (st->connect) {
        st->connect = false; /* refused: an ordinary response; our half ends */
        px_h2_stream_queue_end(st);
    }
    px_stream_on_resp_head(s);
    if (end_stream && st->s != NULL)
        px_stream_on_resp_end(s);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user_data)
{
    struct px_h2_session *sess = user_data;
    bool es = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK) &&
        !sess->got_settings) {
        sess->got_settings = true;
        px_io_set_timeout(sess->io, 0);
        /* The session is usable only now: the connect and the mTLS
         * handshake the streams waited through are not the endpoint's
         * response latency (the balancer's sample starts here, as it would
         * on a connection already open; a fresh endpoint is not starved for
         * the cost of its first handshake). */
        uint64_t now = cm_mono_us();
        struct cm_list *n, *tmp;
        cm_list_foreach_safe(n, tmp, &sess->streams)
        {
            struct px_h2_stream *st = cm_container_of(n, struct px_h2_stream, link);
            if (st->s != NULL && !st->s->head_sent[PX_DOWN])
                st->s->try_start_us = now;
        }
        return 0;
    }
    if (f->hd.type == NGHTTP2_GOAWAY) {
        cm_debug("h2 client session %llu: GOAWAY (last stream %d, error %u)",
                 (unsigned long long)sess->id, f->goaway.last_stream_id, f->goaway.error_code);
        if (sess->state == PX_H2_OPEN || sess->state == PX_H2_CONNECTING)
            sess->state = PX_H2_GOAWAY;
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    struct px_h2_stream *st = stream_of(ng, f->hd.stream_id);
    if (st == NULL || st->s == NULL)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (st->in == PX_H2_IN_HEAD) {
            on_response_head(st, es);
        } else if (st->in == PX_H2_IN_TRAILERS) {
            if (st->too_big) {
                fail_stream(st, PX_CAUSE_UPSTREAM_PROTO, NGHTTP2_INTERNAL_ERROR);
                return 0;
            }
            px_h2_stream_in_end(st, st->trailers);
        }
        return 0;
    }
    if (es && st->in == PX_H2_IN_BODY)
        px_h2_stream_in_end(st, NULL);
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                              size_t len, void *user_data)
{
    (void)flags;
    (void)user_data;
    px_h2_stream_in_data(ng, id, stream_of(ng, id), data, len);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *user_data)
{
    (void)user_data;
    struct px_h2_stream *st = stream_of(ng, id);
    if (st == NULL)
        return 0;
    if (st->s != NULL) {
        if (st->connect && st->in == PX_H2_IN_HEAD &&
            nghttp2_session_get_remote_settings(ng, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) ==
                0) {
            refuse_no_connect(st); /* sent before the peer's SETTINGS said no */
        } else if (st->in == PX_H2_IN_HEAD && st->n1xx == 0 &&
                   error_code == NGHTTP2_REFUSED_STREAM) {
            unprocessed(st, PX_CAUSE_UPSTREAM_RESET);
        } else if (st->in != PX_H2_IN_DONE) {
            cm_debug("h2 client session %llu stream %d: closed before the response completed "
                     "(error %u)",
                     (unsigned long long)st->sess->id, id, error_code);
            px_h2_stream_fail(st, PX_CAUSE_UPSTREAM_RESET);
        }
    }
    px_h2_stream_closed(st);
    return 0;
}

static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *f, int lib_error_code,
                             void *user_data)
{
    struct px_h2_session *sess = user_data;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    cm_debug("h2 client session %llu stream %d: request not sent: %s", (unsigned long long)sess->id,
             f->hd.stream_id, nghttp2_strerror(lib_error_code));
    if (nghttp2_session_find_stream(ng, f->hd.stream_id) != NULL)
        return 0; /* on_stream_close follows */
    /* the stream never existed for nghttp2: nothing will mention it again */
    struct cm_list *pos;
    for (pos = sess->streams.next; pos != &sess->streams; pos = pos->next) {
        struct px_h2_stream *st = cm_container_of(pos, struct px_h2_stream, link);
        if (st->id == f->hd.stream_id) {
            st->orphan = true;
            sess->norphans++;
            st->fail = PX_CAUSE_UPSTREAM_RESET;
            px_h2_session_schedule(sess);
            break;
        }
    }
    return 0;
}

/* From `defer`: report and free the streams nghttp2 does not know about. */
void px_h2_client_fail_pending(struct px_h2_session *sess)
{
    /* runs on every deferred flush: walk the streams only when one was
     * flagged (perf: the walk was the proxy's top symbol on a busy mesh
     * session). Streams flagged during the walk count again. */
    if (sess->norphans == 0)
        return;
    sess->norphans = 0;
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &sess->streams)
    {
        struct px_h2_stream *st = cm_container_of(pos, struct px_h2_stream, link);
        if (!st->orphan)
            continue;
        /* never sent: as safe to send again as a refused stream */
        if (st->s != NULL && st->no_connect) {
            refuse_no_connect(st);
        } else if (st->s != NULL) {
            unprocessed(st, st->fail ? st->fail : PX_CAUSE_UPSTREAM_RESET);
            px_h2_stream_detach(st);
        }
        px_h2_stream_free(st);
        /* px_stream_on_error may have touched other streams of this list
         * (never freeing them: frees happen here or in nghttp2 callbacks) */
    }
}

void px_h2_client_on_event(struct px_h2_session *sess, short what)
{
    char addr[CM_ADDR_STRLEN];
    if (what & PX_IO_HANDSHAKE) {
        /* mTLS to a sidecar: it must agree to speak h2 */
        if (strcmp(px_io_alpn(sess->io), "h2") != 0) {
            cm_warn("h2 client session %llu: %s did not agree to h2 over mTLS (ALPN \"%s\")",
                    (unsigned long long)sess->id, cm_addr_format(&sess->addr, addr, sizeof(addr)),
                    px_io_alpn(sess->io));
            px_h2_session_close(sess, PX_CAUSE_UPSTREAM_TLS);
            return;
        }
        if (sess->state == PX_H2_CONNECTING)
            sess->state = PX_H2_OPEN;
        /* the connect timer now waits for the upstream's SETTINGS */
        if (!sess->got_settings)
            px_io_set_timeout(sess->io, sess->srv->cfg->limits.connect_timeout_ms);
        px_h2_session_flush(sess);
        return;
    }
    if (what & PX_IO_CONNECTED) {
        if (sess->state == PX_H2_CONNECTING && !sess->tls)
            sess->state = PX_H2_OPEN;
        /* The connect timer keeps running through the TLS handshake and
         * until the upstream's SETTINGS: a peer that accepted the TCP
         * connection but never speaks (a process stopped, a black hole)
         * must not hold requests forever. */
        px_io_set_timeout(sess->io, sess->srv->cfg->limits.connect_timeout_ms);
        int one = 1;
        setsockopt(px_io_fd(sess->io), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        cm_debug("h2 client session %llu: connected to %s", (unsigned long long)sess->id,
                 cm_addr_format(&sess->addr, addr, sizeof(addr)));
        px_h2_session_flush(sess);
        return;
    }
    int err = px_io_errno(sess->io);
    enum px_cause cause = (what & PX_IO_TIMEOUT)                 ? PX_CAUSE_CONNECT_TIMEOUT
                          : px_io_tls_error(sess->io)[0] != '\0' ? PX_CAUSE_UPSTREAM_TLS
                          : err == ECONNREFUSED                  ? PX_CAUSE_CONNECT_REFUSED
                                                                 : PX_CAUSE_CONNECT_FAILED;
    if (cause == PX_CAUSE_UPSTREAM_TLS)
        cm_log_limited(CM_LOG_WARN, "outbound mTLS handshake failed",
                       "h2 client session %llu: mTLS to %s failed: %s",
                       (unsigned long long)sess->id,
                       cm_addr_format(&sess->addr, addr, sizeof(addr)), px_io_tls_error(sess->io));
    px_metrics.upstream_cx_connect_fail++;
    cm_debug("h2 client session %llu: connect to %s: %s", (unsigned long long)sess->id,
             cm_addr_format(&sess->addr, addr, sizeof(addr)), px_cause_str(cause));
    px_h2_session_close(sess, cause);
}

/* How many streams this session may carry for a request whose circuit
 * breakers allow `limit` per connection: that, and the peer's
 * SETTINGS_MAX_CONCURRENT_STREAMS once known. */
static uint32_t stream_cap(const struct px_h2_session *sess, uint32_t limit)
{
    uint32_t cap = limit > 0 ? limit : 1;
    if (sess->state == PX_H2_OPEN) {
        uint32_t peer =
            nghttp2_session_get_remote_settings(sess->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (peer < cap)
            cap = peer > 0 ? peer : 1;
    }
    return cap;
}

/* Both NULL, or the same SPIFFE ID. */
static bool same_id(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* The pool key: address, mTLS or not, and the identity the peer was checked
 * against (a session verified for one identity never carries a request that
 * expects another). A resend avoids the session that refused it. */
static struct px_h2_session *pool_find(const struct px_stream *s)
{
    const struct px_upstream_target *t = &s->target;
    uint32_t limit = s->cb.max_requests_per_connection;
    bool tls = t->tls != NULL;
    const struct px_upstream_ep *ep = px_pool_find(&t->addr);
    if (ep == NULL)
        return NULL;
    struct cm_list *pos;
    for (pos = ep->h2_sessions.next; pos != &ep->h2_sessions; pos = pos->next) {
        struct px_h2_session *sess = cm_container_of(pos, struct px_h2_session, plink);
        if ((sess->state == PX_H2_OPEN || sess->state == PX_H2_CONNECTING) &&
            !sess->close_when_flushed && sess->tls == tls &&
            same_id(sess->expected_id, t->expected_id) &&
            sess->nstreams < stream_cap(sess, limit) && sess->id != s->avoid_sess)
            return sess;
    }
    return NULL;
}

/* A new session to the target (its TLS configuration and expected peer
 * identity are the target's: the upstream module chose them). */
static struct px_h2_session *client_new(struct px_server *srv, const struct px_upstream_target *t)
{
    struct px_io *io = px_io_connect(srv->base, &t->addr, srv->cfg->limits.connect_timeout_ms);
    int err = errno;
    if (io != NULL && t->tls != NULL)
        px_io_start_tls(io, t->tls, t->expected_id); /* the handshake follows the connect */
    struct px_h2_session *sess = px_h2_session_new(srv, PX_H2_CLIENT, io);
    sess->addr = t->addr;
    sess->tls = t->tls != NULL;
    sess->expected_id = t->expected_id ? cm_xstrdup(t->expected_id) : NULL;
    sess->pool_ep = px_pool_ep(srv, &t->addr);
    px_pool_conn_opened(sess->pool_ep);
    cm_list_insert_head(&sess->pool_ep->h2_sessions, &sess->plink);
    /* newest first: pool_find prefers the sessions most likely to have room */
    cm_list_insert_head(&px_h2_client_list, &sess->link);
    px_h2_nclient++;
    px_metrics.upstream_cx_total++;
    px_metrics.upstream_cx_active++;

    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    px_h2_common_setup(&cbs, &opt);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    px_h2_session_make_ng(sess, cbs, opt);
    if (io == NULL) {
        /* no socket at all (fd limit...): fail from the event loop */
        cm_warn("h2: upstream socket: %s", strerror(err));
        px_metrics.upstream_cx_connect_fail++;
        px_h2_session_close(sess, PX_CAUSE_CONNECT_FAILED);
        return sess;
    }
    if (px_h2_submit_settings(sess) != 0) {
        px_h2_session_close(sess, PX_CAUSE_CONNECT_FAILED);
        return sess;
    }
    /* connect failures arrive as PX_IO_ERROR / PX_IO_TIMEOUT events */
    px_h2_session_io(sess);
    return sess;
}

void px_h2_client_attach(struct px_stream *s)
{
    struct px_h2_session *sess = pool_find(s);
    if (sess != NULL) {
        if (sess->nrequests > 0)
            px_metrics.upstream_cx_reused++;
    } else {
        sess = client_new(s->srv, &s->target);
    }
    struct px_h2_stream *st = px_h2_stream_new(sess, s);
    px_stream_attach_up(s, &client_ops, st);
}

bool px_h2_client_has_room(const struct px_stream *s)
{
    return pool_find(s) != NULL;
}

void px_h2_client_drain_all(void)
{
    struct cm_list *pos;
    for (pos = px_h2_client_list.next; pos != &px_h2_client_list; pos = pos->next) {
        struct px_h2_session *sess = cm_container_of(pos, struct px_h2_session, link);
        if (sess->nstreams > 0 || sess->state == PX_H2_CLOSING)
            continue;
        if (sess->state == PX_H2_CONNECTING) {
            px_h2_session_close(sess, PX_CAUSE_CONNECT_FAILED);
            continue;
        }
        nghttp2_session_terminate_session(sess->ng, NGHTTP2_NO_ERROR);
        sess->state = PX_H2_GOAWAY;
        px_h2_session_schedule(sess);
    }
}
