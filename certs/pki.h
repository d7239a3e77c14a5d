/* Remora's PKI, shared by remora-injector (the CA) and remora-proxy (workload
 * identity), on mbedTLS 2.28. Prefix pki_.
 *
 * Identities are SPIFFE IDs spiffe://<trust_domain>/ns/<namespace>/sa/<sa>,
 * carried as the one URI SubjectAltName of a workload certificate. Keys are
 * EC P-256. Every function that can fail takes char **errmsg (heap string,
 * caller frees; *errmsg must start NULL or hold an earlier message, which is
 * replaced) and returns 0 or a negative cm_err. Strings returned through
 * char ** are heap-allocated, NUL-terminated, caller frees. */
#ifndef PKI_H
#define PKI_H

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PKI_SPIFFE_MAX 256 /* longest SPIFFE ID we accept, with the NUL */

/* ---- randomness ------------------------------------------------------------ */
/* One process-wide CTR-DRBG seeded from the OS entropy; never fails after
 * init (aborts if the OS has no entropy). */
mbedtls_ctr_drbg_context *pki_rng(void);
/* f_rng-compatible wrapper for mbedTLS calls. */
int pki_rng_fn(void *ctx, unsigned char *out, size_t len);
/* Free the DRBG at exit (leak checks). */
void pki_rng_free(void);

/* Read a whole file of at most `max` bytes (PEM, tokens); *buf is NUL-
 * terminated one past *len; caller frees. */
int pki_read_file(const char *path, size_t max, unsigned char **buf, size_t *len, char **errmsg);

/* ---- keys (certs/keys.c) ------------------------------------------------------ */
/* Generate an EC P-256 key into an initialised pk context. */
int pki_key_generate(mbedtls_pk_context *pk, char **errmsg);
/* Parse a PEM or DER private key (EC or RSA). */
int pki_key_parse(mbedtls_pk_context *pk, const unsigned char *buf, size_t len, char **errmsg);
int pki_key_load_file(mbedtls_pk_context *pk, const char *path, char **errmsg);
int pki_key_write_pem(mbedtls_pk_context *pk, char **pem, char **errmsg);

/* ---- SPIFFE (certs/spiffe.c) ----------------------------------------------------- */
/* Build "spiffe://td/ns/NS/sa/SA" after checking each part (DNS-ish trust
 * domain, Kubernetes name rules for namespace and service account). */
int pki_spiffe_build(const char *td, const char *ns, const char *sa, char *out, size_t outlen,
                     char **errmsg);
/* Split a SPIFFE ID of that form; each out buffer has PKI_SPIFFE_MAX bytes. */
int pki_spiffe_parse(const char *id, char *td, char *ns, char *sa, char **errmsg);
/* The single URI SAN of a certificate (read from the raw SAN entries, tag
 * 0x86: mbedTLS 2.28 does not decode URIs). Fails when there is none, more
 * than one, or it is not a spiffe:// URI. */
int pki_crt_spiffe_id(const mbedtls_x509_crt *crt, char *out, size_t outlen, char **errmsg);
/* Same for a CSR. */
int pki_csr_spiffe_id(const mbedtls_x509_csr *csr, char *out, size_t outlen, char **errmsg);

/* ---- CSRs (certs/csr.c) ------------------------------------------------------------ */
/* A PEM CSR for `key` carrying spiffe_id as its URI SAN (extension written as
 * DER by us: mbedTLS 2.28 has no SAN writer). */
int pki_csr_new(mbedtls_pk_context *key, const char *spiffe_id, char **pem, char **errmsg);
/* Parse a CSR (PEM or DER, up to 64 KiB) into csr without verifying it: for
 * naming what a refused request asked for. An empty subject is accepted.
 * csr is initialised and freed by the caller. Returns 0 or CM_ERR_INVAL /
 * CM_ERR_LIMIT with *errmsg. */
int pki_csr_parse(mbedtls_x509_csr *csr, const unsigned char *in, size_t len, char **errmsg);
/* Parse a PEM CSR, verify its self-signature, and return its SPIFFE ID.
 * csr must be initialised by the caller and freed by the caller. */
int pki_csr_parse_verify(mbedtls_x509_csr *csr, const unsigned char *pem, size_t len,
                         char *spiffe_id, size_t idlen, char **errmsg);

/* ---- the CA (certs/sign.c) ------------------------------------------------------------- */
struct pki_ca {
    mbedtls_x509_crt issuer; /* the signing cert first, then its chain up to (excluding) the root */
    mbedtls_pk_context key;
    char *chain_pem;  /* issuer chain as PEM, appended after each leaf */
    char *bundle_pem; /* trust bundle (one or more roots) as PEM */
};
/* Load the signing cert (+ chain) and key, and the root bundle; checks that
 * the key matches and that the signing cert is a CA. The CA struct needs no
 * prior initialisation; on failure it is left empty (pki_ca_free is
 * harmless). chain_pem gets the certificates of cert_file that are not
 * self-issued; root_file NULL means no bundle check, and bundle_pem then
 * holds the self-issued certificates of cert_file (possibly ""). */
int pki_ca_load(struct pki_ca *ca, const char *cert_file, const char *key_file,
                const char *root_file, char **errmsg);
/* Same from PEM strings (root_pem may be NULL). */
int pki_ca_load_pem(struct pki_ca *ca, const char *cert_pem, const char *key_pem,
                    const char *root_pem, char **errmsg);
/* Empty CA (what pki_ca_free leaves). */
void pki_ca_init(struct pki_ca *ca);
void pki_ca_free(struct pki_ca *ca);
/* Sign a workload certificate: subject from the SPIFFE ID, URI SAN,
 * KU digitalSignature|keyEncipherment, EKU serverAuth+clientAuth, CA:false,
 * SKI/AKI, serial from the CSPRNG (128 bits), not_before = now - 5 min,
 * not_after = now + ttl_s. Returns leaf + issuer chain as PEM. */
int pki_sign_workload(const struct pki_ca *ca, mbedtls_pk_context *subject_key,
                      const char *spiffe_id, uint32_t ttl_s, char **chain_pem, char **errmsg);
/* Same with "now" given (epoch seconds): tests, and certificates issued
 * for a point in time. The validity is clamped into the issuer's. */
int pki_sign_workload_at(const struct pki_ca *ca, mbedtls_pk_context *subject_key,
                         const char *spiffe_id, int64_t now, uint32_t ttl_s, char **chain_pem,
                         char **errmsg);

/* ---- making CAs and serving certs (certs/make.c, used by the CLI and tests) -------- */
/* Self-signed root CA (key generated), valid `days`. */
int pki_make_root(const char *cn, uint32_t days, char **cert_pem, char **key_pem, char **errmsg);
/* Intermediate CA signed by (issuer_cert_pem, issuer_key_pem). */
int pki_make_intermediate(const char *cn, uint32_t days, const char *issuer_cert_pem,
                          const char *issuer_key_pem, char **cert_pem, char **key_pem,
                          char **errmsg);
/* Server certificate with DNS SANs (NULL-terminated list), EKU serverAuth. */
int pki_make_server(const char *cn, const char *const *dns_names, uint32_t days,
                    const char *issuer_cert_pem, const char *issuer_key_pem, char **cert_pem,
                    char **key_pem, char **errmsg);

/* ---- bundles and verification (certs/bundle.c) ------------------------------------------- */
/* Parse one or more PEM certificates into chain (initialised by the caller). */
int pki_bundle_parse(mbedtls_x509_crt *chain, const unsigned char *pem, size_t len, char **errmsg);
int pki_bundle_load_file(mbedtls_x509_crt *chain, const char *path, char **errmsg);
/* Verify a peer chain against the bundle (time, signature, path) and return
 * its SPIFFE ID, which must be in trust_domain (NULL: any). */
int pki_verify_peer(mbedtls_x509_crt *peer_chain, mbedtls_x509_crt *bundle,
                    const char *trust_domain, char *spiffe_id, size_t idlen, char **errmsg);
/* Not-after of a certificate as epoch seconds. */
int64_t pki_crt_not_after(const mbedtls_x509_crt *crt);
int64_t pki_crt_not_before(const mbedtls_x509_crt *crt);
/* Serial as lower-case hex into out (at least 2*32+1 bytes). */
void pki_crt_serial_hex(const mbedtls_x509_crt *crt, char *out, size_t outlen);

#endif
