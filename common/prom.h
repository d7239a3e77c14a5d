/* The Prometheus text exposition format (0.0.4), written into a bounded
 * cm_buf; used by /metrics of both programs. Errors are sticky: after the
 * first failed append (the buffer's maximum) every call is a no-op and
 * cm_prom_take reports it, so a writer checks once at the end. */
#ifndef CM_PROM_H
#define CM_PROM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

struct cm_prom {
    struct cm_buf buf;
    int err; /* 0, or the first cm_err of an append */
};

void cm_prom_init(struct cm_prom *p, size_t max);
/* Raw text (sample lines written by hand). */
void cm_prom_printf(struct cm_prom *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cm_prom_add(struct cm_prom *p, const char *s, size_t n);
/* "# HELP name help\n# TYPE name type\n": once per family. */
void cm_prom_head(struct cm_prom *p, const char *name, const char *type, const char *help);
/* One label inside {}: [,]key="value" with backslash, quote and newline escaped. */
void cm_prom_label(struct cm_prom *p, const char *key, const char *value, int first);
/* A family of one unlabelled sample: head, then "name v\n". */
void cm_prom_u64(struct cm_prom *p, const char *name, const char *type, const char *help,
                 uint64_t v);
/* A family of one label taking several values: head, then one
 * "name{label="value"} v\n" per value (escaped). */
struct cm_prom_sample {
    const char *value;
    uint64_t v;
};
void cm_prom_by_label(struct cm_prom *p, const char *name, const char *type, const char *help,
                      const char *label, const struct cm_prom_sample *s, size_t n);
/* Microseconds as exact seconds, "S.UUUUUU". */
void cm_prom_seconds(struct cm_prom *p, uint64_t us);
/* The samples of an unlabelled histogram (after its head): n upper bounds in
 * microseconds (le written with %g of seconds), counts[n + 1] per bucket, not
 * cumulative (the last is +Inf), the sum in microseconds (%.6f seconds). */
void cm_prom_histogram_us(struct cm_prom *p, const char *name, const uint64_t *bounds_us,
                          const uint64_t *counts, size_t n, uint64_t sum_us);
/* An unlabelled histogram of microseconds that any thread observes into
 * without a lock; a static one starts from CM_PROM_HIST_INIT(bounds), bounds
 * being a static array of at most CM_PROM_HIST_MAX ascending upper bounds. */
#define CM_PROM_HIST_MAX 16
struct cm_prom_hist {
    const uint64_t *bounds_us;
    size_t n;
    atomic_uint_fast64_t counts[CM_PROM_HIST_MAX + 1]; /* per bucket; [n]: +Inf */
    atomic_uint_fast64_t sum_us;
};
#define CM_PROM_HIST_INIT(bounds)                                                                  \
    {                                                                                              \
        .bounds_us = (bounds), .n = sizeof(bounds) / sizeof((bounds)[0])                           \
    }
void cm_prom_hist_observe(struct cm_prom_hist *h, uint64_t us);
/* Its family: head, then the samples as cm_prom_histogram_us writes them. */
void cm_prom_hist_write(struct cm_prom *p, const char *name, const char *help,
                        struct cm_prom_hist *h);
/* The text (never NULL; the caller frees it) and its length; returns the
 * sticky error in *err. The writer is left empty. */
char *cm_prom_take(struct cm_prom *p, size_t *len, int *err);
void cm_prom_free(struct cm_prom *p);

#endif
