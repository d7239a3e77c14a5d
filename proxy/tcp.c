#include "proxy/tcp.h"

#include <errno.h>
#include <event2/buffer.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/accesslog.h"
#include "proxy/authz.h"
#include "proxy/io.h"
#include "proxy/tls.h"
#include "proxy/metrics.h"
#include "proxy/routes.h"
#include "proxy/server.h"
#include "proxy/service.h"
#include "proxy/upstream.h"

/* One spliced connection pair. Each direction ends on its own (half-close):
 * EOF from one peer becomes shutdown(SHUT_WR) toward the other once what was
 * read before the EOF has been written. */
enum tcp_state {
    TUN_CONNECTING = 0, /* upstream connect in progress; client bytes wait */
    TUN_OPEN,           /* both connected, bytes flow */
    TUN_CLOSING         /* freed from the deferred event */
};

struct tunnel {
    struct px_server *srv;
    struct px_conn *c;
    struct px_io *side[2]; /* [0] client, [1] upstream */
    bool eof[2];           /* EOF read from side i */
    enum tcp_state state;
    struct event *reap;               /* frees the tunnel outside its callbacks */
    struct px_timer idle;             /* limits.tcp_idle_timeout_ms without a byte either way */
    struct px_upstream_target target; /* resolved by proxy/upstream.c */
    struct px_routes *svc;            /* a discovered Service's route (proxy/service.c), or NULL */
    struct px_endpoint *ep;           /* its endpoint this connection counts on, or NULL */
    struct cm_list link;
    struct px_tcp_log log; /* its access log line (proxy/accesslog.h) */
};

static struct cm_list tunnels = {&tunnels, &tunnels};

unsigned px_tcp_active(void)
{
    unsigned n = 0;
    for (struct cm_list *l = tunnels.next; l != &tunnels; l = l->next)
        n++;
    return n;
}

static void tunnel_free(struct tunnel *t)
{
    cm_list_remove(&t->link);
    px_accesslog_tcp(t->srv->access_log, t->c, &t->log);
    px_io_free(t->side[0]);
    t->c->io = NULL;
    if (t->side[1] != NULL) {
        px_io_free(t->side[1]);
        px_metrics.upstream_cx_active--;
    }
    event_free(t->reap);
    px_timer_free(&t->idle);
    px_upstream_target_release(&t->target);
    t->target.expected_id = NULL; /* borrowed from the route released next */
    if (t->ep != NULL)
        px_service_tcp_close(t->ep); /* one connection fewer on it */
    px_routes_unref(t->svc);
    px_conn_free(t->c);
    free(t);
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tunnel_free(arg);
}

static void close_later(struct tunnel *t)
{
    if (t->state == TUN_CLOSING)
        return;
    t->state = TUN_CLOSING;
    for (int i = 0; i < 2; i++)
        if (t->side[i] != NULL)
            px_io_read_enable(t->side[i], false);
    event_active(t->reap, EV_TIMEOUT, 0);
}

static int side_of(struct tunnel *t, struct px_io *io)
{
    return io == t->side[0] ? 0 : 1;
}

/* Forward side i's input to the other side; pause i when the other side's
 * output passes the bound (resumed from on_drained at half). */
static void pump(struct tunnel *t, int i)
{
    struct evbuffer *in = px_io_input(t->side[i]);
    size_t n = evbuffer_get_length(in);
    if (n == 0)
        return;
    const struct px_limits *lim = &t->srv->cfg->limits;
    if (lim->tcp_idle_timeout_ms > 0)
        px_timer_set(&t->idle, lim->tcp_idle_timeout_ms);
    t->log.bytes[i] += n;
    if (i == 0)
        px_metrics.tcp_bytes_in += n;
    else
        px_metrics.tcp_bytes_out += n;
    struct evbuffer *out = px_io_output(t->side[!i]);
    evbuffer_add_buffer(out, in);
    if (evbuffer_get_length(out) >= lim->buffer_bytes)
        px_io_read_enable(t->side[i], false);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    (void)fd;
    (void)what;
    if (!px_timer_due(&t->idle))
        return;
    px_metrics.tcp_idle_timeout++;
    t->log.cause = "idle timeout";
    cm_debug("tcp conn %llu: idle for %u ms: closed", (unsigned long long)t->c->id,
             (unsigned)t->srv->cfg->limits.tcp_idle_timeout_ms);
    close_later(t);
}

static void maybe_done(struct tunnel *t)
{
    if (t->eof[0] && t->eof[1] && evbuffer_get_length(px_io_output(t->side[0])) == 0 &&
        evbuffer_get_length(px_io_output(t->side[1])) == 0)
        close_later(t);
}

static void on_read(struct px_io *io, void *arg)
{
    struct tunnel *t = arg;
    if (t->state == TUN_OPEN)
        pump(t, side_of(t, io));
}

static void on_drained(struct px_io *io, void *arg)
{
    struct tunnel *t = arg;
    int i = side_of(t, io);
    /* side i drained: the other side may read again */
    if (t->state == TUN_OPEN && !t->eof[!i])
        px_io_read_enable(t->side[!i], true);
    maybe_done(t);
}

/* The access log's cause for an error or timeout on side i. */
static const char *tcp_cause(const struct tunnel *t, int i, int what, int err)
{
    if (i == 0)
        return px_cause_str(PX_CAUSE_DOWNSTREAM_RESET);
    if (t->state != TUN_CONNECTING)
        return px_cause_str(PX_CAUSE_UPSTREAM_RESET);
    if (what & PX_IO_TIMEOUT)
        return px_cause_str(PX_CAUSE_CONNECT_TIMEOUT);
    if (px_io_is_tls(t->side[1]))
        return px_cause_str(PX_CAUSE_UPSTREAM_TLS);
    return px_cause_str(err == ECONNREFUSED ? PX_CAUSE_CONNECT_REFUSED : PX_CAUSE_CONNECT_FAILED);
}

static void on_event(struct px_io *io, int what, void *arg)
{
    struct tunnel *t = arg;
    int i = side_of(t, io);
    if (t->state == TUN_CLOSING)
        return;
    if ((what & PX_IO_CONNECTED) && px_io_is_tls(io)) {
        /* mTLS: the tunnel opens when the handshake is done */
        px_io_set_timeout(io, t->srv->cfg->limits.connect_timeout_ms);
        return;
    }
    if (what & (PX_IO_CONNECTED | PX_IO_HANDSHAKE)) {
        t->state = TUN_OPEN;
        int one = 1;
        setsockopt(px_io_fd(io), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        px_io_set_timeout(io, 0);
        px_io_read_enable(t->side[0], !t->eof[0]);
        pump(t, 0);
        if (t->eof[0])
            px_io_shutdown_write(t->side[1]);
        return;
    }
    if (what & PX_IO_EOF) {
        t->eof[i] = true;
        if (t->state == TUN_OPEN) {
            pump(t, i);
            px_io_shutdown_write(t->side[!i]); /* after the bytes before it */
            maybe_done(t);
        }
        return;
    }
    /* error (reset, refused) or timeout: tear both down */
    if (t->log.cause == NULL)
        t->log.cause = tcp_cause(t, i, what, px_io_errno(io));
    if (i == 1 && t->state == TUN_CONNECTING) {
        px_metrics.upstream_cx_connect_fail++;
        char a[CM_ADDR_STRLEN];
        if (px_io_is_tls(io) && px_io_tls_error(io)[0] != '\0')
            cm_log_limited(CM_LOG_WARN, "outbound TCP mTLS handshake failed",
                           "tcp conn %llu: mTLS to %s failed: %s", (unsigned long long)t->c->id,
                           cm_addr_format(&t->target.addr, a, sizeof(a)), px_io_tls_error(io));
        cm_debug("tcp conn %llu: upstream %s: %s", (unsigned long long)t->c->id,
                 cm_addr_format(&t->target.addr, a, sizeof(a)),
                 (what & PX_IO_TIMEOUT) ? "connect timeout" : strerror(px_io_errno(io)));
    }
    close_later(t);
}

void px_tcp_start(struct px_conn *c)
{
    struct tunnel *t = cm_xcalloc(1, sizeof(*t));
    const struct px_limits *lim = &c->srv->cfg->limits;
    t->srv = c->srv;
    t->c = c;
    t->side[0] = c->io;
    t->reap = event_new(t->srv->base, -1, 0, on_reap, t);
    px_timer_init(&t->idle, t->srv->base, on_idle, t);
    c->handler = t;
    cm_list_insert_tail(&tunnels, &t->link);
    px_io_set_timeout(c->io, 0);
    px_io_setcb(c->io, on_read, on_drained, on_event, t); /* no listener callback from here */
    if (c->lcfg->direction == PX_DIR_INBOUND &&
        !px_authz_check_tcp(c, t->log.rule, sizeof(t->log.rule))) {
        /* denied: closed before a byte is forwarded or the app is connected */
        t->log.cause = "denied by policy";
        close_later(t);
        return;
    }
    if (lim->tcp_idle_timeout_ms > 0)
        px_timer_set(&t->idle, lim->tcp_idle_timeout_ms);
    if (c->lcfg->direction == PX_DIR_OUTBOUND) {
        /* a discovered Service: one endpoint per connection, the least loaded */
        t->svc = px_service_tcp_pick(c, &t->ep);
        if (t->ep != NULL)
            px_service_tcp_open(t->ep);
    }
    enum px_resolve r = px_upstream_resolve_tcp(c, t->ep, &t->target);
    if (r == PX_RESOLVE_LOOP) {
        cm_warn("tcp conn %llu: refusing a connection to the proxy itself",
                (unsigned long long)c->id);
        t->log.cause = px_cause_str(PX_CAUSE_LOOP);
        close_later(t);
        return;
    }
    if (r != PX_RESOLVE_OK) {
        cm_warn("tcp conn %llu: %s: refusing", (unsigned long long)c->id, px_resolve_str(r));
        t->log.cause = px_resolve_str(r);
        close_later(t);
        return;
    }
    t->log.upstream = t->target.addr;
    t->side[1] = px_io_connect(t->srv->base, &t->target.addr, lim->connect_timeout_ms);
    if (t->side[1] == NULL) {
        px_metrics.upstream_cx_connect_fail++;
        t->log.cause = px_cause_str(PX_CAUSE_CONNECT_FAILED);
        close_later(t);
        return;
    }
    if (t->target.tls != NULL)
        px_io_start_tls(t->side[1], t->target.tls, t->target.expected_id);
    px_metrics.upstream_cx_total++;
    px_metrics.upstream_cx_active++;
    for (int i = 0; i < 2; i++) {
        px_io_setcb(t->side[i], on_read, on_drained, on_event, t);
        px_io_set_read_limit(t->side[i], lim->buffer_bytes);
        px_io_set_write_lowat(t->side[i], lim->buffer_bytes / 2);
    }
    /* client bytes wait in its input buffer until the upstream connects */
    px_io_read_enable(t->side[0], false);
}

void px_tcp_shutdown(void)
{
    while (!cm_list_empty(&tunnels))
        tunnel_free(cm_container_of(tunnels.next, struct tunnel, link));
}
