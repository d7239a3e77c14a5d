/* Unit tests of injector/token.c: the service-account token verifier.
 *  - data-driven tokens (test/data/token/cases/, made once by
 *    test/tools/mint-token.js vectors: RS256 and ES256 from Node's crypto,
 *    every refusal the CA knows) checked against their expected reason;
 *  - JWKS documents (test/data/token/jwks/: kept, skipped and refused keys);
 *  - base64url edge cases, claims alone (the static checker), ES256 tokens
 *    signed here with mbedTLS (raw r || s, DER, r = 0, s = n), bounds;
 *  - the JWKS file: reload on change, a bad file keeps the old keys;
 *  - concurrent verification from several threads.
 * Data is found under $REMORA_ROOT (or the current directory). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/base64.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>

#include "certs/pki.h"
#include "common/xalloc.h"
#include "injector/token.h"
#include "injector/token_int.h"

#define NOW (1700000000 + 600) /* the vectors' "now" (mint-token.js NOW + 600) */

static char data_dir[1024];

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n - 1 == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

static char *data_path(const char *rel)
{
    return cm_xasprintf("%s/%s", data_dir, rel);
}

static struct ij_jwks *load_jwks(const char *rel)
{
    char *p = data_path(rel), *err = NULL;
    size_t len;
    char *buf = slurp(p, &len);
    assert_non_null(buf);
    struct ij_jwks *k = NULL;
    int rc = ij_jwks_parse(rel, buf, len, &k, &err);
    if (rc != 0)
        fail_msg("%s: %s", rel, err);
    free(buf);
    free(p);
    return k;
}

static enum ij_token_reason verify(struct ij_jwks *k, const char *tok, int64_t now,
                                   struct ij_token_claims *c, char **err)
{
    enum ij_token_reason why = IJ_TOKEN__COUNT;
    int rc = ij_token_verify(k, tok, strlen(tok), "remora-ca", now, c, &why, err);
    assert_true((rc == 0) == (why == IJ_TOKEN_OK));
    if (rc != 0)
        assert_non_null(*err);
    return why;
}

/* ---- the vectors ------------------------------------------------------------------------ */

static void test_vectors(void **state)
{
    (void)state;
    struct ij_jwks *k = load_jwks("jwks.json");
    assert_int_equal(ij_jwks_count(k), 2);
    char *list = data_path("cases.txt");
    FILE *f = fopen(list, "r");
    assert_non_null(f);
    char line[256];
    int n = 0, ok = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        char name[128], want[64];
        if (sscanf(line, "%127s %63s", name, want) != 2)
            continue;
        char rel[200];
        snprintf(rel, sizeof(rel), "cases/%s.jwt", name);
        char *p = data_path(rel);
        char *tok = slurp(p, NULL);
        assert_non_null(tok);
        struct ij_token_claims c;
        char *err = NULL;
        enum ij_token_reason why = verify(k, tok, NOW, &c, &err);
        if (strcmp(ij_token_reason_name(why), want) != 0)
            fail_msg("%s: got %s (%s), want %s", name, ij_token_reason_name(why),
                     err ? err : "no error", want);
        if (why == IJ_TOKEN_OK) {
            ok++;
            bool other = strcmp(name, "ok-other-ns") == 0;
            assert_string_equal(c.ns, other ? "payments" : "shop");
            assert_string_equal(c.sa, other ? "ledger" : "web");
            assert_true(c.exp > NOW - IJ_TOKEN_SKEW_S);
            assert_string_equal(c.kid, strstr(name, "es256") ? "ec-1" : "rsa-1");
        }
        free(err);
        free(tok);
        free(p);
        n++;
    }
    fclose(f);
    free(list);
    assert_true(n >= 40);
    assert_int_equal(ok, 8);
    ij_jwks_unref(k);
}

/* What the messages say matters: an operator reads them in the log. */
static void test_messages(void **state)
{
    (void)state;
    static const struct {
        const char *name, *text;
    } cases[] = {
        {"alg-none", "alg \"none\""},
        {"alg-hs256", "symmetric"},
        {"unknown-kid", "kid \"nobody\" is not in the JWKS"},
        {"expired", "expired at 2023-11-14T21:13:20Z"},
        {"wrong-aud", "do not include \"remora-ca\""},
        {"no-k8s", "no kubernetes.io claim"},
        {"no-exp", "no exp claim"},
        {"bad-sig-es256", "does not verify with JWKS key \"ec-1\" (ES256)"},
        {"five-parts", "JWE"},
        {"sub-disagrees", "disagrees"},
    };
    struct ij_jwks *k = load_jwks("jwks.json");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char rel[200];
        snprintf(rel, sizeof(rel), "cases/%s.jwt", cases[i].name);
        char *p = data_path(rel), *tok = slurp(p, NULL), *err = NULL;
        struct ij_token_claims c;
        assert_int_not_equal(verify(k, tok, NOW, &c, &err), IJ_TOKEN_OK);
        if (strstr(err, cases[i].text) == NULL)
            fail_msg("%s: \"%s\" lacks \"%s\"", cases[i].name, err, cases[i].text);
        free(err);
        free(tok);
        free(p);
    }
    ij_jwks_unref(k);
}

/* The same good token moves through time: valid, then expired past the skew. */
static void test_time(void **state)
{
    (void)state;
    struct ij_jwks *k = load_jwks("jwks.json");
    char *p = data_path("cases/ok-rs256.jwt"), *tok = slurp(p, NULL), *err = NULL;
    struct ij_token_claims c;
    int64_t exp = 1700000000 + 3600, iat = 1700000000;
    assert_int_equal(verify(k, tok, iat - IJ_TOKEN_SKEW_S, &c, &err), IJ_TOKEN_OK);
    assert_int_equal(verify(k, tok, iat - IJ_TOKEN_SKEW_S - 1, &c, &err), IJ_TOKEN_NOT_YET_VALID);
    free(err);
    err = NULL;
    assert_int_equal(verify(k, tok, exp + IJ_TOKEN_SKEW_S - 1, &c, &err), IJ_TOKEN_OK);
    assert_int_equal(verify(k, tok, exp + IJ_TOKEN_SKEW_S, &c, &err), IJ_TOKEN_EXPIRED);
    free(err);
    free(tok);
    free(p);
    ij_jwks_unref(k);
}

/* ---- JWKS documents ---------------------------------------------------------------------- */

static void test_jwks_cases(void **state)
{
    (void)state;
    char *list = data_path("jwks/cases.txt");
    FILE *f = fopen(list, "r");
    assert_non_null(f);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *sp = strchr(line, ' ');
        if (sp == NULL)
            continue;
        *sp = '\0';
        const char *file = line, *want = sp + 1;
        char rel[600];
        snprintf(rel, sizeof(rel), "jwks/%s", file);
        char *p = data_path(rel), *err = NULL;
        size_t len;
        char *buf = slurp(p, &len);
        assert_non_null(buf);
        struct ij_jwks *k = NULL;
        int rc = ij_jwks_parse(file, buf, len, &k, &err);
        if (strncmp(file, "ok-", 3) == 0) {
            if (rc != 0)
                fail_msg("%s: %s", file, err);
            char got[32];
            snprintf(got, sizeof(got), "%zu %zu", ij_jwks_count(k), ij_jwks_skipped(k));
            if (strcmp(got, want) != 0)
                fail_msg("%s: keys/skipped %s, want %s", file, got, want);
            ij_jwks_unref(k);
        } else {
            if (rc == 0)
                fail_msg("%s: accepted", file);
            assert_null(k);
            if (strstr(err, want) == NULL || strncmp(err, file, strlen(file)) != 0)
                fail_msg("%s: \"%s\" lacks \"%s\" (or the file name)", file, err, want);
        }
        free(err);
        free(buf);
        free(p);
        n++;
    }
    fclose(f);
    free(list);
    assert_true(n >= 20);
}

/* A JWKS whose only RSA key has no kid: tokens without a kid use it; with
 * two EC keys and no kid, the choice is refused. */
static void test_no_kid(void **state)
{
    (void)state;
    struct ij_jwks *k = load_jwks("jwks/ok-no-kid.json");
    char *p = data_path("cases/ok-rs256.jwt"), *tok = slurp(p, NULL), *err = NULL;
    struct ij_token_claims c;
    /* the token names kid rsa-1, which this JWKS does not know */
    assert_int_equal(verify(k, tok, NOW, &c, &err), IJ_TOKEN_UNKNOWN_KEY);
    free(err);
    free(tok);
    free(p);
    ij_jwks_unref(k);
}

/* ---- base64url ----------------------------------------------------------------------- */

static void test_b64url(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out; /* out NULL: refused */
    } cases[] = {
        {"", ""},        {"QQ", "A"},     {"QUI", "AB"},   {"QUJD", "ABC"}, {"-_8", "\xfb\xff"},
        {"Q", NULL},     {"QQ==", NULL},  {"QQ=", NULL},   {"Q Q", NULL},   {"+/8", NULL},
        {"QU\nI", NULL}, {"QUJDR", NULL}, {"QUJ\t", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned char *out = NULL;
        size_t len = 0;
        int rc = ij_token_b64url_decode(cases[i].in, strlen(cases[i].in), &out, &len);
        if (cases[i].out == NULL) {
            if (rc == 0)
                fail_msg("\"%s\" accepted", cases[i].in);
            continue;
        }
        if (rc != 0)
            fail_msg("\"%s\" refused", cases[i].in);
        assert_int_equal(len, strlen(cases[i].out));
        assert_memory_equal(out, cases[i].out, len);
        assert_int_equal(out[len], '\0');
        free(out);
    }
}

/* ---- claims alone ------------------------------------------------------------------------ */

static void test_claims(void **state)
{
    (void)state;
#define K8S "\"kubernetes.io\":{\"namespace\":\"shop\",\"serviceaccount\":{\"name\":\"web\"}}"
    static const struct {
        const char *payload, *want;
    } cases[] = {
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600," K8S "}", "ok"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600.75," K8S "}", "ok"},
        {"{\"aud\":\"remora-ca\",\"exp\":1e300," K8S "}", "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":-1e300," K8S "}", "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":-9223372036854775807," K8S "}", "expired"},
        {"{\"aud\":\"remora-ca\",\"exp\":9223372036854775807," K8S "}", "ok"},
        {"{\"aud\":\"remora-ca\",\"exp\":true," K8S "}", "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":null," K8S "}", "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"nbf\":\"x\"," K8S "}", "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"iat\":9223372036854775807," K8S "}",
         "not_yet_valid"},
        {"{\"aud\":[],\"exp\":1700003600," K8S "}", "audience"},
        {"{\"aud\":[\"a\",7,\"remora-ca\"],\"exp\":1700003600," K8S "}", "audience"},
        {"{\"aud\":[\"a\",\"remora-ca\"],\"exp\":1700003600," K8S "}", "ok"},
        {"{\"aud\":\"remora-ca-x\",\"exp\":1700003600," K8S "}", "audience"},
        {"{\"aud\":\"REMORA-CA\",\"exp\":1700003600," K8S "}", "audience"},
        {"{\"aud\":{\"remora-ca\":1},\"exp\":1700003600," K8S "}", "audience"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"kubernetes.io\":[]}", "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"kubernetes.io\":{\"namespace\":\"shop\","
         "\"serviceaccount\":\"web\"}}",
         "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"kubernetes.io\":{\"namespace\":\"shop\","
         "\"serviceaccount\":{\"name\":\"web\"},\"pod\":\"p\"}}",
         "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"kubernetes.io\":{\"namespace\":\"shop\","
         "\"serviceaccount\":{\"name\":\"web\",\"uid\":5}}}",
         "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"kubernetes.io\":{\"namespace\":\"shop\","
         "\"serviceaccount\":{\"name\":\"web\"},\"pod\":{\"name\":\"web-0\",\"uid\":\"u\"}}}",
         "ok"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"kubernetes.io\":{\"namespace\":"
         "\"0123456789012345678901234567890123456789012345678901234567890123\","
         "\"serviceaccount\":{\"name\":\"web\"}}}",
         "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"sub\":\"system:serviceaccount:shop:web\"," K8S
         "}",
         "ok"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"sub\":\"system:serviceaccount:shop:"
         "webx\"," K8S "}",
         "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"sub\":\"system:serviceaccount:sho:pweb\"," K8S
         "}",
         "claims"},
        {"{\"aud\":\"remora-ca\",\"exp\":1700003600,\"sub\":\"someone-else\"," K8S "}", "ok"},
    };
#undef K8S
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_error_t je;
        json_t *p = json_loads(cases[i].payload, 0, &je);
        if (p == NULL)
            fail_msg("case %zu: bad test JSON: %s", i, je.text);
        struct ij_token_claims c;
        memset(&c, 0, sizeof(c));
        enum ij_token_reason why = IJ_TOKEN_OK;
        char *err = NULL;
        ij_token_check_claims(p, "remora-ca", NOW, &c, &why, &err);
        if (strcmp(ij_token_reason_name(why), cases[i].want) != 0)
            fail_msg("case %zu: got %s (%s), want %s", i, ij_token_reason_name(why), err ? err : "",
                     cases[i].want);
        if (why == IJ_TOKEN_OK) {
            assert_string_equal(c.ns, "shop");
            assert_string_equal(c.sa, "web");
        }
        free(err);
        json_decref(p);
    }
}

/* ---- ES256 tokens made here with mbedTLS ----------------------------------------------------- */

static char *b64url(const unsigned char *in, size_t len)
{
    size_t need = 0;
    mbedtls_base64_encode(NULL, 0, &need, in, len);
    unsigned char *buf = cm_xmalloc(need + 1);
    size_t n = 0;
    assert_int_equal(mbedtls_base64_encode(buf, need + 1, &n, in, len), 0);
    while (n > 0 && buf[n - 1] == '=')
        n--;
    for (size_t i = 0; i < n; i++)
        buf[i] = buf[i] == '+' ? '-' : buf[i] == '/' ? '_' : buf[i];
    buf[n] = '\0';
    return (char *)buf;
}

struct eckey {
    mbedtls_pk_context pk;
    struct ij_jwks *jwks;
};

static void eckey_init(struct eckey *e, const char *kid)
{
    char *err = NULL;
    mbedtls_pk_init(&e->pk);
    assert_int_equal(pki_key_generate(&e->pk, &err), 0);
    mbedtls_ecp_keypair *ec = mbedtls_pk_ec(e->pk);
    unsigned char x[32], y[32];
    assert_int_equal(mbedtls_mpi_write_binary(&ec->Q.X, x, 32), 0);
    assert_int_equal(mbedtls_mpi_write_binary(&ec->Q.Y, y, 32), 0);
    char *xs = b64url(x, 32), *ys = b64url(y, 32);
    char *doc = cm_xasprintf(
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"}]}",
        kid, xs, ys);
    assert_int_equal(ij_jwks_parse("generated", doc, strlen(doc), &e->jwks, &err), 0);
    free(xs);
    free(ys);
    free(doc);
}

static void eckey_deinit(struct eckey *e)
{
    mbedtls_pk_free(&e->pk);
    ij_jwks_unref(e->jwks);
}

enum sig_form { SIG_RAW, SIG_DER, SIG_R_ZERO, SIG_S_N };

static char *es256_token(struct eckey *e, const char *kid, const char *payload, enum sig_form form)
{
    char *hj = cm_xasprintf("{\"alg\":\"ES256\",\"kid\":\"%s\",\"typ\":\"JWT\"}", kid);
    char *h = b64url((const unsigned char *)hj, strlen(hj));
    char *p = b64url((const unsigned char *)payload, strlen(payload));
    char *input = cm_xasprintf("%s.%s", h, p);
    unsigned char hash[32], sig[MBEDTLS_ECDSA_MAX_LEN];
    size_t siglen = 0;
    assert_int_equal(mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256),
                                (const unsigned char *)input, strlen(input), hash),
                     0);
    mbedtls_ecp_keypair *ec = mbedtls_pk_ec(e->pk);
    if (form == SIG_DER) {
        assert_int_equal(mbedtls_ecdsa_write_signature(ec, MBEDTLS_MD_SHA256, hash, 32, sig,
                                                       &siglen, pki_rng_fn, NULL),
                         0);
    } else {
        mbedtls_mpi r, s;
        mbedtls_mpi_init(&r);
        mbedtls_mpi_init(&s);
        assert_int_equal(mbedtls_ecdsa_sign(&ec->grp, &r, &s, &ec->d, hash, 32, pki_rng_fn, NULL),
                         0);
        if (form == SIG_R_ZERO)
            mbedtls_mpi_lset(&r, 0);
        if (form == SIG_S_N)
            mbedtls_mpi_copy(&s, &ec->grp.N);
        assert_int_equal(mbedtls_mpi_write_binary(&r, sig, 32), 0);
        assert_int_equal(mbedtls_mpi_write_binary(&s, sig + 32, 32), 0);
        siglen = 64;
        mbedtls_mpi_free(&r);
        mbedtls_mpi_free(&s);
    }
    char *s64 = b64url(sig, siglen);
    char *tok = cm_xasprintf("%s.%s", input, s64);
    free(hj);
    free(h);
    free(p);
    free(input);
    free(s64);
    return tok;
}

#define GOOD_PAYLOAD                                                                               \
    "{\"aud\":[\"remora-ca\"],\"exp\":1700003600,\"iat\":1700000000,"                              \
    "\"sub\":\"system:serviceaccount:shop:web\",\"kubernetes.io\":{\"namespace\":\"shop\","        \
    "\"serviceaccount\":{\"name\":\"web\",\"uid\":\"u-1\"},\"pod\":{\"name\":\"web-0\","           \
    "\"uid\":\"u-2\"}}}"

static void test_es256_mbedtls(void **state)
{
    (void)state;
    struct eckey e;
    eckey_init(&e, "gen-1");
    struct ij_token_claims c;
    char *err = NULL;
    char *tok = es256_token(&e, "gen-1", GOOD_PAYLOAD, SIG_RAW);
    assert_int_equal(verify(e.jwks, tok, NOW, &c, &err), IJ_TOKEN_OK);
    assert_string_equal(c.pod, "web-0");
    assert_string_equal(c.pod_uid, "u-2");
    assert_string_equal(c.sa_uid, "u-1");
    assert_string_equal(c.kid, "gen-1");
    assert_int_equal(c.exp, 1700003600);
    /* the same token, one payload character changed */
    char *dot = strchr(tok, '.');
    dot[3] = dot[3] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(e.jwks, tok, NOW, &c, &err), IJ_TOKEN_SIGNATURE);
    free(tok);
    static const enum sig_form bad[] = {SIG_DER, SIG_R_ZERO, SIG_S_N};
    for (size_t i = 0; i < 3; i++) {
        tok = es256_token(&e, "gen-1", GOOD_PAYLOAD, bad[i]);
        assert_int_equal(verify(e.jwks, tok, NOW, &c, &err), IJ_TOKEN_SIGNATURE);
        free(tok);
    }
    /* a key the JWKS does not hold, under the JWKS's kid */
    struct eckey other;
    eckey_init(&other, "gen-1");
    tok = es256_token(&other, "gen-1", GOOD_PAYLOAD, SIG_RAW);
    assert_int_equal(verify(e.jwks, tok, NOW, &c, &err), IJ_TOKEN_SIGNATURE);
    assert_int_equal(verify(other.jwks, tok, NOW, &c, &err), IJ_TOKEN_OK);
    free(tok);
    eckey_deinit(&other);
    free(err);
    eckey_deinit(&e);
}

static void test_bounds(void **state)
{
    (void)state;
    struct ij_jwks *k = load_jwks("jwks.json");
    struct ij_token_claims c;
    enum ij_token_reason why;
    char *err = NULL;
    /* over the bound: refused before anything is decoded */
    size_t big = IJ_TOKEN_MAX + 1;
    char *tok = cm_xmalloc(big + 1);
    memset(tok, 'A', big);
    tok[10] = tok[20] = '.';
    tok[big] = '\0';
    assert_int_not_equal(ij_token_verify(k, tok, big, "remora-ca", NOW, &c, &why, &err), 0);
    assert_int_equal(why, IJ_TOKEN_MALFORMED);
    assert_non_null(strstr(err, "at most 16384"));
    /* at the bound: a valid header, a huge payload: the signature fails first */
    const char *hdr = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0"; /* {"alg":"RS256","kid":"rsa-1"} */
    memcpy(tok, hdr, strlen(hdr));
    tok[strlen(hdr)] = '.';
    tok[IJ_TOKEN_MAX - 9] = '.'; /* an 8-character signature */
    assert_int_not_equal(ij_token_verify(k, tok, IJ_TOKEN_MAX, "remora-ca", NOW, &c, &why, &err),
                         0);
    assert_int_equal(why, IJ_TOKEN_SIGNATURE);
    /* NUL bytes inside: a token is text */
    char nul[] = "eyJhbGciOiJSUzI1NiJ9\0.e30.AAAA";
    assert_int_not_equal(ij_token_verify(k, nul, sizeof(nul) - 1, "remora-ca", NOW, &c, &why, &err),
                         0);
    assert_int_equal(why, IJ_TOKEN_MALFORMED);
    free(tok);
    free(err);
    ij_jwks_unref(k);
}

/* ---- the JWKS file --------------------------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0); /* a new inode, as a ConfigMap swap */
}

static void test_jwks_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/remora-jwks.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[600];
    snprintf(path, sizeof(path), "%s/jwks.json", dir);
    char *p1 = data_path("jwks.json"), *p2 = data_path("jwks/ok-mixed.json");
    char *one = slurp(p1, NULL), *two = slurp(p2, NULL);
    char *err = NULL;
    struct ij_jwks_file *f = NULL;

    assert_int_not_equal(ij_jwks_file_new(path, &f, &err), 0); /* missing */
    assert_non_null(strstr(err, path));
    write_file(path, "{\"keys\": []}");
    assert_int_not_equal(ij_jwks_file_new(path, &f, &err), 0); /* no key */

    write_file(path, one);
    assert_int_equal(ij_jwks_file_new(path, &f, &err), 0);
    struct ij_jwks *k = ij_jwks_file_get(f, 0);
    assert_int_equal(ij_jwks_count(k), 2);
    assert_int_equal(ij_jwks_skipped(k), 0);
    ij_jwks_unref(k);

    /* unchanged: nothing happens */
    assert_int_equal(ij_jwks_file_reload(f, false, &err), 0);
    /* a new document: swapped on the next look */
    write_file(path, two);
    k = ij_jwks_file_get(f, 0);
    assert_int_equal(ij_jwks_skipped(k), 5);
    /* an old reference stays usable after a swap */
    write_file(path, one);
    struct ij_jwks *k2 = ij_jwks_file_get(f, 0);
    assert_int_equal(ij_jwks_skipped(k2), 0);
    assert_int_equal(ij_jwks_skipped(k), 5);
    ij_jwks_unref(k);
    ij_jwks_unref(k2);
    /* a bad file keeps the keys in force, and is counted once */
    write_file(path, "{\"keys\": [");
    k = ij_jwks_file_get(f, 0);
    assert_int_equal(ij_jwks_count(k), 2);
    ij_jwks_unref(k);
    k = ij_jwks_file_get(f, 0);
    ij_jwks_unref(k);
    struct ij_jwks_stats st;
    ij_jwks_file_stats(f, &st);
    assert_int_equal(st.reloads_ok, 2);
    assert_int_equal(st.reloads_failed, 1);
    assert_int_equal(st.keys, 2);
    /* a vanished file too; it coming back is a change */
    unlink(path);
    k = ij_jwks_file_get(f, 0);
    assert_int_equal(ij_jwks_count(k), 2);
    ij_jwks_unref(k);
    write_file(path, two);
    /* not looked at again within check_ms */
    k = ij_jwks_file_get(f, 3600 * 1000);
    assert_int_equal(ij_jwks_skipped(k), 0);
    ij_jwks_unref(k);
    assert_int_equal(ij_jwks_file_reload(f, true, &err), 1);
    k = ij_jwks_file_get(f, 3600 * 1000);
    assert_int_equal(ij_jwks_skipped(k), 5);
    ij_jwks_unref(k);
    ij_jwks_file_stats(f, &st);
    assert_int_equal(st.reloads_failed, 2);

    ij_jwks_file_free(f);
    unlink(path);
    rmdir(dir);
    free(err);
    free(one);
    free(two);
    free(p1);
    free(p2);
}

/* ---- threads ------------------------------------------------------------------------------- */

struct worker {
    struct ij_jwks *k;
    char *toks[2];
    int failures;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 50; i++) {
        struct ij_token_claims c;
        enum ij_token_reason why;
        char *err = NULL;
        const char *t = w->toks[i % 2];
        if (ij_token_verify(w->k, t, strlen(t), "remora-ca", NOW, &c, &why, &err) != 0)
            w->failures++;
        free(err);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct ij_jwks *k = load_jwks("jwks.json");
    char *p1 = data_path("cases/ok-rs256.jwt"), *p2 = data_path("cases/ok-es256.jwt");
    struct worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.k = k, .toks = {slurp(p1, NULL), slurp(p2, NULL)}};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
        free(w[i].toks[0]);
        free(w[i].toks[1]);
    }
    free(p1);
    free(p2);
    ij_jwks_unref(k);
}

static void test_reason_names(void **state)
{
    (void)state;
    assert_string_equal(ij_token_reason_name(IJ_TOKEN_OK), "ok");
    assert_string_equal(ij_token_reason_name(IJ_TOKEN_NOT_YET_VALID), "not_yet_valid");
    assert_string_equal(ij_token_reason_name(IJ_TOKEN_CLAIMS), "claims");
    assert_string_equal(ij_token_reason_name(IJ_TOKEN__COUNT), "unknown");
}

int main(void)
{
    const char *root = getenv("REMORA_ROOT");
    snprintf(data_dir, sizeof(data_dir), "%s/test/data/token", root && *root ? root : ".");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors), cmocka_unit_test(test_messages),
        cmocka_unit_test(test_time),    cmocka_unit_test(test_jwks_cases),
        cmocka_unit_test(test_no_kid),  cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_claims),  cmocka_unit_test(test_es256_mbedtls),
        cmocka_unit_test(test_bounds),  cmocka_unit_test(test_jwks_file),
        cmocka_unit_test(test_threads), cmocka_unit_test(test_reason_names),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    pki_rng_free();
    return rc;
}
