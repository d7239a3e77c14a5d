/* The verdict of a try (docs/routes.md): per-endpoint outcome counts,
 * outlier ejection, retry_on, and the per-route retry budget. */
#include "proxy/routes.h"

#include "common/clock.h"
#include "common/log.h"
#include "proxy/routes_int.h"

#define BUDGET_FLOOR                                                                               \
    10 /* retries always allowed per 10 s window: a cold start or a                                \
        * burst right after an endpoint dies must not fail requests */

static size_t healthy_count(const struct px_route *rt, uint64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < rt->neps; i++)
        if (!px_ep_ejected(rt->eps[i].st, now))
            n++;
    return n;
}

void px_route_report(struct px_route *rt, struct px_endpoint *ep, enum px_try_outcome o,
                     uint64_t latency_us)
{
    struct px_ep_state *st = ep->st;
    uint64_t now_us = cm_mono_us();
    st->requests++;
    if (st->outstanding > 0)
        st->outstanding--;
    st->progress_us = now_us;
    /* Of the failures before a response head only a timeout's duration is a
     * latency sample: a refusal or a reset (a process dying with requests in
     * flight) says nothing of speed, and making such an endpoint look slow
     * would starve outlier detection of the failures that eject it. */
    if (latency_us > 0 && (o == PX_TRY_OK || o == PX_TRY_TIMEOUT))
        px_lb_observe(rt, st, (double)latency_us / 1000.0, o != PX_TRY_OK, now_us);
    switch (o) {
    case PX_TRY_OK:
        st->successes++;
        st->consecutive_failures = 0;
        return;
    case PX_TRY_CONNECT:
        st->fail_connect++;
        break;
    case PX_TRY_RESET:
        st->fail_reset++;
        break;
    case PX_TRY_TIMEOUT:
        st->fail_timeout++;
        break;
    case PX_TRY_5XX:
        st->fail_5xx++;
        break;
    }
    st->consecutive_failures++;
    uint64_t now = now_us / 1000;
    if (rt->outlier_failures == 0 || st->consecutive_failures < rt->outlier_failures ||
        px_ep_ejected(st, now))
        return;
    /* never eject the last healthy endpoint of the set */
    if (healthy_count(rt, now) <= 1)
        return;
    st->ejections++;
    st->ejected_until_ms = now + (uint64_t)rt->outlier_base_ms * st->ejections;
    st->consecutive_failures = 0;
    if (rt->rs != NULL) {
        rt->rs->ejections_total++;
        rt->rs->eject_gen++; /* every LB view rebuilds */
    }
    char a[CM_ADDR_STRLEN];
    cm_warn("route %s: endpoint %s ejected for %u ms (ejection %u)", rt->name,
            cm_addr_format(&st->addr, a, sizeof(a)), rt->outlier_base_ms * st->ejections,
            st->ejections);
}

bool px_route_retry_on(const struct px_route *rt, enum px_try_outcome o, int status)
{
    switch (o) {
    case PX_TRY_CONNECT:
        return (rt->retry_on & PX_RETRY_CONNECT_FAILURE) != 0;
    case PX_TRY_RESET:
        return (rt->retry_on & PX_RETRY_RESET) != 0;
    case PX_TRY_TIMEOUT:
        return (rt->retry_on & (PX_RETRY_5XX | PX_RETRY_RESET)) != 0;
    case PX_TRY_5XX:
        if (rt->retry_on & PX_RETRY_5XX)
            return status >= 500;
        if ((rt->retry_on & PX_RETRY_GATEWAY) && (status == 502 || status == 503 || status == 504))
            return true;
        for (unsigned i = 0; i < rt->nretry_codes; i++)
            if (rt->retry_codes[i] == status)
                return true;
        return false;
    default:
        return false;
    }
}

/* The budget window: 10 one-second buckets, stale ones cleared lazily. */
static unsigned bucket(struct px_route *rt)
{
    uint64_t sec = cm_mono_ms() / 1000;
    unsigned i = (unsigned)(sec % 10);
    if (rt->budget_sec[i] != sec) {
        rt->budget_sec[i] = sec;
        rt->budget_req[i] = rt->budget_retry[i] = 0;
    }
    return i;
}

void px_route_budget_request(struct px_route *rt)
{
    rt->budget_req[bucket(rt)]++;
}

bool px_route_budget_retry(struct px_route *rt)
{
    unsigned cur = bucket(rt);
    uint64_t sec = cm_mono_ms() / 1000;
    uint64_t req = 0, retry = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (rt->budget_sec[i] + 10 <= sec)
            continue;
        req += rt->budget_req[i];
        retry += rt->budget_retry[i];
    }
    uint64_t allowed = req * rt->budget_percent / 100;
    if (allowed < BUDGET_FLOOR)
        allowed = BUDGET_FLOOR;
    if (retry >= allowed)
        return false;
    rt->budget_retry[cur]++;
    return true;
}
