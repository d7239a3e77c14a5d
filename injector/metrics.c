#include "injector/metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/prom.h"
#include "injector/ca.h"
#include "injector/config.h"
#include "injector/discovery.h"
#include "injector/server.h"

/* Upper bounds in microseconds; a review takes tens of microseconds. */
static const uint64_t bucket_us[] = {25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000};
/* Bound of the /metrics text; it is a few kilobytes. */
#define IJ_METRICS_MAX (1 << 20)

static atomic_uint_fast64_t reviews[IJ_DECIDE__COUNT];
static atomic_uint_fast64_t failed[IJ_OUT__COUNT];
static struct cm_prom_hist hist = CM_PROM_HIST_INIT(bucket_us);
static atomic_uint_fast64_t cert_reloads[2], template_reloads[2];
static atomic_int_fast64_t cert_expiry;

void ij_metrics_review(enum ij_outcome o, enum ij_decision d, uint64_t us)
{
    if (o == IJ_OUT_REVIEWED && (unsigned)d < IJ_DECIDE__COUNT)
        atomic_fetch_add(&reviews[d], 1);
    else if ((unsigned)o < IJ_OUT__COUNT)
        atomic_fetch_add(&failed[o], 1);
    cm_prom_hist_observe(&hist, us);
}

void ij_metrics_cert_reload(int ok)
{
    atomic_fetch_add(&cert_reloads[ok ? 1 : 0], 1);
}

void ij_metrics_template_reload(int ok)
{
    atomic_fetch_add(&template_reloads[ok ? 1 : 0], 1);
}

void ij_metrics_set_cert_expiry(int64_t not_after)
{
    atomic_store(&cert_expiry, not_after);
}

char *ij_metrics_render(unsigned connections, size_t *len)
{
    static const char *const outcome_names[IJ_OUT__COUNT] = {"reviewed", "invalid", "too_large"};
    struct cm_prom o;
    cm_prom_init(&o, IJ_METRICS_MAX);

    cm_prom_head(&o, "remora_injector_reviews_total", "counter",
                 "AdmissionReviews answered, by result.");
    for (int d = 0; d < IJ_DECIDE__COUNT; d++)
        cm_prom_printf(&o, "remora_injector_reviews_total{result=\"%s\",reason=\"%s\"} %llu\n",
                       d == IJ_DECIDE_INJECT    ? "injected"
                       : d == IJ_DECIDE_REFUSED ? "refused"
                                                : "skipped",
                       d == IJ_DECIDE_INJECT ? "" : ij_decision_name((enum ij_decision)d),
                       (unsigned long long)atomic_load(&reviews[d]));
    for (int f = 1; f < IJ_OUT__COUNT; f++)
        cm_prom_printf(&o, "remora_injector_reviews_total{result=\"%s\",reason=\"\"} %llu\n",
                       outcome_names[f], (unsigned long long)atomic_load(&failed[f]));

    cm_prom_hist_write(&o, "remora_injector_review_duration_seconds",
                       "Time to answer one review, from the last body byte to the response.",
                       &hist);

    struct cm_prom_sample certs[] = {{"ok", atomic_load(&cert_reloads[1])},
                                     {"error", atomic_load(&cert_reloads[0])}};
    cm_prom_by_label(&o, "remora_injector_cert_reloads_total", "counter",
                     "Serving certificate reloads.", "result", certs, 2);
    struct cm_prom_sample templates[] = {{"ok", atomic_load(&template_reloads[1])},
                                         {"error", atomic_load(&template_reloads[0])}};
    cm_prom_by_label(&o, "remora_injector_template_reloads_total", "counter",
                     "Sidecar template reloads.", "result", templates, 2);
    cm_prom_printf(&o,
                   "# HELP remora_injector_cert_expiry_timestamp_seconds notAfter of the serving "
                   "certificate.\n"
                   "# TYPE remora_injector_cert_expiry_timestamp_seconds gauge\n"
                   "remora_injector_cert_expiry_timestamp_seconds %lld\n",
                   (long long)atomic_load(&cert_expiry));
    cm_prom_u64(&o, "remora_injector_connections", "gauge", "Open webhook connections.",
                connections);
    ij_ca_metrics_write(&o); /* the CA's counters, when it runs */
    cm_prom_printf(&o,
                   "# HELP remora_injector_build_info Version of the running injector.\n"
                   "# TYPE remora_injector_build_info gauge\n"
                   "remora_injector_build_info{version=\"%s\"} 1\n",
                   IJ_VERSION);
    ij_guard_metrics_write(&o); /* the connection guard's */
    ij_disc_metrics_write(&o);  /* the discovery service's, when it runs */
    int err;
    char *text = cm_prom_take(&o, len, &err);
    if (err != CM_OK) /* fixed series: only a code change can pass the bound */
        cm_error("/metrics text over %d bytes: %s", IJ_METRICS_MAX, cm_err_str(err));
    return text;
}
