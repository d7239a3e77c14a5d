/* Helpers private to certs/: error messages with mbedTLS text, bounded file
 * reads, PEM encoding, and the DER walkers that read what mbedTLS 2.28 does
 * not decode for us (URI SANs, a CSR's extensionRequest, key identifiers).
 * Not for use outside certs/ (and its tests). */
#ifndef PKI_INTERNAL_H
#define PKI_INTERNAL_H

#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Inputs we parse are bounded before anything is allocated for them. */
#define PKI_MAX_PEM (1u << 20)   /* a bundle or chain file */
#define PKI_MAX_CSR (64u * 1024) /* one CSR */
#define PKI_MAX_KEY (64u * 1024) /* one private key */

/* Set *errmsg (if errmsg is non-NULL) to the formatted text, freeing what
 * it held (common/json.c's convention: callers start from NULL); return rc. */
int pki_fail(char **errmsg, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Same, followed by ": <mbedtls_strerror(mbed_ret)>". */
int pki_fail_mbed(char **errmsg, int rc, int mbed_ret, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Read a whole file (at most max bytes) into a NUL-terminated heap buffer;
 * *len excludes the NUL. Caller frees *buf. */
int pki_read_file(const char *path, size_t max, unsigned char **buf, size_t *len, char **errmsg);
/* pki_read_file, then parse(obj, buf, len, &inner), whose error comes out as
 * "<path>: <inner>"; the buffer is wiped before it is freed (it may hold a
 * key). Returns parse's result or pki_read_file's error. */
int pki_load_file(const char *path, size_t max,
                  int (*parse)(void *obj, const unsigned char *buf, size_t len, char **errmsg),
                  void *obj, char **errmsg);
/* Write data to path atomically (temporary file + rename) with `mode`
 * (0600 for keys). */
int pki_write_file(const char *path, const void *data, size_t len, unsigned mode, char **errmsg);

/* Heap copy of buf with a NUL appended (mbedTLS parses PEM only when the
 * buffer ends in a NUL that its length counts). */
unsigned char *pki_nul_copy(const unsigned char *buf, size_t len);
/* Does buf hold a PEM armour line ("-----BEGIN ")? */
bool pki_looks_pem(const unsigned char *buf, size_t len);
/* PEM text of DER data; type is "CERTIFICATE", "CERTIFICATE REQUEST"...
 * Returns a heap string. */
char *pki_der_to_pem(const char *type, const unsigned char *der, size_t len);
/* Append b to the heap string *a (which may be NULL). */
void pki_str_append(char **a, const char *b);

/* Find the extension with `oid` in a DER Extensions SEQUENCE. Returns 0
 * with *val, *vlen on its extnValue contents, CM_ERR_NOTFOUND, or
 * CM_ERR_INVAL when the DER is malformed or the extension appears twice. */
int pki_der_find_ext(const unsigned char *exts, size_t len, const char *oid, size_t oidlen,
                     const unsigned char **val, size_t *vlen, bool *critical);
/* The Extensions SEQUENCE of a certificate (CM_ERR_NOTFOUND for v1/v2). */
int pki_crt_exts(const mbedtls_x509_crt *crt, const unsigned char **exts, size_t *len);
/* The Extensions SEQUENCE requested by a CSR (PKCS#9 extensionRequest
 * attribute of its CertificationRequestInfo): 0, CM_ERR_NOTFOUND or CM_ERR_INVAL. */
int pki_csr_exts(const mbedtls_x509_csr *csr, const unsigned char **exts, size_t *len);

/* Walk a DER GeneralNames SEQUENCE (a SAN extension's value). Returns 0
 * with the single URI in *uri, *urilen; fails when there is no URI, more
 * than one, or (only_uri) any other kind of name. */
int pki_san_single_uri(const unsigned char *san, size_t len, bool only_uri,
                       const unsigned char **uri, size_t *urilen, char **errmsg);
/* Call fn for each GeneralName of a SAN value (tag, contents). Returns 0 or
 * CM_ERR_INVAL on malformed DER. */
int pki_san_foreach(const unsigned char *san, size_t len,
                    void (*fn)(void *arg, int tag, const unsigned char *p, size_t n), void *arg);

/* DER of a SubjectAltName value: the URI (may be NULL) then the DNS names
 * (NULL-terminated list, may be NULL). *der is a heap buffer. */
int pki_der_san(const char *uri, const char *const *dns, unsigned char **der, size_t *len);
/* DER of an ExtendedKeyUsage value listing serverAuth and/or clientAuth. */
int pki_der_eku(bool server, bool client, unsigned char *buf, size_t cap, const unsigned char **der,
                size_t *len);

/* Validate a SPIFFE ID given as bytes (may contain anything) and copy it
 * NUL-terminated into out. */
int pki_spiffe_check_bytes(const unsigned char *p, size_t n, char *out, size_t outlen,
                           char **errmsg);

/* Epoch seconds of an mbedTLS time (UTC, no time zone lookups). */
int64_t pki_x509_time_epoch(const mbedtls_x509_time *t);
/* "YYYYMMDDhhmmss" (UTC) for mbedtls_x509write_crt_set_validity; clamps to
 * years 1950..9999. */
void pki_x509_time_str(int64_t epoch, char out[15]);

/* Subject name for a SPIFFE ID: "O=<td>,OU=<ns>,CN=<sa>" (values cut to 64
 * characters). NULL when the ID is invalid; caller frees. */
char *pki_spiffe_subject(const char *spiffe_id);

/* What a certificate we write holds (certs/sign.c). */
struct pki_tbs {
    const char *subject;             /* mbedTLS name string ("O=x,CN=y") */
    mbedtls_pk_context *subject_key; /* public half goes in the certificate */
    const mbedtls_x509_crt *issuer;  /* NULL: self-signed by subject_key */
    mbedtls_pk_context *issuer_key;  /* signs; == subject_key when self-signed */
    int64_t not_before, not_after;   /* epoch seconds; clamped into the issuer's validity */
    bool ca;                         /* basicConstraints cA */
    int pathlen;                     /* CA path length constraint, -1 none */
    unsigned key_usage;              /* MBEDTLS_X509_KU_* bits */
    bool eku_server, eku_client;     /* extendedKeyUsage (none when both false) */
    const char *uri;                 /* SAN URI or NULL */
    const char *const *dns;          /* SAN DNS names (NULL-terminated) or NULL */
};
/* Write and sign the certificate; *pem is a heap string (one certificate). */
int pki_crt_write(const struct pki_tbs *t, char **pem, char **errmsg);
/* PEM of every certificate of `chain` from `from` on that is not
 * self-issued (the part of a chain that travels with a leaf); "" if none. */
char *pki_chain_pem_skip_roots(const mbedtls_x509_crt *from);
/* PEM of every certificate of `chain`. */
char *pki_chain_pem_all(const mbedtls_x509_crt *chain);

/* mbedtls_x509_crt_verify_info's text on one line ("; "-separated); heap. */
char *pki_verify_flags_text(uint32_t flags);

/* Is the certificate self-issued (subject == issuer)? */
bool pki_crt_self_issued(const mbedtls_x509_crt *crt);
/* Refuse keys we do not sign for: EC P-256/P-384, RSA >= 2048 bits. */
int pki_key_check_strength(const mbedtls_pk_context *pk, const char *what, char **errmsg);

#endif
