/* Internals of proxy/metrics.c that its unit test reads (not an API:
 * proxy/metrics.h is): the bounds and the rows of the labelled request
 * tables. */
#ifndef PX_METRICS_INT_H
#define PX_METRICS_INT_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/metrics.h"

#define PX_METRICS_MAX_LISTENERS 64  /* the last one is "other" */
#define PX_METRICS_SERIES_SLOTS  512 /* power of two */
#define PX_METRICS_SERIES_EXACT  320 /* series with an exact code; then codes fold to "other" */
#define PX_METRICS_SERIES_MAX    384 /* all series (75% load of the slots) */
#define PX_METRICS_CODE_OTHER    600 /* code label "other": not 0 and not 100..599 */

/* One listener as seen by metrics: copied out of the config, so a reload
 * that frees the old config never leaves a dangling name here. */
struct px_metrics_listener {
    char *name;
    const char *direction;                     /* "inbound" / "outbound" / "unknown", static */
    uint64_t buckets[PX_METRICS_NBUCKETS + 1]; /* per bucket, not cumulative; last = +Inf */
    uint64_t count;
    uint64_t sum_us;
};

/* One remora_requests_total series; used == 0 marks a free slot. */
struct px_metrics_series {
    uint16_t lidx; /* index in listeners[] */
    uint8_t cls;   /* index in the method classes (read, write, other) */
    uint8_t used;
    uint16_t code; /* 0, 100..599, PX_METRICS_CODE_OTHER; gRPC requests add their
                    * grpc_status label << 10 (metrics.c, GRPC_SHIFT) */
    uint64_t count;
};

/* A module's writer (px_metrics_register*): exactly one of the three set. */
struct px_metrics_writer_slot {
    px_metrics_writer prometheus;
    px_metrics_json_writer json;
    px_metrics_writer_with with; /* called with arg */
    void *arg;
};

#define PX_METRICS_MAX_WRITERS 8

/* The labelled request tables and the registered writers of a server
 * (srv->metrics). Both tables are allocated on first use and bounded. */
struct px_metrics_state {
    struct px_metrics_listener *listeners; /* PX_METRICS_MAX_LISTENERS */
    size_t nlisteners;
    struct px_metrics_series *series; /* PX_METRICS_SERIES_SLOTS */
    size_t nseries;
    /* Whatever fits nowhere else (every bound reached): listener "other",
     * method_class "other", code "other". */
    uint64_t overflow_count;
    struct px_metrics_writer_slot writers[PX_METRICS_MAX_WRITERS]; /* in registration order */
    size_t nwriters;
};

#endif
