/* SPIFFE IDs of the form spiffe://<trust_domain>/ns/<namespace>/sa/<sa>:
 * building, splitting and checking them, and reading the one URI SAN of a
 * certificate or CSR (mbedTLS 2.28 does not decode URI SANs). */
#include "certs/pki.h"

#include <mbedtls/oid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs/internal.h"
#include "common/err.h"

#define PREFIX     "spiffe://"
#define PREFIX_LEN (sizeof(PREFIX) - 1)

/* Printable, bounded copy of untrusted text for messages. */
static void quote(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0, i = 0;
    for (; i < n && o + 4 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (i < n)
        for (int k = 0; k < 3; k++)
            out[o++] = '.';
    out[o] = '\0';
}

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* Trust domain: lower-case letters, digits, '.', '-', '_' (SPIFFE ID spec
 * 2.1), and no empty dot-separated label. */
static const char *check_td(const char *s, size_t n)
{
    if (n == 0)
        return "empty trust domain";
    if (n > 255)
        return "trust domain longer than 255 characters";
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            return "trust domain must be lower case";
        if (!is_lower_alnum(c) && c != '.' && c != '-' && c != '_')
            return "trust domain may hold only a-z, 0-9, '.', '-', '_'";
        if (c == '.' && (i == 0 || i + 1 == n || s[i + 1] == '.'))
            return "trust domain has an empty label";
    }
    return NULL;
}

/* Kubernetes DNS-1123 label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most max. */
static const char *check_label(const char *s, size_t n, size_t max, const char *what_empty,
                               const char *what_long, const char *what_chars, const char *what_edge)
{
    if (n == 0)
        return what_empty;
    if (n > max)
        return what_long;
    for (size_t i = 0; i < n; i++)
        if (!is_lower_alnum(s[i]) && s[i] != '-')
            return what_chars;
    if (s[0] == '-' || s[n - 1] == '-')
        return what_edge;
    return NULL;
}

static const char *check_ns(const char *s, size_t n)
{
    return check_label(s, n, 63, "empty namespace", "namespace longer than 63 characters",
                       "namespace may hold only a-z, 0-9 and '-' (DNS-1123 label)",
                       "namespace must start and end with a letter or digit");
}

/* Kubernetes DNS-1123 subdomain: labels as above joined by '.', <= 253. */
static const char *check_sa(const char *s, size_t n)
{
    if (n == 0)
        return "empty service account";
    if (n > 253)
        return "service account longer than 253 characters";
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            const char *e = check_label(
                s + start, i - start, 253, "service account has an empty label",
                "service account longer than 253 characters",
                "service account may hold only a-z, 0-9, '-' and '.' (DNS-1123 subdomain)",
                "service account labels must start and end with a letter or digit");
            if (e != NULL)
                return e;
            start = i + 1;
        }
    }
    return NULL;
}

/* Split and check; offsets into id. Returns NULL or the reason. */
static const char *split(const char *id, size_t n, size_t *td, size_t *tdn, size_t *ns, size_t *nsn,
                         size_t *sa, size_t *san)
{
    if (n >= PKI_SPIFFE_MAX)
        return "SPIFFE ID longer than 255 characters";
    if (memchr(id, '\0', n) != NULL)
        return "SPIFFE ID contains a NUL byte";
    if (n < PREFIX_LEN || memcmp(id, PREFIX, PREFIX_LEN) != 0)
        return "not a spiffe:// URI";
    const char *end = id + n, *p = id + PREFIX_LEN;
    const char *slash = memchr(p, '/', (size_t)(end - p));
    if (slash == NULL)
        return "no path (want /ns/<namespace>/sa/<service account>)";
    const char *e;
    if ((e = check_td(p, (size_t)(slash - p))) != NULL)
        return e;
    *td = (size_t)(p - id);
    *tdn = (size_t)(slash - p);
    p = slash;
    if ((size_t)(end - p) < 4 || memcmp(p, "/ns/", 4) != 0)
        return "path must be /ns/<namespace>/sa/<service account>";
    p += 4;
    slash = memchr(p, '/', (size_t)(end - p));
    if (slash == NULL)
        return "path must be /ns/<namespace>/sa/<service account>";
    if ((e = check_ns(p, (size_t)(slash - p))) != NULL)
        return e;
    *ns = (size_t)(p - id);
    *nsn = (size_t)(slash - p);
    p = slash;
    if ((size_t)(end - p) < 4 || memcmp(p, "/sa/", 4) != 0)
        return "path must be /ns/<namespace>/sa/<service account>";
    p += 4;
    /* The service account runs to the end: a further '/', '?', '#' or '%'
     * (query, fragment, percent-encoding, trailing slash) is refused by
     * its character set. */
    if ((e = check_sa(p, (size_t)(end - p))) != NULL)
        return e;
    *sa = (size_t)(p - id);
    *san = (size_t)(end - p);
    return NULL;
}

int pki_spiffe_check_bytes(const unsigned char *p, size_t n, char *out, size_t outlen,
                           char **errmsg)
{
    size_t a, b, c, d, e, f;
    const char *why = split((const char *)p, n, &a, &b, &c, &d, &e, &f);
    if (why != NULL) {
        char q[96];
        quote((const char *)p, n, q, sizeof(q));
        return pki_fail(errmsg, CM_ERR_INVAL, "SPIFFE ID \"%s\": %s", q, why);
    }
    if (n + 1 > outlen)
        return pki_fail(errmsg, CM_ERR_LIMIT, "SPIFFE ID: output buffer too small");
    memcpy(out, p, n);
    out[n] = '\0';
    return 0;
}

int pki_spiffe_build(const char *td, const char *ns, const char *sa, char *out, size_t outlen,
                     char **errmsg)
{
    const char *e;
    char q[96];
    if (td == NULL || ns == NULL || sa == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "SPIFFE ID: missing part");
    if ((e = check_td(td, strlen(td))) != NULL) {
        quote(td, strlen(td), q, sizeof(q));
        return pki_fail(errmsg, CM_ERR_INVAL, "trust domain \"%s\": %s", q, e);
    }
    if ((e = check_ns(ns, strlen(ns))) != NULL) {
        quote(ns, strlen(ns), q, sizeof(q));
        return pki_fail(errmsg, CM_ERR_INVAL, "namespace \"%s\": %s", q, e);
    }
    if ((e = check_sa(sa, strlen(sa))) != NULL) {
        quote(sa, strlen(sa), q, sizeof(q));
        return pki_fail(errmsg, CM_ERR_INVAL, "service account \"%s\": %s", q, e);
    }
    int n = snprintf(out, outlen, PREFIX "%s/ns/%s/sa/%s", td, ns, sa);
    if (n < 0 || (size_t)n >= outlen || (size_t)n >= PKI_SPIFFE_MAX) {
        if (outlen > 0)
            out[0] = '\0';
        return pki_fail(errmsg, CM_ERR_LIMIT, "SPIFFE ID longer than %d characters",
                        PKI_SPIFFE_MAX - 1);
    }
    return 0;
}

int pki_spiffe_parse(const char *id, char *td, char *ns, char *sa, char **errmsg)
{
    if (id == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "SPIFFE ID: missing");
    size_t n = strnlen(id, PKI_SPIFFE_MAX);
    size_t a, an, b, bn, c, cn;
    const char *why = split(id, n, &a, &an, &b, &bn, &c, &cn);
    if (why != NULL) {
        char q[96];
        quote(id, n, q, sizeof(q));
        return pki_fail(errmsg, CM_ERR_INVAL, "SPIFFE ID \"%s\": %s", q, why);
    }
    /* every part is shorter than the whole, itself < PKI_SPIFFE_MAX */
    if (td != NULL) {
        memcpy(td, id + a, an);
        td[an] = '\0';
    }
    if (ns != NULL) {
        memcpy(ns, id + b, bn);
        ns[bn] = '\0';
    }
    if (sa != NULL) {
        memcpy(sa, id + c, cn);
        sa[cn] = '\0';
    }
    return 0;
}

static int san_to_id(const unsigned char *exts, size_t len, bool only_uri, const char *what,
                     char *out, size_t outlen, char **errmsg)
{
    const unsigned char *san, *uri;
    size_t sanlen, urilen;
    char *inner = NULL;
    int rc = pki_der_find_ext(exts, len, MBEDTLS_OID_SUBJECT_ALT_NAME,
                              MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), &san, &sanlen, NULL);
    if (rc == CM_ERR_NOTFOUND)
        return pki_fail(errmsg, CM_ERR_INVAL, "%s: no subjectAltName extension", what);
    if (rc != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "%s: malformed extensions", what);
    if ((rc = pki_san_single_uri(san, sanlen, only_uri, &uri, &urilen, &inner)) == 0)
        rc = pki_spiffe_check_bytes(uri, urilen, out, outlen, &inner);
    if (rc != 0) {
        pki_fail(errmsg, rc, "%s: %s", what, inner);
        free(inner);
    }
    return rc;
}

int pki_crt_spiffe_id(const mbedtls_x509_crt *crt, char *out, size_t outlen, char **errmsg)
{
    const unsigned char *exts;
    size_t len;
    if (crt == NULL || crt->raw.p == NULL)
        return pki_fail(errmsg, CM_ERR_INVAL, "certificate: none");
    if (pki_crt_exts(crt, &exts, &len) != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "certificate: no extensions (not X.509 v3)");
    /* A certificate may carry DNS names beside its SPIFFE ID. */
    return san_to_id(exts, len, false, "certificate", out, outlen, errmsg);
}

int pki_csr_spiffe_id(const mbedtls_x509_csr *csr, char *out, size_t outlen, char **errmsg)
{
    const unsigned char *exts;
    size_t len;
    int rc = pki_csr_exts(csr, &exts, &len);
    if (rc == CM_ERR_NOTFOUND)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: no extensionRequest (no subjectAltName)");
    if (rc != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "CSR: malformed attributes");
    /* What a CA signs must be exactly the identity asked for. */
    return san_to_id(exts, len, true, "CSR", out, outlen, errmsg);
}
