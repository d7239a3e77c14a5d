#!/usr/bin/env bash
# remora-injector end to end: the real binary over HTTPS on loopback.
#  - every AdmissionReview of the shared corpus and every case in
#    test/data/injector/ (a case is a file; format in its README.md),
#    each patch applied with `kubectl patch --local --type=json`, the result
#    validated with kubernetes-models and the injection contract
#    (test/js/check-pods.js), and posted again to check idempotence;
#  - the corpus twice: with classic and with native sidecars by default;
#  - bad bodies (400), bodies over the bound (413), slow clients (timeout),
#    keep-alive, concurrency, metrics, cert and template reload, config
#    errors, and a clean SIGTERM exit without sanitizer reports.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DATA=$REMORA_ROOT/test/data/injector
CORPUS=
for d in "${REMORA_CORPUS:-}" "$REMORA_ROOT/../shared/corpus/admission" /work/shared/corpus/admission; do
    if [[ -n $d && -d $d ]]; then CORPUS=$d; break; fi
done
NODE_OK=1
[[ -d $REMORA_ROOT/test/js/node_modules/kubernetes-models ]] ||
    (cd "$REMORA_ROOT/test/js" && npm install --no-audit --no-fund --silent >/dev/null 2>&1) ||
    NODE_OK=0

# ---- certificates and configs ------------------------------------------------
mkcert() { # DIR CN: an ECDSA P-256 serving pair for 127.0.0.1
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$1/key.pem" -out "$1/cert.pem" -subj "/CN=$2" \
        -addext "subjectAltName=DNS:remora-injector.remora-system.svc,IP:127.0.0.1" 2>/dev/null
}
mkcert "$TMP/pki" first
mkcert "$TMP/pki2" second
cp "$TMP/pki/cert.pem" "$TMP/ca.pem" # self-signed: the client trusts exactly this one

# config NAME PORT NATIVE [EXTRA-JSON]: write $TMP/NAME.json
config() {
    jq -n --arg port "$2" --arg cert "$TMP/live/cert.pem" --arg key "$TMP/live/key.pem" \
        --argjson native "$3" --argjson extra "${4:-{\}}" '{
        webhook: {address: ("127.0.0.1:" + $port), cert_file: $cert, key_file: $key,
                  timeout_seconds: 2, reload_interval_ms: 200, max_body_bytes: 1048576,
                  max_connections_per_ip: 128},  # 64 concurrent reviews from 127.0.0.1 below
        ca: {audience: "remora-ca", ttl_seconds: 86400},
        trust_domain: "cluster.local", native_sidecars: $native, log_level: "info"} * $extra' \
        >"$TMP/$1.json"
}
mkdir -p "$TMP/live"
cp "$TMP/pki/cert.pem" "$TMP/pki/key.pem" "$TMP/live/"

PORT=$(free_port)
NPORT=$(free_port)
cp "$REMORA_ROOT/manifests/injector/template.json" "$TMP/template.json"
config classic "$PORT" false "{\"template_file\": \"$TMP/template.json\"}"
config native "$NPORT" true

# ---- command line ------------------------------------------------------------
expect_match "--version prints the version" "$("$INJECTOR" --version 2>&1)" '^remora-injector [0-9]+\.[0-9]+\.[0-9]+$'
out=$("$INJECTOR" --check-config -c "$TMP/classic.json" 2>&1)
expect_eq "--check-config accepts a good config" "$?:$out" "0:$TMP/classic.json: ok"
check "manifests' template.json is the built-in template" \
    diff <(jq -S . "$REMORA_ROOT/manifests/injector/template.json") <("$INJECTOR" --print-template | jq -S .)

# Each bad config is a file: {"config": <merged over a good one>, "error": "<regex>"}.
for f in "$DATA"/config/*.json; do
    n=$(basename "$f" .json)
    config "bad-$n" 1 false "$(jq -c '.config' "$f" | sed -e "s#@TMP@#$TMP#g" -e "s#@DATA@#$DATA#g")"
    out=$("$INJECTOR" --check-config -c "$TMP/bad-$n.json" 2>&1)
    rc=$?
    want=$(jq -r '.error' "$f")
    if [[ $rc -ne 0 && $out =~ $want ]]; then
        pass "--check-config refuses $n"
    else
        fail "--check-config refuses $n: rc=$rc out='$out' want /$want/"
    fi
done

# ---- start the two servers -----------------------------------------------------
bg injector "$INJECTOR" -c "$TMP/classic.json"
IPID=$LASTPID
bg injector-native "$INJECTOR" -c "$TMP/native.json"
NPID=$LASTPID
check "injector listens" wait_port "$PORT"
check "native injector listens" wait_port "$NPORT"

CURL=(curl -sS --cacert "$TMP/ca.pem" --max-time 10)
url() { echo "https://127.0.0.1:$1$2"; }
healthy() { [[ $("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "${1:-$PORT}" /healthz)") == 200 ]]; }
check "GET /healthz is 200" healthy
expect_eq "GET /readyz is 200" "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /readyz)")" 200
expect_eq "GET /inject is 405" "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /inject)")" 405
expect_eq "GET /inject/pod/psa/baseline (a webhook entry's path) is 405" \
    "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /inject/pod/psa/baseline)")" 405
expect_eq "POST /inject/psa/privileged (no such entry) is not reviewed: 405, as any POST off the routes" \
    "$("${CURL[@]}" -o /dev/null -w '%{http_code}' --data-binary '{}' "$(url "$PORT" /inject/psa/privileged)")" 405
expect_eq "unknown path is 404" "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /nope)")" 404
expect_eq "plain HTTP is refused" "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/healthz")" 000
check "still serving after plain HTTP" healthy

# post PORT FILE [OUT]: POST a body; sets $CODE and $RESP (the response file).
post() {
    RESP=${3:-$TMP/resp.json}
    CODE=$("${CURL[@]}" -o "$RESP" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary "@$2" "$(url "$1" "${INJECT_PATH:-/inject}")")
}

# review_of CASE-FILE NAME: the AdmissionReview a case describes
review_of() {
    jq --arg uid "uid-$2" 'if has("review") then .review else
      {apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
       request: ({uid: $uid,
                  kind: {group: "", version: "v1", kind: "Pod"},
                  requestKind: {group: "", version: "v1", kind: "Pod"},
                  resource: {group: "", version: "v1", resource: "pods"},
                  requestResource: {group: "", version: "v1", resource: "pods"},
                  namespace: (.namespace // "shop"), operation: "CREATE",
                  userInfo: {username: "kubernetes-admin"},
                  object: (.pod // null), oldObject: null, dryRun: false} + (.request // {}))}
      end' "$1"
}

mkdir -p "$TMP/check" "$TMP/work" "$TMP/out"

# run_review PORT NAME REVIEW-FILE WANT-PATCH(1/0/"") WANT-MODE
# POSTs, checks the AdmissionReview answer, applies the patch with kubectl,
# checks idempotence. Leaves the patched pod in $TMP/check/NAME.patched.json.
run_review() {
    local port=$1 name=$2 rf=$3 want=$4 mode=$5 w=$TMP/work/$2 verdict
    post "$port" "$rf" "$w.resp.json"
    if [[ $CODE != 200 ]]; then fail "$name: HTTP $CODE"; return 1; fi
    verdict=$(jq -r --slurpfile rq "$rf" '($rq[0].request.uid) as $uid |
        if .apiVersion == "admission.k8s.io/v1" and .kind == "AdmissionReview"
           and .response.uid == $uid and .response.allowed == true
        then (if .response.patch == null then "0"
              elif .response.patchType == "JSONPatch" then "1" else "badtype" end)
        else "bad" end' "$w.resp.json")
    case $verdict in
    0 | 1) pass "$name: answered with its uid, allowed" ;;
    *) fail "$name: bad AdmissionReview answer ($verdict): $(head -c 300 "$w.resp.json")"; return 1 ;;
    esac
    if [[ -n $want && $verdict != "$want" ]]; then
        fail "$name: patch expected=$want got=$verdict"
        return 1
    fi
    [[ $verdict == 1 ]] || { pass "$name: no patch"; return 0; }
    jq -r '.response.patch | @base64d' "$w.resp.json" >"$w.patch.json"
    jq '.request.object' "$rf" >"$TMP/check/$name.orig.json"
    if kubectl patch --local --type=json -f "$TMP/check/$name.orig.json" \
        -p "$(cat "$w.patch.json")" -o json --show-managed-fields \
        >"$TMP/check/$name.patched.json" 2>"$w.kubectl.err"; then
        pass "$name: kubectl applies the patch"
    else
        fail "$name: kubectl patch: $(head -c 300 "$w.kubectl.err")"
        rm -f "$TMP/check/$name.patched.json"
        return 1
    fi
    # Reinvocation: the injected pod, reviewed again, yields no patch.
    jq --slurpfile p "$TMP/check/$name.patched.json" '.request.object = $p[0]' "$rf" >"$w.again.json"
    post "$port" "$w.again.json" "$w.again.resp.json"
    verdict=$(jq -r --slurpfile p "$TMP/check/$name.patched.json" '
        (if .response.allowed == true and .response.patch == null then "none" else "patch" end)
        + " " + ($p[0].metadata.annotations["remora.io/status"] | fromjson | .mode)' "$w.again.resp.json")
    if [[ $CODE == 200 && $verdict == none* ]]; then
        pass "$name: re-injection yields no patch"
    else
        fail "$name: re-injection: HTTP $CODE $(head -c 200 "$w.again.resp.json")"
    fi
    [[ -z $mode ]] || expect_eq "$name: $mode sidecar" "${verdict#* }" "$mode"
}

# Reviews run JOBS at a time (they mostly wait on curl, kubectl and jq); each
# writes its PASS/FAIL lines to its own file, printed and counted in order.
JOBS=${INJECTOR_TEST_JOBS:-6}
_spawned=()
slot_free() { # fewer than JOBS spawned reviews still run
    local live=0 p
    for p in "${_spawned[@]}"; do kill -0 "$p" 2>/dev/null && live=$((live + 1)); done
    ((live < JOBS))
}
spawn() { # OUT-NAME FUNCTION ARGS...
    local out=$TMP/out/$1
    shift
    WAIT_UNTIL_STEP=0.02 wait_until 300 slot_free || fail "spawn ${out##*/}: no free slot among $JOBS jobs in 300 s"
    "$@" >"$out" 2>&1 &
    _spawned+=($!)
}
collect() { # wait for the spawned reviews only (the servers run on)
    local f p
    for p in "${_spawned[@]}"; do wait "$p"; done
    _spawned=()
    for f in "$TMP"/out/*; do
        cat "$f"
        _fails=$((_fails + $(grep -c '^FAIL: ' "$f" || true)))
    done
    rm -f "$TMP"/out/*
}

# ---- the shared corpus, classic and native -------------------------------------
corpus_one() {
    local f=$1 base want
    base=$(basename "$f" .json)
    # The oracle: the skip rules, read straight from the review.
    want=$(jq -r '.request as $r | ($r.object.metadata.annotations // {}) as $a |
        ($r.object.metadata.labels // {}) as $l |
        if ($r.object.spec.hostNetwork == true) or ($a["remora.io/status"] != null)
           or ($a["remora.io/inject"] == "false") or ($l["remora.io/inject"] == "false")
           or $r.operation != "CREATE"
           or ($r.namespace == "kube-system") or ($r.namespace == "remora-system")
        then 0 else 1 end' "$f")
    run_review "$PORT" "corpus-$base" "$f" "$want" classic
    run_review "$NPORT" "corpus-native-$base" "$f" "$want" native
}
if [[ -z $CORPUS ]]; then
    fail "shared corpus not found (../shared/corpus/admission)"
else
    n=0
    for f in "$CORPUS"/*.json; do
        spawn "corpus-$(basename "$f")" corpus_one "$f"
        n=$((n + 1))
    done
    collect
    expect_match "corpus has every file ($n)" "$n" '^[1-9][0-9]+$'
fi

# ---- own cases ---------------------------------------------------------------
case_one() {
    local f=$1 name port status want w e
    # .path: the webhook entry's path (/inject/pod/psa/restricted..., manifests/injector/
    # webhook.yaml); post() sees it (bash's dynamic scope), the re-review too
    local INJECT_PATH
    INJECT_PATH=$(jq -r '.path // "/inject"' "$f")
    name=case-$(basename "$f" .json)
    w=$TMP/work/$name
    port=$PORT
    [[ $(jq -r '.injector // "classic"' "$f") == native ]] && port=$NPORT
    status=$(jq -r '.expect.status // 200' "$f")
    if jq -e 'has("body")' "$f" >/dev/null; then
        jq -j '.body' "$f" >"$w.body"
        post "$port" "$w.body" "$w.resp.json"
        if [[ $CODE == "$status" ]] && jq -e '.error | type == "string"' "$w.resp.json" >/dev/null; then
            pass "$name: HTTP $status with a JSON error"
        else
            fail "$name: HTTP $CODE (want $status): $(head -c 200 "$w.resp.json")"
        fi
        check "$name: still serving" healthy "$port"
        return
    fi
    review_of "$f" "$name" >"$w.review.json"
    if [[ $status != 200 ]]; then
        post "$port" "$w.review.json" "$w.resp.json"
        expect_eq "$name: HTTP $status" "$CODE" "$status"
        check "$name: still serving" healthy "$port"
        return
    fi
    want=$(jq -r 'if .expect.patched == null then "" elif .expect.patched then 1 else 0 end' "$f")
    run_review "$port" "$name" "$w.review.json" "$want" "$(jq -r '.expect.mode // ""' "$f")" || return
    if jq -e '.expect.warning' "$f" >/dev/null; then
        w=$(jq -r '.response.warnings // [] | join(" | ")' "$TMP/work/$name.resp.json")
        expect_match "$name: warns" "$w" "$(jq -r '.expect.warning' "$f")"
    fi
    if jq -e '.expect.no_warning' "$f" >/dev/null; then
        w=$(jq -r '.response.warnings // [] | join(" | ")' "$TMP/work/$name.resp.json")
        if [[ $w =~ $(jq -r '.expect.no_warning' "$f") ]]; then fail "$name: warns: $w"
        else pass "$name: no warning /$(jq -r '.expect.no_warning' "$f")/"; fi
    fi
    jq -e '.expect.no_schema == true' "$f" >/dev/null && touch "$TMP/check/$name.noschema"
    while IFS= read -r e; do
        [[ -n $e ]] || continue
        if [[ $(jq "$e" "$TMP/check/$name.patched.json" 2>&1) == true ]]; then pass "$name: $e"
        else fail "$name: $e"; fi
    done < <(jq -r '.expect.jq // [] | .[]' "$f")
    while IFS= read -r e; do
        [[ -n $e ]] || continue
        if [[ $(jq "$e" "$TMP/work/$name.patch.json" 2>&1) == true ]]; then pass "$name: patch: $e"
        else fail "$name: patch: $e"; fi
    done < <(jq -r '.expect.patch_jq // [] | .[]' "$f")
}
for f in "$DATA"/*.json; do
    spawn "case-$(basename "$f")" case_one "$f"
done
collect

# Every bootstrap the cases produced is one remora-proxy loads (--check-config; the
# policy and routes files are left out: they are the pods' ConfigMaps), opaque_ports
# (remora.io/opaque-ports, issue 14) included.
nboot=0 nbad=0 nopaque=0
for pf in "$TMP"/check/case-*.patched.json; do
    jq '.metadata.annotations["remora.io/bootstrap"] | fromjson | del(.policy_file, .routes_file)' \
        "$pf" >"$TMP/boot.json" 2>/dev/null || continue
    jq -e 'has("opaque_ports")' "$TMP/boot.json" >/dev/null && nopaque=$((nopaque + 1))
    nboot=$((nboot + 1))
    if ! out=$("$PROXY" --check-config -c "$TMP/boot.json" 2>&1); then
        nbad=$((nbad + 1))
        echo "  $(basename "$pf"): $out"
    fi
done
expect_eq "remora-proxy --check-config loads every injected bootstrap of the cases ($nboot, $nopaque with opaque_ports)" \
    "$nbad" 0
((nopaque >= 2)) && pass "... opaque_ports among them ($nopaque)" || fail "... only $nopaque with opaque_ports"
((nboot > 30)) && pass "... that is most cases ($nboot)" || fail "... only $nboot bootstraps checked"

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

# ---- every patched pod: kubernetes-models + the injection contract --------------
if ((NODE_OK)); then
    node "$REMORA_ROOT/test/js/check-pods.js" "$TMP/check" >"$TMP/check.out" 2>&1
    cat "$TMP/check.out"
    # check-pods prints its own PASS/FAIL lines; count its failures here too.
    _fails=$((_fails + $(grep -c '^FAIL: ' "$TMP/check.out" || true)))
    grep -qE '^(PASS|FAIL): ' "$TMP/check.out" || fail "check-pods.js ran no check: $(tail -3 "$TMP/check.out")"
else
    fail "kubernetes-models not installed (npm install in test/js)"
fi

# ---- bodies over the bound, slow clients, keep-alive, load ---------------------
head -c $((2 * 1024 * 1024)) /dev/zero | tr '\0' ' ' >"$TMP/big.json"
post "$PORT" "$TMP/big.json"
expect_eq "body over max_body_bytes (Content-Length) is 413" "$CODE" 413
check "still serving after 413" healthy
CODE=$("${CURL[@]}" -o "$TMP/resp.json" -w '%{http_code}' -H 'Transfer-Encoding: chunked' \
    --data-binary "@$TMP/big.json" "$(url "$PORT" /inject)")
expect_eq "chunked body over max_body_bytes is 413" "$CODE" 413
check "still serving after chunked 413" healthy

# A client that opens TLS and then says nothing, and one that stops mid-headers:
# each is cut after webhook.timeout_seconds (2 s here) while others are served.
# The end time is taken when s_client sees the server close.
t_slow=$(date +%s%N)
(sleep 6 | { openssl s_client -quiet -connect "127.0.0.1:$PORT" >/dev/null 2>&1
    date +%s%N >"$TMP/slow1.end"; }) &
slow1=$!
( (printf 'POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n'; sleep 6) |
    { openssl s_client -quiet -connect "127.0.0.1:$PORT" >/dev/null 2>&1
      date +%s%N >"$TMP/slow2.end"; }) &
slow2=$!
sleep 0.5
check "serving while slow clients hang" healthy

f=$CORPUS/istio-hello.json
[[ -f $f ]] || f=$TMP/work/case-inject-opt-in.review.json
urls=()
for _ in $(seq 20); do urls+=(-o /dev/null --data-binary "@$f" "$(url "$PORT" /inject)"); done
conns=$("${CURL[@]}" -v -w '%{http_code}\n' "${urls[@]}" 2>&1 | grep -c 'Re-using existing connection' || true)
expect_match "keep-alive: 20 reviews on one connection" "$conns" '^1[0-9]$'
codes=$(seq 64 | xargs -P 8 -I{} "${CURL[@]}" -o /dev/null -w '%{http_code}\n' \
    --data-binary "@$f" "$(url "$PORT" /inject)" | sort | uniq -c | tr -s ' ')
expect_eq "64 concurrent reviews all answered 200" "$codes" " 64 200"

wait "$slow1" "$slow2"
for n in 1 2; do
    waited=$((($(cat "$TMP/slow$n.end" 2>/dev/null || echo 0) - t_slow) / 1000000))
    if ((waited > 1500 && waited < 4500)); then
        pass "slow client $n is cut after webhook.timeout_seconds (${waited} ms)"
    else
        fail "slow client $n was not cut after ~2 s (${waited} ms)"
    fi
done
check "still serving after the slow clients" healthy

# ---- fresh TLS connections: no busy-wait, no Nagle stall -----------------------
# docs/injector.md, "Performance". A handshake waiting for the client's Finished
# must cost no CPU (libmicrohttpd's epoll loop spun on it, a whole round trip of
# CPU per connection), and a client that delays its ACKs must get the server's
# first flight at once (TCP_NODELAY; with Nagle, its second half waited ~40 ms).
cpu_ms() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d\n", s / 1000000}'; }
c0=$(cpu_ms "$IPID")
python3 - "$PORT" "$TMP/ca.pem" <<'PY'
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
t = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
try:
    t.do_handshake()
except ssl.SSLWantReadError:
    pass
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(out.read())  # the ClientHello; the server answers, then waits for us
s.recv(65536)
time.sleep(1.5)
s.close()
PY
c1=$(cpu_ms "$IPID")
if ((c1 - c0 < 200)); then
    pass "a handshake waiting 1.5 s for the client costs the server $((c1 - c0)) ms of CPU"
else
    fail "a handshake waiting 1.5 s for the client cost the server $((c1 - c0)) ms of CPU (busy-wait?)"
fi
hs=$(python3 - "$PORT" "$TMP/ca.pem" <<'PY'
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
ms = []
for _ in range(5):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # delayed ACKs
    t0 = time.monotonic()
    t = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    ms.append((time.monotonic() - t0) * 1000)
    t.close()
print(int(sorted(ms)[2]))
PY
)
if [[ $hs =~ ^[0-9]+$ ]] && ((hs < 30)); then
    pass "TLS 1.3 handshake with a delayed-ACK client: median ${hs} ms"
else
    fail "TLS 1.3 handshake with a delayed-ACK client: median '${hs}' ms (Nagle stall?)"
fi

# ---- metrics -----------------------------------------------------------------
m=$("${CURL[@]}" "$(url "$PORT" /metrics)")
for series in 'remora_injector_reviews_total\{result="injected",reason=""\} [1-9]' \
    'remora_injector_reviews_total\{result="skipped",reason="host-network"\} [1-9]' \
    'remora_injector_reviews_total\{result="skipped",reason="already-injected"\} [1-9]' \
    'remora_injector_reviews_total\{result="invalid",reason=""\} [1-9]' \
    'remora_injector_reviews_total\{result="too_large",reason=""\} [1-9]' \
    'remora_injector_review_duration_seconds_bucket\{le="\+Inf"\} [1-9]' \
    'remora_injector_review_duration_seconds_count [1-9]' \
    'remora_injector_cert_expiry_timestamp_seconds [1-9]'; do
    if grep -qE "^$series" <<<"$m"; then pass "metrics: $series"; else fail "metrics: $series"; fi
done

# ---- reloads -----------------------------------------------------------------
subject() { openssl s_client -connect "127.0.0.1:$PORT" </dev/null 2>/dev/null | openssl x509 -noout -subject; }
expect_match "serves the first certificate" "$(subject)" 'CN ?= ?first'
# A keep-alive connection opened before the swap must survive it.
exec {keep}< <( (for _ in 1 2 3 4 5 6; do printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'; sleep 0.5; done
    printf 'GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n') |
    openssl s_client -quiet -connect "127.0.0.1:$PORT" 2>/dev/null)
sleep 0.3
cp "$TMP/pki2/cert.pem" "$TMP/live/cert.pem" # the key lags: the pair does not match yet
sleep 0.6
expect_match "a mismatched cert/key pair is not loaded" "$(subject)" 'CN ?= ?first'
cp "$TMP/pki2/key.pem" "$TMP/live/key.pem"
sleep 0.6
expect_match "the renewed certificate is served without restart" "$(subject)" 'CN ?= ?second'
expect_match "a connection from before the swap finishes" "$(timeout 5 cat <&"$keep" | grep -ao 'HTTP/1.1 200' | wc -l)" '^7$'
exec {keep}<&-
cp "$TMP/pki2/cert.pem" "$TMP/ca.pem"
check "still serving after the certificate swap" healthy
grep -q 'key does not match' "$TMP/injector.log" && pass "the mismatched pair was logged" ||
    fail "the mismatched pair was not logged"

jq '.image = "registry.example/remora-proxy:canary" | .env = [{"name": "REMORA_EXTRA", "value": "1"}]' \
    "$REMORA_ROOT/manifests/injector/template.json" >"$TMP/template.new"
mv "$TMP/template.new" "$TMP/template.json"
sleep 0.6
f=$TMP/work/case-inject-opt-in.review.json
post "$PORT" "$f"
img=$(jq -r '.response.patch' "$TMP/resp.json" | base64 -d | jq -r '[.[] | .value | .. | objects | select(.name == "remora-proxy") | .image][0]')
expect_eq "a changed template is used without restart" "$img" "registry.example/remora-proxy:canary"
echo '{"image": 1}' >"$TMP/template.new"
mv "$TMP/template.new" "$TMP/template.json"
sleep 0.6
post "$PORT" "$f"
img=$(jq -r '.response.patch' "$TMP/resp.json" | base64 -d | jq -r '[.[] | .value | .. | objects | select(.name == "remora-proxy") | .image][0]')
expect_eq "a broken template keeps the last good one" "$img" "registry.example/remora-proxy:canary"
expect_match "the broken template is logged with its key" "$(grep 'template not reloaded' "$TMP/injector.log")" "template.json: image: expected a string"

# ---- clean exit ----------------------------------------------------------------
stop() { # NAME PID: SIGTERM, exit 0, no sanitizer report
    kill -TERM "$2"
    local rc=0
    wait "$2" || rc=$?
    expect_eq "$1 exits 0 on SIGTERM" "$rc" 0
    if grep -qE 'Sanitizer|runtime error' "$TMP/$1.log"; then
        fail "$1: sanitizer report"
        grep -E -A20 'Sanitizer|runtime error' "$TMP/$1.log" | head -40
    else
        pass "$1: no sanitizer report (leaks included)"
    fi
}
stop injector "$IPID"
stop injector-native "$NPID"
finish
