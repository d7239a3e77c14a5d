/* Downstream connections (proxy/conn.h): the record each accepted socket
 * gets, its original destination, protocol detection on the first bytes,
 * mTLS termination on mesh listeners, and the hand-over to a codec (h1
 * server, h2 server) or the TCP tunnel. */
#include "proxy/conn.h"

#include <event2/buffer.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/detect.h"
#include "proxy/discovery.h"
#include "proxy/h1.h"
#include "proxy/h2.h"
#include "proxy/identity.h"
#include "proxy/inbound_tls.h"
#include "proxy/listener.h"
#include "proxy/metrics.h"
#include "proxy/resolve.h"
#include "proxy/server.h"
#include "proxy/sni.h"
#include "proxy/tcp.h"
#include "proxy/tls.h"

/* The destination the client meant before iptables redirected it; false
 * when the connection was not redirected. */
static bool original_dst(int fd, int family, struct cm_addr *out)
{
    memset(out, 0, sizeof(*out));
    out->len = sizeof(out->ss);
    if (family == AF_INET6)
        return getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &out->ss, &out->len) == 0;
    return getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &out->ss, &out->len) == 0;
}

void px_conn_free(struct px_conn *c)
{
    if (c->detect_timer != NULL)
        event_free(c->detect_timer);
    px_disc_cancel(c->disc_wait);
    px_name_cancel(c->name_wait);
    px_dest_answer_unref(c->dest);
    cm_list_remove(&c->link);
    c->srv->nconns--;
    px_metrics.downstream_cx_active--;
    free(c);
}

void px_conn_default_upstream(const struct px_conn *c, struct cm_addr *out)
{
    if (c->lcfg->has_upstream) {
        *out = c->lcfg->upstream;
        return;
    }
    if (c->lcfg->direction == PX_DIR_OUTBOUND) {
        *out = c->orig_dst;
        return;
    }
    cm_addr_loopback(out, &c->orig_dst, cm_addr_port(&c->orig_dst));
}

static bool same_host(const struct cm_addr *a, const struct cm_addr *b)
{
    struct cm_addr x = *a;
    cm_addr_set_port(&x, cm_addr_port(b));
    return cm_addr_equal(&x, b);
}

bool px_conn_is_loop(const struct px_conn *c, const struct cm_addr *a)
{
    const struct px_server *srv = c->srv;
    for (size_t i = 0; i < srv->nlisteners; i++) {
        const struct cm_addr *b = &srv->listeners[i]->bound;
        if (cm_addr_equal(a, b))
            return true;
        if (cm_addr_port(a) == cm_addr_port(b) && cm_addr_is_any(b) &&
            (cm_addr_is_loopback(a) || same_host(a, &c->local)))
            return true;
    }
    return false;
}

static void start_mtls(struct px_conn *c);
static void detect_silence(struct px_conn *c);
static void dispatch(struct px_conn *c, enum px_conn_proto proto);
static void abort_conn(struct px_conn *c);

/* The client closed or failed while its destination was being looked up. */
static void on_deferred_event(struct px_io *io, int what, void *arg)
{
    (void)io;
    if (what & (PX_IO_EOF | PX_IO_ERROR)) {
        struct px_conn *c = arg;
        px_disc_cancel(c->disc_wait);
        c->disc_wait = NULL;
        px_name_cancel(c->name_wait);
        c->name_wait = NULL;
        abort_conn(c);
    }
}

/* Discovery says the destination speaks opaque TCP (its Service port's
 * protocol "tcp"): no detection, so a server-first protocol gets the app's
 * greeting at once. */
static bool dest_is_tcp(const struct px_conn *c)
{
    return c->disc_done && c->dest != NULL && strcmp(c->dest->protocol, "tcp") == 0;
}

static void on_dest(enum px_disc_result res, struct px_dest_answer *ans, void *arg)
{
    struct px_conn *c = arg;
    c->disc_wait = NULL;
    c->disc_done = true;
    c->disc_res = (int)res;
    c->dest = ans != NULL ? px_dest_answer_ref(ans) : NULL;
    if (c->disc_deferred)
        dispatch(c, c->disc_proto);
    else if (dest_is_tcp(c))
        dispatch(c, PX_PROTO_TCP); /* still detecting: stop, the bytes read so far go first */
}

/* Free a connection that never reached a handler, from the event loop. */
static void abort_conn(struct px_conn *c)
{
    px_io_read_enable(c->io, false);
    event_active(c->detect_timer, EV_TIMEOUT, 0);
}

/* Wait for a lookup (the destination's, or the SNI's against DNS): the
 * handler starts with the answer; bytes wait in the input buffer. */
static void defer(struct px_conn *c, enum px_conn_proto proto)
{
    c->disc_deferred = true;
    c->disc_proto = proto;
    px_io_set_timeout(c->io, 0);
    px_io_setcb(c->io, NULL, NULL, on_deferred_event, c);
}

static bool want_sni(const struct px_conn *c);

/* The SNI's check against DNS is done (proxy/resolve.h). */
static void on_sni_name(enum px_name_verdict v, void *arg)
{
    struct px_conn *c = arg;
    c->name_wait = NULL;
    if (v != PX_NAME_MATCH) {
        char name[PX_SNI_NAME_BUF];
        struct cm_addr dst;
        px_conn_default_upstream(c, &dst);
        if (px_disc_egress_by_name(c->srv->disc, (enum px_disc_result)c->disc_res, c->dest, &dst,
                                   c->sni, name, sizeof(name)))
            px_disc_egress_refuse_name(c->srv->disc, &dst, name, px_name_verdict_str(v));
        abort_conn(c); /* closed before a byte is forwarded */
        return;
    }
    c->name_checked = true;
    dispatch(c, c->disc_proto);
}

/* Outbound TLS let out only because its SNI matched a name entry of
 * egress_allow: is the destination an address of that name? False when the
 * connection may go on now; true when it waits (on_sni_name) or was refused. */
static bool sni_name_check(struct px_conn *c, enum px_conn_proto proto)
{
    if (proto != PX_PROTO_TLS || c->name_checked || !want_sni(c) || !c->disc_done ||
        c->sni[0] == '\0')
        return false;
    char name[PX_SNI_NAME_BUF];
    struct cm_addr dst;
    px_conn_default_upstream(c, &dst);
    if (!px_disc_egress_by_name(c->srv->disc, (enum px_disc_result)c->disc_res, c->dest, &dst,
                                c->sni, name, sizeof(name)))
        return false;
    enum px_name_verdict v = PX_NAME_BUSY; /* no resolver (its thread failed): fail closed */
    if (c->srv->resolver != NULL)
        v = px_resolver_check(c->srv->resolver, name, &dst, on_sni_name, c, &c->name_wait);
    if (c->name_wait != NULL) {
        defer(c, proto);
        return true;
    }
    if (v == PX_NAME_MATCH) {
        c->name_checked = true;
        return false;
    }
    px_disc_egress_refuse_name(c->srv->disc, &dst, name, px_name_verdict_str(v));
    abort_conn(c);
    return true;
}

static void dispatch(struct px_conn *c, enum px_conn_proto proto)
{
    if (c->disc_wait != NULL) {
        /* the destination is still being looked up (at most lookup_timeout_ms) */
        defer(c, proto);
        return;
    }
    if (sni_name_check(c, proto))
        return;
    c->proto = proto;
    px_io_set_timeout(c->io, 0);
    char peer[CM_ADDR_STRLEN];
    cm_debug("conn %llu from %s on %s: %s%s", (unsigned long long)c->id,
             cm_addr_format(&c->peer, peer, sizeof(peer)), c->lcfg->name, c->mtls ? "mtls+" : "",
             px_proto_name(proto));
    bool mtls_listener = c->tls == PX_TLS_STRICT || c->tls == PX_TLS_PERMISSIVE;
    if (proto == PX_PROTO_TLS && mtls_listener && !c->mtls) {
        px_metrics.proto_tls++;
        start_mtls(c);
        return;
    }
    if (c->tls == PX_TLS_STRICT && !c->mtls) {
        /* strict: plaintext never reaches the app */
        px_metrics.tls_plaintext_refused++;
        cm_debug("listener %s: refusing plaintext %s from %s (strict mTLS)", c->lcfg->name,
                 px_proto_name(proto), peer);
        abort_conn(c);
        return;
    }
    if (c->tls == PX_TLS_PERMISSIVE && !c->mtls)
        px_inbound_plaintext_count(c->listener, cm_addr_port(&c->orig_dst));
    if (c->lcfg->downstream_h2)
        proto = PX_PROTO_H2; /* no detection: a wrong preface gets GOAWAY from the h2 code */
    switch (proto) {
    case PX_PROTO_HTTP1:
        px_metrics.proto_http1++;
        px_h1_server_start(c);
        break;
    case PX_PROTO_H2:
        px_metrics.proto_h2++;
        px_h2_server_start(c);
        break;
    case PX_PROTO_TLS:
        px_metrics.proto_tls++;
        px_tcp_start(c); /* the app's own TLS (or TLS inside mTLS): passthrough */
        break;
    default:
        px_metrics.proto_tcp++;
        px_tcp_start(c);
        break;
    }
}

/* Handshake done: the verified peer is known; ALPN "h2" goes straight to
 * HTTP/2, anything else is detected again on the decrypted bytes. */
static void on_tls_event(struct px_io *io, int what, void *arg)
{
    struct px_conn *c = arg;
    if (what & PX_IO_HANDSHAKE) {
        c->mtls = true;
        snprintf(c->peer_id, sizeof(c->peer_id), "%s", px_io_peer_id(io));
        if (strcmp(px_io_alpn(io), "h2") == 0) {
            dispatch(c, PX_PROTO_H2);
            return;
        }
        if (c->opaque) { /* a declared opaque port: the TCP policy, now */
            dispatch(c, PX_PROTO_TCP);
            return;
        }
        /* detect again on the decrypted bytes: the first one within the header
         * timeout (nothing goes to the app before it) */
        c->detect_bytes = false;
        px_io_set_timeout(io, c->srv->cfg->limits.header_timeout_ms);
        return;
    }
    if (what & PX_IO_TIMEOUT) {
        if (c->mtls && evbuffer_get_length(px_io_input(io)) > 0) {
            /* a few bytes, then silence: opaque TCP inside mTLS (policy-checked) */
            dispatch(c, PX_PROTO_TCP);
            return;
        }
        if (c->mtls)
            detect_silence(c);
        else
            cm_debug("conn %llu: TLS handshake timed out", (unsigned long long)c->id);
    } else if ((what & PX_IO_EOF) && c->mtls && evbuffer_get_length(px_io_input(io)) > 0) {
        dispatch(c, PX_PROTO_TCP);
        return;
    } else if (what & PX_IO_ERROR) {
        char peer[CM_ADDR_STRLEN], key[48];
        /* a scanner can fail handshakes at will: counted in the metrics,
         * written a few times a second per listener (common/log.h) */
        snprintf(key, sizeof(key), "listener %s: mTLS refused", c->lcfg->name);
        cm_log_limited(CM_LOG_WARN, key, "listener %s: mTLS from %s refused: %s", c->lcfg->name,
                       cm_addr_format(&c->peer, peer, sizeof(peer)),
                       px_io_tls_error(io)[0] ? px_io_tls_error(io) : strerror(px_io_errno(io)));
    }
    abort_conn(c);
}

static void on_detect_read(struct px_io *io, void *arg);

/* Nothing said within the header timeout on a port that is not declared
 * opaque: closed, and nothing was ever opened toward the app. */
static void detect_silence(struct px_conn *c)
{
    char peer[CM_ADDR_STRLEN];
    px_metrics.detect_silent++;
    cm_debug("conn %llu from %s on %s: no bytes within %u ms: closed (server-first protocols "
             "need their port in opaque_ports)",
             (unsigned long long)c->id, cm_addr_format(&c->peer, peer, sizeof(peer)), c->lcfg->name,
             (unsigned)c->srv->cfg->limits.header_timeout_ms);
}

static void start_mtls(struct px_conn *c)
{
    struct px_tls_conf *conf = px_identity_server_tls(c->srv->identity);
    if (conf == NULL) {
        cm_warn("listener %s: mTLS connection refused: no workload certificate yet", c->lcfg->name);
        abort_conn(c);
        return;
    }
    px_io_setcb(c->io, on_detect_read, NULL, on_tls_event, c);
    px_io_set_timeout(c->io, c->srv->cfg->limits.header_timeout_ms);
    if (px_io_start_tls(c->io, conf, NULL) != 0)
        abort_conn(c);
}

/* Outbound TLS under registry_only: egress_allow names match the SNI, so the
 * ClientHello is read before the connection is passed through. */
static bool want_sni(const struct px_conn *c)
{
    return c->srv->disc != NULL && c->lcfg->direction == PX_DIR_OUTBOUND && !c->mtls &&
           c->srv->cfg->discovery != NULL &&
           c->srv->cfg->discovery->policy == PX_OUTBOUND_REGISTRY_ONLY;
}

/* Read the SNI from the bytes so far: false while the first record is not
 * all in (at most PX_SNI_MAX_BYTES, and never past what the connection may
 * buffer; a silence then is decided by the detect timeout, as TCP). */
static bool read_sni(struct px_conn *c)
{
    struct evbuffer *in = px_io_input(c->io);
    size_t len = evbuffer_get_length(in), cap = PX_SNI_MAX_BYTES;
    if (c->srv->cfg->limits.buffer_bytes < cap)
        cap = c->srv->cfg->limits.buffer_bytes;
    size_t n = len < cap ? len : cap;
    uint8_t head[5];
    if (evbuffer_copyout(in, head, sizeof(head)) == (ev_ssize_t)sizeof(head) && head[0] == 22) {
        /* wait for the whole first record before making the bytes contiguous
         * (a client trickling its hello costs no copy per read) */
        size_t need = 5 + ((size_t)head[3] << 8 | head[4]);
        if (n < need && n < cap)
            return false;
    }
    const uint8_t *b = evbuffer_pullup(in, (ev_ssize_t)n);
    enum px_sni_result r = px_sni_parse(b != NULL ? b : (const uint8_t *)"", b ? n : 0, c->sni);
    if (r == PX_SNI_MORE && n < cap)
        return false;
    cm_debug("conn %llu: TLS to %s%s", (unsigned long long)c->id,
             c->sni[0] ? "SNI " : "no usable SNI", c->sni);
    return true;
}

static void on_detect_read(struct px_io *io, void *arg)
{
    struct px_conn *c = arg;
    uint8_t buf[PX_DETECT_MAX];
    ev_ssize_t n = evbuffer_copyout(px_io_input(io), buf, sizeof(buf));
    if (n < 0)
        n = 0;
    enum px_conn_proto p = px_detect(buf, (size_t)n);
    if (p == PX_PROTO_TLS && want_sni(c) && !read_sni(c)) {
        if (!c->detect_bytes) { /* the rest of the ClientHello within detect_timeout_ms */
            c->detect_bytes = true;
            px_io_set_timeout(io, c->srv->cfg->limits.detect_timeout_ms);
        }
        return;
    }
    if (p != PX_PROTO_UNKNOWN) {
        dispatch(c, p);
        return;
    }
    if (n > 0 && !c->detect_bytes) {
        /* a first byte: it is decided (as TCP under the policy at worst) within
         * detect_timeout_ms from now, and the header timeout no longer applies */
        c->detect_bytes = true;
        px_io_set_timeout(io, c->srv->cfg->limits.detect_timeout_ms);
    }
}

static void on_detect_event(struct px_io *io, int what, void *arg)
{
    struct px_conn *c = arg;
    bool some = evbuffer_get_length(px_io_input(io)) > 0;
    /* A few bytes then silence or EOF, or a declared opaque port that stays
     * silent (permissive mTLS listeners wait to see whether TLS comes): opaque
     * TCP, which the policy decides before anything is forwarded. */
    bool silence_is_tcp = some || c->opaque || c->lcfg->direction == PX_DIR_OUTBOUND;
    if (((what & PX_IO_TIMEOUT) && silence_is_tcp) || ((what & PX_IO_EOF) && some)) {
        dispatch(c, PX_PROTO_TCP);
        return;
    }
    if (what & PX_IO_TIMEOUT)
        detect_silence(c);
    /* Nothing said before EOF, or an error: freed from the detect event, not
     * inside this callback. */
    (void)io;
    abort_conn(c);
}

/* Frees a connection that never reached a handler. */
static void on_detect_abort(evutil_socket_t fd, short what, void *arg)
{
    struct px_conn *c = arg;
    (void)fd;
    (void)what;
    px_io_free(c->io);
    c->io = NULL;
    px_conn_free(c);
}

void px_conn_accept(struct px_listener *l, int fd, const struct sockaddr *sa, socklen_t salen)
{
    struct px_server *srv = l->srv;
    const struct px_limits *lim = &srv->cfg->limits;
    struct px_conn *c = cm_xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->listener = l;
    c->lcfg = l->cfg;
    c->fd = fd;
    c->id = ++srv->next_conn_id;
    c->accepted_us = cm_mono_us();
    cm_addr_from_sockaddr(&c->peer, sa, salen);
    cm_net_local_addr(fd, &c->local);
    c->has_orig_dst = original_dst(fd, c->local.ss.ss_family, &c->orig_dst);
    if (!c->has_orig_dst)
        c->orig_dst = c->local;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    cm_list_insert_tail(&srv->conns, &c->link);
    srv->nconns++;
    px_metrics.downstream_cx_total++;
    px_metrics.downstream_cx_active++;

    c->opaque = px_config_opaque_port(srv->cfg, cm_addr_port(&c->orig_dst));
    c->tls = px_inbound_tls_mode(c->lcfg, cm_addr_port(&c->orig_dst));

    c->io = px_io_new(srv->base, fd);
    c->detect_timer = event_new(srv->base, -1, 0, on_detect_abort, c);
    px_io_set_read_limit(c->io, lim->buffer_bytes);
    px_io_setcb(c->io, on_detect_read, NULL, on_detect_event, c);
    if (srv->disc != NULL && c->lcfg->direction == PX_DIR_OUTBOUND) {
        /* where this connection goes, asked while its protocol is detected */
        struct cm_addr dst;
        px_conn_default_upstream(c, &dst);
        enum px_disc_result r =
            px_disc_lookup(srv->disc, &dst, NULL, &c->dest, on_dest, c, &c->disc_wait);
        c->disc_done = c->disc_wait == NULL;
        c->disc_res = (int)r;
    }
    if (c->opaque && c->tls == PX_TLS_STRICT) {
        start_mtls(c); /* the peer sidecar speaks first: a ClientHello */
        return;
    }
    if ((c->opaque || dest_is_tcp(c)) && c->tls != PX_TLS_PERMISSIVE) {
        /* server-first protocols (MySQL's greeting) need the app at once */
        dispatch(c, PX_PROTO_TCP);
        return;
    }
    /* Inbound, nothing is opened toward the app before the client's first
     * byte, and a client that says nothing is closed at the header timeout.
     * Outbound, the pod's own app is the client and no policy is at stake:
     * silence for detect_timeout_ms is a server-first protocol (a MySQL or
     * SMTP server outside the pod greets first), forwarded as opaque TCP. */
    bool wait_short = c->opaque || c->lcfg->direction == PX_DIR_OUTBOUND;
    px_io_set_timeout(c->io, wait_short ? lim->detect_timeout_ms : lim->header_timeout_ms);
}
