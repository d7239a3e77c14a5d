#include "injector/inject.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "injector/config.h"
#include "injector/jsonpatch.h"

static const char *const decision_names[IJ_DECIDE__COUNT] = {
    [IJ_DECIDE_INJECT] = "injected",           [IJ_DECIDE_NOT_POD] = "not-pod",
    [IJ_DECIDE_NOT_CREATE] = "not-create",     [IJ_DECIDE_SYSTEM_NS] = "system-namespace",
    [IJ_DECIDE_HOST_NETWORK] = "host-network", [IJ_DECIDE_INJECTED] = "already-injected",
    [IJ_DECIDE_OPTED_OUT] = "opted-out",       [IJ_DECIDE_CONFLICT] = "name-conflict",
};

static const char *const our_containers[] = {IJ_INIT_NAME, IJ_PROXY_NAME, NULL};
static const char *const our_volumes[] = {
    "remora-token",  "remora-ca-root", "remora-keys", "remora-bootstrap",
    "remora-policy", "remora-routes",  NULL};

bool ij_inject_path(const char *path, const char **psa, bool *pod_scope)
{
    static const struct {
        const char *path, *psa;
        bool pod;
    } paths[] = {
        {"/inject", NULL, false},
        {"/inject/psa/baseline", "baseline", false},
        {"/inject/psa/restricted", "restricted", false},
        {"/inject/pod", NULL, true},
        {"/inject/pod/psa/baseline", "baseline", true},
        {"/inject/pod/psa/restricted", "restricted", true},
    };
    for (size_t i = 0; path != NULL && i < sizeof(paths) / sizeof(paths[0]); i++) {
        if (strcmp(path, paths[i].path) == 0) {
            if (psa != NULL)
                *psa = paths[i].psa;
            if (pod_scope != NULL)
                *pod_scope = paths[i].pod;
            return true;
        }
    }
    return false;
}

const char *ij_decision_name(enum ij_decision d)
{
    if ((unsigned)d < IJ_DECIDE__COUNT)
        return decision_names[d];
    return "unknown";
}

/* ---- small readers of untrusted JSON: wrong types read as absent ---------- */

static json_t *get_obj(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_object(v) ? v : NULL;
}

static json_t *get_arr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_array(v) ? v : NULL;
}

static const char *get_str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static const char *annotation(json_t *pod, const char *key)
{
    return get_str(get_obj(get_obj(pod, "metadata"), "annotations"), key);
}

static void warn(json_t *warnings, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(json_t *warnings, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* Quoted values may be cut inside a UTF-8 sequence: keep ASCII. */
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
            *c = '?';
    json_array_append_new(warnings, json_string(buf));
}

/* Is `name` used by an element of spec[list]? */
static bool name_in(json_t *spec, const char *list, const char *name)
{
    size_t i;
    json_t *c;
    json_array_foreach(get_arr(spec, list), i, c)
    {
        const char *n = get_str(c, "name");
        if (n != NULL && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

/* A boolean annotation: 1 true, 0 false, -1 absent or unreadable. */
static int ann_bool(json_t *pod, const char *key)
{
    const char *v = annotation(pod, key);
    if (v == NULL)
        return -1;
    if (strcasecmp(v, "true") == 0 || strcasecmp(v, "enabled") == 0 || strcmp(v, "1") == 0)
        return 1;
    if (strcasecmp(v, "false") == 0 || strcasecmp(v, "disabled") == 0 || strcmp(v, "0") == 0)
        return 0;
    return -1;
}

enum ij_decision ij_inject_decide(json_t *request, json_t *pod, json_t *warnings)
{
    json_t *kind = get_obj(request, "kind");
    json_t *resource = get_obj(request, "resource");
    const char *k = get_str(kind, "kind"), *g = get_str(kind, "group");
    const char *r = get_str(resource, "resource");
    const char *sub = get_str(request, "subResource");
    const char *op = get_str(request, "operation");
    const char *ns = get_str(request, "namespace");

    if (k == NULL || strcmp(k, "Pod") != 0 || (g != NULL && *g != '\0') ||
        (r != NULL && strcmp(r, "pods") != 0) || (sub != NULL && *sub != '\0') ||
        !json_is_object(pod))
        return IJ_DECIDE_NOT_POD;
    if (op == NULL || strcmp(op, "CREATE") != 0)
        return IJ_DECIDE_NOT_CREATE;
    if (ns != NULL && (strcmp(ns, "kube-system") == 0 || strcmp(ns, "remora-system") == 0))
        return IJ_DECIDE_SYSTEM_NS;
    json_t *spec = get_obj(pod, "spec");
    if (json_is_true(json_object_get(spec, "hostNetwork")))
        return IJ_DECIDE_HOST_NETWORK;
    if (json_object_get(get_obj(get_obj(pod, "metadata"), "annotations"), IJ_ANN_STATUS) != NULL)
        return IJ_DECIDE_INJECTED;
    const char *opt = annotation(pod, IJ_ANN_INJECT);
    if (ann_bool(pod, IJ_ANN_INJECT) == 0)
        return IJ_DECIDE_OPTED_OUT;
    /* The label of the same name opts a pod in from an unlabelled namespace
     * (the webhook's objectSelector entry); "false" opts it out anywhere. */
    const char *lab = get_str(get_obj(get_obj(pod, "metadata"), "labels"), IJ_ANN_INJECT);
    if (lab != NULL && strcmp(lab, "false") == 0)
        return IJ_DECIDE_OPTED_OUT;
    if (opt != NULL && ann_bool(pod, IJ_ANN_INJECT) < 0)
        warn(warnings,
             "remora: annotation %s: \"%.40s\" is neither \"true\" nor \"false\"; "
             "injecting",
             IJ_ANN_INJECT, opt);
    for (int i = 0; our_containers[i] != NULL; i++) {
        if (name_in(spec, "containers", our_containers[i]) ||
            name_in(spec, "initContainers", our_containers[i]) ||
            name_in(spec, "ephemeralContainers", our_containers[i])) {
            warn(warnings,
                 "remora: not injected: the pod already has a container named %s "
                 "but no %s annotation",
                 our_containers[i], IJ_ANN_STATUS);
            return IJ_DECIDE_CONFLICT;
        }
    }
    for (int i = 0; our_volumes[i] != NULL; i++) {
        if (name_in(spec, "volumes", our_volumes[i])) {
            warn(warnings, "remora: not injected: the pod already has a volume named %s",
                 our_volumes[i]);
            return IJ_DECIDE_CONFLICT;
        }
    }
    return IJ_DECIDE_INJECT;
}

/* ---- exclusion annotations ------------------------------------------------ */

/* Copy `s` without blanks into a fresh string. */
static char *strip_blanks(const char *s)
{
    char *out = cm_xmalloc(strlen(s) + 1), *o = out;
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            *o++ = *s;
    *o = '\0';
    return out;
}

static bool port_ok(const char *tok, size_t len)
{
    if (len == 0 || len > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)tok[i]))
            return false;
        v = v * 10 + (unsigned)(tok[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

static bool cidr_ok(const char *tok, size_t len)
{
    char buf[64], *slash;
    unsigned char addr[16];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, tok, len);
    buf[len] = '\0';
    slash = strchr(buf, '/');
    if (slash != NULL)
        *slash = '\0';
    int family = strchr(buf, ':') != NULL ? AF_INET6 : AF_INET;
    if (inet_pton(family, buf, addr) != 1)
        return false;
    if (slash == NULL)
        return true;
    const char *bits = slash + 1;
    size_t bl = strlen(bits);
    if (bl == 0 || bl > 3)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < bl; i++) {
        if (!isdigit((unsigned char)bits[i]))
            return false;
        v = v * 10 + (unsigned)(bits[i] - '0');
    }
    return v <= (family == AF_INET ? 32u : 128u);
}

/* Read a comma-separated list annotation (ports or IP ranges). Returns the
 * valid items, normalised (blanks removed, comma-joined; heap, caller frees),
 * or NULL when absent or without a valid item. Each malformed item is left
 * out with a warning naming it, the others are kept: a bad value must never
 * reach remora-proxy's argv as a flag, and must not cost the good ones. */
#define LIST_MAX_ITEMS   256 /* items looked at; more are dropped with one warning */
#define OPAQUE_MAX_PORTS 64  /* what remora-proxy takes in opaque_ports (PX_MAX_OPAQUE_PORTS) */
static char *list_items(json_t *pod, const char *key, bool (*ok)(const char *, size_t),
                        size_t max_valid, json_t *warnings)
{
    const char *raw = annotation(pod, key);
    if (raw == NULL)
        return NULL;
    char *s = strip_blanks(raw);
    char *out = cm_xmalloc(strlen(s) + 1);
    size_t olen = 0, n = 0, bad = 0, nvalid = 0;
    out[0] = '\0';
    for (const char *t = s; *t != '\0';) {
        const char *comma = strchr(t, ',');
        size_t len = comma != NULL ? (size_t)(comma - t) : strlen(t);
        if (++n > LIST_MAX_ITEMS) {
            warn(warnings, "remora: annotation %s: more than %d items; the rest is ignored", key,
                 LIST_MAX_ITEMS);
            break;
        }
        if (ok(t, len) && nvalid == max_valid) {
            warn(warnings,
                 "remora: annotation %s: more than %zu valid items; \"%.*s\" and the rest are "
                 "ignored",
                 key, max_valid, len > 40 ? 40 : (int)len, t);
            break;
        }
        if (ok(t, len)) {
            nvalid++;
            if (olen > 0)
                out[olen++] = ',';
            memcpy(out + olen, t, len);
            olen += len;
            out[olen] = '\0';
        } else if (bad++ < 4) { /* a few named; the response's warnings stay short */
            char item[48];
            size_t il = len < sizeof(item) - 1 ? len : sizeof(item) - 1;
            memcpy(item, t, il);
            item[il] = '\0';
            warn(warnings,
                 "remora: annotation %s: item \"%s\"%s is not %s; ignored, the other items "
                 "are kept",
                 key, item, len > il ? "..." : "",
                 ok == port_ok ? "a port (1-65535)" : "an IP address or CIDR range");
        }
        if (comma == NULL)
            break;
        t = comma + 1;
    }
    free(s);
    if (olen == 0) {
        free(out);
        return NULL;
    }
    return out;
}

static char *exclusion(json_t *pod, const char *key, bool (*ok)(const char *, size_t),
                       json_t *warnings)
{
    return list_items(pod, key, ok, LIST_MAX_ITEMS, warnings);
}

/* Is port listed in a normalised port list? */
static bool port_listed(const char *list, long port)
{
    for (const char *t = list; t != NULL && *t;) {
        if (strtol(t, NULL, 10) == port)
            return true;
        t = strchr(t, ',');
        if (t != NULL)
            t++;
    }
    return false;
}

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
    if (port_ok(name, strlen(name)))
        return strtol(name, NULL, 10);
    size_t i;
    json_t *p;
    json_array_foreach(get_arr(container, "ports"), i, p)
    {
        const char *n = get_str(p, "name");
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
                          json_t *warnings)
{
    const char *name = get_str(container, "name");
    json_t *grpc = get_obj(probe, "grpc"), *tcp = get_obj(probe, "tcpSocket");
    if (name == NULL || (grpc == NULL && tcp == NULL))
        return;
    if (tcp != NULL) {
        const char *host = get_str(tcp, "host");
        if (host != NULL && *host != '\0')
            return; /* another host: not through the pod's capture */
    }
    long port = resolve_port(container, json_object_get(grpc != NULL ? grpc : tcp, "port"));
    if (port > 0 && port_listed(excl_in, port))
        return; /* not captured: kubelet reaches the app */
    char where[32] = "";
    if (port > 0)
        snprintf(where, sizeof(where), " on port %ld", port);
    if (grpc != NULL)
        warn(warnings,
             "remora: container %.40s: %s is a gRPC probe%s, which the proxy cannot rewrite: "
             "with strict mTLS it fails%s; exclude its port (%s) or use an httpGet probe",
             name, field, where,
             strcmp(field, "readinessProbe") == 0 ? " and the pod never becomes Ready"
                                                  : " and the container restarts in a loop",
             IJ_ANN_EXCLUDE_IN);
    else
        warn(warnings,
             "remora: container %.40s: %s is a tcpSocket probe%s: the proxy accepts the "
             "connection, so it always succeeds whatever the app does; use an httpGet or exec "
             "probe, or exclude its port (%s)",
             name, field, where, IJ_ANN_EXCLUDE_IN);
}

/* Rewrite the HTTP probes of spec.containers[idx] to go through the proxy's
 * health port; record each original target in `probers` (path -> probe). */
static void rewrite_probes(json_t *patch, json_t *container, size_t idx, const char *excl_in,
                           json_t *probers, json_t *warnings)
{
    const char *name = get_str(container, "name");
    char index[32];
    snprintf(index, sizeof(index), "%zu", idx);
    for (size_t k = 0; k < sizeof(probe_kinds) / sizeof(probe_kinds[0]); k++) {
        json_t *probe = get_obj(container, probe_kinds[k].field);
        json_t *http = get_obj(probe, "httpGet");
        if (http == NULL) {
            /* exec, tcpSocket and grpc probes are left alone; the two that
             * the capture changes are said (issue 14) */
            probe_warning(container, probe, probe_kinds[k].field, excl_in, warnings);
            continue;
        }
        const char *host = get_str(http, "host");
        if (host != NULL && *host != '\0')
            continue; /* kubelet probes another host, not through the pod's capture */
        if (name == NULL || !dns_label(name))
            continue;
        long port = resolve_port(container, json_object_get(http, "port"));
        if (port < 0) {
            warn(warnings, "remora: container %s: %s port cannot be resolved; probe not rewritten",
                 name, probe_kinds[k].field);
            continue;
        }
        if (port_listed(excl_in, port))
            continue; /* not captured, kubelet reaches the app directly */

        char *path = cm_xasprintf("/app-health/%s/%s", name, probe_kinds[k].what);
        json_t *orig = json_deep_copy(http);
        json_object_set_new(orig, "port", json_integer(port));
        if (get_str(orig, "scheme") == NULL)
            json_object_set_new(orig, "scheme", json_string("HTTP"));
        if (get_str(orig, "path") == NULL)
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

/* ---- what is added -------------------------------------------------------- */

static json_t *field_env(const char *name, const char *path)
{
    return json_pack("{s:s, s:{s:{s:s, s:s}}}", "name", name, "valueFrom", "fieldRef", "apiVersion",
                     "v1", "fieldPath", path);
}

static json_t *health_probe(int period, int failures)
{
    return json_pack("{s:{s:s, s:i, s:s}, s:i, s:i, s:i}", "httpGet", "path", "/healthz/ready",
                     "port", IJ_PORT_HEALTH, "scheme", "HTTP", "periodSeconds", period,
                     "timeoutSeconds", 1, "failureThreshold", failures);
}

static json_t *init_container(const struct ij_template *t, const char *excl_in,
                              const char *excl_out, const char *excl_ranges)
{
    char uid[16], in[16], out[16];
    snprintf(uid, sizeof(uid), "%d", IJ_PROXY_UID);
    snprintf(in, sizeof(in), "%d", IJ_PORT_INBOUND);
    snprintf(out, sizeof(out), "%d", IJ_PORT_OUTBOUND);
    json_t *args = json_pack("[s, s, s, s, s, s, s]", "iptables", "--proxy-uid", uid,
                             "--inbound-port", in, "--outbound-port", out);
    if (excl_in != NULL) {
        json_array_append_new(args, json_string("--exclude-inbound-ports"));
        json_array_append_new(args, json_string(excl_in));
    }
    if (excl_out != NULL) {
        json_array_append_new(args, json_string("--exclude-outbound-ports"));
        json_array_append_new(args, json_string(excl_out));
    }
    if (excl_ranges != NULL) {
        json_array_append_new(args, json_string("--exclude-outbound-ip-ranges"));
        json_array_append_new(args, json_string(excl_ranges));
    }
    /* Root with NET_ADMIN and NET_RAW only. The root filesystem stays
     * writable: iptables-restore takes its lock in /run/xtables.lock. */
    json_t *sc = json_pack("{s:{s:[s, s], s:[s]}, s:b, s:b, s:b, s:b, s:i, s:i}", "capabilities",
                           "add", "NET_ADMIN", "NET_RAW", "drop", "ALL", "privileged", 0,
                           "allowPrivilegeEscalation", 0, "readOnlyRootFilesystem", 0,
                           "runAsNonRoot", 0, "runAsUser", 0, "runAsGroup", 0);
    return json_pack("{s:s, s:s, s:s, s:[s], s:o, s:o, s:o, s:s}", "name", IJ_INIT_NAME, "image",
                     t->image, "imagePullPolicy", t->image_pull_policy, "command", "remora-proxy",
                     "args", args, "resources", json_deep_copy(t->init_resources),
                     "securityContext", sc, "terminationMessagePolicy", "FallbackToLogsOnError");
}

static json_t *proxy_container(const struct ij_template *t, bool native, bool policy, bool routes,
                               json_t *probers, long drain_ms)
{
    json_t *env = json_pack("[o, o, o, o]", field_env("POD_NAME", "metadata.name"),
                            field_env("POD_NAMESPACE", "metadata.namespace"),
                            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                            field_env("POD_IP", "status.podIP"));
    if (json_object_size(probers) > 0) {
        char *s = json_dumps(probers, JSON_COMPACT | JSON_SORT_KEYS);
        json_array_append_new(env,
                              json_pack("{s:s, s:s}", "name", "REMORA_APP_PROBERS", "value", s));
        free(s);
    }
    json_t *extra = json_deep_copy(t->env);
    json_array_extend(env, extra);
    json_decref(extra);

    json_t *mounts = json_pack("[{s:s, s:s, s:b}, {s:s, s:s, s:b}, {s:s, s:s}, {s:s, s:s, s:b}]",
                               "name", "remora-token", "mountPath", IJ_DIR_TOKEN, "readOnly", 1,
                               "name", "remora-ca-root", "mountPath", IJ_DIR_CA, "readOnly", 1,
                               "name", "remora-keys", "mountPath", IJ_DIR_KEYS, "name",
                               "remora-bootstrap", "mountPath", IJ_DIR_BOOTSTRAP, "readOnly", 1);
    if (policy)
        json_array_append_new(mounts, json_pack("{s:s, s:s, s:b}", "name", "remora-policy",
                                                "mountPath", IJ_DIR_POLICY, "readOnly", 1));
    if (routes)
        json_array_append_new(mounts, json_pack("{s:s, s:s, s:b}", "name", "remora-routes",
                                                "mountPath", IJ_DIR_ROUTES, "readOnly", 1));

    json_t *sc =
        json_pack("{s:{s:[s]}, s:b, s:b, s:b, s:b, s:i, s:i}", "capabilities", "drop", "ALL",
                  "privileged", 0, "allowPrivilegeEscalation", 0, "readOnlyRootFilesystem", 1,
                  "runAsNonRoot", 1, "runAsUser", IJ_PROXY_UID, "runAsGroup", IJ_PROXY_UID);
    json_t *ports = json_pack("[{s:s, s:i, s:s}, {s:s, s:i, s:s}]", "name", "remora-inbound",
                              "containerPort", IJ_PORT_INBOUND, "protocol", "TCP", "name",
                              "remora-health", "containerPort", IJ_PORT_HEALTH, "protocol", "TCP");

    json_t *c = json_pack("{s:s, s:s, s:s, s:[s], s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:s}", "name",
                          IJ_PROXY_NAME, "image", t->image, "imagePullPolicy", t->image_pull_policy,
                          "command", "remora-proxy", "args", json_deep_copy(t->args), "ports",
                          ports, "env", env, "resources", json_deep_copy(t->resources),
                          "securityContext", sc, "volumeMounts", mounts, "readinessProbe",
                          health_probe(2, 30), "terminationMessagePolicy", "FallbackToLogsOnError");
    if (native) {
        /* kubelet starts the next init container, and at last the app, only
         * once a native sidecar's startup probe passed. */
        json_object_set_new(c, "restartPolicy", json_string("Always"));
        json_object_set_new(c, "startupProbe", health_probe(1, 600));
    } else {
        json_t *lc = json_object();
        if (t->hold_application)
            /* kubelet runs containers' postStart hooks in order and waits for
             * each: the app after us starts once the proxy answers ready. */
            json_object_set_new(
                lc, "postStart",
                json_pack("{s:{s:o}}", "exec", "command", json_deep_copy(t->wait_command)));
        if (drain_ms > 0) {
            /* Classic sidecars get SIGTERM with the app. kubelet sends it to
             * the proxy only once this returns: the proxy keeps serving until
             * no request of the app is in flight, or drain_ms (issue 14). */
            char ms[24];
            snprintf(ms, sizeof(ms), "%ld", drain_ms);
            json_object_set_new(lc, "preStop",
                                json_pack("{s:{s:[s, s, s, s, s]}}", "exec", "command",
                                          "remora-proxy", "wait", "--drain", "--timeout-ms", ms));
        }
        if (json_object_size(lc) > 0)
            json_object_set_new(c, "lifecycle", lc);
        else
            json_decref(lc);
    }
    return c;
}

static json_t *volumes(const struct ij_inject_params *p, const char *policy, const char *routes)
{
    const struct ij_template *t = p->tpl;
    /* 0444: the token is read by UID 1337 whatever the pod's fsGroup. */
    json_t *v =
        json_pack("[{s:s, s:{s:[{s:{s:s, s:I, s:s}}], s:i}},"
                  " {s:s, s:{s:s, s:[{s:s, s:s}]}},"
                  " {s:s, s:{s:s, s:s}},"
                  " {s:s, s:{s:[{s:s, s:{s:s, s:s}}]}}]",
                  "name", "remora-token", "projected", "sources", "serviceAccountToken", "audience",
                  p->ca_audience, "expirationSeconds", (json_int_t)t->token_expiration_seconds,
                  "path", "token", "defaultMode", 0444, "name", "remora-ca-root", "configMap",
                  "name", t->ca_root_configmap, "items", "key", "root.pem", "path", "root.pem",
                  "name", "remora-keys", "emptyDir", "medium", "Memory", "sizeLimit", "1Mi", "name",
                  "remora-bootstrap", "downwardAPI", "items", "path", "bootstrap.json", "fieldRef",
                  "apiVersion", "v1", "fieldPath", "metadata.annotations['" IJ_ANN_BOOTSTRAP "']");
    if (policy != NULL)
        json_array_append_new(v, json_pack("{s:s, s:{s:s, s:[{s:s, s:s}]}}", "name",
                                           "remora-policy", "configMap", "name", policy, "items",
                                           "key", "policy.json", "path", "policy.json"));
    if (routes != NULL)
        json_array_append_new(v, json_pack("{s:s, s:{s:s, s:[{s:s, s:s}]}}", "name",
                                           "remora-routes", "configMap", "name", routes, "items",
                                           "key", "routes.json", "path", "routes.json"));
    return v;
}

/* The proxy's bootstrap config (docs/contract.md "remora-proxy"), as the file the
 * downward-API volume shows it at IJ_DIR_BOOTSTRAP/bootstrap.json. */
static char *bootstrap(const struct ij_inject_params *p, bool policy, bool routes,
                       const char *opaque)
{
    const struct ij_template *t = p->tpl;
    char admin[32], in[32], out[32];
    snprintf(admin, sizeof(admin), "127.0.0.1:%d", IJ_PORT_ADMIN);
    snprintf(in, sizeof(in), "0.0.0.0:%d", IJ_PORT_INBOUND);
    snprintf(out, sizeof(out), "127.0.0.1:%d", IJ_PORT_OUTBOUND);
    json_t *b = json_pack("{s:{s:s}, s:[{s:s, s:s, s:s, s:s}, {s:s, s:s, s:s, s:s}],"
                          " s:{s:s, s:s, s:s, s:s}}",
                          "admin", "address", admin, "listeners", "name", "inbound", "address", in,
                          "direction", "inbound", "tls", t->inbound_tls, "name", "outbound",
                          "address", out, "direction", "outbound", "tls", "mesh", "identity",
                          "trust_domain", p->trust_domain, "ca_address", t->ca_address, "ca_root",
                          IJ_DIR_CA "/root.pem", "token_file", IJ_DIR_TOKEN "/token");
    /* IPv6 twins of the capture listeners: remora-init installs ip6tables rules
     * when the pod has a global IPv6 address, and those redirect to [::1]:15001
     * and [::]:15006. A pod without IPv6 skips them (optional). */
    char in6[32], out6[32];
    snprintf(in6, sizeof(in6), "[::]:%d", IJ_PORT_INBOUND);
    snprintf(out6, sizeof(out6), "[::1]:%d", IJ_PORT_OUTBOUND);
    json_t *ls = json_object_get(b, "listeners");
    json_array_append_new(ls,
                          json_pack("{s:s, s:s, s:s, s:s, s:b}", "name", "inbound6", "address", in6,
                                    "direction", "inbound", "tls", t->inbound_tls, "optional", 1));
    json_array_append_new(ls,
                          json_pack("{s:s, s:s, s:s, s:s, s:b}", "name", "outbound6", "address",
                                    out6, "direction", "outbound", "tls", "mesh", "optional", 1));
    if (policy)
        json_object_set_new(b, "policy_file", json_string(IJ_DIR_POLICY "/policy.json"));
    if (routes)
        json_object_set_new(b, "routes_file", json_string(IJ_DIR_ROUTES "/routes.json"));
    /* the health port the injected probes and postStart hook use */
    char health[32], health6[32];
    snprintf(health, sizeof(health), "0.0.0.0:%d", IJ_PORT_HEALTH);
    snprintf(health6, sizeof(health6), "[::]:%d",
             IJ_PORT_HEALTH); /* kubelet probing an IPv6 pod IP */
    json_object_set_new(b, "health",
                        json_pack("{s:s, s:s}", "address", health, "address6", health6));
    /* the annotation's ports, or the defaults when it is absent; none when it
     * holds no valid port ("" opts out) */
    if (opaque != NULL && *opaque != '\0') {
        json_t *ports = json_array();
        for (const char *o = opaque; o != NULL && *o;) {
            json_array_append_new(ports, json_integer(strtol(o, NULL, 10)));
            o = strchr(o, ',');
            if (o != NULL)
                o++;
        }
        json_object_set_new(b, "opaque_ports", ports);
    }
    char *s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return s;
}

/* A Go-style duration ("5s", "1m30s", "500ms", "0"): milliseconds, or -1. */
static long duration_ms(const char *s)
{
    static const struct {
        const char *unit;
        long ms;
    } units[] = {{"ms", 1}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    if (strcmp(s, "0") == 0)
        return 0;
    if (*s == '\0' || strlen(s) > 32)
        return -1;
    long total = 0;
    while (*s) {
        if (!isdigit((unsigned char)*s))
            return -1;
        long v = 0;
        for (; isdigit((unsigned char)*s); s++) {
            v = v * 10 + (*s - '0');
            if (v > IJ_DRAIN_MAX_MS)
                return -1;
        }
        size_t u = 0;
        for (; u < sizeof(units) / sizeof(units[0]); u++)
            if (strncmp(s, units[u].unit, strlen(units[u].unit)) == 0)
                break;
        if (u == sizeof(units) / sizeof(units[0]))
            return -1;
        s += strlen(units[u].unit);
        total += v * units[u].ms;
        if (total > IJ_DRAIN_MAX_MS)
            return -1;
    }
    return total;
}

/* How long the classic proxy's preStop waits: the annotation (default 5 s),
 * kept under the pod's terminationGracePeriodSeconds (default 30) so that
 * kubelet's SIGTERM, and the proxy's own drain after it, still fit. 0: no
 * preStop. */
static long drain_budget(json_t *pod, json_t *warnings)
{
    const char *v = annotation(pod, IJ_ANN_DRAIN_DURATION);
    long ms = IJ_DRAIN_DEFAULT_MS;
    if (v != NULL) {
        ms = duration_ms(v);
        if (ms < 0) {
            warn(warnings,
                 "remora: annotation %s: \"%.40s\" is not a duration such as \"5s\" or "
                 "\"1m30s\" (at most 1h); using %d s",
                 IJ_ANN_DRAIN_DURATION, v, IJ_DRAIN_DEFAULT_MS / 1000);
            ms = IJ_DRAIN_DEFAULT_MS;
            v = NULL;
        }
    }
    json_t *g = json_object_get(get_obj(pod, "spec"), "terminationGracePeriodSeconds");
    json_int_t grace = json_is_integer(g) ? json_integer_value(g) : 30;
    long cap = grace > 1 ? (long)(grace - 1) * 1000 : 0;
    if (grace > 3600)
        cap = IJ_DRAIN_MAX_MS;
    if (ms > cap) {
        if (v != NULL)
            warn(warnings,
                 "remora: annotation %s: %.40s does not fit in terminationGracePeriodSeconds "
                 "%lld: the proxy waits at most %ld ms before its own SIGTERM",
                 IJ_ANN_DRAIN_DURATION, v, (long long)grace, cap);
        ms = cap;
    }
    return ms;
}

/* DNS-1123 subdomain: a ConfigMap name. */
static bool dns_subdomain(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
        return false;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '-' || *s == '.'))
            return false;
    return true;
}

/* Add each (key, value) of `add` under /metadata/annotations: one op per key
 * when the map exists, else the map whole. */
static void add_annotations(json_t *patch, json_t *pod, json_t *add)
{
    json_t *meta = json_object_get(pod, "metadata");
    json_t *ann = json_object_get(meta, "annotations");
    const char *k;
    json_t *v;
    if (!json_is_object(meta)) {
        ij_jsonpatch_add(patch, json_pack("{s:O}", "annotations", add), "metadata", NULL);
    } else if (!json_is_object(ann)) {
        ij_jsonpatch_add(patch, json_incref(add), "metadata", "annotations", NULL);
    } else {
        json_object_foreach(add, k, v)
        {
            ij_jsonpatch_add(patch, json_incref(v), "metadata", "annotations", k, NULL);
        }
    }
}

json_t *ij_inject_patch(const struct ij_inject_params *p, json_t *request, json_t *pod,
                        json_t *warnings)
{
    (void)request;
    const struct ij_template *t = p->tpl;
    json_t *patch = json_array();
    json_t *spec = json_object_get(pod, "spec");
    json_t *containers = json_object_get(spec, "containers");
    json_t *inits = get_arr(spec, "initContainers");
    json_t *probers = json_object();
    json_t *c;
    size_t i;

    int nat = ann_bool(pod, IJ_ANN_NATIVE);
    bool native = nat < 0 ? p->native_default : nat == 1;
    const char *natv = annotation(pod, IJ_ANN_NATIVE);
    if (natv != NULL && nat < 0)
        warn(warnings,
             "remora: annotation %s: \"%.40s\" is neither \"true\" nor \"false\"; "
             "using the default",
             IJ_ANN_NATIVE, natv);
    char *excl_in = exclusion(pod, IJ_ANN_EXCLUDE_IN, port_ok, warnings);
    char *excl_out = exclusion(pod, IJ_ANN_EXCLUDE_OUT, port_ok, warnings);
    char *excl_ranges = exclusion(pod, IJ_ANN_EXCLUDE_RANGES, cidr_ok, warnings);
    /* more than the proxy takes would make a bootstrap it refuses: the pod
     * would never start; the first OPAQUE_MAX_PORTS are kept, with a warning */
    char *opaque = list_items(pod, IJ_ANN_OPAQUE_PORTS, port_ok, OPAQUE_MAX_PORTS, warnings);
    /* Without the annotation, the well-known server-first (or never
     * HTTP) ports Linkerd also treats as opaque: the proxy closes a silent
     * inbound connection on any other port at header_timeout_ms, which would
     * break a MySQL or SMTP server nobody annotated. "" opts out. */
    if (annotation(pod, IJ_ANN_OPAQUE_PORTS) == NULL)
        opaque = cm_xstrdup(IJ_DEFAULT_OPAQUE_PORTS);
    const char *policy = annotation(pod, IJ_ANN_POLICY);
    if (policy != NULL && !dns_subdomain(policy))
        /* Mounted anyway: the API server then refuses the pod, which is
         * better than a pod that runs without the policy its owner asked for. */
        warn(warnings, "remora: annotation %s: \"%.60s\" is not a valid ConfigMap name",
             IJ_ANN_POLICY, policy);
    const char *routes = annotation(pod, IJ_ANN_ROUTES);
    if (routes != NULL && !dns_subdomain(routes)) /* mounted anyway, as the policy */
        warn(warnings, "remora: annotation %s: \"%.60s\" is not a valid ConfigMap name",
             IJ_ANN_ROUTES, routes);

    /* 1. Probe rewrites address containers by index: emit them while the
     * indices are still those of the original pod. */
    json_array_foreach(containers, i, c)
    {
        rewrite_probes(patch, c, i, excl_in, probers, warnings);
    }

    /* 2. Annotations: the bootstrap, the status, and in classic mode the
     * default container for kubectl (the proxy goes first). */
    json_t *status_probes = json_array();
    const char *path;
    json_t *v;
    json_object_foreach(probers, path, v)
    {
        json_array_append_new(status_probes, json_string(path));
    }
    json_t *added_ann = json_array();
    json_t *ann = json_object();
    char *boot = bootstrap(p, policy != NULL, routes != NULL, opaque);
    json_object_set_new(ann, IJ_ANN_BOOTSTRAP, json_string(boot));
    json_array_append_new(added_ann, json_string(IJ_ANN_BOOTSTRAP));
    free(boot);
    bool proxy_first = !native && t->hold_application;
    if (proxy_first && annotation(pod, "kubectl.kubernetes.io/default-container") == NULL) {
        const char *first = get_str(json_array_get(containers, 0), "name");
        if (first != NULL) {
            json_object_set_new(ann, "kubectl.kubernetes.io/default-container", json_string(first));
            json_array_append_new(added_ann,
                                  json_string("kubectl.kubernetes.io/default-container"));
        }
    }
    json_t *status = json_pack(
        "{s:s, s:s, s:o, s:o, s:o, s:o, s:o}", "version", IJ_VERSION, "mode",
        native ? "native" : "classic", "initContainers",
        native ? json_pack("[s, s]", IJ_INIT_NAME, IJ_PROXY_NAME) : json_pack("[s]", IJ_INIT_NAME),
        "containers", native ? json_array() : json_pack("[s]", IJ_PROXY_NAME), "volumes",
        json_pack("[s, s, s, s]", "remora-token", "remora-ca-root", "remora-keys",
                  "remora-bootstrap"),
        "annotations", added_ann, "probes", status_probes);
    if (policy != NULL)
        json_array_append_new(json_object_get(status, "volumes"), json_string("remora-policy"));
    if (routes != NULL)
        json_array_append_new(json_object_get(status, "volumes"), json_string("remora-routes"));
    char *st = json_dumps(status, JSON_COMPACT);
    json_object_set_new(ann, IJ_ANN_STATUS, json_string(st));
    free(st);
    json_decref(status);
    add_annotations(patch, pod, ann);
    json_decref(ann);

    /* 3. remora-init first among the init containers; the native proxy right
     * after it, so later init containers already have the mesh. */
    json_t *init = init_container(t, excl_in, excl_out, excl_ranges);
    long drain_ms = native ? 0 : drain_budget(pod, warnings); /* native: kubelet orders the stop */
    json_t *proxy = proxy_container(t, native, policy != NULL, routes != NULL, probers, drain_ms);
    if (inits == NULL) {
        json_t *a = json_pack("[o]", init);
        if (native)
            json_array_append_new(a, proxy);
        ij_jsonpatch_add(patch, a, "spec", "initContainers", NULL);
    } else {
        ij_jsonpatch_add(patch, init, "spec", "initContainers", "0", NULL);
        if (native)
            ij_jsonpatch_add(patch, proxy, "spec", "initContainers", "1", NULL);
    }
    /* 4. Classic: the proxy first among containers when the app is held
     * until it is ready, else last. */
    if (!native)
        ij_jsonpatch_add(patch, proxy, "spec", "containers", proxy_first ? "0" : "-", NULL);

    /* 5. Volumes: appended, or the list whole. */
    json_t *vols = volumes(p, policy, routes);
    if (get_arr(spec, "volumes") == NULL) {
        ij_jsonpatch_add(patch, vols, "spec", "volumes", NULL);
    } else {
        json_array_foreach(vols, i, v)
        {
            ij_jsonpatch_add(patch, json_incref(v), "spec", "volumes", "-", NULL);
        }
        json_decref(vols);
    }

    /* Things Kubernetes cannot fix for us, said where the user sees them. */
    const char *rp = get_str(spec, "restartPolicy");
    if (!native && rp != NULL && strcmp(rp, "Always") != 0)
        warn(warnings,
             "remora: classic sidecar in a pod with restartPolicy %s: the pod completes "
             "only when remora-proxy exits; use %s: \"true\"",
             rp, IJ_ANN_NATIVE);
    if (!native && json_array_size(inits) > 0)
        warn(warnings,
             "remora: classic sidecar: init containers run before the proxy and have "
             "no network through the mesh; use %s: \"true\"",
             IJ_ANN_NATIVE);
    if (name_in(spec, "containers", "istio-proxy") || name_in(spec, "containers", "linkerd-proxy"))
        warn(warnings, "remora: the pod also has another mesh's proxy; their traffic capture "
                       "will conflict");

    /* Pod Security (issue 14): remora-init adds NET_ADMIN and NET_RAW, which
     * baseline and restricted refuse (restricted also refuses root). The
     * webhook entry that called us knows the namespace's enforce label
     * (manifests/injector/webhook.yaml, ij_inject_path); the pod is injected
     * anyway and the
     * API server refuses it, with this saying why. */
    if (p->psa_enforce != NULL)
        warn(warnings,
             "remora: namespace enforces Pod Security \"%s\" (pod-security.kubernetes.io/"
             "enforce): remora-init needs NET_ADMIN and NET_RAW%s, which it forbids, so this pod "
             "will be refused; a meshed namespace needs enforce=privileged (docs/install.md)",
             p->psa_enforce, strcmp(p->psa_enforce, "restricted") == 0 ? " and root" : "");

    free(excl_in);
    free(excl_out);
    free(excl_ranges);
    free(opaque);
    json_decref(probers);
    return patch;
}
