/* Certificate writing and the CA: loading the signing certificate, its
 * chain, its key and the root bundle, and signing workload certificates
 * (URI SAN, KU, EKU, basic constraints, SKI/AKI, random serial). */
#include "certs/pki.h"

#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "certs/internal.h"
#include "common/err.h"
#include "common/xalloc.h"

#define SKEW_S 300 /* not_before is backdated this much for peers' clock skew */

/* The issuer's subject, copied DER value by DER value (string type kept),
 * as the mbedTLS writer's name list. Going through mbedtls_x509_dn_gets
 * and back would lose string types and break on ',' in values; the
 * issuer field must match the issuer's subject byte for byte. The writer
 * emits the list head last, so the list is built in reverse. */
static int issuer_names(const mbedtls_x509_crt *issuer, mbedtls_asn1_named_data **out,
                        char **errmsg)
{
    mbedtls_asn1_named_data *head = NULL;
    for (const mbedtls_x509_name *n = &issuer->subject; n != NULL; n = n->next) {
        if (n->oid.p == NULL)
            continue;
        if (n->next_merged) {
            mbedtls_asn1_free_named_data_list(&head);
            return pki_fail(errmsg, CM_ERR_INVAL,
                            "issuer subject has a multi-valued RDN (not supported)");
        }
        mbedtls_asn1_named_data *c = cm_xcalloc(1, sizeof(*c));
        c->oid.tag = n->oid.tag;
        c->oid.len = n->oid.len;
        c->oid.p = cm_xmalloc(n->oid.len);
        memcpy(c->oid.p, n->oid.p, n->oid.len);
        c->val.tag = n->val.tag;
        c->val.len = n->val.len;
        c->val.p = cm_xmalloc(n->val.len);
        if (n->val.len > 0)
            memcpy(c->val.p, n->val.p, n->val.len);
        c->next = head;
        head = c;
    }
    *out = head;
    return 0;
}

/* The issuer's subjectKeyIdentifier, if it has one (mbedTLS 2.28 does not
 * expose it): the AKI must repeat it, or path building by key id fails. */
static int issuer_ski(const mbedtls_x509_crt *issuer, const unsigned char **ski, size_t *len)
{
    const unsigned char *exts, *v;
    size_t elen, vlen;
    if (pki_crt_exts(issuer, &exts, &elen) != 0)
        return CM_ERR_NOTFOUND;
    if (pki_der_find_ext(exts, elen, MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER,
                         MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER), &v, &vlen,
                         NULL) != 0)
        return CM_ERR_NOTFOUND;
    unsigned char *p = (unsigned char *)v;
    size_t n;
    if (mbedtls_asn1_get_tag(&p, v + vlen, &n, MBEDTLS_ASN1_OCTET_STRING) != 0 ||
        p + n != v + vlen || n == 0 || n > 64)
        return CM_ERR_NOTFOUND;
    *ski = p;
    *len = n;
    return 0;
}

static int set_aki(mbedtls_x509write_cert *w, const mbedtls_x509_crt *issuer)
{
    const unsigned char *ski;
    size_t skilen;
    if (issuer == NULL || issuer_ski(issuer, &ski, &skilen) != 0)
        return mbedtls_x509write_crt_set_authority_key_identifier(w);
    /* AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING } */
    unsigned char buf[80], *p = buf + sizeof(buf);
    int ret;
    size_t len = 0;
    MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(&p, buf, ski, skilen));
    MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, skilen));
    MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0));
    MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
    MBEDTLS_ASN1_CHK_ADD(
        len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
    return mbedtls_x509write_crt_set_extension(
        w, MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER,
        MBEDTLS_OID_SIZE(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER), 0, p, len);
}

/* 128 bits from the CSPRNG with the top bit cleared: a positive INTEGER
 * of at most 16 bytes (RFC 5280 allows 20), unguessable (CA/B 7.1). */
static int set_serial(mbedtls_x509write_cert *w)
{
    unsigned char b[16];
    mbedtls_mpi s;
    int ret = pki_rng_fn(NULL, b, sizeof(b));
    if (ret != 0)
        return ret;
    b[0] &= 0x7f;
    if (b[0] == 0)
        b[0] = 0x01; /* keep the full length, and never a zero serial */
    mbedtls_mpi_init(&s);
    if ((ret = mbedtls_mpi_read_binary(&s, b, sizeof(b))) == 0)
        ret = mbedtls_x509write_crt_set_serial(w, &s);
    mbedtls_mpi_free(&s);
    return ret;
}

int pki_crt_write(const struct pki_tbs *t, char **pem, char **errmsg)
{
    mbedtls_x509write_cert w;
    mbedtls_asn1_named_data *iname = NULL;
    unsigned char *san = NULL, *der = NULL;
    int rc = CM_ERR_INVAL, ret;
    const char *step = "";

    mbedtls_x509write_crt_init(&w);
    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, t->subject_key);
    mbedtls_x509write_crt_set_issuer_key(&w, t->issuer_key);

    int64_t nb = t->not_before, na = t->not_after;
    if (t->issuer != NULL) {
        /* a certificate outliving its issuer would only fail later */
        int64_t ina = pki_x509_time_epoch(&t->issuer->valid_to);
        if (na > ina)
            na = ina;
    }
    if (na <= nb) {
        rc = pki_fail(errmsg, CM_ERR_INVAL, "certificate: empty validity period");
        goto out;
    }
    char snb[15], sna[15];
    pki_x509_time_str(nb, snb);
    pki_x509_time_str(na, sna);
    step = "validity";
    if ((ret = mbedtls_x509write_crt_set_validity(&w, snb, sna)) != 0)
        goto fail_mbed;
    step = "serial";
    if ((ret = set_serial(&w)) != 0)
        goto fail_mbed;
    step = "subject";
    if ((ret = mbedtls_x509write_crt_set_subject_name(&w, t->subject)) != 0)
        goto fail_mbed;
    if (t->issuer != NULL) {
        if ((rc = issuer_names(t->issuer, &iname, errmsg)) != 0)
            goto out;
        w.issuer = iname; /* freed by mbedtls_x509write_crt_free */
        iname = NULL;
    } else {
        step = "issuer";
        if ((ret = mbedtls_x509write_crt_set_issuer_name(&w, t->subject)) != 0)
            goto fail_mbed;
    }
    step = "basicConstraints";
    if ((ret = mbedtls_x509write_crt_set_basic_constraints(&w, t->ca, t->ca ? t->pathlen : -1)) !=
        0)
        goto fail_mbed;
    step = "subjectKeyIdentifier";
    if ((ret = mbedtls_x509write_crt_set_subject_key_identifier(&w)) != 0)
        goto fail_mbed;
    step = "authorityKeyIdentifier";
    if ((ret = set_aki(&w, t->issuer)) != 0)
        goto fail_mbed;
    step = "keyUsage";
    if ((ret = mbedtls_x509write_crt_set_key_usage(&w, t->key_usage)) != 0)
        goto fail_mbed;
    if (t->eku_server || t->eku_client) {
        unsigned char ebuf[32];
        const unsigned char *eku;
        size_t ekulen;
        if (pki_der_eku(t->eku_server, t->eku_client, ebuf, sizeof(ebuf), &eku, &ekulen) != 0) {
            rc = pki_fail(errmsg, CM_ERR_INVAL, "certificate: cannot encode extendedKeyUsage");
            goto out;
        }
        step = "extendedKeyUsage";
        if ((ret = mbedtls_x509write_crt_set_extension(
                 &w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                 MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, eku, ekulen)) != 0)
            goto fail_mbed;
    }
    if (t->uri != NULL || (t->dns != NULL && t->dns[0] != NULL)) {
        size_t sanlen;
        if (pki_der_san(t->uri, t->dns, &san, &sanlen) != 0) {
            rc = pki_fail(errmsg, CM_ERR_INVAL, "certificate: cannot encode subjectAltName");
            goto out;
        }
        step = "subjectAltName";
        if ((ret = mbedtls_x509write_crt_set_extension(
                 &w, MBEDTLS_OID_SUBJECT_ALT_NAME, MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                 0, san, sanlen)) != 0)
            goto fail_mbed;
    }

    size_t cap = 4096;
    for (;;) {
        der = cm_xmalloc(cap);
        ret = mbedtls_x509write_crt_der(&w, der, cap, pki_rng_fn, NULL);
        if (ret != MBEDTLS_ERR_ASN1_BUF_TOO_SMALL || cap >= 65536)
            break;
        free(der);
        der = NULL;
        cap *= 4;
    }
    step = "signing";
    if (ret < 0)
        goto fail_mbed;
    /* the DER sits at the end of the buffer */
    *pem = pki_der_to_pem("CERTIFICATE", der + cap - (size_t)ret, (size_t)ret);
    rc = 0;
    goto out;

fail_mbed:
    rc = pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "certificate: %s", step);
out:
    free(der);
    free(san);
    mbedtls_asn1_free_named_data_list(&iname);
    mbedtls_x509write_crt_free(&w);
    return rc;
}

char *pki_chain_pem_skip_roots(const mbedtls_x509_crt *from)
{
    char *s = cm_xstrdup("");
    for (const mbedtls_x509_crt *c = from; c != NULL && c->raw.p != NULL; c = c->next) {
        if (pki_crt_self_issued(c))
            continue;
        char *p = pki_der_to_pem("CERTIFICATE", c->raw.p, c->raw.len);
        pki_str_append(&s, p);
        free(p);
    }
    return s;
}

char *pki_chain_pem_all(const mbedtls_x509_crt *chain)
{
    char *s = cm_xstrdup("");
    for (const mbedtls_x509_crt *c = chain; c != NULL && c->raw.p != NULL; c = c->next) {
        char *p = pki_der_to_pem("CERTIFICATE", c->raw.p, c->raw.len);
        pki_str_append(&s, p);
        free(p);
    }
    return s;
}

/* Join mbedtls_x509_crt_verify_info's lines into one "; "-separated line. */
char *pki_verify_flags_text(uint32_t flags)
{
    char buf[1024];
    int n = mbedtls_x509_crt_verify_info(buf, sizeof(buf), "", flags);
    if (n <= 0)
        return cm_xasprintf("verification flags 0x%08x", (unsigned)flags);
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    char *s = cm_xmalloc((size_t)n * 2 + 1);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            s[o++] = ';';
            s[o++] = ' ';
        } else {
            s[o++] = buf[i];
        }
    }
    s[o] = '\0';
    return s;
}

void pki_ca_init(struct pki_ca *ca)
{
    memset(ca, 0, sizeof(*ca));
    mbedtls_x509_crt_init(&ca->issuer);
    mbedtls_pk_init(&ca->key);
}

void pki_ca_free(struct pki_ca *ca)
{
    if (ca == NULL)
        return;
    mbedtls_x509_crt_free(&ca->issuer);
    mbedtls_pk_free(&ca->key);
    free(ca->chain_pem);
    free(ca->bundle_pem);
    pki_ca_init(ca);
}

/* name_*: how messages call each input (a file name, or "CA certificate"). */
static int ca_load(struct pki_ca *ca, const unsigned char *cert, size_t certlen,
                   const char *name_cert, const unsigned char *key, size_t keylen,
                   const char *name_key, const unsigned char *root, size_t rootlen,
                   const char *name_root, char **errmsg)
{
    mbedtls_x509_crt roots;
    char *inner = NULL;
    int rc, ret;

    pki_ca_init(ca);
    mbedtls_x509_crt_init(&roots);
    if ((rc = pki_bundle_parse(&ca->issuer, cert, certlen, &inner)) != 0) {
        pki_fail(errmsg, rc, "%s: %s", name_cert, inner);
        goto fail;
    }
    if ((rc = pki_key_parse(&ca->key, key, keylen, &inner)) != 0) {
        pki_fail(errmsg, rc, "%s: %s", name_key, inner);
        goto fail;
    }
    if ((rc = pki_key_check_strength(&ca->key, name_key, errmsg)) != 0)
        goto fail;
    if (mbedtls_pk_check_pair(&ca->issuer.pk, &ca->key) != 0) {
        rc = pki_fail(errmsg, CM_ERR_INVAL, "%s: key does not match the certificate in %s",
                      name_key, name_cert);
        goto fail;
    }
    if (!ca->issuer.ca_istrue) {
        rc = pki_fail(errmsg, CM_ERR_INVAL, "%s: not a CA certificate (basicConstraints cA false)",
                      name_cert);
        goto fail;
    }
    if (mbedtls_x509_crt_check_key_usage(&ca->issuer, MBEDTLS_X509_KU_KEY_CERT_SIGN) != 0) {
        rc = pki_fail(errmsg, CM_ERR_INVAL, "%s: keyUsage lacks keyCertSign", name_cert);
        goto fail;
    }
    ca->chain_pem = pki_chain_pem_skip_roots(&ca->issuer);
    if (root == NULL) {
        /* No bundle given: the roots are whatever self-issued certificates
         * the certificate file holds (none for a bare intermediate). */
        char *all = cm_xstrdup("");
        for (const mbedtls_x509_crt *c = &ca->issuer; c != NULL && c->raw.p != NULL; c = c->next)
            if (pki_crt_self_issued(c)) {
                char *p = pki_der_to_pem("CERTIFICATE", c->raw.p, c->raw.len);
                pki_str_append(&all, p);
                free(p);
            }
        ca->bundle_pem = all;
    } else {
        if ((rc = pki_bundle_parse(&roots, root, rootlen, &inner)) != 0) {
            pki_fail(errmsg, rc, "%s: %s", name_root, inner);
            goto fail;
        }
        uint32_t flags = 0;
        ret = mbedtls_x509_crt_verify(&ca->issuer, &roots, NULL, NULL, &flags, NULL, NULL);
        if (ret != 0) {
            char *why = pki_verify_flags_text(flags);
            rc = pki_fail(errmsg, CM_ERR_INVAL, "%s: does not chain to a root in %s: %s", name_cert,
                          name_root, why);
            free(why);
            goto fail;
        }
        ca->bundle_pem = pki_chain_pem_all(&roots);
    }
    mbedtls_x509_crt_free(&roots);
    return 0;

fail:
    free(inner);
    mbedtls_x509_crt_free(&roots);
    pki_ca_free(ca);
    return rc;
}

int pki_ca_load_pem(struct pki_ca *ca, const char *cert_pem, const char *key_pem,
                    const char *root_pem, char **errmsg)
{
    if (cert_pem == NULL || key_pem == NULL) {
        pki_ca_init(ca);
        return pki_fail(errmsg, CM_ERR_INVAL, "CA: certificate and key are required");
    }
    return ca_load(ca, (const unsigned char *)cert_pem, strlen(cert_pem), "CA certificate",
                   (const unsigned char *)key_pem, strlen(key_pem), "CA key",
                   (const unsigned char *)root_pem, root_pem ? strlen(root_pem) : 0, "root bundle",
                   errmsg);
}

int pki_ca_load(struct pki_ca *ca, const char *cert_file, const char *key_file,
                const char *root_file, char **errmsg)
{
    unsigned char *cert = NULL, *key = NULL, *root = NULL;
    size_t certlen = 0, keylen = 0, rootlen = 0;
    int rc;

    pki_ca_init(ca);
    if ((rc = pki_read_file(cert_file, PKI_MAX_PEM, &cert, &certlen, errmsg)) != 0)
        goto out;
    if ((rc = pki_read_file(key_file, PKI_MAX_KEY, &key, &keylen, errmsg)) != 0)
        goto out;
    if (root_file != NULL &&
        (rc = pki_read_file(root_file, PKI_MAX_PEM, &root, &rootlen, errmsg)) != 0)
        goto out;
    rc = ca_load(ca, cert, certlen, cert_file, key, keylen, key_file, root, rootlen, root_file,
                 errmsg);
out:
    if (key != NULL)
        mbedtls_platform_zeroize(key, keylen);
    free(cert);
    free(key);
    free(root);
    return rc;
}

int pki_sign_workload_at(const struct pki_ca *ca, mbedtls_pk_context *subject_key,
                         const char *spiffe_id, int64_t now, uint32_t ttl_s, char **chain_pem,
                         char **errmsg)
{
    int rc;
    if (ca == NULL || ca->issuer.raw.p == NULL || ca->chain_pem == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "sign: CA not loaded");
    if (ttl_s == 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "sign: ttl must be at least 1 second");
    if ((rc = pki_spiffe_parse(spiffe_id, NULL, NULL, NULL, errmsg)) != 0)
        return rc;
    if ((rc = pki_key_check_strength(subject_key, "sign: subject key", errmsg)) != 0)
        return rc;
    char *subject = pki_spiffe_subject(spiffe_id);
    struct pki_tbs t = {
        .subject = subject,
        .subject_key = subject_key,
        .issuer = &ca->issuer,
        /* mbedTLS's writer takes a non-const key; signing does not modify it */
        .issuer_key = (mbedtls_pk_context *)&ca->key,
        .not_before = now - SKEW_S,
        .not_after = now + (int64_t)ttl_s,
        .ca = false,
        .pathlen = -1,
        .key_usage = MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_ENCIPHERMENT,
        .eku_server = true,
        .eku_client = true,
        .uri = spiffe_id,
    };
    char *leaf = NULL;
    rc = pki_crt_write(&t, &leaf, errmsg);
    free(subject);
    if (rc != 0)
        return rc;
    pki_str_append(&leaf, ca->chain_pem);
    *chain_pem = leaf;
    return 0;
}

int pki_sign_workload(const struct pki_ca *ca, mbedtls_pk_context *subject_key,
                      const char *spiffe_id, uint32_t ttl_s, char **chain_pem, char **errmsg)
{
    return pki_sign_workload_at(ca, subject_key, spiffe_id, (int64_t)time(NULL), ttl_s, chain_pem,
                                errmsg);
}
