/* Listeners: bind, accept (or refuse at max_connections and while draining),
 * pause after accept errors. What happens to an accepted socket is
 * proxy/conn.c. */
#include "proxy/listener.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/conn.h"
#include "proxy/inbound_tls.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

static void on_accept(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct px_listener *l = arg;
    const struct px_server *srv = l->srv;
    (void)evl;
    const struct px_limits *lim = &srv->cfg->limits;
    if (srv->nconns >= lim->max_connections || srv->draining) {
        px_metrics.downstream_cx_refused++;
        close(fd);
        return;
    }
    px_conn_accept(l, fd, sa, (socklen_t)salen);
}

static void on_resume_accept(evutil_socket_t fd, short what, void *arg)
{
    struct px_listener *l = arg;
    (void)fd;
    (void)what;
    if (!l->srv->draining)
        evconnlistener_enable(l->evl);
}

static void on_accept_error(struct evconnlistener *evl, void *arg)
{
    struct px_listener *l = arg;
    int err = EVUTIL_SOCKET_ERROR();
    (void)evl;
    cm_warn("listener %s: accept: %s", l->cfg->name, evutil_socket_error_to_string(err));
    /* Out of descriptors or memory: pause accepting briefly rather than spin. */
    evconnlistener_disable(l->evl);
    struct timeval tv = {0, 100000};
    evtimer_add(l->resume_ev, &tv);
}

int px_listener_start(struct px_server *srv, const struct px_listener_cfg *cfg,
                      struct px_listener **out, char **errmsg)
{
    char a[CM_ADDR_STRLEN];
    int fd = cm_net_listen(&cfg->addr, 1024);
    if (fd < 0 && cfg->optional && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL)) {
        /* the address family (or ::1) does not exist in this network namespace */
        cm_warn("listener %s: %s is not available here (%s): skipped, it is optional", cfg->name,
                cm_addr_format(&cfg->addr, a, sizeof(a)), strerror(errno));
        *out = NULL;
        return 0;
    }
    if (fd < 0) {
        *errmsg = cm_xasprintf("listener %s: cannot listen on %s: %s", cfg->name,
                               cm_addr_format(&cfg->addr, a, sizeof(a)), strerror(errno));
        return CM_ERR_IO;
    }
    struct px_listener *l = cm_xcalloc(1, sizeof(*l));
    l->srv = srv;
    l->cfg = cfg;
    cm_net_local_addr(fd, &l->bound);
    l->evl = evconnlistener_new(srv->base, on_accept, l,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (l->evl == NULL) {
        close(fd);
        free(l);
        *errmsg = cm_xasprintf("listener %s: evconnlistener_new failed", cfg->name);
        return CM_ERR_IO;
    }
    evconnlistener_set_error_cb(l->evl, on_accept_error);
    l->resume_ev = evtimer_new(srv->base, on_resume_accept, l);
    cm_info("listener %s (%s) on %s", cfg->name,
            cfg->direction == PX_DIR_INBOUND ? "inbound" : "outbound",
            cm_addr_format(&l->bound, a, sizeof(a)));
    px_inbound_tls_listener_started(l); /* plaintext counters by port */
    *out = l;
    return 0;
}

const struct px_listener *px_listener_of(const struct px_server *srv,
                                         const struct px_listener_cfg *cfg)
{
    for (size_t i = 0; srv != NULL && i < srv->nlisteners; i++)
        if (srv->listeners[i]->cfg == cfg)
            return srv->listeners[i];
    return NULL;
}

void px_listener_stop(struct px_listener *l)
{
    evconnlistener_disable(l->evl);
}

void px_listener_free(struct px_listener *l)
{
    if (l == NULL)
        return;
    evconnlistener_free(l->evl);
    event_free(l->resume_ev);
    free(l);
}
