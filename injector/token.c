#include "injector/token.h"
#include "injector/token_int.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <mbedtls/base64.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "common/watch.h"

#define RSA_MIN_BITS 2048
#define RSA_MAX_BITS 8192
#define P256_LEN     32

enum jwk_type {
    JWK_RSA = 0, /* kty RSA, verified RS256 (PKCS#1 v1.5, SHA-256) */
    JWK_EC       /* kty EC, crv P-256, verified ES256 */
};

struct jwk {
    char *kid; /* NULL when the key has none */
    enum jwk_type type;
    mbedtls_pk_context pk;
    /* mbedTLS caches inside a key while using it (the ECP comb table of the
     * group, RSA's Montgomery constant): one verification at a time per key. */
    pthread_mutex_t mu;
};

struct ij_jwks {
    atomic_int refs;
    size_t n, skipped;
    struct jwk keys[];
};

/* ---- small helpers ------------------------------------------------------------------ */

/* RFC 3339 for dates people will read; a number for dates no calendar has. */
static const char *fmt_time(int64_t t, char *buf, size_t len)
{
    if (t < 0 || t > 253402300799LL) /* 9999-12-31T23:59:59Z */
        snprintf(buf, len, "%lld", (long long)t);
    else
        cm_fmt_rfc3339(t, buf, len);
    return buf;
}

static int refuse(enum ij_token_reason *reason, enum ij_token_reason r, char **errmsg,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int refuse(enum ij_token_reason *reason, enum ij_token_reason r, char **errmsg,
                  const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cm_vfail(errmsg, CM_ERR_INVAL, fmt, ap);
    va_end(ap);
    *reason = r;
    return CM_ERR_INVAL;
}

static bool b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Decode unpadded base64url (RFC 7515 §2) with mbedTLS after translating the
 * alphabet. Only the 64 characters are accepted: mbedTLS itself would skip
 * white space, and a padded or otherwise altered part is not what was signed.
 * Returns 0 and *out (heap, NUL-terminated one past *outlen) or -1. */
int ij_token_b64url_decode(const char *in, size_t len, unsigned char **out, size_t *outlen)
{
    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (!b64url_char((unsigned char)in[i]))
            return -1;
    size_t padded = len + (4 - len % 4) % 4;
    unsigned char *tmp = cm_xmalloc(padded + 1);
    for (size_t i = 0; i < len; i++)
        tmp[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : (unsigned char)in[i];
    memset(tmp + len, '=', padded - len);
    size_t need = 0;
    int ret = mbedtls_base64_decode(NULL, 0, &need, tmp, padded);
    if (ret != 0 && ret != MBEDTLS_ERR_BASE64_BUFFER_TOO_SMALL) {
        free(tmp);
        return -1;
    }
    unsigned char *buf = cm_xmalloc(need + 1);
    size_t n = 0;
    ret = need ? mbedtls_base64_decode(buf, need, &n, tmp, padded) : 0;
    free(tmp);
    if (ret != 0) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *outlen = n;
    return 0;
}

/* Parse a JSON object; duplicate keys refused (which "alg" would count?). */
static json_t *parse_object(const unsigned char *buf, size_t len)
{
    json_error_t e;
    json_t *j = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &e);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* A string member of at most max-1 bytes; absent gives NULL without error.
 * Returns -1 when present but not a string, empty, or too long. */
static int opt_string(json_t *o, const char *key, size_t max, const char **out)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (v == NULL)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= max ||
        strlen(json_string_value(v)) != json_string_length(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

/* ---- JWKS ------------------------------------------------------------------------- */

static void jwks_free(struct ij_jwks *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->keys[i].kid);
        mbedtls_pk_free(&k->keys[i].pk);
        pthread_mutex_destroy(&k->keys[i].mu);
    }
    free(k);
}

struct ij_jwks *ij_jwks_ref(struct ij_jwks *k)
{
    atomic_fetch_add(&k->refs, 1);
    return k;
}

void ij_jwks_unref(struct ij_jwks *k)
{
    if (k != NULL && atomic_fetch_sub(&k->refs, 1) == 1)
        jwks_free(k);
}

size_t ij_jwks_count(const struct ij_jwks *k)
{
    return k->n;
}

size_t ij_jwks_skipped(const struct ij_jwks *k)
{
    return k->skipped;
}

/* A base64url member that must decode to between min and max bytes. */
static int get_bytes(json_t *o, const char *key, size_t min, size_t max, unsigned char **out,
                     size_t *outlen, const char *where, char **errmsg)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: no \"%s\"", where, key);
    if (!json_is_string(v))
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: \"%s\" is not a string", where, key);
    if (json_string_length(v) > 2 * max + 4 ||
        ij_token_b64url_decode(json_string_value(v), json_string_length(v), out, outlen) != 0)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: \"%s\" is not base64url", where, key);
    if (*outlen < min || *outlen > max) {
        free(*out);
        *out = NULL;
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: \"%s\" is %zu bytes, expected %s%zu", where, key,
                       *outlen, min == max ? "" : "at most ", max);
    }
    return 0;
}

/* k->pk set up for a key of `type` (`what`: "RSA", "EC"). */
static int pk_setup(struct jwk *k, mbedtls_pk_type_t type, const char *what, const char *where,
                    char **errmsg)
{
    int ret = mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(type));
    if (ret != 0)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: %s key setup failed (-0x%04x)", where, what,
                       (unsigned)-ret);
    return 0;
}

static int load_rsa(struct jwk *k, json_t *o, const char *where, char **errmsg)
{
    unsigned char *n = NULL, *e = NULL;
    size_t nlen = 0, elen = 0;
    int rc = CM_ERR_INVAL;
    if (get_bytes(o, "n", 1, RSA_MAX_BITS / 8, &n, &nlen, where, errmsg) != 0 ||
        get_bytes(o, "e", 1, 8, &e, &elen, where, errmsg) != 0 ||
        pk_setup(k, MBEDTLS_PK_RSA, "RSA", where, errmsg) != 0)
        goto out;
    mbedtls_rsa_context *rsa = mbedtls_pk_rsa(k->pk);
    if (mbedtls_rsa_import_raw(rsa, n, nlen, NULL, 0, NULL, 0, NULL, 0, e, elen) != 0 ||
        mbedtls_rsa_complete(rsa) != 0 || mbedtls_rsa_check_pubkey(rsa) != 0) {
        cm_fail(errmsg, CM_ERR_INVAL, "%s: not a valid RSA public key (n, e)", where);
        goto out;
    }
    size_t bits = mbedtls_pk_get_bitlen(&k->pk);
    if (bits < RSA_MIN_BITS) {
        cm_fail(errmsg, CM_ERR_INVAL, "%s: RSA key of %zu bits; at least %d are required", where,
                bits, RSA_MIN_BITS);
        goto out;
    }
    k->type = JWK_RSA;
    rc = 0;
out:
    free(n);
    free(e);
    return rc;
}

static int load_ec(struct jwk *k, json_t *o, const char *where, char **errmsg)
{
    unsigned char *x = NULL, *y = NULL, pt[1 + 2 * P256_LEN];
    size_t xlen = 0, ylen = 0;
    int rc = CM_ERR_INVAL;
    if (get_bytes(o, "x", P256_LEN, P256_LEN, &x, &xlen, where, errmsg) != 0 ||
        get_bytes(o, "y", P256_LEN, P256_LEN, &y, &ylen, where, errmsg) != 0 ||
        pk_setup(k, MBEDTLS_PK_ECKEY, "EC", where, errmsg) != 0)
        goto out;
    mbedtls_ecp_keypair *ec = mbedtls_pk_ec(k->pk);
    pt[0] = 0x04; /* uncompressed point */
    memcpy(pt + 1, x, P256_LEN);
    memcpy(pt + 1 + P256_LEN, y, P256_LEN);
    if (mbedtls_ecp_group_load(&ec->grp, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
        mbedtls_ecp_point_read_binary(&ec->grp, &ec->Q, pt, sizeof(pt)) != 0 ||
        mbedtls_ecp_check_pubkey(&ec->grp, &ec->Q) != 0) {
        cm_fail(errmsg, CM_ERR_INVAL, "%s: (x, y) is not a point on P-256", where);
        goto out;
    }
    k->type = JWK_EC;
    rc = 0;
out:
    free(x);
    free(y);
    return rc;
}

/* One member of "keys". Returns 0 kept, 1 skipped (unsupported), or
 * CM_ERR_INVAL. */
static int load_key(struct jwk *k, json_t *o, const char *where, char **errmsg)
{
    const char *kty = NULL, *use = NULL, *alg = NULL, *crv = NULL, *kid = NULL;
    if (!json_is_object(o))
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: not an object", where);
    if (opt_string(o, "kty", 16, &kty) != 0 || kty == NULL)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: \"kty\" missing or not a short string", where);
    if (opt_string(o, "use", 16, &use) != 0 || opt_string(o, "alg", 16, &alg) != 0)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: \"use\" or \"alg\" is not a short string", where);
    if (opt_string(o, "kid", IJ_TOKEN_NAME_MAX, &kid) != 0)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: \"kid\" is not a string of 1..%d bytes", where,
                       IJ_TOKEN_NAME_MAX - 1);
    if (use != NULL && strcmp(use, "sig") != 0)
        return 1;
    if (strcmp(kty, "RSA") == 0) {
        if (alg != NULL && strcmp(alg, "RS256") != 0)
            return 1;
        if (load_rsa(k, o, where, errmsg) != 0)
            return CM_ERR_INVAL;
    } else if (strcmp(kty, "EC") == 0) {
        if (opt_string(o, "crv", 16, &crv) != 0 || crv == NULL)
            return cm_fail(errmsg, CM_ERR_INVAL, "%s: \"crv\" missing or not a short string",
                           where);
        if (strcmp(crv, "P-256") != 0 || (alg != NULL && strcmp(alg, "ES256") != 0))
            return 1;
        if (load_ec(k, o, where, errmsg) != 0)
            return CM_ERR_INVAL;
    } else {
        return 1; /* OKP, oct, ...: not for us */
    }
    k->kid = kid != NULL ? cm_xstrdup(kid) : NULL;
    return 0;
}

int ij_jwks_parse(const char *name, const char *buf, size_t len, struct ij_jwks **out,
                  char **errmsg)
{
    json_error_t je;
    if (len > IJ_JWKS_MAX)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: larger than %d bytes", name, IJ_JWKS_MAX);
    json_t *doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL)
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: not JSON: %s (line %d, column %d)", name, je.text,
                       je.line, je.column);
    json_t *keys = json_object_get(doc, "keys");
    if (!json_is_object(doc) || !json_is_array(keys)) {
        json_decref(doc);
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: not a JWKS: expected {\"keys\": [...]}", name);
    }
    size_t n = json_array_size(keys);
    if (n > IJ_JWKS_MAX_KEYS) {
        json_decref(doc);
        return cm_fail(errmsg, CM_ERR_INVAL, "%s: %zu keys; at most %d are accepted", name, n,
                       IJ_JWKS_MAX_KEYS);
    }
    struct ij_jwks *k = cm_xcalloc(1, sizeof(*k) + n * sizeof(k->keys[0]));
    atomic_init(&k->refs, 1);
    for (size_t i = 0; i < n; i++) {
        char where[300];
        snprintf(where, sizeof(where), "%s: keys[%zu]", name, i);
        struct jwk *key = &k->keys[k->n];
        mbedtls_pk_init(&key->pk);
        int rc = load_key(key, json_array_get(keys, i), where, errmsg);
        if (rc == 0) {
            pthread_mutex_init(&key->mu, NULL);
            k->n++;
            continue;
        }
        mbedtls_pk_free(&key->pk);
        if (rc < 0) {
            jwks_free(k);
            json_decref(doc);
            return CM_ERR_INVAL;
        }
        k->skipped++;
    }
    json_decref(doc);
    if (k->n == 0) {
        size_t skipped = k->skipped;
        jwks_free(k);
        return cm_fail(errmsg, CM_ERR_INVAL,
                       "%s: no usable key (RSA >= %d bits or EC P-256, use \"sig\")%s", name,
                       RSA_MIN_BITS, skipped ? "; every key was of another type" : "");
    }
    *out = k;
    return 0;
}

/* ---- tokens ------------------------------------------------------------------------ */

const char *ij_token_reason_name(enum ij_token_reason r)
{
    static const char *const names[IJ_TOKEN__COUNT] = {
        "ok",       "malformed", "algorithm",     "unknown_key", "signature",
        "audience", "expired",   "not_yet_valid", "claims",
    };
    return (unsigned)r < IJ_TOKEN__COUNT ? names[r] : "unknown";
}

/* A NumericDate (RFC 7519 §2): integer or real seconds. Returns 0 present,
 * 1 absent, -1 not a usable number. */
static int get_date(json_t *o, const char *key, int64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        return 1;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || d < -4e18 || d > 4e18)
            return -1;
        *out = (int64_t)d;
        return 0;
    }
    return -1;
}

static int check_audience(json_t *payload, const char *audience, enum ij_token_reason *reason,
                          char **errmsg)
{
    json_t *aud = json_object_get(payload, "aud");
    if (aud == NULL)
        return refuse(reason, IJ_TOKEN_AUDIENCE, errmsg,
                      "token has no aud claim; want a projected token with audience \"%s\"",
                      audience);
    if (json_is_string(aud)) {
        if (strcmp(json_string_value(aud), audience) == 0)
            return 0;
        return refuse(reason, IJ_TOKEN_AUDIENCE, errmsg, "token audience \"%.100s\" is not \"%s\"",
                      json_string_value(aud), audience);
    }
    if (!json_is_array(aud))
        return refuse(reason, IJ_TOKEN_AUDIENCE, errmsg,
                      "token aud claim is neither a string nor an array");
    size_t i;
    json_t *a;
    json_array_foreach(aud, i, a)
    {
        if (!json_is_string(a))
            return refuse(reason, IJ_TOKEN_AUDIENCE, errmsg, "token aud[%zu] is not a string", i);
        if (strcmp(json_string_value(a), audience) == 0)
            return 0;
    }
    return refuse(reason, IJ_TOKEN_AUDIENCE, errmsg,
                  "token audiences (%zu) do not include \"%s\"%s%.100s%s", json_array_size(aud),
                  audience, json_array_size(aud) ? ": first \"" : "",
                  json_array_size(aud) ? json_string_value(json_array_get(aud, 0)) : "",
                  json_array_size(aud) ? "\"" : "");
}

static int check_times(json_t *payload, int64_t now, struct ij_token_claims *c,
                       enum ij_token_reason *reason, char **errmsg)
{
    int64_t exp = 0, nbf = 0, iat = 0;
    char a[32], b[32];
    int r = get_date(payload, "exp", &exp);
    if (r > 0)
        return refuse(reason, IJ_TOKEN_CLAIMS, errmsg,
                      "token has no exp claim (a legacy Secret service-account token?); "
                      "mount a projected token");
    if (r < 0)
        return refuse(reason, IJ_TOKEN_CLAIMS, errmsg, "token exp claim is not a NumericDate");
    if (exp <= now - IJ_TOKEN_SKEW_S)
        return refuse(reason, IJ_TOKEN_EXPIRED, errmsg, "token expired at %s (now %s)",
                      fmt_time(exp, a, sizeof(a)), fmt_time(now, b, sizeof(b)));
    static const char *const later[] = {"nbf", "iat"};
    int64_t *vals[] = {&nbf, &iat};
    for (int i = 0; i < 2; i++) {
        r = get_date(payload, later[i], vals[i]);
        if (r < 0)
            return refuse(reason, IJ_TOKEN_CLAIMS, errmsg, "token %s claim is not a NumericDate",
                          later[i]);
        if (r == 0 && *vals[i] > now + IJ_TOKEN_SKEW_S)
            return refuse(reason, IJ_TOKEN_NOT_YET_VALID, errmsg,
                          "token %s %s is in the future (now %s)", later[i],
                          fmt_time(*vals[i], a, sizeof(a)), fmt_time(now, b, sizeof(b)));
    }
    c->exp = exp;
    return 0;
}

static int copy_name(json_t *o, const char *key, bool required, size_t max, char *out,
                     const char *what, enum ij_token_reason *reason, char **errmsg)
{
    const char *v = NULL;
    if (opt_string(o, key, max, &v) != 0)
        return refuse(reason, IJ_TOKEN_CLAIMS, errmsg,
                      "token claim %s is not a string of 1..%zu bytes", what, max - 1);
    if (v == NULL) {
        if (required)
            return refuse(reason, IJ_TOKEN_CLAIMS, errmsg, "token has no %s claim", what);
        out[0] = '\0';
        return 0;
    }
    snprintf(out, max, "%s", v);
    return 0;
}

/* The kubernetes.io claim of a projected token:
 *   {"namespace": NS, "serviceaccount": {"name": SA, "uid": U},
 *    "pod": {"name": P, "uid": U}} */
static int check_kubernetes(json_t *payload, struct ij_token_claims *c,
                            enum ij_token_reason *reason, char **errmsg)
{
    json_t *k = json_object_get(payload, "kubernetes.io");
    if (k == NULL)
        return refuse(reason, IJ_TOKEN_CLAIMS, errmsg,
                      "token has no kubernetes.io claim (not a service-account token)");
    if (!json_is_object(k))
        return refuse(reason, IJ_TOKEN_CLAIMS, errmsg,
                      "token kubernetes.io claim is not an object");
    json_t *sa = json_object_get(k, "serviceaccount");
    json_t *pod = json_object_get(k, "pod");
    if (!json_is_object(sa))
        return refuse(reason, IJ_TOKEN_CLAIMS, errmsg,
                      "token kubernetes.io.serviceaccount is missing or not an object");
    if (pod != NULL && !json_is_object(pod))
        return refuse(reason, IJ_TOKEN_CLAIMS, errmsg, "token kubernetes.io.pod is not an object");
    if (copy_name(k, "namespace", true, 64, c->ns, "kubernetes.io.namespace", reason, errmsg) ||
        copy_name(sa, "name", true, IJ_TOKEN_NAME_MAX, c->sa, "kubernetes.io.serviceaccount.name",
                  reason, errmsg) ||
        copy_name(sa, "uid", false, IJ_TOKEN_UID_MAX, c->sa_uid, "kubernetes.io.serviceaccount.uid",
                  reason, errmsg))
        return CM_ERR_INVAL;
    c->pod[0] = c->pod_uid[0] = '\0';
    if (pod != NULL && (copy_name(pod, "name", false, IJ_TOKEN_NAME_MAX, c->pod,
                                  "kubernetes.io.pod.name", reason, errmsg) ||
                        copy_name(pod, "uid", false, IJ_TOKEN_UID_MAX, c->pod_uid,
                                  "kubernetes.io.pod.uid", reason, errmsg)))
        return CM_ERR_INVAL;
    /* sub repeats the identity for service-account tokens: it must agree. */
    json_t *sub = json_object_get(payload, "sub");
    static const char prefix[] = "system:serviceaccount:";
    if (json_is_string(sub) && strncmp(json_string_value(sub), prefix, sizeof(prefix) - 1) == 0) {
        const char *rest = json_string_value(sub) + sizeof(prefix) - 1;
        size_t nl = strlen(c->ns);
        if (strncmp(rest, c->ns, nl) != 0 || rest[nl] != ':' || strcmp(rest + nl + 1, c->sa) != 0)
            return refuse(reason, IJ_TOKEN_CLAIMS, errmsg,
                          "token sub \"%.200s\" disagrees with kubernetes.io (%s/%s)",
                          json_string_value(sub), c->ns, c->sa);
    }
    return 0;
}

/* Claims of a token whose signature verified, in the order an operator
 * would look: still valid? for us? whose? */
int ij_token_check_claims(json_t *payload, const char *audience, int64_t now,
                          struct ij_token_claims *c, enum ij_token_reason *reason, char **errmsg)
{
    if (check_times(payload, now, c, reason, errmsg) != 0 ||
        check_audience(payload, audience, reason, errmsg) != 0 ||
        check_kubernetes(payload, c, reason, errmsg) != 0)
        return CM_ERR_INVAL;
    return 0;
}

/* The protected header: alg (RS256 / ES256 only) and kid. */
static int check_header(json_t *h, enum jwk_type *type, const char **kid,
                        enum ij_token_reason *reason, char **errmsg)
{
    const char *alg = NULL;
    if (opt_string(h, "alg", 32, &alg) != 0 || alg == NULL)
        return refuse(reason, IJ_TOKEN_MALFORMED, errmsg,
                      "token header has no alg (or not a short string)");
    if (strcmp(alg, "RS256") == 0)
        *type = JWK_RSA;
    else if (strcmp(alg, "ES256") == 0)
        *type = JWK_EC;
    else if (strcmp(alg, "none") == 0)
        return refuse(reason, IJ_TOKEN_ALGORITHM, errmsg,
                      "token alg \"none\": unsigned tokens are refused");
    else if (strncmp(alg, "HS", 2) == 0)
        return refuse(reason, IJ_TOKEN_ALGORITHM, errmsg,
                      "token alg \"%s\": symmetric (HMAC) tokens are refused; want RS256 or ES256",
                      alg);
    else
        return refuse(reason, IJ_TOKEN_ALGORITHM, errmsg,
                      "token alg \"%s\" is not supported; want RS256 or ES256", alg);
    if (json_object_get(h, "crit") != NULL)
        return refuse(reason, IJ_TOKEN_MALFORMED, errmsg,
                      "token header has crit: no JWS extension is understood here");
    if (opt_string(h, "kid", IJ_TOKEN_NAME_MAX, kid) != 0)
        return refuse(reason, IJ_TOKEN_MALFORMED, errmsg,
                      "token header kid is not a string of 1..%d bytes", IJ_TOKEN_NAME_MAX - 1);
    return 0;
}

/* The key for (kid, type): with a kid, the key of that kid and type; without,
 * the one key of that type (several would need a kid to choose). */
static struct jwk *find_key(const struct ij_jwks *keys, const char *kid, enum jwk_type type,
                            enum ij_token_reason *reason, char **errmsg)
{
    static const char *const tname[] = {"RSA", "EC"};
    struct jwk *found = NULL;
    size_t of_type = 0;
    bool other_type = false;
    for (size_t i = 0; i < keys->n; i++) {
        struct jwk *k = (struct jwk *)&keys->keys[i];
        bool same_kid = kid == NULL || (k->kid != NULL && strcmp(k->kid, kid) == 0);
        if (!same_kid)
            continue;
        if (k->type != type) {
            other_type = kid != NULL;
            continue;
        }
        of_type++;
        if (found == NULL)
            found = k;
    }
    if (found == NULL && kid != NULL && other_type) {
        refuse(reason, IJ_TOKEN_ALGORITHM, errmsg,
               "token alg needs an %s key but JWKS key \"%.100s\" is %s", tname[type], kid,
               tname[!type]);
        return NULL;
    }
    if (found == NULL) {
        if (kid != NULL)
            refuse(reason, IJ_TOKEN_UNKNOWN_KEY, errmsg,
                   "token kid \"%.100s\" is not in the JWKS (%zu keys; stale JWKS after a "
                   "service-account key rotation?)",
                   kid, keys->n);
        else
            refuse(reason, IJ_TOKEN_UNKNOWN_KEY, errmsg, "the JWKS has no %s key", tname[type]);
        return NULL;
    }
    if (kid == NULL && of_type > 1) {
        refuse(reason, IJ_TOKEN_UNKNOWN_KEY, errmsg,
               "token header has no kid and the JWKS has %zu %s keys", of_type, tname[type]);
        return NULL;
    }
    return found;
}

static int verify_sig(struct jwk *k, const unsigned char *hash, const unsigned char *sig,
                      size_t siglen, enum ij_token_reason *reason, char **errmsg)
{
    int ret;
    const char *kid = k->kid ? k->kid : "(no kid)";
    if (k->type == JWK_RSA) {
        size_t want = mbedtls_pk_get_len(&k->pk);
        if (siglen != want)
            return refuse(reason, IJ_TOKEN_SIGNATURE, errmsg,
                          "token signature is %zu bytes; key \"%.100s\" makes %zu", siglen, kid,
                          want);
        pthread_mutex_lock(&k->mu);
        ret = mbedtls_pk_verify(&k->pk, MBEDTLS_MD_SHA256, hash, 32, sig, siglen);
        pthread_mutex_unlock(&k->mu);
    } else {
        if (siglen != 2 * P256_LEN)
            return refuse(reason, IJ_TOKEN_SIGNATURE, errmsg,
                          "token ES256 signature is %zu bytes, not 64 (r || s)", siglen);
        mbedtls_mpi r, s;
        mbedtls_mpi_init(&r);
        mbedtls_mpi_init(&s);
        ret = mbedtls_mpi_read_binary(&r, sig, P256_LEN);
        if (ret == 0)
            ret = mbedtls_mpi_read_binary(&s, sig + P256_LEN, P256_LEN);
        if (ret == 0) {
            mbedtls_ecp_keypair *ec = mbedtls_pk_ec(k->pk);
            pthread_mutex_lock(&k->mu);
            ret = mbedtls_ecdsa_verify(&ec->grp, hash, 32, &ec->Q, &r, &s);
            pthread_mutex_unlock(&k->mu);
        }
        mbedtls_mpi_free(&r);
        mbedtls_mpi_free(&s);
    }
    if (ret != 0)
        return refuse(reason, IJ_TOKEN_SIGNATURE, errmsg,
                      "token signature does not verify with JWKS key \"%.100s\" (%s)", kid,
                      k->type == JWK_RSA ? "RS256" : "ES256");
    return 0;
}

int ij_token_verify(const struct ij_jwks *keys, const char *token, size_t len, const char *audience,
                    int64_t now, struct ij_token_claims *claims, enum ij_token_reason *reason,
                    char **errmsg)
{
    unsigned char *hdr = NULL, *body = NULL, *sig = NULL;
    size_t hlen = 0, blen = 0, slen = 0;
    json_t *h = NULL, *p = NULL;
    const char *kid = NULL;
    enum jwk_type type = JWK_RSA;
    int rc = CM_ERR_INVAL;

    memset(claims, 0, sizeof(*claims));
    *reason = IJ_TOKEN_MALFORMED;
    if (len == 0)
        return refuse(reason, IJ_TOKEN_MALFORMED, errmsg, "empty token");
    if (len > IJ_TOKEN_MAX)
        return refuse(reason, IJ_TOKEN_MALFORMED, errmsg, "token is %zu bytes; at most %d", len,
                      IJ_TOKEN_MAX);
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL)
        return refuse(reason, IJ_TOKEN_MALFORMED, errmsg,
                      "not a JWT: expected header.payload.signature");
    if (memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        return refuse(reason, IJ_TOKEN_MALFORMED, errmsg,
                      "not a JWS: more than three parts (an encrypted JWE?)");
    const char *sig_b64 = dot2 + 1;
    size_t sig_b64_len = len - (size_t)(sig_b64 - token);
    if (ij_token_b64url_decode(token, (size_t)(dot1 - token), &hdr, &hlen) != 0 || hlen == 0 ||
        (h = parse_object(hdr, hlen)) == NULL) {
        refuse(reason, IJ_TOKEN_MALFORMED, errmsg, "token header is not a base64url JSON object");
        goto out;
    }
    if (check_header(h, &type, &kid, reason, errmsg) != 0)
        goto out;
    if (ij_token_b64url_decode(sig_b64, sig_b64_len, &sig, &slen) != 0 || slen == 0) {
        refuse(reason, IJ_TOKEN_MALFORMED, errmsg, "token signature is not base64url");
        goto out;
    }
    struct jwk *k = find_key(keys, kid, type, reason, errmsg);
    if (k == NULL)
        goto out;
    unsigned char hash[32];
    if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char *)token,
                   (size_t)(dot2 - token), hash) != 0) {
        refuse(reason, IJ_TOKEN_SIGNATURE, errmsg, "SHA-256 failed");
        goto out;
    }
    if (verify_sig(k, hash, sig, slen, reason, errmsg) != 0)
        goto out;
    /* Only what a trusted key signed is read past this point. */
    if (ij_token_b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &body, &blen) != 0 ||
        (p = parse_object(body, blen)) == NULL) {
        refuse(reason, IJ_TOKEN_MALFORMED, errmsg, "token payload is not a base64url JSON object");
        goto out;
    }
    if (ij_token_check_claims(p, audience, now, claims, reason, errmsg) != 0)
        goto out;
    if (kid != NULL)
        snprintf(claims->kid, sizeof(claims->kid), "%s", kid);
    *reason = IJ_TOKEN_OK;
    rc = 0;
out:
    json_decref(h);
    json_decref(p);
    free(hdr);
    free(body);
    free(sig);
    return rc;
}

/* ---- the JWKS file ------------------------------------------------------------------- */

struct ij_jwks_file {
    pthread_mutex_t mu;
    const char *path;
    struct ij_jwks *cur; /* a reference */
    struct cm_watch watch;
    uint64_t checked_ms;
    uint64_t reloads_ok, reloads_failed;
};

/* Called with mu held. The stamp moves on even when the new file is bad, so
 * a broken file is reported once, not at every check. */
static int reload_locked(struct ij_jwks_file *f, bool force, char **errmsg)
{
    if (!cm_watch_poll(&f->watch) && !force)
        return 0;
    unsigned char *buf = NULL;
    size_t len = 0;
    struct ij_jwks *k = NULL;
    if (pki_read_file(f->path, IJ_JWKS_MAX, &buf, &len, errmsg) != 0)
        return CM_ERR_INVAL;
    int rc = ij_jwks_parse(f->path, (const char *)buf, len, &k, errmsg);
    free(buf);
    if (rc != 0)
        return CM_ERR_INVAL;
    ij_jwks_unref(f->cur);
    f->cur = k;
    return 1;
}

int ij_jwks_file_new(const char *path, struct ij_jwks_file **out, char **errmsg)
{
    struct ij_jwks_file *f = cm_xcalloc(1, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    f->path = path;
    cm_watch_init(&f->watch, &path, 1);
    if (reload_locked(f, true, errmsg) < 0) {
        ij_jwks_file_free(f);
        return CM_ERR_INVAL;
    }
    f->checked_ms = cm_mono_ms();
    *out = f;
    return 0;
}

void ij_jwks_file_free(struct ij_jwks_file *f)
{
    if (f == NULL)
        return;
    ij_jwks_unref(f->cur);
    cm_watch_deinit(&f->watch);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void log_reload(struct ij_jwks_file *f, int rc, const char *err)
{
    if (rc > 0) {
        f->reloads_ok++;
        cm_info("JWKS %s reloaded: %zu keys (%zu skipped)", f->path, f->cur->n, f->cur->skipped);
    } else if (rc < 0) {
        f->reloads_failed++;
        cm_error("JWKS not reloaded, keeping the %zu keys in force: %s", f->cur->n, err);
    }
}

int ij_jwks_file_reload(struct ij_jwks_file *f, bool force, char **errmsg)
{
    pthread_mutex_lock(&f->mu);
    int rc = reload_locked(f, force, errmsg);
    log_reload(f, rc, rc < 0 ? *errmsg : NULL);
    f->checked_ms = cm_mono_ms();
    pthread_mutex_unlock(&f->mu);
    return rc;
}

struct ij_jwks *ij_jwks_file_get(struct ij_jwks_file *f, uint64_t check_ms)
{
    pthread_mutex_lock(&f->mu);
    uint64_t now = cm_mono_ms();
    if (now - f->checked_ms >= check_ms) {
        char *err = NULL;
        f->checked_ms = now;
        int rc = reload_locked(f, false, &err);
        log_reload(f, rc, err);
        free(err);
    }
    struct ij_jwks *k = ij_jwks_ref(f->cur);
    pthread_mutex_unlock(&f->mu);
    return k;
}

void ij_jwks_file_stats(struct ij_jwks_file *f, struct ij_jwks_stats *out)
{
    pthread_mutex_lock(&f->mu);
    out->reloads_ok = f->reloads_ok;
    out->reloads_failed = f->reloads_failed;
    out->keys = f->cur->n;
    out->skipped = f->cur->skipped;
    pthread_mutex_unlock(&f->mu);
}
