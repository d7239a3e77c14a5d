/* Egress names checked against DNS (issue 18 follow-up; docs/operations.md
 * "Egress"): when egress_allow lets a destination out only because the name
 * the app wrote (HTTP Host, TLS SNI) matched a HOST or SUFFIX entry, the name
 * is resolved and the destination's address must be one of its addresses.
 *
 * The resolver: getaddrinfo (so /etc/hosts and nsswitch answer as they do for
 * the app) on one worker thread, never on the event loop; answers are handed
 * back to the loop through an eventfd. A cache (positive PX_RESOLVE_POSITIVE_MS,
 * negative PX_RESOLVE_NEGATIVE_MS, at most max_entries, least recently used
 * dropped first), concurrent asks for one name joined, a bounded queue of
 * names to resolve (full: BUSY, refused), and each wait bounded (TIMEOUT,
 * refused). Every verdict but MATCH is a refusal: fail closed. */
#ifndef PX_RESOLVE_H
#define PX_RESOLVE_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#include "common/net.h"

#define PX_RESOLVE_POSITIVE_MS 30000 /* an answer with addresses is believed this long */
#define PX_RESOLVE_NEGATIVE_MS 5000  /* a name that does not resolve: this long */
#define PX_RESOLVE_MAX_ENTRIES 1024  /* names cached */
#define PX_RESOLVE_MAX_QUEUE   64    /* names being resolved or waiting for the worker */
#define PX_RESOLVE_MAX_ADDRS   32    /* addresses kept of one answer */
#define PX_RESOLVE_MAX_NAME    253

enum px_name_verdict {
    PX_NAME_MATCH = 0, /* the address is one of the name's */
    PX_NAME_MISMATCH,  /* the name resolves, not to this address */
    PX_NAME_NONAME,    /* the name does not resolve (or the resolver failed) */
    PX_NAME_TIMEOUT,   /* no answer within the bound */
    PX_NAME_BUSY       /* the queue is full: not asked */
};
const char *px_name_verdict_str(enum px_name_verdict v);

/* The blocking look-up the worker runs: fills out[0..*n) (at most cap) and
 * returns 0, or a nonzero error (the name does not resolve). Default:
 * getaddrinfo. Tests set their own (a slow one). */
typedef int (*px_resolve_fn)(const char *name, struct cm_addr *out, size_t cap, size_t *n,
                             void *arg);

struct px_resolver_opts {
    uint32_t positive_ms, negative_ms; /* PX_RESOLVE_POSITIVE_MS, _NEGATIVE_MS */
    uint32_t max_entries;              /* PX_RESOLVE_MAX_ENTRIES (at least max_queue + 1) */
    uint32_t max_queue;                /* PX_RESOLVE_MAX_QUEUE */
    uint32_t timeout_ms;               /* a wait's bound (discovery.lookup_timeout_ms) */
    px_resolve_fn fn;                  /* NULL: getaddrinfo */
    void *fn_arg;
};
void px_resolver_opts_default(struct px_resolver_opts *o);

struct px_resolver;
struct px_name_wait;

/* A resolver on base with its worker thread; NULL when the thread cannot be
 * started. px_resolver_free drops pending waits without callbacks, stops the
 * worker and joins it (a getaddrinfo under way is waited for). */
struct px_resolver *px_resolver_new(struct event_base *base, const struct px_resolver_opts *o);
void px_resolver_free(struct px_resolver *r);

typedef void (*px_name_cb)(enum px_name_verdict v, void *arg);

/* Is addr (its port ignored) an address of name (lower-case, no trailing
 * dot)? When the cache knows, the verdict is returned and *w is NULL; else
 * *w is set, PX_NAME_TIMEOUT returned, and cb runs exactly once from the event
 * loop within timeout_ms, unless px_name_cancel(*w) comes first. */
enum px_name_verdict px_resolver_check(struct px_resolver *r, const char *name,
                                       const struct cm_addr *addr, px_name_cb cb, void *arg,
                                       struct px_name_wait **w);
/* Drop a wait (its cb is not called). NULL is fine. */
void px_name_cancel(struct px_name_wait *w);

struct px_resolver_stats {
    uint64_t hits, misses, joined; /* asks answered by the cache, sent, joined to one in flight */
    uint64_t resolved, failed;     /* answers of the worker: with addresses, without */
    uint64_t busy, timeouts, evicted;
    uint32_t entries, queued; /* now */
};
void px_resolver_get_stats(struct px_resolver *r, struct px_resolver_stats *s);

/* The running proxy (proxy/server.c): srv->resolver when outbound_policy is
 * registry_only and egress_verify_names is on (the default); freed after the
 * connections. */
struct px_server;
void px_resolver_start(struct px_server *srv);
void px_resolver_shutdown(struct px_server *srv);

#endif
