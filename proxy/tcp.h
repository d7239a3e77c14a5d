/* Opaque TCP forwarding with half-close, for connections that are not HTTP. */
#ifndef PX_TCP_H
#define PX_TCP_H

#include "proxy/conn.h"

/* Take over c (its io's input may hold the first bytes) and splice it to
 * its default upstream. */
void px_tcp_start(struct px_conn *c);
/* Tunnels open now (opaque TCP: part of what `remora-proxy wait --drain`, the
 * preStop hook, counts as in flight; proxy/health_server.c /healthz/idle). */
unsigned px_tcp_active(void);
/* Close every tunnel (exit). */
void px_tcp_shutdown(void);

#endif
