/* The discovery service's view of the API server (discovery.h): one thread
 * per kind (Services, EndpointSlices, Pods) that lists in pages, then
 * watches from the list's resourceVersion with bookmarks, applies each event
 * to the store and wakes the long-polls it concerns. A broken watch resumes
 * from the last resourceVersion seen (no re-list); 410 Gone re-lists; every
 * failure waits a backoff (250 ms doubling to 8 s, reset by a good watch).
 *
 * Why a thread per kind: the kube client is blocking, and three independent
 * streams with their own resourceVersions and backoffs are simplest as three
 * loops; a burst of Pod events never delays an EndpointSlice one. Three
 * threads mostly asleep in poll() cost three stacks. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "injector/discovery_int.h"
#include "injector/kube_int.h"

#define BACKOFF_MIN_MS  250
#define BACKOFF_MAX_MS  8000
#define WATCH_TIMEOUT_S 300 /* timeoutSeconds asked of the API server */
#define WATCH_IDLE_MS   ((WATCH_TIMEOUT_S + 60) * 1000)

static const char *const paths[IJ_DISC__KINDS] = {
    "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/pods"};

static struct ij_disc *_Atomic active; /* for ij_disc_ready and /metrics */

/* Sleep ms, waking early on stop. */
static void nap(struct ij_disc *d, unsigned ms)
{
    while (ms > 0 && !atomic_load(&d->stop)) {
        unsigned step = ms < 100 ? ms : 100;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

static void apply(struct ij_disc_watch *w, struct ij_disc_event *ev, uint64_t seen_us)
{
    struct ij_disc_keys wake = {0};
    if (ev->type == IJ_EV_DELETED || ev->skipped) {
        /* a pod that is done is as good as gone */
        if (ev->key != NULL)
            ij_disc_store_del(w->d->store, w->kind, ev->key, &wake);
    } else {
        ij_disc_store_put(w->d->store, &ev->obj, &wake);
    }
    ij_disc_wake(w->d, &wake, seen_us);
    ij_disc_keys_deinit(&wake);
}

/* ---- list ---------------------------------------------------------------------------- */

/* List every page; apply what decodes, then drop what the list no longer
 * names. Returns 0 (w->rv set), 1 on 410 Gone mid-list, or -1 (logged). */
static int list_all(struct ij_disc_watch *w)
{
    const char *kind = ij_disc_kind_name(w->kind);
    char *cont = NULL, *err = NULL;
    char **keep = NULL;
    size_t nkeep = 0, cap = 0, bad = 0;
    int result = -1;
    char rv[IJ_DISC_MAX_RV + 1] = "";
    uint64_t t0 = cm_mono_ms();
    for (;;) {
        char *q = cont ? ij_kube_query_escape(cont) : NULL;
        char *path = cm_xasprintf("%s?limit=%d%s%s", paths[w->kind], IJ_DISC_LIST_LIMIT,
                                  q ? "&continue=" : "", q ? q : "");
        free(q);
        struct ij_kube_resp r;
        int rc = ij_kube_stream(w->d->kube, path, 0, &w->d->stop, NULL, NULL, &r, &err);
        free(path);
        if (atomic_load(&w->d->stop)) { /* shutting down: whatever came is moot */
            if (rc == 0)
                ij_kube_resp_deinit(&r);
            goto out;
        }
        if (rc != 0) {
            cm_warn("discovery: list %s: %s", kind, err);
            goto out;
        }
        if (r.status == 410) {
            ij_kube_resp_deinit(&r);
            cm_info("discovery: list %s: 410 Gone (the continue token expired): listing again",
                    kind);
            result = 1;
            goto out;
        }
        if (r.status != 200) {
            char *dsc = ij_kube_resp_describe(&r);
            cm_warn("discovery: list %s at %s: %s", kind, ij_kube_endpoint(w->d->kube), dsc);
            free(dsc);
            ij_kube_resp_deinit(&r);
            goto out;
        }
        json_error_t je;
        json_t *doc = json_loadb(r.body, r.body_len, 0, &je);
        ij_kube_resp_deinit(&r);
        json_t *items = json_object_get(doc, "items");
        json_t *md = json_object_get(doc, "metadata");
        const char *prv = json_string_value(json_object_get(md, "resourceVersion"));
        const char *pc = json_string_value(json_object_get(md, "continue"));
        if (!json_is_object(doc) ||
            (items != NULL && !json_is_null(items) && !json_is_array(items)) || prv == NULL ||
            strlen(prv) > IJ_DISC_MAX_RV) {
            cm_warn("discovery: list %s: not a list (%s)", kind,
                    doc == NULL ? je.text : "want items[] and metadata.resourceVersion");
            json_decref(doc);
            goto out;
        }
        snprintf(rv, sizeof(rv), "%s", prv);
        for (size_t i = 0; i < json_array_size(items); i++) {
            struct ij_disc_event ev = {.type = IJ_EV_ADDED};
            int d =
                ij_disc_decode_object(w->kind, json_array_get(items, i), &ev.obj, &ev.key, &err);
            if (d < 0) {
                atomic_fetch_add(&w->skipped, 1);
                if (bad++ < 10)
                    cm_warn("discovery: %s %s skipped: %s", kind, ev.key ? ev.key : "(unnamed)",
                            err);
                /* keep what we had of it: a bad update is not a deletion */
                if (ev.key != NULL) {
                    if (nkeep == cap)
                        keep = cm_xrealloc(keep, (cap = cap ? cap * 2 : 1024) * sizeof(*keep));
                    keep[nkeep++] = ev.key;
                    ev.key = NULL;
                }
            } else if (d == 0) {
                const char *k = ij_disc_obj_key(&ev.obj);
                if (nkeep == cap)
                    keep = cm_xrealloc(keep, (cap = cap ? cap * 2 : 1024) * sizeof(*keep));
                keep[nkeep++] = cm_xstrdup(k);
                apply(w, &ev, cm_mono_us());
            }
            ij_disc_event_deinit(&ev);
        }
        free(cont);
        cont = pc != NULL && *pc != '\0' ? cm_xstrdup(pc) : NULL;
        json_decref(doc);
        if (cont == NULL)
            break;
        if (atomic_load(&w->d->stop))
            goto out;
    }
    {
        struct ij_disc_keys wake = {0};
        ij_disc_store_retain(w->d->store, w->kind, keep, nkeep, &wake);
        ij_disc_wake(w->d, &wake, cm_mono_us());
        ij_disc_keys_deinit(&wake);
    }
    snprintf(w->rv, sizeof(w->rv), "%s", rv);
    if (bad > 10)
        cm_warn("discovery: %s: %zu more objects skipped", kind, bad - 10);
    cm_info("discovery: listed %zu %s in %llu ms (resourceVersion %s)", nkeep, kind,
            (unsigned long long)(cm_mono_ms() - t0), w->rv);
    result = 0;
out:
    for (size_t i = 0; i < nkeep; i++)
        free(keep[i]);
    free(keep);
    free(cont);
    free(err);
    return result;
}

/* ---- watch ------------------------------------------------------------------------------ */

struct stream_ctx {
    struct ij_disc_watch *w;
    struct ij_disc_lines lines;
    bool gone;   /* an ERROR event with 410: re-list */
    bool broken; /* a line that is not a watch event */
    bool head;   /* the 200 head came */
    char *why;
};

static int on_line(void *arg, const char *line, size_t len)
{
    struct stream_ctx *c = arg;
    struct ij_disc_watch *w = c->w;
    const char *kind = ij_disc_kind_name(w->kind);
    uint64_t seen = cm_mono_us();
    struct ij_disc_event ev;
    char *err = NULL;
    int rc = ij_disc_decode_event(w->kind, line, len, &ev, &err);
    if (rc == CM_ERR_PROTO) {
        free(c->why);
        c->why = err;
        c->broken = true;
        return 1;
    }
    if (ev.type == IJ_EV_ERROR) {
        if (ev.code == 410) {
            c->gone = true;
        } else {
            free(c->why);
            c->why = cm_xasprintf("ERROR event %d: %s", ev.code, ev.message ? ev.message : "");
            c->broken = true;
        }
        ij_disc_event_deinit(&ev);
        free(err);
        return 1;
    }
    if (ev.rv[0] != '\0')
        memcpy(w->rv, ev.rv, sizeof(w->rv));
    if (rc == CM_ERR_INVAL && ev.type == IJ_EV_DELETED && ev.key != NULL) {
        atomic_fetch_add(&w->events, 1); /* gone is gone, whatever else it says */
        ij_disc_obj_free(&ev.obj);
        ev.skipped = true;
        apply(w, &ev, seen);
    } else if (rc == CM_ERR_INVAL) {
        atomic_fetch_add(&w->skipped, 1);
        cm_warn("discovery: %s %s (%s event, resourceVersion %s) skipped: %s", kind,
                ev.key ? ev.key : "(unnamed)",
                ev.type == IJ_EV_DELETED ? "DELETED"
                : ev.type == IJ_EV_ADDED ? "ADDED"
                                         : "MODIFIED",
                ev.rv, err);
    } else if (ev.type != IJ_EV_BOOKMARK) {
        atomic_fetch_add(&w->events, 1);
        apply(w, &ev, seen);
    }
    ij_disc_event_deinit(&ev);
    free(err);
    return 0;
}

static int sink(void *arg, const char *at, size_t n)
{
    struct stream_ctx *c = arg;
    if (at == NULL) {
        c->head = true;
        atomic_store(&c->w->stale, false);
        return 0;
    }
    int rc = ij_disc_lines_feed(&c->lines, at, n, on_line, c);
    if (rc == CM_ERR_LIMIT) {
        free(c->why);
        c->why = cm_xasprintf("an event longer than %u bytes", IJ_DISC_MAX_LINE);
        c->broken = true;
    }
    return rc;
}

/* One watch from w->rv. Returns 0 (ended normally: watch again), 1 (410:
 * re-list) or -1 (failed: back off). */
static int watch_once(struct ij_disc_watch *w)
{
    const char *kind = ij_disc_kind_name(w->kind);
    char *rvq = ij_kube_query_escape(w->rv);
    char *path = cm_xasprintf("%s?watch=1&allowWatchBookmarks=true&resourceVersion=%s"
                              "&timeoutSeconds=%d",
                              paths[w->kind], rvq, WATCH_TIMEOUT_S);
    free(rvq);
    struct stream_ctx c = {.w = w};
    struct ij_kube_resp r;
    char *err = NULL;
    int rc = ij_kube_stream(w->d->kube, path, WATCH_IDLE_MS, &w->d->stop, sink, &c, &r, &err);
    free(path);
    int result = 0;
    if (c.gone || r.status == 410) {
        cm_info("discovery: watch %s: resourceVersion %s is gone (410): listing again", kind,
                w->rv);
        result = 1;
    } else if (c.broken) {
        cm_warn("discovery: watch %s: broken stream (%s); resuming from resourceVersion %s", kind,
                c.why ? c.why : "?", w->rv);
        result = -1;
    } else if (rc != 0) {
        if (!atomic_load(&w->d->stop))
            cm_warn("discovery: watch %s: %s; resuming from resourceVersion %s", kind, err, w->rv);
        result = -1;
    } else if (r.status != 200 && r.status != 0) {
        char *dsc = ij_kube_resp_describe(&r);
        cm_warn("discovery: watch %s at %s: %s", kind, ij_kube_endpoint(w->d->kube), dsc);
        free(dsc);
        result = -1;
    } else if (!c.head && !atomic_load(&w->d->stop)) {
        result = -1;
    }
    if (rc == 0)
        ij_kube_resp_deinit(&r);
    ij_disc_lines_reset(&c.lines);
    free(c.why);
    free(err);
    return result;
}

static void *watch_main(void *arg)
{
    struct ij_disc_watch *w = arg;
    struct ij_disc *d = w->d;
    unsigned backoff = BACKOFF_MIN_MS;
    bool need_list = true;
    while (!atomic_load(&d->stop)) {
        if (need_list) {
            atomic_fetch_add(&w->relists, 1);
            int rc = list_all(w);
            if (rc < 0) {
                atomic_fetch_add(&w->errors, 1);
                atomic_store(&w->stale, true);
                if (!atomic_load(&w->synced))
                    cm_warn("discovery: not ready: %s not listed yet; again in %u ms",
                            ij_disc_kind_name(w->kind), backoff);
                nap(d, backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            if (rc == 1)
                continue;
            need_list = false;
            atomic_store(&w->stale, false);
            if (!atomic_exchange(&w->synced, true) && ij_disc_ready())
                cm_info("discovery: ready: services, endpointslices and pods listed");
        }
        uint64_t t0 = cm_mono_ms();
        int rc = watch_once(w);
        if (atomic_load(&d->stop))
            break;
        if (rc == 1) {
            need_list = true;
            continue;
        }
        if (rc < 0) {
            atomic_fetch_add(&w->errors, 1);
            atomic_store(&w->stale, true);
            if (cm_mono_ms() - t0 > 30000)
                backoff = BACKOFF_MIN_MS; /* it had been working: a fresh start */
            nap(d, backoff);
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = BACKOFF_MIN_MS;
    }
    return NULL;
}

int ij_disc_watch_start(struct ij_disc *d, char **errmsg)
{
    for (int k = 0; k < IJ_DISC__KINDS; k++) {
        struct ij_disc_watch *w = &d->watch[k];
        w->d = d;
        w->kind = (enum ij_disc_kind)k;
        int e = pthread_create(&w->thread, NULL, watch_main, w);
        if (e != 0) {
            *errmsg = cm_xasprintf("discovery: cannot start the %s watch thread: %s",
                                   ij_disc_kind_name(w->kind), strerror(e));
            return CM_ERR_IO;
        }
        w->started = true;
    }
    return 0;
}

void ij_disc_watch_join(struct ij_disc *d)
{
    atomic_store(&d->stop, true);
    for (int k = 0; k < IJ_DISC__KINDS; k++) {
        if (d->watch[k].started)
            pthread_join(d->watch[k].thread, NULL);
        d->watch[k].started = false;
    }
}

/* ---- the service -------------------------------------------------------------------------- */

/* Each proxy holds a connection: raise the soft descriptor limit toward
 * discovery.max_connections (+ 1024 for everything else), within the hard
 * one, and say so when it stays short. */
static void raise_nofile(const struct ij_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)cfg->discovery_max_connections + 1024;
    if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
        want = rl.rlim_max;
    if (want > rl.rlim_cur) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < (rlim_t)cfg->discovery_max_connections + 1024)
        cm_warn("discovery: open files limited to %llu (hard limit), below "
                "discovery.max_connections %lld + 1024: connections past it are refused",
                (unsigned long long)rl.rlim_cur, (long long)cfg->discovery_max_connections);
}

int ij_disc_start(const struct ij_config *cfg, struct ij_disc **out, char **errmsg)
{
    *out = NULL;
    if (cfg->discovery_address == NULL)
        return 0;
    raise_nofile(cfg);
    struct ij_disc *d = cm_xcalloc(1, sizeof(*d));
    d->cfg = cfg;
    d->fd = -1;
    mbedtls_x509_crt_init(&d->trust);
    atomic_store(&active, d); /* not ready from now on, until each kind is listed */
    d->store = ij_disc_store_new(cfg->trust_domain, cfg->discovery_cluster_domain);
    char *api = cfg->discovery_api ? cm_xstrdup(cfg->discovery_api) : ij_kube_default_api();
    struct ij_kube_opts ko = {.api = api,
                              .token_file = cfg->discovery_token_file ? cfg->discovery_token_file
                                                                      : IJ_KUBE_DEFAULT_TOKEN_FILE,
                              .ca_file = cfg->discovery_ca_file ? cfg->discovery_ca_file
                                                                : IJ_KUBE_DEFAULT_CA_FILE,
                              .timeout_ms = (int)cfg->discovery_timeout_ms,
                              .agent = "discovery"};
    char *inner = NULL;
    int rc = ij_kube_new(&ko, &d->kube, &inner);
    free(api);
    if (rc != 0) {
        *errmsg = cm_xasprintf("%s: discovery: %s", cfg->file, inner);
        free(inner);
        ij_disc_stop(d);
        return rc;
    }
    if ((rc = ij_disc_server_start(d, errmsg)) != 0) {
        ij_disc_stop(d);
        return rc;
    }
    if ((rc = ij_disc_watch_start(d, errmsg)) != 0) {
        ij_disc_stop(d);
        return rc;
    }
    cm_info("discovery: watching %s (services, endpointslices, pods); not ready until each is "
            "listed",
            ij_kube_endpoint(d->kube));
    *out = d;
    return 0;
}

void ij_disc_stop(struct ij_disc *d)
{
    if (d == NULL)
        return;
    ij_disc_watch_join(d);
    ij_disc_server_stop(d);
    struct ij_disc *expect = d;
    atomic_compare_exchange_strong(&active, &expect, NULL);
    ij_kube_free(d->kube);
    ij_disc_store_free(d->store);
    mbedtls_x509_crt_free(&d->trust);
    free(d->serve_cert);
    if (d->serve_key != NULL) {
        memset(d->serve_key, 0, strlen(d->serve_key));
        free(d->serve_key);
    }
    free(d->trust_pem);
    free(d);
}

bool ij_disc_ready(void)
{
    struct ij_disc *d = atomic_load(&active);
    if (d == NULL)
        return true;
    for (int k = 0; k < IJ_DISC__KINDS; k++)
        if (!atomic_load(&d->watch[k].synced))
            return false;
    return true;
}

struct ij_disc *ij_disc_active(void)
{
    return atomic_load(&active);
}
