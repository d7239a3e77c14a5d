/* libFuzzer target: bytes -> ij_admission_review (the AdmissionReview ->
 * JSONPatch builder, without the HTTP server), with the built-in template,
 * in classic and native mode. Beyond "no crash, no leak, no UB" it checks
 * what must hold for any input:
 *   - the answer is JSON, and a 200 carries the request's uid;
 *   - a 200 is allowed, or refused for a bad remora.io/inbound-tls or
 *     remora.io/permissive-ports with a message naming it and no patch;
 *   - a patch decodes, applies cleanly to the pod it was built for, and the
 *     patched pod, reviewed again, gets no patch (reinvocation is safe).
 * Seeds: test/fuzz/corpus/fuzz_admission/ (from the shared corpus). */
#include <mbedtls/base64.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "injector/admission.h"
#include "injector/jsonpatch.h"
#include "injector/template.h"
#include "test/fuzz/fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct ij_template *tpl;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *err = NULL;
    if (ij_template_load(NULL, &tpl, &err) != 0)
        abort();
    return 0;
}

static void one(const char *body, size_t len, bool native, int depth)
{
    struct ij_inject_params p = {tpl, "cluster.local", "remora-ca", native, NULL, false};
    struct ij_review rv;
    ij_admission_review(&p, body, len, &rv);
    json_t *out = json_loadb(rv.body, rv.body_len, 0, NULL);
    CHECK(out != NULL);
    CHECK(rv.http_status == 200 || rv.http_status == 400);
    if (rv.http_status != 200)
        goto done;
    json_t *resp = json_object_get(out, "response");
    CHECK(strcmp(json_string_value(json_object_get(resp, "uid")), rv.uid) == 0);
    if (rv.decision == IJ_DECIDE_REFUSED) {
        /* a bad security annotation (issue 19): refused, naming it, no patch */
        json_t *st = json_object_get(resp, "status");
        const char *msg = json_string_value(json_object_get(st, "message"));
        CHECK(json_is_false(json_object_get(resp, "allowed")));
        CHECK(json_integer_value(json_object_get(st, "code")) == 400);
        CHECK(msg != NULL && strncmp(msg, "remora: annotation remora.io/", 29) == 0);
        CHECK(json_object_get(resp, "patch") == NULL);
        CHECK(depth == 0);
        goto done;
    }
    CHECK(json_is_true(json_object_get(resp, "allowed")));
    const char *b64 = json_string_value(json_object_get(resp, "patch"));
    if (b64 == NULL)
        goto done;
    CHECK(depth == 0); /* the patched pod must not be patched again */

    size_t blen = strlen(b64), n = 0;
    unsigned char *dec = malloc(blen + 1);
    CHECK(mbedtls_base64_decode(dec, blen + 1, &n, (const unsigned char *)b64, blen) == 0);
    json_t *patch = json_loadb((const char *)dec, n, 0, NULL);
    free(dec);
    CHECK(json_is_array(patch));

    json_t *review = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    CHECK(review != NULL);
    json_t *pod = json_object_get(json_object_get(review, "request"), "object");
    CHECK(ij_jsonpatch_apply(pod, patch) == 0);
    char *again = json_dumps(review, JSON_COMPACT);
    if (again != NULL) /* NULL for documents jansson cannot dump back (deep nesting) */
        one(again, strlen(again), native, depth + 1);
    free(again);
    json_decref(review);
    json_decref(patch);
done:
    json_decref(out);
    ij_review_deinit(&rv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1 << 20))
        return 0;
    one((const char *)data, size, false, 0);
    one((const char *)data, size, true, 0);
    return 0;
}
