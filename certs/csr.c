/* CSRs: writing one for a workload key with its SPIFFE ID as the only URI
 * SAN, and parsing + verifying one on the CA side. The SAN extension is
 * DER we write ourselves and read back by walking the
 * CertificationRequestInfo (mbedTLS 2.28 neither writes nor parses it). */
#include "certs/pki.h"

#include <mbedtls/md.h>
#include <mbedtls/oid.h>
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

/* Check the CSR's self-signature over its CertificationRequestInfo: proof
 * that the requester holds the private key. */
static int csr_verify_sig(const mbedtls_x509_csr *csr, char **errmsg)
{
    if (csr->sig_md != MBEDTLS_MD_SHA256 && csr->sig_md != MBEDTLS_MD_SHA384 &&
        csr->sig_md != MBEDTLS_MD_SHA512)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: signature hash not accepted (SHA-256/384/512)");
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(csr->sig_md);
    unsigned char hash[MBEDTLS_MD_MAX_SIZE];
    int ret;
    if (md == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: unknown signature hash");
    if ((ret = mbedtls_md(md, csr->cri.p, csr->cri.len, hash)) != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: hashing");
    ret =
        mbedtls_pk_verify_ext(csr->sig_pk, csr->sig_opts, (mbedtls_pk_context *)&csr->pk,
                              csr->sig_md, hash, mbedtls_md_get_size(md), csr->sig.p, csr->sig.len);
    if (ret != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: signature does not verify");
    return 0;
}

int pki_csr_parse_verify(mbedtls_x509_csr *csr, const unsigned char *pem, size_t len,
                         char *spiffe_id, size_t idlen, char **errmsg)
{
    int rc, ret;
    if (pem == NULL || len == 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: empty");
    if (len > PKI_MAX_CSR)
        return pki_fail(errmsg, CM_ERR_LIMIT, "CSR: larger than %u bytes", PKI_MAX_CSR);
    if (pki_looks_pem(pem, len) && pem[len - 1] != '\0') {
        unsigned char *c = pki_nul_copy(pem, len);
        ret = mbedtls_x509_csr_parse(csr, c, len + 1);
        free(c);
    } else {
        ret = mbedtls_x509_csr_parse(csr, pem, len);
    }
    if (ret != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "CSR: parse");
    if (csr->version != 1)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: version %d (1 expected)", csr->version);
    if ((rc = pki_key_check_strength(&csr->pk, "CSR key", errmsg)) != 0)
        return rc;
    if ((rc = csr_verify_sig(csr, errmsg)) != 0)
        return rc;
    return pki_csr_spiffe_id(csr, spiffe_id, idlen, errmsg);
}
