/* Unit tests of injector/kube.c and injector/publish.c, the CA-root
 * publisher's pure parts (the network half is test/integration/publish.sh):
 *  - API URLs, the in-cluster default from KUBERNETES_SERVICE_HOST/PORT,
 *    query escaping, Kubernetes name rules;
 *  - HTTP responses: Content-Length, chunked, until EOF, 1xx heads, trailing
 *    bytes, truncation, garbage, the head and body bounds, every split point
 *    of a response fed in two pieces;
 *  - Status descriptions, NamespaceList and ConfigMap decoding;
 *  - flags (defaults, each refusal) and the root file's checks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "injector/kube_int.h"
#include "injector/publish.c"

/* ---- URLs and names ---------------------------------------------------------------- */

static void url_parse(void **state)
{
    (void)state;
    static const struct {
        const char *url, *host, *port, *base;
        size_t iplen;
    } ok[] = {
        {"https://kubernetes.default.svc", "kubernetes.default.svc", "443", "", 0},
        {"https://10.96.0.1:443", "10.96.0.1", "443", "", 4},
        {"https://127.0.0.1:6443/", "127.0.0.1", "6443", "", 4},
        {"https://[fd00::1]:6443", "fd00::1", "6443", "", 16},
        {"https://api.example:8443/k8s/", "api.example", "8443", "/k8s", 0},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct ij_kube_url u;
        char *err = NULL;
        if (ij_kube_url_parse(ok[i].url, &u, &err) != 0)
            fail_msg("%s refused: %s", ok[i].url, err);
        if (strcmp(u.host, ok[i].host) != 0 || strcmp(u.port, ok[i].port) != 0 ||
            strcmp(u.base, ok[i].base) != 0 || u.iplen != ok[i].iplen)
            fail_msg("%s: host %s port %s base '%s' iplen %zu", ok[i].url, u.host, u.port, u.base,
                     u.iplen);
    }
    static const char *const bad[] = {
        "http://127.0.0.1:8080", "https://",          "https://:443", "https://host:0",
        "https://host:65536",    "https://host:12x",  "https://[::1", "https://[nothex]:443",
        "https://host/a?b",      "https://user@host", "ftp://host",   "https://host:443x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct ij_kube_url u;
        char *err = NULL;
        if (ij_kube_url_parse(bad[i], &u, &err) == 0)
            fail_msg("%s accepted", bad[i]);
        if (err == NULL || strstr(err, "--api") == NULL)
            fail_msg("%s: message '%s' does not name --api", bad[i], err ? err : "(none)");
        free(err);
    }
}

static void default_api(void **state)
{
    (void)state;
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    char *s = ij_kube_default_api();
    assert_string_equal(s, "https://kubernetes.default.svc");
    free(s);
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    s = ij_kube_default_api();
    assert_string_equal(s, "https://kubernetes.default.svc"); /* both or neither */
    free(s);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    s = ij_kube_default_api();
    assert_string_equal(s, "https://10.96.0.1:443");
    free(s);
    setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1", 1);
    s = ij_kube_default_api();
    assert_string_equal(s, "https://[fd00:10:96::1]:443");
    free(s);
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
}

static void query_escape(void **state)
{
    (void)state;
    char *s = ij_kube_query_escape("remora-injection=enabled,!legacy,tier in (a b)~_.");
    assert_string_equal(s, "remora-injection%3Denabled%2C%21legacy%2Ctier%20in%20%28a%20b%29~_.");
    free(s);
}

static void names(void **state)
{
    (void)state;
    assert_true(ij_publish_valid_label("shop"));
    assert_true(ij_publish_valid_label("a-1"));
    assert_false(ij_publish_valid_label(""));
    assert_false(ij_publish_valid_label("-a"));
    assert_false(ij_publish_valid_label("a-"));
    assert_false(ij_publish_valid_label("Shop"));
    assert_false(ij_publish_valid_label("a.b"));
    assert_false(ij_publish_valid_label("../x"));
    assert_false(
        ij_publish_valid_label("a123456789012345678901234567890123456789012345678901234567890123"));
    assert_true(ij_publish_valid_subdomain("remora-ca-root"));
    assert_true(ij_publish_valid_subdomain("a.b-c.d"));
    assert_false(ij_publish_valid_subdomain("a..b"));
    assert_false(ij_publish_valid_subdomain("a/b"));
    assert_false(ij_publish_valid_subdomain("Bad_Name"));
    assert_true(ij_publish_valid_key("root.pem"));
    assert_true(ij_publish_valid_key("CA_bundle-1.crt"));
    assert_false(ij_publish_valid_key("."));
    assert_false(ij_publish_valid_key(".."));
    assert_false(ij_publish_valid_key("a/b"));
    assert_false(ij_publish_valid_key(""));
}

/* ---- responses ------------------------------------------------------------------------- */

static int parse(const char *raw, size_t max, struct ij_kube_resp *r, char **err)
{
    return ij_kube_parse_response(raw, strlen(raw), max, r, err);
}

static void response_ok(void **state)
{
    (void)state;
    static const struct {
        const char *raw;
        int status;
        const char *reason, *body;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200, "OK", "{}"},
        {"HTTP/1.1 201 Created\r\nTransfer-Encoding: "
         "chunked\r\n\r\n2\r\n{\"\r\n3\r\na\":\r\n2\r\n1}"
         "\r\n0\r\n\r\n",
         201, "Created", "{\"a\":1}"},
        {"HTTP/1.1 200 OK\r\n\r\nuntil eof", 200, "OK", "until eof"},
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
         "HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx",
         404, "Not Found", "x"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nyHTTP/1.1 500 Later\r\n\r\n", 200, "OK", "y"},
        {"HTTP/1.0 503 \x01weird\r\nContent-Length: 0\r\n\r\n", 503, "?weird", ""},
        {"HTTP/1.1 204 No Content\r\n\r\n", 204, "No Content", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ij_kube_resp r;
        char *err = NULL;
        if (parse(cases[i].raw, 1024, &r, &err) != 0)
            fail_msg("case %zu refused: %s", i, err);
        if (r.status != cases[i].status || strcmp(r.reason, cases[i].reason) != 0 ||
            strcmp(r.body, cases[i].body) != 0 || r.body_len != strlen(cases[i].body))
            fail_msg("case %zu: %d '%s' '%s'", i, r.status, r.reason, r.body);
        ij_kube_resp_deinit(&r);
    }
}

static void response_refused(void **state)
{
    (void)state;
    static const struct {
        const char *raw;
        int rc;
        const char *msg;
    } cases[] = {
        {"", CM_ERR_PROTO, "connection closed before the response began"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", CM_ERR_PROTO,
         "before the response ended"},
        {"HTTP/1.1 200 OK\r\nContent-Le", CM_ERR_PROTO, "before the response ended"},
        {"HTTP/1.1 100 Continue\r\n\r\n", CM_ERR_PROTO, "before the response ended"},
        {"SSH-2.0-OpenSSH\r\n", CM_ERR_PROTO, "not a valid HTTP/1.x response"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n", CM_ERR_LIMIT,
         "response body exceeds 1024 bytes"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
         CM_ERR_PROTO, "unexpected protocol upgrade"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ij_kube_resp r;
        char *err = NULL;
        int rc = parse(cases[i].raw, 1024, &r, &err);
        if (rc != cases[i].rc || err == NULL || strstr(err, cases[i].msg) == NULL)
            fail_msg("case %zu: rc %d, message '%s', want %d '%s'", i, rc, err ? err : "(none)",
                     cases[i].rc, cases[i].msg);
        if (r.body != NULL || r.status != 0)
            fail_msg("case %zu: a refusal left a response", i);
        free(err);
    }
    /* a chunked body past the bound, and a head past IJ_KUBE_MAX_HEAD */
    size_t n = 2048;
    char *big = malloc(n + 128);
    int off = snprintf(big, 128, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%zx\r\n", n);
    memset(big + off, 'x', n);
    memcpy(big + off + n, "\r\n0\r\n\r\n", 8);
    struct ij_kube_resp r;
    char *err = NULL;
    assert_int_equal(parse(big, 1024, &r, &err), CM_ERR_LIMIT);
    assert_non_null(strstr(err, "response body exceeds 1024 bytes"));
    free(err);
    free(big);
    n = IJ_KUBE_MAX_HEAD + 100;
    big = malloc(n + 64);
    off = snprintf(big, 64, "HTTP/1.1 200 OK\r\nX-Big: ");
    memset(big + off, 'a', n);
    memcpy(big + off + n, "\r\n\r\n", 5);
    err = NULL;
    assert_int_equal(parse(big, 1024, &r, &err), CM_ERR_LIMIT);
    assert_non_null(strstr(err, "response head exceeds 65536 bytes"));
    free(err);
    free(big);
}

/* Every split of a response into two reads gives the one-shot result. */
static void response_split(void **state)
{
    (void)state;
    static const char raw[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Fine\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n";
    size_t n = sizeof(raw) - 1;
    for (size_t cut = 0; cut <= n; cut++) {
        struct ij_kube_resp r;
        struct ij_kube_rparser p;
        char *err = NULL;
        ij_kube_rparser_init(&p, &r, 1024);
        int rc = ij_kube_rparser_feed(&p, raw, cut, &err);
        if (rc == 0)
            rc = ij_kube_rparser_feed(&p, raw + cut, n - cut, &err);
        if (rc == 0)
            rc = ij_kube_rparser_eof(&p, &err);
        if (rc != 0 || r.status != 200 || strcmp(r.body, "hello!") != 0 ||
            strcmp(r.reason, "Fine") != 0)
            fail_msg("cut %zu: rc %d '%s' status %d body '%s'", cut, rc, err ? err : "", r.status,
                     r.body ? r.body : "");
        ij_kube_resp_deinit(&r);
    }
}

static struct ij_kube_resp mkresp(int status, const char *reason, const char *body)
{
    struct ij_kube_resp r = {.status = status};
    snprintf(r.reason, sizeof(r.reason), "%s", reason);
    r.body = cm_xstrdup(body);
    r.body_len = strlen(body);
    return r;
}

static void describe(void **state)
{
    (void)state;
    struct ij_kube_resp r =
        mkresp(404, "Not Found",
               "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":"
               "\"namespaces \\\"gone\\\" not found\\nforged line\",\"reason\":\"NotFound\","
               "\"details\":{\"name\":\"gone\",\"kind\":\"namespaces\"},\"code\":404}");
    char *d = ij_kube_resp_describe(&r);
    assert_string_equal(d, "404 Not Found: namespaces \"gone\" not found?forged line");
    free(d);
    char *k = ij_kube_status_details_kind(&r);
    assert_string_equal(k, "namespaces");
    free(k);
    ij_kube_resp_deinit(&r);

    r = mkresp(500, "Internal Server Error", "<html>oops</html>");
    d = ij_kube_resp_describe(&r);
    assert_string_equal(d, "500 Internal Server Error");
    free(d);
    assert_null(ij_kube_status_details_kind(&r));
    ij_kube_resp_deinit(&r);

    r = mkresp(403, "", "{\"kind\":\"ConfigMap\",\"message\":\"not a Status\"}");
    d = ij_kube_resp_describe(&r);
    assert_string_equal(d, "403");
    free(d);
    ij_kube_resp_deinit(&r);

    /* a long message is cut */
    char *body = cm_xasprintf("{\"kind\":\"Status\",\"message\":\"%0*d\"}", 2000, 7);
    r = mkresp(400, "Bad Request", body);
    free(body);
    d = ij_kube_resp_describe(&r);
    assert_int_equal(strlen(d), strlen("400 Bad Request: ") + IJ_KUBE_STATUS_MESSAGE_MAX + 3);
    free(d);
    ij_kube_resp_deinit(&r);
}

static void ns_list(void **state)
{
    (void)state;
    static const char ok[] =
        "{\"kind\":\"NamespaceList\",\"apiVersion\":\"v1\",\"metadata\":{\"continue\":\"abc\"},"
        "\"items\":[{\"metadata\":{\"name\":\"shop\"},\"status\":{\"phase\":\"Active\"}},"
        "{\"metadata\":{\"name\":\"old\"},\"status\":{\"phase\":\"Terminating\"}},"
        "{\"metadata\":{\"name\":\"going\",\"deletionTimestamp\":\"2026-01-01T00:00:00Z\"}}]}";
    struct ij_kube_ns_list l;
    char *err = NULL;
    assert_int_equal(ij_kube_ns_list_parse(ok, sizeof(ok) - 1, &l, &err), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.items[0].name, "shop");
    assert_false(l.items[0].terminating);
    assert_true(l.items[1].terminating);
    assert_true(l.items[2].terminating);
    assert_string_equal(l.cont, "abc");
    ij_kube_ns_list_deinit(&l);

    static const char last[] = "{\"kind\":\"NamespaceList\",\"metadata\":{\"continue\":\"\"},"
                               "\"items\":null}";
    assert_int_equal(ij_kube_ns_list_parse(last, sizeof(last) - 1, &l, &err), 0);
    assert_int_equal(l.n, 0);
    assert_null(l.cont);
    ij_kube_ns_list_deinit(&l);

    static const struct {
        const char *body, *msg;
    } bad[] = {
        {"", "NamespaceList: not JSON"},
        {"[]", "NamespaceList: not a JSON object"},
        {"{\"kind\":\"Status\",\"message\":\"x\"}", "kind is Status, want NamespaceList"},
        {"{\"items\":{}}", "items is not an array"},
        {"{\"items\":[{\"metadata\":{}}]}", "items[0].metadata.name: want a non-empty string"},
        {"{\"items\":[{\"metadata\":{\"name\":\"a\"}},{\"metadata\":{\"name\":7}}]}",
         "items[1].metadata.name"},
        {"{\"items\":[{\"metadata\":{\"name\":\"a\\u0000b\"}}]}", "is not allowed"}, /* NUL */
        {"{\"metadata\":{\"continue\":1},\"items\":[]}", "metadata.continue is not a string"},
        {"{\"a\":1,\"a\":2}", "not JSON"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        int rc = ij_kube_ns_list_parse(bad[i].body, strlen(bad[i].body), &l, &err);
        if (rc == 0 || err == NULL || strstr(err, bad[i].msg) == NULL || l.n != 0 ||
            l.items != NULL)
            fail_msg("bad %zu: rc %d '%s', want '%s'", i, rc, err ? err : "", bad[i].msg);
        free(err);
    }
}

static void configmap(void **state)
{
    (void)state;
    char *v, *err = NULL;
    size_t n;
    static const char cm[] =
        "{\"kind\":\"ConfigMap\",\"data\":{\"root.pem\":\"PEM\\n\",\"x\":\"y\"}}";
    assert_int_equal(ij_kube_configmap_value(cm, sizeof(cm) - 1, "root.pem", &v, &n, &err), 0);
    assert_int_equal(n, 4);
    assert_string_equal(v, "PEM\n");
    free(v);
    assert_int_equal(ij_kube_configmap_value(cm, sizeof(cm) - 1, "other", &v, &n, &err), 0);
    assert_null(v);
    static const char nodata[] = "{\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"}}";
    assert_int_equal(ij_kube_configmap_value(nodata, sizeof(nodata) - 1, "k", &v, &n, &err), 0);
    assert_null(v);
    static const char num[] = "{\"kind\":\"ConfigMap\",\"data\":{\"root.pem\":1}}";
    assert_int_equal(ij_kube_configmap_value(num, sizeof(num) - 1, "root.pem", &v, &n, &err),
                     CM_ERR_INVAL);
    assert_non_null(strstr(err, "data.root.pem is not a string"));
    free(err);
    err = NULL;
    static const char secret[] = "{\"kind\":\"Secret\",\"data\":{}}";
    assert_int_equal(ij_kube_configmap_value(secret, sizeof(secret) - 1, "k", &v, &n, &err),
                     CM_ERR_INVAL);
    assert_non_null(strstr(err, "kind is Secret, want ConfigMap"));
    free(err);
}

/* ---- flags and the root ------------------------------------------------------------------ */

static int args(struct ij_publish_opts *o, char **err, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, err);
    argv[argc++] = (char *)"publish-ca-root";
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    return ij_publish_parse_args(argc, argv, o, err);
}

static void flags(void **state)
{
    (void)state;
    struct ij_publish_opts o;
    char *err = NULL;
    unsetenv("KUBERNETES_SERVICE_HOST");
    assert_int_equal(args(&o, &err, "--root", "r.pem", NULL), 0);
    assert_string_equal(o.root_file, "r.pem");
    assert_string_equal(o.job.api, "https://kubernetes.default.svc");
    assert_string_equal(o.job.token_file, "/var/run/secrets/kubernetes.io/serviceaccount/token");
    assert_string_equal(o.job.ca_file, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt");
    assert_string_equal(o.selector, "remora-injection!=disabled");
    assert_string_equal(o.job.name, "remora-ca-root");
    assert_string_equal(o.job.key, "root.pem");
    assert_int_equal(o.interval_s, 0);
    assert_int_equal(o.job.timeout_ms, 10000);
    ij_publish_opts_deinit(&o);
    assert_int_equal(args(&o, &err, "--root=r.pem", "--api", "https://127.0.0.1:6443", "--interval",
                          "30", "--timeout-ms", "500", "--name", "ca", "--key", "ca.crt",
                          "--selector", "mesh", NULL),
                     0);
    assert_string_equal(o.job.api, "https://127.0.0.1:6443");
    assert_int_equal(o.interval_s, 30);
    assert_int_equal(o.job.timeout_ms, 500);
    ij_publish_opts_deinit(&o);

    static const struct {
        const char *a[4], *msg;
    } bad[] = {
        {{NULL}, "--root FILE is required"},
        {{"--root", "r", "--interval", "1x"}, "--interval 1x: want a whole number from 0 to 86400"},
        {{"--root", "r", "--interval", "86401"}, "--interval 86401"},
        {{"--root", "r", "--timeout-ms", "99999999999999999999"}, "--timeout-ms 9999"},
        {{"--root", "r", "--name", "a_b"}, "--name a_b: not a valid ConfigMap name"},
        {{"--root", "r", "--key", ".."}, "--key ..: not a valid ConfigMap key"},
        {{"--root", "r", "--selector", ""}, "--selector: want 1 to 1024 characters"},
        {{"--root", "r", "--selector", "a\nb"}, "--selector: control or non-ASCII"},
        {{"--root", "r", "--api", "https://h:99999"}, "--api https://h:99999: bad port"},
        {{"--root", "r", "--bogus", NULL}, "unknown flag --bogus"},
        {{"--root", "r", "stray", NULL}, "unexpected argument stray"},
        {{"--root", NULL}, "--root needs a value"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        int rc = args(&o, &err, bad[i].a[0], bad[i].a[1], bad[i].a[2], bad[i].a[3], NULL);
        if (rc != CM_ERR_INVAL || err == NULL || strstr(err, bad[i].msg) == NULL)
            fail_msg("bad %zu: rc %d '%s', want '%s'", i, rc, err ? err : "", bad[i].msg);
        free(err);
    }
}

static char tmpdir[] = "/tmp/remora-test-publish.XXXXXX";

static char *write_tmp(const char *name, const char *a, const char *b)
{
    char *path = cm_xasprintf("%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(a, f);
    if (b != NULL)
        fputs(b, f);
    fclose(f);
    return path;
}

static void root_file(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(tmpdir));
    char *root = NULL, *root_key = NULL, *root2 = NULL, *root2_key = NULL, *srv = NULL,
         *srv_key = NULL, *err = NULL;
    static const char *const dns[] = {"api.example", NULL};
    assert_int_equal(pki_make_root("mesh root", 2, &root, &root_key, &err), 0);
    assert_int_equal(pki_make_root("mesh root 2", 2, &root2, &root2_key, &err), 0);
    assert_int_equal(pki_make_server("api", dns, 2, root, root_key, &srv, &srv_key, &err), 0);

    char *pem;
    size_t len;
    unsigned n;
    char *p = write_tmp("root.pem", root, NULL);
    assert_int_equal(ij_publish_load_root(p, &pem, &len, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(len, strlen(root));
    assert_memory_equal(pem, root, len);
    free(pem);
    free(p);
    p = write_tmp("bundle.pem", root, root2);
    assert_int_equal(ij_publish_load_root(p, &pem, &len, &n, &err), 0);
    assert_int_equal(n, 2);
    free(pem);
    free(p);

    static const char *const names[] = {"key", "leaf", "text", "empty", "binary"};
    const char *a[] = {root, srv, "hello\n", "", "\x30\x82\x01\x00"};
    const char *b[] = {root_key, NULL, NULL, NULL, NULL};
    const char *msg[] = {"holds a private key", "certificate 1 is not a CA", "no PEM certificate",
                         "empty", "is not PEM text"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        p = write_tmp(names[i], a[i], b[i]);
        err = NULL;
        pem = NULL;
        int rc = ij_publish_load_root(p, &pem, &len, &n, &err);
        if (rc == 0 || err == NULL || strstr(err, msg[i]) == NULL || strstr(err, p) == NULL ||
            pem != NULL)
            fail_msg("%s: rc %d '%s', want '%s' naming the file", names[i], rc, err ? err : "",
                     msg[i]);
        free(err);
        unlink(p);
        free(p);
    }
    p = cm_xasprintf("%s/root.pem", tmpdir);
    unlink(p);
    free(p);
    p = cm_xasprintf("%s/bundle.pem", tmpdir);
    unlink(p);
    free(p);
    rmdir(tmpdir);
    free(root);
    free(root_key);
    free(root2);
    free(root2_key);
    free(srv);
    free(srv_key);
    pki_rng_free();
}

int main(void)
{
    cm_log_set_level(CM_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(url_parse),      cmocka_unit_test(default_api),
        cmocka_unit_test(query_escape),   cmocka_unit_test(names),
        cmocka_unit_test(response_ok),    cmocka_unit_test(response_refused),
        cmocka_unit_test(response_split), cmocka_unit_test(describe),
        cmocka_unit_test(ns_list),        cmocka_unit_test(configmap),
        cmocka_unit_test(flags),          cmocka_unit_test(root_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
