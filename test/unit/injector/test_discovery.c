/* Unit tests of the discovery service's pure parts (issue 17; the API and
 * HTTPS halves are test/integration/discovery.sh):
 *  - the decoders: a Service (ClusterIP, headless, ExternalName), an
 *    EndpointSlice (conditions' defaults, zone, targetRef), a Pod (meshed,
 *    service account, done or host-network pods skipped), bad objects named;
 *  - watch events: each type, ERROR 410, BOOKMARK, garbage, an object that
 *    does not decode (type, resourceVersion and name still known);
 *  - the line splitter: split input, \r\n, a line over the bound;
 *  - queries: addr= and host= forms, bad ones;
 *  - the store: answers for a Service by ClusterIP and by name, a headless
 *    Service, a pod IP, unknown names; versions that change with the answer
 *    and only then; wake keys of each kind of change; full-list retain. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "injector/discovery.h"

static const char SVC[] =
    "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"web\",\"resourceVersion\":\"7\"},"
    "\"spec\":{\"clusterIP\":\"10.96.0.10\",\"clusterIPs\":[\"10.96.0.10\"],"
    "\"ports\":[{\"name\":\"http-web\",\"port\":80,\"targetPort\":8080,\"protocol\":\"TCP\"},"
    "{\"name\":\"grpc\",\"port\":9090,\"appProtocol\":\"kubernetes.io/h2c\"}]}}";
static const char SLICE[] =
    "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"web-x1\","
    "\"labels\":{\"kubernetes.io/service-name\":\"web\"}},\"addressType\":\"IPv4\","
    "\"ports\":[{\"name\":\"http-web\",\"port\":8080,\"protocol\":\"TCP\"},"
    "{\"name\":\"grpc\",\"port\":9091}],"
    "\"endpoints\":[{\"addresses\":[\"10.1.0.1\"],\"conditions\":{\"ready\":true},\"zone\":\"z1\","
    "\"nodeName\":\"n1\",\"targetRef\":{\"kind\":\"Pod\",\"namespace\":\"shop\",\"name\":\"web-1\"}"
    "},"
    "{\"addresses\":[\"10.1.0.2\"],\"conditions\":{\"ready\":false,\"serving\":true,"
    "\"terminating\":true},\"zone\":\"z2\",\"targetRef\":{\"kind\":\"Pod\",\"name\":\"web-2\"}},"
    "{\"addresses\":[\"10.1.0.3\"]}]}";
static const char POD1[] =
    "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"web-1\","
    "\"annotations\":{\"remora.io/status\":\"{}\"}},\"spec\":{\"serviceAccountName\":\"web\"},"
    "\"status\":{\"phase\":\"Running\",\"podIP\":\"10.1.0.1\",\"podIPs\":[{\"ip\":\"10.1.0.1\"}],"
    "\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}";
static const char POD2[] = "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"web-2\"},\"spec\":{},"
                           "\"status\":{\"phase\":\"Running\",\"podIP\":\"10.1.0.2\"}}";

static int decode(enum ij_disc_kind k, const char *text, struct ij_disc_obj *o, char **err)
{
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    char *key = NULL;
    int rc = ij_disc_decode_object(k, j, o, &key, err);
    free(key);
    json_decref(j);
    return rc;
}

static void decode_objects(void **state)
{
    (void)state;
    struct ij_disc_obj o;
    char *err = NULL;
    assert_int_equal(decode(IJ_DISC_SERVICE, SVC, &o, &err), 0);
    assert_string_equal(o.u.svc->key, "shop/web");
    assert_int_equal(o.u.svc->ns_len, 4);
    assert_int_equal(o.u.svc->nips, 1);
    assert_false(o.u.svc->headless);
    assert_int_equal(o.u.svc->nports, 2);
    assert_string_equal(o.u.svc->ports[0].name, "http-web");
    assert_int_equal(o.u.svc->ports[1].port, 9090);
    assert_string_equal(o.u.svc->ports[1].app, "kubernetes.io/h2c");
    assert_true(ij_disc_obj_bytes(&o) > 0);
    ij_disc_obj_free(&o);

    assert_int_equal(decode(IJ_DISC_SLICE, SLICE, &o, &err), 0);
    struct ij_disc_slice *s = o.u.slice;
    assert_string_equal(s->service, "shop/web");
    assert_int_equal(s->neps, 3);
    assert_true(s->eps[0].ready && s->eps[0].serving && !s->eps[0].terminating);
    assert_string_equal(s->eps[0].zone, "z1");
    assert_string_equal(s->eps[0].node, "n1");
    assert_string_equal(s->eps[0].pod, "shop/web-1");
    assert_true(!s->eps[1].ready && s->eps[1].serving && s->eps[1].terminating);
    assert_string_equal(s->eps[1].pod, "shop/web-2"); /* targetRef without namespace */
    /* no conditions: ready unknown is ready, serving follows it */
    assert_true(s->eps[2].ready && s->eps[2].serving && !s->eps[2].terminating);
    assert_string_equal(s->eps[2].pod, "");
    ij_disc_obj_free(&o);

    assert_int_equal(decode(IJ_DISC_POD, POD1, &o, &err), 0);
    assert_true(o.u.pod->meshed && o.u.pod->ready && !o.u.pod->terminating);
    assert_string_equal(o.u.pod->sa, "web");
    assert_int_equal(o.u.pod->nips, 1);
    ij_disc_obj_free(&o);
    assert_int_equal(decode(IJ_DISC_POD, POD2, &o, &err), 0);
    assert_string_equal(o.u.pod->sa, "default");
    assert_false(o.u.pod->meshed || o.u.pod->ready);
    ij_disc_obj_free(&o);

    /* headless, ExternalName */
    assert_int_equal(decode(IJ_DISC_SERVICE,
                            "{\"metadata\":{\"namespace\":\"a\",\"name\":\"h\"},"
                            "\"spec\":{\"clusterIP\":\"None\"}}",
                            &o, &err),
                     0);
    assert_true(o.u.svc->headless);
    assert_int_equal(o.u.svc->nips, 0);
    ij_disc_obj_free(&o);
    assert_int_equal(decode(IJ_DISC_SERVICE,
                            "{\"metadata\":{\"namespace\":\"a\",\"name\":\"x\"},"
                            "\"spec\":{\"type\":\"ExternalName\",\"externalName\":\"x.com\"}}",
                            &o, &err),
                     0);
    assert_int_equal(o.u.svc->nips, 0);
    ij_disc_obj_free(&o);

    /* pods we keep nothing of */
    assert_int_equal(decode(IJ_DISC_POD,
                            "{\"metadata\":{\"namespace\":\"a\",\"name\":\"p\"},"
                            "\"status\":{\"phase\":\"Succeeded\",\"podIP\":\"10.0.0.9\"}}",
                            &o, &err),
                     1);
    assert_int_equal(decode(IJ_DISC_POD,
                            "{\"metadata\":{\"namespace\":\"a\",\"name\":\"p\"},"
                            "\"spec\":{\"hostNetwork\":true},\"status\":{\"podIP\":\"10.0.0.9\"}}",
                            &o, &err),
                     1);

    /* bad objects: refused, the member named */
    static const struct {
        enum ij_disc_kind k;
        const char *text, *want;
    } bad[] = {
        {IJ_DISC_SERVICE, "[]", "not a JSON object"},
        {IJ_DISC_SERVICE, "{\"metadata\":{\"name\":\"x\"}}", "metadata.namespace"},
        {IJ_DISC_SERVICE, "{\"metadata\":{\"namespace\":\"a\",\"name\":\"a/b\"}}", "metadata.name"},
        {IJ_DISC_SERVICE,
         "{\"metadata\":{\"namespace\":\"a\",\"name\":\"x\"},\"spec\":{\"clusterIP\":\"10.0.0."
         "300\"}}",
         "is not an IP address"},
        {IJ_DISC_SERVICE,
         "{\"metadata\":{\"namespace\":\"a\",\"name\":\"x\"},\"spec\":{\"ports\":[{\"port\":0}]}}",
         "spec.ports[0].port"},
        {IJ_DISC_SLICE,
         "{\"metadata\":{\"namespace\":\"a\",\"name\":\"x\"},\"endpoints\":[{\"addresses\":["
         "\"nope\"]}]}",
         "endpoints[0].addresses[0]"},
        {IJ_DISC_SLICE,
         "{\"metadata\":{\"namespace\":\"a\",\"name\":\"x\"},\"endpoints\":[{\"addresses\":[\"10.0."
         "0.1\"],"
         "\"conditions\":{\"ready\":\"yes\"}}]}",
         "conditions"},
        {IJ_DISC_POD,
         "{\"metadata\":{\"namespace\":\"a\",\"name\":\"p\"},\"status\":{\"podIPs\":[{\"ip\":\"x\"}"
         "]}}",
         "status.podIPs[0]"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(decode(bad[i].k, bad[i].text, &o, &err), CM_ERR_INVAL);
        if (strstr(err, bad[i].want) == NULL)
            fail_msg("case %zu: \"%s\" does not name %s", i, err, bad[i].want);
        assert_null(o.u.svc);
    }
    free(err);
}

static void decode_events(void **state)
{
    (void)state;
    struct ij_disc_event ev;
    char *err = NULL;
    char line[4096];
    snprintf(line, sizeof(line), "{\"type\":\"ADDED\",\"object\":%s}", SVC);
    assert_int_equal(ij_disc_decode_event(IJ_DISC_SERVICE, line, strlen(line), &ev, &err), 0);
    assert_int_equal(ev.type, IJ_EV_ADDED);
    assert_string_equal(ev.rv, "7");
    assert_string_equal(ev.key, "shop/web");
    assert_non_null(ev.obj.u.svc);
    ij_disc_event_deinit(&ev);

    static const char gone[] = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410,"
                               "\"message\":\"too old resource version: 1 (5)\"}}";
    assert_int_equal(ij_disc_decode_event(IJ_DISC_POD, gone, strlen(gone), &ev, &err), 0);
    assert_int_equal(ev.type, IJ_EV_ERROR);
    assert_int_equal(ev.code, 410);
    assert_string_equal(ev.message, "too old resource version: 1 (5)");
    ij_disc_event_deinit(&ev);

    static const char bm[] = "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"Pod\","
                             "\"metadata\":{\"resourceVersion\":\"12345\"}}}";
    assert_int_equal(ij_disc_decode_event(IJ_DISC_POD, bm, strlen(bm), &ev, &err), 0);
    assert_int_equal(ev.type, IJ_EV_BOOKMARK);
    assert_string_equal(ev.rv, "12345");
    ij_disc_event_deinit(&ev);

    /* an object that does not decode: still typed, versioned and named */
    static const char badobj[] =
        "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"namespace\":\"a\",\"name\":\"p\","
        "\"resourceVersion\":\"9\"},\"status\":{\"podIP\":\"300.1.1.1\"}}}";
    assert_int_equal(ij_disc_decode_event(IJ_DISC_POD, badobj, strlen(badobj), &ev, &err),
                     CM_ERR_INVAL);
    assert_int_equal(ev.type, IJ_EV_MODIFIED);
    assert_string_equal(ev.rv, "9");
    assert_string_equal(ev.key, "a/p");
    assert_non_null(strstr(err, "status.podIPs[0]"));
    ij_disc_event_deinit(&ev);

    /* not watch events: the stream is broken */
    static const char *const garbage[] = {
        "not json",
        "{\"type\":\"ADDED\"}",
        "{\"type\":\"EXPLODED\",\"object\":{}}",
        "{\"type\":\"ADDED\",\"object\":[]}",
        "[1,2]",
        "{\"type\":\"ADDED\",\"object\":{}",
        "{\"type\":\"ADDED\",\"type\":\"DELETED\",\"object\":{}}"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        assert_int_equal(
            ij_disc_decode_event(IJ_DISC_POD, garbage[i], strlen(garbage[i]), &ev, &err),
            CM_ERR_PROTO);
        ij_disc_event_deinit(&ev);
    }
    free(err);
}

struct collected {
    char got[8][64];
    int n;
};

static int collect(void *arg, const char *line, size_t len)
{
    struct collected *c = arg;
    assert_true(c->n < 8 && len < 64);
    memcpy(c->got[c->n], line, len);
    c->got[c->n][len] = '\0';
    c->n++;
    return 0;
}

static void lines(void **state)
{
    (void)state;
    struct ij_disc_lines l = {0};
    struct collected c = {0};
    static const char text[] = "{\"a\":1}\r\n\n{\"b\"";
    assert_int_equal(ij_disc_lines_feed(&l, text, strlen(text), collect, &c), 0);
    assert_int_equal(ij_disc_lines_feed(&l, ":2}\n", 4, collect, &c), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.got[0], "{\"a\":1}");
    assert_string_equal(c.got[1], "{\"b\":2}");
    ij_disc_lines_reset(&l);
    /* a line over the bound, in pieces: refused, never buffered past it */
    char *big = malloc(1 << 20);
    memset(big, 'x', 1 << 20);
    int rc = 0;
    for (int i = 0; i < 5 && rc == 0; i++)
        rc = ij_disc_lines_feed(&l, big, 1 << 20, collect, &c);
    assert_int_equal(rc, CM_ERR_LIMIT);
    assert_true(l.overflow);
    assert_true(l.cap <= IJ_DISC_MAX_LINE + 1);
    ij_disc_lines_reset(&l);
    free(big);
}

static void queries(void **state)
{
    (void)state;
    struct ij_disc_query q;
    char *err = NULL;
    assert_int_equal(ij_disc_query_parse("10.96.0.10:80", NULL, "cluster.local", &q, &err), 0);
    assert_false(q.by_host);
    assert_int_equal(q.port, 80);
    assert_string_equal(q.wake, "ip:10.96.0.10");
    assert_int_equal(ij_disc_query_parse("[fd00::1]:443", NULL, "cluster.local", &q, &err), 0);
    assert_string_equal(q.wake, "ip:fd00::1");
    static const char *const hosts[] = {"web.shop:80", "web.shop.svc:80",
                                        "web.shop.svc.cluster.local:80",
                                        "Web.Shop.svc.cluster.local.:80"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(ij_disc_query_parse(NULL, hosts[i], "cluster.local", &q, &err), 0);
        assert_true(q.by_host);
        assert_string_equal(q.key, "shop/web");
        assert_string_equal(q.wake, "s:shop/web");
    }
    /* another cluster domain is not ours: svc.ns.svc.other is not svc.ns */
    assert_int_equal(ij_disc_query_parse(NULL, "web.shop.svc.other:80", "cluster.local", &q, &err),
                     CM_ERR_INVAL);
    static const char *const bad_addr[] = {"10.96.0.10", "10.96.0.10:0",  "10.96.0.10:65536",
                                           "fd00::1:80", "[10.0.0.1]:80", "x:80",
                                           ":80",        "10.0.0.1:8a"};
    for (size_t i = 0; i < sizeof(bad_addr) / sizeof(bad_addr[0]); i++)
        assert_int_equal(ij_disc_query_parse(bad_addr[i], NULL, "cluster.local", &q, &err),
                         CM_ERR_INVAL);
    static const char *const bad_host[] = {
        "web:80", "web.shop", "-web.shop:80", "web..shop:80", "a.b.c:80", "we_b.shop:80", ""};
    for (size_t i = 0; i < sizeof(bad_host) / sizeof(bad_host[0]); i++)
        assert_int_equal(ij_disc_query_parse(NULL, bad_host[i], "cluster.local", &q, &err),
                         CM_ERR_INVAL);
    assert_int_equal(ij_disc_query_parse(NULL, NULL, "cluster.local", &q, &err), CM_ERR_INVAL);
    assert_int_equal(ij_disc_query_parse("10.0.0.1:80", "a.b:80", "cluster.local", &q, &err),
                     CM_ERR_INVAL);
    free(err);
}

static void put(struct ij_disc_store *s, enum ij_disc_kind k, const char *text,
                struct ij_disc_keys *wake)
{
    struct ij_disc_obj o;
    char *err = NULL;
    assert_int_equal(decode(k, text, &o, &err), 0);
    ij_disc_store_put(s, &o, wake);
    assert_null(o.u.svc);
}

static json_t *ask(struct ij_disc_store *s, const char *addr, const char *host, unsigned *status,
                   char *version)
{
    struct ij_disc_query q;
    char *err = NULL, *body;
    size_t len;
    assert_int_equal(ij_disc_query_parse(addr, host, "cluster.local", &q, &err), 0);
    ij_disc_store_answer(s, &q, status, &body, &len, version);
    assert_int_equal(strlen(body), len);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    free(body);
    return j;
}

static bool has_key(const struct ij_disc_keys *k, const char *key)
{
    for (size_t i = 0; i < k->n; i++)
        if (strcmp(k->v[i], key) == 0)
            return true;
    return false;
}

static void store_answers(void **state)
{
    (void)state;
    struct ij_disc_store *s = ij_disc_store_new("example.org", "cluster.local");
    struct ij_disc_keys wake = {0};
    put(s, IJ_DISC_SERVICE, SVC, &wake);
    assert_true(has_key(&wake, "s:shop/web") && has_key(&wake, "ip:10.96.0.10"));
    ij_disc_keys_deinit(&wake);
    put(s, IJ_DISC_POD, POD1, NULL);
    put(s, IJ_DISC_POD, POD2, NULL);
    put(s, IJ_DISC_SLICE, SLICE, &wake);
    assert_true(has_key(&wake, "s:shop/web") && has_key(&wake, "ip:10.96.0.10") &&
                has_key(&wake, "ip:10.1.0.1") && has_key(&wake, "ip:10.1.0.3"));
    ij_disc_keys_deinit(&wake);

    unsigned st;
    char v1[17], v2[17];
    json_t *a = ask(s, "10.96.0.10:80", NULL, &st, v1);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(a, "kind")), "service");
    assert_string_equal(json_string_value(json_object_get(a, "service")), "shop/web");
    assert_int_equal(json_integer_value(json_object_get(a, "port")), 80);
    assert_string_equal(json_string_value(json_object_get(a, "protocol")), "http");
    assert_string_equal(json_string_value(json_object_get(a, "version")), v1);
    json_t *eps = json_object_get(a, "endpoints");
    assert_int_equal(json_array_size(eps), 3);
    json_t *e0 = json_array_get(eps, 0);
    assert_string_equal(json_string_value(json_object_get(e0, "address")), "10.1.0.1:8080");
    assert_string_equal(json_string_value(json_object_get(e0, "identity")),
                        "spiffe://example.org/ns/shop/sa/web");
    assert_true(json_is_true(json_object_get(e0, "meshed")));
    assert_string_equal(json_string_value(json_object_get(e0, "zone")), "z1");
    assert_string_equal(json_string_value(json_object_get(e0, "pod")), "shop/web-1");
    json_t *e1 = json_array_get(eps, 1); /* not meshed: no identity */
    assert_true(json_is_null(json_object_get(e1, "identity")));
    assert_true(json_is_false(json_object_get(e1, "ready")));
    assert_true(json_is_true(json_object_get(e1, "terminating")));
    json_t *e2 = json_array_get(eps, 2); /* no pod known */
    assert_true(json_is_null(json_object_get(e2, "pod")));
    json_decref(a);

    /* by name, the same answer; the grpc port: appProtocol h2c -> http2, target 9091 */
    a = ask(s, NULL, "web.shop.svc.cluster.local:80", &st, v2);
    assert_string_equal(v1, v2);
    json_decref(a);
    a = ask(s, NULL, "web.shop:9090", &st, v2);
    assert_string_equal(json_string_value(json_object_get(a, "protocol")), "http2");
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(a, "endpoints"), 0), "address")),
                        "10.1.0.1:9091");
    json_decref(a);

    /* a pod IP: kind pod, its one endpoint, what the slice says of it */
    a = ask(s, "10.1.0.1:8080", NULL, &st, v2);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(a, "kind")), "pod");
    assert_string_equal(json_string_value(json_object_get(a, "service")), "shop/web");
    assert_int_equal(json_array_size(json_object_get(a, "endpoints")), 1);
    json_decref(a);

    /* unknown: 404 with an error */
    a = ask(s, "10.9.9.9:80", NULL, &st, v2);
    assert_int_equal(st, 404);
    assert_non_null(json_string_value(json_object_get(a, "error")));
    assert_string_equal(v2, "");
    json_decref(a);
    a = ask(s, NULL, "web.shop:81", &st, v2);
    assert_int_equal(st, 404);
    json_decref(a);
    a = ask(s, NULL, "nope.shop:80", &st, v2);
    assert_int_equal(st, 404);
    json_decref(a);

    /* a pod becoming meshed: its Service's answer changes, its wake keys say so */
    put(s, IJ_DISC_POD,
        "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"web-2\","
        "\"annotations\":{\"remora.io/status\":\"{}\"}},\"spec\":{},"
        "\"status\":{\"phase\":\"Running\",\"podIP\":\"10.1.0.2\"}}",
        &wake);
    assert_true(has_key(&wake, "ip:10.1.0.2") && has_key(&wake, "s:shop/web") &&
                has_key(&wake, "ip:10.96.0.10"));
    ij_disc_keys_deinit(&wake);
    a = ask(s, "10.96.0.10:80", NULL, &st, v2);
    assert_string_not_equal(v1, v2);
    json_decref(a);
    /* the same object again: touched, not changed: the same version */
    put(s, IJ_DISC_POD,
        "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"web-2\","
        "\"annotations\":{\"remora.io/status\":\"{}\"}},\"spec\":{},"
        "\"status\":{\"phase\":\"Running\",\"podIP\":\"10.1.0.2\"}}",
        NULL);
    a = ask(s, "10.96.0.10:80", NULL, &st, v1);
    assert_string_equal(v1, v2);
    json_decref(a);

    /* a headless Service: no ClusterIP; by name, any port, the pods' addresses */
    put(s, IJ_DISC_SERVICE,
        "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"db\"},\"spec\":{\"clusterIP\":\"None\"}}",
        NULL);
    put(s, IJ_DISC_SLICE,
        "{\"metadata\":{\"namespace\":\"shop\",\"name\":\"db-1\","
        "\"labels\":{\"kubernetes.io/service-name\":\"db\"}},\"addressType\":\"IPv4\","
        "\"endpoints\":[{\"addresses\":[\"10.1.0.7\"]}]}",
        NULL);
    a = ask(s, NULL, "db.shop:5432", &st, v1);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(a, "endpoints"), 0), "address")),
                        "10.1.0.7:5432");
    json_decref(a);

    /* deletions and a full list's retain */
    size_t bytes = 0;
    assert_int_equal(ij_disc_store_count(s, IJ_DISC_SLICE, &bytes), 2);
    assert_true(bytes > 0);
    char *keep[] = {"shop/web-x1"};
    ij_disc_store_retain(s, IJ_DISC_SLICE, keep, 1, &wake);
    assert_true(has_key(&wake, "s:shop/db") && has_key(&wake, "ip:10.1.0.7"));
    ij_disc_keys_deinit(&wake);
    assert_int_equal(ij_disc_store_count(s, IJ_DISC_SLICE, NULL), 1);
    ij_disc_store_del(s, IJ_DISC_SERVICE, "shop/web", &wake);
    assert_true(has_key(&wake, "ip:10.96.0.10"));
    ij_disc_keys_deinit(&wake);
    a = ask(s, "10.96.0.10:80", NULL, &st, v1);
    assert_int_equal(st, 404);
    json_decref(a);
    ij_disc_store_del(s, IJ_DISC_POD, "shop/web-1", NULL);
    ij_disc_store_del(s, IJ_DISC_POD, "shop/nope", NULL);
    a = ask(s, "10.1.0.1:8080", NULL, &st, v1);
    assert_int_equal(st, 404);
    json_decref(a);
    ij_disc_store_free(s);
}

/* The protocol as Istio reads it: appProtocol first, else the name's prefix. */
static void protocols(void **state)
{
    (void)state;
    struct ij_disc_store *s = ij_disc_store_new("cluster.local", "cluster.local");
    put(s, IJ_DISC_SERVICE,
        "{\"metadata\":{\"namespace\":\"a\",\"name\":\"p\"},\"spec\":{\"clusterIP\":\"10.96.1.1\","
        "\"ports\":[{\"name\":\"grpc-web\",\"port\":1},{\"name\":\"tcp-db\",\"port\":2},"
        "{\"name\":\"metrics\",\"port\":3},{\"name\":\"http\",\"port\":4,\"appProtocol\":\"HTTP2\"}"
        ","
        "{\"name\":\"x\",\"port\":5,\"appProtocol\":\"kubernetes.io/ws\"},{\"port\":6},"
        "{\"name\":\"dns\",\"port\":7,\"protocol\":\"UDP\"},"
        "{\"name\":\"https\",\"port\":8,\"appProtocol\":\"example.com/custom\"}]}}",
        NULL);
    static const struct {
        const char *addr, *want;
        unsigned status;
    } cases[] = {
        {"10.96.1.1:1", "grpc", 200},  {"10.96.1.1:2", "tcp", 200},  {"10.96.1.1:3", "", 200},
        {"10.96.1.1:4", "http2", 200}, {"10.96.1.1:5", "http", 200}, {"10.96.1.1:6", "", 200},
        {"10.96.1.1:7", NULL, 404},    {"10.96.1.1:8", "", 200},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned st;
        char v[17];
        json_t *a = ask(s, cases[i].addr, NULL, &st, v);
        assert_int_equal(st, cases[i].status);
        if (cases[i].want != NULL)
            assert_string_equal(json_string_value(json_object_get(a, "protocol")), cases[i].want);
        json_decref(a);
    }
    ij_disc_store_free(s);
}

/* Memory per object as docs/discovery.md states it: a pod, a Service with
 * one port, an EndpointSlice of 10 endpoints, with their index entries. */
static void memory_per_object(void **state)
{
    (void)state;
    struct ij_disc_obj o;
    char *err = NULL;
    assert_int_equal(decode(IJ_DISC_POD, POD1, &o, &err), 0);
    size_t pod = ij_disc_obj_bytes(&o);
    ij_disc_obj_free(&o);
    assert_int_equal(decode(IJ_DISC_SERVICE, SVC, &o, &err), 0);
    size_t svc = ij_disc_obj_bytes(&o);
    ij_disc_obj_free(&o);
    char slice[4096];
    int n = snprintf(slice, sizeof(slice),
                     "{\"metadata\":{\"namespace\":\"ns-7\",\"name\":\"svc-1234-abcde\","
                     "\"labels\":{\"kubernetes.io/service-name\":\"svc-1234\"}},"
                     "\"addressType\":\"IPv4\",\"ports\":[{\"name\":\"http\",\"port\":8080}],"
                     "\"endpoints\":[");
    for (int i = 0; i < 10; i++)
        n += snprintf(slice + n, sizeof(slice) - (size_t)n,
                      "%s{\"addresses\":[\"10.64.%d.%d\"],\"zone\":\"zone-a\","
                      "\"nodeName\":\"node-17\",\"targetRef\":{\"kind\":\"Pod\","
                      "\"namespace\":\"ns-7\",\"name\":\"svc-1234-%d\"}}",
                      i ? "," : "", i, i + 1, i);
    snprintf(slice + n, sizeof(slice) - (size_t)n, "]}");
    assert_int_equal(decode(IJ_DISC_SLICE, slice, &o, &err), 0);
    size_t sl = ij_disc_obj_bytes(&o);
    ij_disc_obj_free(&o);
    print_message("record bytes: pod %zu, service (2 ports) %zu, slice (10 endpoints) %zu\n", pod,
                  svc, sl);
    assert_true(pod <= 128);
    assert_true(svc <= 256);
    assert_true(sl <= 1536);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(decode_objects),
        cmocka_unit_test(decode_events),
        cmocka_unit_test(lines),
        cmocka_unit_test(queries),
        cmocka_unit_test(store_answers),
        cmocka_unit_test(protocols),
        cmocka_unit_test(memory_per_object),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
