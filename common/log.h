/* Logging: one line per event on stderr, level changeable at run time.
 *   2026-11-26T12:00:00.123Z info  proxy: listener inbound bound on 0.0.0.0:15006
 * With CM_LOG_FORMAT_JSON every line is a JSON object instead. */
#ifndef CM_LOG_H
#define CM_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum cm_log_level {
    CM_LOG_ERROR = 0, /* something failed that an operator must look at */
    CM_LOG_WARN,      /* refused input, degraded service */
    CM_LOG_INFO,      /* lifecycle: start, bind, reload, drain */
    CM_LOG_DEBUG,     /* per connection / per request detail */
    CM_LOG_TRACE      /* per frame / per callback detail */
};

enum cm_log_format { CM_LOG_FORMAT_TEXT = 0, CM_LOG_FORMAT_JSON };

extern enum cm_log_level cm_log_current_level;

void cm_log_set_level(enum cm_log_level level);
/* Parse "error|warn|info|debug|trace"; returns 0 or CM_ERR_INVAL. */
int cm_log_level_parse(const char *s, enum cm_log_level *out);
const char *cm_log_level_name(enum cm_log_level level);
void cm_log_set_format(enum cm_log_format fmt);
/* Set the component tag printed on every line ("proxy", "injector"). */
void cm_log_set_component(const char *name);

void cm_log_write(enum cm_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void cm_log_vwrite(enum cm_log_level level, const char *fmt, va_list ap);

#define cm_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= cm_log_current_level)                                                       \
            cm_log_write((level), __VA_ARGS__);                                                    \
    } while (0)
#define cm_error(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)
#define cm_warn(...)  cm_log(CM_LOG_WARN, __VA_ARGS__)
#define cm_info(...)  cm_log(CM_LOG_INFO, __VA_ARGS__)
#define cm_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)
#define cm_trace(...) cm_log(CM_LOG_TRACE, __VA_ARGS__)

/* Copy the len bytes at src into dst (cap bytes, always NUL-terminated) so
 * that any log can print them: printable ASCII stays, every other byte and
 * the backslash become \xHH (a 0xff in a Host header reads "\xff"). Cut at
 * cap; returns the length written. 4 * len + 1 bytes always suffice. */
size_t cm_log_escape(char *dst, size_t cap, const char *src, size_t len);

/* ---- rate-limited lines -------------------------------------------------------
 * For events a peer can repeat at will (failed handshakes, 5xx answers):
 *
 *   cm_log_limited(CM_LOG_WARN, "tls-handshake", "listener %s: mTLS from %s refused: %s", ...);
 *
 * At most cm_log_limit_burst lines (default 5) per key per window of
 * cm_log_limit_window_ms (default 1000 ms) are written; the others are counted.
 * The first line written for that key after a window with suppressed lines
 * ends with " (suppressed K similar)", and cm_log_limited_flush(), run about
 * once a second by the program's event loop, writes
 *   "<key>: suppressed K similar lines"
 * for a key that went quiet, so no count is lost. The key is a short string
 * naming the kind of event (it is copied); at most CM_LOG_LIMIT_KEYS kinds are
 * tracked at once, the one idle longest making room for a new one (its
 * pending count is written first). Not thread-safe: call from one thread
 * (the event loop). Returns true when the line was written. */
#define CM_LOG_LIMIT_KEYS 32
extern unsigned cm_log_limit_burst;
extern unsigned cm_log_limit_window_ms;

bool cm_log_limited(enum cm_log_level level, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Write the pending "suppressed" summaries of keys whose window has ended. */
void cm_log_limited_flush(void);
/* Forget every key and count (tests). */
void cm_log_limited_reset(void);

#endif
