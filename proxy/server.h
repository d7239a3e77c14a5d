/* The proxy's process context: the event loop, the config snapshot,
 * listeners, live connections, drain state, and the state of the modules
 * (metrics tables, authorization, identity, routes). One per process, created by
 * px_server_run; code reaches it through what it is given (a connection's
 * c->srv, a callback's argument), never through a global, except the
 * process's own start-up and signal handling (docs/proxy.md "Process context"). */
#ifndef PX_SERVER_H
#define PX_SERVER_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/list.h"
#include "proxy/config.h"

struct px_listener;
struct px_authz;
struct px_identity;
struct px_metrics_state;
struct px_routes_state;

struct px_server {
    struct event_base *base;
    struct px_config *cfg;
    struct px_listener **listeners;
    size_t nlisteners;
    bool listeners_bound;
    bool draining; /* stop accepting, finish in-flight, then exit */
    bool exit_after_drain;
    struct cm_list conns;   /* px_conn, downstream */
    struct cm_list streams; /* live px_stream */
    uint32_t nconns;
    uint64_t next_conn_id; /* the last px_conn id given out (proxy/conn.c) */
    uint32_t nstreams;
    uint64_t started_wall_ms;
    struct event *drain_timer;
    uint64_t drain_deadline_ms;
    struct event *sig_term, *sig_int, *sig_hup;
    struct px_admin *admin;
    struct px_disc *disc;  /* the destination cache (proxy/discovery.h), or NULL */
    FILE *access_log;      /* JSON lines, or NULL */
    struct event *gc_ev;   /* frees closed streams/connections on the next loop turn */
    struct event *trim_ev; /* gives freed heap back to the kernel (see on_trim) */
    size_t trim_free_base; /* the heap's free bytes after the last trim */
    /* egress names checked against DNS (proxy/resolve.h), or NULL */
    struct px_resolver *resolver;
    struct cm_list gc_streams;
    /* module state, created by px_server_run and freed when it returns */
    struct px_metrics_state *metrics; /* proxy/metrics.c: request tables, modules' writers */
    struct px_authz *authz;           /* proxy/authz.c: NULL without policy_file */
    struct px_identity *identity;   /* proxy/identity.c: always set (mode none without identity) */
    struct px_routes_state *routes; /* proxy/routes.c: always set (no snapshot without a file) */
};

/* The running server, set and cleared by px_server_run for debuggers and
 * test harnesses; proxy code takes a
 * struct px_server * (from the connection or its arguments) instead. */
extern struct px_server *px_srv;

/* Start draining: listeners stop accepting, idle keep-alive connections are
 * closed, in-flight requests finish (bounded by limits.drain_timeout_ms).
 * With exit_when_done the loop exits afterwards (SIGTERM, /quitquitquit). */
void px_server_begin_drain(struct px_server *srv, bool exit_when_done);
/* Ready = listeners bound, not draining, and a valid workload certificate
 * held when an identity is configured (px_identity_is_ready). srv may be NULL
 * (not started: not ready). */
bool px_server_is_ready(const struct px_server *srv);

#endif
