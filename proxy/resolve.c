/* Egress names checked against DNS: the resolver (proxy/resolve.h).
 *
 * getaddrinfo on one worker thread rather than libevent's evdns: the app
 * resolves with getaddrinfo, so /etc/hosts, nsswitch and the pod's
 * resolv.conf search rules answer the proxy as they answered the app. The
 * loop and the worker share only the job queue and the done list, under one
 * mutex; the worker wakes the loop through an eventfd. */
#include "proxy/resolve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "common/hash.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/list.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/xalloc.h"
#include "proxy/config.h"
#include "proxy/discovery.h"
#include "proxy/metrics.h"
#include "proxy/server.h"

#define NBUCKETS 256

struct entry {
    struct cm_list lru;    /* in r->lru, most recently used last */
    struct cm_list bucket; /* in r->buckets[hash] */
    char name[PX_RESOLVE_MAX_NAME + 1];
    bool pending;        /* a job is out for it: never evicted */
    bool notifying;      /* its waiters are being called: never evicted */
    uint64_t expires_ms; /* with !pending: the answer is believed until then */
    struct cm_addr addrs[PX_RESOLVE_MAX_ADDRS];
    size_t naddrs; /* 0: the name does not resolve */
    struct cm_list waiters;
};

struct px_name_wait {
    struct cm_list link; /* in its entry's waiters */
    struct px_resolver *r;
    struct entry *e;
    struct cm_addr addr;
    px_name_cb cb;
    void *arg;
    struct event *timer;
};

struct job {
    struct cm_list link; /* in r->jobs, then r->done */
    struct entry *e;     /* the loop's: the worker never touches it */
    char name[PX_RESOLVE_MAX_NAME + 1];
    struct cm_addr addrs[PX_RESOLVE_MAX_ADDRS];
    size_t naddrs;
    int rc;
};

struct px_resolver {
    struct event_base *base;
    struct px_resolver_opts o;
    struct cm_list lru;
    struct cm_list buckets[NBUCKETS];
    uint32_t nentries, inflight; /* inflight: jobs queued, running or done-not-taken */
    /* shared with the worker, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct cm_list jobs, done;
    bool stop;
    pthread_t thread;
    int efd;
    struct event *wake;
    struct px_resolver_stats st;
};

const char *px_name_verdict_str(enum px_name_verdict v)
{
    switch (v) {
    case PX_NAME_MATCH:
        return "an address of the name";
    case PX_NAME_MISMATCH:
        return "the name resolves to other addresses";
    case PX_NAME_NONAME:
        return "the name does not resolve";
    case PX_NAME_TIMEOUT:
        return "no answer from the resolver in time";
    case PX_NAME_BUSY:
        return "the resolver's queue is full";
    }
    return "unknown";
}

static int gai_fn(const char *name, struct cm_addr *out, size_t cap, size_t *n, void *arg)
{
    (void)arg;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    *n = 0;
    if (rc != 0)
        return rc;
    for (struct addrinfo *ai = res; ai != NULL && *n < cap; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(out[*n].ss))
            continue;
        memset(&out[*n], 0, sizeof(out[*n]));
        memcpy(&out[*n].ss, ai->ai_addr, ai->ai_addrlen);
        out[*n].len = ai->ai_addrlen;
        (*n)++;
    }
    freeaddrinfo(res);
    return *n > 0 ? 0 : EAI_NODATA;
}

void px_resolver_opts_default(struct px_resolver_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->positive_ms = PX_RESOLVE_POSITIVE_MS;
    o->negative_ms = PX_RESOLVE_NEGATIVE_MS;
    o->max_entries = PX_RESOLVE_MAX_ENTRIES;
    o->max_queue = PX_RESOLVE_MAX_QUEUE;
    o->timeout_ms = 1000;
}

/* The IP of a (an IPv4-mapped IPv6 address as IPv4): 4 or 16 bytes, or 0. */
static size_t ip_of(const struct cm_addr *a, uint8_t out[16])
{
    if (a->ss.ss_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)&a->ss)->sin_addr, 4);
        return 4;
    }
    if (a->ss.ss_family == AF_INET6) {
        const uint8_t *b = ((const struct sockaddr_in6 *)&a->ss)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(b, mapped, 12) == 0) {
            memcpy(out, b + 12, 4);
            return 4;
        }
        memcpy(out, b, 16);
        return 16;
    }
    return 0;
}

static enum px_name_verdict verdict(const struct entry *e, const struct cm_addr *addr)
{
    if (e->naddrs == 0)
        return PX_NAME_NONAME;
    uint8_t want[16], got[16];
    size_t n = ip_of(addr, want);
    for (size_t i = 0; n > 0 && i < e->naddrs; i++)
        if (ip_of(&e->addrs[i], got) == n && memcmp(got, want, n) == 0)
            return PX_NAME_MATCH;
    return PX_NAME_MISMATCH;
}

static unsigned hash(const char *s)
{
    return cm_hash_str(s) % NBUCKETS;
}

static struct entry *find(struct px_resolver *r, const char *name)
{
    struct cm_list *b = &r->buckets[hash(name)];
    for (struct cm_list *p = b->next; p != b; p = p->next) {
        struct entry *e = cm_container_of(p, struct entry, bucket);
        if (strcmp(e->name, name) == 0)
            return e;
    }
    return NULL;
}

static void entry_free(struct px_resolver *r, struct entry *e)
{
    while (!cm_list_empty(&e->waiters)) {
        struct px_name_wait *w = cm_container_of(e->waiters.next, struct px_name_wait, link);
        px_name_cancel(w);
    }
    cm_list_remove(&e->lru);
    cm_list_remove(&e->bucket);
    r->nentries--;
    free(e);
}

/* The worker: resolve the queued names one at a time. */
static void *worker(void *arg)
{
    struct px_resolver *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && cm_list_empty(&r->jobs))
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop)
            break;
        struct job *j = cm_container_of(r->jobs.next, struct job, link);
        cm_list_remove(&j->link);
        pthread_mutex_unlock(&r->mu);
        j->rc = r->o.fn(j->name, j->addrs, PX_RESOLVE_MAX_ADDRS, &j->naddrs, r->o.fn_arg);
        if (j->rc != 0)
            j->naddrs = 0;
        pthread_mutex_lock(&r->mu);
        cm_list_insert_tail(&r->done, &j->link);
        uint64_t one = 1;
        ssize_t wr = write(r->efd, &one, sizeof(one));
        (void)wr; /* a full counter still wakes the loop */
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void finish_wait(struct px_name_wait *w, enum px_name_verdict v)
{
    px_name_cb cb = w->cb;
    void *arg = w->arg;
    px_name_cancel(w);
    cb(v, arg);
}

/* The worker's answers, on the loop. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct px_resolver *r = arg;
    uint64_t v;
    ssize_t rd = read(fd, &v, sizeof(v));
    (void)rd;
    struct cm_list done;
    cm_list_init(&done);
    pthread_mutex_lock(&r->mu);
    while (!cm_list_empty(&r->done)) {
        struct cm_list *n = r->done.next;
        cm_list_remove(n);
        cm_list_insert_tail(&done, n);
    }
    pthread_mutex_unlock(&r->mu);
    uint64_t now = cm_mono_ms();
    while (!cm_list_empty(&done)) {
        struct job *j = cm_container_of(done.next, struct job, link);
        cm_list_remove(&j->link);
        r->inflight--;
        struct entry *e = j->e;
        memcpy(e->addrs, j->addrs, j->naddrs * sizeof(j->addrs[0]));
        e->naddrs = j->naddrs;
        e->pending = false;
        e->notifying = true; /* a callback may ask for other names: e stays */
        e->expires_ms = now + (e->naddrs > 0 ? r->o.positive_ms : r->o.negative_ms);
        if (e->naddrs > 0) {
            r->st.resolved++;
        } else {
            r->st.failed++;
            cm_debug("resolve: %s does not resolve: %s", e->name,
                     j->rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(j->rc));
        }
        free(j);
        while (!cm_list_empty(&e->waiters)) {
            struct px_name_wait *w = cm_container_of(e->waiters.next, struct px_name_wait, link);
            finish_wait(w, verdict(e, &w->addr));
        }
        e->notifying = false;
    }
}

static void on_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_name_wait *w = arg;
    w->r->st.timeouts++;
    finish_wait(w, PX_NAME_TIMEOUT);
}

struct px_resolver *px_resolver_new(struct event_base *base, const struct px_resolver_opts *o)
{
    struct px_resolver *r = cm_xcalloc(1, sizeof(*r));
    r->base = base;
    r->o = *o;
    if (r->o.fn == NULL)
        r->o.fn = gai_fn;
    if (r->o.max_queue == 0)
        r->o.max_queue = 1;
    if (r->o.max_entries <= r->o.max_queue)
        r->o.max_entries = r->o.max_queue + 1; /* room for a new name while all others wait */
    cm_list_init(&r->lru);
    for (size_t i = 0; i < NBUCKETS; i++)
        cm_list_init(&r->buckets[i]);
    cm_list_init(&r->jobs);
    cm_list_init(&r->done);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) {
        cm_error("resolve: eventfd: %s", strerror(errno));
        goto fail;
    }
    r->wake = event_new(base, r->efd, EV_READ | EV_PERSIST, on_wake, r);
    if (r->wake == NULL || event_add(r->wake, NULL) != 0)
        goto fail;
    int rc = pthread_create(&r->thread, NULL, worker, r);
    if (rc != 0) {
        cm_error("resolve: cannot start the worker thread: %s", strerror(rc));
        goto fail;
    }
    return r;
fail:
    if (r->wake != NULL)
        event_free(r->wake);
    if (r->efd >= 0)
        close(r->efd);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
    return NULL;
}

void px_resolver_free(struct px_resolver *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    struct cm_list *lists[2] = {&r->jobs, &r->done};
    for (int i = 0; i < 2; i++)
        while (!cm_list_empty(lists[i])) {
            struct job *j = cm_container_of(lists[i]->next, struct job, link);
            cm_list_remove(&j->link);
            free(j);
        }
    while (!cm_list_empty(&r->lru))
        entry_free(r, cm_container_of(r->lru.next, struct entry, lru));
    event_free(r->wake);
    close(r->efd);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void px_name_cancel(struct px_name_wait *w)
{
    if (w == NULL)
        return;
    cm_list_remove(&w->link);
    event_free(w->timer);
    free(w);
}

/* Room for one more entry: the least recently used settled one goes. */
static bool make_room(struct px_resolver *r)
{
    for (struct cm_list *p = r->lru.next; r->nentries >= r->o.max_entries && p != &r->lru;) {
        struct entry *e = cm_container_of(p, struct entry, lru);
        p = p->next;
        if (e->pending || e->notifying || !cm_list_empty(&e->waiters))
            continue;
        entry_free(r, e);
        r->st.evicted++;
    }
    return r->nentries < r->o.max_entries;
}

enum px_name_verdict px_resolver_check(struct px_resolver *r, const char *name,
                                       const struct cm_addr *addr, px_name_cb cb, void *arg,
                                       struct px_name_wait **w)
{
    *w = NULL;
    size_t len = strlen(name);
    if (len == 0 || len > PX_RESOLVE_MAX_NAME)
        return PX_NAME_NONAME;
    uint64_t now = cm_mono_ms();
    struct entry *e = find(r, name);
    if (e != NULL && !e->pending && !e->notifying && now >= e->expires_ms) {
        entry_free(r, e); /* expired: asked again */
        e = NULL;
    }
    if (e != NULL) {
        cm_list_remove(&e->lru);
        cm_list_insert_tail(&r->lru, &e->lru);
        if (!e->pending) {
            r->st.hits++;
            return verdict(e, addr);
        }
        r->st.joined++;
    } else {
        if (r->inflight >= r->o.max_queue || !make_room(r)) {
            r->st.busy++;
            cm_log_limited(CM_LOG_WARN, "resolve: queue full",
                           "resolve: %u names already being resolved: %s refused (fail closed)",
                           (unsigned)r->inflight, name);
            return PX_NAME_BUSY;
        }
        r->st.misses++;
        e = cm_xcalloc(1, sizeof(*e));
        memcpy(e->name, name, len + 1);
        e->pending = true;
        cm_list_init(&e->waiters);
        cm_list_insert_tail(&r->lru, &e->lru);
        cm_list_insert_tail(&r->buckets[hash(name)], &e->bucket);
        r->nentries++;
        struct job *j = cm_xcalloc(1, sizeof(*j));
        j->e = e;
        memcpy(j->name, name, len + 1);
        r->inflight++;
        pthread_mutex_lock(&r->mu);
        cm_list_insert_tail(&r->jobs, &j->link);
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    struct px_name_wait *nw = cm_xcalloc(1, sizeof(*nw));
    nw->r = r;
    nw->e = e;
    nw->addr = *addr;
    nw->cb = cb;
    nw->arg = arg;
    nw->timer = evtimer_new(r->base, on_wait_timeout, nw);
    if (nw->timer == NULL) {
        cm_error("resolve: evtimer_new failed");
        abort();
    }
    struct timeval tv = cm_tv_ms(r->o.timeout_ms);
    evtimer_add(nw->timer, &tv);
    cm_list_insert_tail(&e->waiters, &nw->link);
    *w = nw;
    return PX_NAME_TIMEOUT;
}

void px_resolver_get_stats(struct px_resolver *r, struct px_resolver_stats *s)
{
    *s = r->st;
    s->entries = r->nentries;
    s->queued = r->inflight;
}

/* remora_egress_resolve_* on /metrics. */
static void write_prometheus(struct evbuffer *out, void *arg)
{
    struct px_resolver_stats s;
    px_resolver_get_stats(arg, &s);
    struct cm_prom p;
    cm_prom_init(&p, 4096);
    const struct cm_prom_sample asks[] = {
        {"hit", s.hits}, {"miss", s.misses}, {"joined", s.joined}, {"busy", s.busy}};
    cm_prom_by_label(&p, "remora_egress_resolve_asks_total", "counter",
                     "Checks of an egress_allow name against DNS: answered by the cache, sent "
                     "to the resolver, joined to a look-up in flight, refused (queue full).",
                     "result", asks, 4);
    const struct cm_prom_sample ans[] = {{"addresses", s.resolved}, {"none", s.failed}};
    cm_prom_by_label(&p, "remora_egress_resolve_answers_total", "counter",
                     "Look-ups the resolver finished: with addresses, without (the name does "
                     "not resolve).",
                     "result", ans, 2);
    cm_prom_u64(&p, "remora_egress_resolve_timeouts_total", "counter",
                "Waits for a name that ended at lookup_timeout_ms (refused).", s.timeouts);
    cm_prom_u64(&p, "remora_egress_resolve_names", "gauge", "Names in the cache.", s.entries);
    cm_prom_u64(&p, "remora_egress_resolve_queued", "gauge",
                "Names being resolved or waiting for the resolver.", s.queued);
    size_t len;
    int err;
    char *text = cm_prom_take(&p, &len, &err);
    if (err == CM_OK)
        evbuffer_add(out, text, len);
    else
        cm_error("resolve metrics: over 4096 bytes: left out of /metrics");
    free(text);
}

void px_resolver_start(struct px_server *srv)
{
    const struct px_disc_cfg *c = srv->cfg->discovery;
    if (srv->disc == NULL || c == NULL || c->policy != PX_OUTBOUND_REGISTRY_ONLY ||
        !c->verify_names)
        return;
    struct px_resolver_opts o;
    px_resolver_opts_default(&o);
    o.timeout_ms = c->lookup_timeout_ms;
    srv->resolver = px_resolver_new(srv->base, &o);
    if (srv->resolver == NULL) {
        cm_error("egress: no resolver: names in egress_allow let nothing out (fail closed)");
        return;
    }
    px_metrics_register_with(srv->metrics, write_prometheus, srv->resolver);
}

void px_resolver_shutdown(struct px_server *srv)
{
    if (srv->resolver == NULL)
        return;
    px_metrics_unregister_with(srv->metrics, write_prometheus, srv->resolver);
    px_resolver_free(srv->resolver);
    srv->resolver = NULL;
}
