/* Unit tests of proxy/httpc.c, the proxy's one small HTTP/1.1 client, against
 * a scripted server on 127.0.0.1 running in a thread (blocking sockets, plain
 * or mbedTLS with its own RNG): the client's event loop runs in the test's
 * thread. Each test asserts the request bytes the server received, byte for
 * byte, and what the callback reported: a Content-Length answer and a chunked
 * one completed at the message's end while the server keeps the connection
 * open, a body delimited by the close, an interim 100 skipped, the status
 * line alone (status_only), an over-limit body and head (an error, the body
 * never past its bound), a timeout, a server closing early (with and without
 * a partial answer), a malformed status line, a refused connect, a request
 * that cannot be sent (EINVAL), and TLS three ways: the CA client's trust
 * (the server's DNS name, and a wrong name refused), mTLS with a client
 * certificate the server verifies, and the probes' unverified client. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <event2/event.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/net.h"
#include "proxy/httpc.h"
#include "proxy/io.h"
#include "proxy/tls.h"

/* ---- the test PKI (made once) --------------------------------------------------- */

static char *root_pem, *root_key;
static char *dns_cert, *dns_key;  /* "ca.test", signed by the root, no SPIFFE ID */
static char *srv_chain, *srv_key; /* spiffe://test.local/ns/a/sa/server */
static char *cli_chain, *cli_key; /* spiffe://test.local/ns/a/sa/client */
#define SRV_ID "spiffe://test.local/ns/a/sa/server"
#define CLI_ID "spiffe://test.local/ns/a/sa/client"

static void workload(struct pki_ca *ca, const char *id, char **chain, char **key)
{
    mbedtls_pk_context k;
    char *err = NULL;
    mbedtls_pk_init(&k);
    if (pki_key_generate(&k, &err) != 0 || pki_sign_workload(ca, &k, id, 3600, chain, &err) != 0 ||
        pki_key_write_pem(&k, key, &err) != 0) {
        fprintf(stderr, "test PKI: %s\n", err ? err : "?");
        abort();
    }
    mbedtls_pk_free(&k);
}

static void make_pki(void)
{
    char *err = NULL;
    const char *dns[] = {"ca.test", NULL};
    struct pki_ca ca;
    pki_ca_init(&ca);
    if (pki_make_root("httpc test root", 2, &root_pem, &root_key, &err) != 0 ||
        pki_make_server("ca.test", dns, 2, root_pem, root_key, &dns_cert, &dns_key, &err) != 0 ||
        pki_ca_load_pem(&ca, root_pem, root_key, root_pem, &err) != 0) {
        fprintf(stderr, "test PKI: %s\n", err ? err : "?");
        abort();
    }
    workload(&ca, SRV_ID, &srv_chain, &srv_key);
    workload(&ca, CLI_ID, &cli_chain, &cli_key);
    pki_ca_free(&ca);
}

static void free_pki(void)
{
    free(root_pem);
    free(root_key);
    free(dns_cert);
    free(dns_key);
    free(srv_chain);
    free(srv_key);
    free(cli_chain);
    free(cli_key);
}

/* ---- the scripted server (a thread) ------------------------------------------------ */

enum srv_tls {
    SRV_PLAIN = 0, /* plaintext */
    SRV_DNS,       /* the "ca.test" certificate, no client certificate asked */
    SRV_MTLS       /* the workload certificate; a client certificate is required */
};
enum srv_after {
    AFTER_HOLD = 0, /* keep the connection until the client closes it */
    AFTER_CLOSE     /* close right after the answer */
};

struct srv {
    int lfd;
    uint16_t port;
    enum srv_tls tls;
    const char *answer; /* sent after the request; NULL: nothing */
    size_t answer_len;
    enum srv_after after;
    pthread_t th;
    /* what the thread saw */
    char got[8192];
    size_t got_len;
    bool handshake_ok;
    char peer_id[PKI_SPIFFE_MAX]; /* the client certificate's SPIFFE ID (SRV_MTLS) */
};

struct conn {
    int fd;
    bool tls;
    mbedtls_ssl_context ssl;
    mbedtls_net_context net;
};

static ssize_t c_recv(struct conn *c, char *b, size_t n)
{
    if (!c->tls)
        return recv(c->fd, b, n, 0);
    int r = mbedtls_ssl_read(&c->ssl, (unsigned char *)b, n);
    return r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? 0 : r;
}

static bool c_send_all(struct conn *c, const char *b, size_t n)
{
    while (n > 0) {
        ssize_t w = c->tls ? mbedtls_ssl_write(&c->ssl, (const unsigned char *)b, n)
                           : send(c->fd, b, n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        b += w;
        n -= (size_t)w;
    }
    return true;
}

/* The request: its head, then Content-Length bytes of body. */
static void read_request(struct srv *s, struct conn *c)
{
    for (;;) {
        char *end = memmem(s->got, s->got_len, "\r\n\r\n", 4);
        if (end != NULL) {
            size_t head = (size_t)(end - s->got) + 4, body = 0;
            const char *cl = memmem(s->got, head, "Content-Length: ", 16);
            if (cl != NULL)
                body = strtoul(cl + 16, NULL, 10);
            if (s->got_len >= head + body)
                return;
        }
        if (s->got_len == sizeof(s->got))
            return;
        ssize_t n = c_recv(c, s->got + s->got_len, sizeof(s->got) - s->got_len);
        if (n <= 0)
            return;
        s->got_len += (size_t)n;
    }
}

static void *srv_main(void *arg)
{
    struct srv *s = arg;
    struct conn c = {.fd = accept(s->lfd, NULL, NULL), .tls = s->tls != SRV_PLAIN};
    if (c.fd < 0)
        return NULL;
    struct timeval tv = {20, 0}; /* never hang the test */
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    mbedtls_entropy_context ent;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    mbedtls_x509_crt own, ca;
    mbedtls_pk_context key;
    mbedtls_entropy_init(&ent);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_ssl_config_init(&conf);
    mbedtls_x509_crt_init(&own);
    mbedtls_x509_crt_init(&ca);
    mbedtls_pk_init(&key);
    mbedtls_ssl_init(&c.ssl);
    if (c.tls) {
        const char *cp = s->tls == SRV_DNS ? dns_cert : srv_chain;
        const char *kp = s->tls == SRV_DNS ? dns_key : srv_key;
        if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0) != 0 ||
            mbedtls_x509_crt_parse(&own, (const unsigned char *)cp, strlen(cp) + 1) != 0 ||
            mbedtls_x509_crt_parse(&ca, (const unsigned char *)root_pem, strlen(root_pem) + 1) !=
                0 ||
            mbedtls_pk_parse_key(&key, (const unsigned char *)kp, strlen(kp) + 1, NULL, 0) != 0 ||
            mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT) != 0)
            goto out;
        mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);
        mbedtls_ssl_conf_own_cert(&conf, &own, &key);
        mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
        mbedtls_ssl_conf_authmode(&conf, s->tls == SRV_MTLS ? MBEDTLS_SSL_VERIFY_REQUIRED
                                                            : MBEDTLS_SSL_VERIFY_NONE);
        if (mbedtls_ssl_setup(&c.ssl, &conf) != 0)
            goto out;
        c.net.fd = c.fd;
        mbedtls_ssl_set_bio(&c.ssl, &c.net, mbedtls_net_send, mbedtls_net_recv, NULL);
        if (mbedtls_ssl_handshake(&c.ssl) != 0)
            goto out;
        const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&c.ssl);
        char *e = NULL;
        if (peer != NULL && pki_crt_spiffe_id(peer, s->peer_id, sizeof(s->peer_id), &e) != 0)
            s->peer_id[0] = '\0';
        free(e);
    }
    s->handshake_ok = true;
    read_request(s, &c);
    if (s->answer != NULL && !c_send_all(&c, s->answer, s->answer_len))
        goto out;
    if (s->after == AFTER_HOLD) {
        char b[4096];
        while (c_recv(&c, b, sizeof(b)) > 0)
            ;
    } else if (c.tls) {
        mbedtls_ssl_close_notify(&c.ssl);
    }
out:
    mbedtls_ssl_free(&c.ssl);
    mbedtls_ssl_config_free(&conf);
    mbedtls_x509_crt_free(&own);
    mbedtls_x509_crt_free(&ca);
    mbedtls_pk_free(&key);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&ent);
    close(c.fd);
    return NULL;
}

static void srv_start(struct srv *s, enum srv_tls tls, const char *answer, size_t len,
                      enum srv_after after)
{
    memset(s, 0, sizeof(*s));
    s->tls = tls;
    s->answer = answer;
    s->answer_len = answer != NULL && len == 0 ? strlen(answer) : len;
    s->after = after;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static void srv_join(struct srv *s)
{
    pthread_join(s->th, NULL);
    close(s->lfd);
}

/* ---- the client side: one request, run to its callback --------------------------- */

struct result {
    bool done;
    int calls;
    int status;
    char err[512];
    char body[8192];
    size_t body_len;
    size_t body_max_seen; /* the body's length as delivered (never past its bound) */
    char x_test[64];      /* the answer's x-test field, "" when absent */
    size_t nhdrs;
};

static struct event_base *base;

static void on_done(const struct px_httpc_resp *r, void *arg)
{
    struct result *res = arg;
    res->done = true;
    res->calls++;
    res->status = r->status;
    snprintf(res->err, sizeof(res->err), "%s", r->err ? r->err : "");
    res->body_max_seen = r->body->len;
    res->body_len = r->body->len < sizeof(res->body) ? r->body->len : sizeof(res->body);
    if (res->body_len > 0)
        memcpy(res->body, r->body->data, res->body_len);
    const char *x = px_httpc_header(r, "x-test");
    snprintf(res->x_test, sizeof(res->x_test), "%s", x ? x : "");
    res->nhdrs = r->nhdrs;
}

static void addr_of(uint16_t port, struct cm_addr *a)
{
    char s[32];
    snprintf(s, sizeof(s), "127.0.0.1:%u", (unsigned)port);
    assert_int_equal(cm_addr_parse(s, a), 0);
}

/* Run the loop until the callback ran (bounded: 30 s), then once more so
 * the handle's reap event frees it. */
static void run(struct result *res)
{
    uint64_t until = cm_mono_ms() + 30000;
    while (!res->done && cm_mono_ms() < until)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(res->done);
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(res->calls, 1);
}

static void simple_get(struct srv *s, struct px_tls_conf *tls, const char *tls_name,
                       struct px_httpc_req *rq, struct cm_addr *a)
{
    addr_of(s->port, a);
    memset(rq, 0, sizeof(*rq));
    rq->addr = a;
    rq->tls = tls;
    rq->tls_name = tls_name;
    rq->method = "GET";
    rq->target = "/metrics?x=1";
    rq->host = "app:9090";
}

#define GET_BYTES "GET /metrics?x=1 HTTP/1.1\r\nHost: app:9090\r\nConnection: close\r\n\r\n"

static void assert_got(const struct srv *s, const char *want)
{
    assert_int_equal(s->got_len, strlen(want));
    assert_memory_equal(s->got, want, strlen(want));
}

static int setup(void **state)
{
    (void)state;
    base = event_base_new();
    px_io_init(base);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    px_io_deinit();
    event_base_free(base);
    base = NULL;
    return 0;
}

/* ---- plain ------------------------------------------------------------------------- */

/* POST with headers and a body: the bytes on the wire, and an answer with
 * Content-Length completes at its end although the server keeps the
 * connection open (the CA client used to wait for the close). */
static void content_length_answer(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN,
              "HTTP/1.1 201 Created\r\nX-Test: yes\r\nContent-Length: 11\r\n\r\nhello world", 0,
              AFTER_HOLD);
    struct cm_addr a;
    addr_of(s.port, &a);
    const struct px_httpc_hdr h[] = {{"Authorization", "Bearer tok"},
                                     {"Content-Type", "application/json"}};
    struct px_httpc_req rq = {.addr = &a,
                              .method = "POST",
                              .target = "/v1/sign",
                              .host = "ca:443",
                              .hdrs = h,
                              .nhdrs = 2,
                              .body = "{\"a\":1}",
                              .body_len = 7};
    struct result res = {0};
    uint64_t t0 = cm_mono_ms();
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 201);
    assert_string_equal(res.err, "");
    assert_int_equal(res.body_len, 11);
    assert_memory_equal(res.body, "hello world", 11);
    assert_string_equal(res.x_test, "yes");
    assert_int_equal(res.nhdrs, 2);
    assert_true(cm_mono_ms() - t0 < 10000); /* not the 10 s default timeout */
    srv_join(&s);                           /* returns once the client closed */
    assert_got(&s, "POST /v1/sign HTTP/1.1\r\nHost: ca:443\r\nAuthorization: Bearer tok\r\n"
                   "Content-Type: application/json\r\nContent-Length: 7\r\n"
                   "Connection: close\r\n\r\n{\"a\":1}");
}

static void chunked_answer(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN,
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-test: c\r\n\r\n"
              "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer-X: t\r\n\r\n",
              0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, 11);
    assert_memory_equal(res.body, "hello world", 11);
    assert_string_equal(res.x_test, "c");
    srv_join(&s);
    assert_got(&s, GET_BYTES);
}

static void body_until_close(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN, "HTTP/1.0 200 OK\r\n\r\nuntil the end", 0, AFTER_CLOSE);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, 13);
    assert_memory_equal(res.body, "until the end", 13);
    srv_join(&s);
    assert_got(&s, GET_BYTES);
}

static void interim_answer_skipped(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN,
              "HTTP/1.1 100 Continue\r\nX-Test: interim\r\n\r\n"
              "HTTP/1.1 204 No Content\r\n\r\n",
              0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 204);
    assert_string_equal(res.x_test, ""); /* the 100's field is not the answer's */
    assert_int_equal(res.nhdrs, 0);
    assert_int_equal(res.body_len, 0);
    srv_join(&s);
}

/* status_only: done at the status line; the rest never arrives */
static void status_line_only(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN, "HTTP/1.1 503 Busy\r\nX-Test: never-compl", 0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    rq.status_only = true;
    rq.timeout_ms = 20000;
    struct result res = {0};
    uint64_t t0 = cm_mono_ms();
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 503);
    assert_string_equal(res.err, "");
    assert_true(cm_mono_ms() - t0 < 15000);
    srv_join(&s);
    assert_got(&s, GET_BYTES);
}

/* A body over max_body: an error, and never more than the bound held. */
static void over_limit_body(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *big = malloc(n + 64);
    int h = snprintf(big, 64, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
    memset(big + h, 'x', n);
    struct srv s;
    srv_start(&s, SRV_PLAIN, big, (size_t)h + n, AFTER_CLOSE);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    rq.max_body = 4096;
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err, "answer's body over 4096 bytes");
    assert_true(res.body_max_seen <= 4096);
    srv_join(&s); /* its send fails once the client closed: no hang */
    free(big);
}

static void over_limit_head(void **state)
{
    (void)state;
    static char ans[4096];
    size_t o = (size_t)snprintf(ans, sizeof(ans), "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(ans + o, sizeof(ans) - o, "X-Pad-%02d: %040d\r\n", i, i);
    snprintf(ans + o, sizeof(ans) - o, "Content-Length: 0\r\n\r\n");
    struct srv s;
    srv_start(&s, SRV_PLAIN, ans, 0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    rq.max_head = 512;
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err, "answer's header fields over 512 bytes");
    srv_join(&s);
}

static void too_many_fields(void **state)
{
    (void)state;
    static char ans[8192];
    size_t o = (size_t)snprintf(ans, sizeof(ans), "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < PX_HTTPC_MAX_HEADERS + 1; i++)
        o += (size_t)snprintf(ans + o, sizeof(ans) - o, "a%d: b\r\n", i);
    snprintf(ans + o, sizeof(ans) - o, "Content-Length: 0\r\n\r\n");
    struct srv s;
    srv_start(&s, SRV_PLAIN, ans, 0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err, "answer has too many header fields");
    srv_join(&s);
}

/* The server reads the request and says nothing: the deadline ends it. */
static void timeout(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN, NULL, 0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    rq.timeout_ms = 300;
    struct result res = {0};
    uint64_t t0 = cm_mono_ms();
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    uint64_t took = cm_mono_ms() - t0;
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err, "no complete answer within 300 ms");
    assert_true(took >= 250);
    assert_true(took < 15000);
    srv_join(&s);
    assert_got(&s, GET_BYTES);
}

/* A partial answer cut at ten bytes after the head, then the close. */
static void closes_early(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 0,
              AFTER_CLOSE);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err, "the server closed the connection before the end of the answer");
    srv_join(&s);
}

static void closes_without_answer(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN, NULL, 0, AFTER_CLOSE);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err, "the server closed the connection without an answer");
    srv_join(&s);
}

static void bad_status_line(void **state)
{
    (void)state;
    const char *bad[] = {"HTTP/1.1 2x0 OK\r\n\r\n", "SMTP ready\r\n", "HTTP/1.1 99999 X\r\n\r\n",
                         /* llhttp 8.1 takes a bare CR, then ":v" as a field without a name
                            (found by fuzz_httpc_response) */
                         "HTTP/1.1 200 OK\rn:v\r\nContent-Length: 0\r\n\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct srv s;
        srv_start(&s, SRV_PLAIN, bad[i], 0, AFTER_HOLD);
        struct px_httpc_req rq;
        struct cm_addr a;
        simple_get(&s, NULL, NULL, &rq, &a);
        rq.status_only = i == 2; /* the status line alone is checked too */
        struct result res = {0};
        assert_non_null(px_httpc_start(base, &rq, on_done, &res));
        run(&res);
        assert_int_equal(res.status, 0);
        assert_true(strncmp(res.err, "malformed answer: ", 18) == 0);
        srv_join(&s);
    }
}

static void connect_refused(void **state)
{
    (void)state;
    /* a port that was just free: bound, then closed without listening */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(sin);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &l), 0);
    close(fd);
    struct cm_addr a;
    addr_of(ntohs(sin.sin_port), &a);
    struct px_httpc_req rq = {.addr = &a, .method = "GET", .target = "/"};
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err, "connect: Connection refused");
}

/* Nothing is sent that is not valid HTTP: EINVAL at once, no callback. */
static void invalid_request(void **state)
{
    (void)state;
    struct cm_addr a;
    addr_of(9, &a);
    const struct px_httpc_hdr crlf[] = {{"X", "a\r\nInjected: 1"}};
    const struct px_httpc_hdr badname[] = {{"X Y", "a"}};
    struct px_httpc_req rq[] = {
        {.addr = &a, .method = "GET", .target = "/", .hdrs = crlf, .nhdrs = 1},
        {.addr = &a, .method = "GET", .target = "/", .hdrs = badname, .nhdrs = 1},
        {.addr = &a, .method = "GET", .target = "/a b"},
        {.addr = &a, .method = "GET", .target = "relative"},
        {.addr = &a, .method = "GET", .target = "/", .host = "h\r\nX: 1"},
        {.addr = &a, .method = "G T", .target = "/"},
        {.addr = NULL, .method = "GET", .target = "/"},
    };
    for (size_t i = 0; i < sizeof(rq) / sizeof(rq[0]); i++) {
        struct result res = {0};
        errno = 0;
        assert_null(px_httpc_start(base, &rq[i], on_done, &res));
        assert_int_equal(errno, EINVAL);
    }
}

/* Cancelled before the answer: no callback, nothing leaks (ASan). */
static void cancel_in_flight(void **state)
{
    (void)state;
    struct srv s;
    srv_start(&s, SRV_PLAIN, NULL, 0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, NULL, NULL, &rq, &a);
    struct result res = {0};
    struct px_httpc *c = px_httpc_start(base, &rq, on_done, &res);
    assert_non_null(c);
    uint64_t until = cm_mono_ms() + 10000;
    while (s.got_len < strlen(GET_BYTES) && cm_mono_ms() < until)
        event_base_loop(base, EVLOOP_NONBLOCK);
    px_httpc_cancel(c);
    srv_join(&s);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_false(res.done);
}

/* ---- TLS ------------------------------------------------------------------------- */

/* The CA client's trust: the root, the server's DNS name checked. */
static void tls_server_name(void **state)
{
    (void)state;
    struct px_tls_conf *conf = NULL;
    char *err = NULL;
    assert_int_equal(px_tls_conf_new_anon_client(root_pem, &conf, &err), 0);
    struct srv s;
    srv_start(&s, SRV_DNS, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, conf, "ca.test", &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 200);
    assert_memory_equal(res.body, "ok", 2);
    srv_join(&s);
    assert_got(&s, GET_BYTES);

    /* the same server under another name: refused, nothing sent */
    srv_start(&s, SRV_DNS, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0, AFTER_HOLD);
    simple_get(&s, conf, "other.test", &rq, &a);
    memset(&res, 0, sizeof(res));
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_true(strncmp(res.err, "TLS handshake: ", 15) == 0);
    assert_non_null(strstr(res.err, "Common Name"));
    srv_join(&s);
    assert_int_equal(s.got_len, 0);
    px_tls_conf_unref(conf);
}

/* A client certificate the server requires and verifies; the client checks
 * the server's SPIFFE ID. */
static void tls_client_certificate(void **state)
{
    (void)state;
    struct px_tls_conf *conf = NULL;
    char *err = NULL;
    assert_int_equal(px_tls_conf_new(PX_TLS_CLIENT, cli_chain, cli_key, root_pem, "test.local",
                                     NULL, &conf, &err),
                     0);
    struct srv s;
    srv_start(&s, SRV_MTLS, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmtls", 0, AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, conf, SRV_ID, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 200);
    assert_memory_equal(res.body, "mtls", 4);
    srv_join(&s);
    assert_true(s.handshake_ok);
    assert_string_equal(s.peer_id, CLI_ID);
    assert_got(&s, GET_BYTES);

    /* expecting another workload: refused after the handshake, nothing sent */
    srv_start(&s, SRV_MTLS, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmtls", 0, AFTER_HOLD);
    simple_get(&s, conf, "spiffe://test.local/ns/a/sa/other", &rq, &a);
    memset(&res, 0, sizeof(res));
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.err,
                        "TLS: peer is " SRV_ID ", expected spiffe://test.local/ns/a/sa/other");
    srv_join(&s);
    assert_int_equal(s.got_len, 0);
    px_tls_conf_unref(conf);
}

/* The probes' client: any certificate, chunked answer over TLS. */
static void tls_unverified(void **state)
{
    (void)state;
    struct px_tls_conf *conf = NULL;
    char *err = NULL;
    assert_int_equal(px_tls_conf_new_unverified_client(&conf, &err), 0);
    struct srv s;
    srv_start(&s, SRV_DNS,
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 0,
              AFTER_HOLD);
    struct px_httpc_req rq;
    struct cm_addr a;
    simple_get(&s, conf, NULL, &rq, &a);
    struct result res = {0};
    assert_non_null(px_httpc_start(base, &rq, on_done, &res));
    run(&res);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body_len, 3);
    assert_memory_equal(res.body, "abc", 3);
    srv_join(&s);
    assert_got(&s, GET_BYTES);
    px_tls_conf_unref(conf);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* mbedtls_net_send writes to a closed socket */
    make_pki();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(content_length_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(chunked_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(body_until_close, setup, teardown),
        cmocka_unit_test_setup_teardown(interim_answer_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(status_line_only, setup, teardown),
        cmocka_unit_test_setup_teardown(over_limit_body, setup, teardown),
        cmocka_unit_test_setup_teardown(over_limit_head, setup, teardown),
        cmocka_unit_test_setup_teardown(too_many_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(closes_early, setup, teardown),
        cmocka_unit_test_setup_teardown(closes_without_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_status_line, setup, teardown),
        cmocka_unit_test_setup_teardown(connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(invalid_request, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(tls_server_name, setup, teardown),
        cmocka_unit_test_setup_teardown(tls_client_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(tls_unverified, setup, teardown),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    px_tls_session_cache_clear();
    free_pki();
    pki_rng_free();
    return r;
}
