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
bool ij_inject_dns_label(const char *s)
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
long ij_inject_resolve_port(json_t *container, json_t *port)
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

/* A tcpSocket probe on a captured port, or a gRPC probe that could not be
 * rewritten (a container name that cannot go in a path): say what happens. A
 * gRPC probe reaches the inbound listener in plaintext: under strict mTLS it
 * fails, and a failing liveness probe restarts the container in a loop. A
 * tcpSocket probe is accepted by the capture whatever the app does: it always
 * succeeds and checks nothing. */
static void probe_warning(json_t *container, json_t *probe, const char *field, const char *excl_in,
                          json_t *warnings)
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
    long port =
        ij_inject_resolve_port(container, json_object_get(grpc != NULL ? grpc : tcp, "port"));
    if (port > 0 && ij_port_listed(excl_in, port))
        return; /* not captured: kubelet reaches the app */
    char where[32] = "";
    if (port > 0)
        snprintf(where, sizeof(where), " on port %ld", port);
    if (grpc != NULL)
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

/* A gRPC probe (issue 19): the whole probe is replaced by an httpGet of
 * `path` on the health port, which runs grpc.health.v1.Health/Check against
 * the app (proxy/grpc_health.c); `probers` gets {"grpc": {port, service},
 * timeoutSeconds}. One that cannot be is left alone, with a warning. */
static void rewrite_grpc(json_t *patch, json_t *container, const char *index, json_t *probe,
                         json_t *grpc, const char *field, const char *path, const char *excl_in,
                         json_t *probers, json_t *warnings)
{
    const char *name = ij_get_str(container, "name");
    long port = ij_inject_resolve_port(container, json_object_get(grpc, "port"));
    json_t *svc = json_object_get(grpc, "service");
    if (port < 0) {
        ij_warn(warnings,
                "remora: container %.40s: %s port cannot be resolved; probe not rewritten", name,
                field);
        return;
    }
    if (ij_port_listed(excl_in, port))
        return; /* not captured, kubelet reaches the app directly */
    if (svc != NULL && !json_is_null(svc) &&
        (!json_is_string(svc) || json_string_length(svc) > 200)) {
        ij_warn(warnings,
                "remora: container %.40s: %s grpc.service is not a name of at most 200 bytes; "
                "probe not rewritten",
                name, field);
        return;
    }
    json_t *target = json_pack("{s:I}", "port", (json_int_t)port);
    if (json_is_string(svc))
        json_object_set(target, "service", svc);
    json_t *entry = json_pack("{s:o}", "grpc", target);
    json_t *timeout = json_object_get(probe, "timeoutSeconds");
    if (json_is_integer(timeout))
        json_object_set(entry, "timeoutSeconds", timeout);
    json_object_set_new(probers, path, entry);

    json_t *repl = json_deep_copy(probe);
    json_object_del(repl, "grpc");
    json_object_set_new(
        repl, "httpGet",
        json_pack("{s:s, s:i, s:s}", "path", path, "port", IJ_PORT_HEALTH, "scheme", "HTTP"));
    char *ptr = ij_jsonpatch_path("spec", "containers", index, field, NULL);
    ij_jsonpatch_op(patch, "replace", ptr, repl);
    free(ptr);
}

/* Rewrite the HTTP and gRPC probes of spec.containers[idx] to go through the
 * proxy's health port; record each original target in `probers` (path ->
 * probe: {"httpGet": ...} or {"grpc": ...}). */
void ij_rewrite_probes(json_t *patch, json_t *container, size_t idx, const char *excl_in,
                       json_t *probers, json_t *warnings)
{
    const char *name = ij_get_str(container, "name");
    char index[32];
    snprintf(index, sizeof(index), "%zu", idx);
    for (size_t k = 0; k < sizeof(probe_kinds) / sizeof(probe_kinds[0]); k++) {
        json_t *probe = ij_get_obj(container, probe_kinds[k].field);
        json_t *http = ij_get_obj(probe, "httpGet");
        json_t *grpc = ij_get_obj(probe, "grpc");
        if (grpc != NULL && http == NULL && name != NULL && ij_inject_dns_label(name)) {
            char *path = cm_xasprintf("/app-health/%s/%s", name, probe_kinds[k].what);
            rewrite_grpc(patch, container, index, probe, grpc, probe_kinds[k].field, path, excl_in,
                         probers, warnings);
            free(path);
            continue;
        }
        if (http == NULL) {
            /* exec and tcpSocket probes are left alone; tcpSocket, which the
             * capture changes, is said (issue 14) */
            probe_warning(container, probe, probe_kinds[k].field, excl_in, warnings);
            continue;
        }
        const char *host = ij_get_str(http, "host");
        if (host != NULL && *host != '\0')
            continue; /* kubelet probes another host, not through the pod's capture */
        if (name == NULL || !ij_inject_dns_label(name))
            continue;
        long port = ij_inject_resolve_port(container, json_object_get(http, "port"));
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
