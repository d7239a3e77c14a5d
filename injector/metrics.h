/* Process-wide counters of the injector, rendered as Prometheus text on
 * GET /metrics. Lock-free (C11 atomics): any server thread may count. */
#ifndef IJ_METRICS_H
#define IJ_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "injector/inject.h"

/* How a POST /inject ended, beyond the decision of a well-formed review. */
enum ij_outcome {
    IJ_OUT_REVIEWED = 0, /* 200: see the decision */
    IJ_OUT_INVALID,      /* 400: not an AdmissionReview */
    IJ_OUT_TOO_LARGE,    /* 413: body over webhook.max_body_bytes */
    IJ_OUT__COUNT
};

/* Count one review; `us` is the time spent building the answer. */
void ij_metrics_review(enum ij_outcome o, enum ij_decision d, uint64_t us);
void ij_metrics_cert_reload(int ok);
void ij_metrics_template_reload(int ok);
void ij_metrics_set_cert_expiry(int64_t not_after);

/* Prometheus text exposition; `connections` is the server's live count.
 * Returns a heap string (caller frees) and its length in *len. */
char *ij_metrics_render(unsigned connections, size_t *len);

#endif
