/* Counters, gauges and the labelled request series of remora-proxy.
 *
 * Plain counters live in the global px_metrics, bumped directly by the
 * modules that see the events. Requests are labelled, so they need tables:
 *   - a listener table, one entry per (listener name, direction), holding the
 *     duration histogram (labels listener + direction);
 *   - a series table, open addressing keyed by (listener entry, method class,
 *     code), holding remora_requests_total.
 * Both are bounded. Listener names come from the config and codes from a
 * finite set (0, 100..599, "other"), so the bounds are only reached by odd
 * configs or hostile upstreams answering every status; past them a new
 * listener folds into listener "other" and a new code into code="other", and
 * a last fixed series catches whatever still does not fit. Memory therefore
 * never grows with traffic. Everything runs on the event loop thread. */
#include "proxy/metrics.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <jansson.h>
#include <stddef.h>
#include <string.h>

#include "common/hash.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/xalloc.h"
#include "proxy/authz.h"
#include "proxy/conn.h"
#include "proxy/discovery.h"
#include "proxy/h2.h"
#include "proxy/http.h"
#include "proxy/metrics_int.h"
#include "proxy/server.h"
#include "proxy/stream.h"

struct px_metrics px_metrics;

/* Upper bounds of the histogram buckets, in microseconds (0.1 ms .. 10 s). */
static const uint64_t bucket_le_us[PX_METRICS_NBUCKETS] = {
    100,   500,    1000,   2500,   5000,    10000,   25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 10000000,
};

#define NCLASSES 3
/* A gRPC request's series keeps its grpc_status label in the code's upper
 * bits (codes stay below 1 << GRPC_SHIFT): 0 no label, 1..17 grpc_status
 * 0..16, GRPC_OTHER "other" (none seen, or out of range). Plain requests key
 * their series exactly as before, at no cost. */
#define GRPC_SHIFT 10
#define GRPC_OTHER 18
#define CODE_OF(k) ((uint16_t)((k) & ((1u << GRPC_SHIFT) - 1)))
/* Bound of the /metrics text of this module (its series are bounded above:
 * a few hundred kilobytes at most). */
#define PX_METRICS_TEXT_MAX (4 << 20)

static const char *const class_names[NCLASSES] = {"read", "write", "other"};

struct px_metrics_state *px_metrics_state_new(void)
{
    return cm_xcalloc(1, sizeof(struct px_metrics_state));
}

static void intern_free(struct px_metrics_intern *t)
{
    for (size_t i = 0; i < PX_METRICS_LABEL_VALUES; i++)
        free(t->values[i]);
}

void px_metrics_state_free(struct px_metrics_state *m)
{
    if (m == NULL)
        return;
    intern_free(&m->dst_values);
    intern_free(&m->src_values);
    free(m->hists);
    for (size_t i = 0; m->listeners && i < PX_METRICS_MAX_LISTENERS; i++)
        free(m->listeners[i].name);
    free(m->listeners);
    free(m->series);
    free(m);
}

static const char *dir_name(enum px_direction d)
{
    switch (d) {
    case PX_DIR_INBOUND:
        return "inbound";
    case PX_DIR_OUTBOUND:
        return "outbound";
    }
    return "unknown";
}

/* always inlined, as they were into the one caller before: once per request */
static inline __attribute__((always_inline)) uint8_t class_index(const char *method)
{
    const char *c = method ? px_method_class(method) : "other";
    for (uint8_t i = 0; i < NCLASSES; i++)
        if (c && strcmp(c, class_names[i]) == 0)
            return i;
    return NCLASSES - 1;
}

static uint16_t code_index(int status)
{
    if (status == 0 || (status >= 100 && status <= 599))
        return (uint16_t)status;
    return PX_METRICS_CODE_OTHER;
}

/* Find or add the listener entry; the last slot is kept for "other". */
static inline __attribute__((always_inline)) uint16_t
listener_index(struct px_metrics_state *m, const char *name, const char *direction)
{
    if (!m->listeners)
        m->listeners = cm_xcalloc(PX_METRICS_MAX_LISTENERS, sizeof(*m->listeners));
    for (size_t i = 0; i < m->nlisteners; i++)
        if (strcmp(m->listeners[i].name, name) == 0 &&
            strcmp(m->listeners[i].direction, direction) == 0)
            return (uint16_t)i;
    if (m->nlisteners < PX_METRICS_MAX_LISTENERS - 1) {
        m->listeners[m->nlisteners].name = cm_xstrdup(name);
        m->listeners[m->nlisteners].direction = direction;
        return (uint16_t)m->nlisteners++;
    }
    /* Full: "other" takes the last slot, created on first overflow. */
    struct px_metrics_listener *o = &m->listeners[PX_METRICS_MAX_LISTENERS - 1];
    if (!o->name) {
        o->name = cm_xstrdup("other");
        o->direction = "unknown";
        m->nlisteners = PX_METRICS_MAX_LISTENERS;
    }
    return PX_METRICS_MAX_LISTENERS - 1;
}

/* ---- interned label values (issue 18) ----------------------------------------- */

uint16_t px_metrics_intern(struct px_metrics_intern *t, const char *value)
{
    if (t->nvalues == 0) { /* first use: [0] "no label", [1] "other" */
        t->values[PX_METRICS_LABEL_OTHER] = cm_xstrdup("other");
        t->nvalues = 2;
    }
    size_t len = strlen(value);
    if (len > PX_METRICS_LABEL_MAXLEN) {
        t->folded++;
        return PX_METRICS_LABEL_OTHER;
    }
    uint32_t h = cm_hash_mem(value, len);
    size_t i = h & (PX_METRICS_LABEL_SLOTS - 1);
    for (;;) {
        uint16_t v = t->slots[i];
        if (v == 0)
            break;
        if (t->hashes[v] == h && strcmp(t->values[v], value) == 0)
            return v;
        i = (i + 1) & (PX_METRICS_LABEL_SLOTS - 1); /* at most half full: always ends */
    }
    /* "other" itself is a value like the rest: a real "other" shares it */
    if (strcmp(value, "other") == 0)
        return PX_METRICS_LABEL_OTHER;
    if (t->nvalues >= PX_METRICS_LABEL_VALUES) {
        t->folded++;
        return PX_METRICS_LABEL_OTHER;
    }
    uint16_t v = (uint16_t)t->nvalues++;
    t->values[v] = cm_xstrdup(value);
    t->hashes[v] = h;
    t->slots[i] = v;
    return v;
}

static uint32_t series_hash(uint16_t lidx, uint8_t cls, uint16_t code, uint16_t dst, uint16_t src)
{
    uint32_t h = ((uint32_t)lidx * 2654435761u) ^ ((uint32_t)cls * 40503u) ^ (uint32_t)code ^
                 ((uint32_t)dst << 16) ^ ((uint32_t)src * 2246822519u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return h;
}

/* The series of this key, added when there is room, or NULL. */
static struct px_metrics_series *series_get(struct px_metrics_state *m, uint16_t lidx, uint8_t cls,
                                            uint16_t code, uint16_t dst, uint16_t src, size_t limit)
{
    if (!m->series)
        m->series = cm_xcalloc(PX_METRICS_SERIES_SLOTS, sizeof(*m->series));
    size_t i = series_hash(lidx, cls, code, dst, src) & (PX_METRICS_SERIES_SLOTS - 1);
    for (;;) {
        struct px_metrics_series *s = &m->series[i];
        if (!s->used) {
            if (m->nseries >= limit)
                return NULL;
            s->used = 1;
            s->lidx = lidx;
            s->cls = cls;
            s->code = code;
            s->dst = dst;
            s->src = src;
            m->nseries++;
            return s;
        }
        if (s->lidx == lidx && s->cls == cls && s->code == code && s->dst == dst && s->src == src)
            return s;
        i = (i + 1) & (PX_METRICS_SERIES_SLOTS - 1); /* load stays under 75%: always ends */
    }
}

/* The histogram of a labelled (listener, dst, src), added when there is room, or NULL. */
static struct px_metrics_hist *hist_get(struct px_metrics_state *m, uint16_t lidx, uint16_t dst,
                                        uint16_t src, size_t limit)
{
    if (!m->hists)
        m->hists = cm_xcalloc(PX_METRICS_HIST_SLOTS, sizeof(*m->hists));
    size_t i = series_hash(lidx, 0, 0, dst, src) & (PX_METRICS_HIST_SLOTS - 1);
    for (;;) {
        struct px_metrics_hist *h = &m->hists[i];
        if (!h->used) {
            if (m->nhists >= limit)
                return NULL;
            h->used = 1;
            h->lidx = lidx;
            h->dst = dst;
            h->src = src;
            m->nhists++;
            return h;
        }
        if (h->lidx == lidx && h->dst == dst && h->src == src)
            return h;
        i = (i + 1) & (PX_METRICS_HIST_SLOTS - 1); /* load stays under 75%: always ends */
    }
}

static inline uint16_t fold(uint16_t v)
{
    return v != 0 ? PX_METRICS_LABEL_OTHER : 0;
}

/* Inlined into the entry points: the wrapper the data path calls once per
 * request costs no extra call. */
static inline __attribute__((always_inline)) void
record(struct px_metrics_state *m, const struct px_listener_cfg *l, const char *method, int status,
       uint8_t grpc, const struct px_metrics_labels *lab, uint64_t duration_us)
{
    const char *name = l && l->name ? l->name : "unknown";
    const char *direction = l ? dir_name(l->direction) : "unknown";
    uint16_t lidx = listener_index(m, name, direction);
    uint8_t cls = class_index(method);
    uint16_t g = (uint16_t)(grpc << GRPC_SHIFT); /* 0 for plain requests: folded away */
    uint16_t code = code_index(status);
    uint16_t dst = 0, src = 0;
    if (lab != NULL && lab->destination_service != NULL)
        dst = px_metrics_intern(&m->dst_values, lab->destination_service);
    if (lab != NULL && lab->source_principal != NULL)
        src = px_metrics_intern(&m->src_values, lab->source_principal);

    struct px_metrics_series *s =
        series_get(m, lidx, cls, code | g, dst, src, PX_METRICS_SERIES_EXACT);
    if (!s && code != PX_METRICS_CODE_OTHER)
        s = series_get(m, lidx, cls, PX_METRICS_CODE_OTHER | g, dst, src, PX_METRICS_SERIES_LABELS);
    if (!s && (dst | src) != 0)
        s = series_get(m, lidx, cls, PX_METRICS_CODE_OTHER | g, fold(dst), fold(src),
                       PX_METRICS_SERIES_MAX);
    if (s)
        s->count++;
    else
        m->overflow_count++;

    uint64_t *buckets, *count, *sum;
    struct px_metrics_hist *h = NULL;
    if ((dst | src) != 0) {
        h = hist_get(m, lidx, dst, src, PX_METRICS_HIST_EXACT);
        if (!h)
            h = hist_get(m, lidx, fold(dst), fold(src), PX_METRICS_HIST_MAX);
    }
    if (h) {
        buckets = h->buckets, count = &h->count, sum = &h->sum_us;
    } else { /* unlabelled (or, past every bound, the listener's own) */
        struct px_metrics_listener *ml = &m->listeners[lidx];
        buckets = ml->buckets, count = &ml->count, sum = &ml->sum_us;
    }
    size_t b = 0;
    while (b < PX_METRICS_NBUCKETS && duration_us > bucket_le_us[b])
        b++;
    buckets[b]++;
    (*count)++;
    *sum += duration_us;
}

void px_metrics_record(struct px_metrics_state *m, const struct px_listener_cfg *l,
                       const char *method, int status, uint64_t duration_us)
{
    record(m, l, method, status, 0, NULL, duration_us);
}

static uint8_t grpc_index(int grpc_status)
{
    return grpc_status >= 0 && grpc_status <= 16 ? (uint8_t)(grpc_status + 1) : GRPC_OTHER;
}

void px_metrics_record_grpc(struct px_metrics_state *m, const struct px_listener_cfg *l,
                            const char *method, int status, int grpc_status, uint64_t duration_us)
{
    record(m, l, method, status, grpc_index(grpc_status), NULL, duration_us);
}

void px_metrics_record_labels(struct px_metrics_state *m, const struct px_listener_cfg *l,
                              const char *method, int status, int grpc_status,
                              const struct px_metrics_labels *lab, uint64_t duration_us)
{
    uint8_t grpc = grpc_status == -2 ? 0 : grpc_index(grpc_status);
    record(m, l, method, status, grpc, lab, duration_us);
}

struct px_metrics_labels px_metrics_stream_labels(const struct px_stream *s)
{
    struct px_metrics_labels lab = {NULL, NULL};
    const struct px_server *srv = s->srv;
    if (s->lcfg == NULL || srv == NULL)
        return lab;
    if (s->lcfg->direction == PX_DIR_OUTBOUND) {
        /* only in a proxy with a discovery block: no surprise label elsewhere */
        if (srv->cfg == NULL || srv->cfg->discovery == NULL || !srv->cfg->discovery->enabled)
            return lab;
        if (s->disc_done && s->disc_res == PX_DISC_FOUND && s->dest != NULL)
            /* a pod no Service selects has no service name */
            lab.destination_service = s->dest->service != NULL ? s->dest->service : "unknown";
        else
            lab.destination_service = "external"; /* not in the registry, or no answer */
    } else if (s->lcfg->direction == PX_DIR_INBOUND &&
               px_authz_metrics_source_principal(srv->authz)) {
        const struct px_conn *c = s->conn;
        lab.source_principal =
            c != NULL && c->mtls && c->peer_id[0] != '\0' ? c->peer_id : "unauthenticated";
    }
    return lab;
}

/* ---- Prometheus text (exposition format 0.0.4) ---------------------------- */

static void code_label(uint16_t code, char *buf, size_t len)
{
    if (code == PX_METRICS_CODE_OTHER)
        snprintf(buf, len, "other");
    else
        snprintf(buf, len, "%u", (unsigned)code);
}

static void grpc_label(uint8_t grpc, char *buf, size_t len)
{
    if (grpc == GRPC_OTHER)
        snprintf(buf, len, "other");
    else
        snprintf(buf, len, "%u", (unsigned)(grpc - 1));
}

/* The used request series from slot *i on, with its labels: code[16], and
 * grpc[8] ("" when it has no gRPC status). NULL past the last. */
static const struct px_metrics_series *next_series(const struct px_metrics_state *m, size_t *i,
                                                   char code[16], char grpc[8])
{
    for (; m->series && *i < PX_METRICS_SERIES_SLOTS; (*i)++) {
        const struct px_metrics_series *s = &m->series[*i];
        if (s->used) {
            (*i)++;
            code_label(CODE_OF(s->code), code, 16);
            grpc[0] = '\0';
            if (s->code >> GRPC_SHIFT)
                grpc_label((uint8_t)(s->code >> GRPC_SHIFT), grpc, 8);
            return s;
        }
    }
    return NULL;
}

/* destination_service / source_principal of a series (0: absent) */
static void write_labels(const struct px_metrics_state *m, uint16_t dst, uint16_t src,
                         struct cm_prom *out)
{
    if (dst != 0)
        cm_prom_label(out, "destination_service", m->dst_values.values[dst], false);
    if (src != 0)
        cm_prom_label(out, "source_principal", m->src_values.values[src], false);
}

static void write_requests(const struct px_metrics_state *m, struct cm_prom *out)
{
    cm_prom_head(out, "remora_requests_total", "counter",
                 "Requests finished, by listener, direction, method class and response code "
                 "(0: no response was sent).");
    char code[16], grpc[8];
    const struct px_metrics_series *s;
    for (size_t i = 0; (s = next_series(m, &i, code, grpc)) != NULL;) {
        cm_prom_add(out, "remora_requests_total{", 22);
        cm_prom_label(out, "listener", m->listeners[s->lidx].name, true);
        cm_prom_label(out, "direction", m->listeners[s->lidx].direction, false);
        cm_prom_label(out, "method_class", class_names[s->cls], false);
        cm_prom_label(out, "code", code, false);
        if (grpc[0] != '\0')
            cm_prom_label(out, "grpc_status", grpc, false);
        write_labels(m, s->dst, s->src, out);
        cm_prom_printf(out, "} %" PRIu64 "\n", s->count);
    }
    if (m->overflow_count)
        cm_prom_printf(out,
                       "remora_requests_total{listener=\"other\",direction=\"unknown\","
                       "method_class=\"other\",code=\"other\"} %" PRIu64 "\n",
                       m->overflow_count);
}

/* "remora_request_duration_seconds_<part>{listener=..,direction=..[,labels]" */
static void histogram_series(const struct px_metrics_state *m, const struct px_metrics_listener *ml,
                             uint16_t dst, uint16_t src, const char *part, struct cm_prom *out)
{
    cm_prom_printf(out, "remora_request_duration_seconds_%s{", part);
    cm_prom_label(out, "listener", ml->name, true);
    cm_prom_label(out, "direction", ml->direction, false);
    write_labels(m, dst, src, out);
}

static void write_histogram(const struct px_metrics_state *m, const struct px_metrics_listener *ml,
                            uint16_t dst, uint16_t src, const uint64_t *buckets, uint64_t count,
                            uint64_t sum_us, struct cm_prom *out)
{
    uint64_t cum = 0;
    for (size_t b = 0; b <= PX_METRICS_NBUCKETS; b++) {
        cum += buckets[b];
        histogram_series(m, ml, dst, src, "bucket", out);
        cm_prom_add(out, ",le=\"", 5);
        if (b == PX_METRICS_NBUCKETS)
            cm_prom_add(out, "+Inf", 4);
        else
            cm_prom_seconds(out, bucket_le_us[b]);
        cm_prom_printf(out, "\"} %" PRIu64 "\n", cum);
    }
    histogram_series(m, ml, dst, src, "sum", out);
    cm_prom_add(out, "} ", 2);
    cm_prom_seconds(out, sum_us);
    cm_prom_add(out, "\n", 1);
    histogram_series(m, ml, dst, src, "count", out);
    cm_prom_printf(out, "} %" PRIu64 "\n", count);
}

static void write_durations(const struct px_metrics_state *m, struct cm_prom *out)
{
    cm_prom_head(out, "remora_request_duration_seconds", "histogram",
                 "Time from the first byte of a request to the end of its response, by listener.");
    for (size_t i = 0; i < m->nlisteners; i++) {
        const struct px_metrics_listener *ml = &m->listeners[i];
        /* a listener whose requests were all labelled has no unlabelled histogram */
        if (!ml->name || (ml->count == 0 && m->hists != NULL))
            continue;
        write_histogram(m, ml, 0, 0, ml->buckets, ml->count, ml->sum_us, out);
    }
    for (size_t i = 0; m->hists != NULL && i < PX_METRICS_HIST_SLOTS; i++) {
        const struct px_metrics_hist *h = &m->hists[i];
        if (h->used)
            write_histogram(m, &m->listeners[h->lidx], h->dst, h->src, h->buckets, h->count,
                            h->sum_us, out);
    }
    uint64_t folded = m->dst_values.folded + m->src_values.folded;
    if (m->dst_values.nvalues + m->src_values.nvalues > 0 || folded > 0) {
        cm_prom_head(out, "remora_metrics_label_values", "gauge",
                     "Distinct values of a bounded request label in use (\"other\" included), "
                     "at most 255.");
        cm_prom_printf(out,
                       "remora_metrics_label_values{label=\"destination_service\"} %zu\n"
                       "remora_metrics_label_values{label=\"source_principal\"} %zu\n",
                       m->dst_values.nvalues ? m->dst_values.nvalues - 1 : 0,
                       m->src_values.nvalues ? m->src_values.nvalues - 1 : 0);
        cm_prom_head(out, "remora_metrics_label_folded_total", "counter",
                     "Requests whose label value read as \"other\": the label's bound was "
                     "reached.");
        cm_prom_printf(out,
                       "remora_metrics_label_folded_total{label=\"destination_service\"} %" PRIu64
                       "\nremora_metrics_label_folded_total{label=\"source_principal\"} %" PRIu64
                       "\n",
                       m->dst_values.folded, m->src_values.folded);
    }
}

static void add_writer(struct px_metrics_state *m, px_metrics_writer prometheus,
                       px_metrics_json_writer json)
{
    for (size_t i = 0; i < m->nwriters; i++)
        if ((prometheus && m->writers[i].prometheus == prometheus) ||
            (json && m->writers[i].json == json))
            return;
    if (m->nwriters < PX_METRICS_MAX_WRITERS) {
        memset(&m->writers[m->nwriters], 0, sizeof(m->writers[0]));
        m->writers[m->nwriters].prometheus = prometheus;
        m->writers[m->nwriters++].json = json;
    }
}

void px_metrics_register_on(struct px_metrics_state *m, px_metrics_writer fn)
{
    if (m != NULL)
        add_writer(m, fn, NULL);
}

void px_metrics_register_json_on(struct px_metrics_state *m, px_metrics_json_writer fn)
{
    if (m != NULL)
        add_writer(m, NULL, fn);
}

void px_metrics_register_with(struct px_metrics_state *m, px_metrics_writer_with fn, void *arg)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nwriters; i++)
        if (m->writers[i].with == fn && m->writers[i].arg == arg)
            return;
    if (m->nwriters < PX_METRICS_MAX_WRITERS) {
        memset(&m->writers[m->nwriters], 0, sizeof(m->writers[0]));
        m->writers[m->nwriters].with = fn;
        m->writers[m->nwriters++].arg = arg;
    }
}

void px_metrics_unregister_with(struct px_metrics_state *m, px_metrics_writer_with fn, void *arg)
{
    for (size_t i = 0; m != NULL && i < m->nwriters; i++)
        if (m->writers[i].with == fn && m->writers[i].arg == arg) {
            memmove(&m->writers[i], &m->writers[i + 1],
                    (m->nwriters - i - 1) * sizeof(m->writers[0]));
            m->nwriters--;
            return;
        }
}

/* Move the text written so far into the evbuffer. */
static void flush(struct cm_prom *p, struct evbuffer *dst)
{
    size_t len;
    int err;
    char *text = cm_prom_take(p, &len, &err);
    if (err != CM_OK) /* bounded series: only a code change can pass the bound */
        cm_error("/metrics text over %d bytes: %s", PX_METRICS_TEXT_MAX, cm_err_str(err));
    evbuffer_add(dst, text, len);
    free(text);
}

/* A plain px_metrics series, by its field (each a uint64_t). */
struct plain {
    const char *name, *type, *help;
    size_t field; /* offsetof(struct px_metrics, ...) */
};
/* The _Generic term adds 0 and fails to compile unless field is a uint64_t. */
#define PLAIN(name, type, help, field)                                                             \
    {                                                                                              \
        name, type, help,                                                                          \
            offsetof(struct px_metrics, field) +                                                   \
                0 * sizeof(_Generic(((struct px_metrics *)0)->field, uint64_t : 1))                \
    }

static void write_plain(struct cm_prom *out, const struct px_metrics *m, const struct plain *p,
                        size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        memcpy(&v, (const char *)m + p[i].field, sizeof(v));
        cm_prom_u64(out, p[i].name, p[i].type, p[i].help, v);
    }
}

static const struct plain downstream_series[] = {
    PLAIN("remora_downstream_connections_active", "gauge", "Client connections open now.",
          downstream_cx_active),
    PLAIN("remora_downstream_connections_total", "counter", "Client connections accepted.",
          downstream_cx_total),
    PLAIN("remora_downstream_connections_refused_total", "counter",
          "Client connections closed at once because limits.max_connections was reached.",
          downstream_cx_refused),
    PLAIN("remora_downstream_resets_total", "counter",
          "Client connections or streams that ended abruptly (reset, closed mid-request).",
          downstream_resets),
};
static const struct plain tls_upstream_series[] = {
    PLAIN("remora_tls_handshakes_total", "counter",
          "mTLS handshakes completed (inbound and outbound).", tls_handshakes),
    PLAIN("remora_tls_handshakes_resumed_total", "counter",
          "Inbound mTLS handshakes resumed from a session ticket (no full handshake).",
          tls_handshakes_resumed),
    PLAIN("remora_tls_handshake_failures_total", "counter",
          "mTLS handshakes refused: bad or missing certificate, wrong identity, protocol errors.",
          tls_handshake_failures),
    PLAIN("remora_tls_plaintext_refused_total", "counter",
          "Plaintext connections refused by a strict mTLS listener.", tls_plaintext_refused),
    PLAIN("remora_upstream_connections_active", "gauge",
          "Upstream connections open now (in use or idle in the pool).", upstream_cx_active),
    PLAIN("remora_upstream_connections_total", "counter", "Upstream connections opened.",
          upstream_cx_total),
    PLAIN("remora_upstream_connect_failures_total", "counter",
          "Upstream connects that failed (refused, unreachable, timed out).",
          upstream_cx_connect_fail),
    PLAIN("remora_upstream_connection_reuses_total", "counter",
          "Requests sent on an upstream connection taken from the pool.", upstream_cx_reused),
    PLAIN("remora_upstream_stray_bytes_total", "counter",
          "Upstream HTTP/1.1 connections closed for bytes after a complete response.",
          upstream_cx_stray_bytes),
};
static const struct plain h2_series[] = {
    PLAIN("remora_h2_resets_received_total", "counter",
          "RST_STREAM frames received from HTTP/2 clients.", h2_resets_received),
    PLAIN("remora_h2_resets_early_total", "counter",
          "HTTP/2 client streams reset before their request went upstream (nothing opened).",
          h2_resets_early),
    PLAIN("remora_h2_reset_flood_total", "counter",
          "HTTP/2 connections closed with GOAWAY(ENHANCE_YOUR_CALM): stream reset budget spent.",
          h2_reset_flood),
    PLAIN("remora_h2_protocol_errors_total", "counter",
          "HTTP/2 client connections closed with GOAWAY for a protocol error.", h2_protocol_errors),
    PLAIN("remora_h2_empty_frame_flood_total", "counter",
          "HTTP/2 connections closed with GOAWAY(ENHANCE_YOUR_CALM): too many empty DATA frames.",
          h2_empty_frame_flood),
};
static const struct plain tunnel_series[] = {
    PLAIN("remora_retries_total", "counter", "Requests retried to an upstream.", retries_total),
    PLAIN("remora_tcp_idle_timeouts_total", "counter",
          "TCP tunnels closed after limits.tcp_idle_timeout_ms without a byte either way.",
          tcp_idle_timeout),
    PLAIN("remora_detect_silent_closed_total", "counter",
          "Connections closed because no byte came within limits.header_timeout_ms (ports not in "
          "opaque_ports).",
          detect_silent),
};

void px_metrics_write_prometheus_of(const struct px_server *srv, struct evbuffer *dst)
{
    struct cm_prom prom, *out = &prom;
    cm_prom_init(out, PX_METRICS_TEXT_MAX);
    const struct px_metrics *m = &px_metrics;
    const struct px_metrics_state *ms = srv != NULL ? srv->metrics : NULL;

    if (ms != NULL) {
        write_requests(ms, out);
        write_durations(ms, out);
    }

    write_plain(out, m, downstream_series,
                sizeof(downstream_series) / sizeof(downstream_series[0]));
    struct cm_prom_sample protos[] = {{"http1", m->proto_http1},
                                      {"h2", m->proto_h2},
                                      {"tls", m->proto_tls},
                                      {"tcp", m->proto_tcp}};
    cm_prom_by_label(out, "remora_downstream_protocol_total", "counter",
                     "Client connections by the protocol detected on their first bytes.",
                     "protocol", protos, sizeof(protos) / sizeof(protos[0]));

    write_plain(out, m, tls_upstream_series,
                sizeof(tls_upstream_series) / sizeof(tls_upstream_series[0]));

    struct cm_prom_sample errs[] = {
        {"bad_request", m->bad_request},        {"header_too_big", m->header_too_big},
        {"body_too_big", m->body_too_big},      {"header_timeout", m->header_timeout},
        {"upstream_error", m->upstream_errors},
    };
    cm_prom_by_label(out, "remora_local_errors_total", "counter",
                     "Requests the proxy answered itself with an error, by cause (400, 431, 413, "
                     "408, 502/503/504).",
                     "cause", errs, sizeof(errs) / sizeof(errs[0]));

    write_plain(out, m, h2_series, sizeof(h2_series) / sizeof(h2_series[0]));

    struct cm_prom_sample bytes[] = {{"in", m->tcp_bytes_in}, {"out", m->tcp_bytes_out}};
    cm_prom_by_label(out, "remora_tcp_bytes_total", "counter",
                     "Bytes forwarded on opaque TCP connections, in (client to upstream) and out.",
                     "flow", bytes, 2);

    write_plain(out, m, tunnel_series, sizeof(tunnel_series) / sizeof(tunnel_series[0]));
    /* series of other modules (routes: per-endpoint outcomes; policy: denials by rule) */
    flush(out, dst);
    for (size_t i = 0; ms != NULL && i < ms->nwriters; i++)
        if (ms->writers[i].prometheus != NULL)
            ms->writers[i].prometheus(dst);
        else if (ms->writers[i].with != NULL)
            ms->writers[i].with(dst, ms->writers[i].arg);
    cm_prom_head(out, "remora_cert_expiry_timestamp_seconds", "gauge",
                 "Expiry (not_after) of the workload certificate, Unix seconds; 0 without one.");
    cm_prom_printf(out, "remora_cert_expiry_timestamp_seconds %" PRId64 "\n",
                   m->cert_expiry_timestamp);

    if (srv) {
        cm_prom_u64(out, "remora_streams_active", "gauge", "Requests in flight.", srv->nstreams);
        cm_prom_head(out, "remora_h2_sessions_active", "gauge",
                     "HTTP/2 sessions open now, by side.");
        cm_prom_printf(out, "remora_h2_sessions_active{side=\"server\"} %u\n",
                       px_h2_server_sessions());
        cm_prom_printf(out, "remora_h2_sessions_active{side=\"client\"} %u\n",
                       px_h2_client_sessions());
        cm_prom_u64(out, "remora_draining", "gauge", "1 while the proxy drains, else 0.",
                    srv->draining ? 1 : 0);
        cm_prom_head(out, "remora_start_time_seconds", "gauge", "Start time, Unix seconds.");
        cm_prom_printf(out, "remora_start_time_seconds %" PRIu64 ".%03" PRIu64 "\n",
                       srv->started_wall_ms / 1000, srv->started_wall_ms % 1000);
    }
    flush(out, dst);
}

/* ---- /stats JSON ------------------------------------------------------------- */

static int dump_to_evbuffer(const char *buf, size_t size, void *data)
{
    return evbuffer_add(data, buf, size);
}

static json_t *requests_json(const struct px_metrics_state *m, uint64_t *total)
{
    json_t *arr = json_array();
    char code[16], grpc[8];
    const struct px_metrics_series *s;
    for (size_t i = 0; (s = next_series(m, &i, code, grpc)) != NULL;) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I}", "listener", m->listeners[s->lidx].name,
                              "direction", m->listeners[s->lidx].direction, "method_class",
                              class_names[s->cls], "code", code, "count", (json_int_t)s->count);
        if (grpc[0] != '\0')
            json_object_set_new(o, "grpc_status", json_string(grpc));
        if (s->dst != 0)
            json_object_set_new(o, "destination_service",
                                json_string(m->dst_values.values[s->dst]));
        if (s->src != 0)
            json_object_set_new(o, "source_principal", json_string(m->src_values.values[s->src]));
        json_array_append_new(arr, o);
        *total += s->count;
    }
    if (m->overflow_count) {
        json_array_append_new(arr,
                              json_pack("{s:s, s:s, s:s, s:s, s:I}", "listener", "other",
                                        "direction", "unknown", "method_class", "other", "code",
                                        "other", "count", (json_int_t)m->overflow_count));
        *total += m->overflow_count;
    }
    return arr;
}

static json_t *duration_json(const struct px_metrics_state *m, const struct px_metrics_listener *ml,
                             uint16_t dst, uint16_t src, const uint64_t *b_us, uint64_t count,
                             uint64_t sum_us)
{
    json_t *buckets = json_object();
    uint64_t cum = 0;
    for (size_t b = 0; b < PX_METRICS_NBUCKETS; b++) {
        char le[32];
        cum += b_us[b];
        snprintf(le, sizeof(le), "%g", (double)bucket_le_us[b] / 1e6);
        json_object_set_new(buckets, le, json_integer((json_int_t)cum));
    }
    json_t *o = json_pack("{s:s, s:s, s:I, s:f, s:o}", "listener", ml->name, "direction",
                          ml->direction, "count", (json_int_t)count, "sum_seconds",
                          (double)sum_us / 1e6, "buckets_le_seconds", buckets);
    if (dst != 0)
        json_object_set_new(o, "destination_service", json_string(m->dst_values.values[dst]));
    if (src != 0)
        json_object_set_new(o, "source_principal", json_string(m->src_values.values[src]));
    return o;
}

static json_t *durations_json(const struct px_metrics_state *m)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < m->nlisteners; i++) {
        const struct px_metrics_listener *ml = &m->listeners[i];
        if (!ml->name || (ml->count == 0 && m->hists != NULL))
            continue;
        json_array_append_new(arr, duration_json(m, ml, 0, 0, ml->buckets, ml->count, ml->sum_us));
    }
    for (size_t i = 0; m->hists != NULL && i < PX_METRICS_HIST_SLOTS; i++) {
        const struct px_metrics_hist *h = &m->hists[i];
        if (h->used)
            json_array_append_new(arr, duration_json(m, &m->listeners[h->lidx], h->dst, h->src,
                                                     h->buckets, h->count, h->sum_us));
    }
    return arr;
}

/* A uint64 counter as a JSON integer (json_int_t is signed 64-bit). */
static void set_u64(json_t *o, const char *key, uint64_t v)
{
    json_object_set_new(o, key, json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v));
}

void px_metrics_write_json_of(const struct px_server *srv, struct evbuffer *out)
{
    const struct px_metrics *m = &px_metrics;
    const struct px_metrics_state *ms = srv != NULL ? srv->metrics : NULL;
    json_t *o = json_object();

    if (srv) {
        int64_t now = cm_wall_ms();
        int64_t up = now - (int64_t)srv->started_wall_ms;
        char ts[32];
        cm_fmt_rfc3339_ms((int64_t)srv->started_wall_ms, ts, sizeof(ts));
        json_object_set_new(o, "started_at", json_string(ts));
        json_object_set_new(o, "uptime_seconds", json_integer(up > 0 ? up / 1000 : 0));
        json_object_set_new(o, "ready", json_boolean(px_server_is_ready(srv)));
        json_object_set_new(o, "draining", json_boolean(srv->draining));
        json_object_set_new(o, "listeners_bound", json_boolean(srv->listeners_bound));
        set_u64(o, "connections_live", srv->nconns);
        set_u64(o, "streams_live", srv->nstreams);
        set_u64(o, "h2_server_sessions", px_h2_server_sessions());
        set_u64(o, "h2_client_sessions", px_h2_client_sessions());
    }
    json_object_set_new(o, "log_level", json_string(cm_log_level_name(cm_log_current_level)));

#define U64(field) set_u64(o, #field, m->field)
    U64(downstream_cx_total);
    U64(downstream_cx_active);
    U64(downstream_cx_refused);
    U64(upstream_cx_total);
    U64(upstream_cx_active);
    U64(upstream_cx_connect_fail);
    U64(upstream_cx_reused);
    U64(upstream_cx_stray_bytes);
    U64(proto_http1);
    U64(proto_h2);
    U64(proto_tls);
    U64(proto_tcp);
    U64(bad_request);
    U64(header_too_big);
    U64(body_too_big);
    U64(header_timeout);
    U64(upstream_errors);
    U64(downstream_resets);
    U64(h2_resets_received);
    U64(h2_resets_early);
    U64(h2_reset_flood);
    U64(h2_protocol_errors);
    U64(h2_empty_frame_flood);
    U64(tcp_bytes_in);
    U64(tcp_bytes_out);
    U64(tcp_idle_timeout);
    U64(detect_silent);
    U64(retries_total);
    U64(policy_denials_total);
    U64(tls_handshakes);
    U64(tls_handshakes_resumed);
    U64(tls_handshake_failures);
    U64(tls_plaintext_refused);
#undef U64
    json_object_set_new(o, "cert_expiry_timestamp", json_integer(m->cert_expiry_timestamp));
    for (size_t i = 0; ms != NULL && i < ms->nwriters; i++) /* other modules' keys */
        if (ms->writers[i].json != NULL)
            ms->writers[i].json(o);

    uint64_t total = 0;
    json_t *reqs = ms != NULL ? requests_json(ms, &total) : json_array();
    set_u64(o, "requests_total", total);
    json_object_set_new(o, "requests", reqs);
    json_object_set_new(o, "request_duration", ms != NULL ? durations_json(ms) : json_array());

    json_dump_callback(o, dump_to_evbuffer, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    evbuffer_add(out, "\n", 1);
    json_decref(o);
}
