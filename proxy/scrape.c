/* GET /metrics on the health port: the proxy's metrics, merged with the app's
 * (REMORA_APP_METRICS_URL) fetched with evhttp's client, plaintext only
 * (proxy/health.h; docs/internals/health.md). */
#include "proxy/health.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/health_int.h"
#include "proxy/metrics.h"

/* One /metrics request waiting for the app's metrics. */
struct scrape {
    struct px_health *h;
    struct cm_list link;
    struct evhttp_request *req; /* the scraper's, answered exactly once */
    struct evhttp_connection *conn;
    struct event *free_ev; /* frees conn on the next loop turn (not inside its callback) */
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
    h->metrics_target =
        cm_xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    evhttp_uri_free(u);
    cm_info("health: /metrics merges the app's %s", url);
}

/* ---- /metrics ------------------------------------------------------------------ */

static void scrape_free(struct scrape *s)
{
    if (s->conn != NULL)
        evhttp_connection_free(s->conn);
    event_free(s->free_ev);
    cm_list_remove(&s->link);
    s->h->ninflight--;
    free(s);
}

static void on_scrape_free(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scrape_free(arg);
}

/* The proxy's metrics, then the app's text (or a comment saying why not). */
static void scrape_answer(struct scrape *s, struct evbuffer *app, const char *why)
{
    struct evbuffer *b = evbuffer_new();
    px_metrics_write_prometheus(b);
    if (app != NULL) {
        evbuffer_add_printf(b, "# remora: the app's metrics (%s:%u%s) follow\n", s->h->metrics_host,
                            (unsigned)s->h->metrics_port, s->h->metrics_target);
        size_t n = evbuffer_get_length(app);
        char last = '\n';
        struct evbuffer_ptr end;
        if (n > 0 && evbuffer_ptr_set(app, &end, n - 1, EVBUFFER_PTR_SET) == 0)
            evbuffer_copyout_from(app, &end, &last, 1);
        evbuffer_add_buffer(b, app);
        if (last != '\n') /* the text format ends every line, the last one too */
            evbuffer_add(b, "\n", 1);
    } else if (why != NULL) {
        evbuffer_add_printf(b, "# remora: the app's metrics are unavailable: %s\n", why);
    }
    px_health_reply(s->req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
    s->req = NULL;
}

static void on_scrape_done(struct evhttp_request *resp, void *arg)
{
    struct scrape *s = arg;
    int code = resp != NULL ? evhttp_request_get_response_code(resp) : 0;
    if (s->req != NULL) {
        if (code == 200) {
            scrape_answer(s, evhttp_request_get_input_buffer(resp), NULL);
        } else {
            char why[64];
            if (code == 0)
                snprintf(why, sizeof(why), "no answer");
            else
                snprintf(why, sizeof(why), "status %d", code);
            scrape_answer(s, NULL, why);
        }
    }
    /* evhttp still uses the connection after this callback returns */
    struct timeval now = {0, 0};
    event_add(s->free_ev, &now);
}

void px_health_start_scrape(struct px_health *h, struct evhttp_request *req)
{
    if (!h->app_metrics || h->ninflight >= MAX_INFLIGHT) {
        struct scrape tmp = {.h = h, .req = req};
        scrape_answer(&tmp, NULL, h->app_metrics ? "too many scrapes in flight" : NULL);
        return;
    }
    struct scrape *s = cm_xcalloc(1, sizeof(*s));
    s->h = h;
    s->req = req;
    s->free_ev = evtimer_new(h->base, on_scrape_free, s);
    cm_list_insert_tail(&h->scrapes, &s->link);
    h->ninflight++;
    s->conn = evhttp_connection_base_new(h->base, NULL, h->metrics_host, h->metrics_port);
    struct evhttp_request *r = s->conn ? evhttp_request_new(on_scrape_done, s) : NULL;
    if (r == NULL) {
        scrape_answer(s, NULL, "cannot create a client connection");
        struct timeval now = {0, 0};
        event_add(s->free_ev, &now);
        return;
    }
    evhttp_connection_set_timeout(s->conn, SCRAPE_TIMEOUT_S);
    evhttp_connection_set_max_body_size(s->conn, SCRAPE_MAX_BODY);
    evhttp_connection_set_retries(s->conn, 0);
    char host[CM_ADDR_STRLEN + 8];
    snprintf(host, sizeof(host), strchr(h->metrics_host, ':') ? "[%s]:%u" : "%s:%u",
             h->metrics_host, (unsigned)h->metrics_port);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(r);
    evhttp_add_header(oh, "Host", host);
    evhttp_add_header(oh, "Accept", "text/plain");
    evhttp_add_header(oh, "User-Agent", "remora-proxy-health");
    if (evhttp_make_request(s->conn, r, EVHTTP_REQ_GET, h->metrics_target) != 0 && s->req != NULL) {
        scrape_answer(s, NULL, "cannot send the request");
        struct timeval now = {0, 0};
        event_add(s->free_ev, &now);
    }
}

void px_health_scrapes_abort(struct px_health *h)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &h->scrapes)
    {
        struct scrape *s = cm_container_of(pos, struct scrape, link);
        if (s->req != NULL)
            scrape_answer(s, NULL, "shutting down");
        scrape_free(s);
    }
}
