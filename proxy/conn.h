/* A downstream (client) connection accepted by a listener (proxy/conn.c):
 * its protocol is detected from the first bytes (after mTLS on mesh
 * listeners) and it is handed to a codec (h1 server, h2 server) or to the TCP
 * tunnel, which then own its px_io. */
#ifndef PX_CONN_H
#define PX_CONN_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/list.h"
#include "common/net.h"
#include "proxy/config.h"
#include "proxy/io.h"
#include "proxy/sni.h"

struct px_listener;
struct px_server;
struct px_disc_wait;
struct px_name_wait;
struct px_dest_answer;

enum px_conn_proto {
    PX_PROTO_UNKNOWN = 0, /* still detecting */
    PX_PROTO_HTTP1,       /* HTTP/1.x request line seen */
    PX_PROTO_H2,          /* HTTP/2 connection preface seen (h2c prior knowledge) */
    PX_PROTO_TLS,         /* TLS ClientHello: mTLS on mesh listeners, else passed through */
    PX_PROTO_TCP          /* anything else: opaque TCP */
};

struct px_conn {
    struct px_server *srv;              /* the process context (set by the listener) */
    struct px_listener *listener;       /* borrowed; outlives its connections */
    const struct px_listener_cfg *lcfg; /* borrowed from the config snapshot */
    struct px_io *io;                   /* the socket; owned by the current handler */
    int fd;
    struct cm_addr peer, local;
    struct cm_addr orig_dst; /* SO_ORIGINAL_DST, else the local address */
    bool has_orig_dst;
    enum px_conn_proto proto;
    struct event *detect_timer;
    void *handler;     /* the codec's connection object */
    bool opaque;       /* original destination port in opaque_ports: no detection */
    bool detect_bytes; /* detection saw a first byte (the detect timer runs from it) */
    bool mtls;         /* terminated mTLS: peer_id is verified */
    char peer_id[256]; /* the peer's SPIFFE ID ("" without mTLS) */
    uint64_t accepted_us;
    uint64_t id;
    struct cm_list link; /* in the server's connection list */

    /* the listener's mTLS mode for this original destination port
     * (proxy/inbound_tls.h: a strict listener's permissive_ports) */
    enum px_tls_mode tls;
    /* service discovery (proxy/discovery.h), outbound with a "discovery" block:
     * the default upstream looked up at accept; dispatch waits for the answer */
    struct px_disc_wait *disc_wait; /* the lookup in flight, or NULL */
    bool disc_done;                 /* disc_res (and dest) hold the result */
    int disc_res;                   /* enum px_disc_result */
    struct px_dest_answer *dest;    /* FOUND: the answer (one reference), else NULL */
    bool disc_deferred;             /* detection finished while the lookup was in flight */
    enum px_conn_proto disc_proto;  /* ... with this protocol */
    /* outbound TLS outside the mesh (registry_only): the ClientHello's SNI
     * (proxy/sni.h), read before the connection is passed through; "" none */
    char sni[PX_SNI_NAME_BUF];
    /* ... let out only because the SNI matched a name entry: the destination
     * must be an address of that name (proxy/resolve.h); dispatch waits */
    struct px_name_wait *name_wait; /* the check in flight, or NULL */
    bool name_checked;              /* the check passed */
};

/* Take an accepted socket (fd, peer sa/salen) from listener l: record it,
 * count it, then detect its protocol (or start mTLS, or tunnel a declared
 * opaque port at once) and hand it to a handler. The caller has already
 * checked max_connections and draining. */
void px_conn_accept(struct px_listener *l, int fd, const struct sockaddr *sa, socklen_t salen);

/* Free the connection record once its handler is done with it (the handler
 * frees c->io first, or hands it over). Updates counters. */
void px_conn_free(struct px_conn *c);

/* Where requests on this connection go by default: the listener's fixed
 * upstream, else the original destination (outbound) or 127.0.0.1:<original
 * port> (inbound). */
void px_conn_default_upstream(const struct px_conn *c, struct cm_addr *out);

/* Does `a` point back at one of our own listeners (a capture loop)? */
bool px_conn_is_loop(const struct px_conn *c, const struct cm_addr *a);

#endif
