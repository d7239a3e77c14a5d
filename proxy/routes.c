/* The routes in force (proxy/routes.h): loading a routes file, the snapshot
 * swap on reload (SIGHUP, POST /routes/reload, the watch), snapshot
 * refcounts, and the per-address endpoint records every snapshot shares.
 * Parsing is routes_config.c, matching routes_index.c, picks lb.c, verdicts
 * outlier.c, admin and metrics routes_admin.c (the map: routes_int.h). */
#include "proxy/routes.h"

#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/metrics.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"
#include "proxy/watch.h"

struct px_routes_state px_routes_g;

/* ---- endpoint state ------------------------------------------------------------ */

static struct px_ep_state *state_for(const struct cm_addr *a)
{
    for (struct px_ep_state *s = px_routes_g.states; s != NULL; s = s->next)
        if (cm_addr_equal(&s->addr, a))
            return s;
    struct px_ep_state *s = cm_xcalloc(1, sizeof(*s));
    s->addr = *a;
    s->next = px_routes_g.states;
    px_routes_g.states = s;
    return s;
}

void px_routes_free(struct px_routes *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++) {
        struct px_route *rt = &r->routes[i];
        for (size_t k = 0; k < rt->neps; k++) {
            free(rt->eps[k].cluster);
            free(rt->eps[k].identity);
        }
        free(rt->eps);
        free(rt->lb_order);
        free(rt->lb_cand);
        free(rt->name);
        free(rt->match_host);
    }
    free(r->routes);
    free(r->host_idx);
    free(r->addr_idx);
    json_decref(r->raw);
    free(r);
}

struct px_routes *px_routes_ref(struct px_routes *r)
{
    if (r != NULL)
        r->refs++;
    return r;
}

void px_routes_unref(struct px_routes *r)
{
    if (r != NULL && --r->refs == 0)
        px_routes_free(r);
}

struct px_routes *px_routes_current(void)
{
    return px_routes_g.cur;
}

/* Attach the shared health records (only for snapshots that go live). */
void px_routes_bind_states(struct px_routes *r)
{
    for (size_t i = 0; i < r->n; i++)
        for (size_t k = 0; k < r->routes[i].neps; k++)
            r->routes[i].eps[k].st = state_for(&r->routes[i].eps[k].addr);
}

/* ---- loading, reload, watch --------------------------------------------------------- */

int px_routes_load_file(const char *file, struct px_routes **out, char **errmsg)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    if (pki_read_file(file, 16 * 1024 * 1024, &buf, &len, errmsg) != 0)
        return CM_ERR_INVAL;
    int rc = px_routes_parse(file, (const char *)buf, len, out, errmsg);
    free(buf);
    return rc;
}

static int load(char **errmsg)
{
    struct px_routes *r = NULL;
    int rc = px_routes_load_file(px_routes_g.file, &r, errmsg);
    if (rc != 0)
        return rc;
    px_routes_bind_states(r);
    px_routes_unref(px_routes_g.cur);
    px_routes_g.cur = r;
    px_routes_g.loaded_at = cm_wall_s();
    cm_watch_set_error(&px_routes_g.watch.files, NULL);
    cm_info("routes: loaded %zu routes from %s", r->n, px_routes_g.file);
    return 0;
}

int px_routes_reload(char **errmsg)
{
    if (px_routes_g.file == NULL)
        return 0;
    char *e = NULL;
    if (load(&e) != 0) {
        cm_watch_set_error(&px_routes_g.watch.files, "%s", e);
        cm_warn("routes: reload failed, keeping the last good routes: %s", e);
        if (errmsg != NULL)
            *errmsg = e;
        else
            free(e);
        return CM_ERR_INVAL;
    }
    return 0;
}

static void on_watch(void *arg, bool gone)
{
    (void)arg;
    if (!gone) /* gone: the watch said so; the routes in force stay */
        px_routes_reload(NULL);
}

int px_routes_start(struct px_server *srv, char **errmsg)
{
    const struct px_config *cfg = srv->cfg;
    px_routes_g.cluster = cfg->cluster;
    if (cfg->routes_file == NULL)
        return 0;
    px_metrics_register(px_routes_write_prometheus);
    px_routes_g.file = cm_xstrdup(cfg->routes_file);
    const char *path = px_routes_g.file;
    px_watch_start(&px_routes_g.watch, "routes", srv->base, &path, 1, on_watch, NULL);
    if (load(errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

void px_routes_shutdown(void)
{
    px_watch_stop(&px_routes_g.watch);
    px_routes_unref(px_routes_g.cur);
    while (px_routes_g.states != NULL) {
        struct px_ep_state *n = px_routes_g.states->next;
        free(px_routes_g.states);
        px_routes_g.states = n;
    }
    free(px_routes_g.file);
    memset(&px_routes_g, 0, sizeof(px_routes_g));
}
