/* libFuzzer target for the PEM/DER paths of certs/: pki_bundle_parse
 * (trust bundles, peer chains, CA files), pki_key_parse, and, on every
 * certificate that parses, pki_crt_spiffe_id, the serial and validity
 * accessors and pki_verify_peer against the bundle itself. Invariants (a
 * violation traps): every failure has a message; a SPIFFE ID returned is
 * valid; nothing leaks. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_err(int rc, char **err)
{
    if ((rc != 0) != (*err != NULL))
        __builtin_trap();
    free(*err);
    *err = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mbedtls_x509_crt chain;
    mbedtls_pk_context key;
    char *err = NULL, id[PKI_SPIFFE_MAX], serial[2 * 32 + 1];

    mbedtls_x509_crt_init(&chain);
    int rc = pki_bundle_parse(&chain, data, size, &err);
    check_err(rc, &err);
    if (rc == 0) {
        for (mbedtls_x509_crt *c = &chain; c != NULL && c->raw.p != NULL; c = c->next) {
            int r = pki_crt_spiffe_id(c, id, sizeof(id), &err);
            if (r == 0 && pki_spiffe_parse(id, NULL, NULL, NULL, NULL) != 0)
                __builtin_trap();
            check_err(r, &err);
            pki_crt_serial_hex(c, serial, sizeof(serial));
            if (strlen(serial) >= sizeof(serial))
                __builtin_trap();
            (void)pki_crt_not_after(c);
            (void)pki_crt_not_before(c);
        }
        /* the chain as its own trust bundle: self-signed leaves and
         * anchors exercise the verification and extraction paths */
        rc = pki_verify_peer(&chain, &chain, "cluster.local", id, sizeof(id), &err);
        check_err(rc, &err);
    }
    mbedtls_x509_crt_free(&chain);

    mbedtls_pk_init(&key);
    rc = pki_key_parse(&key, data, size, &err);
    check_err(rc, &err);
    mbedtls_pk_free(&key);
    return 0;
}
