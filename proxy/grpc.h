/* gRPC over the proxy (docs/grpc.md): the few places where a gRPC exchange
 * differs from any other HTTP/2 one.
 *
 *   - a gRPC request (content-type application/grpc[+fmt][;params]) gets its
 *     errors the gRPC way: HTTP 200, trailers-only, grpc-status and a
 *     percent-encoded grpc-message (px_grpc_respond, from px_stream_respond);
 *   - grpc-timeout bounds the request like timeout_ms, the smaller wins
 *     (px_grpc_timeout_parse, from px_stream_on_req_head);
 *   - retries.on may name gRPC statuses, read from the trailers or from a
 *     trailers-only response (px_grpc_status_by_name, px_grpc_resp_status);
 *   - remora_requests_total carries grpc_status (px_grpc_resp_status).
 *
 * Everything here is stateless; the per-stream bits live in struct
 * px_stream (grpc, resp_held, grpc_status). */
#ifndef PX_GRPC_H
#define PX_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/http.h"
#include "proxy/stream.h"

/* The gRPC status codes (grpc/doc/statuscodes.md) the proxy names. */
enum px_grpc_status {
    PX_GRPC_OK = 0,
    PX_GRPC_CANCELLED = 1,
    PX_GRPC_UNKNOWN = 2,
    PX_GRPC_INVALID_ARGUMENT = 3,
    PX_GRPC_DEADLINE_EXCEEDED = 4,
    PX_GRPC_NOT_FOUND = 5,
    PX_GRPC_PERMISSION_DENIED = 7,
    PX_GRPC_RESOURCE_EXHAUSTED = 8,
    PX_GRPC_UNIMPLEMENTED = 12,
    PX_GRPC_INTERNAL = 13,
    PX_GRPC_UNAVAILABLE = 14,
    PX_GRPC_UNAUTHENTICATED = 16
};
#define PX_GRPC_STATUS_MAX 16 /* codes are 0..16; anything else is "other" */

/* Longest grpc-timeout the proxy honours, in ms (the value is capped there). */
#define PX_GRPC_TIMEOUT_MAX_MS UINT32_MAX

/* Is this request gRPC? A POST whose content-type is application/grpc,
 * alone or followed by '+' (application/grpc+proto) or ';' (parameters),
 * any case. */
bool px_grpc_is_request_slow(const struct px_msg *req);
static inline bool px_grpc_is_request(const struct px_msg *req)
{
    /* every gRPC call is a POST: plain GETs cost two loads, not a call */
    const char *m = req->method;
    return m != NULL && m[0] == 'P' && m[1] == 'O' && px_grpc_is_request_slow(req);
}

/* Parse a grpc-timeout value (1 to 8 ASCII digits, then one unit: H M S m u
 * n). Returns 0 and the timeout in milliseconds, rounded up to at least 1 and
 * capped at PX_GRPC_TIMEOUT_MAX_MS, or -1 when the value is malformed. */
int px_grpc_timeout_parse(const char *v, size_t len, uint64_t *ms);

/* Parse a grpc-status value: 0..PX_GRPC_STATUS_MAX, PX_GRPC_STATUS_MAX + 1
 * for any other decimal number ("other"), -1 when it is not a number. */
int px_grpc_status_parse(const char *v, size_t len);

/* The gRPC status of a response: the trailers' grpc-status, else the head's
 * (a trailers-only response); same values as px_grpc_status_parse, -1 when
 * neither carries one. */
int px_grpc_resp_status(const struct px_msg *head, const struct px_msg *trailers);

/* A retries.on name ("cancelled", "deadline-exceeded", "internal",
 * "resource-exhausted", "unavailable"): 0 and its code, or -1. */
int px_grpc_status_by_name(const char *name, int *code);

/* The gRPC status of a reply the proxy makes with HTTP status `status` for
 * cause `cause` (the table in docs/grpc.md). */
int px_grpc_status_of_http(int status, enum px_cause cause);

/* Percent-encode a grpc-message (bytes outside 0x20..0x7e and '%' become
 * %XX). Writes at most cap - 1 characters and a NUL, never a cut escape;
 * returns the length written. */
size_t px_grpc_percent_encode(char *dst, size_t cap, const char *src, size_t len);

/* Answer a gRPC request locally (from px_stream_respond, status/msg as
 * there): HTTP 200, content-type application/grpc, grpc-status and
 * grpc-message in one HEADERS frame with END_STREAM (trailers-only).
 * Returns false (nothing sent) when the downstream is not HTTP/2: gRPC needs
 * trailers, so an HTTP/1.1 client gets the plain-text answer. */
bool px_grpc_respond(struct px_stream *s, int status, const char *msg);

/* End a gRPC response whose head already went downstream with the given
 * status (trailers grpc-status / grpc-message after the body sent so far).
 * Returns false when the downstream is not HTTP/2 (the caller resets it). */
bool px_grpc_end_with(struct px_stream *s, int code, const char *msg);

#endif
