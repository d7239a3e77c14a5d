#include "common/prom.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include "common/err.h"

void cm_prom_init(struct cm_prom *p, size_t max)
{
    cm_buf_init(&p->buf, max);
    p->err = CM_OK;
}

void cm_prom_add(struct cm_prom *p, const char *s, size_t n)
{
    if (p->err == CM_OK)
        p->err = cm_buf_add(&p->buf, s, n);
}

void cm_prom_printf(struct cm_prom *p, const char *fmt, ...)
{
    if (p->err != CM_OK)
        return;
    va_list ap;
    va_start(ap, fmt);
    p->err = cm_buf_vprintf(&p->buf, fmt, ap);
    va_end(ap);
}

void cm_prom_head(struct cm_prom *p, const char *name, const char *type, const char *help)
{
    cm_prom_printf(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void cm_prom_label(struct cm_prom *p, const char *key, const char *value, int first)
{
    cm_prom_printf(p, "%s%s=\"", first ? "" : ",", key);
    const char *run = value;
    for (const char *c = value;; c++) {
        const char *esc = *c == '\\' ? "\\\\" : *c == '"' ? "\\\"" : *c == '\n' ? "\\n" : NULL;
        if (esc == NULL && *c != '\0')
            continue;
        cm_prom_add(p, run, (size_t)(c - run));
        if (*c == '\0')
            break;
        cm_prom_add(p, esc, 2);
        run = c + 1;
    }
    cm_prom_add(p, "\"", 1);
}

void cm_prom_u64(struct cm_prom *p, const char *name, const char *type, const char *help,
                 uint64_t v)
{
    cm_prom_head(p, name, type, help);
    cm_prom_printf(p, "%s %" PRIu64 "\n", name, v);
}

void cm_prom_by_label(struct cm_prom *p, const char *name, const char *type, const char *help,
                      const char *label, const struct cm_prom_sample *s, size_t n)
{
    cm_prom_head(p, name, type, help);
    for (size_t i = 0; i < n; i++) {
        cm_prom_printf(p, "%s{", name);
        cm_prom_label(p, label, s[i].value, 1);
        cm_prom_printf(p, "} %" PRIu64 "\n", s[i].v);
    }
}

void cm_prom_seconds(struct cm_prom *p, uint64_t us)
{
    cm_prom_printf(p, "%" PRIu64 ".%06" PRIu64, us / 1000000, us % 1000000);
}

void cm_prom_histogram_us(struct cm_prom *p, const char *name, const uint64_t *bounds_us,
                          const uint64_t *counts, size_t n, uint64_t sum_us)
{
    uint64_t cum = 0;
    for (size_t b = 0; b <= n; b++) {
        cum += counts[b];
        if (b < n)
            cm_prom_printf(p, "%s_bucket{le=\"%g\"} %llu\n", name, (double)bounds_us[b] / 1e6,
                           (unsigned long long)cum);
        else
            cm_prom_printf(p, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    cm_prom_printf(p, "%s_sum %.6f\n", name, (double)sum_us / 1e6);
    cm_prom_printf(p, "%s_count %llu\n", name, (unsigned long long)cum);
}

void cm_prom_hist_observe(struct cm_prom_hist *h, uint64_t us)
{
    size_t n = h->n < CM_PROM_HIST_MAX ? h->n : CM_PROM_HIST_MAX;
    size_t b = 0;
    while (b < n && us > h->bounds_us[b])
        b++;
    atomic_fetch_add(&h->counts[b], 1);
    atomic_fetch_add(&h->sum_us, us);
}

void cm_prom_hist_write(struct cm_prom *p, const char *name, const char *help,
                        struct cm_prom_hist *h)
{
    size_t n = h->n < CM_PROM_HIST_MAX ? h->n : CM_PROM_HIST_MAX;
    uint64_t counts[CM_PROM_HIST_MAX + 1];
    for (size_t b = 0; b <= n; b++)
        counts[b] = atomic_load(&h->counts[b]);
    cm_prom_head(p, name, "histogram", help);
    cm_prom_histogram_us(p, name, h->bounds_us, counts, n, atomic_load(&h->sum_us));
}

char *cm_prom_take(struct cm_prom *p, size_t *len, int *err)
{
    if (err)
        *err = p->err;
    p->err = CM_OK;
    return cm_buf_take(&p->buf, len);
}

void cm_prom_free(struct cm_prom *p)
{
    cm_buf_free(&p->buf);
    p->err = CM_OK;
}
