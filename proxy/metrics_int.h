/* Internals of proxy/metrics.c that its unit test reads (not an API:
 * proxy/metrics.h is): the bounds and the rows of the labelled request
 * tables. */
#ifndef PX_METRICS_INT_H
#define PX_METRICS_INT_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/metrics.h"

#define PX_METRICS_MAX_LISTENERS 64   /* the last one is "other" */
#define PX_METRICS_SERIES_SLOTS  4096 /* power of two */
#define PX_METRICS_SERIES_EXACT  2560 /* series with an exact code; then codes fold to "other" */
#define PX_METRICS_SERIES_LABELS 2816 /* then label values fold to "other" too */
#define PX_METRICS_SERIES_MAX    3072 /* all series (75% load of the slots) */
#define PX_METRICS_CODE_OTHER    600  /* code label "other": not 0 and not 100..599 */

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
    uint16_t dst;  /* destination_service: index in dst_values (0: no label) */
    uint16_t src;  /* source_principal: index in src_values (0: no label) */
    uint64_t count;
};

/* Interned values of one label (issue 18: destination_service,
 * source_principal): a value is copied once, the first time it is seen, and
 * series hold its index; past PX_METRICS_LABEL_VALUES distinct values a new
 * one reads as "other" (index PX_METRICS_LABEL_OTHER) and is counted in
 * folded. Index 0 means "no label". */
#define PX_METRICS_LABEL_VALUES 256 /* indexes: [0] none, [1] "other", 254 values */
#define PX_METRICS_LABEL_SLOTS  512 /* power of two, twice the values */
#define PX_METRICS_LABEL_MAXLEN 512 /* a longer value reads as "other" */
#define PX_METRICS_LABEL_OTHER  1
struct px_metrics_intern {
    char *values[PX_METRICS_LABEL_VALUES]; /* [0] unused, [1] "other" */
    uint32_t hashes[PX_METRICS_LABEL_VALUES];
    uint16_t slots[PX_METRICS_LABEL_SLOTS]; /* 0: free, else an index in values */
    size_t nvalues;                         /* used indexes, 0 and 1 included once set up */
    uint64_t folded;                        /* requests whose value read as "other" */
};

/* The index of value in t, interning it when there is room (allocates only
 * then), else PX_METRICS_LABEL_OTHER. Never 0. */
uint16_t px_metrics_intern(struct px_metrics_intern *t, const char *value);

/* The duration histogram of one labelled (listener, label value) pair; the
 * unlabelled requests keep the listener's own (px_metrics_listener). */
#define PX_METRICS_HIST_SLOTS 1024 /* power of two */
#define PX_METRICS_HIST_EXACT 640  /* then label values fold to "other" */
#define PX_METRICS_HIST_MAX   768  /* 75% load: the folds (<= 64 listeners x 2) always fit */
struct px_metrics_hist {
    uint16_t lidx, dst, src;
    uint8_t used;
    uint64_t buckets[PX_METRICS_NBUCKETS + 1];
    uint64_t count;
    uint64_t sum_us;
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
    struct px_metrics_intern dst_values, src_values; /* issue 18 */
    struct px_metrics_hist *hists;                   /* PX_METRICS_HIST_SLOTS, on first use */
    size_t nhists;
    struct px_metrics_writer_slot writers[PX_METRICS_MAX_WRITERS]; /* in registration order */
    size_t nwriters;
};

#endif
