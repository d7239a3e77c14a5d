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
#include "proxy/admin.h"
#include "proxy/metrics.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"
#include "proxy/service.h"
#include "proxy/watch.h"
#include "proxy/zone.h"

/* ---- endpoint state ------------------------------------------------------------ */

static struct px_ep_state **chain_of(struct px_routes_state *rs, const struct cm_addr *a)
{
    return &rs->stab[px_routes_hash_addr(a) & rs->stab_mask];
}

/* Unlink and free a record nothing names. */
static void state_drop(struct px_routes_state *rs, struct px_ep_state *s)
{
    struct px_ep_state **pp = chain_of(rs, &s->addr);
    while (*pp != s)
        pp = &(*pp)->hnext;
    *pp = s->hnext;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        rs->states = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    rs->nstates--;
    free(s);
}

/* Drop the records kept only for an ejection that has ended. */
static void sweep(struct px_routes_state *rs)
{
    uint64_t now = cm_mono_ms();
    struct px_ep_state *s = rs->states;
    while (s != NULL) {
        struct px_ep_state *n = s->next;
        if (s->refs == 0 && !px_ep_ejected(s, now))
            state_drop(rs, s);
        s = n;
    }
}

/* The record of address a, with one more reference. The table keeps at most
 * one record per chain on average (doubled as records grow); records kept
 * for an ejection are swept when the count doubles since the last sweep. */
static struct px_ep_state *state_for(struct px_routes_state *rs, const struct cm_addr *a)
{
    if (rs->stab == NULL || rs->nstates > rs->stab_mask) {
        size_t cap = rs->stab == NULL ? 64 : 2 * (rs->stab_mask + 1);
        free(rs->stab);
        rs->stab = cm_xcalloc(cap, sizeof(*rs->stab));
        rs->stab_mask = cap - 1;
        for (struct px_ep_state *s = rs->states; s != NULL; s = s->next) {
            struct px_ep_state **c = chain_of(rs, &s->addr);
            s->hnext = *c;
            *c = s;
        }
    }
    for (struct px_ep_state *s = *chain_of(rs, a); s != NULL; s = s->hnext)
        if (cm_addr_equal(&s->addr, a)) {
            s->refs++;
            return s;
        }
    if (rs->nstates >= rs->sweep_at) {
        sweep(rs);
        rs->sweep_at = rs->nstates * 2 > 64 ? rs->nstates * 2 : 64;
    }
    struct px_ep_state *s = cm_xcalloc(1, sizeof(*s));
    s->addr = *a;
    s->refs = 1;
    s->next = rs->states;
    if (s->next != NULL)
        s->next->prev = s;
    rs->states = s;
    struct px_ep_state **c = chain_of(rs, a);
    s->hnext = *c;
    *c = s;
    rs->nstates++;
    return s;
}

/* An endpoint naming s goes (its snapshot is freed). */
static void state_release(struct px_routes_state *rs, struct px_ep_state *s)
{
    if (--s->refs == 0 && !px_ep_ejected(s, cm_mono_ms()))
        state_drop(rs, s);
}

size_t px_routes_nstates(const struct px_routes_state *rs)
{
    return rs != NULL ? rs->nstates : 0;
}

void px_routes_free(struct px_routes *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++) {
        struct px_route *rt = &r->routes[i];
        for (size_t k = 0; k < rt->neps; k++) {
            if (r->bound && rt->eps[k].st != NULL)
                state_release(rt->rs, rt->eps[k].st);
            free(rt->eps[k].cluster);
            free(rt->eps[k].identity);
        }
        free(rt->eps);
        free(rt->lb_order);
        free(rt->lb_cand);
        free(rt->name);
        free(rt->match_host);
        free(rt->match_service);
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

struct px_routes *px_routes_current_of(const struct px_routes_state *rs)
{
    return rs != NULL ? rs->cur : NULL;
}

/* Attach the shared health records (only for snapshots that go live). */
void px_routes_bind_states(struct px_routes_state *rs, struct px_routes *r)
{
    if (r->bound)
        return; /* its endpoints hold their references already */
    r->bound = true;
    for (size_t i = 0; i < r->n; i++) {
        r->routes[i].rs = rs;
        for (size_t k = 0; k < r->routes[i].neps; k++)
            r->routes[i].eps[k].st = state_for(rs, &r->routes[i].eps[k].addr);
    }
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

static int load(struct px_routes_state *rs, char **errmsg)
{
    struct px_routes *r = NULL;
    int rc = px_routes_load_file(rs->file, &r, errmsg);
    if (rc != 0)
        return rc;
    px_routes_bind_states(rs, r);
    px_routes_unref(rs->cur);
    rs->cur = r;
    rs->loaded_at = cm_wall_s();
    cm_watch_set_error(&rs->watch.files, NULL);
    cm_info("routes: loaded %zu routes from %s", r->n, rs->file);
    return 0;
}

int px_routes_reload(struct px_routes_state *rs, char **errmsg)
{
    if (rs == NULL || rs->file == NULL)
        return 0;
    char *e = NULL;
    if (load(rs, &e) != 0) {
        cm_watch_set_error(&rs->watch.files, "%s", e);
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
    if (!gone) /* gone: the watch said so; the routes in force stay */
        px_routes_reload(arg, NULL);
}

struct px_routes_state *px_routes_state_new(const char *cluster)
{
    struct px_routes_state *rs = cm_xcalloc(1, sizeof(*rs));
    rs->cluster = cluster;
    rs->zone_config = cluster != NULL; /* given: never learned (proxy/zone.c) */
    return rs;
}

int px_routes_start(struct px_server *srv, char **errmsg)
{
    const struct px_config *cfg = srv->cfg;
    struct px_routes_state *rs = px_routes_state_new(cfg->cluster);
    rs->limits = &cfg->limits;
    srv->routes = rs; /* freed by px_routes_state_free, also after a failed start */
    rs->discovery = cfg->discovery != NULL && cfg->discovery->enabled;
    px_zone_start(srv, rs); /* our locality: the cluster key, or learned from discovery */
    if (cfg->routes_file == NULL && !rs->discovery)
        return 0;
    /* per-endpoint rows: the routes file's and the discovered Services' endpoints */
    rs->metrics = srv->metrics;
    px_metrics_register_with(rs->metrics, px_routes_write_prometheus, rs);
    if (cfg->routes_file == NULL)
        return 0;
    rs->file = cm_xstrdup(cfg->routes_file);
    const char *path = rs->file;
    px_watch_start(&rs->watch, "routes", srv->base, &path, 1, on_watch, rs);
    if (load(rs, errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

void px_routes_state_free(struct px_routes_state *rs)
{
    if (rs == NULL)
        return;
    if (rs->admin != NULL) {
        px_admin_route(rs->admin, PX_ADMIN_GET, "/clusters", NULL, NULL);
        px_admin_route(rs->admin, PX_ADMIN_POST, "/routes/reload", NULL, NULL);
    }
    px_zone_free(rs); /* before the discovery cache goes: its lookup is cancelled */
    px_metrics_unregister_with(rs->metrics, px_routes_write_prometheus, rs);
    px_watch_stop(&rs->watch);
    px_service_cache_free(rs);
    px_routes_unref(rs->cur);
    while (rs->states != NULL) {
        struct px_ep_state *n = rs->states->next;
        free(rs->states);
        rs->states = n;
    }
    free(rs->stab);
    free(rs->file);
    free(rs);
}
