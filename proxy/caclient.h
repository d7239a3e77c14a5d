/* A one-shot HTTPS POST on px_httpc (proxy/httpc.h): how the proxy asks the
 * CA for a certificate without blocking its event loop. */
#ifndef PX_CACLIENT_H
#define PX_CACLIENT_H

#include <event2/event.h>
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
 * DNS names. Bounded: 10 s, 256 KiB answer; done at the end of the answer.
 * Returns the request handle, freed after cb returns (or by
 * px_caclient_cancel before), or NULL with errno (no socket could be made;
 * EINVAL: the token or host is not a valid header value); cb is always called
 * from the event loop on `base`. */
struct px_caclient *px_caclient_post(struct event_base *base, const struct cm_addr *addr,
                                     struct px_tls_conf *conf, const char *server_name,
                                     const char *host, const char *path, const char *token,
                                     const char *body, px_caclient_cb cb, void *arg);
/* Drop a request whose cb has not run; cb is not called. NULL is fine. */
void px_caclient_cancel(struct px_caclient *c);

#endif
