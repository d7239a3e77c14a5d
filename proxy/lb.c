/* Choosing an endpoint (docs/routes.md "Choosing an endpoint"): power of two
 * choices on a peak-EWMA latency cost, among locality tiers kept in each
 * route's LB view; and the try life cycle that feeds the latency samples. */
#include "proxy/routes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/xalloc.h"
#include "proxy/routes_int.h"

/* Load balancing needs spread, not secrecy: xorshift64* seeded once from the
 * CSPRNG (two CTR_DRBG draws cost more than the rest of a pick). */
static uint32_t rnd(void)
{
    static uint64_t x;
    if (x == 0) {
        pki_rng_fn(NULL, (unsigned char *)&x, sizeof(x));
        x |= 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* ---- latency-aware cost (peak-EWMA, as linkerd2-proxy balances) ------------------ */

/* Time constant of the decay toward 0. Linkerd's is 10 s, but its samples
 * start on a ready connection; ours include setting up a fresh upstream
 * connection (and its TLS handshake), so first samples are often peaks, as
 * are scheduling hiccups on a busy node. With 10 s one such peak kept an
 * endpoint nearly idle for a whole benchmark run (perf/sec-failure.sh: the
 * victims got 1, 7 and 95 of 3,000 requests; 450-850 with 2 s); with 2 s it
 * fades in seconds, while a 200 ms timeout still keeps an endpoint of
 * 0.2 ms peers out for ~14 s at low load. */
#define LAT_DECAY_US   2e6
#define LAT_ALPHA      0.2  /* weight of a sample faster than the estimate */
#define LAT_DEFAULT_MS 1.0  /* a route none of whose endpoints was ever measured */
#define LAT_FLOOR_MS   1e-3 /* a decayed estimate never reaches 0: load still counts */

/* The EWMA decayed to now: an endpoint nobody sends to loses its penalty. */
static double decayed_ms(const struct px_ep_state *st, uint64_t now_us)
{
    if (now_us <= st->ewma_at_us)
        return st->ewma_ms;
    return st->ewma_ms * exp(-(double)(now_us - st->ewma_at_us) / LAT_DECAY_US);
}

/* What we believe of st's latency from its samples; never measured: the
 * route's typical latency (a new endpoint competes as an average one). */
static double believed_ms(const struct px_route *rt, const struct px_ep_state *st, uint64_t now_us)
{
    if (st->ewma_at_us == 0)
        return rt->lat_typical_ms > 0 ? rt->lat_typical_ms : LAT_DEFAULT_MS;
    return decayed_ms(st, now_us);
}

/* The balancer's latency estimate: the belief, raised to how long st has gone
 * without a response while it has requests outstanding (a hung endpoint
 * becomes expensive within its first milliseconds, not after its timeouts). */
static double estimate_ms(const struct px_route *rt, const struct px_ep_state *st, uint64_t now_us)
{
    double est = believed_ms(rt, st, now_us);
    if (st->outstanding > 0 && now_us > st->progress_us) {
        double stalled = (double)(now_us - st->progress_us) / 1000.0;
        if (stalled > est)
            est = stalled;
    }
    return est > LAT_FLOOR_MS ? est : LAT_FLOOR_MS;
}

/* lower is better: latency estimate x (outstanding + 1) / weight */
static double cost_of(const struct px_route *rt, const struct px_endpoint *e, uint64_t now_us)
{
    return estimate_ms(rt, e->st, now_us) * ((double)e->st->outstanding + 1.0) / (double)e->weight;
}

/* One latency sample. Peak-EWMA: a slower sample is believed at once, a
 * faster one moves the estimate by LAT_ALPHA; a failure's (a timeout's)
 * duration only ever raises it. */
static void observe(struct px_route *rt, struct px_ep_state *st, double ms, bool failure,
                    uint64_t now_us)
{
    double cur = believed_ms(rt, st, now_us);
    if (ms > cur || (st->ewma_at_us == 0 && !failure))
        st->ewma_ms = ms;
    else if (!failure)
        st->ewma_ms = cur + LAT_ALPHA * (ms - cur);
    else
        st->ewma_ms = cur;
    st->ewma_at_us = now_us > 0 ? now_us : 1;
    if (!failure)
        rt->lat_typical_ms =
            rt->lat_typical_ms > 0 ? rt->lat_typical_ms + 0.1 * (ms - rt->lat_typical_ms) : ms;
}

void px_route_try_start(struct px_endpoint *ep)
{
    struct px_ep_state *st = ep->st;
    if (st->outstanding++ == 0)
        st->progress_us = cm_mono_us(); /* busy from now: the stall clock starts */
}

void px_route_try_head(struct px_route *rt, struct px_endpoint *ep, uint64_t latency_us)
{
    uint64_t now = cm_mono_us();
    ep->st->progress_us = now;
    observe(rt, ep->st, (double)latency_us / 1000.0, false, now);
}

void px_route_try_abandon(struct px_endpoint *ep)
{
    if (ep->st->outstanding > 0)
        ep->st->outstanding--;
}

static bool avoided(const struct px_ep_state *st, const struct px_ep_state *const *avoid, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (avoid[i] == st)
            return true;
    return false;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A new snapshot's neutral estimate: the median of its endpoints' estimates
 * (their records outlive reloads), so a new address competes as a typical one. */
static void seed_typical(struct px_route *rt, uint64_t now_us)
{
    double *v = cm_xcalloc(rt->neps, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < rt->neps; i++)
        if (rt->eps[i].st->ewma_at_us != 0)
            v[n++] = decayed_ms(rt->eps[i].st, now_us);
    if (n > 0) {
        qsort(v, n, sizeof(*v), cmp_double);
        rt->lat_typical_ms = v[(n - 1) / 2]; /* the lower middle one: new ones get tried */
    }
    free(v);
}

/* Rebuild rt's LB view: rank endpoints against our locality (once per
 * snapshot and locality), then order them healthy local, healthy remote,
 * ejected, and note when the first ejection ends. O(endpoints), only after an
 * ejection started (the state's eject_gen) or ended (lb_until_ms). */
static void lb_refresh(struct px_route *rt, uint64_t now, const char *local, uint64_t gen,
                       uint64_t zgen)
{
    if (rt->lb_order == NULL) {
        rt->lb_order = cm_xcalloc(rt->neps, sizeof(*rt->lb_order));
        rt->lb_cand = cm_xcalloc(rt->neps, sizeof(*rt->lb_cand));
        if (rt->lat_typical_ms == 0)
            seed_typical(rt, now * 1000);
    }
    if (rt->lb_order[0] == NULL || rt->lb_zone_gen != zgen) {
        for (size_t i = 0; i < rt->neps; i++) {
            struct px_endpoint *e = &rt->eps[i];
            e->local = px_ep_is_local(e, local);
        }
        rt->lb_zone_gen = zgen;
    }
    size_t n = 0;
    uint64_t until = UINT64_MAX;
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < rt->neps; i++) {
            struct px_endpoint *e = &rt->eps[i];
            bool ej = px_ep_ejected(e->st, now);
            if (pass == 0 ? !ej && e->local : pass == 1 ? !ej && !e->local : ej)
                rt->lb_order[n++] = e;
            if (pass == 0 && ej && e->st->ejected_until_ms < until)
                until = e->st->ejected_until_ms;
        }
        if (pass == 0)
            rt->lb_nlocal = n;
        else if (pass == 1)
            rt->lb_nhealthy = n;
    }
    rt->lb_gen = gen;
    rt->lb_until_ms = until;
}

/* Power of two choices among c[0..n), n >= 1: two distinct random ones, the
 * cheaper wins. */
static struct px_endpoint *p2c(const struct px_route *rt, struct px_endpoint *const *c, size_t n,
                               uint64_t now_us)
{
    if (n == 1)
        return c[0];
    size_t i = rnd() % n, j = rnd() % (n - 1);
    if (j >= i)
        j++;
    return cost_of(rt, c[i], now_us) <= cost_of(rt, c[j], now_us) ? c[i] : c[j];
}

/* P2C among the endpoints of c[0..n) not in avoid (a retry), or NULL when all
 * are. navoid <= 10, so in a large tier random draws almost always miss the
 * avoided ones; a small tier is filtered instead, into the route's scratch. */
static struct px_endpoint *p2c_avoiding(const struct px_route *rt, struct px_endpoint *const *c,
                                        size_t n, const struct px_ep_state *const *avoid,
                                        size_t navoid, uint64_t now_us)
{
    struct px_endpoint **cand = rt->lb_cand; /* the route's scratch: neps >= n slots */
    if (n > 4 * navoid + 8) {
        struct px_endpoint *a = NULL, *b = NULL;
        for (int tries = 0; tries < 64 && b == NULL; tries++) {
            struct px_endpoint *e = c[rnd() % n];
            if (e == a || avoided(e->st, avoid, navoid))
                continue;
            if (a == NULL)
                a = e;
            else
                b = e;
        }
        if (b != NULL)
            return cost_of(rt, a, now_us) <= cost_of(rt, b, now_us) ? a : b;
        /* unlucky draws (or duplicate addresses): filter */
    }
    size_t nc = 0;
    for (size_t i = 0; i < n; i++)
        if (!avoided(c[i]->st, avoid, navoid))
            cand[nc++] = c[i];
    return nc == 0 ? NULL : p2c(rt, cand, nc, now_us);
}

struct px_endpoint *px_route_pick(struct px_route *rt, const struct px_ep_state *const *avoid,
                                  size_t navoid)
{
    uint64_t now_us = cm_mono_us(), now = now_us / 1000;
    const struct px_routes_state *rs = rt->rs; /* NULL: an unbound snapshot (benchmarks) */
    const char *local = rs != NULL ? rs->cluster : NULL;
    uint64_t gen = rs != NULL ? rs->eject_gen : 0;
    uint64_t zgen = rs != NULL ? rs->zone_gen : 0; /* our zone changed (proxy/zone.c) */
    if (rt->lb_order == NULL || rt->lb_gen != gen || now >= rt->lb_until_ms ||
        rt->lb_zone_gen != zgen)
        lb_refresh(rt, now, local, gen, zgen);
    /* tiers, each a prefix of lb_order: healthy and local (or no locality),
     * healthy anywhere (failover), everything (all ejected: a guess beats a
     * certain failure) */
    const size_t tier[3] = {rt->lb_nlocal, rt->lb_nhealthy, rt->neps};
    for (int t = 0; t < 3; t++) {
        if (tier[t] == 0 || (t > 0 && tier[t] == tier[t - 1]))
            continue; /* empty, or the same set as the tier before */
        if (navoid == 0)
            return p2c(rt, rt->lb_order, tier[t], now_us);
        struct px_endpoint *e = p2c_avoiding(rt, rt->lb_order, tier[t], avoid, navoid, now_us);
        if (e != NULL)
            return e;
    }
    /* only endpoints this request already tried are left: any of them */
    return &rt->eps[rnd() % rt->neps];
}

/* The latency model for the rest of the routes (routes_int.h); lb.c itself
 * calls the static ones, which the compiler inlines into the pick. */
double px_lb_decayed_ms(const struct px_ep_state *st, uint64_t now_us)
{
    return decayed_ms(st, now_us);
}

double px_lb_estimate_ms(const struct px_route *rt, const struct px_ep_state *st, uint64_t now_us)
{
    return estimate_ms(rt, st, now_us);
}

double px_lb_cost(const struct px_route *rt, const struct px_endpoint *e, uint64_t now_us)
{
    return cost_of(rt, e, now_us);
}

void px_lb_observe(struct px_route *rt, struct px_ep_state *st, double ms, bool failure,
                   uint64_t now_us)
{
    observe(rt, st, ms, failure, now_us);
}
