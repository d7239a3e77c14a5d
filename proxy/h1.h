/* HTTP/1.1 on both sides, with llhttp: the server codec for downstream
 * connections (keep-alive, pipelining handled one request at a time,
 * chunked and content-length bodies, Expect: 100-continue, hop-by-hop
 * headers, Upgrade requests and the tunnel after 101) and the client codec for pooled upstream
 * connections. */
#ifndef PX_H1_H
#define PX_H1_H

#include "proxy/conn.h"
#include "proxy/stream.h"

/* Take over a downstream connection whose first bytes look like HTTP/1.x
 * (still in c->io's input buffer). Owns c from now on. */
void px_h1_server_start(struct px_conn *c);

/* Attach the upstream side of s to an HTTP/1.1 connection to s->upstream,
 * from the pool or new. Failures are reported later through
 * px_stream_on_error(s, PX_UP, cause). */
void px_h1_client_attach(struct px_stream *s);
/* An idle pooled connection to a waits (circuit breakers: a waiter may take it). */
bool px_h1_client_has_idle(const struct cm_addr *a);

/* Draining: close idle keep-alive connections, answer "Connection: close"
 * on the rest. */
void px_h1_drain(void);
void px_h1_shutdown(void);

#endif
