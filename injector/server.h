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

#include <microhttpd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

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

/* ---- the guard: what one hostile client may hold (docs/injector.md, "Abuse bounds") ----
 * One per HTTPS daemon (the webhook's, the CA's own). It keeps a list of the
 * daemon's connections, each with the time its current request began (the
 * accept, TLS handshake included, or the end of the previous answer), and a
 * thread that shuts down every connection past webhook.request_timeout_ms:
 * libmicrohttpd's own timeout is an idle one, which a client sending a byte
 * a second never reaches. shutdown(2) wakes the daemon's poll, which then
 * closes the connection itself; an entry leaves the list (under the lock)
 * in the daemon's CLOSED notification, before MHD closes the fd, so the
 * sweep never touches a reused descriptor. */
struct ij_guard;
struct ij_guard_conn;

/* Start the guard of the daemon named `name` ("webhook", "ca"); cfg is
 * borrowed. Returns the guard (ij_guard_free frees it, after the daemon
 * stopped). */
struct ij_guard *ij_guard_new(const char *name, const struct ij_config *cfg);
void ij_guard_free(struct ij_guard *g);
/* From MHD_CONNECTION_NOTIFY_STARTED / _CLOSED. */
struct ij_guard_conn *ij_guard_conn_start(struct ij_guard *g, struct MHD_Connection *conn);
void ij_guard_conn_end(struct ij_guard *g, struct ij_guard_conn *c);
/* From the access handler: is conn past its deadline (counted once)? The
 * caller then returns MHD_NO, which closes it. */
bool ij_guard_expired(struct ij_guard *g, struct MHD_Connection *conn);
/* From MHD's completion callback: a request on conn ended. Gives back the
 * `reserved` bytes of body it held (ij_guard_reserve), and the next
 * request's deadline starts now. */
void ij_guard_request_done(struct ij_guard *g, struct MHD_Connection *conn, size_t reserved);
/* Reserve n bytes of request body against webhook.max_buffered_bytes (all
 * connections of both daemons together): false when that would pass it.
 * ij_guard_release gives them back. */
bool ij_guard_reserve(const struct ij_config *cfg, size_t n);
void ij_guard_release(size_t n);
/* The guard's lines of GET /metrics. */
struct cm_prom;
void ij_guard_metrics_write(struct cm_prom *o);

/* MHD_OPTION_EXTERNAL_LOGGER of every injector daemon: MHD's own messages
 * are mostly about peers (bad handshakes, resets), so they are debug lines. */
void ij_server_mhd_log(void *cls, const char *fmt, va_list ap);

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
