/* libFuzzer target for the HTTP/1.1 client codec (proxy/h1_client.c): the
 * input is what an upstream answers, driven through the real event loop,
 * stream glue and HTTP/1.1 server codec toward a client.
 *
 * Once: a minimal px_srv (as fuzz_h1_request.c) and a loopback TCP listener
 * standing in for the upstream; the proxy's only listener forwards there.
 *
 * Per input: the first byte picks the request (bit 0: HEAD instead of GET,
 * bit 1: a POST with a 5-byte body, bit 2: the upstream closes after its
 * answer). A client on an AF_UNIX socket pair sends it with keep-alive; the
 * upstream connection is accepted, and the rest of the input is written as
 * the response in pieces of 1 to 64 bytes (or at once) while the loop runs.
 * Then the client sends a second request on the same connection, which
 * exercises the pool: reuse of the first upstream connection, or its drop
 * for stray bytes / EOF (then a fresh upstream connection answers with a
 * fixed response).
 *
 * Invariants (a violation traps): the client's bytes start with "HTTP/1.";
 * after teardown no connection and no stream is left; and LeakSanitizer
 * finds nothing. (That stray bytes never answer the next request is checked
 * byte for byte by test/integration/hostile_h1.sh.) */
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/config.h"
#include "proxy/conn.h"
#include "proxy/h1.h"
#include "proxy/io.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "test/fuzz/fuzz_server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct px_server srv;
static uint64_t next_id;
static int lfd = -1; /* the stand-in upstream's listening socket */
static bool dump;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    cm_log_set_level(CM_LOG_ERROR);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sin);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sin, &sl) != 0)
        abort();
    char cfg[512];
    int n = snprintf(cfg, sizeof(cfg),
                     "{\"listeners\": [{\"name\": \"fuzz\", \"address\": \"127.0.0.1:0\","
                     " \"direction\": \"outbound\", \"upstream\": \"127.0.0.1:%u\"}],"
                     " \"limits\": {\"max_header_bytes\": 8192, \"max_headers\": 32,"
                     " \"buffer_bytes\": 16384, \"connect_timeout_ms\": 2000}}",
                     (unsigned)ntohs(sin.sin_port));
    fuzz_server_start(&srv, cfg, (size_t)n);
    dump = getenv("FUZZ_H1_DUMP") != NULL;
    return 0;
}

struct sink {
    char buf[4096]; /* the first bytes the client got */
    size_t n;
};

/* Run the loop; collect what reached the client; drain what reached each
 * upstream connection (fd -1: none). */
static void pump(int cfd, struct sink *out, const int *ufd, size_t nufd, int turns)
{
    char buf[16384];
    for (int i = 0; i < turns; i++) {
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
        ssize_t r;
        while ((r = read(cfd, buf, sizeof(buf))) > 0)
            for (ssize_t k = 0; k < r && out->n < sizeof(out->buf) - 1; k++)
                out->buf[out->n++] = buf[k];
        for (size_t k = 0; k < nufd; k++)
            while (ufd[k] >= 0 && read(ufd[k], buf, sizeof(buf)) > 0)
                ;
    }
}

/* Accept the proxy's next upstream connection, running the loop meanwhile. */
static int accept_up(int cfd, struct sink *out, const int *ufd, size_t nufd)
{
    for (int i = 0; i < 200; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            return fd;
        pump(cfd, out, ufd, nufd, 1);
    }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1 << 20)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    struct px_conn *c = fuzz_conn_new(&srv, sv[0], PX_PROTO_HTTP1, "127.0.0.1:15001", ++next_id);
    px_h1_server_start(c);

    static const char get[] = "GET /one HTTP/1.1\r\nHost: up\r\n\r\n";
    static const char head[] = "HEAD /one HTTP/1.1\r\nHost: up\r\n\r\n";
    static const char post[] = "POST /one HTTP/1.1\r\nHost: up\r\nContent-Length: 5\r\n\r\nhello";
    const char *req = (mode & 2) ? post : (mode & 1) ? head : get;
    struct sink out = {{0}, 0};
    int ufd[2] = {-1, -1};
    if (write(sv[1], req, strlen(req)) < 0)
        abort();
    ufd[0] = accept_up(sv[1], &out, ufd, 0);

    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 1099511628211ull;
    bool whole = (h & 3) == 0;
    size_t off = 0;
    for (int rounds = 0; ufd[0] >= 0 && off < size && rounds < 4000; rounds++) {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        size_t piece = whole ? size - off : 1 + (size_t)(h % 64);
        if (piece > size - off)
            piece = size - off;
        ssize_t w = write(ufd[0], data + off, piece);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN)
            break; /* the proxy closed the upstream connection */
        pump(sv[1], &out, ufd, 1, whole ? 2 : 1);
    }
    pump(sv[1], &out, ufd, 1, 4);
    if ((mode & 4) && ufd[0] >= 0)
        shutdown(ufd[0], SHUT_WR);
    pump(sv[1], &out, ufd, 1, 4);

    /* A second request on the same client connection. */
    static const char second[] = "GET /two HTTP/1.1\r\nHost: up\r\n\r\n";
    bool sent2 = write(sv[1], second, sizeof(second) - 1) > 0;
    pump(sv[1], &out, ufd, 1, 4);
    if (sent2) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            ufd[1] = fd;
            pump(sv[1], &out, ufd, 2, 2);
            static const char fresh[] =
                "HTTP/1.1 200 OK\r\nx-fresh: 1\r\ncontent-length: 5\r\n\r\nfresh";
            if (write(fd, fresh, sizeof(fresh) - 1) < 0) {
                /* the proxy may have closed it already: nothing to check */
            }
            pump(sv[1], &out, ufd, 2, 6);
        }
    }
    out.buf[out.n] = '\0';
    if (dump)
        fprintf(stderr, "fuzz_h1_response: mode %u, %zu bytes in, client got %zu: %.*s\n", mode,
                size, out.n, (int)strcspn(out.buf, "\r\n"), out.buf);

    static const char http1[] = "HTTP/1.";
    size_t cmp = out.n < sizeof(http1) - 1 ? out.n : sizeof(http1) - 1;
    if (memcmp(out.buf, http1, cmp) != 0)
        __builtin_trap();
    px_h1_shutdown();
    close(sv[1]);
    for (int k = 0; k < 2; k++)
        if (ufd[k] >= 0)
            close(ufd[k]);
    px_stream_gc(&srv);
    px_stream_freelist_clear();
    if (srv.nconns != 0 || srv.nstreams != 0 || !cm_list_empty(&srv.conns) ||
        !cm_list_empty(&srv.streams) || !cm_list_empty(&srv.gc_streams))
        __builtin_trap();
    return 0;
}
