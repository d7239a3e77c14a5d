/* refresh-jwks (jwks_refresh.h): the cluster's JWKS into remora-jwks, on kube.c. */
#include "injector/jwks_refresh.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "certs/pki.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "injector/kube.h"
#include "injector/publish.h"
#include "injector/token.h"

void ij_jwks_refresh_usage(FILE *f)
{
    fprintf(f,
            "usage: remora-injector refresh-jwks [flags]\n"
            "  copies the API server's token keys (GET %s) into ConfigMap NS/NAME, data KEY\n"
            "  --api URL          API server (default $KUBERNETES_SERVICE_HOST:PORT, else %s)\n"
            "  --token-file FILE  bearer token (default %s)\n"
            "  --ca-file FILE     CA of the API server's certificate (default %s)\n"
            "  --namespace NS     the ConfigMap's namespace (default remora-system)\n"
            "  --name NAME        ConfigMap name (default remora-jwks)\n"
            "  --key KEY          data key (default jwks.json)\n"
            "  --timeout-ms MS    per API request (default 10000)\n"
            "exit status: 0 the ConfigMap holds the cluster's keys, 1 something failed, 2 usage\n",
            IJ_JWKS_REFRESH_PATH, IJ_KUBE_DEFAULT_API, IJ_KUBE_DEFAULT_TOKEN_FILE,
            IJ_KUBE_DEFAULT_CA_FILE);
}

void ij_jwks_refresh_opts_deinit(struct ij_jwks_refresh_opts *o)
{
    ij_job_opts_deinit(&o->job);
}

int ij_jwks_refresh_parse_args(int argc, char **argv, struct ij_jwks_refresh_opts *o, char **errmsg)
{
    enum { O_NS = 1 };
    static const struct option opts[] = {
        {"namespace", required_argument, NULL, O_NS},
        IJ_JOB_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int c, rc;
    memset(o, 0, sizeof(*o));
    ij_job_opts_init(&o->job, "remora-jwks", "jwks.json");
    o->ns = "remora-system";
    while ((rc = ij_job_getopt(&o->job, argc, argv, opts, &c, errmsg)) > 0) {
        if (c != O_NS) {
            ij_jwks_refresh_usage(stdout); /* 'h', IJ_JOB_HELP */
            return 1;
        }
        o->ns = optarg;
    }
    if (rc < 0)
        return rc;
    if (!ij_publish_valid_label(o->ns))
        return cm_fail(errmsg, CM_ERR_INVAL, "--namespace %s: not a valid namespace name", o->ns);
    return ij_job_opts_finish(&o->job, argc, argv, errmsg);
}

int ij_jwks_refresh_run(const struct ij_jwks_refresh_opts *o)
{
    struct ij_kube *k = NULL;
    struct ij_kube_resp r = {0};
    struct ij_jwks *keys = NULL;
    char *err = NULL;
    int ret = 1;
    uint64_t t0 = cm_mono_ms();
    if (ij_job_kube_new(&o->job, &k, &err) != 0)
        goto out;
    if (ij_kube_request(k, "GET", IJ_JWKS_REFRESH_PATH, NULL, NULL, 0, &r, &err) != 0)
        goto out;
    if (r.status != 200) {
        char *d = ij_kube_resp_describe(&r);
        cm_fail(&err, CM_ERR_PROTO, "GET %s: %s", IJ_JWKS_REFRESH_PATH, d);
        free(d);
        goto out;
    }
    /* Only a document the CA itself would load goes into the ConfigMap. */
    if (ij_jwks_parse(IJ_JWKS_REFRESH_PATH, r.body, r.body_len, &keys, &err) != 0)
        goto out;
    if (ij_jwks_count(keys) == 0) {
        cm_fail(&err, CM_ERR_INVAL, "GET %s: no key the CA can use (%zu skipped as unsupported)",
                IJ_JWKS_REFRESH_PATH, ij_jwks_skipped(keys));
        goto out;
    }
    enum ij_publish_outcome res =
        ij_publish_sync(k, o->ns, o->job.name, o->job.key, r.body, r.body_len, &err);
    static const char *const what[] = {
        [IJ_PUBLISH_CREATED] = "created",
        [IJ_PUBLISH_UPDATED] = "updated (other keys kept)",
        [IJ_PUBLISH_UNCHANGED] = "unchanged",
    };
    if (res == IJ_PUBLISH_GONE)
        cm_fail(&err, CM_ERR_PROTO, "namespace %s does not exist", o->ns);
    if (res != IJ_PUBLISH_CREATED && res != IJ_PUBLISH_UPDATED && res != IJ_PUBLISH_UNCHANGED)
        goto out;
    cm_info("refresh-jwks: ConfigMap %s/%s (%s) %s: %zu key%s (%zu skipped), %zu bytes from %s%s "
            "in %u ms",
            o->ns, o->job.name, o->job.key, what[res], ij_jwks_count(keys),
            ij_jwks_count(keys) == 1 ? "" : "s", ij_jwks_skipped(keys), r.body_len,
            ij_kube_endpoint(k), IJ_JWKS_REFRESH_PATH, (unsigned)(cm_mono_ms() - t0));
    ret = 0;
out:
    if (ret != 0)
        cm_error("refresh-jwks: %s", err ? err : "failed");
    ij_jwks_unref(keys);
    ij_kube_resp_deinit(&r);
    ij_kube_free(k);
    free(err);
    return ret;
}

int ij_jwks_refresh_main(int argc, char **argv)
{
    struct ij_jwks_refresh_opts o;
    char *err = NULL;
    int rc = ij_jwks_refresh_parse_args(argc, argv, &o, &err);
    if (rc != 0)
        return ij_job_args_exit("refresh-jwks", rc, err, ij_jwks_refresh_usage);
    cm_log_set_component("injector");
    rc = ij_jwks_refresh_run(&o);
    ij_jwks_refresh_opts_deinit(&o);
    pki_rng_free();
    return rc;
}
