#!/usr/bin/env bash
# The container images (`make image`, docs/install.md), run: the injector from its image
# as the manifests run it, and pods from the proxy image as the webhook patched them,
# each a podman pod (test/e2e/pod.py's podman backend, docs/e2e.md). Two pods talk
# through both sidecars over mTLS with certificates from the CA in the injector image.
#
#   A  shop/frontend, classic sidecar: curl as UID 1000 in a test image; dual-stack
#   B  shop/backend,  classic sidecar, strict mTLS, policy ConfigMap, readiness probe, a
#                     Secret and an emptyDir; dual-stack
#   D  shop/intruder, native sidecar: meshed, but B's policy does not allow it
# The images are built (`make image`, the release build) when build/images is missing or
# older than the binaries. Prints one SKIP: line when podman cannot run a container here.
# shellcheck source=../lib.sh disable=SC2034
source "$(dirname "$0")/../lib.sh"

skip() { echo "SKIP: image.sh: $*; nothing was run"; exit 0; }
[[ $(id -u) -eq 0 ]] || skip "needs root (buildah's storage, network namespaces)"
for tool in podman runc buildah skopeo ip curl jq node kubectl python3; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (make deps)"
done
# shellcheck source=../e2e/podman.sh
source "$REMORA_ROOT/test/e2e/podman.sh"
podman_setup
T0=$(date +%s)

# ---- the images ---------------------------------------------------------------------------
IMG=$REMORA_ROOT/build/images
stale=0
for f in remora-proxy remora-injector; do
    [[ -f $IMG/$f.tar && $IMG/$f.tar -nt $REMORA_ROOT/build/$f &&
        $IMG/$f.tar -nt $REMORA_ROOT/scripts/image.sh ]] || stale=1
done
[[ -x $REMORA_ROOT/build/test-upstream ]] || stale=1 # the test image's app
if ((stale)); then
    if ! make -C "$REMORA_ROOT" --no-print-directory CC=gcc image >"$TMP/make-image.log" 2>&1; then
        fail "make image"
        tail -30 "$TMP/make-image.log"
        finish
    fi
fi
T_BUILD=$(($(date +%s) - T0))
pass "make image: build/images/remora-proxy.tar and remora-injector.tar (${T_BUILD} s)"
# A test image: the e2e app (test-upstream, release build), curl and sleep, from scratch too.
if ! "$REMORA_ROOT/scripts/image.sh" --out "$TMP/images" --repo "localhost/$PODMAN_PREFIX" \
    --tag test --extra "remora-e2e-tools=$REMORA_ROOT/build/test-upstream,curl,sleep" \
    >"$TMP/tools-image.log" 2>&1; then
    fail "the test image (test-upstream, curl)"
    tail -20 "$TMP/tools-image.log"
    finish
fi

# podman builds its pause image (the pods' infra) from catatonit on first use: made here
# once (pods created at the same time would each build one), removed at exit if this test
# made it
pause_before=$("${PODMAN[@]}" images --noheading --filter reference=localhost/podman-pause -q)
if [[ -z $pause_before ]]; then
    "${PODMAN[@]}" pod create --name "$PODMAN_PREFIX-warmup" --network none >/dev/null 2>&1
    "${PODMAN[@]}" pod rm --force "$PODMAN_PREFIX-warmup" >/dev/null 2>&1
    pause_id=$("${PODMAN[@]}" images --noheading --filter reference=localhost/podman-pause -q)
    [[ -n $pause_id ]] && on_exit "${PODMAN[*]} rmi $pause_id >/dev/null 2>&1"
fi
podman_load remora-proxy "$IMG/remora-proxy.tar" PROXY_REF || { fail "load remora-proxy.tar"; finish; }
podman_load remora-injector "$IMG/remora-injector.tar" INJ_REF || { fail "load remora-injector.tar"; finish; }
podman_load remora-e2e-tools "$TMP/images/remora-e2e-tools.tar" TOOLS_REF ||
    { fail "load the test image"; finish; }

if ! out=$("${PODMAN[@]}" run --rm --network none "$PROXY_REF" --version 2>&1); then
    echo "$out" | tail -5
    skip "podman cannot run a container here (podman run --runtime runc failed)"
fi
pass "podman loads the tarballs and runs the proxy image: $out"

# ---- what is in them ------------------------------------------------------------------------
size_p=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$PROXY_REF")
size_i=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$INJ_REF")
echo "sizes: remora-proxy $size_p bytes, remora-injector $size_i bytes (uncompressed)"
check "proxy image under 12 MB uncompressed ($size_p bytes)" test "$size_p" -lt 12000000
check "injector image under 16 MB uncompressed ($size_i bytes)" test "$size_i" -lt 16000000
for n in remora-proxy remora-injector; do
    ref=$PROXY_REF
    [[ $n == remora-injector ]] && ref=$INJ_REF
    expect_eq "$n: tagged as the manifests name it" \
        "$(archive_tag "$IMG/$n.tar")" \
        "ghcr.io/remora-mesh/$n:0.1.0"
    expect_match "$n: PATH in the image config" \
        "$("${PODMAN[@]}" image inspect --format '{{json .Config.Env}}' "$ref")" \
        'PATH=/usr/local/bin:/usr/bin:/usr/sbin'
    check "$n: packages.txt lists libc6 with its version" \
        grep -qE '^libc6 [0-9]' "$IMG/$n.packages.txt"
done
expect_eq "proxy image: user 1337" \
    "$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$PROXY_REF")" 1337:1337
expect_eq "injector image: user 65532" \
    "$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$INJ_REF")" 65532:65532
check "proxy packages.txt: iptables" grep -qE '^iptables [0-9]' "$IMG/remora-proxy.packages.txt"
for t in iptables-restore iptables-save ip6tables-restore ip6tables-save; do
    out=$("${PODMAN[@]}" run --rm --network none --entrypoint "$t" "$PROXY_REF" --version 2>&1)
    expect_match "proxy image: $t runs (by name, from PATH)" "$out" 'v1\.8.*nf_tables'
done
out=$("${PODMAN[@]}" run --rm --network none --user 0 --cap-drop ALL --cap-add NET_ADMIN,NET_RAW \
    --entrypoint iptables-save "$PROXY_REF" -t nat 2>&1)
expect_match "proxy image: iptables-save reads the nat table (xtables modules present)" "$out" \
    $'\n\\*nat\n:PREROUTING ACCEPT'
out=$("${PODMAN[@]}" run --rm --network none --entrypoint remora-proxy "$PROXY_REF" wait \
    --timeout 1 2>&1)
rc=$?
expect_match "proxy image: \`remora-proxy wait\` by name (nothing listens: exit $rc)" "$rc" '^[1-9]'

# ---- the manifests name these images --------------------------------------------------------
# Every container image in `kubectl kustomize manifests/` (and the sidecar template's) that
# is Remora's is one `make image` built, by the same name. One is not Remora's and is
# named here: the sample app in manifests/samples/ (docs/install.md).
THIRD_PARTY='^nginxinc/nginx-unprivileged:'
INJ_SC=
if kubectl kustomize "$REMORA_ROOT/manifests" >"$TMP/manifests.yaml" 2>"$TMP/kustomize.err" &&
    NODE_PATH=$REMORA_ROOT/test/js/node_modules node -e '
        const y = require("js-yaml"), fs = require("fs");
        console.log(JSON.stringify(y.loadAll(fs.readFileSync(0, "utf8")).filter(Boolean)));' \
        <"$TMP/manifests.yaml" >"$TMP/manifests.json"; then
    { jq -r '.. | objects | (.containers?, .initContainers?) | arrays | .[].image' \
        "$TMP/manifests.json"; jq -r .image "$REMORA_ROOT/manifests/injector/template.json"; } |
        sort -u >"$TMP/manifest-images.txt"
    built=$(for n in remora-proxy remora-injector; do archive_tag "$IMG/$n.tar"; done)
    n_ours=0
    while read -r im; do
        [[ -n $im ]] || continue
        if [[ $im =~ $THIRD_PARTY ]]; then
            echo "note: manifests name a third-party image: $im"
        elif grep -qxF "$im" <<<"$built"; then
            n_ours=$((n_ours + 1))
        else
            fail "manifests name $im, which make image does not build (it builds: ${built//$'\n'/ })"
        fi
    done <"$TMP/manifest-images.txt"
    expect_eq "every Remora image the manifests and the template name is one make image built" \
        "$n_ours" 2
    # how the Deployment runs the injector: the container below is run that way
    INJ_SC=$(jq -c '.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") |
        .spec.template.spec | {pod: (.securityContext // {}),
        c: (.containers[] | select(.name == "injector") | .securityContext // {})}' \
        "$TMP/manifests.json")
else
    fail "kubectl kustomize manifests/ (as JSON): $(head -3 "$TMP/kustomize.err")"
fi
[[ -n $INJ_SC ]] || { fail "the injector Deployment's securityContext in the manifests"; finish; }

# ---- the cluster: the injector from its image ------------------------------------------------
# shellcheck source=../e2e/lib.sh
source "$REMORA_ROOT/test/e2e/lib.sh"
E2E_INJECTOR_REF=$INJ_REF
E2E_INJECTOR_SC=$INJ_SC
E2E_PODMAN_IMAGES=$(jq -n --arg proxy "$PROXY_REF" --arg tools "$TOOLS_REF" '{
    "ghcr.io/remora-mesh/remora-proxy:0.1.0": {ref: $proxy},
    "remora-e2e/app": {ref: $tools, entrypoint: ["test-upstream"]},
    "remora-e2e/toolbox": {ref: $tools, entrypoint: ["sleep"], cmd: ["infinity"]}}')
e2e_cluster || { fail "cluster setup (node namespace, PKI, the injector container)"; finish; }
pass "the injector image serves the webhook over TLS (/healthz, verified against the root)"
echo "injector: $(cat "$E2E/injector.argv")"
ipid=$("${PODMAN[@]}" container inspect --format '{{.State.Pid}}' "$E2E_INJECTOR_CTR")
expect_eq "injector container: runs as UID 65532" \
    "$(awk '/^Uid:/ {print $2}' "/proc/$ipid/status" 2>/dev/null)" 65532
expect_eq "injector container: read-only root filesystem" \
    "$("${PODMAN[@]}" container inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$E2E_INJECTOR_CTR")" true
expect_eq "injector container: no capabilities" \
    "$(awk '/^CapEff:/ {print $2}' "/proc/$ipid/status" 2>/dev/null)" 0000000000000000

SPIFFE=spiffe://cluster.local/ns/shop/sa
cat >"$E2E/b-policy.json" <<EOF
{"default": "deny",
 "rules": [
   {"name": "no-admin", "action": "deny", "to": {"paths": ["/api/admin", "/api/admin/*"]}},
   {"name": "frontend-reads", "action": "allow",
    "from": {"principals": ["$SPIFFE/frontend"]},
    "to": {"methods": ["GET", "HEAD"], "paths": ["/api/*"]}}]}
EOF
e2e_configmap shop/remora-ca-root root.pem "$E2E/pki/root.pem"
e2e_configmap shop/b-policy policy.json "$E2E/b-policy.json"
printf 'b-secret-%s' "$$" >"$E2E/b-secret.txt"
e2e_secret shop/b-secret token "$E2E/b-secret.txt"
manifest() { # NAME SA ANNOTATIONS-JSON CONTAINERS-JSON GRACE
    jq -n --arg name "$1" --arg sa "$2" --argjson ann "$3" --argjson cs "$4" --argjson g "$5" '{
        apiVersion: "v1", kind: "Pod",
        metadata: {name: $name, namespace: "shop", labels: {app: $name}, annotations: $ann},
        spec: {serviceAccountName: $sa, terminationGracePeriodSeconds: $g,
               securityContext: {runAsUser: 1000, runAsGroup: 1000},
               containers: $cs}}' >"$E2E/$1.json"
}
# (sleep as PID 1 ignores SIGTERM: a's deletion waits out its grace period, as in a cluster)
manifest a frontend '{}' '[{"name": "client", "image": "remora-e2e/toolbox"}]' 3
manifest d intruder '{"remora.io/native-sidecar": "true"}' \
    '[{"name": "client", "image": "remora-e2e/toolbox"}]' 3
manifest b backend '{"remora.io/policy": "b-policy"}' '[
  {"name": "app", "image": "remora-e2e/app",
   "args": ["--listen", "0.0.0.0:8080", "--name", "pod-b"],
   "ports": [{"name": "http", "containerPort": 8080}],
   "readinessProbe": {"httpGet": {"path": "/status/200", "port": "http"}, "periodSeconds": 1},
   "volumeMounts": [{"name": "app-secret", "mountPath": "/etc/app-secret", "readOnly": true},
                    {"name": "scratch", "mountPath": "/scratch"}]},
  {"name": "app6", "image": "remora-e2e/app", "args": ["--listen", "[::]:8080", "--name", "pod-b6"]}]' 20
jq '.spec.volumes = [{name: "app-secret", secret: {secretName: "b-secret", defaultMode: 256}},
                     {name: "scratch", emptyDir: {}}]' "$E2E/b.json" >"$E2E/b.json.tmp" &&
    mv "$E2E/b.json.tmp" "$E2E/b.json"
A_IP=10.232.0.21
B_IP=10.232.0.22
D_IP=10.232.0.24
A_IP6=fd32::21
B_IP6=fd32::22
E2E_WAIT=${E2E_WAIT:-90}
check "pod b Ready (podman pod: remora-init, the proxy with a CA-issued cert, the app)" \
    e2e_pod b "$B_IP" "$E2E/b.json" "$B_IP6"
check "pod a Ready" e2e_pod a "$A_IP" "$E2E/a.json" "$A_IP6"
check "pod d Ready (the proxy as a native sidecar: an init container with restartPolicy Always)" \
    e2e_pod d "$D_IP" "$E2E/d.json"
expect_eq "d: the proxy runs as a native sidecar, started before the app" \
    "$(pod_status d '.containers["remora-proxy"].native')" true
PB=$PODMAN_PREFIX-b
expect_eq "b: a podman pod" "$("${PODMAN[@]}" pod exists "$PB" && echo yes)" yes
expect_eq "b: injected" "$(pod_status b .injected)" true
expect_eq "b: remora-init (proxy image) ran to completion" \
    "$(pod_status b '.containers["remora-init"].exitCode')" 0
check "b (dual-stack): remora-init installed IPv4 and IPv6 rules with the image's iptables-restore and ip6tables-restore" \
    grep -q 'capture rules installed (IPv4 and IPv6)' "$E2E/pods/b/remora-init.log"
expect_match "b: remora-init ran with NET_ADMIN and NET_RAW only" \
    "$(cat "$E2E/pods/b/podman-remora-init.argv")" '--cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW'
expect_eq "b: the proxy container runs as UID 1337" \
    "$(awk '/^Uid:/ {print $2}' "/proc/$(podman_ctr_pid b remora-proxy)/status" 2>/dev/null)" 1337
expect_eq "b: the app container runs as UID 1000" \
    "$(awk '/^Uid:/ {print $2}' "/proc/$(podman_ctr_pid b app)/status" 2>/dev/null)" 1000
expect_eq "b: the proxy's root filesystem is read-only, as injected" \
    "$(jq -r '.spec.containers[] | select(.name == "remora-proxy") |
        .securityContext.readOnlyRootFilesystem' "$E2E/pods/b/pod.json") \
$(podman_ctr_field b remora-proxy '{{.HostConfig.ReadonlyRootfs}}')" "true true"
out=$(e2e_exec b app curl -s "file:///etc/app-secret/token")
expect_eq "b: the Secret volume's content in the app container (mode 0400: read as root)" \
    "$("${E2E_POD_PY[@]}" exec --cluster "$E2E/cluster.json" --state "$E2E/pods/b" \
        --container app --user 0 -- curl -s file:///etc/app-secret/token)" "b-secret-$$"
expect_eq "b: ... and not readable by the app's UID 1000 (defaultMode 0400)" "$out" ""
expect_eq "b: the Secret volume is read-only in the container" \
    "$(podman_ctr_field b app '{{range .Mounts}}{{if eq .Destination "/etc/app-secret"}}{{.RW}}{{end}}{{end}}')" false
e2e_exec b app curl -s -o /scratch/hostname file:///etc/hostname
expect_eq "b: the emptyDir is writable by the app (UID 1000): the pod's hostname, copied" \
    "$(cat "$E2E/pods/b/volumes/scratch/hostname" 2>/dev/null)" b
# the admin port, from the app's container as the proxy's user (not captured)
admin() { "${E2E_POD_PY[@]}" exec --cluster "$E2E/cluster.json" --state "$E2E/pods/$1/" \
    --container "$2" --user 1337 -- curl -s -m 5 "http://127.0.0.1:15000$3"; }
expect_match "b: certificate from the injector image's CA for its service account" \
    "$(admin b app /certs)" "\"spiffe_id\": \"$SPIFFE/backend\".*\"source\": \"ca\""

# ---- A -> B through both sidecars -------------------------------------------------------------
body=$(e2e_exec a client curl -s -m 10 "http://$B_IP:8080/api/hello")
expect_match "A -> B (HTTP/1.1): B's app answers" "$body" '"name": *"pod-b"'
expect_match "A -> B: B's app sees A's SPIFFE identity (XFCC: mTLS between the sidecars)" \
    "$body" "\"x-forwarded-client-cert\": *\"By=$SPIFFE/backend;URI=$SPIFFE/frontend\""
expect_match "A -> B: the request reached B's app as sent (method, path)" "$body" \
    '"method": *"GET".*"path": *"/api/hello"'
body=$(e2e_exec a client curl -s -m 10 "http://[$B_IP6]:8080/api/six")
expect_match "A -> B over IPv6 (ip6tables capture in both pods): B's app6 answers" "$body" \
    '"name": *"pod-b6"'
expect_match "A -> B over IPv6: with A's identity (XFCC)" "$body" "URI=$SPIFFE/frontend"
out=$(e2e_exec a client curl -s -m 10 -o /dev/null -w '%{http_version} %{http_code}' \
    --http2-prior-knowledge "http://$B_IP:8080/api/h2")
expect_eq "A -> B (h2c): answered over HTTP/2" "$out" "2 200"
expect_match "A's sidecar originated mTLS" "$(admin a client /stats)" '"tls_handshakes": *[1-9]'

# ---- policy, health ----------------------------------------------------------------------------
code=$(e2e_exec a client curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST \
    "http://$B_IP:8080/api/hello")
expect_eq "policy: POST from frontend denied by default" "$code" 403
out=$(e2e_exec a client curl -s -m 10 -w '\n%{http_code}' "http://$B_IP:8080/api/admin")
expect_eq "policy: GET /api/admin denied" "${out##*$'\n'}" 403
expect_match "policy: the 403 names the deny rule" "$out" no-admin
code=$(e2e_exec d client curl -s -m 10 -o /dev/null -w '%{http_code}' \
    "http://$B_IP:8080/api/hello")
expect_eq "policy: another meshed identity (intruder, native sidecar) is denied" "$code" 403
code=$(ip netns exec "$E2E_NODE" curl -s -m 5 -o /dev/null -w '%{http_code}' \
    -H 'User-Agent: kube-probe/1.30' "http://$B_IP:15020/app-health/app/readyz")
expect_eq "health port: a kubelet probe of the rewritten readiness probe answers 200" "$code" 200
code=$(ip netns exec "$E2E_NODE" curl -s -m 5 -o /dev/null -w '%{http_code}' \
    "http://$B_IP:8080/status/200")
expect_eq "B's app port in plaintext from the node: refused (strict mTLS)" "$code" 000

# ---- podman pod stop drains -------------------------------------------------------------------------
"${PODMAN[@]}" pod stop --time 20 "$PB" >"$TMP/pod-stop.log" 2>&1
expect_eq "podman pod stop b: the proxy exited 0" \
    "$(podman_ctr_field b remora-proxy '{{.State.ExitCode}}')" 0
check "podman pod stop b: the proxy drained (log)" \
    grep -q 'drain: complete' "$E2E/pods/b/remora-proxy.log"
e2e_delete b
e2e_delete a
e2e_delete d
expect_eq "d deleted: its native sidecar exited 0 after the app" \
    "$(pod_status d '.containers["remora-proxy"].exitCode')" 0
expect_eq "deleted: no container of this test's pods is left" \
    "$("${PODMAN[@]}" ps -a --filter "name=^$PODMAN_PREFIX-[abd]-" --format '{{.Names}}' | wc -l)" 0
expect_eq "deleted: no podman pod is left" \
    "$("${PODMAN[@]}" pod ps --filter "name=^$PODMAN_PREFIX-" --format '{{.Name}}' | wc -l)" 0
check "deleted: the pods' network namespaces are gone" \
    bash -c "! ip netns list | grep -q 'rm-e2e-$$-[abd]'"
echo "timing: images ${T_BUILD} s, whole suite $(($(date +%s) - T0)) s"
finish
