/* The px_server a proxy unit test drives the data path with: default limits,
 * a fresh event loop, empty connection and stream lists, and the gc event
 * that frees closed streams on the next loop turn, as server.c's does.
 * The caller adjusts cfg->limits afterwards and frees srv->base itself. */
#ifndef TEST_UNIT_PROXY_FAKE_SERVER_H
#define TEST_UNIT_PROXY_FAKE_SERVER_H

#include <event2/event.h>
#include <string.h>

#include "common/list.h"
#include "proxy/config.h"
#include "proxy/server.h"
#include "proxy/stream.h"

static void fake_server_on_gc(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    px_stream_gc(arg);
}

static inline void fake_server_init(struct px_server *srv, struct px_config *cfg)
{
    memset(srv, 0, sizeof(*srv));
    memset(cfg, 0, sizeof(*cfg));
    px_limits_default(&cfg->limits);
    srv->cfg = cfg;
    srv->base = event_base_new();
    cm_list_init(&srv->conns);
    cm_list_init(&srv->streams);
    cm_list_init(&srv->gc_streams);
    srv->gc_ev = event_new(srv->base, -1, 0, fake_server_on_gc, srv);
}

#endif
