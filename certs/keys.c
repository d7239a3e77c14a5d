/* Private keys: EC P-256 generation, parsing (PEM or DER, EC or RSA),
 * loading from files and PEM output. */
#include "certs/pki.h"

#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <stdlib.h>
#include <string.h>

#include "certs/internal.h"
#include "common/err.h"
#include "common/xalloc.h"

int pki_key_generate(mbedtls_pk_context *pk, char **errmsg)
{
    int ret = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (ret != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "key generation: setup");
    ret = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), pki_rng_fn, NULL);
    if (ret != 0) {
        mbedtls_pk_free(pk);
        mbedtls_pk_init(pk);
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "key generation: EC P-256");
    }
    return 0;
}

int pki_key_parse(mbedtls_pk_context *pk, const unsigned char *buf, size_t len, char **errmsg)
{
    if (buf == NULL || len == 0)
        return pki_fail(errmsg, CM_ERR_INVAL, "private key: empty input");
    if (len > PKI_MAX_KEY)
        return pki_fail(errmsg, CM_ERR_LIMIT, "private key: larger than %u bytes", PKI_MAX_KEY);
    int ret;
    if (pki_looks_pem(buf, len) && buf[len - 1] != '\0') {
        unsigned char *c = pki_nul_copy(buf, len);
        ret = mbedtls_pk_parse_key(pk, c, len + 1, NULL, 0);
        mbedtls_platform_zeroize(c, len);
        free(c);
    } else {
        ret = mbedtls_pk_parse_key(pk, buf, len, NULL, 0);
    }
    if (ret == MBEDTLS_ERR_PK_PASSWORD_REQUIRED)
        return pki_fail(errmsg, CM_ERR_INVAL, "private key: encrypted (not supported)");
    if (ret != 0)
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "private key");
    return 0;
}

static int parse_key(void *pk, const unsigned char *buf, size_t len, char **errmsg)
{
    return pki_key_parse(pk, buf, len, errmsg);
}

int pki_key_load_file(mbedtls_pk_context *pk, const char *path, char **errmsg)
{
    return pki_load_file(path, PKI_MAX_KEY, parse_key, pk, errmsg);
}

int pki_key_write_pem(mbedtls_pk_context *pk, char **pem, char **errmsg)
{
    size_t cap = 16384; /* an RSA-4096 key in PEM is about 3.3 kB */
    unsigned char *buf = cm_xmalloc(cap);
    int ret = mbedtls_pk_write_key_pem(pk, buf, cap);
    if (ret != 0) {
        mbedtls_platform_zeroize(buf, cap);
        free(buf);
        return pki_fail_mbed(errmsg, CM_ERR_INVAL, ret, "private key: PEM encoding");
    }
    *pem = cm_xstrdup((char *)buf);
    mbedtls_platform_zeroize(buf, cap);
    free(buf);
    return 0;
}
