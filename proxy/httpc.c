/* px_httpc (proxy/httpc.h; docs/internals/httpc.md): one request, one
 * connection. connect -> [TLS handshake] -> write the request -> feed the
 * answer to llhttp as it arrives -> done at the end of the message (or of
 * the status line), at a close, an error or the deadline. */
#include "proxy/httpc.h"

#include <errno.h>
#include <event2/buffer.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/xalloc.h"
#include "proxy/http.h"
#include "proxy/httpc_int.h"
#include "proxy/io.h"

#define HTTPC_TIMEOUT_MS   10000
#define HTTPC_MAX_HEAD     (16 * 1024)
#define HTTPC_MAX_BODY     (256 * 1024)
#define HTTPC_READ_LIMIT   (64 * 1024) /* input held at once: it is parsed and drained */
#define HTTPC_MAX_REQ_HEAD (64 * 1024) /* our own request's head */

enum httpc_state {
    HC_CONNECTING = 0, /* TCP connect in progress (the request is queued when plain) */
    HC_HANDSHAKE,      /* TLS handshake: the request is written when it completes */
    HC_WAITING,        /* the request is out (or queued): parsing the answer */
    HC_DONE            /* cb called (or cancelled); freed from the reap event */
};

/* The answer side: llhttp and what its callbacks keep, bounded. */
struct px_httpc_answer {
    llhttp_t parser;
    bool status_only;
    bool got_bytes; /* anything at all arrived */
    bool final;     /* the final (non-1xx) answer is complete (or its status line, status_only) */
    int result;     /* PX_HTTPC_MORE, _DONE, _FAILED: the answer's fate, once settled */
    struct cm_buf head; /* "name\0value\0" per field, names lower-cased */
    size_t name_off[PX_HTTPC_MAX_HEADERS], value_off[PX_HTTPC_MAX_HEADERS];
    size_t nfields, mark;
    struct px_httpc_hdr hdrs[PX_HTTPC_MAX_HEADERS]; /* filled by px_httpc_answer_result */
    struct cm_buf body;
    char err[512];
};

struct px_httpc {
    struct event_base *base;
    struct px_io *io;
    enum httpc_state state;
    px_httpc_cb cb;
    void *arg;
    struct cm_buf req; /* the request bytes, until written */
    bool tls;
    bool connected; /* the TCP connect completed */
    uint32_t timeout_ms;
    uint64_t deadline_us;
    struct event *reap;
    struct px_httpc_answer *ans;
};

static const llhttp_settings_t *settings(void);

/* Forget the request bytes: they may hold a bearer token (the CA's). */
static void wipe_request(struct px_httpc *c)
{
    if (c->req.data != NULL)
        explicit_bzero(c->req.data, c->req.len);
    cm_buf_free(&c->req);
}

/* ---- finishing ------------------------------------------------------------------- */

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    struct px_httpc *c = arg;
    (void)fd;
    (void)what;
    px_io_free(c->io);
    event_free(c->reap);
    wipe_request(c);
    px_httpc_answer_free(c->ans);
    free(c);
}

/* Call cb once (status 0 with err, or the answer) and free on the next loop
 * turn: we are inside one of the io's callbacks. */
static void finish(struct px_httpc *c, int status, const char *err)
{
    if (c->state == HC_DONE)
        return;
    c->state = HC_DONE;
    px_io_read_enable(c->io, false);
    px_io_set_timeout(c->io, 0);
    struct px_httpc_resp r;
    px_httpc_answer_outcome(c->ans, status != 0, err, &r);
    if (c->cb != NULL)
        c->cb(&r, c->arg);
    event_active(c->reap, EV_TIMEOUT, 0);
}

/* ---- llhttp callbacks: the answer's fields and body, bounded ----------------------- */

static int refuse(struct px_httpc_answer *a, const char *what)
{
    snprintf(a->err, sizeof(a->err), "%s", what);
    return HPE_USER;
}

static int add_head(struct px_httpc_answer *a, const char *at, size_t len, bool lower)
{
    size_t from = a->head.len;
    if (cm_buf_add(&a->head, at, len) != 0) {
        snprintf(a->err, sizeof(a->err), "answer's header fields over %zu bytes", a->head.max);
        return HPE_USER;
    }
    if (lower)
        for (size_t i = from; i < a->head.len; i++)
            if (a->head.data[i] >= 'A' && a->head.data[i] <= 'Z')
                a->head.data[i] = (char)(a->head.data[i] - 'A' + 'a');
    return 0;
}

static int on_status_complete(llhttp_t *p)
{
    struct px_httpc_answer *a = p->data;
    if (a->status_only && (p->status_code >= 200 || p->status_code == 101)) {
        a->final = true;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    return add_head(p->data, at, len, true);
}

static int on_header_field_complete(llhttp_t *p)
{
    struct px_httpc_answer *a = p->data;
    if (a->nfields == PX_HTTPC_MAX_HEADERS)
        return refuse(a, "answer has too many header fields");
    if (a->head.len == a->mark) /* llhttp 8.1 lets ":v" through after a bare CR */
        return refuse(a, "malformed answer: a header field without a name");
    a->name_off[a->nfields] = a->mark;
    int r = add_head(a, "", 1, false);
    a->value_off[a->nfields] = a->head.len;
    return r;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    return add_head(p->data, at, len, false);
}

static int on_header_value_complete(llhttp_t *p)
{
    struct px_httpc_answer *a = p->data;
    int r = add_head(a, "", 1, false);
    a->nfields++;
    a->mark = a->head.len;
    return r;
}

static int on_headers_complete(llhttp_t *p)
{
    struct px_httpc_answer *a = p->data;
    if (p->status_code < 200 && p->status_code != 101) {
        /* an interim answer (100 Continue, 103 Early Hints): its fields are not the answer's */
        cm_buf_reset(&a->head);
        a->nfields = 0;
        a->mark = 0;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct px_httpc_answer *a = p->data;
    if (cm_buf_add(&a->body, at, len) != 0) {
        snprintf(a->err, sizeof(a->err), "answer's body over %zu bytes", a->body.max);
        return HPE_USER;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct px_httpc_answer *a = p->data;
    if (p->status_code < 200 && p->status_code != 101)
        return 0; /* the final answer follows */
    a->final = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t *settings(void)
{
    static llhttp_settings_t s;
    static bool ready;
    if (!ready) {
        llhttp_settings_init(&s);
        s.on_status_complete = on_status_complete;
        s.on_header_field = on_header_field;
        s.on_header_field_complete = on_header_field_complete;
        s.on_header_value = on_header_value;
        s.on_header_value_complete = on_header_value_complete;
        s.on_headers_complete = on_headers_complete;
        s.on_body = on_body;
        s.on_message_complete = on_message_complete;
        ready = true;
    }
    return &s;
}

/* After llhttp_execute/llhttp_finish returned e: settle the answer's fate. */
static int settle(struct px_httpc_answer *a, llhttp_errno_t e)
{
    if (a->final) {
        a->result = PX_HTTPC_DONE;
    } else if (a->err[0] != '\0') {
        /* a callback refused (llhttp reports a *_complete one as its own code) */
        a->result = PX_HTTPC_FAILED;
    } else if (e != HPE_OK) {
        snprintf(a->err, sizeof(a->err), "malformed answer: %s",
                 llhttp_get_error_reason(&a->parser));
        a->result = PX_HTTPC_FAILED;
    }
    return a->result;
}

struct px_httpc_answer *px_httpc_answer_new(size_t max_head, size_t max_body, bool status_only)
{
    struct px_httpc_answer *a = cm_xcalloc(1, sizeof(*a));
    a->status_only = status_only;
    cm_buf_init(&a->head, max_head ? max_head : HTTPC_MAX_HEAD);
    cm_buf_init(&a->body, max_body ? max_body : HTTPC_MAX_BODY);
    llhttp_init(&a->parser, HTTP_RESPONSE, settings());
    a->parser.data = a;
    return a;
}

int px_httpc_answer_feed(struct px_httpc_answer *a, const char *data, size_t len)
{
    if (a->result != PX_HTTPC_MORE || len == 0)
        return a->result;
    a->got_bytes = true;
    return settle(a, llhttp_execute(&a->parser, data, len));
}

int px_httpc_answer_eof(struct px_httpc_answer *a)
{
    if (a->result != PX_HTTPC_MORE)
        return a->result;
    if (!a->got_bytes) {
        snprintf(a->err, sizeof(a->err), "the server closed the connection without an answer");
        a->result = PX_HTTPC_FAILED;
        return a->result;
    }
    llhttp_errno_t e = llhttp_finish(&a->parser);
    /* a body delimited by the close ends here; anything else was cut */
    if (settle(a, e == HPE_INVALID_EOF_STATE ? HPE_OK : e) == PX_HTTPC_MORE) {
        snprintf(a->err, sizeof(a->err),
                 "the server closed the connection before the end of the answer");
        a->result = PX_HTTPC_FAILED;
    }
    return a->result;
}

void px_httpc_answer_result(struct px_httpc_answer *a, struct px_httpc_resp *r)
{
    memset(r, 0, sizeof(*r));
    r->body = &a->body;
    r->hdrs = a->hdrs;
    if (a->result == PX_HTTPC_FAILED) {
        r->err = a->err;
        return;
    }
    if (a->result != PX_HTTPC_DONE)
        return;
    r->status = a->parser.status_code;
    for (size_t i = 0; i < a->nfields; i++) {
        a->hdrs[i].name = a->head.data + a->name_off[i];
        a->hdrs[i].value = a->head.data + a->value_off[i];
    }
    r->nhdrs = a->nfields;
}

void px_httpc_answer_outcome(struct px_httpc_answer *a, bool ok, const char *err,
                             struct px_httpc_resp *r)
{
    px_httpc_answer_result(a, r);
    if (!ok) {
        r->status = 0;
        r->err = err;
        r->nhdrs = 0;
    }
}

void px_httpc_answer_free(struct px_httpc_answer *a)
{
    if (a == NULL)
        return;
    cm_buf_free(&a->head);
    cm_buf_free(&a->body);
    free(a);
}

/* ---- px_io callbacks --------------------------------------------------------------- */

/* The answer's fate settled: tell the caller. */
static void answered(struct px_httpc *c, int result)
{
    if (result == PX_HTTPC_DONE)
        finish(c, 1, NULL);
    else if (result == PX_HTTPC_FAILED)
        finish(c, 0, c->ans->err);
}

static void on_read(struct px_io *io, void *arg)
{
    struct px_httpc *c = arg;
    struct evbuffer *in = px_io_input(io);
    while (c->state != HC_DONE && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        int r = px_httpc_answer_feed(c->ans, v.iov_base, v.iov_len);
        evbuffer_drain(in, v.iov_len);
        answered(c, r);
    }
}

static void send_request(struct px_httpc *c)
{
    px_io_write(c->io, c->req.data, c->req.len);
    wipe_request(c);
    c->state = HC_WAITING;
}

static void on_event(struct px_io *io, int what, void *arg)
{
    struct px_httpc *c = arg;
    if (c->state == HC_DONE)
        return;
    if (what & PX_IO_CONNECTED) {
        /* connecting spent the timer: the rest of the one deadline */
        uint64_t now = cm_mono_us();
        uint64_t left = c->deadline_us > now ? (c->deadline_us - now + 999) / 1000 : 1;
        px_io_set_timeout(io, (uint32_t)left);
        c->connected = true;
        if (c->tls)
            c->state = HC_HANDSHAKE;
        return;
    }
    if (what & PX_IO_HANDSHAKE) {
        send_request(c);
        return;
    }
    if (what & PX_IO_EOF) {
        answered(c, px_httpc_answer_eof(c->ans));
        return;
    }
    if (what & PX_IO_TIMEOUT) {
        char e[64];
        snprintf(e, sizeof(e), "no complete answer within %u ms", (unsigned)c->timeout_ms);
        finish(c, 0, e);
        return;
    }
    char e[640];
    px_httpc_io_error(io, c->connected, e, sizeof(e));
    finish(c, 0, e);
}

/* ---- the request ------------------------------------------------------------------- */

static bool valid_target(const char *t)
{
    if (t == NULL || t[0] != '/')
        return false;
    for (; *t; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f)
            return false;
    return true;
}

static bool valid_field(const char *name, const char *value)
{
    return name != NULL && value != NULL && px_http_valid_name(name, strlen(name)) &&
           px_http_valid_value(value, strlen(value));
}

/* The request's bytes into *out (initialised here); false when a part is
 * not valid HTTP. keep_alive: no "Connection: close" (httpc_pool.c). */
bool px_httpc_build(struct cm_buf *out, const struct px_httpc_req *rq, bool keep_alive)
{
    cm_buf_init(out, 0);
    if (rq->method == NULL || !px_http_valid_name(rq->method, strlen(rq->method)) ||
        !valid_target(rq->target) ||
        (rq->host != NULL && !px_http_valid_value(rq->host, strlen(rq->host))))
        return false;
    if (rq->body != NULL && rq->body_len > SIZE_MAX - HTTPC_MAX_REQ_HEAD)
        return false;
    cm_buf_init(out, HTTPC_MAX_REQ_HEAD + (rq->body ? rq->body_len : 0));
    int r = cm_buf_printf(out, "%s %s HTTP/1.1\r\n", rq->method, rq->target);
    if (rq->host != NULL)
        r |= cm_buf_printf(out, "Host: %s\r\n", rq->host);
    for (size_t i = 0; i < rq->nhdrs; i++) {
        if (!valid_field(rq->hdrs[i].name, rq->hdrs[i].value))
            return false;
        r |= cm_buf_printf(out, "%s: %s\r\n", rq->hdrs[i].name, rq->hdrs[i].value);
    }
    if (rq->body != NULL)
        r |= cm_buf_printf(out, "Content-Length: %zu\r\n", rq->body_len);
    r |= cm_buf_adds(out, keep_alive ? "\r\n" : "Connection: close\r\n\r\n");
    if (rq->body != NULL)
        r |= cm_buf_add(out, rq->body, rq->body_len);
    return r == 0;
}

struct px_httpc *px_httpc_start(struct event_base *base, const struct px_httpc_req *rq,
                                px_httpc_cb cb, void *arg)
{
    if (base == NULL || rq == NULL || rq->addr == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct px_httpc *c = cm_xcalloc(1, sizeof(*c));
    if (!px_httpc_build(&c->req, rq, false)) {
        wipe_request(c);
        free(c);
        errno = EINVAL;
        return NULL;
    }
    c->timeout_ms = rq->timeout_ms ? rq->timeout_ms : HTTPC_TIMEOUT_MS;
    c->io = px_io_connect(base, rq->addr, c->timeout_ms);
    if (c->io == NULL) {
        int e = errno;
        wipe_request(c);
        free(c);
        errno = e;
        return NULL;
    }
    px_httpc_nodelay(c->io);
    if (rq->tls != NULL && px_io_start_tls(c->io, rq->tls, rq->tls_name) != 0) {
        px_io_free(c->io);
        wipe_request(c);
        free(c);
        errno = EINVAL;
        return NULL;
    }
    c->base = base;
    c->cb = cb;
    c->arg = arg;
    c->tls = rq->tls != NULL;
    c->deadline_us = cm_mono_us() + (uint64_t)c->timeout_ms * 1000;
    c->reap = event_new(base, -1, 0, on_reap, c);
    c->ans = px_httpc_answer_new(rq->max_head, rq->max_body, rq->status_only);
    px_io_set_read_limit(c->io, HTTPC_READ_LIMIT);
    px_io_setcb(c->io, on_read, NULL, on_event, c);
    px_io_set_timeout(c->io, c->timeout_ms);
    if (!c->tls)
        send_request(c); /* queued until the connect completes */
    return c;
}

void px_httpc_cancel(struct px_httpc *c)
{
    if (c == NULL || c->state == HC_DONE)
        return;
    on_reap(-1, 0, c);
}

void px_httpc_nodelay(struct px_io *io)
{
    /* a small request after the TLS handshake's last flight would otherwise
     * wait for the ACK of that flight (Nagle), which the server delays */
    int one = 1;
    setsockopt(px_io_fd(io), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void px_httpc_io_error(struct px_io *io, bool connected, char *buf, size_t cap)
{
    const char *tls_err = px_io_tls_error(io);
    if (!connected)
        snprintf(buf, cap, "connect: %s", strerror(px_io_errno(io)));
    else if (tls_err[0] != '\0')
        snprintf(buf, cap, "%s%s", strncmp(tls_err, "TLS", 3) == 0 ? "" : "TLS: ", tls_err);
    else
        snprintf(buf, cap, "connection: %s", strerror(px_io_errno(io)));
}

bool px_httpc_answer_keep_alive(struct px_httpc_answer *a)
{
    return a->result == PX_HTTPC_DONE && llhttp_should_keep_alive(&a->parser) != 0;
}

const char *px_httpc_answer_end(struct px_httpc_answer *a)
{
    if (a->result != PX_HTTPC_DONE || llhttp_get_errno(&a->parser) != HPE_PAUSED)
        return NULL;
    return llhttp_get_error_pos(&a->parser);
}

bool px_httpc_answer_got_bytes(const struct px_httpc_answer *a)
{
    return a->got_bytes;
}

const char *px_httpc_answer_error(const struct px_httpc_answer *a)
{
    return a->err;
}

const char *px_httpc_header(const struct px_httpc_resp *r, const char *name)
{
    for (size_t i = 0; i < r->nhdrs; i++)
        if (strcmp(r->hdrs[i].name, name) == 0)
            return r->hdrs[i].value;
    return NULL;
}
