/* The JSON access log (docs/observability.md): one line per HTTP exchange
 * and one per opaque TCP connection, to the file "access_log" names. Each
 * line carries what is needed to follow a request through the mesh: its
 * request id and trace id, who called (address, verified identity), where
 * it went, what decided it, how it ended and why. */
#ifndef PX_ACCESSLOG_H
#define PX_ACCESSLOG_H

#include <stdint.h>
#include <stdio.h>

#include "common/net.h"

struct px_stream;
struct px_conn;

/* Write the line of a finished HTTP exchange to f (nothing when f is NULL):
 * status is what went downstream (0: nothing did), dur_us its duration. */
void px_accesslog_http(FILE *f, const struct px_stream *s, int status, uint64_t dur_us);

/* What a TCP tunnel (proxy/tcp.c) keeps for its line. Zeroed with the tunnel. */
struct px_tcp_log {
    uint64_t bytes[2];       /* [0] downstream -> upstream, [1] upstream -> downstream */
    struct cm_addr upstream; /* where it was connected (len 0: never) */
    const char *cause;       /* static text: why it failed or was closed early, or NULL */
    char rule[130];          /* the policy rule that decided ("" when no policy ran) */
};

/* Write the line of a closing TCP connection c to f (nothing when f is NULL);
 * its duration runs from c's accept. */
void px_accesslog_tcp(FILE *f, const struct px_conn *c, const struct px_tcp_log *l);

#endif
