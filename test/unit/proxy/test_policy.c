/* Unit tests of the policy engine (proxy/policy_*.c, pathnorm.c), table-driven from
 * test/data/policy/ (found under $REMORA_ROOT or the current directory). A new case is a new line
 * in a data file, or a new file:
 *
 *   cases-*.json   {"policy": {...}, "peers": {"fe": "spiffe://..."},
 *                   "defaults": {"peer": "fe", "method": "GET", "path": "/", "port": 8080},
 *                   "cases": [{"path": "//admin", "want": "deny admin", "note": "..."}, ...]}
 *                  Each case is one test: a request (peer: a key of "peers", a SPIFFE ID,
 *                  or null for no verified peer; method; path; port; authority; headers:
 *                  {"name": "value" | ["copy 1", "copy 2"]}) and the decision wanted:
 *                  "allow", "allow <rule>", "allow default", "deny <rule>", "deny default",
 *                  "400" (path) or "400 header" ('_' for '-'); "tcp": true decides an opaque TCP
 * connection (no method, path or headers); "source": "10.1.2.3" or "::1" is the peer address
 * (from.ip_blocks). The indexed decision and a plain scan in file order (decide_linear) must both
 * give it; in an audit-mode policy the decision must also be marked not enforced. bad-*.json     a
 * policy that must fail to load, with a message starting with the file name and containing the
 * first line of the sibling bad-*.err; loading the same bytes from memory must give the same
 * message. normalize.json [[target, normalized], [target, null, "reason part"], ...] for
 *                  px_policy_normalize_path.
 *
 * Then the index is checked against the plain scan on generated policies and
 * random requests, and the denial counters (Prometheus text, /stats, bound). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/net.h"
#include "proxy/http.h"
#include "proxy/policy.h"
#include "test/unit/proxy/policy_oracle.h"

static char data_dir[4096];

/* ---- data files --------------------------------------------------------------------- */

struct case_file {
    char *path;
    json_t *doc;
    struct px_policy *policy; /* NULL when it failed to load (every case then fails) */
    char *load_error;
};

struct policy_case {
    struct case_file *file;
    json_t *c; /* the case object, borrowed from file->doc */
    json_t *defaults, *peers;
    char name[512];
};

static struct case_file *files;
static size_t nfiles;
static struct policy_case *cases;
static size_t ncases;

static const char *member_str(json_t *c, json_t *defaults, const char *key, const char *dflt)
{
    json_t *v = json_object_get(c, key);
    if (v == NULL && defaults != NULL)
        v = json_object_get(defaults, key);
    return json_is_string(v) ? json_string_value(v) : dflt;
}

/* Build the request of a case in `a`; returns the principal (or NULL). */
static const char *build_request(const struct policy_case *pc, struct px_arena *a, struct px_msg *m,
                                 uint16_t *port)
{
    json_t *c = pc->c, *d = pc->defaults;
    px_msg_init(m);
    m->method = member_str(c, d, "method", "GET");
    m->path = member_str(c, d, "path", "/");
    m->authority = member_str(c, d, "authority", NULL);
    json_t *pv = json_object_get(c, "port");
    if (pv == NULL && d != NULL)
        pv = json_object_get(d, "port");
    *port = json_is_integer(pv) ? (uint16_t)json_integer_value(pv) : 8080;
    json_t *hdrs = json_object_get(c, "headers");
    if (hdrs == NULL && d != NULL)
        hdrs = json_object_get(d, "headers");
    const char *name;
    json_t *v;
    json_object_foreach(hdrs, name, v)
    {
        if (json_is_string(v)) {
            px_msg_add(a, m, name, strlen(name), json_string_value(v), json_string_length(v),
                       1u << 20, 1000);
        } else {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) px_msg_add(a, m, name, strlen(name), json_string_value(e),
                                                   json_string_length(e), 1u << 20, 1000);
        }
    }
    /* the peer: explicit null means none; a name from "peers"; else a SPIFFE ID */
    json_t *peer = json_object_get(c, "peer");
    if (peer == NULL && d != NULL)
        peer = json_object_get(d, "peer");
    if (peer == NULL || json_is_null(peer))
        return NULL;
    json_t *alias = json_object_get(pc->peers, json_string_value(peer));
    return json_is_string(alias) ? json_string_value(alias) : json_string_value(peer);
}

static void describe(const struct px_policy_decision *d, char *buf, size_t len)
{
    if (d->verdict == PX_POLICY_BAD_PATH || d->verdict == PX_POLICY_BAD_HEADER)
        snprintf(buf, len, "400%s (%s)", d->verdict == PX_POLICY_BAD_HEADER ? " header" : "",
                 d->why ? d->why : "?");
    else
        snprintf(buf, len, "%s %s", d->verdict == PX_POLICY_ALLOW ? "allow" : "deny",
                 d->rule ? d->rule : "(null)");
}

/* Does decision d satisfy `want`? */
static bool wanted(const char *want, const struct px_policy_decision *d)
{
    if (strcmp(want, "400") == 0)
        return d->verdict == PX_POLICY_BAD_PATH;
    if (strcmp(want, "400 header") == 0)
        return d->verdict == PX_POLICY_BAD_HEADER;
    if (strcmp(want, "allow") == 0)
        return d->verdict == PX_POLICY_ALLOW;
    char buf[256];
    describe(d, buf, sizeof(buf));
    return strcmp(want, buf) == 0;
}

static void run_case(void **state)
{
    const struct policy_case *pc = *state;
    const struct case_file *f = pc->file;
    if (f->policy == NULL)
        fail_msg("%s: the policy does not load: %s", f->path, f->load_error);
    const char *want = json_string_value(json_object_get(pc->c, "want"));
    if (want == NULL)
        fail_msg("%s: case without \"want\"", pc->name);

    struct px_arena a;
    struct px_msg m;
    uint16_t port;
    px_arena_init(&a);
    const char *principal = build_request(pc, &a, &m, &port);
    struct px_policy_request r = {.principal = principal, .port = port, .req = &m};
    struct cm_addr src;
    json_t *sv = json_object_get(pc->c, "source");
    if (sv == NULL && pc->defaults != NULL)
        sv = json_object_get(pc->defaults, "source");
    if (json_is_string(sv)) {
        char buf[128];
        const char *ip = json_string_value(sv);
        snprintf(buf, sizeof(buf), strchr(ip, ':') ? "[%s]:1" : "%s:1", ip);
        if (cm_addr_parse(buf, &src) != 0)
            fail_msg("%s: bad source %s", pc->name, ip);
        r.source = &src;
    }
    json_t *tv = json_object_get(pc->c, "tcp");
    if (tv == NULL && pc->defaults != NULL)
        tv = json_object_get(pc->defaults, "tcp");
    r.tcp = json_is_true(tv);
    size_t need = px_policy_scratch_size(m.path);
    char *scratch = malloc(need), *scratch2 = malloc(need);
    struct px_policy_decision d, dl;
    px_policy_decide(f->policy, &r, scratch, need, &d);
    decide_linear(f->policy, &r, scratch2, need, &dl);
    char got[256], got_linear[256];
    describe(&d, got, sizeof(got));
    describe(&dl, got_linear, sizeof(got_linear));
    bool ok = wanted(want, &d), same = strcmp(got, got_linear) == 0;
    bool enforce_ok = d.enforce == (px_policy_mode(f->policy) == PX_POLICY_ENFORCE);
    free(scratch);
    free(scratch2);
    px_arena_deinit(&a);
    if (!ok)
        fail_msg("%s: want \"%s\", got \"%s\"", pc->name, want, got);
    if (!same)
        fail_msg("%s: index says \"%s\", plain scan says \"%s\"", pc->name, got, got_linear);
    if (!enforce_ok)
        fail_msg("%s: enforce flag does not follow the policy's mode", pc->name);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    *len = n;
    return buf;
}

static void first_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
}

static void run_bad(void **state)
{
    const char *path = *state;
    char errpath[4200], want[1024];
    snprintf(errpath, sizeof(errpath), "%.*s.err", (int)(strlen(path) - 5), path);
    first_line(errpath, want, sizeof(want));

    struct px_policy *const untouched = (struct px_policy *)(uintptr_t)1;
    struct px_policy *p = untouched;
    char *err = NULL, *err2 = NULL;
    int rc = px_policy_load_file(path, &p, &err);
    size_t len = 0;
    char *buf = read_all(path, &len);
    struct px_policy *p2 = untouched;
    int rc2 = px_policy_parse(path, buf, len, &p2, &err2);
    struct px_policy *p3 = untouched;
    int rc3 = px_policy_parse(path, buf, len, &p3, NULL); /* no message wanted: no crash */
    free(buf);
    char msg[2048] = "", msg2[2048] = "";
    snprintf(msg, sizeof(msg), "%s", err ? err : "(none)");
    snprintf(msg2, sizeof(msg2), "%s", err2 ? err2 : "(none)");
    free(err);
    free(err2);
    if (rc == 0)
        px_policy_free(p);
    if (rc2 == 0)
        px_policy_free(p2);
    if (rc3 == 0)
        px_policy_free(p3);
    if (rc != CM_ERR_INVAL || rc2 != CM_ERR_INVAL || rc3 != CM_ERR_INVAL)
        fail_msg("%s: loaded (rc %d/%d/%d) but must fail with \"%s\"", path, rc, rc2, rc3, want);
    if (p != untouched || p2 != untouched || p3 != untouched)
        fail_msg("%s: *out written on failure", path);
    if (strncmp(msg, path, strlen(path)) != 0 || strncmp(msg + strlen(path), ": ", 2) != 0)
        fail_msg("%s: message does not start with the file name: %s", path, msg);
    if (strstr(msg, want) == NULL)
        fail_msg("%s: message \"%s\" does not contain \"%s\"", path, msg, want);
    if (strcmp(msg, msg2) != 0)
        fail_msg("%s: file and memory give different messages:\n  %s\n  %s", path, msg, msg2);
}

static void run_normalize(void **state)
{
    json_t *table = *state;
    size_t i, bad = 0;
    json_t *row;
    json_array_foreach(table, i, row)
    {
        const char *in = json_string_value(json_array_get(row, 0));
        json_t *want = json_array_get(row, 1);
        const char *reason = json_string_value(json_array_get(row, 2));
        size_t need = px_policy_scratch_size(in);
        char *out = malloc(need);
        const char *why = NULL;
        int n = px_policy_normalize_path(in, out, need, &why);
        bool ok;
        if (json_is_null(want))
            ok = n < 0 && why != NULL && (reason == NULL || strstr(why, reason) != NULL);
        else
            ok = n >= 0 && (size_t)n == strlen(out) && strcmp(out, json_string_value(want)) == 0;
        /* idempotent: a normalized path normalizes to itself */
        if (ok && n >= 0) {
            char *again = malloc((size_t)n + 2);
            int n2 = px_policy_normalize_path(out, again, (size_t)n + 2, &why);
            ok = n2 == n && strcmp(again, out) == 0;
            if (!ok)
                print_error("normalize.json[%zu] \"%s\": not idempotent: \"%s\" -> \"%s\"\n", i, in,
                            out, n2 >= 0 ? again : why);
            free(again);
        } else if (!ok) {
            print_error("normalize.json[%zu] \"%s\": want %s%s%s, got %s \"%s\"\n", i, in,
                        json_is_null(want) ? "refusal" : "\"",
                        json_is_null(want) ? (reason ? reason : "") : json_string_value(want),
                        json_is_null(want) ? "" : "\"", n < 0 ? "refusal" : "", n < 0 ? why : out);
        }
        bad += !ok;
        free(out);
    }
    if (bad)
        fail_msg("%zu of %zu normalization cases failed", bad, json_array_size(table));
}

/* ---- generated policies: index == plain scan ----------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static const char *const gen_ns[] = {"shop", "pay", "ops", "dev"};
static const char *const gen_sa[] = {"web", "api", "db", "admin", "batch"};
static const char *const gen_paths[] = {"/api/*", "/admin", "/admin/*",  "*.png", "/healthz",
                                        "*",      "/a*",    "/api/v1/x", "*/x",   "*x.png"};
static const char *const gen_methods[] = {"GET", "POST", "DELETE", "HEAD"};
static const char *const gen_hdrs[] = {"x-a", "x-b", "host", "x-c"};

static json_t *gen_principal(void)
{
    char id[128];
    snprintf(id, sizeof(id), "spiffe://cluster.local/ns/%s/sa/%s", gen_ns[rnd(4)], gen_sa[rnd(5)]);
    return json_string(id);
}

static json_t *gen_policy(unsigned nrules)
{
    json_t *rules = json_array();
    for (unsigned i = 0; i < nrules; i++) {
        json_t *r = json_object(), *from = json_object(), *to = json_object();
        char name[32];
        snprintf(name, sizeof(name), "r%u", i);
        json_object_set_new(r, "name", json_string(name));
        json_object_set_new(r, "action", json_string(rnd(3) == 0 ? "deny" : "allow"));
        switch (rnd(5)) {
        case 0:
            json_object_set_new(from, "principals", json_pack("[o]", gen_principal()));
            break;
        case 1:
            json_object_set_new(from, "principals",
                                json_pack("[o,o]", gen_principal(), gen_principal()));
            break;
        case 2:
            json_object_set_new(from, "namespaces", json_pack("[s]", gen_ns[rnd(4)]));
            break;
        case 3:
            json_object_set_new(from, "not_principals", json_pack("[o]", gen_principal()));
            break;
        }
        if (rnd(3) == 0)
            json_object_set_new(to, "paths", json_pack("[s]", gen_paths[rnd(10)]));
        else if (rnd(2))
            json_object_set_new(to, "paths",
                                json_pack("[s,s]", gen_paths[rnd(10)], gen_paths[rnd(10)]));
        if (rnd(2))
            json_object_set_new(to, "methods", json_pack("[s]", gen_methods[rnd(4)]));
        if (rnd(3) == 0)
            json_object_set_new(to, "ports", json_pack("[i]", 8080 + (int)rnd(2)));
        if (rnd(4) == 0)
            json_object_set_new(
                r, "when", json_pack("{s:{s:s}}", "headers", gen_hdrs[rnd(4)], rnd(2) ? "*" : "1"));
        if (json_object_size(from))
            json_object_set(r, "from", from);
        if (json_object_size(to))
            json_object_set(r, "to", to);
        json_decref(from);
        json_decref(to);
        json_array_append_new(rules, r);
    }
    return json_pack("{s:s, s:o}", "default", rnd(2) ? "allow" : "deny", "rules", rules);
}

static void index_matches_scan(void **state)
{
    (void)state;
    static const char *const req_paths[] = {"/api/x",    "/admin",       "//admin", "/admin/x",
                                            "/a.png",    "/healthz",     "/",       "/api/../admin",
                                            "/api/v1/x", "/api/v1/x.png"};
    unsigned checked = 0;
    for (unsigned round = 0; round < 60; round++) {
        json_t *doc = gen_policy(1 + rnd(60));
        struct px_policy *p = NULL;
        char *err = NULL;
        int rc = px_policy_compile("generated", doc, &p, &err);
        json_decref(doc);
        if (rc != 0) {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", err);
            free(err);
            fail_msg("generated policy does not load: %s", msg);
        }
        for (unsigned k = 0; k < 200; k++) {
            struct px_msg m;
            struct px_arena a;
            px_arena_init(&a);
            px_msg_init(&m);
            m.method = gen_methods[rnd(4)];
            m.path = req_paths[rnd(10)];
            m.authority = rnd(2) ? "web" : NULL;
            for (unsigned h = rnd(4); h > 0; h--) {
                const char *name = gen_hdrs[rnd(4)];
                const char *val = rnd(2) ? "1" : "2";
                px_msg_add(&a, &m, name, strlen(name), val, 1, 1u << 16, 64);
            }
            json_t *pr = gen_principal();
            struct px_policy_request r = {
                .principal = rnd(5) ? json_string_value(pr) : NULL,
                .port = (uint16_t)(8080 + rnd(2)),
                .req = &m,
            };
            char s1[64], s2[64];
            struct px_policy_decision d, dl;
            px_policy_decide(p, &r, s1, sizeof(s1), &d);
            decide_linear(p, &r, s2, sizeof(s2), &dl);
            bool same = d.verdict == dl.verdict &&
                        (d.rule == dl.rule || (d.rule && dl.rule && !strcmp(d.rule, dl.rule)));
            json_decref(pr);
            px_arena_deinit(&a);
            if (!same) {
                px_policy_free(p);
                fail_msg("round %u request %u: index and plain scan disagree", round, k);
            }
            checked++;
        }
        px_policy_free(p);
    }
    assert_int_equal(checked, 60 * 200);
}

/* ---- focused tests ----------------------------------------------------------------- */

static struct px_policy *compile_str(const char *text)
{
    struct px_policy *p = NULL;
    char *err = NULL;
    if (px_policy_parse("t.json", text, strlen(text), &p, &err) != 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", err);
        free(err);
        fail_msg("%s", msg);
    }
    return p;
}

static void facts_and_defaults(void **state)
{
    (void)state;
    struct px_policy *p = compile_str("{}");
    assert_int_equal(px_policy_nrules(p), 0);
    assert_false(px_policy_default_deny(p)); /* absent default: allow (Istio) */
    assert_int_equal(px_policy_mode(p), PX_POLICY_ENFORCE);
    assert_string_equal(px_policy_name(p), "t.json");
    assert_true(json_is_object(px_policy_source(p)));
    px_policy_free(p);
    p = compile_str("{\"default\": \"deny\", \"mode\": \"audit\", \"rules\": ["
                    "{\"name\": \"a\", \"action\": \"allow\"},"
                    "{\"name\": \"d\", \"action\": \"deny\"}, {\"name\": \"b\", \"action\": "
                    "\"allow\"}]}");
    assert_int_equal(px_policy_nrules(p), 3);
    assert_int_equal(px_policy_nallow(p), 2);
    assert_int_equal(px_policy_ndeny(p), 1);
    assert_true(px_policy_default_deny(p));
    assert_int_equal(px_policy_mode(p), PX_POLICY_AUDIT);
    assert_false(px_policy_metrics_source_principal(p)); /* issue 18: off by default */
    px_policy_free(p);
    p = compile_str("{\"metrics\": {\"source_principal\": true}}");
    assert_true(px_policy_metrics_source_principal(p));
    px_policy_free(p);
    p = compile_str("{\"metrics\": {}}");
    assert_false(px_policy_metrics_source_principal(p));
    px_policy_free(p);
    assert_false(px_policy_metrics_source_principal(NULL));
}

/* A policy without path conditions never looks at the path: no 400 for odd ones. */
static void no_path_rules_no_rejects(void **state)
{
    (void)state;
    struct px_policy *p = compile_str("{\"rules\": [{\"name\": \"m\", \"action\": \"deny\", "
                                      "\"to\": {\"methods\": [\"DELETE\"]}}]}");
    struct px_msg m;
    px_msg_init(&m);
    m.method = "GET";
    m.path = "/a%2Fb\\c";
    struct px_policy_request r = {.port = 80, .req = &m};
    struct px_policy_decision d;
    px_policy_decide(p, &r, NULL, 0, &d); /* no scratch needed either */
    assert_int_equal(d.verdict, PX_POLICY_ALLOW);
    px_policy_free(p);
}

static void scratch_too_small(void **state)
{
    (void)state;
    struct px_policy *p = compile_str("{\"rules\": [{\"name\": \"a\", \"action\": \"deny\", "
                                      "\"to\": {\"paths\": [\"/admin\"]}}]}");
    struct px_msg m;
    px_msg_init(&m);
    m.method = "GET";
    m.path = "/admin/and/more";
    struct px_policy_request r = {.port = 80, .req = &m};
    struct px_policy_decision d;
    char small[4];
    px_policy_decide(p, &r, small, sizeof(small), &d);
    assert_int_equal(d.verdict, PX_POLICY_BAD_PATH);
    assert_string_equal(d.why, "path too long");
    char big[32];
    assert_true(px_policy_scratch_size(m.path) <= sizeof(big));
    px_policy_decide(p, &r, big, px_policy_scratch_size(m.path), &d);
    assert_int_equal(d.verdict, PX_POLICY_ALLOW);
    px_policy_free(p);
}

static char *prom_text(void)
{
    struct evbuffer *b = evbuffer_new();
    px_policy_metrics_prometheus(b);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

static void counters(void **state)
{
    (void)state;
    px_policy_metrics_reset();
    char *t = prom_text();
    assert_non_null(strstr(t, "# TYPE remora_policy_denials_total counter\n"
                              "remora_policy_denials_total{rule=\"default\"} 0\n"));
    assert_non_null(strstr(t, "remora_policy_audit_denials_total{rule=\"default\"} 0\n"));
    assert_null(strstr(t, "\nremora_policy_denials_total ")); /* never unlabelled */
    free(t);
    px_policy_count_denial("block-admin", false);
    px_policy_count_denial("block-admin", false);
    px_policy_count_denial("default", false);
    px_policy_count_denial("dry", true);
    assert_int_equal(px_policy_denials("block-admin", false), 2);
    assert_int_equal(px_policy_denials("default", false), 1);
    assert_int_equal(px_policy_denials("dry", true), 1);
    assert_int_equal(px_policy_denials("dry", false), 0);
    assert_int_equal(px_policy_denials("nope", false), 0);
    t = prom_text();
    assert_non_null(strstr(t, "remora_policy_denials_total{rule=\"block-admin\"} 2\n"));
    assert_non_null(strstr(t, "remora_policy_denials_total{rule=\"default\"} 1\n"));
    assert_non_null(strstr(t, "remora_policy_audit_denials_total{rule=\"dry\"} 1\n"));
    assert_null(strstr(t, "remora_policy_denials_total{rule=\"dry\"}")); /* no zero series */
    free(t);
    json_t *o = json_object();
    px_policy_metrics_json(o);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(o, "policy_denials"), "block-admin")),
        2);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(o, "policy_audit_denials"), "dry")), 1);
    json_decref(o);
    /* bounded: past PX_POLICY_MAX_SERIES names, denials fold into one series */
    for (int i = 0; i < PX_POLICY_MAX_SERIES + 50; i++) {
        char name[32];
        snprintf(name, sizeof(name), "r%d", i);
        px_policy_count_denial(name, false);
    }
    /* default, block-admin and dry took 3 series: r0 .. r<MAX-4> fill the table */
    char last[32], first_out[32];
    snprintf(last, sizeof(last), "r%d", PX_POLICY_MAX_SERIES - 4);
    snprintf(first_out, sizeof(first_out), "r%d", PX_POLICY_MAX_SERIES - 3);
    assert_int_equal(px_policy_denials(last, false), 1);
    assert_int_equal(px_policy_denials(first_out, false), 0);
    assert_int_equal(px_policy_denials("*overflow*", false), 53);
    px_policy_metrics_reset();
    assert_int_equal(px_policy_denials("block-admin", false), 0);
}

/* The docs/contract.md example loads and means what it says. */
static void design_example(void **state)
{
    (void)state;
    struct px_policy *p = compile_str(
        "{\"default\": \"deny\", \"rules\": [{\"name\": \"frontend-reads\", \"action\": \"allow\","
        " \"from\": {\"principals\": [\"spiffe://cluster.local/ns/shop/sa/frontend\"],"
        " \"namespaces\": [\"shop\"]}, \"to\": {\"ports\": [8080], \"methods\": [\"GET\", "
        "\"HEAD\"], \"paths\": [\"/api/*\", \"/healthz\"]}, \"when\": {\"headers\": {\"x-tenant\": "
        "\"acme\"}}}]}");
    struct px_arena a;
    px_arena_init(&a);
    struct px_msg m;
    px_msg_init(&m);
    m.method = "GET";
    m.path = "/api/items?page=2";
    px_msg_add(&a, &m, "x-tenant", 8, "acme", 4, 1000, 10);
    struct px_policy_request r = {
        .principal = "spiffe://cluster.local/ns/shop/sa/frontend", .port = 8080, .req = &m};
    char buf[64];
    struct px_policy_decision d;
    px_policy_decide(p, &r, buf, sizeof(buf), &d);
    assert_int_equal(d.verdict, PX_POLICY_ALLOW);
    assert_string_equal(d.rule, "frontend-reads");
    m.method = "POST";
    px_policy_decide(p, &r, buf, sizeof(buf), &d);
    assert_int_equal(d.verdict, PX_POLICY_DENY);
    assert_string_equal(d.rule, "default");
    assert_true(d.enforce);
    px_arena_deinit(&a);
    px_policy_free(p);
}

/* ---- main ------------------------------------------------------------------------- */

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted file names in data_dir with this prefix and suffix. */
static char **list_files(const char *prefix, const char *suffix, size_t *n)
{
    DIR *dir = opendir(data_dir);
    char **v = NULL;
    *n = 0;
    if (dir == NULL)
        return NULL;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        size_t l = strlen(e->d_name), pl = strlen(prefix), sl = strlen(suffix);
        if (l <= pl + sl || strncmp(e->d_name, prefix, pl) != 0 ||
            strcmp(e->d_name + l - sl, suffix) != 0)
            continue;
        v = realloc(v, (*n + 1) * sizeof(*v));
        v[*n] = malloc(strlen(data_dir) + l + 2);
        snprintf(v[*n], strlen(data_dir) + l + 2, "%s/%s", data_dir, e->d_name);
        (*n)++;
    }
    closedir(dir);
    if (*n)
        qsort(v, *n, sizeof(*v), by_name);
    return v;
}

int main(void)
{
    const char *root = getenv("REMORA_ROOT");
    snprintf(data_dir, sizeof(data_dir), "%s/test/data/policy", root && *root ? root : ".");
    int failed = 0;

    const struct CMUnitTest focused[] = {
        cmocka_unit_test(facts_and_defaults), cmocka_unit_test(no_path_rules_no_rejects),
        cmocka_unit_test(scratch_too_small),  cmocka_unit_test(counters),
        cmocka_unit_test(design_example),     cmocka_unit_test(index_matches_scan),
    };
    failed += cmocka_run_group_tests_name("proxy/policy", focused, NULL, NULL);

    /* decision cases */
    size_t ncf = 0;
    char **cf = list_files("cases-", ".json", &ncf);
    files = calloc(ncf ? ncf : 1, sizeof(*files));
    size_t cap = 0;
    for (size_t i = 0; i < ncf; i++) {
        struct case_file *f = &files[nfiles++];
        f->path = cf[i];
        json_error_t jerr;
        f->doc = json_load_file(f->path, JSON_REJECT_DUPLICATES, &jerr);
        if (f->doc == NULL) {
            fprintf(stderr, "%s: %s (line %d)\n", f->path, jerr.text, jerr.line);
            failed++;
            continue;
        }
        char *err = NULL;
        if (px_policy_compile(f->path, json_object_get(f->doc, "policy"), &f->policy, &err) != 0)
            f->load_error = err;
        json_t *list = json_object_get(f->doc, "cases");
        size_t k;
        json_t *c;
        json_array_foreach(list, k, c)
        {
            if (ncases == cap)
                cases = realloc(cases, (cap = cap ? cap * 2 : 256) * sizeof(*cases));
            struct policy_case *pc = &cases[ncases++];
            pc->file = f;
            pc->c = c;
            pc->defaults = json_object_get(f->doc, "defaults");
            pc->peers = json_object_get(f->doc, "peers");
            const char *note = json_string_value(json_object_get(c, "note"));
            const char *base = strrchr(f->path, '/');
            snprintf(pc->name, sizeof(pc->name), "%s[%zu] %s %s -> %s%s%s",
                     base ? base + 1 : f->path, k, member_str(c, pc->defaults, "method", "GET"),
                     member_str(c, pc->defaults, "path", "/"), member_str(c, NULL, "want", "?"),
                     note ? ": " : "", note ? note : "");
        }
    }
    struct CMUnitTest *t = calloc(ncases ? ncases : 1, sizeof(*t));
    for (size_t i = 0; i < ncases; i++) {
        t[i].name = cases[i].name;
        t[i].test_func = run_case;
        t[i].initial_state = &cases[i];
    }
    if (ncases < 300) {
        fprintf(stderr, "only %zu decision cases found under %s\n", ncases, data_dir);
        failed++;
    }
    failed += _cmocka_run_group_tests("proxy/policy decisions", t, ncases, NULL, NULL);
    free(t);

    /* loader errors */
    size_t nbad = 0;
    char **bad = list_files("bad-", ".json", &nbad);
    t = calloc(nbad ? nbad : 1, sizeof(*t));
    for (size_t i = 0; i < nbad; i++) {
        const char *base = strrchr(bad[i], '/');
        t[i].name = base ? base + 1 : bad[i];
        t[i].test_func = run_bad;
        t[i].initial_state = bad[i];
    }
    if (nbad < 30) {
        fprintf(stderr, "only %zu bad-*.json files under %s\n", nbad, data_dir);
        failed++;
    }
    failed += _cmocka_run_group_tests("proxy/policy loader errors", t, nbad, NULL, NULL);
    free(t);

    /* path normalization table */
    char np[4200];
    snprintf(np, sizeof(np), "%s/normalize.json", data_dir);
    json_t *norm = json_load_file(np, 0, NULL);
    if (!json_is_array(norm)) {
        fprintf(stderr, "%s: missing or not an array\n", np);
        failed++;
    }
    struct CMUnitTest nt[] = {{"normalize.json", run_normalize, NULL, NULL, norm}};
    failed += _cmocka_run_group_tests("proxy/policy normalization", nt, 1, NULL, NULL);
    json_decref(norm);

    for (size_t i = 0; i < nfiles; i++) {
        px_policy_free(files[i].policy);
        json_decref(files[i].doc);
        free(files[i].load_error);
        free(files[i].path);
    }
    for (size_t i = 0; i < nbad; i++)
        free(bad[i]);
    free(bad);
    free(cf);
    free(files);
    free(cases);
    px_policy_metrics_reset();
    return failed ? 1 : 0;
}
