/* HTTP/1.1 server codec: one per downstream connection speaking HTTP/1.x.
 *
 * Requests are handled one at a time: when a request is complete the parser
 * is paused, so pipelined requests wait in the input buffer until the
 * response to the current one has been queued (pipelining-safe, in order).
 * The request body streams to the upstream; the parser is paused when the
 * upstream side holds more than limits.buffer_bytes, and resumed when the
 * stream says it drained. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/h1.h"
#include "proxy/h1_common.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

enum h1s_state {
    H1S_IDLE = 0, /* between requests (keep-alive), idle timer armed */
    H1S_HEAD,     /* reading a request head, header deadline armed */
    H1S_BODY,     /* head handed to the stream, reading the body */
    H1S_WAIT,     /* request complete, waiting for the response to finish */
    H1S_CLOSING,  /* flushing the output, then close */
    H1S_TUNNEL    /* 101 sent: raw bytes both ways until both ends closed */
};

struct h1s {
    struct px_conn *c;
    struct px_io *io;
    llhttp_t parser;
    enum h1s_state state;
    struct px_stream *s; /* the current exchange, or NULL */
    struct h1_acc acc;
    struct px_timer timer; /* idle / header deadline */
    struct event *kick;    /* re-run the parser from the event loop */
    int err_status;        /* status for a parse error we raise ourselves */
    bool keep_alive;       /* this response may leave the connection open */
    bool chunked;          /* response body chunked toward the client */
    bool head_req;         /* HEAD: no response body */
    bool resp_done;        /* response fully queued */
    bool req_done;         /* request fully read */
    bool parser_paused;    /* llhttp returned HPE_PAUSED, resume before executing */
    bool body_paused;      /* paused for backpressure */
    bool peer_eof;         /* the client half-closed */
    bool req_eof_sent;     /* tunnel: the client's half-close went to the stream */
    bool freeing;
    const char *err_reason; /* static text for err_status (llhttp overwrites its own) */
    size_t chunk_ext_bytes; /* chunk extension bytes of the current chunk-size line */
    const char *exec_base;  /* the buffer llhttp_execute runs on now */
    char prev_tail;         /* the last byte llhttp consumed before exec_base */
    struct cm_list link;
};

static struct cm_list servers = {&servers, &servers};
static llhttp_settings_t settings;
static bool settings_ready;

static void process(struct h1s *h);
static void tunnel_pump(struct h1s *h);
static void close_conn(struct h1s *h);
static int refuse(struct h1s *h, int status, const char *why);

static const struct px_limits *limits(const struct h1s *h)
{
    return &h->c->srv->cfg->limits;
}

static void arm_timer(struct h1s *h, uint32_t ms)
{
    px_timer_set(&h->timer, ms);
}

static void kick(struct h1s *h)
{
    event_active(h->kick, EV_TIMEOUT, 0);
}

/* ---- response side: px_side_ops for the stream --------------------------- */

static struct h1s *of(struct px_stream *s)
{
    return s->ctx[PX_DOWN];
}

/* 101 Switching Protocols (the stream checked it answers our Upgrade and
 * kept the Upgrade field): the head, then the connection is a tunnel. */
static void send_switching(struct h1s *h, struct px_stream *s)
{
    struct px_h1_head w;
    px_h1_head_begin(&w, px_io_output(h->io), px_h1_headers_size(&s->resp) + 64);
    px_h1_put(&w, "HTTP/1.1 101 Switching Protocols\r\n", 34);
    px_h1_put_headers(&w, &s->resp);
    px_h1_put(&w, "connection: upgrade\r\n\r\n", 23);
    px_h1_head_end(&w);
    h->state = H1S_TUNNEL;
    h->keep_alive = false;
    h->chunked = h->head_req = false;
    h->req_done = false; /* the client's bytes follow, then its half-close */
    px_timer_clear(&h->timer);
    kick(h); /* bytes the client sent after its request (held) go now */
}

static void op_send_head(struct px_stream *s)
{
    struct h1s *h = of(s);
    struct evbuffer *out = px_io_output(h->io);
    const struct px_msg *r = &s->resp;
    if (s->tunnel) {
        send_switching(h, s);
        return;
    }
    int minor = s->req.http_minor;
    bool no_body = h->head_req || r->status == 204 || r->status == 304 ||
                   (r->status >= 100 && r->status < 200);

    /* A locally answered request whose body was not read kills the
     * connection: the unread bytes cannot be told from the next request. */
    if (!h->req_done && !s->req.end_stream)
        h->keep_alive = false; /* a body is still coming: we cannot tell where it ends */
    if (h->c->srv->draining)
        h->keep_alive = false;

    const char *reason = px_http_reason(r->status);
    struct px_h1_head w;
    px_h1_head_begin(&w, out, strlen(reason) + px_h1_headers_size(r) + 128);
    px_h1_put(&w, minor ? "HTTP/1.1 " : "HTTP/1.0 ", 9);
    px_h1_put_u64(&w, (uint64_t)(r->status >= 0 ? r->status : 0));
    px_h1_put(&w, " ", 1);
    px_h1_put_str(&w, reason);
    px_h1_put(&w, "\r\n", 2);
    px_h1_put_headers(&w, r);
    h->chunked = false;
    bool length = false;
    if (no_body)
        length = r->content_length >= 0 && r->status != 204 && r->status != 304;
    else if (r->content_length >= 0)
        length = true;
    else if (minor >= 1) {
        px_h1_put(&w, "transfer-encoding: chunked\r\n", 28);
        h->chunked = true;
    } else {
        h->keep_alive = false; /* HTTP/1.0: the body ends with the connection */
    }
    if (length) {
        px_h1_put(&w, "content-length: ", 16);
        px_h1_put_u64(&w, (uint64_t)r->content_length);
        px_h1_put(&w, "\r\n", 2);
    }
    if (!h->keep_alive)
        px_h1_put(&w, "connection: close\r\n", 19);
    else if (minor == 0)
        px_h1_put(&w, "connection: keep-alive\r\n", 24);
    px_h1_put(&w, "\r\n", 2);
    px_h1_head_end(&w);
}

static void op_send_data(struct px_stream *s, const uint8_t *data, size_t len)
{
    struct h1s *h = of(s);
    if (h->head_req)
        return;
    px_h1_write_body(px_io_output(h->io), h->chunked, data, len);
}

static void op_send_end(struct px_stream *s)
{
    struct h1s *h = of(s);
    if (h->state == H1S_TUNNEL) {
        px_io_shutdown_write(h->io); /* the app half-closed: after its bytes */
        h->resp_done = true;
        kick(h);
        return;
    }
    if (h->chunked && !h->head_req)
        px_h1_write_last_chunk(px_io_output(h->io));
    h->resp_done = true;
    kick(h); /* finish the exchange from the event loop, not from here */
}

static size_t op_pending(struct px_stream *s)
{
    return evbuffer_get_length(px_io_output(of(s)->io));
}

static void op_resume(struct px_stream *s)
{
    struct h1s *h = of(s);
    if (px_h1_resume_read(h->io, &h->body_paused))
        kick(h);
}

static void op_abort(struct px_stream *s)
{
    struct h1s *h = of(s);
    /* HTTP/1.1 has no way to abort one response but closing */
    h->s = NULL;
    px_stream_detach(s, PX_DOWN);
    h->keep_alive = false;
    close_conn(h);
}

static const struct px_side_ops h1s_ops = {
    .name = "h1-server",
    .send_head = op_send_head,
    .send_data = op_send_data,
    .send_end = op_send_end,
    .pending = op_pending,
    .resume = op_resume,
    .abort = op_abort,
};

/* ---- local error answers ------------------------------------------------- */

/* Answer an error before (or instead of) a stream, then close. */
static void reply_error(struct h1s *h, int status, const char *body)
{
    if (h->s != NULL && !h->s->head_sent[PX_DOWN]) {
        struct px_stream *s = h->s;
        h->keep_alive = false;
        if (!s->attached[PX_UP] && s->state == PX_STREAM_HEAD) {
            /* never reached the stream logic: answer without it (the
             * access log line still records the status we answer) */
            h->s = NULL;
            s->resp.status = status;
            s->head_sent[PX_DOWN] = true;
            px_stream_detach(s, PX_DOWN);
        } else {
            px_stream_respond(s, status, body);
            h->state = H1S_CLOSING;
            return;
        }
    } else if (h->s != NULL) {
        /* response already under way: all we can do is close */
        struct px_stream *s = h->s;
        h->s = NULL;
        px_stream_on_error(s, PX_DOWN, PX_CAUSE_DOWNSTREAM_RESET);
        px_stream_detach(s, PX_DOWN);
        close_conn(h);
        return;
    }
    struct evbuffer *out = px_io_output(h->io);
    size_t blen = strlen(body);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %zu\r\n"
                        "server: remora\r\nconnection: close\r\n\r\n%s\n",
                        status, px_http_reason(status), blen + 1, body);
    h->state = H1S_CLOSING;
    px_io_read_enable(h->io, false);
    kick(h);
}

/* ---- llhttp callbacks ------------------------------------------------------ */

static int on_message_begin(llhttp_t *p)
{
    struct h1s *h = p->data;
    h->state = H1S_HEAD;
    h->s = px_stream_new(h->c, &h1s_ops, h);
    h->resp_done = h->req_done = false;
    h->keep_alive = true;
    h->chunked = h->head_req = false;
    h->chunk_ext_bytes = 0;
    px_h1_acc_reset(&h->acc);
    arm_timer(h, limits(h)->header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct h1s *h = p->data;
    if (!px_h1_acc_append(&h->acc, at, len, limits(h)->max_header_bytes)) {
        h->err_status = 414;
        return HPE_USER;
    }
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    struct h1s *h = p->data;
    if (h->acc.len > 0 && memchr(h->acc.buf, '\0', h->acc.len) != NULL)
        return refuse(h, 400, "invalid request target");
    h->s->req.path = px_arena_strndup(&h->s->arena, h->acc.buf ? h->acc.buf : "", h->acc.len);
    px_h1_acc_reset(&h->acc);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct h1s *h = p->data;
    if (!px_h1_acc_append(&h->acc, at, len, limits(h)->max_header_bytes)) {
        h->err_status = 431;
        return HPE_USER;
    }
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct h1s *h = p->data;
    h->acc.name_len = h->acc.len;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct h1s *h = p->data;
    const struct px_limits *lim = limits(h);
    int st = px_h1_acc_take_header(&h->acc, &h->s->arena, &h->s->req, lim->max_header_bytes,
                                   lim->max_headers);
    if (st != 0)
        return refuse(h, st, "invalid header field (name or value)");
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct h1s *h = p->data;
    /* llhttp takes a line starting with whitespace as the value's
     * continuation (obs-fold) and restarts the value span there: refuse it
     * (RFC 9112 5.2), a hop that does not fold would see another header */
    if (len > 0 && (at[0] == ' ' || at[0] == '\t')) {
        char before = at > h->exec_base ? at[-1] : h->prev_tail;
        if (before == '\n')
            return refuse(h, 400, "obs-fold (a header line starting with whitespace)");
    }
    /* same accumulator, after the name */
    return on_header_field(p, at, len);
}

/* Refuse the request being parsed: parse_error() answers `status` and logs
 * `why` (a static string); nothing has been forwarded. */
static int refuse(struct h1s *h, int status, const char *why)
{
    h->err_status = status;
    h->err_reason = why;
    return HPE_USER;
}

/* The request target and Host decide the authority the policy and the app
 * both see (RFC 9112 3.2, 3.2.2): one Host field line with a valid value; an
 * absolute-form target's authority wins over Host; the target goes on in
 * origin form and Host is rewritten from the authority (op_send_head). */
static int take_authority(struct h1s *h, llhttp_t *p, struct px_msg *r)
{
    const struct px_hdr *host = NULL;
    for (uint32_t i = 0; i < r->nhdrs; i++) {
        if (!PX_HDR_IS(&r->hdrs[i], "host"))
            continue;
        if (host != NULL) {
            r->authority = host->value; /* for the access log only: refused */
            return refuse(h, 400, "more than one Host");
        }
        host = &r->hdrs[i];
    }
    if (host == NULL && r->http_minor >= 1)
        return refuse(h, 400, "no Host in an HTTP/1.1 request"); /* RFC 9112 3.2 */
    if (host != NULL && !px_http_valid_authority(host->value, host->valuelen)) {
        r->authority = host->value; /* for the access log only: refused */
        return refuse(h, 400, "invalid Host");
    }
    const char *t = r->path ? r->path : "";
    struct px_target tg;
    switch (px_http_parse_target(t, strlen(t), p->method == HTTP_OPTIONS, &tg)) {
    case PX_TARGET_INVALID:
        return refuse(h, 400, "invalid request target");
    case PX_TARGET_ABSOLUTE: {
        r->authority = px_arena_strndup(&h->s->arena, t + tg.auth_off, tg.auth_len);
        r->scheme = tg.scheme;
        const char *rest = t + tg.path_off;
        if (rest[0] == '/')
            r->path = rest;
        else { /* "" or "?query": the origin form starts with '/' */
            size_t n = strlen(rest);
            char *o = px_arena_alloc(&h->s->arena, n + 2);
            o[0] = '/';
            memcpy(o + 1, rest, n + 1);
            r->path = o;
        }
        break;
    }
    default:
        r->authority = host != NULL ? host->value : NULL;
        break;
    }
    px_msg_remove(r, "host");
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct h1s *h = p->data;
    struct px_stream *s = h->s;
    struct px_msg *r = &s->req;
    px_timer_clear(&h->timer);

    r->method = llhttp_method_name((llhttp_method_t)p->method);
    r->http_minor = p->http_minor;
    r->scheme = "http";
    if (p->http_major != 1) {
        h->err_status = 505;
        return HPE_USER;
    }
    if (p->method == HTTP_CONNECT) {
        h->err_status = 405;
        return HPE_USER;
    }
    /* Everything that decides where this request ends and where it goes is
     * checked here, before the stream sees the head: once it is forwarded, a
     * refusal can no longer keep it from the app. */
    struct px_h1_framing fr;
    int st;
    const char *why = px_h1_check_framing(r, r->http_minor, &fr, &st);
    if (why != NULL)
        return refuse(h, st, why);
    if (fr.chunked != ((p->flags & F_CHUNKED) != 0) ||
        (!fr.chunked && fr.content_length >= 0 && (uint64_t)fr.content_length != p->content_length))
        return refuse(h, 400, "framing the parser reads differently"); /* never expected */
    if (take_authority(h, p, r) != 0)
        return HPE_USER;
    h->keep_alive = llhttp_should_keep_alive(p);
    h->head_req = p->method == HTTP_HEAD;
    r->content_length = fr.chunked ? -1 : fr.content_length;
    r->end_stream = !fr.chunked && r->content_length <= 0;
    px_msg_remove(r, "content-length");
    /* Expect: 100-continue is answered by us once the request is accepted */
    const struct px_hdr *expect = px_msg_find(r, "expect");
    if (expect != NULL && strncasecmp(expect->value, "100-continue", 12) == 0) {
        s->expect_continue = true;
        px_msg_remove(r, "expect");
    }
    s->upgrade_asked =
        p->upgrade != 0; /* Upgrade + Connection: upgrade (or CONNECT: refused above) */
    /* An Upgrade request goes on as one (the stream decides: s->upgrade);
     * bytes behind it stay unparsed in the input until the answer: after a
     * 101 they are tunnel data (tunnel_pump), else the next request. */
    h->state = H1S_BODY;
    px_stream_on_req_head(s);
    if (h->s == s && s->state == PX_STREAM_FORWARD && s->expect_continue && !r->end_stream &&
        !s->head_sent[PX_DOWN])
        evbuffer_add(px_io_output(h->io), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    return 0;
}

/* Chunk extensions are skipped (the body is re-chunked without them), but
 * bounded: a chunk-size line is not a place to stream data through. */
#define MAX_CHUNK_EXT_BYTES 4096
static int on_chunk_ext(llhttp_t *p, const char *at, size_t len)
{
    struct h1s *h = p->data;
    (void)at;
    h->chunk_ext_bytes += len;
    if (h->chunk_ext_bytes > MAX_CHUNK_EXT_BYTES)
        return refuse(h, 400, "chunk extensions too long");
    return 0;
}

static int on_chunk_complete(llhttp_t *p)
{
    struct h1s *h = p->data;
    h->chunk_ext_bytes = 0;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct h1s *h = p->data;
    if (h->s == NULL || len == 0) /* len 0: the input-less run after a resume */
        return 0;
    if (px_stream_on_req_data(h->s, (const uint8_t *)at, len)) {
        h->body_paused = true;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct h1s *h = p->data;
    h->req_done = true;
    if (h->state != H1S_CLOSING)
        h->state = H1S_WAIT;
    if (h->s != NULL)
        px_stream_on_req_end(h->s);
    /* Stop here: a pipelined request waits until this response is queued. */
    return HPE_PAUSED;
}

static void init_settings(void)
{
    if (settings_ready)
        return;
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_url_complete = on_url_complete;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    settings.on_chunk_extension_name = on_chunk_ext;
    settings.on_chunk_extension_value = on_chunk_ext;
    settings.on_chunk_complete = on_chunk_complete;
    settings_ready = true;
}

/* ---- connection life ------------------------------------------------------- */

static void free_now(struct h1s *h)
{
    if (h->s != NULL) {
        struct px_stream *s = h->s;
        h->s = NULL;
        px_stream_on_error(s, PX_DOWN, PX_CAUSE_DOWNSTREAM_RESET);
        px_stream_detach(s, PX_DOWN);
    }
    cm_list_remove(&h->link);
    px_timer_free(&h->timer);
    event_free(h->kick);
    px_h1_acc_free(&h->acc);
    px_io_free(h->io);
    h->c->io = NULL;
    px_conn_free(h->c);
    free(h);
}

/* Mark closing; the object is freed from the kick event, never from inside
 * a callback that may still be using it. */
static void close_conn(struct h1s *h)
{
    if (h->freeing)
        return;
    h->freeing = true;
    px_io_read_enable(h->io, false);
    kick(h);
}

/* The response is queued: finish this exchange and go on with the next. */
static void finish_exchange(struct h1s *h)
{
    struct px_stream *s = h->s;
    if (s != NULL) {
        h->s = NULL;
        if (!h->req_done)
            px_stream_on_error(s, PX_DOWN, PX_CAUSE_DOWNSTREAM_RESET);
        px_stream_detach(s, PX_DOWN);
    }
    if (!h->keep_alive || !h->req_done || h->c->srv->draining) {
        h->state = H1S_CLOSING;
        px_io_read_enable(h->io, false);
        return;
    }
    h->state = H1S_IDLE;
    h->resp_done = h->req_done = false;
    arm_timer(h, limits(h)->idle_timeout_ms);
    if (!h->peer_eof)
        px_io_read_enable(h->io, true);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct h1s *h = arg;
    (void)fd;
    (void)what;
    if (h->freeing) {
        free_now(h);
        return;
    }
    if (h->state == H1S_TUNNEL) {
        tunnel_pump(h);
        return;
    }
    if (h->resp_done && h->s != NULL)
        finish_exchange(h);
    if (h->state == H1S_CLOSING) {
        if (evbuffer_get_length(px_io_output(h->io)) == 0)
            close_conn(h);
        return; /* on_write closes once flushed */
    }
    process(h);
    if (h->state == H1S_IDLE && h->peer_eof && evbuffer_get_length(px_io_input(h->io)) == 0)
        close_conn(h);
}

static void parse_error(struct h1s *h, llhttp_errno_t err)
{
    int status = h->err_status ? h->err_status : 400;
    const char *why;
    char buf[160];
    switch (status) {
    case 431:
        why = "request header fields too large";
        px_metrics.header_too_big++;
        break;
    case 414:
        why = "request target too long";
        px_metrics.header_too_big++;
        break;
    case 405:
        why = "CONNECT is not supported";
        break;
    case 505:
        why = "HTTP version not supported";
        break;
    default:
        /* name the rule that was broken: the client's developer reads this */
        snprintf(buf, sizeof(buf), "%s: %s",
                 status == 501 ? "not implemented" : "malformed request",
                 h->err_reason != NULL                         ? h->err_reason
                 : llhttp_get_error_reason(&h->parser) != NULL ? llhttp_get_error_reason(&h->parser)
                                                               : llhttp_errno_name(err));
        why = buf;
        px_metrics.bad_request++;
        break;
    }
    cm_debug("h1 conn %llu: %s (%s)", (unsigned long long)h->c->id, why, llhttp_errno_name(err));
    reply_error(h, status, why);
}

/* After a 101: hand the client's bytes to the stream as they come (first
 * those it sent before the 101, held unparsed); after its EOF and its last
 * byte, the half-close. Both ways ended: the exchange and the connection
 * are over. */
static void tunnel_pump(struct h1s *h)
{
    struct evbuffer *in = px_io_input(h->io);
    while (h->s != NULL && !h->body_paused && !h->freeing) {
        if (!px_h1_tunnel_step(h->io, h->s, PX_DOWN, &h->body_paused))
            break;
    }
    if (h->s == NULL || h->freeing)
        return;
    if (h->peer_eof && !h->req_eof_sent && evbuffer_get_length(in) == 0) {
        h->req_eof_sent = true;
        px_stream_on_req_end(h->s);
    }
    if (h->req_eof_sent && h->resp_done) {
        struct px_stream *s = h->s;
        h->s = NULL;
        px_stream_detach(s, PX_DOWN);
        h->state = H1S_CLOSING;
        if (evbuffer_get_length(px_io_output(h->io)) == 0)
            close_conn(h);
    }
}

/* Feed buffered input to llhttp until it pauses or the input is empty. */
static void process(struct h1s *h)
{
    struct evbuffer *in = px_io_input(h->io);
    if (h->state == H1S_TUNNEL) {
        tunnel_pump(h);
        return;
    }
    while (!h->freeing && h->state != H1S_CLOSING && !h->body_paused) {
        if (h->state == H1S_WAIT)
            return; /* next request waits for this response */
        struct evbuffer_iovec v;
        if (!px_h1_next_run(&h->parser, &h->parser_paused, in, &v))
            return;
        const char *data = v.iov_base;
        h->exec_base = data;
        llhttp_errno_t err = llhttp_execute(&h->parser, data, v.iov_len);
        size_t used = v.iov_len;
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            used = (size_t)(llhttp_get_error_pos(&h->parser) - data);
            if (err == HPE_PAUSED_UPGRADE)
                llhttp_resume_after_upgrade(&h->parser);
            else
                h->parser_paused = true;
        } else if (err != HPE_OK) {
            evbuffer_drain(in, v.iov_len);
            parse_error(h, err);
            return;
        }
        if (used > 0)
            h->prev_tail = data[used - 1];
        evbuffer_drain(in, used);
        if (h->body_paused)
            px_io_read_enable(h->io, false);
    }
}

static void on_read(struct px_io *io, void *arg)
{
    struct h1s *h = arg;
    (void)io;
    if (h->state == H1S_IDLE)
        px_timer_clear(&h->timer);
    process(h);
}

static void on_write(struct px_io *io, void *arg)
{
    struct h1s *h = arg;
    (void)io;
    if (h->state == H1S_CLOSING) {
        if (evbuffer_get_length(px_io_output(h->io)) == 0)
            close_conn(h);
        return;
    }
    if (h->s != NULL && h->s->paused[PX_UP])
        px_stream_on_drain(h->s, PX_DOWN);
}

static void on_event(struct px_io *io, int what, void *arg)
{
    struct h1s *h = arg;
    (void)io;
    if ((what & PX_IO_EOF) && h->state == H1S_TUNNEL) {
        /* the client half-closed the tunnel; the app may still answer */
        h->peer_eof = true;
        px_io_read_enable(h->io, false);
        tunnel_pump(h);
        return;
    }
    if (what & PX_IO_EOF) {
        /* Half-close from the client: it may still read the response. */
        h->peer_eof = true;
        if (h->state == H1S_WAIT || (h->state == H1S_CLOSING && h->s != NULL)) {
            px_io_read_enable(h->io, false);
            return;
        }
        if (h->state == H1S_BODY || h->state == H1S_HEAD) {
            llhttp_errno_t err = llhttp_finish(&h->parser);
            (void)err;
            px_metrics.downstream_resets++;
        }
    }
    close_conn(h);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct h1s *h = arg;
    (void)fd;
    (void)what;
    if (!px_timer_due(&h->timer))
        return;
    if (h->state == H1S_HEAD) {
        px_metrics.header_timeout++;
        cm_debug("h1 conn %llu: request head not complete in time", (unsigned long long)h->c->id);
        reply_error(h, 408, "request header timeout");
        return;
    }
    if (h->state == H1S_IDLE)
        close_conn(h);
}

void px_h1_server_start(struct px_conn *c)
{
    init_settings();
    struct h1s *h = cm_xcalloc(1, sizeof(*h));
    h->c = c;
    h->io = c->io;
    c->handler = h;
    llhttp_init(&h->parser, HTTP_REQUEST, &settings);
    h->parser.data = h;
    px_timer_init(&h->timer, c->srv->base, on_timer, h);
    h->kick = event_new(c->srv->base, -1, 0, on_kick, h);
    h->state = H1S_IDLE;
    cm_list_insert_tail(&servers, &h->link);
    uint32_t bound = limits(h)->buffer_bytes;
    px_io_set_write_lowat(h->io, bound / 2);
    px_io_set_read_limit(h->io, bound);
    px_io_setcb(h->io, on_read, on_write, on_event, h);
    arm_timer(h, limits(h)->header_timeout_ms);
    process(h); /* the detected bytes are already buffered */
}

void px_h1_server_drain(void)
{
    struct cm_list *n, *t;
    cm_list_foreach_safe(n, t, &servers)
    {
        struct h1s *h = cm_container_of(n, struct h1s, link);
        if (h->state == H1S_IDLE)
            close_conn(h);
        /* others answer with "connection: close" (op_send_head) and close */
    }
}

void px_h1_server_shutdown(void)
{
    while (!cm_list_empty(&servers))
        free_now(cm_container_of(servers.next, struct h1s, link));
}
