/* test-upstream --listen ADDR [--h2] [--h2-window BYTES] [--name NAME]
 *
 * Binds ADDR (port 0 picks one), prints "listening on 127.0.0.1:PORT" on stdout once bound,
 * serves HTTP/1.1 (or, with --h2, h2c prior knowledge; --h2-window sets the stream window it
 * announces) until SIGTERM / SIGINT, then frees everything and exits 0. Endpoints: see
 * upstream.h. */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/net.h"
#include "test/upstream/upstream.h"

static void usage(void)
{
    fprintf(stderr,
            "usage: test-upstream --listen HOST:PORT [--h2] [--h2-window BYTES] [--name NAME]\n"
            "       [--log-level error|warn|info|debug|trace]\n");
    exit(2);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct tu_server *srv = arg;
    int one = 1;
    (void)l;
    (void)sa;
    (void)salen;
    /* latency tests: never wait for Nagle */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (srv->h2)
        tu_h2_accept(srv, fd);
    else
        tu_h1_accept(srv, fd);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct tu_server *srv = arg;
    (void)what;
    cm_info("signal %d: exiting", (int)sig);
    event_base_loopbreak(srv->base);
}

int main(int argc, char **argv)
{
    struct tu_server srv = {.name = "upstream", .h2_window = 1u << 20};
    const char *listen_s = NULL;
    struct cm_addr addr;
    char buf[CM_ADDR_STRLEN];

    cm_log_set_component("test-upstream");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen_s = argv[++i];
        } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
            srv.name = argv[++i];
        } else if (strcmp(argv[i], "--h2") == 0) {
            srv.h2 = true;
        } else if (strcmp(argv[i], "--h2-window") == 0 && i + 1 < argc) {
            /* small windows keep the proxy's h2 client waiting on WINDOW_UPDATE */
            char *end;
            errno = 0;
            unsigned long w = strtoul(argv[++i], &end, 10);
            if (errno != 0 || *end != '\0' || end == argv[i] || w > 0x7fffffffUL)
                usage();
            srv.h2_window = (uint32_t)w;
        } else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            enum cm_log_level lvl;
            if (cm_log_level_parse(argv[++i], &lvl) != 0)
                usage();
            cm_log_set_level(lvl);
        } else {
            usage();
        }
    }
    if (listen_s == NULL)
        usage();
    if (cm_addr_parse(listen_s, &addr) != 0) {
        fprintf(stderr, "test-upstream: bad --listen address '%s'\n", listen_s);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    tu_pattern_init();
    cm_list_init(&srv.conns);
    srv.base = event_base_new();
    if (srv.base == NULL)
        return 1;
    int fd = cm_net_listen(&addr, 1024);
    if (fd < 0) {
        perror("test-upstream: listen");
        event_base_free(srv.base);
        return 1;
    }
    struct evconnlistener *l =
        evconnlistener_new(srv.base, on_accept, &srv, LEV_OPT_CLOSE_ON_FREE, -1, fd);
    struct event *sigterm = evsignal_new(srv.base, SIGTERM, on_signal, &srv);
    struct event *sigint = evsignal_new(srv.base, SIGINT, on_signal, &srv);
    if (l == NULL || sigterm == NULL || sigint == NULL)
        return 1;
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    if (cm_net_local_addr(fd, &addr) != 0)
        return 1;
    printf("listening on %s\n", cm_addr_format(&addr, buf, sizeof(buf)));
    fflush(stdout);

    event_base_dispatch(srv.base);

    evconnlistener_free(l);
    if (srv.h2)
        tu_h2_free_all(&srv);
    else
        tu_h1_free_all(&srv);
    event_free(sigterm);
    event_free(sigint);
    event_base_free(srv.base);
    libevent_global_shutdown();
    return 0;
}
