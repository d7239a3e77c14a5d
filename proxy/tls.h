/* mTLS for px_io, on mbedTLS 2.28 (TLS 1.2). libevent 2.1 has no mbedTLS
 * bufferevent, so this is our own transport: the px_io ops table with a TLS
 * implementation whose BIO callbacks talk to the non-blocking socket and
 * answer WANT_READ / WANT_WRITE.
 *
 * A px_tls_conf is an immutable, reference-counted snapshot of everything a
 * handshake needs (our chain and key, the trust bundle, the trust domain,
 * ALPN, session tickets). mbedtls_ssl_config is not refcounted, so the
 * snapshot is: rotation builds a new one and swaps it in for new
 * handshakes, and the old one lives until its last connection closes. */
#ifndef PX_TLS_H
#define PX_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/io.h"

struct px_tls_conf;

enum px_tls_role {
    PX_TLS_SERVER = 0, /* inbound: we terminate, the peer must present a cert */
    PX_TLS_CLIENT      /* outbound: we originate, presenting our cert */
};

/* Build a snapshot from PEM: our chain (leaf first) and key, the trust
 * bundle (one or more roots), the trust domain peers must be in, and the
 * ALPN list to offer/accept (NULL-terminated, e.g. {"h2", "http/1.1"}).
 * require_peer_cert: servers in strict/permissive mode ask for and verify a
 * client certificate. trust_domain NULL (clients only): the server is named
 * by DNS (px_io_start_tls's expected_id, checked by mbedTLS) and must not be
 * a workload, as for the anonymous CA client, while our certificate is
 * presented (the discovery client). Returns 0 and *out (one reference), or an
 * error with *errmsg. */
int px_tls_conf_new(enum px_tls_role role, const char *chain_pem, const char *key_pem,
                    const char *bundle_pem, const char *trust_domain, const char *const *alpn,
                    struct px_tls_conf **out, char **errmsg);
/* A client snapshot that only verifies the server against a bundle, without
 * a client certificate (the CA client). */
int px_tls_conf_new_anon_client(const char *bundle_pem, struct px_tls_conf **out, char **errmsg);
/* A client snapshot that does not verify the server at all and presents no
 * certificate: the app's HTTPS probes (kubelet does not verify them either).
 * Its sessions are never cached nor resumed (the cache is the mesh's). */
int px_tls_conf_new_unverified_client(struct px_tls_conf **out, char **errmsg);
struct px_tls_conf *px_tls_conf_ref(struct px_tls_conf *c);
void px_tls_conf_unref(struct px_tls_conf *c);

/* Switch an io to TLS. Server: the handshake starts with what is already
 * buffered (the ClientHello the detector saw). Client: it starts once the
 * TCP connect completes. PX_IO_HANDSHAKE is reported when it is done; a
 * failed handshake reports PX_IO_ERROR with px_io_tls_error() text.
 * expected_id (client only, may be NULL): the peer's SPIFFE ID must equal it;
 * for an anonymous (CA) client it is the server's DNS name, verified against
 * the certificate. An anonymous client refuses servers whose certificate
 * carries a SPIFFE ID: a workload of the mesh is never taken for the CA.
 * Takes a reference on conf. */
int px_io_start_tls(struct px_io *io, struct px_tls_conf *conf, const char *expected_id);
/* After the handshake: the peer's verified SPIFFE ID ("" when it showed no
 * certificate), the ALPN protocol agreed ("" when none), whether the session
 * was resumed, and the reason of a failed handshake. */
const char *px_io_peer_id(const struct px_io *io);
const char *px_io_alpn(const struct px_io *io);
bool px_io_tls_resumed(const struct px_io *io);
const char *px_io_tls_error(const struct px_io *io);
bool px_io_is_tls(const struct px_io *io);

/* Client session cache for resumption, keyed by upstream address: a
 * reconnect to the same sidecar skips the full handshake (session tickets). */
void px_tls_session_cache_clear(void);

#endif
