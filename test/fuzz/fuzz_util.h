/* What the libFuzzer targets share: the entry point's prototype (the build
 * warns on a definition without one) and CHECK, which traps on a broken
 * invariant so libFuzzer keeps the input as a crash. */
#ifndef REMORA_FUZZ_UTIL_H
#define REMORA_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
