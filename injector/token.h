/* Kubernetes projected service-account tokens, verified the way the CA needs
 * them (docs/ca.md): a compact JWS signed RS256 or ES256 by one of the keys of
 * the cluster's JWKS (GET /openid/v1/jwks), `kid` choosing the key, `aud`
 * holding our audience, `exp` / `nbf` / `iat` within a small clock skew, and
 * the `kubernetes.io` claim naming the pod's namespace and service account.
 *
 * A JWKS is an immutable, reference-counted snapshot; ij_jwks_file keeps the
 * one loaded from disk and swaps in a new one when the file changes (build,
 * validate, then swap: a bad file keeps the last good keys). Everything here
 * is safe to call from any MHD thread. */
#ifndef IJ_TOKEN_H
#define IJ_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IJ_TOKEN_MAX      (16 * 1024)   /* longest token we look at */
#define IJ_JWKS_MAX       (1024 * 1024) /* largest JWKS document */
#define IJ_JWKS_MAX_KEYS  64            /* keys in one JWKS */
#define IJ_TOKEN_SKEW_S   60            /* allowed clock skew on exp / nbf / iat */
#define IJ_TOKEN_NAME_MAX 254           /* namespace (63) and service account (253) names, NUL */
#define IJ_TOKEN_UID_MAX  64            /* Kubernetes UIDs are 36 characters */

/* Why a token was refused; also the label of the refusal in /metrics. */
enum ij_token_reason {
    IJ_TOKEN_OK = 0,        /* verified */
    IJ_TOKEN_MALFORMED,     /* not a compact JWS: parts, base64url, JSON, size */
    IJ_TOKEN_ALGORITHM,     /* alg none, HS*, or anything but RS256 / ES256 */
    IJ_TOKEN_UNKNOWN_KEY,   /* no key in the JWKS for this kid and algorithm */
    IJ_TOKEN_SIGNATURE,     /* the signature does not verify */
    IJ_TOKEN_AUDIENCE,      /* aud missing or without our audience */
    IJ_TOKEN_EXPIRED,       /* exp in the past (beyond the skew) */
    IJ_TOKEN_NOT_YET_VALID, /* nbf or iat in the future (beyond the skew) */
    IJ_TOKEN_CLAIMS,        /* no exp, bad dates, kubernetes.io claim missing or malformed */
    IJ_TOKEN__COUNT
};

/* What a verified token says about its holder. */
struct ij_token_claims {
    char ns[IJ_TOKEN_NAME_MAX];     /* kubernetes.io.namespace */
    char sa[IJ_TOKEN_NAME_MAX];     /* kubernetes.io.serviceaccount.name */
    char sa_uid[IJ_TOKEN_UID_MAX];  /* kubernetes.io.serviceaccount.uid ("" if absent) */
    char pod[IJ_TOKEN_NAME_MAX];    /* kubernetes.io.pod.name ("" if absent) */
    char pod_uid[IJ_TOKEN_UID_MAX]; /* kubernetes.io.pod.uid ("" if absent) */
    char kid[IJ_TOKEN_NAME_MAX];    /* the key that signed it ("" if none given) */
    int64_t exp;                    /* expiry, epoch seconds */
};

struct ij_jwks;

/* Parse a JWKS document ({"keys": [...]}). Keys of kty RSA (n, e; at least
 * 2048 bits) and EC P-256 (crv, x, y) are kept; keys of other types or
 * curves, or with "use" other than "sig", are skipped (counted). A key of a
 * supported type that is malformed refuses the whole document. `name` is used
 * in messages. Returns 0 and *out (release with ij_jwks_unref) or
 * CM_ERR_INVAL with *errmsg (caller frees). */
int ij_jwks_parse(const char *name, const char *buf, size_t len, struct ij_jwks **out,
                  char **errmsg);
struct ij_jwks *ij_jwks_ref(struct ij_jwks *k);
void ij_jwks_unref(struct ij_jwks *k);
/* Usable keys, and keys skipped as unsupported. */
size_t ij_jwks_count(const struct ij_jwks *k);
size_t ij_jwks_skipped(const struct ij_jwks *k);

/* Verify `token` (len bytes, no NUL needed) against keys at time `now` (epoch
 * seconds) for `audience`. Returns 0 and fills *claims, or CM_ERR_INVAL with
 * *reason and *errmsg (caller frees) saying what is wrong in words a cluster
 * operator can act on. */
int ij_token_verify(const struct ij_jwks *keys, const char *token, size_t len, const char *audience,
                    int64_t now, struct ij_token_claims *claims, enum ij_token_reason *reason,
                    char **errmsg);

/* Short label of a reason ("signature", "expired", ...). */
const char *ij_token_reason_name(enum ij_token_reason r);

/* ---- the JWKS file, reloaded when it changes ------------------------------------- */
struct ij_jwks_file;

/* Load `path` (borrowed; must outlive the object). Returns 0 and *out, or
 * CM_ERR_INVAL with *errmsg when the first load fails. */
int ij_jwks_file_new(const char *path, struct ij_jwks_file **out, char **errmsg);
void ij_jwks_file_free(struct ij_jwks_file *f);
/* The keys in force, after looking at the file at most once per
 * `check_ms` (a changed file is loaded, and swapped in when valid). Returns
 * a reference: release with ij_jwks_unref. */
struct ij_jwks *ij_jwks_file_get(struct ij_jwks_file *f, uint64_t check_ms);
/* Reload now if the file changed (or always with force). Returns 1 swapped,
 * 0 unchanged, CM_ERR_INVAL with *errmsg (the old keys stay). */
int ij_jwks_file_reload(struct ij_jwks_file *f, bool force, char **errmsg);
/* Counters for /metrics. */
struct ij_jwks_stats {
    uint64_t reloads_ok, reloads_failed;
    size_t keys, skipped;
};
void ij_jwks_file_stats(struct ij_jwks_file *f, struct ij_jwks_stats *out);

#endif
