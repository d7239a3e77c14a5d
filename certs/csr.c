/* CSRs: writing one for a workload key with its SPIFFE ID as the only URI
 * SAN, and parsing + verifying one on the CA side. The SAN extension is
 * DER we write ourselves and read back by walking the
 * CertificationRequestInfo (mbedTLS 2.28 neither writes nor parses it). */
#include "certs/pki.h"

#include <mbedtls/md.h>
#include <mbedtls/asn1.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/platform_util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs/internal.h"
#include "common/err.h"
#include "common/xalloc.h"

/* "O=<td>,OU=<ns>,CN=<sa>", each value cut to 64 characters (X.520's upper
 * bound; the SAN, not the subject, carries the identity). The parts were
 * validated, so they hold no ',' or '\\' that mbedTLS would interpret. */
char *pki_spiffe_subject(const char *spiffe_id)
{
    char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX];
    if (pki_spiffe_parse(spiffe_id, td, ns, sa, NULL) != 0)
        return NULL;
    return cm_xasprintf("O=%.64s,OU=%.64s,CN=%.64s", td, ns, sa);
}

int pki_csr_new(mbedtls_pk_context *key, const char *spiffe_id, char **pem, char **errmsg)
{
    mbedtls_x509write_csr w;
    unsigned char *san = NULL, *buf = NULL;
    size_t sanlen;
    char *subject = NULL;
    int rc, ret;

    if ((rc = pki_spiffe_parse(spiffe_id, NULL, NULL, NULL, errmsg)) != 0)
        return rc;
    if ((rc = pki_key_check_strength(key, "CSR key", errmsg)) != 0)
        return rc;
    mbedtls_x509write_csr_init(&w);
    mbedtls_x509write_csr_set_key(&w, key);
    mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
    subject = pki_spiffe_subject(spiffe_id);
    if ((ret = mbedtls_x509write_csr_set_subject_name(&w, subject)) != 0) {
        rc = pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: subject");
        goto out;
    }
    if (pki_der_san(spiffe_id, NULL, &san, &sanlen) != 0) {
        rc = pki_fail(errmsg, CM_ERR_INVAL, "CSR: cannot encode subjectAltName");
        goto out;
    }
    ret = mbedtls_x509write_csr_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                              MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), san,
                                              sanlen);
    if (ret != 0) {
        rc = pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: subjectAltName");
        goto out;
    }
    size_t cap = 8192;
    buf = cm_xmalloc(cap);
    if ((ret = mbedtls_x509write_csr_pem(&w, buf, cap, pki_rng_fn, NULL)) != 0) {
        rc = pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: writing");
        goto out;
    }
    *pem = cm_xstrdup((char *)buf);
    rc = 0;
out:
    free(buf);
    free(san);
    free(subject);
    mbedtls_x509write_csr_free(&w);
    return rc;
}

/* Check the CSR's self-signature over its CertificationRequestInfo (the
 * bytes the requester signed: cri, cri_len): proof that the requester holds
 * the private key. */
static int csr_verify_sig(const mbedtls_x509_csr *csr, const unsigned char *cri, size_t cri_len,
                          char **errmsg)
{
    if (csr->sig_md != MBEDTLS_MD_SHA256 && csr->sig_md != MBEDTLS_MD_SHA384 &&
        csr->sig_md != MBEDTLS_MD_SHA512)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: signature hash not accepted (SHA-256/384/512)");
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(csr->sig_md);
    unsigned char hash[MBEDTLS_MD_MAX_SIZE];
    int ret;
    if (md == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: unknown signature hash");
    if ((ret = mbedtls_md(md, cri, cri_len, hash)) != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: hashing");
    ret =
        mbedtls_pk_verify_ext(csr->sig_pk, csr->sig_opts, (mbedtls_pk_context *)&csr->pk,
                              csr->sig_md, hash, mbedtls_md_get_size(md), csr->sig.p, csr->sig.len);
    if (ret != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: signature does not verify");
    return 0;
}

/* A DER length field for n (n < 64 KiB here): returns its size in out[]. */
static size_t der_len(size_t n, unsigned char out[3])
{
    if (n < 0x80) {
        out[0] = (unsigned char)n;
        return 1;
    }
    if (n < 0x100) {
        out[0] = 0x81;
        out[1] = (unsigned char)n;
        return 2;
    }
    out[0] = 0x82;
    out[1] = (unsigned char)(n >> 8);
    out[2] = (unsigned char)n;
    return 3;
}

/* What mbedTLS 2.28 parses in place of an empty subject: CN=- (only the
 * parser sees it; the CA rewrites the subject anyway). */
static const unsigned char placeholder_name[] = {0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06,
                                                 0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, 0x2d};

/* mbedTLS 2.28 refuses an empty Name (MBEDTLS_ERR_X509_INVALID_NAME), which
 * is what Go's x509.CreateCertificateRequest, Python's cryptography and
 * SPIFFE clients send with a URI SAN and no subject. For such a CSR (DER in
 * der, len), build a copy whose empty subject (30 00) is the placeholder,
 * everything else byte for byte, and parse that with mbedTLS. *cri, *cri_len
 * point at the original CertificationRequestInfo inside der, the bytes the
 * signature covers. Returns 0, CM_ERR_NOTFOUND when the subject is not
 * empty (not this case), or CM_ERR_INVAL. */
static int parse_empty_subject(mbedtls_x509_csr *csr, const unsigned char *der, size_t len,
                               const unsigned char **cri, size_t *cri_len)
{
    unsigned char *p = (unsigned char *)der, *end = p + len, *out = NULL;
    const unsigned char *c0, *ver, *rest, *cend;
    size_t n, outlen;
    int ret;

    if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0 ||
        p + n != end)
        return CM_ERR_INVAL;
    c0 = p;
    if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
        return CM_ERR_INVAL;
    cend = p + n;
    ver = p;
    if (mbedtls_asn1_get_tag(&p, cend, &n, MBEDTLS_ASN1_INTEGER) != 0)
        return CM_ERR_INVAL;
    p += n;
    if (cend - p < 2 || p[0] != (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) || p[1] != 0)
        return CM_ERR_NOTFOUND;
    rest = p + 2;

    /* CRI' = SEQ { version, placeholder, rest }; CSR' = SEQ { CRI', tail } */
    size_t vlen = (size_t)(rest - 2 - ver), rlen = (size_t)(cend - rest);
    size_t tail = (size_t)(end - cend);
    size_t cri_in = vlen + sizeof(placeholder_name) + rlen;
    unsigned char l1[3], l2[3];
    size_t l1n = der_len(cri_in, l1);
    size_t outer_in = 1 + l1n + cri_in + tail;
    if (outer_in > 0xffff)
        return CM_ERR_INVAL;
    size_t l2n = der_len(outer_in, l2);
    outlen = 1 + l2n + outer_in;
    out = cm_xmalloc(outlen);
    unsigned char *w = out;
    *w++ = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;
    memcpy(w, l2, l2n), w += l2n;
    *w++ = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;
    memcpy(w, l1, l1n), w += l1n;
    memcpy(w, ver, vlen), w += vlen;
    memcpy(w, placeholder_name, sizeof(placeholder_name)), w += sizeof(placeholder_name);
    memcpy(w, rest, rlen), w += rlen;
    memcpy(w, cend, tail);
    ret = mbedtls_x509_csr_parse_der(csr, out, outlen); /* copies out */
    free(out);
    if (ret != 0)
        return CM_ERR_INVAL;
    /* The placeholder is not the requester's: forget it (one RDN, so
     * subject.next is NULL and nothing is allocated). */
    memset(&csr->subject, 0, sizeof(csr->subject));
    memset(&csr->subject_raw, 0, sizeof(csr->subject_raw));
    *cri = c0;
    *cri_len = (size_t)(cend - c0);
    return 0;
}

/* Parse a CSR, PEM or DER, at most PKI_MAX_CSR bytes, into csr; an empty subject is accepted
 * (parse_empty_subject). *der receives a heap copy of the DER when the
 * signed bytes are not csr->cri (caller frees; NULL otherwise), and
 * *cri, *cri_len the bytes the signature covers. */
static int csr_parse(mbedtls_x509_csr *csr, const unsigned char *in, size_t len,
                     unsigned char **der, const unsigned char **cri, size_t *cri_len, char **errmsg)
{
    int ret;
    *der = NULL;
    if (in == NULL || len == 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: empty");
    if (len > PKI_MAX_CSR)
        return pki_fail(errmsg, CM_ERR_LIMIT, "CSR: larger than %u bytes", PKI_MAX_CSR);
    bool pem = pki_looks_pem(in, len);
    unsigned char *c = NULL;
    if (pem && in[len - 1] != '\0') {
        c = pki_nul_copy(in, len);
        ret = mbedtls_x509_csr_parse(csr, c, len + 1);
    } else {
        ret = mbedtls_x509_csr_parse(csr, in, len);
    }
    if (ret == 0) {
        free(c);
        *cri = csr->cri.p;
        *cri_len = csr->cri.len;
        return 0;
    }
    int first = ret;
    const unsigned char *src = c != NULL ? c : in;
    size_t dlen = len;
    mbedtls_pem_context pc;
    mbedtls_pem_init(&pc);
    ret = 0; /* DER: used as it came */
    if (pem) {
        size_t used;
        const char *const types[][2] = {
            {"-----BEGIN CERTIFICATE REQUEST-----", "-----END CERTIFICATE REQUEST-----"},
            {"-----BEGIN NEW CERTIFICATE REQUEST-----", "-----END NEW CERTIFICATE REQUEST-----"}};
        ret = -1;
        for (size_t i = 0; i < 2 && ret != 0; i++) {
            mbedtls_pem_free(&pc);
            mbedtls_pem_init(&pc);
            ret = mbedtls_pem_read_buffer(&pc, types[i][0], types[i][1], src, NULL, 0, &used);
        }
        if (ret == 0) {
            src = pc.buf;
            dlen = pc.buflen;
        }
    }
    int rc = CM_ERR_INVAL;
    /* only a Name mbedTLS refused can be the empty subject */
    if (ret == 0 && (-first & 0xff80) == -MBEDTLS_ERR_X509_INVALID_NAME) {
        *der = cm_xmalloc(dlen);
        memcpy(*der, src, dlen);
        mbedtls_x509_csr_free(csr);
        mbedtls_x509_csr_init(csr);
        rc = parse_empty_subject(csr, *der, dlen, cri, cri_len);
        if (rc != 0) {
            free(*der);
            *der = NULL;
            mbedtls_x509_csr_free(csr);
            mbedtls_x509_csr_init(csr);
        }
    }
    mbedtls_pem_free(&pc);
    free(c);
    if (rc != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, first, "CSR: parse");
    return 0;
}

int pki_csr_parse(mbedtls_x509_csr *csr, const unsigned char *in, size_t len, char **errmsg)
{
    unsigned char *der = NULL;
    const unsigned char *cri;
    size_t cri_len;
    int rc = csr_parse(csr, in, len, &der, &cri, &cri_len, errmsg);
    free(der);
    return rc;
}

int pki_csr_parse_verify(mbedtls_x509_csr *csr, const unsigned char *pem, size_t len,
                         char *spiffe_id, size_t idlen, char **errmsg)
{
    int rc;
    unsigned char *der = NULL;
    const unsigned char *cri;
    size_t cri_len;
    if ((rc = csr_parse(csr, pem, len, &der, &cri, &cri_len, errmsg)) != 0)
        return rc;
    if (csr->version != 1) {
        rc = pki_fail(errmsg, CM_ERR_INVAL, "CSR: version %d (1 expected)", csr->version);
        goto out;
    }
    if ((rc = pki_key_check_strength(&csr->pk, "CSR key", errmsg)) != 0)
        goto out;
    if ((rc = csr_verify_sig(csr, cri, cri_len, errmsg)) != 0)
        goto out;
    rc = pki_csr_spiffe_id(csr, spiffe_id, idlen, errmsg);
out:
    free(der);
    return rc;
}
