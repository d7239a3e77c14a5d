/* h2c (prior knowledge) codec of test-upstream: an nghttp2 server session on a bufferevent.
 *
 * Streams carry the same tu_req / tu_resp as HTTP/1.1. Bodies come from a data provider
 * that copies from the response model; the send callback refuses (WOULDBLOCK) past
 * TU_OUT_HIGH of queued output and the write callback resumes sending, so generated bodies
 * follow the socket. /slowbody defers its data source until its timer releases a byte. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/xalloc.h"
#include "test/upstream/upstream.h"

struct h2_conn {
    struct cm_list link; /* in srv->conns */
    struct tu_server *srv;
    struct bufferevent *bev;
    nghttp2_session *session;
    struct cm_list streams; /* struct h2_stream.link */
    bool closing;           /* the session is over; flushing its last frames */
    bool dead;              /* to be freed by the callback that is running */
};

struct h2_stream {
    struct cm_list link; /* in conn->streams */
    struct h2_conn *conn;
    int32_t id;
    struct tu_req req;
    struct tu_resp resp;
    struct event *timer; /* /delay, /slowbody ticks */
    bool head_too_big;   /* answered with 431 */
    bool responded;      /* response submitted */
};

static void h2_stream_free(struct h2_stream *s)
{
    cm_list_remove(&s->link);
    event_free(s->timer);
    tu_req_deinit(&s->req);
    tu_resp_deinit(&s->resp);
    free(s);
}

static void h2_free(struct h2_conn *c)
{
    struct cm_list *pos, *tmp;
    cm_list_remove(&c->link);
    /* nghttp2_session_del does not call on_stream_close: free ours afterwards */
    nghttp2_session_del(c->session);
    cm_list_foreach_safe(pos, tmp, &c->streams)
    {
        h2_stream_free(cm_container_of(pos, struct h2_stream, link));
    }
    bufferevent_free(c->bev);
    free(c);
}

/* Send what nghttp2 has queued; decide whether the connection is over. */
static void h2_flush(struct h2_conn *c)
{
    if (c->dead)
        return;
    int rv = nghttp2_session_send(c->session);
    if (rv != 0) {
        cm_debug("h2: send: %s", nghttp2_strerror(rv));
        c->dead = true;
        return;
    }
    if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session)) {
        c->closing = true;
        bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            c->dead = true;
    }
}

static void h2_after(struct h2_conn *c)
{
    h2_flush(c);
    if (c->dead)
        h2_free(c);
}

static ssize_t h2_send(nghttp2_session *session, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    struct h2_conn *c = user;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    (void)session;
    (void)flags;
    if (evbuffer_get_length(out) >= TU_OUT_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    evbuffer_add(out, data, len);
    return (ssize_t)len;
}

static ssize_t h2_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user)
{
    struct h2_stream *s = source->ptr;
    (void)session;
    (void)stream_id;
    (void)user;
    size_t n = tu_resp_read(&s->resp, buf, length);
    if (s->resp.sent == s->resp.length)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (n == 0)
        return NGHTTP2_ERR_DEFERRED; /* /slowbody: the timer resumes us */
    return (ssize_t)n;
}

static void arm_ms(struct h2_stream *s, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->timer, &tv);
}

static void h2_submit(struct h2_stream *s)
{
    struct tu_resp *r = &s->resp;
    char status[8], length[24];
    nghttp2_nv nva[4];
    size_t n = 0;

    tu_resp_build(&s->req, s->conn->srv->name, "HTTP/2", r);
    snprintf(status, sizeof(status), "%d", r->status);
    snprintf(length, sizeof(length), "%llu", (unsigned long long)r->length);
#define NV(k, v) ((nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), 0})
    nva[n++] = NV(":status", status);
    nva[n++] = NV("x-upstream", s->conn->srv->name);
    if (r->content_type != NULL)
        nva[n++] = NV("content-type", r->content_type);
    if (r->has_length)
        nva[n++] = NV("content-length", length);
#undef NV
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = h2_read_body};
    int rv = nghttp2_submit_response(s->conn->session, s->id, nva, n,
                                     r->kind == TU_BODY_NONE ? NULL : &prd);
    if (rv != 0)
        cm_debug("h2: stream %d: submit: %s", s->id, nghttp2_strerror(rv));
    s->responded = true;
    if (r->kind == TU_BODY_SLOW && r->length > 0)
        arm_ms(s, r->slow_ms);
}

/* The request's body has ended (END_STREAM): answer it. */
static void h2_request_done(struct h2_stream *s)
{
    switch (s->req.route) {
    case TU_ROUTE_CLOSE:
        nghttp2_submit_rst_stream(s->conn->session, NGHTTP2_FLAG_NONE, s->id,
                                  NGHTTP2_INTERNAL_ERROR);
        break;
    case TU_ROUTE_DELAY:
        arm_ms(s, s->req.ms);
        break;
    default:
        h2_submit(s);
        break;
    }
}

static void h2_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct h2_stream *s = arg;
    struct h2_conn *c = s->conn;
    (void)fd;
    (void)what;
    if (!s->responded) {
        h2_submit(s); /* /delay elapsed */
    } else if (s->resp.kind == TU_BODY_SLOW) {
        s->resp.slow_ready++;
        nghttp2_session_resume_data(c->session, s->id);
        if (s->resp.sent + s->resp.slow_ready < s->resp.length)
            arm_ms(s, s->resp.slow_ms);
    }
    /* may close and free s */
    h2_after(c);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    struct h2_conn *c = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2_stream *s = cm_xcalloc(1, sizeof(*s));
    s->conn = c;
    s->id = frame->hd.stream_id;
    tu_req_init(&s->req);
    s->timer = evtimer_new(c->srv->base, h2_on_timer, s);
    if (s->timer == NULL)
        abort();
    cm_list_insert_tail(&c->streams, &s->link);
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    (void)flags;
    (void)user;
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    /* trailers (a second HEADERS) are accepted and not reported */
    if (s == NULL || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST || s->head_too_big)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    char **slot = NULL;
    if (namelen == 7 && memcmp(n, ":method", 7) == 0)
        slot = &s->req.method;
    else if (namelen == 5 && memcmp(n, ":path", 5) == 0)
        slot = &s->req.target;
    else if (namelen == 10 && memcmp(n, ":authority", 10) == 0)
        slot = &s->req.authority;
    if (slot != NULL) {
        s->req.head_bytes += namelen + valuelen;
        free(*slot);
        *slot = cm_xstrndup(v, valuelen);
    } else if (namelen > 0 && n[0] == ':') {
        s->req.head_bytes += namelen + valuelen; /* :scheme, :protocol */
    } else if (tu_req_add_header(&s->req, n, namelen, v, valuelen) != 0) {
        s->head_too_big = true;
    }
    if (s->req.head_bytes > TU_MAX_HEAD)
        s->head_too_big = true;
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s == NULL)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        tu_req_route(&s->req);
        if (s->head_too_big) {
            s->req.route = TU_ROUTE_ERROR;
            s->req.status = 431;
            s->req.why = "header block too large";
        }
    }
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !s->responded)
        h2_request_done(s);
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *user)
{
    (void)flags;
    (void)user;
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s != NULL)
        tu_req_body(&s->req, data, len);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user)
{
    (void)error_code;
    (void)user;
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s != NULL)
        h2_stream_free(s);
    return 0;
}

static void h2_on_read(struct bufferevent *bev, void *arg)
{
    struct h2_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!c->dead && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(in, -1, NULL, v, 8);
        size_t used = 0;
        if (n > 8)
            n = 8;
        for (int i = 0; i < n; i++) {
            ssize_t rv = nghttp2_session_mem_recv(c->session, v[i].iov_base, v[i].iov_len);
            if (rv < 0) {
                cm_debug("h2: recv: %s", nghttp2_strerror((int)rv));
                /* a GOAWAY may be queued: flush it, then close */
                c->closing = true;
                break;
            }
            used += (size_t)rv;
        }
        evbuffer_drain(in, used);
        if (c->closing) {
            evbuffer_drain(in, evbuffer_get_length(in));
            nghttp2_session_send(c->session);
            bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
            bufferevent_disable(bev, EV_READ);
            if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
                c->dead = true;
            break;
        }
    }
    h2_after(c);
}

static void h2_on_write(struct bufferevent *bev, void *arg)
{
    struct h2_conn *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        c->dead = true;
    h2_after(c);
}

static void h2_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct h2_conn *c = arg;
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        c->dead = true;
    h2_after(c);
}

/* Shared by every session; freed by tu_h2_free_all. */
static nghttp2_session_callbacks *cbs;

void tu_h2_accept(struct tu_server *srv, int fd)
{
    if (cbs == NULL) {
        if (nghttp2_session_callbacks_new(&cbs) != 0)
            abort();
        nghttp2_session_callbacks_set_send_callback(cbs, h2_send);
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    }
    struct h2_conn *c = cm_xcalloc(1, sizeof(*c));
    c->srv = srv;
    cm_list_init(&c->streams);
    c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL || nghttp2_session_server_new(&c->session, cbs, c) != 0)
        abort();
    cm_list_insert_tail(&srv->conns, &c->link);

    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, srv->h2_window},
    };
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 16 << 20);

    bufferevent_setcb(c->bev, h2_on_read, h2_on_write, h2_on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, TU_OUT_HIGH);
    bufferevent_setwatermark(c->bev, EV_WRITE, TU_OUT_LOW, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    h2_flush(c);
}

void tu_h2_free_all(struct tu_server *srv)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &srv->conns)
    {
        h2_free(cm_container_of(pos, struct h2_conn, link));
    }
    nghttp2_session_callbacks_del(cbs);
    cbs = NULL;
}
