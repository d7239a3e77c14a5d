/* `remora-injector refresh-jwks`: copies the cluster's service-account token
 * keys (GET /openid/v1/jwks on the API server) into the ConfigMap the CA
 * verifies projected tokens with (remora-system/remora-jwks, key jwks.json;
 * ca.jwks_file, docs/ca.md). Run by the remora-jwks-refresh CronJob from the
 * injector's own image, so the install needs no third-party image.
 *
 * One run: GET the JWKS, refuse it unless it parses as a JWKS with at least
 * one key the CA can use (ij_jwks_parse: a broken answer never replaces a
 * good ConfigMap), then bring the ConfigMap to it with ij_publish_sync (no
 * write when it is already equal). Exit 0 done, 1 failed, 2 usage. */
#ifndef IJ_JWKS_REFRESH_H
#define IJ_JWKS_REFRESH_H

#include <stdio.h>

#include "injector/publish.h"

#define IJ_JWKS_REFRESH_PATH "/openid/v1/jwks"

/* The command line: the shared job flags (--name/--key name the ConfigMap),
 * and its namespace. */
struct ij_jwks_refresh_opts {
    struct ij_job_opts job;
    const char *ns; /* --namespace */
};

/* Parse the arguments after "refresh-jwks" (argv[0] is the subcommand).
 * Returns 0, 1 for --help (usage printed), or CM_ERR_INVAL with *errmsg. */
int ij_jwks_refresh_parse_args(int argc, char **argv, struct ij_jwks_refresh_opts *o,
                               char **errmsg);
void ij_jwks_refresh_opts_deinit(struct ij_jwks_refresh_opts *o);
void ij_jwks_refresh_usage(FILE *f);

/* One run; logs what it did. Returns 0 when the ConfigMap holds the
 * cluster's JWKS, else 1. */
int ij_jwks_refresh_run(const struct ij_jwks_refresh_opts *o);

/* The subcommand: exit status 0, 1 or 2 (usage). */
int ij_jwks_refresh_main(int argc, char **argv);

#endif
