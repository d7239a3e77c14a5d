/* perf-micro: what the per-request decisions cost, outside the event loop
 * (benchmark 6 of perf/bench.sh). Linked against the proxy archive; drives
 * proxy/policy.h and proxy/routes.h directly.
 *
 *   perf-micro [-q] [-t] [-c PKI_DIR]   -q: shorter batches (smoke runs); -t: no banner
 *
 * Cases:
 *   policy  N rules, each "allow principal ns<i>/sa<i> GET /api/v<i>/..." (the
 *           common shape: one rule per caller), a request that matches the last
 *           rule, one from an unknown caller (default deny), and the same N rules
 *           all for ONE principal with different paths (what the principal index
 *           cannot narrow).
 *   route   px_routes_match with N host routes (the request matches the last one).
 *   pick    px_route_pick over N endpoints, all in our cluster (never measured, and
 *           measured with some requests in flight: the peak-EWMA cost); and 1,000
 *           endpoints, half of them in our cluster; and a 4-byte CTR_DRBG draw
 *           (pki_rng_fn), what each of its two draws cost before xorshift.
 *   tls     the public-key operations of one full mTLS handshake, as mbedTLS
 *           (the proxy's TLS library) does them: ECDHE (X25519 and P-256, a
 *           fresh context each time as in a handshake), ECDSA P-256 sign with
 *           the long-lived key, ECDSA verify with a long-lived and with a
 *           freshly loaded public key, and (-c DIR: root.pem + a.pem chain)
 *           parsing and verifying a peer's certificate chain; and sealing one
 *           16 KiB TLS record with each AEAD the proxy offers (AES-128-GCM,
 *           ChaCha20-Poly1305): the bulk cost of mTLS.
 *
 * Each case runs in batches; the reported ns/op is the fastest batch (the
 * least disturbed on a shared machine), with the median beside it.
 * Output: TSV "case\tn\tns_per_op_min\tns_per_op_median\tops". */
#include <jansson.h>
#include <mbedtls/chachapoly.h>
#include <mbedtls/ecdh.h>
#include <mbedtls/gcm.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/sha256.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/log.h"
#include "proxy/config.h"
#include "proxy/http.h"
#include "proxy/policy.h"
#include "proxy/routes.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"

static int quick;
static volatile uintptr_t sink;              /* keeps results alive */
static struct px_routes_state *micro_routes; /* the state the benchmark's routes are bound to */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef void (*op_fn)(void *arg);

/* Run op in batches sized to ~5 ms (quick: ~1 ms); print min and median ns/op. */
static void bench(const char *name, size_t n, op_fn op, void *arg)
{
    enum { BATCHES = 21 };
    double target = quick ? 1e6 : 5e6;
    size_t iters = 1;
    for (;;) { /* calibrate */
        double t = now_ns();
        for (size_t i = 0; i < iters; i++)
            op(arg);
        if (now_ns() - t > target / 4 || iters > (1u << 28))
            break;
        iters *= 2;
    }
    iters *= 4;
    double per[BATCHES];
    int nb = quick ? 7 : BATCHES;
    for (int b = 0; b < nb; b++) {
        double t = now_ns();
        for (size_t i = 0; i < iters; i++)
            op(arg);
        per[b] = (now_ns() - t) / (double)iters;
    }
    qsort(per, (size_t)nb, sizeof(per[0]), cmp_d);
    printf("%s\t%zu\t%.1f\t%.1f\t%zu\n", name, n, per[0], per[nb / 2], iters * (size_t)nb);
    fflush(stdout);
}

/* ---- policy ------------------------------------------------------------------------ */

struct pcase {
    struct px_policy *p;
    struct px_policy_request r;
    struct px_msg m;
    char scratch[256];
    enum px_policy_verdict want;
};

static void op_policy(void *arg)
{
    struct pcase *c = arg;
    struct px_policy_decision d;
    px_policy_decide(c->p, &c->r, c->scratch, sizeof(c->scratch), &d);
    sink += (uintptr_t)d.verdict + (uintptr_t)d.rule;
}

/* n rules; one_principal: all rules for ns0/sa0 (paths differ). */
static struct px_policy *make_policy(size_t n, int one_principal)
{
    json_t *rules = json_array();
    for (size_t i = 0; i < n; i++) {
        char who[128], path[64], name[32];
        size_t k = one_principal ? 0 : i;
        snprintf(who, sizeof(who), "spiffe://cluster.local/ns/ns%zu/sa/sa%zu", k, k);
        snprintf(path, sizeof(path), "/api/v%zu/*", i);
        snprintf(name, sizeof(name), "r%zu", i);
        json_array_append_new(rules,
                              json_pack("{s:s, s:s, s:{s:[s]}, s:{s:[s], s:[s], s:[i]}}", "name",
                                        name, "action", "allow", "from", "principals", who, "to",
                                        "methods", "GET", "paths", path, "ports", 8080));
    }
    json_t *doc = json_pack("{s:s, s:o}", "default", "deny", "rules", rules);
    struct px_policy *p = NULL;
    char *err = NULL;
    if (px_policy_compile("bench.json", doc, &p, &err) != 0) {
        fprintf(stderr, "perf-micro: policy: %s\n", err);
        exit(1);
    }
    json_decref(doc);
    return p;
}

static void policy_case(const char *name, struct px_policy *p, size_t n, const char *principal,
                        const char *path, enum px_policy_verdict want)
{
    struct pcase c;
    memset(&c, 0, sizeof(c));
    c.p = p;
    px_msg_init(&c.m);
    c.m.method = "GET";
    c.m.path = path;
    c.m.authority = "web.shop.svc.cluster.local:8080";
    c.r = (struct px_policy_request){.principal = principal, .port = 8080, .req = &c.m};
    struct px_policy_decision d;
    px_policy_decide(p, &c.r, c.scratch, sizeof(c.scratch), &d);
    if (d.verdict != want) {
        fprintf(stderr, "perf-micro: %s/%zu: verdict %d, wanted %d\n", name, n, (int)d.verdict,
                (int)want);
        exit(1);
    }
    bench(name, n, op_policy, &c);
}

static void run_policy(void)
{
    static const size_t sizes[] = {1, 100, 1000};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];
        char who[128], path[64];
        snprintf(who, sizeof(who), "spiffe://cluster.local/ns/ns%zu/sa/sa%zu", n - 1, n - 1);
        snprintf(path, sizeof(path), "/api/v%zu/items/42?page=2", n - 1);
        struct px_policy *p = make_policy(n, 0);
        policy_case("policy_allow_last_rule", p, n, who, path, PX_POLICY_ALLOW);
        policy_case("policy_unknown_caller_deny", p, n, "spiffe://cluster.local/ns/other/sa/nobody",
                    path, PX_POLICY_DENY);
        px_policy_free(p);
        p = make_policy(n, 1);
        policy_case("policy_one_principal_allow_last", p, n, "spiffe://cluster.local/ns/ns0/sa/sa0",
                    path, PX_POLICY_ALLOW);
        px_policy_free(p);
    }
}

/* ---- routes ------------------------------------------------------------------------- */

static struct px_routes *make_routes(size_t nroutes, size_t neps, int split)
{
    json_t *routes = json_array();
    for (size_t r = 0; r < nroutes; r++) {
        json_t *eps = json_array();
        size_t ne = r + 1 == nroutes ? neps : 1;
        for (size_t i = 0; i < ne; i++) {
            char addr[48];
            snprintf(addr, sizeof(addr), "10.%zu.%zu.%zu:8080", r % 200, i / 250, i % 250 + 1);
            json_array_append_new(eps, json_pack("{s:s, s:s}", "address", addr, "cluster",
                                                 split && i % 2 ? "west" : "east"));
        }
        char host[64];
        snprintf(host, sizeof(host), "svc%zu.shop.svc.cluster.local", r);
        json_array_append_new(routes,
                              json_pack("{s:{s:s}, s:o}", "match", "host", host, "endpoints", eps));
    }
    json_t *doc = json_pack("{s:o}", "routes", routes);
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    struct px_routes *out = NULL;
    char *err = NULL;
    if (px_routes_parse("routes.json", text, strlen(text), &out, &err) != 0) {
        fprintf(stderr, "perf-micro: routes: %s\n", err);
        exit(1);
    }
    free(text);
    /* the proxy binds shared health records only to live snapshots (a step of
     * px_routes_start); give every endpoint a fresh healthy one of ours, and every
     * route our routes state (locality "east") */
    for (size_t r = 0; r < out->n; r++) {
        out->routes[r].rs = micro_routes;
        for (size_t i = 0; i < out->routes[r].neps; i++) {
            struct px_endpoint *e = &out->routes[r].eps[i];
            e->st = calloc(1, sizeof(*e->st));
            e->st->addr = e->addr;
        }
    }
    return out;
}

static void free_routes(struct px_routes *out)
{
    for (size_t r = 0; r < out->n; r++)
        for (size_t i = 0; i < out->routes[r].neps; i++)
            free(out->routes[r].eps[i].st);
    px_routes_unref(out);
}

struct rcase {
    struct px_routes *r;
    struct px_route *rt;
    char host[80];
};

/* Latency samples for every endpoint of rt (0.2-0.3 ms) and one request in
 * flight on every third: what a pick meets in a running proxy. */
static void measure(struct px_route *rt)
{
    for (size_t i = 0; i < rt->neps; i++) {
        struct px_endpoint *e = &rt->eps[i];
        px_route_try_start(e);
        px_route_try_head(rt, e, 200 + 10 * (i % 10));
        if (i % 3 != 0)
            px_route_report(rt, e, PX_TRY_OK, 0);
    }
}

static void op_pick(void *arg)
{
    struct rcase *c = arg;
    sink += (uintptr_t)px_route_pick(c->rt, NULL, 0);
}

static void op_match(void *arg)
{
    struct rcase *c = arg;
    sink += (uintptr_t)px_routes_match(c->r, c->host, NULL);
}

/* 4 bytes from the CTR_DRBG the certificates use (pki_rng_fn): what each of
 * px_route_pick's two random draws cost until routes.c moved to xorshift (41d870b);
 * kept as the reference for any per-request use of the DRBG. */
static void op_rng(void *arg)
{
    uint32_t v;
    (void)arg;
    pki_rng_fn(NULL, (unsigned char *)&v, sizeof(v));
    sink += v;
}

static void run_routes(void)
{
    static const size_t sizes[] = {10, 100, 1000};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        struct rcase c;
        c.r = make_routes(1, sizes[s], 0);
        c.rt = &c.r->routes[0];
        bench("lb_pick_local", sizes[s], op_pick, &c);
        free_routes(c.r);
    }
    /* the same picks once every endpoint has latency samples and some have requests in
     * flight: the peak-EWMA cost (decay, stall bound) on top of the draws */
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        struct rcase c;
        c.r = make_routes(1, sizes[s], 0);
        c.rt = &c.r->routes[0];
        measure(c.rt);
        bench("lb_pick_local_measured", sizes[s], op_pick, &c);
        free_routes(c.r);
    }
    bench("lb_random_draw_ctr_drbg", 1, op_rng, NULL);
    struct rcase c;
    c.r = make_routes(1, 1000, 1);
    c.rt = &c.r->routes[0];
    bench("lb_pick_half_local", 1000, op_pick, &c);
    free_routes(c.r);
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        c.r = make_routes(sizes[s], 1, 0);
        snprintf(c.host, sizeof(c.host), "svc%zu.shop.svc.cluster.local:8080", sizes[s] - 1);
        if (px_routes_match(c.r, c.host, NULL) == NULL) {
            fprintf(stderr, "perf-micro: no route for %s\n", c.host);
            exit(1);
        }
        bench("route_match_last", sizes[s], op_match, &c);
        free_routes(c.r);
    }
}

/* ---- TLS public-key operations ---------------------------------------------------- */

struct tcase {
    mbedtls_ecdsa_context key; /* long-lived: the server's own key */
    unsigned char hash[32], sig[MBEDTLS_ECDSA_MAX_LEN];
    size_t siglen;
    mbedtls_ecp_group_id curve;
    mbedtls_ecp_point peer; /* the other side's ECDHE share (legacy context: Qp) */
    mbedtls_x509_crt root;
    const char *chain_file;
    unsigned char *chain_pem;
    size_t chain_len;
};

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "perf-micro: %s: -0x%04x\n", what, (unsigned)-rc);
        exit(1);
    }
}

static void op_ecdhe(void *arg)
{
    struct tcase *c = arg;
    mbedtls_ecdh_context e;
    unsigned char buf[128], secret[66];
    size_t olen;
    mbedtls_ecdh_init(&e);
    check(mbedtls_ecdh_setup(&e, c->curve), "ecdh setup");
    check(mbedtls_ecdh_make_public(&e, &olen, buf, sizeof(buf), pki_rng_fn, pki_rng()),
          "ecdh public");
    check(mbedtls_ecp_copy(&e.Qp, &c->peer), "ecdh peer");
    check(mbedtls_ecdh_calc_secret(&e, &olen, secret, sizeof(secret), pki_rng_fn, pki_rng()),
          "ecdh secret");
    mbedtls_ecdh_free(&e);
    sink += olen;
}

static void op_sign(void *arg)
{
    struct tcase *c = arg;
    size_t len;
    check(mbedtls_ecdsa_write_signature(&c->key, MBEDTLS_MD_SHA256, c->hash, 32, c->sig, &len,
                                        pki_rng_fn, pki_rng()),
          "sign");
    sink += len;
}

static void op_verify(void *arg)
{
    struct tcase *c = arg;
    check(mbedtls_ecdsa_read_signature(&c->key, c->hash, 32, c->sig, c->siglen), "verify");
}

/* A peer's key is new in every handshake: load the group and point afresh. */
static void op_verify_fresh(void *arg)
{
    struct tcase *c = arg;
    mbedtls_ecdsa_context k;
    mbedtls_ecdsa_init(&k);
    check(mbedtls_ecp_group_load(&k.grp, MBEDTLS_ECP_DP_SECP256R1), "group");
    check(mbedtls_ecp_copy(&k.Q, &c->key.Q), "copy");
    check(mbedtls_ecdsa_read_signature(&k, c->hash, 32, c->sig, c->siglen), "verify");
    mbedtls_ecdsa_free(&k);
}

static void op_chain_parse(void *arg)
{
    struct tcase *c = arg;
    mbedtls_x509_crt chain;
    mbedtls_x509_crt_init(&chain);
    check(mbedtls_x509_crt_parse(&chain, c->chain_pem, c->chain_len), "parse chain");
    mbedtls_x509_crt_free(&chain);
}

static void op_chain_verify(void *arg)
{
    struct tcase *c = arg;
    mbedtls_x509_crt chain;
    uint32_t flags;
    mbedtls_x509_crt_init(&chain);
    check(mbedtls_x509_crt_parse(&chain, c->chain_pem, c->chain_len), "parse chain");
    check(mbedtls_x509_crt_verify(&chain, &c->root, NULL, NULL, &flags, NULL, NULL),
          "verify chain");
    mbedtls_x509_crt_free(&chain);
}

struct rcrypt {
    mbedtls_gcm_context gcm;
    mbedtls_chachapoly_context cp;
    unsigned char key[32], iv[12], aad[13], tag[16];
    unsigned char in[16384], out[16384];
};

static void op_gcm(void *arg)
{
    struct rcrypt *c = arg;
    check(mbedtls_gcm_crypt_and_tag(&c->gcm, MBEDTLS_GCM_ENCRYPT, sizeof(c->in), c->iv, 12, c->aad,
                                    13, c->in, c->out, 16, c->tag),
          "gcm");
}

static void op_chachapoly(void *arg)
{
    struct rcrypt *c = arg;
    check(mbedtls_chachapoly_encrypt_and_tag(&c->cp, sizeof(c->in), c->iv, c->aad, 13, c->in,
                                             c->out, c->tag),
          "chachapoly");
}

static void run_records(void)
{
    static struct rcrypt c;
    memset(&c, 0x5a, sizeof(c.key) + sizeof(c.iv));
    mbedtls_gcm_init(&c.gcm);
    mbedtls_chachapoly_init(&c.cp);
    check(mbedtls_gcm_setkey(&c.gcm, MBEDTLS_CIPHER_ID_AES, c.key, 128), "gcm key");
    check(mbedtls_chachapoly_setkey(&c.cp, c.key), "chachapoly key");
    bench("tls_record_16k_aes128gcm", sizeof(c.in), op_gcm, &c);
    bench("tls_record_16k_chacha20poly1305", sizeof(c.in), op_chachapoly, &c);
    mbedtls_gcm_free(&c.gcm);
    mbedtls_chachapoly_free(&c.cp);
}

static void run_tls(const char *dir)
{
    static struct tcase c;
    mbedtls_ecdsa_init(&c.key);
    check(mbedtls_ecdsa_genkey(&c.key, MBEDTLS_ECP_DP_SECP256R1, pki_rng_fn, pki_rng()), "genkey");
    check(mbedtls_sha256_ret((const unsigned char *)"handshake transcript", 20, c.hash, 0), "sha");
    check(mbedtls_ecdsa_write_signature(&c.key, MBEDTLS_MD_SHA256, c.hash, 32, c.sig, &c.siglen,
                                        pki_rng_fn, pki_rng()),
          "sign");
    static const mbedtls_ecp_group_id curves[] = {MBEDTLS_ECP_DP_CURVE25519,
                                                  MBEDTLS_ECP_DP_SECP256R1};
    static const char *const names[] = {"tls_ecdhe_x25519", "tls_ecdhe_p256"};
    for (int i = 0; i < 2; i++) {
        mbedtls_ecp_group g;
        mbedtls_mpi d;
        mbedtls_ecp_group_init(&g);
        mbedtls_mpi_init(&d);
        mbedtls_ecp_point_init(&c.peer);
        check(mbedtls_ecp_group_load(&g, curves[i]), "group");
        check(mbedtls_ecp_gen_keypair(&g, &d, &c.peer, pki_rng_fn, pki_rng()), "peer key");
        c.curve = curves[i];
        bench(names[i], 1, op_ecdhe, &c);
        mbedtls_ecp_point_free(&c.peer);
        mbedtls_mpi_free(&d);
        mbedtls_ecp_group_free(&g);
    }
    bench("tls_ecdsa_p256_sign", 1, op_sign, &c);
    bench("tls_ecdsa_p256_verify_known_key", 1, op_verify, &c);
    bench("tls_ecdsa_p256_verify_new_key", 1, op_verify_fresh, &c);
    if (dir != NULL) {
        char path[512];
        mbedtls_x509_crt_init(&c.root);
        snprintf(path, sizeof(path), "%s/root.pem", dir);
        check(mbedtls_x509_crt_parse_file(&c.root, path), path);
        snprintf(path, sizeof(path), "%s/a.pem", dir);
        FILE *f = fopen(path, "rb");
        if (f == NULL) {
            perror(path);
            exit(1);
        }
        c.chain_pem = calloc(1, 65536);
        c.chain_len = fread(c.chain_pem, 1, 65535, f) + 1; /* PEM: length includes the NUL */
        fclose(f);
        bench("tls_peer_chain_parse", 2, op_chain_parse, &c);
        bench("tls_peer_chain_parse_verify", 2, op_chain_verify, &c);
        mbedtls_x509_crt_free(&c.root);
        free(c.chain_pem);
    }
    mbedtls_ecdsa_free(&c.key);
}

int main(int argc, char **argv)
{
    int ch, tsv = 0;
    const char *pki_dir = NULL;
    while ((ch = getopt(argc, argv, "qtc:")) != -1) {
        if (ch == 'q')
            quick = 1;
        else if (ch == 't')
            tsv = 1;
        else if (ch == 'c')
            pki_dir = optarg;
        else {
            fprintf(stderr, "usage: perf-micro [-q] [-t] [-c PKI_DIR]\n");
            return 2;
        }
    }
    cm_log_set_level(CM_LOG_ERROR);
    /* px_route_pick ranks against the routes state's cluster, from the config: "east" */
    static const char cfg_text[] =
        "{\"cluster\": \"east\", \"listeners\": [{\"name\": \"b\", \"address\": "
        "\"127.0.0.1:0\", \"direction\": \"outbound\", \"upstream\": \"127.0.0.1:1\"}]}";
    static struct px_server srv;
    char *err = NULL;
    if (px_config_parse("micro.json", cfg_text, sizeof(cfg_text) - 1, &srv.cfg, &err) != 0) {
        fprintf(stderr, "perf-micro: %s\n", err);
        return 1;
    }
    micro_routes = px_routes_state_new(srv.cfg->cluster);
    if (!tsv)
        fprintf(stderr, "perf-micro: ns per operation, fastest and median of the batches\n");
    printf("case\tn\tns_per_op_min\tns_per_op_median\tops\n");
    run_policy();
    run_routes();
    run_tls(pki_dir);
    run_records();
    px_routes_state_free(micro_routes);
    px_config_free(srv.cfg);
    pki_rng_free();
    return 0;
}
