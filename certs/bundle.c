/* Trust bundles and chains: parsing several PEM certificates (each error
 * names the certificate), verifying a peer chain against a bundle and
 * extracting its SPIFFE ID, and a few accessors for /certs and metrics. */
#include "certs/pki.h"

#include <mbedtls/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs/internal.h"
#include "common/err.h"
#include "common/xalloc.h"

#define CERT_HEADER "-----BEGIN CERTIFICATE-----"
#define CERT_FOOTER "-----END CERTIFICATE-----"

int pki_bundle_parse(mbedtls_x509_crt *chain, const unsigned char *pem, size_t len, char **errmsg)
{
    int ret;
    if (pem == NULL || len == 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "no certificate (empty input)");
    if (len > PKI_MAX_PEM)
        return pki_fail(errmsg, CM_ERR_LIMIT, "larger than %u bytes", PKI_MAX_PEM);
    if (!pki_looks_pem(pem, len)) {
        /* a single DER certificate */
        if ((ret = mbedtls_x509_crt_parse_der(chain, pem, len)) != 0)
            return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "certificate (DER)");
        return 0;
    }

    /* mbedtls_x509_crt_parse skips bad certificates and only counts them;
     * a trust bundle must not silently lose a root, so each PEM block is
     * decoded here and the first bad one is named. Blocks of other types
     * (keys, CSRs) are ignored. */
    unsigned char *text = pki_nul_copy(pem, len);
    const unsigned char *p = text;
    unsigned count = 0;
    int rc = 0;
    for (;;) {
        const char *begin = strstr((const char *)p, CERT_HEADER);
        if (begin == NULL)
            break;
        mbedtls_pem_context ctx;
        size_t used = 0;
        mbedtls_pem_init(&ctx);
        ret = mbedtls_pem_read_buffer(&ctx, CERT_HEADER, CERT_FOOTER, (const unsigned char *)begin,
                                      NULL, 0, &used);
        count++;
        if (ret != 0) {
            mbedtls_pem_free(&ctx);
            rc = pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "certificate %u: PEM", count);
            break;
        }
        ret = mbedtls_x509_crt_parse_der(chain, ctx.buf, ctx.buflen);
        mbedtls_pem_free(&ctx);
        if (ret != 0) {
            rc = pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "certificate %u", count);
            break;
        }
        p = (const unsigned char *)begin + used;
    }
    free(text);
    if (rc == 0 && count == 0)
        rc = pki_fail(errmsg, CM_ERR_INVAL, "no PEM certificate (want \"" CERT_HEADER "\")");
    return rc;
}

static int parse_chain(void *chain, const unsigned char *buf, size_t len, char **errmsg)
{
    return pki_bundle_parse(chain, buf, len, errmsg);
}

int pki_bundle_load_file(mbedtls_x509_crt *chain, const char *path, char **errmsg)
{
    return pki_load_file(path, PKI_MAX_PEM, parse_chain, chain, errmsg);
}

int pki_verify_peer(mbedtls_x509_crt *peer_chain, mbedtls_x509_crt *bundle,
                    const char *trust_domain, char *spiffe_id, size_t idlen, char **errmsg)
{
    char id[PKI_SPIFFE_MAX], td[PKI_SPIFFE_MAX];
    uint32_t flags = 0;
    int rc, ret;

    if (peer_chain == NULL || peer_chain->raw.p == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "peer: no certificate");
    if (bundle == NULL || bundle->raw.p == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "peer: empty trust bundle");
    ret = mbedtls_x509_crt_verify(peer_chain, bundle, NULL, NULL, &flags, NULL, NULL);
    if (ret != 0) {
        char *why = flags ? pki_verify_flags_text(flags) : NULL;
        if (why != NULL)
            rc = pki_fail(errmsg, CM_ERR_INVAL, "peer certificate: %s", why);
        else
            rc = pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "peer certificate");
        free(why);
        return rc;
    }
    /* A workload identity is an end entity: a CA certificate presented as
     * a leaf could mint identities of its own. */
    if (peer_chain->ca_istrue)
        return pki_fail(errmsg, CM_ERR_INVAL, "peer certificate: is a CA certificate");
    if (mbedtls_x509_crt_check_key_usage(peer_chain, MBEDTLS_X509_KU_DIGITAL_SIGNATURE) != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "peer certificate: keyUsage lacks digitalSignature");
    if ((rc = pki_crt_spiffe_id(peer_chain, id, sizeof(id), errmsg)) != 0)
        return rc;
    if ((rc = pki_spiffe_parse(id, td, NULL, NULL, errmsg)) != 0)
        return rc;
    if (trust_domain != NULL && strcmp(td, trust_domain) != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "peer identity %s: trust domain %s is not %s", id, td,
                        trust_domain);
    size_t n = strlen(id);
    if (n + 1 > idlen)
        return pki_fail(errmsg, CM_ERR_LIMIT, "peer identity: output buffer too small");
    memcpy(spiffe_id, id, n + 1);
    return 0;
}

int64_t pki_crt_not_after(const mbedtls_x509_crt *crt)
{
    return pki_x509_time_epoch(&crt->valid_to);
}

int64_t pki_crt_not_before(const mbedtls_x509_crt *crt)
{
    return pki_x509_time_epoch(&crt->valid_from);
}

void pki_crt_serial_hex(const mbedtls_x509_crt *crt, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (outlen == 0)
        return;
    for (size_t i = 0; i < crt->serial.len && o + 2 < outlen; i++) {
        out[o++] = hex[crt->serial.p[i] >> 4];
        out[o++] = hex[crt->serial.p[i] & 15];
    }
    out[o] = '\0';
}
