/* GET /v1/destination, POST /v1/watch and GET /v1/ping on discovery.address
 * (discovery.h, docs/discovery.md): HTTPS with a certificate the CA issues to
 * itself, mTLS (a mesh certificate with a SPIFFE ID in the trust domain,
 * verified with mbedTLS from the DER chain GnuTLS received), and long-polls
 * and watches held with libmicrohttpd's suspend/resume: a held request costs
 * its struct and its socket, no thread. */
#include <errno.h>
#include <gnutls/gnutls.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/list.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/xalloc.h"
#include "injector/discovery_int.h"
#include "injector/server.h"

#define WAIT_DEFAULT_S   30
#define WAIT_MAX_S       60
#define MAX_PEER_CERTS   8
#define WAITER_BUCKETS   4096 /* power of two */
#define TIMER_TICK_MS    100
#define IDLE_TIMEOUT_S   120 /* a connection between polls; held ones do not time out */
#define DESTINATION_PATH "/v1/destination"
#define WATCH_PATH       "/v1/watch"
/* libmicrohttpd's per-connection pool (its default: 32 KiB): request heads
 * (a lookup's is under 1 KiB; a head that does not fit is refused) and
 * the read buffer; bodies are not kept in it (a watch body goes to its own
 * bounded buffer, answers are malloc'd). Every proxy holds 1-4 connections
 * here, most of them idle: an idle one measured 43 KiB of RSS with 32 KiB,
 * 21 KiB with this (perf/bench-discovery-proxy.sh). */
#define CONN_MEMORY   8192
#define PING_PATH     "/v1/ping"  /* a proxy's warm connection, idle 100 s: 204 */
#define WATCH_DISCARD (16u << 20) /* an over-long watch body is read this far for its 400 */
#define CHANGED_SOFT_MAX                                                                           \
    (1u << 20) /* a "changed" list stops growing past this (the proxy                              \
                * asks again for the rest) */

/* ---- metrics ---------------------------------------------------------------------------- */

enum answer {
    AN_OK,
    AN_NOT_MODIFIED,
    AN_NOT_FOUND,
    AN_BAD,
    AN_UNAUTH,
    AN_PING,
    AN_OTHER,
    AN__COUNT
};
static const char *const answer_names[AN__COUNT] = {"200", "304", "404",  "400",
                                                    "401", "204", "other"};
static atomic_uint_fast64_t answers[AN__COUNT];
static atomic_int_fast64_t subscribers;
static atomic_int_fast64_t watched;    /* destinations listed by held POST /v1/watch */
static atomic_int_fast64_t open_conns; /* connections of the discovery port now */
static const uint64_t push_bucket_us[] = {1000,   5000,   10000,   25000,  50000,
                                          100000, 250000, 1000000, 5000000};
static struct cm_prom_hist push_hist = CM_PROM_HIST_INIT(push_bucket_us);

static void count_answer(unsigned code)
{
    enum answer a = code == 200   ? AN_OK
                    : code == 304 ? AN_NOT_MODIFIED
                    : code == 404 ? AN_NOT_FOUND
                    : code == 400 ? AN_BAD
                    : code == 401 ? AN_UNAUTH
                    : code == 204 ? AN_PING
                                  : AN_OTHER;
    atomic_fetch_add(&answers[a], 1);
}

/* ---- requests and waiters ------------------------------------------------------------------- */

/* A held question in a wake bucket: the GET's one (idx -1), or a watch's
 * item idx. */
struct wlink {
    struct cm_list bucket;
    struct dreq *r;
    long idx;
};

struct dreq {
    struct wlink link;  /* a GET's: linked while held */
    struct cm_list all; /* linked while held */
    struct MHD_Connection *conn;
    struct ij_disc_query q;
    char wait[IJ_DISC_MAX_VERSION + 1];
    uint64_t deadline_ms;
    size_t dropped; /* body bytes of a GET, read and dropped */
    bool held, resumed, answered;
    unsigned status; /* the answer a wake or the timer left */
    char *body;
    size_t len;
    uint64_t seen_us; /* the API event that woke it (0: none) */
    /* POST /v1/watch */
    bool is_watch, up_over;
    struct cm_buf up; /* the body, bounded */
    size_t up_total;
    struct ij_disc_watchreq wr;
    struct wlink *links; /* one per item, linked while held */
};

struct ij_disc_waiters {
    pthread_mutex_t mu;
    struct cm_list bucket[WAITER_BUCKETS];
    struct cm_list all;
    bool closing;
};

static uint32_t key_hash(const char *s)
{
    return cm_hash_str(s) & (WAITER_BUCKETS - 1);
}

/* Under W->mu: hold r, its wake links already in their buckets, until a
 * wake, its timeout or shutdown lets it go (release). */
static void hold(struct ij_disc_waiters *W, struct dreq *r, struct MHD_Connection *conn,
                 long timeout_s)
{
    r->conn = conn;
    r->deadline_ms = cm_mono_ms() + (uint64_t)timeout_s * 1000;
    r->held = true;
    cm_list_insert_tail(&W->all, &r->all);
    atomic_fetch_add(&subscribers, 1);
    MHD_suspend_connection(conn);
}

/* Under W->mu: take a held r out of the wake buckets and the timer's list. */
static void unhold(struct dreq *r)
{
    if (r->is_watch) {
        for (size_t i = 0; r->links != NULL && i < r->wr.n; i++)
            cm_list_remove(&r->links[i].bucket);
        atomic_fetch_sub(&watched, (int_fast64_t)r->wr.n);
    } else {
        cm_list_remove(&r->link.bucket);
    }
    cm_list_remove(&r->all);
    r->held = false;
    atomic_fetch_sub(&subscribers, 1);
}

/* Under W->mu: let r go with this answer (body taken). */
static void release(struct dreq *r, unsigned status, char *body, size_t len, uint64_t seen_us)
{
    unhold(r);
    r->resumed = true;
    r->status = status;
    r->body = body;
    r->len = len;
    r->seen_us = seen_us;
    MHD_resume_connection(r->conn);
}

/* Two held requests ask the same question (the answer is the same). */
static bool same_query(const struct ij_disc_query *a, const struct ij_disc_query *b)
{
    return a->by_host == b->by_host && a->port == b->port &&
           (a->by_host ? strcmp(a->key, b->key) == 0
                       : a->ip.len == b->ip.len && memcmp(a->ip.b, b->ip.b, a->ip.len) == 0);
}

/* A watch's answer, {"changed": [...]}: opened here, entries added with
 * changed_add, closed and handed over by changed_take. */
static void changed_open(struct cm_buf *b)
{
    cm_buf_init(b, SIZE_MAX / 2);
    cm_buf_adds(b, "{\"changed\": [");
}

/* Append one entry of a watch's "changed" list: the destination as the proxy
 * named it, the status, and the answer of a 200 (already JSON). */
static void changed_add(struct cm_buf *b, const struct ij_disc_witem *it, unsigned status,
                        const char *body)
{
    json_t *nm = json_string(it->name);
    char *esc = nm ? json_dumps(nm, JSON_ENCODE_ANY) : NULL;
    json_decref(nm);
    int rc =
        cm_buf_printf(b, "%s{\"%s\": %s, \"status\": %u", b->data[b->len - 1] != '[' ? ", " : "",
                      it->q.by_host ? "host" : "addr", esc ? esc : "\"\"", status);
    free(esc);
    if (rc == 0 && status == 200)
        rc = cm_buf_printf(b, ", \"answer\": %s", body);
    if (rc == 0)
        cm_buf_adds(b, "}");
}

static char *changed_take(struct cm_buf *b, size_t *len)
{
    cm_buf_adds(b, "]}");
    return cm_buf_take(b, len);
}

void ij_disc_wake(struct ij_disc *d, const struct ij_disc_keys *keys, uint64_t seen_us)
{
    struct ij_disc_waiters *W = d->waiters;
    if (W == NULL || keys->n == 0 || atomic_load(&subscribers) == 0)
        return;
    pthread_mutex_lock(&W->mu);
    for (size_t i = 0; i < keys->n; i++) {
        struct cm_list *head = &W->bucket[key_hash(keys->v[i])];
        /* proxies waiting on one destination ask the same question: it is
         * answered once per key, the body copied for each */
        struct ij_disc_query last = {0}; /* the question body answers */
        bool have = false;
        unsigned status = 0;
        char *body = NULL, version[17] = "";
        size_t len = 0;
        for (struct cm_list *n = head->next, *nx; n != head; n = nx) {
            nx = n->next;
            struct wlink *l = cm_container_of(n, struct wlink, bucket);
            struct dreq *r = l->r;
            const struct ij_disc_query *q = l->idx < 0 ? &r->q : &r->wr.items[l->idx].q;
            const char *held = l->idx < 0 ? r->wait : r->wr.items[l->idx].version;
            if (strcmp(q->wake, keys->v[i]) != 0)
                continue;
            if (!have || !same_query(&last, q)) {
                free(body);
                ij_disc_store_answer(d->store, q, &status, &body, &len, version);
                last = *q;
                have = true;
            }
            if (status == 200 && strcmp(version, held) == 0)
                continue; /* touched, not changed */
            if (l->idx < 0) {
                char *copy = cm_xmalloc(len + 1);
                memcpy(copy, body, len + 1);
                release(r, status, copy, len, seen_us);
            } else {
                /* the watch goes with this one; another of its destinations that
                 * changed too is answered at once when it asks again */
                struct cm_buf b;
                changed_open(&b);
                changed_add(&b, &r->wr.items[l->idx], status, body);
                size_t blen;
                char *cb = changed_take(&b, &blen);
                /* r's other links leave the bucket with it: if the next node was
                 * one of them, go on from the head */
                bool nx_mine = nx != head && cm_container_of(nx, struct wlink, bucket)->r == r;
                release(r, 200, cb, blen, seen_us);
                if (nx_mine)
                    nx = head->next;
            }
        }
        free(body);
    }
    pthread_mutex_unlock(&W->mu);
}

static void *timer_main(void *arg)
{
    struct ij_disc *d = arg;
    struct ij_disc_waiters *W = d->waiters;
    for (;;) {
        struct timespec ts = {0, TIMER_TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&W->mu);
        bool closing = W->closing;
        uint64_t now = cm_mono_ms();
        for (struct cm_list *n = W->all.next, *nx; n != &W->all; n = nx) {
            nx = n->next;
            struct dreq *r = cm_container_of(n, struct dreq, all);
            if (closing) {
                char *b = cm_xstrdup("{\"error\":\"shutting down\"}");
                release(r, 503, b, strlen(b), 0);
            } else if (now >= r->deadline_ms)
                release(r, 304, NULL, 0, 0);
        }
        pthread_mutex_unlock(&W->mu);
        if (closing)
            return NULL;
    }
}

/* ---- answers ------------------------------------------------------------------------------ */

static enum MHD_Result send_body(struct MHD_Connection *conn, unsigned code, char *body, size_t len)
{
    count_answer(code);
    struct MHD_Response *r = body != NULL
                                 ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
                                 : MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    if (body != NULL)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned code, const char *msg)
{
    json_t *doc = json_pack("{s:s}", "error", msg);
    char *body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return send_body(conn, code, body, strlen(body));
}

/* Per connection: the peer's SPIFFE ID once its certificate verified. */
struct dconn {
    int state; /* 0 not looked at, 1 verified, -1 refused */
    char why[300];
};

/* The client certificate: a chain to the mesh root with a SPIFFE ID in the
 * trust domain. Looked at once per connection. */
static bool peer_ok(struct ij_disc *d, struct MHD_Connection *conn, const char **why)
{
    const union MHD_ConnectionInfo *sc =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct dconn *dc = sc != NULL ? sc->socket_context : NULL;
    static const char no_ctx[] = "no connection state";
    if (dc == NULL) {
        *why = no_ctx;
        return false;
    }
    if (dc->state != 0) {
        *why = dc->why;
        return dc->state > 0;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    gnutls_session_t ses = ci != NULL ? (gnutls_session_t)ci->tls_session : NULL;
    unsigned n = 0;
    const gnutls_datum_t *certs = ses != NULL ? gnutls_certificate_get_peers(ses, &n) : NULL;
    dc->state = -1;
    if (certs == NULL || n == 0) {
        snprintf(dc->why, sizeof(dc->why),
                 "a mesh client certificate is required (mTLS, trust domain %s)",
                 d->cfg->trust_domain);
        *why = dc->why;
        return false;
    }
    mbedtls_x509_crt chain;
    mbedtls_x509_crt_init(&chain);
    bool ok = true;
    for (unsigned i = 0; i < n && i < MAX_PEER_CERTS && ok; i++)
        ok = mbedtls_x509_crt_parse_der(&chain, certs[i].data, certs[i].size) == 0;
    char id[256], *err = NULL;
    if (!ok)
        snprintf(dc->why, sizeof(dc->why), "client certificate: not X.509 DER");
    else if (pki_verify_peer(&chain, &d->trust, d->cfg->trust_domain, id, sizeof(id), &err) != 0)
        snprintf(dc->why, sizeof(dc->why), "client certificate refused: %s", err);
    else {
        dc->state = 1;
        snprintf(dc->why, sizeof(dc->why), "%s", id);
    }
    free(err);
    mbedtls_x509_crt_free(&chain);
    *why = dc->why;
    return dc->state > 0;
}

/* The timeout_s of a held request (GET ...&wait=, POST /v1/watch): absent
 * gives the default; anything but 1..60 digits is refused. */
static bool timeout_arg(const char *tmo, long *out)
{
    *out = WAIT_DEFAULT_S;
    if (tmo == NULL)
        return true;
    char *end;
    errno = 0;
    long v = strtol(tmo, &end, 10);
    if (*tmo == '\0' || *end != '\0' || errno != 0 || v < 1 || v > WAIT_MAX_S)
        return false;
    *out = v;
    return true;
}

static enum MHD_Result destination(struct ij_disc *d, struct MHD_Connection *conn, struct dreq *r)
{
    const char *addr = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "addr");
    const char *host = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "host");
    const char *wait = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "wait");
    const char *tmo = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "timeout_s");
    char *err = NULL;
    if (ij_disc_query_parse(addr, host, d->cfg->discovery_cluster_domain, &r->q, &err) != 0) {
        enum MHD_Result ret = send_error(conn, MHD_HTTP_BAD_REQUEST, err);
        free(err);
        return ret;
    }
    long timeout;
    if (!timeout_arg(tmo, &timeout))
        return send_error(conn, MHD_HTTP_BAD_REQUEST, "timeout_s: want 1..60 (seconds)");
    if (wait != NULL && strlen(wait) > IJ_DISC_MAX_VERSION)
        return send_error(conn, MHD_HTTP_BAD_REQUEST, "wait: a version is at most 64 bytes");
    unsigned status;
    char *body, version[17];
    size_t len;
    struct ij_disc_waiters *W = d->waiters;
    /* Answer and register under W->mu: a change applied after this answer
     * wakes through ij_disc_wake, which takes W->mu after the store's lock. */
    pthread_mutex_lock(&W->mu);
    ij_disc_store_answer(d->store, &r->q, &status, &body, &len, version);
    if (wait != NULL && status == 200 && strcmp(wait, version) == 0 && !W->closing) {
        free(body);
        snprintf(r->wait, sizeof(r->wait), "%s", wait);
        r->link.r = r;
        r->link.idx = -1;
        cm_list_insert_tail(&W->bucket[key_hash(r->q.wake)], &r->link.bucket);
        hold(W, r, conn, timeout);
        pthread_mutex_unlock(&W->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&W->mu);
    return send_body(conn, status, body, len);
}

/* POST /v1/watch: answer at once with every listed destination whose answer
 * differs from the version given, or hold until one does (or timeout_s: 304). */
static enum MHD_Result watch_post(struct ij_disc *d, struct MHD_Connection *conn, struct dreq *r)
{
    const char *tmo = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "timeout_s");
    long timeout;
    if (!timeout_arg(tmo, &timeout))
        return send_error(conn, MHD_HTTP_BAD_REQUEST, "timeout_s: want 1..60 (seconds)");
    if (r->up_over) {
        char m[96];
        snprintf(m, sizeof(m), "body: over %d bytes", IJ_DISC_WATCH_MAX_BODY);
        return send_error(conn, MHD_HTTP_BAD_REQUEST, m);
    }
    char *err = NULL;
    if (ij_disc_watchreq_parse(r->up.data ? r->up.data : "", r->up.len,
                               d->cfg->discovery_cluster_domain, &r->wr, &err) != 0) {
        enum MHD_Result ret = send_error(conn, MHD_HTTP_BAD_REQUEST, err);
        free(err);
        return ret;
    }
    cm_buf_free(&r->up);
    struct ij_disc_waiters *W = d->waiters;
    pthread_mutex_lock(&W->mu);
    if (r->wr.session[0] != '\0') /* this proxy's previous watch: superseded */
        for (struct cm_list *n = W->all.next, *nx; n != &W->all; n = nx) {
            nx = n->next;
            struct dreq *o = cm_container_of(n, struct dreq, all);
            if (o->is_watch && strcmp(o->wr.session, r->wr.session) == 0)
                release(o, 304, NULL, 0, 0);
        }
    struct cm_buf b;
    changed_open(&b);
    size_t nchanged = 0;
    ij_disc_store_rdlock(d->store);
    for (size_t i = 0; i < r->wr.n && b.len < CHANGED_SOFT_MAX; i++) {
        const struct ij_disc_witem *it = &r->wr.items[i];
        unsigned status;
        char *body, version[17];
        size_t len;
        ij_disc_store_answer_locked(d->store, &it->q, &status, &body, &len, version);
        if (status != 200 || strcmp(version, it->version) != 0) {
            changed_add(&b, it, status, body);
            nchanged++;
        }
        free(body);
    }
    ij_disc_store_unlock(d->store);
    if (nchanged > 0 || W->closing) {
        pthread_mutex_unlock(&W->mu);
        if (nchanged == 0) {
            cm_buf_free(&b);
            return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
        }
        size_t blen;
        char *cb = changed_take(&b, &blen);
        return send_body(conn, 200, cb, blen);
    }
    cm_buf_free(&b);
    r->links = cm_xcalloc(r->wr.n, sizeof(*r->links));
    for (size_t i = 0; i < r->wr.n; i++) {
        r->links[i].r = r;
        r->links[i].idx = (long)i;
        cm_list_insert_tail(&W->bucket[key_hash(r->wr.items[i].q.wake)], &r->links[i].bucket);
    }
    atomic_fetch_add(&watched, (int_fast64_t)r->wr.n);
    hold(W, r, conn, timeout);
    pthread_mutex_unlock(&W->mu);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    (void)version;
    (void)upload_data;
    struct ij_disc *d = cls;
    struct dreq *r = *req_cls;
    if (r == NULL) {
        r = cm_xcalloc(1, sizeof(*r));
        cm_list_init(&r->link.bucket);
        cm_list_init(&r->all);
        r->is_watch = strcmp(url, WATCH_PATH) == 0 && strcmp(method, MHD_HTTP_METHOD_POST) == 0;
        cm_buf_init(&r->up, IJ_DISC_WATCH_MAX_BODY);
        *req_cls = r;
        return MHD_YES;
    }
    if (r->is_watch && *upload_data_size > 0) {
        /* the body, bounded; a peer that is not a mesh workload gets nothing
         * kept (peer_ok looks at its certificate once per connection) */
        const char *why = NULL;
        r->up_total += *upload_data_size;
        if (!r->up_over && peer_ok(d, conn, &why) &&
            cm_buf_add(&r->up, upload_data, *upload_data_size) != 0) {
            r->up_over = true;
            cm_buf_free(&r->up);
        }
        *upload_data_size = 0;
        return r->up_total > WATCH_DISCARD ? MHD_NO : MHD_YES;
    }
    if (*upload_data_size > 0) { /* a GET has no body: drop it, a little */
        r->dropped += *upload_data_size;
        *upload_data_size = 0;
        return r->dropped > 65536 ? MHD_NO : MHD_YES;
    }
    if (r->resumed) {
        r->resumed = false;
        r->answered = true;
        char *body = r->body;
        r->body = NULL;
        return send_body(conn, r->status, body, r->len);
    }
    if (r->answered)
        return MHD_YES;
    r->answered = true;
    const char *why = NULL;
    if (!peer_ok(d, conn, &why))
        return send_error(conn, MHD_HTTP_UNAUTHORIZED, why);
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, "HEAD") == 0;
    if (r->is_watch)
        return watch_post(d, conn, r);
    if (strcmp(url, PING_PATH) == 0 && get) /* keeps a proxy's idle lookup connection */
        return send_body(conn, MHD_HTTP_NO_CONTENT, NULL, 0);
    if (strcmp(url, WATCH_PATH) == 0)
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST");
    if (strcmp(url, DESTINATION_PATH) != 0)
        return send_error(conn, MHD_HTTP_NOT_FOUND,
                          "no such path; discovery answers GET " DESTINATION_PATH
                          ", POST " WATCH_PATH " and GET " PING_PATH);
    if (!get)
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
    return destination(d, conn, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct ij_disc *d = cls;
    (void)conn;
    struct dreq *r = *req_cls;
    if (r == NULL)
        return;
    if (r->held) { /* not reached while suspended; be sure anyway */
        pthread_mutex_lock(&d->waiters->mu);
        if (r->held)
            unhold(r);
        pthread_mutex_unlock(&d->waiters->mu);
    }
    if (r->seen_us != 0 && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        cm_prom_hist_observe(&push_hist, cm_mono_us() - r->seen_us);
    free(r->body);
    cm_buf_free(&r->up);
    ij_disc_watchreq_deinit(&r->wr);
    free(r->links);
    free(r);
    *req_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    (void)cls;
    (void)conn;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = cm_xcalloc(1, sizeof(struct dconn));
        atomic_fetch_add(&open_conns, 1);
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub(&open_conns, 1);
        free(*socket_context);
        *socket_context = NULL;
    }
}

/* The discovery port's certificate, issued by the CA to itself (as the CA
 * port's), and the mesh roots client certificates must chain to. */
static int load_tls(struct ij_disc *d, char **errmsg)
{
    const struct ij_config *cfg = d->cfg;
    char *inner = NULL;
    int rc = CM_ERR_INVAL;
    struct pki_ca ca;
    pki_ca_init(&ca);
    if (ij_ca_issue_serving(cfg, "remora-discovery", "the discovery port", &d->serve_cert,
                            &d->serve_key, &inner) != 0 ||
        pki_ca_load(&ca, cfg->ca_cert_file, cfg->ca_key_file, cfg->ca_root_file, &inner) != 0) {
        *errmsg = cm_xasprintf("discovery: %s", inner);
        goto out;
    }
    if (ca.bundle_pem == NULL || ca.bundle_pem[0] == '\0') {
        *errmsg = cm_xasprintf("discovery: no mesh root to check client certificates with "
                               "(ca.root_file)");
        goto out;
    }
    d->trust_pem = cm_xstrdup(ca.bundle_pem);
    if (pki_bundle_parse(&d->trust, (const unsigned char *)d->trust_pem, strlen(d->trust_pem) + 1,
                         &inner) != 0) {
        *errmsg = cm_xasprintf("discovery: mesh roots: %s", inner);
        goto out;
    }
    rc = 0;
out:
    pki_ca_free(&ca);
    free(inner);
    return rc;
}

int ij_disc_server_start(struct ij_disc *d, char **errmsg)
{
    const struct ij_config *cfg = d->cfg;
    int rc = load_tls(d, errmsg);
    if (rc != 0)
        return rc;
    struct ij_disc_waiters *W = cm_xcalloc(1, sizeof(*W));
    pthread_mutex_init(&W->mu, NULL);
    for (size_t i = 0; i < WAITER_BUCKETS; i++)
        cm_list_init(&W->bucket[i]);
    cm_list_init(&W->all);
    d->waiters = W;
    d->fd = ij_server_listen(&cfg->discovery_addr);
    if (d->fd < 0) {
        *errmsg = cm_xasprintf("%s: discovery.address: cannot listen on %s: %s", cfg->file,
                               cfg->discovery_address, strerror(errno));
        return CM_ERR_IO;
    }
    struct cm_addr bound;
    char addr[CM_ADDR_STRLEN];
    if (cm_net_local_addr(d->fd, &bound) == 0)
        d->port = cm_addr_port(&bound);
    d->daemon = MHD_start_daemon(
        IJ_SERVER_MHD_FLAGS | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, on_request, d,
        MHD_OPTION_EXTERNAL_LOGGER, ij_server_mhd_log, d, MHD_OPTION_LISTEN_SOCKET, d->fd,
        MHD_OPTION_HTTPS_MEM_CERT, d->serve_cert, MHD_OPTION_HTTPS_MEM_KEY, d->serve_key,
        MHD_OPTION_HTTPS_MEM_TRUST, d->trust_pem, MHD_OPTION_HTTPS_PRIORITIES,
        IJ_SERVER_TLS_PRIORITIES, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->discovery_max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)cfg->discovery_max_connections_per_ip, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        d, MHD_OPTION_NOTIFY_CONNECTION, on_connection, d, MHD_OPTION_END);
    if (d->daemon == NULL) {
        *errmsg = cm_xasprintf("cannot start the discovery HTTPS server on %s (libmicrohttpd)",
                               cfg->discovery_address);
        close(d->fd);
        d->fd = -1;
        return CM_ERR_IO;
    }
    int e = pthread_create(&d->timer, NULL, timer_main, d);
    if (e != 0) {
        *errmsg = cm_xasprintf("discovery: cannot start the long-poll timer: %s", strerror(e));
        return CM_ERR_IO;
    }
    d->timer_started = true;
    cm_info("discovery: serving GET %s on https %s (port %u), client certificates of trust "
            "domain %s required",
            DESTINATION_PATH, cm_addr_format(&bound, addr, sizeof(addr)), d->port,
            cfg->trust_domain);
    return 0;
}

void ij_disc_server_stop(struct ij_disc *d)
{
    struct ij_disc_waiters *W = d->waiters;
    if (W != NULL) {
        pthread_mutex_lock(&W->mu);
        W->closing = true; /* the timer answers every held request 503, then ends */
        pthread_mutex_unlock(&W->mu);
        if (d->timer_started)
            pthread_join(d->timer, NULL);
        else { /* no timer: resume them here (none can be held without it, but be sure) */
            pthread_mutex_lock(&W->mu);
            for (struct cm_list *n = W->all.next, *nx; n != &W->all; n = nx) {
                nx = n->next;
                release(cm_container_of(n, struct dreq, all), 503, NULL, 0, 0);
            }
            pthread_mutex_unlock(&W->mu);
        }
        d->timer_started = false;
    }
    if (d->daemon != NULL) {
        MHD_socket fd = MHD_quiesce_daemon(d->daemon);
        /* a moment for the resumed requests' answers to go out */
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
        MHD_stop_daemon(d->daemon);
        d->daemon = NULL;
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
        d->fd = -1;
    } else if (d->fd >= 0) {
        close(d->fd);
        d->fd = -1;
    }
    if (W != NULL) {
        pthread_mutex_destroy(&W->mu);
        free(W);
        d->waiters = NULL;
    }
}

unsigned ij_disc_port(const struct ij_disc *d)
{
    return d != NULL ? d->port : 0;
}

/* ---- /metrics ------------------------------------------------------------------------------- */

void ij_disc_metrics_write(struct cm_prom *o)
{
    struct ij_disc *d = ij_disc_active();
    if (d == NULL)
        return;
    cm_prom_head(o, "remora_discovery_objects", "gauge",
                 "Kubernetes objects the discovery store holds, by kind.");
    size_t bytes[IJ_DISC__KINDS];
    for (int k = 0; k < IJ_DISC__KINDS; k++)
        cm_prom_printf(o, "remora_discovery_objects{kind=\"%s\"} %zu\n",
                       ij_disc_kind_name((enum ij_disc_kind)k),
                       ij_disc_store_count(d->store, (enum ij_disc_kind)k, &bytes[k]));
    cm_prom_head(o, "remora_discovery_object_bytes", "gauge",
                 "Heap bytes of the records the discovery store holds, by kind.");
    for (int k = 0; k < IJ_DISC__KINDS; k++)
        cm_prom_printf(o, "remora_discovery_object_bytes{kind=\"%s\"} %zu\n",
                       ij_disc_kind_name((enum ij_disc_kind)k), bytes[k]);
#define PER_KIND(name, type, help, field)                                                          \
    do {                                                                                           \
        cm_prom_head(o, name, type, help);                                                         \
        for (int k = 0; k < IJ_DISC__KINDS; k++)                                                   \
            cm_prom_printf(o, name "{kind=\"%s\"} %llu\n",                                         \
                           ij_disc_kind_name((enum ij_disc_kind)k),                                \
                           (unsigned long long)atomic_load(&d->watch[k].field));                   \
    } while (0)
    PER_KIND("remora_discovery_api_errors_total", "counter",
             "Failed lists and watches (transport, HTTP status, broken streams), by kind.", errors);
    PER_KIND("remora_discovery_skipped_objects_total", "counter",
             "Objects that did not decode and were skipped, by kind.", skipped);
    PER_KIND("remora_discovery_lists_total", "counter",
             "Full list attempts (the first, retries until it succeeds, after 410 Gone), by kind.",
             relists);
    PER_KIND("remora_discovery_events_total", "counter", "Watch events applied, by kind.", events);
    PER_KIND("remora_discovery_stale", "gauge",
             "1 while the last list or watch of the kind failed: answers come from the last "
             "snapshot.",
             stale);
    PER_KIND("remora_discovery_synced", "gauge", "1 once the kind was listed.", synced);
#undef PER_KIND
    cm_prom_u64(
        o, "remora_discovery_subscribers", "gauge",
        "Requests held (a GET long-poll or a POST /v1/watch, one each), waiting for a change.",
        (uint64_t)atomic_load(&subscribers));
    cm_prom_u64(o, "remora_discovery_connections", "gauge",
                "Connections of the discovery port open now (at most discovery.max_connections).",
                (uint64_t)atomic_load(&open_conns));
    cm_prom_u64(o, "remora_discovery_watched_destinations", "gauge",
                "Destinations listed by the held POST /v1/watch requests.",
                (uint64_t)atomic_load(&watched));
    cm_prom_head(
        o, "remora_discovery_answers_total", "counter",
        "Answers of the discovery port (/v1/destination, /v1/watch, /v1/ping), by status.");
    for (int a = 0; a < AN__COUNT; a++)
        cm_prom_printf(o, "remora_discovery_answers_total{code=\"%s\"} %llu\n", answer_names[a],
                       (unsigned long long)atomic_load(&answers[a]));
    cm_prom_hist_write(o, "remora_discovery_push_seconds",
                       "From an API event seen to a long-poll's answer for it sent, per answer.",
                       &push_hist);
}
