#include "injector/tls.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "common/watch.h"

#define MAX_CHAIN 16

struct ij_tls_cert {
    atomic_int refs;
    gnutls_pcert_st pcerts[MAX_CHAIN];
    unsigned npcerts;
    gnutls_privkey_t key;
    struct ij_tls_cert *newer; /* the snapshot that replaced this one (a reference) */
    int64_t not_after;
};

struct ij_tls {
    pthread_mutex_t mu;
    struct ij_tls_cert *cur; /* a reference */
    const char *cert_file, *key_file;
    struct cm_watch watch; /* cert_file, key_file */
};

static struct ij_tls *bound;

static void cert_unref(struct ij_tls_cert *c)
{
    /* Iterative: a long-lived connection can pin a chain of successors. */
    while (c != NULL && atomic_fetch_sub(&c->refs, 1) == 1) {
        struct ij_tls_cert *next = c->newer;
        for (unsigned i = 0; i < c->npcerts; i++)
            gnutls_pcert_deinit(&c->pcerts[i]);
        gnutls_privkey_deinit(c->key);
        free(c);
        c = next;
    }
}

static int fail(char **errmsg, const char *file, const char *what, int gerr)
{
    free(*errmsg);
    *errmsg = cm_xasprintf("%s: %s: %s", file, what, gnutls_strerror(gerr));
    return CM_ERR_INVAL;
}

/* The private key and the leaf certificate carry the same public key? */
static bool key_matches(gnutls_privkey_t key, gnutls_pcert_st *leaf)
{
    gnutls_pubkey_t pub = NULL;
    gnutls_datum_t a = {NULL, 0}, b = {NULL, 0};
    bool same = false;
    if (gnutls_pubkey_init(&pub) == 0 && gnutls_pubkey_import_privkey(pub, key, 0, 0) == 0 &&
        gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &a) == 0 &&
        gnutls_pubkey_export2(leaf->pubkey, GNUTLS_X509_FMT_DER, &b) == 0)
        same = a.size == b.size && memcmp(a.data, b.data, a.size) == 0;
    gnutls_free(a.data);
    gnutls_free(b.data);
    gnutls_pubkey_deinit(pub);
    return same;
}

static int load(const char *cert_file, const char *key_file, struct ij_tls_cert **out,
                char **errmsg)
{
    gnutls_datum_t cd = {NULL, 0}, kd = {NULL, 0};
    struct ij_tls_cert *c = cm_xcalloc(1, sizeof(*c));
    int rc, g;

    atomic_init(&c->refs, 1);
    if ((g = gnutls_load_file(cert_file, &cd)) < 0) {
        rc = fail(errmsg, cert_file, "cannot read", g);
        goto out;
    }
    if ((g = gnutls_load_file(key_file, &kd)) < 0) {
        rc = fail(errmsg, key_file, "cannot read", g);
        goto out;
    }
    c->npcerts = MAX_CHAIN;
    if ((g = gnutls_pcert_list_import_x509_raw(c->pcerts, &c->npcerts, &cd, GNUTLS_X509_FMT_PEM,
                                               0)) < 0 ||
        c->npcerts == 0) {
        c->npcerts = 0;
        rc = fail(errmsg, cert_file, "not a PEM certificate chain",
                  g < 0 ? g : GNUTLS_E_NO_CERTIFICATE_FOUND);
        goto out;
    }
    if ((g = gnutls_privkey_init(&c->key)) < 0 ||
        (g = gnutls_privkey_import_x509_raw(c->key, &kd, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
        rc = fail(errmsg, key_file, "not a PEM private key", g);
        goto out;
    }
    if (!key_matches(c->key, &c->pcerts[0])) {
        free(*errmsg);
        *errmsg =
            cm_xasprintf("%s: the key does not match the certificate in %s", key_file, cert_file);
        rc = CM_ERR_INVAL;
        goto out;
    }
    gnutls_x509_crt_t crt;
    if (gnutls_pcert_export_x509(&c->pcerts[0], &crt) == 0) {
        c->not_after = (int64_t)gnutls_x509_crt_get_expiration_time(crt);
        gnutls_x509_crt_deinit(crt);
    }
    *out = c;
    c = NULL;
    rc = 0;
out:
    gnutls_free(cd.data);
    if (kd.data != NULL) {
        memset(kd.data, 0, kd.size); /* key material */
        gnutls_free(kd.data);
    }
    cert_unref(c);
    return rc;
}

int ij_tls_new(const char *cert_file, const char *key_file, struct ij_tls **out, char **errmsg)
{
    struct ij_tls *t = cm_xcalloc(1, sizeof(*t));
    t->cert_file = cert_file;
    t->key_file = key_file;
    const char *files[2] = {cert_file, key_file};
    cm_watch_init(&t->watch, files, 2);
    int rc = load(cert_file, key_file, &t->cur, errmsg);
    if (rc != 0) {
        free(t);
        return rc;
    }
    pthread_mutex_init(&t->mu, NULL);
    *out = t;
    return 0;
}

void ij_tls_free(struct ij_tls *t)
{
    if (t == NULL)
        return;
    if (bound == t)
        bound = NULL;
    cert_unref(t->cur);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

int ij_tls_reload(struct ij_tls *t, bool force, char **errmsg)
{
    /* A renewal writes two files; if we catch it half-way the pair does not
     * match and the next tick, after the second write, tries again. */
    if (!cm_watch_poll(&t->watch) && !force)
        return 0;
    struct ij_tls_cert *c = NULL;
    int rc = load(t->cert_file, t->key_file, &c, errmsg);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&t->mu);
    struct ij_tls_cert *old = t->cur;
    atomic_fetch_add(&c->refs, 1);
    old->newer = c; /* connections pinning old keep c alive too */
    t->cur = c;
    pthread_mutex_unlock(&t->mu);
    cert_unref(old);
    return 1;
}

int64_t ij_tls_not_after(struct ij_tls *t)
{
    pthread_mutex_lock(&t->mu);
    int64_t v = t->cur->not_after;
    pthread_mutex_unlock(&t->mu);
    return v;
}

struct ij_tls_cert *ij_tls_conn_start(struct ij_tls *t)
{
    pthread_mutex_lock(&t->mu);
    struct ij_tls_cert *c = t->cur;
    atomic_fetch_add(&c->refs, 1);
    pthread_mutex_unlock(&t->mu);
    return c;
}

void ij_tls_conn_end(struct ij_tls_cert *c)
{
    cert_unref(c);
}

void ij_tls_bind(struct ij_tls *t)
{
    bound = t;
}

int ij_tls_on_cert(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                   const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                   gnutls_pcert_st **pcert, unsigned int *pcert_length, gnutls_privkey_t *pkey)
{
    (void)session;
    (void)req_ca_dn;
    (void)nreqs;
    (void)pk_algos;
    (void)pk_algos_length;
    struct ij_tls *t = bound;
    if (t == NULL)
        return -1;
    /* Not referenced here: the connection took its reference at start,
     * and that snapshot pins every later one, this one included. */
    pthread_mutex_lock(&t->mu);
    struct ij_tls_cert *c = t->cur;
    pthread_mutex_unlock(&t->mu);
    *pcert = c->pcerts;
    *pcert_length = c->npcerts;
    *pkey = c->key;
    return 0;
}
