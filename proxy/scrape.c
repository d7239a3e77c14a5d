/* GET /metrics on the health port: the proxy's metrics, merged with the app's
 * (REMORA_APP_METRICS_URL) fetched with px_httpc, plaintext only
 * (proxy/health.h; docs/internals/health.md). */
#include "proxy/health.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/health_int.h"
#include "proxy/httpc.h"
#include "proxy/metrics.h"

/* One /metrics request waiting for the app's metrics. */
struct scrape {
    struct px_health *h;
    struct cm_list link;
    struct evhttp_request *req; /* the scraper's, answered exactly once */
    struct px_httpc *call;      /* the app's metrics; frees itself after its callback */
};

/* REMORA_APP_METRICS_URL: "http://<ip>:<port>/<path>", numeric host only. */
void px_health_load_metrics_url(struct px_health *h, const char *url)
{
    if (url == NULL || *url == '\0')
        return;
    struct evhttp_uri *u = evhttp_uri_parse(url);
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    int port = u ? evhttp_uri_get_port(u) : -1;
    struct cm_addr a;
    char hp[CM_ADDR_STRLEN + 8];
    if (host != NULL)
        snprintf(hp, sizeof(hp), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    if (scheme == NULL || strcmp(scheme, "http") != 0 || host == NULL || port < 1 || port > 65535 ||
        cm_addr_parse(hp, &a) != 0) {
        cm_warn("health: REMORA_APP_METRICS_URL \"%.200s\" is not http://<ip>:<port>/<path>; "
                "/metrics serves the proxy's metrics alone",
                url);
        if (u != NULL)
            evhttp_uri_free(u);
        return;
    }
    const char *path = evhttp_uri_get_path(u);
    const char *query = evhttp_uri_get_query(u);
    h->app_metrics = true;
    h->metrics_host = cm_xstrdup(host);
    h->metrics_port = (uint16_t)port;
    h->metrics_addr = a;
    h->metrics_target =
        cm_xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    evhttp_uri_free(u);
    for (const char *c = h->metrics_target; *c; c++) {
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f || h->metrics_target[0] != '/') {
            cm_warn(
                "health: REMORA_APP_METRICS_URL \"%.200s\": the path is not a request target "
                "(a space, a control or non-ASCII byte); /metrics serves the proxy's metrics alone",
                url);
            h->app_metrics = false;
            return;
        }
    }
    cm_info("health: /metrics merges the app's %s", url);
}

/* ---- /metrics ------------------------------------------------------------------ */

static void scrape_free(struct scrape *s)
{
    cm_list_remove(&s->link);
    s->h->ninflight--;
    free(s);
}

/* The proxy's metrics, then the app's text (or a comment saying why not). */
static void scrape_answer(struct px_health *h, struct evhttp_request *req, const struct cm_buf *app,
                          const char *why)
{
    struct evbuffer *b = evbuffer_new();
    px_metrics_write_prometheus_of(h->srv, b);
    if (app != NULL) {
        evbuffer_add_printf(b, "# remora: the app's metrics (%s:%u%s) follow\n", h->metrics_host,
                            (unsigned)h->metrics_port, h->metrics_target);
        evbuffer_add(b, app->data ? app->data : "", app->len);
        if (app->len > 0 && app->data[app->len - 1] != '\n')
            evbuffer_add(b, "\n", 1); /* the text format ends every line, the last one too */
    } else if (why != NULL) {
        evbuffer_add_printf(b, "# remora: the app's metrics are unavailable: %s\n", why);
    }
    px_health_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
}

static void on_scrape_done(const struct px_httpc_resp *r, void *arg)
{
    struct scrape *s = arg;
    if (r->status == 200) {
        scrape_answer(s->h, s->req, r->body, NULL);
    } else {
        char why[640];
        if (r->status == 0)
            snprintf(why, sizeof(why), "%s", r->err);
        else
            snprintf(why, sizeof(why), "status %d", r->status);
        for (char *c = why; *c; c++) /* one comment line */
            if (*c == '\n' || *c == '\r')
                *c = ' ';
        scrape_answer(s->h, s->req, NULL, why);
    }
    scrape_free(s);
}

void px_health_start_scrape(struct px_health *h, struct evhttp_request *req)
{
    if (!h->app_metrics || h->ninflight >= MAX_INFLIGHT) {
        scrape_answer(h, req, NULL, h->app_metrics ? "too many scrapes in flight" : NULL);
        return;
    }
    char host[CM_ADDR_STRLEN + 8];
    snprintf(host, sizeof(host), strchr(h->metrics_host, ':') ? "[%s]:%u" : "%s:%u",
             h->metrics_host, (unsigned)h->metrics_port);
    const struct px_httpc_hdr hdrs[] = {{"Accept", "text/plain"},
                                        {"User-Agent", "remora-proxy-health"}};
    struct px_httpc_req rq = {.addr = &h->metrics_addr,
                              .method = "GET",
                              .target = h->metrics_target,
                              .host = host,
                              .hdrs = hdrs,
                              .nhdrs = 2,
                              .timeout_ms = SCRAPE_TIMEOUT_MS,
                              .max_body = SCRAPE_MAX_BODY};
    struct scrape *s = cm_xcalloc(1, sizeof(*s));
    s->h = h;
    s->req = req;
    s->call = px_httpc_start(h->base, &rq, on_scrape_done, s);
    if (s->call == NULL) {
        char why[128];
        snprintf(why, sizeof(why), "cannot send the request: %s", strerror(errno));
        scrape_answer(h, req, NULL, why);
        free(s);
        return;
    }
    cm_list_insert_tail(&h->scrapes, &s->link);
    h->ninflight++;
}

void px_health_scrapes_abort(struct px_health *h)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &h->scrapes)
    {
        struct scrape *s = cm_container_of(pos, struct scrape, link);
        px_httpc_cancel(s->call);
        scrape_answer(h, s->req, NULL, "shutting down");
        scrape_free(s);
    }
}
