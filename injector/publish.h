/* `remora-injector publish-ca-root`: keeps the ConfigMap remora-ca-root (key
 * root.pem) equal to the mesh root in every namespace labelled for injection,
 * as istiod does with istio-ca-root-cert (docs/ca.md, "Publishing the root").
 *
 * One run: list the namespaces matching the selector (paged), skip
 * kube-system, remora-system and Terminating ones, and for each GET the
 * ConfigMap: absent -> POST it; present with the same data[key] -> nothing;
 * otherwise a JSON merge patch of data[key] alone. One log line per
 * namespace and a summary. Run once (a CronJob) or every --interval seconds. */
#ifndef IJ_PUBLISH_H
#define IJ_PUBLISH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define IJ_PUBLISH_MAX_ROOT     (1u << 20) /* the root PEM file */
#define IJ_PUBLISH_PAGE         500        /* namespaces per list request */
#define IJ_PUBLISH_MAX_PAGES    10000      /* a server that never ends a list */
#define IJ_PUBLISH_MAX_INTERVAL 86400

/* The command line; strings are borrowed from argv, except api. */
struct ij_publish_opts {
    const char *root_file;
    char *api; /* heap: --api or ij_kube_default_api() */
    const char *token_file;
    const char *ca_file;
    const char *selector;
    const char *name; /* the ConfigMap */
    const char *key;  /* its data key */
    long interval_s;  /* 0: once */
    int timeout_ms;   /* per request */
};

/* What one run did. */
struct ij_publish_stats {
    unsigned matched;   /* namespaces the list returned */
    unsigned created;   /* ConfigMap POSTed */
    unsigned updated;   /* data[key] PATCHed */
    unsigned unchanged; /* already right: no write */
    unsigned skipped;   /* kube-system, remora-system, Terminating, deleted meanwhile */
    unsigned failed;    /* namespaces that failed, plus 1 for a run that failed before them */
};

/* Parse the arguments after "publish-ca-root" (argv[0] is the subcommand).
 * Returns 0, 1 for --help (usage printed), or CM_ERR_INVAL with *errmsg. */
int ij_publish_parse_args(int argc, char **argv, struct ij_publish_opts *o, char **errmsg);
void ij_publish_opts_deinit(struct ij_publish_opts *o);
void ij_publish_usage(FILE *f);

/* Read and check the root file: ASCII PEM, one or more X.509 CA
 * certificates, no private key. Returns 0 with *pem (heap, NUL-terminated,
 * *len bytes: the file as is) and *ncerts, or a negative cm_err. */
int ij_publish_load_root(const char *file, char **pem, size_t *len, unsigned *ncerts,
                         char **errmsg);

/* Whether a namespace name is a DNS-1123 label, a ConfigMap name a DNS-1123
 * subdomain, a data key what Kubernetes allows ([-._a-zA-Z0-9]+). */
bool ij_publish_valid_label(const char *s);
bool ij_publish_valid_subdomain(const char *s);
bool ij_publish_valid_key(const char *s);

/* What ij_publish_sync did. */
enum ij_publish_outcome {
    IJ_PUBLISH_CREATED = 0, /* POSTed */
    IJ_PUBLISH_UPDATED,     /* PATCHed data[key] */
    IJ_PUBLISH_UNCHANGED,   /* already right */
    IJ_PUBLISH_GONE,        /* the namespace was deleted while we worked */
    IJ_PUBLISH_FAILED       /* *errmsg says why */
};

struct ij_kube;
/* Bring ConfigMap ns/name's data[key] to `val` (len bytes): GET it; absent ->
 * POST (labelled part-of remora, managed-by remora-injector); equal -> no
 * write; else a JSON merge patch of data[key] alone. A write that races with
 * someone else (404 on PATCH, 409 on POST) starts over with a fresh GET, at
 * most 3 times. Used by publish-ca-root and refresh-jwks. */
enum ij_publish_outcome ij_publish_sync(struct ij_kube *k, const char *ns, const char *name,
                                        const char *key, const char *val, size_t len,
                                        char **errmsg);

/* One run. `stop` (may be NULL) holds signals whose pending presence ends the
 * run between namespaces. Returns 0 when every namespace succeeded, else 1. */
int ij_publish_run(const struct ij_publish_opts *o, const sigset_t *stop,
                   struct ij_publish_stats *st);

/* The subcommand: exit status 0 (all done), 1 (something failed), 2 (usage). */
int ij_publish_main(int argc, char **argv);

#endif
