/* Upstream circuit breakers: per-endpoint connection counts and the FIFO of
 * requests waiting for a connection. See pool.h and docs/routes.md
 * "Circuit breakers". */
#include "proxy/pool.h"

#include <event2/buffer.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "proxy/upstream.h"

#define NBUCKETS 1024
_Static_assert(NBUCKETS == 1 << 10, "hash_addr keeps 10 bits");

static struct {
    struct px_upstream_ep *tab[NBUCKETS];
    struct cm_list idle;         /* unused records, oldest first */
    struct px_upstream_ep *last; /* the last one looked up (most requests go where the last did) */
    uint32_t nidle;
    uint32_t neps;
    uint64_t overflows[PX_OVERFLOW_N]; /* totals, records dropped included */
    uint64_t npending;                 /* over every endpoint */
    bool ready;
    char msg[256];
} P;

static bool default_has_free(struct px_upstream_ep *ep, const struct px_stream *s);
static void default_admitted(struct px_stream *s);
static void default_refused(struct px_stream *s, enum px_overflow why, const char *msg);

struct px_pool_hooks px_pool_hooks = {default_has_free, default_admitted, default_refused};

static const char *const reason_names[PX_OVERFLOW_N] = {"max_pending_requests", "pending_timeout"};

static void init(void)
{
    if (P.ready)
        return;
    cm_list_init(&P.idle);
    P.ready = true;
}

/* Hash of what cm_addr_equal compares: family, port, address (one
 * multiply for IPv4: this runs for every try). */
static unsigned hash_addr(const struct cm_addr *a)
{
    uint64_t x = 0;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *v = (const void *)&a->ss;
        x = (uint64_t)v->sin_addr.s_addr << 16 | v->sin_port;
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *v = (const void *)&a->ss;
        uint64_t w[2];
        memcpy(w, &v->sin6_addr, sizeof(w));
        x = (w[0] * 0x9E3779B97F4A7C15ULL) ^ w[1] ^ v->sin6_port;
    }
    return (unsigned)((x * 0x9E3779B97F4A7C15ULL) >> 54); /* NBUCKETS = 2^10 */
}

static void ep_free(struct px_upstream_ep *ep)
{
    struct px_upstream_ep **pp = &P.tab[hash_addr(&ep->addr)];
    while (*pp != ep)
        pp = &(*pp)->hnext;
    *pp = ep->hnext;
    if (cm_list_linked(&ep->idle)) {
        cm_list_remove(&ep->idle);
        P.nidle--;
    }
    if (ep->wake != NULL)
        event_free(ep->wake);
    if (ep->timer != NULL)
        event_free(ep->timer);
    if (P.last == ep)
        P.last = NULL;
    P.neps--;
    free(ep);
}

/* Unused records go to the idle list; past the bound the oldest are dropped. */
static void update_idle(struct px_upstream_ep *ep)
{
    bool unused = ep->nconns == 0 && ep->npending == 0;
    if (unused && !cm_list_linked(&ep->idle)) {
        cm_list_insert_tail(&P.idle, &ep->idle);
        P.nidle++;
        while (P.nidle > PX_POOL_MAX_IDLE_EPS)
            ep_free(cm_container_of(P.idle.next, struct px_upstream_ep, idle));
    } else if (!unused && cm_list_linked(&ep->idle)) {
        cm_list_remove(&ep->idle);
        P.nidle--;
    }
}

struct px_upstream_ep *px_pool_find(const struct cm_addr *addr)
{
    if (P.last != NULL && cm_addr_equal(&P.last->addr, addr))
        return P.last;
    init();
    for (struct px_upstream_ep *ep = P.tab[hash_addr(addr)]; ep != NULL; ep = ep->hnext)
        if (cm_addr_equal(&ep->addr, addr))
            return P.last = ep;
    return NULL;
}

static void on_wake(evutil_socket_t fd, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);

struct px_upstream_ep *px_pool_ep(struct px_server *srv, const struct cm_addr *addr)
{
    struct px_upstream_ep *ep = px_pool_find(addr);
    if (ep != NULL)
        return ep;
    ep = cm_xcalloc(1, sizeof(*ep));
    ep->addr = *addr;
    cm_list_init(&ep->pending);
    cm_list_init(&ep->idle);
    cm_list_init(&ep->h1_idle);
    cm_list_init(&ep->h2_sessions);
    ep->wake = event_new(srv->base, -1, 0, on_wake, ep);
    ep->timer = evtimer_new(srv->base, on_timer, ep);
    if (ep->wake == NULL || ep->timer == NULL) {
        cm_error("pool: event_new failed");
        abort();
    }
    unsigned b = hash_addr(addr);
    ep->hnext = P.tab[b];
    P.tab[b] = ep;
    P.neps++;
    update_idle(ep);
    return ep;
}

void px_pool_conn_opened(struct px_upstream_ep *ep)
{
    ep->nconns++;
    update_idle(ep);
}

void px_pool_wake(struct px_upstream_ep *ep)
{
    if (ep != NULL && ep->npending > 0)
        event_active(ep->wake, EV_TIMEOUT, 0);
}

void px_pool_conn_closed(struct px_upstream_ep *ep)
{
    if (ep == NULL)
        return;
    if (ep->nconns > 0)
        ep->nconns--;
    px_pool_wake(ep);
    update_idle(ep);
}

/* Room for s now: under the connection limit, or a free connection. */
static bool has_room(struct px_upstream_ep *ep, const struct px_stream *s)
{
    return ep->nconns < s->cb.max_connections || px_pool_hooks.has_free(ep, s);
}

static void arm(struct px_upstream_ep *ep, uint64_t deadline_ms, uint64_t now_ms)
{
    if (ep->timer_at_ms != 0 && ep->timer_at_ms <= deadline_ms)
        return;
    uint64_t ms = deadline_ms > now_ms ? deadline_ms - now_ms : 0;
    struct timeval tv = cm_tv_ms(ms);
    evtimer_add(ep->timer, &tv);
    ep->timer_at_ms = deadline_ms;
}

static void dequeue(struct px_upstream_ep *ep, struct px_stream *s)
{
    cm_list_remove(&s->qlink);
    s->queued_on = NULL;
    ep->npending--;
    P.npending--;
}

/* Count an overflow. The 503 that follows is the warn line (px_stream_respond:
 * rate-limited per cause, naming the listener, the request and this msg). */
static void overflow(struct px_upstream_ep *ep, enum px_overflow why)
{
    ep->overflows[why]++;
    P.overflows[why]++;
}

int px_pool_admit(struct px_stream *s, const char **msg)
{
    struct px_upstream_ep *ep = px_pool_ep(s->srv, &s->target.addr);
    /* FIFO: nobody overtakes a waiter */
    if (ep->npending == 0 && has_room(ep, s))
        return 0;
    if (ep->npending >= s->cb.max_pending_requests) {
        char a[CM_ADDR_STRLEN];
        snprintf(P.msg, sizeof(P.msg),
                 "upstream overflow: max_pending_requests (%u requests already wait for a "
                 "connection to %s; max_connections %u)",
                 ep->npending, cm_addr_format(&ep->addr, a, sizeof(a)), s->cb.max_connections);
        overflow(ep, PX_OVERFLOW_PENDING);
        *msg = P.msg;
        return -1;
    }
    uint64_t now = cm_mono_ms();
    s->queued_on = ep;
    s->queue_deadline_ms = now + s->cb.pending_timeout_ms;
    cm_list_insert_tail(&ep->pending, &s->qlink);
    ep->npending++;
    P.npending++;
    if (ep->npending > ep->max_pending)
        ep->max_pending = ep->npending;
    ep->queued_total++;
    update_idle(ep);
    arm(ep, s->queue_deadline_ms, now);
    return 1;
}

void px_pool_cancel(struct px_stream *s)
{
    struct px_upstream_ep *ep = s->queued_on;
    if (ep == NULL)
        return;
    dequeue(ep, s);
    /* the next waiter may fit where this one did not (another protocol) */
    px_pool_wake(ep);
    update_idle(ep);
}

/* Capacity may have appeared: admit waiters in order while there is room. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_upstream_ep *ep = arg;
    while (ep->npending > 0) {
        struct px_stream *s = cm_container_of(ep->pending.next, struct px_stream, qlink);
        if (!has_room(ep, s))
            break;
        dequeue(ep, s);
        px_pool_hooks.admitted(s); /* attaches (a connection, a stream slot) */
    }
    update_idle(ep);
}

/* Waiters past their deadline get 503; the timer re-arms for the rest. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_upstream_ep *ep = arg;
    uint64_t now = cm_mono_ms(), next = 0;
    struct cm_list expired, *pos, *tmp;
    cm_list_init(&expired);
    ep->timer_at_ms = 0;
    cm_list_foreach_safe(pos, tmp, &ep->pending)
    {
        struct px_stream *s = cm_container_of(pos, struct px_stream, qlink);
        if (s->queue_deadline_ms <= now) {
            dequeue(ep, s);
            cm_list_insert_tail(&expired, &s->qlink);
        } else if (next == 0 || s->queue_deadline_ms < next) {
            next = s->queue_deadline_ms;
        }
    }
    if (next != 0)
        arm(ep, next, now);
    char a[CM_ADDR_STRLEN];
    cm_addr_format(&ep->addr, a, sizeof(a));
    while (!cm_list_empty(&expired)) {
        struct px_stream *s = cm_container_of(expired.next, struct px_stream, qlink);
        cm_list_remove(&s->qlink);
        snprintf(P.msg, sizeof(P.msg),
                 "upstream pending timeout: no connection to %s became free within %u ms "
                 "(max_connections %u)",
                 a, s->cb.pending_timeout_ms, s->cb.max_connections);
        overflow(ep, PX_OVERFLOW_TIMEOUT);
        px_pool_hooks.refused(s, PX_OVERFLOW_TIMEOUT, P.msg);
    }
    update_idle(ep);
}

uint64_t px_pool_overflows(enum px_overflow why)
{
    return P.overflows[why];
}

uint64_t px_pool_pending(void)
{
    return P.npending;
}

json_t *px_pool_ep_json(const struct px_upstream_ep *ep)
{
    json_t *o = json_object();
    json_object_set_new(o, "active_connections", json_integer(ep ? ep->nconns : 0));
    json_object_set_new(o, "pending", json_integer(ep ? ep->npending : 0));
    json_object_set_new(o, "pending_max", json_integer(ep ? ep->max_pending : 0));
    json_object_set_new(o, "queued_total", json_integer(ep ? (json_int_t)ep->queued_total : 0));
    json_t *ov = json_object();
    for (int i = 0; i < PX_OVERFLOW_N; i++)
        json_object_set_new(ov, reason_names[i],
                            json_integer(ep ? (json_int_t)ep->overflows[i] : 0));
    json_object_set_new(o, "overflows", ov);
    return o;
}

json_t *px_pool_all_json(void)
{
    json_t *arr = json_array();
    for (unsigned b = 0; P.ready && b < NBUCKETS; b++) {
        for (const struct px_upstream_ep *ep = P.tab[b]; ep != NULL; ep = ep->hnext) {
            char a[CM_ADDR_STRLEN];
            json_t *o = px_pool_ep_json(ep);
            json_object_set_new(o, "address", json_string(cm_addr_format(&ep->addr, a, sizeof(a))));
            json_array_append_new(arr, o);
        }
    }
    return arr;
}

void px_pool_write_prometheus(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP remora_upstream_overflow_total Requests answered 503 by an "
                             "upstream circuit breaker, by reason.\n"
                             "# TYPE remora_upstream_overflow_total counter\n");
    for (int i = 0; i < PX_OVERFLOW_N; i++)
        evbuffer_add_printf(out, "remora_upstream_overflow_total{reason=\"%s\"} %llu\n",
                            reason_names[i], (unsigned long long)P.overflows[i]);
    evbuffer_add_printf(out,
                        "# HELP remora_upstream_pending Requests waiting for an upstream "
                        "connection now.\n# TYPE remora_upstream_pending gauge\n"
                        "remora_upstream_pending %llu\n",
                        (unsigned long long)P.npending);
    px_upstream_write_prometheus(out); /* retries by reason: the try's other accounting */
}

void px_pool_shutdown(void)
{
    for (unsigned b = 0; P.ready && b < NBUCKETS; b++) {
        while (P.tab[b] != NULL) {
            struct px_upstream_ep *ep = P.tab[b];
            /* the streams still queued are freed by their downstream codecs */
            while (!cm_list_empty(&ep->pending))
                dequeue(ep, cm_container_of(ep->pending.next, struct px_stream, qlink));
            ep_free(ep);
        }
    }
    memset(&P, 0, sizeof(P));
}

/* ---- default hooks: the codecs and the stream ---------------------------- */

static bool default_has_free(struct px_upstream_ep *ep, const struct px_stream *s)
{
    return px_upstream_has_free(ep, s);
}

static void default_admitted(struct px_stream *s)
{
    px_stream_admitted(s);
}

static void default_refused(struct px_stream *s, enum px_overflow why, const char *msg)
{
    px_stream_refused(s, why == PX_OVERFLOW_TIMEOUT ? PX_CAUSE_PENDING_TIMEOUT : PX_CAUSE_OVERFLOW,
                      msg);
}
