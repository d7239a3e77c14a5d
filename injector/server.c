#include "injector/server.h"
#include "injector/discovery.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/net.h"
#include "common/prom.h"
#include "common/xalloc.h"
#include "injector/admission.h"
#include "injector/ca.h"
#include "injector/metrics.h"

/* ---- the guard (server.h) ------------------------------------------------------------- */

struct ij_guard_conn {
    struct ij_guard_conn *prev, *next;
    int fd;                   /* the connection's socket, open while listed */
    uint64_t start_ms;        /* when the current request began (accept or last answer) */
    bool cut;                 /* shut down by the sweep */
    struct ij_tls_cert *cert; /* the webhook's: the serving certificate it pinned */
};

struct ij_guard {
    const struct ij_config *cfg;
    int idx; /* 0 webhook, 1 ca: its metrics row */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct ij_guard_conn head; /* circular list of live connections */
    bool stopping;
    pthread_t thread;
};

static const char *const guard_names[2] = {"webhook", "ca"};
static atomic_uint_fast64_t deadline_cuts[2];
static atomic_uint_fast64_t over_budget;
static atomic_size_t buffered;

static void *sweep(void *arg)
{
    struct ij_guard *g = arg;
    uint64_t limit = (uint64_t)g->cfg->request_timeout_ms;
    /* a tenth of the deadline, within [20, 250] ms: a connection lives at
     * most that much past it */
    uint64_t every = limit / 10 < 20 ? 20 : limit / 10 > 250 ? 250 : limit / 10;
    pthread_mutex_lock(&g->mu);
    while (!g->stopping) {
        uint64_t now = cm_mono_ms();
        for (struct ij_guard_conn *c = g->head.next; c != &g->head; c = c->next) {
            if (c->cut || now - c->start_ms <= limit || c->fd < 0)
                continue;
            c->cut = true;
            shutdown(c->fd, SHUT_RDWR);
            atomic_fetch_add(&deadline_cuts[g->idx], 1);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(every * 1000000);
        ts.tv_sec += ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

struct ij_guard *ij_guard_new(const char *name, const struct ij_config *cfg)
{
    struct ij_guard *g = cm_xcalloc(1, sizeof(*g));
    g->cfg = cfg;
    g->idx = strcmp(name, guard_names[1]) == 0;
    g->head.next = g->head.prev = &g->head;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    int e = pthread_create(&g->thread, NULL, sweep, g);
    if (e != 0) {
        cm_error("guard: cannot start a thread: %s", strerror(e));
        abort(); /* like an allocation failure: nothing to serve safely without it */
    }
    return g;
}

void ij_guard_free(struct ij_guard *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    g->stopping = true;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->thread, NULL);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

struct ij_guard_conn *ij_guard_conn_start(struct ij_guard *g, struct MHD_Connection *conn)
{
    struct ij_guard_conn *c = cm_xcalloc(1, sizeof(*c));
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    c->fd = ci != NULL ? ci->connect_fd : -1;
    c->start_ms = cm_mono_ms();
    pthread_mutex_lock(&g->mu);
    c->next = g->head.next;
    c->prev = &g->head;
    g->head.next->prev = c;
    g->head.next = c;
    pthread_mutex_unlock(&g->mu);
    return c;
}

void ij_guard_conn_end(struct ij_guard *g, struct ij_guard_conn *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    pthread_mutex_unlock(&g->mu);
    free(c);
}

bool ij_guard_expired(struct ij_guard *g, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct ij_guard_conn *c = ci != NULL ? ci->socket_context : NULL;
    if (c == NULL)
        return false;
    bool expired;
    pthread_mutex_lock(&g->mu);
    expired = c->cut || cm_mono_ms() - c->start_ms > (uint64_t)g->cfg->request_timeout_ms;
    if (expired && !c->cut) {
        c->cut = true;
        atomic_fetch_add(&deadline_cuts[g->idx], 1);
    }
    pthread_mutex_unlock(&g->mu);
    return expired;
}

void ij_guard_request_done(struct ij_guard *g, struct MHD_Connection *conn, size_t reserved)
{
    ij_guard_release(reserved);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct ij_guard_conn *c = ci != NULL ? ci->socket_context : NULL;
    if (c == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    c->start_ms = cm_mono_ms();
    pthread_mutex_unlock(&g->mu);
}

bool ij_guard_reserve(const struct ij_config *cfg, size_t n)
{
    size_t max = (size_t)cfg->max_buffered_bytes;
    size_t cur = atomic_load(&buffered);
    do {
        if (cur + n > max) {
            atomic_fetch_add(&over_budget, 1);
            return false;
        }
    } while (!atomic_compare_exchange_weak(&buffered, &cur, cur + n));
    return true;
}

void ij_guard_release(size_t n)
{
    atomic_fetch_sub(&buffered, n);
}

void ij_guard_metrics_write(struct cm_prom *o)
{
    cm_prom_printf(
        o,
        "# HELP remora_injector_request_deadline_closes_total Connections shut down at "
        "webhook.request_timeout_ms (handshake, head and body not done in time), by port.\n"
        "# TYPE remora_injector_request_deadline_closes_total counter\n"
        "remora_injector_request_deadline_closes_total{port=\"webhook\"} %llu\n"
        "remora_injector_request_deadline_closes_total{port=\"ca\"} %llu\n"
        "# HELP remora_injector_buffered_body_bytes Request body bytes held, all connections.\n"
        "# TYPE remora_injector_buffered_body_bytes gauge\n"
        "remora_injector_buffered_body_bytes %zu\n"
        "# HELP remora_injector_buffer_refusals_total Requests answered 503 because bodies "
        "held passed webhook.max_buffered_bytes.\n"
        "# TYPE remora_injector_buffer_refusals_total counter\n"
        "remora_injector_buffer_refusals_total %llu\n",
        (unsigned long long)atomic_load(&deadline_cuts[0]),
        (unsigned long long)atomic_load(&deadline_cuts[1]), atomic_load(&buffered),
        (unsigned long long)atomic_load(&over_budget));
}

/* ---- the webhook's server --------------------------------------------------------------- */

struct ij_server {
    struct MHD_Daemon *daemon;
    struct ij_guard *guard;
    const struct ij_config *cfg;
    struct ij_tls *tls;
    struct ij_template_slot *tpl;
    struct ij_ca *ca; /* POST /v1/sign here too; NULL: no CA, or it has ca.address */
    atomic_bool ready;
    atomic_uint connections;
    int fd;
    unsigned port;
};

/* One HTTP request; freed by MHD's completion callback. */
struct req {
    char *buf; /* the body so far, bounded by webhook.max_body_bytes */
    size_t len, cap;
    size_t reserved;  /* cap, counted against webhook.max_buffered_bytes */
    size_t dropped;   /* bytes discarded once over the bound */
    bool too_large;   /* answer 413 at the end */
    bool answered;    /* a response was queued */
    bool ignore_body; /* not POST /inject: a body is dropped unread */
    bool sign;        /* POST /v1/sign, answered by the CA (ca.c) */
    const char *psa;  /* issue 14: the entry's Pod Security level (ij_inject_path) */
    bool pod_scope;   /* issue 14: a pod-label entry */
};

/* A chunked body over the bound is read and dropped up to this many times
 * the bound (for a clean 413); past that the connection is simply closed. */
#define DRAIN_FACTOR 4

static enum MHD_Result send_buf(struct MHD_Connection *conn, unsigned code, const char *type,
                                char *body, size_t len)
{
    /* MUST_FREE: MHD frees the body with free() once sent. */
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned code, const char *msg)
{
    json_t *e = json_pack("{s:s, s:i}", "error", msg, "code", (int)code);
    char *s = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    return send_buf(conn, code, "application/json", s, strlen(s));
}

static enum MHD_Result send_text(struct MHD_Connection *conn, unsigned code, const char *text)
{
    char *s = cm_xstrdup(text);
    return send_buf(conn, code, "application/json", s, strlen(s));
}

static enum MHD_Result inject(struct ij_server *s, struct MHD_Connection *conn, struct req *r)
{
    uint64_t t0 = cm_mono_us();
    if (r->too_large) {
        char msg[96];
        snprintf(msg, sizeof(msg), "body larger than %lld bytes",
                 (long long)s->cfg->max_body_bytes);
        cm_warn("POST /inject: %s", msg);
        ij_metrics_review(IJ_OUT_TOO_LARGE, IJ_DECIDE_INJECT, cm_mono_us() - t0);
        return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, msg);
    }
    struct ij_template *tpl = ij_template_slot_get(s->tpl);
    struct ij_inject_params p = {
        .tpl = tpl,
        .trust_domain = s->cfg->trust_domain,
        .ca_audience = s->cfg->ca_audience,
        .native_default = s->cfg->native_sidecars,
        .psa_enforce = r->psa,
        .pod_scope = r->pod_scope,
    };
    struct ij_review rv;
    ij_admission_review(&p, r->buf != NULL ? r->buf : "", r->len, &rv);
    ij_template_unref(tpl);
    uint64_t us = cm_mono_us() - t0;
    if (rv.http_status != 200) {
        cm_warn("POST /inject: 400: %s", rv.errmsg);
        ij_metrics_review(IJ_OUT_INVALID, IJ_DECIDE_INJECT, us);
    } else {
        cm_debug("review %s: %s (%llu us)", rv.uid, ij_decision_name(rv.decision),
                 (unsigned long long)us);
        ij_metrics_review(IJ_OUT_REVIEWED, rv.decision, us);
    }
    enum MHD_Result ret =
        send_buf(conn, (unsigned)rv.http_status, "application/json", rv.body, rv.body_len);
    rv.body = NULL; /* MHD owns it now */
    ij_review_deinit(&rv);
    return ret;
}

/* The body bound of a request: a sign request's is the CA's (a CSR is a few
 * KiB), the rest webhook.max_body_bytes. */
static size_t body_max(const struct ij_server *s, const struct req *r)
{
    return r->sign ? IJ_CA_MAX_BODY : (size_t)s->cfg->max_body_bytes;
}

/* Bodies held by all connections passed webhook.max_buffered_bytes: refuse
 * this one rather than grow (the API server retries, failurePolicy decides). */
static enum MHD_Result busy(struct ij_server *s, struct MHD_Connection *conn)
{
    char msg[128];
    snprintf(msg, sizeof(msg), "busy: request bodies held pass %lld bytes; retry",
             (long long)s->cfg->max_buffered_bytes);
    cm_warn("%s", msg);
    return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
}

/* First call for a request: only the headers are known. Refuse a declared
 * body over the bound before reading any of it (MHD then closes the
 * connection, the body being unread); everything else is answered on the
 * last call, once MHD has seen the whole request and can keep the
 * connection alive. */
static enum MHD_Result first_call(struct ij_server *s, struct MHD_Connection *conn, const char *url,
                                  const char *method, struct req *r)
{
    r->sign = s->ca != NULL && strcmp(url, IJ_CA_SIGN_PATH) == 0 &&
              strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (!r->sign && (!ij_inject_path(url, &r->psa, &r->pod_scope) ||
                     strcmp(method, MHD_HTTP_METHOD_POST) != 0)) {
        r->ignore_body = true;
        return MHD_YES;
    }
    /* A sign request with no valid token is answered before its body is
     * read: reading it would let anyone hold the port and its memory. */
    if (r->sign && ij_ca_precheck(s->ca, conn)) {
        r->answered = true;
        return MHD_YES;
    }
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno == 0 && *end == '\0' && n > (unsigned long long)body_max(s, r)) {
            r->too_large = true;
            r->answered = true;
            return r->sign ? ij_ca_sign(s->ca, conn, NULL, 0, true) : inject(s, conn, r);
        }
        if (errno == 0 && *end == '\0' && n > 0) {
            if (!ij_guard_reserve(s->cfg, (size_t)n + 1)) {
                r->answered = true;
                return busy(s, conn);
            }
            r->reserved = (size_t)n + 1;
            r->cap = (size_t)n;
            r->buf = cm_xmalloc(r->cap + 1);
        }
    }
    return MHD_YES;
}

/* Last call for a request other than POST /inject. */
static enum MHD_Result route(struct ij_server *s, struct MHD_Connection *conn, const char *url,
                             const char *method)
{
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, "HEAD") == 0;
    if (ij_inject_path(url, NULL, NULL))
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST");
    if (strcmp(url, IJ_CA_SIGN_PATH) == 0)
        return s->ca != NULL ? send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST")
                             : send_error(conn, MHD_HTTP_NOT_FOUND,
                                          "no CA on this port (ca.cert_file unset, or the CA "
                                          "serves on ca.address)");
    if (!get)
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
    if (strcmp(url, "/healthz") == 0)
        return send_text(conn, MHD_HTTP_OK, "{\"status\":\"ok\"}");
    if (strcmp(url, "/readyz") == 0) {
        if (atomic_load(&s->ready) && !ij_disc_ready())
            return send_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                             "{\"status\":\"not ready\",\"reason\":\"discovery: not every kind "
                             "listed yet\"}");
        if (atomic_load(&s->ready))
            return send_text(conn, MHD_HTTP_OK, "{\"status\":\"ready\"}");
        return send_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "{\"status\":\"not ready\"}");
    }
    if (strcmp(url, "/metrics") == 0) {
        size_t len;
        char *m = ij_metrics_render(atomic_load(&s->connections), &len);
        return send_buf(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", m, len);
    }
    return send_error(conn, MHD_HTTP_NOT_FOUND, "no such path");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    (void)version;
    struct ij_server *s = cls;
    struct req *r = *req_cls;
    /* Data still flowing past the deadline: the sweep's shutdown(2) does not
     * stop a peer that keeps sending (Linux delivers data after SHUT_RD), so
     * every call checks too, and MHD_NO closes the connection. */
    if (ij_guard_expired(s->guard, conn))
        return MHD_NO;
    if (r == NULL) {
        r = cm_xcalloc(1, sizeof(*r));
        *req_cls = r;
        return first_call(s, conn, url, method, r);
    }
    size_t n = *upload_data_size;
    size_t max = body_max(s, r);
    if (r->answered) {
        *upload_data_size = 0; /* 401/413/503 already queued at the first call */
        return MHD_YES;
    }
    if (n > 0 && r->ignore_body) {
        /* A body where none is expected: dropped, within the same bound. */
        *upload_data_size = 0;
        r->dropped += n;
        return r->dropped > max * DRAIN_FACTOR ? MHD_NO : MHD_YES;
    }
    if (n > 0) {
        *upload_data_size = 0;
        if (r->too_large || r->len + n > max) {
            r->too_large = true;
            r->dropped += n;
            /* Past this, reading on only feeds a client that will not stop. */
            return r->dropped > max * DRAIN_FACTOR ? MHD_NO : MHD_YES;
        }
        if (r->len + n > r->cap) {
            size_t cap = r->cap ? r->cap : 16384;
            while (cap < r->len + n)
                cap *= 2;
            if (cap > max)
                cap = max;
            if (cap + 1 > r->reserved) {
                if (!ij_guard_reserve(s->cfg, cap + 1 - r->reserved)) {
                    r->answered = true;
                    return busy(s, conn);
                }
                r->reserved = cap + 1;
            }
            r->buf = cm_xrealloc(r->buf, cap + 1);
            r->cap = cap;
        }
        memcpy(r->buf + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }
    r->answered = true;
    if (r->ignore_body)
        return route(s, conn, url, method);
    if (r->sign)
        return ij_ca_sign(s->ca, conn, r->buf, r->len, r->too_large);
    return inject(s, conn, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct ij_server *s = cls;
    (void)toe;
    struct req *r = *req_cls;
    *req_cls = NULL;
    ij_guard_request_done(s->guard, conn, r != NULL ? r->reserved : 0);
    if (r != NULL)
        free(r->buf);
    free(r);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct ij_server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct ij_guard_conn *c = ij_guard_conn_start(s->guard, conn);
        c->cert = ij_tls_conn_start(s->tls);
        *socket_context = c;
        atomic_fetch_add(&s->connections, 1);
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct ij_guard_conn *c = *socket_context;
        if (c != NULL) {
            ij_tls_conn_end(c->cert);
            ij_guard_conn_end(s->guard, c);
        }
        *socket_context = NULL;
        atomic_fetch_sub(&s->connections, 1);
    }
}

void ij_server_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (CM_LOG_DEBUG <= cm_log_current_level)
        cm_log_vwrite(CM_LOG_DEBUG, fmt, ap);
}

int ij_server_listen(const struct cm_addr *a)
{
    int fd = cm_net_listen(a, 1024);
    if (fd < 0)
        return -1;
    /* GnuTLS writes a TLS 1.3 server flight in two sends (ServerHello, then
     * the encrypted rest); with Nagle on, the second waits for the client to
     * ACK the first: one round trip more per handshake, 40 ms with a client
     * that delays its ACKs. */
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int ij_server_start(const struct ij_config *cfg, struct ij_tls *tls, struct ij_template_slot *tpl,
                    struct ij_ca *ca, struct ij_server **out, char **errmsg)
{
    struct ij_server *s = cm_xcalloc(1, sizeof(*s));
    struct cm_addr bound;
    char addr[CM_ADDR_STRLEN];

    s->cfg = cfg;
    s->tls = tls;
    s->tpl = tpl;
    s->ca = ca;
    s->fd = ij_server_listen(&cfg->webhook_addr);
    if (s->fd < 0) {
        *errmsg = cm_xasprintf("%s: webhook.address: cannot listen on %s: %s", cfg->file,
                               cfg->webhook_address, strerror(errno));
        free(s);
        return CM_ERR_IO;
    }
    if (cm_net_local_addr(s->fd, &bound) == 0)
        s->port = cm_addr_port(&bound);
    ij_tls_bind(tls);
    s->guard = ij_guard_new("webhook", cfg);
    s->daemon = MHD_start_daemon(
        IJ_SERVER_MHD_FLAGS, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
        ij_server_mhd_log, s, MHD_OPTION_LISTEN_SOCKET, s->fd, MHD_OPTION_HTTPS_CERT_CALLBACK,
        ij_tls_on_cert, MHD_OPTION_HTTPS_PRIORITIES, IJ_SERVER_TLS_PRIORITIES,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->timeout_seconds, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->max_connections_per_ip,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        s, MHD_OPTION_END);
    if (s->daemon == NULL) {
        ij_guard_free(s->guard);
        *errmsg = cm_xasprintf("cannot start the HTTPS server on %s (libmicrohttpd)",
                               cfg->webhook_address);
        close(s->fd);
        free(s);
        return CM_ERR_IO;
    }
    atomic_store(&s->ready, true);
    cm_info("serving https on %s (port %u, %lld threads)",
            cm_addr_format(&bound, addr, sizeof(addr)), s->port, (long long)cfg->threads);
    *out = s;
    return 0;
}

unsigned ij_server_port(const struct ij_server *s)
{
    return s->port;
}

void ij_server_stop(struct ij_server *s, unsigned grace_ms)
{
    if (s == NULL)
        return;
    atomic_store(&s->ready, false);
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    uint64_t deadline = cm_mono_ms() + grace_ms;
    while (atomic_load(&s->connections) > 0 && cm_mono_ms() < deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->daemon);
    ij_guard_free(s->guard);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    free(s);
}
