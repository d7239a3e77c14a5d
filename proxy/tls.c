/* The mbedTLS transport of px_io (see tls.h). */
#include "proxy/tls.h"

#include <errno.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "certs/pki.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/io_int.h"
#include "proxy/metrics.h"

#define ALPN_MAX          4
#define SESSION_CACHE_MAX 128
#define TLS_WRITE_CHUNK   16384
#define TLS_READ_AHEAD    (16384 + 2048) /* a full record and its overhead */

struct px_tls_conf {
    int refs;
    enum px_tls_role role;
    mbedtls_ssl_config conf;
    mbedtls_x509_crt own; /* our chain, leaf first (empty for the anon client) */
    mbedtls_pk_context key;
    mbedtls_x509_crt bundle; /* trust anchors */
    bool has_own;
    bool check_spiffe; /* peers must show a SPIFFE ID in trust_domain */
    bool no_verify;    /* px_tls_conf_new_unverified_client: the peer is not checked at all */
    char trust_domain[PKI_SPIFFE_MAX];
    const char *alpn[ALPN_MAX + 1];
    char alpn_store[ALPN_MAX][16];
};

/* Per-connection TLS state: io->xprt. */
struct tls_xprt {
    mbedtls_ssl_context ssl;
    struct px_tls_conf *conf;
    struct evbuffer *pre; /* raw bytes not yet given to mbedTLS: read before TLS started
                             (the ClientHello), then read ahead by bio_recv */
    size_t write_pending; /* length of a write mbedTLS asked us to repeat */
    bool resumed;
    bool established; /* tls_handshake finished and check_peer passed */
    char peer_id[PKI_SPIFFE_MAX];
    char alpn[16];
    char err[640];
    char *expected;
};

/* ChaCha20-Poly1305 first (the server's order decides): mbedTLS 2.28's GCM does
 * one GHASH multiplication and one AES block per 16 bytes, so sealing a 16 KiB
 * record costs 50 us with AES-128-GCM and 30 us with ChaCha20-Poly1305 here
 * (perf-micro). */
static const int ciphersuites[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                                   MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                                   MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                                   MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                                   MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                                   MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                                   0};
static const mbedtls_ecp_group_id curves[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1,
                                              MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};

/* Session tickets: one process-wide key set (mbedTLS rotates it itself), so
 * resumption survives certificate rotation. */
static mbedtls_ssl_ticket_context tickets;
static bool tickets_ready;
static struct tls_xprt *hs_current; /* the connection whose handshake step runs now */

struct cached_session {
    struct cm_addr addr;
    mbedtls_ssl_session sess;
    bool used;
    uint64_t stamp;
};
static struct cached_session cache[SESSION_CACHE_MAX];
static uint64_t cache_clock;

static void set_err(char *buf, size_t len, const char *what, int ret)
{
    char e[128];
    mbedtls_strerror(ret, e, sizeof(e));
    /* long messages are cut: they are for logs */
    if (snprintf(buf, len, "%s: %s (-0x%04x)", what, e, (unsigned)-ret) < 0)
        buf[0] = '\0';
}

/* ---- snapshots ---------------------------------------------------------------- */

static int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf, size_t len)
{
    int r = mbedtls_ssl_ticket_parse(p, session, buf, len);
    if (r == 0 && hs_current != NULL)
        hs_current->resumed = true;
    return r;
}

static int setup_tickets(char **errmsg)
{
    if (tickets_ready)
        return 0;
    mbedtls_ssl_ticket_init(&tickets);
    int r =
        mbedtls_ssl_ticket_setup(&tickets, pki_rng_fn, pki_rng(), MBEDTLS_CIPHER_AES_256_GCM, 3600);
    if (r != 0) {
        char e[128];
        mbedtls_strerror(r, e, sizeof(e));
        *errmsg = cm_xasprintf("session tickets: %s", e);
        mbedtls_ssl_ticket_free(&tickets);
        return CM_ERR_INVAL;
    }
    tickets_ready = true;
    return 0;
}

static struct px_tls_conf *conf_alloc(enum px_tls_role role)
{
    struct px_tls_conf *c = cm_xcalloc(1, sizeof(*c));
    c->refs = 1;
    c->role = role;
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_x509_crt_init(&c->own);
    mbedtls_pk_init(&c->key);
    mbedtls_x509_crt_init(&c->bundle);
    return c;
}

static int conf_defaults(struct px_tls_conf *c, char **errmsg)
{
    int r = mbedtls_ssl_config_defaults(
        &c->conf, c->role == PX_TLS_SERVER ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
        MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0) {
        *errmsg = cm_xasprintf("mbedtls_ssl_config_defaults failed (-0x%04x)", (unsigned)-r);
        return CM_ERR_INVAL;
    }
    mbedtls_ssl_conf_rng(&c->conf, pki_rng_fn, pki_rng());
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&c->conf, ciphersuites);
    mbedtls_ssl_conf_curves(&c->conf, curves);
    mbedtls_ssl_conf_renegotiation(&c->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&c->conf, &c->bundle, NULL);
    mbedtls_ssl_conf_session_tickets(&c->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    return 0;
}

int px_tls_conf_new(enum px_tls_role role, const char *chain_pem, const char *key_pem,
                    const char *bundle_pem, const char *trust_domain, const char *const *alpn,
                    struct px_tls_conf **out, char **errmsg)
{
    struct px_tls_conf *c = conf_alloc(role);
    int r;
    if (pki_bundle_parse(&c->own, (const unsigned char *)chain_pem, strlen(chain_pem), errmsg) !=
            0 ||
        pki_key_parse(&c->key, (const unsigned char *)key_pem, strlen(key_pem), errmsg) != 0 ||
        pki_bundle_parse(&c->bundle, (const unsigned char *)bundle_pem, strlen(bundle_pem),
                         errmsg) != 0 ||
        conf_defaults(c, errmsg) != 0)
        goto fail;
    if (mbedtls_pk_check_pair(&c->own.pk, &c->key) != 0) {
        /* a rotation caught half-way (new key, old certificate): refused,
         * the pair in force stays and the next change is tried again */
        *errmsg = cm_xstrdup("the key does not match the certificate");
        goto fail;
    }
    c->has_own = true;
    c->check_spiffe = trust_domain != NULL; /* NULL: a server named by DNS (discovery) */
    snprintf(c->trust_domain, sizeof(c->trust_domain), "%s", trust_domain ? trust_domain : "");
    if ((r = mbedtls_ssl_conf_own_cert(&c->conf, &c->own, &c->key)) != 0) {
        char e[160];
        set_err(e, sizeof(e), "certificate and key", r);
        *errmsg = cm_xstrdup(e);
        goto fail;
    }
    size_t n = 0;
    for (; alpn != NULL && alpn[n] != NULL && n < ALPN_MAX; n++) {
        snprintf(c->alpn_store[n], sizeof(c->alpn_store[n]), "%s", alpn[n]);
        c->alpn[n] = c->alpn_store[n];
    }
    c->alpn[n] = NULL;
    if (n > 0 && mbedtls_ssl_conf_alpn_protocols(&c->conf, c->alpn) != 0) {
        *errmsg = cm_xstrdup("bad ALPN list");
        goto fail;
    }
    if (role == PX_TLS_SERVER) {
        if (setup_tickets(errmsg) != 0)
            goto fail;
        mbedtls_ssl_conf_session_tickets_cb(&c->conf, mbedtls_ssl_ticket_write, ticket_parse,
                                            &tickets);
    }
    *out = c;
    return 0;
fail:
    px_tls_conf_unref(c);
    return CM_ERR_INVAL;
}

int px_tls_conf_new_anon_client(const char *bundle_pem, struct px_tls_conf **out, char **errmsg)
{
    struct px_tls_conf *c = conf_alloc(PX_TLS_CLIENT);
    if (pki_bundle_parse(&c->bundle, (const unsigned char *)bundle_pem, strlen(bundle_pem),
                         errmsg) != 0 ||
        conf_defaults(c, errmsg) != 0) {
        px_tls_conf_unref(c);
        return CM_ERR_INVAL;
    }
    *out = c;
    return 0;
}

int px_tls_conf_new_unverified_client(struct px_tls_conf **out, char **errmsg)
{
    struct px_tls_conf *c = conf_alloc(PX_TLS_CLIENT);
    if (conf_defaults(c, errmsg) != 0) {
        px_tls_conf_unref(c);
        return CM_ERR_INVAL;
    }
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_NONE);
    c->no_verify = true;
    *out = c;
    return 0;
}

struct px_tls_conf *px_tls_conf_ref(struct px_tls_conf *c)
{
    c->refs++;
    return c;
}

void px_tls_conf_unref(struct px_tls_conf *c)
{
    if (c == NULL || --c->refs > 0)
        return;
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_x509_crt_free(&c->own);
    mbedtls_pk_free(&c->key);
    mbedtls_x509_crt_free(&c->bundle);
    free(c);
}

/* ---- session cache (client) ------------------------------------------------------- */

static struct cached_session *cache_find(const struct cm_addr *a)
{
    for (size_t i = 0; i < SESSION_CACHE_MAX; i++)
        if (cache[i].used && cm_addr_equal(&cache[i].addr, a))
            return &cache[i];
    return NULL;
}

static void cache_store(const struct cm_addr *a, mbedtls_ssl_context *ssl)
{
    struct cached_session *e = cache_find(a);
    if (e == NULL) {
        e = &cache[0];
        for (size_t i = 0; i < SESSION_CACHE_MAX; i++) {
            if (!cache[i].used) {
                e = &cache[i];
                break;
            }
            if (cache[i].stamp < e->stamp)
                e = &cache[i];
        }
    }
    if (e->used)
        mbedtls_ssl_session_free(&e->sess);
    mbedtls_ssl_session_init(&e->sess);
    if (mbedtls_ssl_get_session(ssl, &e->sess) != 0) {
        mbedtls_ssl_session_free(&e->sess);
        e->used = false;
        return;
    }
    e->addr = *a;
    e->used = true;
    e->stamp = ++cache_clock;
}

void px_tls_session_cache_clear(void)
{
    for (size_t i = 0; i < SESSION_CACHE_MAX; i++) {
        if (cache[i].used)
            mbedtls_ssl_session_free(&cache[i].sess);
        cache[i].used = false;
    }
    if (tickets_ready) {
        mbedtls_ssl_ticket_free(&tickets);
        tickets_ready = false;
    }
}

/* ---- BIO: the non-blocking socket ----------------------------------------------------- */

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    struct px_io *io = ctx;
    ssize_t n = send(io->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    io->err = errno;
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET
                                                 : MBEDTLS_ERR_NET_SEND_FAILED;
}

/* mbedTLS asks for a record's 5-byte header, then for its body: two recv
 * calls per record, and a third that finds nothing. So one recv reads ahead
 * into x->pre (an evbuffer: it frees its chain once drained, so an idle
 * connection keeps nothing) and mbedTLS is served from there. perf at mesh
 * saturation: sidecar A made 1.56 recv calls per request, haproxy 1.12. */
static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    struct px_io *io = ctx;
    struct tls_xprt *x = io->xprt;
    if (x->pre != NULL && evbuffer_get_length(x->pre) > 0)
        return evbuffer_remove(x->pre, buf, len);
    ssize_t n;
    if (len >= TLS_READ_AHEAD) {
        n = recv(io->fd, buf, len, 0);
    } else {
        if (x->pre == NULL)
            x->pre = evbuffer_new();
        struct evbuffer_iovec v;
        if (x->pre == NULL || evbuffer_reserve_space(x->pre, TLS_READ_AHEAD, &v, 1) != 1)
            return MBEDTLS_ERR_SSL_ALLOC_FAILED;
        n = recv(io->fd, v.iov_base, v.iov_len < TLS_READ_AHEAD ? v.iov_len : TLS_READ_AHEAD, 0);
        v.iov_len = n > 0 ? (size_t)n : 0;
        evbuffer_commit_space(x->pre, &v, n > 0 ? 1 : 0);
        if (n > 0)
            return evbuffer_remove(x->pre, buf, len);
    }
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_READ;
    io->err = errno;
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
}

/* ---- ops ---------------------------------------------------------------------------------- */

static int again(int r)
{
    if (r == MBEDTLS_ERR_SSL_WANT_READ)
        return PX_IO_AGAIN_READ;
    if (r == MBEDTLS_ERR_SSL_WANT_WRITE)
        return PX_IO_AGAIN_WRITE;
    return 0;
}

/* After the handshake: who is the peer, and may it talk to us? */
static int check_peer(struct px_io *io, struct tls_xprt *x)
{
    const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&x->ssl);
    const char *alpn = mbedtls_ssl_get_alpn_protocol(&x->ssl);
    snprintf(x->alpn, sizeof(x->alpn), "%s", alpn ? alpn : "");
    if (x->conf->no_verify)
        return 0; /* the app's HTTPS probes: kubelet does not verify either */
    if (!x->conf->check_spiffe) {
        /* the CA client: the server must be the CA, not a workload of the
         * mesh (whose certificates chain to the same root) */
        char id[PKI_SPIFFE_MAX];
        char *e = NULL;
        if (peer == NULL) {
            snprintf(x->err, sizeof(x->err), "server presented no certificate");
            return -1;
        }
        if (peer->subject_alt_names.buf.p != NULL &&
            pki_crt_spiffe_id(peer, id, sizeof(id), &e) == 0) {
            snprintf(x->err, sizeof(x->err),
                     "server certificate is a workload's (%s), not the CA's: refusing to send "
                     "the token",
                     id);
            return -1;
        }
        free(e);
        return 0;
    }
    if (peer == NULL) {
        snprintf(x->err, sizeof(x->err), "peer presented no certificate");
        return -1;
    }
    char *e = NULL;
    if (pki_crt_spiffe_id(peer, x->peer_id, sizeof(x->peer_id), &e) != 0) {
        snprintf(x->err, sizeof(x->err), "peer certificate: %s", e ? e : "no SPIFFE ID");
        free(e);
        x->peer_id[0] = '\0';
        return -1;
    }
    char prefix[PKI_SPIFFE_MAX + 16];
    int pl = snprintf(prefix, sizeof(prefix), "spiffe://%s/", x->conf->trust_domain);
    if (pl < 0 || strncmp(x->peer_id, prefix, (size_t)pl) != 0) {
        snprintf(x->err, sizeof(x->err), "peer %s is not in trust domain %s", x->peer_id,
                 x->conf->trust_domain);
        return -1;
    }
    if (x->expected != NULL && strcmp(x->expected, x->peer_id) != 0) {
        snprintf(x->err, sizeof(x->err), "peer is %s, expected %s", x->peer_id, x->expected);
        return -1;
    }
    (void)io;
    return 0;
}

static int tls_handshake(struct px_io *io)
{
    struct tls_xprt *x = io->xprt;
    hs_current = x;
    int r = mbedtls_ssl_handshake(&x->ssl);
    hs_current = NULL;
    int a = again(r);
    if (a != 0)
        return a;
    if (r != 0) {
        set_err(x->err, sizeof(x->err), "TLS handshake", r);
        uint32_t flags = mbedtls_ssl_get_verify_result(&x->ssl);
        if (r == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags != 0 && flags != (uint32_t)-1) {
            /* say why: "the certificate Common Name (CN) does not match..." */
            char why[256];
            size_t n = strlen(x->err);
            if (mbedtls_x509_crt_verify_info(why, sizeof(why), "", flags) > 0) {
                for (char *c = why; *c; c++)
                    if (*c == '\n')
                        *c = *(c + 1) ? ';' : '\0';
                snprintf(x->err + n, sizeof(x->err) - n, ": %s", why);
            }
        }
        px_metrics.tls_handshake_failures++;
        return PX_IO_FAILED;
    }
    if (check_peer(io, x) != 0) {
        px_metrics.tls_handshake_failures++;
        return PX_IO_FAILED;
    }
    x->established = true;
    if (x->conf->role == PX_TLS_CLIENT && io->has_addr && !x->conf->no_verify)
        cache_store(&io->addr, &x->ssl);
    px_metrics.tls_handshakes++;
    if (x->resumed)
        px_metrics.tls_handshakes_resumed++;
    return 0;
}

static ssize_t tls_read(struct px_io *io, struct evbuffer *in, size_t max)
{
    struct tls_xprt *x = io->xprt;
    /* mbedtls_ssl_read would run the handshake itself, without check_peer */
    if (!x->established) {
        snprintf(x->err, sizeof(x->err), "TLS read before the handshake finished");
        errno = EPROTO;
        return PX_IO_FAILED;
    }
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(in, (ev_ssize_t)max, &v, 1) != 1)
        return PX_IO_FAILED;
    size_t cap = v.iov_len < max ? v.iov_len : max;
    int r;
    /* a record that carried no application data (an alert, a ticket) ends in
     * WANT_READ: records read ahead behind it would wait for a socket event
     * that never comes. Each turn consumes a record, so this ends. */
    do
        r = mbedtls_ssl_read(&x->ssl, v.iov_base, cap);
    while (r == MBEDTLS_ERR_SSL_WANT_READ && x->pre != NULL && evbuffer_get_length(x->pre) > 0);
    if (r <= 0) {
        evbuffer_commit_space(in, &v, 0);
        if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
            return 0;
        int a = again(r);
        if (a != 0)
            return a;
        set_err(x->err, sizeof(x->err), "TLS read", r);
        errno = io->err ? io->err : EPROTO;
        return PX_IO_FAILED;
    }
    v.iov_len = (size_t)r;
    evbuffer_commit_space(in, &v, 1);
    return r;
}

static ssize_t tls_write(struct px_io *io, struct evbuffer *out)
{
    struct tls_xprt *x = io->xprt;
    ssize_t total = 0;
    if (!x->established) {
        snprintf(x->err, sizeof(x->err), "TLS write before the handshake finished");
        errno = EPROTO;
        return PX_IO_FAILED;
    }
    while (evbuffer_get_length(out) > 0) {
        size_t n = x->write_pending;
        if (n == 0) {
            n = evbuffer_get_length(out);
            if (n > TLS_WRITE_CHUNK)
                n = TLS_WRITE_CHUNK;
        }
        unsigned char *p = evbuffer_pullup(out, (ev_ssize_t)n);
        int r = mbedtls_ssl_write(&x->ssl, p, n);
        if (r < 0) {
            int a = again(r);
            if (a != 0) {
                x->write_pending = n; /* mbedTLS wants the same call again */
                return total > 0 ? total : a;
            }
            set_err(x->err, sizeof(x->err), "TLS write", r);
            errno = io->err ? io->err : EPIPE;
            return PX_IO_FAILED;
        }
        x->write_pending = 0;
        evbuffer_drain(out, (size_t)r);
        total += r;
    }
    return total;
}

/* Decrypted bytes inside mbedTLS, or records read ahead: no socket event
 * will announce either. (A partial record read ahead is handed to mbedTLS by
 * the next read, which then waits for the socket.) */
static size_t tls_pending(struct px_io *io)
{
    struct tls_xprt *x = io->xprt;
    if (!x->established)
        return 0; /* the ClientHello waiting in x->pre is the handshake's */
    return mbedtls_ssl_get_bytes_avail(&x->ssl) +
           (x->pre != NULL ? evbuffer_get_length(x->pre) : 0);
}

static void tls_shutdown(struct px_io *io)
{
    struct tls_xprt *x = io->xprt;
    mbedtls_ssl_close_notify(&x->ssl); /* best effort: non-blocking */
    shutdown(io->fd, SHUT_WR);
}

static void tls_free(struct px_io *io)
{
    struct tls_xprt *x = io->xprt;
    if (x == NULL)
        return;
    mbedtls_ssl_free(&x->ssl);
    px_tls_conf_unref(x->conf);
    if (x->pre != NULL)
        evbuffer_free(x->pre);
    free(x->expected);
    free(x);
    io->xprt = NULL;
}

static const struct px_io_ops tls_ops = {
    .handshake = tls_handshake,
    .read = tls_read,
    .write = tls_write,
    .pending = tls_pending,
    .shutdown = tls_shutdown,
    .free = tls_free,
};

int px_io_start_tls(struct px_io *io, struct px_tls_conf *conf, const char *expected_id)
{
    struct tls_xprt *x = cm_xcalloc(1, sizeof(*x));
    mbedtls_ssl_init(&x->ssl);
    int r = mbedtls_ssl_setup(&x->ssl, &conf->conf);
    if (r != 0) {
        mbedtls_ssl_free(&x->ssl);
        free(x);
        return CM_ERR_INVAL;
    }
    x->conf = px_tls_conf_ref(conf);
    if (!conf->check_spiffe && expected_id != NULL) {
        /* the CA client: expected_id is the CA's DNS name, checked by mbedTLS */
        if (mbedtls_ssl_set_hostname(&x->ssl, expected_id) != 0) {
            mbedtls_ssl_free(&x->ssl);
            free(x);
            return CM_ERR_INVAL;
        }
    } else {
        x->expected = expected_id ? cm_xstrdup(expected_id) : NULL;
    }
    mbedtls_ssl_set_bio(&x->ssl, io, bio_send, bio_recv, NULL);
    io->xprt = x;
    io->ops = &tls_ops;
    if (conf->role == PX_TLS_CLIENT && io->has_addr && !conf->no_verify) {
        struct cached_session *e = cache_find(&io->addr);
        if (e != NULL)
            mbedtls_ssl_set_session(&x->ssl, &e->sess);
    }
    if (conf->role == PX_TLS_SERVER && evbuffer_get_length(io->in) > 0) {
        x->pre = evbuffer_new();
        evbuffer_add_buffer(x->pre, io->in);
    }
    if (!io->connecting) {
        /* start from the event loop, not from the caller's callback */
        io->handshaking = true;
        io->hs_want_write = false;
        event_active(io->rev, EV_READ, 0);
    }
    return 0;
}

static struct tls_xprt *xprt_of(const struct px_io *io)
{
    return io->ops == &tls_ops ? io->xprt : NULL;
}

const char *px_io_peer_id(const struct px_io *io)
{
    struct tls_xprt *x = xprt_of(io);
    return x ? x->peer_id : "";
}

const char *px_io_alpn(const struct px_io *io)
{
    struct tls_xprt *x = xprt_of(io);
    return x ? x->alpn : "";
}

bool px_io_tls_resumed(const struct px_io *io)
{
    struct tls_xprt *x = xprt_of(io);
    return x ? x->resumed : false;
}

const char *px_io_tls_error(const struct px_io *io)
{
    struct tls_xprt *x = xprt_of(io);
    return x ? x->err : "";
}

bool px_io_is_tls(const struct px_io *io)
{
    return xprt_of(io) != NULL;
}
