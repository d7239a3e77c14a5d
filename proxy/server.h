/* Process-wide proxy state: the event loop, the config snapshot, listeners,
 * live connections, drain state. One per process; reached through px_srv. */
#ifndef PX_SERVER_H
#define PX_SERVER_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/list.h"
#include "proxy/config.h"

struct px_listener;

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
    uint32_t nstreams;
    uint64_t started_wall_ms;
    struct event *drain_timer;
    uint64_t drain_deadline_ms;
    struct event *sig_term, *sig_int, *sig_hup;
    struct px_admin *admin;
    FILE *access_log;      /* JSON lines, or NULL */
    struct event *gc_ev;   /* frees closed streams/connections on the next loop turn */
    struct event *trim_ev; /* gives freed heap back to the kernel (see on_trim) */
    size_t trim_free_base; /* the heap's free bytes after the last trim */
    struct cm_list gc_streams;
};

extern struct px_server *px_srv;

/* Start draining: listeners stop accepting, idle keep-alive connections are
 * closed, in-flight requests finish (bounded by limits.drain_timeout_ms).
 * With exit_when_done the loop exits afterwards (SIGTERM, /quitquitquit). */
void px_server_drain(bool exit_when_done);
/* Ready = listeners bound, not draining, and a valid workload certificate
 * held when an identity is configured (px_identity_ready). */
bool px_server_ready(void);

#endif
