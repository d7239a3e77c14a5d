/* The webhook's serving certificate, handed to GnuTLS per handshake through
 * libmicrohttpd's MHD_OPTION_HTTPS_CERT_CALLBACK, and reloaded when the
 * files change on disk (cert-manager renewals, Secret updates).
 *
 * A certificate is an immutable, reference-counted snapshot. Each connection
 * takes a reference on the snapshot in force when it starts (MHD's
 * connection-notify callback), and a replaced snapshot holds a reference on
 * its successor, so whatever snapshot a handshake picked outlives the
 * connection that uses it. */
#ifndef IJ_TLS_H
#define IJ_TLS_H

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stdint.h>

struct ij_tls;
struct ij_tls_cert;

/* Load the first certificate. Returns 0 and *out, or CM_ERR_INVAL with
 * *errmsg (caller frees). Paths are borrowed. */
int ij_tls_new(const char *cert_file, const char *key_file, struct ij_tls **out, char **errmsg);
/* Free after the server using it stopped. */
void ij_tls_free(struct ij_tls *t);
/* Reload when either file changed (or always with force). Build, validate
 * (the key must match the certificate), then swap: a bad pair keeps the old
 * one. Returns 1 swapped, 0 unchanged, CM_ERR_INVAL with *errmsg. */
int ij_tls_reload(struct ij_tls *t, bool force, char **errmsg);
/* notAfter of the certificate in force (epoch seconds). */
int64_t ij_tls_not_after(struct ij_tls *t);

/* Per connection: a reference to the current snapshot, dropped at close. */
struct ij_tls_cert *ij_tls_conn_start(struct ij_tls *t);
void ij_tls_conn_end(struct ij_tls_cert *c);

/* The gnutls_certificate_retrieve_function2 given to MHD. GnuTLS passes no
 * user pointer, so it serves the one ij_tls registered with ij_tls_bind. */
int ij_tls_on_cert(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                   const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                   gnutls_pcert_st **pcert, unsigned int *pcert_length, gnutls_privkey_t *pkey);
void ij_tls_bind(struct ij_tls *t);

#endif
