/* refresh-jwks (jwks_refresh.h): the cluster's JWKS into remora-jwks, on kube.c. */
#include "injector/jwks_refresh.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
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

static int jfail(char **errmsg, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int jfail(char **errmsg, int rc, const char *fmt, ...)
{
    va_list ap;
    char buf[2048];
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    free(*errmsg);
    *errmsg = cm_xstrdup(buf);
    return rc;
}

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
    free(o->api);
    o->api = NULL;
}

int ij_jwks_refresh_parse_args(int argc, char **argv, struct ij_jwks_refresh_opts *o, char **errmsg)
{
    enum { O_API = 1, O_TOKEN, O_CA, O_NS, O_NAME, O_KEY, O_TIMEOUT, O_HELP };
    static const struct option opts[] = {
        {"api", required_argument, NULL, O_API},
        {"token-file", required_argument, NULL, O_TOKEN},
        {"ca-file", required_argument, NULL, O_CA},
        {"namespace", required_argument, NULL, O_NS},
        {"name", required_argument, NULL, O_NAME},
        {"key", required_argument, NULL, O_KEY},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *api = NULL;
    int c;
    memset(o, 0, sizeof(*o));
    o->token_file = IJ_KUBE_DEFAULT_TOKEN_FILE;
    o->ca_file = IJ_KUBE_DEFAULT_CA_FILE;
    o->ns = "remora-system";
    o->name = "remora-jwks";
    o->key = "jwks.json";
    o->timeout_ms = 10000;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_API:
            api = optarg;
            break;
        case O_TOKEN:
            o->token_file = optarg;
            break;
        case O_CA:
            o->ca_file = optarg;
            break;
        case O_NS:
            o->ns = optarg;
            break;
        case O_NAME:
            o->name = optarg;
            break;
        case O_KEY:
            o->key = optarg;
            break;
        case O_TIMEOUT: {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || v < 10 || v > 600000)
                return jfail(errmsg, CM_ERR_INVAL,
                             "--timeout-ms %s: want a whole number from 10 to 600000", optarg);
            o->timeout_ms = (int)v;
            break;
        }
        case 'h':
        case O_HELP:
            ij_jwks_refresh_usage(stdout);
            return 1;
        case ':':
            return jfail(errmsg, CM_ERR_INVAL, "%s needs a value", argv[optind - 1]);
        default:
            return jfail(errmsg, CM_ERR_INVAL, "unknown flag %s", argv[optind - 1]);
        }
    }
    if (optind != argc)
        return jfail(errmsg, CM_ERR_INVAL, "unexpected argument %s", argv[optind]);
    if (!ij_publish_valid_label(o->ns))
        return jfail(errmsg, CM_ERR_INVAL, "--namespace %s: not a valid namespace name", o->ns);
    if (!ij_publish_valid_subdomain(o->name))
        return jfail(errmsg, CM_ERR_INVAL,
                     "--name %s: not a valid ConfigMap name (DNS-1123 subdomain)", o->name);
    if (!ij_publish_valid_key(o->key))
        return jfail(errmsg, CM_ERR_INVAL, "--key %s: not a valid ConfigMap key ([-._a-zA-Z0-9]+)",
                     o->key);
    o->api = api ? cm_xstrdup(api) : ij_kube_default_api();
    struct ij_kube_url u;
    int rc = ij_kube_url_parse(o->api, &u, errmsg);
    if (rc != 0)
        ij_jwks_refresh_opts_deinit(o);
    return rc;
}

int ij_jwks_refresh_run(const struct ij_jwks_refresh_opts *o)
{
    struct ij_kube *k = NULL;
    struct ij_kube_resp r = {0};
    struct ij_jwks *keys = NULL;
    char *err = NULL;
    int ret = 1;
    uint64_t t0 = cm_mono_ms();
    struct ij_kube_opts ko = {.api = o->api,
                              .token_file = o->token_file,
                              .ca_file = o->ca_file,
                              .timeout_ms = o->timeout_ms};
    if (ij_kube_new(&ko, &k, &err) != 0)
        goto out;
    if (ij_kube_request(k, "GET", IJ_JWKS_REFRESH_PATH, NULL, NULL, 0, &r, &err) != 0)
        goto out;
    if (r.status != 200) {
        char *d = ij_kube_resp_describe(&r);
        jfail(&err, CM_ERR_PROTO, "GET %s: %s", IJ_JWKS_REFRESH_PATH, d);
        free(d);
        goto out;
    }
    /* Only a document the CA itself would load goes into the ConfigMap. */
    if (ij_jwks_parse(IJ_JWKS_REFRESH_PATH, r.body, r.body_len, &keys, &err) != 0)
        goto out;
    if (ij_jwks_count(keys) == 0) {
        jfail(&err, CM_ERR_INVAL, "GET %s: no key the CA can use (%zu skipped as unsupported)",
              IJ_JWKS_REFRESH_PATH, ij_jwks_skipped(keys));
        goto out;
    }
    enum ij_publish_outcome res =
        ij_publish_sync(k, o->ns, o->name, o->key, r.body, r.body_len, &err);
    static const char *const what[] = {
        [IJ_PUBLISH_CREATED] = "created",
        [IJ_PUBLISH_UPDATED] = "updated (other keys kept)",
        [IJ_PUBLISH_UNCHANGED] = "unchanged",
    };
    if (res == IJ_PUBLISH_GONE)
        jfail(&err, CM_ERR_PROTO, "namespace %s does not exist", o->ns);
    if (res != IJ_PUBLISH_CREATED && res != IJ_PUBLISH_UPDATED && res != IJ_PUBLISH_UNCHANGED)
        goto out;
    cm_info("refresh-jwks: ConfigMap %s/%s (%s) %s: %zu key%s (%zu skipped), %zu bytes from %s%s "
            "in %u ms",
            o->ns, o->name, o->key, what[res], ij_jwks_count(keys),
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
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "remora-injector refresh-jwks: %s\n", err);
        ij_jwks_refresh_usage(stderr);
        free(err);
        return 2;
    }
    cm_log_set_component("injector");
    rc = ij_jwks_refresh_run(&o);
    ij_jwks_refresh_opts_deinit(&o);
    pki_rng_free();
    return rc;
}
