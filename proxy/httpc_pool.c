/* px_httpc_pool (proxy/httpc.h): keep-alive HTTP/1.1 connections to one
 * server. A connection is CONNECTING (TCP, then TLS), IDLE (in p->idle, its
 * timer closes it after idle_ms) or BUSY (one call on the wire); closing ones
 * are freed from their reap event (never inside their own io callback).
 * Calls wait in p->queue, FIFO, until a connection is idle or may be opened. */
#include <errno.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/httpc.h"
#include "proxy/httpc_int.h"
#include "proxy/io.h"
#include "proxy/tls.h"

#define POOL_MAX_CONNS       16
#define POOL_IDLE_MS         60000
#define POOL_TIMEOUT_MS      10000
#define POOL_READ_LIMIT      (64 * 1024)
#define POOL_KEEPALIVE_MS    100000
#define KEEPALIVE_TIMEOUT_MS 5000 /* a keepalive_target request not answered by then: closed */
#define WARM_RETRY_MIN_MS    250  /* a warm connection that failed: again after this, doubling */
#define WARM_RETRY_MAX_MS    30000
#define WARM_TLS_MIN_MS      50 /* no client certificate yet: asked again after this, doubling */
#define WARM_TLS_MAX_MS      1000
#define WARM_LIVED_US        (5 * 1000000ULL) /* a connection that lived this long was no failure */

enum conn_state { PC_CONNECTING = 0, PC_IDLE, PC_BUSY, PC_CLOSING };

struct pconn {
    struct cm_list node; /* p->conns */
    struct px_httpc_pool *p;
    struct px_io *io;
    enum conn_state st;
    bool tls, connected, answered_before;
    bool warm;   /* opened with no call: its first request is a keepalive_target (warm-up) */
    bool served; /* answered a call of the pool's user (not only keepalive_target) */
    struct px_httpc_call *call; /* PC_BUSY / PC_CONNECTING: the call it carries (or NULL) */
    struct event *reap;
    uint64_t opened_us;
};

struct px_httpc_call {
    struct cm_list node; /* p->queue while queued */
    struct px_httpc_pool *p;
    struct pconn *conn; /* on the wire (or waiting for its connection) */
    struct cm_buf req;
    struct px_httpc_answer *ans;
    px_httpc_cb cb;
    void *arg;
    uint32_t timeout_ms;
    uint64_t deadline_us;
    bool resent;
    bool keepalive; /* the pool's own keepalive_target request: not in the stats */
};

struct px_httpc_pool {
    struct event_base *base;
    struct cm_addr addr;
    struct px_tls_conf *(*tls_conf)(void *arg);
    void *tls_arg;
    bool plaintext;
    char *no_tls_err, *tls_name, *host;
    unsigned max_conns, nconns;
    size_t max_queue, nqueued;
    uint32_t idle_ms;
    bool held;
    void (*on_unreachable)(void *arg);
    void *unreachable_arg;
    struct cm_list conns, closing, queue;
    struct event *kick; /* dispatch from the loop */
    struct px_httpc_pool_stats st;
    /* warm connections */
    unsigned warm;
    char *keepalive_target;
    uint32_t keepalive_ms, warm_retry_max_ms;
    struct event *warm_ev;     /* the next warm open (backoff, or waiting for a certificate) */
    uint32_t warm_backoff_ms;  /* 0: the last connection was fine */
    uint32_t warm_tls_wait_ms; /* 0: a certificate was there last time */
};

static void dispatch(struct px_httpc_pool *p);

static void dispatch_later(struct px_httpc_pool *p)
{
    event_active(p->kick, EV_TIMEOUT, 0);
}

/* ---- calls ----------------------------------------------------------------------- */

static void call_free(struct px_httpc_call *c)
{
    if (cm_list_linked(&c->node)) {
        cm_list_remove(&c->node);
        c->p->nqueued--;
    }
    cm_buf_free(&c->req);
    px_httpc_answer_free(c->ans);
    free(c);
}

/* A call of rq (its method, target, hdrs, body and bounds; the pool's Host),
 * its deadline counted from now; NULL when rq is not valid HTTP. */
static struct px_httpc_call *call_new(struct px_httpc_pool *p, const struct px_httpc_req *rq,
                                      px_httpc_cb cb, void *arg)
{
    struct px_httpc_req r = *rq;
    r.host = p->host;
    struct px_httpc_call *c = cm_xcalloc(1, sizeof(*c));
    cm_list_init(&c->node);
    if (!px_httpc_build(&c->req, &r, true)) {
        cm_buf_free(&c->req);
        free(c);
        return NULL;
    }
    c->p = p;
    c->cb = cb;
    c->arg = arg;
    c->timeout_ms = rq->timeout_ms ? rq->timeout_ms : POOL_TIMEOUT_MS;
    c->deadline_us = cm_mono_us() + (uint64_t)c->timeout_ms * 1000;
    c->ans = px_httpc_answer_new(rq->max_head, rq->max_body, false);
    return c;
}

/* Give the call its answer (status 0: err) and free it. */
static void call_done(struct px_httpc_call *c, int status, const char *err)
{
    struct px_httpc_resp r;
    px_httpc_answer_outcome(c->ans, status != 0, err, &r);
    px_httpc_cb cb = c->cb;
    void *arg = c->arg;
    cb(&r, arg);
    call_free(c);
}

/* ---- connections ----------------------------------------------------------------- */

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct pconn *k = arg;
    cm_list_remove(&k->node);
    px_io_free(k->io);
    event_free(k->reap);
    free(k);
}

static void warm_arm(struct px_httpc_pool *p, uint32_t ms)
{
    if (evtimer_pending(p->warm_ev, NULL))
        return;
    struct timeval tv = cm_tv_ms(ms);
    evtimer_add(p->warm_ev, &tv);
}

/* A warm (re-)open failed, or a connection closed before it was of use: the
 * next warm open waits 250 ms doubling to 30 s (never a loop of connects). */
static void warm_failed(struct px_httpc_pool *p)
{
    if (p->warm == 0)
        return;
    p->warm_backoff_ms = cm_backoff_ms(p->warm_backoff_ms, WARM_RETRY_MIN_MS, p->warm_retry_max_ms);
    warm_arm(p, p->warm_backoff_ms);
}

/* k is closing: was it of use (answered a user's call, or lived 5 s)? Then the
 * warm one may be re-opened at once; else after the backoff (a server that
 * answers the warm-up and then closes makes no loop either). */
static void warm_closed(struct pconn *k)
{
    struct px_httpc_pool *p = k->p;
    if (p->warm == 0)
        return;
    if (k->served || (k->opened_us != 0 && cm_mono_us() - k->opened_us >= WARM_LIVED_US))
        p->warm_backoff_ms = 0;
    else
        warm_failed(p);
    dispatch_later(p);
}

/* Take k out of the pool and free it on the next loop turn (its call, if any,
 * is the caller's to finish). */
static void conn_close(struct pconn *k)
{
    if (k->st == PC_CLOSING)
        return;
    k->st = PC_CLOSING;
    k->call = NULL;
    cm_list_remove(&k->node);
    cm_list_insert_tail(&k->p->closing, &k->node);
    k->p->nconns--;
    warm_closed(k);
    px_io_setcb(k->io, NULL, NULL, NULL, NULL);
    px_io_read_enable(k->io, false);
    px_io_set_timeout(k->io, 0);
    event_active(k->reap, EV_TIMEOUT, 0);
}

static uint32_t left_ms(const struct px_httpc_call *c)
{
    uint64_t now = cm_mono_us();
    return c->deadline_us > now ? (uint32_t)((c->deadline_us - now + 999) / 1000) : 0;
}

/* Put c on the wire of k (connected, and through TLS when there is TLS). */
static void conn_send(struct pconn *k, struct px_httpc_call *c)
{
    k->st = PC_BUSY;
    k->call = c;
    c->conn = k; /* c->ans is unused yet: a call is resent only when no byte of its answer came */
    if (c->keepalive) {
        k->p->st.keepalives++;
    } else {
        if (k->answered_before)
            k->p->st.reused++;
        k->p->st.requests++;
    }
    uint32_t left = left_ms(c);
    px_io_set_timeout(k->io, left ? left : 1);
    px_io_write(k->io, c->req.data, c->req.len);
}

/* The call on k failed for a reason of the connection's: finish it, or send
 * it again when a reused connection closed before any byte of its answer. */
static void conn_failed(struct pconn *k, const char *err, bool maybe_resend)
{
    struct px_httpc_pool *p = k->p;
    struct px_httpc_call *c = k->call;
    bool never_connected = !k->connected || (k->tls && k->st == PC_CONNECTING);
    bool tcp_failed = !k->connected;
    conn_close(k);
    if (c != NULL) {
        c->conn = NULL;
        if (maybe_resend && !c->resent && left_ms(c) > 0) {
            c->resent = true;
            p->st.resent++;
            cm_list_insert_head(&p->queue, &c->node);
            p->nqueued++;
        } else {
            call_done(c, 0, err);
        }
    }
    if (never_connected) {
        /* the server cannot be reached: the queued calls would each pay the same */
        while (!cm_list_empty(&p->queue)) {
            struct px_httpc_call *q = cm_container_of(p->queue.next, struct px_httpc_call, node);
            call_done(q, 0, err);
        }
    }
    if (tcp_failed && p->on_unreachable != NULL)
        p->on_unreachable(p->unreachable_arg);
    dispatch(p);
}

/* k has answered its call (or just connected): the next queued call, or idle. */
static void conn_ready(struct pconn *k)
{
    struct px_httpc_pool *p = k->p;
    while (!cm_list_empty(&p->queue)) {
        struct px_httpc_call *c = cm_container_of(p->queue.next, struct px_httpc_call, node);
        cm_list_remove(&c->node);
        p->nqueued--;
        if (left_ms(c) == 0) {
            call_done(c, 0, "no answer in time (queued for a connection)");
            if (k->st == PC_CLOSING)
                return;
            continue;
        }
        conn_send(k, c);
        return;
    }
    k->st = PC_IDLE;
    k->call = NULL;
    /* the warm one waits for its keepalive; more than that close when idle */
    px_io_set_timeout(k->io, p->nconns > p->warm ? p->idle_ms : p->keepalive_ms);
}

static void keepalive_done(const struct px_httpc_resp *r, void *arg)
{
    struct px_httpc_pool *p = arg; /* the answer's status does not matter */
    if (r->status != 0)
        p->st.keepalives_answered++; /* else the connection is closed already */
}

/* k, the warm connection, has been idle keepalive_ms: a tiny request keeps
 * the server's idle close away. */
static void conn_keepalive(struct pconn *k)
{
    struct px_httpc_pool *p = k->p;
    if (p->keepalive_target == NULL) {
        px_io_set_timeout(k->io, p->keepalive_ms);
        return;
    }
    struct px_httpc_req r = {.method = "GET",
                             .target = p->keepalive_target,
                             .timeout_ms = KEEPALIVE_TIMEOUT_MS,
                             .max_body = 4096};
    struct px_httpc_call *c = call_new(p, &r, keepalive_done, p);
    if (c == NULL) { /* cannot happen: checked in px_httpc_pool_new */
        px_io_set_timeout(k->io, p->keepalive_ms);
        return;
    }
    c->keepalive = true;
    conn_send(k, c);
}

static void on_read(struct px_io *io, void *arg)
{
    struct pconn *k = arg;
    struct evbuffer *in = px_io_input(io);
    if (k->st != PC_BUSY || k->call == NULL) {
        /* bytes nobody asked for (idle): the stream is out of step */
        conn_close(k);
        dispatch(k->p);
        return;
    }
    struct px_httpc_call *c = k->call;
    int r = PX_HTTPC_MORE;
    while (r == PX_HTTPC_MORE && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        r = px_httpc_answer_feed(c->ans, v.iov_base, v.iov_len);
        /* llhttp paused at the end of the message: it consumed up to there */
        size_t used = v.iov_len;
        if (r == PX_HTTPC_DONE) {
            const char *end = px_httpc_answer_end(c->ans);
            if (end != NULL && end >= (const char *)v.iov_base &&
                end <= (const char *)v.iov_base + v.iov_len)
                used = (size_t)(end - (const char *)v.iov_base);
        }
        evbuffer_drain(in, used);
    }
    if (r == PX_HTTPC_MORE)
        return;
    struct px_httpc_pool *p = k->p;
    bool reuse =
        r == PX_HTTPC_DONE && px_httpc_answer_keep_alive(c->ans) && evbuffer_get_length(in) == 0;
    k->call = NULL;
    c->conn = NULL;
    if (r == PX_HTTPC_DONE && !c->keepalive)
        k->served = true;
    if (!reuse)
        conn_close(k);
    else
        k->answered_before = true;
    if (r == PX_HTTPC_DONE)
        call_done(c, 1, NULL);
    else
        call_done(c, 0, c->ans != NULL ? px_httpc_answer_error(c->ans) : "?");
    if (k->st != PC_CLOSING && k->st == PC_BUSY && k->call == NULL)
        conn_ready(k);
    dispatch(p);
}

/* A connection through its connect (and handshake) with no call on it: a
 * warm one sends its warm-up request first (the server's first request on a
 * connection costs more: its client-certificate check, its buffers), unless
 * a call is waiting. */
static void conn_warmed(struct pconn *k)
{
    if (k->warm && k->p->keepalive_target != NULL && cm_list_empty(&k->p->queue)) {
        k->warm = false;
        conn_keepalive(k);
        return;
    }
    k->warm = false;
    conn_ready(k);
}

static void on_event(struct px_io *io, int what, void *arg)
{
    struct pconn *k = arg;
    char e[640];
    if (what & PX_IO_CONNECTED) {
        k->connected = true;
        if (!k->tls) {
            k->st = PC_BUSY;
            if (k->call == NULL)
                conn_warmed(k);
        }
        return;
    }
    if (what & PX_IO_HANDSHAKE) {
        struct px_httpc_call *c = k->call;
        k->call = NULL;
        if (c != NULL) {
            c->conn = NULL;
            conn_send(k, c);
        } else {
            conn_warmed(k);
        }
        return;
    }
    if (k->st == PC_IDLE) { /* the server closed an idle connection, or our idle timer */
        if ((what & PX_IO_TIMEOUT) && k->p->nconns <= k->p->warm) {
            conn_keepalive(k);
            return;
        }
        conn_close(k);
        return;
    }
    bool resend = k->answered_before && k->call != NULL && k->call->ans != NULL &&
                  !px_httpc_answer_got_bytes(k->call->ans) && (what & PX_IO_TIMEOUT) == 0;
    if (what & PX_IO_EOF) {
        struct px_httpc_call *c = k->call;
        if (c != NULL && !resend) {
            int r = px_httpc_answer_eof(c->ans);
            if (r == PX_HTTPC_DONE) { /* a body delimited by the close */
                k->call = NULL;
                c->conn = NULL;
                conn_close(k);
                call_done(c, 1, NULL);
                dispatch(k->p);
                return;
            }
            snprintf(e, sizeof(e), "%s", px_httpc_answer_error(c->ans));
        } else {
            snprintf(e, sizeof(e), "the server closed the connection");
        }
    } else if (what & PX_IO_TIMEOUT) {
        snprintf(e, sizeof(e), "no complete answer within %u ms",
                 k->call ? (unsigned)k->call->timeout_ms : 0u);
    } else {
        px_httpc_io_error(io, k->connected, e, sizeof(e));
    }
    conn_failed(k, e, resend);
}

/* Open a connection for c, or (c NULL) a warm one. false: c is finished
 * (failed) already / the warm open is put off. */
static bool conn_open(struct px_httpc_pool *p, struct px_httpc_call *c)
{
    struct px_tls_conf *tls = p->tls_conf != NULL ? p->tls_conf(p->tls_arg) : NULL;
    if (tls == NULL && !p->plaintext) {
        if (c != NULL) {
            call_done(c, 0, p->no_tls_err);
        } else { /* no certificate yet: ask again soon */
            p->warm_tls_wait_ms =
                cm_backoff_ms(p->warm_tls_wait_ms, WARM_TLS_MIN_MS, WARM_TLS_MAX_MS);
            warm_arm(p, p->warm_tls_wait_ms);
        }
        return false;
    }
    p->warm_tls_wait_ms = 0;
    uint32_t left = c != NULL ? left_ms(c) : POOL_TIMEOUT_MS;
    const char *fail = NULL;
    char e[200];
    struct px_io *io = px_io_connect(p->base, &p->addr, left ? left : 1);
    if (io == NULL) {
        snprintf(e, sizeof(e), "connect: %s", strerror(errno));
        fail = e;
    } else {
        px_httpc_nodelay(io);
        if (tls != NULL && px_io_start_tls(io, tls, p->tls_name) != 0) {
            px_io_free(io);
            fail = "TLS: cannot start a session";
        }
    }
    if (fail != NULL) {
        px_tls_conf_unref(tls);
        if (c != NULL)
            call_done(c, 0, fail);
        else
            warm_failed(p);
        return false;
    }
    struct pconn *k = cm_xcalloc(1, sizeof(*k));
    k->p = p;
    k->io = io;
    k->tls = tls != NULL;
    px_tls_conf_unref(tls);
    k->reap = event_new(p->base, -1, 0, on_reap, k);
    if (k->reap == NULL)
        abort();
    cm_list_insert_tail(&p->conns, &k->node);
    p->nconns++;
    p->st.connects++;
    k->opened_us = cm_mono_us();
    px_io_set_read_limit(io, POOL_READ_LIMIT);
    px_io_setcb(io, on_read, NULL, on_event, k);
    px_io_set_timeout(io, left ? left : 1);
    k->st = PC_CONNECTING;
    if (c == NULL) {
        p->st.warm_opens++; /* idle once connected (and through TLS) */
        k->warm = true;
    } else if (k->tls) {
        k->call = c; /* written when the handshake completes */
        c->conn = k;
    } else {
        conn_send(k, c); /* queued until the connect completes */
    }
    return true;
}

/* A warm connection on its way (no call yet) takes c rather than a new one. */
static bool give_to_warm(struct px_httpc_pool *p, struct px_httpc_call *c)
{
    struct cm_list *pos;
    for (pos = p->conns.next; pos != &p->conns; pos = pos->next) {
        struct pconn *k = cm_container_of(pos, struct pconn, node);
        if (k->st != PC_CONNECTING || k->call != NULL)
            continue;
        k->warm = false;
        uint32_t left = left_ms(c);
        if (k->tls) {
            k->call = c;
            c->conn = k;
            px_io_set_timeout(k->io, left ? left : 1);
        } else {
            conn_send(k, c);
        }
        return true;
    }
    return false;
}

/* Keep p->warm connections open (after the queued calls were served). */
static void warm_check(struct px_httpc_pool *p)
{
    if (p->warm == 0 || p->held || p->nconns >= p->warm || !cm_list_empty(&p->queue) ||
        evtimer_pending(p->warm_ev, NULL))
        return;
    conn_open(p, NULL);
}

/* Match queued calls with idle connections, opening new ones while allowed. */
static void dispatch(struct px_httpc_pool *p)
{
    while (!cm_list_empty(&p->queue)) {
        struct pconn *idle = NULL;
        struct cm_list *pos;
        for (pos = p->conns.next; pos != &p->conns; pos = pos->next) {
            struct pconn *k = cm_container_of(pos, struct pconn, node);
            if (k->st == PC_IDLE) {
                idle = k;
                break;
            }
        }
        if (idle != NULL) {
            conn_ready(idle);
            continue;
        }
        struct px_httpc_call *c = cm_container_of(p->queue.next, struct px_httpc_call, node);
        if (!p->held) {
            cm_list_remove(&c->node);
            p->nqueued--;
            if (give_to_warm(p, c))
                continue;
            cm_list_insert_head(&p->queue, &c->node);
            p->nqueued++;
        }
        if (p->nconns >= p->max_conns || p->held)
            return;
        cm_list_remove(&c->node);
        p->nqueued--;
        conn_open(p, c);
    }
    warm_check(p);
}

static void on_warm_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    dispatch(arg);
}

/* ---- the API --------------------------------------------------------------------- */

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    dispatch(arg);
}

struct px_httpc_pool *px_httpc_pool_new(struct event_base *base,
                                        const struct px_httpc_pool_cfg *cfg)
{
    struct px_httpc_pool *p = cm_xcalloc(1, sizeof(*p));
    p->base = base;
    p->addr = *cfg->addr;
    p->tls_conf = cfg->tls_conf;
    p->tls_arg = cfg->tls_arg;
    p->plaintext = cfg->plaintext;
    p->no_tls_err = cm_xstrdup(cfg->no_tls_err ? cfg->no_tls_err : "no client certificate");
    p->tls_name = cfg->tls_name ? cm_xstrdup(cfg->tls_name) : NULL;
    p->host = cfg->host ? cm_xstrdup(cfg->host) : NULL;
    p->max_conns = cfg->max_conns < 1                ? 1
                   : cfg->max_conns > POOL_MAX_CONNS ? POOL_MAX_CONNS
                                                     : cfg->max_conns;
    p->max_queue = cfg->max_queue;
    p->idle_ms = cfg->idle_ms ? cfg->idle_ms : POOL_IDLE_MS;
    p->on_unreachable = cfg->on_unreachable;
    p->unreachable_arg = cfg->unreachable_arg;
    cm_list_init(&p->conns);
    cm_list_init(&p->closing);
    cm_list_init(&p->queue);
    p->kick = event_new(base, -1, 0, on_kick, p);
    if (p->kick == NULL)
        abort();
    p->warm = cfg->warm > p->max_conns ? p->max_conns : cfg->warm;
    p->keepalive_ms = cfg->keepalive_ms ? cfg->keepalive_ms : POOL_KEEPALIVE_MS;
    p->warm_retry_max_ms =
        cfg->warm_retry_max_ms < WARM_RETRY_MIN_MS ? WARM_RETRY_MAX_MS : cfg->warm_retry_max_ms;
    if (cfg->keepalive_target != NULL) {
        struct px_httpc_req r = {.method = "GET", .target = cfg->keepalive_target, .host = p->host};
        struct cm_buf b;
        if (px_httpc_build(&b, &r, true))
            p->keepalive_target = cm_xstrdup(cfg->keepalive_target);
        cm_buf_free(&b);
    }
    p->warm_ev = evtimer_new(base, on_warm_ev, p);
    if (p->warm_ev == NULL)
        abort();
    if (p->warm > 0)
        dispatch_later(p); /* the warm connection, from the loop */
    return p;
}

void px_httpc_pool_free(struct px_httpc_pool *p)
{
    if (p == NULL)
        return;
    while (!cm_list_empty(&p->queue))
        call_free(cm_container_of(p->queue.next, struct px_httpc_call, node));
    while (!cm_list_empty(&p->conns)) {
        struct pconn *k = cm_container_of(p->conns.next, struct pconn, node);
        if (k->call != NULL)
            call_free(k->call);
        cm_list_remove(&k->node);
        px_io_free(k->io);
        event_free(k->reap);
        free(k);
    }
    while (!cm_list_empty(&p->closing))
        on_reap(-1, 0, cm_container_of(p->closing.next, struct pconn, node));
    event_free(p->kick);
    event_free(p->warm_ev);
    free(p->keepalive_target);
    free(p->no_tls_err);
    free(p->tls_name);
    free(p->host);
    free(p);
}

void px_httpc_pool_set_addr(struct px_httpc_pool *p, const struct cm_addr *addr)
{
    p->addr = *addr;
}

void px_httpc_pool_hold(struct px_httpc_pool *p, bool held)
{
    p->held = held;
    if (!held)
        dispatch_later(p);
}

void px_httpc_pool_fail_queued(struct px_httpc_pool *p, const char *err)
{
    while (!cm_list_empty(&p->queue))
        call_done(cm_container_of(p->queue.next, struct px_httpc_call, node), 0, err);
}

struct px_httpc_call *px_httpc_pool_send(struct px_httpc_pool *p, const struct px_httpc_req *rq,
                                         px_httpc_cb cb, void *arg)
{
    if (p->nqueued >= p->max_queue) {
        errno = EAGAIN;
        return NULL;
    }
    struct px_httpc_call *c = call_new(p, rq, cb, arg);
    if (c == NULL) {
        errno = EINVAL;
        return NULL;
    }
    cm_list_insert_tail(&p->queue, &c->node);
    p->nqueued++;
    /* started from the loop, never inside the caller: cb must not run before
     * the caller has the handle */
    dispatch_later(p);
    return c;
}

void px_httpc_call_cancel(struct px_httpc_call *c)
{
    if (c == NULL)
        return;
    struct pconn *k = c->conn;
    if (k != NULL) {
        k->call = NULL;
        c->conn = NULL;
        /* a TLS connection not through its handshake has not seen the request:
         * it goes on and serves the next one; otherwise the answer on the
         * wire belongs to nobody */
        if (!(k->tls && k->st == PC_CONNECTING)) {
            conn_close(k);
            dispatch_later(k->p);
        }
    }
    call_free(c);
}

void px_httpc_pool_get_stats(const struct px_httpc_pool *p, struct px_httpc_pool_stats *s)
{
    *s = p->st;
    s->open = p->nconns;
    s->queued = p->nqueued;
}
