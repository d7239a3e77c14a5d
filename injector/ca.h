/* The mesh's certificate authority inside remora-injector (docs/ca.md):
 *   POST /v1/sign  Authorization: Bearer <projected service-account token>
 *                  {"csr": "<PEM>"}  ->  {"cert_chain": "<PEM>", "trust_bundle": "<PEM>"}
 * The token must verify against ca.jwks_file (token.c) and name the namespace
 * and service account of the CSR's SPIFFE ID; the CSR's own signature must
 * verify. Refusals are 400 (bad body or CSR), 401 (token), 403 (identity),
 * 413 (body), each a JSON {"error": "..."} with the reason, counted in
 * /metrics and logged with the identity asked for.
 *
 * Served on ca.address by a second HTTPS daemon (ij_ca_serve), or on the
 * webhook's port when ca.address is unset (server.c calls ij_ca_sign). The
 * signing material is an immutable snapshot, reloaded when its files change. */
#ifndef IJ_CA_H
#define IJ_CA_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#include "injector/config.h"

#define IJ_CA_SIGN_PATH "/v1/sign"
#define IJ_CA_MAX_BODY  (64 * 1024) /* a CSR is under 1 KiB; RSA-4096 ones under 4 */

struct ij_ca;

/* Load the CA the config names (ca.cert_file, ca.key_file, ca.root_file,
 * ca.jwks_file). cfg is borrowed and must outlive the CA. Returns 0 with
 * *out, which is NULL when the config has no CA (ca.cert_file unset), or
 * CM_ERR_INVAL with *errmsg naming the file (caller frees). */
int ij_ca_new(const struct ij_config *cfg, struct ij_ca **out, char **errmsg);
/* Free after ij_ca_stop and after the webhook server stopped. NULL is fine. */
void ij_ca_free(struct ij_ca *ca);

/* Look for changed CA files and JWKS (everything with force) and swap in
 * what loads; a bad file keeps the material in force and is logged. */
void ij_ca_poll(struct ij_ca *ca, bool force);

/* At the first call of a POST /v1/sign, headers only: without a valid
 * bearer token (missing, malformed, refused by token.c) queue the 401 now,
 * before any of the body is read, and return true; false lets the request
 * go on to ij_ca_sign (which judges the token again, with the body). */
bool ij_ca_precheck(struct ij_ca *ca, struct MHD_Connection *conn);

/* Answer one POST /v1/sign whose body was read: body/len (NULL/0 when empty),
 * too_large when the body passed the bound and was dropped. Queues the
 * response on conn. Any MHD thread may call it. */
enum MHD_Result ij_ca_sign(struct ij_ca *ca, struct MHD_Connection *conn, const char *body,
                           size_t len, bool too_large);

/* Start serving: with ca.address, POST /v1/sign (and GET /healthz) on a
 * daemon of its own, whose HTTPS certificate the CA issues to itself at start
 * (DNS remora-injector.remora-system.svc[.cluster.local], under the mesh root,
 * 365 days or the CA's own lifetime); without, only say so (the webhook's
 * server answers /v1/sign with the webhook's certificate). Returns 0, or
 * CM_ERR_IO / CM_ERR_INVAL with *errmsg. */
int ij_ca_serve(struct ij_ca *ca, char **errmsg);
/* The HTTPS certificate of one of the CA's own ports, issued by the CA to
 * itself: common name cn, DNS remora-injector.remora-system.svc[.cluster.local],
 * 365 days (clamped to the CA's), from ca.cert_file and ca.key_file (read
 * here; the key is wiped after). Returns 0 with *cert_pem and *key_pem (heap;
 * the caller wipes the key before freeing it), or CM_ERR_INVAL with *errmsg
 * ("cannot issue <what>'s certificate: ..." when the files were read). */
int ij_ca_issue_serving(const struct ij_config *cfg, const char *cn, const char *what,
                        char **cert_pem, char **key_pem, char **errmsg);
/* The port ca.address is bound to (0 when not serving one). */
unsigned ij_ca_port(const struct ij_ca *ca);
/* Stop the ca.address server, letting connections finish for up to grace_ms. */
void ij_ca_stop(struct ij_ca *ca, unsigned grace_ms);

/* The CA's lines of GET /metrics (none when the process has no CA). */
struct cm_prom;
void ij_ca_metrics_write(struct cm_prom *o);

#endif
