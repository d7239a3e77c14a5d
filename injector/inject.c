/* The injection decision and the JSON Patch (injector/inject.h); the
 * annotations are read in inject_ann.c, probes rewritten in inject_probes.c,
 * the added containers, volumes and bootstrap built in inject_build.c. */
#include "injector/inject.h"
#include "injector/inject_int.h"

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
    [IJ_DECIDE_REFUSED] = "bad-annotation",
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

enum ij_decision ij_inject_decide(json_t *request, json_t *pod, json_t *warnings)
{
    json_t *kind = ij_get_obj(request, "kind");
    json_t *resource = ij_get_obj(request, "resource");
    const char *k = ij_get_str(kind, "kind"), *g = ij_get_str(kind, "group");
    const char *r = ij_get_str(resource, "resource");
    const char *sub = ij_get_str(request, "subResource");
    const char *op = ij_get_str(request, "operation");
    const char *ns = ij_get_str(request, "namespace");

    if (k == NULL || strcmp(k, "Pod") != 0 || (g != NULL && *g != '\0') ||
        (r != NULL && strcmp(r, "pods") != 0) || (sub != NULL && *sub != '\0') ||
        !json_is_object(pod))
        return IJ_DECIDE_NOT_POD;
    if (op == NULL || strcmp(op, "CREATE") != 0)
        return IJ_DECIDE_NOT_CREATE;
    if (ns != NULL && (strcmp(ns, "kube-system") == 0 || strcmp(ns, "remora-system") == 0))
        return IJ_DECIDE_SYSTEM_NS;
    json_t *spec = ij_get_obj(pod, "spec");
    if (json_is_true(json_object_get(spec, "hostNetwork")))
        return IJ_DECIDE_HOST_NETWORK;
    if (json_object_get(ij_get_obj(ij_get_obj(pod, "metadata"), "annotations"), IJ_ANN_STATUS) !=
        NULL)
        return IJ_DECIDE_INJECTED;
    const char *opt = ij_annotation(pod, IJ_ANN_INJECT);
    if (ij_ann_bool(pod, IJ_ANN_INJECT) == 0)
        return IJ_DECIDE_OPTED_OUT;
    /* The label of the same name opts a pod in from an unlabelled namespace
     * (the webhook's objectSelector entry); "false" opts it out anywhere. */
    const char *lab = ij_get_str(ij_get_obj(ij_get_obj(pod, "metadata"), "labels"), IJ_ANN_INJECT);
    if (lab != NULL && strcmp(lab, "false") == 0)
        return IJ_DECIDE_OPTED_OUT;
    if (opt != NULL && ij_ann_bool(pod, IJ_ANN_INJECT) < 0)
        ij_warn(warnings,
                "remora: annotation %s: \"%.40s\" is neither \"true\" nor \"false\"; "
                "injecting",
                IJ_ANN_INJECT, opt);
    for (int i = 0; our_containers[i] != NULL; i++) {
        if (ij_name_in(spec, "containers", our_containers[i]) ||
            ij_name_in(spec, "initContainers", our_containers[i]) ||
            ij_name_in(spec, "ephemeralContainers", our_containers[i])) {
            ij_warn(warnings,
                    "remora: not injected: the pod already has a container named %s "
                    "but no %s annotation",
                    our_containers[i], IJ_ANN_STATUS);
            return IJ_DECIDE_CONFLICT;
        }
    }
    for (int i = 0; our_volumes[i] != NULL; i++) {
        if (ij_name_in(spec, "volumes", our_volumes[i])) {
            ij_warn(warnings, "remora: not injected: the pod already has a volume named %s",
                    our_volumes[i]);
            return IJ_DECIDE_CONFLICT;
        }
    }
    return IJ_DECIDE_INJECT;
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

char *ij_inject_check(const struct ij_inject_params *p, json_t *pod)
{
    struct ij_inbound_tls tls;
    char *err = NULL;
    json_t *w = json_array();
    int rc = ij_inbound_tls_read(pod, p->tpl->inbound_tls, &tls, &err, w);
    json_decref(w);
    return rc == 0 ? NULL : err;
}

json_t *ij_inject_patch(const struct ij_inject_params *p, json_t *request, json_t *pod,
                        json_t *warnings)
{
    (void)request;
    const struct ij_template *t = p->tpl;
    json_t *patch = json_array();
    json_t *spec = json_object_get(pod, "spec");
    json_t *containers = json_object_get(spec, "containers");
    json_t *inits = ij_get_arr(spec, "initContainers");
    json_t *probers = json_object();
    json_t *c;
    size_t i;

    int nat = ij_ann_bool(pod, IJ_ANN_NATIVE);
    bool native = nat < 0 ? p->native_default : nat == 1;
    const char *natv = ij_annotation(pod, IJ_ANN_NATIVE);
    if (natv != NULL && nat < 0)
        ij_warn(warnings,
                "remora: annotation %s: \"%.40s\" is neither \"true\" nor \"false\"; "
                "using the default",
                IJ_ANN_NATIVE, natv);
    char *excl_in = ij_exclusion(pod, IJ_ANN_EXCLUDE_IN, ij_port_ok, warnings);
    char *excl_out = ij_exclusion(pod, IJ_ANN_EXCLUDE_OUT, ij_port_ok, warnings);
    char *excl_ranges = ij_exclusion(pod, IJ_ANN_EXCLUDE_RANGES, ij_cidr_ok, warnings);
    /* more than the proxy takes would make a bootstrap it refuses: the pod
     * would never start; the first OPAQUE_MAX_PORTS are kept, with a warning */
    char *opaque = ij_list_items(pod, IJ_ANN_OPAQUE_PORTS, ij_port_ok, OPAQUE_MAX_PORTS, warnings);
    /* Without the annotation, the well-known server-first (or never
     * HTTP) ports Linkerd also treats as opaque: the proxy closes a silent
     * inbound connection on any other port at header_timeout_ms, which would
     * break a MySQL or SMTP server nobody annotated. "" opts out. */
    if (ij_annotation(pod, IJ_ANN_OPAQUE_PORTS) == NULL)
        opaque = cm_xstrdup(IJ_DEFAULT_OPAQUE_PORTS);
    const char *policy = ij_annotation(pod, IJ_ANN_POLICY);
    if (policy != NULL && !ij_dns_subdomain(policy))
        /* Mounted anyway: the API server then refuses the pod, which is
         * better than a pod that runs without the policy its owner asked for. */
        ij_warn(warnings, "remora: annotation %s: \"%.60s\" is not a valid ConfigMap name",
                IJ_ANN_POLICY, policy);
    const char *routes = ij_annotation(pod, IJ_ANN_ROUTES);
    if (routes != NULL && !ij_dns_subdomain(routes)) /* mounted anyway, as the policy */
        ij_warn(warnings, "remora: annotation %s: \"%.60s\" is not a valid ConfigMap name",
                IJ_ANN_ROUTES, routes);

    /* the inbound mTLS mode; a bad value was refused by ij_inject_check, and
     * reads here as strict without ports (callers that skip the check) */
    struct ij_inbound_tls tls;
    char *tls_err = NULL;
    if (ij_inbound_tls_read(pod, t->inbound_tls, &tls, &tls_err, warnings) != 0) {
        ij_warn(warnings, "%s; strict on every port", tls_err);
        free(tls_err);
    }

    /* 1. Probe rewrites address containers by index: emit them while the
     * indices are still those of the original pod. */
    json_array_foreach(containers, i, c)
    {
        ij_rewrite_probes(patch, c, i, excl_in, probers, warnings);
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
    char *boot = ij_bootstrap(p, policy != NULL, routes != NULL, opaque, &tls,
                              ij_discovery_wanted(pod, t, warnings));
    json_object_set_new(ann, IJ_ANN_BOOTSTRAP, json_string(boot));
    json_array_append_new(added_ann, json_string(IJ_ANN_BOOTSTRAP));
    free(boot);
    bool proxy_first = !native && t->hold_application;
    if (proxy_first && ij_annotation(pod, "kubectl.kubernetes.io/default-container") == NULL) {
        const char *first = ij_get_str(json_array_get(containers, 0), "name");
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
    json_t *init = ij_init_container(t, excl_in, excl_out, excl_ranges);
    long drain_ms =
        native ? 0 : ij_drain_budget(pod, warnings); /* native: kubelet orders the stop */
    json_t *proxy =
        ij_proxy_container(t, native, policy != NULL, routes != NULL, probers, drain_ms);
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
    json_t *vols = ij_volumes(p, policy, routes);
    if (ij_get_arr(spec, "volumes") == NULL) {
        ij_jsonpatch_add(patch, vols, "spec", "volumes", NULL);
    } else {
        json_array_foreach(vols, i, v)
        {
            ij_jsonpatch_add(patch, json_incref(v), "spec", "volumes", "-", NULL);
        }
        json_decref(vols);
    }

    /* Things Kubernetes cannot fix for us, said where the user sees them. */
    const char *rp = ij_get_str(spec, "restartPolicy");
    if (!native && rp != NULL && strcmp(rp, "Always") != 0)
        ij_warn(warnings,
                "remora: classic sidecar in a pod with restartPolicy %s: the pod completes "
                "only when remora-proxy exits; use %s: \"true\"",
                rp, IJ_ANN_NATIVE);
    if (!native && json_array_size(inits) > 0)
        ij_warn(warnings,
                "remora: classic sidecar: init containers run before the proxy and have "
                "no network through the mesh; use %s: \"true\"",
                IJ_ANN_NATIVE);
    if (ij_name_in(spec, "containers", "istio-proxy") ||
        ij_name_in(spec, "containers", "linkerd-proxy"))
        ij_warn(warnings, "remora: the pod also has another mesh's proxy; their traffic capture "
                          "will conflict");

    /* Pod Security (issue 14): remora-init adds NET_ADMIN and NET_RAW, which
     * baseline and restricted refuse (restricted also refuses root). The
     * webhook entry that called us knows the namespace's enforce label
     * (manifests/injector/webhook.yaml, ij_inject_path); the pod is injected
     * anyway and the
     * API server refuses it, with this saying why. */
    if (p->psa_enforce != NULL)
        ij_warn(
            warnings,
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
