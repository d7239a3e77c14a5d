/* What the injection adds to a Pod: remora-init, the remora-proxy
 * container, the volumes and the proxy's bootstrap config. */
#include "injector/inject.h"
#include "injector/inject_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

json_t *ij_init_container(const struct ij_template *t, const char *excl_in, const char *excl_out,
                          const char *excl_ranges)
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

json_t *ij_proxy_container(const struct ij_template *t, bool native, bool policy, bool routes,
                           json_t *probers, long drain_ms)
{
    json_t *env = json_pack("[o, o, o, o]", field_env("POD_NAME", "metadata.name"),
                            field_env("POD_NAMESPACE", "metadata.namespace"),
                            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                            field_env("POD_IP", "status.podIP"));
    /* httpGet targets for proxy/prober.c, grpc ones for proxy/grpc_health.c */
    json_t *http = json_object(), *grpc = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(probers, k, v)
    {
        json_object_set(json_object_get(v, "grpc") != NULL ? grpc : http, k, v);
    }
    static const char *const names[] = {"REMORA_APP_PROBERS", "REMORA_APP_GRPC_PROBERS"};
    json_t *maps[] = {http, grpc};
    for (int i = 0; i < 2; i++) {
        if (json_object_size(maps[i]) > 0) {
            char *s = json_dumps(maps[i], JSON_COMPACT | JSON_SORT_KEYS);
            json_array_append_new(env, json_pack("{s:s, s:s}", "name", names[i], "value", s));
            free(s);
        }
        json_decref(maps[i]);
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

json_t *ij_volumes(const struct ij_inject_params *p, const char *policy, const char *routes)
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
char *ij_bootstrap(const struct ij_inject_params *p, bool policy, bool routes, const char *opaque,
                   const struct ij_inbound_tls *tls, bool discovery)
{
    const struct ij_template *t = p->tpl;
    char admin[32], in[32], out[32];
    snprintf(admin, sizeof(admin), "127.0.0.1:%d", IJ_PORT_ADMIN);
    snprintf(in, sizeof(in), "0.0.0.0:%d", IJ_PORT_INBOUND);
    snprintf(out, sizeof(out), "127.0.0.1:%d", IJ_PORT_OUTBOUND);
    json_t *b = json_pack("{s:{s:s}, s:[{s:s, s:s, s:s, s:s}, {s:s, s:s, s:s, s:s}],"
                          " s:{s:s, s:s, s:s, s:s}}",
                          "admin", "address", admin, "listeners", "name", "inbound", "address", in,
                          "direction", "inbound", "tls", tls->mode, "name", "outbound", "address",
                          out, "direction", "outbound", "tls", "mesh", "identity", "trust_domain",
                          p->trust_domain, "ca_address", t->ca_address, "ca_root",
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
                                    "direction", "inbound", "tls", tls->mode, "optional", 1));
    json_array_append_new(ls,
                          json_pack("{s:s, s:s, s:s, s:s, s:b}", "name", "outbound6", "address",
                                    out6, "direction", "outbound", "tls", "mesh", "optional", 1));
    /* remora.io/permissive-ports, on both inbound listeners (the proxy takes
     * it with tls strict only, which ij_inbound_tls_read ensures) */
    for (size_t i = 0; tls->nports > 0 && i < json_array_size(ls); i++) {
        json_t *l = json_array_get(ls, i);
        if (strcmp(json_string_value(json_object_get(l, "direction")), "inbound") != 0)
            continue;
        json_t *ports = json_array();
        for (size_t k = 0; k < tls->nports; k++)
            json_array_append_new(ports, json_integer(tls->ports[k]));
        json_object_set_new(l, "permissive_ports", ports);
    }
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
    /* the discovery service (issue 18; docs/discovery.md "Proxy side"):
     * server_name and lookup_timeout_ms only when the template sets them */
    if (discovery && t->discovery_address != NULL) {
        json_t *d = json_pack("{s:s}", "address", t->discovery_address);
        if (t->discovery_server_name != NULL)
            json_object_set_new(d, "server_name", json_string(t->discovery_server_name));
        if (t->discovery_lookup_timeout_ms > 0)
            json_object_set_new(d, "lookup_timeout_ms",
                                json_integer((json_int_t)t->discovery_lookup_timeout_ms));
        json_object_set_new(b, "discovery", d);
    }
    char *s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return s;
}
