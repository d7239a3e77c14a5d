/* Making CAs and serving certificates: a self-signed root, intermediates
 * (one per cluster under a shared root), and the webhook's TLS server
 * certificate with DNS SANs. Used by remora-certs and by tests. */
#include "certs/pki.h"

#include <mbedtls/platform_util.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "certs/internal.h"
#include "common/err.h"
#include "common/xalloc.h"

#define SKEW_S   300
#define MAX_DAYS 36500u

/* "O=Remora,CN=<cn>" with ',' escaped the one way mbedTLS 2.28 accepts
 * ("\,"); other characters are limited to printable ASCII without '\\'. */
static int subject_for(const char *cn, char **out, char **errmsg)
{
    size_t n = strlen(cn);
    if (n == 0 || n > 64)
        return pki_fail(errmsg, CM_ERR_INVAL, "common name: 1 to 64 characters");
    char *s = cm_xmalloc(n * 2 + 16), *o = s;
    memcpy(o, "O=Remora,CN=", 12);
    o += 12;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)cn[i];
        if (c < 0x20 || c >= 0x7f || c == '\\') {
            free(s);
            return pki_fail(errmsg, CM_ERR_INVAL,
                            "common name: printable ASCII only, no backslash");
        }
        if (c == ',')
            *o++ = '\\';
        *o++ = (char)c;
    }
    *o = '\0';
    *out = s;
    return 0;
}

static int check_days(uint32_t days, char **errmsg)
{
    if (days == 0 || days > MAX_DAYS)
        return pki_fail(errmsg, CM_ERR_INVAL, "days: 1 to %u", MAX_DAYS);
    return 0;
}

/* A DNS name for a SAN: labels of letters, digits and '-' (not at either
 * end), at most 63 each and 253 in all; "*." may lead. */
static int check_dns(const char *name, char **errmsg)
{
    size_t n = strlen(name);
    const char *p = name;
    if (n == 0 || n > 253)
        return pki_fail(errmsg, CM_ERR_INVAL, "DNS name \"%.64s\": 1 to 253 characters", name);
    if (n > 2 && p[0] == '*' && p[1] == '.')
        p += 2;
    const char *label = p;
    for (;; p++) {
        if (*p == '.' || *p == '\0') {
            size_t l = (size_t)(p - label);
            if (l == 0 || l > 63 || label[0] == '-' || label[l - 1] == '-')
                return pki_fail(errmsg, CM_ERR_INVAL, "DNS name \"%.64s\": bad label", name);
            if (*p == '\0')
                break;
            label = p + 1;
            continue;
        }
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return pki_fail(errmsg, CM_ERR_INVAL,
                            "DNS name \"%.64s\": only letters, digits, '-' and '.'", name);
    }
    return 0;
}

/* Load the issuer (first certificate of cert_pem, chain after it) and
 * its key; both are initialised here and freed by the caller. */
static int load_issuer(const char *cert_pem, const char *key_pem, mbedtls_x509_crt *crt,
                       mbedtls_pk_context *key, char **errmsg)
{
    char *inner = NULL;
    int rc;
    mbedtls_x509_crt_init(crt);
    mbedtls_pk_init(key);
    if (cert_pem == NULL || key_pem == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "issuer certificate and key are required");
    if ((rc = pki_bundle_parse(crt, (const unsigned char *)cert_pem, strlen(cert_pem), &inner)) !=
        0) {
        pki_fail(errmsg, rc, "issuer certificate: %s", inner);
        free(inner);
        return rc;
    }
    if ((rc = pki_key_parse(key, (const unsigned char *)key_pem, strlen(key_pem), &inner)) != 0) {
        pki_fail(errmsg, rc, "issuer key: %s", inner);
        free(inner);
        return rc;
    }
    if (mbedtls_pk_check_pair(&crt->pk, key) != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "issuer key does not match the issuer certificate");
    if (!crt->ca_istrue)
        return pki_fail(errmsg, CM_ERR_INVAL, "issuer certificate is not a CA");
    if (mbedtls_x509_crt_check_key_usage(crt, MBEDTLS_X509_KU_KEY_CERT_SIGN) != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "issuer certificate: keyUsage lacks keyCertSign");
    return 0;
}

/* Generate a key, write the certificate valid from now (less the clock
 * skew) for `days`, return both as PEM. issuer/ikey NULL: self-signed. For
 * issued certificates the issuer's own chain (minus roots) follows the cert. */
static int make(struct pki_tbs *t, uint32_t days, const mbedtls_x509_crt *issuer,
                mbedtls_pk_context *ikey, char **cert_pem, char **key_pem, char **errmsg)
{
    mbedtls_pk_context key;
    char *cert = NULL, *kp = NULL;
    int rc;
    mbedtls_pk_init(&key);
    if ((rc = pki_key_generate(&key, errmsg)) != 0)
        goto out;
    int64_t now = (int64_t)time(NULL);
    t->not_before = now - SKEW_S;
    t->not_after = now + (int64_t)days * 86400;
    t->subject_key = &key;
    t->issuer = issuer;
    t->issuer_key = issuer != NULL ? ikey : &key;
    if ((rc = pki_crt_write(t, &cert, errmsg)) != 0)
        goto out;
    if ((rc = pki_key_write_pem(&key, &kp, errmsg)) != 0)
        goto out;
    if (issuer != NULL) {
        char *chain = pki_chain_pem_skip_roots(issuer);
        pki_str_append(&cert, chain);
        free(chain);
    }
    *cert_pem = cert;
    *key_pem = kp;
    cert = NULL;
out:
    free(cert);
    mbedtls_pk_free(&key);
    return rc;
}

/* A CA certificate named cn: self-signed when issuer is NULL. pathlen: -1
 * none, 0 for a CA that signs only leaves. */
static int make_ca(const char *cn, uint32_t days, const mbedtls_x509_crt *issuer,
                   mbedtls_pk_context *ikey, int pathlen, char **cert_pem, char **key_pem,
                   char **errmsg)
{
    char *subject = NULL;
    int rc;
    if ((rc = check_days(days, errmsg)) != 0 || (rc = subject_for(cn, &subject, errmsg)) != 0)
        return rc;
    struct pki_tbs t = {
        .subject = subject,
        .ca = true,
        .pathlen = pathlen,
        .key_usage = MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN,
    };
    rc = make(&t, days, issuer, ikey, cert_pem, key_pem, errmsg);
    free(subject);
    return rc;
}

int pki_make_root(const char *cn, uint32_t days, char **cert_pem, char **key_pem, char **errmsg)
{
    return make_ca(cn ? cn : "Remora Root CA", days, NULL, NULL, -1, cert_pem, key_pem, errmsg);
}

int pki_make_intermediate(const char *cn, uint32_t days, const char *issuer_cert_pem,
                          const char *issuer_key_pem, char **cert_pem, char **key_pem,
                          char **errmsg)
{
    mbedtls_x509_crt issuer;
    mbedtls_pk_context ikey;
    int rc = load_issuer(issuer_cert_pem, issuer_key_pem, &issuer, &ikey, errmsg);
    if (rc == 0) /* pathlen 0: signs workloads, never further CAs */
        rc = make_ca(cn ? cn : "Remora Intermediate CA", days, &issuer, &ikey, 0, cert_pem, key_pem,
                     errmsg);
    mbedtls_x509_crt_free(&issuer);
    mbedtls_pk_free(&ikey);
    return rc;
}

int pki_make_server(const char *cn, const char *const *dns_names, uint32_t days,
                    const char *issuer_cert_pem, const char *issuer_key_pem, char **cert_pem,
                    char **key_pem, char **errmsg)
{
    mbedtls_x509_crt issuer;
    mbedtls_pk_context ikey;
    char *subject = NULL;
    int rc;
    if ((rc = load_issuer(issuer_cert_pem, issuer_key_pem, &issuer, &ikey, errmsg)) != 0)
        goto out;
    if ((rc = check_days(days, errmsg)) != 0)
        goto out;
    if (dns_names == NULL || dns_names[0] == NULL) {
        rc = pki_fail(errmsg, CM_ERR_INVAL, "server certificate: at least one DNS name");
        goto out;
    }
    for (size_t i = 0; dns_names[i] != NULL; i++)
        if ((rc = check_dns(dns_names[i], errmsg)) != 0)
            goto out;
    if (cn == NULL)
        cn = strlen(dns_names[0]) <= 64 ? dns_names[0] : "Remora server";
    if ((rc = subject_for(cn, &subject, errmsg)) != 0)
        goto out;
    struct pki_tbs t = {
        .subject = subject,
        .ca = false,
        .pathlen = -1,
        .key_usage = MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_ENCIPHERMENT,
        .eku_server = true,
        .dns = dns_names,
    };
    rc = make(&t, days, &issuer, &ikey, cert_pem, key_pem, errmsg);
out:
    free(subject);
    mbedtls_x509_crt_free(&issuer);
    mbedtls_pk_free(&ikey);
    return rc;
}
