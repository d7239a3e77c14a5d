#include "proxy/caclient.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "proxy/io.h"
#include "proxy/server.h"

#define CA_TIMEOUT_MS 10000
#define CA_MAX_ANSWER (256 * 1024)

enum ca_state {
    CA_WAIT = 0, /* connecting / handshaking / waiting for the answer */
    CA_DONE      /* callback called; freed from the reap event */
};

struct px_caclient {
    struct px_io *io;
    enum ca_state state;
    px_caclient_cb cb;
    void *arg;
    char *request;
    struct event *reap;
    /* the parsed answer */
    int status;
    struct evbuffer *body;
    bool complete;
};

static void finish(struct px_caclient *c, int status, const char *err)
{
    if (c->state == CA_DONE)
        return;
    c->state = CA_DONE;
    size_t len = evbuffer_get_length(c->body);
    const char *p = len ? (const char *)evbuffer_pullup(c->body, -1) : "";
    if (c->cb != NULL)
        c->cb(status, p, len, err, c->arg);
    event_active(c->reap, EV_TIMEOUT, 0);
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    struct px_caclient *c = arg;
    (void)fd;
    (void)what;
    px_io_free(c->io);
    evbuffer_free(c->body);
    event_free(c->reap);
    free(c->request);
    free(c);
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct px_caclient *c = p->data;
    if (evbuffer_get_length(c->body) + len > CA_MAX_ANSWER)
        return HPE_USER;
    evbuffer_add(c->body, at, len);
    return 0;
}

static int on_complete(llhttp_t *p)
{
    struct px_caclient *c = p->data;
    c->status = p->status_code;
    c->complete = true;
    return 0;
}

/* Parse the whole answer once the server closed (Connection: close). */
static void parse_answer(struct px_caclient *c)
{
    struct evbuffer *in = px_io_input(c->io);
    size_t len = evbuffer_get_length(in);
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_body = on_body;
    s.on_message_complete = on_complete;
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &s);
    p.data = c;
    const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
    llhttp_errno_t e = llhttp_execute(&p, data, len);
    if (e == HPE_OK)
        e = llhttp_finish(&p);
    if (!c->complete || (e != HPE_OK && e != HPE_PAUSED)) {
        finish(c, 0, "CA sent an incomplete or malformed HTTP answer");
        return;
    }
    finish(c, c->status, NULL);
}

static void on_read(struct px_io *io, void *arg)
{
    struct px_caclient *c = arg;
    if (evbuffer_get_length(px_io_input(io)) > CA_MAX_ANSWER + 16384)
        finish(c, 0, "CA answer too large");
}

static void on_event(struct px_io *io, int what, void *arg)
{
    struct px_caclient *c = arg;
    if (c->state == CA_DONE)
        return;
    if (what & PX_IO_HANDSHAKE) {
        px_io_write(io, c->request, strlen(c->request));
        return;
    }
    if (what & PX_IO_CONNECTED) {
        px_io_set_timeout(io, CA_TIMEOUT_MS); /* the connect timer is spent */
        return;
    }
    if (what & PX_IO_EOF) {
        parse_answer(c);
        return;
    }
    char err[700];
    if (what & PX_IO_TIMEOUT)
        snprintf(err, sizeof(err), "CA request timed out");
    else if (px_io_tls_error(io)[0] != '\0')
        snprintf(err, sizeof(err), "CA connection: %s", px_io_tls_error(io));
    else
        snprintf(err, sizeof(err), "CA connection: %s", strerror(px_io_errno(io)));
    finish(c, 0, err);
}

struct px_caclient *px_caclient_post(const struct cm_addr *addr, struct px_tls_conf *conf,
                                     const char *server_name, const char *host, const char *path,
                                     const char *token, const char *body, px_caclient_cb cb,
                                     void *arg)
{
    struct px_io *io = px_io_connect(px_srv->base, addr, CA_TIMEOUT_MS);
    if (io == NULL)
        return NULL;
    struct px_caclient *c = cm_xcalloc(1, sizeof(*c));
    c->io = io;
    c->cb = cb;
    c->arg = arg;
    c->body = evbuffer_new();
    c->reap = event_new(px_srv->base, -1, 0, on_reap, c);
    c->request = cm_xasprintf("POST %s HTTP/1.1\r\nhost: %s\r\nauthorization: Bearer %s\r\n"
                              "content-type: application/json\r\ncontent-length: %zu\r\n"
                              "connection: close\r\n\r\n%s",
                              path, host, token, strlen(body), body);
    px_io_set_read_limit(io, CA_MAX_ANSWER + 32768);
    px_io_setcb(io, on_read, NULL, on_event, c);
    px_io_start_tls(io, conf, server_name);
    px_io_set_timeout(io, CA_TIMEOUT_MS);
    return c;
}

void px_caclient_cancel(struct px_caclient *c)
{
    if (c == NULL || c->state == CA_DONE)
        return;
    /* only called from outside the request's own callbacks (identity
     * shutdown, a newer request): free now, the loop may not turn again */
    on_reap(-1, 0, c);
}
