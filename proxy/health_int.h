/* Internals shared by the health port's files (not an API: proxy/health.h is).
 *   health_server.c  the HTTP server: dispatch, /healthz/ready, /healthz/idle, lifecycle
 *   prober.c         the app probes: REMORA_APP_PROBERS, the raw prober and its TLS config
 *   grpc_health.c    gRPC app probes: REMORA_APP_GRPC_PROBERS, Health/Check over h2c (issue 19)
 *   scrape.c         /metrics: the proxy's text merged with the app's (REMORA_APP_METRICS_URL)
 *   wait.c           the `remora-proxy wait` command */
#ifndef PX_HEALTH_INT_H
#define PX_HEALTH_INT_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/list.h"
#include "common/net.h"
#include "proxy/health.h"
#include "proxy/tls.h"

#define HEALTH_MAX_HEADERS   8192
#define HEALTH_TIMEOUT_S     10 /* kubelet's side of the connection */
#define HEALTH_BACKLOG       64
#define MAX_PROBERS          64          /* entries of REMORA_APP_PROBERS we keep */
#define MAX_PROBERS_ENV      (64 * 1024) /* bytes of REMORA_APP_PROBERS we parse */
#define MAX_PROBE_HEADERS    32          /* httpHeaders per probe */
#define MAX_INFLIGHT         64          /* probes and scrapes at once; more get 503 */
#define PROBE_MAX_TIMEOUT_MS 60000
#define SCRAPE_TIMEOUT_MS    5000
#define SCRAPE_MAX_BODY      (8u << 20) /* app metrics text */

/* One rewritten probe, from REMORA_APP_PROBERS. */
struct prober {
    char *path; /* "/app-health/web/readyz", what kubelet asks for */
    uint16_t port;
    bool https;
    char *target; /* request target on the app, printable ASCII only */
    char **hname, **hvalue;
    size_t nheaders;
    unsigned timeout_ms;
};

struct px_grpc_health;

struct px_health {
    struct px_server *srv;   /* borrowed: the proxy (readiness, what is in flight) */
    struct event_base *base; /* borrowed: srv's loop */
    struct evhttp *http;
    struct cm_addr local;
    struct prober *probers;
    size_t nprobers;
    char pod_ip[64]; /* Host header of probes, as kubelet would send it; "" unknown */
    /* REMORA_APP_METRICS_URL */
    bool app_metrics;
    char *metrics_host;
    uint16_t metrics_port;
    struct cm_addr metrics_addr;
    char *metrics_target;
    struct cm_list probes, scrapes; /* struct probe (prober.c), struct scrape (scrape.c) */
    unsigned ninflight;
    struct px_tls_conf *probe_tls; /* HTTPS probes (no verification); made at the first */
    struct px_grpc_health *grpc;   /* gRPC probes (proxy/grpc_health.h), never NULL once started */
};

/* health_server.c: answer a request of the health port. */
void px_health_reply(struct evhttp_request *req, int status, const char *ctype,
                     struct evbuffer *body);
void px_health_reply_text(struct evhttp_request *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* prober.c */
void px_health_prober_deinit(struct prober *p);
void px_health_load_probers(struct px_health *h, const char *env);
const struct prober *px_health_find_prober(const struct px_health *h, const char *path);
void px_health_start_probe(struct px_health *h, const struct prober *pr,
                           struct evhttp_request *req);
/* Answer every probe in flight 503 "shutting down" and free it. */
void px_health_probes_abort(struct px_health *h);

/* scrape.c */
void px_health_load_metrics_url(struct px_health *h, const char *url);
void px_health_start_scrape(struct px_health *h, struct evhttp_request *req);
/* Answer every scrape still waiting (the proxy's metrics, "shutting down") and free it. */
void px_health_scrapes_abort(struct px_health *h);

#endif
