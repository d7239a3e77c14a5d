/* The webhook's HTTPS server on libmicrohttpd (GnuTLS underneath):
 *   POST /inject   AdmissionReview -> AdmissionReview (admission.c)
 *   GET  /healthz  200 while the process serves
 *   GET  /readyz   200 once serving, 503 while shutting down
 *   GET  /metrics  Prometheus text (metrics.c)
 *   POST /v1/sign  the CA (ca.c), when it has no ca.address of its own
 * MHD runs its own threads (a pool of webhook.threads, poll() each); every
 * handler is short and never blocks, so a request cannot stall others. */
#ifndef IJ_SERVER_H
#define IJ_SERVER_H

#include "common/net.h"
#include "injector/ca.h"
#include "injector/config.h"
#include "injector/template.h"
#include "injector/tls.h"

struct ij_server;

/* What both HTTPS listeners (this one, and the CA's own on ca.address) run
 * with; expand where <microhttpd.h> is included.
 * poll(), not MHD_USE_EPOLL: libmicrohttpd 0.9.75's epoll loop busy-waits
 * through every TLS handshake. GnuTLS reads the socket itself during the
 * handshake, so MHD never sees the EAGAIN that would clear its edge-triggered
 * "read ready" flag, and calls gnutls_handshake() again and again (epoll_wait
 * with a 0 timeout) until the client's next flight arrives: one round trip
 * plus the client's own handshake time of CPU burnt per new connection.
 * poll() is level-triggered and sleeps. docs/injector.md, "Performance". */
#define IJ_SERVER_MHD_FLAGS                                                                        \
    (MHD_USE_TLS | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG)
#define IJ_SERVER_TLS_PRIORITIES "NORMAL:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1"

/* A listening socket for a libmicrohttpd daemon: cm_net_listen() plus
 * TCP_NODELAY, which Linux copies to every connection it accepts. Returns the
 * fd or -1 with errno set. */
int ij_server_listen(const struct cm_addr *a);

/* Bind webhook.address and start serving. cfg, tls, tpl and ca are borrowed
 * and must outlive the server; with a ca (NULL: none), POST /v1/sign is
 * served here too. Returns 0 and *out, or CM_ERR_IO with *errmsg. */
int ij_server_start(const struct ij_config *cfg, struct ij_tls *tls, struct ij_template_slot *tpl,
                    struct ij_ca *ca, struct ij_server **out, char **errmsg);
/* The port actually bound (webhook.address may say port 0). */
unsigned ij_server_port(const struct ij_server *s);
/* Stop accepting, let open connections finish for up to grace_ms, then stop
 * and free. */
void ij_server_stop(struct ij_server *s, unsigned grace_ms);

#endif
