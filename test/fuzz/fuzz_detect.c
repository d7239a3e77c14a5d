/* libFuzzer target for px_detect (proxy/detect.c): every prefix of the
 * input is classified as the listener would see it arrive byte by byte.
 * Invariants (a violation traps):
 *   - UNKNOWN ("need more bytes") only below PX_DETECT_MAX bytes;
 *   - once decided, the answer never changes as more bytes arrive, so TCP
 *     segmentation cannot change how a connection is routed;
 *   - every answer has a name. */
#include <stddef.h>
#include <stdint.h>

#include "proxy/detect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum px_conn_proto decided = PX_PROTO_UNKNOWN;
    if (size > 256)
        size = 256; /* the decision needs 24 bytes; more only costs time */
    for (size_t n = 0; n <= size; n++) {
        enum px_conn_proto p = px_detect(data, n);
        if (p != PX_PROTO_UNKNOWN && p != PX_PROTO_HTTP1 && p != PX_PROTO_H2 && p != PX_PROTO_TLS &&
            p != PX_PROTO_TCP)
            __builtin_trap();
        if (p == PX_PROTO_UNKNOWN && n >= PX_DETECT_MAX)
            __builtin_trap();
        if (decided != PX_PROTO_UNKNOWN && p != decided)
            __builtin_trap();
        if (px_proto_name(p) == NULL)
            __builtin_trap();
        decided = p;
    }
    return 0;
}
