/* remora-injector: the mutating admission webhook that adds remora-proxy to
 * pods (docs/injector.md).
 *   remora-injector -c FILE                 serve
 *   remora-injector --check-config -c FILE  validate config, template and certificate; exit
 *   remora-injector --print-template        the built-in sidecar template
 *   remora-injector --version
 *   remora-injector publish-ca-root --root FILE [flags]
 *                                           keep remora-ca-root in meshed namespaces (publish.h)
 *   remora-injector refresh-jwks [flags]    copy the cluster's token keys into remora-jwks
 *                                           (jwks_refresh.h) */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"
#include "injector/ca.h"
#include "injector/config.h"
#include "injector/discovery.h"
#include "injector/jwks_refresh.h"
#include "injector/metrics.h"
#include "injector/publish.h"
#include "injector/server.h"
#include "injector/template.h"
#include "injector/tls.h"

/* How long open connections get to finish after SIGTERM. */
#define SHUTDOWN_GRACE_MS 5000

static void usage(FILE *f)
{
    fprintf(f, "usage: remora-injector -c FILE\n"
               "       remora-injector --check-config -c FILE\n"
               "       remora-injector --print-template\n"
               "       remora-injector --version\n"
               "       remora-injector publish-ca-root --root FILE [flags]  (--help: the flags)\n"
               "       remora-injector refresh-jwks [flags]                 (--help: the flags)\n");
}

/* Poll the watched files; reload what changed (everything with force). */
static void reload(struct ij_tls *tls, struct ij_template_slot *tpl, bool force)
{
    char *err = NULL;
    int rc = ij_tls_reload(tls, force, &err);
    if (rc > 0) {
        ij_metrics_cert_reload(1);
        ij_metrics_set_cert_expiry(ij_tls_not_after(tls));
        cm_info("serving certificate reloaded (notAfter %lld)", (long long)ij_tls_not_after(tls));
    } else if (rc < 0) {
        ij_metrics_cert_reload(0);
        cm_error("serving certificate not reloaded, keeping the old one: %s", err);
    }
    free(err);
    err = NULL;
    rc = ij_template_slot_reload(tpl, force, &err);
    if (rc > 0) {
        ij_metrics_template_reload(1);
        cm_info("sidecar template reloaded from %s", tpl->file);
    } else if (rc < 0) {
        ij_metrics_template_reload(0);
        cm_error("sidecar template not reloaded, keeping the old one: %s", err);
    }
    free(err);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},   {"check-config", no_argument, NULL, 'k'},
        {"print-template", no_argument, NULL, 'p'}, {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    bool check = false;
    int o;

    cm_log_set_component("injector");
    /* A subcommand comes first, before the server's flags. */
    if (argc > 1 && strcmp(argv[1], "publish-ca-root") == 0)
        return ij_publish_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "refresh-jwks") == 0)
        return ij_jwks_refresh_main(argc - 1, argv + 1);
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            file = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'p':
            fputs(ij_template_builtin_json, stdout);
            return 0;
        case 'v':
            printf("remora-injector %s\n", IJ_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (file == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }

    struct ij_config cfg;
    struct ij_template_slot tpl;
    struct ij_tls *tls = NULL;
    struct ij_server *srv = NULL;
    struct ij_ca *ca = NULL;
    struct ij_disc *disc = NULL;
    char *err = NULL;
    int status = 1;

    if (ij_config_load(file, &cfg, &err) != 0) {
        fprintf(stderr, "remora-injector: %s\n", err);
        free(err);
        return 1;
    }
    cm_log_set_level(cfg.log_level);
    if (ij_template_slot_init(&tpl, cfg.template_file, &err) != 0) {
        fprintf(stderr, "remora-injector: %s\n", err);
        goto fail_config;
    }
    if (ij_tls_new(cfg.cert_file, cfg.key_file, &tls, &err) != 0) {
        fprintf(stderr, "remora-injector: %s\n", err);
        goto fail_template;
    }
    if (ij_ca_new(&cfg, &ca, &err) != 0) {
        fprintf(stderr, "remora-injector: %s\n", err);
        goto fail_tls;
    }
    if (check) {
        printf("%s: ok\n", file);
        status = 0;
        goto fail_ca;
    }
    ij_metrics_set_cert_expiry(ij_tls_not_after(tls));

    /* Signals go to this thread alone (sigtimedwait below); the server
     * threads inherit the blocked mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Discovery first: its readiness gate is in place before /readyz can
     * be asked (docs/discovery.md, "Readiness"). */
    if (ij_disc_start(&cfg, &disc, &err) != 0) {
        cm_error("%s", err);
        goto fail_ca;
    }
    if (ij_server_start(&cfg, tls, &tpl, cfg.ca_address ? NULL : ca, &srv, &err) != 0) {
        cm_error("%s", err);
        ij_disc_stop(disc);
        goto fail_ca;
    }
    if (ca != NULL && ij_ca_serve(ca, &err) != 0) {
        cm_error("%s", err);
        ij_server_stop(srv, 0);
        ij_disc_stop(disc);
        goto fail_ca;
    }
    cm_info("remora-injector %s started: trust domain %s, template %s, %s sidecars by default",
            IJ_VERSION, cfg.trust_domain, cfg.template_file ? cfg.template_file : "built-in",
            cfg.native_sidecars ? "native" : "classic");

    for (;;) {
        struct timespec ts = {(time_t)(cfg.reload_interval_ms / 1000),
                              (long)(cfg.reload_interval_ms % 1000) * 1000000L};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            cm_info("signal %d: stopping (up to %d ms for open connections)", sig,
                    SHUTDOWN_GRACE_MS);
            break;
        }
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            cm_error("sigtimedwait: %s", strerror(errno));
            break;
        }
        reload(tls, &tpl, sig == SIGHUP);
        ij_ca_poll(ca, sig == SIGHUP);
    }
    ij_disc_stop(disc);
    ij_ca_stop(ca, SHUTDOWN_GRACE_MS);
    ij_server_stop(srv, SHUTDOWN_GRACE_MS);
    status = 0;

fail_ca:
    ij_ca_free(ca);
fail_tls:
    ij_tls_free(tls);
fail_template:
    ij_template_slot_deinit(&tpl);
fail_config:
    free(err);
    ij_config_deinit(&cfg);
    return status;
}
