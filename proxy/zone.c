/* The proxy's own zone, learned from discovery (proxy/zone.h). */
#include "proxy/zone.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/config.h"
#include "proxy/routes_int.h"
#include "proxy/server.h"

struct px_zone {
    struct px_server *srv;
    struct px_routes_state *rs;
    struct event *ev;
    struct cm_addr self;
    struct px_disc_wait *w; /* a lookup waiting, or NULL */
    const char *last;       /* the last lookup's result: "found", "not_found", "unavailable" */
    uint64_t lookups;
};

/* Same IP, any port. */
static bool same_ip(const struct cm_addr *a, const struct cm_addr *b)
{
    struct cm_addr x = *a;
    cm_addr_set_port(&x, cm_addr_port(b));
    return cm_addr_equal(&x, b);
}

static bool zone_ok(const char *z)
{
    size_t n = strlen(z);
    if (n > PX_ZONE_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)z[i] < 0x21 || (unsigned char)z[i] == 0x7f)
            return false;
    return true;
}

static void set_zone(struct px_routes_state *rs, const char *z)
{
    char *old = rs->zone_own;
    rs->zone_own = z != NULL ? cm_xstrdup(z) : NULL;
    rs->cluster = rs->zone_own;
    rs->zone_gen++; /* every LB view re-ranks (the pointer alone could be reused) */
    rs->zone_changes++;
    free(old);
}

bool px_zone_apply(struct px_routes_state *rs, const struct cm_addr *self, enum px_disc_result res,
                   const struct px_dest_answer *ans)
{
    if (rs == NULL || rs->zone_config || res == PX_DISC_UNAVAILABLE)
        return false; /* unreachable discovery: the last zone learned stays */
    const char *z = NULL;
    if (res == PX_DISC_FOUND && ans != NULL) {
        const struct px_dest_ep *ep = NULL;
        for (size_t i = 0; i < ans->neps && ep == NULL; i++)
            if (self != NULL && same_ip(self, &ans->eps[i].addr))
                ep = &ans->eps[i];
        if (ep == NULL && ans->kind == PX_DEST_POD && ans->neps == 1)
            ep = &ans->eps[0];
        if (ep != NULL && ep->zone != NULL && ep->zone[0] != '\0') {
            if (zone_ok(ep->zone))
                z = ep->zone;
            else if (!rs->zone_bad_logged) { /* the decoder refuses these: a guard */
                cm_warn("zone: discovery gave our address a zone of %zu bytes with bytes "
                        "outside 0x21-0x7e (or over %d): ignored, no locality preference",
                        strlen(ep->zone), PX_ZONE_MAX_LEN);
                rs->zone_bad_logged = true;
            }
        }
    }
    bool same =
        z == NULL ? rs->zone_own == NULL : rs->zone_own != NULL && strcmp(rs->zone_own, z) == 0;
    if (same)
        return false;
    if (z != NULL)
        cm_info("zone: ours is now \"%s\" (from discovery; was %s%s%s)", z,
                rs->zone_own ? "\"" : "", rs->zone_own ? rs->zone_own : "none",
                rs->zone_own ? "\"" : "");
    else
        cm_info("zone: none now (discovery gives our address no zone; was \"%s\"): no "
                "locality preference",
                rs->zone_own);
    set_zone(rs, z);
    return true;
}

static void arm(struct px_zone *z, uint32_t ms)
{
    struct timeval tv = cm_tv_ms(ms);
    evtimer_add(z->ev, &tv);
}

static const char *result_str(enum px_disc_result r)
{
    return r == PX_DISC_FOUND ? "found" : r == PX_DISC_NOT_FOUND ? "not_found" : "unavailable";
}

static void on_answer(enum px_disc_result res, struct px_dest_answer *ans, void *arg)
{
    struct px_zone *z = arg;
    z->w = NULL;
    z->last = result_str(res);
    px_zone_apply(z->rs, &z->self, res, ans);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct px_zone *z = arg;
    arm(z, PX_ZONE_TICK_MS);
    if (z->srv->disc == NULL || z->w != NULL)
        return; /* discovery not started yet, or the last lookup still waits */
    struct px_dest_answer *ans = NULL;
    struct px_disc_wait *w = NULL;
    z->lookups++;
    enum px_disc_result r = px_disc_lookup(z->srv->disc, &z->self, NULL, &ans, on_answer, z, &w);
    if (w != NULL) {
        z->w = w; /* on_answer comes within lookup_timeout_ms */
        return;
    }
    z->last = result_str(r);
    px_zone_apply(z->rs, &z->self, r, ans);
    px_dest_answer_unref(ans);
}

/* Our pod's address: POD_IP (the injector's downward API variable), else the
 * first listener's when it names one; the port: the first listener's. */
static bool own_address(const struct px_config *cfg, struct cm_addr *out)
{
    if (cfg->nlisteners == 0)
        return false;
    uint16_t port = cm_addr_port(&cfg->listeners[0].addr);
    const char *ip = getenv("POD_IP");
    if (ip != NULL && ip[0] != '\0') {
        char buf[CM_ADDR_STRLEN + 8];
        int n =
            snprintf(buf, sizeof(buf), strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, (unsigned)port);
        if (n > 0 && (size_t)n < sizeof(buf) && cm_addr_parse(buf, out) == 0)
            return true;
        cm_warn("zone: POD_IP \"%.64s\" is not an IP address: ignored", ip);
    }
    const struct cm_addr *l = &cfg->listeners[0].addr;
    if (cm_addr_is_any(l) || cm_addr_is_loopback(l))
        return false;
    *out = *l;
    return true;
}

void px_zone_start(struct px_server *srv, struct px_routes_state *rs)
{
    const struct px_config *cfg = srv->cfg;
    if (rs->zone_config || !rs->discovery)
        return; /* a configured cluster (px_routes_state_new) is never learned */
    struct px_zone *z = cm_xcalloc(1, sizeof(*z));
    z->srv = srv;
    z->rs = rs;
    z->last = "none yet";
    if (!own_address(cfg, &z->self)) {
        cm_warn("zone: no \"cluster\" key, and no POD_IP nor a specific listener address to "
                "ask discovery about: no locality preference");
        free(z);
        return;
    }
    char a[CM_ADDR_STRLEN];
    cm_info("zone: no \"cluster\" key: learning ours from discovery (our address %s)",
            cm_addr_format(&z->self, a, sizeof(a)));
    z->ev = evtimer_new(srv->base, on_tick, z);
    arm(z, 0); /* the first lookup once the loop runs (discovery starts after routes) */
    rs->zone = z;
}

void px_zone_free(struct px_routes_state *rs)
{
    if (rs == NULL)
        return;
    struct px_zone *z = rs->zone;
    if (z != NULL) {
        px_disc_cancel(z->w);
        if (z->ev != NULL)
            event_free(z->ev);
        free(z);
        rs->zone = NULL;
    }
    if (!rs->zone_config) {
        free(rs->zone_own);
        rs->zone_own = NULL;
        rs->cluster = NULL;
    }
}

const char *px_zone_source(const struct px_routes_state *rs)
{
    if (rs->zone_config)
        return "config";
    return rs->zone_own != NULL ? "discovery" : "none";
}

json_t *px_zone_json(const struct px_routes_state *rs)
{
    json_t *o = json_object();
    json_object_set_new(o, "zone", rs->cluster ? json_string(rs->cluster) : json_null());
    json_object_set_new(o, "zone_source", json_string(px_zone_source(rs)));
    if (rs->zone != NULL) {
        char a[CM_ADDR_STRLEN];
        json_object_set_new(o, "zone_address",
                            json_string(cm_addr_format(&rs->zone->self, a, sizeof(a))));
        json_object_set_new(o, "zone_last_result", json_string(rs->zone->last));
        json_object_set_new(o, "zone_lookups", json_integer((json_int_t)rs->zone->lookups));
    }
    json_object_set_new(o, "zone_changes", json_integer((json_int_t)rs->zone_changes));
    return o;
}
