/* The per-pod authorization policy (docs/contract.md "Per-pod policy file", docs/policy.md):
 * a JSON document compiled into an immutable decision structure, and the
 * decision itself. This module knows nothing of streams, files being watched or
 * the admin API (proxy/authz.c does that); it turns bytes into a px_policy and a
 * request into a verdict, which is what the unit tests, the fuzzers and the
 * benchmark drive directly.
 *
 * Semantics are Istio AuthorizationPolicy's: deny rules first (any match -> 403),
 * then, when the policy has allow rules, a request must match one, else
 * `default`. A missing identity or header never helps a request in: see
 * docs/policy.md for the exact rules. */
#ifndef PX_POLICY_H
#define PX_POLICY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/net.h"
#include "proxy/http.h"
#include "proxy/pathnorm.h" /* px_policy_normalize_path, px_policy_scratch_size */

/* Bounds on what one policy file may hold (beyond them: a load error). */
#define PX_POLICY_MAX_RULES   10000 /* rules in one file */
#define PX_POLICY_MAX_LIST    4096  /* entries in one list (principals, paths, ...) */
#define PX_POLICY_MAX_NAME    128   /* bytes in a rule name */
#define PX_POLICY_MAX_PATTERN 4096  /* bytes in one pattern */

struct px_policy;

enum px_policy_mode {
    PX_POLICY_ENFORCE = 0, /* denials are answered 403 */
    PX_POLICY_AUDIT        /* dry run: denials are logged and counted, nothing is refused */
};

enum px_policy_verdict {
    PX_POLICY_ALLOW = 0, /* let the request through */
    PX_POLICY_DENY,      /* 403: a deny rule matched, no allow rule matched, or default deny */
    PX_POLICY_BAD_PATH,  /* 400: the path cannot be normalized safely (encoded slash...) */
    PX_POLICY_BAD_HEADER /* 400: a header name differs from one the policy matches only by
                          * '_' for '-' (x_debug against x-debug): apps behind CGI/WSGI read
                          * both as HTTP_X_DEBUG (Envoy's headers_with_underscores_action) */
};

/* What decided a request. `rule` points into the policy (valid while it lives)
 * or at a static string: the deciding rule's name, "default", or for
 * BAD_PATH the reason. */
struct px_policy_decision {
    enum px_policy_verdict verdict;
    bool enforce;     /* false in audit mode: report the verdict, let the request through */
    const char *rule; /* rule name or "default" (ALLOW, DENY); NULL for BAD_PATH/BAD_HEADER */
    const char *why;  /* BAD_PATH, BAD_HEADER: short reason; else NULL */
    /* The normalized path the rules saw (in the caller's scratch), or NULL when the
     * policy does not look at paths or for TCP. The proxy sends this path upstream,
     * so the app sees what was decided (merged slashes, dot segments removed). */
    const char *path;
    size_t pathlen;
};

/* One request (or TCP connection) as the policy sees it. */
struct px_policy_request {
    const char *principal;        /* verified SPIFFE ID, or NULL (no mTLS peer) */
    uint16_t port;                /* destination port the client meant */
    const struct px_msg *req;     /* method, path (request target), authority, headers */
    const struct cm_addr *source; /* the downstream peer (from.ip_blocks), or NULL */
    /* An opaque TCP connection (req is ignored). Istio's semantics: an allow rule
     * with any HTTP-only condition (methods, paths, headers/hosts, their not_ forms)
     * never matches; a deny rule matches with those conditions ignored (fail
     * closed); L4 conditions (principals, namespaces, ports, ip_blocks) apply. */
    bool tcp;
};

/* Compile a policy document. `name` (the file) is used in messages and kept.
 * Returns 0 and *out (free with px_policy_free), or CM_ERR_INVAL with *errmsg
 * naming the file and the key ("policy.json: rules[2].from.principalz: unknown
 * key"; caller frees). The document is not modified; a reference is kept for
 * px_policy_source(). */
int px_policy_compile(const char *name, json_t *doc, struct px_policy **out, char **errmsg);
/* Same from bytes and from a file. */
int px_policy_parse(const char *name, const char *buf, size_t len, struct px_policy **out,
                    char **errmsg);
int px_policy_load_file(const char *file, struct px_policy **out, char **errmsg);
void px_policy_free(struct px_policy *p);

/* Decide one request. Never allocates: the normalized path is written into
 * `scratch`, which must hold strlen(req->path) + 2 bytes (callers with short
 * paths pass a stack buffer). */
void px_policy_decide(const struct px_policy *p, const struct px_policy_request *r, char *scratch,
                      size_t scratch_len, struct px_policy_decision *d);
/* Parse one CIDR ("10.0.0.0/8", "2001:db8::/32", or a bare address for /32 and
 * /128) into 16 bytes (IPv4 in the first 4), the family (4 or 6) and the prefix
 * length. Returns 0, or -1 with *why (bits set past the prefix are refused). */
int px_policy_parse_cidr(const char *s, uint8_t addr[16], uint8_t *family, uint8_t *bits,
                         const char **why);

/* Facts about a compiled policy, for the admin API and the log. */
enum px_policy_mode px_policy_mode(const struct px_policy *p);
bool px_policy_default_deny(const struct px_policy *p);
size_t px_policy_nrules(const struct px_policy *p);
/* "metrics": {"source_principal": true}: inbound request series carry the
 * peer's SPIFFE ID (proxy/metrics.c, docs/policy.md "Metrics labels"). */
bool px_policy_metrics_source_principal(const struct px_policy *p);
size_t px_policy_nallow(const struct px_policy *p);
size_t px_policy_ndeny(const struct px_policy *p);
const char *px_policy_name(const struct px_policy *p);
/* The source document (borrowed). */
json_t *px_policy_source(const struct px_policy *p);

/* ---- Denial counters by rule ------------------------------------------------
 * remora_policy_denials_total{rule=...} (enforced) and
 * remora_policy_audit_denials_total{rule=...} (audit mode: would have been
 * denied). Keyed by rule name so they survive reloads; rule="default" always
 * exists. Bounded: past PX_POLICY_MAX_SERIES names, denials fold into
 * rule="*overflow*" (a name no rule can have). Event-loop thread only. */
#define PX_POLICY_MAX_SERIES 4096

void px_policy_count_denial(const char *rule, bool audit);
/* Prometheus text for both families. */
struct evbuffer;
void px_policy_metrics_prometheus(struct evbuffer *out);
/* Adds "policy_denials" and "policy_audit_denials" ({rule: count}) to a /stats object. */
void px_policy_metrics_json(json_t *stats);
/* Register the two above with a server's metrics (srv->metrics, through
 * px_metrics_register_on and px_metrics_register_json_on), so /metrics and
 * /stats carry them; once at startup, with or without a policy file (again: a
 * no-op; m NULL: nothing). */
struct px_metrics_state;
void px_policy_metrics_register(struct px_metrics_state *m);
/* Count of one series (tests); 0 when absent. */
uint64_t px_policy_denials(const char *rule, bool audit);
/* Forget every series (exit, tests). */
void px_policy_metrics_reset(void);

#endif
