/* Health port (15020, docs/contract.md "Ports"): what kubelet and Prometheus talk to.
 *   GET /healthz/ready             200 when px_server_is_ready(srv), else 503
 *   GET /healthz/idle              200 when nothing is in flight, else 503 (preStop)
 *   GET /app-health/<c>/<kind>     an app probe rewritten by the injector, sent on
 *                                  to the app's original target (REMORA_APP_PROBERS)
 *   GET /metrics                   the proxy's Prometheus text, plus the app's when
 *                                  REMORA_APP_METRICS_URL names it
 * Plain HTTP on libevent's evhttp, on the proxy's event loop. Design note:
 * docs/capture.md "Health port". */
#ifndef PX_HEALTH_H
#define PX_HEALTH_H

#include <event2/event.h>

#include "common/net.h"

struct px_health;

/* Bind `addr` and serve. The probe table is read from the environment
 * (REMORA_APP_PROBERS, REMORA_APP_METRICS_URL, POD_IP) once, here; a bad
 * value is logged once and leaves that feature off, never fails the start.
 * Returns 0 and *out (free with px_health_free), or CM_ERR_IO with *errmsg
 * (caller frees) when the address cannot be bound. srv is borrowed for the
 * health port's life: its loop, its readiness and what it has in flight. */
struct px_server;
int px_health_start(struct px_server *srv, const struct cm_addr *addr, struct px_health **out,
                    char **errmsg);
/* A second address for the same server (health.address6); one whose family
 * is not available here is skipped with a warning. 0 or CM_ERR_IO. */
int px_health_listen_optional(struct px_health *h, const struct cm_addr *addr, char **errmsg);
/* The bound address (port 0 resolved). */
void px_health_local_addr(const struct px_health *h, struct cm_addr *out);
/* Answer what is in flight with 503, close everything, free. NULL is fine. */
void px_health_free(struct px_health *h);

/* `remora-proxy wait [--timeout SECONDS] [--address IP:PORT]`: poll
 * GET /healthz/ready on the health port (default 127.0.0.1:15020) until it
 * answers 200 (exit 0) or the timeout (default 60 s) passes (exit 1); usage
 * errors exit 2. The injected postStart hook of classic sidecars: kubelet
 * starts the app only after it returns. Blocking, no event loop. */
/* With --drain [--timeout-ms MS] (issue 14; default 5000): the classic
 * sidecar's preStop. Polls GET /healthz/idle (200 when no HTTP request and no
 * opaque TCP connection is in flight, else 503) until it is idle twice in a
 * row, the port stops answering, or the timeout; always exit 0. */
int px_health_wait_main(int argc, char **argv);

#endif
