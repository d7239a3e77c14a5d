#include "proxy/tcp.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

/* One spliced connection pair. Each direction ends on its own (half-close):
 * EOF from one peer becomes shutdown(SHUT_WR) toward the other once what was
 * read before the EOF has been written. */
enum tcp_state {
    TCP_CONNECTING = 0, /* upstream connect in progress; client bytes wait */
    TCP_OPEN,           /* both connected, bytes flow */
    TCP_CLOSED          /* freed on the next loop turn */
};

struct tunnel {
    struct px_conn *c;
    struct bufferevent *side[2]; /* [0] client, [1] upstream */
    bool eof[2];                 /* EOF read from side i */
    bool shut[2];                /* SHUT_WR sent to side i */
    enum tcp_state state;
    struct cm_list link;
};

static struct cm_list tunnels = {&tunnels, &tunnels};

static void tunnel_free(struct tunnel *t)
{
    cm_list_remove(&t->link);
    for (int i = 0; i < 2; i++)
        if (t->side[i] != NULL)
            bufferevent_free(t->side[i]);
    if (t->side[1] != NULL)
        px_metrics.upstream_cx_active--;
    px_conn_free(t->c);
    free(t);
}

static int side_of(struct tunnel *t, struct bufferevent *bev)
{
    return bev == t->side[0] ? 0 : 1;
}

/* Forward side i's input to the other side; pause i when the other side's
 * output passes the bound. */
static void pump(struct tunnel *t, int i)
{
    struct bufferevent *from = t->side[i], *to = t->side[!i];
    struct evbuffer *in = bufferevent_get_input(from);
    size_t n = evbuffer_get_length(in);
    if (n == 0)
        return;
    if (i == 0)
        px_metrics.tcp_bytes_in += n;
    else
        px_metrics.tcp_bytes_out += n;
    bufferevent_write_buffer(to, in);
    if (evbuffer_get_length(bufferevent_get_output(to)) >= px_srv->cfg->limits.buffer_bytes)
        bufferevent_disable(from, EV_READ);
}

static bool maybe_done(struct tunnel *t)
{
    if (t->shut[0] && t->shut[1]) {
        tunnel_free(t);
        return true;
    }
    return false;
}

/* After side i's EOF: once its bytes are out, half-close the other side. */
static void try_shutdown(struct tunnel *t, int i)
{
    struct bufferevent *to = t->side[!i];
    if (!t->eof[i] || t->shut[!i])
        return;
    if (evbuffer_get_length(bufferevent_get_output(to)) > 0)
        return; /* on_write will call again */
    shutdown(bufferevent_getfd(to), SHUT_WR);
    t->shut[!i] = true;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    if (t->state != TCP_OPEN)
        return;
    pump(t, side_of(t, bev));
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    int i = side_of(t, bev);
    /* side i drained: the other side may read again */
    if (t->state == TCP_OPEN && !t->eof[!i])
        bufferevent_enable(t->side[!i], EV_READ);
    try_shutdown(t, !i);
    maybe_done(t);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct tunnel *t = arg;
    int i = side_of(t, bev);
    if (what & BEV_EVENT_CONNECTED) {
        t->state = TCP_OPEN;
        bufferevent_set_timeouts(bev, NULL, NULL);
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        bufferevent_enable(t->side[1], EV_READ);
        bufferevent_enable(t->side[0], EV_READ);
        pump(t, 0);
        if (t->eof[0])
            try_shutdown(t, 0);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        if (t->state == TCP_OPEN)
            pump(t, i);
        t->eof[i] = true;
        bufferevent_disable(bev, EV_READ);
        if (t->state == TCP_OPEN)
            try_shutdown(t, i);
        maybe_done(t);
        return;
    }
    /* error (reset, refused) or timeout: tear both down */
    if (i == 1 && t->state == TCP_CONNECTING) {
        px_metrics.upstream_cx_connect_fail++;
        char a[CM_ADDR_STRLEN];
        struct cm_addr up;
        px_conn_default_upstream(t->c, &up);
        cm_debug("tcp conn %llu: upstream %s: %s", (unsigned long long)t->c->id,
                 cm_addr_format(&up, a, sizeof(a)),
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    }
    tunnel_free(t);
}

void px_tcp_start(struct px_conn *c)
{
    struct tunnel *t = cm_xcalloc(1, sizeof(*t));
    t->c = c;
    t->side[0] = c->bev;
    c->handler = t;
    cm_list_insert_tail(&tunnels, &t->link);
    struct cm_addr up;
    px_conn_default_upstream(c, &up);
    if (px_conn_is_loop(c, &up)) {
        cm_warn("tcp conn %llu: refusing a connection to the proxy itself",
                (unsigned long long)c->id);
        tunnel_free(t);
        return;
    }
    t->side[1] = bufferevent_socket_new(px_srv->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (t->side[1] == NULL) {
        tunnel_free(t);
        return;
    }
    px_metrics.upstream_cx_total++;
    px_metrics.upstream_cx_active++;
    uint32_t bound = px_srv->cfg->limits.buffer_bytes;
    for (int i = 0; i < 2; i++) {
        bufferevent_setcb(t->side[i], on_read, on_write, on_event, t);
        bufferevent_setwatermark(t->side[i], EV_READ, 0, bound);
        bufferevent_setwatermark(t->side[i], EV_WRITE, bound / 2, 0);
    }
    /* client bytes wait in its input buffer until the upstream connects */
    bufferevent_disable(t->side[0], EV_READ);
    struct timeval tv = {px_srv->cfg->limits.connect_timeout_ms / 1000,
                         (px_srv->cfg->limits.connect_timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(t->side[1], NULL, &tv);
    if (bufferevent_socket_connect(t->side[1], (struct sockaddr *)&up.ss, (int)up.len) != 0) {
        px_metrics.upstream_cx_connect_fail++;
        tunnel_free(t);
        return;
    }
    bufferevent_enable(t->side[1], EV_READ);
}

void px_tcp_shutdown(void)
{
    while (!cm_list_empty(&tunnels))
        tunnel_free(cm_container_of(tunnels.next, struct tunnel, link));
}
