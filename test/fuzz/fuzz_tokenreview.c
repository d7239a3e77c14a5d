/* libFuzzer target for injector/tokenreview.c's decoders (issue 14): what the
 * API server answers to a TokenReview and to GET of a pod.
 *   byte 0 even  ij_tokrev_judge_review on the rest, for fixed claims (shop/web,
 *                pod web-0 with a uid) and audience remora-ca
 *   byte 0 odd   ij_tokrev_pod_uid on the rest
 * Invariants (a violation traps): OK comes without a message and every
 * refusal with one, printable ASCII; a pod uid
 * is non-empty, shorter than IJ_TOKEN_UID_MAX, and comes without a message,
 * an error with one and no uid. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "injector/tokenreview.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    if ((data[0] & 1) == 0) {
        struct ij_token_claims c;
        memset(&c, 0, sizeof(c));
        snprintf(c.ns, sizeof(c.ns), "%s", "shop");
        snprintf(c.sa, sizeof(c.sa), "%s", "web");
        snprintf(c.pod, sizeof(c.pod), "%s", "web-0");
        snprintf(c.pod_uid, sizeof(c.pod_uid), "%s", "6f1c0a4e-1b7d-4c55-9a39-2f5e4c1d8b01");
        char *why = NULL;
        enum ij_tokrev_result r = ij_tokrev_judge_review(p, n, &c, "remora-ca", &why);
        if ((r == IJ_TOKREV_OK) != (why == NULL))
            __builtin_trap();
        if (why != NULL)
            printable(why);
        free(why);
    } else {
        char *uid = NULL, *err = NULL;
        int rc = ij_tokrev_pod_uid(p, n, &uid, &err);
        if (rc == 0 && (uid == NULL || *uid == '\0' || strlen(uid) >= IJ_TOKEN_UID_MAX || err))
            __builtin_trap();
        if (rc != 0 && (uid != NULL || err == NULL))
            __builtin_trap();
        if (err != NULL)
            printable(err);
        free(uid);
        free(err);
    }
    return 0;
}
