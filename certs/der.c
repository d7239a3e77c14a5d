/* DER walkers for what mbedTLS 2.28 leaves undecoded: a certificate's or a
 * CSR's extensions, SubjectAltName URIs. Every length is checked against
 * the enclosing element (mbedtls_asn1_get_tag does that), so hostile input
 * ends in CM_ERR_INVAL, never a read past the buffer. */
#include "certs/internal.h"

#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/oid.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/xalloc.h"

#define SEQ (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)
#define SET (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SET)

/* The start of a SEQUENCE { type OID, ... } element at *p (an Extension or
 * an Attribute): *eend its end, *oid and *olen the OID's bytes; *p is left
 * after the OID. */
static int oid_entry(unsigned char **p, const unsigned char *end, const unsigned char **eend,
                     const unsigned char **oid, size_t *olen)
{
    size_t elen;
    if (mbedtls_asn1_get_tag(p, end, &elen, SEQ) != 0)
        return CM_ERR_INVAL;
    *eend = *p + elen;
    if (mbedtls_asn1_get_tag(p, *eend, olen, MBEDTLS_ASN1_OID) != 0)
        return CM_ERR_INVAL;
    *oid = *p;
    *p += *olen;
    return 0;
}

int pki_der_find_ext(const unsigned char *exts, size_t len, const char *oid, size_t oidlen,
                     const unsigned char **val, size_t *vlen, bool *critical)
{
    unsigned char *p = (unsigned char *)exts;
    const unsigned char *end = exts + len;
    size_t n;
    bool found = false;

    if (mbedtls_asn1_get_tag(&p, end, &n, SEQ) != 0 || p + n != end)
        return CM_ERR_INVAL;
    while (p < end) {
        size_t olen, octlen;
        const unsigned char *eend, *o;
        int crit = 0;
        if (oid_entry(&p, end, &eend, &o, &olen) != 0)
            return CM_ERR_INVAL;
        if (p < eend && *p == MBEDTLS_ASN1_BOOLEAN && mbedtls_asn1_get_bool(&p, eend, &crit) != 0)
            return CM_ERR_INVAL;
        if (mbedtls_asn1_get_tag(&p, eend, &octlen, MBEDTLS_ASN1_OCTET_STRING) != 0 ||
            p + octlen != eend)
            return CM_ERR_INVAL;
        if (olen == oidlen && memcmp(o, oid, oidlen) == 0) {
            if (found) /* RFC 5280 4.2: at most one instance of an extension */
                return CM_ERR_INVAL;
            found = true;
            *val = p;
            *vlen = octlen;
            if (critical != NULL)
                *critical = crit != 0;
        }
        p = (unsigned char *)eend;
    }
    return found ? 0 : CM_ERR_NOTFOUND;
}

int pki_crt_exts(const mbedtls_x509_crt *crt, const unsigned char **exts, size_t *len)
{
    if (crt->version != 3 || crt->v3_ext.p == NULL || crt->v3_ext.len == 0)
        return CM_ERR_NOTFOUND;
    *exts = crt->v3_ext.p;
    *len = crt->v3_ext.len;
    return 0;
}

/* CertificationRequestInfo ::= SEQUENCE { version INTEGER, subject Name,
 *     subjectPKInfo SubjectPublicKeyInfo, attributes [0] IMPLICIT SET OF Attribute }
 * Attribute ::= SEQUENCE { type OID, values SET OF ANY }
 * The extensionRequest attribute holds one value: Extensions. */
int pki_csr_exts(const mbedtls_x509_csr *csr, const unsigned char **exts, size_t *len)
{
    if (csr->cri.p == NULL)
        return CM_ERR_INVAL;
    unsigned char *p = csr->cri.p;
    const unsigned char *end = csr->cri.p + csr->cri.len;
    size_t n;
    bool found = false;

    if (mbedtls_asn1_get_tag(&p, end, &n, SEQ) != 0 || p + n != end)
        return CM_ERR_INVAL;
    /* version, subject and key: already parsed by mbedTLS; skip them */
    if (mbedtls_asn1_get_tag(&p, end, &n, MBEDTLS_ASN1_INTEGER) != 0)
        return CM_ERR_INVAL;
    p += n;
    if (mbedtls_asn1_get_tag(&p, end, &n, SEQ) != 0)
        return CM_ERR_INVAL;
    p += n;
    if (mbedtls_asn1_get_tag(&p, end, &n, SEQ) != 0)
        return CM_ERR_INVAL;
    p += n;
    if (p == end)
        return CM_ERR_NOTFOUND; /* attributes absent (tolerated by parsers) */
    if (mbedtls_asn1_get_tag(&p, end, &n,
                             MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 0) != 0 ||
        p + n != end)
        return CM_ERR_INVAL;
    while (p < end) {
        size_t olen, slen;
        const unsigned char *aend, *o;
        if (oid_entry(&p, end, &aend, &o, &olen) != 0)
            return CM_ERR_INVAL;
        if (mbedtls_asn1_get_tag(&p, aend, &slen, SET) != 0 || p + slen != aend)
            return CM_ERR_INVAL;
        if (olen == MBEDTLS_OID_SIZE(MBEDTLS_OID_PKCS9_CSR_EXT_REQ) &&
            memcmp(o, MBEDTLS_OID_PKCS9_CSR_EXT_REQ, olen) == 0) {
            if (found)
                return CM_ERR_INVAL;
            found = true;
            /* exactly one value, an Extensions SEQUENCE */
            const unsigned char *v = p;
            size_t vlen;
            if (mbedtls_asn1_get_tag(&p, aend, &vlen, SEQ) != 0 || p + vlen != aend)
                return CM_ERR_INVAL;
            *exts = v;
            *len = (size_t)(aend - v);
        }
        p = (unsigned char *)aend;
    }
    return found ? 0 : CM_ERR_NOTFOUND;
}

int pki_san_foreach(const unsigned char *san, size_t len,
                    void (*fn)(void *arg, int tag, const unsigned char *p, size_t n), void *arg)
{
    unsigned char *p = (unsigned char *)san;
    const unsigned char *end = san + len;
    size_t n;

    if (mbedtls_asn1_get_tag(&p, end, &n, SEQ) != 0 || p + n != end || n == 0)
        return CM_ERR_INVAL;
    while (p < end) {
        int tag = *p++;
        size_t glen;
        if ((tag & MBEDTLS_ASN1_TAG_CLASS_MASK) != MBEDTLS_ASN1_CONTEXT_SPECIFIC)
            return CM_ERR_INVAL;
        /* high-tag-number form never appears in GeneralName (tags 0..8) */
        if ((tag & 0x1f) == 0x1f)
            return CM_ERR_INVAL;
        if (mbedtls_asn1_get_len(&p, end, &glen) != 0)
            return CM_ERR_INVAL;
        if (fn != NULL)
            fn(arg, tag, p, glen);
        p += glen;
    }
    return 0;
}

struct uri_count {
    const unsigned char *uri;
    size_t urilen;
    unsigned uris, others;
};

static void count_name(void *arg, int tag, const unsigned char *p, size_t n)
{
    struct uri_count *c = arg;
    if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 6)) {
        if (c->uris++ == 0) {
            c->uri = p;
            c->urilen = n;
        }
    } else {
        c->others++;
    }
}

int pki_san_single_uri(const unsigned char *san, size_t len, bool only_uri,
                       const unsigned char **uri, size_t *urilen, char **errmsg)
{
    struct uri_count c = {0};
    if (pki_san_foreach(san, len, count_name, &c) != 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "malformed subjectAltName extension");
    if (c.uris == 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "no URI in subjectAltName");
    if (c.uris > 1)
        return pki_fail(errmsg, CM_ERR_INVAL, "%u URIs in subjectAltName (one SPIFFE ID expected)",
                        c.uris);
    if (only_uri && c.others > 0)
        return pki_fail(errmsg, CM_ERR_INVAL,
                        "subjectAltName holds names other than the SPIFFE ID");
    *uri = c.uri;
    *urilen = c.urilen;
    return 0;
}

int pki_der_san(const char *uri, const char *const *dns, unsigned char **der, size_t *len)
{
    size_t cap = 16, n = 0;
    if (uri != NULL)
        cap += strlen(uri) + 8;
    for (size_t i = 0; dns != NULL && dns[i] != NULL; i++, n++)
        cap += strlen(dns[i]) + 8;
    unsigned char *buf = cm_xmalloc(cap), *p = buf + cap;
    size_t total = 0;
    int ret;

    /* asn1write writes backwards: last name first */
    for (size_t i = n; i-- > 0;) {
        size_t l = strlen(dns[i]);
        if ((ret = mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)dns[i], l)) < 0 ||
            (ret = mbedtls_asn1_write_len(&p, buf, l)) < 0 ||
            (ret = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)) < 0)
            goto fail;
    }
    if (uri != NULL) {
        size_t l = strlen(uri);
        if ((ret = mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)uri, l)) < 0 ||
            (ret = mbedtls_asn1_write_len(&p, buf, l)) < 0 ||
            (ret = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 6)) < 0)
            goto fail;
    }
    total = (size_t)(buf + cap - p);
    if ((ret = mbedtls_asn1_write_len(&p, buf, total)) < 0 ||
        (ret = mbedtls_asn1_write_tag(&p, buf, SEQ)) < 0)
        goto fail;
    total = (size_t)(buf + cap - p);
    memmove(buf, p, total);
    *der = buf;
    *len = total;
    return 0;
fail:
    free(buf);
    return CM_ERR_INVAL;
}

int pki_der_eku(bool server, bool client, unsigned char *buf, size_t cap, const unsigned char **der,
                size_t *len)
{
    unsigned char *p = buf + cap;
    int ret;
    if (client && (ret = mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_CLIENT_AUTH,
                                                MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH))) < 0)
        return CM_ERR_INVAL;
    if (server && (ret = mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_SERVER_AUTH,
                                                MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH))) < 0)
        return CM_ERR_INVAL;
    size_t total = (size_t)(buf + cap - p);
    if ((ret = mbedtls_asn1_write_len(&p, buf, total)) < 0 ||
        (ret = mbedtls_asn1_write_tag(&p, buf, SEQ)) < 0)
        return CM_ERR_INVAL;
    *der = p;
    *len = (size_t)(buf + cap - p);
    return 0;
}
