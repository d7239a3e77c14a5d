/* HTTP/2 server side: one nghttp2 server session per downstream connection
 * (h2c prior knowledge), each request stream becoming a px_stream whose
 * downstream side is "h2-server".
 *
 * Hostile clients (docs/h2.md "Hostile peers"): a request head is only
 * reported to the stream once the input read with it has been processed,
 * so HEADERS + RST_STREAM in one read never opens anything upstream; the
 * stream resets a client causes are counted per window and past
 * limits.h2_max_resets_per_window the connection gets
 * GOAWAY(ENHANCE_YOUR_CALM); stream ids must grow (RFC 9113 5.1.1). */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "certs/pki.h"
#include <mbedtls/base64.h>
#include <strings.h>
#include "proxy/h2.h"
#include "proxy/h2_common.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

static struct px_h2_stream *stream_of(nghttp2_session *ng, int32_t id)
{
    return nghttp2_session_get_stream_user_data(ng, id);
}

/* Refuse a request stream (bad field, oversized trailers): RST_STREAM; the
 * px_stream learns it from on_stream_close. */
static void refuse(struct px_h2_stream *st, uint32_t code)
{
    st->refused = true;
    nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, code);
}

/* End the connection for a protocol error of the client: GOAWAY(code) with
 * the last stream we processed; nghttp2 stops reading, the flush closes. */
static void terminate(struct px_h2_session *sess, uint32_t code)
{
    if (sess->state == PX_H2_CLOSING || nghttp2_session_terminate_session(sess->ng, code) != 0)
        return;
    sess->state = PX_H2_GOAWAY;
    px_h2_session_schedule(sess);
}

/* A stream reset the client caused (its RST_STREAM, or our RST_STREAM for
 * its protocol error). Past the budget of the window, the connection goes:
 * each reset may have cost work here and upstream (CVE-2023-44487). */
static void charge_reset(struct px_h2_session *sess)
{
    const struct px_limits *lim = &sess->srv->cfg->limits;
    uint64_t now = cm_mono_ms();
    if (sess->reset_window_ms == 0 || now - sess->reset_window_ms >= lim->h2_reset_window_ms) {
        sess->reset_window_ms = now;
        sess->nresets = 0;
    }
    if (++sess->nresets <= lim->h2_max_resets_per_window || sess->state != PX_H2_OPEN)
        return;
    cm_info("h2 server session %llu: %u stream resets within %u ms: GOAWAY ENHANCE_YOUR_CALM",
            (unsigned long long)sess->id, sess->nresets, lim->h2_reset_window_ms);
    px_metrics.h2_reset_flood++;
    terminate(sess, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* ---- ops: the stream drives the response through these ---- */

static void srv_send_head(struct px_stream *s)
{
    struct px_h2_stream *st = s->ctx[PX_DOWN];
    struct px_h2_session *sess = st->sess;
    if (sess->state == PX_H2_CLOSING || st->out != PX_H2_OUT_IDLE)
        return;
    nghttp2_nv *nva;
    char *clmem;
    char status[4];
    struct px_msg r = s->resp;
    if (s->tunnel)
        r.status = 200; /* 101 is the HTTP/1.1 answer; extended CONNECT's is 2xx */
    size_t n = px_h2_make_nv(&r, false, &nva, status, &clmem);
    bool body = !s->resp.end_stream;
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = px_h2_read_body};
    int rv = nghttp2_submit_response(sess->ng, st->id, nva, n, body ? &prd : NULL);
    free(nva);
    free(clmem);
    if (rv != 0) {
        cm_debug("h2 server session %llu stream %d: response: %s", (unsigned long long)sess->id,
                 st->id, nghttp2_strerror(rv));
        refuse(st, NGHTTP2_INTERNAL_ERROR);
        st->out = PX_H2_OUT_DONE;
    } else {
        st->out = body ? PX_H2_OUT_BODY : PX_H2_OUT_DONE;
    }
    px_h2_session_schedule(sess);
}

static void srv_send_data(struct px_stream *s, const uint8_t *data, size_t len)
{
    px_h2_stream_queue(s->ctx[PX_DOWN], data, len);
}

static void srv_send_end(struct px_stream *s)
{
    px_h2_stream_queue_end(s->ctx[PX_DOWN]);
}

static size_t srv_pending(struct px_stream *s)
{
    return px_h2_stream_pending(s->ctx[PX_DOWN]);
}

static void srv_resume(struct px_stream *s)
{
    px_h2_stream_resume(s->ctx[PX_DOWN]);
}

static void srv_abort(struct px_stream *s)
{
    struct px_h2_stream *st = s->ctx[PX_DOWN];
    if (st->failing)
        return;
    if (st->sess->state != PX_H2_CLOSING && (st->out != PX_H2_OUT_DONE || st->in != PX_H2_IN_DONE))
        refuse(st, NGHTTP2_INTERNAL_ERROR);
    st->out = PX_H2_OUT_DONE;
    st->refused = true;
    px_h2_stream_detach(st);
    px_h2_session_schedule(st->sess);
}

static const struct px_side_ops server_ops = {
    .name = "h2-server",
    .send_head = srv_send_head,
    .send_data = srv_send_data,
    .send_end = srv_send_end,
    .pending = srv_pending,
    .resume = srv_resume,
    .abort = srv_abort,
};

/* ---- nghttp2 callbacks ---- */

static void dispatch_head(struct px_h2_stream *st);

/* Every frame header, before nghttp2 acts on it. nghttp2 ignores a HEADERS
 * frame opening a stream below the highest one seen (it cannot tell such an
 * id from a long-closed stream); RFC 9113 5.1.1 makes it a connection error. */
static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *user_data)
{
    struct px_h2_session *sess = user_data;
    if (hd->type != NGHTTP2_HEADERS || (hd->stream_id & 1) == 0)
        return 0;
    if (hd->stream_id > sess->last_req_id) {
        sess->last_req_id = hd->stream_id;
        return 0;
    }
    nghttp2_stream *ns = nghttp2_session_find_stream(ng, hd->stream_id);
    if (ns != NULL && nghttp2_stream_get_state(ns) != NGHTTP2_STREAM_STATE_IDLE)
        return 0; /* trailers on an open stream; nghttp2 answers closed ones (STREAM_CLOSED) */
    cm_debug("h2 server session %llu: HEADERS on stream %d after stream %d",
             (unsigned long long)sess->id, hd->stream_id, sess->last_req_id);
    px_metrics.h2_protocol_errors++;
    terminate(sess, NGHTTP2_PROTOCOL_ERROR);
    return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user_data)
{
    struct px_h2_session *sess = user_data;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        struct px_h2_stream *st = px_h2_stream_new(sess, NULL);
        st->id = f->hd.stream_id;
        st->s = px_stream_new(sess->conn, &server_ops, st);
        nghttp2_session_set_stream_user_data(ng, st->id, st);
        px_h2_session_watch_head(sess, st);
        return 0;
    }
    struct px_h2_stream *st = stream_of(ng, f->hd.stream_id);
    if (st != NULL && st->head_ready)
        dispatch_head(st); /* trailers follow the head */
    if (st != NULL && st->s != NULL && st->in == PX_H2_IN_BODY)
        px_h2_stream_begin_trailers(st);
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
    if (st == NULL || st->s == NULL || st->refused || st->too_big)
        return 0;
    if (px_h2_stream_add_field(st, &st->s->req, name, namelen, value, valuelen) != 0) {
        cm_debug("h2 server session %llu stream %d: invalid field %.*s",
                 (unsigned long long)st->sess->id, st->id, (int)namelen, name);
        px_metrics.bad_request++;
        refuse(st, NGHTTP2_PROTOCOL_ERROR);
    }
    return 0;
}

/* h2 splits Cookie into crumbs; HTTP/1.1 wants one field (RFC 9113 8.2.3). */
static void join_cookies(struct px_stream *s)
{
    struct px_msg *m = &s->req;
    size_t total = 0, count = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        if (strcmp(m->hdrs[i].name, "cookie") == 0) {
            total += m->hdrs[i].valuelen + 2;
            count++;
        }
    }
    if (count < 2)
        return;
    char *joined = px_arena_alloc(&s->arena, total + 1);
    size_t off = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        if (strcmp(m->hdrs[i].name, "cookie") != 0)
            continue;
        if (off > 0) {
            memcpy(joined + off, "; ", 2);
            off += 2;
        }
        memcpy(joined + off, m->hdrs[i].value, m->hdrs[i].valuelen);
        off += m->hdrs[i].valuelen;
    }
    joined[off] = '\0';
    px_msg_remove(m, "cookie");
    px_msg_add(&s->arena, m, "cookie", 6, joined, off, UINT32_MAX, UINT32_MAX);
}

/* An extended CONNECT (RFC 8441) from an HTTP/2 client, a sidecar's or a
 * browser's WebSocket: the stream takes it as the HTTP/1.1 Upgrade request
 * it stands for (a GET with Upgrade: <:protocol>; policy, routes, metrics
 * and the access log see that). The request message is the head alone; DATA
 * that follows is tunnel data, END_STREAM the client's half-close. A
 * WebSocket request without Sec-WebSocket-Key (a browser's: RFC 8441 5 has
 * none) gets a fresh one, so an HTTP/1.1 app can answer it; a sidecar
 * forwards the client's own, so the client's check of the app's
 * Sec-WebSocket-Accept holds end to end (docs/h2.md). */
static void extended_connect(struct px_h2_stream *st, bool end_stream)
{
    struct px_stream *s = st->s;
    if (end_stream || s->req.path == NULL) {
        st->refused = true;
        st->in = end_stream ? PX_H2_IN_DONE : PX_H2_IN_BODY;
        px_stream_respond(s, 400, "malformed request: extended CONNECT without :path or a stream");
        return;
    }
    s->req.method = "GET";
    if (s->req.scheme == NULL)
        s->req.scheme = "http";
    s->req.http_minor = 1;
    s->req.content_length = -1;
    s->req.end_stream = true;
    join_cookies(s);
    if (strcasecmp(s->upgrade, "websocket") == 0 &&
        px_msg_find(&s->req, "sec-websocket-key") == NULL) {
        unsigned char nonce[16], key[32];
        size_t klen = 0;
        pki_rng_fn(NULL, nonce, sizeof(nonce));
        mbedtls_base64_encode(key, sizeof(key), &klen, nonce, sizeof(nonce));
        uint32_t big = UINT32_MAX;
        px_msg_add(&s->arena, &s->req, "sec-websocket-key", 17, (const char *)key, klen, big, big);
    }
    st->in = PX_H2_IN_BODY;
    px_stream_on_req_head(s);
    if (st->s != NULL)
        px_stream_on_req_end(s); /* the request message; the tunnel may follow */
}

static void on_request_head(struct px_h2_stream *st, bool end_stream)
{
    struct px_stream *s = st->s;
    if (st->too_big) {
        /* answer 431, then ignore the rest of the request */
        st->refused = true;
        st->in = end_stream ? PX_H2_IN_DONE : PX_H2_IN_BODY;
        px_metrics.header_too_big++;
        px_stream_respond(s, 431, "request header fields too large");
        return;
    }
    if (s->req.method != NULL && strcmp(s->req.method, "CONNECT") == 0 && s->upgrade != NULL) {
        extended_connect(st, end_stream);
        return;
    }
    if (s->upgrade != NULL) {
        /* :protocol without CONNECT (nghttp2 lets it through when we
         * enable extended CONNECT): malformed, RFC 8441 4 */
        st->refused = true;
        st->in = end_stream ? PX_H2_IN_DONE : PX_H2_IN_BODY;
        px_stream_respond(s, 400, "malformed request: :protocol without CONNECT");
        return;
    }
    if (s->req.method != NULL && strcmp(s->req.method, "CONNECT") == 0) {
        /* plain CONNECT tunnels are not proxied (the h1 side refuses them the same way) */
        st->refused = true;
        st->in = end_stream ? PX_H2_IN_DONE : PX_H2_IN_BODY;
        px_stream_respond(s, 405, "CONNECT is not supported");
        return;
    }
    join_cookies(s);
    if (s->req.scheme == NULL)
        s->req.scheme = "http";
    s->req.end_stream = end_stream;
    /* an h1 upstream may insist on a length for methods that carry bodies */
    if (end_stream && s->req.content_length < 0 && s->req.method != NULL &&
        (strcmp(s->req.method, "POST") == 0 || strcmp(s->req.method, "PUT") == 0 ||
         strcmp(s->req.method, "PATCH") == 0))
        s->req.content_length = 0;
    st->in = end_stream ? PX_H2_IN_DONE : PX_H2_IN_BODY;
    px_stream_on_req_head(s);
    if (end_stream && st->s != NULL)
        px_stream_on_req_end(s);
}

/* A request head is complete: it goes to the stream (and upstream) after
 * the rest of this input, unless a RST_STREAM in it ends the stream first. */
static void head_complete(struct px_h2_stream *st, bool es)
{
    st->head_ready = true;
    st->head_es = es;
    st->head_deadline_ms = 0;
    st->sess->nready++;
}

static void dispatch_head(struct px_h2_stream *st)
{
    st->head_ready = false;
    st->sess->nready--;
    if (st->s != NULL)
        on_request_head(st, st->head_es);
}

void px_h2_server_dispatch_heads(struct px_h2_session *sess)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &sess->streams)
    {
        if (sess->nready == 0 || sess->state == PX_H2_CLOSING)
            break;
        struct px_h2_stream *st = cm_container_of(pos, struct px_h2_stream, link);
        /* on_request_head may answer locally; nothing it does frees a
         * stream record (that only happens in on_stream_close, from
         * nghttp2_session_mem_recv/send, or when the session goes) */
        if (st->head_ready)
            dispatch_head(st);
    }
}

bool px_h2_server_bad_input(struct px_h2_session *sess, int lib_error)
{
    uint32_t code;
    if (sess->state == PX_H2_CLOSING)
        return false;
    if (lib_error == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
        /* RFC 9113 3.4: an invalid preface is a connection error */
        code = NGHTTP2_PROTOCOL_ERROR;
        px_metrics.h2_protocol_errors++;
    } else if (lib_error == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) {
        /* a header block cut into more CONTINUATION frames than nghttp2
         * accepts (8): a flood, told as such (the peer is still reading) */
        code = NGHTTP2_ENHANCE_YOUR_CALM;
    } else {
        return false; /* FLOODED: the peer does not read; others: fatal */
    }
    if (nghttp2_session_terminate_session(sess->ng, code) != 0)
        return false;
    sess->state = PX_H2_GOAWAY;
    return true;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user_data)
{
    struct px_h2_session *sess = user_data;
    bool es = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
        px_metrics.h2_resets_received++;
        charge_reset(sess);
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    if (f->hd.type == NGHTTP2_DATA && f->hd.length == f->data.padlen && !es) {
        if (++sess->nempty > PX_H2_MAX_EMPTY_FRAMES && sess->state == PX_H2_OPEN) {
            cm_info("h2 server session %llu: %u empty DATA frames in a row: GOAWAY "
                    "ENHANCE_YOUR_CALM",
                    (unsigned long long)sess->id, sess->nempty);
            px_metrics.h2_empty_frame_flood++;
            terminate(sess, NGHTTP2_ENHANCE_YOUR_CALM);
        }
    } else {
        sess->nempty = 0;
    }
    struct px_h2_stream *st = stream_of(ng, f->hd.stream_id);
    if (st == NULL || st->s == NULL)
        return 0;
    if (st->head_ready)
        dispatch_head(st); /* DATA (END_STREAM) or trailers after the head */
    if (st->s == NULL)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (st->in == PX_H2_IN_HEAD) {
            if (!(st->refused && !st->too_big))
                head_complete(st, es);
        } else if (st->in == PX_H2_IN_TRAILERS) {
            if (st->too_big) {
                refuse(st, NGHTTP2_PROTOCOL_ERROR);
                return 0;
            }
            if (st->refused)
                st->in = PX_H2_IN_DONE; /* answered already: the trailers go nowhere */
            else
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
    struct px_h2_stream *st = stream_of(ng, id);
    if (st != NULL && st->head_ready)
        dispatch_head(st); /* the body proves a real request: the head goes first */
    px_h2_stream_in_data(ng, id, st, data, len);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *user_data)
{
    struct px_h2_session *sess = user_data;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
        /* our resets for the client's own faults count against it too
         * (invalid fields, flow control, too many streams: "MadeYouReset");
         * NO_ERROR (response done first), CANCEL and INTERNAL_ERROR (the
         * upstream failed) do not */
        uint32_t code = f->rst_stream.error_code;
        if (code != NGHTTP2_NO_ERROR && code != NGHTTP2_INTERNAL_ERROR && code != NGHTTP2_CANCEL)
            charge_reset(sess);
        return 0;
    }
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct px_h2_stream *st = stream_of(ng, f->hd.stream_id);
    /* The response is complete but the request is not: tell the client to
     * stop sending (RFC 9113 8.1). */
    if (st != NULL && st->in != PX_H2_IN_DONE)
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *user_data)
{
    (void)user_data;
    struct px_h2_stream *st = stream_of(ng, id);
    if (st == NULL)
        return 0;
    struct px_stream *s = st->s;
    if (st->head_ready) {
        /* reset before its head was dispatched: nothing went upstream */
        st->head_ready = false;
        st->sess->nready--;
        px_metrics.h2_resets_early++;
    } else if (s != NULL && st->in == PX_H2_IN_HEAD) {
        px_metrics.h2_resets_early++; /* reset mid-head */
    }
    if (s != NULL) {
        bool sent = error_code == NGHTTP2_NO_ERROR && st->out == PX_H2_OUT_DONE;
        bool orphaned_up = st->in != PX_H2_IN_DONE && s->attached[PX_UP];
        if (!sent || orphaned_up)
            px_h2_stream_fail(st, PX_CAUSE_DOWNSTREAM_RESET);
    }
    px_h2_stream_closed(st);
    return 0;
}

void px_h2_server_start(struct px_conn *c)
{
    /* the io carries the bytes read so far (the preface at least) */
    struct px_h2_session *sess = px_h2_session_new(c->srv, PX_H2_SERVER, c->io);
    c->io = NULL;
    sess->conn = c;
    c->handler = sess;
    cm_list_insert_tail(&px_h2_server_list, &sess->link);
    px_h2_nserver++;

    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    px_h2_common_setup(&cbs, &opt);
    /* Keep closed streams (nghttp2 bounds them by max_concurrent_streams):
     * without them a DATA or HEADERS on a closed stream is silently ignored
     * where RFC 9113 5.1 wants STREAM_CLOSED. */
    nghttp2_option_set_no_closed_streams(opt, 0);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    px_h2_session_make_ng(sess, cbs, opt);
    if (px_h2_submit_settings(sess) != 0) {
        px_h2_session_close(sess, PX_CAUSE_DOWNSTREAM_RESET);
        return;
    }
    int one = 1;
    setsockopt(px_io_fd(sess->io), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    px_h2_session_io(sess);
    px_h2_session_idle_update(sess);
    if (sess->srv->draining) {
        nghttp2_submit_goaway(sess->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
        sess->state = PX_H2_GOAWAY;
    }
    /* the preface is already in the input buffer: read it on the next turn */
    px_h2_session_schedule(sess);
}

void px_h2_server_drain_all(void)
{
    struct cm_list *pos;
    for (pos = px_h2_server_list.next; pos != &px_h2_server_list; pos = pos->next) {
        struct px_h2_session *sess = cm_container_of(pos, struct px_h2_session, link);
        if (sess->state != PX_H2_OPEN)
            continue;
        nghttp2_submit_goaway(sess->ng, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(sess->ng), NGHTTP2_NO_ERROR,
                              NULL, 0);
        sess->state = PX_H2_GOAWAY;
        px_h2_session_schedule(sess);
    }
}
