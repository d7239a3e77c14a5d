/* The destination cache (proxy/discovery.h): one entry per destination the
 * proxy's connections ask about, in a hash table and an LRU list.
 *
 * An entry's life: the first lookup starts GET /v1/destination?addr= (or
 * host=) and waits (every later lookup of the same destination joins it,
 * each bounded by lookup_timeout_ms on its own timer; the request itself
 * goes on and fills the cache; first requests go over a few kept-alive
 * connections, d->lookups). A 200 is decoded and held, and ONE watch for
 * every held answer keeps them current: POST /v1/watch listing each
 * destination with its version, held by the server until one differs. Its
 * 200 lists what changed (an answer swapped: the old one lives on in whoever
 * holds a reference; a 404: outside the mesh), a 304 confirms them all, and
 * either way it is sent again at once; a failure marks every held answer
 * stale and retries after a backoff (250 ms doubling to retry_max_ms) while
 * they keep being used. When the set of held destinations changes, the watch
 * is sent again (debounced) with the same session, which makes the server
 * answer the previous one 304, so its connection is reused: two kept-alive
 * connections, no handshake per change. A new destination is current as of
 * its lookup and carries that version, so a change in between is answered at
 * once. A 404 is believed for negative_ms. A first request that fails
 * makes the destination UNAVAILABLE for the backoff, so a discovery service
 * that is down costs each new destination one wait, not one per connection.
 * An entry unused idle_ms is dropped (and left out of the next watch); past
 * max_entries the least recently used one with no waiter goes. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <inttypes.h>
#include <sys/random.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/list.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/buf.h"
#include "common/xalloc.h"
#include "proxy/discovery.h"
#include "proxy/httpc.h"
#include "proxy/identity.h"
#include "proxy/tls.h"

#define NBUCKETS          1024
#define FIRST_TIMEOUT     10000 /* ms: the first request of an entry (its waiters give up sooner) */
#define RETRY_MIN_MS      250
#define MAX_KEY           300        /* "name:port" */
#define LOOKUP_CONNS      2          /* kept-alive connections for first requests (one warm) */
#define WATCH_DEBOUNCE_MS 20         /* held-set changes this close together: one new watch */
#define LOOKUP_IDLE_MS    60000      /* one unused this long is closed (the injector: 120 s) */
#define KEEPALIVE_TARGET  "/v1/ping" /* the warm connection's request after keepalive_ms idle */

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
    char *key; /* "10.0.0.1:80", "[fd00::1]:80" or "web.shop:80" */
    enum entry_state st;
    struct px_dest_answer *ans; /* E_FOUND */
    uint64_t used_ms, changed_ms, confirmed_ms, until_ms;
    bool stale; /* E_FOUND, and the last watch failed */
    bool notifying;
    char err[200];              /* why the last request failed */
    struct px_httpc_call *call; /* the first request (on d->lookups) */
    bool by_host;
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
    /* the watch of every held answer */
    struct px_httpc_pool *watch_pool;
    struct cm_list watches; /* struct watch_call, the current one last */
    unsigned nwatches;
    bool watch_dirty; /* the held set changed since the current watch was sent */
    bool watch_failing;
    uint32_t watch_backoff_ms;
    struct event *watch_ev; /* debounce / backoff */
    char session[33];
    /* discovery.address as a name (cfg->address_name) */
    struct evdns_base *dns;
    struct evdns_getaddrinfo_request *resolving;
    struct event *dns_ev; /* resolve (again), from the loop */
    uint32_t dns_backoff_ms;
    bool resolved;
    struct cm_addr addr; /* what the name resolved to last */
    struct px_disc_stats st;
};

/* A POST /v1/watch on the wire; only the newest one's answer counts. */
struct watch_call {
    struct cm_list node; /* d->watches */
    struct px_disc *d;
    struct px_httpc_call *call;
};

static void start_request(struct entry *e);
static void watch_changed(struct px_disc *d);

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
    o->warm = true;
    o->keepalive_ms = PX_DISC_KEEPALIVE_MS;
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
    px_httpc_call_cancel(e->call);
    if (e->st == E_FOUND)
        watch_changed(d);
    px_dest_answer_unref(e->ans);
    free(e->key);
    free(e);
    d->nentries--;
}

static void failed(struct entry *e, const char *why)
{
    struct px_disc *d = e->d;
    d->st.failures++;
    snprintf(e->err, sizeof(e->err), "%s", why);
    e->backoff_ms = cm_backoff_ms(e->backoff_ms, RETRY_MIN_MS, d->o.retry_max_ms);
    cm_warn("discovery: %s: %s: treated as outside the mesh for %" PRIu32 " ms", e->key, why,
            e->backoff_ms);
    e->st = E_FAILED;
    e->until_ms = cm_mono_ms() + e->backoff_ms;
    notify(e, PX_DISC_UNAVAILABLE);
}

/* e has a (new) answer a: hold it. */
static void hold(struct entry *e, struct px_dest_answer *a, uint64_t now)
{
    struct px_disc *d = e->d;
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
    if (e->st != E_FOUND)
        watch_changed(d);
    e->st = E_FOUND;
    e->stale = false;
    e->err[0] = '\0';
    e->backoff_ms = 0;
    e->confirmed_ms = now;
}

/* e is not in the registry (any more). */
static void absent(struct entry *e)
{
    struct px_disc *d = e->d;
    if (e->st == E_FOUND) {
        cm_info("discovery: %s: no longer in the registry (was %s)", e->key,
                e->ans->service ? e->ans->service : "a pod");
        watch_changed(d);
    }
    px_dest_answer_unref(e->ans);
    e->ans = NULL;
    e->stale = false;
    e->err[0] = '\0';
    e->backoff_ms = 0;
    e->st = E_ABSENT;
    e->until_ms = cm_mono_ms() + d->o.negative_ms;
}

static void on_answer(const struct px_httpc_resp *r, void *arg)
{
    struct entry *e = arg;
    e->call = NULL;
    char why[200];
    if (r->status == 0) {
        snprintf(why, sizeof(why), "discovery service %s unreachable: %s", e->d->cfg->server_name,
                 r->err ? r->err : "?");
        failed(e, why);
        return;
    }
    if (r->status == 404) {
        absent(e);
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
    hold(e, a, cm_mono_ms());
    notify(e, PX_DISC_FOUND);
}

/* Ask discovery about e (its first request). */
static void start_request(struct entry *e)
{
    struct px_disc *d = e->d;
    /* "/v1/destination?addr=10.0.0.1%3A80" / "?host=web.shop%3A80": the key
     * is [A-Za-z0-9.:[\]-] (make_key), its ':', '[' and ']' percent-encoded */
    char target[MAX_KEY * 3 + 32];
    size_t o = (size_t)snprintf(target, sizeof(target),
                                "/v1/destination?%s=", e->by_host ? "host" : "addr");
    for (const char *p = e->key; *p != '\0' && o + 4 < sizeof(target); p++) {
        if (*p == ':' || *p == '[' || *p == ']')
            o += (size_t)snprintf(target + o, sizeof(target) - o, "%%%02X", (unsigned char)*p);
        else
            target[o++] = *p;
    }
    target[o] = '\0';
    struct px_tls_conf *tls = d->o.tls_conf(d->o.tls_arg);
    if (tls == NULL && !d->o.plaintext) {
        failed(e, "no workload certificate yet (the discovery service takes mTLS only)");
        return;
    }
    px_tls_conf_unref(tls);
    struct px_httpc_req rq = {.method = "GET",
                              .target = target,
                              .timeout_ms = FIRST_TIMEOUT,
                              .max_head = 16384,
                              .max_body = PX_DEST_MAX_ANSWER};
    d->st.requests++;
    e->call = px_httpc_pool_send(d->lookups, &rq, on_answer, e);
    if (e->call == NULL) {
        char why[160];
        snprintf(why, sizeof(why), "cannot ask the discovery service: %s", strerror(errno));
        failed(e, why);
    }
}

/* ---- discovery.address as a name --------------------------------------------- */

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct px_disc *d = arg;
    d->resolving = NULL;
    if (result == EVUTIL_EAI_CANCEL)
        return; /* px_disc_free */
    if (result != 0 || res == NULL) {
        char why[400];
        snprintf(why, sizeof(why), "discovery.address: cannot resolve %s: %s", d->cfg->address_name,
                 evutil_gai_strerror(result));
        if (res != NULL)
            evutil_freeaddrinfo(res);
        d->dns_backoff_ms = cm_backoff_ms(d->dns_backoff_ms, RETRY_MIN_MS, d->o.retry_max_ms);
        cm_warn("%s; again in %" PRIu32 " ms", why, d->dns_backoff_ms);
        /* what waits for a connection cannot get one: fail it now (the held
         * answers stay, stale, as for any failure) */
        px_httpc_pool_fail_queued(d->lookups, why);
        px_httpc_pool_fail_queued(d->watch_pool, why);
        struct timeval tv = cm_tv_ms(d->dns_backoff_ms);
        evtimer_add(d->dns_ev, &tv);
        return;
    }
    /* a Service name has one ClusterIP; of several addresses the first */
    cm_addr_from_sockaddr(&d->addr, res->ai_addr, (socklen_t)res->ai_addrlen);
    evutil_freeaddrinfo(res);
    char a[CM_ADDR_STRLEN];
    if (!d->resolved)
        cm_info("discovery: %s is %s", d->cfg->address_name,
                cm_addr_format(&d->addr, a, sizeof(a)));
    d->resolved = true;
    d->dns_backoff_ms = 0;
    px_httpc_pool_set_addr(d->lookups, &d->addr);
    px_httpc_pool_set_addr(d->watch_pool, &d->addr);
    px_httpc_pool_hold(d->lookups, false);
    px_httpc_pool_hold(d->watch_pool, false);
}

static void on_dns_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct px_disc *d = arg;
    if (d->resolving != NULL)
        return;
    px_httpc_pool_hold(d->lookups, true);
    px_httpc_pool_hold(d->watch_pool, true);
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    struct evdns_getaddrinfo_request *r = evdns_getaddrinfo(
        d->dns, d->cfg->address_name, d->cfg->address_port, &hints, on_resolved, d);
    if (r != NULL)
        d->resolving = r; /* else on_resolved already ran */
}

/* A connect to the resolved address failed: the Service may have moved. */
static void on_unreachable(void *arg)
{
    struct px_disc *d = arg;
    if (d->dns != NULL && d->resolving == NULL && !evtimer_pending(d->dns_ev, NULL)) {
        struct timeval tv = {0, 0};
        evtimer_add(d->dns_ev, &tv);
    }
}

/* ---- the watch ------------------------------------------------------------------ */

static void watch_send(struct px_disc *d);

static void watch_schedule(struct px_disc *d, uint32_t ms)
{
    struct timeval tv = cm_tv_ms(ms);
    evtimer_add(d->watch_ev, &tv);
}

/* The held set changed: send the watch again soon (changes close together
 * make one). */
static void watch_changed(struct px_disc *d)
{
    d->watch_dirty = true;
    if (!d->watch_failing && !evtimer_pending(d->watch_ev, NULL))
        watch_schedule(d, WATCH_DEBOUNCE_MS);
}

static void on_watch_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    watch_send(arg);
}

static void watch_call_free(struct watch_call *w)
{
    cm_list_remove(&w->node);
    w->d->nwatches--;
    free(w);
}

/* The watch failed: every held answer is kept, stale, and it is retried. */
static void watch_failed(struct px_disc *d, const char *why)
{
    d->st.failures++;
    d->watch_backoff_ms = cm_backoff_ms(d->watch_backoff_ms, RETRY_MIN_MS, d->o.retry_max_ms);
    unsigned n = 0;
    struct cm_list *pos;
    for (pos = d->lru.next; pos != &d->lru; pos = pos->next) {
        struct entry *e = cm_container_of(pos, struct entry, lru);
        if (e->st != E_FOUND)
            continue;
        snprintf(e->err, sizeof(e->err), "%s", why);
        n += !e->stale;
        e->stale = true;
    }
    if (!d->watch_failing || n > 0)
        cm_warn("discovery: the watch failed: %s; keeping the held answers as stale, retrying in "
                "%" PRIu32 " ms",
                why, d->watch_backoff_ms);
    d->watch_failing = true;
    evtimer_del(d->watch_ev);
    watch_schedule(d, d->watch_backoff_ms);
}

static struct entry *find_key(struct px_disc *d, const char *key)
{
    return find(d, key, cm_hash_str(key));
}

static void on_watch(const struct px_httpc_resp *r, void *arg)
{
    struct watch_call *w = arg;
    struct px_disc *d = w->d;
    bool current = d->watches.prev == &w->node;
    watch_call_free(w);
    if (!current) { /* superseded (the server answered it 304) */
        if (d->watch_dirty && !evtimer_pending(d->watch_ev, NULL) && !d->watch_failing)
            watch_schedule(d, 0);
        return;
    }
    char why[240];
    if (r->status == 0) {
        snprintf(why, sizeof(why), "discovery service %s unreachable: %s", d->cfg->server_name,
                 r->err ? r->err : "?");
        watch_failed(d, why);
        return;
    }
    if (r->status != 200 && r->status != 304) {
        const char *b = r->body->data ? r->body->data : "";
        snprintf(why, sizeof(why), "discovery answered the watch %d %.120s", r->status, b);
        watch_failed(d, why);
        return;
    }
    struct px_disc_change *ch = NULL;
    size_t n = 0;
    if (r->status == 200) {
        char *err = NULL;
        if (px_disc_changes_decode(r->body->data ? r->body->data : "", r->body->len, &ch, &n,
                                   &err) != 0) {
            snprintf(why, sizeof(why), "a bad watch answer from discovery: %s", err);
            free(err);
            watch_failed(d, why);
            return;
        }
    }
    uint64_t now = cm_mono_ms();
    if (d->watch_failing)
        cm_info("discovery: the watch is answered again");
    d->watch_failing = false;
    d->watch_backoff_ms = 0;
    struct cm_list *pos;
    for (pos = d->lru.next; pos != &d->lru; pos = pos->next) {
        struct entry *e = cm_container_of(pos, struct entry, lru);
        if (e->st == E_FOUND) {
            e->stale = false;
            e->err[0] = '\0';
            e->confirmed_ms = now;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct entry *e = find_key(d, ch[i].key);
        if (e == NULL || e->st != E_FOUND)
            continue; /* dropped meanwhile */
        if (ch[i].status == 404) {
            absent(e);
        } else {
            hold(e, ch[i].ans, now);
            ch[i].ans = NULL;
        }
    }
    px_disc_changes_free(ch, n);
    watch_send(d);
}

/* Send the watch of every held answer (none held: no watch). */
static void watch_send(struct px_disc *d)
{
    evtimer_del(d->watch_ev);
    if (d->nwatches >= 2) { /* the superseded one is about to come back */
        d->watch_dirty = true;
        return;
    }
    struct cm_buf b;
    cm_buf_init(&b, (size_t)d->o.max_entries * (MAX_KEY + 120) + 256);
    int rc = cm_buf_printf(&b, "{\"session\": \"%s\", \"watch\": [", d->session);
    size_t n = 0;
    struct cm_list *pos;
    for (pos = d->lru.next; pos != &d->lru && rc == 0; pos = pos->next) {
        struct entry *e = cm_container_of(pos, struct entry, lru);
        if (e->st != E_FOUND)
            continue;
        /* keys are [A-Za-z0-9.:[\]-] (make_key), versions unreserved (px_dest_decode) */
        rc = cm_buf_printf(&b, "%s{\"%s\": \"%s\", \"version\": \"%s\"}", n ? ", " : "",
                           e->by_host ? "host" : "addr", e->key, e->ans->version);
        n++;
    }
    rc |= cm_buf_adds(&b, "]}");
    d->watch_dirty = false;
    if (n == 0 || rc != 0) {
        cm_buf_free(&b);
        if (rc != 0)
            cm_error("discovery: the watch body is over its bound: not sent");
        /* nothing to watch: the held watch (if any) is let go */
        struct cm_list *p2, *tmp;
        cm_list_foreach_safe(p2, tmp, &d->watches)
        {
            struct watch_call *w = cm_container_of(p2, struct watch_call, node);
            px_httpc_call_cancel(w->call);
            watch_call_free(w);
        }
        return;
    }
    char target[64];
    snprintf(target, sizeof(target), "/v1/watch?timeout_s=%" PRIu32, d->o.watch_s);
    struct px_httpc_hdr ct = {"Content-Type", "application/json"};
    struct px_httpc_req rq = {.method = "POST",
                              .target = target,
                              .hdrs = &ct,
                              .nhdrs = 1,
                              .body = b.data,
                              .body_len = b.len,
                              .timeout_ms = (d->o.watch_s + 10) * 1000,
                              .max_head = 16384,
                              .max_body = PX_DISC_MAX_CHANGES_BODY};
    struct watch_call *w = cm_xcalloc(1, sizeof(*w));
    w->d = d;
    cm_list_insert_tail(&d->watches, &w->node);
    d->nwatches++;
    d->st.requests++;
    w->call = px_httpc_pool_send(d->watch_pool, &rq, on_watch, w);
    int err = errno;
    cm_buf_free(&b);
    if (w->call == NULL) {
        watch_call_free(w);
        char why[160];
        snprintf(why, sizeof(why), "cannot send the watch: %s", strerror(err));
        watch_failed(d, why);
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
                                   .idle_ms = LOOKUP_IDLE_MS,
                                   .on_unreachable = on_unreachable,
                                   .unreachable_arg = d,
                                   .warm = d->o.warm ? 1 : 0,
                                   .keepalive_target = KEEPALIVE_TARGET,
                                   .keepalive_ms = d->o.keepalive_ms,
                                   .warm_retry_max_ms = d->o.retry_max_ms};
    d->lookups = px_httpc_pool_new(base, &pc);
    pc.max_conns = 2; /* the held watch, and its successor that supersedes it */
    pc.max_queue = 2;
    pc.warm = 0;
    d->watch_pool = px_httpc_pool_new(base, &pc);
    cm_list_init(&d->watches);
    d->watch_ev = evtimer_new(base, on_watch_ev, d);
    if (d->watch_ev == NULL)
        abort();
    uint8_t rnd[16];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        for (size_t i = 0; i < sizeof(rnd); i++) /* no entropy: unique enough per process */
            rnd[i] = (uint8_t)((cm_mono_us() >> (i % 8)) ^ (uint64_t)getpid() ^ (uintptr_t)d);
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(d->session + 2 * i, 3, "%02x", rnd[i]);
    d->dns_ev = evtimer_new(base, on_dns_ev, d);
    if (d->dns_ev == NULL)
        abort();
    if (cfg->address_name != NULL) {
        /* resolved from the loop before any connection; the hosts file counts */
        d->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
        if (d->dns == NULL) /* no resolv.conf: the hosts file only, then retries */
            d->dns = evdns_base_new(base, 0);
        if (d->dns == NULL)
            abort();
        px_httpc_pool_hold(d->lookups, true);
        px_httpc_pool_hold(d->watch_pool, true);
        struct timeval tv = {0, 0};
        evtimer_add(d->dns_ev, &tv);
    }
    d->sweep_ev = event_new(base, -1, EV_PERSIST, on_sweep, d);
    if (d->sweep_ev == NULL)
        abort();
    uint32_t every = d->o.idle_ms / 4 < 30000 ? d->o.idle_ms / 4 : 30000;
    if (every < 10)
        every = 10;
    struct timeval tv = cm_tv_ms(every);
    evtimer_add(d->sweep_ev, &tv);
    return d;
}

void px_disc_free(struct px_disc *d)
{
    if (d == NULL)
        return;
    while (!cm_list_empty(&d->lru))
        entry_free(cm_container_of(d->lru.next, struct entry, lru));
    if (d->resolving != NULL)
        evdns_getaddrinfo_cancel(d->resolving); /* on_resolved: EVUTIL_EAI_CANCEL */
    if (d->dns != NULL)
        evdns_base_free(d->dns, 0);
    event_free(d->dns_ev);
    px_httpc_pool_free(d->lookups);
    px_httpc_pool_free(d->watch_pool); /* drops the calls without their callbacks */
    while (!cm_list_empty(&d->watches))
        watch_call_free(cm_container_of(d->watches.next, struct watch_call, node));
    event_free(d->watch_ev);
    event_free(d->sweep_ev);
    free(d);
}

/* The cache key of a destination; false when host is not a valid
 * "name:port" (a Host header from the app: anything may be there). */
static bool make_key(const struct cm_addr *dst, const char *host, char *key, size_t keylen)
{
    if (dst != NULL) {
        cm_addr_format(dst, key, keylen);
        return true;
    }
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
    return true;
}

enum px_disc_result px_disc_lookup(struct px_disc *d, const struct cm_addr *dst, const char *host,
                                   struct px_dest_answer **ans, px_disc_cb cb, void *arg,
                                   struct px_disc_wait **w)
{
    *ans = NULL;
    *w = NULL;
    char key[MAX_KEY];
    if (!make_key(dst, host, key, sizeof(key))) {
        d->st.not_found++;
        return PX_DISC_NOT_FOUND;
    }
    uint32_t h = cm_hash_str(key);
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
            start_request(e);
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
        e->by_host = dst == NULL;
        e->hash = h;
        e->used_ms = now;
        cm_list_init(&e->waiters);
        e->hnext = d->buckets[h % NBUCKETS];
        d->buckets[h % NBUCKETS] = e;
        cm_list_insert_tail(&d->lru, &e->lru);
        d->nentries++;
        d->st.lookups_miss++;
        e->st = E_FETCHING;
        start_request(e);
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
    struct timeval tv = cm_tv_ms(to);
    evtimer_add(pw->timer, &tv);
    cm_list_insert_tail(&e->waiters, &pw->node);
    *w = pw;
    return PX_DISC_UNAVAILABLE;
}

bool px_disc_stale(struct px_disc *d, const struct cm_addr *dst, const char *host)
{
    char key[MAX_KEY];
    if (!make_key(dst, host, key, sizeof(key)))
        return false;
    struct entry *e = find(d, key, cm_hash_str(key));
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
    char a[CM_ADDR_STRLEN], name[320];
    px_disc_cfg_address(d->cfg, name, sizeof(name));
    json_t *j =
        json_pack("{s:s, s:s, s:I, s:o}", "discovery", name, "outbound_policy",
                  d->cfg->policy == PX_OUTBOUND_REGISTRY_ONLY ? "registry_only" : "allow_any",
                  "entries", (json_int_t)d->nentries, "destinations", arr);
    if (d->cfg->address_name != NULL)
        json_object_set_new(j, "resolved",
                            d->resolved ? json_string(cm_addr_format(&d->addr, a, sizeof(a)))
                                        : json_null());
    return j;
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
    s->lookup_warm_opens = ps.warm_opens;
    s->lookup_keepalives = ps.keepalives;
    s->lookup_keepalives_answered = ps.keepalives_answered;
    s->lookup_open = ps.open;
    px_httpc_pool_get_stats(d->watch_pool, &ps);
    s->watch_open = ps.open;
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
                                         {"reused", s.lookup_reused},
                                         {"warm", s.lookup_warm_opens},
                                         {"keepalive", s.lookup_keepalives}};
    cm_prom_by_label(&p, "remora_discovery_lookup_connections_total", "counter",
                     "First lookups: connections opened to the discovery service (warm: of "
                     "those, opened before a request), requests sent on one kept alive, and "
                     "GET /v1/ping sent to keep the warm one open.",
                     "event", con, 4);
    const struct cm_prom_sample open_now[] = {{"lookup", s.lookup_open}, {"watch", s.watch_open}};
    cm_prom_by_label(&p, "remora_discovery_connections", "gauge",
                     "Connections to the discovery service open now, by use.", "use", open_now, 2);
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

/* ---- the watch's answer ----------------------------------------------------------- */

/* Its errors quote the input (jansson's do): cm_fail_printable keeps control
 * bytes out of the logs. */

static int change_decode(json_t *it, size_t i, struct px_disc_change *c, char **errmsg)
{
    if (!json_is_object(it))
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "changed[%zu]: want an object", i);
    json_t *addr = json_object_get(it, "addr"), *host = json_object_get(it, "host");
    if ((addr == NULL) == (host == NULL))
        return cm_fail_printable(errmsg, CM_ERR_INVAL,
                                 "changed[%zu]: want exactly one of addr and host", i);
    json_t *nm = addr ? addr : host;
    const char *field = addr ? "addr" : "host";
    if (!json_is_string(nm) || json_string_length(nm) == 0 ||
        json_string_length(nm) >= sizeof(c->key) ||
        json_string_length(nm) != strlen(json_string_value(nm)))
        return cm_fail_printable(errmsg, CM_ERR_INVAL,
                                 "changed[%zu].%s: want a string of 1..%zu bytes", i, field,
                                 sizeof(c->key) - 1);
    c->by_host = host != NULL;
    snprintf(c->key, sizeof(c->key), "%s", json_string_value(nm));
    json_t *st = json_object_get(it, "status");
    if (!json_is_integer(st) || (json_integer_value(st) != 200 && json_integer_value(st) != 404))
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "changed[%zu].status: want 200 or 404", i);
    c->status = (int)json_integer_value(st);
    if (c->status == 404)
        return 0;
    json_t *ans = json_object_get(it, "answer");
    if (!json_is_object(ans))
        return cm_fail_printable(errmsg, CM_ERR_INVAL,
                                 "changed[%zu].answer: want the destination's answer (an "
                                 "object) with status 200",
                                 i);
    char *text = json_dumps(ans, JSON_COMPACT);
    if (text == NULL)
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "changed[%zu].answer: cannot be re-encoded",
                                 i);
    char *err = NULL;
    int rc = px_dest_decode(text, strlen(text), &c->ans, &err);
    free(text);
    if (rc != 0) {
        rc = cm_fail_printable(errmsg, CM_ERR_INVAL, "changed[%zu].answer: %s", i, err);
        free(err);
    }
    return rc;
}

int px_disc_changes_decode(const char *buf, size_t len, struct px_disc_change **out, size_t *n,
                           char **errmsg)
{
    *out = NULL;
    *n = 0;
    *errmsg = NULL;
    if (len > PX_DISC_MAX_CHANGES_BODY)
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "over %u bytes", PX_DISC_MAX_CHANGES_BODY);
    json_error_t je;
    json_t *root = json_loadb(buf, len, 0, &je);
    if (root == NULL)
        return cm_fail_printable(errmsg, CM_ERR_INVAL, "not JSON: %s (line %d)", je.text, je.line);
    int rc;
    json_t *arr = json_object_get(root, "changed");
    size_t k = json_is_array(arr) ? json_array_size(arr) : 0;
    if (!json_is_object(root) || !json_is_array(arr)) {
        rc = cm_fail_printable(errmsg, CM_ERR_INVAL, "changed: want an array");
    } else if (k == 0 || k > PX_DISC_MAX_ENTRIES) {
        rc = cm_fail_printable(errmsg, CM_ERR_INVAL, "changed: want 1..%d entries, got %zu",
                               PX_DISC_MAX_ENTRIES, k);
    } else {
        struct px_disc_change *c = cm_xcalloc(k, sizeof(*c));
        rc = 0;
        for (size_t i = 0; i < k && rc == 0; i++)
            rc = change_decode(json_array_get(arr, i), i, &c[i], errmsg);
        if (rc != 0) {
            px_disc_changes_free(c, k);
        } else {
            *out = c;
            *n = k;
        }
    }
    json_decref(root);
    return rc;
}

void px_disc_changes_free(struct px_disc_change *c, size_t n)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        px_dest_answer_unref(c[i].ans);
    free(c);
}
