/* Probe rewriting (docs/injector.md "Probes"): the app's httpGet probes go
 * through the proxy's health port; the probes the capture changes are said. */
#include "injector/inject.h"
#include "injector/inject_int.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "injector/jsonpatch.h"

/* ---- probes --------------------------------------------------------------- */

static const struct {
    const char *field; /* the container's probe */
    const char *what;  /* the last segment of the rewritten path */
} probe_kinds[] = {
    {"livenessProbe", "livez"},
    {"readinessProbe", "readyz"},
    {"startupProbe", "startupz"},
};

/* DNS-1123 label: what Kubernetes allows as a container name; anything else
 * cannot be put in a URL path unescaped, so its probes are left alone. */
static bool dns_label(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
        return false;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '-'))
            return false;
    return true;
}

/* The number behind a probe port: an integer, a numeric string, or the name
 * of one of the container's ports. -1 when it cannot be resolved. */
static long resolve_port(json_t *container, json_t *port)
{
    if (json_is_integer(port)) {
        json_int_t v = json_integer_value(port);
        return v >= 1 && v <= 65535 ? (long)v : -1;
    }
    const char *name = json_string_value(port);
    if (name == NULL || *name == '\0')
        return -1;
    if (ij_port_ok(name, strlen(name)))
        return strtol(name, NULL, 10);
    size_t i;
    json_t *p;
    json_array_foreach(ij_get_arr(container, "ports"), i, p)
    {
        const char *n = ij_get_str(p, "name");
        json_t *cp = json_object_get(p, "containerPort");
        if (n != NULL && strcmp(n, name) == 0 && json_is_integer(cp) &&
            json_integer_value(cp) >= 1 && json_integer_value(cp) <= 65535)
            return (long)json_integer_value(cp);
    }
    return -1;
}

/* A grpc or tcpSocket probe on a captured port: the proxy cannot rewrite it
 * yet, so say what happens. A gRPC probe reaches the inbound listener in
 * plaintext: under strict mTLS it fails, and a failing liveness probe
 * restarts the container in a loop. A tcpSocket probe is accepted by the
 * capture whatever the app does: it always succeeds and checks nothing. */
static void probe_warning(json_t *container, json_t *probe, const char *field, const char *excl_in,
                          const struct ij_inbound_tls *tls, json_t *warnings)
{
    const char *name = ij_get_str(container, "name");
    json_t *grpc = ij_get_obj(probe, "grpc"), *tcp = ij_get_obj(probe, "tcpSocket");
    if (name == NULL || (grpc == NULL && tcp == NULL))
        return;
    if (tcp != NULL) {
        const char *host = ij_get_str(tcp, "host");
        if (host != NULL && *host != '\0')
            return; /* another host: not through the pod's capture */
    }
    long port = resolve_port(container, json_object_get(grpc != NULL ? grpc : tcp, "port"));
    if (port > 0 && ij_port_listed(excl_in, port))
        return; /* not captured: kubelet reaches the app */
    char where[32] = "";
    if (port > 0)
        snprintf(where, sizeof(where), " on port %ld", port);
    bool plaintext_ok = strcmp(tls->mode, "permissive") == 0;
    for (size_t i = 0; port > 0 && i < tls->nports; i++)
        plaintext_ok |= tls->ports[i] == port;
    if (grpc != NULL && plaintext_ok)
        /* remora.io/permissive-ports (issue 19): kubelet's plaintext gets
         * through, but as a caller without a principal */
        ij_warn(warnings,
                "remora: container %.40s: %s is a gRPC probe%s, which reaches the app in "
                "plaintext (permissive): the pod's policy must allow it with no principal",
                name, field, where);
    else if (grpc != NULL)
        ij_warn(warnings,
                "remora: container %.40s: %s is a gRPC probe%s, which the proxy cannot rewrite: "
                "with strict mTLS it fails%s; exclude its port (%s) or use an httpGet probe",
                name, field, where,
                strcmp(field, "readinessProbe") == 0 ? " and the pod never becomes Ready"
                                                     : " and the container restarts in a loop",
                IJ_ANN_EXCLUDE_IN);
    else
        ij_warn(warnings,
                "remora: container %.40s: %s is a tcpSocket probe%s: the proxy accepts the "
                "connection, so it always succeeds whatever the app does; use an httpGet or exec "
                "probe, or exclude its port (%s)",
                name, field, where, IJ_ANN_EXCLUDE_IN);
}

/* Rewrite the HTTP probes of spec.containers[idx] to go through the proxy's
 * health port; record each original target in `probers` (path -> probe). */
void ij_rewrite_probes(json_t *patch, json_t *container, size_t idx, const char *excl_in,
                       const struct ij_inbound_tls *tls, json_t *probers, json_t *warnings)
{
    const char *name = ij_get_str(container, "name");
    char index[32];
    snprintf(index, sizeof(index), "%zu", idx);
    for (size_t k = 0; k < sizeof(probe_kinds) / sizeof(probe_kinds[0]); k++) {
        json_t *probe = ij_get_obj(container, probe_kinds[k].field);
        json_t *http = ij_get_obj(probe, "httpGet");
        if (http == NULL) {
            /* exec, tcpSocket and grpc probes are left alone; the two that
             * the capture changes are said (issue 14) */
            probe_warning(container, probe, probe_kinds[k].field, excl_in, tls, warnings);
            continue;
        }
        const char *host = ij_get_str(http, "host");
        if (host != NULL && *host != '\0')
            continue; /* kubelet probes another host, not through the pod's capture */
        if (name == NULL || !dns_label(name))
            continue;
        long port = resolve_port(container, json_object_get(http, "port"));
        if (port < 0) {
            ij_warn(warnings,
                    "remora: container %s: %s port cannot be resolved; probe not rewritten", name,
                    probe_kinds[k].field);
            continue;
        }
        if (ij_port_listed(excl_in, port))
            continue; /* not captured, kubelet reaches the app directly */

        char *path = cm_xasprintf("/app-health/%s/%s", name, probe_kinds[k].what);
        json_t *orig = json_deep_copy(http);
        json_object_set_new(orig, "port", json_integer(port));
        if (ij_get_str(orig, "scheme") == NULL)
            json_object_set_new(orig, "scheme", json_string("HTTP"));
        if (ij_get_str(orig, "path") == NULL)
            json_object_set_new(orig, "path", json_string("/"));
        json_t *entry = json_pack("{s:o}", "httpGet", orig);
        json_t *timeout = json_object_get(probe, "timeoutSeconds");
        if (json_is_integer(timeout))
            json_object_set(entry, "timeoutSeconds", timeout);
        json_object_set_new(probers, path, entry);

        json_t *repl =
            json_pack("{s:s, s:i, s:s}", "path", path, "port", IJ_PORT_HEALTH, "scheme", "HTTP");
        char *ptr =
            ij_jsonpatch_path("spec", "containers", index, probe_kinds[k].field, "httpGet", NULL);
        ij_jsonpatch_op(patch, "replace", ptr, repl);
        free(ptr);
        free(path);
    }
}
