/* Watching files for changes, one definition for every component
 * (docs/internals/watch.md).
 *
 * A file "changed" when anything stat() reports about it differs from the
 * last look: device, inode, size, mtime and ctime (both with nanoseconds),
 * or whether stat() succeeded and with which errno. stat() follows symlinks,
 * so a Kubernetes ConfigMap or Secret volume, which swaps its "..data"
 * symlink atomically, shows up as a new inode; an in-place edit within the
 * same second shows up in the nanoseconds or ctime; a file that goes away is
 * a change too (the caller reports it), and so is its coming back.
 *
 * The core is pure and does no I/O but stat(): the proxy drives it from a
 * libevent timer (proxy/watch.h), the injector from its main loop. A
 * struct cm_watch is not locked: its owner serialises calls. */
#ifndef CM_WATCH_H
#define CM_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define CM_WATCH_MS        1000              /* how often watched files are looked at */
#define CM_WATCH_ENV       "REMORA_WATCH_MS" /* test knob: overrides CM_WATCH_MS */
#define CM_WATCH_MIN_MS    10
#define CM_WATCH_MAX_MS    3600000
#define CM_WATCH_MAX_FILES 3

/* What stat() says about one path. */
struct cm_watch_stamp {
    bool ok; /* stat() succeeded */
    int err; /* its errno otherwise */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

/* Stamp PATH now (a NULL path stamps as failed with ENOENT). */
void cm_watch_stamp_get(const char *path, struct cm_watch_stamp *out);
/* Do two stamps of one path differ (the definition above)? */
bool cm_watch_changed(const struct cm_watch_stamp *was, const struct cm_watch_stamp *now);

/* A set of up to CM_WATCH_MAX_FILES paths looked at together (a certificate,
 * its key and bundle), and the last error of loading them. */
struct cm_watch {
    const char *paths[CM_WATCH_MAX_FILES]; /* borrowed */
    struct cm_watch_stamp stamps[CM_WATCH_MAX_FILES];
    size_t n;
    char *last_error; /* the last failed load (heap), NULL after a good one */
};

/* Watch N paths (NULL entries are skipped) and stamp them now. */
void cm_watch_init(struct cm_watch *w, const char *const *paths, size_t n);
/* Stamp every path again; true if any changed since the last stamp. The new
 * stamps are kept either way: a bad file is reported once, and tried again
 * at its next change. */
bool cm_watch_poll(struct cm_watch *w);
/* The first path whose last stamp is a failed stat(), or -1. */
int cm_watch_failed(const struct cm_watch *w);
/* Set (printf-style) or, with a NULL format, clear the last error. */
void cm_watch_set_error(struct cm_watch *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The last error, or NULL. */
const char *cm_watch_last_error(const struct cm_watch *w);
void cm_watch_deinit(struct cm_watch *w);

/* The polling interval in ms: $REMORA_WATCH_MS if set (read once, a test
 * knob; a bad value is logged and ignored), else CM_WATCH_MS. */
int64_t cm_watch_interval_ms(void);

#endif
