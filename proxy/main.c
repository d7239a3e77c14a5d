/* remora-proxy: the per-pod sidecar. The CLI: docs/contract.md. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/config.h"
#include "proxy/health.h"
#include "proxy/iptables.h"
#include "proxy/policy.h"
#include "proxy/routes.h"
#include "proxy/server_run.h"

#ifndef REMORA_VERSION
#define REMORA_VERSION "0.1.0"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: remora-proxy -c FILE            run the sidecar\n"
            "       remora-proxy --check-config -c FILE  validate FILE and exit\n"
            "       remora-proxy iptables [flags]    install the capture rules\n"
            "       remora-proxy wait [--timeout S]  wait until the health port says ready\n"
            "       remora-proxy wait --drain [--timeout-ms MS]\n"
            "                                        wait until no request is in flight (preStop)\n"
            "       remora-proxy --version\n");
}

/* mTLS modes need a workload identity to present. */
static int check_supported(const struct px_config *cfg)
{
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct px_listener_cfg *l = &cfg->listeners[i];
        if (l->tls != PX_TLS_DISABLED && cfg->identity == NULL) {
            cm_error("%s: listeners[%zu].tls: \"%s\" needs an \"identity\" object (a certificate "
                     "to present)",
                     cfg->file, i,
                     l->tls == PX_TLS_MESH     ? "mesh"
                     : l->tls == PX_TLS_STRICT ? "strict"
                                               : "permissive");
            return -1;
        }
    }
    return 0;
}

/* --check-config also compiles the files the config points to, as the proxy
 * would at startup (where a bad one is fatal): the policy and the routes. */
static int check_files(const struct px_config *cfg)
{
    char *err = NULL;
    if (cfg->policy_file != NULL) {
        struct px_policy *p = NULL;
        if (px_policy_load_file(cfg->policy_file, &p, &err) != 0) {
            fprintf(stderr, "remora-proxy: policy_file: %s\n", err ? err : cfg->policy_file);
            free(err);
            return -1;
        }
        px_policy_free(p);
    }
    if (cfg->routes_file != NULL) {
        struct px_routes *r = NULL;
        if (px_routes_load_file(cfg->routes_file, &r, &err) != 0) {
            fprintf(stderr, "remora-proxy: routes_file: %s\n", err ? err : cfg->routes_file);
            free(err);
            return -1;
        }
        px_routes_unref(r);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *file = NULL;
    int check = 0, version = 0;
    cm_log_set_component("proxy");
    if (argc > 1 && strcmp(argv[1], "iptables") == 0)
        return px_iptables_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "wait") == 0) /* the postStart hook (proxy/wait.c) */
        return px_health_wait_main(argc - 1, argv + 1);

    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check-config", no_argument, NULL, 'k'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            file = optarg;
            break;
        case 'k':
            check = 1;
            break;
        case 'V':
            version = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (version) {
        printf("remora-proxy %s\n", REMORA_VERSION);
        return 0;
    }
    if (file == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    struct px_config *cfg = NULL;
    char *err = NULL;
    if (px_config_load(file, &cfg, &err) != 0) {
        fprintf(stderr, "remora-proxy: %s\n", err);
        free(err);
        return 1;
    }
    if (check) {
        if (check_supported(cfg) != 0 || check_files(cfg) != 0) {
            px_config_free(cfg);
            return 1;
        }
        printf("%s: ok (%zu listeners%s%s)\n", file, cfg->nlisteners,
               cfg->policy_file ? ", policy" : "", cfg->routes_file ? ", routes" : "");
        px_config_free(cfg);
        return 0;
    }
    cm_log_set_level(cfg->log_level);
    cm_log_set_format(cfg->log_format);
    int rc = check_supported(cfg) == 0 ? px_server_run(cfg) : 1;
    px_config_free(cfg);
    return rc == 0 ? 0 : 1;
}
