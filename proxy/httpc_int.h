/* Inside px_httpc: what httpc.c shares with the keep-alive pool (httpc_pool.c). */
#ifndef PX_HTTPC_INT_H
#define PX_HTTPC_INT_H

#include <stdbool.h>

#include "common/buf.h"
#include "proxy/httpc.h"
#include "proxy/io.h"

/* The request's bytes into *out (initialised here, freed by the caller even
 * on failure); false when a part is not valid HTTP. keep_alive: without
 * "Connection: close". */
bool px_httpc_build(struct cm_buf *out, const struct px_httpc_req *rq, bool keep_alive);
/* TCP_NODELAY on the io's socket. */
void px_httpc_nodelay(struct px_io *io);
/* The answer is complete and the server lets the connection be reused. */
bool px_httpc_answer_keep_alive(struct px_httpc_answer *a);
/* After px_httpc_answer_feed returned PX_HTTPC_DONE: where in the data fed
 * last the answer ended (NULL: at its end). */
const char *px_httpc_answer_end(struct px_httpc_answer *a);
/* Any byte of the answer arrived. */
bool px_httpc_answer_got_bytes(const struct px_httpc_answer *a);
/* Why the answer failed ("" while it has not). */
const char *px_httpc_answer_error(const struct px_httpc_answer *a);
/* What the callback gets: the answer so far (ok), or status 0 with err. */
void px_httpc_answer_outcome(struct px_httpc_answer *a, bool ok, const char *err,
                             struct px_httpc_resp *r);
/* Why a connection failed, after px_io's error event: "connect: ...", the TLS
 * error, or "connection: ..." (connected: its TCP connect had completed). */
void px_httpc_io_error(struct px_io *io, bool connected, char *buf, size_t cap);

#endif
