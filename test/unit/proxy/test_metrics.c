/* Unit tests of proxy/metrics.c: labelled request series, histogram buckets,
 * the Prometheus text shape, /stats JSON and the bound on the series table.
 * Linked against the proxy archive; the tables are read through
 * proxy/metrics_int.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "proxy/h2.h"
#include "proxy/metrics.h"
#include "proxy/metrics_int.h"
#include "proxy/policy.h"
#include "proxy/server.h"

/* The server /metrics and /stats are written for: its request tables and
 * writers (srv.metrics), its gauges. */
static struct px_server srv0;

static const struct px_metrics_state *tables(void)
{
    return srv0.metrics;
}

static struct px_listener_cfg l_in = {.name = "in", .direction = PX_DIR_INBOUND};
static struct px_listener_cfg l_out = {.name = "out", .direction = PX_DIR_OUTBOUND};

/* Prometheus text as a NUL-terminated heap string. */
static char *prom_text(void)
{
    struct evbuffer *b = evbuffer_new();
    px_metrics_write_prometheus_of(&srv0, b);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

static char *json_text(void)
{
    struct evbuffer *b = evbuffer_new();
    px_metrics_write_json_of(&srv0, b);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

/* The value of the sample line starting with `series` ("name{labels}"), or -1. */
static long long sample(const char *text, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, key, n) == 0 && p[n] == ' ')
            return strtoll(p + n + 1, NULL, 10);
    }
    return -1;
}

static int setup(void **state)
{
    (void)state;
    memset(&srv0, 0, sizeof(srv0));
    srv0.metrics = px_metrics_state_new();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_metrics_state_free(srv0.metrics);
    memset(&srv0, 0, sizeof(srv0));
    memset(&px_metrics, 0, sizeof(px_metrics));
    return 0;
}

static void test_series_labels(void **state)
{
    (void)state;
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 1000);
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 1000);
    px_metrics_record(srv0.metrics, &l_in, "HEAD", 200, 1000);  /* read, same series */
    px_metrics_record(srv0.metrics, &l_in, "POST", 201, 1000);  /* write */
    px_metrics_record(srv0.metrics, &l_out, "BREW", 503, 1000); /* other */
    px_metrics_record(srv0.metrics, &l_out, "GET", 0, 1000);    /* no response */
    px_metrics_record(srv0.metrics, &l_out, "GET", 1000, 1000); /* nonsense status */
    px_metrics_record(srv0.metrics, NULL, NULL, 400, 1000);     /* no listener, no method */
    assert_int_equal(tables()->nlisteners, 3);
    assert_int_equal(tables()->nseries, 6);

    char *t = prom_text();
    assert_int_equal(sample(t, "remora_requests_total{listener=\"in\",direction=\"inbound\","
                               "method_class=\"read\",code=\"200\"}"),
                     3);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"in\",direction=\"inbound\","
                               "method_class=\"write\",code=\"201\"}"),
                     1);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"out\",direction=\"outbound\","
                               "method_class=\"other\",code=\"503\"}"),
                     1);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"out\",direction=\"outbound\","
                               "method_class=\"read\",code=\"0\"}"),
                     1);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"out\",direction=\"outbound\","
                               "method_class=\"read\",code=\"other\"}"),
                     1);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"unknown\",direction=\"unknown\","
                               "method_class=\"other\",code=\"400\"}"),
                     1);
    free(t);
}

static void test_grpc_status_label(void **state)
{
    (void)state;
    struct px_metrics_state *m = srv0.metrics;
    px_metrics_record_grpc(m, &l_in, "POST", 200, 0, 1000);
    px_metrics_record_grpc(m, &l_in, "POST", 200, 0, 1000);
    px_metrics_record_grpc(m, &l_in, "POST", 200, 14, 1000);
    px_metrics_record_grpc(m, &l_in, "POST", 200, 99, 1000);   /* out of range */
    px_metrics_record_grpc(m, &l_in, "POST", 0, -1, 1000);     /* reset: none */
    px_metrics_record(srv0.metrics, &l_in, "POST", 200, 1000); /* not gRPC */
    assert_int_equal(tables()->nseries, 5);
    char *t = prom_text();
#define G(code, g)                                                                                 \
    "remora_requests_total{listener=\"in\",direction=\"inbound\",method_class=\"write\",code="     \
    "\"" code "\",grpc_status=\"" g "\"}"
    assert_int_equal(sample(t, G("200", "0")), 2);
    assert_int_equal(sample(t, G("200", "14")), 1);
    assert_int_equal(sample(t, G("200", "other")), 1);
    assert_int_equal(sample(t, G("0", "other")), 1);
#undef G
    assert_int_equal(sample(t, "remora_requests_total{listener=\"in\",direction=\"inbound\","
                               "method_class=\"write\",code=\"200\"}"),
                     1);
    free(t);
}

static void test_histogram(void **state)
{
    (void)state;
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 50);       /* <= 0.0001 */
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 100);      /* <= 0.0001 (le is inclusive) */
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 101);      /* <= 0.0005 */
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 3000);     /* <= 0.005 */
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 10000000); /* <= 10 */
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 60000000); /* +Inf only */

    char *t = prom_text();
#define B(le)                                                                                      \
    "remora_request_duration_seconds_bucket{listener=\"in\",direction=\"inbound\",le=\"" le "\"}"
    assert_int_equal(sample(t, B("0.000100")), 2);
    assert_int_equal(sample(t, B("0.000500")), 3);
    assert_int_equal(sample(t, B("0.001000")), 3);
    assert_int_equal(sample(t, B("0.002500")), 3);
    assert_int_equal(sample(t, B("0.005000")), 4);
    assert_int_equal(sample(t, B("2.500000")), 4);
    assert_int_equal(sample(t, B("10.000000")), 5);
    assert_int_equal(sample(t, B("+Inf")), 6);
#undef B
    assert_int_equal(sample(t, "remora_request_duration_seconds_count{listener=\"in\","
                               "direction=\"inbound\"}"),
                     6);
    /* 50+100+101+3000+10000000+60000000 us = 70.003251 s */
    assert_non_null(strstr(t, "remora_request_duration_seconds_sum{listener=\"in\","
                              "direction=\"inbound\"} 70.003251\n"));
    free(t);
}

/* Every sample line belongs to a metric announced by HELP and TYPE before it,
 * names are valid, every line ends with a newline. */
static void test_prometheus_shape(void **state)
{
    (void)state;
    srv0.listeners_bound = true;
    srv0.nconns = 4;
    srv0.nstreams = 5;
    srv0.started_wall_ms = 1700000000123;
    px_metrics.upstream_cx_active = 7;
    px_metrics.retries_total = 8;
    px_metrics.bad_request = 9;
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 10);
    px_policy_metrics_register(srv0.metrics); /* as the server does: the policy's families */

    char *t = prom_text();
    size_t len = strlen(t);
    assert_true(len > 0 && t[len - 1] == '\n');
    char typed[64] = "";
    for (char *line = t, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        if (strncmp(line, "# HELP ", 7) == 0)
            continue;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char *name = line + 7, *sp = strchr(name, ' ');
            assert_non_null(sp);
            *sp = '\0';
            const char *type = sp + 1;
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            snprintf(typed, sizeof(typed), "%s", name);
            continue;
        }
        assert_true(line[0] != '#');
        size_t n = strlen(typed);
        assert_true(n > 0);
        /* Sample of the announced metric (histograms add _bucket/_sum/_count). */
        assert_memory_equal(line, typed, n);
        for (const char *p = line; *p && *p != '{' && *p != ' '; p++)
            assert_true((*p >= 'a' && *p <= 'z') || *p == '_' || (*p >= '0' && *p <= '9'));
        assert_non_null(strchr(line, ' '));
    }
    free(t);

    t = prom_text();
    assert_int_equal(sample(t, "remora_upstream_connections_active"), 7);
    assert_int_equal(sample(t, "remora_retries_total"), 8);
    assert_int_equal(sample(t, "remora_policy_denials_total{rule=\"default\"}"), 0);
    assert_int_equal(sample(t, "remora_cert_expiry_timestamp_seconds"), 0);
    assert_int_equal(sample(t, "remora_local_errors_total{cause=\"bad_request\"}"), 9);
    assert_int_equal(sample(t, "remora_streams_active"), 5);
    /* the real session counts (proxy/h2.c): none open in this process */
    assert_int_equal(sample(t, "remora_h2_sessions_active{side=\"client\"}"),
                     px_h2_client_sessions());
    assert_non_null(strstr(t, "# TYPE remora_request_duration_seconds histogram\n"));
    assert_non_null(strstr(t, "remora_start_time_seconds 1700000000.123\n"));
    free(t);
}

/* Label values from the config are escaped. */
static void test_label_escaping(void **state)
{
    (void)state;
    struct px_listener_cfg odd = {.name = "a\"b\\c\nd", .direction = PX_DIR_INBOUND};
    px_metrics_record(srv0.metrics, &odd, "GET", 200, 10);
    char *t = prom_text();
    assert_non_null(strstr(t, "listener=\"a\\\"b\\\\c\\nd\""));
    free(t);
}

static void test_table_bound(void **state)
{
    (void)state;
    /* 3 classes x 501 codes x 2 listeners = 3006 distinct keys: past the cap. */
    uint64_t n = 0;
    for (int round = 0; round < 2; round++)
        for (int code = 0; code <= 600; code++)
            for (int c = 0; c < 3; c++)
                for (int l = 0; l < 2; l++) {
                    static const char *const m[] = {"GET", "POST", "BREW"};
                    px_metrics_record(srv0.metrics, l ? &l_in : &l_out, m[c], code, 10);
                    n++;
                }
    const struct px_metrics_state *tb = tables();
    assert_true(tb->nseries <= PX_METRICS_SERIES_MAX);
    assert_true(tb->nseries >= PX_METRICS_SERIES_EXACT);
    /* Nothing is lost: the series (overflow included) add up to every request. */
    uint64_t sum = tb->overflow_count;
    for (size_t i = 0; i < PX_METRICS_SERIES_SLOTS; i++)
        if (tb->series[i].used)
            sum += tb->series[i].count;
    assert_int_equal(sum, n);
    /* Folded requests land in code="other". */
    char *t = prom_text();
    assert_true(sample(t, "remora_requests_total{listener=\"in\",direction=\"inbound\","
                          "method_class=\"read\",code=\"other\"}") > 0);
    free(t);
}

/* Issue 18: interned label values, bounded. */
static void test_label_intern(void **state)
{
    (void)state;
    struct px_metrics_intern *t = &srv0.metrics->dst_values;
    uint16_t a = px_metrics_intern(t, "shop/web");
    assert_true(a > PX_METRICS_LABEL_OTHER);
    assert_int_equal(px_metrics_intern(t, "shop/web"), a);
    assert_int_equal(px_metrics_intern(t, "other"), PX_METRICS_LABEL_OTHER);
    assert_int_equal(t->folded, 0); /* a real "other" is not a fold */
    char v[PX_METRICS_LABEL_MAXLEN + 2];
    memset(v, 'x', sizeof(v) - 1);
    v[sizeof(v) - 1] = '\0';
    assert_int_equal(px_metrics_intern(t, v), PX_METRICS_LABEL_OTHER);
    assert_int_equal(t->folded, 1);
    /* up to the bound, each new value gets its own index; then "other" */
    char name[32];
    size_t fresh = 0;
    for (int i = 0; i < 400; i++) {
        snprintf(name, sizeof(name), "ns/svc-%d", i);
        if (px_metrics_intern(t, name) != PX_METRICS_LABEL_OTHER)
            fresh++;
    }
    assert_int_equal(t->nvalues, PX_METRICS_LABEL_VALUES);
    assert_int_equal(fresh, PX_METRICS_LABEL_VALUES - 3); /* [0], "other", "shop/web" */
    assert_int_equal(t->folded, 1 + 400 - fresh);
    /* values known before the bound keep their index */
    assert_int_equal(px_metrics_intern(t, "shop/web"), a);
    assert_int_equal(px_metrics_intern(t, "ns/svc-0"), a + 1);
    assert_int_equal(px_metrics_intern(t, "ns/svc-399"), PX_METRICS_LABEL_OTHER);
}

static void test_destination_label(void **state)
{
    (void)state;
    struct px_metrics_labels web = {"shop/web", NULL}, ext = {"external", NULL};
    struct px_metrics_labels peer = {NULL, "spiffe://cluster.local/ns/shop/sa/web"};
    px_metrics_record_labels(srv0.metrics, &l_out, "GET", 200, -2, &web, 1000);
    px_metrics_record_labels(srv0.metrics, &l_out, "GET", 200, -2, &web, 3000);
    px_metrics_record_labels(srv0.metrics, &l_out, "GET", 200, -2, &ext, 1000);
    px_metrics_record_labels(srv0.metrics, &l_out, "POST", 200, 0, &web, 1000); /* gRPC OK */
    px_metrics_record_labels(srv0.metrics, &l_in, "GET", 200, -2, &peer, 1000);
    px_metrics_record_labels(srv0.metrics, &l_in, "GET", 200, -2, NULL, 1000);
    char *t = prom_text();
    assert_int_equal(sample(t, "remora_requests_total{listener=\"out\",direction=\"outbound\","
                               "method_class=\"read\",code=\"200\","
                               "destination_service=\"shop/web\"}"),
                     2);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"out\",direction=\"outbound\","
                               "method_class=\"read\",code=\"200\","
                               "destination_service=\"external\"}"),
                     1);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"out\",direction=\"outbound\","
                               "method_class=\"write\",code=\"200\",grpc_status=\"0\","
                               "destination_service=\"shop/web\"}"),
                     1);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"in\",direction=\"inbound\","
                               "method_class=\"read\",code=\"200\","
                               "source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"}"),
                     1);
    assert_int_equal(sample(t, "remora_requests_total{listener=\"in\",direction=\"inbound\","
                               "method_class=\"read\",code=\"200\"}"),
                     1);
    /* the histogram: per label value; no unlabelled one for "out" */
    assert_int_equal(sample(t, "remora_request_duration_seconds_count{listener=\"out\","
                               "direction=\"outbound\",destination_service=\"shop/web\"}"),
                     3);
    assert_int_equal(sample(t, "remora_request_duration_seconds_bucket{listener=\"out\","
                               "direction=\"outbound\",destination_service=\"shop/web\","
                               "le=\"0.001000\"}"),
                     2);
    assert_int_equal(sample(t, "remora_request_duration_seconds_count{listener=\"out\","
                               "direction=\"outbound\"}"),
                     -1);
    assert_int_equal(sample(t, "remora_request_duration_seconds_count{listener=\"in\","
                               "direction=\"inbound\"}"),
                     1);
    assert_int_equal(sample(t, "remora_metrics_label_values{label=\"destination_service\"}"),
                     3); /* other, shop/web, external */
    assert_int_equal(sample(t, "remora_metrics_label_folded_total{label=\"destination_service\"}"),
                     0);
    free(t);
    t = json_text();
    assert_non_null(strstr(t, "\"destination_service\": \"shop/web\""));
    assert_non_null(strstr(t, "\"source_principal\": \"spiffe://cluster.local/ns/shop/sa/web\""));
    free(t);
}

/* Past the bound, new values count under "other"; nothing is lost. */
static void test_label_cap(void **state)
{
    (void)state;
    char name[32];
    uint64_t n = 0;
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 1000; i++) {
            snprintf(name, sizeof(name), "ns/svc-%d", i);
            struct px_metrics_labels lab = {name, NULL};
            px_metrics_record_labels(srv0.metrics, &l_out, "GET", 200 + (i % 3), -2, &lab, 10);
            n++;
        }
    const struct px_metrics_state *tb = tables();
    assert_int_equal(tb->dst_values.nvalues, PX_METRICS_LABEL_VALUES);
    assert_true(tb->nseries <= PX_METRICS_SERIES_MAX);
    assert_true(tb->nhists <= PX_METRICS_HIST_MAX);
    uint64_t sum = tb->overflow_count, hsum = 0;
    for (size_t i = 0; i < PX_METRICS_SERIES_SLOTS; i++)
        if (tb->series[i].used)
            sum += tb->series[i].count;
    for (size_t i = 0; i < PX_METRICS_HIST_SLOTS; i++)
        if (tb->hists[i].used)
            hsum += tb->hists[i].count;
    assert_int_equal(sum, n);
    assert_int_equal(hsum, n);
    char *t = prom_text();
    /* 1000 - 254 values per round folded, both rounds */
    assert_int_equal(sample(t, "remora_metrics_label_folded_total{label=\"destination_service\"}"),
                     (long long)(2 * (1000 - (PX_METRICS_LABEL_VALUES - 2))));
    assert_true(sample(t, "remora_requests_total{listener=\"out\",direction=\"outbound\","
                          "method_class=\"read\",code=\"200\",destination_service=\"other\"}") > 0);
    assert_true(sample(t, "remora_request_duration_seconds_count{listener=\"out\","
                          "direction=\"outbound\",destination_service=\"other\"}") > 0);
    assert_int_equal(sample(t, "remora_metrics_label_values{label=\"destination_service\"}"),
                     PX_METRICS_LABEL_VALUES - 1);
    free(t);
}

static void test_listener_bound(void **state)
{
    (void)state;
    char name[32];
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof(name), "l%d", i);
        struct px_listener_cfg l = {.name = name, .direction = PX_DIR_INBOUND};
        px_metrics_record(srv0.metrics, &l, "GET", 200, 10);
    }
    const struct px_metrics_state *tb = tables();
    assert_int_equal(tb->nlisteners, PX_METRICS_MAX_LISTENERS);
    assert_string_equal(tb->listeners[PX_METRICS_MAX_LISTENERS - 1].name, "other");
    assert_int_equal(tb->listeners[PX_METRICS_MAX_LISTENERS - 1].count,
                     200 - (PX_METRICS_MAX_LISTENERS - 1));
}

static void test_stats_json(void **state)
{
    (void)state;
    srv0.listeners_bound = true;
    srv0.nconns = 4;
    srv0.nstreams = 5;
    srv0.started_wall_ms = (uint64_t)cm_wall_ms();
    px_metrics.downstream_cx_total = 11;
    px_metrics.cert_expiry_timestamp = 1800000000;
    px_metrics_record(srv0.metrics, &l_in, "GET", 200, 1500);
    px_metrics_record(srv0.metrics, &l_in, "PUT", 404, 1500);

    char *t = json_text();
    json_error_t err;
    json_t *o = json_loads(t, 0, &err);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "downstream_cx_total")), 11);
    assert_int_equal(json_integer_value(json_object_get(o, "connections_live")), 4);
    assert_int_equal(json_integer_value(json_object_get(o, "streams_live")), 5);
    assert_int_equal(json_integer_value(json_object_get(o, "h2_server_sessions")),
                     px_h2_server_sessions());
    assert_int_equal(json_integer_value(json_object_get(o, "requests_total")), 2);
    assert_int_equal(json_integer_value(json_object_get(o, "cert_expiry_timestamp")), 1800000000);
    assert_true(json_is_false(json_object_get(o, "draining")));
    assert_true(json_is_true(json_object_get(o, "ready")));
    assert_int_equal(json_array_size(json_object_get(o, "requests")), 2);
    json_t *d = json_array_get(json_object_get(o, "request_duration"), 0);
    assert_string_equal(json_string_value(json_object_get(d, "listener")), "in");
    assert_int_equal(json_integer_value(json_object_get(d, "count")), 2);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(d, "buckets_le_seconds"), "0.0025")), 2);
    json_decref(o);
    free(t);
}

/* Modules' writers: called in the order registered, each once however often it
 * registered, at most 8 of them; JSON writers add their keys to /stats. */
static int module_calls;
static void module_a(struct evbuffer *out)
{
    module_calls++;
    evbuffer_add_printf(out, "# TYPE module_a gauge\nmodule_a 1\n");
}
static void module_b(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# TYPE module_b gauge\nmodule_b 2\n");
}
static void module_json(json_t *stats)
{
    json_object_set_new(stats, "module_key", json_integer(3));
}
static void fill_1(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# fill 1\n");
}
static void fill_2(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# fill 2\n");
}
static void fill_3(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# fill 3\n");
}
static void past_bound(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# past the bound\n");
}

static void test_module_writers(void **state)
{
    (void)state;
    srv0.metrics->nwriters = 0;
    px_metrics_register_on(srv0.metrics, module_a);
    px_metrics_register_on(srv0.metrics, module_b);
    px_metrics_register_on(srv0.metrics, module_a);
    px_metrics_register_json_on(srv0.metrics, module_json);
    px_metrics_register_json_on(srv0.metrics, module_json);
    assert_int_equal(tables()->nwriters, 3);
    px_policy_metrics_register(srv0.metrics);
    px_policy_metrics_register(srv0.metrics);
    assert_int_equal(tables()->nwriters, 5);
    char *t = prom_text();
    assert_int_equal(module_calls, 1);
    char *a = strstr(t, "\nmodule_a 1\n"), *b = strstr(t, "\nmodule_b 2\n");
    char *pol = strstr(t, "\nremora_policy_denials_total{rule=\"default\"} 0\n");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(pol);
    assert_true(a < b && b < pol);
    free(t);
    t = json_text();
    json_t *o = json_loads(t, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "module_key")), 3);
    assert_true(json_is_object(json_object_get(o, "policy_denials")));
    assert_true(json_is_object(json_object_get(o, "policy_audit_denials")));
    json_decref(o);
    free(t);
    /* the bound: 3 more fill the 8 slots, the next is not kept */
    px_metrics_register_on(srv0.metrics, fill_1);
    px_metrics_register_on(srv0.metrics, fill_2);
    px_metrics_register_on(srv0.metrics, fill_3);
    px_metrics_register_on(srv0.metrics, past_bound);
    assert_int_equal(tables()->nwriters, 8);
    t = prom_text();
    assert_non_null(strstr(t, "# fill 3\n"));
    assert_null(strstr(t, "# past the bound\n"));
    free(t);
    srv0.metrics->nwriters = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_series_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grpc_status_label, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prometheus_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_label_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listener_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_label_intern, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destination_label, setup, teardown),
        cmocka_unit_test_setup_teardown(test_label_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_module_writers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
