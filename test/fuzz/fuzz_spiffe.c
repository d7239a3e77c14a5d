/* libFuzzer target for pki_spiffe_parse and pki_spiffe_check_bytes
 * (certs/spiffe.c). Invariants (a violation traps):
 *   - the string and the byte checks agree (bytes with a NUL never pass);
 *   - a parsed ID rebuilds from its parts to the same string, and every
 *     part is shorter than the whole;
 *   - every refusal has a message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "certs/internal.h"
#include "certs/pki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    char td[PKI_SPIFFE_MAX], ns[PKI_SPIFFE_MAX], sa[PKI_SPIFFE_MAX], out[PKI_SPIFFE_MAX];
    char *err = NULL;
    if (s == NULL)
        return 0;
    if (size > 0)
        memcpy(s, data, size);
    s[size] = '\0';

    int rc = pki_spiffe_parse(s, td, ns, sa, &err);
    int rb = pki_spiffe_check_bytes(data, size, out, sizeof(out), NULL);
    if (memchr(data, '\0', size) == NULL && (rc == 0) != (rb == 0))
        __builtin_trap();
    if (memchr(data, '\0', size) != NULL && rb == 0)
        __builtin_trap();
    if (rc == 0) {
        if (err != NULL)
            __builtin_trap();
        if (strlen(td) >= size || strlen(ns) >= size || strlen(sa) >= size)
            __builtin_trap();
        if (pki_spiffe_build(td, ns, sa, out, sizeof(out), &err) != 0 || strcmp(out, s) != 0)
            __builtin_trap();
    } else if (err == NULL) {
        __builtin_trap();
    }
    free(err);
    free(s);
    return 0;
}
