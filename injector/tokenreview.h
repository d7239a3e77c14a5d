/* The CA's second opinion on a service-account token (issue 14, docs/ca.md
 * "TokenReview"). A JWKS signature says the cluster issued the token; it does
 * not say the token is still valid: a bound token outlives its pod until it
 * expires. With ca.token_review the CA asks the API server, through kube.c
 * and with its own service account:
 *   1. POST /apis/authentication.k8s.io/v1/tokenreviews {spec: {token,
 *      audiences: [ca.audience]}}: status.authenticated must be true, the
 *      username must be system:serviceaccount:<ns>:<sa> of the token's own
 *      claims, and the audiences (when given) must hold ours;
 *   2. for a bound token (kubernetes.io.pod claims): GET the pod, which must
 *      exist with the token's pod uid (a pod deleted and re-created under the
 *      same name has a new uid).
 * Answers are cached by SHA-256 of the token (the token itself is never
 * kept), at most ca.token_review_cache_seconds and never past the token's
 * exp, in a table of IJ_TOKREV_CACHE_SLOTS entries (a full bucket evicts the
 * entry closest to expiry). Refusals that the API server gave (rejected, pod
 * gone) are cached too; a failure to get an answer (unreachable, timeout,
 * 5xx, 401/403 for the CA's own account, an unreadable body) is not: the
 * request is refused with IJ_TOKREV_UNAVAILABLE (the CA answers 503, fail
 * closed) and the next one asks again.
 *
 * The API calls are blocking and bounded by kube.timeout_ms each; any thread
 * may call ij_tokrev_check. The decoders are pure (test/fuzz/fuzz_tokenreview.c). */
#ifndef IJ_TOKENREVIEW_H
#define IJ_TOKENREVIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "injector/kube.h"
#include "injector/token.h"

#define IJ_TOKREV_CACHE_SLOTS 4096 /* cached answers (about 200 bytes each) */
#define IJ_TOKREV_BUCKET      8    /* slots looked at per token */
#define IJ_TOKREV_MSG_MAX     192  /* a cached refusal's message */

enum ij_tokrev_result {
    IJ_TOKREV_OK = 0,      /* authenticated, and the bound pod exists */
    IJ_TOKREV_REJECTED,    /* the API server does not authenticate it (revoked, wrong user...) */
    IJ_TOKREV_POD_GONE,    /* its pod no longer exists, or is another pod by that name */
    IJ_TOKREV_UNAVAILABLE, /* no answer from the API server: refused, not cached */
};

/* ---- decoders (pure) ---------------------------------------------------------------- */
/* Judge a TokenReview response body against the claims the JWKS check read
 * and our audience. Returns IJ_TOKREV_OK, IJ_TOKREV_REJECTED or
 * IJ_TOKREV_POD_GONE with *why, or IJ_TOKREV_UNAVAILABLE with *why when the
 * body is not a TokenReview. *why is heap (caller frees), NULL for OK. */
enum ij_tokrev_result ij_tokrev_judge_review(const char *body, size_t len,
                                             const struct ij_token_claims *c, const char *audience,
                                             char **why);
/* metadata.uid of a Pod body: 0 and *uid (heap), or CM_ERR_INVAL with *errmsg. */
int ij_tokrev_pod_uid(const char *body, size_t len, char **uid, char **errmsg);

/* ---- the checker ------------------------------------------------------------------- */
struct ij_tokrev;

struct ij_tokrev_opts {
    struct ij_kube_opts kube;
    const char *audience; /* ca.audience (borrowed) */
    int cache_seconds;    /* 0: no cache */
};

/* Returns 0 and *out, or the kube client's error (the token or CA file
 * missing...) with *errmsg. */
int ij_tokrev_new(const struct ij_tokrev_opts *o, struct ij_tokrev **out, char **errmsg);
void ij_tokrev_free(struct ij_tokrev *r);
/* Check `token` (len bytes) whose JWKS verification gave `c`, at `now_ms`
 * (wall clock, ms). Returns the result; for anything but OK *why (heap,
 * caller frees) says what to tell the client. */
enum ij_tokrev_result ij_tokrev_check(struct ij_tokrev *r, const char *token, size_t len,
                                      const struct ij_token_claims *c, int64_t now_ms, char **why);
/* Prometheus lines (heap, caller frees). NULL r: empty. */
char *ij_tokrev_metrics(struct ij_tokrev *r);

#endif
