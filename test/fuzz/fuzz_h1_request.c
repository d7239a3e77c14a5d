/* libFuzzer target for the HTTP/1.1 server codec (proxy/h1_server.c) driven
 * through the real event loop, stream glue and upstream client.
 *
 * Once: a minimal px_srv (event base, px_io, gc event, lists) and a config
 * whose only listener forwards to 127.0.0.1:1, where nothing listens, so
 * every request that reaches the upstream side ends in a local 503.
 *
 * Per input: a connected AF_UNIX socket pair; one end becomes a px_conn
 * handed to px_h1_server_start(), the input is written into the other end
 * in pieces of 1 to 64 bytes (or at once) while the loop runs without
 * blocking, then that end is half-closed (EOF) and the loop runs again. Everything is torn down the
 * way px_server_run does at exit (px_h1_shutdown, px_pool_shutdown, px_stream_gc,
 * px_stream_freelist_clear).
 *
 * Invariants (a violation traps): whatever the proxy writes back starts with
 * "HTTP/1."; after teardown no connection and no stream is left; and
 * LeakSanitizer finds nothing. */
#include <errno.h>
#include <event2/event.h>
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
#include "proxy/pool.h"
#include "proxy/server.h"
#include "proxy/stream.h"
#include "test/fuzz/fuzz_server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] =
    "{\"listeners\": [{\"name\": \"fuzz\", \"address\": \"127.0.0.1:0\","
    " \"direction\": \"outbound\", \"upstream\": \"127.0.0.1:1\"}],"
    " \"limits\": {\"max_header_bytes\": 8192, \"max_headers\": 32,"
    " \"max_request_body\": 100000, \"buffer_bytes\": 16384}}";

static struct px_server srv;
static uint64_t next_id;
static bool dump; /* FUZZ_H1_DUMP=1: say what came back (debugging seeds) */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    cm_log_set_level(CM_LOG_ERROR);
    fuzz_server_start(&srv, config_text, sizeof(config_text) - 1);
    dump = getenv("FUZZ_H1_DUMP") != NULL;
    return 0;
}

/* What the proxy wrote back so far: its first bytes must open a response. */
struct sink {
    char head[96];
    size_t n;
};

static void pump(int fd, struct sink *out, int turns)
{
    char buf[16384];
    for (int i = 0; i < turns; i++) {
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
        ssize_t r;
        while ((r = read(fd, buf, sizeof(buf))) > 0) {
            for (ssize_t k = 0; k < r && out->n < sizeof(out->head); k++)
                out->head[out->n++] = buf[k];
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (size > 1 << 20)
        return 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();

    struct px_conn *c = fuzz_conn_new(&srv, sv[0], PX_PROTO_HTTP1, "127.0.0.1:15001", ++next_id);
    px_h1_server_start(c); /* owns c from here */

    struct sink out = {{0}, 0};
    /* The bytes arrive in pieces, as TCP may cut them: piece sizes come from
     * a PRNG seeded with a hash of the input, so a crash replays exactly. */
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 1099511628211ull;
    bool whole = (h & 3) == 0; /* a quarter of the runs: everything at once */
    size_t off = 0;
    for (int rounds = 0; off < size && rounds < 4000; rounds++) {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        size_t piece = whole ? size - off : 1 + (size_t)(h % 64);
        if (piece > size - off)
            piece = size - off;
        ssize_t w = write(sv[1], data + off, piece);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN)
            break; /* the proxy closed its end */
        pump(sv[1], &out, whole ? 2 : 1);
    }
    pump(sv[1], &out, 4);
    shutdown(sv[1], SHUT_WR);
    pump(sv[1], &out, 4);

    if (dump)
        fprintf(stderr, "fuzz_h1_request: %zu bytes in, out: %.*s\n", size,
                (int)strcspn(out.head, "\r\n"), out.head);
    static const char http1[] = "HTTP/1.";
    size_t cmp = out.n < sizeof(http1) - 1 ? out.n : sizeof(http1) - 1;
    if (memcmp(out.head, http1, cmp) != 0)
        __builtin_trap();

    px_h1_shutdown();
    px_pool_shutdown(); /* the upstream's circuit-breaker record */
    close(sv[1]);
    px_stream_gc(&srv);
    px_stream_freelist_clear();
    if (srv.nconns != 0 || srv.nstreams != 0 || !cm_list_empty(&srv.conns) ||
        !cm_list_empty(&srv.streams) || !cm_list_empty(&srv.gc_streams))
        __builtin_trap();
    return 0;
}
