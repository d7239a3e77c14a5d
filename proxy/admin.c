/* Admin API of remora-proxy: plain HTTP on admin.address, served by
 * libevent's evhttp on the proxy's own event loop (docs/contract.md "Admin API").
 *
 * Every endpoint, built-in or not, is a row of one route table keyed by
 * (method, exact path), filled through px_admin_route(); a single generic
 * evhttp callback looks the request up there, so other modules add their
 * endpoints without touching this file. Answers are JSON (errors included:
 * {"error": "..."}) except /metrics, which is Prometheus text.
 *
 * The admin port is loopback-only by convention but still bounded: small
 * heads and bodies, a read timeout, GET and POST only. */
#include "proxy/admin.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/config.h"
#include "proxy/inbound_tls.h"
#include "proxy/listener.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

#define ADMIN_MAX_HEADERS 8192
#define ADMIN_MAX_BODY    (64 * 1024)
#define ADMIN_TIMEOUT_S   10
#define ADMIN_BACKLOG     64
/* How long /quitquitquit waits for its answer to reach the client before it
 * drains anyway (a client that vanished must not keep the process up). */
#define QUIT_FLUSH_MS 1000

struct route {
    enum px_admin_method method;
    char *path;
    px_admin_handler fn;
    void *arg;
};

struct px_admin {
    struct px_server *srv;   /* borrowed: the process context */
    struct event_base *base; /* borrowed: the proxy's loop */
    struct evhttp *http;
    struct cm_addr local;
    struct route *routes;
    size_t nroutes, cap;
    struct event *quit_ev; /* fires px_server_begin_drain(srv, true) after /quitquitquit */
    bool quitting;
};

/* Endpoints that later modules serve; until one registers, they answer
 * 404 "not configured" rather than a plain "unknown path". */
static const char *const reserved_paths[] = {"/certs", "/policy", "/policy/reload", "/clusters",
                                             NULL};

static const char *method_name(enum px_admin_method m)
{
    return m == PX_ADMIN_POST ? "POST" : "GET";
}

/* ---- helpers for handlers -------------------------------------------------- */

static int dump_cb(const char *buf, size_t size, void *data)
{
    return evbuffer_add(data, buf, size);
}

void px_admin_reply_json(struct evbuffer *out, struct json_t *doc)
{
    if (!doc) {
        evbuffer_add(out, "{}\n", 3);
        return;
    }
    json_dump_callback(doc, dump_cb, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    evbuffer_add(out, "\n", 1);
    json_decref(doc);
}

int px_admin_reply_error(struct evbuffer *out, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* json_string refuses invalid UTF-8 (peer input quoted in msg). */
    json_t *s = json_string(msg);
    if (!s)
        s = json_string("(message is not valid UTF-8)");
    px_admin_reply_json(out, json_pack("{s:o}", "error", s));
    return status;
}

/* ---- route table ------------------------------------------------------------- */

static struct route *route_find(struct px_admin *a, enum px_admin_method m, const char *path)
{
    for (size_t i = 0; i < a->nroutes; i++)
        if (a->routes[i].method == m && strcmp(a->routes[i].path, path) == 0)
            return &a->routes[i];
    return NULL;
}

int px_admin_route(struct px_admin *a, enum px_admin_method method, const char *path,
                   px_admin_handler fn, void *arg)
{
    if (!path || path[0] != '/' || (method != PX_ADMIN_GET && method != PX_ADMIN_POST))
        return CM_ERR_INVAL;
    if (!a)
        return 0; /* no admin server: callers need not check */
    struct route *r = route_find(a, method, path);
    if (!fn) {
        if (r) {
            free(r->path);
            *r = a->routes[--a->nroutes];
        }
        return 0;
    }
    if (!r) {
        if (a->nroutes == a->cap) {
            a->cap = a->cap ? a->cap * 2 : 16;
            a->routes = cm_xrealloc(a->routes, a->cap * sizeof(*a->routes));
        }
        r = &a->routes[a->nroutes++];
        r->method = method;
        r->path = cm_xstrdup(path);
    }
    r->fn = fn;
    r->arg = arg;
    return 0;
}

/* ---- built-in endpoints ------------------------------------------------------ */

static int on_ready(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                    void *arg)
{
    (void)req, (void)q;
    const struct px_server *srv = ((struct px_admin *)arg)->srv;
    const char *reason = NULL;
    if (!srv)
        reason = "server not started";
    else if (srv->draining)
        reason = "draining"; /* leave the load balancers' endpoints before we go */
    else if (!srv->listeners_bound)
        reason = "listeners not bound";
    else if (!px_server_is_ready(srv))
        reason = "not ready";
    if (reason) {
        px_admin_reply_json(out, json_pack("{s:b, s:s}", "ready", 0, "reason", reason));
        return 503;
    }
    px_admin_reply_json(out, json_pack("{s:b}", "ready", 1));
    return 200;
}

static int on_stats(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                    void *arg)
{
    (void)req, (void)q;
    px_metrics_write_json_of(((struct px_admin *)arg)->srv, out);
    return 200;
}

static int on_metrics(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                      void *arg)
{
    (void)q;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    px_metrics_write_prometheus_of(((struct px_admin *)arg)->srv, out);
    return 200;
}

/* The limits as the proxy runs with them: defaults filled in. */
static json_t *limits_json(const struct px_limits *l)
{
    json_t *o = json_object();
#define LIMIT(f) json_object_set_new(o, #f, json_integer((json_int_t)l->f))
    LIMIT(max_header_bytes);
    LIMIT(max_headers);
    LIMIT(max_request_body);
    LIMIT(buffer_bytes);
    LIMIT(header_timeout_ms);
    LIMIT(idle_timeout_ms);
    LIMIT(connect_timeout_ms);
    LIMIT(request_timeout_ms);
    LIMIT(detect_timeout_ms);
    LIMIT(drain_timeout_ms);
    LIMIT(max_connections);
    LIMIT(pool_max_idle);
    LIMIT(pool_idle_timeout_ms);
    LIMIT(h2_max_concurrent_streams);
    LIMIT(h2_max_resets_per_window);
    LIMIT(h2_reset_window_ms);
    LIMIT(tcp_idle_timeout_ms);
#undef LIMIT
    /* circuit breakers (proxy/pool.h), named as in the config */
#define UPSTREAM(f) json_object_set_new(o, "upstream_" #f, json_integer((json_int_t)l->upstream.f))
    UPSTREAM(max_connections);
    UPSTREAM(max_pending_requests);
    UPSTREAM(pending_timeout_ms);
    UPSTREAM(max_requests_per_connection);
#undef UPSTREAM
    return o;
}

/* The loaded document with what the proxy resolved on top: every limit
 * (defaults included), the log level in force now, and the addresses the
 * listeners and the admin server are really bound to (port 0 resolved). */
static int on_config_dump(struct evhttp_request *req, const struct evkeyvalq *q,
                          struct evbuffer *out, void *arg)
{
    (void)req, (void)q;
    struct px_admin *a = arg;
    const struct px_config *cfg = a->srv ? a->srv->cfg : NULL;
    if (!cfg || !cfg->raw)
        return px_admin_reply_error(out, 404, "no configuration loaded");
    json_t *doc = json_deep_copy(cfg->raw);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return px_admin_reply_error(out, 500, "configuration is not an object");
    }
    json_object_set_new(doc, "limits", limits_json(&cfg->limits));
    json_object_set_new(doc, "log_level", json_string(cm_log_level_name(cm_log_current_level)));
    char buf[CM_ADDR_STRLEN];
    json_t *admin = json_object_get(doc, "admin");
    if (json_is_object(admin))
        json_object_set_new(admin, "bound_address",
                            json_string(cm_addr_format(&a->local, buf, sizeof(buf))));
    json_t *ls = json_object_get(doc, "listeners");
    for (size_t i = 0; i < cfg->nlisteners && i < json_array_size(ls); i++) {
        json_t *lj = json_array_get(ls, i);
        const struct px_listener *l = px_listener_of(a->srv, &cfg->listeners[i]);
        if (!json_is_object(lj))
            continue;
        if (l != NULL)
            json_object_set_new(lj, "bound_address",
                                json_string(cm_addr_format(&l->bound, buf, sizeof(buf))));
        else
            json_object_set_new(lj, "skipped", json_true()); /* optional, family unavailable */
        /* the mTLS mode each original destination port gets */
        px_inbound_tls_dump(&cfg->listeners[i], lj);
    }
    if (cfg->file)
        json_object_set_new(doc, "config_file", json_string(cfg->file));
    px_admin_reply_json(out, doc);
    return 200;
}

static int on_logging_get(struct evhttp_request *req, const struct evkeyvalq *q,
                          struct evbuffer *out, void *arg)
{
    (void)req, (void)q, (void)arg;
    px_admin_reply_json(out, json_pack("{s:s}", "level", cm_log_level_name(cm_log_current_level)));
    return 200;
}

static int on_logging_post(struct evhttp_request *req, const struct evkeyvalq *q,
                           struct evbuffer *out, void *arg)
{
    (void)req, (void)arg;
    const char *s = evhttp_find_header(q, "level");
    if (!s)
        return px_admin_reply_error(out, 400, "missing ?level= (error|warn|info|debug|trace)");
    enum cm_log_level lvl;
    if (cm_log_level_parse(s, &lvl) != 0)
        return px_admin_reply_error(out, 400,
                                    "unknown log level '%.64s' (error|warn|info|debug|trace)", s);
    enum cm_log_level old = cm_log_current_level;
    cm_log_set_level(lvl);
    cm_log_write(CM_LOG_INFO, "admin: log level %s -> %s", cm_log_level_name(old),
                 cm_log_level_name(lvl));
    px_admin_reply_json(out, json_pack("{s:s, s:s}", "level", cm_log_level_name(lvl), "previous",
                                       cm_log_level_name(old)));
    return 200;
}

static int on_drain(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                    void *arg)
{
    (void)req, (void)q;
    struct px_server *srv = ((struct px_admin *)arg)->srv;
    if (!srv)
        return px_admin_reply_error(out, 503, "server not started");
    cm_info("admin: drain requested");
    px_server_begin_drain(srv, false);
    px_admin_reply_json(out, json_pack("{s:b}", "draining", 1));
    return 200;
}

/* Drain-and-exit from the loop, after /quitquitquit's answer went out (or
 * after QUIT_FLUSH_MS when the client went away first). */
static void on_quit_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct px_admin *a = arg;
    if (!a->quitting)
        return;
    a->quitting = false;
    cm_info("admin: /quitquitquit: draining, then exiting");
    if (a->srv)
        px_server_begin_drain(a->srv, true);
}

static void on_quit_sent(struct evhttp_request *req, void *arg)
{
    (void)req;
    struct px_admin *a = arg;
    struct timeval now = {0, 0};
    if (a->quitting)
        evtimer_add(a->quit_ev, &now); /* re-arms the fallback to fire at once */
}

static int on_quit(struct evhttp_request *req, const struct evkeyvalq *q, struct evbuffer *out,
                   void *arg)
{
    (void)q;
    struct px_admin *a = arg;
    if (!a->srv)
        return px_admin_reply_error(out, 503, "server not started");
    if (!a->quitting) {
        struct timeval tv = cm_tv_ms(QUIT_FLUSH_MS);
        a->quitting = true;
        evtimer_add(a->quit_ev, &tv);
        evhttp_request_set_on_complete_cb(req, on_quit_sent, a);
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    px_admin_reply_json(out, json_pack("{s:b, s:b}", "draining", 1, "exiting", 1));
    return 200;
}

/* ---- dispatch ------------------------------------------------------------------ */

static void send_answer(struct evhttp_request *req, int status, struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (!evhttp_find_header(h, "Content-Type"))
        evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Cache-Control", "no-store");
    const char *reason;
    switch (status) {
    case 200:
        reason = "OK";
        break;
    case 400:
        reason = "Bad Request";
        break;
    case 404:
        reason = "Not Found";
        break;
    case 405:
        reason = "Method Not Allowed";
        break;
    case 500:
        reason = "Internal Server Error";
        break;
    case 503:
        reason = "Service Unavailable";
        break;
    default:
        reason = status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
        break;
    }
    evhttp_send_reply(req, status, reason, body);
}

/* The generic evhttp callback: every admin request arrives here. */
static void on_request(struct evhttp_request *req, void *arg)
{
    struct px_admin *a = arg;
    struct evbuffer *body = evbuffer_new();
    struct evkeyvalq query;
    query.tqh_first = NULL; /* TAILQ_INIT, which event2 does not export */
    query.tqh_last = &query.tqh_first;
    int status;

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *qs = uri ? evhttp_uri_get_query(uri) : NULL;
    if (!path || !*path)
        path = "/";

    enum px_admin_method m;
    switch (evhttp_request_get_command(req)) {
    case EVHTTP_REQ_GET:
        m = PX_ADMIN_GET;
        break;
    case EVHTTP_REQ_POST:
        m = PX_ADMIN_POST;
        break;
    default:
        m = 0;
        break;
    }

    struct route *r = m ? route_find(a, m, path) : NULL;
    if (r) {
        if (qs && evhttp_parse_query_str(qs, &query) != 0) {
            status = px_admin_reply_error(body, 400, "malformed query string");
        } else {
            status = r->fn(req, &query, body, r->arg);
        }
    } else {
        /* Which methods does this path take? 405 with Allow, else 404. */
        bool get = route_find(a, PX_ADMIN_GET, path) != NULL;
        bool post = route_find(a, PX_ADMIN_POST, path) != NULL;
        if (get || post) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                              get && post ? "GET, POST"
                              : get       ? "GET"
                                          : "POST");
            status = px_admin_reply_error(body, 405, "%s takes %s", path,
                                          get && post ? "GET or POST"
                                          : get       ? "GET"
                                                      : "POST");
        } else {
            bool reserved = false;
            for (size_t i = 0; reserved_paths[i]; i++)
                reserved = reserved || strcmp(path, reserved_paths[i]) == 0;
            if (reserved)
                status = px_admin_reply_error(body, 404, "%.200s: not configured", path);
            else
                status = px_admin_reply_error(body, 404, "unknown path %.200s", path);
        }
    }
    cm_debug("admin: %s %.200s -> %d", m ? method_name(m) : "(other)", path, status);
    send_answer(req, status, body);
    evhttp_clear_headers(&query);
    evbuffer_free(body);
}

/* ---- lifecycle ---------------------------------------------------------------- */

int px_admin_start(struct px_server *srv, const struct cm_addr *addr, struct px_admin **out,
                   char **errmsg)
{
    struct event_base *base = srv->base;
    char abuf[CM_ADDR_STRLEN];
    int fd = cm_net_listen(addr, ADMIN_BACKLOG);
    if (fd < 0) {
        *errmsg = cm_xasprintf("admin: cannot listen on %s: %s",
                               cm_addr_format(addr, abuf, sizeof(abuf)), strerror(errno));
        return CM_ERR_IO;
    }

    struct px_admin *a = cm_xcalloc(1, sizeof(*a));
    a->srv = srv;
    a->base = base;
    if (cm_net_local_addr(fd, &a->local) != 0)
        a->local = *addr;

    a->http = evhttp_new(base);
    if (!a->http) {
        *errmsg = cm_xasprintf("admin: evhttp_new failed");
        goto fail_http;
    }
    /* Take every method so the refusal is ours (405 with JSON), not evhttp's. */
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
    evhttp_set_max_body_size(a->http, ADMIN_MAX_BODY);
    evhttp_set_timeout(a->http, ADMIN_TIMEOUT_S);
    evhttp_set_gencb(a->http, on_request, a);

    a->quit_ev = evtimer_new(base, on_quit_timer, a);
    if (!a->quit_ev) {
        *errmsg = cm_xasprintf("admin: evtimer_new failed");
        goto fail_http;
    }
    /* On success evhttp owns fd and closes it in evhttp_free. */
    if (!evhttp_accept_socket_with_handle(a->http, fd)) {
        *errmsg = cm_xasprintf("admin: cannot serve on %s",
                               cm_addr_format(&a->local, abuf, sizeof(abuf)));
        goto fail_accept;
    }

    px_admin_route(a, PX_ADMIN_GET, "/ready", on_ready, a);
    px_admin_route(a, PX_ADMIN_GET, "/stats", on_stats, a);
    px_admin_route(a, PX_ADMIN_GET, "/metrics", on_metrics, a);
    px_admin_route(a, PX_ADMIN_GET, "/config_dump", on_config_dump, a);
    px_admin_route(a, PX_ADMIN_GET, "/logging", on_logging_get, a);
    px_admin_route(a, PX_ADMIN_POST, "/logging", on_logging_post, a);
    px_admin_route(a, PX_ADMIN_POST, "/drain", on_drain, a);
    px_admin_route(a, PX_ADMIN_POST, "/quitquitquit", on_quit, a);

    cm_info("admin: serving on %s", cm_addr_format(&a->local, abuf, sizeof(abuf)));
    *out = a;
    return 0;

fail_accept:
    event_free(a->quit_ev);
fail_http:
    if (a->http)
        evhttp_free(a->http);
    close(fd);
    free(a);
    return CM_ERR_IO;
}

void px_admin_local_addr(const struct px_admin *a, struct cm_addr *out)
{
    *out = a->local;
}

void px_admin_free(struct px_admin *a)
{
    if (!a)
        return;
    evhttp_free(a->http); /* closes the listening socket and open admin connections */
    event_free(a->quit_ev);
    for (size_t i = 0; i < a->nroutes; i++)
        free(a->routes[i].path);
    free(a->routes);
    free(a);
}
