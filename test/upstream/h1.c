/* HTTP/1.1 codec of test-upstream: llhttp in, bufferevent out.
 *
 * One request at a time per connection: when a message ends, its on_message_complete pauses
 * the parser, the unparsed rest (pipelined requests) stays in the input buffer, and parsing
 * resumes once the response has been queued in full. Generated bodies are added by
 * reference from the pattern table while the output is under TU_OUT_HIGH, and topped up
 * from the write callback, which fires when the output drains below TU_OUT_LOW. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "test/upstream/upstream.h"

/* How long a closing connection waits for the client's FIN after ours (lingering close,
 * so a client's unread pipelined bytes do not turn our close into a reset). */
#define H1_LINGER_MS 2000

enum h1_state {
    H1_READING,    /* parsing a request, or waiting for the next one */
    H1_RESPONDING, /* a response is in progress; the parser is paused at its message end */
    H1_CLOSING,    /* the last response is flushing, then we shut down and linger */
    H1_DEAD        /* to be freed by the callback that is running */
};

struct h1_conn {
    struct cm_list link; /* in srv->conns */
    struct tu_server *srv;
    struct bufferevent *bev;
    struct event *timer; /* /delay, /slowbody ticks, linger timeout */
    llhttp_t parser;
    enum h1_state state;
    struct tu_req req;
    struct tu_resp resp;
    bool resp_started; /* head written */
    bool keep_alive;
    bool peer_eof;
    bool shut;      /* our FIN is sent (lingering) */
    int err_status; /* set by a callback that refuses the head: 414, 431 */
    char *acc;      /* the URL, field or value being assembled across callbacks */
    size_t acc_len, acc_cap;
    char *field; /* the last complete header name */
    size_t field_len;
};

static llhttp_settings_t h1_settings;

static struct h1_conn *conn_of(llhttp_t *p)
{
    return p->data;
}

static int acc_add(struct h1_conn *c, const char *at, size_t len, int status)
{
    c->req.head_bytes += len;
    if (c->req.head_bytes > TU_MAX_HEAD) {
        c->err_status = status;
        return -1;
    }
    if (c->acc_len + len > c->acc_cap) {
        c->acc_cap = (c->acc_len + len) * 2;
        c->acc = cm_xrealloc(c->acc, c->acc_cap);
    }
    memcpy(c->acc + c->acc_len, at, len);
    c->acc_len += len;
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct h1_conn *c = conn_of(p);
    tu_req_deinit(&c->req);
    tu_req_init(&c->req);
    c->acc_len = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    return acc_add(conn_of(p), at, len, 414);
}

static int on_url_complete(llhttp_t *p)
{
    struct h1_conn *c = conn_of(p);
    c->req.target = cm_xstrndup(c->acc ? c->acc : "", c->acc_len);
    c->acc_len = 0;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    return acc_add(conn_of(p), at, len, 431);
}

static int on_header_field_complete(llhttp_t *p)
{
    struct h1_conn *c = conn_of(p);
    free(c->field);
    c->field = cm_xstrndup(c->acc ? c->acc : "", c->acc_len);
    c->field_len = c->acc_len;
    c->acc_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    return acc_add(conn_of(p), at, len, 431);
}

static int on_header_value_complete(llhttp_t *p)
{
    struct h1_conn *c = conn_of(p);
    int rc = tu_req_add_header(&c->req, c->field ? c->field : "", c->field_len,
                               c->acc ? c->acc : "", c->acc_len);
    c->acc_len = 0;
    if (rc != 0) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct h1_conn *c = conn_of(p);
    c->req.method = cm_xstrdup(llhttp_method_name((llhttp_method_t)p->method));
    tu_req_route(&c->req);
    json_t *expect = json_object_get(c->req.headers, "expect");
    if (expect != NULL && strcasecmp(json_string_value(expect), "100-continue") == 0 &&
        p->http_major == 1 && p->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        evbuffer_add(bufferevent_get_output(c->bev), cont, sizeof(cont) - 1);
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    tu_req_body(&conn_of(p)->req, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct h1_conn *c = conn_of(p);
    /* An upgrade is answered as a plain request, and then the connection ends. */
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    c->state = H1_RESPONDING;
    return HPE_PAUSED;
}

static void h1_close_when_flushed(struct h1_conn *c)
{
    c->state = H1_CLOSING;
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        /* nothing left to flush: the write callback would not fire */
        if (c->peer_eof) {
            c->state = H1_DEAD;
            return;
        }
        c->shut = true;
        shutdown(bufferevent_getfd(c->bev), SHUT_WR);
        struct timeval tv = {H1_LINGER_MS / 1000, (H1_LINGER_MS % 1000) * 1000};
        evtimer_add(c->timer, &tv);
    }
}

/* A head we refuse (malformed, too large): a short answer, then close. */
static void h1_refuse(struct h1_conn *c, int status, const char *why)
{
    cm_debug("h1: refusing request: %d %s", status, why);
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %zu\r\n"
                        "connection: close\r\n\r\n%s\n",
                        status, tu_reason(status), strlen(why) + 1, why);
    h1_close_when_flushed(c);
}

static void h1_response_done(struct h1_conn *c)
{
    tu_resp_deinit(&c->resp);
    c->resp_started = false;
    if (!c->keep_alive || c->peer_eof) {
        h1_close_when_flushed(c);
        return;
    }
    c->state = H1_READING;
    llhttp_resume(&c->parser);
}

static void arm_ms(struct h1_conn *c, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Queue as much of the body as the output bound allows; finish the response at its end. */
static void h1_pump(struct h1_conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct tu_resp *r = &c->resp;
    bool chunked = !r->has_length;

    switch (r->kind) {
    case TU_BODY_NONE:
        h1_response_done(c);
        return;
    case TU_BODY_BUF:
        evbuffer_add(out, r->buf, (size_t)r->length);
        r->sent = r->length;
        break;
    case TU_BODY_PATTERN:
        while (r->sent < r->length && evbuffer_get_length(out) < TU_OUT_HIGH) {
            uint64_t left = r->length - r->sent;
            size_t n = left < TU_PATTERN_RUN ? (size_t)left : TU_PATTERN_RUN;
            if (chunked)
                evbuffer_add_printf(out, "%zx\r\n", n);
            evbuffer_add_reference(out, tu_pattern_at(r->sent), n, NULL, NULL);
            if (chunked)
                evbuffer_add(out, "\r\n", 2);
            r->sent += n;
        }
        break;
    case TU_BODY_SLOW: {
        uint8_t b[64];
        size_t n;
        while ((n = tu_resp_read(r, b, sizeof(b))) > 0)
            evbuffer_add(out, b, n);
        if (r->sent < r->length)
            arm_ms(c, r->slow_ms);
        break;
    }
    }
    if (r->sent == r->length) {
        if (chunked)
            evbuffer_add(out, "0\r\n\r\n", 5);
        h1_response_done(c);
    }
}

static void h1_send_head(struct h1_conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct tu_resp *r = &c->resp;

    tu_resp_build(&c->req, c->srv->name, "HTTP/1.1", r);
    c->resp_started = true;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nx-upstream: %s\r\n", r->status,
                        tu_reason(r->status), c->srv->name);
    if (r->content_type != NULL)
        evbuffer_add_printf(out, "content-type: %s\r\n", r->content_type);
    if (r->has_length)
        evbuffer_add_printf(out, "content-length: %llu\r\n", (unsigned long long)r->length);
    else if (r->status != 204 && r->status != 304)
        evbuffer_add_printf(out, "transfer-encoding: chunked\r\n");
    if (!c->keep_alive)
        evbuffer_add_printf(out, "connection: close\r\n");
    else if (c->parser.http_minor == 0)
        evbuffer_add_printf(out, "connection: keep-alive\r\n");
    evbuffer_add(out, "\r\n", 2);
    /* the body waits for the first tick */
    if (r->kind == TU_BODY_SLOW)
        arm_ms(c, r->slow_ms);
    else
        h1_pump(c);
}

static void h1_start_response(struct h1_conn *c)
{
    switch (c->req.route) {
    case TU_ROUTE_CLOSE:
        c->state = H1_DEAD;
        break;
    case TU_ROUTE_DELAY:
        arm_ms(c, c->req.ms);
        break;
    default:
        h1_send_head(c);
        break;
    }
}

/* Feed buffered input to the parser while no response is in progress. */
static void h1_parse(struct h1_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);

    while (c->state == H1_READING && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(in, -1, NULL, v, 8);
        size_t used = 0;
        bool paused = false;
        if (n > 8)
            n = 8;
        for (int i = 0; i < n && !paused; i++) {
            const char *base = v[i].iov_base;
            llhttp_errno_t e = llhttp_execute(&c->parser, base, v[i].iov_len);
            if (e == HPE_OK) {
                used += v[i].iov_len;
            } else if (e == HPE_PAUSED) {
                used += (size_t)(llhttp_get_error_pos(&c->parser) - base);
                paused = true;
            } else {
                evbuffer_drain(in, evbuffer_get_length(in));
                int status = c->err_status ? c->err_status : 400;
                h1_refuse(c, status, status == 400 ? llhttp_errno_name(e) : tu_reason(status));
                return;
            }
        }
        evbuffer_drain(in, used);
        if (paused)
            h1_start_response(c);
    }
}

static void h1_free(struct h1_conn *c)
{
    cm_list_remove(&c->link);
    bufferevent_free(c->bev);
    event_free(c->timer);
    tu_req_deinit(&c->req);
    tu_resp_deinit(&c->resp);
    free(c->acc);
    free(c->field);
    free(c);
}

/* What every callback does last: parse what can be parsed, free what is dead. */
static void h1_after(struct h1_conn *c)
{
    if (c->state == H1_READING)
        h1_parse(c);
    /* the peer is gone and every request it sent has been answered */
    if (c->state == H1_READING && c->peer_eof)
        c->state = H1_DEAD;
    if (c->state == H1_DEAD)
        h1_free(c);
}

static void h1_on_read(struct bufferevent *bev, void *arg)
{
    struct h1_conn *c = arg;
    if (c->state == H1_CLOSING)
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
    h1_after(c);
}

static void h1_on_write(struct bufferevent *bev, void *arg)
{
    struct h1_conn *c = arg;
    (void)bev;
    if (c->state == H1_RESPONDING && c->resp_started && c->resp.kind == TU_BODY_PATTERN)
        h1_pump(c);
    if (c->state == H1_CLOSING && !c->shut && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        h1_close_when_flushed(c);
    h1_after(c);
}

static void h1_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct h1_conn *c = arg;
    (void)bev;
    if (what & BEV_EVENT_EOF) {
        c->peer_eof = true;
        if (c->state == H1_CLOSING && c->shut)
            c->state = H1_DEAD;
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        c->state = H1_DEAD;
    }
    h1_after(c);
}

static void h1_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct h1_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == H1_CLOSING) {
        c->state = H1_DEAD; /* linger over */
    } else if (c->state == H1_RESPONDING && !c->resp_started) {
        h1_send_head(c); /* /delay elapsed */
    } else if (c->state == H1_RESPONDING && c->resp.kind == TU_BODY_SLOW) {
        c->resp.slow_ready++;
        h1_pump(c);
    }
    h1_after(c);
}

void tu_h1_accept(struct tu_server *srv, int fd)
{
    static bool settings_ready;
    if (!settings_ready) {
        llhttp_settings_init(&h1_settings);
        h1_settings.on_message_begin = on_message_begin;
        h1_settings.on_url = on_url;
        h1_settings.on_url_complete = on_url_complete;
        h1_settings.on_header_field = on_header_field;
        h1_settings.on_header_field_complete = on_header_field_complete;
        h1_settings.on_header_value = on_header_value;
        h1_settings.on_header_value_complete = on_header_value_complete;
        h1_settings.on_headers_complete = on_headers_complete;
        h1_settings.on_body = on_body;
        h1_settings.on_message_complete = on_message_complete;
        settings_ready = true;
    }
    struct h1_conn *c = cm_xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(srv->base, h1_on_timer, c);
    if (c->bev == NULL || c->timer == NULL)
        abort();
    llhttp_init(&c->parser, HTTP_REQUEST, &h1_settings);
    c->parser.data = c;
    c->state = H1_READING;
    cm_list_insert_tail(&srv->conns, &c->link);
    bufferevent_setcb(c->bev, h1_on_read, h1_on_write, h1_on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, TU_OUT_HIGH);
    bufferevent_setwatermark(c->bev, EV_WRITE, TU_OUT_LOW, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

void tu_h1_free_all(struct tu_server *srv)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &srv->conns)
    {
        h1_free(cm_container_of(pos, struct h1_conn, link));
    }
}
