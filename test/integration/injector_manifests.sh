#!/usr/bin/env bash
# The shipped manifests (kubectl kustomize manifests/, offline): they render; the webhook's
# settings and, for each of 108 namespace/pod label combinations, exactly the right entry
# (or none); the Deployment; the shipped config.json and template (--check-config, the
# built-in template); the sample app's pod through a native injector (fixture:
# test/lib_injector.sh), checked with kubernetes-models and the injection contract; the
# CA's port, mounts and TokenReview RBAC (docs/ca.md); the CronJobs that publish the CA root
# (publish-ca-root) and refresh the JWKS (refresh-jwks), with their RBAC and images.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$REMORA_ROOT/test/lib_injector.sh"
injector_start native


# ---- manifests ---------------------------------------------------------------
if kubectl kustomize "$REMORA_ROOT/manifests" >"$TMP/manifests.yaml" 2>"$TMP/kustomize.err"; then
    pass "kubectl kustomize manifests/ renders offline"
else
    fail "kubectl kustomize manifests/: $(head -c 300 "$TMP/kustomize.err")"
fi
check "kubectl kustomize manifests/cert-manager renders offline" \
    bash -c "kubectl kustomize '$REMORA_ROOT/manifests/cert-manager' >'$TMP/manifests-cm.yaml'"
if ((NODE_OK)); then
    node "$REMORA_ROOT/test/js/check-manifests.js" <"$TMP/manifests.yaml" >"$TMP/manifests.out" 2>&1
    grep -E '^(PASS|FAIL): ' "$TMP/manifests.out"
    _fails=$((_fails + $(grep -c '^FAIL: ' "$TMP/manifests.out" || true)))
    NODE_PATH=$REMORA_ROOT/test/js/node_modules node -e '
        const y = require("js-yaml"), fs = require("fs");
        console.log(JSON.stringify(y.loadAll(fs.readFileSync(0, "utf8")).filter(Boolean)));' \
        <"$TMP/manifests.yaml" >"$TMP/manifests.json"
    m() { jq -r "$1" "$TMP/manifests.json"; }
    expect_eq "webhook: v1 reviews, no side effects, reinvoked if needed, fails closed" \
        "$(m '.[] | select(.kind == "MutatingWebhookConfiguration") | .webhooks[0] |
            [.admissionReviewVersions[0], .sideEffects, .reinvocationPolicy, .failurePolicy,
             .clientConfig.service.path, (.timeoutSeconds | tostring)] | join(" ")')" \
        "v1 None IfNeeded Fail /inject 5"
    expect_eq "webhook: namespaceSelector on remora-injection=enabled, never kube-system or remora-system" \
        "$(m '.[] | select(.kind == "MutatingWebhookConfiguration") | .webhooks[0].namespaceSelector.matchExpressions |
            map(.key + " " + .operator + " " + (.values // [] | join(","))) | join("; ")')" \
        "remora-injection In enabled; kubernetes.io/metadata.name NotIn kube-system,remora-system; pod-security.kubernetes.io/enforce NotIn baseline,restricted"
    expect_eq "webhook: six entries (namespace label / pod label, x three Pod Security levels), all alike but their selectors and path" \
        "$(m '[.[] | select(.kind == "MutatingWebhookConfiguration") | .webhooks[] |
            del(.name, .namespaceSelector, .objectSelector, .clientConfig.service.path)] | unique | length')" 1
    # issue 14: which entry (if any) the API server calls, for every combination
    # of namespace labels and pod label; never two for one pod
    out=$(python3 - "$TMP/manifests.json" <<'PY'
import itertools, json, sys
hooks = [w for d in json.load(open(sys.argv[1])) if d["kind"] == "MutatingWebhookConfiguration"
         for w in d["webhooks"]]
def sel(s, labels):
    for e in (s or {}).get("matchExpressions", []):
        k, op, vs = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(k) not in vs: return False
        if op == "NotIn" and k in labels and labels[k] in vs: return False
        if op == "Exists" and k not in labels: return False
        if op == "DoesNotExist" and k in labels: return False
    return all(labels.get(k) == v for k, v in (s or {}).get("matchLabels", {}).items())
bad = n = 0
for ns, inj, psa, pod in itertools.product(["shop", "kube-system", "remora-system"],
        [None, "enabled", "disabled"], [None, "privileged", "baseline", "restricted"], [None, "true", "false"]):
    nl = {"kubernetes.io/metadata.name": ns}
    if inj: nl["remora-injection"] = inj
    if psa: nl["pod-security.kubernetes.io/enforce"] = psa
    pl = {"app": "x"}
    if pod: pl["remora.io/inject"] = pod
    got = [w["clientConfig"]["service"]["path"] for w in hooks
           if sel(w.get("namespaceSelector"), nl) and sel(w.get("objectSelector"), pl)]
    system = ns != "shop"
    want_call = not system and ((inj == "enabled" and pod != "false") or (inj is None and pod == "true"))
    want = ["/inject" + ("/pod" if inj is None else "") +
            ("/psa/" + psa if psa in ("baseline", "restricted") else "")] if want_call else []
    n += 1
    if got != want:
        bad += 1
        print("ns %s remora-injection=%s enforce=%s pod remora.io/inject=%s: calls %s, want %s" % (ns, inj, psa, pod, got, want))
print("%d combinations, %d wrong" % (n, bad))
PY
)
    expect_eq "webhook entries: exactly the right one (or none) for each of 108 namespace/pod label combinations" \
        "${out##*$'\n'}" "108 combinations, 0 wrong"
    [[ $out == *wrong* && ${out##*$'\n'} != *", 0 wrong" ]] && echo "$out" | head -20
    expect_eq "webhook: CREATE pods only" \
        "$(m '.[] | select(.kind == "MutatingWebhookConfiguration") | .webhooks[0].rules' | jq -cS .)" \
        '[{"apiGroups":[""],"apiVersions":["v1"],"operations":["CREATE"],"resources":["pods"],"scope":"Namespaced"}]'
    expect_eq "deployment: 2 replicas, non-root, read-only, probes, resources, anti-affinity" \
        "$(m '.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") |
            [.spec.replicas, .spec.template.spec.securityContext.runAsNonRoot,
             .spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem,
             .spec.template.spec.containers[0].readinessProbe.httpGet.path,
             .spec.template.spec.containers[0].livenessProbe.httpGet.path,
             (.spec.template.spec.containers[0].resources.limits.memory != null),
             (.spec.template.spec.affinity.podAntiAffinity != null)] | map(tostring) | join(" ")')" \
        "2 true true /readyz /healthz true true"
    # The shipped config passes --check-config (with this test's certificate).
    m '.[] | select(.kind == "ConfigMap" and (.metadata.name | startswith("remora-injector-config"))) |
        .data["config.json"]' |
        jq --arg c "$TMP/pki/cert.pem" --arg k "$TMP/pki/key.pem" --arg t "$REMORA_ROOT/manifests/injector/template.json" \
            '.webhook.cert_file = $c | .webhook.key_file = $k | .template_file = $t | del(.discovery.address) |
             del(.ca.address, .ca.cert_file, .ca.key_file, .ca.root_file, .ca.jwks_file, .ca.token_review)' \
            >"$TMP/shipped.json" # the CA half is checked by ca.sh, with CA files
    out=$("$INJECTOR" --check-config -c "$TMP/shipped.json" 2>&1)
    expect_eq "the shipped config.json passes --check-config" "$?:$out" "0:$TMP/shipped.json: ok"
    expect_eq "the shipped template ConfigMap is manifests/injector/template.json" \
        "$(m '.[] | select(.metadata.name == "remora-sidecar-template") | .data["template.json"]' | jq -cS .)" \
        "$(jq -cS . "$REMORA_ROOT/manifests/injector/template.json")"
    # The sample app's pod, as its ReplicaSet would create it, through the webhook.
    m '.[] | select(.kind == "Deployment" and .metadata.name == "web") |
        {apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
         request: {uid: "sample-web", kind: {group: "", version: "v1", kind: "Pod"},
                   resource: {group: "", version: "v1", resource: "pods"},
                   namespace: .metadata.namespace, operation: "CREATE",
                   object: {apiVersion: "v1", kind: "Pod",
                            metadata: (.spec.template.metadata + {generateName: "web-", namespace: .metadata.namespace}),
                            spec: .spec.template.spec}}}' >"$TMP/work/sample-web.review.json"
    run_review "$NPORT" sample-web "$TMP/work/sample-web.review.json" 1 native
    expect_eq "sample app: policy and exclusion reach the pod" \
        "$(jq -r '[(.spec.volumes[] | select(.name == "remora-policy") | .configMap.name),
                   (.spec.initContainers[0].args | .[index("--exclude-inbound-ports") + 1])] | join(" ")' \
            "$TMP/check/sample-web.patched.json")" "web-policy 9113"
fi

# ---- manifests: the CA (docs/ca.md): its port, mounts, TokenReview RBAC, the JWKS CronJob ----
# (the shipped config.json's CA passing --check-config with CA files is in ca_config.sh)
if kubectl kustomize "$REMORA_ROOT/manifests" 2>/dev/null |
    python3 -c 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))' \
        >"$TMP/manifests-ca.json"; then
    mj() { jq -r "$1" "$TMP/manifests-ca.json"; }
    cfg=$REMORA_ROOT/manifests/injector/config.json
    expect_eq "config.json: the CA on its own port, 15012" "$(jq -r .ca.address "$cfg")" "0.0.0.0:15012"
    expect_eq "config.json: ca.token_review on (issue 14), answers cached 60 s" \
        "$(jq -r '[.ca.token_review, .ca.token_review_cache_seconds] | join(" ")' "$cfg")" "true 60"
    expect_eq "... the ServiceAccount may create TokenReviews and get pods, nothing else" \
        "$(mj '[.[] | select(.kind == "ClusterRoleBinding" and .metadata.name == "remora-injector-token-review") |
            .subjects[0].name] + [.[] | select(.kind == "ClusterRole" and .metadata.name == "remora-injector-token-review") |
            .rules[] | (.resources[0] + ":" + (.verbs | join(",")))] | join(" ")')" \
        "remora-injector tokenreviews:create pods:get"
    dep0='.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") | .spec.template.spec'
    expect_eq "... and the Deployment mounts its token and the API server's CA where kube.* looks" \
        "$(mj "$dep0 | [(.containers[0].volumeMounts[] | select(.name == \"kube-api-access\") | .mountPath),
            (.volumes[] | select(.name == \"kube-api-access\") | .projected.sources | map(keys[0]) | join(\",\"))] | join(\" \")")" \
        "/var/run/secrets/kubernetes.io/serviceaccount serviceAccountToken,configMap"
    dep='.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") | .spec.template.spec'
    expect_eq "Deployment: container port https-ca 15012" \
        "$(mj "$dep | .containers[0].ports[] | select(.name == \"https-ca\") | .containerPort")" 15012
    expect_eq "Service: port 15012 to https-ca" \
        "$(mj '.[] | select(.kind == "Service" and .metadata.name == "remora-injector") | .spec.ports[] |
            select(.port == 15012) | .targetPort')" https-ca
    for k in cert_file key_file root_file jwks_file; do
        dir=$(dirname "$(jq -r ".ca.$k" "$cfg")")
        vol=$(mj "$dep | .containers[0].volumeMounts[] | select(.mountPath == \"$dir\") | .name")
        src=$(mj "$dep | .volumes[] | select(.name == \"$vol\") | (.secret.secretName // .configMap.name)")
        case $k in jwks_file) want=remora-jwks ;; *) want=remora-ca ;; esac
        expect_eq "Deployment: ca.$k ($dir) is mounted from $want" "${src:-none}" "$want"
    done
    expect_eq "a CronJob keeps remora-jwks current from /openid/v1/jwks (remora-injector refresh-jwks)" \
        "$(mj '.[] | select(.kind == "CronJob" and .metadata.name == "remora-jwks-refresh") |
            [.spec.schedule, (.spec.jobTemplate.spec.template.spec.containers[0].command | join(" "))] |
            join(" ")')" \
        "*/10 * * * * remora-injector refresh-jwks"
    expect_eq "... allowed to read the JWKS and patch that ConfigMap alone" \
        "$(mj '[.[] | select(.kind == "ClusterRole" and .metadata.name == "remora-jwks-reader") | .rules[0].nonResourceURLs[0]] +
            [.[] | select(.kind == "Role" and .metadata.name == "remora-jwks-refresh") | .rules[0].resourceNames[0]] | join(" ")')" \
        "/openid/v1/jwks remora-jwks"
else
    fail "kubectl kustomize manifests/ renders"
fi

# ---- manifests: the CA root publisher (docs/ca.md, "Publishing the root") -----------
if kubectl kustomize "$REMORA_ROOT/manifests" 2>"$TMP/kustomize-pub.err" |
    python3 -c 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))' \
        >"$TMP/manifests-pub.json"; then
    mc() { jq -c "$1" "$TMP/manifests-pub.json"; }
    cj='.[] | select(.kind == "CronJob" and .metadata.name == "remora-ca-root-publisher")'
    pod="$cj | .spec.jobTemplate.spec.template.spec"
    expect_eq "manifests: CronJob remora-ca-root-publisher every 5 minutes, Forbid, in remora-system" \
        "$(mc "$cj | [.metadata.namespace, .spec.schedule, .spec.concurrencyPolicy]")" \
        '["remora-system","*/5 * * * *","Forbid"]'
    expect_eq "... the injector's image and tag" \
        "$(mc "$pod | .containers[0].image")" \
        "$(mc '.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") | .spec.template.spec.containers[0].image')"
    expect_eq "... runs remora-injector publish-ca-root --root /etc/remora/ca/root.pem" \
        "$(mc "$pod | .containers[0] | (.command + .args)")" \
        '["remora-injector","publish-ca-root","--root","/etc/remora/ca/root.pem"]'
    expect_eq "... mounts only root.pem of Secret remora-ca there, read-only" \
        "$(mc "$pod | [(.containers[0].volumeMounts[] | [.mountPath, .readOnly]),
            (.volumes[] | [.secret.secretName, .secret.items])]")" \
        '[["/etc/remora/ca",true],["remora-ca",[{"key":"root.pem","path":"root.pem"}]]]'
    expect_eq "... hardened: non-root, read-only root, no privilege escalation, no capabilities, seccomp, limits" \
        "$(mc "$pod | [.serviceAccountName, .securityContext.runAsNonRoot, .securityContext.seccompProfile.type,
            .containers[0].securityContext.readOnlyRootFilesystem,
            .containers[0].securityContext.allowPrivilegeEscalation,
            .containers[0].securityContext.capabilities.drop, .containers[0].resources.limits.memory]")" \
        '["remora-ca-root-publisher",true,"RuntimeDefault",true,false,["ALL"],"64Mi"]'
    expect_eq "ClusterRole: namespaces get/list, configmaps create, get/patch remora-ca-root only" \
        "$(mc '.[] | select(.kind == "ClusterRole" and .metadata.name == "remora-ca-root-publisher") |
            [.rules[] | [.resources[0], (.verbs | sort | join(",")), (.resourceNames // [] | join(","))]]')" \
        '[["namespaces","get,list",""],["configmaps","create",""],["configmaps","get,patch","remora-ca-root"]]'
    expect_eq "ClusterRoleBinding: to the publisher's ServiceAccount" \
        "$(mc '.[] | select(.kind == "ClusterRoleBinding" and .metadata.name == "remora-ca-root-publisher") |
            [.roleRef.name, .subjects[0].kind, .subjects[0].namespace, .subjects[0].name]')" \
        '["remora-ca-root-publisher","ServiceAccount","remora-system","remora-ca-root-publisher"]'
    # the published names agree with the template the pods are injected from
    expect_eq "the template's ca_root_configmap is the name the publisher writes by default" \
        "$(jq -r .ca_root_configmap "$REMORA_ROOT/manifests/injector/template.json")" remora-ca-root
else
    fail "kubectl kustomize manifests/ renders: $(head -c 300 "$TMP/kustomize-pub.err")"
fi

# ---- manifests: the remora-jwks-refresh CronJob (refresh-jwks: publish_jwks.sh) ----
if [[ -s $TMP/manifests-pub.json ]]; then
    rj="$(mc '.[] | select(.kind == "CronJob" and .metadata.name == "remora-jwks-refresh") |
        .spec.jobTemplate.spec.template.spec.containers[0] | [.image, (.command + (.args // []))]')"
    expect_eq "manifests: the remora-jwks-refresh CronJob runs remora-injector refresh-jwks from the injector image" \
        "$rj" "$(mc '[(.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") |
            .spec.template.spec.containers[0].image), ["remora-injector", "refresh-jwks"]]')"
    expect_eq "manifests: every image under manifests/injector is the injector's or the proxy's" \
        "$(kubectl kustomize "$REMORA_ROOT/manifests/injector" | grep -E '^\s+image:' |
            grep -vcE 'remora-mesh/remora-(injector|proxy):')" 0
fi

# ---- the sample app's patched pod: kubernetes-models + the injection contract --------------
check_pods

# ---- clean exit ----------------------------------------------------------------
injector_stop injector-native "$NPID"
finish
