/* Listeners: bound sockets that accept downstream connections, find their
 * original destination, detect the protocol and hand them to a codec. */
#ifndef PX_LISTENER_H
#define PX_LISTENER_H

#include <event2/listener.h>

#include "common/net.h"
#include "proxy/config.h"

struct px_server;

struct px_listener {
    struct px_server *srv;             /* the process context its connections get */
    const struct px_listener_cfg *cfg; /* borrowed from the config snapshot */
    struct evconnlistener *evl;
    struct cm_addr bound;    /* the real address (port 0 resolved) */
    struct event *resume_ev; /* re-enables accepting after EMFILE */
    /* plaintext accepted on this mTLS listener (proxy/inbound_tls.c), by index
     * in cfg->permissive_ports; the last slot: every other port */
    uint64_t plaintext[PX_MAX_PERMISSIVE_PORTS + 1];
};

/* Bind and start accepting. Returns 0 or CM_ERR_IO with *errmsg. An optional
 * listener whose address family is not available returns 0 with *out NULL. */
int px_listener_start(struct px_server *srv, const struct px_listener_cfg *cfg,
                      struct px_listener **out, char **errmsg);
/* Stop accepting (drain); the socket stays bound until px_listener_free. */
void px_listener_stop(struct px_listener *l);
void px_listener_free(struct px_listener *l);
/* The running listener started from cfg, or NULL (skipped, or not started). */
const struct px_listener *px_listener_of(const struct px_server *srv,
                                         const struct px_listener_cfg *cfg);

#endif
