/* Unit tests of the injection decision and the patch (injector/inject*.c,
 * helpers through inject_int.h), the AdmissionReview wrapper
 * (admission.c), the config and template loaders, and the metrics text.
 * Each patch is applied with ij_jsonpatch_apply and the result inspected;
 * the integration suite does the same with kubectl and kubernetes-models. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <mbedtls/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "injector/admission.h"
#include "injector/inject.h"
#include "injector/inject_int.h"
#include "injector/config.h"
#include "injector/jsonpatch.h"
#include "injector/metrics.h"
#include "injector/template.h"

static struct ij_template *tpl;

static int setup(void **state)
{
    (void)state;
    char *err = NULL;
    if (ij_template_load(NULL, &tpl, &err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ij_template_unref(tpl);
    return 0;
}

static struct ij_inject_params params(bool native)
{
    struct ij_inject_params p = {tpl, "cluster.local", "remora-ca", native, NULL, false};
    return p;
}

/* A CREATE request for `pod_json` in namespace "shop". */
static json_t *request_for(const char *pod_json)
{
    json_t *pod = json_loads(pod_json, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(pod);
    return json_pack("{s:s, s:{s:s, s:s, s:s}, s:{s:s, s:s, s:s}, s:s, s:s, s:o}", "uid", "u1",
                     "kind", "group", "", "version", "v1", "kind", "Pod", "resource", "group", "",
                     "version", "v1", "resource", "pods", "namespace", "shop", "operation",
                     "CREATE", "object", pod);
}

static enum ij_decision decide_json(const char *pod_json)
{
    json_t *req = request_for(pod_json), *w = json_array();
    enum ij_decision d = ij_inject_decide(req, json_object_get(req, "object"), w);
    json_decref(req);
    json_decref(w);
    return d;
}

#define POD(spec, meta)                                                                            \
    "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\"" meta "},"               \
    "\"spec\":{\"containers\":[{\"name\":\"app\",\"image\":\"a\"}]" spec "}}"

static void test_decide(void **state)
{
    (void)state;
    assert_int_equal(decide_json(POD("", "")), IJ_DECIDE_INJECT);
    assert_int_equal(decide_json(POD(",\"hostNetwork\":true", "")), IJ_DECIDE_HOST_NETWORK);
    assert_int_equal(decide_json(POD(",\"hostNetwork\":false", "")), IJ_DECIDE_INJECT);
    assert_int_equal(decide_json(POD("", ",\"annotations\":{\"remora.io/status\":\"{}\"}")),
                     IJ_DECIDE_INJECTED);
    assert_int_equal(decide_json(POD("", ",\"annotations\":{\"remora.io/inject\":\"false\"}")),
                     IJ_DECIDE_OPTED_OUT);
    assert_int_equal(decide_json(POD("", ",\"annotations\":{\"remora.io/inject\":\"true\"}")),
                     IJ_DECIDE_INJECT);
    assert_int_equal(decide_json(POD(",\"volumes\":[{\"name\":\"remora-token\"}]", "")),
                     IJ_DECIDE_CONFLICT);
    assert_int_equal(decide_json(POD(",\"initContainers\":[{\"name\":\"remora-init\"}]", "")),
                     IJ_DECIDE_CONFLICT);

    /* Request-level rules. */
    json_t *req = request_for(POD("", "")), *w = json_array();
    json_t *pod = json_object_get(req, "object");
    json_object_set_new(req, "operation", json_string("UPDATE"));
    assert_int_equal(ij_inject_decide(req, pod, w), IJ_DECIDE_NOT_CREATE);
    json_object_set_new(req, "operation", json_string("CREATE"));
    json_object_set_new(req, "namespace", json_string("kube-system"));
    assert_int_equal(ij_inject_decide(req, pod, w), IJ_DECIDE_SYSTEM_NS);
    json_object_set_new(req, "namespace", json_string("shop"));
    json_object_set_new(req, "subResource", json_string("ephemeralcontainers"));
    assert_int_equal(ij_inject_decide(req, pod, w), IJ_DECIDE_NOT_POD);
    json_object_del(req, "subResource");
    json_object_set_new(json_object_get(req, "kind"), "kind", json_string("Deployment"));
    assert_int_equal(ij_inject_decide(req, pod, w), IJ_DECIDE_NOT_POD);
    json_object_set_new(json_object_get(req, "kind"), "kind", json_string("Pod"));
    assert_int_equal(ij_inject_decide(req, NULL, w), IJ_DECIDE_NOT_POD);
    assert_int_equal(ij_inject_decide(req, pod, w), IJ_DECIDE_INJECT);
    json_decref(req);
    json_decref(w);
    assert_string_equal(ij_decision_name(IJ_DECIDE_HOST_NETWORK), "host-network");
    assert_string_equal(ij_decision_name((enum ij_decision)99), "unknown");
}

static void test_lists(void **state)
{
    (void)state;
    assert_true(ij_port_ok("1", 1));
    assert_true(ij_port_ok("65535", 5));
    assert_false(ij_port_ok("0", 1));
    assert_false(ij_port_ok("65536", 5));
    assert_false(ij_port_ok("", 0));
    assert_false(ij_port_ok("-1", 2));
    assert_false(ij_port_ok("080a", 4));
    assert_true(ij_cidr_ok("10.0.0.0/8", 10));
    assert_true(ij_cidr_ok("1.2.3.4", 7));
    assert_true(ij_cidr_ok("::/0", 4));
    assert_true(ij_cidr_ok("fd00::1/128", 11));
    assert_false(ij_cidr_ok("10.0.0.0/33", 11));
    assert_false(ij_cidr_ok("fd00::/129", 10));
    assert_false(ij_cidr_ok("10.0.0.0/", 9));
    assert_false(ij_cidr_ok("10.0.0/8", 8));
    assert_false(ij_cidr_ok("--dry-run", 9));
    assert_true(ij_port_listed("80,9090", 9090));
    assert_false(ij_port_listed("80,9090", 90));
    assert_false(ij_port_listed(NULL, 80));
    assert_true(ij_inject_dns_label("web-1"));
    assert_false(ij_inject_dns_label("Web"));
    assert_false(ij_inject_dns_label("a/b"));
    assert_true(ij_dns_subdomain("web-policy.v2"));
    assert_false(ij_dns_subdomain("Bad_Name"));
    assert_false(ij_dns_subdomain("-x"));

    json_t *c = json_loads("{\"ports\":[{\"name\":\"http\",\"containerPort\":8080},"
                           "{\"name\":\"bad\",\"containerPort\":70000}]}",
                           0, NULL);
    json_t *v;
    assert_int_equal(ij_inject_resolve_port(c, v = json_string("http")), 8080);
    json_decref(v);
    assert_int_equal(ij_inject_resolve_port(c, v = json_string("9090")), 9090);
    json_decref(v);
    assert_int_equal(ij_inject_resolve_port(c, v = json_string("bad")), -1);
    json_decref(v);
    assert_int_equal(ij_inject_resolve_port(c, v = json_string("nope")), -1);
    json_decref(v);
    assert_int_equal(ij_inject_resolve_port(c, v = json_integer(0)), -1);
    json_decref(v);
    assert_int_equal(ij_inject_resolve_port(c, v = json_integer(81)), 81);
    json_decref(v);
    json_decref(c);
}

/* Inject `pod_json`, apply the patch, return the patched pod (caller decrefs). */
static json_t *inject(const char *pod_json, bool native, json_t **patch_out, json_t **warnings)
{
    json_t *req = request_for(pod_json);
    json_t *pod = json_object_get(req, "object");
    json_t *w = json_array();
    struct ij_inject_params p = params(native);
    assert_int_equal(ij_inject_decide(req, pod, w), IJ_DECIDE_INJECT);
    json_t *patch = ij_inject_patch(&p, req, pod, w);
    json_t *out = json_deep_copy(pod);
    assert_int_equal(ij_jsonpatch_apply(out, patch), 0);
    /* Reinvocation on the result: no second injection. */
    json_object_set(req, "object", out);
    assert_int_equal(ij_inject_decide(req, out, w), IJ_DECIDE_INJECTED);
    json_decref(req);
    if (patch_out != NULL)
        *patch_out = patch;
    else
        json_decref(patch);
    if (warnings != NULL)
        *warnings = w;
    else
        json_decref(w);
    return out;
}

static json_t *at(json_t *root, const char *path)
{
    /* Walk a "|"-separated path (keys hold dots) with numeric array indices. */
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = root;
    for (char *tok = strtok(buf, "|"); tok != NULL && cur != NULL; tok = strtok(NULL, "|")) {
        if (json_is_array(cur))
            cur = json_array_get(cur, strtoul(tok, NULL, 10));
        else
            cur = json_object_get(cur, tok);
    }
    return cur;
}

static const char *str_at(json_t *root, const char *path)
{
    const char *s = json_string_value(at(root, path));
    if (s == NULL)
        fail_msg("no string at %s", path);
    return s;
}

static void test_patch_classic(void **state)
{
    (void)state;
    json_t *patch, *w;
    json_t *pod = inject(POD(",\"initContainers\":[{\"name\":\"setup\",\"image\":\"s\"}]",
                             ",\"annotations\":{\"a/b\":\"c\"}"),
                         false, &patch, &w);
    assert_string_equal(str_at(pod, "spec|initContainers|0|name"), "remora-init");
    assert_string_equal(str_at(pod, "spec|initContainers|1|name"), "setup");
    assert_string_equal(str_at(pod, "spec|containers|0|name"), "remora-proxy");
    assert_string_equal(str_at(pod, "spec|containers|1|name"), "app");
    assert_string_equal(str_at(pod, "metadata|annotations|a/b"), "c");
    assert_string_equal(str_at(pod, "metadata|annotations|kubectl.kubernetes.io/default-container"),
                        "app");
    assert_non_null(str_at(pod, "metadata|annotations|remora.io/status"));
    assert_int_equal(json_array_size(json_object_get(json_object_get(pod, "spec"), "volumes")), 4);
    /* Only adds: nothing of the pod is replaced or removed. */
    size_t i;
    json_t *op;
    json_array_foreach(patch, i, op)
    {
        assert_string_equal(json_string_value(json_object_get(op, "op")), "add");
    }
    /* The classic-mode warning about init containers. */
    assert_true(json_array_size(w) >= 1);
    json_decref(w);
    json_decref(patch);
    json_decref(pod);
}

static void test_patch_native(void **state)
{
    (void)state;
    json_t *pod =
        inject(POD("", ",\"annotations\":{\"remora.io/policy\":\"pol\"}"), true, NULL, NULL);
    assert_string_equal(str_at(pod, "spec|initContainers|0|name"), "remora-init");
    assert_string_equal(str_at(pod, "spec|initContainers|1|name"), "remora-proxy");
    assert_string_equal(str_at(pod, "spec|initContainers|1|restartPolicy"), "Always");
    assert_int_equal(json_array_size(json_object_get(json_object_get(pod, "spec"), "containers")),
                     1);
    assert_string_equal(str_at(pod, "spec|volumes|4|configMap|name"), "pol");
    json_t *boot = json_loads(str_at(pod, "metadata|annotations|remora.io/bootstrap"), 0, NULL);
    assert_string_equal(str_at(boot, "policy_file"), "/etc/remora/policy/policy.json");
    assert_string_equal(str_at(boot, "identity|token_file"), "/var/run/remora/token/token");
    json_decref(boot);
    json_decref(pod);

    /* The annotation overrides the default both ways. */
    pod = inject(POD("", ",\"annotations\":{\"remora.io/native-sidecar\":\"false\"}"), true, NULL,
                 NULL);
    assert_string_equal(str_at(pod, "spec|containers|0|name"), "remora-proxy");
    json_decref(pod);
    pod = inject(POD("", ",\"annotations\":{\"remora.io/native-sidecar\":\"true\"}"), false, NULL,
                 NULL);
    assert_string_equal(str_at(pod, "spec|initContainers|1|name"), "remora-proxy");
    json_decref(pod);
}

static void test_patch_probes(void **state)
{
    (void)state;
    json_t *pod = inject(
        "{\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":\"a\","
        "\"ports\":[{\"name\":\"http\",\"containerPort\":8080}],"
        "\"livenessProbe\":{\"httpGet\":{\"port\":\"http\",\"path\":\"/l\"},\"timeoutSeconds\":2},"
        "\"readinessProbe\":{\"tcpSocket\":{\"port\":8080}}}]}}",
        false, NULL, NULL);
    assert_string_equal(str_at(pod, "spec|containers|1|livenessProbe|httpGet|path"),
                        "/app-health/a/livez");
    json_t *port = at(pod, "spec|containers|1|livenessProbe|httpGet|port");
    assert_int_equal(json_integer_value(port), 15020);
    const char *probers = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(at(pod, "spec|containers|0|env"), i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "name")), "REMORA_APP_PROBERS") == 0)
            probers = json_string_value(json_object_get(e, "value"));
    }
    assert_non_null(probers);
    assert_string_equal(probers, "{\"/app-health/a/livez\":{\"httpGet\":{\"path\":\"/l\","
                                 "\"port\":8080,\"scheme\":\"HTTP\"},\"timeoutSeconds\":2}}");
    assert_true(json_is_object(at(pod, "spec|containers|1|readinessProbe|tcpSocket")));
    json_decref(pod);
}

/* gRPC probes (issue 19): replaced by an httpGet of /app-health/... on 15020,
 * the target in REMORA_APP_GRPC_PROBERS; excluded ports are left alone. */
static void test_patch_grpc_probes(void **state)
{
    (void)state;
    json_t *w;
    json_t *pod = inject(
        "{\"metadata\":{\"name\":\"p\",\"annotations\":{\"remora.io/exclude-inbound-ports\":"
        "\"9001\"}},\"spec\":{\"containers\":[{\"name\":\"api\","
        "\"livenessProbe\":{\"grpc\":{\"port\":9000},\"periodSeconds\":7,\"timeoutSeconds\":3},"
        "\"readinessProbe\":{\"grpc\":{\"port\":9000,\"service\":\"shop.Cart\"}},"
        "\"startupProbe\":{\"grpc\":{\"port\":9001}}}]}}",
        false, NULL, &w);
    assert_int_equal(json_array_size(w), 0);
    json_decref(w);
    assert_string_equal(str_at(pod, "spec|containers|1|livenessProbe|httpGet|path"),
                        "/app-health/api/livez");
    assert_int_equal(json_integer_value(at(pod, "spec|containers|1|livenessProbe|httpGet|port")),
                     15020);
    assert_null(at(pod, "spec|containers|1|livenessProbe|grpc"));
    assert_int_equal(json_integer_value(at(pod, "spec|containers|1|livenessProbe|periodSeconds")),
                     7);
    assert_string_equal(str_at(pod, "spec|containers|1|readinessProbe|httpGet|path"),
                        "/app-health/api/readyz");
    /* the excluded port: kubelet reaches the app itself */
    assert_int_equal(json_integer_value(at(pod, "spec|containers|1|startupProbe|grpc|port")), 9001);
    assert_null(at(pod, "spec|containers|1|startupProbe|httpGet"));
    const char *grpc = NULL, *http = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(at(pod, "spec|containers|0|env"), i, e)
    {
        const char *n = json_string_value(json_object_get(e, "name"));
        if (strcmp(n, "REMORA_APP_GRPC_PROBERS") == 0)
            grpc = json_string_value(json_object_get(e, "value"));
        if (strcmp(n, "REMORA_APP_PROBERS") == 0)
            http = json_string_value(json_object_get(e, "value"));
    }
    assert_null(http);
    assert_non_null(grpc);
    assert_string_equal(grpc, "{\"/app-health/api/livez\":{\"grpc\":{\"port\":9000},"
                              "\"timeoutSeconds\":3},\"/app-health/api/readyz\":{\"grpc\":"
                              "{\"port\":9000,\"service\":\"shop.Cart\"}}}");
    json_decref(pod);

    /* a service name that cannot be sent: left alone, said */
    pod = inject("{\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":\"api\","
                 "\"livenessProbe\":{\"grpc\":{\"port\":9000,\"service\":7}}}]}}",
                 false, NULL, &w);
    assert_int_equal(json_array_size(w), 1);
    assert_non_null(strstr(json_string_value(json_array_get(w, 0)), "probe not rewritten"));
    assert_non_null(at(pod, "spec|containers|1|livenessProbe|grpc"));
    json_decref(w);
    json_decref(pod);
}

static void test_patch_exclusions(void **state)
{
    (void)state;
    json_t *w;
    json_t *pod =
        inject(POD("", ",\"annotations\":{\"remora.io/exclude-inbound-ports\":\" 81, 82\","
                       "\"remora.io/exclude-outbound-ip-ranges\":\"--dry-run\"}"),
               false, NULL, &w);
    json_t *args = at(pod, "spec|initContainers|0|args");
    assert_int_equal(json_array_size(args), 9);
    assert_string_equal(json_string_value(json_array_get(args, 7)), "--exclude-inbound-ports");
    assert_string_equal(json_string_value(json_array_get(args, 8)), "81,82");
    assert_int_equal(json_array_size(w), 1);
    json_decref(w);
    json_decref(pod);
}

/* issue 14: Go-style durations of remora.io/termination-drain-duration */
static void test_duration(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        long ms;
    } cases[] = {
        {"0", 0},         {"5s", 5000},    {"1m30s", 90000},
        {"2500ms", 2500}, {"1h", 3600000}, {"1m1s1ms", 61001},
        {"0s", 0},        {"1h1s", -1},    {"3601s", -1},
        {"5", -1},        {"s", -1},       {"-5s", -1},
        {"5 s", -1},      {"5S", -1},      {"1.5s", -1},
        {"", -1},         {"5sm", -1},     {"99999999999999999999s", -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (ij_inject_duration_ms(cases[i].in) != cases[i].ms)
            fail_msg("duration \"%s\": %ld, want %ld", cases[i].in,
                     ij_inject_duration_ms(cases[i].in), cases[i].ms);
}

/* issue 14: the webhook entries' paths */
static void test_inject_path(void **state)
{
    (void)state;
    const char *psa = "x";
    bool pod = true;
    assert_true(ij_inject_path("/inject", &psa, &pod));
    assert_null(psa);
    assert_false(pod);
    assert_true(ij_inject_path("/inject/pod/psa/restricted", &psa, &pod));
    assert_string_equal(psa, "restricted");
    assert_true(pod);
    assert_true(ij_inject_path("/inject/psa/baseline", &psa, NULL));
    assert_string_equal(psa, "baseline");
    assert_true(ij_inject_path("/inject/pod", NULL, &pod));
    assert_true(pod);
    static const char *const no[] = {"/inject/",
                                     "/inject/psa/privileged",
                                     "/inject/pod/",
                                     "/injectx",
                                     "/inject/psa",
                                     "/inject/pod/psa",
                                     "/INJECT",
                                     "inject",
                                     "",
                                     "/inject//pod"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (ij_inject_path(no[i], &psa, &pod))
            fail_msg("\"%s\" accepted", no[i]);
    assert_false(ij_inject_path(NULL, NULL, NULL));
}

static void test_patch_whole_maps(void **state)
{
    (void)state;
    json_t *patch;
    json_t *pod = inject("{\"spec\":{\"containers\":[{\"name\":\"c\"}]}}", false, &patch, NULL);
    assert_string_equal(str_at(patch, "0|path"), "/metadata");
    assert_non_null(str_at(pod, "metadata|annotations|remora.io/status"));
    json_decref(patch);
    json_decref(pod);
    pod = inject("{\"metadata\":{\"annotations\":null},\"spec\":{\"containers\":[{\"name\":\"c\"}],"
                 "\"volumes\":null,\"initContainers\":null}}",
                 false, &patch, NULL);
    assert_string_equal(str_at(patch, "0|path"), "/metadata/annotations");
    json_decref(patch);
    json_decref(pod);
}

/* ---- admission.c ---------------------------------------------------------- */

static void review(const char *body, struct ij_review *rv)
{
    struct ij_inject_params p = params(false);
    ij_admission_review(&p, body, strlen(body), rv);
}

static void test_admission(void **state)
{
    (void)state;
    struct ij_review rv;
    static const char *const bad[] = {
        "",
        "nope",
        "[]",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
        "{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\",\"request\":{}}",
        "{\"apiVersion\":\"admission.k8s.io/"
        "v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"\"}}",
        "{\"apiVersion\":\"admission.k8s.io/"
        "v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\","
        "\"kind\":{\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":{\"spec\":{}}}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        review(bad[i], &rv);
        assert_int_equal(rv.http_status, 400);
        assert_non_null(rv.errmsg);
        assert_non_null(strstr(rv.body, "\"error\""));
        ij_review_deinit(&rv);
    }

    review("{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
           "\"uid\":\"abc\",\"kind\":{\"kind\":\"Pod\"},\"operation\":\"DELETE\"}}",
           &rv);
    assert_int_equal(rv.http_status, 200);
    assert_int_equal(rv.decision, IJ_DECIDE_NOT_POD);
    assert_string_equal(rv.body,
                        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":"
                        "\"AdmissionReview\",\"response\":{\"uid\":\"abc\",\"allowed\":true}}");
    ij_review_deinit(&rv);

    review("{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
           "\"uid\":\"xyz\",\"kind\":{\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":" POD(
               "", "") "}}",
           &rv);
    assert_int_equal(rv.http_status, 200);
    assert_int_equal(rv.decision, IJ_DECIDE_INJECT);
    json_t *doc = json_loads(rv.body, 0, NULL);
    assert_string_equal(str_at(doc, "response|uid"), "xyz");
    assert_string_equal(str_at(doc, "response|patchType"), "JSONPatch");
    const char *b64 = str_at(doc, "response|patch");
    unsigned char dec[16384];
    size_t n = 0;
    assert_int_equal(
        mbedtls_base64_decode(dec, sizeof(dec), &n, (const unsigned char *)b64, strlen(b64)), 0);
    json_t *patch = json_loadb((const char *)dec, n, 0, NULL);
    assert_true(json_is_array(patch));
    json_decref(patch);
    json_decref(doc);
    ij_review_deinit(&rv);
}

/* remora.io/inbound-tls and remora.io/permissive-ports (issue 19): the
 * bootstrap's inbound listeners; a bad value refuses the pod. */
static json_t *boot_of(const char *pod_json, json_t **warnings)
{
    json_t *pod = inject(pod_json, false, NULL, warnings);
    json_t *boot = json_loads(str_at(pod, "metadata|annotations|remora.io/bootstrap"), 0, NULL);
    assert_non_null(boot);
    json_decref(pod);
    return boot;
}

static char *check_pod_json(const char *pod_json)
{
    json_t *pod = json_loads(pod_json, 0, NULL);
    assert_non_null(pod);
    struct ij_inject_params p = params(false);
    char *why = ij_inject_check(&p, pod);
    json_decref(pod);
    return why;
}

static void test_inbound_tls(void **state)
{
    (void)state;
    json_t *w;
    /* default: the template's strict, no list */
    json_t *boot = boot_of(POD("", ""), NULL);
    assert_string_equal(str_at(boot, "listeners|0|tls"), "strict");
    assert_null(at(boot, "listeners|0|permissive_ports"));
    json_decref(boot);

    boot = boot_of(POD("", ",\"annotations\":{\"remora.io/inbound-tls\":\"permissive\"}"), NULL);
    assert_string_equal(str_at(boot, "listeners|0|name"), "inbound");
    assert_string_equal(str_at(boot, "listeners|0|tls"), "permissive");
    assert_string_equal(str_at(boot, "listeners|2|name"), "inbound6");
    assert_string_equal(str_at(boot, "listeners|2|tls"), "permissive");
    assert_string_equal(str_at(boot, "listeners|1|tls"), "mesh");
    json_decref(boot);

    boot =
        boot_of(POD("", ",\"annotations\":{\"remora.io/permissive-ports\":\" 9090, 8080 ,\"}"), &w);
    assert_int_equal(json_array_size(w), 0);
    json_decref(w);
    for (int i = 0; i < 4; i++) {
        json_t *l = json_array_get(json_object_get(boot, "listeners"), (size_t)i);
        json_t *ports = json_object_get(l, "permissive_ports");
        if (strcmp(json_string_value(json_object_get(l, "direction")), "outbound") == 0) {
            assert_null(ports);
            continue;
        }
        assert_string_equal(json_string_value(json_object_get(l, "tls")), "strict");
        assert_int_equal(json_array_size(ports), 2);
        assert_int_equal(json_integer_value(json_array_get(ports, 0)), 9090);
        assert_int_equal(json_integer_value(json_array_get(ports, 1)), 8080);
    }
    json_decref(boot);

    /* explicit strict, and an empty list: strict without ports */
    boot = boot_of(POD("", ",\"annotations\":{\"remora.io/inbound-tls\":\"strict\","
                           "\"remora.io/permissive-ports\":\"\"}"),
                   NULL);
    assert_string_equal(str_at(boot, "listeners|0|tls"), "strict");
    assert_null(at(boot, "listeners|0|permissive_ports"));
    json_decref(boot);

    /* permissive everywhere: the list says nothing more, with a warning */
    boot = boot_of(POD("", ",\"annotations\":{\"remora.io/inbound-tls\":\"permissive\","
                           "\"remora.io/permissive-ports\":\"9090\"}"),
                   &w);
    assert_string_equal(str_at(boot, "listeners|0|tls"), "permissive");
    assert_null(at(boot, "listeners|0|permissive_ports"));
    assert_int_equal(json_array_size(w), 1);
    assert_non_null(strstr(json_string_value(json_array_get(w, 0)), "remora.io/permissive-ports"));
    json_decref(w);
    json_decref(boot);

    char *why =
        check_pod_json(POD("", ",\"annotations\":{\"remora.io/permissive-ports\":\"9090\"}"));
    assert_null(why);

    /* refused, each with the annotation named */
    static const struct {
        const char *ann, *want;
    } bad[] = {
        {"\"remora.io/inbound-tls\":\"Strict\"", "remora.io/inbound-tls: \"Strict\" is neither"},
        {"\"remora.io/inbound-tls\":\"disabled\"", "remora.io/inbound-tls: \"disabled\""},
        {"\"remora.io/inbound-tls\":\"\"", "remora.io/inbound-tls: \"\" is neither"},
        {"\"remora.io/inbound-tls\":true", "remora.io/inbound-tls: expected the string \"strict\""},
        {"\"remora.io/permissive-ports\":\"9090,abc\"",
         "remora.io/permissive-ports: item \"abc\" is not a port"},
        {"\"remora.io/permissive-ports\":\"0\"", "remora.io/permissive-ports: item \"0\""},
        {"\"remora.io/permissive-ports\":\"70000\"", "remora.io/permissive-ports: item \"70000\""},
        {"\"remora.io/permissive-ports\":\"9090,,8080\"", "remora.io/permissive-ports: item \"\""},
        {"\"remora.io/permissive-ports\":\"--dry-run\"", "item \"--dry-run\" is not a port"},
        {"\"remora.io/permissive-ports\":\"9090, 9090\"", "port 9090 is listed twice"},
        {"\"remora.io/permissive-ports\":9090", "remora.io/permissive-ports: expected a string"},
        {"\"remora.io/inbound-tls\":\"permissive\",\"remora.io/permissive-ports\":\"x\"",
         "remora.io/permissive-ports: item \"x\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char pod[512];
        snprintf(pod, sizeof(pod),
                 "{\"metadata\":{\"name\":\"p\",\"annotations\":{%s}},\"spec\":{\"containers\":"
                 "[{\"name\":\"app\"}]}}",
                 bad[i].ann);
        why = check_pod_json(pod);
        if (why == NULL || strstr(why, bad[i].want) == NULL)
            fail_msg("%s: got %s, want %s", bad[i].ann, why ? why : "(accepted)", bad[i].want);
        free(why);
    }
    /* 64 ports are taken, 65 refused */
    char list[65 * 6 + 1], pod[1024];
    size_t off = 0;
    for (int i = 0; i < 65; i++)
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%d", i ? "," : "", 2000 + i);
    snprintf(pod, sizeof(pod),
             "{\"metadata\":{\"annotations\":{\"remora.io/permissive-ports\":\"%s\"}},"
             "\"spec\":{\"containers\":[{\"name\":\"app\"}]}}",
             list);
    why = check_pod_json(pod);
    assert_non_null(why);
    assert_non_null(strstr(why, "more than 64 ports"));
    free(why);
    *strrchr(list, ',') = '\0';
    snprintf(pod, sizeof(pod),
             "{\"metadata\":{\"annotations\":{\"remora.io/permissive-ports\":\"%s\"}},"
             "\"spec\":{\"containers\":[{\"name\":\"app\"}]}}",
             list);
    assert_null(check_pod_json(pod));

    /* the admission answer: allowed false, the message in status */
    struct ij_review rv;
    review("{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
           "\"uid\":\"r1\",\"kind\":{\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":" POD(
               "", ",\"annotations\":{\"remora.io/inbound-tls\":\"off\"}") "}}",
           &rv);
    assert_int_equal(rv.http_status, 200);
    assert_int_equal(rv.decision, IJ_DECIDE_REFUSED);
    json_t *doc = json_loads(rv.body, 0, NULL);
    assert_string_equal(str_at(doc, "response|uid"), "r1");
    assert_true(json_is_false(at(doc, "response|allowed")));
    assert_null(at(doc, "response|patch"));
    assert_int_equal(json_integer_value(at(doc, "response|status|code")), 400);
    assert_string_equal(str_at(doc, "response|status|message"),
                        "remora: annotation remora.io/inbound-tls: \"off\" is neither \"strict\" "
                        "nor \"permissive\"");
    json_decref(doc);
    ij_review_deinit(&rv);
    assert_string_equal(ij_decision_name(IJ_DECIDE_REFUSED), "bad-annotation");
}

static void test_base64(void **state)
{
    (void)state;
    const char *in = "\x00\xff\x10patch \"json\"~/";
    for (size_t len = 0; len <= strlen(in + 1) + 1; len++) {
        size_t olen = 0, mlen = 0;
        char *ours = ij_admission_base64(in, len, &olen);
        unsigned char theirs[64];
        assert_int_equal(
            mbedtls_base64_encode(theirs, sizeof(theirs), &mlen, (const unsigned char *)in, len),
            0);
        assert_int_equal(olen, mlen);
        assert_memory_equal(ours, theirs, olen);
        assert_int_equal(ours[olen], '\0');
        free(ours);
    }
}

/* ---- config and template ---------------------------------------------------- */

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/remora-ij-unit.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void config_error(const char *text, const char *want)
{
    struct ij_config cfg;
    char *err = NULL, *path = write_tmp(text);
    assert_int_equal(ij_config_load(path, &cfg, &err), CM_ERR_INVAL);
    assert_non_null(err);
    if (strstr(err, want) == NULL || strstr(err, path) == NULL)
        fail_msg("error '%s' lacks '%s' or the file name", err, want);
    free(err);
    unlink(path);
    free(path);
}

static void test_config(void **state)
{
    (void)state;
    struct ij_config cfg;
    char *err = NULL;
    char *path = write_tmp("{\"webhook\":{\"cert_file\":\"c\",\"key_file\":\"k\"}}");
    assert_int_equal(ij_config_load(path, &cfg, &err), 0);
    assert_string_equal(cfg.webhook_address, "0.0.0.0:8443");
    assert_int_equal(cfg.max_body_bytes, 4 << 20);
    assert_string_equal(cfg.ca_audience, "remora-ca");
    assert_int_equal(cfg.ca_ttl_seconds, 86400);
    assert_string_equal(cfg.trust_domain, "cluster.local");
    assert_false(cfg.native_sidecars);
    assert_null(cfg.template_file);
    ij_config_deinit(&cfg);
    unlink(path);
    free(path);

    config_error("{}", "webhook: required key is missing");
    config_error("{\"webhook\":{\"cert_file\":\"c\"}}",
                 "webhook.key_file: required key is missing");
    config_error("{\"webhook\":{\"cert_file\":\"c\",\"key_file\":\"k\"},\"x\":1}",
                 "x: unknown key");
    config_error("{\"webhook\":{\"cert_file\":\"c\",\"key_file\":\"k\",\"address\":\"x\"}}",
                 "webhook.address");
    config_error("{\"webhook\":{\"cert_file\":\"\",\"key_file\":\"k\"}}",
                 "webhook.cert_file: must not be empty");
    config_error(
        "{\"webhook\":{\"cert_file\":\"c\",\"key_file\":\"k\"},\"ca\":{\"key_file\":\"k\"}}",
        "ca.cert_file: required together");
    config_error("{\"webhook\":{\"cert_file\":\"c\",\"key_file\":\"k\"},\"trust_domain\":\"A\"}",
                 "trust_domain");
    config_error("{\"webhook\":{\"cert_file\":\"c\",\"key_file\":\"k\"},\"native_sidecars\":1}",
                 "native_sidecars: expected true or false");
    config_error("not json", "line 1");
}

static void test_template(void **state)
{
    (void)state;
    json_t *root = json_loads(ij_template_builtin_json, 0, NULL);
    struct ij_template *t = NULL;
    char *err = NULL;
    assert_int_equal(ij_template_from_json("t", root, &t, &err), 0);
    assert_string_equal(t->image_pull_policy, "IfNotPresent");
    assert_true(t->hold_application);
    ij_template_unref(t);

    static const struct {
        const char *key, *value, *want;
    } bad[] = {
        {"image", "\"\"", "t: image: must not be empty"},
        {"args", "[1]", "t: args[0]: expected a string"},
        {"env", "[{\"name\":\"POD_NAME\",\"value\":\"x\"}]", "POD_NAME is set by the injector"},
        {"env", "[{\"name\":\"A\",\"value\":\"x\",\"valueFrom\":{}}]", "exclusive"},
        {"env", "[{\"name\":\"1A\"}]", "not a valid variable name"},
        {"resources", "{\"requests\":{\"cpu\":\"lots\"}}", "resources.requests.cpu"},
        {"resources", "{\"limit\":{}}", "resources.limit: unknown key"},
        {"inbound_tls", "\"loose\"", "inbound_tls"},
        {"token_expiration_seconds", "60", "token_expiration_seconds: 60 is out of range"},
        {"wait_command", "[]", "wait_command: must not be empty"},
        {"extra", "1", "t: extra: unknown key"},
        {"discovery", "true", "t: discovery: expected an object"},
        {"discovery", "{}", "t: discovery.address: required key is missing"},
        {"discovery", "{\"address\":\"a:1\",\"port\":1}", "t: discovery.port: unknown key"},
        {"discovery", "{\"address\":\"no-port\"}",
         "t: discovery.address: \"no-port\" is not host:port"},
        {"discovery", "{\"address\":\"a:0\"}", "discovery.address"},
        {"discovery", "{\"address\":\"a b:1\"}", "discovery.address"},
        {"discovery", "{\"address\":\"a:1\",\"lookup_timeout_ms\":0}",
         "discovery.lookup_timeout_ms: 0 is out of range"},
        {"discovery", "{\"address\":\"a:1\",\"server_name\":\"x/y\"}",
         "discovery.server_name: \"x/y\" is not a DNS name"},
        {"discovery", "{\"address\":\"a:1\",\"server_name\":7}", "discovery.server_name"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *copy = json_deep_copy(root);
        json_object_set_new(copy, bad[i].key, json_loads(bad[i].value, JSON_DECODE_ANY, NULL));
        assert_int_equal(ij_template_from_json("t", copy, &t, &err), CM_ERR_INVAL);
        if (strstr(err, bad[i].want) == NULL)
            fail_msg("template error '%s' lacks '%s'", err, bad[i].want);
        free(err);
        err = NULL;
        json_decref(copy);
    }
    json_decref(root);
}

/* The built-in template with its "discovery" set to value (JSON text) or,
 * NULL, removed: it must load. */
static struct ij_template *template_discovery(const char *value)
{
    json_t *root = json_loads(ij_template_builtin_json, 0, NULL);
    if (value == NULL)
        json_object_del(root, "discovery");
    else
        json_object_set_new(root, "discovery", json_loads(value, JSON_DECODE_ANY, NULL));
    struct ij_template *t = NULL;
    char *err = NULL;
    assert_int_equal(ij_template_from_json("t", root, &t, &err), 0);
    json_decref(root);
    return t;
}

/* Issue 18: the template's "discovery" block in every bootstrap, left out by
 * remora.io/discovery: "off" or by "discovery": false in the template. */
static void test_discovery_block(void **state)
{
    (void)state;
    json_t *w;
    /* built-in template: the default address, the proxy's other defaults */
    json_t *boot = boot_of(POD("", ""), &w);
    assert_string_equal(str_at(boot, "discovery|address"),
                        "remora-injector.remora-system.svc:15011");
    assert_int_equal(json_object_size(at(boot, "discovery")), 1);
    assert_int_equal(json_array_size(w), 0);
    json_decref(w);
    json_decref(boot);

    static const char *const off[] = {"off", "OFF", "false", "disabled", "0"};
    for (size_t i = 0; i < sizeof(off) / sizeof(off[0]); i++) {
        char pod[512];
        snprintf(pod, sizeof(pod), POD("", ",\"annotations\":{\"remora.io/discovery\":\"%s\"}"),
                 off[i]);
        boot = boot_of(pod, &w);
        assert_null(at(boot, "discovery"));
        assert_int_equal(json_array_size(w), 0);
        json_decref(w);
        json_decref(boot);
    }
    boot = boot_of(POD("", ",\"annotations\":{\"remora.io/discovery\":\"on\"}"), &w);
    assert_non_null(at(boot, "discovery|address"));
    assert_int_equal(json_array_size(w), 0);
    json_decref(w);
    json_decref(boot);
    /* a typo: warned about, the default (on) */
    boot = boot_of(POD("", ",\"annotations\":{\"remora.io/discovery\":\"of\"}"), &w);
    assert_non_null(at(boot, "discovery|address"));
    assert_int_equal(json_array_size(w), 1);
    assert_non_null(strstr(json_string_value(json_array_get(w, 0)), "remora.io/discovery"));
    json_decref(w);
    json_decref(boot);

    /* the template's keys */
    struct ij_template *saved = tpl;
    tpl = template_discovery("{\"address\":\"10.0.0.1:15011\",\"server_name\":\"disc.example\","
                             "\"lookup_timeout_ms\":250}");
    boot = boot_of(POD("", ""), NULL);
    assert_string_equal(str_at(boot, "discovery|address"), "10.0.0.1:15011");
    assert_string_equal(str_at(boot, "discovery|server_name"), "disc.example");
    assert_int_equal(json_integer_value(at(boot, "discovery|lookup_timeout_ms")), 250);
    json_decref(boot);
    ij_template_unref(tpl);

    /* "discovery": false: none, and a pod asking for it is told why */
    tpl = template_discovery("false");
    boot = boot_of(POD("", ""), &w);
    assert_null(at(boot, "discovery"));
    assert_int_equal(json_array_size(w), 0);
    json_decref(w);
    json_decref(boot);
    boot = boot_of(POD("", ",\"annotations\":{\"remora.io/discovery\":\"true\"}"), &w);
    assert_null(at(boot, "discovery"));
    assert_int_equal(json_array_size(w), 1);
    json_decref(w);
    json_decref(boot);
    ij_template_unref(tpl);

    /* an older template without the key: the default address */
    tpl = template_discovery(NULL);
    boot = boot_of(POD("", ""), NULL);
    assert_string_equal(str_at(boot, "discovery|address"),
                        "remora-injector.remora-system.svc:15011");
    json_decref(boot);
    ij_template_unref(tpl);
    tpl = saved;
}

static void test_metrics(void **state)
{
    (void)state;
    ij_metrics_review(IJ_OUT_REVIEWED, IJ_DECIDE_INJECT, 40);
    ij_metrics_review(IJ_OUT_REVIEWED, IJ_DECIDE_HOST_NETWORK, 1000000);
    ij_metrics_review(IJ_OUT_TOO_LARGE, IJ_DECIDE_INJECT, 1);
    size_t len;
    char *m = ij_metrics_render(3, &len);
    assert_int_equal(strlen(m), len);
    assert_non_null(
        strstr(m, "remora_injector_reviews_total{result=\"injected\",reason=\"\"} 1\n"));
    assert_non_null(
        strstr(m, "remora_injector_reviews_total{result=\"skipped\",reason=\"host-network\"} 1\n"));
    assert_non_null(
        strstr(m, "remora_injector_reviews_total{result=\"too_large\",reason=\"\"} 1\n"));
    assert_non_null(strstr(m, "remora_injector_review_duration_seconds_bucket{le=\"5e-05\"} 2\n"));
    assert_non_null(strstr(m, "remora_injector_review_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(m, "remora_injector_connections 3\n"));
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decide),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_patch_classic),
        cmocka_unit_test(test_patch_native),
        cmocka_unit_test(test_patch_probes),
        cmocka_unit_test(test_patch_exclusions),
        cmocka_unit_test(test_patch_grpc_probes),
        cmocka_unit_test(test_patch_whole_maps),
        cmocka_unit_test(test_admission),
        cmocka_unit_test(test_inbound_tls),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_template),
        cmocka_unit_test(test_discovery_block),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_inject_path),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
