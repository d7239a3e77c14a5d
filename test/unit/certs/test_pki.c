/* Unit tests of certs/: keys, SPIFFE IDs (valid and refused), CSRs (round
 * trip, corrupted signature, missing or doubled SAN), the chain root ->
 * intermediate -> workload and its verification (one root, two roots, an
 * unrelated root, wrong trust domain, expiry), the extensions we write,
 * serials, server certificates with DNS SANs, CA loading errors, bundles,
 * and the DER walkers on hostile input. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "certs/internal.h"
#include "certs/pki.h"
#include "common/err.h"
#include "common/xalloc.h"

#define ID_WEB "spiffe://cluster.local/ns/shop/sa/web"

/* A root, an intermediate under it, and the CA loaded from them; built
 * once for the whole file (key generation is the slow part). */
static char *root_pem, *root_key, *int_pem, *int_key, *root2_pem, *root2_key;
static struct pki_ca ca;

static int setup(void **state)
{
    (void)state;
    char *err = NULL;
    if (pki_make_root("Test Root", 30, &root_pem, &root_key, &err) != 0 ||
        pki_make_root("Other Root", 30, &root2_pem, &root2_key, &err) != 0 ||
        pki_make_intermediate("east", 10, root_pem, root_key, &int_pem, &int_key, &err) != 0 ||
        pki_ca_load_pem(&ca, int_pem, int_key, root_pem, &err) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        free(err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pki_ca_free(&ca);
    free(root_pem);
    free(root_key);
    free(root2_pem);
    free(root2_key);
    free(int_pem);
    free(int_key);
    pki_rng_free();
    return 0;
}

static void parse_chain(mbedtls_x509_crt *c, const char *pem)
{
    char *err = NULL;
    mbedtls_x509_crt_init(c);
    if (pki_bundle_parse(c, (const unsigned char *)pem, strlen(pem), &err) != 0)
        fail_msg("pki_bundle_parse: %s", err);
}

/* A fresh key and a workload chain for `id`, signed at `now`. */
static char *issue(const char *id, int64_t now, uint32_t ttl)
{
    mbedtls_pk_context k;
    char *chain = NULL, *err = NULL;
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    if (pki_sign_workload_at(&ca, &k, id, now, ttl, &chain, &err) != 0)
        fail_msg("sign: %s", err);
    mbedtls_pk_free(&k);
    return chain;
}

/* Run pki_verify_peer and return its message (NULL when it succeeded). */
static char *verify(const char *chain_pem, const char *bundle_pem, const char *td, char *id)
{
    mbedtls_x509_crt peer, bundle;
    char *err = NULL, idbuf[PKI_SPIFFE_MAX];
    parse_chain(&peer, chain_pem);
    parse_chain(&bundle, bundle_pem);
    int rc = pki_verify_peer(&peer, &bundle, td, id ? id : idbuf, PKI_SPIFFE_MAX, &err);
    mbedtls_x509_crt_free(&peer);
    mbedtls_x509_crt_free(&bundle);
    if (rc == 0) {
        assert_null(err);
        return NULL;
    }
    assert_non_null(err);
    return err;
}

/* ---- keys --------------------------------------------------------------------- */

static void key_generate_and_parse(void **state)
{
    (void)state;
    mbedtls_pk_context k, k2;
    char *pem = NULL, *err = NULL;
    mbedtls_pk_init(&k);
    mbedtls_pk_init(&k2);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_true(mbedtls_pk_can_do(&k, MBEDTLS_PK_ECKEY));
    assert_int_equal(mbedtls_pk_ec(k)->grp.id, MBEDTLS_ECP_DP_SECP256R1);
    assert_int_equal(pki_key_write_pem(&k, &pem, &err), 0);
    assert_non_null(strstr(pem, "-----BEGIN EC PRIVATE KEY-----"));
    /* without the NUL, as read from a socket or a fuzzer */
    assert_int_equal(pki_key_parse(&k2, (const unsigned char *)pem, strlen(pem), &err), 0);
    assert_int_equal(mbedtls_pk_check_pair(&k2, &k), 0);
    /* with the NUL, as mbedTLS likes it */
    mbedtls_pk_free(&k2);
    mbedtls_pk_init(&k2);
    assert_int_equal(pki_key_parse(&k2, (const unsigned char *)pem, strlen(pem) + 1, &err), 0);
    mbedtls_pk_free(&k2);
    free(pem);
    mbedtls_pk_free(&k);

    /* two keys differ */
    mbedtls_pk_init(&k);
    mbedtls_pk_init(&k2);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_int_equal(pki_key_generate(&k2, &err), 0);
    assert_int_not_equal(mbedtls_pk_check_pair(&k2, &k), 0);
    mbedtls_pk_free(&k);
    mbedtls_pk_free(&k2);
}

static void key_refusals(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "garbage",
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        "-----BEGIN EC PRIVATE KEY-----\nnot base64 !!!\n-----END EC PRIVATE KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mbedtls_pk_context k;
        char *err = NULL;
        mbedtls_pk_init(&k);
        int rc = pki_key_parse(&k, (const unsigned char *)bad[i], strlen(bad[i]), &err);
        if (rc == 0)
            fail_msg("key %zu accepted", i);
        assert_non_null(err);
        assert_non_null(strstr(err, "private key"));
        free(err);
        mbedtls_pk_free(&k);
    }
    mbedtls_pk_context k;
    char *err = NULL;
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_load_file(&k, "/nonexistent/key.pem", &err), CM_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent/key.pem"));
    free(err);
    mbedtls_pk_free(&k);
}

/* ---- SPIFFE IDs ---------------------------------------------------------------- */

static void spiffe_valid(void **state)
{
    (void)state;
    static const struct {
        const char *id, *td, *ns, *sa;
    } ok[] = {
        {ID_WEB, "cluster.local", "shop", "web"},
        {"spiffe://td/ns/a/sa/b", "td", "a", "b"},
        {"spiffe://my_td-1.example.org/ns/kube-system/sa/default", "my_td-1.example.org",
         "kube-system", "default"},
        {"spiffe://x/ns/0/sa/9", "x", "0", "9"},
        {"spiffe://x/ns/a-b/sa/sa.with.dots", "x", "a-b", "sa.with.dots"},
        {"spiffe://x/ns/a/sa/a-1.b-2", "x", "a", "a-1.b-2"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX], out[PKI_SPIFFE_MAX];
        char *err = NULL;
        if (pki_spiffe_parse(ok[i].id, td, ns, sa, &err) != 0)
            fail_msg("parse %s: %s", ok[i].id, err);
        assert_string_equal(td, ok[i].td);
        assert_string_equal(ns, ok[i].ns);
        assert_string_equal(sa, ok[i].sa);
        if (pki_spiffe_build(td, ns, sa, out, sizeof(out), &err) != 0)
            fail_msg("build %s: %s", ok[i].id, err);
        assert_string_equal(out, ok[i].id);
    }
    /* the longest namespace (63) and a long service account fit */
    char ns[64], sa[160], id[PKI_SPIFFE_MAX], *err = NULL;
    memset(ns, 'n', 63);
    ns[63] = '\0';
    memset(sa, 's', 159);
    sa[159] = '\0';
    assert_int_equal(pki_spiffe_build("td", ns, sa, id, sizeof(id), &err), 0);
    assert_int_equal(pki_spiffe_parse(id, NULL, NULL, NULL, &err), 0);
}

static void spiffe_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "spiffe://",
        "spiffe:/x/ns/a/sa/b",
        "SPIFFE://x/ns/a/sa/b",
        "https://x/ns/a/sa/b",
        "spiffe://x",
        "spiffe://x/",
        "spiffe:///ns/a/sa/b",       /* empty trust domain */
        "spiffe://X/ns/a/sa/b",      /* upper case */
        "spiffe://x:8080/ns/a/sa/b", /* port */
        "spiffe://user@x/ns/a/sa/b", /* userinfo */
        "spiffe://.x/ns/a/sa/b",     /* empty label */
        "spiffe://x../ns/a/sa/b",
        "spiffe://x/ns/a/sa/b/",    /* trailing slash */
        "spiffe://x/ns/a/sa/b?q=1", /* query */
        "spiffe://x/ns/a/sa/b#f",   /* fragment */
        "spiffe://x/ns/a/sa/b%41",  /* percent-encoding */
        "spiffe://x/ns/%61/sa/b",
        "spiffe://x/ns/a/sa/",   /* empty sa */
        "spiffe://x/ns//sa/b",   /* empty ns */
        "spiffe://x/ns/A/sa/b",  /* upper-case ns */
        "spiffe://x/ns/a/sa/B",  /* upper-case sa */
        "spiffe://x/ns/-a/sa/b", /* label edges */
        "spiffe://x/ns/a-/sa/b",
        "spiffe://x/ns/a/sa/b-",
        "spiffe://x/ns/a/sa/.b",
        "spiffe://x/ns/a/sa/b..c",
        "spiffe://x/ns/a.b/sa/c", /* ns is a label: no dot */
        "spiffe://x/ns/a_b/sa/c", /* no underscore in k8s names */
        "spiffe://x/ns/a/sa/b_c",
        "spiffe://x/sa/b/ns/a", /* order */
        "spiffe://x/ns/a/sa/b/extra",
        "spiffe://x/ns/a",
        "spiffe://x/ns/a/sa",
        "spiffe://x/ns/a/svc/b",
        "spiffe://x/namespace/a/sa/b",
        "spiffe://x/ns/a/sa/b ", /* space */
        " spiffe://x/ns/a/sa/b",
        "spiffe://x/ns/a/sa/b\n",
        "spiffe://x/ns/a/sa/./b",
        "spiffe://x/ns/../sa/b",
        "spiffe://x/ns/a/sa/\xc3\xa9", /* non-ASCII */
        "spiffe://x/ns/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/sa/b", /* 64
                                                                                                */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *err = NULL;
        char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX];
        if (pki_spiffe_parse(bad[i], td, ns, sa, &err) == 0)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_non_null(err);
        assert_non_null(strstr(err, "SPIFFE ID"));
        free(err);
        /* the byte-level check agrees */
        char out[PKI_SPIFFE_MAX];
        assert_int_not_equal(pki_spiffe_check_bytes((const unsigned char *)bad[i], strlen(bad[i]),
                                                    out, sizeof(out), NULL),
                             0);
    }
    /* too long overall: 256 characters */
    char id[300], *err = NULL;
    int n = snprintf(id, sizeof(id), "spiffe://x/ns/a/sa/");
    memset(id + n, 'b', 256 - (size_t)n);
    id[256] = '\0';
    assert_int_equal(pki_spiffe_parse(id, NULL, NULL, NULL, &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "longer"));
    free(err);
    /* a NUL inside the bytes of a SAN */
    static const unsigned char nul[] = "spiffe://x/ns/a\0/sa/b";
    char out[PKI_SPIFFE_MAX];
    assert_int_not_equal(pki_spiffe_check_bytes(nul, sizeof(nul) - 1, out, sizeof(out), NULL), 0);
}

static void spiffe_build_refusals(void **state)
{
    (void)state;
    char out[PKI_SPIFFE_MAX], *err = NULL;
    assert_int_equal(pki_spiffe_build("Cluster", "a", "b", out, sizeof(out), &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "trust domain"));
    free(err);
    err = NULL;
    assert_int_equal(pki_spiffe_build("td", "a/b", "b", out, sizeof(out), &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "namespace"));
    free(err);
    err = NULL;
    assert_int_equal(pki_spiffe_build("td", "a", "", out, sizeof(out), &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "service account"));
    free(err);
    err = NULL;
    /* output buffer too small */
    assert_int_equal(pki_spiffe_build("td", "a", "b", out, 10, &err), CM_ERR_LIMIT);
    free(err);
    /* overall length: parts valid but sum > 255 */
    char sa[254];
    memset(sa, 's', 253);
    sa[253] = '\0';
    err = NULL;
    assert_int_equal(pki_spiffe_build("td", "a", sa, out, sizeof(out), &err), CM_ERR_LIMIT);
    free(err);
}

/* ---- CSRs ----------------------------------------------------------------------- */

static void csr_round_trip(void **state)
{
    (void)state;
    mbedtls_pk_context k;
    mbedtls_x509_csr csr;
    char *pem = NULL, *err = NULL, id[PKI_SPIFFE_MAX];
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_int_equal(pki_csr_new(&k, ID_WEB, &pem, &err), 0);
    assert_non_null(strstr(pem, "-----BEGIN CERTIFICATE REQUEST-----"));

    mbedtls_x509_csr_init(&csr);
    if (pki_csr_parse_verify(&csr, (const unsigned char *)pem, strlen(pem), id, sizeof(id), &err))
        fail_msg("parse_verify: %s", err);
    assert_string_equal(id, ID_WEB);
    /* the CSR's key is the one we hold */
    assert_int_equal(mbedtls_pk_check_pair(&csr.pk, &k), 0);
    /* pki_csr_spiffe_id alone agrees */
    char id2[PKI_SPIFFE_MAX];
    assert_int_equal(pki_csr_spiffe_id(&csr, id2, sizeof(id2), &err), 0);
    assert_string_equal(id2, ID_WEB);

    /* the same CSR as DER */
    size_t dlen = csr.raw.len;
    unsigned char *der = cm_xmalloc(dlen);
    memcpy(der, csr.raw.p, dlen);
    mbedtls_x509_csr_free(&csr);
    mbedtls_x509_csr_init(&csr);
    assert_int_equal(pki_csr_parse_verify(&csr, der, dlen, id, sizeof(id), &err), 0);
    assert_string_equal(id, ID_WEB);
    mbedtls_x509_csr_free(&csr);

    /* a too small id buffer is an error, not a truncation */
    mbedtls_x509_csr_init(&csr);
    assert_int_equal(pki_csr_parse_verify(&csr, der, dlen, id, 10, &err), CM_ERR_LIMIT);
    free(err);
    err = NULL;
    mbedtls_x509_csr_free(&csr);

    /* invalid IDs are refused before anything is written */
    char *pem2 = NULL;
    assert_int_equal(pki_csr_new(&k, "spiffe://X/ns/a/sa/b", &pem2, &err), CM_ERR_INVAL);
    assert_null(pem2);
    free(err);

    free(der);
    free(pem);
    mbedtls_pk_free(&k);
}

static int parse_verify_err(const unsigned char *buf, size_t len, const char *want);
/* CSRs as real clients write them (test/data/csr/, made by make-samples.py):
 * openssl, Python's cryptography and Go-style DER, each with a subject and
 * with an empty one (which mbedTLS 2.28 alone cannot parse), all carrying
 * ID_WEB. Every file there must verify; a new flavour is a new file. */
static void csr_client_flavours(void **state)
{
    (void)state;
    const char *root = getenv("REMORA_ROOT");
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/test/data/csr", root && *root ? root : ".");
    static const char *const files[] = {
        "openssl-subject.pem",  "openssl-empty.pem", "python-subject.pem", "python-empty.pem",
        "python-rsa-empty.pem", "go-subject.der",    "go-empty.der",       NULL};
    for (int i = 0; files[i] != NULL; i++) {
        char path[600], id[PKI_SPIFFE_MAX], *err = NULL;
        unsigned char *buf = NULL;
        size_t len = 0;
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        if (pki_read_file(path, 65536, &buf, &len, &err) != 0)
            fail_msg("%s: %s", path, err);
        mbedtls_x509_csr csr;
        mbedtls_x509_csr_init(&csr);
        if (pki_csr_parse_verify(&csr, buf, len, id, sizeof(id), &err) != 0)
            fail_msg("%s refused: %s", files[i], err);
        assert_string_equal(id, ID_WEB);
        /* the empty subject stays empty: no placeholder leaks out */
        bool empty = strstr(files[i], "empty") != NULL;
        assert_int_equal(csr.subject.oid.p == NULL, empty);
        mbedtls_x509_csr_free(&csr);
        /* parse alone agrees */
        mbedtls_x509_csr_init(&csr);
        assert_int_equal(pki_csr_parse(&csr, buf, len, &err), 0);
        mbedtls_x509_csr_free(&csr);
        if (empty) {
            /* one flipped bit in the signed part is still caught: the
             * signature covers the client's bytes, not our rewrite */
            unsigned char *der = buf;
            size_t dlen = len;
            mbedtls_pem_context pc;
            mbedtls_pem_init(&pc);
            size_t used;
            if (pki_looks_pem(buf, len)) {
                assert_int_equal(mbedtls_pem_read_buffer(&pc, "-----BEGIN CERTIFICATE REQUEST-----",
                                                         "-----END CERTIFICATE REQUEST-----", buf,
                                                         NULL, 0, &used),
                                 0);
                der = pc.buf;
                dlen = pc.buflen;
            }
            unsigned char *copy = cm_xmalloc(dlen);
            memcpy(copy, der, dlen);
            unsigned char *uri = memmem(copy, dlen, "shop", 4);
            assert_non_null(uri);
            uri[0] = 'S';
            parse_verify_err(copy, dlen, "signature does not verify");
            /* a truncated one is refused with a message */
            parse_verify_err(copy, dlen / 2, "CSR: parse");
            free(copy);
            mbedtls_pem_free(&pc);
        }
        free(buf);
    }
}

static int parse_verify_err(const unsigned char *buf, size_t len, const char *want)
{
    mbedtls_x509_csr csr;
    char id[PKI_SPIFFE_MAX], *err = NULL;
    mbedtls_x509_csr_init(&csr);
    int rc = pki_csr_parse_verify(&csr, buf, len, id, sizeof(id), &err);
    mbedtls_x509_csr_free(&csr);
    if (rc == 0)
        fail_msg("CSR accepted (want \"%s\")", want);
    if (err == NULL || strstr(err, want) == NULL)
        fail_msg("CSR refused with \"%s\", want \"%s\"", err ? err : "(null)", want);
    free(err);
    return rc;
}

static void csr_corrupt_signature(void **state)
{
    (void)state;
    mbedtls_pk_context k;
    mbedtls_x509_csr csr;
    char *pem = NULL, *err = NULL, id[PKI_SPIFFE_MAX];
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_int_equal(pki_csr_new(&k, ID_WEB, &pem, &err), 0);
    mbedtls_x509_csr_init(&csr);
    assert_int_equal(
        pki_csr_parse_verify(&csr, (const unsigned char *)pem, strlen(pem), id, sizeof(id), &err),
        0);
    size_t dlen = csr.raw.len;
    unsigned char *der = cm_xmalloc(dlen);
    memcpy(der, csr.raw.p, dlen);
    /* where the URI sits in the signed part */
    unsigned char *uri = memmem(der, dlen, "shop", 4);
    assert_non_null(uri);
    mbedtls_x509_csr_free(&csr);

    /* the last byte belongs to the signature's S value */
    der[dlen - 1] ^= 0x01;
    char *bad = pki_der_to_pem("CERTIFICATE REQUEST", der, dlen);
    parse_verify_err((const unsigned char *)bad, strlen(bad), "signature does not verify");
    free(bad);
    der[dlen - 1] ^= 0x01;

    /* a changed identity under the original signature */
    memcpy(uri, "shoq", 4);
    parse_verify_err(der, dlen, "signature does not verify");

    /* a CSR signed by another key than the one it carries: swap keys by
     * signing our CRI with k2 is what a forger would do; equivalent to
     * a changed CRI, covered above. Truncations and garbage: */
    parse_verify_err(der, dlen / 2, "CSR: parse");
    parse_verify_err((const unsigned char *)"hello", 5, "CSR: parse");
    parse_verify_err((const unsigned char *)"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n"
                                            "-----END CERTIFICATE REQUEST-----\n",
                     72, "CSR: parse");
    mbedtls_x509_csr_init(&csr);
    assert_int_equal(pki_csr_parse_verify(&csr, NULL, 0, id, sizeof(id), &err), CM_ERR_INVAL);
    free(err);
    mbedtls_x509_csr_free(&csr);
    free(der);
    free(pem);
    mbedtls_pk_free(&k);
}

/* A CSR written with mbedTLS directly: optional raw SAN value. */
static char *custom_csr(mbedtls_pk_context *k, const unsigned char *san, size_t sanlen)
{
    mbedtls_x509write_csr w;
    unsigned char buf[4096];
    mbedtls_x509write_csr_init(&w);
    mbedtls_x509write_csr_set_key(&w, k);
    mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
    assert_int_equal(mbedtls_x509write_csr_set_subject_name(&w, "CN=test"), 0);
    if (san != NULL)
        assert_int_equal(mbedtls_x509write_csr_set_extension(
                             &w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), san, sanlen),
                         0);
    assert_int_equal(mbedtls_x509write_csr_pem(&w, buf, sizeof(buf), pki_rng_fn, NULL), 0);
    mbedtls_x509write_csr_free(&w);
    return cm_xstrdup((char *)buf);
}

/* GeneralNames DER from (tag, text) pairs. */
static size_t names_der(unsigned char *buf, size_t cap, const int *tags, const char *const *vals,
                        size_t n, unsigned char **start)
{
    unsigned char *p = buf + cap;
    size_t len = 0;
    for (size_t i = n; i-- > 0;) {
        size_t l = strlen(vals[i]);
        len += (size_t)mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)vals[i], l);
        len += (size_t)mbedtls_asn1_write_len(&p, buf, l);
        len += (size_t)mbedtls_asn1_write_tag(&p, buf, (unsigned char)tags[i]);
    }
    len += (size_t)mbedtls_asn1_write_len(&p, buf, len);
    len +=
        (size_t)mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
    *start = p;
    return len;
}

static void csr_san_refusals(void **state)
{
    (void)state;
    mbedtls_pk_context k;
    char *err = NULL, *pem;
    unsigned char buf[1024], *der;
    size_t len;
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);

    /* no SAN at all (no extensionRequest) */
    pem = custom_csr(&k, NULL, 0);
    parse_verify_err((const unsigned char *)pem, strlen(pem), "no extensionRequest");
    free(pem);

    /* two URIs */
    static const int two_tags[] = {0x86, 0x86};
    static const char *const two[] = {ID_WEB, "spiffe://cluster.local/ns/shop/sa/admin"};
    len = names_der(buf, sizeof(buf), two_tags, two, 2, &der);
    pem = custom_csr(&k, der, len);
    parse_verify_err((const unsigned char *)pem, strlen(pem), "2 URIs");
    free(pem);

    /* a URI and a DNS name: a CA signs exactly the identity, nothing more */
    static const int mix_tags[] = {0x86, 0x82};
    static const char *const mix[] = {ID_WEB, "evil.example.com"};
    len = names_der(buf, sizeof(buf), mix_tags, mix, 2, &der);
    pem = custom_csr(&k, der, len);
    parse_verify_err((const unsigned char *)pem, strlen(pem), "other than the SPIFFE ID");
    free(pem);

    /* only DNS */
    static const int dns_tags[] = {0x82};
    static const char *const dns[] = {"web.shop.svc"};
    len = names_der(buf, sizeof(buf), dns_tags, dns, 1, &der);
    pem = custom_csr(&k, der, len);
    parse_verify_err((const unsigned char *)pem, strlen(pem), "no URI");
    free(pem);

    /* a URI that is not a SPIFFE ID of our form */
    static const int uri_tag[] = {0x86};
    static const char *const notspiffe[] = {"https://example.com/"};
    len = names_der(buf, sizeof(buf), uri_tag, notspiffe, 1, &der);
    pem = custom_csr(&k, der, len);
    parse_verify_err((const unsigned char *)pem, strlen(pem), "not a spiffe:// URI");
    free(pem);
    static const char *const trailing[] = {ID_WEB "/"};
    len = names_der(buf, sizeof(buf), uri_tag, trailing, 1, &der);
    pem = custom_csr(&k, der, len);
    parse_verify_err((const unsigned char *)pem, strlen(pem), "service account");
    free(pem);

    /* an empty SAN sequence and a malformed one */
    static const unsigned char empty[] = {0x30, 0x00};
    pem = custom_csr(&k, empty, sizeof(empty));
    parse_verify_err((const unsigned char *)pem, strlen(pem), "malformed subjectAltName");
    free(pem);
    static const unsigned char trunc[] = {0x30, 0x05, 0x86, 0x09, 's', 'p', 'i'};
    pem = custom_csr(&k, trunc, sizeof(trunc));
    parse_verify_err((const unsigned char *)pem, strlen(pem), "malformed");
    free(pem);
    mbedtls_pk_free(&k);
}

/* ---- the chain -------------------------------------------------------------------- */

static void chain_verifies(void **state)
{
    (void)state;
    mbedtls_x509_csr csr;
    mbedtls_pk_context k;
    char *pem = NULL, *chain = NULL, *err = NULL, id[PKI_SPIFFE_MAX];

    /* the CA path: CSR in, chain out */
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_int_equal(pki_csr_new(&k, ID_WEB, &pem, &err), 0);
    mbedtls_x509_csr_init(&csr);
    assert_int_equal(
        pki_csr_parse_verify(&csr, (const unsigned char *)pem, strlen(pem), id, sizeof(id), &err),
        0);
    if (pki_sign_workload(&ca, &csr.pk, id, 3600, &chain, &err) != 0)
        fail_msg("sign: %s", err);
    mbedtls_x509_csr_free(&csr);

    /* leaf + intermediate */
    mbedtls_x509_crt c;
    parse_chain(&c, chain);
    assert_non_null(c.next);
    assert_null(c.next->next);
    assert_int_equal(mbedtls_pk_check_pair(&c.pk, &k), 0);
    mbedtls_x509_crt_free(&c);

    /* against the root alone, the CA's bundle, and two roots (rotation) */
    char out[PKI_SPIFFE_MAX];
    char *msg = verify(chain, root_pem, "cluster.local", out);
    if (msg)
        fail_msg("verify: %s", msg);
    assert_string_equal(out, ID_WEB);
    assert_null(verify(chain, ca.bundle_pem, NULL, out));
    char *two = cm_xasprintf("%s%s", root2_pem, root_pem);
    assert_null(verify(chain, two, "cluster.local", out));
    free(two);
    two = cm_xasprintf("%s%s", root_pem, root2_pem);
    assert_null(verify(chain, two, "cluster.local", out));
    free(two);

    /* an unrelated root */
    msg = verify(chain, root2_pem, "cluster.local", NULL);
    assert_non_null(strstr(msg, "not correctly signed by the trusted CA"));
    free(msg);
    /* the intermediate is not a trust anchor of ours: a leaf alone fails */
    char *leaf_only =
        cm_xstrndup(chain, (size_t)(strstr(chain, "-----END CERTIFICATE-----") - chain) + 26);
    msg = verify(leaf_only, root_pem, NULL, NULL);
    assert_non_null(msg);
    free(msg);
    free(leaf_only);

    /* wrong trust domain */
    msg = verify(chain, root_pem, "other.domain", NULL);
    assert_non_null(strstr(msg, "trust domain cluster.local is not other.domain"));
    free(msg);

    free(chain);
    free(pem);
    mbedtls_pk_free(&k);
}

static void chain_expired(void **state)
{
    (void)state;
    int64_t now = (int64_t)time(NULL);
    /* issued two hours ago for one minute */
    char *chain = issue(ID_WEB, now - 7200, 60);
    mbedtls_x509_crt c;
    parse_chain(&c, chain);
    assert_int_equal(pki_crt_not_after(&c), now - 7200 + 60);
    assert_int_equal(pki_crt_not_before(&c), now - 7200 - 300);
    mbedtls_x509_crt_free(&c);
    char *msg = verify(chain, root_pem, "cluster.local", NULL);
    assert_non_null(strstr(msg, "expired"));
    free(msg);
    free(chain);

    /* issued for the future: not yet valid */
    chain = issue(ID_WEB, now + 7200, 60);
    msg = verify(chain, root_pem, NULL, NULL);
    assert_non_null(strstr(msg, "future"));
    free(msg);
    free(chain);

    /* the validity arithmetic at a fixed time, and the clamp to the
     * intermediate's own not_after (10 days) */
    chain = issue(ID_WEB, now, 86400);
    parse_chain(&c, chain);
    assert_int_equal(pki_crt_not_before(&c), now - 300);
    assert_int_equal(pki_crt_not_after(&c), now + 86400);
    mbedtls_x509_crt_free(&c);
    free(chain);
    chain = issue(ID_WEB, now, 100u * 86400);
    parse_chain(&c, chain);
    assert_int_equal(pki_crt_not_after(&c), pki_crt_not_after(c.next));
    mbedtls_x509_crt_free(&c);
    free(chain);

    /* ttl 0 is refused */
    mbedtls_pk_context k;
    char *err = NULL;
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_int_equal(pki_sign_workload(&ca, &k, ID_WEB, 0, &chain, &err), CM_ERR_INVAL);
    free(err);
    err = NULL;
    assert_int_equal(pki_sign_workload(&ca, &k, "spiffe://x/ns/a/sa/b/", 60, &chain, &err),
                     CM_ERR_INVAL);
    free(err);
    mbedtls_pk_free(&k);
}

static void workload_extensions(void **state)
{
    (void)state;
    char *chain = issue(ID_WEB, (int64_t)time(NULL), 3600);
    mbedtls_x509_crt c;
    parse_chain(&c, chain);

    assert_int_equal(c.version, 3);
    assert_true(c.ext_types & MBEDTLS_X509_EXT_KEY_USAGE);
    assert_true(c.ext_types & MBEDTLS_X509_EXT_EXTENDED_KEY_USAGE);
    assert_true(c.ext_types & MBEDTLS_X509_EXT_BASIC_CONSTRAINTS);
    assert_true(c.ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME);
    assert_int_equal(c.ca_istrue, 0);
    assert_int_equal(c.key_usage,
                     MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_ENCIPHERMENT);
    assert_int_equal(mbedtls_x509_crt_check_extended_key_usage(
                         &c, MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)),
                     0);
    assert_int_equal(mbedtls_x509_crt_check_extended_key_usage(
                         &c, MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)),
                     0);
    assert_int_equal(c.sig_md, MBEDTLS_MD_SHA256);

    /* the URI SAN, as mbedTLS lists it (raw entry, tag [6]) and as we read it */
    const mbedtls_x509_sequence *s = &c.subject_alt_names;
    assert_int_equal(s->buf.tag, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 6);
    assert_int_equal(s->buf.len, strlen(ID_WEB));
    assert_memory_equal(s->buf.p, ID_WEB, strlen(ID_WEB));
    assert_null(s->next);
    char id[PKI_SPIFFE_MAX], *err = NULL;
    assert_int_equal(pki_crt_spiffe_id(&c, id, sizeof(id), &err), 0);
    assert_string_equal(id, ID_WEB);

    /* issuer field is the intermediate's subject byte for byte */
    assert_int_equal(c.issuer_raw.len, c.next->subject_raw.len);
    assert_memory_equal(c.issuer_raw.p, c.next->subject_raw.p, c.issuer_raw.len);

    /* SKI present; AKI repeats the intermediate's SKI */
    const unsigned char *exts, *v, *iexts, *iv;
    size_t elen, vlen, ielen, ivlen;
    bool crit = true;
    assert_int_equal(pki_crt_exts(&c, &exts, &elen), 0);
    assert_int_equal(pki_der_find_ext(exts, elen, MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER,
                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER), &v,
                                      &vlen, &crit),
                     0);
    assert_false(crit);
    assert_int_equal(pki_der_find_ext(exts, elen, MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER,
                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER), &v,
                                      &vlen, NULL),
                     0);
    assert_int_equal(pki_crt_exts(c.next, &iexts, &ielen), 0);
    assert_int_equal(pki_der_find_ext(iexts, ielen, MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER,
                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER), &iv,
                                      &ivlen, NULL),
                     0);
    /* AKI = 30 len 80 len <id>; SKI value = 04 len <id> */
    assert_true(vlen >= 4 && ivlen >= 2);
    assert_int_equal(v[2], 0x80);
    assert_int_equal(v[3], ivlen - 2);
    assert_memory_equal(v + 4, iv + 2, ivlen - 2);
    /* key usage is critical */
    assert_int_equal(pki_der_find_ext(exts, elen, MBEDTLS_OID_KEY_USAGE,
                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_KEY_USAGE), &v, &vlen, &crit),
                     0);
    assert_true(crit);

    /* the intermediate: CA, pathlen 0, keyCertSign */
    assert_int_equal(c.next->ca_istrue, 1);
    assert_int_equal(c.next->max_pathlen, 1); /* mbedTLS stores pathlen + 1 */
    assert_int_equal(mbedtls_x509_crt_check_key_usage(c.next, MBEDTLS_X509_KU_KEY_CERT_SIGN), 0);
    /* a CA has no SPIFFE ID */
    assert_int_not_equal(pki_crt_spiffe_id(c.next, id, sizeof(id), &err), 0);
    assert_non_null(strstr(err, "certificate"));
    free(err);

    mbedtls_x509_crt_free(&c);
    free(chain);
}

static void serials_differ(void **state)
{
    (void)state;
    enum { N = 16 };
    char serials[N][2 * 32 + 1];
    int64_t now = (int64_t)time(NULL);
    mbedtls_pk_context k;
    char *err = NULL;
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    for (int i = 0; i < N; i++) {
        char *chain = NULL;
        assert_int_equal(pki_sign_workload_at(&ca, &k, ID_WEB, now, 60, &chain, &err), 0);
        mbedtls_x509_crt c;
        parse_chain(&c, chain);
        assert_int_equal(c.serial.len, 16);
        assert_true(c.serial.p[0] < 0x80 && c.serial.p[0] != 0);
        pki_crt_serial_hex(&c, serials[i], sizeof(serials[i]));
        assert_int_equal(strlen(serials[i]), 32);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(serials[i], serials[j]);
        mbedtls_x509_crt_free(&c);
        free(chain);
    }
    mbedtls_pk_free(&k);
    /* a short output buffer truncates at a byte boundary */
    mbedtls_x509_crt c;
    char *chain = issue(ID_WEB, now, 60), small[6];
    parse_chain(&c, chain);
    pki_crt_serial_hex(&c, small, sizeof(small));
    assert_int_equal(strlen(small), 4);
    mbedtls_x509_crt_free(&c);
    free(chain);
}

static void server_cert(void **state)
{
    (void)state;
    static const char *const dns[] = {"remora-injector.remora-system.svc",
                                      "remora-injector.remora-system.svc.cluster.local", NULL};
    char *cert = NULL, *key = NULL, *err = NULL;
    if (pki_make_server(NULL, dns, 365, int_pem, int_key, &cert, &key, &err) != 0)
        fail_msg("make_server: %s", err);
    mbedtls_x509_crt c, trust;
    parse_chain(&c, cert);
    parse_chain(&trust, root_pem);
    assert_non_null(c.next); /* the intermediate travels with it */
    assert_int_equal(c.ca_istrue, 0);

    /* DNS SANs as mbedTLS parses them */
    int n = 0;
    for (const mbedtls_x509_sequence *s = &c.subject_alt_names; s != NULL; s = s->next, n++) {
        mbedtls_x509_subject_alternative_name san;
        assert_int_equal(mbedtls_x509_parse_subject_alt_name(&s->buf, &san), 0);
        assert_int_equal(san.type, MBEDTLS_X509_SAN_DNS_NAME);
        assert_int_equal(san.san.unstructured_name.len, strlen(dns[n]));
        assert_memory_equal(san.san.unstructured_name.p, dns[n], strlen(dns[n]));
    }
    assert_int_equal(n, 2);
    assert_int_equal(mbedtls_x509_crt_check_extended_key_usage(
                         &c, MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)),
                     0);
    assert_int_not_equal(
        mbedtls_x509_crt_check_extended_key_usage(&c, MBEDTLS_OID_CLIENT_AUTH,
                                                  MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)),
        0);

    /* verifies for its names, not for others */
    uint32_t flags = 0;
    assert_int_equal(mbedtls_x509_crt_verify(&c, &trust, NULL, dns[0], &flags, NULL, NULL), 0);
    assert_int_equal(mbedtls_x509_crt_verify(&c, &trust, NULL, dns[1], &flags, NULL, NULL), 0);
    assert_int_not_equal(mbedtls_x509_crt_verify(&c, &trust, NULL, "other.svc", &flags, NULL, NULL),
                         0);
    assert_true(flags & MBEDTLS_X509_BADCERT_CN_MISMATCH);

    /* its key is the one returned */
    mbedtls_pk_context k;
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_parse(&k, (const unsigned char *)key, strlen(key), &err), 0);
    assert_int_equal(mbedtls_pk_check_pair(&c.pk, &k), 0);
    mbedtls_pk_free(&k);
    /* a server certificate has no SPIFFE ID, and is not a mesh peer */
    char id[PKI_SPIFFE_MAX];
    assert_int_not_equal(pki_crt_spiffe_id(&c, id, sizeof(id), &err), 0);
    assert_non_null(strstr(err, "no URI"));
    free(err);
    mbedtls_x509_crt_free(&c);
    mbedtls_x509_crt_free(&trust);
    free(cert);
    free(key);

    /* refusals */
    static const char *const bad_dns[] = {"a..b", NULL};
    err = NULL;
    assert_int_equal(pki_make_server(NULL, bad_dns, 365, int_pem, int_key, &cert, &key, &err),
                     CM_ERR_INVAL);
    assert_non_null(strstr(err, "DNS name"));
    free(err);
    static const char *const none[] = {NULL};
    err = NULL;
    assert_int_equal(pki_make_server(NULL, none, 365, int_pem, int_key, &cert, &key, &err),
                     CM_ERR_INVAL);
    free(err);
    /* issued by a non-CA: refused */
    char *leaf = issue(ID_WEB, (int64_t)time(NULL), 60);
    err = NULL;
    assert_int_equal(pki_make_server(NULL, dns, 1, leaf, int_key, &cert, &key, &err), CM_ERR_INVAL);
    free(err);
    free(leaf);
}

static void ca_load_errors(void **state)
{
    (void)state;
    struct pki_ca c;
    char *err = NULL;

    /* key does not match */
    assert_int_equal(pki_ca_load_pem(&c, int_pem, root_key, root_pem, &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "does not match"));
    free(err);
    err = NULL;
    pki_ca_free(&c);
    /* does not chain to the given root */
    assert_int_equal(pki_ca_load_pem(&c, int_pem, int_key, root2_pem, &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "does not chain"));
    free(err);
    err = NULL;
    /* a leaf as CA */
    mbedtls_pk_context k;
    char *chain = NULL, *kp = NULL;
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_int_equal(pki_sign_workload(&ca, &k, ID_WEB, 60, &chain, &err), 0);
    assert_int_equal(pki_key_write_pem(&k, &kp, &err), 0);
    assert_int_equal(pki_ca_load_pem(&c, chain, kp, root_pem, &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, "not a CA"));
    free(err);
    err = NULL;
    /* a leaf certificate presented as peer is fine; a CA one is not */
    mbedtls_pk_free(&k);
    free(chain);
    free(kp);
    char *msg = verify(int_pem, root_pem, NULL, NULL);
    assert_non_null(strstr(msg, "CA certificate"));
    free(msg);

    /* the root signing directly, without a bundle: bundle_pem is the root */
    assert_int_equal(pki_ca_load_pem(&c, root_pem, root_key, NULL, &err), 0);
    assert_string_equal(c.chain_pem, "");
    assert_string_equal(c.bundle_pem, root_pem);
    mbedtls_pk_init(&k);
    assert_int_equal(pki_key_generate(&k, &err), 0);
    assert_int_equal(pki_sign_workload(&c, &k, ID_WEB, 60, &chain, &err), 0);
    assert_null(verify(chain, c.bundle_pem, "cluster.local", NULL));
    mbedtls_pk_free(&k);
    pki_ca_free(&c);
    free(chain);
    /* intermediate with root in the same file: the root is not sent along */
    char *both = cm_xasprintf("%s%s", int_pem, root_pem);
    assert_int_equal(pki_ca_load_pem(&c, both, int_key, root_pem, &err), 0);
    assert_string_equal(c.chain_pem, int_pem);
    pki_ca_free(&c);
    free(both);

    /* files: missing, and the happy path through real files */
    assert_int_equal(pki_ca_load(&c, "/nonexistent/int.pem", "/nonexistent/k", NULL, &err),
                     CM_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent/int.pem"));
    free(err);
    err = NULL;
    pki_ca_free(&c);
    char dir[] = "/tmp/remora-pki-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *fc = cm_xasprintf("%s/int.pem", dir), *fk = cm_xasprintf("%s/int-key.pem", dir),
         *fr = cm_xasprintf("%s/root.pem", dir);
    assert_int_equal(pki_write_file(fc, int_pem, strlen(int_pem), 0644, &err), 0);
    assert_int_equal(pki_write_file(fk, int_key, strlen(int_key), 0600, &err), 0);
    assert_int_equal(pki_write_file(fr, root_pem, strlen(root_pem), 0644, &err), 0);
    struct stat st;
    assert_int_equal(stat(fk, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    if (pki_ca_load(&c, fc, fk, fr, &err) != 0)
        fail_msg("pki_ca_load: %s", err);
    pki_ca_free(&c);
    /* a garbage key file is named */
    assert_int_equal(pki_write_file(fk, "nope", 4, 0600, &err), 0);
    assert_int_equal(pki_ca_load(&c, fc, fk, fr, &err), CM_ERR_INVAL);
    assert_non_null(strstr(err, fk));
    free(err);
    pki_ca_free(&c);
    unlink(fc);
    unlink(fk);
    unlink(fr);
    rmdir(dir);
    free(fc);
    free(fk);
    free(fr);
}

static void bundles(void **state)
{
    (void)state;
    mbedtls_x509_crt b;
    char *err = NULL;
    /* two roots, with text and a key block around them */
    char *text = cm_xasprintf("# roots\n%s\nsome words\n%s%s", root_pem, root_key, root2_pem);
    mbedtls_x509_crt_init(&b);
    assert_int_equal(pki_bundle_parse(&b, (const unsigned char *)text, strlen(text), &err), 0);
    assert_non_null(b.next);
    assert_null(b.next->next);
    mbedtls_x509_crt_free(&b);
    free(text);

    /* the second certificate is broken: named */
    char *broken = cm_xstrdup(root2_pem);
    broken[40] = broken[40] == 'A' ? 'B' : 'A';
    broken[41] = '*';
    text = cm_xasprintf("%s%s", root_pem, broken);
    mbedtls_x509_crt_init(&b);
    assert_int_not_equal(pki_bundle_parse(&b, (const unsigned char *)text, strlen(text), &err), 0);
    assert_non_null(strstr(err, "certificate 2"));
    free(err);
    err = NULL;
    mbedtls_x509_crt_free(&b);
    free(text);
    free(broken);

    static const char *const bad[] = {
        "", "hello", "-----BEGIN CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mbedtls_x509_crt_init(&b);
        assert_int_not_equal(
            pki_bundle_parse(&b, (const unsigned char *)bad[i], strlen(bad[i]), &err), 0);
        assert_non_null(err);
        free(err);
        err = NULL;
        mbedtls_x509_crt_free(&b);
    }
    mbedtls_x509_crt_init(&b);
    assert_int_equal(pki_bundle_load_file(&b, "/nonexistent/bundle.pem", &err), CM_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent/bundle.pem"));
    free(err);
    mbedtls_x509_crt_free(&b);

    /* empty bundle / empty chain in verify */
    mbedtls_x509_crt empty;
    mbedtls_x509_crt_init(&empty);
    char id[PKI_SPIFFE_MAX];
    err = NULL;
    assert_int_equal(pki_verify_peer(&empty, &empty, NULL, id, sizeof(id), &err), CM_ERR_INVAL);
    free(err);
}

/* ---- DER walkers on hostile input ------------------------------------------------------ */

static void der_walkers(void **state)
{
    (void)state;
    const unsigned char *v;
    size_t vlen;
    static const char oid[] = MBEDTLS_OID_SUBJECT_ALT_NAME;
    size_t oidlen = MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME);
    /* Extensions: SEQ { SEQ { OID 2.5.29.17, OCTET STRING { 30 00 } } } */
    static const unsigned char one[] = {0x30, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55,
                                        0x1d, 0x11, 0x04, 0x02, 0x30, 0x00};
    assert_int_equal(pki_der_find_ext(one, sizeof(one), oid, oidlen, &v, &vlen, NULL), 0);
    assert_int_equal(vlen, 2);
    /* every truncation fails cleanly */
    for (size_t n = 0; n < sizeof(one); n++)
        assert_int_not_equal(pki_der_find_ext(one, n, oid, oidlen, &v, &vlen, NULL), 0);
    /* twice the same extension */
    static const unsigned char twice[] = {0x30, 0x16, 0x30, 0x09, 0x06, 0x03, 0x55, 0x1d,
                                          0x11, 0x04, 0x02, 0x30, 0x00, 0x30, 0x09, 0x06,
                                          0x03, 0x55, 0x1d, 0x11, 0x04, 0x02, 0x30, 0x00};
    assert_int_equal(pki_der_find_ext(twice, sizeof(twice), oid, oidlen, &v, &vlen, NULL),
                     CM_ERR_INVAL);
    /* a length that points past the end */
    static const unsigned char lying[] = {0x30, 0x0b, 0x30, 0x7f, 0x06, 0x03, 0x55,
                                          0x1d, 0x11, 0x04, 0x02, 0x30, 0x00};
    assert_int_equal(pki_der_find_ext(lying, sizeof(lying), oid, oidlen, &v, &vlen, NULL),
                     CM_ERR_INVAL);
    /* critical flag */
    static const unsigned char crit[] = {0x30, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d,
                                         0x11, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00};
    bool c = false;
    assert_int_equal(pki_der_find_ext(crit, sizeof(crit), oid, oidlen, &v, &vlen, &c), 0);
    assert_true(c);

    /* SAN walker */
    const unsigned char *uri;
    size_t urilen;
    char *err = NULL;
    static const unsigned char san_ok[] = {0x30, 0x05, 0x86, 0x03, 'a', ':', 'b'};
    assert_int_equal(pki_san_single_uri(san_ok, sizeof(san_ok), true, &uri, &urilen, &err), 0);
    assert_int_equal(urilen, 3);
    for (size_t n = 0; n < sizeof(san_ok); n++) {
        assert_int_not_equal(pki_san_single_uri(san_ok, n, true, &uri, &urilen, &err), 0);
        free(err);
        err = NULL;
    }
    static const unsigned char universal[] = {0x30, 0x02, 0x04, 0x00};
    assert_int_not_equal(
        pki_san_single_uri(universal, sizeof(universal), false, &uri, &urilen, &err), 0);
    free(err);
    err = NULL;
    static const unsigned char hightag[] = {0x30, 0x03, 0x9f, 0x01, 0x00};
    assert_int_not_equal(pki_san_single_uri(hightag, sizeof(hightag), false, &uri, &urilen, &err),
                         0);
    free(err);
}

static void time_and_rng(void **state)
{
    (void)state;
    /* our epoch conversion against timegm() */
    static const int64_t samples[] = {0, 951782400 /* 2000-02-29 */, 1700000000, 4102444800,
                                      253402300799};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        time_t t = (time_t)samples[i];
        struct tm tm;
        gmtime_r(&t, &tm);
        mbedtls_x509_time xt = {tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                                tm.tm_hour,        tm.tm_min,     tm.tm_sec};
        assert_int_equal(pki_x509_time_epoch(&xt), samples[i]);
        char s[15];
        pki_x509_time_str(samples[i], s);
        assert_int_equal(strlen(s), 14);
    }
    char s[15];
    pki_x509_time_str(INT64_MAX, s);
    assert_string_equal(s, "99991231235959");
    pki_x509_time_str(INT64_MIN, s);
    assert_string_equal(s, "19500101000000");

    /* the CSPRNG: large requests work, output differs */
    unsigned char a[3000], b[3000];
    assert_int_equal(pki_rng_fn(NULL, a, sizeof(a)), 0);
    assert_int_equal(pki_rng_fn(NULL, b, sizeof(b)), 0);
    assert_memory_not_equal(a, b, sizeof(a));
    assert_non_null(pki_rng());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(key_generate_and_parse),
        cmocka_unit_test(key_refusals),
        cmocka_unit_test(spiffe_valid),
        cmocka_unit_test(spiffe_invalid),
        cmocka_unit_test(spiffe_build_refusals),
        cmocka_unit_test(csr_round_trip),
        cmocka_unit_test(csr_corrupt_signature),
        cmocka_unit_test(csr_client_flavours),
        cmocka_unit_test(csr_san_refusals),
        cmocka_unit_test(chain_verifies),
        cmocka_unit_test(chain_expired),
        cmocka_unit_test(workload_extensions),
        cmocka_unit_test(serials_differ),
        cmocka_unit_test(server_cert),
        cmocka_unit_test(ca_load_errors),
        cmocka_unit_test(bundles),
        cmocka_unit_test(der_walkers),
        cmocka_unit_test(time_and_rng),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
