/* A file watch on the event loop: common/watch.h's stamps, looked at on a
 * timer every cm_watch_interval_ms(). Used by authz.c (policy_file),
 * routes.c (routes_file) and identity.c (static certificate files, and
 * ca_root before each CSR). */
#ifndef PX_WATCH_H
#define PX_WATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "common/watch.h"

struct event_base;
struct event;

/* Called when a watched file changed. With gone, a stat() failed: the watch
 * has already set last_error ("FILE: REASON (keeping the last good WHAT)")
 * and logged it once; the owner keeps what it holds. Otherwise the owner
 * reloads, and sets or clears last_error itself. */
typedef void (*px_watch_fn)(void *arg, bool gone);

struct px_watch {
    struct cm_watch files;
    const char *what; /* "policy", "routes", "identity": log prefix and wording */
    struct event *timer;
    px_watch_fn on_change;
    void *arg;
};

/* Stamp PATHS now; with a BASE (and a callback), look again on a timer. */
void px_watch_start(struct px_watch *w, const char *what, struct event_base *base,
                    const char *const *paths, size_t n, px_watch_fn on_change, void *arg);
/* Look now (a tick does this); true if something changed (on_change ran). */
bool px_watch_check(struct px_watch *w);
void px_watch_stop(struct px_watch *w);

#endif
