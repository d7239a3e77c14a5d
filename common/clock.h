/* Time helpers: a monotonic clock for durations and deadlines, the wall
 * clock for timestamps people read. */
#ifndef CM_CLOCK_H
#define CM_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

/* Monotonic time in microseconds / milliseconds. */
uint64_t cm_mono_us(void);
uint64_t cm_mono_ms(void);
/* A duration in milliseconds as the struct timeval libevent's timers take. */
static inline struct timeval cm_tv_ms(uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}
/* The next wait of a retry backoff: min after none (cur 0), else cur doubled,
 * at most max. */
static inline uint32_t cm_backoff_ms(uint32_t cur, uint32_t min, uint32_t max)
{
    uint32_t next = cur == 0 ? min : cur * 2;
    return next > max ? max : next;
}
/* Wall-clock time: milliseconds / seconds since the epoch. */
int64_t cm_wall_ms(void);
int64_t cm_wall_s(void);
/* Format epoch milliseconds as RFC 3339 UTC ("2026-11-26T12:00:00.123Z").
 * Needs 25 bytes; returns buf. */
char *cm_fmt_rfc3339_ms(int64_t epoch_ms, char *buf, size_t len);
/* Same, seconds precision ("2026-11-26T12:00:00Z"); needs 21 bytes. */
char *cm_fmt_rfc3339(int64_t epoch_s, char *buf, size_t len);
/* Parse a duration such as "250ms", "10s", "5m", "1h" or a bare number of
 * milliseconds. Returns 0 or CM_ERR_INVAL. */
int cm_parse_duration_ms(const char *s, uint64_t *out_ms);

#endif
