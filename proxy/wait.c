/* `remora-proxy wait` (proxy/health.h): block until the health port says
 * ready, or (--drain) idle. Each poll is one px_httpc GET run to its end on a
 * private event loop: the command blocks, the proxy's loop is not involved. */
#include "proxy/health.h"

#include <errno.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "proxy/health_int.h"
#include "proxy/httpc.h"
#include "proxy/io.h"

/* ---- remora-proxy wait ---------------------------------------------------------- */

struct once {
    bool done;
    int status;
};

static void on_status(const struct px_httpc_resp *r, void *arg)
{
    struct once *o = arg;
    o->done = true;
    o->status = r->status;
}

/* One GET of `path` (/healthz/ready, /healthz/idle) on px_httpc, run to its
 * end on a private event loop (bounded: 1 s); the status, or 0 when there was
 * none. */
static int status_once(const struct cm_addr *addr, const char *path)
{
    struct event_base *base = event_base_new();
    if (base == NULL)
        return 0;
    px_io_init(base);
    const struct px_httpc_hdr ua[] = {{"User-Agent", "remora-proxy-wait"}};
    struct px_httpc_req rq = {.addr = addr,
                              .method = "GET",
                              .target = path,
                              .host = "localhost",
                              .hdrs = ua,
                              .nhdrs = 1,
                              .timeout_ms = 1000,
                              .status_only = true};
    struct once o = {0};
    if (px_httpc_start(base, &rq, on_status, &o) != NULL) {
        while (!o.done && event_base_loop(base, EVLOOP_ONCE) == 0)
            ;
        event_base_loop(base, EVLOOP_NONBLOCK); /* the request frees itself */
    }
    px_io_deinit();
    event_base_free(base);
    return o.status;
}

/* issue 14: `remora-proxy wait --drain [--timeout-ms MS]`, the classic
 * sidecar's preStop. kubelet sends SIGTERM to the app at once and to the proxy
 * only when this returns: until then the proxy listens and serves as usual.
 * Returns once /healthz/idle said 200 twice in a row (nothing in flight), the
 * health port stops answering (the proxy is gone), or at the timeout; exit 0
 * in every case (kubelet goes on with SIGTERM either way; the reason is on
 * stderr). */
static int drain_wait(const struct cm_addr *addr, long timeout_ms)
{
    long start = (long)cm_mono_ms(), now;
    int idle = 0, silent = 0, last = 0;
    char a[CM_ADDR_STRLEN];
    cm_addr_format(addr, a, sizeof(a));
    for (;;) {
        last = status_once(addr, "/healthz/idle");
        idle = last == 200 ? idle + 1 : 0;
        silent = last == 0 ? silent + 1 : 0;
        now = (long)cm_mono_ms();
        if (idle >= 2) {
            fprintf(stderr, "remora-proxy wait --drain: nothing in flight after %ld ms\n",
                    now - start);
            return 0;
        }
        if (silent >= 3) {
            fprintf(stderr, "remora-proxy wait --drain: %s does not answer: nothing to wait for\n",
                    a);
            return 0;
        }
        if (now - start >= timeout_ms)
            break;
        long pause_ms = 200;
        if (timeout_ms - (now - start) < pause_ms)
            pause_ms = timeout_ms - (now - start);
        struct timespec pause = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    fprintf(stderr,
            "remora-proxy wait --drain: still busy after %ld ms (last %d from %s/healthz/idle); "
            "the proxy gets its SIGTERM now\n",
            timeout_ms, last, a);
    return 0;
}

int px_health_wait_main(int argc, char **argv)
{
    long timeout_s = -1, timeout_ms = -1;
    bool drain = false;
    struct cm_addr addr;
    cm_addr_parse("127.0.0.1:15020", &addr);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--drain") == 0) {
            drain = true;
            continue;
        }
        if (strcmp(a, "--timeout-ms") == 0 && i + 1 < argc) {
            const char *v = argv[++i];
            char *end = NULL;
            errno = 0;
            timeout_ms = strtol(v, &end, 10);
            if (errno != 0 || end == v || *end != '\0' || timeout_ms < 0 || timeout_ms > 86400000) {
                fprintf(stderr,
                        "remora-proxy wait: --timeout-ms: \"%s\" is not a number of "
                        "milliseconds (0..86400000)\n",
                        v);
                return 2;
            }
            continue;
        }
        if ((strcmp(a, "--timeout") == 0 || strcmp(a, "--address") == 0) && i + 1 < argc) {
            const char *v = argv[++i];
            if (a[2] == 't') {
                char *end = NULL;
                errno = 0;
                timeout_s = strtol(v, &end, 10);
                if (errno != 0 || end == v || *end != '\0' || timeout_s < 0 || timeout_s > 86400) {
                    fprintf(stderr,
                            "remora-proxy wait: --timeout: \"%s\" is not a number of "
                            "seconds (0..86400)\n",
                            v);
                    return 2;
                }
            } else if (cm_addr_parse(v, &addr) != 0) {
                fprintf(stderr, "remora-proxy wait: --address: \"%s\" is not ip:port\n", v);
                return 2;
            }
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("usage: remora-proxy wait [--timeout SECONDS] [--address IP:PORT]\n"
                   "       remora-proxy wait --drain [--timeout-ms MS] [--address IP:PORT]\n");
            return 0;
        } else {
            fprintf(stderr, "remora-proxy wait: unknown or incomplete flag \"%s\"\n", a);
            return 2;
        }
    }
    if (drain) /* default 5 s, the injector's terminationDrainDuration */
        return drain_wait(&addr, timeout_ms >= 0  ? timeout_ms
                                 : timeout_s >= 0 ? timeout_s * 1000
                                                  : 5000);
    if (timeout_ms >= 0)
        timeout_s = (timeout_ms + 999) / 1000;
    if (timeout_s < 0)
        timeout_s = 60;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int last = 0;
    for (;;) {
        last = status_once(&addr, "/healthz/ready");
        if (last == 200)
            return 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= timeout_s)
            break;
        struct timespec pause = {0, 200 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    char a[CM_ADDR_STRLEN];
    fprintf(stderr, "remora-proxy wait: %s/healthz/ready not 200 after %ld s (last: %d)\n",
            cm_addr_format(&addr, a, sizeof(a)), timeout_s, last);
    return 1;
}
