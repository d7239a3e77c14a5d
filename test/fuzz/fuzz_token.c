/* libFuzzer target for injector/token.c, the CA's parsers of untrusted
 * input: the first byte picks what the rest is fed to.
 *   0  ij_jwks_parse: a JWKS document (the file an operator or a CronJob writes)
 *   1  ij_token_verify: a bearer token, against the JWKS of test/data/token
 *      (its seeds are valid tokens, so mutations walk every refusal path)
 *   2  check_claims: a payload as JSON, as if its signature had verified
 *      (a fuzzer cannot forge RS256/ES256, so the claims are reached here)
 *   3  b64url_decode
 * Invariants (a violation traps): success has no message and a reason of
 * ok, a namespace and a service account; failure has a message and a reason
 * other than ok; decoded base64url never exceeds 3/4 of its input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "injector/token.h"
#include "injector/token_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW (1700000000 + 600) /* the seeds' time (test/data/token/README.md) */

static const char jwks_json[] =
    "{\"keys\":[{\"use\":\"sig\",\"kty\":\"RSA\",\"kid\":\"rsa-1\",\"alg\":\"RS256\",\"n\":"
    "\"hvCtrzL1aS9178wxCgTH4"
    "rUW5iY8oCFVnqe2w2e0N7z4iw6MdACdzsqNiX3XlXr1wfG1_9n-b8t67uT0Nwl4kmGRfLqqq3qFHq1lUxeBGbqf_"
    "BHVGgK5xiLo_fYcwZkzoy0EfUO651JHqWOB_UtkO3GyC96RXAR8EvzRazhsJdEZUVkFlKUs4z7KScJGAQfgLXvGL"
    "G496N7R3KYSF7ZzDhmNyU2KbvPAd-JA7Izys5xDrPNsEY-RAh3JsWsSD4-wHvGQUI-KHp5YhfsE4t9y4pTUXElDN"
    "19ebzOzcQZxKQ-0JX3G3vtURb1r5jQ88veqf8pxiB5SDolZrDeF1XFrbw\",\"e\":\"AQAB\"},{\"use\":\"sig\","
    "\"kty"
    "\":\"EC\",\"kid\":\"ec-1\",\"alg\":\"ES256\",\"crv\":\"P-256\",\"x\":"
    "\"Lt1CjuHO9QxzgFgDBs4accWb0VGVsAriB4r"
    "SF4HkS1o\",\"y\":\"UyBVDhbols7b2jZEhydKGrD3h2cwxyvZCq0NmGoopOo\"}]}";

static struct ij_jwks *keys;

static void fuzz_jwks(const char *p, size_t n)
{
    struct ij_jwks *k = NULL;
    char *err = NULL;
    if (ij_jwks_parse("fuzz", p, n, &k, &err) == 0) {
        if (err != NULL || k == NULL || ij_jwks_count(k) == 0 ||
            ij_jwks_count(k) > IJ_JWKS_MAX_KEYS)
            __builtin_trap();
        ij_jwks_unref(k);
    } else if (err == NULL || k != NULL) {
        __builtin_trap();
    }
    free(err);
}

static void fuzz_token(const char *p, size_t n)
{
    struct ij_token_claims c;
    enum ij_token_reason why = IJ_TOKEN__COUNT;
    char *err = NULL;
    if (ij_token_verify(keys, p, n, "remora-ca", NOW, &c, &why, &err) == 0) {
        if (err != NULL || why != IJ_TOKEN_OK || c.ns[0] == '\0' || c.sa[0] == '\0')
            __builtin_trap();
    } else if (err == NULL || why == IJ_TOKEN_OK || why >= IJ_TOKEN__COUNT) {
        __builtin_trap();
    }
    free(err);
}

static void fuzz_claims(const char *p, size_t n)
{
    json_error_t je;
    json_t *doc = json_loadb(p, n, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL)
        return;
    struct ij_token_claims c;
    memset(&c, 0, sizeof(c));
    enum ij_token_reason why = IJ_TOKEN_OK;
    char *err = NULL;
    if (ij_token_check_claims(doc, "remora-ca", NOW, &c, &why, &err) == 0) {
        if (err != NULL || why != IJ_TOKEN_OK || c.ns[0] == '\0' || c.sa[0] == '\0' ||
            strlen(c.ns) >= sizeof(c.ns) || strlen(c.sa) >= sizeof(c.sa))
            __builtin_trap();
    } else if (err == NULL || why == IJ_TOKEN_OK) {
        __builtin_trap();
    }
    free(err);
    json_decref(doc);
}

static void fuzz_b64(const char *p, size_t n)
{
    unsigned char *out = NULL;
    size_t len = 0;
    if (ij_token_b64url_decode(p, n, &out, &len) == 0) {
        if (len > n * 3 / 4 + 1 || out[len] != '\0')
            __builtin_trap();
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (keys == NULL) {
        char *err = NULL;
        if (ij_jwks_parse("jwks", jwks_json, sizeof(jwks_json) - 1, &keys, &err) != 0)
            __builtin_trap();
        cm_log_set_level(CM_LOG_ERROR);
    }
    if (size == 0)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 4) {
    case 0:
        fuzz_jwks(p, n);
        break;
    case 1:
        fuzz_token(p, n);
        break;
    case 2:
        fuzz_claims(p, n);
        break;
    default:
        fuzz_b64(p, n);
        break;
    }
    return 0;
}
