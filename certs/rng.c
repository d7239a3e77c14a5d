/* The process-wide CSPRNG: one CTR-DRBG seeded from the OS entropy pool.
 * mbedTLS is built with MBEDTLS_THREADING_C, so mbedtls_ctr_drbg_random
 * locks the context itself; we add one-time initialisation and a reseed
 * after fork() so a parent and its child never share a random stream. */
#include "certs/pki.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context rng_entropy;
static mbedtls_ctr_drbg_context rng_drbg;
static pid_t rng_pid;
static int rng_ready;

static void die(const char *what, int ret)
{
    fprintf(stderr, "fatal: %s the random generator failed (-0x%04x)\n", what, (unsigned)-ret);
    abort();
}

/* Called with rng_lock held. */
static void rng_init(void)
{
    static const char pers[] = "remora-pki";
    mbedtls_entropy_init(&rng_entropy);
    mbedtls_ctr_drbg_init(&rng_drbg);
    int ret = mbedtls_ctr_drbg_seed(&rng_drbg, mbedtls_entropy_func, &rng_entropy,
                                    (const unsigned char *)pers, sizeof(pers) - 1);
    if (ret != 0)
        die("seeding", ret);
    rng_pid = getpid();
    rng_ready = 1;
}

mbedtls_ctr_drbg_context *pki_rng(void)
{
    /* One uncontended lock per draw: negligible beside the DRBG itself. */
    pthread_mutex_lock(&rng_lock);
    if (!rng_ready) {
        rng_init();
    } else {
        pid_t pid = getpid();
        if (pid != rng_pid) {
            int ret = mbedtls_ctr_drbg_reseed(&rng_drbg, (const unsigned char *)&pid, sizeof(pid));
            if (ret != 0)
                die("reseeding", ret);
            rng_pid = pid;
        }
    }
    pthread_mutex_unlock(&rng_lock);
    return &rng_drbg;
}

int pki_rng_fn(void *ctx, unsigned char *out, size_t len)
{
    (void)ctx;
    mbedtls_ctr_drbg_context *d = pki_rng();
    /* mbedtls_ctr_drbg_random serves at most MBEDTLS_CTR_DRBG_MAX_REQUEST bytes per call */
    while (len > 0) {
        size_t n = len > MBEDTLS_CTR_DRBG_MAX_REQUEST ? MBEDTLS_CTR_DRBG_MAX_REQUEST : len;
        int ret = mbedtls_ctr_drbg_random(d, out, n);
        if (ret != 0)
            return ret;
        out += n;
        len -= n;
    }
    return 0;
}

void pki_rng_free(void)
{
    pthread_mutex_lock(&rng_lock);
    if (rng_ready) {
        mbedtls_ctr_drbg_free(&rng_drbg);
        mbedtls_entropy_free(&rng_entropy);
        rng_ready = 0; /* a later pki_rng() seeds afresh */
    }
    pthread_mutex_unlock(&rng_lock);
}
