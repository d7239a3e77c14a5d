/* HTTP/2 on both sides, with nghttp2: a server session per downstream
 * connection (h2c prior knowledge, or ALPN "h2" inside mTLS) and pooled client
 * sessions per upstream address, multiplexing many streams.
 *
 * Both bridge nghttp2 to px_stream (proxy/stream.h): flow control follows the
 * other side's backpressure (window updates are only sent for bytes the
 * other side has taken), and output stops at the io's watermark. */
#ifndef PX_H2_H
#define PX_H2_H

#include "proxy/conn.h"
#include "proxy/stream.h"

/* Take over a downstream connection whose first bytes were the HTTP/2
 * preface (still in c->bev's input buffer). Owns c from now on and calls
 * px_conn_free(c) when the session ends. */
void px_h2_server_start(struct px_conn *c);

/* Attach the upstream side of s to an HTTP/2 client session to s->upstream
 * (an existing one with room for another stream, else a new connection),
 * through px_stream_attach_up(). Failures are reported later, from the event
 * loop, through px_stream_on_error(s, PX_UP, cause). */
void px_h2_client_attach(struct px_stream *s);
/* A pooled session could take s now: same key (address, mTLS, expected
 * identity) and fewer streams than s->cb.max_requests_per_connection and the
 * peer's SETTINGS_MAX_CONCURRENT_STREAMS (circuit breakers). */
bool px_h2_client_has_room(const struct px_stream *s);

/* Draining: GOAWAY to every server session (in-flight streams finish);
 * close idle client sessions. */
void px_h2_drain(void);

/* Close everything at exit (after drain). */
void px_h2_shutdown(void);

/* Live sessions, for /stats. */
unsigned px_h2_server_sessions(void);
unsigned px_h2_client_sessions(void);

#endif
