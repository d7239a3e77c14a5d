/* The destination cache (proxy/discovery.h): one entry per destination the
 * proxy's connections ask about, in a hash table and an LRU list.
 *
 * An entry's life: the first lookup starts GET /v1/destination?addr= (or
 * host=) and waits (every later lookup of the same destination joins it,
 * each bounded by lookup_timeout_ms on its own timer; the request itself
 * goes on and fills the cache). A 200 is decoded and held, and a long-poll
 * (&wait=VERSION&timeout_s=N) keeps it current: a 200 swaps the answer (the
 * old one lives on in whoever holds a reference), a 304 asks again, a failure
 * marks the entry stale and retries after a backoff (250 ms doubling to
 * retry_max_ms) while the held answer keeps being used. A 404 is believed for
 * negative_ms. A first request that fails makes the destination UNAVAILABLE
 * for the backoff, so a discovery service that is down costs each new
 * destination one wait, not one per connection. An entry unused idle_ms is
 * dropped with its watch; past max_entries the least recently used one with
 * no waiter goes. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/list.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/xalloc.h"
#include "proxy/discovery.h"
#include "proxy/httpc.h"
#include "proxy/identity.h"
#include "proxy/tls.h"

#define NBUCKETS      1024
#define FIRST_TIMEOUT 10000 /* ms: the first request of an entry (its waiters give up sooner) */
#define RETRY_MIN_MS  250
#define MAX_KEY       300 /* "name:port" */
#define LOOKUP_CONNS   4     /* kept-alive connections for first requests */
#define LOOKUP_IDLE_MS 60000 /* one unused this long is closed (the injector: 120 s) */

enum entry_state {
    E_FETCHING = 0, /* the first request is in flight, no answer yet */
    E_FOUND,        /* an answer is held; a watch (or its retry) keeps it current */
    E_ABSENT,       /* discovery said 404: outside the mesh until until_ms */
    E_FAILED        /* the first request failed: UNAVAILABLE until until_ms */
};

struct entry {
    struct px_disc *d;
    struct cm_list lru; /* d->lru, least recently used first */
    struct entry *hnext;
    uint32_t hash;
    char *key;   /* "10.0.0.1:80", "[fd00::1]:80" or "web.shop:80" */
    char *query; /* "addr=10.0.0.1%3A80" / "host=web.shop%3A80" */
    enum entry_state st;
    struct px_dest_answer *ans; /* E_FOUND */
    uint64_t used_ms, changed_ms, confirmed_ms, until_ms;
    bool stale; /* E_FOUND, and the last watch failed */
    bool notifying;
    char err[200]; /* why the last request failed */
    struct px_httpc *req;       /* a long-poll (its own connection) */
    struct px_httpc_call *call; /* a first request (on d->lookups) */
    bool req_watch;
    struct event *retry_ev;
    uint32_t backoff_ms;
    struct cm_list waiters;
};

struct px_disc_wait {
    struct cm_list node; /* entry->waiters */
    struct entry *e;
    px_disc_cb cb;
    void *arg;
    struct event *timer;
};

struct px_disc {
    struct event_base *base;
    const struct px_disc_cfg *cfg;
    struct px_disc_opts o;
    struct entry *buckets[NBUCKETS];
    struct cm_list lru;
    uint32_t nentries;
    struct event *sweep_ev;
    struct px_httpc_pool *lookups; /* first requests: kept-alive connections */
    struct px_disc_stats st;
};

static void start_request(struct entry *e, bool watch);

/* The workload certificate of the identity module (arg: struct px_identity *),
 * toward a server named by DNS, without ALPN (the discovery port speaks
 * HTTP/1.1). */
static struct px_tls_conf *identity_tls(void *arg)
{
    struct px_tls_conf *c = arg != NULL ? px_identity_dns_client_tls(arg) : NULL;
    return c != NULL ? px_tls_conf_ref(c) : NULL;
}

void px_disc_opts_default(struct px_disc_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->tls_conf = identity_tls;
    o->idle_ms = PX_DISC_IDLE_MS;
    o->negative_ms = PX_DISC_NEGATIVE_MS;
    o->watch_s = PX_DISC_WATCH_S;
    o->max_entries = PX_DISC_MAX_ENTRIES;
    o->retry_max_ms = 30000;
}

static uint32_t hash_key(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* ---- waiters -------------------------------------------------------------------- */

static void waiter_free(struct px_disc_wait *w)
{
    cm_list_remove(&w->node);
    event_free(w->timer);
    free(w);
}

static void on_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct px_disc_wait *w = arg;
    struct px_disc *d = w->e->d;
    px_disc_cb cb = w->cb;
    void *cbarg = w->arg;
    cm_info("discovery: %s: no answer within %" PRIu32 " ms: outside the mesh for now", w->e->key,
            d->cfg->lookup_timeout_ms);
    waiter_free(w);
    d->st.unavailable++;
    cb(PX_DISC_UNAVAILABLE, NULL, cbarg);
}

void px_disc_cancel(struct px_disc_wait *w)
{
    if (w != NULL)
        waiter_free(w);
}

/* Give every waiter of e the result (they may look up or cancel again). */
static void notify(struct entry *e, enum px_disc_result res)
{
    struct cm_list local;
    cm_list_init(&local);
    if (!cm_list_empty(&e->waiters)) { /* move them: a callback may add new waiters to e */
        local.next = e->waiters.next;
        local.prev = e->waiters.prev;
        local.next->prev = &local;
        local.prev->next = &local;
        cm_list_init(&e->waiters);
    }
    e->notifying = true;
    while (!cm_list_empty(&local)) {
        struct px_disc_wait *w = cm_container_of(local.next, struct px_disc_wait, node);
        px_disc_cb cb = w->cb;
        void *arg = w->arg;
        waiter_free(w);
        if (res == PX_DISC_FOUND)
            e->d->st.found++;
        else if (res == PX_DISC_NOT_FOUND)
            e->d->st.not_found++;
        else
            e->d->st.unavailable++;
        cb(res, res == PX_DISC_FOUND ? e->ans : NULL, arg);
    }
    e->notifying = false;
}

/* ---- entries -------------------------------------------------------------------- */

static struct entry *find(struct px_disc *d, const char *key, uint32_t h)
{
    for (struct entry *e = d->buckets[h % NBUCKETS]; e != NULL; e = e->hnext)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void entry_free(struct entry *e)
{
    struct px_disc *d = e->d;
    struct entry **pp = &d->buckets[e->hash % NBUCKETS];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    cm_list_remove(&e->lru);
    while (!cm_list_empty(&e->waiters)) /* only at px_disc_free: callers never see these */
        waiter_free(cm_container_of(e->waiters.next, struct px_disc_wait, node));
    px_httpc_cancel(e->req);
    px_httpc_call_cancel(e->call);
    if (e->retry_ev != NULL)
        event_free(e->retry_ev);
    px_dest_answer_unref(e->ans);
    free(e->key);
    free(e->query);
    free(e);
    d->nentries--;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct entry *e = arg;
    start_request(e, e->st == E_FOUND);
}

static void backoff_next(struct entry *e)
{
    uint32_t max = e->d->o.retry_max_ms;
    e->backoff_ms = e->backoff_ms == 0 ? RETRY_MIN_MS : e->backoff_ms * 2;
    if (e->backoff_ms > max)
        e->backoff_ms = max;
}

static void failed(struct entry *e, const char *why)
{
    struct px_disc *d = e->d;
    d->st.failures++;
    bool first = e->err[0] == '\0';
    snprintf(e->err, sizeof(e->err), "%s", why);
    backoff_next(e);
    if (e->st == E_FOUND) {
        if (!e->stale || first)
            cm_warn("discovery: %s: %s; keeping the answer held (version %s) as stale, retrying",
                    e->key, why, e->ans->version);
        e->stale = true;
        struct timeval tv = {e->backoff_ms / 1000, (e->backoff_ms % 1000) * 1000};
        evtimer_add(e->retry_ev, &tv);
        return;
    }
    cm_warn("discovery: %s: %s: treated as outside the mesh for %" PRIu32 " ms", e->key, why,
            e->backoff_ms);
    e->st = E_FAILED;
    e->until_ms = cm_mono_ms() + e->backoff_ms;
    notify(e, PX_DISC_UNAVAILABLE);
}

static void on_answer(const struct px_httpc_resp *r, void *arg)
{
    struct entry *e = arg;
    struct px_disc *d = e->d;
    e->req = NULL;
    e->call = NULL;
    char why[200];
    if (r->status == 0) {
        snprintf(why, sizeof(why), "discovery service %s unreachable: %s", e->d->cfg->server_name,
                 r->err ? r->err : "?");
        failed(e, why);
        return;
    }
    if (r->status == 304 && e->req_watch && e->st == E_FOUND) {
        e->stale = false;
        e->err[0] = '\0';
        e->backoff_ms = 0;
        e->confirmed_ms = cm_mono_ms();
        start_request(e, true);
        return;
    }
    if (r->status == 404) {
        if (e->st == E_FOUND)
            cm_info("discovery: %s: no longer in the registry (was %s)", e->key,
                    e->ans->service ? e->ans->service : "a pod");
        px_dest_answer_unref(e->ans);
        e->ans = NULL;
        e->stale = false;
        e->err[0] = '\0';
        e->backoff_ms = 0;
        e->st = E_ABSENT;
        e->until_ms = cm_mono_ms() + d->o.negative_ms;
        notify(e, PX_DISC_NOT_FOUND);
        return;
    }
    if (r->status != 200) {
        snprintf(why, sizeof(why), "discovery answered %d", r->status);
        failed(e, why);
        return;
    }
    struct px_dest_answer *a = NULL;
    char *err = NULL;
    if (px_dest_decode(r->body->data ? r->body->data : "", r->body->len, &a, &err) != 0) {
        snprintf(why, sizeof(why), "a bad answer from discovery: %s", err);
        free(err);
        failed(e, why);
        return;
    }
    uint64_t now = cm_mono_ms();
    if (e->st != E_FOUND || strcmp(e->ans->version, a->version) != 0) {
        if (e->st == E_FOUND)
            d->st.updates++;
        px_dest_answer_unref(e->ans);
        e->ans = a;
        e->changed_ms = now;
        cm_debug("discovery: %s: version %s, %zu endpoints", e->key, a->version, a->neps);
    } else {
        px_dest_answer_unref(a);
    }
    if (e->stale)
        cm_info("discovery: %s: reachable again (version %s)", e->key, e->ans->version);
    e->st = E_FOUND;
    e->stale = false;
    e->err[0] = '\0';
    e->backoff_ms = 0;
    e->confirmed_ms = now;
    start_request(e, true);
    notify(e, PX_DISC_FOUND);
}

/* Ask discovery about e: the first request, or a long-poll from e->ans. */
static void start_request(struct entry *e, bool watch)
{
    struct px_disc *d = e->d;
    char target[MAX_KEY * 3 + 160];
    if (watch)
        snprintf(target, sizeof(target), "/v1/destination?%s&wait=%s&timeout_s=%" PRIu32, e->query,
                 e->ans->version, d->o.watch_s);
    else
        snprintf(target, sizeof(target), "/v1/destination?%s", e->query);
    struct px_tls_conf *tls = d->o.tls_conf(d->o.tls_arg);
    if (tls == NULL && !d->o.plaintext) {
        failed(e, "no workload certificate yet (the discovery service takes mTLS only)");
        return;
    }
    struct px_httpc_req rq = {.addr = &d->cfg->addr,
                              .tls = tls,
                              .tls_name = d->cfg->server_name,
                              .method = "GET",
                              .target = target,
                              .host = d->cfg->server_name,
                              .timeout_ms = watch ? (d->o.watch_s + 10) * 1000 : FIRST_TIMEOUT,
                              .max_head = 16384,
                              .max_body = PX_DEST_MAX_ANSWER};
    d->st.requests++;
    e->req_watch = watch;
    int err;
    if (watch) {
        e->req = px_httpc_start(d->base, &rq, on_answer, e);
        err = errno;
    } else {
        e->call = px_httpc_pool_send(d->lookups, &rq, on_answer, e);
        err = errno;
    }
    px_tls_conf_unref(tls);
    if (e->req == NULL && e->call == NULL) {
        char why[160];
        snprintf(why, sizeof(why), "cannot ask the discovery service: %s", strerror(err));
        failed(e, why);
    }
}

/* Make room for one more entry: the least recently used one nobody waits on. */
static bool evict_one(struct px_disc *d)
{
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &d->lru)
    {
        struct entry *e = cm_container_of(pos, struct entry, lru);
        if (cm_list_empty(&e->waiters) && !e->notifying) {
            cm_debug("discovery: %s: dropped (more than %" PRIu32 " destinations)", e->key,
                     d->o.max_entries);
            entry_free(e);
            d->st.evicted++;
            return true;
        }
    }
    return false;
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct px_disc *d = arg;
    uint64_t now = cm_mono_ms();
    struct cm_list *pos, *tmp;
    cm_list_foreach_safe(pos, tmp, &d->lru)
    {
        struct entry *e = cm_container_of(pos, struct entry, lru);
        if (now - e->used_ms < d->o.idle_ms)
            break; /* LRU order: the rest were used later */
        if (!cm_list_empty(&e->waiters))
            continue;
        cm_debug("discovery: %s: unused for %" PRIu32 " ms: dropped", e->key, d->o.idle_ms);
        entry_free(e);
        d->st.expired++;
    }
}

struct px_disc *px_disc_new(struct event_base *base, const struct px_disc_cfg *cfg,
                            const struct px_disc_opts *opts)
{
    struct px_disc *d = cm_xcalloc(1, sizeof(*d));
    d->base = base;
    d->cfg = cfg;
    if (opts != NULL)
        d->o = *opts;
    else
        px_disc_opts_default(&d->o);
    if (d->o.max_entries == 0)
        d->o.max_entries = PX_DISC_MAX_ENTRIES;
    if (d->o.retry_max_ms < RETRY_MIN_MS)
        d->o.retry_max_ms = RETRY_MIN_MS;
    if (d->o.watch_s == 0)
        d->o.watch_s = PX_DISC_WATCH_S;
    cm_list_init(&d->lru);
    struct px_httpc_pool_cfg pc = {.addr = &cfg->addr,
                                   .tls_conf = d->o.tls_conf,
                                   .tls_arg = d->o.tls_arg,
                                   .plaintext = d->o.plaintext,
                                   .no_tls_err = "no workload certificate yet (the discovery "
                                                 "service takes mTLS only)",
                                   .tls_name = cfg->server_name,
                                   .host = cfg->server_name,
                                   .max_conns = LOOKUP_CONNS,
                                   .max_queue = d->o.max_entries,
                                   .idle_ms = LOOKUP_IDLE_MS};
    d->lookups = px_httpc_pool_new(base, &pc);
    d->sweep_ev = event_new(base, -1, EV_PERSIST, on_sweep, d);
    if (d->sweep_ev == NULL)
        abort();
    uint32_t every = d->o.idle_ms / 4 < 30000 ? d->o.idle_ms / 4 : 30000;
    if (every < 10)
        every = 10;
    struct timeval tv = {every / 1000, (every % 1000) * 1000};
    evtimer_add(d->sweep_ev, &tv);
    return d;
}

void px_disc_free(struct px_disc *d)
{
    if (d == NULL)
        return;
    while (!cm_list_empty(&d->lru))
        entry_free(cm_container_of(d->lru.next, struct entry, lru));
    px_httpc_pool_free(d->lookups);
    event_free(d->sweep_ev);
    free(d);
}

/* The cache key and the query of a destination; false when host is not a
 * valid "name:port" (a Host header from the app: anything may be there). */
static bool make_key(const struct cm_addr *dst, const char *host, char *key, size_t keylen,
                     char *query, size_t qlen)
{
    const char *kind = "addr";
    if (dst != NULL) {
        cm_addr_format(dst, key, keylen);
    } else {
        kind = "host";
        size_t n = host ? strlen(host) : 0;
        const char *colon = host ? strrchr(host, ':') : NULL;
        if (n == 0 || n >= keylen || colon == NULL || colon == host || colon[1] == '\0')
            return false;
        for (size_t i = 0; i < n; i++) {
            char ch = host[i];
            bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == ':';
            if (!ok || (ch == ':' && host + i != colon))
                return false;
            key[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
        }
        key[n] = '\0';
        for (const char *p = colon + 1; *p; p++)
            if (*p < '0' || *p > '9' || p - colon > 5)
                return false;
    }
    size_t o = (size_t)snprintf(query, qlen, "%s=", kind);
    for (const char *p = key; *p && o + 4 < qlen; p++) {
        if (*p == ':' || *p == '[' || *p == ']')
            o += (size_t)snprintf(query + o, qlen - o, "%%%02X", (unsigned char)*p);
        else
            query[o++] = *p;
    }
    query[o] = '\0';
    return true;
}

enum px_disc_result px_disc_lookup(struct px_disc *d, const struct cm_addr *dst, const char *host,
                                   struct px_dest_answer **ans, px_disc_cb cb, void *arg,
                                   struct px_disc_wait **w)
{
    *ans = NULL;
    *w = NULL;
    char key[MAX_KEY], query[MAX_KEY * 3 + 8];
    if (!make_key(dst, host, key, sizeof(key), query, sizeof(query))) {
        d->st.not_found++;
        return PX_DISC_NOT_FOUND;
    }
    uint32_t h = hash_key(key);
    uint64_t now = cm_mono_ms();
    struct entry *e = find(d, key, h);
    if (e != NULL) {
        e->used_ms = now;
        cm_list_remove(&e->lru);
        cm_list_insert_tail(&d->lru, &e->lru);
        switch (e->st) {
        case E_FOUND:
            d->st.lookups_hit++;
            d->st.found++;
            *ans = px_dest_answer_ref(e->ans);
            return PX_DISC_FOUND;
        case E_ABSENT:
        case E_FAILED:
            if (now < e->until_ms) {
                d->st.lookups_hit++;
                if (e->st == E_ABSENT) {
                    d->st.not_found++;
                    return PX_DISC_NOT_FOUND;
                }
                d->st.unavailable++;
                return PX_DISC_UNAVAILABLE;
            }
            d->st.lookups_miss++;
            e->st = E_FETCHING;
            start_request(e, false);
            if (e->st != E_FETCHING) { /* failed at once */
                d->st.unavailable++;
                return PX_DISC_UNAVAILABLE;
            }
            break;
        case E_FETCHING:
            d->st.lookups_coalesced++;
            break;
        }
    } else {
        if (d->nentries >= d->o.max_entries && !evict_one(d)) {
            d->st.unavailable++;
            cm_warn("discovery: %s: %" PRIu32 " destinations are being looked up at once: "
                    "treated as outside the mesh",
                    key, d->nentries);
            return PX_DISC_UNAVAILABLE;
        }
        e = cm_xcalloc(1, sizeof(*e));
        e->d = d;
        e->key = cm_xstrdup(key);
        e->query = cm_xstrdup(query);
        e->hash = h;
        e->used_ms = now;
        cm_list_init(&e->waiters);
        e->retry_ev = evtimer_new(d->base, on_retry, e);
        if (e->retry_ev == NULL)
            abort();
        e->hnext = d->buckets[h % NBUCKETS];
        d->buckets[h % NBUCKETS] = e;
        cm_list_insert_tail(&d->lru, &e->lru);
        d->nentries++;
        d->st.lookups_miss++;
        e->st = E_FETCHING;
        start_request(e, false);
        if (e->st != E_FETCHING) {
            d->st.unavailable++;
            return PX_DISC_UNAVAILABLE;
        }
    }
    struct px_disc_wait *pw = cm_xcalloc(1, sizeof(*pw));
    pw->e = e;
    pw->cb = cb;
    pw->arg = arg;
    pw->timer = evtimer_new(d->base, on_wait_timeout, pw);
    if (pw->timer == NULL)
        abort();
    uint32_t to = d->cfg->lookup_timeout_ms;
    struct timeval tv = {to / 1000, (to % 1000) * 1000};
    evtimer_add(pw->timer, &tv);
    cm_list_insert_tail(&e->waiters, &pw->node);
    *w = pw;
    return PX_DISC_UNAVAILABLE;
}

bool px_disc_stale(struct px_disc *d, const struct cm_addr *dst, const char *host)
{
    char key[MAX_KEY], query[MAX_KEY * 3 + 8];
    if (!make_key(dst, host, key, sizeof(key), query, sizeof(query)))
        return false;
    struct entry *e = find(d, key, hash_key(key));
    return e != NULL && e->st == E_FOUND && e->stale;
}

static const char *state_name(const struct entry *e)
{
    switch (e->st) {
    case E_FETCHING:
        return "looking up";
    case E_FOUND:
        return e->stale ? "stale" : "current";
    case E_ABSENT:
        return "not in the registry";
    case E_FAILED:
        return "unavailable";
    }
    return "?";
}

json_t *px_disc_json(struct px_disc *d)
{
    uint64_t now = cm_mono_ms();
    json_t *arr = json_array();
    struct cm_list *pos;
    for (pos = d->lru.prev; pos != &d->lru; pos = pos->prev) { /* most recently used first */
        const struct entry *e = cm_container_of(pos, struct entry, lru);
        json_t *o = json_pack("{s:s, s:s, s:b, s:I}", "destination", e->key, "state", state_name(e),
                              "stale", e->stale, "unused_ms", (json_int_t)(now - e->used_ms));
        if (e->st == E_FOUND) {
            json_object_set_new(o, "version", json_string(e->ans->version));
            json_object_set_new(o, "changed_ms_ago",
                                json_integer((json_int_t)(now - e->changed_ms)));
            json_object_set_new(o, "confirmed_ms_ago",
                                json_integer((json_int_t)(now - e->confirmed_ms)));
            json_object_set_new(o, "answer", px_dest_answer_json(e->ans));
        }
        if (e->err[0] != '\0')
            json_object_set_new(o, "last_error", json_string(e->err));
        json_array_append_new(arr, o);
    }
    char a[CM_ADDR_STRLEN];
    return json_pack("{s:s, s:s, s:I, s:o}", "discovery",
                     cm_addr_format(&d->cfg->addr, a, sizeof(a)), "outbound_policy",
                     d->cfg->policy == PX_OUTBOUND_REGISTRY_ONLY ? "registry_only" : "allow_any",
                     "entries", (json_int_t)d->nentries, "destinations", arr);
}

/* The name part of an egress host ("name", "name:port" or "name."): false
 * when there is none or it is an address literal (addresses match by the
 * destination, never by what the app wrote). *port is the Host's port when
 * it has one. */
static bool egress_name(const char *host, char *name, size_t cap, uint16_t *port)
{
    if (host == NULL || host[0] == '\0' || host[0] == '[')
        return false;
    const char *colon = strchr(host, ':');
    size_t n = colon != NULL ? (size_t)(colon - host) : strlen(host);
    if (n == 0 || n >= cap)
        return false;
    if (colon != NULL) {
        uint16_t p;
        if (cm_port_parse(colon + 1, &p) != 0 || p == 0)
            return false;
        *port = p;
    }
    memcpy(name, host, n);
    name[n] = '\0';
    struct in_addr a4;
    char trimmed[MAX_KEY];
    memcpy(trimmed, name, n + 1);
    if (n > 0 && trimmed[n - 1] == '.')
        trimmed[n - 1] = '\0';
    return inet_pton(AF_INET, trimmed, &a4) != 1;
}

enum px_disc_route px_disc_route(struct px_disc *d, enum px_disc_result res,
                                 const struct px_dest_answer *ans, const struct cm_addr *dst,
                                 const char *host, const char **expected_id)
{
    *expected_id = NULL;
    if (res == PX_DISC_FOUND && ans != NULL) {
        const char *id = NULL;
        bool meshed = false, one_id = true;
        for (size_t i = 0; i < ans->neps; i++) {
            const struct px_dest_ep *e = &ans->eps[i];
            if (!e->meshed)
                continue;
            if (meshed && strcmp(id, e->identity) != 0)
                one_id = false;
            meshed = true;
            id = e->identity;
        }
        if (!meshed)
            return PX_ROUTE_PLAIN;
        *expected_id = one_id ? id : NULL;
        return PX_ROUTE_MESH;
    }
    char a[CM_ADDR_STRLEN];
    if (d->cfg->policy == PX_OUTBOUND_ALLOW_ANY) {
        d->st.egress_passthrough++;
        return PX_ROUTE_EGRESS;
    }
    /* host names match with the Host's own port (else the destination's),
     * addresses with the destination's */
    char name[MAX_KEY];
    uint16_t port = cm_addr_port(dst);
    bool named = egress_name(host, name, sizeof(name), &port);
    if ((named && px_egress_allowed(d->cfg, name, NULL, port)) ||
        px_egress_allowed(d->cfg, NULL, dst, cm_addr_port(dst))) {
        d->st.egress_allowed++;
        return PX_ROUTE_EGRESS;
    }
    d->st.egress_refused++;
    char what[MAX_KEY + 16], esc[MAX_KEY];
    if (named) { /* the app's bytes: escaped for the log */
        cm_log_escape(esc, sizeof(esc), name, strlen(name));
        snprintf(what, sizeof(what), "%s:%u at ", esc, (unsigned)port);
    } else {
        what[0] = '\0';
    }
    cm_info("egress: %s%s refused: not in the mesh registry (%s) and not in egress_allow "
            "(outbound_policy registry_only)",
            what, cm_addr_format(dst, a, sizeof(a)),
            res == PX_DISC_NOT_FOUND ? "discovery answered 404"
                                     : "no answer from discovery in time");
    return PX_ROUTE_REFUSED;
}

bool px_disc_egress_by_name(struct px_disc *d, enum px_disc_result res,
                            const struct px_dest_answer *ans, const struct cm_addr *dst,
                            const char *host, char *name, size_t cap)
{
    if ((res == PX_DISC_FOUND && ans != NULL) || d->cfg->policy != PX_OUTBOUND_REGISTRY_ONLY ||
        !d->cfg->verify_names)
        return false;
    char n[MAX_KEY];
    uint16_t port = cm_addr_port(dst);
    if (!egress_name(host, n, sizeof(n), &port) || !px_egress_allowed(d->cfg, n, NULL, port) ||
        px_egress_allowed(d->cfg, NULL, dst, cm_addr_port(dst)))
        return false; /* refused anyway, or an address entry vouches for dst */
    size_t len = strlen(n);
    if (len > 0 && n[len - 1] == '.')
        len--;
    if (len == 0 || len >= cap)
        return false; /* cannot happen: egress_allowed matched a name */
    for (size_t i = 0; i < len; i++)
        name[i] = (n[i] >= 'A' && n[i] <= 'Z') ? (char)(n[i] - 'A' + 'a') : n[i];
    name[len] = '\0';
    return true;
}

void px_disc_egress_refuse_name(struct px_disc *d, const struct cm_addr *dst, const char *name,
                                const char *why)
{
    char a[CM_ADDR_STRLEN], esc[MAX_KEY];
    d->st.egress_refused++;
    d->st.egress_refused_dns++;
    cm_log_escape(esc, sizeof(esc), name, strlen(name));
    cm_info("egress: %s refused: not an address of %s (egress_allow names are checked against "
            "DNS: %s)",
            cm_addr_format(dst, a, sizeof(a)), esc, why);
}

void px_disc_get_stats(struct px_disc *d, struct px_disc_stats *s)
{
    *s = d->st;
    s->entries = d->nentries;
    struct px_httpc_pool_stats ps;
    px_httpc_pool_get_stats(d->lookups, &ps);
    s->lookup_connects = ps.connects;
    s->lookup_reused = ps.reused;
    s->stale = 0;
    struct cm_list *pos;
    for (pos = d->lru.next; pos != &d->lru; pos = pos->next)
        s->stale += cm_container_of(pos, struct entry, lru)->stale;
}

void px_disc_write_prometheus(struct px_disc *d, struct evbuffer *dst)
{
    struct px_disc_stats s;
    px_disc_get_stats(d, &s);
    struct cm_prom p;
    cm_prom_init(&p, 8192);
    cm_prom_u64(&p, "remora_destinations", "gauge",
                "Destinations the proxy holds an entry for (service discovery cache).", s.entries);
    cm_prom_u64(&p, "remora_destinations_stale", "gauge",
                "Held answers kept while the discovery service cannot be reached.", s.stale);
    const struct cm_prom_sample res[] = {
        {"found", s.found}, {"not_found", s.not_found}, {"unavailable", s.unavailable}};
    cm_prom_by_label(&p, "remora_discovery_lookups_total", "counter",
                     "Destination lookups by result (not_found and unavailable: outside the "
                     "mesh).",
                     "result", res, 3);
    const struct cm_prom_sample req[] = {{"sent", s.requests}, {"failed", s.failures}};
    cm_prom_by_label(&p, "remora_discovery_requests_total", "counter",
                     "Requests to the discovery service (first lookups and long-polls), and "
                     "those that failed.",
                     "outcome", req, 2);
    const struct cm_prom_sample con[] = {{"opened", s.lookup_connects},
                                         {"reused", s.lookup_reused}};
    cm_prom_by_label(&p, "remora_discovery_lookup_connections_total", "counter",
                     "First lookups: connections opened to the discovery service, and requests "
                     "sent on one kept alive.",
                     "event", con, 2);
    cm_prom_u64(&p, "remora_discovery_updates_total", "counter",
                "Held answers replaced by a newer version.", s.updates);
    const struct cm_prom_sample eg[] = {{"passthrough", s.egress_passthrough},
                                        {"allowed", s.egress_allowed},
                                        {"refused", s.egress_refused}};
    cm_prom_by_label(&p, "remora_egress_total", "counter",
                     "Tries to destinations outside the mesh registry: passed through "
                     "(allow_any), let out by egress_allow, or refused (registry_only).",
                     "decision", eg, 3);
    cm_prom_u64(&p, "remora_egress_refused_dns_total", "counter",
                "Of the refused: let out only by a name in egress_allow, and not an address "
                "of that name (egress_verify_names).",
                s.egress_refused_dns);
    size_t len;
    int err;
    char *text = cm_prom_take(&p, &len, &err);
    if (err == CM_OK)
        evbuffer_add(dst, text, len);
    else
        cm_error("discovery metrics: over 8192 bytes: left out of /metrics");
    free(text);
}
