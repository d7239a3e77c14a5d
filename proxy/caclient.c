/* The CA client (proxy/caclient.h): one px_httpc POST over TLS with the CA's
 * trust; the answer ends at the end of its message (docs/internals/caclient.md). */
#include "proxy/caclient.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "proxy/httpc.h"

#define CA_TIMEOUT_MS 10000
#define CA_MAX_ANSWER (256 * 1024)

struct px_caclient {
    struct px_httpc *req;
    px_caclient_cb cb;
    void *arg;
};

static void on_answer(const struct px_httpc_resp *r, void *arg)
{
    struct px_caclient *c = arg;
    char err[640];
    if (r->status == 0)
        snprintf(err, sizeof(err), "CA connection: %s", r->err);
    c->cb(r->status, r->body->len ? r->body->data : "", r->body->len, r->status == 0 ? err : NULL,
          c->arg);
    free(c); /* the px_httpc frees itself after this returns */
}

struct px_caclient *px_caclient_post(struct event_base *base, const struct cm_addr *addr,
                                     struct px_tls_conf *conf, const char *server_name,
                                     const char *host, const char *path, const char *token,
                                     const char *body, px_caclient_cb cb, void *arg)
{
    char *auth = cm_xasprintf("Bearer %s", token);
    const struct px_httpc_hdr hdrs[] = {{"Authorization", auth},
                                        {"Content-Type", "application/json"}};
    struct px_httpc_req rq = {.addr = addr,
                              .tls = conf,
                              .tls_name = server_name,
                              .method = "POST",
                              .target = path,
                              .host = host,
                              .hdrs = hdrs,
                              .nhdrs = 2,
                              .body = body,
                              .body_len = strlen(body),
                              .timeout_ms = CA_TIMEOUT_MS,
                              .max_body = CA_MAX_ANSWER};
    struct px_caclient *c = cm_xcalloc(1, sizeof(*c));
    c->cb = cb;
    c->arg = arg;
    c->req = px_httpc_start(base, &rq, on_answer, c);
    int e = errno;
    memset(auth, 0, strlen(auth)); /* the token */
    free(auth);
    if (c->req == NULL) {
        free(c);
        errno = e;
        return NULL;
    }
    return c;
}

void px_caclient_cancel(struct px_caclient *c)
{
    if (c == NULL)
        return;
    px_httpc_cancel(c->req);
    free(c);
}
