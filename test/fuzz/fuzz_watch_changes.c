/* libFuzzer target for the proxy's decoder of a POST /v1/watch answer
 * (proxy/discovery.h, px_disc_changes_decode): the "changed" list the
 * discovery service sends when a watched destination changed.
 *
 * Invariants (a violation traps): a refusal has a message and no list; an
 * accepted list has 1..PX_DISC_MAX_ENTRIES entries, each with a non-empty
 * key, status 200 with a decoded answer or 404 without one; LeakSanitizer
 * finds nothing. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/discovery.h"
#include "test/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_disc_change *c = NULL;
    size_t n = 0;
    char *err = NULL;
    if (px_disc_changes_decode((const char *)data, size, &c, &n, &err) != 0) {
        CHECK(c == NULL && n == 0 && err != NULL && err[0] != '\0');
        free(err);
        return 0;
    }
    CHECK(c != NULL && err == NULL && n >= 1 && n <= PX_DISC_MAX_ENTRIES);
    for (size_t i = 0; i < n; i++) {
        CHECK(c[i].key[0] != '\0' && memchr(c[i].key, '\0', sizeof(c[i].key)) != NULL);
        CHECK((c[i].status == 200 && c[i].ans != NULL && c[i].ans->version[0] != '\0') ||
              (c[i].status == 404 && c[i].ans == NULL));
    }
    px_disc_changes_free(c, n);
    return 0;
}
