/* libFuzzer target for the gRPC parsers of proxy/grpc.c: grpc-timeout,
 * grpc-status and grpc-message percent-encoding. Invariants (a violation
 * traps):
 *   - a grpc-timeout is accepted exactly when it is 1-8 digits and one of
 *     H M S m u n, and then gives 1..PX_GRPC_TIMEOUT_MAX_MS ms, never less
 *     than the value asked for (rounded up) unless capped, and a refusal
 *     leaves ms alone;
 *   - a grpc-status is -1 or 0..PX_GRPC_STATUS_MAX + 1, -1 exactly when the
 *     input is empty or not all digits;
 *   - percent-encoding writes printable ASCII only, within the buffer, and
 *     decodes back to a prefix of the input. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proxy/grpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *v = (const char *)data;
    uint64_t ms = 12345;
    int rc = px_grpc_timeout_parse(v, size, &ms);
    bool digits = size >= 2 && size <= 9;
    for (size_t i = 0; digits && i + 1 < size; i++)
        digits = v[i] >= '0' && v[i] <= '9';
    bool want = digits && memchr("HMSmun", v[size - 1], 6) != NULL && v[size - 1] != '\0';
    if ((rc == 0) != want)
        __builtin_trap();
    if (rc != 0 && ms != 12345)
        __builtin_trap();
    if (rc == 0) {
        if (ms < 1 || ms > PX_GRPC_TIMEOUT_MAX_MS)
            __builtin_trap();
        uint64_t n = 0;
        for (size_t i = 0; i + 1 < size; i++)
            n = n * 10 + (uint64_t)(v[i] - '0');
        uint64_t cap = PX_GRPC_TIMEOUT_MAX_MS;
        if (v[size - 1] == 'm' && n > 0 && ms != (n < cap ? n : cap))
            __builtin_trap();
        if (v[size - 1] == 'S' && n > 0 && ms != (n * 1000 < cap ? n * 1000 : cap))
            __builtin_trap();
        if (v[size - 1] == 'n' && ms * 1000000 < n)
            __builtin_trap();
    }

    int st = px_grpc_status_parse(v, size);
    bool all_digits = size > 0;
    for (size_t i = 0; all_digits && i < size; i++)
        all_digits = v[i] >= '0' && v[i] <= '9';
    if ((st == -1) != !all_digits || st < -1 || st > PX_GRPC_STATUS_MAX + 1)
        __builtin_trap();

    char out[96];
    size_t cap = size % sizeof(out) + 1; /* small buffers too */
    size_t n = px_grpc_percent_encode(out, cap, v, size);
    if (n >= cap || out[n] != '\0' || strlen(out) != n)
        __builtin_trap();
    size_t j = 0;
    for (size_t i = 0; i < n; i++, j++) {
        unsigned char c = (unsigned char)out[i];
        if (c < 0x20 || c > 0x7e)
            __builtin_trap();
        int b = c;
        if (c == '%') {
            if (i + 2 >= n)
                __builtin_trap();
            int hi = hexval(out[i + 1]), lo = hexval(out[i + 2]);
            if (hi < 0 || lo < 0)
                __builtin_trap();
            b = hi * 16 + lo;
            i += 2;
        }
        if (j >= size || (unsigned char)v[j] != b)
            __builtin_trap();
    }
    return 0;
}
