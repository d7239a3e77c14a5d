/* perf-floor: the cheapest proxy there can be, as a benchmark peer ("floor").
 *
 * Every client connection gets its own upstream connection, and bytes move both
 * ways with one recv and one send each: nothing is parsed, routed, logged or
 * counted. One thread, epoll, level-triggered. What it spends per request is
 * what the kernel's TCP stack charges a proxy for two loopback hops with the
 * syscalls every HTTP/1.1 proxy needs (2 recv + 2 send); no user-space proxy
 * that speaks HTTP over the same sockets can spend less, so its CPU per request
 * is the floor under remora's, haproxy's and nginx's in the same run.
 *
 *   perf-floor LISTEN_PORT UPSTREAM_PORT      (both on 127.0.0.1)
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE   16384
#define MAX_EVENTS 256

/* One socket of a pair; buf holds bytes read from fd that still go to peer. */
struct end {
    int fd;
    struct end *peer;
    size_t off, len;
    uint32_t events; /* registered with epoll */
    bool dead;
    struct end *next_dead;
    char buf[BUF_SIZE];
};

static int ep;
static struct end *dead_list;

static void set_events(struct end *e)
{
    if (e->dead)
        return;
    /* read while our buffer is empty; write while the peer's holds bytes for us */
    uint32_t want = (e->len == 0 ? EPOLLIN : 0) | (e->peer->len > e->peer->off ? EPOLLOUT : 0);
    if (want == e->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = e};
    epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev);
    e->events = want;
}

static void kill_pair(struct end *e)
{
    struct end *ends[2] = {e, e->peer};
    for (int i = 0; i < 2; i++) {
        if (ends[i]->dead)
            continue;
        ends[i]->dead = true;
        epoll_ctl(ep, EPOLL_CTL_DEL, ends[i]->fd, NULL);
        close(ends[i]->fd);
        ends[i]->next_dead = dead_list;
        dead_list = ends[i];
    }
}

/* Send what src read to its peer. */
static void push(struct end *src)
{
    while (src->off < src->len) {
        ssize_t k = send(src->peer->fd, src->buf + src->off, src->len - src->off, MSG_NOSIGNAL);
        if (k > 0) {
            src->off += (size_t)k;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        kill_pair(src);
        return;
    }
    if (src->off == src->len)
        src->off = src->len = 0;
    set_events(src);
    set_events(src->peer);
}

static void on_event(struct end *e, uint32_t what)
{
    if (e->dead)
        return;
    if ((what & EPOLLOUT) && e->peer->len > e->peer->off)
        push(e->peer);
    if (e->dead || !(what & (EPOLLIN | EPOLLHUP | EPOLLERR)) || e->len != 0)
        return;
    ssize_t n = recv(e->fd, e->buf, sizeof(e->buf), 0);
    if (n > 0) {
        e->len = (size_t)n;
        e->off = 0;
        push(e);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        kill_pair(e);
    }
}

static struct end *end_new(int fd)
{
    struct end *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        perror("calloc");
        exit(1);
    }
    e->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return e;
}

static void on_accept(int lfd, int up_port)
{
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0)
            return;
        /* a blocking connect on loopback returns at once; then non-blocking */
        int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in up = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)up_port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (u < 0 || connect(u, (struct sockaddr *)&up, sizeof(up)) != 0) {
            perror("connect to the upstream");
            if (u >= 0)
                close(u);
            close(c);
            continue;
        }
        int fl = fcntl(u, F_GETFL);
        if (fl < 0 || fcntl(u, F_SETFL, fl | O_NONBLOCK) != 0) {
            close(u);
            close(c);
            continue;
        }
        struct end *a = end_new(c), *b = end_new(u);
        a->peer = b;
        b->peer = a;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = a};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        a->events = EPOLLIN;
        ev.data.ptr = b;
        epoll_ctl(ep, EPOLL_CTL_ADD, u, &ev);
        b->events = EPOLLIN;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: perf-floor LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    char *e1, *e2;
    long port = strtol(argv[1], &e1, 10), up_port = strtol(argv[2], &e2, 10);
    if (*e1 != '\0' || *e2 != '\0' || port <= 0 || port > 65535 || up_port <= 0 ||
        up_port > 65535) {
        fprintf(stderr, "perf-floor: bad port\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 4096) != 0) {
        perror("perf-floor: listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                on_accept(lfd, (int)up_port);
            else
                on_event(evs[i].data.ptr, evs[i].events);
        }
        while (dead_list != NULL) {
            struct end *d = dead_list;
            dead_list = d->next_dead;
            free(d);
        }
    }
}
