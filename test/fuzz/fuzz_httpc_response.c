/* libFuzzer target for px_httpc's answer side (proxy/httpc.h,
 * px_httpc_answer_*): the input is what a server answers the proxy's own
 * client (the CA, an app probe, the app's metrics).
 *
 * The first byte picks the mode: bit 0 status_only (the prober), bit 1 an
 * EOF after the last byte, bits 2-3 the bounds (small: 64-byte head, 32-byte
 * body; or the defaults), bits 4-7 the size of the pieces the rest is fed in
 * (0: at once, else 1..15 bytes, as reads would split it).
 *
 * Invariants (a violation traps): once settled the fate never changes and
 * later bytes are ignored; DONE has a status in 100..999 (status_only: the
 * final, >= 200 or 101), no err, a body within its bound and every header
 * name lower-case, non-empty and NUL-terminated within the head; FAILED has
 * status 0 and a non-empty err; and LeakSanitizer finds nothing. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/httpc.h"
#include "test/fuzz/fuzz_util.h"

static void check_result(struct px_httpc_answer *a, int fate, bool status_only, size_t max_body)
{
    struct px_httpc_resp r;
    px_httpc_answer_result(a, &r);
    if (fate == PX_HTTPC_DONE) {
        CHECK(r.err == NULL);
        CHECK(r.status >= 100 && r.status <= 999);
        CHECK(!status_only || r.status >= 200 || r.status == 101);
        CHECK(r.body->len <= max_body);
        for (size_t i = 0; i < r.nhdrs; i++) {
            CHECK(r.hdrs[i].name[0] != '\0');
            for (const char *c = r.hdrs[i].name; *c; c++)
                CHECK(!(*c >= 'A' && *c <= 'Z'));
            CHECK(r.hdrs[i].value != NULL);
        }
    } else if (fate == PX_HTTPC_FAILED) {
        CHECK(r.status == 0 && r.err != NULL && r.err[0] != '\0');
    } else {
        CHECK(r.status == 0 && r.err == NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    bool status_only = mode & 1, eof = mode & 2, small = (mode >> 2) & 3;
    size_t piece = mode >> 4;
    size_t max_head = small ? 64 : 0, max_body = small ? 32 : 256 * 1024;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    struct px_httpc_answer *a = px_httpc_answer_new(max_head, small ? max_body : 0, status_only);
    int fate = PX_HTTPC_MORE;
    for (size_t off = 0; off < n;) {
        size_t len = piece == 0 ? n - off : (n - off < piece ? n - off : piece);
        int was = fate;
        fate = px_httpc_answer_feed(a, p + off, len);
        CHECK(was == PX_HTTPC_MORE || fate == was); /* a settled fate never changes */
        off += len;
    }
    if (eof) {
        int was = fate;
        fate = px_httpc_answer_eof(a);
        CHECK(was == PX_HTTPC_MORE || fate == was);
        CHECK(fate != PX_HTTPC_MORE); /* the close settles it */
    }
    check_result(a, fate, status_only, max_body);
    px_httpc_answer_free(a);
    return 0;
}
