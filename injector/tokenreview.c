/* TokenReview and the bound pod's existence, cached (tokenreview.h). */
#include "injector/tokenreview.h"
#include "injector/tokenreview_int.h"

#include <jansson.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/xalloc.h"

#define REVIEW_PATH "/apis/authentication.k8s.io/v1/tokenreviews"
#define TEXT_MAX    160 /* of a message from the API server quoted in ours */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    char buf[768];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    /* it may quote the API server: printable ASCII only, one log line */
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    return cm_xstrdup(buf);
}

/* ---- decoders --------------------------------------------------------------------------- */

static const char *str_at(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

enum ij_tokrev_result ij_tokrev_judge_review(const char *body, size_t len,
                                             const struct ij_token_claims *c, const char *audience,
                                             char **why)
{
    *why = NULL;
    json_error_t je;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    enum ij_tokrev_result res = IJ_TOKREV_UNAVAILABLE;
    json_t *st = json_object_get(doc, "status");
    const char *kind = str_at(doc, "kind");
    if (!json_is_object(doc) || (kind != NULL && strcmp(kind, "TokenReview") != 0) ||
        !json_is_object(st)) {
        *why = fmt("token review: the API server's answer is not a TokenReview with a status%s%s",
                   doc == NULL ? ": " : "", doc == NULL ? je.text : "");
        goto out;
    }
    json_t *auth = json_object_get(st, "authenticated");
    const char *err = str_at(st, "error");
    if (auth != NULL && !json_is_boolean(auth)) {
        *why = fmt("token review: status.authenticated is not a boolean");
        goto out;
    }
    res = IJ_TOKREV_REJECTED;
    if (!json_is_true(auth)) {
        *why = fmt("token review: the API server does not authenticate this token%s%.*s",
                   err != NULL && *err ? ": " : " (revoked, or its pod or secret is gone)",
                   TEXT_MAX, err != NULL ? err : "");
        goto out;
    }
    json_t *user = json_object_get(st, "user");
    const char *name = str_at(user, "username");
    char want[2 * IJ_TOKEN_NAME_MAX + 32];
    snprintf(want, sizeof(want), "system:serviceaccount:%s:%s", c->ns, c->sa);
    if (name == NULL || strcmp(name, want) != 0) {
        *why = fmt("token review: the API server says the token is for \"%.*s\", but it claims %s",
                   TEXT_MAX, name != NULL ? name : "(no username)", want);
        goto out;
    }
    json_t *auds = json_object_get(st, "audiences");
    if (auds != NULL && !json_is_null(auds)) {
        bool found = false;
        size_t i;
        json_t *a;
        json_array_foreach(auds, i, a)
        {
            if (json_is_string(a) && strcmp(json_string_value(a), audience) == 0)
                found = true;
        }
        if (!found) {
            *why = fmt("token review: the API server does not accept the token for audience %s",
                       audience);
            goto out;
        }
    }
    /* The API server's own view of the bound pod, when it gives one. */
    json_t *puid = json_array_get(
        json_object_get(json_object_get(user, "extra"), "authentication.kubernetes.io/pod-uid"), 0);
    if (json_is_string(puid) && c->pod_uid[0] != '\0' &&
        strcmp(json_string_value(puid), c->pod_uid) != 0) {
        res = IJ_TOKREV_POD_GONE;
        *why = fmt("token review: the token is bound to pod uid %s, the API server says %.*s",
                   c->pod_uid, 64, json_string_value(puid));
        goto out;
    }
    res = IJ_TOKREV_OK;
out:
    json_decref(doc);
    return res;
}

int ij_tokrev_pod_uid(const char *body, size_t len, char **uid, char **errmsg)
{
    *uid = NULL;
    json_error_t je;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    const char *kind = str_at(doc, "kind");
    const char *u = str_at(json_object_get(doc, "metadata"), "uid");
    int rc = 0;
    if (!json_is_object(doc))
        rc = (*errmsg = fmt("pod: not a JSON object%s%s", doc == NULL ? ": " : "",
                            doc == NULL ? je.text : ""),
              CM_ERR_INVAL);
    else if (kind != NULL && strcmp(kind, "Pod") != 0)
        rc = (*errmsg = fmt("pod: kind is %.40s, want Pod", kind), CM_ERR_INVAL);
    else if (u == NULL || *u == '\0' || strlen(u) >= IJ_TOKEN_UID_MAX)
        rc = (*errmsg = fmt("pod: no metadata.uid"), CM_ERR_INVAL);
    else
        *uid = cm_xstrdup(u);
    json_decref(doc);
    return rc;
}

/* ---- the cache -------------------------------------------------------------------------- */

static size_t bucket_of(const unsigned char key[32])
{
    size_t h = (size_t)key[0] | (size_t)key[1] << 8 | (size_t)key[2] << 16;
    return (h % (IJ_TOKREV_CACHE_SLOTS / IJ_TOKREV_BUCKET)) * IJ_TOKREV_BUCKET;
}

/* Under mu. */
struct ij_tokrev_slot *ij_tokrev_cache_lookup(struct ij_tokrev *r, const unsigned char key[32],
                                              int64_t now)
{
    struct ij_tokrev_slot *b = r->slots + bucket_of(key);
    for (int i = 0; i < IJ_TOKREV_BUCKET; i++)
        if (b[i].expires_ms > now && memcmp(b[i].key, key, 32) == 0)
            return &b[i];
    return NULL;
}

/* Under mu: the same token's slot, an empty or expired one, else the one
 * closest to expiry. */
void ij_tokrev_cache_store(struct ij_tokrev *r, const unsigned char key[32], int64_t now,
                           int64_t until, enum ij_tokrev_result res, const char *msg)
{
    struct ij_tokrev_slot *b = r->slots + bucket_of(key), *victim = &b[0];
    for (int i = 0; i < IJ_TOKREV_BUCKET; i++) {
        if (memcmp(b[i].key, key, 32) == 0 || b[i].expires_ms <= now) {
            victim = &b[i];
            break;
        }
        if (b[i].expires_ms < victim->expires_ms)
            victim = &b[i];
    }
    memcpy(victim->key, key, 32);
    victim->expires_ms = until;
    victim->result = (unsigned char)res;
    snprintf(victim->msg, sizeof(victim->msg), "%s", msg != NULL ? msg : "");
}

/* ---- the API calls ---------------------------------------------------------------------- */

static enum ij_tokrev_result ask_review(struct ij_tokrev *r, const char *token, size_t len,
                                        const struct ij_token_claims *c, char **why)
{
    json_t *tok = json_stringn(token, len);
    if (tok == NULL) { /* not UTF-8: the JWKS check would not have passed it */
        *why = fmt("token review: the token is not text");
        return IJ_TOKREV_REJECTED;
    }
    json_t *doc = json_pack("{s:s, s:s, s:{s:O, s:[s]}}", "apiVersion", "authentication.k8s.io/v1",
                            "kind", "TokenReview", "spec", "token", tok, "audiences", r->audience);
    char *body = json_dumps(doc, JSON_COMPACT);
    /* the token's copies are wiped before they are freed */
    mbedtls_platform_zeroize((char *)json_string_value(tok), len);
    json_decref(tok);
    json_decref(doc);
    struct ij_kube_resp resp;
    char *err = NULL;
    size_t blen = strlen(body);
    int rc =
        ij_kube_request(r->kube, "POST", REVIEW_PATH, "application/json", body, blen, &resp, &err);
    mbedtls_platform_zeroize(body, blen);
    free(body);
    if (rc != 0) {
        *why = fmt("token review: no answer from the Kubernetes API server: %s", err);
        free(err);
        return IJ_TOKREV_UNAVAILABLE;
    }
    enum ij_tokrev_result res;
    if (resp.status != 200 && resp.status != 201) {
        char *d = ij_kube_resp_describe(&resp);
        *why = fmt("token review: POST %s: %s%s", REVIEW_PATH, d,
                   resp.status == 401 || resp.status == 403
                       ? " (the injector's service account needs RBAC create tokenreviews)"
                       : "");
        free(d);
        res = IJ_TOKREV_UNAVAILABLE;
    } else {
        res = ij_tokrev_judge_review(resp.body, resp.body_len, c, r->audience, why);
    }
    ij_kube_resp_deinit(&resp);
    return res;
}

static enum ij_tokrev_result ask_pod(struct ij_tokrev *r, const struct ij_token_claims *c,
                                     char **why)
{
    char *ns = ij_kube_query_escape(c->ns), *name = ij_kube_query_escape(c->pod);
    char *path = cm_xasprintf("/api/v1/namespaces/%s/pods/%s", ns, name);
    free(ns);
    free(name);
    struct ij_kube_resp resp;
    char *err = NULL, *uid = NULL;
    enum ij_tokrev_result res = IJ_TOKREV_UNAVAILABLE;
    int rc = ij_kube_request(r->kube, "GET", path, NULL, NULL, 0, &resp, &err);
    if (rc != 0) {
        *why = fmt("token review: no answer from the Kubernetes API server: %s", err);
        goto out;
    }
    if (resp.status == 404) {
        res = IJ_TOKREV_POD_GONE;
        *why = fmt("the token is bound to pod %s/%s, which no longer exists", c->ns, c->pod);
    } else if (resp.status != 200) {
        char *d = ij_kube_resp_describe(&resp);
        *why = fmt("token review: GET %s: %s%s", path, d,
                   resp.status == 401 || resp.status == 403
                       ? " (the injector's service account needs RBAC get pods)"
                       : "");
        free(d);
    } else if (ij_tokrev_pod_uid(resp.body, resp.body_len, &uid, &err) != 0) {
        *why = fmt("token review: GET %s: %s", path, err);
    } else if (c->pod_uid[0] != '\0' && strcmp(uid, c->pod_uid) != 0) {
        res = IJ_TOKREV_POD_GONE;
        *why = fmt("the token is bound to pod %s/%s uid %s, which no longer exists (a pod of "
                   "that name now has uid %s)",
                   c->ns, c->pod, c->pod_uid, uid);
    } else {
        res = IJ_TOKREV_OK;
    }
    if (rc == 0)
        ij_kube_resp_deinit(&resp);
out:
    free(uid);
    free(err);
    free(path);
    return res;
}

/* ---- the checker ------------------------------------------------------------------------- */

int ij_tokrev_new(const struct ij_tokrev_opts *o, struct ij_tokrev **out, char **errmsg)
{
    struct ij_tokrev *r = cm_xcalloc(1, sizeof(*r));
    int rc = ij_kube_new(&o->kube, &r->kube, errmsg);
    if (rc != 0) {
        free(r);
        return rc;
    }
    r->audience = o->audience;
    r->cache_ms = (int64_t)o->cache_seconds * 1000;
    r->slots = cm_xcalloc(IJ_TOKREV_CACHE_SLOTS, sizeof(*r->slots));
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

void ij_tokrev_free(struct ij_tokrev *r)
{
    if (r == NULL)
        return;
    ij_kube_free(r->kube);
    free(r->slots);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

enum ij_tokrev_result ij_tokrev_check(struct ij_tokrev *r, const char *token, size_t len,
                                      const struct ij_token_claims *c, int64_t now_ms, char **why)
{
    unsigned char key[32];
    *why = NULL;
    mbedtls_sha256_ret((const unsigned char *)token, len, key, 0);
    pthread_mutex_lock(&r->mu);
    struct ij_tokrev_slot *s = r->cache_ms > 0 ? ij_tokrev_cache_lookup(r, key, now_ms) : NULL;
    if (s != NULL) {
        enum ij_tokrev_result res = (enum ij_tokrev_result)s->result;
        if (res != IJ_TOKREV_OK)
            *why = cm_xasprintf("%s (cached)", s->msg);
        r->count[IJ_TOKREV_CNT_HIT]++;
        pthread_mutex_unlock(&r->mu);
        return res;
    }
    r->count[IJ_TOKREV_CNT_MISS]++;
    pthread_mutex_unlock(&r->mu);

    enum ij_tokrev_result res = ask_review(r, token, len, c, why);
    if (res == IJ_TOKREV_OK && c->pod[0] != '\0')
        res = ask_pod(r, c, why);

    pthread_mutex_lock(&r->mu);
    r->count[res == IJ_TOKREV_OK         ? IJ_TOKREV_CNT_OK
             : res == IJ_TOKREV_REJECTED ? IJ_TOKREV_CNT_REJECTED
             : res == IJ_TOKREV_POD_GONE ? IJ_TOKREV_CNT_POD_GONE
                                         : IJ_TOKREV_CNT_ERROR]++;
    /* An answer is kept; the lack of one is not. Never past the token's exp. */
    int64_t until = now_ms + r->cache_ms;
    if (c->exp > 0 && c->exp * 1000 < until)
        until = c->exp * 1000;
    if (res != IJ_TOKREV_UNAVAILABLE && r->cache_ms > 0 && until > now_ms)
        ij_tokrev_cache_store(r, key, now_ms, until, res, *why);
    pthread_mutex_unlock(&r->mu);
    mbedtls_platform_zeroize(key, sizeof(key));
    return res;
}

char *ij_tokrev_metrics(struct ij_tokrev *r)
{
    if (r == NULL)
        return cm_xstrdup("");
    uint64_t n[IJ_TOKREV_CNT__COUNT];
    pthread_mutex_lock(&r->mu);
    memcpy(n, r->count, sizeof(n));
    pthread_mutex_unlock(&r->mu);
    return cm_xasprintf(
        "# HELP remora_injector_ca_token_review_cache_total Token checks answered from the "
        "cache (hit) or by the API server (miss).\n"
        "# TYPE remora_injector_ca_token_review_cache_total counter\n"
        "remora_injector_ca_token_review_cache_total{result=\"hit\"} %llu\n"
        "remora_injector_ca_token_review_cache_total{result=\"miss\"} %llu\n"
        "# HELP remora_injector_ca_token_reviews_total Answers of the API server "
        "(TokenReview, then the bound pod); error: no answer (refused, not cached).\n"
        "# TYPE remora_injector_ca_token_reviews_total counter\n"
        "remora_injector_ca_token_reviews_total{result=\"ok\"} %llu\n"
        "remora_injector_ca_token_reviews_total{result=\"rejected\"} %llu\n"
        "remora_injector_ca_token_reviews_total{result=\"pod_gone\"} %llu\n"
        "remora_injector_ca_token_reviews_total{result=\"error\"} %llu\n",
        (unsigned long long)n[IJ_TOKREV_CNT_HIT], (unsigned long long)n[IJ_TOKREV_CNT_MISS],
        (unsigned long long)n[IJ_TOKREV_CNT_OK], (unsigned long long)n[IJ_TOKREV_CNT_REJECTED],
        (unsigned long long)n[IJ_TOKREV_CNT_POD_GONE], (unsigned long long)n[IJ_TOKREV_CNT_ERROR]);
}
