/* Denial counters of the authorization policy, by rule (docs/policy.md
 * "Metrics"): remora_policy_denials_total and remora_policy_audit_denials_total
 * on /metrics, policy_denials and policy_audit_denials on /stats. Their own
 * bounded table, keyed by rule name so the series survive reloads; they reach
 * /metrics and /stats through the writers registered with proxy/metrics.c. */
#include <event2/buffer.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/xalloc.h"
#include "proxy/metrics.h"
#include "proxy/policy.h"
#include "proxy/policy_int.h" /* hash_bytes */

#define SERIES_SLOTS  8192 /* power of two, twice PX_POLICY_MAX_SERIES */
#define OVERFLOW_NAME "*overflow*"

struct dseries {
    char *rule;
    uint64_t enforced, audit;
};

static struct dseries *dseries; /* PX_POLICY_MAX_SERIES + 1 (the last: overflow), insertion order */
static uint32_t ndseries;
static uint32_t *dslots; /* SERIES_SLOTS: index + 1, 0 = free */

static struct dseries *series_get(const char *rule)
{
    if (dseries == NULL) {
        dseries = cm_xcalloc(PX_POLICY_MAX_SERIES + 1, sizeof(*dseries));
        dslots = cm_xcalloc(SERIES_SLOTS, sizeof(*dslots));
        dseries[0].rule = cm_xstrdup("default"); /* always shown */
        dslots[hash_bytes("default", 7) & (SERIES_SLOTS - 1)] = 1;
        ndseries = 1;
    }
    size_t n = strlen(rule);
    for (uint32_t i = (uint32_t)hash_bytes(rule, n) & (SERIES_SLOTS - 1);;
         i = (i + 1) & (SERIES_SLOTS - 1)) {
        if (dslots[i] == 0) {
            if (ndseries >= PX_POLICY_MAX_SERIES) {
                struct dseries *o = &dseries[PX_POLICY_MAX_SERIES];
                if (o->rule == NULL)
                    o->rule = cm_xstrdup(OVERFLOW_NAME);
                return o;
            }
            dseries[ndseries].rule = cm_xstrdup(rule);
            dslots[i] = ++ndseries;
            return &dseries[ndseries - 1];
        }
        struct dseries *s = &dseries[dslots[i] - 1];
        if (strcmp(s->rule, rule) == 0)
            return s;
    }
}

void px_policy_count_denial(const char *rule, bool audit)
{
    struct dseries *s = series_get(rule ? rule : "default");
    if (audit)
        s->audit++;
    else
        s->enforced++;
}

uint64_t px_policy_denials(const char *rule, bool audit)
{
    if (dseries == NULL)
        return 0;
    for (uint32_t i = 0; i <= PX_POLICY_MAX_SERIES; i++)
        if (dseries[i].rule != NULL && strcmp(dseries[i].rule, rule) == 0)
            return audit ? dseries[i].audit : dseries[i].enforced;
    return 0;
}

void px_policy_metrics_reset(void)
{
    for (uint32_t i = 0; dseries != NULL && i <= PX_POLICY_MAX_SERIES; i++)
        free(dseries[i].rule);
    free(dseries);
    free(dslots);
    dseries = NULL;
    dslots = NULL;
    ndseries = 0;
}

/* Bound of this writer's text: 4097 series x 2 families of at most
 * PX_POLICY_MAX_NAME-byte rule names come to about 1.6 MB. */
#define POLICY_TEXT_MAX (4u << 20)

static void write_family(struct cm_prom *out, const char *name, const char *help, bool audit)
{
    cm_prom_head(out, name, "counter", help);
    if (dseries == NULL) {
        cm_prom_printf(out, "%s{rule=\"default\"} 0\n", name);
        return;
    }
    for (uint32_t i = 0; i <= PX_POLICY_MAX_SERIES; i++) {
        const struct dseries *s = &dseries[i];
        if (s->rule == NULL)
            continue;
        uint64_t v = audit ? s->audit : s->enforced;
        if (v == 0 && i > 0)
            continue; /* a series exists once that kind of denial happened */
        cm_prom_printf(out, "%s{", name);
        cm_prom_label(out, "rule", s->rule, true);
        cm_prom_printf(out, "} %" PRIu64 "\n", v);
    }
}

void px_policy_metrics_prometheus(struct evbuffer *dst)
{
    struct cm_prom out;
    cm_prom_init(&out, POLICY_TEXT_MAX);
    write_family(&out, "remora_policy_denials_total",
                 "Requests denied by the authorization policy (403) and TCP connections it "
                 "closed, by the rule that decided (rule=\"default\": no rule allowed it).",
                 false);
    write_family(&out, "remora_policy_audit_denials_total",
                 "Requests and TCP connections an audit-mode policy would have denied (they were "
                 "let through), by rule.",
                 true);
    size_t len;
    int err;
    char *text = cm_prom_take(&out, &len, &err);
    if (err != CM_OK) /* bounded series: only a code change can pass the bound */
        cm_error("policy metrics: text over %u bytes (%s): left out of /metrics", POLICY_TEXT_MAX,
                 cm_err_str(err));
    else
        evbuffer_add(dst, text, len);
    free(text);
}

static json_t *family_json(bool audit)
{
    json_t *o = json_object();
    json_object_set_new(o, "default", json_integer(0));
    for (uint32_t i = 0; dseries != NULL && i <= PX_POLICY_MAX_SERIES; i++) {
        const struct dseries *s = &dseries[i];
        uint64_t v = audit ? s->audit : s->enforced;
        if (s->rule != NULL && (v > 0 || i == 0))
            json_object_set_new(o, s->rule,
                                json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v));
    }
    return o;
}

void px_policy_metrics_json(json_t *stats)
{
    json_object_set_new(stats, "policy_denials", family_json(false));
    json_object_set_new(stats, "policy_audit_denials", family_json(true));
}

void px_policy_metrics_register(struct px_metrics_state *m)
{
    px_metrics_register_on(m, px_policy_metrics_prometheus);
    px_metrics_register_json_on(m, px_policy_metrics_json);
}
