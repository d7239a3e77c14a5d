/* Request-target normalization for the authorization policy (docs/policy.md
 * "Paths"): the path the rules see, and the path the app is then sent, so the
 * two cannot disagree. Pure functions on bytes; fuzzed by fuzz_policy_decide. */
#ifndef PX_PATHNORM_H
#define PX_PATHNORM_H

#include <stddef.h>

/* Bytes px_policy_normalize_path (and so px_policy_decide) needs in its output for this
 * request target. */
size_t px_policy_scratch_size(const char *path);

/* Normalize the path part of a request target (RFC 3986 section 6 plus merged
 * slashes): the query is cut; absolute-form loses scheme and authority;
 * percent-encoded unreserved characters are decoded, other escapes get upper-case
 * hex; "//" becomes "/", "." and ".." segments are removed (never above the
 * root). Refused (returns -1 with *why): encoded '/' or '\' or NUL, a raw
 * backslash, a fragment, control characters, malformed escapes, a target that is
 * neither "*" nor a path. Returns the length written to out (NUL-terminated);
 * outlen must be at least strlen(target) + 2. */
int px_policy_normalize_path(const char *target, char *out, size_t outlen, const char **why);

#endif
