/* libFuzzer target for the discovery answer decoder (proxy/discovery.h,
 * px_dest_decode): the input is what the discovery service answers
 * GET /v1/destination with.
 *
 * Invariants (a violation traps): a decoded answer has a kind, a port,
 * a version of 1..64 unreserved characters, at most PX_DEST_MAX_ENDPOINTS
 * endpoints each with a non-zero port, an identity exactly when meshed (a
 * spiffe:// ID) and a zone string; a refusal has a message and no answer;
 * the JSON view of an answer is built; LeakSanitizer finds nothing. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/discovery.h"
#include "test/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_dest_answer *a = NULL;
    char *err = NULL;
    if (px_dest_decode((const char *)data, size, &a, &err) != 0) {
        CHECK(a == NULL && err != NULL && err[0] != '\0');
        free(err);
        return 0;
    }
    CHECK(a != NULL && err == NULL);
    CHECK(a->kind == PX_DEST_SERVICE || a->kind == PX_DEST_POD);
    CHECK(a->kind != PX_DEST_SERVICE || a->service != NULL);
    CHECK(a->port > 0 && a->protocol != NULL);
    size_t vn = strlen(a->version);
    CHECK(vn >= 1 && vn <= PX_DEST_MAX_VERSION);
    CHECK(strspn(a->version,
                 "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-._~") == vn);
    CHECK(a->neps <= PX_DEST_MAX_ENDPOINTS);
    CHECK(a->kind != PX_DEST_POD || a->neps == 1);
    for (size_t i = 0; i < a->neps; i++) {
        const struct px_dest_ep *e = &a->eps[i];
        CHECK(cm_addr_port(&e->addr) != 0);
        CHECK(e->meshed == (e->identity != NULL));
        CHECK(e->identity == NULL || strncmp(e->identity, "spiffe://", 9) == 0);
        CHECK(e->zone != NULL);
    }
    json_t *j = px_dest_answer_json(a);
    CHECK(j != NULL);
    json_decref(j);
    px_dest_answer_unref(a);
    return 0;
}
