/* libFuzzer target for the body of POST /v1/watch (injector/discovery.h,
 * ij_disc_watchreq_parse): what any mesh workload may send the discovery
 * service.
 *
 * Invariants (a violation traps): a refusal has a printable message and
 * leaves no items; an accepted body has 1..IJ_DISC_WATCH_MAX_ITEMS items,
 * each with a wake key, a port, a NUL-terminated name and a version of at
 * most IJ_DISC_MAX_VERSION bytes; the session is at most IJ_DISC_MAX_SESSION;
 * LeakSanitizer finds nothing. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "injector/discovery.h"
#include "test/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ij_disc_watchreq w;
    char *err = NULL;
    if (ij_disc_watchreq_parse((const char *)data, size, "cluster.local", &w, &err) != 0) {
        CHECK(err != NULL && err[0] != '\0' && w.items == NULL && w.n == 0);
        for (const char *p = err; *p; p++)
            CHECK((unsigned char)*p >= 0x20 || *p == '\t');
        free(err);
        return 0;
    }
    CHECK(err == NULL);
    CHECK(w.n >= 1 && w.n <= IJ_DISC_WATCH_MAX_ITEMS && w.items != NULL);
    CHECK(strlen(w.session) <= IJ_DISC_MAX_SESSION);
    for (size_t i = 0; i < w.n; i++) {
        const struct ij_disc_witem *it = &w.items[i];
        CHECK(it->q.wake[0] != '\0' && it->q.port > 0);
        CHECK(memchr(it->name, '\0', sizeof(it->name)) != NULL && it->name[0] != '\0');
        CHECK(strlen(it->version) <= IJ_DISC_MAX_VERSION);
    }
    ij_disc_watchreq_deinit(&w);
    return 0;
}
