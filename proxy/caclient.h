/* A one-shot HTTPS POST over px_io + TLS: how the proxy asks the CA for a
 * certificate without blocking its event loop. */
#ifndef PX_CACLIENT_H
#define PX_CACLIENT_H

#include <stddef.h>

#include "common/net.h"
#include "proxy/tls.h"

/* status 0 means the exchange failed before a response (err says why). The
 * body is only valid during the call. */
typedef void (*px_caclient_cb)(int status, const char *body, size_t len, const char *err,
                               void *arg);

struct px_caclient;

/* POST body (JSON) to https://addr/path with "Authorization: Bearer token".
 * Verifies the server against conf's bundle, refuses a workload certificate
 * and, when server_name is not NULL, checks it against the certificate's
 * DNS names. Bounded: 10 s, 256 KiB answer.
 * Returns the request handle (cancel with px_caclient_cancel) or NULL when no
 * socket could be made; cb is always called from the event loop. */
struct px_caclient *px_caclient_post(const struct cm_addr *addr, struct px_tls_conf *conf,
                                     const char *server_name, const char *host, const char *path,
                                     const char *token, const char *body, px_caclient_cb cb,
                                     void *arg);
/* Drop a request in flight; cb is not called. */
void px_caclient_cancel(struct px_caclient *c);

#endif
