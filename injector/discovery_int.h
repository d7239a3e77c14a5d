/* What discovery_watch.c and discovery_server.c share (discovery.h). */
#ifndef IJ_DISCOVERY_INT_H
#define IJ_DISCOVERY_INT_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "certs/pki.h"
#include "injector/discovery.h"
#include "injector/kube.h"

struct ij_disc_waiters; /* discovery_server.c */

/* One kind's list+watch thread. */
struct ij_disc_watch {
    struct ij_disc *d;
    enum ij_disc_kind kind;
    pthread_t thread;
    bool started;
    char rv[IJ_DISC_MAX_RV + 1];  /* where the watch resumes; "" before the first list */
    atomic_bool synced;           /* listed at least once */
    atomic_bool stale;            /* the last list or watch failed; answers are from before */
    atomic_uint_fast64_t errors;  /* API errors: transport, HTTP, broken streams */
    atomic_uint_fast64_t skipped; /* objects that did not decode */
    atomic_uint_fast64_t relists; /* 410 Gone (or a first list) */
    atomic_uint_fast64_t events;  /* watch events applied */
};

struct ij_disc {
    const struct ij_config *cfg;
    struct ij_disc_store *store;
    struct ij_kube *kube;
    atomic_bool stop;
    struct ij_disc_watch watch[IJ_DISC__KINDS];
    /* the server */
    struct MHD_Daemon *daemon;
    int fd;
    unsigned port;
    char *serve_cert, *serve_key, *trust_pem;
    mbedtls_x509_crt trust;
    struct ij_disc_waiters *waiters;
    pthread_t timer;
    bool timer_started;
};

/* The running service (NULL: none), for /metrics. */
struct ij_disc *ij_disc_active(void);
/* Start / stop the watch threads (discovery_watch.c). */
int ij_disc_watch_start(struct ij_disc *d, char **errmsg);
void ij_disc_watch_join(struct ij_disc *d);
/* Start / stop the HTTPS server (discovery_server.c). */
int ij_disc_server_start(struct ij_disc *d, char **errmsg);
void ij_disc_server_stop(struct ij_disc *d);
/* A change touched these wake keys (an API event seen at seen_us,
 * cm_mono_us): answer the long-polls whose answer now differs. */
void ij_disc_wake(struct ij_disc *d, const struct ij_disc_keys *keys, uint64_t seen_us);

#endif
