/* Decision cost of the policy engine (proxy/policy_*.c), in nanoseconds per
 * decision, for policies of 1, 100, 1000 and 10000 rules of several shapes.
 * Built by `make policy-bench` as build/policy-bench; results in docs/policy.md.
 *
 *   build/policy-bench [--iterations N] [--json]
 *   build/policy-bench --file POLICY [--method M] [--path P] [--principal ID] [--header 'n: v']...
 *       (the cost of your own policy for one request)
 *
 * Shapes (each rule i is distinct, so nothing collapses):
 *   principals  allow rule i: principal .../sa/svc-i, GET, paths under /api/  (principal index)
 *   paths       deny rule i: paths under /svc-i/admin/, and /svc-i/debug;
 *               a last rule allows the rest                               (path index)
 *   namespaces  allow rule i: namespace ns-i, methods, ports            (namespace index)
 *   headers     deny rule i: header x-block-i present, or a path ending in .ext-i
 *                                                                         (header, suffix index)
 *   mixed       half principals, 3/10 path prefixes, 1/10 exact paths,
 *               1/10 header rules                                         (all of them)
 *   generic     deny rule i: DELETE, not from principal svc-i, not under /public/: nothing
 *               an index can use, every rule is checked (the worst case)
 * Requests: "hit" matches a rule in the middle of the file, "miss" matches nothing
 * (the default decides), so both the early exit and the full search are seen; for
 * "generic", "hit" is a DELETE that every rule checks down to its last condition
 * and "miss" a GET that every rule refuses at its first. Each
 * request carries 6 ordinary headers and a 30-byte path that needs normalizing
 * (one "//" and one "%61"), like a real request.
 *
 * Timing: CLOCK_MONOTONIC around a loop of N decisions (N scaled so a run takes
 * about 0.2 s), best of 5 runs; a checksum of the verdicts keeps the loop honest. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/http.h"
#include "proxy/policy.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

enum shape { S_PRINCIPALS = 0, S_PATHS, S_NAMESPACES, S_HEADERS, S_MIXED, S_GENERIC, NSHAPES };
static const char *const shape_names[NSHAPES] = {"principals", "paths", "namespaces",
                                                 "headers",    "mixed", "generic"};

static json_t *rule_principal(unsigned i)
{
    char name[32], id[96];
    snprintf(name, sizeof(name), "p-%u", i);
    snprintf(id, sizeof(id), "spiffe://cluster.local/ns/shop/sa/svc-%u", i);
    return json_pack("{s:s, s:s, s:{s:[s]}, s:{s:[s,s], s:[s]}}", "name", name, "action", "allow",
                     "from", "principals", id, "to", "methods", "GET", "HEAD", "paths", "/api/*");
}

static json_t *rule_path_prefix(unsigned i)
{
    char name[32], p1[64], p2[64];
    snprintf(name, sizeof(name), "d-%u", i);
    snprintf(p1, sizeof(p1), "/svc-%u/admin/*", i);
    snprintf(p2, sizeof(p2), "/svc-%u/debug", i);
    return json_pack("{s:s, s:s, s:{s:[s,s]}}", "name", name, "action", "deny", "to", "paths", p1,
                     p2);
}

static json_t *rule_path_exact(unsigned i)
{
    char name[32], p[64];
    snprintf(name, sizeof(name), "e-%u", i);
    snprintf(p, sizeof(p), "/internal/job-%u", i);
    return json_pack("{s:s, s:s, s:{s:[s]}}", "name", name, "action", "deny", "to", "paths", p);
}

static json_t *rule_namespace(unsigned i)
{
    char name[32], ns[32];
    snprintf(name, sizeof(name), "n-%u", i);
    snprintf(ns, sizeof(ns), "ns-%u", i);
    return json_pack("{s:s, s:s, s:{s:[s]}, s:{s:[s,s], s:[i]}}", "name", name, "action", "allow",
                     "from", "namespaces", ns, "to", "methods", "GET", "POST", "ports", 8080);
}

/* Nothing an index can use: only not_ forms and methods. */
static json_t *rule_unindexable(unsigned i)
{
    char name[32], id[96];
    snprintf(name, sizeof(name), "u-%u", i);
    snprintf(id, sizeof(id), "spiffe://cluster.local/ns/shop/sa/svc-%u", i);
    return json_pack("{s:s, s:s, s:{s:[s]}, s:{s:[s], s:[s]}}", "name", name, "action", "deny",
                     "from", "not_principals", id, "to", "methods", "DELETE", "not_paths",
                     "/public/*");
}

static json_t *rule_header(unsigned i)
{
    char name[32], h[32], p[32];
    snprintf(name, sizeof(name), "g-%u", i);
    if (i % 2 == 0) {
        snprintf(h, sizeof(h), "x-block-%u", i);
        return json_pack("{s:s, s:s, s:{s:{s:s}}}", "name", name, "action", "deny", "when",
                         "headers", h, "*");
    }
    snprintf(p, sizeof(p), "*.ext-%u", i);
    return json_pack("{s:s, s:s, s:{s:[s]}}", "name", name, "action", "deny", "to", "paths", p);
}

/* The policy of a shape with n rules; its "hit" request targets rule n/2. */
static json_t *make_policy(enum shape s, unsigned n)
{
    json_t *rules = json_array();
    for (unsigned i = 0; i < n; i++) {
        json_t *r = NULL;
        switch (s) {
        case S_PRINCIPALS:
            r = rule_principal(i);
            break;
        case S_PATHS:
            r = i + 1 == n ? json_pack("{s:s, s:s}", "name", "allow-rest", "action", "allow")
                           : rule_path_prefix(i);
            break;
        case S_NAMESPACES:
            r = rule_namespace(i);
            break;
        case S_HEADERS:
            r = i + 1 == n ? json_pack("{s:s, s:s}", "name", "allow-rest", "action", "allow")
                           : rule_header(i);
            break;
        case S_MIXED: {
            unsigned k = i % 10;
            r = k < 5   ? rule_principal(i)
                : k < 8 ? rule_path_prefix(i)
                : k < 9 ? rule_path_exact(i)
                        : rule_header(i);
            break;
        }
        case S_GENERIC:
            r = i + 1 == n ? json_pack("{s:s, s:s}", "name", "allow-rest", "action", "allow")
                           : rule_unindexable(i);
            break;
        default:
            break;
        }
        json_array_append_new(rules, r);
    }
    return json_pack("{s:s, s:o}", "default", "deny", "rules", rules);
}

struct request {
    char principal[96];
    char path[128];
    struct px_msg msg;
    struct px_arena arena;
};

static void make_request(enum shape s, unsigned n, bool hit, struct request *r)
{
    unsigned t = hit ? n / 2 : n + 7; /* n + 7: no such rule */
    px_arena_init(&r->arena);
    px_msg_init(&r->msg);
    r->msg.method = "GET";
    r->msg.authority = "svc.shop.svc.cluster.local:8080";
    unsigned who = t, where = t;
    if (s == S_MIXED && hit) {
        /* the middle rule of the file, whatever its kind */
        unsigned k = t % 10;
        if (k >= 5)
            who = n + 7; /* a path rule decides: a principal no rule names */
    }
    snprintf(r->principal, sizeof(r->principal),
             s == S_NAMESPACES ? "spiffe://cluster.local/ns/ns-%u/sa/api"
                               : "spiffe://cluster.local/ns/shop/sa/svc-%u",
             who);
    if (s == S_PATHS || (s == S_MIXED && t % 10 >= 5 && t % 10 < 8))
        snprintf(r->path, sizeof(r->path), "/svc-%u//%sdmin/users?id=42", where, "%61");
    else if (s == S_MIXED && t % 10 == 8)
        snprintf(r->path, sizeof(r->path), "//internal/job-%u?x=%s", where, "%61");
    else
        snprintf(r->path, sizeof(r->path), "/api//items/%s/%u?page=2", "%61bc", where);
    r->msg.path = r->path;
    static const char *const h[][2] = {{"user-agent", "wrk/4.2"},
                                       {"accept", "*/*"},
                                       {"accept-encoding", "gzip"},
                                       {"x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"},
                                       {"content-type", "application/json"},
                                       {"x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"}};
    for (size_t i = 0; i < sizeof(h) / sizeof(h[0]); i++)
        px_msg_add(&r->arena, &r->msg, h[i][0], strlen(h[i][0]), h[i][1], strlen(h[i][1]), 1u << 20,
                   100);
    if (s == S_GENERIC && hit) {
        /* every rule is checked down to its last condition, and none matches */
        r->msg.method = "DELETE";
        snprintf(r->path, sizeof(r->path), "/public//%sbc/%u?page=2", "%61", where);
    }
    if (s == S_HEADERS && hit) {
        char name[32];
        snprintf(name, sizeof(name), "x-block-%u", (t / 2) * 2);
        px_msg_add(&r->arena, &r->msg, name, strlen(name), "1", 1, 1u << 20, 100);
    }
}

/* ns per decision, best of 5; *verdict gets what the request got. */
static double measure(const struct px_policy *p, const struct request *rq, long iters,
                      struct px_policy_decision *out)
{
    struct px_policy_request r = {.principal = rq->principal, .port = 8080, .req = &rq->msg};
    char scratch[256];
    double best = 1e30;
    uint64_t sum = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            struct px_policy_decision d;
            px_policy_decide(p, &r, scratch, sizeof(scratch), &d);
            sum += (uint64_t)d.verdict + (uintptr_t)d.rule;
        }
        double ns = (now_ns() - t0) / (double)iters;
        if (ns < best)
            best = ns;
    }
    px_policy_decide(p, &r, scratch, sizeof(scratch), out);
    if (sum == 42)
        puts(""); /* keep the loop */
    return best;
}

/* --file: the cost of one given policy for one given request. */
static int bench_file(const char *file, const char *method, const char *path, const char *principal,
                      char **hdrs, int nhdrs)
{
    struct px_policy *p = NULL;
    char *err = NULL;
    if (px_policy_load_file(file, &p, &err) != 0) {
        fprintf(stderr, "policy-bench: %s\n", err);
        free(err);
        return 1;
    }
    struct request rq;
    memset(&rq, 0, sizeof(rq));
    px_arena_init(&rq.arena);
    px_msg_init(&rq.msg);
    rq.msg.method = method;
    rq.msg.path = path;
    snprintf(rq.principal, sizeof(rq.principal), "%s", principal ? principal : "");
    for (int i = 0; i < nhdrs; i++) {
        char *colon = strchr(hdrs[i], ':');
        if (colon == NULL)
            continue;
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        if ((size_t)(colon - hdrs[i]) == 4 && strncmp(hdrs[i], "host", 4) == 0)
            rq.msg.authority = v;
        else
            px_msg_add(&rq.arena, &rq.msg, hdrs[i], (size_t)(colon - hdrs[i]), v, strlen(v),
                       1u << 20, 100);
    }
    struct px_policy_decision d;
    double one = measure(p, &rq, 2000, &d);
    long iters = (long)(4e7 / (one > 1 ? one : 1));
    double ns = measure(p, &rq, iters < 1000 ? 1000 : iters, &d);
    printf("%s: %zu rules: %s %s from %s: %.1f ns/decision: %s %s\n", file, px_policy_nrules(p),
           method, path, principal ? principal : "-", ns,
           d.verdict == PX_POLICY_ALLOW  ? "allow"
           : d.verdict == PX_POLICY_DENY ? "deny"
                                         : "400",
           d.rule ? d.rule : d.why);
    px_arena_deinit(&rq.arena);
    px_policy_free(p);
    return 0;
}

int main(int argc, char **argv)
{
    long base_iters = 0;
    bool json = false;
    const char *file = NULL, *method = "GET", *path = "/", *principal = NULL;
    char *hdrs[32];
    int nhdrs = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
            base_iters = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--file") == 0 && i + 1 < argc)
            file = argv[++i];
        else if (strcmp(argv[i], "--method") == 0 && i + 1 < argc)
            method = argv[++i];
        else if (strcmp(argv[i], "--path") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--principal") == 0 && i + 1 < argc)
            principal = argv[++i];
        else if (strcmp(argv[i], "--header") == 0 && i + 1 < argc && nhdrs < 32)
            hdrs[nhdrs++] = argv[++i];
        else {
            fprintf(stderr, "usage: policy-bench [--iterations N] [--json]\n"
                            "       policy-bench --file POLICY [--method M] [--path P] "
                            "[--principal ID] [--header 'name: value']...\n");
            return 2;
        }
    }
    if (file != NULL)
        return bench_file(file, method, path, principal, hdrs, nhdrs);
    static const unsigned sizes[] = {1, 100, 1000, 10000};
    if (!json)
        printf("%-11s %6s  %-4s  %12s  %s\n", "shape", "rules", "req", "ns/decision", "decision");
    else
        printf("[\n");
    bool first = true;
    for (int s = 0; s < NSHAPES; s++) {
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            unsigned n = sizes[k];
            json_t *doc = make_policy((enum shape)s, n);
            struct px_policy *p = NULL;
            char *err = NULL;
            double t0 = now_ns();
            if (px_policy_compile("bench", doc, &p, &err) != 0) {
                fprintf(stderr, "policy-bench: %s\n", err);
                return 1;
            }
            double compile_ms = (now_ns() - t0) / 1e6;
            json_decref(doc);
            for (int hit = 1; hit >= 0; hit--) {
                struct request rq;
                make_request((enum shape)s, n, hit, &rq);
                long iters = base_iters;
                if (iters <= 0) { /* about 0.04 s per repetition */
                    struct px_policy_decision d;
                    double one = measure(p, &rq, 2000, &d);
                    iters = (long)(4e7 / (one > 1 ? one : 1));
                    if (iters < 1000)
                        iters = 1000;
                }
                struct px_policy_decision d;
                double ns = measure(p, &rq, iters, &d);
                char what[160];
                snprintf(what, sizeof(what), "%s %s",
                         d.verdict == PX_POLICY_ALLOW  ? "allow"
                         : d.verdict == PX_POLICY_DENY ? "deny"
                                                       : "400",
                         d.rule ? d.rule : "-");
                if (json)
                    printf("%s  {\"shape\": \"%s\", \"rules\": %u, \"request\": \"%s\", "
                           "\"ns_per_decision\": %.1f, \"compile_ms\": %.2f, \"decision\": \"%s\"}",
                           first ? "" : ",\n", shape_names[s], n, hit ? "hit" : "miss", ns,
                           compile_ms, what);
                else
                    printf("%-11s %6u  %-4s  %12.1f  %s%s\n", shape_names[s], n,
                           hit ? "hit" : "miss", ns, what, hit ? "" : "");
                first = false;
                px_arena_deinit(&rq.arena);
            }
            if (!json)
                printf("%-11s %6u  compile %.2f ms\n", "", n, compile_ms);
            px_policy_free(p);
        }
    }
    if (json)
        printf("\n]\n");
    return 0;
}
