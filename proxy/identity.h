/* Workload identity of the proxy (docs/contract.md "identity"): the SPIFFE ID, the
 * certificate and key, the trust bundle, and the TLS snapshots built from
 * them. Two sources:
 *  - CA-issued (ca_address + ca_root + token_file): the key is generated in
 *    memory and never leaves the process; a CSR goes to the CA's /v1/sign
 *    with the projected service-account token (re-read every time: kubelet
 *    rotates it); the certificate is rotated at a jittered point between 50%
 *    and 80% of its lifetime, with backoff retries while the CA is down, and
 *    the old certificate keeps serving until the new one arrives.
 *  - static files (cert_file + key_file + bundle_file), reloaded when they
 *    change on disk.
 * Rotation builds new TLS snapshots and swaps them in for new handshakes;
 * established connections keep theirs (px_tls_conf is refcounted). */
#ifndef PX_IDENTITY_H
#define PX_IDENTITY_H

#include <stdbool.h>
#include <stdint.h>

#include "proxy/config.h"
#include "proxy/tls.h"

/* identity.ca_server_name by default: the CA Service's name, which the
 * injector's CA serving certificate carries. */
#define PX_IDENTITY_CA_SERVER_NAME "remora-injector.remora-system.svc"

struct px_admin;
struct px_server;

/* The identity state of a server (srv->identity). Every function below takes
 * it; NULL behaves as "no identity configured". */
struct px_identity;

/* Create srv->identity, validate srv->cfg->identity and start obtaining a
 * certificate on srv's loop (CA mode: the first request goes out from the
 * event loop). Without an identity object the state says "none" and this
 * returns 0. Returns CM_ERR_INVAL with *errmsg naming the key for a bad
 * configuration (srv->identity is set either way: px_identity_free it). */
int px_identity_start(struct px_server *srv, char **errmsg);
/* Is an identity configured at all / is a valid certificate held? */
bool px_identity_is_configured(const struct px_identity *id);
bool px_identity_is_ready(const struct px_identity *id);
/* Our SPIFFE ID ("" when unconfigured). */
const char *px_identity_id(const struct px_identity *id);
/* Current TLS snapshots (borrowed; take a reference to keep one), or NULL
 * while no certificate is held. */
struct px_tls_conf *px_identity_server_tls(const struct px_identity *id);
struct px_tls_conf *px_identity_client_tls(const struct px_identity *id);
/* The client snapshot for opaque TCP: no ALPN, so the peer sidecar detects
 * the protocol on the decrypted bytes. */
struct px_tls_conf *px_identity_tcp_client_tls(const struct px_identity *id);
/* Our certificate toward a server named by DNS, not a workload (the discovery
 * service: px_io_start_tls's expected_id is its DNS name). */
struct px_tls_conf *px_identity_dns_client_tls(const struct px_identity *id);
/* Register GET /certs on the admin API (after px_admin_start; admin may be NULL). */
void px_identity_admin_routes(struct px_identity *id, struct px_admin *admin);
/* Stop rotation, cancel a CSR in flight, drop the snapshots, free id (NULL is fine). */
void px_identity_free(struct px_identity *id);

#endif
