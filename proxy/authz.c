/* Authorization on inbound listeners (proxy/authz.h, docs/policy.md): holds the
 * compiled policy in force, decides each request head with proxy/policy_*.c,
 * answers denials, and reloads the policy file on SIGHUP, on POST
 * /policy/reload, and when the file changes.
 *
 * Snapshots. A reload builds and validates a whole new px_policy before it
 * replaces the old one, so a bad file never replaces a good one. The old
 * policy is freed at once: a request is decided in one call at its head, on
 * the event loop thread, and nothing keeps a pointer into the policy after
 * px_authz_check() returns; requests in flight therefore finish under the
 * policy that admitted them, without reference counting.
 *
 * The file watch (proxy/watch.h) polls stat() of the configured path every
 * second and compares what common/watch.h calls a change (device, inode,
 * size, mtime, ctime of what it resolves to, or a failed stat()). Kubernetes
 * updates a mounted ConfigMap by swapping the `..data` symlink of the volume
 * atomically: the path we watch never changes, but stat() follows the links
 * to a new inode. Polling needs no inotify bookkeeping across those swaps and
 * also catches in-place edits, renames over the file, and a file that goes
 * away and comes back. A half-written file fails to load, keeps the last good
 * policy, and is read again at the next change. */
#include "proxy/authz.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "proxy/admin.h"
#include "proxy/conn.h"
#include "proxy/metrics.h"
#include "proxy/policy.h"
#include "proxy/server.h"
#include "proxy/trace.h"
#include "proxy/watch.h"

struct px_authz {
    struct px_admin *admin;   /* where GET /policy is registered, or NULL */
    char *file;               /* policy_file, or NULL: no authorization step */
    struct px_policy *policy; /* in force; NULL only without policy_file */
    struct px_watch watch;    /* the file as last read (or found missing), last_error */
    int64_t loaded_at_ms;     /* when the policy in force was loaded */
    int64_t attempt_at_ms;    /* the last load attempt, good or bad */
    uint64_t loads, failures;
};

bool px_authz_metrics_source_principal(const struct px_authz *az)
{
    return az != NULL && px_policy_metrics_source_principal(az->policy);
}

static void set_error(struct px_authz *az, const char *msg)
{
    if (msg != NULL)
        cm_watch_set_error(&az->watch.files, "%s", msg);
    else
        cm_watch_set_error(&az->watch.files, NULL);
}

/* Read, compile and install the file. On failure the policy in force stays,
 * last_error says why, and *errmsg gets the message (caller frees). */
static int load(struct px_authz *az, const char *trigger, char **errmsg)
{
    /* before reading: a change during the read is seen next tick */
    cm_watch_poll(&az->watch.files);
    az->attempt_at_ms = cm_wall_ms();
    struct px_policy *p = NULL;
    if (px_policy_load_file(az->file, &p, errmsg) != 0) {
        set_error(az, *errmsg);
        az->failures++;
        return CM_ERR_INVAL;
    }
    px_policy_free(az->policy);
    az->policy = p;
    az->loaded_at_ms = az->attempt_at_ms;
    az->loads++;
    set_error(az, NULL);
    cm_info("policy: %s: loaded %s: %zu rules (%zu allow, %zu deny), default %s, mode %s", trigger,
            az->file, px_policy_nrules(p), px_policy_nallow(p), px_policy_ndeny(p),
            px_policy_default_deny(p) ? "deny" : "allow",
            px_policy_mode(p) == PX_POLICY_AUDIT ? "audit" : "enforce");
    return 0;
}

static void on_watch(void *arg, bool gone)
{
    struct px_authz *az = arg;
    if (gone) { /* gone (or unreadable): keep enforcing what we have; said once */
        az->failures++;
        return;
    }
    char *err = NULL;
    if (load(az, "file changed", &err) != 0)
        cm_warn("policy: reload after a file change failed, keeping the last good policy: %s", err);
    free(err);
}

int px_authz_start(struct px_server *srv, char **errmsg)
{
    srv->authz = NULL;
    if (srv->cfg->policy_file == NULL)
        return 0;
    struct px_authz *az = cm_xcalloc(1, sizeof(*az));
    az->file = cm_xstrdup(srv->cfg->policy_file);
    const char *path = az->file;
    px_watch_start(&az->watch, "policy", srv->base, &path, 1, on_watch, az);
    if (load(az, "startup", errmsg) != 0) {
        px_authz_free(az);
        return CM_ERR_INVAL;
    }
    srv->authz = az;
    return 0;
}

int px_authz_reload(struct px_authz *az, char **errmsg)
{
    if (az == NULL)
        return 0;
    return load(az, "reload", errmsg);
}

/* ---- admin ------------------------------------------------------------------------ */

static json_t *time_or_null(int64_t ms)
{
    char ts[40];
    return ms > 0 ? json_string(cm_fmt_rfc3339_ms(ms, ts, sizeof(ts))) : json_null();
}

/* GET /policy: the policy in force (its source document) and the reload state. */
static json_t *summary(const struct px_authz *az)
{
    const struct px_policy *p = az->policy;
    json_t *o = json_object();
    json_object_set_new(o, "file", json_string(az->file));
    json_object_set_new(o, "mode",
                        json_string(px_policy_mode(p) == PX_POLICY_AUDIT ? "audit" : "enforce"));
    json_object_set_new(o, "default", json_string(px_policy_default_deny(p) ? "deny" : "allow"));
    json_object_set_new(o, "rules", json_integer((json_int_t)px_policy_nrules(p)));
    json_object_set_new(o, "allow_rules", json_integer((json_int_t)px_policy_nallow(p)));
    json_object_set_new(o, "deny_rules", json_integer((json_int_t)px_policy_ndeny(p)));
    json_object_set_new(o, "loaded_at", time_or_null(az->loaded_at_ms));
    json_object_set_new(o, "last_attempt_at", time_or_null(az->attempt_at_ms));
    const char *last_error = cm_watch_last_error(&az->watch.files);
    json_object_set_new(o, "last_error", last_error ? json_string(last_error) : json_null());
    json_object_set_new(o, "loads", json_integer((json_int_t)az->loads));
    json_object_set_new(o, "load_failures", json_integer((json_int_t)az->failures));
    json_object_set(o, "policy", px_policy_source(p));
    return o;
}

static int on_get_policy(struct evhttp_request *req, const struct evkeyvalq *query,
                         struct evbuffer *out, void *arg)
{
    (void)req;
    (void)query;
    px_admin_reply_json(out, summary(arg));
    return 200;
}

static int on_reload(struct evhttp_request *req, const struct evkeyvalq *query,
                     struct evbuffer *out, void *arg)
{
    struct px_authz *az = arg;
    (void)req;
    (void)query;
    char *err = NULL;
    if (load(az, "POST /policy/reload", &err) != 0) {
        cm_warn("policy: POST /policy/reload failed, keeping the last good policy: %s", err);
        int status = px_admin_reply_error(out, 400, "%s", err);
        free(err);
        return status;
    }
    px_admin_reply_json(out, summary(az));
    return 200;
}

void px_authz_admin_routes(struct px_authz *az, struct px_admin *admin)
{
    if (az == NULL || admin == NULL)
        return;
    az->admin = admin;
    px_admin_route(admin, PX_ADMIN_GET, "/policy", on_get_policy, az);
    px_admin_route(admin, PX_ADMIN_POST, "/policy/reload", on_reload, az);
}

void px_authz_free(struct px_authz *az)
{
    if (az != NULL) {
        if (az->admin != NULL) {
            px_admin_route(az->admin, PX_ADMIN_GET, "/policy", NULL, NULL);
            px_admin_route(az->admin, PX_ADMIN_POST, "/policy/reload", NULL, NULL);
        }
        px_watch_stop(&az->watch);
        px_policy_free(az->policy);
        free(az->file);
        free(az);
    }
    px_policy_metrics_reset();
}

/* ---- deciding ---------------------------------------------------------------------- */

/* Untrusted text for one log line: printable ASCII, bounded. */
static const char *loggable(const char *s, char *buf, size_t len)
{
    size_t o = 0;
    if (s == NULL)
        return "-";
    for (; *s != '\0' && o + 4 < len; s++)
        buf[o++] = ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f) ? *s : '?';
    if (*s != '\0') {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

/* The app gets the path the policy decided on (Envoy's normalize_path and
 * merge_slashes): "//admin/x" goes upstream as "/admin/x", the query kept. Only
 * origin-form targets are rewritten; "*" and absolute-form are left to the codecs. */
static void send_decided_path(struct px_stream *s, const struct px_policy_decision *d)
{
    const char *old = s->req.path;
    if (d->path == NULL || old == NULL || old[0] != '/')
        return;
    size_t plen = strcspn(old, "?");
    if (plen == d->pathlen && memcmp(old, d->path, plen) == 0)
        return;
    size_t qlen = strlen(old + plen);
    char *np = px_arena_alloc(&s->arena, d->pathlen + qlen + 1);
    memcpy(np, d->path, d->pathlen);
    memcpy(np + d->pathlen, old + plen, qlen + 1);
    s->req.path = np;
}

/* The decision proper, out of line: without a policy the check below costs a
 * few loads, not this function's frame. */
static __attribute__((noinline)) bool check(const struct px_authz *az, struct px_stream *s)
{
    const struct px_conn *c = s->conn;
    struct px_policy_request r = {
        .principal = c->mtls && c->peer_id[0] != '\0' ? c->peer_id : NULL,
        .port = cm_addr_port(&c->orig_dst),
        .req = &s->req,
        .source = &c->peer,
    };
    char small[512];
    size_t need = px_policy_scratch_size(s->req.path);
    char *scratch = need <= sizeof(small) ? small : px_arena_alloc(&s->arena, need);
    struct px_policy_decision d;
    px_policy_decide(az->policy, &r, scratch, need, &d);
    px_trace_set_rule(s, d.rule); /* for the access log */
    if (d.verdict == PX_POLICY_ALLOW) {
        send_decided_path(s, &d);
        return true;
    }

    char peer[64], path[256], method[32];
    cm_addr_format(&c->peer, peer, sizeof(peer));
    loggable(s->req.path, path, sizeof(path));
    loggable(s->req.method, method, sizeof(method));
    const char *who = r.principal ? r.principal : "-";
    if (d.verdict == PX_POLICY_BAD_PATH || d.verdict == PX_POLICY_BAD_HEADER) {
        cm_info("policy: %s %s %s from %s (%s): %s", d.enforce ? "rejected" : "audit: would reject",
                method, path, who, peer, d.why);
        if (!d.enforce)
            return true;
        px_metrics.bad_request++;
        char body[128];
        snprintf(body, sizeof(body), "bad request: %s", d.why);
        px_stream_respond(s, 400, body);
        return false;
    }
    px_policy_count_denial(d.rule, !d.enforce);
    cm_info("policy: %s %s %s from %s (%s) to port %u by %s%s",
            d.enforce ? "denied" : "audit: would deny", method, path, who, peer, (unsigned)r.port,
            strcmp(d.rule, "default") == 0 ? "" : "rule ", d.rule);
    if (!d.enforce) {
        send_decided_path(s, &d);
        return true;
    }
    px_metrics.policy_denials_total++;
    char body[PX_POLICY_MAX_NAME + 64];
    if (strcmp(d.rule, "default") == 0)
        snprintf(body, sizeof(body), "RBAC: access denied by default");
    else
        snprintf(body, sizeof(body), "RBAC: access denied by rule %s", d.rule);
    px_stream_respond(s, 403, body);
    return false;
}

bool px_authz_check(struct px_stream *s)
{
    const struct px_server *srv = s->conn->srv;
    const struct px_authz *az = srv != NULL ? srv->authz : NULL;
    return az == NULL || check(az, s);
}

bool px_authz_check_tcp(const struct px_conn *c, char *rule, size_t rulelen)
{
    const struct px_authz *az = c->srv != NULL ? c->srv->authz : NULL;
    if (az == NULL)
        return true;
    struct px_policy_request r = {
        .principal = c->mtls && c->peer_id[0] != '\0' ? c->peer_id : NULL,
        .port = cm_addr_port(&c->orig_dst),
        .source = &c->peer,
        .tcp = true,
    };
    struct px_policy_decision d;
    px_policy_decide(az->policy, &r, NULL, 0, &d);
    if (rule != NULL && rulelen > 0)
        snprintf(rule, rulelen, "%s", d.rule != NULL ? d.rule : ""); /* for the access log */
    if (d.verdict == PX_POLICY_ALLOW)
        return true;
    char peer[CM_ADDR_STRLEN];
    cm_addr_format(&c->peer, peer, sizeof(peer));
    px_policy_count_denial(d.rule, !d.enforce);
    cm_info("policy: %s tcp connection %llu from %s (%s) to port %u by %s%s",
            d.enforce ? "denied" : "audit: would deny", (unsigned long long)c->id,
            r.principal ? r.principal : "-", peer, (unsigned)r.port,
            strcmp(d.rule, "default") == 0 ? "" : "rule ", d.rule);
    if (!d.enforce)
        return true;
    px_metrics.policy_denials_total++;
    return false;
}
