#include "injector/ca.h"

#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/net.h"
#include "common/prom.h"
#include "common/watch.h"
#include "common/xalloc.h"
#include "injector/server.h"
#include "injector/token.h"
#include "injector/tokenreview.h" /* issue 14: ca.token_review */

#define JWKS_CHECK_MS   1000 /* look at the JWKS file at most once a second */
#define CA_MAX_PEM      (1024 * 1024)
#define DRAIN_MAX       (4 * IJ_CA_MAX_BODY) /* bytes read and dropped for a clean 413 */
#define SERVE_CERT_DAYS 365 /* the CA port's own certificate (clamped to the CA's) */

/* How a sign request ended, beside "issued": the label of the refusal. */
enum refusal {
    RF_TOO_LARGE = 0, /* 413: body over IJ_CA_MAX_BODY */
    RF_NO_TOKEN,      /* 401: no Authorization: Bearer */
    RF_TOKEN,         /* 401: first of the token reasons (IJ_TOKEN_MALFORMED...) */
    RF_BAD_REQUEST = RF_TOKEN + IJ_TOKEN__COUNT - 1, /* 400: body not {"csr": "..."} */
    RF_BAD_CSR,                                      /* 400: CSR unparsable or unverified */
    RF_IDENTITY,                                     /* 403: CSR identity != token identity */
    RF_INTERNAL,                                     /* 500: signing failed */
    RF_REVIEW_REJECTED,    /* 401: the API server does not authenticate the token */
    RF_REVIEW_POD_GONE,    /* 401: the token's pod no longer exists */
    RF_REVIEW_UNAVAILABLE, /* 503: no answer from the API server (ca.token_review) */
    RF__COUNT
};

static const char *const refusal_names[RF__COUNT] = {
    "too_large",
    "no_token",
    "token_malformed",
    "token_algorithm",
    "token_unknown_key",
    "token_signature",
    "token_audience",
    "token_expired",
    "token_not_yet_valid",
    "token_claims",
    "bad_request",
    "bad_csr",
    "identity_mismatch",
    "internal",
    "token_review_rejected",
    "token_pod_gone",
    "token_review_unavailable",
};
_Static_assert(RF_BAD_REQUEST == 10 && IJ_TOKEN__COUNT == 9,
               "refusal_names follows enum refusal and enum ij_token_reason");

static const char *refusal_name(enum refusal r)
{
    return (unsigned)r < RF__COUNT ? refusal_names[r] : "unknown";
}

/* ---- counters (process-wide, like metrics.c) ------------------------------------------- */

static const uint64_t bucket_us[] = {500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000};

static atomic_uint_fast64_t issued;
static atomic_uint_fast64_t refused[RF__COUNT];
static struct cm_prom_hist hist = CM_PROM_HIST_INIT(bucket_us);
static atomic_uint_fast64_t ca_reloads[2];
static struct ij_ca *_Atomic active; /* the CA /metrics reports on */

/* ---- the signing material ------------------------------------------------------------ */

/* An immutable snapshot of the CA files; a request signs with the one it
 * took, whatever a reload does meanwhile. */
struct snap {
    atomic_int refs;
    struct pki_ca ca;
    /* mbedTLS keeps a lazily built table in the signing key's EC group: one
     * signature at a time per key. */
    pthread_mutex_t sign_mu;
    int64_t not_after;
};

struct ij_ca {
    const struct ij_config *cfg;
    pthread_mutex_t mu;    /* guards cur */
    struct snap *cur;      /* a reference */
    struct cm_watch watch; /* ca.cert_file, ca.key_file, ca.root_file */
    struct ij_jwks_file *jwks;
    struct ij_tokrev *tokrev; /* ca.token_review, else NULL */
    /* the ca.address server */
    struct MHD_Daemon *daemon;
    struct ij_guard *guard;       /* deadlines of the ca.address daemon's connections */
    char *serve_cert, *serve_key; /* its HTTPS certificate, issued by the CA itself */
    atomic_uint connections;
    int fd;
    unsigned port;
};

static void snap_unref(struct snap *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1) {
        pki_ca_free(&s->ca);
        pthread_mutex_destroy(&s->sign_mu);
        free(s);
    }
}

static struct snap *snap_get(struct ij_ca *ca)
{
    pthread_mutex_lock(&ca->mu);
    struct snap *s = ca->cur;
    atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&ca->mu);
    return s;
}

static int snap_load(const struct ij_config *cfg, struct snap **out, char **errmsg)
{
    struct snap *s = cm_xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    pthread_mutex_init(&s->sign_mu, NULL);
    if (pki_ca_load(&s->ca, cfg->ca_cert_file, cfg->ca_key_file, cfg->ca_root_file, errmsg) != 0) {
        snap_unref(s);
        return CM_ERR_INVAL;
    }
    if (s->ca.bundle_pem == NULL || s->ca.bundle_pem[0] == '\0') {
        free(*errmsg);
        *errmsg = cm_xasprintf("%s: ca.root_file is required: %s holds no root for the trust "
                               "bundle",
                               cfg->file, cfg->ca_cert_file);
        snap_unref(s);
        return CM_ERR_INVAL;
    }
    s->not_after = pki_crt_not_after(&s->ca.issuer);
    *out = s;
    return 0;
}

int ij_ca_new(const struct ij_config *cfg, struct ij_ca **out, char **errmsg)
{
    *out = NULL;
    if (cfg->ca_cert_file == NULL)
        return 0;
    struct ij_ca *ca = cm_xcalloc(1, sizeof(*ca));
    ca->cfg = cfg;
    ca->fd = -1;
    pthread_mutex_init(&ca->mu, NULL);
    const char *files[3] = {cfg->ca_cert_file, cfg->ca_key_file, cfg->ca_root_file};
    cm_watch_init(&ca->watch, files, 3);
    if (snap_load(cfg, &ca->cur, errmsg) != 0 ||
        ij_jwks_file_new(cfg->ca_jwks_file, &ca->jwks, errmsg) != 0) {
        ij_ca_free(ca);
        return CM_ERR_INVAL;
    }
    if (cfg->ca_token_review) {
        char *api = cfg->kube_api != NULL ? cm_xstrdup(cfg->kube_api) : ij_kube_default_api();
        struct ij_tokrev_opts to = {
            .kube = {.api = api,
                     .token_file =
                         cfg->kube_token_file ? cfg->kube_token_file : IJ_KUBE_DEFAULT_TOKEN_FILE,
                     .ca_file = cfg->kube_ca_file ? cfg->kube_ca_file : IJ_KUBE_DEFAULT_CA_FILE,
                     .timeout_ms = (int)cfg->kube_timeout_ms,
                     .agent = "ca token review"},
            .audience = cfg->ca_audience,
            .cache_seconds = (int)cfg->ca_token_review_cache_seconds};
        char *inner = NULL;
        int rc = ij_tokrev_new(&to, &ca->tokrev, &inner);
        free(api);
        if (rc != 0) {
            *errmsg = cm_xasprintf("%s: ca.token_review: %s", cfg->file, inner);
            free(inner);
            ij_ca_free(ca);
            return CM_ERR_INVAL;
        }
    }
    atomic_store(&active, ca);
    *out = ca;
    return 0;
}

void ij_ca_free(struct ij_ca *ca)
{
    if (ca == NULL)
        return;
    struct ij_ca *expect = ca;
    atomic_compare_exchange_strong(&active, &expect, NULL);
    snap_unref(ca->cur);
    cm_watch_deinit(&ca->watch);
    ij_jwks_file_free(ca->jwks);
    ij_tokrev_free(ca->tokrev);
    free(ca->serve_cert);
    if (ca->serve_key != NULL) {
        memset(ca->serve_key, 0, strlen(ca->serve_key));
        free(ca->serve_key);
    }
    pthread_mutex_destroy(&ca->mu);
    free(ca);
}

void ij_ca_poll(struct ij_ca *ca, bool force)
{
    if (ca == NULL)
        return;
    char *err = NULL;
    /* A key and its certificate rarely land in the same instant: a
     * mismatched pair is refused now and loaded once both are there. */
    bool changed = cm_watch_poll(&ca->watch);
    if (changed || force) {
        struct snap *s = NULL;
        if (snap_load(ca->cfg, &s, &err) == 0) {
            pthread_mutex_lock(&ca->mu);
            struct snap *old = ca->cur;
            ca->cur = s;
            pthread_mutex_unlock(&ca->mu);
            snap_unref(old);
            atomic_fetch_add(&ca_reloads[1], 1);
            char na[32];
            cm_info("CA: signing material reloaded from %s (notAfter %s)", ca->cfg->ca_cert_file,
                    cm_fmt_rfc3339(s->not_after, na, sizeof(na)));
        } else {
            atomic_fetch_add(&ca_reloads[0], 1);
            cm_error("CA: signing material not reloaded, keeping the one in force: %s", err);
        }
        free(err);
        err = NULL;
    }
    ij_jwks_file_reload(ca->jwks, force, &err); /* logs itself */
    free(err);
}

/* ---- POST /v1/sign --------------------------------------------------------------------- */

static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned code, json_t *doc)
{
    char *body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (body == NULL)
        return MHD_NO;
    /* MUST_FREE: MHD frees the body with free() once sent. */
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (code == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                "Bearer realm=\"remora-ca\", error=\"invalid_token\"");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned code, const char *reason,
                                  const char *msg)
{
    return send_json(
        conn, code,
        json_pack("{s:s, s:s, s:i}", "error", msg, "reason", reason, "code", (int)code));
}

static void peer_name(struct MHD_Connection *conn, char *buf, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(buf, len, "?");
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    socklen_t sl = sa->sa_family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                             : (socklen_t)sizeof(struct sockaddr_in);
    struct cm_addr a;
    cm_addr_from_sockaddr(&a, sa, sl);
    cm_addr_format(&a, buf, len);
}

/* The SPIFFE ID a CSR asks for, for the log line of a refusal: parsed, not
 * verified (the signature only matters when we sign). */
static void asked_identity(const char *pem, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", pem == NULL ? "(no CSR)" : "(unreadable CSR)");
    if (pem == NULL)
        return;
    mbedtls_x509_csr csr;
    mbedtls_x509_csr_init(&csr);
    char *err = NULL;
    if (pki_csr_parse(&csr, (const unsigned char *)pem, strlen(pem), &err) == 0)
        pki_csr_spiffe_id(&csr, out, outlen, &err);
    free(err);
    mbedtls_x509_csr_free(&csr);
}

/* Everything known about one request, for its answer and its log line. */
struct sign_req {
    struct ij_ca *ca;
    struct MHD_Connection *conn;
    const char *csr_pem; /* borrowed from body_doc */
    struct ij_token_claims claims;
    bool have_claims;
    char asked[PKI_SPIFFE_MAX];
    uint64_t t0;
};

static enum MHD_Result refuse(struct sign_req *q, unsigned code, enum refusal rf, const char *fmt,
                              ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result refuse(struct sign_req *q, unsigned code, enum refusal rf, const char *fmt,
                              ...)
{
    char msg[700], peer[CM_ADDR_STRLEN], who[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (q->asked[0] == '\0')
        asked_identity(q->csr_pem, q->asked, sizeof(q->asked));
    peer_name(q->conn, peer, sizeof(peer));
    if (q->have_claims)
        snprintf(who, sizeof(who), "token for ns %s sa %s%s%s", q->claims.ns, q->claims.sa,
                 q->claims.pod[0] ? " pod " : "", q->claims.pod);
    else
        snprintf(who, sizeof(who), "no valid token");
    cm_warn("CA: refused %s from %s: %u %s: %s (asked for %s; %s)", IJ_CA_SIGN_PATH, peer, code,
            refusal_name(rf), msg, q->asked, who);
    atomic_fetch_add(&refused[rf], 1);
    cm_prom_hist_observe(&hist, cm_mono_us() - q->t0);
    return send_error(q->conn, code, refusal_name(rf), msg);
}

/* "Bearer <token>": the scheme is case-insensitive (RFC 7235 §2.1). */
static const char *bearer_token(struct MHD_Connection *conn, const char **why)
{
    const char *h =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h == NULL || *h == '\0') {
        *why = "no Authorization header: send \"Authorization: Bearer <service-account token>\"";
        return NULL;
    }
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t')) {
        *why = "Authorization is not a Bearer token";
        return NULL;
    }
    h += 6;
    while (*h == ' ' || *h == '\t')
        h++;
    if (*h == '\0') {
        *why = "Authorization: Bearer with an empty token";
        return NULL;
    }
    return h;
}

bool ij_ca_precheck(struct ij_ca *ca, struct MHD_Connection *conn)
{
    struct sign_req q = {.ca = ca, .conn = conn, .t0 = cm_mono_us()};
    char *err = NULL;
    enum ij_token_reason why;
    snprintf(q.asked, sizeof(q.asked), "(body not read)");
    const char *why_not = NULL, *token = bearer_token(conn, &why_not);
    if (token == NULL) {
        refuse(&q, MHD_HTTP_UNAUTHORIZED, RF_NO_TOKEN, "%s", why_not);
        return true;
    }
    struct ij_jwks *keys = ij_jwks_file_get(ca->jwks, JWKS_CHECK_MS);
    int rc = ij_token_verify(keys, token, strlen(token), ca->cfg->ca_audience, cm_wall_s(),
                             &q.claims, &why, &err);
    ij_jwks_unref(keys);
    if (rc != 0) {
        refuse(&q, MHD_HTTP_UNAUTHORIZED, (enum refusal)(RF_TOKEN + why - 1), "%s", err);
        free(err);
        return true;
    }
    free(err);
    return false;
}

enum MHD_Result ij_ca_sign(struct ij_ca *ca, struct MHD_Connection *conn, const char *body,
                           size_t len, bool too_large)
{
    struct sign_req q = {.ca = ca, .conn = conn, .t0 = cm_mono_us()};
    const struct ij_config *cfg = ca->cfg;
    json_t *doc = NULL;
    char *err = NULL, *chain = NULL;
    char body_err[200] = "", id[PKI_SPIFFE_MAX], want[PKI_SPIFFE_MAX];
    enum ij_token_reason why;
    enum MHD_Result ret;
    mbedtls_x509_csr csr;
    mbedtls_x509_csr_init(&csr);

    if (too_large || len > IJ_CA_MAX_BODY) {
        ret = refuse(&q, MHD_HTTP_CONTENT_TOO_LARGE, RF_TOO_LARGE, "body larger than %d bytes",
                     IJ_CA_MAX_BODY);
        goto out;
    }
    /* The body is read first only to name the identity asked for in the
     * log; the token is judged before anything in it is acted upon. */
    json_error_t je;
    doc = len ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &je) : NULL;
    json_t *v = json_object_get(doc, "csr");
    if (len == 0)
        snprintf(body_err, sizeof(body_err), "empty body; send {\"csr\": \"<PEM>\"}");
    else if (doc == NULL)
        snprintf(body_err, sizeof(body_err), "body is not JSON: %s", je.text);
    else if (!json_is_object(doc))
        snprintf(body_err, sizeof(body_err), "body is not a JSON object");
    else if (v == NULL)
        snprintf(body_err, sizeof(body_err), "body has no \"csr\"");
    else if (!json_is_string(v) || json_string_length(v) == 0)
        snprintf(body_err, sizeof(body_err), "\"csr\" is not a non-empty string");
    else
        q.csr_pem = json_string_value(v);

    const char *why_not = NULL, *token = bearer_token(conn, &why_not);
    if (token == NULL) {
        ret = refuse(&q, MHD_HTTP_UNAUTHORIZED, RF_NO_TOKEN, "%s", why_not);
        goto out;
    }
    struct ij_jwks *keys = ij_jwks_file_get(ca->jwks, JWKS_CHECK_MS);
    int rc = ij_token_verify(keys, token, strlen(token), cfg->ca_audience, cm_wall_s(), &q.claims,
                             &why, &err);
    ij_jwks_unref(keys);
    if (rc != 0) {
        ret = refuse(&q, MHD_HTTP_UNAUTHORIZED, (enum refusal)(RF_TOKEN + why - 1), "%s", err);
        goto out;
    }
    q.have_claims = true;
    if (pki_spiffe_build(cfg->trust_domain, q.claims.ns, q.claims.sa, want, sizeof(want), &err) !=
        0) {
        ret = refuse(&q, MHD_HTTP_UNAUTHORIZED, (enum refusal)(RF_TOKEN + IJ_TOKEN_CLAIMS - 1),
                     "token names no valid identity: %s", err);
        goto out;
    }
    if (q.csr_pem == NULL) {
        ret = refuse(&q, MHD_HTTP_BAD_REQUEST, RF_BAD_REQUEST, "%s", body_err);
        goto out;
    }
    if (pki_csr_parse_verify(&csr, (const unsigned char *)q.csr_pem, strlen(q.csr_pem), id,
                             sizeof(id), &err) != 0) {
        ret = refuse(&q, MHD_HTTP_BAD_REQUEST, RF_BAD_CSR, "bad CSR: %s", err);
        goto out;
    }
    snprintf(q.asked, sizeof(q.asked), "%s", id);
    if (strcmp(id, want) != 0) {
        ret = refuse(&q, MHD_HTTP_FORBIDDEN, RF_IDENTITY,
                     "the CSR asks for %s but the token is for %s", id, want);
        goto out;
    }
    if (ca->tokrev != NULL) { /* issue 14: last, as it may cost API calls */
        char *rwhy = NULL;
        enum ij_tokrev_result tr =
            ij_tokrev_check(ca->tokrev, token, strlen(token), &q.claims, cm_wall_ms(), &rwhy);
        if (tr != IJ_TOKREV_OK) {
            ret = tr == IJ_TOKREV_UNAVAILABLE
                      ? refuse(&q, MHD_HTTP_SERVICE_UNAVAILABLE, RF_REVIEW_UNAVAILABLE,
                               "%s; refusing to sign while the token cannot be checked "
                               "(ca.token_review)",
                               rwhy)
                      : refuse(&q, MHD_HTTP_UNAUTHORIZED,
                               tr == IJ_TOKREV_POD_GONE ? RF_REVIEW_POD_GONE : RF_REVIEW_REJECTED,
                               "%s", rwhy);
            free(rwhy);
            goto out;
        }
    }
    struct snap *s = snap_get(ca);
    pthread_mutex_lock(&s->sign_mu);
    rc = pki_sign_workload(&s->ca, &csr.pk, id, (uint32_t)cfg->ca_ttl_seconds, &chain, &err);
    pthread_mutex_unlock(&s->sign_mu);
    if (rc != 0) {
        snap_unref(s);
        cm_error("CA: signing %s failed: %s", id, err);
        ret = refuse(&q, MHD_HTTP_INTERNAL_SERVER_ERROR, RF_INTERNAL, "signing failed: %s", err);
        goto out;
    }
    json_t *answer = json_pack("{s:s, s:s}", "cert_chain", chain, "trust_bundle", s->ca.bundle_pem);
    snap_unref(s);
    atomic_fetch_add(&issued, 1);
    uint64_t us = cm_mono_us() - q.t0;
    cm_prom_hist_observe(&hist, us);
    cm_info("CA: issued %s (pod %s, key %s) for %lld s in %llu us", id,
            q.claims.pod[0] ? q.claims.pod : "?", q.claims.kid[0] ? q.claims.kid : "?",
            (long long)cfg->ca_ttl_seconds, (unsigned long long)us);
    ret = send_json(conn, MHD_HTTP_OK, answer);
out:
    mbedtls_x509_csr_free(&csr);
    json_decref(doc);
    free(chain);
    free(err);
    return ret;
}

/* ---- the ca.address server -------------------------------------------------------------- */

/* One request on the CA's own port; freed by MHD's completion callback. */
struct req {
    char *buf;
    size_t len;
    size_t reserved; /* counted against webhook.max_buffered_bytes */
    size_t dropped;  /* bytes discarded past the bound */
    bool too_large;  /* answer 413 once the body is in */
    bool answered;   /* a response was queued at the first call */
    bool sign;       /* POST /v1/sign */
};

static enum MHD_Result route(struct MHD_Connection *conn, const char *url, const char *method)
{
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, "HEAD") == 0;
    if (strcmp(url, IJ_CA_SIGN_PATH) == 0)
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method", "use POST");
    if (strcmp(url, "/healthz") == 0 && get)
        return send_json(conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
    return send_error(conn, MHD_HTTP_NOT_FOUND, "path",
                      "no such path; the CA answers POST " IJ_CA_SIGN_PATH);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    (void)version;
    struct ij_ca *ca = cls;
    struct req *r = *req_cls;
    if (ij_guard_expired(ca->guard, conn)) /* see server.c's on_request */
        return MHD_NO;
    if (r == NULL) {
        r = cm_xcalloc(1, sizeof(*r));
        *req_cls = r;
        r->sign = strcmp(url, IJ_CA_SIGN_PATH) == 0 && strcmp(method, MHD_HTTP_METHOD_POST) == 0;
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        char *end;
        errno = 0;
        if (r->sign && cl != NULL && strtoull(cl, &end, 10) > DRAIN_MAX && errno == 0 &&
            *end == '\0') {
            /* Refused before reading; MHD closes the connection after it. A
             * body over the bound but under DRAIN_MAX is read and dropped
             * instead: closing on a client still sending resets the
             * connection before it can read the 413. */
            r->answered = true;
            return ij_ca_sign(ca, conn, NULL, 0, true);
        }
        /* No valid token: 401 before reading a byte of the body. */
        if (r->sign && ij_ca_precheck(ca, conn))
            r->answered = true;
        return MHD_YES;
    }
    size_t n = *upload_data_size;
    if (n > 0) {
        *upload_data_size = 0;
        if (r->answered || !r->sign || r->too_large || r->len + n > IJ_CA_MAX_BODY) {
            r->too_large = r->sign;
            r->dropped += n;
            /* A client that keeps sending past DRAIN_MAX is cut off. */
            return r->dropped > DRAIN_MAX ? MHD_NO : MHD_YES;
        }
        if (!ij_guard_reserve(ca->cfg, n)) {
            r->answered = true;
            return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "busy",
                              "busy: request bodies held pass webhook.max_buffered_bytes; retry");
        }
        r->reserved += n;
        r->buf = cm_xrealloc(r->buf, r->len + n + 1);
        memcpy(r->buf + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }
    if (r->answered)
        return MHD_YES;
    r->answered = true;
    if (!r->sign)
        return route(conn, url, method);
    return ij_ca_sign(ca, conn, r->buf, r->len, r->too_large);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct ij_ca *ca = cls;
    (void)toe;
    struct req *r = *req_cls;
    *req_cls = NULL;
    ij_guard_request_done(ca->guard, conn, r != NULL ? r->reserved : 0);
    if (r != NULL)
        free(r->buf);
    free(r);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct ij_ca *ca = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = ij_guard_conn_start(ca->guard, conn);
        atomic_fetch_add(&ca->connections, 1);
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        ij_guard_conn_end(ca->guard, *socket_context);
        *socket_context = NULL;
        atomic_fetch_sub(&ca->connections, 1);
    }
}

int ij_ca_issue_serving(const struct ij_config *cfg, const char *cn, const char *what,
                        char **cert_pem, char **key_pem, char **errmsg)
{
    static const char *const names[] = {"remora-injector.remora-system.svc",
                                        "remora-injector.remora-system.svc.cluster.local", NULL};
    unsigned char *cert = NULL, *key = NULL;
    size_t clen = 0, klen = 0;
    char *inner = NULL;
    int rc = CM_ERR_INVAL;
    if (pki_read_file(cfg->ca_cert_file, CA_MAX_PEM, &cert, &clen, errmsg) != 0 ||
        pki_read_file(cfg->ca_key_file, CA_MAX_PEM, &key, &klen, errmsg) != 0)
        goto out;
    if (pki_make_server(cn, names, SERVE_CERT_DAYS, (const char *)cert, (const char *)key, cert_pem,
                        key_pem, &inner) != 0) {
        cm_fail(errmsg, CM_ERR_INVAL, "cannot issue %s's certificate: %s", what, inner);
        goto out;
    }
    rc = 0;
out:
    free(inner);
    free(cert);
    if (key != NULL) {
        memset(key, 0, klen);
        free(key);
    }
    return rc;
}

/* The CA port's certificate: issued by the CA to itself, so a proxy checks
 * it with the mesh root it already holds (ca_root), whoever issued the
 * webhook's certificate (cert-manager, openssl). */
static int make_serving_cert(struct ij_ca *ca, char **errmsg)
{
    char *inner = NULL;
    int rc = ij_ca_issue_serving(ca->cfg, "remora-ca", "the CA port", &ca->serve_cert,
                                 &ca->serve_key, &inner);
    if (rc != 0)
        cm_fail(errmsg, rc, "CA: %s", inner);
    free(inner);
    return rc;
}

int ij_ca_serve(struct ij_ca *ca, char **errmsg)
{
    const struct ij_config *cfg = ca->cfg;
    struct cm_addr bound;
    char addr[CM_ADDR_STRLEN], na[32];
    struct ij_jwks_stats st;
    ij_jwks_file_stats(ca->jwks, &st);
    cm_info("CA: signing for trust domain %s with %s (notAfter %s), %lld s certificates; "
            "JWKS %s: %zu keys (%zu skipped), audience %s",
            cfg->trust_domain, cfg->ca_cert_file,
            cm_fmt_rfc3339(ca->cur->not_after, na, sizeof(na)), (long long)cfg->ca_ttl_seconds,
            cfg->ca_jwks_file, st.keys, st.skipped, cfg->ca_audience);
    if (cfg->ca_address == NULL) {
        cm_info("CA: serving POST %s on the webhook's port", IJ_CA_SIGN_PATH);
        return 0;
    }
    if (make_serving_cert(ca, errmsg) != 0)
        return CM_ERR_INVAL;
    ca->fd = ij_server_listen(&cfg->ca_addr);
    if (ca->fd < 0) {
        *errmsg = cm_xasprintf("%s: ca.address: cannot listen on %s: %s", cfg->file,
                               cfg->ca_address, strerror(errno));
        return CM_ERR_IO;
    }
    if (cm_net_local_addr(ca->fd, &bound) == 0)
        ca->port = cm_addr_port(&bound);
    ca->guard = ij_guard_new("ca", cfg);
    ca->daemon = MHD_start_daemon(
        IJ_SERVER_MHD_FLAGS, 0, NULL, NULL, on_request, ca, MHD_OPTION_EXTERNAL_LOGGER,
        ij_server_mhd_log, ca, MHD_OPTION_LISTEN_SOCKET, ca->fd, MHD_OPTION_HTTPS_MEM_CERT,
        ca->serve_cert, MHD_OPTION_HTTPS_MEM_KEY, ca->serve_key, MHD_OPTION_HTTPS_PRIORITIES,
        IJ_SERVER_TLS_PRIORITIES, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->timeout_seconds, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections_per_ip, MHD_OPTION_NOTIFY_COMPLETED, on_completed, ca,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, ca, MHD_OPTION_END);
    if (ca->daemon == NULL) {
        ij_guard_free(ca->guard);
        ca->guard = NULL;
        *errmsg = cm_xasprintf("cannot start the CA's HTTPS server on %s (libmicrohttpd)",
                               cfg->ca_address);
        close(ca->fd);
        ca->fd = -1;
        return CM_ERR_IO;
    }
    cm_info("CA: serving POST %s on https %s (port %u), with a certificate of its own for "
            "remora-injector.remora-system.svc (%d days)",
            IJ_CA_SIGN_PATH, cm_addr_format(&bound, addr, sizeof(addr)), ca->port, SERVE_CERT_DAYS);
    return 0;
}

unsigned ij_ca_port(const struct ij_ca *ca)
{
    return ca != NULL ? ca->port : 0;
}

void ij_ca_stop(struct ij_ca *ca, unsigned grace_ms)
{
    if (ca == NULL || ca->daemon == NULL)
        return;
    MHD_socket fd = MHD_quiesce_daemon(ca->daemon);
    uint64_t deadline = cm_mono_ms() + grace_ms;
    while (atomic_load(&ca->connections) > 0 && cm_mono_ms() < deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(ca->daemon);
    ca->daemon = NULL;
    ij_guard_free(ca->guard);
    ca->guard = NULL;
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    ca->fd = -1;
}

/* ---- /metrics -------------------------------------------------------------------------- */

void ij_ca_metrics_write(struct cm_prom *o)
{
    struct ij_ca *ca = atomic_load(&active);
    if (ca == NULL)
        return;
    cm_prom_printf(
        o,
        "# HELP remora_injector_ca_certificates_issued_total Workload certificates signed.\n"
        "# TYPE remora_injector_ca_certificates_issued_total counter\n"
        "remora_injector_ca_certificates_issued_total %llu\n",
        (unsigned long long)atomic_load(&issued));
    cm_prom_head(o, "remora_injector_ca_refusals_total", "counter",
                 "Sign requests refused, by reason.");
    for (int r = 0; r < RF__COUNT; r++)
        cm_prom_printf(o, "remora_injector_ca_refusals_total{reason=\"%s\"} %llu\n",
                       refusal_name((enum refusal)r), (unsigned long long)atomic_load(&refused[r]));
    cm_prom_hist_write(o, "remora_injector_ca_sign_duration_seconds",
                       "Time to answer one sign request, from the last body byte to the response.",
                       &hist);

    struct ij_jwks_stats st;
    ij_jwks_file_stats(ca->jwks, &st);
    struct snap *s = snap_get(ca);
    int64_t not_after = s->not_after;
    snap_unref(s);
    cm_prom_printf(o,
                   "# HELP remora_injector_ca_jwks_keys Service-account token keys in force.\n"
                   "# TYPE remora_injector_ca_jwks_keys gauge\n"
                   "remora_injector_ca_jwks_keys %zu\n"
                   "# HELP remora_injector_ca_jwks_reloads_total JWKS file reloads.\n"
                   "# TYPE remora_injector_ca_jwks_reloads_total counter\n"
                   "remora_injector_ca_jwks_reloads_total{result=\"ok\"} %llu\n"
                   "remora_injector_ca_jwks_reloads_total{result=\"error\"} %llu\n",
                   st.keys, (unsigned long long)st.reloads_ok,
                   (unsigned long long)st.reloads_failed);
    cm_prom_printf(
        o,
        "# HELP remora_injector_ca_reloads_total Signing material (ca.cert_file, key, root) "
        "reloads.\n"
        "# TYPE remora_injector_ca_reloads_total counter\n"
        "remora_injector_ca_reloads_total{result=\"ok\"} %llu\n"
        "remora_injector_ca_reloads_total{result=\"error\"} %llu\n"
        "# HELP remora_injector_ca_cert_expiry_timestamp_seconds notAfter of the signing "
        "certificate.\n"
        "# TYPE remora_injector_ca_cert_expiry_timestamp_seconds gauge\n"
        "remora_injector_ca_cert_expiry_timestamp_seconds %lld\n",
        (unsigned long long)atomic_load(&ca_reloads[1]),
        (unsigned long long)atomic_load(&ca_reloads[0]), (long long)not_after);
    char *tr = ij_tokrev_metrics(ca->tokrev); /* issue 14; empty without ca.token_review */
    cm_prom_add(o, tr, strlen(tr));
    free(tr);
}
