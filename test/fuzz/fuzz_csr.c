/* libFuzzer target for pki_csr_parse_verify (certs/csr.c), the CA's entry
 * point for untrusted CSRs, PEM or DER. Whatever the bytes, it returns an
 * error with a message or a valid SPIFFE ID; it never crashes or leaks.
 * The SAN walker runs on every CSR mbedTLS parses, even when the
 * signature fails, so the DER paths past the signature check get fuzzed
 * without the fuzzer having to forge ECDSA. Invariants (a violation traps):
 *   - success means a message-free return and an ID that parses again;
 *   - failure always comes with a message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mbedtls_x509_csr csr;
    char id[PKI_SPIFFE_MAX], *err = NULL;

    mbedtls_x509_csr_init(&csr);
    int rc = pki_csr_parse_verify(&csr, data, size, id, sizeof(id), &err);
    if (rc == 0) {
        if (err != NULL || pki_spiffe_parse(id, NULL, NULL, NULL, NULL) != 0)
            __builtin_trap();
    } else {
        if (err == NULL)
            __builtin_trap();
        free(err);
        err = NULL;
        if (csr.raw.p != NULL) {
            if (pki_csr_spiffe_id(&csr, id, sizeof(id), &err) == 0) {
                if (strncmp(id, "spiffe://", 9) != 0)
                    __builtin_trap();
            } else if (err == NULL) {
                __builtin_trap();
            }
            free(err);
        }
    }
    mbedtls_x509_csr_free(&csr);
    return 0;
}
