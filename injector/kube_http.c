/* The Kubernetes API client's transport (kube.h): blocking HTTPS/1.1 on
 * mbedTLS with a deadline per request, and a streamed watch whose deadline
 * is an idle one. */
#include <arpa/inet.h>
#include <errno.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/watch.h"
#include "common/xalloc.h"
#include "injector/config.h"
#include "injector/kube_int.h"

/* ---- the client ------------------------------------------------------------------------ */

struct ij_kube {
    pthread_mutex_t mu; /* guards token, token_stamp, session, have_session */
    char *token_file;
    struct cm_watch_stamp token_stamp; /* of the token in force (common/watch.h) */
    char agent[64];
    struct ij_kube_url url;
    char endpoint[300]; /* host:port, for messages */
    char host_hdr[300]; /* the Host header: the port only when not 443 */
    char *token;        /* without trailing white space */
    char *ca_file;
    int timeout_ms;
    mbedtls_x509_crt ca;
    mbedtls_ssl_config conf;
    /* The last full handshake's session: the next connection resumes it (a
     * ticket or a session ID; no key exchange, no certificate chain). */
    mbedtls_ssl_session session;
    bool have_session;
};

/* One connection's socket and deadline; the mbedTLS I/O callbacks wait on
 * it with poll() and give up at the deadline. */
struct conn {
    int fd;
    uint64_t deadline_ms;    /* cm_mono_ms() */
    bool timed_out;          /* the last failure was the deadline */
    int sys_errno;           /* the last failure's errno, or 0 */
    int idle_ms;             /* > 0 (a watch): every read moves the deadline this far on */
    const atomic_bool *stop; /* a watch: true ends the wait (looked at every STOP_SLICE_MS) */
    bool stopped;            /* the last failure was *stop */
};

#define STOP_SLICE_MS 200

/* Wait until fd is ready for `events` or the deadline passes. */
static int conn_wait(struct conn *c, short events)
{
    for (;;) {
        uint64_t now = cm_mono_ms();
        if (c->stop != NULL && atomic_load(c->stop)) {
            c->stopped = true;
            return -1;
        }
        if (now >= c->deadline_ms) {
            c->timed_out = true;
            return -1;
        }
        uint64_t wait = c->deadline_ms - now;
        if (c->stop != NULL && wait > STOP_SLICE_MS)
            wait = STOP_SLICE_MS;
        struct pollfd pfd = {.fd = c->fd, .events = events};
        int n = poll(&pfd, 1, (int)wait);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR) {
            c->sys_errno = errno;
            return -1;
        }
    }
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    struct conn *c = ctx;
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return (int)n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            c->sys_errno = errno;
            return MBEDTLS_ERR_NET_SEND_FAILED;
        }
        if (conn_wait(c, POLLOUT) != 0)
            return MBEDTLS_ERR_NET_SEND_FAILED;
    }
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    struct conn *c = ctx;
    for (;;) {
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n > 0 && c->idle_ms > 0)
            c->deadline_ms = cm_mono_ms() + (uint64_t)c->idle_ms;
        if (n >= 0)
            return (int)n; /* 0: EOF */
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            c->sys_errno = errno;
            return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
        }
        if (conn_wait(c, POLLIN) != 0)
            return MBEDTLS_ERR_NET_RECV_FAILED;
    }
}

/* An IP-literal URL: the leaf must carry that address as an iPAddress SAN
 * (mbedTLS 2.28 matches names only). Called for each certificate of the
 * chain; depth 0 is the server's own. */
static int verify_ip_san(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    const struct ij_kube *k = arg;
    if (depth != 0)
        return 0;
    bool ok = false;
    if (crt->ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME) {
        for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s != NULL; s = s->next) {
            if (s->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_IP_ADDRESS) &&
                s->buf.len == k->url.iplen && memcmp(s->buf.p, k->url.ip, k->url.iplen) == 0)
                ok = true;
        }
    }
    if (!ok)
        *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    return 0;
}

static int read_token(struct ij_kube *k, const char *file, char **errmsg)
{
    unsigned char *buf;
    size_t len;
    char *inner = NULL;
    int rc = pki_read_file(file, IJ_KUBE_MAX_TOKEN, &buf, &len, &inner);
    if (rc != 0) {
        ij_kube_fail(errmsg, rc, "token: %s", inner);
        free(inner);
        return rc;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                       buf[len - 1] == '\t'))
        len--;
    buf[len] = '\0';
    if (len == 0) {
        free(buf);
        return ij_kube_fail(errmsg, CM_ERR_INVAL, "token: %s is empty", file);
    }
    for (size_t i = 0; i < len; i++) {
        if (buf[i] <= 0x20 || buf[i] >= 0x7f) {
            free(buf);
            return ij_kube_fail(
                errmsg, CM_ERR_INVAL,
                "token: %s: byte %zu is white space or not ASCII (not a bearer token)", file, i);
        }
    }
    if (k->token != NULL) {
        mbedtls_platform_zeroize(k->token, strlen(k->token));
        free(k->token);
    }
    k->token = (char *)buf;
    return 0;
}

/* Under k->mu: read the token file again when it changed on disk. A file
 * that cannot be read (mid-rotation) keeps the token in force. */
static void maybe_reload_token(struct ij_kube *k)
{
    struct cm_watch_stamp now;
    cm_watch_stamp_get(k->token_file, &now);
    if (!cm_watch_changed(&k->token_stamp, &now))
        return;
    char *err = NULL;
    if (read_token(k, k->token_file, &err) == 0)
        k->token_stamp = now;
    free(err);
}

int ij_kube_new(const struct ij_kube_opts *o, struct ij_kube **out, char **errmsg)
{
    static const char *alpn[] = {"http/1.1", NULL};
    struct ij_kube *k = cm_xcalloc(1, sizeof(*k));
    char *inner = NULL;
    int rc, ret;
    mbedtls_x509_crt_init(&k->ca);
    mbedtls_ssl_config_init(&k->conf);
    mbedtls_ssl_session_init(&k->session);
    pthread_mutex_init(&k->mu, NULL);
    k->token_file = cm_xstrdup(o->token_file);
    snprintf(k->agent, sizeof(k->agent), "%s", o->agent != NULL ? o->agent : "publish-ca-root");
    k->timeout_ms = o->timeout_ms;
    k->ca_file = cm_xstrdup(o->ca_file);
    if ((rc = ij_kube_url_parse(o->api, &k->url, errmsg)) != 0)
        goto fail;
    bool v6 = k->url.iplen == 16;
    bool dflt = strcmp(k->url.port, "443") == 0;
    snprintf(k->endpoint, sizeof(k->endpoint), "%s%s%s:%s", v6 ? "[" : "", k->url.host,
             v6 ? "]" : "", k->url.port);
    snprintf(k->host_hdr, sizeof(k->host_hdr), "%s%s%s%s%s", v6 ? "[" : "", k->url.host,
             v6 ? "]" : "", dflt ? "" : ":", dflt ? "" : k->url.port);
    cm_watch_stamp_get(o->token_file, &k->token_stamp);
    if ((rc = read_token(k, o->token_file, errmsg)) != 0)
        goto fail;
    if ((rc = pki_bundle_load_file(&k->ca, o->ca_file, &inner)) != 0) {
        ij_kube_fail(errmsg, rc, "--ca-file: %s", inner);
        goto fail;
    }
    ret = mbedtls_ssl_config_defaults(&k->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                      MBEDTLS_SSL_PRESET_DEFAULT);
    if (ret != 0) {
        rc = ij_kube_fail(errmsg, CM_ERR_INVAL, "TLS config: -0x%04x", (unsigned)-ret);
        goto fail;
    }
    mbedtls_ssl_conf_min_version(&k->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_authmode(&k->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&k->conf, &k->ca, NULL);
    mbedtls_ssl_conf_rng(&k->conf, pki_rng_fn, pki_rng());
    mbedtls_ssl_conf_alpn_protocols(&k->conf, alpn);
    if (k->url.iplen != 0)
        mbedtls_ssl_conf_verify(&k->conf, verify_ip_san, k);
    *out = k;
    return 0;
fail:
    free(inner);
    ij_kube_free(k);
    return rc;
}

void ij_kube_free(struct ij_kube *k)
{
    if (k == NULL)
        return;
    mbedtls_ssl_session_free(&k->session);
    mbedtls_ssl_config_free(&k->conf);
    mbedtls_x509_crt_free(&k->ca);
    if (k->token != NULL)
        mbedtls_platform_zeroize(k->token, strlen(k->token));
    free(k->token);
    free(k->token_file);
    free(k->ca_file);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

const char *ij_kube_endpoint(const struct ij_kube *k)
{
    return k->endpoint;
}

/* Connect to the first address of the host that accepts before the deadline. */
static int do_connect(struct ij_kube *k, struct conn *c, char **errmsg)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    if (k->url.iplen != 0)
        hints.ai_flags |= AI_NUMERICHOST;
    int gai = getaddrinfo(k->url.host, k->url.port, &hints, &res);
    if (gai != 0)
        return ij_kube_fail(errmsg, CM_ERR_IO, "resolve %s: %s", k->url.host,
                            gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
    int err = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        c->fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (c->fd < 0) {
            err = errno;
            continue;
        }
        /* A handshake is several small writes: without this, Nagle holds
         * each behind the peer's delayed ACK (40 ms a time; Go sets it too). */
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        err = errno;
        if (err == EINPROGRESS) {
            if (conn_wait(c, POLLOUT) == 0) {
                socklen_t sl = sizeof(err);
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl) != 0)
                    err = errno;
                if (err == 0)
                    break;
            } else {
                err = c->timed_out ? ETIMEDOUT : c->sys_errno;
            }
        }
        close(c->fd);
        c->fd = -1;
        if (c->timed_out)
            break;
    }
    freeaddrinfo(res);
    if (c->fd >= 0)
        return 0;
    if (c->timed_out)
        return ij_kube_fail(errmsg, CM_ERR_TIMEOUT, "connect to %s: no connection within %d ms",
                            k->endpoint, k->timeout_ms);
    return ij_kube_fail(errmsg, CM_ERR_IO, "connect to %s: %s", k->endpoint, strerror(err));
}

/* The message for a failed mbedTLS call on connection c during `what`. */
static int io_fail(struct ij_kube *k, struct conn *c, mbedtls_ssl_context *ssl, int ret,
                   const char *what, char **errmsg)
{
    if (c->timed_out)
        return ij_kube_fail(errmsg, CM_ERR_TIMEOUT, "%s %s: no answer within %d ms (--timeout-ms)",
                            what, k->endpoint, k->timeout_ms);
    if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        char info[512];
        uint32_t flags = mbedtls_ssl_get_verify_result(ssl);
        int n = mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
        if (n < 0)
            snprintf(info, sizeof(info), "flags 0x%x", flags);
        /* one reason a line: joined with "; " */
        char joined[600], *save = NULL;
        size_t j = 0;
        joined[0] = '\0';
        for (char *line = strtok_r(info, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            int w = snprintf(joined + j, sizeof(joined) - j, "%s%s", j ? "; " : "", line);
            if (w < 0 || (size_t)w >= sizeof(joined) - j)
                break;
            j += (size_t)w;
        }
        return ij_kube_fail(
            errmsg, CM_ERR_PROTO,
            "%s %s: the API server's certificate is not trusted (--ca-file %s, name %s): %s", what,
            k->endpoint, k->ca_file, k->url.host, joined);
    }
    char buf[160];
    mbedtls_strerror(ret, buf, sizeof(buf));
    if (c->sys_errno != 0)
        return ij_kube_fail(errmsg, CM_ERR_IO, "%s %s: %s", what, k->endpoint,
                            strerror(c->sys_errno));
    return ij_kube_fail(errmsg, CM_ERR_PROTO, "%s %s: %s (-0x%04x)", what, k->endpoint, buf,
                        (unsigned)-ret);
}

static int ssl_write_all(struct ij_kube *k, struct conn *c, mbedtls_ssl_context *ssl, const char *p,
                         size_t n, char **errmsg)
{
    while (n > 0) {
        int ret = mbedtls_ssl_write(ssl, (const unsigned char *)p, n);
        if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (ret < 0)
            return io_fail(k, c, ssl, ret, "write to", errmsg);
        p += ret;
        n -= (size_t)ret;
    }
    return 0;
}

static int exchange(struct ij_kube *k, struct conn *c, mbedtls_ssl_context *ssl, const char *head,
                    const char *body, size_t body_len, ij_kube_sink_fn sink, void *sink_arg,
                    struct ij_kube_resp *out, char **errmsg)
{
    int ret, rc;
    if ((ret = mbedtls_ssl_setup(ssl, &k->conf)) != 0)
        return io_fail(k, c, ssl, ret, "TLS setup for", errmsg);
    /* DNS names go through mbedTLS's name check (and SNI); an IP literal is
     * checked by verify_ip_san and sends no SNI (RFC 6066). */
    if (k->url.iplen == 0 && (ret = mbedtls_ssl_set_hostname(ssl, k->url.host)) != 0)
        return io_fail(k, c, ssl, ret, "TLS setup for", errmsg);
    mbedtls_ssl_set_bio(ssl, c, bio_send, bio_recv, NULL);
    /* A session the server no longer knows just costs a full handshake. */
    pthread_mutex_lock(&k->mu);
    if (k->have_session)
        mbedtls_ssl_set_session(ssl, &k->session);
    pthread_mutex_unlock(&k->mu);
    while ((ret = mbedtls_ssl_handshake(ssl)) != 0) {
        if (ret != MBEDTLS_ERR_SSL_WANT_READ && ret != MBEDTLS_ERR_SSL_WANT_WRITE)
            return io_fail(k, c, ssl, ret, "TLS handshake with", errmsg);
    }
    pthread_mutex_lock(&k->mu);
    mbedtls_ssl_session_free(&k->session);
    mbedtls_ssl_session_init(&k->session);
    k->have_session = mbedtls_ssl_get_session(ssl, &k->session) == 0;
    pthread_mutex_unlock(&k->mu);
    /* head and body in one buffer: one TLS record, one segment when small */
    size_t hlen = strlen(head);
    char *req = cm_xmalloc(hlen + body_len);
    memcpy(req, head, hlen);
    if (body_len > 0)
        memcpy(req + hlen, body, body_len);
    rc = ssl_write_all(k, c, ssl, req, hlen + body_len, errmsg);
    mbedtls_platform_zeroize(req, hlen); /* the token is in there */
    free(req);
    if (rc != 0)
        return rc;

    struct ij_kube_rparser p;
    ij_kube_rparser_init(&p, out, sink != NULL ? IJ_KUBE_MAX_STATUS_BODY : IJ_KUBE_MAX_BODY);
    p.sink = sink;
    p.sink_arg = sink_arg;
    if (c->idle_ms > 0) /* a watch: from now on the deadline is an idle one */
        c->deadline_ms = cm_mono_ms() + (uint64_t)k->timeout_ms;
    unsigned char buf[16384];
    for (;;) {
        ret = mbedtls_ssl_read(ssl, buf, sizeof(buf));
        if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (ret == 0 || ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ||
            ret == MBEDTLS_ERR_SSL_CONN_EOF) {
            rc = ij_kube_rparser_eof(&p, errmsg);
            break;
        }
        if (ret < 0) {
            rc = c->stopped ? 0 : io_fail(k, c, ssl, ret, "read from", errmsg);
            break;
        }
        if ((rc = ij_kube_rparser_feed(&p, (const char *)buf, (size_t)ret, errmsg)) != 0 || p.done)
            break;
    }
    if (rc != 0)
        ij_kube_resp_deinit(out);
    return rc;
}

/* The request head; the caller zeroes and frees it (the token is in it). */
static char *request_head(struct ij_kube *k, const char *method, const char *path,
                          const char *extra)
{
    pthread_mutex_lock(&k->mu);
    maybe_reload_token(k);
    char *head =
        cm_xasprintf("%s %s%s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Authorization: Bearer %s\r\n"
                     "User-Agent: remora-injector/%s (%s)\r\n"
                     "Accept: application/json\r\n"
                     "Connection: close\r\n"
                     "%s\r\n",
                     method, k->url.base, path, k->host_hdr, k->token, IJ_VERSION, k->agent, extra);
    pthread_mutex_unlock(&k->mu);
    return head;
}

static int run(struct ij_kube *k, struct conn *c, const char *method, const char *path,
               const char *ctype, const char *body, size_t body_len, ij_kube_sink_fn sink,
               void *sink_arg, struct ij_kube_resp *out, char **errmsg)
{
    char *inner = NULL;
    memset(out, 0, sizeof(*out));
    int rc = do_connect(k, c, &inner);
    if (rc == 0) {
        char *clen = body ? cm_xasprintf("Content-Type: %s\r\nContent-Length: %zu\r\n",
                                         ctype ? ctype : "application/json", body_len)
                          : cm_xstrdup("");
        char *head = request_head(k, method, path, clen);
        mbedtls_ssl_context ssl;
        mbedtls_ssl_init(&ssl);
        rc = exchange(k, c, &ssl, head, body, body ? body_len : 0, sink, sink_arg, out, &inner);
        mbedtls_ssl_free(&ssl);
        mbedtls_platform_zeroize(head, strlen(head)); /* the token is in there */
        free(head);
        free(clen);
        close(c->fd);
    }
    if (rc != 0) {
        ij_kube_fail(errmsg, rc, "%s %s: %s", method, path, inner);
        free(inner);
    }
    return rc;
}

int ij_kube_request(struct ij_kube *k, const char *method, const char *path, const char *ctype,
                    const char *body, size_t body_len, struct ij_kube_resp *out, char **errmsg)
{
    struct conn c = {.fd = -1, .deadline_ms = cm_mono_ms() + (uint64_t)k->timeout_ms};
    return run(k, &c, method, path, ctype, body, body_len, NULL, NULL, out, errmsg);
}

int ij_kube_stream(struct ij_kube *k, const char *path, int idle_ms, const atomic_bool *stop,
                   ij_kube_sink_fn sink, void *sink_arg, struct ij_kube_resp *out, char **errmsg)
{
    struct conn c = {.fd = -1,
                     .deadline_ms = cm_mono_ms() + (uint64_t)k->timeout_ms,
                     .idle_ms = idle_ms,
                     .stop = stop};
    return run(k, &c, "GET", path, NULL, NULL, 0, sink, sink_arg, out, errmsg);
}
