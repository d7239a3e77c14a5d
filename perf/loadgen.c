/* perf-load: a fixed-rate HTTP load generator for perf/bench.sh (wrk has no
 * fixed-rate mode; h2load's --rps fires every connection on the same tick).
 *
 *   perf-load -a 127.0.0.1:PORT [-p PATH] [-H HOST] [-c CONNS] -r RATE -d SECONDS
 *             [-2] [-t TIMEOUT_MS] [-l LOGFILE]
 *
 * CONNS connections (HTTP/1.1 keep-alive, or h2c prior knowledge with -2) are
 * opened first; then request k of connection i is due at
 *     t0 + (i + k * CONNS) / RATE
 * so the sends are spread evenly over time (staggered connections), not in
 * bursts. Latency runs from the *intended* send time to the end of the
 * response, so a stalled proxy cannot hide its stall by delaying the next
 * sends (no coordinated omission). An HTTP/1.1 connection whose previous
 * request is still out queues the due one; h2c opens a new stream at once.
 *
 * A failure (connection refused, reset, timeout, 5xx is NOT a failure here:
 * the status is recorded) has status 0. A broken connection fails what was in
 * flight on it and is reopened.
 *
 * stdout, one line of key=value: sent ok non2xx fail rps p50_us p90_us p99_us
 * p999_us max_us mean_us t0_us (CLOCK_REALTIME of t0, to line up with events
 * the caller records). -l writes one line per request: intended start
 * (microseconds after t0), status, latency in microseconds. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <getopt.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_INFLIGHT 256 /* per connection: due requests not yet answered */

struct req {
    uint64_t due_us; /* intended send time, after t0 */
    int32_t stream;  /* h2 stream id */
    int status;
};

struct conn {
    int idx;
    struct bufferevent *bev;
    bool connected;
    llhttp_t parser;
    bool keepalive; /* the last response allows another request (read at its end) */
    nghttp2_session *ng;
    uint64_t q[MAX_INFLIGHT]; /* ring of due times not sent yet: [head, head + n) */
    unsigned head, n;
    struct req fl[MAX_INFLIGHT]; /* sent, not answered (h1: at most one) */
    unsigned nfl;
    uint64_t next_k;     /* next request number of this connection */
    struct event *tick;  /* the schedule */
    struct event *retry; /* reconnect after a failure */
};

static struct {
    struct sockaddr_in addr;
    const char *path, *host;
    int conns;
    double rate, duration;
    bool h2;
    uint64_t timeout_us;
    FILE *log;
} opt = {.path = "/", .conns = 100, .rate = 1000, .duration = 10, .timeout_us = 5000000};

static struct event_base *base;
static struct conn *conns;
static uint64_t t0_mono_us, t0_real_us;
static uint64_t total_planned, done_count, sent_count, ok_count, non2xx_count, fail_count;
static uint32_t *lat; /* latency of every finished request, microseconds */
static size_t nlat, caplat;
static int nconnected;
static bool started;

static uint64_t now_us(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t rel_now(void)
{
    return now_us(CLOCK_MONOTONIC) - t0_mono_us;
}

static uint64_t due_of(int i, uint64_t k)
{
    return (uint64_t)(((double)i + (double)k * opt.conns) * 1e6 / opt.rate);
}

static void conn_open(struct conn *c);
static void schedule(struct conn *c);
static void pump(struct conn *c);

static void finish(struct req *r, int status)
{
    uint64_t now = rel_now();
    uint64_t l = now > r->due_us ? now - r->due_us : 0;
    if (nlat < caplat)
        lat[nlat++] = l > UINT32_MAX ? UINT32_MAX : (uint32_t)l;
    if (status == 0)
        fail_count++;
    else if (status >= 200 && status < 300)
        ok_count++;
    else
        non2xx_count++;
    if (opt.log != NULL)
        fprintf(opt.log, "%llu\t%d\t%llu\n", (unsigned long long)r->due_us, status,
                (unsigned long long)l);
    done_count++;
    if (done_count == total_planned)
        event_base_loopbreak(base);
}

/* Request fl[i] is over: record it, fill the hole with the last one. */
static void complete(struct conn *c, unsigned i, int status)
{
    finish(&c->fl[i], status);
    c->fl[i] = c->fl[--c->nfl];
}

/* The connection broke: every request sent on it fails, it is reopened. */
static void conn_fail(struct conn *c)
{
    if (c->ng != NULL) {
        nghttp2_session_del(c->ng);
        c->ng = NULL;
    }
    while (c->nfl > 0)
        complete(c, 0, 0);
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->connected)
        nconnected--;
    c->connected = false;
    struct timeval tv = {0, 10000};
    evtimer_add(c->retry, &tv);
}

/* ---- HTTP/1.1 ---------------------------------------------------------------------------- */

static int h1_on_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    /* only valid here: llhttp resets its flags for the next message */
    c->keepalive = llhttp_should_keep_alive(p);
    if (c->nfl > 0)
        complete(c, 0, p->status_code);
    return 0;
}

static llhttp_settings_t h1_settings;

static void h1_send(struct conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: perf-load\r\n\r\n",
                        opt.path, opt.host);
}

/* ---- h2c --------------------------------------------------------------------------------- */

static ssize_t h2_send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    struct conn *c = arg;
    (void)s;
    (void)flags;
    if (evbuffer_add(bufferevent_get_output(c->bev), data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

static int h2_find(struct conn *c, int32_t id)
{
    for (unsigned i = 0; i < c->nfl; i++)
        if (c->fl[i].stream == id)
            return (int)i;
    return -1;
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *arg)
{
    struct conn *c = arg;
    (void)s;
    (void)flags;
    if (f->hd.type != NGHTTP2_HEADERS || namelen != 7 || memcmp(name, ":status", 7) != 0)
        return 0;
    int i = h2_find(c, f->hd.stream_id);
    if (i >= 0 && valuelen == 3)
        c->fl[i].status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *arg)
{
    struct conn *c = arg;
    (void)s;
    int i = h2_find(c, id);
    if (i >= 0)
        complete(c, (unsigned)i, code == NGHTTP2_NO_ERROR ? c->fl[i].status : 0);
    return 0;
}

static void h2_setup(struct conn *c)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, h2_send_cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    nghttp2_session_client_new(&c->ng, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, 1 << 24);
    nghttp2_session_send(c->ng);
}

static void h2_send(struct conn *c, struct req *r)
{
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nva[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":authority", opt.host),
                        NV(":path", opt.path), NV("user-agent", "perf-load")};
#undef NV
    r->stream = nghttp2_submit_request(c->ng, NULL, nva, sizeof(nva) / sizeof(nva[0]), NULL, c);
}

/* ---- connection ---------------------------------------------------------------------------- */

/* Send what is due and may go: h1 one at a time, h2 all of them. */
static void pump(struct conn *c)
{
    if (!c->connected)
        return;
    while (c->n > 0 && (opt.h2 ? c->nfl < MAX_INFLIGHT : c->nfl == 0)) {
        struct req *r = &c->fl[c->nfl++];
        *r = (struct req){.due_us = c->q[c->head]};
        c->head = (c->head + 1) % MAX_INFLIGHT;
        c->n--;
        sent_count++;
        if (opt.h2)
            h2_send(c, r);
        else
            h1_send(c);
    }
    if (c->ng != NULL && nghttp2_session_send(c->ng) != 0)
        conn_fail(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len;
    while ((len = evbuffer_get_contiguous_space(in)) > 0) {
        const char *data = (const char *)evbuffer_pullup(in, (ssize_t)len);
        if (opt.h2) {
            if (nghttp2_session_mem_recv(c->ng, (const uint8_t *)data, len) < 0) {
                conn_fail(c);
                return;
            }
        } else if (llhttp_execute(&c->parser, data, len) != HPE_OK) {
            conn_fail(c);
            return;
        }
        evbuffer_drain(in, len);
    }
    if (opt.h2 && !nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) {
        conn_fail(c); /* GOAWAY and nothing left: reopen */
        return;
    }
    if (!opt.h2 && c->nfl == 0 && !c->keepalive) {
        conn_fail(c); /* the server closes after this response: reopen */
        return;
    }
    pump(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->connected = true;
        nconnected++;
        if (opt.h2)
            h2_setup(c);
        else {
            llhttp_init(&c->parser, HTTP_RESPONSE, &h1_settings);
            c->parser.data = c;
            c->keepalive = true;
        }
        if (!started && nconnected == opt.conns)
            event_base_loopbreak(base); /* everyone is up: start the clock */
        pump(c);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        conn_fail(c);
}

static void conn_open(struct conn *c)
{
    c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&opt.addr, sizeof(opt.addr)) != 0)
        conn_fail(c);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    /* nothing listens: the oldest due request fails rather than waiting forever */
    if (c->n > 0 && started && rel_now() - c->q[c->head] > opt.timeout_us) {
        struct req r = {.due_us = c->q[c->head]};
        finish(&r, 0);
        c->head = (c->head + 1) % MAX_INFLIGHT;
        c->n--;
    }
    conn_open(c);
}

/* The schedule: enqueue every request that is due, time out the oldest, re-arm. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    uint64_t now = rel_now();
    uint64_t limit = (uint64_t)(opt.duration * 1e6);
    while (true) {
        uint64_t due = due_of(c->idx, c->next_k);
        if (due > now || due >= limit)
            break;
        if (c->n == MAX_INFLIGHT) { /* hopelessly behind: count it failed */
            struct req r = {.due_us = due};
            finish(&r, 0);
        } else {
            c->q[(c->head + c->n) % MAX_INFLIGHT] = due;
            c->n++;
        }
        c->next_k++;
    }
    for (unsigned i = 0; i < c->nfl; i++) {
        if (now - c->fl[i].due_us > opt.timeout_us) {
            conn_fail(c); /* a request took too long: fail it (and the others in flight) */
            break;
        }
    }
    pump(c);
    schedule(c);
}

static void schedule(struct conn *c)
{
    uint64_t due = due_of(c->idx, c->next_k), now = rel_now();
    uint64_t limit = (uint64_t)(opt.duration * 1e6);
    uint64_t wait = due > now ? due - now : 0;
    if (due >= limit) {
        if (c->n == 0 && c->nfl == 0)
            return;
        wait = 100000; /* keep checking the timeout of what is out */
    }
    struct timeval tv = {(time_t)(wait / 1000000), (suseconds_t)(wait % 1000000)};
    evtimer_add(c->tick, &tv);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(double q)
{
    if (nlat == 0)
        return 0;
    size_t i = (size_t)(q * (double)nlat);
    if ((double)i < q * (double)nlat)
        i++;
    if (i < 1)
        i = 1;
    return lat[(i > nlat ? nlat : i) - 1];
}

static void usage(void)
{
    fprintf(stderr, "usage: perf-load -a IP:PORT [-p PATH] [-H HOST] [-c CONNS] -r RATE"
                    " -d SECONDS [-2] [-t TIMEOUT_MS] [-l LOGFILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *logf = NULL;
    int ch;
    while ((ch = getopt(argc, argv, "a:p:H:c:r:d:2t:l:")) != -1) {
        switch (ch) {
        case 'a':
            addr = optarg;
            break;
        case 'p':
            opt.path = optarg;
            break;
        case 'H':
            opt.host = optarg;
            break;
        case 'c':
            opt.conns = (int)strtol(optarg, NULL, 10);
            break;
        case 'r':
            opt.rate = strtod(optarg, NULL);
            break;
        case 'd':
            opt.duration = strtod(optarg, NULL);
            break;
        case '2':
            opt.h2 = true;
            break;
        case 't':
            opt.timeout_us = (uint64_t)strtoul(optarg, NULL, 10) * 1000u;
            break;
        case 'l':
            logf = optarg;
            break;
        default:
            usage();
        }
    }
    char ip[64];
    const char *colon = addr != NULL ? strrchr(addr, ':') : NULL;
    if (colon == NULL || (size_t)(colon - addr) >= sizeof(ip) || opt.conns < 1 || opt.rate <= 0 ||
        opt.duration <= 0)
        usage();
    memcpy(ip, addr, (size_t)(colon - addr));
    ip[colon - addr] = '\0';
    opt.addr.sin_family = AF_INET;
    opt.addr.sin_port = htons((uint16_t)strtol(colon + 1, NULL, 10));
    if (inet_pton(AF_INET, ip, &opt.addr.sin_addr) != 1)
        usage();
    if (opt.host == NULL)
        opt.host = addr;
    if (logf != NULL && (opt.log = fopen(logf, "w")) == NULL) {
        perror(logf);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    total_planned = 0;
    for (int i = 0; i < opt.conns; i++)
        for (uint64_t k = 0; due_of(i, k) < (uint64_t)(opt.duration * 1e6); k++)
            total_planned++;
    caplat = total_planned;
    lat = calloc(caplat ? caplat : 1, sizeof(*lat));
    conns = calloc((size_t)opt.conns, sizeof(*conns));
    if (lat == NULL || conns == NULL)
        return 1;
    llhttp_settings_init(&h1_settings);
    h1_settings.on_message_complete = h1_on_complete;
    /* timerfd-backed timers: epoll's millisecond timeouts would make every send up to
     * 1 ms late, and that lateness would count as latency */
    struct event_config *ecfg = event_config_new();
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);
    if (base == NULL)
        return 1;

    /* connect everyone first; the clock starts when all are up (or after 5 s) */
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        c->idx = i;
        c->tick = evtimer_new(base, on_tick, c);
        c->retry = evtimer_new(base, on_retry, c);
        conn_open(c);
    }
    struct event *guard = evtimer_new(base, on_guard, base);
    struct timeval five = {5, 0};
    evtimer_add(guard, &five);
    event_base_dispatch(base);
    event_free(guard);
    if (nconnected < opt.conns)
        fprintf(stderr, "perf-load: only %d of %d connections up; starting anyway\n", nconnected,
                opt.conns);
    started = true;
    t0_mono_us = now_us(CLOCK_MONOTONIC);
    t0_real_us = now_us(CLOCK_REALTIME);
    for (int i = 0; i < opt.conns; i++)
        schedule(&conns[i]);
    if (total_planned > 0)
        event_base_dispatch(base);
    double wall = (double)rel_now() / 1e6;

    qsort(lat, nlat, sizeof(*lat), cmp_u32);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++)
        sum += lat[i];
    printf("sent=%llu ok=%llu non2xx=%llu fail=%llu rps=%.1f p50_us=%u p90_us=%u p99_us=%u "
           "p999_us=%u max_us=%u mean_us=%.0f t0_us=%llu\n",
           (unsigned long long)sent_count, (unsigned long long)ok_count,
           (unsigned long long)non2xx_count, (unsigned long long)fail_count,
           wall > 0 ? (double)done_count / wall : 0.0, pct(0.50), pct(0.90), pct(0.99), pct(0.999),
           nlat ? lat[nlat - 1] : 0, nlat ? sum / (double)nlat : 0.0,
           (unsigned long long)t0_real_us);
    if (opt.log != NULL)
        fclose(opt.log);
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (c->ng != NULL)
            nghttp2_session_del(c->ng);
        if (c->bev != NULL)
            bufferevent_free(c->bev);
        event_free(c->tick);
        event_free(c->retry);
    }
    free(conns);
    free(lat);
    event_base_free(base);
    return 0;
}
