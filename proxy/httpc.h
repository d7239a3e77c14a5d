/* px_httpc: the proxy's one small HTTP/1.1 client for what the proxy itself
 * asks (the CA, the app's probes, the app's metrics, `remora-proxy wait`),
 * apart from the data path (h1_client.c). One request per connection
 * (Connection: close), asynchronous on px_io (plain or px_tls), the answer
 * parsed with llhttp, bounded in time (one deadline for the whole exchange)
 * and in size (head and body). Design note: docs/internals/httpc.md. */
#ifndef PX_HTTPC_H
#define PX_HTTPC_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/net.h"
#include "proxy/tls.h"

#define PX_HTTPC_MAX_HEADERS 64 /* response fields kept; more is an error */

struct px_httpc_hdr {
    const char *name; /* as given (request) / lower-cased (response) */
    const char *value;
};

/* What to send. Everything is borrowed for the duration of px_httpc_start:
 * the request bytes are built there. */
struct px_httpc_req {
    const struct cm_addr *addr;
    struct px_tls_conf *tls; /* NULL: plaintext; else a client snapshot (a reference is taken) */
    const char *tls_name;    /* px_io_start_tls's expected_id (SPIFFE ID, or the CA's DNS name) */
    const char *method;      /* "GET", "POST" */
    const char *target;      /* origin form: "/path?query" */
    const char *host;        /* the Host field */
    const struct px_httpc_hdr *hdrs; /* more fields; names and values are validated */
    size_t nhdrs;
    const char *body; /* NULL: none (no Content-Length) */
    size_t body_len;
    uint32_t timeout_ms; /* connect to the end of the answer; 0: 10 s */
    size_t max_head;     /* bytes of the answer's fields; 0: 16 KiB */
    size_t max_body;     /* bytes of the answer's body; 0: 256 KiB */
    bool status_only;    /* done at the final status line (the prober: kubelet reads no more) */
};

/* The answer, valid during the callback only. status is 0 when the exchange
 * failed (err says why: connect, TLS, timeout, a malformed or over-limit
 * answer, a close before the end); otherwise err is NULL and status is the
 * final status (1xx answers are skipped). */
struct px_httpc_resp {
    int status;
    const char *err;
    const struct px_httpc_hdr *hdrs; /* lower-case names */
    size_t nhdrs;
    const struct cm_buf *body; /* empty with status_only */
};

typedef void (*px_httpc_cb)(const struct px_httpc_resp *r, void *arg);

struct px_httpc;

/* Start a request on `base` (px_io_init must have run for it). Returns the
 * handle, or NULL (errno: EINVAL for a request that cannot be sent, with a
 * field name or value that is not valid HTTP, a CR/LF in the target or a
 * missing part; else why no socket could be made). cb is then called exactly
 * once, from the event loop, unless px_httpc_cancel comes first; the handle
 * frees itself after cb returns. */
struct px_httpc *px_httpc_start(struct event_base *base, const struct px_httpc_req *req,
                                px_httpc_cb cb, void *arg);
/* Drop a request whose callback has not run yet; cb is not called. NULL is
 * fine. Not from inside the request's own callback. */
void px_httpc_cancel(struct px_httpc *c);

/* The answer side alone: the llhttp response parser px_httpc feeds what it
 * reads to (and test/fuzz/fuzz_httpc_response.c drives). Bounds as in
 * px_httpc_req (0: the defaults). Feeding returns PX_HTTPC_MORE until the
 * answer's fate is settled, then PX_HTTPC_DONE (the final answer, or its
 * status line with status_only) or PX_HTTPC_FAILED (malformed, over a bound,
 * cut by the close), and the same on every later call. */
#define PX_HTTPC_MORE   0
#define PX_HTTPC_DONE   1
#define PX_HTTPC_FAILED (-1)
struct px_httpc_answer;
struct px_httpc_answer *px_httpc_answer_new(size_t max_head, size_t max_body, bool status_only);
int px_httpc_answer_feed(struct px_httpc_answer *a, const char *data, size_t len);
/* The server closed: a body delimited by the close ends here. */
int px_httpc_answer_eof(struct px_httpc_answer *a);
/* The answer so far as px_httpc's callback gets it (status 0 and err when it
 * failed, status 0 and no err while it is not settled); valid until the next
 * feed or free. */
void px_httpc_answer_result(struct px_httpc_answer *a, struct px_httpc_resp *r);
void px_httpc_answer_free(struct px_httpc_answer *a);

/* The first response field of this (lower-case) name, or NULL. */
const char *px_httpc_header(const struct px_httpc_resp *r, const char *name);

/* ---- keep-alive connections to one server (proxy/httpc_pool.c) ------------------ */

/* px_httpc_pool: up to max_conns HTTP/1.1 connections to one server, kept
 * open between requests (no "Connection: close"; TCP_NODELAY), one request at
 * a time on each (no pipelining), more requests queued FIFO up to max_queue.
 * A request costs a connect and a TLS handshake only when no connection is
 * idle and fewer than max_conns are open. A connection the server closes
 * while idle, or that closes before any byte of the answer to a request sent
 * on it after an earlier one, has that request sent again once on a new
 * connection (the pool's users send idempotent requests only). A connect or
 * handshake that fails fails the queued requests too (the server is down:
 * each would pay the same wait). */
struct px_httpc_pool_cfg {
    const struct cm_addr *addr; /* copied; px_httpc_pool_set_addr changes it */
    /* The client TLS configuration for a new connection (a new reference), or
     * NULL: then requests fail with no_tls_err unless plaintext. */
    struct px_tls_conf *(*tls_conf)(void *arg);
    void *tls_arg;
    bool plaintext;         /* tls_conf NULL or returning NULL means plain HTTP (tests) */
    const char *no_tls_err; /* copied */
    const char *tls_name;   /* copied: px_io_start_tls's expected_id */
    const char *host;       /* copied: the Host field */
    unsigned max_conns;     /* 1..16 */
    size_t max_queue;       /* requests waiting for a connection */
    uint32_t idle_ms;       /* an idle connection is closed after this (0: 60 s) */
    /* Called (from the loop) when a TCP connect to addr failed: the owner may
     * re-resolve the name addr came from. NULL: nothing. */
    void (*on_unreachable)(void *arg);
    void *unreachable_arg;
    /* Warm connections: keep this many open (0 or 1) whether or not a request
     * waits. One is opened as soon as the pool may (not held, tls_conf gives a
     * configuration; while it gives none, asked again 50 ms doubling to 1 s),
     * re-opened when it closes or fails (at once after a connection that
     * answered a request sent with px_httpc_pool_send or lived 5 s; else 250 ms
     * doubling to warm_retry_max_ms), and is exempt
     * from idle_ms: its first request, right after its handshake when no
     * call waits, and one after each keepalive_ms without a request is a
     * "GET keepalive_target" (the answer is read and dropped): the server's
     * first-request costs are paid before a call needs the connection, and its
     * idle close does not take it (not answered in 5 s: the connection is
     * closed and re-opened). keepalive_target NULL: never sent. */
    unsigned warm;
    const char *keepalive_target; /* copied */
    uint32_t keepalive_ms;        /* 0: 100 s */
    uint32_t warm_retry_max_ms;   /* 0: 30 s */
};
struct px_httpc_pool;
struct px_httpc_call;

struct px_httpc_pool *px_httpc_pool_new(struct event_base *base,
                                        const struct px_httpc_pool_cfg *cfg);
/* Close every connection; requests not answered yet are dropped without their
 * callbacks. Not from inside a callback of the pool. NULL is fine. */
void px_httpc_pool_free(struct px_httpc_pool *p);
/* New connections go to addr (open ones stay). */
void px_httpc_pool_set_addr(struct px_httpc_pool *p, const struct cm_addr *addr);
/* While held, no connection is opened (calls wait in the queue; open idle
 * ones still serve them): the address is being resolved. */
void px_httpc_pool_hold(struct px_httpc_pool *p, bool held);
/* Fail every queued call with err (their callbacks run now: call it from the
 * loop, not from a callback of one of them). */
void px_httpc_pool_fail_queued(struct px_httpc_pool *p, const char *err);
/* Send a request: of rq the method, target, hdrs, body, timeout_ms (from now,
 * queueing included), max_head, max_body are used (addr, tls, tls_name and
 * host are the pool's). Returns the call, whose cb runs exactly once from the
 * event loop unless px_httpc_call_cancel comes first; or NULL with errno
 * EINVAL (not valid HTTP) or EAGAIN (max_queue requests wait already). */
struct px_httpc_call *px_httpc_pool_send(struct px_httpc_pool *p, const struct px_httpc_req *rq,
                                         px_httpc_cb cb, void *arg);
/* Drop a call whose cb has not run (a call on the wire closes its connection:
 * its answer cannot be told from the next one's). NULL is fine. */
void px_httpc_call_cancel(struct px_httpc_call *c);

struct px_httpc_pool_stats {
    uint64_t connects;   /* connections opened */
    uint64_t requests;   /* requests sent on the wire */
    uint64_t reused;     /* of those, on a connection that had answered before */
    uint64_t resent;     /* sent again after a reused connection closed under them */
    uint64_t warm_opens; /* connections opened with no request (warm) */
    uint64_t keepalives; /* keepalive_target requests sent */
    uint64_t keepalives_answered;
    unsigned open; /* connections now */
    size_t queued; /* requests waiting for a connection now */
};
void px_httpc_pool_get_stats(const struct px_httpc_pool *p, struct px_httpc_pool_stats *s);

#endif
