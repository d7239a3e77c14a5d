/* Steps of the token verifier (injector/token.c) that its unit test and fuzz
 * target drive on their own. Not an API: injector/token.h is. */
#ifndef IJ_TOKEN_INT_H
#define IJ_TOKEN_INT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "injector/token.h"

/* Decode unpadded base64url (RFC 7515 section 2), only its 64 characters.
 * Returns 0 and *out (heap, NUL-terminated one past *outlen) or -1. */
int ij_token_b64url_decode(const char *in, size_t len, unsigned char **out, size_t *outlen);

/* The claims of a token whose signature verified: times (at now), audience,
 * the Kubernetes claims into *c. Returns 0, or CM_ERR_INVAL with *reason and
 * *errmsg (caller frees). */
int ij_token_check_claims(json_t *payload, const char *audience, int64_t now,
                          struct ij_token_claims *c, enum ij_token_reason *reason, char **errmsg);

#endif
