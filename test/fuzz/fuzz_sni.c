/* libFuzzer target for px_sni_parse (proxy/sni.c). The input is read as the
 * connection's first bytes, at every few prefix lengths (as TCP segments may
 * cut it). Invariants (a violation traps):
 *   - MORE ("need more bytes") only below PX_SNI_MAX_BYTES;
 *   - once decided, the answer and the name never change as more bytes come;
 *   - a name is non-empty, at most PX_SNI_NAME_MAX bytes, lower-case DNS
 *     characters only; no name is "" ;
 *   - nothing is read past the prefix (ASan: each prefix is its own copy). */
#include <stdlib.h>
#include <string.h>

#include "proxy/sni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_name(enum px_sni_result r, const char *name)
{
    size_t n = strlen(name);
    if (r != PX_SNI_FOUND) {
        if (n != 0)
            __builtin_trap();
        return;
    }
    if (n == 0 || n > PX_SNI_NAME_MAX)
        __builtin_trap();
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
              ch == '.'))
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > PX_SNI_MAX_BYTES + 16)
        size = PX_SNI_MAX_BYTES + 16;
    enum px_sni_result decided = PX_SNI_MORE;
    char first[PX_SNI_NAME_BUF] = "";
    size_t step = size / 64 + 1;
    for (size_t n = 0;;) {
        uint8_t *copy = malloc(n ? n : 1); /* exactly n bytes: a read past them is caught */
        if (copy == NULL)
            return 0;
        memcpy(copy, data, n);
        char name[PX_SNI_NAME_BUF];
        enum px_sni_result r = px_sni_parse(copy, n, name);
        free(copy);
        if (r != PX_SNI_MORE && r != PX_SNI_FOUND && r != PX_SNI_NONE)
            __builtin_trap();
        if (r == PX_SNI_MORE && n >= PX_SNI_MAX_BYTES)
            __builtin_trap();
        check_name(r, name);
        if (decided != PX_SNI_MORE && (r != decided || strcmp(name, first) != 0))
            __builtin_trap();
        if (decided == PX_SNI_MORE && r != PX_SNI_MORE) {
            decided = r;
            memcpy(first, name, sizeof(first));
        }
        if (n == size)
            break;
        n = n + step > size ? size : n + step;
    }
    return 0;
}
