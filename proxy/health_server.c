/* The health port's HTTP server (proxy/health.h): evhttp on the proxy's loop,
 * readiness and idleness answered here, app probes sent on by prober.c, /metrics
 * by scrape.c (the map: health_int.h). */
#include "proxy/health.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/grpc_health.h"
#include "proxy/health_int.h"
#include "proxy/http.h"
#include "proxy/server.h"
#include "proxy/tcp.h" /* issue 14: /healthz/idle */
#include "proxy/tls.h"

/* ---- answering ------------------------------------------------------------------ */

void px_health_reply(struct evhttp_request *req, int status, const char *ctype,
                     struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 503 ? "Service Unavailable"
                         : status < 300  ? "OK"
                         : status < 500  ? "Client Error"
                                         : "Server Error";
    evhttp_send_reply(req, status, reason, body);
}

void px_health_reply_text(struct evhttp_request *req, int status, const char *fmt, ...)
{
    struct evbuffer *b = evbuffer_new();
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(b, fmt, ap);
    va_end(ap);
    evbuffer_add(b, "\n", 1);
    px_health_reply(req, status, "text/plain; charset=utf-8", b);
    evbuffer_free(b);
}

/* ---- dispatch ------------------------------------------------------------------- */

static void on_request(struct evhttp_request *req, void *arg)
{
    struct px_health *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL || *path == '\0')
        path = "/";
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
        px_health_reply_text(req, 405, "the health port takes GET");
        return;
    }
    if (strcmp(path, "/healthz/ready") == 0) {
        if (px_server_is_ready(h->srv))
            px_health_reply_text(req, 200, "ready");
        else
            px_health_reply_text(req, 503, "not ready: %s",
                                 h->srv->draining           ? "draining"
                                 : !h->srv->listeners_bound ? "listeners not bound"
                                                            : "no workload certificate yet");
        return;
    }
    if (strcmp(path, "/healthz/idle") == 0) {
        /* issue 14: what the classic sidecar's preStop waits for. In flight
         * = HTTP requests (either direction) + opaque TCP connections; idle
         * keep-alive connections (a peer's pool) do not count. */
        unsigned nreq = h->srv->nstreams, ntcp = px_tcp_active();
        if (nreq + ntcp == 0)
            px_health_reply_text(req, 200, "idle");
        else
            px_health_reply_text(req, 503, "busy: %u requests and %u TCP connections in flight",
                                 nreq, ntcp);
        return;
    }
    if (strcmp(path, "/metrics") == 0 || strcmp(path, "/stats/prometheus") == 0) {
        px_health_start_scrape(h, req);
        return;
    }
    if (px_grpc_health_handle(h->grpc, path, req)) /* issue 19: rewritten gRPC probes */
        return;
    const struct prober *pr = px_health_find_prober(h, path);
    if (pr != NULL) {
        px_health_start_probe(h, pr, req);
        return;
    }
    px_health_reply_text(req, 404, "unknown path %.200s", path);
}

/* ---- lifecycle ------------------------------------------------------------------ */

int px_health_start(struct px_server *srv, const struct cm_addr *addr, struct px_health **out,
                    char **errmsg)
{
    char abuf[CM_ADDR_STRLEN];
    int fd = cm_net_listen(addr, HEALTH_BACKLOG);
    if (fd < 0) {
        *errmsg = cm_xasprintf("health: cannot listen on %s: %s",
                               cm_addr_format(addr, abuf, sizeof(abuf)), strerror(errno));
        return CM_ERR_IO;
    }
    struct px_health *h = cm_xcalloc(1, sizeof(*h));
    h->srv = srv;
    h->base = srv->base;
    cm_list_init(&h->probes);
    cm_list_init(&h->scrapes);
    if (cm_net_local_addr(fd, &h->local) != 0)
        h->local = *addr;
    h->http = evhttp_new(h->base);
    if (h->http == NULL) {
        close(fd);
        free(h);
        *errmsg = cm_xasprintf("health: evhttp_new failed");
        return CM_ERR_IO;
    }
    /* every method reaches on_request, so the 405 is ours */
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(h->http, HEALTH_MAX_HEADERS);
    evhttp_set_max_body_size(h->http, 4096);
    evhttp_set_timeout(h->http, HEALTH_TIMEOUT_S);
    evhttp_set_gencb(h->http, on_request, h);
    if (evhttp_accept_socket_with_handle(h->http, fd) == NULL) {
        evhttp_free(h->http);
        close(fd);
        free(h);
        *errmsg =
            cm_xasprintf("health: cannot serve on %s", cm_addr_format(addr, abuf, sizeof(abuf)));
        return CM_ERR_IO;
    }
    const char *ip = getenv("POD_IP");
    if (ip != NULL && strlen(ip) < sizeof(h->pod_ip) && px_http_valid_value(ip, strlen(ip)) &&
        !strchr(ip, ' '))
        snprintf(h->pod_ip, sizeof(h->pod_ip), "%s", ip);
    px_health_load_probers(h, getenv("REMORA_APP_PROBERS"));
    px_health_load_metrics_url(h, getenv("REMORA_APP_METRICS_URL"));
    h->grpc = px_grpc_health_new(h->base, getenv("REMORA_APP_GRPC_PROBERS"));
    cm_info("health: serving on %s (%zu app probes)", cm_addr_format(&h->local, abuf, sizeof(abuf)),
            h->nprobers);
    *out = h;
    return 0;
}

int px_health_listen_optional(struct px_health *h, const struct cm_addr *addr, char **errmsg)
{
    char abuf[CM_ADDR_STRLEN];
    int fd = cm_net_listen(addr, HEALTH_BACKLOG);
    if (fd < 0 && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL)) {
        cm_warn("health: %s is not available here (%s): skipped",
                cm_addr_format(addr, abuf, sizeof(abuf)), strerror(errno));
        return 0;
    }
    if (fd < 0) {
        *errmsg = cm_xasprintf("health: cannot listen on %s: %s",
                               cm_addr_format(addr, abuf, sizeof(abuf)), strerror(errno));
        return CM_ERR_IO;
    }
    if (evhttp_accept_socket_with_handle(h->http, fd) == NULL) {
        close(fd);
        *errmsg =
            cm_xasprintf("health: cannot serve on %s", cm_addr_format(addr, abuf, sizeof(abuf)));
        return CM_ERR_IO;
    }
    cm_info("health: also serving on %s", cm_addr_format(addr, abuf, sizeof(abuf)));
    return 0;
}

void px_health_local_addr(const struct px_health *h, struct cm_addr *out)
{
    *out = h->local;
}

void px_health_free(struct px_health *h)
{
    if (h == NULL)
        return;
    /* Answer what is in flight: a request whose client already left is freed
     * by the reply, the others go with evhttp_free. */
    px_health_probes_abort(h);
    px_health_scrapes_abort(h);
    px_grpc_health_free(h->grpc);
    evhttp_free(h->http);
    for (size_t i = 0; i < h->nprobers; i++)
        px_health_prober_deinit(&h->probers[i]);
    free(h->probers);
    free(h->metrics_host);
    free(h->metrics_target);
    px_tls_conf_unref(h->probe_tls);
    free(h);
}
