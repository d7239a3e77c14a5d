/* Internals shared by the stream files (not an API: proxy/stream.h is).
 *   stream.c         the exchange: life cycle, local replies, request and
 *                    response flow between the two sides, errors
 *   stream_retry.c   tries: endpoint pick, circuit breakers, per-try timeout,
 *                    verdicts, retries and resends with their backoff
 *   stream_tunnel.c  HTTP Upgrade / extended CONNECT: the 101, the tunnel */
#ifndef PX_STREAM_INT_H
#define PX_STREAM_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/routes.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

/* stream.c: tell a side to reset its half of the exchange, once. */
void px_stream_abort_side(struct px_stream *s, enum px_side side);

/* stream_retry.c */
/* The endpoint verdict a failure cause stands for. */
enum px_try_outcome px_stream_outcome_of(enum px_cause c);
/* Give the current try's endpoint its verdict (once; nothing without one:
 * inline, as most requests have no route endpoint). */
void px_stream_report_try_ep(struct px_stream *s, enum px_try_outcome o);
static inline void px_stream_report_try(struct px_stream *s, enum px_try_outcome o)
{
    if (s->ep != NULL)
        px_stream_report_try_ep(s, o);
}
/* Start a try: pick, resolve, pass the breakers, then attach and send (or
 * answer when that fails). */
void px_stream_start_try(struct px_stream *s);
/* May the failed try go again? grpc >= 0: for that gRPC status (the route's
 * retries.on); otherwise by outcome and HTTP status (retry_on). */
bool px_stream_can_retry_if(struct px_stream *s, enum px_try_outcome o, int status, int grpc);
bool px_stream_can_retry(struct px_stream *s, enum px_try_outcome o, int status);
/* Arm the next try after the backoff (none for a resend). */
void px_stream_schedule_retry(struct px_stream *s, enum px_retry_reason why);

/* stream_tunnel.c */
/* The Upgrade value when the request asks for one we forward, else NULL.
 * Inline up to the header scan, which only a request with an Upgrade field
 * (s->upgrade_asked) takes. */
const char *px_stream_upgrade_scan(struct px_stream *s);
static inline const char *px_stream_upgrade_requested(struct px_stream *s)
{
    if (s->upgrade != NULL)
        return s->upgrade; /* an HTTP/2 client's extended CONNECT (h2_server.c) */
    if (!s->upgrade_asked || s->req.http_minor < 1)
        return NULL; /* the common case: no header scan */
    return px_stream_upgrade_scan(s);
}
/* Put the Upgrade field (value) back into m after the hop-by-hop strip.
 * Returns 0, or -1 after answering 431. */
int px_stream_keep_upgrade(struct px_stream *s, struct px_msg *m, const char *value);
/* The upstream's 101: open the tunnel and send the head down, or 502. */
void px_stream_on_switching(struct px_stream *s);
/* Request bytes of an open tunnel or ahead of the 101: forwarded or kept.
 * Returns true to pause the client. */
bool px_stream_tunnel_data(struct px_stream *s, const uint8_t *data, size_t len);

#endif
