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
#include "proxy/h1.h"
#include "proxy/h2.h"
#include "proxy/health.h"
#include "proxy/identity.h"
#include "proxy/listener.h"
#include "proxy/metrics.h"
#include "proxy/policy.h"
#include "proxy/pool.h"
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
    (void)arg;
    px_stream_gc(px_srv);
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
    (void)fd;
    (void)what;
    (void)arg;
    cm_log_limited_flush(); /* counts of rate-limited warn lines that went quiet */
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks < px_srv->trim_free_base)
        px_srv->trim_free_base = mi.fordblks;
    else if (mi.fordblks - px_srv->trim_free_base > TRIM_STEP) {
        malloc_trim(0);
        px_srv->trim_free_base = mallinfo2().fordblks;
    }
}

bool px_server_ready(void)
{
    return px_srv != NULL && px_srv->listeners_bound && !px_srv->draining && px_identity_ready();
}

/* Polls while draining: exit once no connection is left. */
static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    uint64_t deadline = px_srv->drain_deadline_ms;
    if (px_srv->nconns == 0 || cm_mono_ms() >= deadline) {
        if (px_srv->nconns > 0)
            cm_warn("drain: %u connections still open after %u ms; closing them", px_srv->nconns,
                    px_srv->cfg->limits.drain_timeout_ms);
        else
            cm_info("drain: complete");
        if (px_srv->exit_after_drain) {
            event_base_loopbreak(px_srv->base);
            return;
        }
        return;
    }
    struct timeval tv = {0, 50000};
    evtimer_add(px_srv->drain_timer, &tv);
}

void px_server_drain(bool exit_when_done)
{
    if (exit_when_done)
        px_srv->exit_after_drain = true;
    if (px_srv->draining) {
        /* already draining (maybe finished): re-check now, exiting if asked */
        struct timeval now = {0, 0};
        evtimer_add(px_srv->drain_timer, &now);
        return;
    }
    cm_info("drain: stop accepting; %u connections, %u requests in flight", px_srv->nconns,
            px_srv->nstreams);
    px_srv->draining = true;
    px_srv->drain_deadline_ms = cm_mono_ms() + px_srv->cfg->limits.drain_timeout_ms;
    for (size_t i = 0; i < px_srv->nlisteners; i++)
        px_listener_stop(px_srv->listeners[i]);
    px_h1_drain();
    px_h2_drain();
    struct timeval tv = {0, 0};
    evtimer_add(px_srv->drain_timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    if (sig == SIGHUP) {
        char *err = NULL;
        cm_info("SIGHUP: reloading policy and routes");
        if (px_authz_reload(&err) != 0) {
            cm_warn("SIGHUP: policy reload failed, keeping the last good policy: %s", err);
            free(err);
            err = NULL;
        }
        px_routes_reload(NULL); /* logs and keeps the last good routes on failure */
        return;
    }
    cm_info("%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    px_server_drain(true);
}

int px_server_run(struct px_config *cfg)
{
    char *err = NULL;
    int rc = 0;
    struct px_health *health = NULL;
    signal(SIGPIPE, SIG_IGN);
    px_srv = cm_xcalloc(1, sizeof(*px_srv));
    px_srv->cfg = cfg;
    px_srv->started_wall_ms = cm_wall_ms();
    cm_list_init(&px_srv->conns);
    cm_list_init(&px_srv->streams);
    cm_list_init(&px_srv->gc_streams);
    px_srv->base = event_base_new();
    if (px_srv->base == NULL) {
        cm_error("event_base_new failed");
        free(px_srv);
        px_srv = NULL;
        return CM_ERR_IO;
    }
    px_io_init(px_srv->base);
    px_metrics_register(px_pool_write_prometheus); /* circuit breakers */
    px_srv->gc_ev = event_new(px_srv->base, -1, 0, on_gc, NULL);
    px_srv->drain_timer = evtimer_new(px_srv->base, on_drain_tick, NULL);
    px_srv->trim_ev = event_new(px_srv->base, -1, EV_PERSIST, on_trim, NULL);
    {
        struct timeval tv = {TRIM_INTERVAL_MS / 1000, (TRIM_INTERVAL_MS % 1000) * 1000};
        evtimer_add(px_srv->trim_ev, &tv);
    }
    px_srv->sig_term = evsignal_new(px_srv->base, SIGTERM, on_signal, NULL);
    px_srv->sig_int = evsignal_new(px_srv->base, SIGINT, on_signal, NULL);
    px_srv->sig_hup = evsignal_new(px_srv->base, SIGHUP, on_signal, NULL);
    evsignal_add(px_srv->sig_term, NULL);
    evsignal_add(px_srv->sig_int, NULL);
    evsignal_add(px_srv->sig_hup, NULL);

    if (cfg->access_log != NULL) {
        if (strcmp(cfg->access_log, "-") == 0)
            px_srv->access_log = stderr;
        else if ((px_srv->access_log = fopen(cfg->access_log, "a")) == NULL)
            cm_warn("access_log: cannot open %s; access log off", cfg->access_log);
    }

    if (px_authz_start(cfg, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_INVAL;
        goto out;
    }
    if (px_routes_start(cfg, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_INVAL;
        goto out;
    }
    /* after routes: /metrics keeps routes' series, then the policy's */
    px_policy_metrics_register();
    if (px_identity_start(cfg, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_INVAL;
        goto out;
    }
    px_srv->listeners = cm_xcalloc(cfg->nlisteners, sizeof(*px_srv->listeners));
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct px_listener *l = NULL;
        if (px_listener_start(&cfg->listeners[i], &l, &err) != 0) {
            cm_error("%s", err);
            rc = CM_ERR_IO;
            goto out;
        }
        if (l != NULL) /* else optional and skipped */
            px_srv->listeners[px_srv->nlisteners++] = l;
    }
    if (cfg->has_admin &&
        px_admin_start(px_srv->base, &cfg->admin_addr, &px_srv->admin, &err) != 0) {
        cm_error("%s", err);
        rc = CM_ERR_IO;
        goto out;
    }
    /* the health port for kubelet and Prometheus (proxy/health_server.c) */
    if (cfg->has_health &&
        (px_health_start(px_srv->base, &cfg->health_addr, &health, &err) != 0 ||
         (cfg->has_health6 && px_health_listen_optional(health, &cfg->health_addr6, &err) != 0))) {
        cm_error("%s", err);
        rc = CM_ERR_IO;
        goto out;
    }
    px_identity_admin_routes();
    px_authz_admin_routes();
    px_routes_admin_routes();
    px_srv->listeners_bound = true;
    cm_info("remora-proxy ready");
    event_base_dispatch(px_srv->base);

out:
    free(err);
    px_h1_shutdown();
    px_h2_shutdown();
    px_tcp_shutdown();
    px_pool_shutdown(); /* after the codecs: no connection is counted any more */
    px_identity_shutdown();
    px_authz_shutdown();
    px_routes_shutdown();
    px_stream_gc(px_srv);
    px_stream_freelist_clear();
    /* connections still listed were never handed to a codec (detecting) */
    while (!cm_list_empty(&px_srv->conns)) {
        struct px_conn *c = cm_container_of(px_srv->conns.next, struct px_conn, link);
        px_io_free(c->io);
        px_conn_free(c);
    }
    px_health_free(health);
    if (px_srv->admin != NULL)
        px_admin_free(px_srv->admin);
    for (size_t i = 0; i < px_srv->nlisteners; i++)
        px_listener_free(px_srv->listeners[i]);
    free(px_srv->listeners);
    if (px_srv->access_log != NULL && px_srv->access_log != stderr)
        fclose(px_srv->access_log);
    event_free(px_srv->gc_ev);
    event_free(px_srv->trim_ev);
    event_free(px_srv->drain_timer);
    event_free(px_srv->sig_term);
    event_free(px_srv->sig_int);
    event_free(px_srv->sig_hup);
    px_io_deinit();
    px_tls_session_cache_clear();
    event_base_free(px_srv->base);
    pki_rng_free();
    px_metrics_deinit();
    free(px_srv);
    px_srv = NULL;
    return rc;
}
