/* HTTP/1.1 client codec: upstream connections, pooled per address.
 *
 * A connection carries one exchange at a time. When the response is
 * complete, the request was fully sent and both sides allow keep-alive, it
 * goes back to the idle list of its address's pool record (proxy/pool.h:
 * px_upstream_ep.h1_idle, bounded by pool_max_idle, closed after
 * pool_idle_timeout_ms or when the server closes it). */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/h1.h"
#include "proxy/h1_common.h"
#include "proxy/metrics.h"
#include "proxy/pool.h"
#include "proxy/server.h"

enum h1c_state {
    H1C_CONNECTING = 0, /* connect in progress; the request is already queued */
    H1C_BUSY,           /* carrying an exchange */
    H1C_IDLE,           /* in the pool, waiting for the next exchange */
    H1C_DEAD            /* closed; freed from the kick event */
};

struct h1c {
    struct px_server *srv;
    struct px_io *io;
    struct cm_addr addr;
    llhttp_t parser;
    enum h1c_state state;
    struct px_stream *s;
    struct h1_acc acc;
    struct event *kick;
    bool reused;    /* this exchange runs on a pooled connection */
    bool got_bytes; /* response bytes arrived for this exchange */
    bool req_chunked;
    bool req_done; /* request fully queued */
    bool resp_done;
    bool informational; /* parsing a 1xx response: not forwarded */
    bool head_req;
    bool keep_alive;
    bool parser_paused;
    bool body_paused;
    bool tunnel;          /* the server answered 101 to our Upgrade: raw bytes both ways */
    bool peer_eof;        /* tunnel: the server half-closed (the end follows its last bytes) */
    struct cm_list link;  /* the idle list (every address), or the busy list */
    struct cm_list plink; /* while idle: in pep->h1_idle */
    /* why we refused the response (static), or NULL */
    const char *err_reason;

    /* its endpoint's circuit breakers (this connection is counted there) */
    struct px_upstream_ep *pep;
};

static struct cm_list idle_all = {&idle_all, &idle_all}; /* for drain and shutdown */
static struct cm_list busy = {&busy, &busy};
static bool ready;
static llhttp_settings_t settings;

static void process(struct h1c *u);
static void conn_dead(struct h1c *u);

static const struct px_limits *limits(const struct h1c *u)
{
    return &u->srv->cfg->limits;
}

static struct h1c *of(struct px_stream *s)
{
    return s->ctx[PX_UP];
}

/* ---- px_side_ops: the request toward the upstream -------------------------- */

static void op_send_head(struct px_stream *s)
{
    struct h1c *u = of(s);
    struct evbuffer *out = px_io_output(u->io);
    const struct px_msg *r = &s->req;
    u->head_req = strcmp(r->method, "HEAD") == 0;
    const char *path = r->path ? r->path : "/";
    const char *host = r->authority;
    char a[CM_ADDR_STRLEN];
    if (host == NULL) {
        const struct px_hdr *h = px_msg_find(r, "host");
        host = h ? h->value : cm_addr_format(&u->addr, a, sizeof(a));
    }
    struct px_h1_head w;
    px_h1_head_begin(&w, out,
                     strlen(r->method) + strlen(path) + strlen(host) + px_h1_headers_size(r) + 96);
    px_h1_put_str(&w, r->method);
    px_h1_put(&w, " ", 1);
    px_h1_put_str(&w, path);
    px_h1_put(&w, " HTTP/1.1\r\nhost: ", 17);
    px_h1_put_str(&w, host);
    px_h1_put(&w, "\r\n", 2);
    px_h1_put_headers(&w, r);
    if (s->upgrade != NULL) /* the Upgrade field itself is in the list */
        px_h1_put(&w, "connection: upgrade\r\n", 21);
    u->req_chunked = false;
    if (r->content_length >= 0) {
        px_h1_put(&w, "content-length: ", 16);
        px_h1_put_u64(&w, (uint64_t)r->content_length);
        px_h1_put(&w, "\r\n", 2);
    } else if (!r->end_stream) {
        px_h1_put(&w, "transfer-encoding: chunked\r\n", 28);
        u->req_chunked = true;
    }
    px_h1_put(&w, "\r\n", 2);
    px_h1_head_end(&w);
}

static void op_send_data(struct px_stream *s, const uint8_t *data, size_t len)
{
    struct h1c *u = of(s);
    px_h1_write_body(px_io_output(u->io), u->req_chunked, data, len);
}

static void op_send_end(struct px_stream *s)
{
    struct h1c *u = of(s);
    if (u->tunnel) {
        /* the client half-closed the tunnel: so do we, after its bytes */
        px_io_shutdown_write(u->io);
        u->req_done = true;
        if (u->resp_done)
            event_active(u->kick, EV_TIMEOUT, 0);
        return;
    }
    if (u->req_chunked)
        px_h1_write_last_chunk(px_io_output(u->io));
    u->req_done = true;
    if (u->resp_done)
        event_active(u->kick, EV_TIMEOUT, 0);
}

static size_t op_pending(struct px_stream *s)
{
    return evbuffer_get_length(px_io_output(of(s)->io));
}

static void op_resume(struct px_stream *s)
{
    struct h1c *u = of(s);
    if (px_h1_resume_read(u->io, &u->body_paused))
        event_active(u->kick, EV_TIMEOUT, 0);
}

static void op_abort(struct px_stream *s)
{
    struct h1c *u = of(s);
    u->s = NULL;
    px_stream_detach(s, PX_UP);
    conn_dead(u);
}

static const struct px_side_ops h1c_ops = {
    .name = "h1-client",
    .send_head = op_send_head,
    .send_data = op_send_data,
    .send_end = op_send_end,
    .pending = op_pending,
    .resume = op_resume,
    .abort = op_abort,
};

/* ---- llhttp callbacks (response) ------------------------------------------- */

/* Refuse the response being parsed (the client gets a 502): why is static. */
static int bad_response(llhttp_t *p, const char *why)
{
    struct h1c *u = p->data;
    u->err_reason = why; /* llhttp overwrites its own reason on HPE_USER */
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    struct h1c *u = p->data;
    if (u->s == NULL)
        return bad_response(p, "bytes nobody asked for");
    px_msg_init(&u->s->resp);
    px_h1_acc_reset(&u->acc);
    u->informational = false;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct h1c *u = p->data;
    return px_h1_acc_append(&u->acc, at, len, limits(u)->max_header_bytes)
               ? 0
               : bad_response(p, "response head too large");
}

static int on_header_field_complete(llhttp_t *p)
{
    struct h1c *u = p->data;
    u->acc.name_len = u->acc.len;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct h1c *u = p->data;
    const struct px_limits *lim = limits(u);
    return px_h1_acc_take_header(&u->acc, &u->s->arena, &u->s->resp, lim->max_header_bytes,
                                 lim->max_headers) == 0
               ? 0
               : bad_response(p, "invalid or too many header fields");
}

static int on_headers_complete(llhttp_t *p)
{
    struct h1c *u = p->data;
    struct px_msg *r = &u->s->resp;
    r->status = p->status_code;
    r->http_minor = p->http_minor;
    if (p->http_major != 1)
        return bad_response(p, "not an HTTP/1.x response");
    if (r->status < 100 || r->status > 599) /* RFC 9110 15: three digits, 1xx to 5xx */
        return bad_response(p, "invalid status code");
    if (r->status >= 100 && r->status < 200) {
        if (r->status == 101) {
            if (u->s->upgrade == NULL)
                return bad_response(p, "101 Switching Protocols we never asked for");
            /* the stream checks it and, when it takes it, makes this
             * exchange a tunnel; else it answered 502 and let go of us */
            r->content_length = -1;
            /* raw bytes from here (the stream may pass early ones at once) */
            u->tunnel = true;
            u->req_done = false;   /* the client's bytes follow, then its half-close */
            u->keep_alive = false; /* never back to the pool */
            u->req_chunked = false;
            px_stream_on_resp_head(u->s);
            if (u->s == NULL || !u->s->tunnel) {
                u->tunnel = false;
                return bad_response(p, "101 Switching Protocols refused");
            }
            return 2; /* no body: the rest is the new protocol */
        }
        u->informational = true;
        /* 1: a 1xx response ends with its head (RFC 9110 15.2), whatever
         * framing fields it carries; what follows is the next response */
        return 1;
    }
    struct px_h1_framing fr;
    int st;
    const char *why = px_h1_check_framing(r, r->http_minor, &fr, &st);
    if (why != NULL)
        return bad_response(p, why);
    bool no_body = u->head_req || r->status == 204 || r->status == 304;
    if (!no_body && (fr.chunked != ((p->flags & F_CHUNKED) != 0) ||
                     (!fr.chunked && fr.content_length >= 0 &&
                      (uint64_t)fr.content_length != p->content_length)))
        return bad_response(p, "framing the parser reads differently"); /* never expected */
    r->content_length = fr.chunked ? -1 : fr.content_length;
    px_msg_remove(r, "content-length");
    r->end_stream = no_body || r->content_length == 0;
    px_stream_on_resp_head(u->s);
    return u->head_req ? 1 : 0; /* 1: a response to HEAD has no body */
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct h1c *u = p->data;
    if (u->s == NULL || len == 0)
        return 0;
    if (px_stream_on_resp_data(u->s, (const uint8_t *)at, len)) {
        u->body_paused = true;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct h1c *u = p->data;
    if (u->tunnel)
        return 0; /* llhttp stops with HPE_PAUSED_UPGRADE */
    if (u->informational) {
        u->informational = false;
        return 0;
    }
    u->resp_done = true;
    u->keep_alive = llhttp_should_keep_alive(p);
    if (u->s != NULL)
        px_stream_on_resp_end(u->s);
    event_active(u->kick, EV_TIMEOUT, 0);
    return HPE_PAUSED; /* nothing may follow a response we did not ask for */
}

static void init_settings(void)
{
    if (ready)
        return;
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_field;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    ready = true;
}

/* ---- connection life ---------------------------------------------------------- */

/* Out of its address's idle list (it is leaving the idle state). */
static void unidle(struct h1c *u)
{
    cm_list_remove(&u->plink);
    u->pep->h1_nidle--;
}

static void free_now(struct h1c *u)
{
    if (u->state == H1C_IDLE)
        unidle(u);
    cm_list_remove(&u->link);
    event_free(u->kick);
    px_h1_acc_free(&u->acc);
    px_io_free(u->io);
    px_metrics.upstream_cx_active--;
    px_pool_conn_closed(u->pep); /* the socket is closed: a waiter may connect */
    free(u);
}

static void conn_dead(struct h1c *u)
{
    if (u->state == H1C_DEAD)
        return;
    if (u->state == H1C_IDLE)
        unidle(u);
    cm_list_remove(&u->link);
    cm_list_insert_tail(&busy, &u->link);
    u->state = H1C_DEAD;
    px_io_read_enable(u->io, false);
    event_active(u->kick, EV_TIMEOUT, 0);
}

static void fail(struct h1c *u, enum px_cause cause)
{
    struct px_stream *s = u->s;
    u->s = NULL;
    if (s != NULL) {
        px_stream_on_error(s, PX_UP, cause);
        px_stream_detach(s, PX_UP);
    }
    conn_dead(u);
}

/* A pooled connection failed before any response byte: the server closed it
 * while idle (a keep-alive race), so it never processed the request. The
 * stream may send it again (on a fresh connection: s->resending) instead of
 * failing the client; it decides and counts that (px_stream_on_unprocessed). */
static bool unprocessed(struct h1c *u)
{
    struct px_stream *s = u->s;
    if (s == NULL || !u->reused || u->got_bytes)
        return false;
    u->s = NULL;
    px_stream_on_unprocessed(s, PX_CAUSE_UPSTREAM_RESET);
    px_stream_detach(s, PX_UP);
    conn_dead(u);
    return true;
}

/* Bytes from an upstream after its response, or while idle in the pool
 * (a body after a HEAD response, a second response nobody asked for): they
 * would be read as the answer to the next request on this connection, so
 * the connection is dropped, and that is worth a (rate-limited) warn line. */
static void drop_stray(struct h1c *u, size_t n)
{
    char a[CM_ADDR_STRLEN];
    px_metrics.upstream_cx_stray_bytes++;
    cm_log_limited(CM_LOG_WARN, "h1 upstream stray bytes",
                   "h1 upstream %s: %s%zu unexpected bytes after a complete response; "
                   "connection closed, not reused",
                   cm_addr_format(&u->addr, a, sizeof(a)), n ? "" : "at least ", n ? n : 1);
    conn_dead(u);
}

/* Is an idle connection still fit for a request, right before reuse? Not
 * when bytes wait in our buffer: then it is closed here, with a warn line,
 * and false returned. Bytes or an EOF still in the socket need no system call
 * here: an idle connection's reads stay armed (on_read drops it), and epoll
 * reports descriptors in the order they became ready, so whatever reached the
 * socket before the request that wants this connection was read has already
 * been handled in this loop turn. What arrives later is indistinguishable
 * from an answer to the request about to be sent (no proxy can tell them
 * apart); the keep-alive race is unprocessed()'s. */
static bool fit_for_reuse(struct h1c *u)
{
    size_t n = evbuffer_get_length(px_io_input(u->io));
    if (n == 0)
        return true;
    drop_stray(u, n);
    return false;
}

static void release(struct h1c *u)
{
    struct px_stream *s = u->s;
    u->s = NULL;
    if (s != NULL)
        px_stream_detach(s, PX_UP);
    struct px_upstream_ep *ep = u->pep;
    size_t left = evbuffer_get_length(px_io_input(u->io));
    if (left > 0 && u->keep_alive && !u->srv->draining) {
        drop_stray(u, left);
        return;
    }
    if (!u->keep_alive || u->srv->draining || ep->h1_nidle >= limits(u)->pool_max_idle ||
        left > 0) {
        conn_dead(u);
        return;
    }
    u->state = H1C_IDLE;
    cm_list_remove(&u->link);
    cm_list_insert_head(&idle_all, &u->link);
    cm_list_insert_head(&ep->h1_idle, &u->plink);
    ep->h1_nidle++;
    /* the server may close an idle connection: watch for EOF; time it out */
    px_io_set_timeout(u->io, limits(u)->pool_idle_timeout_ms);
    px_io_read_enable(u->io, true);
    px_pool_wake(u->pep); /* the oldest waiter takes it on the next loop turn */
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct h1c *u = arg;
    (void)fd;
    (void)what;
    if (u->state == H1C_DEAD) {
        if (u->s != NULL) {
            struct px_stream *s = u->s;
            u->s = NULL;
            px_stream_detach(s, PX_UP);
        }
        free_now(u);
        return;
    }
    if (u->state == H1C_BUSY && u->resp_done) {
        if (u->req_done)
            release(u);
        /* else the request is still being sent: wait for op_send_end */
        return;
    }
    process(u);
}

/* After a 101: hand what the server sends to the stream as it comes; after
 * its EOF and its last byte, the end of the response (the half-close). */
static void tunnel_pump(struct h1c *u)
{
    while (u->s != NULL && !u->body_paused && u->state == H1C_BUSY) {
        if (!px_h1_tunnel_step(u->io, u->s, PX_UP, &u->body_paused)) {
            if (u->peer_eof && !u->resp_done) {
                u->resp_done = true;
                px_stream_on_resp_end(u->s);
                event_active(u->kick, EV_TIMEOUT, 0); /* released once both ways ended */
            }
            return;
        }
    }
}

static void process(struct h1c *u)
{
    struct evbuffer *in = px_io_input(u->io);
    if (u->tunnel) {
        tunnel_pump(u);
        return;
    }
    while (u->state == H1C_BUSY && !u->resp_done && !u->body_paused) {
        struct evbuffer_iovec v;
        if (!px_h1_next_run(&u->parser, &u->parser_paused, in, &v))
            return;
        const char *data = v.iov_base;
        u->got_bytes = true;
        llhttp_errno_t err = llhttp_execute(&u->parser, data, v.iov_len);
        size_t used = v.iov_len;
        if (err == HPE_PAUSED_UPGRADE && u->tunnel) {
            /* the 101's head is read: what follows is the new protocol */
            evbuffer_drain(in, (size_t)(llhttp_get_error_pos(&u->parser) - data));
            tunnel_pump(u);
            return;
        } else if (err == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&u->parser) - data);
            u->parser_paused = true;
        } else if (err != HPE_OK) {
            char a[CM_ADDR_STRLEN];
            const char *why = u->err_reason ? u->err_reason : llhttp_get_error_reason(&u->parser);
            cm_debug("h1 upstream %s: bad response: %s", cm_addr_format(&u->addr, a, sizeof(a)),
                     why ? why : llhttp_errno_name(err));
            if (u->s != NULL) /* llhttp's reasons and ours are static strings */
                u->s->cause_detail = why ? why : llhttp_errno_name(err);
            evbuffer_drain(in, v.iov_len);
            fail(u, PX_CAUSE_UPSTREAM_PROTO);
            return;
        }
        evbuffer_drain(in, used);
        if (u->body_paused)
            px_io_read_enable(u->io, false);
    }
}

static void on_read(struct px_io *io, void *arg)
{
    struct h1c *u = arg;
    (void)io;
    if (u->state == H1C_IDLE) {
        /* an idle upstream has nothing to say */
        drop_stray(u, evbuffer_get_length(px_io_input(u->io)));
        return;
    }
    process(u);
}

static void on_write(struct px_io *io, void *arg)
{
    struct h1c *u = arg;
    (void)io;
    if (u->s != NULL && u->s->paused[PX_DOWN])
        px_stream_on_drain(u->s, PX_UP);
}

static void on_event(struct px_io *io, int what, void *arg)
{
    struct h1c *u = arg;
    if (what & PX_IO_CONNECTED) {
        int one = 1;
        setsockopt(px_io_fd(io), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        px_io_set_timeout(io, 0);
        if (u->state == H1C_CONNECTING)
            u->state = H1C_BUSY;
        if (u->s != NULL)
            u->s->try_start_us = cm_mono_us(); /* the connect is not response latency */
        return;
    }
    if (u->state == H1C_IDLE) {
        conn_dead(u);
        return;
    }
    if (u->state == H1C_CONNECTING) {
        int err = px_io_errno(io);
        enum px_cause cause = (what & PX_IO_TIMEOUT) ? PX_CAUSE_CONNECT_TIMEOUT
                              : err == ECONNREFUSED  ? PX_CAUSE_CONNECT_REFUSED
                                                     : PX_CAUSE_CONNECT_FAILED;
        px_metrics.upstream_cx_connect_fail++;
        char a[CM_ADDR_STRLEN];
        cm_debug("h1 upstream %s: connect: %s", cm_addr_format(&u->addr, a, sizeof(a)),
                 (what & PX_IO_TIMEOUT) ? "timeout" : strerror(err));
        fail(u, cause);
        return;
    }
    if ((what & PX_IO_EOF) && u->tunnel && u->state == H1C_BUSY) {
        /* the server half-closed the tunnel: its last bytes, then the end */
        u->peer_eof = true;
        tunnel_pump(u); /* ends the response once the input is empty */
        return;
    }
    if (what & PX_IO_EOF) {
        /* close-delimited body, or a reset mid-response */
        if (u->state == H1C_BUSY && !u->resp_done && u->got_bytes) {
            process(u);
            if (u->state == H1C_BUSY && !u->resp_done && llhttp_finish(&u->parser) == HPE_OK &&
                u->resp_done) {
                u->keep_alive = false;
                return; /* completed by EOF; kick releases (closes) it */
            }
        }
        if (u->state == H1C_BUSY && !u->resp_done) {
            if (!unprocessed(u))
                fail(u, PX_CAUSE_UPSTREAM_RESET);
            return;
        }
    }
    if (u->state == H1C_BUSY && !u->resp_done && unprocessed(u))
        return;
    fail(u, PX_CAUSE_UPSTREAM_RESET);
}

static void bind_stream(struct h1c *u, struct px_stream *s)
{
    u->s = s;
    u->got_bytes = u->req_done = u->resp_done = false;
    u->body_paused = u->informational = false;
    u->err_reason = NULL;
    u->keep_alive = true;
    llhttp_init(&u->parser, HTTP_RESPONSE, &settings);
    u->parser.data = u;
    u->parser_paused = false;
    px_stream_attach_up(s, &h1c_ops, u);
}

static struct h1c *conn_new(struct px_server *srv, const struct cm_addr *addr)
{
    struct h1c *u = cm_xcalloc(1, sizeof(*u));
    u->srv = srv;
    u->addr = *addr;
    u->io = px_io_connect(srv->base, addr, limits(u)->connect_timeout_ms);
    if (u->io == NULL) {
        free(u);
        return NULL;
    }
    u->kick = event_new(srv->base, -1, 0, on_kick, u);
    u->state = H1C_CONNECTING;
    u->pep = px_pool_ep(srv, addr);
    px_pool_conn_opened(u->pep);
    cm_list_insert_tail(&busy, &u->link);
    px_metrics.upstream_cx_total++;
    px_metrics.upstream_cx_active++;
    uint32_t bound = limits(u)->buffer_bytes;
    px_io_set_read_limit(u->io, bound);
    px_io_set_write_lowat(u->io, bound / 2);
    px_io_setcb(u->io, on_read, on_write, on_event, u);
    return u;
}

bool px_h1_client_has_idle(const struct cm_addr *a)
{
    const struct px_upstream_ep *ep = px_pool_find(a);
    return ep != NULL && ep->h1_nidle > 0;
}

void px_h1_client_attach(struct px_stream *s)
{
    init_settings();
    const struct cm_addr *addr = &s->target.addr;
    struct px_upstream_ep *ep = px_pool_ep(s->srv, addr);
    struct h1c *u = NULL;
    /* a resend after a stale keep-alive connection takes a fresh one */
    if (!s->resending) {
        struct cm_list *n, *next;
        for (n = ep->h1_idle.next; n != &ep->h1_idle; n = next) {
            next = n->next;
            struct h1c *c = cm_container_of(n, struct h1c, plink);
            if (fit_for_reuse(c)) { /* else closed (and unlinked) */
                u = c;
                break;
            }
        }
    }
    if (u != NULL) {
        unidle(u);
        cm_list_remove(&u->link);
        cm_list_insert_tail(&busy, &u->link);
        u->state = H1C_BUSY;
        u->reused = true;
        px_io_set_timeout(u->io, 0);
        px_metrics.upstream_cx_reused++;
    } else {
        u = conn_new(s->srv, addr);
        if (u == NULL) {
            s->cause = PX_CAUSE_CONNECT_FAILED;
            px_stream_respond(s, 503, px_cause_str(s->cause));
            return;
        }
    }
    bind_stream(u, s);
}

void px_h1_drain(void)
{
    while (!cm_list_empty(&idle_all))
        conn_dead(cm_container_of(idle_all.next, struct h1c, link));
    px_h1_server_drain();
}

void px_h1_shutdown(void)
{
    px_h1_server_shutdown();
    while (!cm_list_empty(&idle_all))
        free_now(cm_container_of(idle_all.next, struct h1c, link));
    while (!cm_list_empty(&busy)) {
        struct h1c *u = cm_container_of(busy.next, struct h1c, link);
        if (u->s != NULL) {
            struct px_stream *s = u->s;
            u->s = NULL;
            px_stream_detach(s, PX_UP);
        }
        free_now(u);
    }
}
