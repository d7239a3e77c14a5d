/* Requests you can follow (docs/observability.md): the x-request-id each
 * request carries through the mesh, and W3C Trace Context (traceparent /
 * tracestate) propagation with this sidecar's span as the new parent.
 *
 * The parsers and generators here are pure (unit-tested, fuzzed by
 * test/fuzz/fuzz_trace.c); px_trace_on_req_head() and px_trace_on_respond()
 * are the two hooks the stream calls. Random bytes come from mbedTLS's
 * CTR_DRBG (AES-256-CTR) seeded from getrandom() at first use, refilled 1 KiB
 * at a time: a UUID costs no syscall and no lock (the proxy is one event-loop
 * thread). */
#ifndef PX_TRACE_H
#define PX_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A well-formed x-request-id: 1 to PX_REQID_MAX bytes, each visible ASCII
 * (0x21-0x7e): no space, no control byte, nothing above 0x7e. */
#define PX_REQID_MAX 128
/* A generated one: a UUIDv4 in lower-case hex, 36 chars. */
#define PX_UUID_LEN 36
/* traceparent version 00: "vv-<32 hex>-<16 hex>-ff", 55 chars. */
#define PX_TRACEPARENT_LEN 55

/* What one request carries for the access log; embedded in px_stream and
 * zeroed with it. Strings point into the stream's arena. */
struct px_trace {
    const char *request_id; /* the x-request-id sent on (kept or generated), or NULL */
    const char *peer_id;    /* the verified peer SPIFFE ID, copied at the head, or NULL */
    const char *rule;       /* the policy rule that decided (copied), or NULL */
    bool traced;            /* a traceparent went on: the ids below are set */
    bool has_parent;        /* the caller sent a valid traceparent (parent_id is its span) */
    bool started;           /* this sidecar started the trace (absent or invalid before) */
    bool connection;        /* the head has a Connection header (px_trace_restore looks) */
    uint8_t flags;          /* trace-flags sent on */
    uint8_t trace_id[16];
    uint8_t span_id[8];   /* this sidecar's span: the parent-id sent on */
    uint8_t parent_id[8]; /* the caller's span, when has_parent */
};

struct px_traceparent {
    uint8_t version;
    uint8_t trace_id[16];
    uint8_t parent_id[8];
    uint8_t flags;
};

/* Is s[0..len) a well-formed request id (see PX_REQID_MAX)? */
bool px_reqid_valid(const char *s, size_t len);

/* Write a fresh UUIDv4 (RFC 9562 4.4: version 4, variant 10) and a NUL
 * into out[PX_UUID_LEN + 1]. */
void px_reqid_generate(char *out);

/* Parse a traceparent value (W3C Trace Context level 1, 3.2): version
 * 2 lower-case hex and not "ff"; for version 00 exactly 55 chars; for a
 * later version at least 55, and a '-' after the first 55 when longer;
 * trace-id and parent-id lower-case hex and not all zero. Returns 0 and
 * fills *out, or -1 (out untouched). */
int px_traceparent_parse(const char *s, size_t len, struct px_traceparent *out);

/* Write tp as a version-00 traceparent plus a NUL into out[PX_TRACEPARENT_LEN + 1]. */
void px_traceparent_format(const struct px_traceparent *tp, char *out);

/* Lower-case hex of n bytes plus a NUL into out[2n + 1]. */
void px_trace_hex(const uint8_t *b, size_t n, char *out);

/* n random bytes from the buffered keystream. */
void px_trace_random(void *buf, size_t n);
/* n random bytes, not all zero (trace and span ids). */
void px_trace_random_id(uint8_t *buf, size_t n);

/* Sample a new trace: true with probability percent/100 (0: never, 100: always). */
bool px_trace_sample(uint32_t percent);

/* ---- stream hooks (proxy/stream.c) ----------------------------------------------- */
struct px_stream;

/* The request head in s->req is ready to go on: keep a well-formed
 * x-request-id or replace it with a new UUIDv4 (absent, malformed, or
 * repeated); keep traceparent's trace-id and flags and write this sidecar's
 * span as the parent-id; when traceparent is absent and `outbound`, start a
 * trace (sampled with sample_percent); an invalid or repeated traceparent is
 * replaced by a new trace and its tracestate dropped (W3C 4.3). tracestate and
 * the B3 headers otherwise pass untouched. Also copies the verified peer
 * identity for the access log. A second call does nothing. */
void px_trace_on_req_head(struct px_stream *s, bool outbound, uint32_t sample_percent);

/* After the hop-by-hop headers were stripped: a client's Connection header may
 * have named x-request-id or traceparent; put back what px_trace_on_req_head
 * decided, so the app always gets both. Costs nothing without a Connection header. */
void px_trace_restore(struct px_stream *s);

/* A local reply (s->resp being built by px_stream_respond): add the request's
 * x-request-id, deciding it first when the head never got that far. */
void px_trace_on_respond(struct px_stream *s);

/* Record the policy rule that decided s (copied into the stream's arena). */
void px_trace_set_rule(struct px_stream *s, const char *rule);

/* Release the generator (at exit, for the leak checks; reseeds on next use). */
void px_trace_shutdown(void);

#endif
