/* HTTP/2 codec, the part both roles share: session I/O between nghttp2 and a
 * px_io, deferred closing, body queues with NO_COPY DATA frames, flow
 * control tied to the other side's backpressure (header translation: h2_heads.c), and
 * the public drain / shutdown / counters of proxy/h2.h.
 * See docs/h2.md for the design. */
#include "proxy/h2.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/h2_common.h"
#include "proxy/http.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/server.h"
#include "proxy/tls.h"

struct cm_list px_h2_server_list = {&px_h2_server_list, &px_h2_server_list};
struct cm_list px_h2_client_list = {&px_h2_client_list, &px_h2_client_list};
unsigned px_h2_nserver, px_h2_nclient;
static uint64_t next_session_id;

/* A peer that never reads our last frames is cut after this long. */
#define CLOSE_LINGER_MS 2000

static void set_timer_ms(struct event *ev, uint32_t ms)
{
    struct timeval tv = cm_tv_ms(ms);
    evtimer_add(ev, &tv);
}

static enum px_cause default_cause(const struct px_h2_session *sess)
{
    return sess->role == PX_H2_CLIENT ? PX_CAUSE_UPSTREAM_RESET : PX_CAUSE_DOWNSTREAM_RESET;
}

/* ---- sessions ------------------------------------------------------------ */

static void on_defer(evutil_socket_t fd, short what, void *arg);
static void on_idle(evutil_socket_t fd, short what, void *arg);
static void on_head_timer(evutil_socket_t fd, short what, void *arg);

struct px_h2_session *px_h2_session_new(struct px_server *srv, enum px_h2_role role,
                                        struct px_io *io)
{
    struct px_h2_session *sess = cm_xcalloc(1, sizeof(*sess));
    sess->role = role;
    sess->state = role == PX_H2_SERVER ? PX_H2_OPEN : PX_H2_CONNECTING;
    sess->io = io;
    sess->srv = srv;
    sess->defer = event_new(srv->base, -1, 0, on_defer, sess);
    sess->idle = evtimer_new(srv->base, on_idle, sess);
    sess->head_timer = evtimer_new(srv->base, on_head_timer, sess);
    if (sess->defer == NULL || sess->idle == NULL || sess->head_timer == NULL) {
        cm_error("h2: event_new failed");
        abort();
    }
    cm_list_init(&sess->streams);
    cm_list_init(&sess->link);
    cm_list_init(&sess->plink);
    sess->fail_cause = default_cause(sess);
    sess->id = ++next_session_id;
    return sess;
}

void px_h2_session_schedule(struct px_h2_session *sess)
{
    event_active(sess->defer, EV_WRITE, 0);
}

void px_h2_session_close(struct px_h2_session *sess, enum px_cause cause)
{
    if (sess->state == PX_H2_CLOSING)
        return;
    cm_debug("h2 %s session %llu: closing (%s)", sess->role == PX_H2_SERVER ? "server" : "client",
             (unsigned long long)sess->id, px_cause_str(cause));
    sess->state = PX_H2_CLOSING;
    sess->fail_cause = cause;
    if (sess->io != NULL)
        px_io_read_enable(sess->io, false);
    evtimer_del(sess->idle);
    evtimer_del(sess->head_timer);
    event_active(sess->defer, EV_WRITE, 0);
}

void px_h2_session_watch_head(struct px_h2_session *sess, struct px_h2_stream *st)
{
    uint32_t ms = sess->srv->cfg->limits.header_timeout_ms;
    if (ms == 0)
        return;
    st->head_deadline_ms = cm_mono_ms() + ms;
    if (!evtimer_pending(sess->head_timer, NULL))
        set_timer_ms(sess->head_timer, ms);
}

/* A request head still unfinished past its deadline: a slow (or stuck)
 * client. A half-sent header block blocks the whole connection (nothing may
 * interleave with CONTINUATION frames), so the connection goes. */
static void on_head_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_h2_session *sess = arg;
    if (sess->state == PX_H2_CLOSING)
        return;
    uint64_t now = cm_mono_ms(), next = 0;
    struct cm_list *pos;
    for (pos = sess->streams.next; pos != &sess->streams; pos = pos->next) {
        struct px_h2_stream *st = cm_container_of(pos, struct px_h2_stream, link);
        if (st->in != PX_H2_IN_HEAD || st->head_deadline_ms == 0 || st->s == NULL)
            continue;
        if (st->head_deadline_ms <= now) {
            cm_debug("h2 server session %llu stream %d: request head not finished in time",
                     (unsigned long long)sess->id, st->id);
            px_metrics.header_timeout++;
            px_h2_session_close(sess, PX_CAUSE_DOWNSTREAM_RESET);
            return;
        }
        if (next == 0 || st->head_deadline_ms < next)
            next = st->head_deadline_ms;
    }
    if (next > 0)
        set_timer_ms(sess->head_timer, (uint32_t)(next - now));
}

void px_h2_session_idle_update(struct px_h2_session *sess)
{
    if (sess->state == PX_H2_CLOSING || sess->close_when_flushed)
        return;
    if (sess->nstreams > 0) {
        evtimer_del(sess->idle);
        return;
    }
    const struct px_limits *lim = &sess->srv->cfg->limits;
    uint32_t ms = sess->role == PX_H2_SERVER ? lim->idle_timeout_ms : lim->pool_idle_timeout_ms;
    if (ms > 0)
        set_timer_ms(sess->idle, ms);
}

/* No stream for the idle timeout (or the last frames did not leave in time):
 * say goodbye with GOAWAY and let the flush close the connection. */
static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_h2_session *sess = arg;
    if (sess->state == PX_H2_CLOSING)
        return;
    if (sess->close_when_flushed || sess->state == PX_H2_CONNECTING) {
        px_h2_session_close(sess, sess->fail_cause);
        return;
    }
    if (sess->nstreams > 0)
        return;
    cm_debug("h2 session %llu: idle, closing", (unsigned long long)sess->id);
    nghttp2_session_terminate_session(sess->ng, NGHTTP2_NO_ERROR);
    sess->state = PX_H2_GOAWAY;
    px_h2_session_flush(sess);
}

void px_h2_session_flush(struct px_h2_session *sess)
{
    if (sess->state == PX_H2_CLOSING || sess->state == PX_H2_CONNECTING)
        return;
    int rv = nghttp2_session_send(sess->ng);
    if (rv != 0) {
        cm_debug("h2 session %llu: send: %s", (unsigned long long)sess->id, nghttp2_strerror(rv));
        px_h2_session_close(sess, sess->fail_cause);
        return;
    }
    if (sess->state == PX_H2_CLOSING)
        return; /* a callback closed it */
    if (nghttp2_session_want_read(sess->ng) || nghttp2_session_want_write(sess->ng))
        return;
    /* nghttp2 is done with the connection (GOAWAY exchanged, no streams) */
    if (sess->role == PX_H2_SERVER) {
        /* Lingering close: FIN after our last frames, then read and drop
         * until the client closes (or CLOSE_LINGER_MS). Closing with its
         * bytes unread would answer them with a TCP RST, and a client still
         * sending (a reset flood) would lose our GOAWAY with it. */
        if (!sess->close_when_flushed) {
            sess->close_when_flushed = true;
            px_io_shutdown_write(sess->io);
            set_timer_ms(sess->idle, CLOSE_LINGER_MS);
        }
        return;
    }
    if (evbuffer_get_length(px_io_output(sess->io)) == 0) {
        px_h2_session_close(sess, sess->fail_cause);
        return;
    }
    if (!sess->close_when_flushed) {
        sess->close_when_flushed = true;
        px_io_read_enable(sess->io, false);
        px_io_set_write_lowat(sess->io, 0);
        set_timer_ms(sess->idle, CLOSE_LINGER_MS);
    }
}

/* Feed the io's input to nghttp2, then send what it produced. */
static void process_input(struct px_h2_session *sess)
{
    struct evbuffer *in = px_io_input(sess->io);
    for (;;) {
        size_t n = evbuffer_get_contiguous_space(in);
        if (n == 0)
            break;
        unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)n);
        ssize_t rv = nghttp2_session_mem_recv(sess->ng, p, n);
        if (rv < 0) {
            cm_debug("h2 %s session %llu: bad input: %s",
                     sess->role == PX_H2_SERVER ? "server" : "client", (unsigned long long)sess->id,
                     nghttp2_strerror((int)rv));
            if (sess->role == PX_H2_SERVER)
                px_metrics.bad_request++;
            evbuffer_drain(in, evbuffer_get_length(in));
            if (sess->role == PX_H2_SERVER && px_h2_server_bad_input(sess, (int)rv)) {
                px_h2_session_flush(sess); /* GOAWAY, then close when written */
                return;
            }
            px_h2_session_close(sess, sess->role == PX_H2_CLIENT ? PX_CAUSE_UPSTREAM_PROTO
                                                                 : PX_CAUSE_DOWNSTREAM_RESET);
            return;
        }
        evbuffer_drain(in, (size_t)rv);
        if (sess->state == PX_H2_CLOSING)
            return;
    }
    if (sess->role == PX_H2_SERVER && sess->nready > 0) {
        px_h2_server_dispatch_heads(sess);
        if (sess->state == PX_H2_CLOSING)
            return;
    }
    px_h2_session_flush(sess);
}

static bool output_full(const struct px_h2_session *sess)
{
    return evbuffer_get_length(px_io_output(sess->io)) >= PX_H2_OUT_HIGH;
}

static void on_read(struct px_io *io, void *arg)
{
    struct px_h2_session *sess = arg;
    if (sess->state == PX_H2_CLOSING || sess->close_when_flushed) {
        evbuffer_drain(px_io_input(io), evbuffer_get_length(px_io_input(io)));
        return;
    }
    /* Input is read even while our output is full: the peer's WINDOW_UPDATEs
     * arrive there, and a peer that also stops reading while its output is
     * full would deadlock with us. What a non-reading peer can make us queue
     * stays bounded: DATA by flow control, streams by max_concurrent_streams,
     * control-frame answers by nghttp2's flood limits. */
    process_input(sess);
}

static void on_drained(struct px_io *io, void *arg)
{
    struct px_h2_session *sess = arg;
    if (sess->state == PX_H2_CLOSING)
        return;
    if (sess->close_when_flushed) {
        if (sess->role == PX_H2_CLIENT && evbuffer_get_length(px_io_output(io)) == 0)
            px_h2_session_close(sess, sess->fail_cause);
        return;
    }
    px_h2_session_flush(sess);
}

static void on_event(struct px_io *io, int what, void *arg)
{
    (void)io;
    struct px_h2_session *sess = arg;
    if (sess->state == PX_H2_CLOSING)
        return;
    if (sess->role == PX_H2_CLIENT &&
        ((what & (PX_IO_CONNECTED | PX_IO_HANDSHAKE)) ||
         (sess->state == PX_H2_CONNECTING && (what & (PX_IO_EOF | PX_IO_ERROR | PX_IO_TIMEOUT))))) {
        px_h2_client_on_event(sess, what);
        return;
    }
    if (!(what & (PX_IO_EOF | PX_IO_ERROR | PX_IO_TIMEOUT)))
        return; /* CONNECTED / HANDSHAKE: nothing to do, output flows */
    cm_debug("h2 %s session %llu: connection %s", sess->role == PX_H2_SERVER ? "server" : "client",
             (unsigned long long)sess->id,
             (what & PX_IO_EOF)       ? "closed by peer"
             : (what & PX_IO_TIMEOUT) ? "timeout"
                                      : "error");
    enum px_cause cause = default_cause(sess);
    if (sess->role == PX_H2_CLIENT && !sess->got_settings) {
        /* connected, but the upstream never said a word: it was not
         * usable, and nothing we sent was processed */
        px_metrics.upstream_cx_connect_fail++;
        if (what & PX_IO_TIMEOUT)
            cause = PX_CAUSE_CONNECT_TIMEOUT;
    }
    px_h2_session_close(sess, cause);
}

void px_h2_session_io(struct px_h2_session *sess)
{
    px_io_set_write_lowat(sess->io, PX_H2_OUT_HIGH / 2);
    px_io_setcb(sess->io, on_read, on_drained, on_event, sess);
}

static void on_defer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_h2_session *sess = arg;
    if (sess->state == PX_H2_CLOSING) {
        px_h2_session_destroy(sess);
        return;
    }
    if (sess->role == PX_H2_CLIENT)
        px_h2_client_fail_pending(sess);
    if (sess->state == PX_H2_CLOSING || sess->state == PX_H2_CONNECTING)
        return;
    if (!sess->close_when_flushed && evbuffer_get_length(px_io_input(sess->io)) > 0)
        process_input(sess); /* the first bytes, read before we took over */
    else if (!sess->close_when_flushed)
        px_h2_session_flush(sess);
}

/* The session goes: every stream still attached fails on its side (a
 * client stream with the cause it recorded, else the session's). */
static void destroy_streams(struct px_h2_session *sess)
{
    bool server = sess->role == PX_H2_SERVER;
    enum px_cause cause = server ? PX_CAUSE_DOWNSTREAM_RESET : sess->fail_cause;
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &sess->streams)
    {
        struct px_h2_stream *st = cm_container_of(pos, struct px_h2_stream, link);
        if (st->s != NULL) {
            st->failing = true;
            enum px_cause c = st->fail ? st->fail : cause;
            if (c == PX_CAUSE_UPSTREAM_TLS && !server && sess->io != NULL &&
                px_io_tls_error(sess->io)[0] != '\0') {
                /* the stream's 503 names it (secure naming: both identities) */
                const char *e = px_io_tls_error(sess->io);
                st->s->tls_detail = px_arena_strndup(&st->s->arena, e, strlen(e));
            }
            px_stream_on_error(st->s, server ? PX_DOWN : PX_UP, c);
            px_h2_stream_detach(st);
        }
        px_h2_stream_free(st);
    }
}

void px_h2_session_destroy(struct px_h2_session *sess)
{
    sess->state = PX_H2_CLOSING;
    destroy_streams(sess);
    if (cm_list_linked(&sess->link))
        cm_list_remove(&sess->link);
    nghttp2_session_del(sess->ng);
    px_io_free(sess->io);
    event_free(sess->defer);
    event_free(sess->idle);
    event_free(sess->head_timer);
    if (sess->role == PX_H2_SERVER) {
        px_h2_nserver--;
        if (sess->conn != NULL)
            px_conn_free(sess->conn);
    } else {
        px_h2_nclient--;
        px_metrics.upstream_cx_active--;
        cm_list_remove(&sess->plink);
        px_pool_conn_closed(sess->pool_ep); /* the socket is closed: a waiter may connect */
    }
    free(sess->expected_id);
    free(sess);
}

/* ---- nghttp2 glue shared by both roles ----------------------------------- */

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags,
                       void *user_data)
{
    (void)ng;
    (void)flags;
    struct px_h2_session *sess = user_data;
    if (output_full(sess))
        return NGHTTP2_ERR_WOULDBLOCK;
    evbuffer_add(px_io_output(sess->io), data, len);
    return (ssize_t)len;
}

/* Body bytes left st->buf: tell the stream when it fell below half the bound
 * while the other side is paused for us. */
static void check_drain(struct px_h2_stream *st)
{
    struct px_stream *s = st->s;
    if (s == NULL)
        return;
    enum px_side me = st->sess->role == PX_H2_SERVER ? PX_DOWN : PX_UP;
    enum px_side other = me == PX_DOWN ? PX_UP : PX_DOWN;
    if (s->paused[other] && evbuffer_get_length(st->buf) < s->srv->cfg->limits.buffer_bytes / 2)
        px_stream_on_drain(s, me);
}

static int on_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *user_data)
{
    (void)ng;
    struct px_h2_session *sess = user_data;
    struct px_h2_stream *st = source->ptr;
    struct evbuffer *out = px_io_output(sess->io);
    if (output_full(sess))
        return NGHTTP2_ERR_WOULDBLOCK;
    if (frame->data.padlen > 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* we never install a padding callback */
    evbuffer_add(out, framehd, 9);
    /* moves whole evbuffer chains when it can: no copy of the payload */
    if (length > 0 && evbuffer_remove_buffer(st->buf, out, length) != (int)length)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    check_drain(st);
    return 0;
}

static int on_error(nghttp2_session *ng, int lib_error_code, const char *msg, size_t len,
                    void *user_data)
{
    (void)ng;
    (void)lib_error_code;
    struct px_h2_session *sess = user_data;
    cm_debug("h2 %s session %llu: %.*s", sess->role == PX_H2_SERVER ? "server" : "client",
             (unsigned long long)sess->id, (int)len, msg);
    return 0;
}

void px_h2_common_setup(nghttp2_session_callbacks **cbs, nghttp2_option **opt)
{
    if (nghttp2_session_callbacks_new(cbs) != 0 || nghttp2_option_new(opt) != 0) {
        cm_error("h2: out of memory");
        abort();
    }
    nghttp2_session_callbacks_set_send_callback(*cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(*cbs, on_send_data);
    nghttp2_session_callbacks_set_error_callback2(*cbs, on_error);
    /* window updates only for bytes the other side accepted */
    nghttp2_option_set_no_auto_window_update(*opt, 1);
    /* no RFC 7540 priority tree: do not keep closed streams around for it */
    nghttp2_option_set_no_closed_streams(*opt, 1);
}

void px_h2_session_make_ng(struct px_h2_session *sess, nghttp2_session_callbacks *cbs,
                           nghttp2_option *opt)
{
    int rv = sess->role == PX_H2_SERVER ? nghttp2_session_server_new2(&sess->ng, cbs, sess, opt)
                                        : nghttp2_session_client_new2(&sess->ng, cbs, sess, opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    if (rv != 0) {
        cm_error("h2: nghttp2_session_%s_new2: %s",
                 sess->role == PX_H2_SERVER ? "server" : "client", nghttp2_strerror(rv));
        abort(); /* only fails on out of memory */
    }
}

/* Per-stream receive window: the bound, at least the protocol default. */
static uint32_t stream_window(const struct px_server *srv)
{
    uint32_t w = srv->cfg->limits.buffer_bytes;
    if (w < 65535)
        w = 65535;
    if (w > (1u << 24))
        w = 1u << 24;
    return w;
}

int px_h2_submit_settings(struct px_h2_session *sess)
{
    const struct px_limits *lim = &sess->srv->cfg->limits;
    nghttp2_settings_entry iv[5];
    size_t n = 0;
    if (sess->role == PX_H2_SERVER) {
        iv[n].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS;
        iv[n++].value = lim->h2_max_concurrent_streams ? lim->h2_max_concurrent_streams : 100;
        /* WebSocket (any HTTP Upgrade) over HTTP/2: RFC 8441 */
        iv[n].settings_id = NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL;
        iv[n++].value = 1;
    } else {
        iv[n].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH;
        iv[n++].value = 0;
    }
    iv[n].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE;
    iv[n++].value = stream_window(sess->srv);
    iv[n].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE;
    iv[n++].value = lim->max_header_bytes + 32 * (lim->max_headers + 8);
    int rv = nghttp2_submit_settings(sess->ng, NGHTTP2_FLAG_NONE, iv, n);
    if (rv != 0)
        return rv;
    /* The connection window bounds the bytes held back on all paused streams
     * together; a generous one keeps a paused stream from stalling the rest. */
    uint64_t cw = (uint64_t)stream_window(sess->srv) * 16;
    if (cw > INT32_MAX)
        cw = INT32_MAX;
    return nghttp2_session_set_local_window_size(sess->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)cw);
}

/* ---- streams ------------------------------------------------------------- */

struct px_h2_stream *px_h2_stream_new(struct px_h2_session *sess, struct px_stream *s)
{
    struct px_h2_stream *st = cm_xcalloc(1, sizeof(*st));
    st->sess = sess;
    st->s = s;
    st->id = -1;
    st->buf = evbuffer_new();
    if (st->buf == NULL) {
        cm_error("h2: evbuffer_new failed");
        abort();
    }
    cm_list_insert_tail(&sess->streams, &st->link);
    sess->nstreams++;
    px_h2_session_idle_update(sess);
    return st;
}

void px_h2_stream_free(struct px_h2_stream *st)
{
    struct px_h2_session *sess = st->sess;
    /* the connection window of held bytes must come back, or the
     * connection starves once enough reset streams held some */
    if (st->held > 0 && sess->state != PX_H2_CLOSING)
        nghttp2_session_consume_connection(sess->ng, st->held);
    cm_list_remove(&st->link);
    sess->nstreams--;
    evbuffer_free(st->buf);
    free(st);
    px_h2_session_idle_update(sess);
    if (sess->state != PX_H2_CLOSING)
        px_h2_session_schedule(sess);
    if (sess->role == PX_H2_CLIENT)
        px_pool_wake(sess->pool_ep); /* a stream slot is free */
}

void px_h2_stream_detach(struct px_h2_stream *st)
{
    struct px_stream *s = st->s;
    if (s == NULL)
        return;
    st->s = NULL;
    px_stream_detach(s, st->sess->role == PX_H2_SERVER ? PX_DOWN : PX_UP);
}

void px_h2_stream_consume(struct px_h2_stream *st, size_t len)
{
    if (len == 0 || st->sess->state == PX_H2_CLOSING)
        return;
    if (st->id > 0)
        nghttp2_session_consume(st->sess->ng, st->id, len);
    else
        nghttp2_session_consume_connection(st->sess->ng, len);
    px_h2_session_schedule(st->sess);
}

void px_h2_stream_received(struct px_h2_stream *st, size_t len, bool full)
{
    if (st->s == NULL) {
        /* the chunk ended the stream: nobody will resume it */
        nghttp2_session_consume(st->sess->ng, st->id, len);
        return;
    }
    if (full) {
        st->held += len;
        st->paused = true;
        return;
    }
    px_h2_stream_consume(st, len);
}

size_t px_h2_stream_pending(const struct px_h2_stream *st)
{
    return evbuffer_get_length(st->buf);
}

void px_h2_stream_resume(struct px_h2_stream *st)
{
    st->paused = false;
    size_t held = st->held;
    st->held = 0;
    px_h2_stream_consume(st, held);
}

void px_h2_stream_fail(struct px_h2_stream *st, enum px_cause cause)
{
    st->failing = true; /* the stream's abort must not reset what is failing already */
    px_stream_on_error(st->s, st->sess->role == PX_H2_SERVER ? PX_DOWN : PX_UP, cause);
    st->failing = false;
}

void px_h2_stream_closed(struct px_h2_stream *st)
{
    px_h2_stream_detach(st);
    nghttp2_session_set_stream_user_data(st->sess->ng, st->id, NULL);
    px_h2_stream_free(st);
}

void px_h2_stream_begin_trailers(struct px_h2_stream *st)
{
    st->trailers = px_arena_alloc(&st->s->arena, sizeof(*st->trailers));
    px_msg_init(st->trailers);
    st->too_big = false;
    st->in = PX_H2_IN_TRAILERS;
}

void px_h2_stream_in_data(nghttp2_session *ng, int32_t id, struct px_h2_stream *st,
                          const uint8_t *data, size_t len)
{
    if (st == NULL || st->s == NULL || st->refused || st->in != PX_H2_IN_BODY) {
        nghttp2_session_consume(ng, id, len); /* nobody takes them: the window comes back */
        return;
    }
    bool full = st->sess->role == PX_H2_SERVER ? px_stream_on_req_data(st->s, data, len)
                                               : px_stream_on_resp_data(st->s, data, len);
    px_h2_stream_received(st, len, full);
}

void px_h2_stream_in_end(struct px_h2_stream *st, struct px_msg *trailers)
{
    st->in = PX_H2_IN_DONE;
    if (st->sess->role == PX_H2_SERVER) {
        if (trailers != NULL)
            st->s->req_trailers = trailers;
        px_stream_on_req_end(st->s);
    } else {
        if (trailers != NULL)
            st->s->resp_trailers = trailers;
        px_stream_on_resp_end(st->s);
    }
}

static void wake(struct px_h2_stream *st)
{
    if (st->deferred && st->id > 0) {
        st->deferred = false;
        nghttp2_session_resume_data(st->sess->ng, st->id);
    }
    px_h2_session_schedule(st->sess);
}

void px_h2_stream_queue(struct px_h2_stream *st, const uint8_t *data, size_t len)
{
    if (st->sess->state == PX_H2_CLOSING || st->out != PX_H2_OUT_BODY || len == 0)
        return;
    evbuffer_add(st->buf, data, len);
    wake(st);
}

void px_h2_stream_queue_end(struct px_h2_stream *st)
{
    if (st->sess->state == PX_H2_CLOSING || st->out != PX_H2_OUT_BODY)
        return;
    st->out = PX_H2_OUT_END;
    wake(st);
}

ssize_t px_h2_read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                        uint32_t *flags, nghttp2_data_source *src, void *user_data)
{
    (void)buf;
    (void)user_data;
    struct px_h2_stream *st = src->ptr;
    size_t avail = evbuffer_get_length(st->buf);
    size_t n = avail < length ? avail : length;
    if (n == 0 && st->out != PX_H2_OUT_END) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == avail && st->out == PX_H2_OUT_END) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        st->out = PX_H2_OUT_DONE;
        struct px_stream *s = st->s;
        const struct px_msg *t = NULL;
        if (s != NULL)
            t = st->sess->role == PX_H2_SERVER ? s->resp_trailers : s->req_trailers;
        if (t != NULL && t->nhdrs > 0) {
            nghttp2_nv *nva;
            size_t nv = px_h2_make_trailer_nv(t, &nva);
            if (nv > 0 && nghttp2_submit_trailer(ng, id, nva, nv) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            free(nva);
        }
    }
    return (ssize_t)n;
}

static void shutdown_list(struct cm_list *list)
{
    while (!cm_list_empty(list))
        px_h2_session_destroy(cm_container_of(list->next, struct px_h2_session, link));
}

/* ---- public API -------------------------------------------------------------- */

void px_h2_drain(void)
{
    px_h2_server_drain_all();
    px_h2_client_drain_all();
}

void px_h2_shutdown(void)
{
    shutdown_list(&px_h2_server_list);
    shutdown_list(&px_h2_client_list);
}

unsigned px_h2_server_sessions(void)
{
    return px_h2_nserver;
}

unsigned px_h2_client_sessions(void)
{
    return px_h2_nclient;
}
