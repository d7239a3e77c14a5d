#include "proxy/server.h"

#include <event2/event.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/admin.h"
#include "proxy/authz.h"
#include "proxy/conn.h"
#include "proxy/discovery.h"
#include "proxy/h1.h"
#include "proxy/h2.h"
#include "proxy/health.h"
#include "proxy/identity.h"
#include "proxy/listener.h"
#include "proxy/metrics.h"
#include "proxy/policy.h"
#include "proxy/pool.h"
#include "proxy/resolve.h"
#include "proxy/routes.h"
#include "proxy/server_run.h"
#include "proxy/stream.h"
#include "proxy/tcp.h"
#include "proxy/tls.h"
#include "certs/pki.h"

struct px_server *px_srv;

static void on_gc(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    px_stream_gc(arg); /* the server */
}

/* glibc returns freed memory at the top of the heap by itself, but what a
 * burst of connections freed in the middle stays resident: after 1,000 idle
 * mTLS connections closed, RSS stayed at 45 MB. Once a second, when the heap's
 * free bytes grew by more than TRIM_STEP since the last trim, malloc_trim
 * hands the free pages back. The check (mallinfo2) costs a few us. */
#define TRIM_STEP        (1u << 20)
#define TRIM_INTERVAL_MS 1000

static void on_trim(evutil_socket_t fd, short what, void *arg)
{
    struct px_server *srv = arg;
    (void)fd;
    (void)what;
    cm_log_limited_flush(); /* counts of rate-limited warn lines that went quiet */
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks < srv->trim_free_base)
        srv->trim_free_base = mi.fordblks;
    else if (mi.fordblks - srv->trim_free_base > TRIM_STEP) {
        malloc_trim(0);
        srv->trim_free_base = mallinfo2().fordblks;
    }
}

bool px_server_is_ready(const struct px_server *srv)
{
    return srv != NULL && srv->listeners_bound && !srv->draining &&
           px_identity_is_ready(srv->identity);
}

/* Polls while draining: exit once no connection is left. */
static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct px_server *srv = arg;
    (void)fd;
    (void)what;
    uint64_t deadline = srv->drain_deadline_ms;
    if (srv->nconns == 0 || cm_mono_ms() >= deadline) {
        if (srv->nconns > 0)
            cm_warn("drain: %u connections still open after %u ms; closing them", srv->nconns,
                    srv->cfg->limits.drain_timeout_ms);
        else
            cm_info("drain: complete");
        if (srv->exit_after_drain) {
            event_base_loopbreak(srv->base);
            return;
        }
        return;
    }
    struct timeval tv = {0, 50000};
    evtimer_add(srv->drain_timer, &tv);
}

void px_server_begin_drain(struct px_server *srv, bool exit_when_done)
{
    if (exit_when_done)
        srv->exit_after_drain = true;
    if (srv->draining) {
        /* already draining (maybe finished): re-check now, exiting if asked */
        struct timeval now = {0, 0};
        evtimer_add(srv->drain_timer, &now);
        return;
    }
    cm_info("drain: stop accepting; %u connections, %u requests in flight", srv->nconns,
            srv->nstreams);
    srv->draining = true;
    srv->drain_deadline_ms = cm_mono_ms() + srv->cfg->limits.drain_timeout_ms;
    for (size_t i = 0; i < srv->nlisteners; i++)
        px_listener_stop(srv->listeners[i]);
    px_h1_drain();
    px_h2_drain();
    struct timeval tv = {0, 0};
    evtimer_add(srv->drain_timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct px_server *srv = arg;
    (void)what;
    if (sig == SIGHUP) {
        char *err = NULL;
        cm_info("SIGHUP: reloading policy and routes");
        if (px_authz_reload(srv->authz, &err) != 0) {
            cm_warn("SIGHUP: policy reload failed, keeping the last good policy: %s", err);
            free(err);
            err = NULL;
        }
        px_routes_reload(srv->routes, NULL); /* logs and keeps the last good routes on failure */
        return;
    }
    cm_info("%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    px_server_begin_drain(srv, true);
}

int px_server_run(struct px_config *cfg)
{
    char *err = NULL;
    int rc = 0;
    struct px_health *health = NULL;
    signal(SIGPIPE, SIG_IGN);
    struct px_server *srv = cm_xcalloc(1, sizeof(*srv));
    px_srv = srv; /* for debuggers and test harnesses: proxy code never reads it */
    srv->cfg = cfg;
    srv->started_wall_ms = cm_wall_ms();
    cm_list_init(&srv->conns);
    cm_list_init(&srv->streams);
    cm_list_init(&srv->gc_streams);
    srv->base = event_base_new();
    if (srv->base == NULL) {
        cm_error("event_base_new failed");
        free(srv);
        px_srv = NULL;
        return CM_ERR_IO;
    }
    px_io_init(srv->base);
    srv->metrics = px_metrics_state_new();
    px_metrics_register_on(srv->metrics, px_pool_write_prometheus); /* circuit breakers */
    srv->gc_ev = event_new(srv->base, -1, 0, on_gc, srv);
    srv->drain_timer = evtimer_new(srv->base, on_drain_tick, srv);
    srv->trim_ev = event_new(srv->base, -1, EV_PERSIST, on_trim, srv);
    {
        struct timeval tv = cm_tv_ms(TRIM_INTERVAL_MS);
        evtimer_add(srv->trim_ev, &tv);
    }
    srv->sig_term = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->sig_int = evsignal_new(srv->base, SIGINT, on_signal, srv);
    srv->sig_hup = evsignal_new(srv->base, SIGHUP, on_signal, srv);
    evsignal_add(srv->sig_term, NULL);
    evsignal_add(srv->sig_int, NULL);
    evsignal_add(srv->sig_hup, NULL);

    if (cfg->access_log != NULL) {
        if (strcmp(cfg->access_log, "-") == 0)
            srv->access_log = stderr;
        else if ((srv->access_log = fopen(cfg->access_log, "a")) == NULL)
            cm_warn("access_log: cannot open %s; access log off", cfg->access_log);
    }

    if (px_authz_start(srv, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_INVAL;
        goto out;
    }
    if (px_routes_start(srv, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_INVAL;
        goto out;
    }
    /* after routes: /metrics keeps routes' series, then the policy's */
    px_policy_metrics_register(srv->metrics);
    if (px_identity_start(srv, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_INVAL;
        goto out;
    }
    srv->listeners = cm_xcalloc(cfg->nlisteners, sizeof(*srv->listeners));
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct px_listener *l = NULL;
        if (px_listener_start(srv, &cfg->listeners[i], &l, &err) != 0) {
            cm_error("%s", err);
            rc = CM_ERR_IO;
            goto out;
        }
        if (l != NULL) /* else optional and skipped */
            srv->listeners[srv->nlisteners++] = l;
    }
    if (cfg->has_admin && px_admin_start(srv, &cfg->admin_addr, &srv->admin, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_IO;
        goto out;
    }
    /* the health port for kubelet and Prometheus (proxy/health_server.c) */
    if (cfg->has_health &&
        (px_health_start(srv, &cfg->health_addr, &health, &err) != 0 ||
         (cfg->has_health6 && px_health_listen_optional(health, &cfg->health_addr6, &err) != 0))) {
        cm_error("%s", err);
        rc = CM_ERR_IO;
        goto out;
    }
    px_identity_admin_routes(srv->identity, srv->admin);
    px_authz_admin_routes(srv->authz, srv->admin);
    px_routes_admin_routes(srv->routes, srv->admin);
    px_disc_start(srv);
    px_resolver_start(srv);
    srv->listeners_bound = true;
    cm_info("remora-proxy ready");
    event_base_dispatch(srv->base);

out:
    free(err);
    px_h1_shutdown();
    px_h2_shutdown();
    px_tcp_shutdown();
    px_pool_shutdown(); /* after the codecs: no connection is counted any more */
    px_identity_free(srv->identity);
    srv->identity = NULL;
    px_authz_free(srv->authz);
    srv->authz = NULL;
    px_routes_state_free(srv->routes);
    srv->routes = NULL;
    px_stream_gc(srv);
    px_stream_freelist_clear();
    /* connections still listed were never handed to a codec (detecting) */
    while (!cm_list_empty(&srv->conns)) {
        struct px_conn *c = cm_container_of(srv->conns.next, struct px_conn, link);
        px_io_free(c->io);
        px_conn_free(c);
    }
    /* after the connections too (one may wait on a name): the worker thread joined */
    px_resolver_shutdown(srv);
    px_disc_shutdown(srv); /* after the connections: one still detecting may wait on a lookup */
    px_health_free(health);
    if (srv->admin != NULL)
        px_admin_free(srv->admin);
    for (size_t i = 0; i < srv->nlisteners; i++)
        px_listener_free(srv->listeners[i]);
    free(srv->listeners);
    if (srv->access_log != NULL && srv->access_log != stderr)
        fclose(srv->access_log);
    event_free(srv->gc_ev);
    event_free(srv->trim_ev);
    event_free(srv->drain_timer);
    event_free(srv->sig_term);
    event_free(srv->sig_int);
    event_free(srv->sig_hup);
    px_io_deinit();
    px_tls_session_cache_clear();
    event_base_free(srv->base);
    pki_rng_free();
    px_metrics_state_free(srv->metrics);
    free(srv);
    px_srv = NULL;
    return rc;
}
