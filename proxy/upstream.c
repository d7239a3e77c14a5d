/* Target resolution, the codec of a try, and the budget of resends no route
 * accounts for. See upstream.h and docs/internals/upstream.md. */
#include "proxy/upstream.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#include "proxy/conn.h"
#include "proxy/discovery.h"
#include "proxy/h1.h"
#include "proxy/h2.h"
#include "proxy/identity.h"
#include "proxy/pool.h"
#include "proxy/routes.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "proxy/tls.h"

/* Same window and floor as a route's retry budget (proxy/outlier.c). */
#define BUDGET_SECS    10
#define BUDGET_PERCENT 20
#define BUDGET_FLOOR   10

static struct {
    uint64_t sec[BUDGET_SECS];
    uint32_t req[BUDGET_SECS], resend[BUDGET_SECS];
} B;

static uint64_t retries[PX_RETRY_REASON_N];
static const char *const reason_names[PX_RETRY_REASON_N] = {"retry_on", "unprocessed"};

/* The app's own protocol, as it reaches a destination without mTLS. */
static enum px_target_proto app_proto(const struct px_listener_cfg *l)
{
    return l->upstream_protocol == PX_UP_H2 ? PX_TGT_H2 : PX_TGT_H1;
}

enum px_target_proto px_upstream_proto(const struct px_listener_cfg *l)
{
    if (l->tls == PX_TLS_MESH)
        return PX_TGT_H2; /* sidecar to sidecar: HTTP/2 over mTLS, whatever the app speaks */
    return app_proto(l);
}

void px_upstream_target_release(struct px_upstream_target *t)
{
    if (t->tls != NULL)
        px_tls_conf_unref(t->tls);
    t->tls = NULL;
}

/* What the registry says about the connection's destination (t->addr may be
 * rewritten): refused under the outbound policy, as the app sent it (*mesh
 * cleared), or a meshed workload whose identity *id names (*mesh kept). */
static enum px_resolve disc_apply(struct px_disc *d, int res, const struct px_dest_answer *dest,
                                  const char *host, struct px_upstream_target *t, bool *mesh,
                                  const char **id)
{
    *id = NULL;
    switch (px_disc_route(d, (enum px_disc_result)res, dest, &t->addr, host, id)) {
    case PX_ROUTE_REFUSED:
        return PX_RESOLVE_NOT_IN_REGISTRY;
    case PX_ROUTE_PLAIN:
    case PX_ROUTE_EGRESS:
        *mesh = false;
        break;
    case PX_ROUTE_MESH:
        break;
    }
    return PX_RESOLVE_OK;
}

/* A discovered endpoint: a meshed one over mTLS (when the listener is mesh)
 * with its own identity, an unmeshed one as the app sent it (h2c when the
 * Service says http2/grpc). */
static void endpoint_via(const struct px_listener_cfg *l, const struct px_endpoint *ep,
                         struct px_upstream_target *t, bool *mesh)
{
    if (ep->via == PX_EP_VIA_MESH && *mesh)
        return; /* mTLS + HTTP/2, expected_id = ep->identity */
    *mesh = false;
    t->expected_id = NULL;
    t->proto = ep->via == PX_EP_VIA_PLAIN_H2C ? PX_TGT_H2 : app_proto(l);
}

enum px_resolve px_upstream_resolve(const struct px_stream *s, const struct px_endpoint *ep,
                                    struct px_upstream_target *t)
{
    px_upstream_target_release(t);
    t->host = NULL;
    bool mesh = s->lcfg->tls == PX_TLS_MESH;
    if (ep != NULL)
        t->addr = ep->addr;
    else
        px_conn_default_upstream(s->conn, &t->addr);
    t->proto = px_upstream_proto(s->lcfg);
    /* secure naming: the route's endpoint names the workload it must be */
    t->expected_id = ep != NULL ? ep->identity : NULL;
    if (ep != NULL && ep->via != PX_EP_VIA_LISTENER)
        endpoint_via(s->lcfg, ep, t, &mesh); /* a discovered endpoint (proxy/service.c) */
    else if (ep == NULL && s->disc_done && s->srv->disc != NULL) {
        /* service discovery (a routes-file endpoint above wins) */
        const char *id;
        t->host = s->egress_host; /* egress_allow names match the Host; the 502 names it */
        if (disc_apply(s->srv->disc, s->disc_res, s->dest, s->egress_host, t, &mesh, &id) !=
            PX_RESOLVE_OK)
            return PX_RESOLVE_NOT_IN_REGISTRY;
        if (mesh)
            t->expected_id = id;
        else /* as the app sent it: no mTLS, its own protocol */
            t->proto = app_proto(s->lcfg);
    }
    if (t->expected_id != NULL && !mesh)
        return PX_RESOLVE_ID_NEEDS_MTLS; /* only a peer certificate can prove it: fail closed */
    if (px_conn_is_loop(s->conn, &t->addr))
        return PX_RESOLVE_LOOP;
    if (mesh) {
        struct px_tls_conf *conf = px_identity_client_tls(s->srv->identity);
        if (conf == NULL)
            return PX_RESOLVE_NO_CERT;
        t->tls = px_tls_conf_ref(conf); /* the try may wait in a queue across a rotation */
    }
    return PX_RESOLVE_OK;
}

enum px_resolve px_upstream_resolve_tcp(const struct px_conn *c, const struct px_endpoint *ep,
                                        struct px_upstream_target *t)
{
    px_upstream_target_release(t);
    t->host = NULL;
    if (ep != NULL)
        t->addr = ep->addr;
    else
        px_conn_default_upstream(c, &t->addr);
    t->proto = PX_TGT_TCP;
    t->expected_id = NULL;
    if (px_conn_is_loop(c, &t->addr))
        return PX_RESOLVE_LOOP;
    bool mesh = c->lcfg->tls == PX_TLS_MESH;
    if (ep != NULL) {
        /* a Service's endpoint (proxy/service.c): a meshed or routes-file one
         * must be exactly its identity; an unmeshed one gets the bytes as sent */
        if (ep->via == PX_EP_VIA_PLAIN || ep->via == PX_EP_VIA_PLAIN_H2C)
            mesh = false;
        else if (mesh)
            t->expected_id = ep->identity;
        else if (ep->via == PX_EP_VIA_LISTENER && ep->identity != NULL)
            return PX_RESOLVE_ID_NEEDS_MTLS; /* only a peer certificate can prove it */
    } else if (c->disc_done && c->srv->disc != NULL) {
        /* outside the mesh: TCP and the app's own TLS spliced as they are */
        const char *id;
        const char *sni = c->sni[0] != '\0' ? c->sni : NULL; /* the app's TLS names it */
        t->host = sni;
        if (disc_apply(c->srv->disc, c->disc_res, c->dest, sni, t, &mesh, &id) != PX_RESOLVE_OK)
            return PX_RESOLVE_NOT_IN_REGISTRY;
    }
    if (mesh) {
        /* opaque TCP between sidecars is wrapped in mTLS too (no ALPN: the
         * peer sidecar detects the protocol on the decrypted bytes) */
        struct px_tls_conf *conf = px_identity_tcp_client_tls(c->srv->identity);
        if (conf == NULL)
            return PX_RESOLVE_NO_CERT;
        t->tls = px_tls_conf_ref(conf);
    }
    return PX_RESOLVE_OK;
}

int px_resolve_status(enum px_resolve r)
{
    if (r == PX_RESOLVE_NOT_IN_REGISTRY)
        return 502;
    return r == PX_RESOLVE_LOOP ? 508 : 503;
}

const char *px_resolve_str(enum px_resolve r)
{
    switch (r) {
    case PX_RESOLVE_OK:
        return "ok";
    case PX_RESOLVE_LOOP:
        return px_cause_str(PX_CAUSE_LOOP);
    case PX_RESOLVE_ID_NEEDS_MTLS:
        return "the endpoint's identity can only be checked over mTLS "
               "(the listener's tls is not \"mesh\")";
    case PX_RESOLVE_NO_CERT:
        return "no workload certificate yet: mTLS not possible";
    case PX_RESOLVE_NOT_IN_REGISTRY:
        return "the destination is not in the mesh registry (outbound_policy registry_only)";
    }
    return "unknown";
}

const char *px_resolve_msg(enum px_resolve r, const struct px_upstream_target *t, char *buf,
                           size_t len)
{
    if (r != PX_RESOLVE_NOT_IN_REGISTRY)
        return px_resolve_str(r);
    char a[CM_ADDR_STRLEN];
    snprintf(buf, len, "destination %s is not in the mesh registry (outbound_policy registry_only)",
             t->host != NULL ? t->host : cm_addr_format(&t->addr, a, sizeof(a)));
    return buf;
}

void px_upstream_attach(struct px_stream *s)
{
    if (s->target.proto == PX_TGT_H2)
        px_h2_client_attach(s);
    else
        px_h1_client_attach(s);
}

bool px_upstream_has_free(struct px_upstream_ep *ep, const struct px_stream *s)
{
    if (s->target.proto == PX_TGT_H2)
        return px_h2_client_has_room(s);
    /* a resend after a stale keep-alive connection wants a fresh one */
    return !s->resending && px_h1_client_has_idle(&ep->addr);
}

void px_upstream_count_retry(enum px_retry_reason r)
{
    retries[r]++;
}

uint64_t px_upstream_retries(enum px_retry_reason r)
{
    return retries[r];
}

static unsigned bucket(uint64_t sec)
{
    unsigned i = (unsigned)(sec % BUDGET_SECS);
    if (B.sec[i] != sec) {
        B.sec[i] = sec;
        B.req[i] = B.resend[i] = 0;
    }
    return i;
}

void px_upstream_budget_request(uint64_t now_us)
{
    B.req[bucket(now_us / 1000000)]++;
}

bool px_upstream_budget_resend(uint64_t now_us)
{
    uint64_t sec = now_us / 1000000;
    unsigned cur = bucket(sec);
    uint64_t req = 0, resend = 0;
    for (unsigned i = 0; i < BUDGET_SECS; i++) {
        if (B.sec[i] + BUDGET_SECS <= sec)
            continue;
        req += B.req[i];
        resend += B.resend[i];
    }
    uint64_t allowed = req * BUDGET_PERCENT / 100;
    if (allowed < BUDGET_FLOOR)
        allowed = BUDGET_FLOOR;
    if (resend >= allowed)
        return false;
    B.resend[cur]++;
    return true;
}

void px_upstream_budget_reset(void)
{
    memset(&B, 0, sizeof(B));
}

void px_upstream_write_prometheus(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP remora_retries_by_reason_total Upstream retries by why the "
                             "request was sent again (part of remora_retries_total).\n"
                             "# TYPE remora_retries_by_reason_total counter\n");
    for (int i = 0; i < PX_RETRY_REASON_N; i++)
        evbuffer_add_printf(out, "remora_retries_by_reason_total{reason=\"%s\"} %llu\n",
                            reason_names[i], (unsigned long long)retries[i]);
}
