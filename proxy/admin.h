/* Admin API on admin.address (plain HTTP for curl), served with libevent's
 * evhttp on the proxy's event loop. Endpoints: docs/contract.md "Admin API". */
#ifndef PX_ADMIN_H
#define PX_ADMIN_H

#include <event2/event.h>

#include "common/net.h"

struct px_admin;
struct px_server;

/* Bind and serve on srv's loop; the built-in endpoints read and drain srv.
 * Returns 0 and *out, or CM_ERR_IO with *errmsg. */
int px_admin_start(struct px_server *srv, const struct cm_addr *addr, struct px_admin **out,
                   char **errmsg);
/* The bound address (port 0 in the config resolves to a real port). */
void px_admin_local_addr(const struct px_admin *a, struct cm_addr *out);
void px_admin_free(struct px_admin *a);

/* ---- Endpoints added by other modules -----------------------------------
 * The built-in endpoints (/ready, /stats, /metrics, /config_dump, /logging,
 * /drain, /quitquitquit) are registered through the same table, so a later
 * module (certs, policy, clusters) adds its own with px_admin_route() and
 * admin.c never changes. Until someone registers them, GET /certs,
 * GET /policy, POST /policy/reload and GET /clusters answer 404
 * {"error": "<path>: not configured"}. */
struct evhttp_request;
struct evkeyvalq;
struct evbuffer;

enum px_admin_method {
    PX_ADMIN_GET = 1, /* GET (the admin server refuses HEAD and the rest: 405) */
    PX_ADMIN_POST = 2 /* POST */
};

/* Answers one request: appends the body to `out` and returns the HTTP status.
 * The answer is sent as application/json unless the handler sets another
 * Content-Type in evhttp_request_get_output_headers(req). `query` is the
 * decoded query string (evhttp_find_header(query, "level")). */
typedef int (*px_admin_handler)(struct evhttp_request *req, const struct evkeyvalq *query,
                                struct evbuffer *out, void *arg);

/* Serve `method path` (exact path, e.g. "/policy/reload") with fn(arg); a
 * second registration of the same method and path replaces the first, and
 * fn == NULL removes it (a module freed before the admin server must).
 * `path` is copied; `arg` is borrowed. `a` may be NULL (no admin.address
 * configured): nothing to do, returns 0. Returns 0, or CM_ERR_INVAL on a
 * path not starting with '/'. */
int px_admin_route(struct px_admin *a, enum px_admin_method method, const char *path,
                   px_admin_handler fn, void *arg);

/* Helpers for handlers. px_admin_reply_json appends `doc` as JSON to out
 * and drops the reference (doc may be NULL: "{}"); px_admin_reply_error
 * appends {"error": "<message>"} and returns `status`, so a handler can
 * `return px_admin_reply_error(out, 400, "bad level %s", s);`. */
struct json_t;
void px_admin_reply_json(struct evbuffer *out, struct json_t *doc);
int px_admin_reply_error(struct evbuffer *out, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
