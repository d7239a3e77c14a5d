/* libFuzzer target for px_grpc_health_parse (proxy/grpc_health.c), the reader
 * of the app's grpc.health.v1.HealthCheckResponse. Each input is tried as is
 * and inside a valid gRPC frame header (so the protobuf reader sees every
 * input). Invariants (a violation traps):
 *   - an accepted input is exactly one uncompressed message (flag 0, length
 *     = the rest);
 *   - a message that is one status field (0x08 v, v < 128) reads as v, and a
 *     valid message followed by a well-formed unknown field reads the same. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/grpc_health.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t st;
    if (px_grpc_health_parse(data, size, &st) == 0) {
        if (size < 5 || data[0] != 0)
            __builtin_trap();
        uint32_t n =
            (uint32_t)data[1] << 24 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 8 | data[4];
        if (n != size - 5)
            __builtin_trap();
    }
    if (size > 4096)
        return 0;
    uint8_t *f = malloc(size + 5 + 3);
    if (f == NULL)
        return 0;
    f[0] = 0;
    f[1] = (uint8_t)(size >> 24), f[2] = (uint8_t)(size >> 16), f[3] = (uint8_t)(size >> 8);
    f[4] = (uint8_t)size;
    if (size > 0)
        memcpy(f + 5, data, size);
    int64_t a, b;
    int ra = px_grpc_health_parse(f, size + 5, &a);
    if (size == 2 && data[0] == 0x08 && data[1] < 0x80 && (ra != 0 || a != data[1]))
        __builtin_trap();
    if (ra == 0) {
        /* the same message with an unknown varint field 2 appended */
        size_t m = size + 2;
        f[1] = (uint8_t)(m >> 24), f[2] = (uint8_t)(m >> 16), f[3] = (uint8_t)(m >> 8);
        f[4] = (uint8_t)m;
        f[5 + size] = 0x10;
        f[5 + size + 1] = 0x05;
        if (px_grpc_health_parse(f, m + 5, &b) != 0 || a != b)
            __builtin_trap();
    }
    free(f);
    return 0;
}
