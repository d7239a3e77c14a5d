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

#include <getopt.h>

/* What every API-server job (publish-ca-root, refresh-jwks) takes from its
 * command line: the client's flags and the ConfigMap it writes. Strings are
 * borrowed from argv, except api. */
struct ij_job_opts {
    char *api;              /* heap after ij_job_opts_finish: --api or ij_kube_default_api() */
    const char *api_arg;    /* --api as given, or NULL */
    const char *token_file; /* --token-file */
    const char *ca_file;    /* --ca-file */
    const char *name;       /* --name: the ConfigMap */
    const char *key;        /* --key: its data key */
    int timeout_ms;         /* --timeout-ms: per request */
};

/* getopt_long codes of the shared flags (a job's own flags use codes below
 * 0x100), and their entries for a job's option table. */
enum {
    IJ_JOB_API = 0x100,
    IJ_JOB_TOKEN,
    IJ_JOB_CA,
    IJ_JOB_NAME,
    IJ_JOB_KEY,
    IJ_JOB_TIMEOUT,
    IJ_JOB_HELP
};
#define IJ_JOB_OPTIONS                                                                             \
    {"api", required_argument, NULL, IJ_JOB_API},                                                  \
        {"token-file", required_argument, NULL, IJ_JOB_TOKEN},                                     \
        {"ca-file", required_argument, NULL, IJ_JOB_CA},                                           \
        {"name", required_argument, NULL, IJ_JOB_NAME},                                            \
        {"key", required_argument, NULL, IJ_JOB_KEY},                                              \
        {"timeout-ms", required_argument, NULL, IJ_JOB_TIMEOUT},                                   \
    {                                                                                              \
        "help", no_argument, NULL, IJ_JOB_HELP                                                     \
    }

/* Defaults: the in-cluster token and CA files, 10 s per request, the given
 * ConfigMap name and key. Resets getopt (optind, opterr). */
void ij_job_opts_init(struct ij_job_opts *j, const char *name, const char *key);
/* The next of the job's own flags: getopt_long(argc, argv, ":h", opts), the
 * shared flags taken into j on the way. Returns 1 with *c (one of the job's
 * own codes, 'h' or IJ_JOB_HELP; its value in optarg), 0 once the flags are
 * over, or CM_ERR_INVAL with *errmsg for a bad value, a missing value or an
 * unknown flag. */
int ij_job_getopt(struct ij_job_opts *j, int argc, char **argv, const struct option *opts, int *c,
                  char **errmsg);
/* After the loop: no stray argument, --name and --key valid, api resolved and
 * parsed as an https URL. Returns 0 or CM_ERR_INVAL with *errmsg. */
int ij_job_opts_finish(struct ij_job_opts *j, int argc, char **argv, char **errmsg);
void ij_job_opts_deinit(struct ij_job_opts *j);
struct ij_kube;
/* A client for the job's API server: ij_kube_new with its --api,
 * --token-file, --ca-file and --timeout-ms. */
int ij_job_kube_new(const struct ij_job_opts *j, struct ij_kube **out, char **errmsg);
/* The exit status of subcommand `cmd` ("publish-ca-root") whose parse_args
 * returned rc != 0: 0 after --help; else err and the usage on stderr, and 2.
 * Frees err. */
int ij_job_args_exit(const char *cmd, int rc, char *err, void (*usage)(FILE *));

/* The command line of publish-ca-root. */
struct ij_publish_opts {
    struct ij_job_opts job;
    const char *root_file;
    const char *selector;
    long interval_s; /* 0: once */
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
