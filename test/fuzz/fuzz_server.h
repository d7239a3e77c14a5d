/* What the fuzz targets that drive the proxy's real codecs on a libevent loop
 * (fuzz_h1_request, fuzz_h1_response, fuzz_h2_server) share: a px_server with
 * the given config, and a downstream connection on one end of a socket pair,
 * set up as the listener would. Static functions: each target includes this
 * once. */
#ifndef REMORA_FUZZ_SERVER_H
#define REMORA_FUZZ_SERVER_H

#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/list.h"
#include "common/net.h"
#include "common/xalloc.h"
#include "proxy/config.h"
#include "proxy/conn.h"
#include "proxy/io.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/stream.h"

static void fuzz_on_gc(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    px_stream_gc(px_srv);
}

/* Parse cfg (len bytes) into srv and make srv the process's server; the event
 * base is created unless the caller already made one. Aborts on any failure:
 * a target with a broken harness must not run. */
static void fuzz_server_start(struct px_server *srv, const char *cfg, size_t len)
{
    char *err = NULL;
    if (px_config_parse("fuzz.json", cfg, len, &srv->cfg, &err) != 0)
        abort();
    cm_list_init(&srv->conns);
    cm_list_init(&srv->streams);
    cm_list_init(&srv->gc_streams);
    if (srv->base == NULL && (srv->base = event_base_new()) == NULL)
        abort();
    px_io_init(srv->base);
    srv->gc_ev = event_new(srv->base, -1, 0, fuzz_on_gc, NULL);
    srv->listeners_bound = true;
    px_srv = srv;
}

/* A downstream connection of the first listener on fd, from 127.0.0.1:40000 to
 * `local`, counted as accepted; the codec's start function takes it over. */
static struct px_conn *fuzz_conn_new(struct px_server *srv, int fd, enum px_conn_proto proto,
                                     const char *local, uint64_t id)
{
    struct px_conn *c = cm_xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->lcfg = &srv->cfg->listeners[0];
    c->fd = fd;
    c->io = px_io_new(srv->base, fd);
    c->proto = proto;
    c->id = id;
    cm_addr_parse("127.0.0.1:40000", &c->peer);
    cm_addr_parse(local, &c->local);
    c->orig_dst = c->local;
    cm_list_insert_tail(&srv->conns, &c->link);
    srv->nconns++;
    px_metrics.downstream_cx_total++;
    px_metrics.downstream_cx_active++;
    return c;
}

#endif
