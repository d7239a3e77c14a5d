/* Private helpers of certs/: error text, files, PEM, time conversion. */
#include "certs/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <mbedtls/error.h>
#include <mbedtls/pem.h>
#include <mbedtls/platform_util.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/xalloc.h"

static char *vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return cm_xstrdup("(unformattable message)");
    char *s = cm_xmalloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

int pki_fail(char **errmsg, int rc, const char *fmt, ...)
{
    if (errmsg != NULL) {
        va_list ap;
        va_start(ap, fmt);
        free(*errmsg);
        *errmsg = vformat(fmt, ap);
        va_end(ap);
    }
    return rc;
}

int pki_fail_mbed(char **errmsg, int rc, int mbed_ret, const char *fmt, ...)
{
    if (errmsg != NULL) {
        va_list ap;
        va_start(ap, fmt);
        char *head = vformat(fmt, ap);
        va_end(ap);
        char etxt[160];
        mbedtls_strerror(mbed_ret, etxt, sizeof(etxt));
        free(*errmsg);
        *errmsg = cm_xasprintf("%s: %s", head, etxt);
        free(head);
    }
    return rc;
}

int pki_read_file(const char *path, size_t max, unsigned char **buf, size_t *len, char **errmsg)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return pki_fail(errmsg, CM_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    unsigned char *b = cm_xmalloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap >= max)
                break;
            cap = cap * 2 > max ? max : cap * 2;
            b = cm_xrealloc(b, cap + 1);
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    int err = ferror(f) ? errno : 0, more = 0;
    if (!err && n == cap && cap >= max)
        more = fgetc(f) != EOF;
    fclose(f);
    if (err) {
        free(b);
        return pki_fail(errmsg, CM_ERR_IO, "%s: %s", path, err ? strerror(err) : "read error");
    }
    if (more) {
        free(b);
        return pki_fail(errmsg, CM_ERR_LIMIT, "%s: larger than %zu bytes", path, max);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
}

int pki_load_file(const char *path, size_t max,
                  int (*parse)(void *obj, const unsigned char *buf, size_t len, char **errmsg),
                  void *obj, char **errmsg)
{
    unsigned char *buf;
    size_t len;
    int rc = pki_read_file(path, max, &buf, &len, errmsg);
    if (rc != 0)
        return rc;
    char *inner = NULL;
    rc = parse(obj, buf, len, &inner);
    mbedtls_platform_zeroize(buf, len);
    free(buf);
    if (rc != 0) {
        pki_fail(errmsg, rc, "%s: %s", path, inner);
        free(inner);
    }
    return rc;
}

int pki_write_file(const char *path, const void *data, size_t len, unsigned mode, char **errmsg)
{
    char *tmp = cm_xasprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) {
        int rc = pki_fail(errmsg, CM_ERR_IO, "%s: %s", path, strerror(errno));
        free(tmp);
        return rc;
    }
    /* The umask may have narrowed the mode; a key must never be wider. */
    if (fchmod(fd, (mode_t)mode) != 0)
        goto fail_fd;
    const unsigned char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            goto fail_fd;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0)
        goto fail_fd;
    if (close(fd) != 0) {
        fd = -1;
        goto fail_fd;
    }
    if (rename(tmp, path) != 0) {
        fd = -1;
        goto fail_fd;
    }
    free(tmp);
    return 0;

fail_fd : {
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return pki_fail(errmsg, CM_ERR_IO, "%s: %s", path, strerror(e));
}
}

unsigned char *pki_nul_copy(const unsigned char *buf, size_t len)
{
    unsigned char *c = cm_xmalloc(len + 1);
    if (len > 0)
        memcpy(c, buf, len);
    c[len] = '\0';
    return c;
}

bool pki_looks_pem(const unsigned char *buf, size_t len)
{
    static const char armour[] = "-----BEGIN ";
    return buf != NULL && memmem(buf, len, armour, sizeof(armour) - 1) != NULL;
}

char *pki_der_to_pem(const char *type, const unsigned char *der, size_t len)
{
    char *head = cm_xasprintf("-----BEGIN %s-----\n", type);
    char *foot = cm_xasprintf("-----END %s-----\n", type);
    /* base64 grows 4/3, plus a newline every 64 characters, plus armour */
    size_t cap = len * 4 / 3 + len / 48 + strlen(head) + strlen(foot) + 16;
    unsigned char *out = cm_xmalloc(cap);
    size_t olen = 0;
    int ret = mbedtls_pem_write_buffer(head, foot, der, len, out, cap, &olen);
    free(head);
    free(foot);
    if (ret != 0) {
        /* Only a too-small buffer fails here, and cap is computed above. */
        fprintf(stderr, "fatal: PEM encoding failed (%d)\n", ret);
        abort();
    }
    /* olen counts the NUL that mbedtls_pem_write_buffer writes */
    return (char *)out;
}

void pki_str_append(char **a, const char *b)
{
    size_t la = *a ? strlen(*a) : 0, lb = strlen(b);
    char *s = cm_xrealloc(*a, la + lb + 1);
    memcpy(s + la, b, lb + 1);
    *a = s;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil): no time zone, no libc state. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int64_t pki_x509_time_epoch(const mbedtls_x509_time *t)
{
    return days_from_civil(t->year, t->mon, t->day) * 86400 + (int64_t)t->hour * 3600 +
           (int64_t)t->min * 60 + t->sec;
}

void pki_x509_time_str(int64_t epoch, char out[15])
{
    static const int64_t lo = -631152000;   /* 1950-01-01T00:00:00Z */
    static const int64_t hi = 253402300799; /* 9999-12-31T23:59:59Z */
    if (epoch < lo)
        epoch = lo;
    if (epoch > hi)
        epoch = hi;
    time_t tt = (time_t)epoch;
    struct tm tm;
    gmtime_r(&tt, &tm);
    /* the clamp above keeps the year at four digits: 14 characters */
    if (strftime(out, 15, "%Y%m%d%H%M%S", &tm) != 14)
        out[0] = '\0';
}

bool pki_crt_self_issued(const mbedtls_x509_crt *crt)
{
    return crt->subject_raw.len == crt->issuer_raw.len &&
           memcmp(crt->subject_raw.p, crt->issuer_raw.p, crt->issuer_raw.len) == 0;
}

int pki_key_check_strength(const mbedtls_pk_context *pk, const char *what, char **errmsg)
{
    switch (mbedtls_pk_get_type(pk)) {
    case MBEDTLS_PK_ECKEY:
    case MBEDTLS_PK_ECKEY_DH:
    case MBEDTLS_PK_ECDSA: {
        mbedtls_ecp_group_id g = mbedtls_pk_ec(*pk)->grp.id;
        if (g == MBEDTLS_ECP_DP_SECP256R1 || g == MBEDTLS_ECP_DP_SECP384R1)
            return 0;
        return pki_fail(errmsg, CM_ERR_INVAL, "%s: EC curve not accepted (P-256 or P-384 only)",
                        what);
    }
    case MBEDTLS_PK_RSA:
        if (mbedtls_pk_get_bitlen(pk) >= 2048)
            return 0;
        return pki_fail(errmsg, CM_ERR_INVAL, "%s: RSA key of %zu bits (2048 at least)", what,
                        mbedtls_pk_get_bitlen(pk));
    case MBEDTLS_PK_NONE:
        return pki_fail(errmsg, CM_ERR_INVAL, "%s: no key", what);
    default:
        return pki_fail(errmsg, CM_ERR_INVAL, "%s: key type %s not accepted", what,
                        mbedtls_pk_get_name(pk));
    }
}
