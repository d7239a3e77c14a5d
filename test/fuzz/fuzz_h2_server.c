/* libFuzzer target for the HTTP/2 server side (proxy/h2_server.c, h2.c)
 * driven through the real event loop, stream glue and HTTP/1.1 upstream
 * client, with arbitrary frame sequences from a client.
 *
 * Once: a minimal px_srv (event base, px_io, gc event, lists), an
 * in-process fake upstream on 127.0.0.1:0 (libevent listener: every
 * connection gets a small 200 response, then is read until it closes) and
 * a config whose only listener forwards there, with small limits (8
 * streams, a reset budget of 20) so the bounds are reached.
 *
 * Per input: byte 0 is a mode (bit 0: send the client preface ourselves
 * before the rest, so mutations spend their time on frames; bit 1: write
 * everything at once instead of in pieces of 1 to 64 bytes); the other
 * bytes are written into one end of an AF_UNIX socket pair whose other end
 * is a px_conn handed to px_h2_server_start(), while the loop runs without
 * blocking and the proxy's output is read. Then that end is half-closed
 * (EOF) and the loop runs until the session is gone.
 *
 * Invariants (a violation traps): the proxy's first bytes are a SETTINGS
 * frame (or nothing, or a GOAWAY for a bad preface); after EOF the session
 * ends and every stream and connection has been freed within a bounded
 * number of loop turns, before any teardown; LeakSanitizer finds nothing
 * after teardown. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
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

#include "common/list.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/config.h"
#include "proxy/conn.h"
#include "proxy/h1.h"
#include "proxy/h2.h"
#include "proxy/io.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "test/fuzz/fuzz_server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct px_server srv;
static uint64_t next_id;
static bool dump; /* FUZZ_H2_DUMP=1: say how each input ended */

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* ---- the fake upstream ---- */

struct up_conn {
    struct bufferevent *bev;
    struct cm_list link;
};
static struct cm_list up_conns = {&up_conns, &up_conns};
static unsigned up_accepted;

static void up_free(struct up_conn *u)
{
    cm_list_remove(&u->link);
    bufferevent_free(u->bev);
    free(u);
}

static void up_on_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void up_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        up_free(arg);
}

static void up_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                         int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    (void)arg;
    struct up_conn *u = cm_xcalloc(1, sizeof(*u));
    u->bev = bufferevent_socket_new(srv.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (u->bev == NULL)
        abort();
    cm_list_insert_tail(&up_conns, &u->link);
    up_accepted++;
    static const char resp[] = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-up: 1\r\n\r\nhello";
    bufferevent_write(u->bev, resp, sizeof(resp) - 1);
    bufferevent_setcb(u->bev, up_on_read, NULL, up_on_event, u);
    bufferevent_enable(u->bev, EV_READ | EV_WRITE);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    cm_log_set_level(CM_LOG_ERROR);
    srv.base = event_base_new();
    if (srv.base == NULL)
        abort();
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct evconnlistener *l =
        evconnlistener_new_bind(srv.base, up_on_accept, NULL,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                128, (struct sockaddr *)&sin, sizeof(sin));
    socklen_t slen = sizeof(sin);
    if (l == NULL || getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &slen) != 0)
        abort();
    char cfg[768];
    int n = snprintf(cfg, sizeof(cfg),
                     "{\"listeners\": [{\"name\": \"fuzz\", \"address\": \"127.0.0.1:0\","
                     " \"direction\": \"inbound\", \"upstream\": \"127.0.0.1:%u\","
                     " \"tls\": \"disabled\", \"downstream_protocol\": \"h2\"}],"
                     " \"limits\": {\"max_header_bytes\": 4096, \"max_headers\": 32,"
                     " \"max_request_body\": 100000, \"buffer_bytes\": 16384,"
                     " \"h2_max_concurrent_streams\": 8, \"h2_max_resets_per_window\": 20,"
                     " \"connect_timeout_ms\": 2000, \"header_timeout_ms\": 5000}}",
                     (unsigned)ntohs(sin.sin_port));
    if (n <= 0 || (size_t)n >= sizeof(cfg))
        abort();
    fuzz_server_start(&srv, cfg, (size_t)n);
    dump = getenv("FUZZ_H2_DUMP") != NULL;
    return 0;
}

/* The proxy's first bytes, kept to check the first frame. */
struct sink {
    uint8_t head[32];
    size_t n, total;
};

static void pump(int fd, struct sink *out, int turns)
{
    uint8_t buf[16384];
    for (int i = 0; i < turns; i++) {
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
        ssize_t r;
        while ((r = read(fd, buf, sizeof(buf))) > 0) {
            for (ssize_t k = 0; k < r && out->n < sizeof(out->head); k++)
                out->head[out->n++] = buf[k];
            out->total += (size_t)r;
        }
    }
}

static bool write_all(int fd, const uint8_t *p, size_t len, struct sink *out, uint64_t *h,
                      bool whole)
{
    size_t off = 0;
    for (int rounds = 0; off < len && rounds < 20000; rounds++) {
        *h ^= *h << 13;
        *h ^= *h >> 7;
        *h ^= *h << 17;
        size_t piece = whole ? len - off : 1 + (size_t)(*h % 64);
        if (piece > len - off)
            piece = len - off;
        ssize_t w = write(fd, p + off, piece);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN)
            return false; /* the proxy closed its end */
        pump(fd, out, 1);
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (size < 1 || size > 1 << 18)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();

    struct px_conn *c = fuzz_conn_new(&srv, sv[0], PX_PROTO_H2, "127.0.0.1:15006", ++next_id);
    px_h2_server_start(c); /* owns c from here */

    struct sink out = {{0}, 0, 0};
    /* piece sizes come from a PRNG seeded with a hash of the input, so a
     * crash replays exactly */
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 1099511628211ull;
    bool whole = (mode & 2) != 0;
    bool open = true;
    if (mode & 1)
        open = write_all(sv[1], (const uint8_t *)preface, sizeof(preface) - 1, &out, &h, whole);
    if (open)
        write_all(sv[1], data, size, &out, &h, whole);
    pump(sv[1], &out, 8);
    shutdown(sv[1], SHUT_WR);

    /* Every stream must end once the client is gone: the session closes on
     * EOF, its streams are reported and freed, the upstream side follows. */
    int turns = 0;
    for (; turns < 2000; turns++) {
        pump(sv[1], &out, 1);
        if (px_h2_server_sessions() == 0 && srv.nstreams == 0 && cm_list_empty(&srv.streams) &&
            srv.nconns == 0)
            break;
        if (turns > 20)
            usleep(1000); /* an upstream connect or close in flight */
    }
    if (dump)
        fprintf(stderr,
                "fuzz_h2_server: mode %u, %zu bytes in, %zu out (first frame type %d), "
                "%d turns to end, upstream connections %u\n",
                mode, size, out.total, out.n >= 4 ? out.head[3] : -1, turns, up_accepted);
    if (turns == 2000)
        __builtin_trap(); /* a stream or the session outlived its client */
    /* our first frame is SETTINGS (type 4) */
    if (out.n >= 4 && out.head[3] != 4)
        __builtin_trap();

    close(sv[1]);
    px_h1_shutdown();
    px_h2_shutdown();
    px_stream_gc(&srv);
    px_stream_freelist_clear();
    while (!cm_list_empty(&up_conns))
        up_free(cm_container_of(up_conns.next, struct up_conn, link));
    if (srv.nconns != 0 || srv.nstreams != 0 || !cm_list_empty(&srv.conns) ||
        !cm_list_empty(&srv.streams) || !cm_list_empty(&srv.gc_streams))
        __builtin_trap();
    return 0;
}
