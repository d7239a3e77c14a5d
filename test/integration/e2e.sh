#!/usr/bin/env bash
# End to end: pods as network namespaces on one bridge, set up by exactly what
# Kubernetes would run (test/e2e/pod.py: AdmissionReview to remora-injector, the
# returned patch applied by kubectl, the init container's iptables, the containers
# as their securityContext users with the injected env, volumes and args). The
# injector's output is what runs. docs/e2e.md.
#
#   A  shop/frontend, classic sidecar: an unmodified client (UID 1000); dual-stack
#   B  shop/backend,  classic sidecar, strict mTLS, policy ConfigMap, port 9090 excluded;
#                     dual-stack, with apps on [::]:8080 and [::]:9090 as well
#   C  shop/legacy,   no sidecar (remora.io/inject: "false")
#   D  shop/intruder, native sidecar: meshed, but B's policy does not allow it
#   S  shop/slow,     classic sidecar, no policy: a slow server for A's preStop drain
#                     (A has remora.io/termination-drain-duration: 8s)
# Root only (CI runs as root).
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: e2e.sh needs root (network namespaces, iptables, mounts); nothing was run"
    exit 0
fi
for tool in ip setpriv unshare curl jq node kubectl python3; do
    command -v "$tool" >/dev/null || { fail "$tool is not installed (scripts/deps.sh)"; finish; }
done
# shellcheck source=../e2e/lib.sh
source "$REMORA_ROOT/test/e2e/lib.sh"

e2e_cluster || { fail "cluster setup (node namespace, PKI, injector)"; finish; }
pass "cluster: node namespace, bridge, PKI, remora-injector (webhook + CA)"

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

# manifest NAME SA ANNOTATIONS-JSON CONTAINERS-JSON
manifest() {
    jq -n --arg name "$1" --arg sa "$2" --argjson ann "$3" --argjson cs "$4" '{
        apiVersion: "v1", kind: "Pod",
        metadata: {name: $name, namespace: "shop", labels: {app: $name}, annotations: $ann},
        spec: {serviceAccountName: $sa, terminationGracePeriodSeconds: 10,
               securityContext: {runAsUser: 1000, runAsGroup: 1000},
               containers: $cs}}' >"$E2E/$1.json"
}
TOOLBOX='[{"name": "client", "image": "remora-e2e/toolbox"}]'
manifest a frontend '{"remora.io/exclude-outbound-ports": "9090",
                      "remora.io/termination-drain-duration": "8s"}' "$TOOLBOX"
manifest b backend '{"remora.io/policy": "b-policy", "remora.io/exclude-inbound-ports": "9090"}' '[
  {"name": "app", "image": "remora-e2e/app",
   "args": ["--listen", "0.0.0.0:8080", "--name", "pod-b"],
   "ports": [{"name": "http", "containerPort": 8080}],
   "readinessProbe": {"httpGet": {"path": "/status/200", "port": "http"}, "periodSeconds": 1},
   "livenessProbe": {"httpGet": {"path": "/status/204", "port": 8080}}},
  {"name": "plain", "image": "remora-e2e/app",
   "args": ["--listen", "0.0.0.0:9090", "--name", "pod-b-9090"]},
  {"name": "app6", "image": "remora-e2e/app",
   "args": ["--listen", "[::]:8080", "--name", "pod-b6"]},
  {"name": "plain6", "image": "remora-e2e/app",
   "args": ["--listen", "[::]:9090", "--name", "pod-b6-9090"]}]'
manifest c legacy '{"remora.io/inject": "false"}' "$TOOLBOX"
manifest s slow '{"remora.io/opaque-ports": "5432, x"}' '[{"name": "app", "image": "remora-e2e/app",
   "args": ["--listen", "0.0.0.0:8080", "--name", "pod-s"]}]'
manifest d intruder '{"remora.io/native-sidecar": "true"}' "$TOOLBOX"
manifest w chat '{}' '[{"name": "app", "image": "remora-e2e/ws", "args": ["--listen", "0.0.0.0:8080"]}]'

A_IP=10.232.0.11
B_IP=10.232.0.12
C_IP=10.232.0.13
D_IP=10.232.0.14
S_IP=10.232.0.15
W_IP=10.232.0.16
A_IP6=fd32::11
B_IP6=fd32::12
check "pod b Ready (init iptables, proxy with a CA-issued cert, app)" \
    e2e_pod b "$B_IP" "$E2E/b.json" "$B_IP6"
check "pod a Ready" e2e_pod a "$A_IP" "$E2E/a.json" "$A_IP6"
check "pod c (no sidecar) Ready" e2e_pod c "$C_IP" "$E2E/c.json"
check "pod d (native sidecar) Ready" e2e_pod d "$D_IP" "$E2E/d.json"
check "pod s (slow server) Ready" e2e_pod s "$S_IP" "$E2E/s.json"
check "pod w (python3-websockets server) Ready" e2e_pod w "$W_IP" "$E2E/w.json"
expect_eq "s: remora.io/opaque-ports \"5432, x\" became opaque_ports [5432] in the bootstrap its proxy runs with (issue 14)" \
    "$(jq -c '.metadata.annotations["remora.io/bootstrap"] | fromjson | .opaque_ports' "$E2E/pods/s/pod.json")" '[5432]'
check "s: ... and the injector said why x was dropped" \
    grep -qF 'opaque-ports: item "x" is not a port' "$TMP/pod-s.log"

# ---- what the injector made ------------------------------------------------------
expect_eq "b: injected" "$(pod_status b .injected)" true
expect_eq "c: not injected (opted out)" "$(pod_status c .injected)" false
expect_eq "b: remora-init ran to completion" \
    "$(pod_status b '.containers["remora-init"].exitCode')" 0
expect_eq "d: the proxy runs as a native sidecar" \
    "$(pod_status d '.containers["remora-proxy"].native')" true
PROXY_B=$(e2e_proxy_pid b)
expect_eq "b: the proxy runs as UID 1337" \
    "$(awk '/^Uid:/ {print $2}' "/proc/$PROXY_B/status" 2>/dev/null)" 1337
expect_eq "b: the app runs as UID 1000" \
    "$(awk '/^Uid:/ {print $2}' "/proc/$(pod_status b '.containers.app.pid')/status" 2>/dev/null)" 1000
certs=$(e2e_exec b remora-proxy curl -s -m 5 http://127.0.0.1:15000/certs)
expect_match "b: certificate issued by the CA for its service account" "$certs" \
    "\"spiffe_id\": \"$SPIFFE/backend\".*\"source\": \"ca\""
for p in a b; do
    check "$p: dual-stack, remora-init installed IPv6 capture rules too" \
        grep -q 'capture rules installed (IPv4 and IPv6)' "$E2E/pods/$p/remora-init.log"
    dump=$(e2e_exec "$p" remora-proxy curl -s -m 5 http://127.0.0.1:15000/config_dump)
    expect_eq "$p: the proxy bound its IPv6 capture listeners (inbound6, outbound6)" \
        "$(jq -c '[.listeners[] | select(.name | endswith("6")) | .bound_address]' <<<"$dump")" \
        '["[::]:15006","[::1]:15001"]'
done

# ---- A -> B through both sidecars ---------------------------------------------------
# curl in A's client container: UID 1000, no proxy settings, B's pod IP and app port
body=$(e2e_exec a client curl -s -m 10 "http://$B_IP:8080/api/hello")
expect_match "A -> B (HTTP/1.1): B's app answers" "$body" '"name": *"pod-b"'
expect_match "A -> B: B's app sees A's SPIFFE identity (XFCC, mTLS between the sidecars)" \
    "$body" "\"x-forwarded-client-cert\": *\"By=$SPIFFE/backend;URI=$SPIFFE/frontend\""
body=$(e2e_exec a client curl -s -m 10 --http2-prior-knowledge "http://$B_IP:8080/api/h2")
expect_match "A -> B (h2c): B's app answers" "$body" '"name": *"pod-b"'
expect_match "A -> B (h2c): XFCC" "$body" "URI=$SPIFFE/frontend"
out=$(e2e_exec a client curl -s -m 10 -o /dev/null -w '%{http_version} %{http_code}' \
    --http2-prior-knowledge "http://$B_IP:8080/api/h2")
expect_eq "A -> B (h2c): the client spoke HTTP/2" "$out" "2 200"
stats_a=$(e2e_exec a remora-proxy curl -s -m 5 http://127.0.0.1:15000/stats)
expect_match "A's sidecar originated mTLS" "$stats_a" '"tls_handshakes": *[1-9]'
# WebSocket between pods (issue 19): python3-websockets in A's client container to W's app,
# through both sidecars (extended CONNECT over the mesh's HTTP/2 + mTLS)
out=$(e2e_exec a client timeout 60 /usr/bin/python3 "$REMORA_ROOT/test/tools/ws.py" client \
    "ws://$W_IP:8080" echo big ping close 2>&1)
expect_eq "A -> W (WebSocket through both sidecars): echo, 1 MiB, ping, close code" \
    "$(grep -c '^ok ' <<<"$out")" 4
grep -q '^FAIL' <<<"$out" && echo "$out"

# ---- A -> B over IPv6 ------------------------------------------------------------------
# The same client, B's IPv6 address: ip6tables sends it to A's outbound6 ([::1]:15001,
# IP6T_SO_ORIGINAL_DST), mTLS to B's inbound6 ([::]:15006), which forwards to
# [::1]:8080: app6 (pod-b6), which only listens on IPv6 (test-upstream sets IPV6_V6ONLY)
body=$(e2e_exec a client curl -s -m 10 "http://[$B_IP6]:9090/api/direct6")
expect_match "IPv6 routing: A -> B's excluded port 9090 over IPv6 is answered by B's IPv6 app" \
    "$body" '"name": *"pod-b6-9090"'
if [[ $body == *x-forwarded-client-cert* ]]; then
    fail "excluded port 9090 over IPv6: no sidecar on the way (XFCC present)"
else
    pass "excluded port 9090 over IPv6: no sidecar on the way (no XFCC)"
fi
stats_a=$(e2e_exec a remora-proxy curl -s -m 5 http://127.0.0.1:15000/stats)
body=$(e2e_exec a client curl -s -m 10 "http://[$B_IP6]:8080/api/hello")
expect_match "A -> B over IPv6: B's IPv6 app answers (inbound6 forwards to [::1]:8080)" \
    "$body" '"name": *"pod-b6"'
expect_match "A -> B over IPv6: B's app sees A's SPIFFE identity (XFCC, mTLS between the sidecars)" \
    "$body" "\"x-forwarded-client-cert\": *\"By=$SPIFFE/backend;URI=$SPIFFE/frontend\""
stats_a2=$(e2e_exec a remora-proxy curl -s -m 5 http://127.0.0.1:15000/stats)
expect_eq "A -> B over IPv6: A's sidecar counted the connection (downstream_cx_total +1)" \
    "$(jq .downstream_cx_total <<<"$stats_a2")" "$(jq '.downstream_cx_total + 1' <<<"$stats_a")"
code=$(e2e_exec a client curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST \
    "http://[$B_IP6]:8080/api/hello")
expect_eq "policy over IPv6: POST from frontend denied by default" "$code" 403

# ---- B's policy -----------------------------------------------------------------------
code=$(e2e_exec a client curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST \
    "http://$B_IP:8080/api/hello")
expect_eq "policy: POST from frontend denied by default" "$code" 403
out=$(e2e_exec a client curl -s -m 10 -w '\n%{http_code}' "http://$B_IP:8080/api/admin")
expect_eq "policy: GET /api/admin denied" "${out##*$'\n'}" 403
expect_match "policy: the 403 names the deny rule" "$out" no-admin
code=$(e2e_exec a client curl -s -m 10 -o /dev/null -w '%{http_code}' \
    "http://$B_IP:8080/other")
expect_eq "policy: a path outside the allow rule is denied" "$code" 403
code=$(e2e_exec d client curl -s -m 10 -o /dev/null -w '%{http_code}' \
    "http://$B_IP:8080/api/hello")
expect_eq "policy: another meshed identity (intruder, native sidecar) is denied" "$code" 403

# ---- exclusions, plaintext -----------------------------------------------------------
stats_a=$(e2e_exec a remora-proxy curl -s -m 5 http://127.0.0.1:15000/stats)
body=$(e2e_exec a client curl -s -m 10 "http://$B_IP:9090/api/direct")
expect_match "excluded port 9090: B's app answers" "$body" '"name": *"pod-b-9090"'
if [[ $body == *x-forwarded-client-cert* ]]; then
    fail "excluded port 9090: no sidecar on the way (XFCC present)"
else
    pass "excluded port 9090: no sidecar on the way (no XFCC)"
fi
stats_a2=$(e2e_exec a remora-proxy curl -s -m 5 http://127.0.0.1:15000/stats)
expect_eq "excluded port 9090: A's sidecar saw no new connection" \
    "$(jq .downstream_cx_total <<<"$stats_a2")" \
    "$(jq .downstream_cx_total <<<"$stats_a")"
e2e_exec c client curl -s -m 5 -o /dev/null "http://$B_IP:8080/api/hello"
rc=$?
expect_match "pod without a sidecar -> strict pod in plaintext: refused (curl exit $rc)" "$rc" \
    '^(52|56|7|28)$'
body=$(e2e_exec c client curl -s -m 10 "http://$B_IP:9090/api/plain")
expect_match "pod without a sidecar -> excluded port: answered" "$body" 'pod-b-9090'

# ---- kubelet -------------------------------------------------------------------------
code=$(ip netns exec "$E2E_NODE" curl -s -m 5 -o /dev/null -w '%{http_code}' \
    -H 'User-Agent: kube-probe/1.30' "http://$B_IP:15020/app-health/app/readyz")
expect_eq "kubelet-style plaintext probe of a rewritten readiness probe: 200" "$code" 200
code=$(ip netns exec "$E2E_NODE" curl -s -m 5 -o /dev/null -w '%{http_code}' \
    -H 'User-Agent: kube-probe/1.30' "http://[$B_IP6]:15020/app-health/app/readyz")
expect_eq "... the same probe to B's IPv6 address (health.address6 in the bootstrap): 200" "$code" 200
code=$(ip netns exec "$E2E_NODE" curl -s -m 5 -o /dev/null -w '%{http_code}' \
    "http://$B_IP:15020/app-health/app/livez")
expect_eq "kubelet-style plaintext probe of a rewritten liveness probe: the app's 204" "$code" 204
code=$(ip netns exec "$E2E_NODE" curl -s -m 5 -o /dev/null -w '%{http_code}' \
    "http://$B_IP:8080/status/200")
expect_eq "kubelet probing B's app port directly (not rewritten) would fail: strict mTLS" "$code" 000
expect_eq "b: Ready through its rewritten probes" "$(pod_status b .ready)" true

# ---- deleting a pod -------------------------------------------------------------------
e2e_delete b
expect_eq "b deleted: the proxy exited 0" "$(pod_status b '.containers["remora-proxy"].exitCode')" 0
check "b deleted: the proxy drained (log)" grep -q 'drain: complete' "$E2E/pods/b/remora-proxy.log"
expect_eq "b deleted: phase" "$(pod_status b .phase)" Deleted
check "b deleted: its namespace is gone" bash -c "! ip netns list | grep -q rm-e2e-$$-b"
check "b deleted: none of its processes is left" bash -c \
    "for p in \$(cat '$E2E/pods/b/pids'); do [[ -e /proc/\$p ]] && exit 1; done; exit 0"
code=$(e2e_exec a client curl -s -m 9 -o /dev/null -w '%{http_code}' "http://$B_IP:8080/api/hello")
expect_match "A -> deleted B: an error from A's sidecar (connect timeout), not a hang" "$code" \
    '^(502|503|504)$'

# ---- issue 14: a classic sidecar's preStop keeps a terminating pod's requests alive ------
# A's app has a request in flight (6.5 s, longer than the proxy's own 5 s drain bound)
# when A is deleted: kubelet sends the app its SIGTERM at once, runs the proxy's preStop
# (remora-proxy wait --drain, 8 s from the annotation) and signals the proxy only after it.
expect_eq "a: the proxy has the preStop drain hook, bounded by the annotation" \
    "$(jq -c '.spec.containers[] | select(.name == "remora-proxy") | .lifecycle.preStop.exec.command' "$E2E/pods/a/pod.json")" \
    '["remora-proxy","wait","--drain","--timeout-ms","8000"]'
e2e_exec a client curl -s -m 30 -o "$E2E/slow.body" -w '%{http_code}' "http://$S_IP:8080/delay/6500" \
    >"$E2E/slow.code" 2>"$E2E/slow.err" &
slow=$!
busy=
a_busy() { busy=$(e2e_exec a remora-proxy curl -s -m 2 http://127.0.0.1:15020/healthz/idle); [[ $busy == busy* ]]; }
wait_until 10 a_busy
expect_match "a: its request to S is in flight (/healthz/idle: busy)" "$busy" '^busy: 1 requests'
t0=$(date +%s%N)
e2e_delete a
ms=$((($(date +%s%N) - t0) / 1000000))
wait "$slow"
expect_eq "a deleted while its app's slow request was in flight: the request completed (200)" \
    "$(cat "$E2E/slow.code")" 200
expect_match "a: the app got SIGTERM at once, the proxy's preStop waited for the request" \
    "$(pod_status a '.events | join("\n")')" 'remora-proxy: preStop remora-proxy wait --drain --timeout-ms 8000'
pre=$(pod_status a '.containers["remora-proxy"].preStop.ms')
if [[ $pre =~ ^[0-9]+$ ]] && ((pre > 1000 && pre < 8000)); then
    pass "a: the preStop returned once the request was done ($pre ms; bound 8000; deletion took $ms ms)"
else
    fail "a: preStop took '$pre' ms (want the request's time, under the 8 s bound)"
fi
check "a: the preStop says nothing was left in flight" grep -q 'nothing in flight after' "$E2E/pods/a/remora-proxy-prestop.log"
for p in c d s; do e2e_delete "$p"; done
expect_eq "a deleted: the proxy exited 0" "$(pod_status a '.containers["remora-proxy"].exitCode')" 0
expect_eq "d deleted (native sidecar, stopped after the app): the proxy exited 0" \
    "$(pod_status d '.containers["remora-proxy"].exitCode')" 0
check "injector still running" alive "$E2E_INJECTOR_PID"
# shellcheck disable=SC2154 # _fails: test/lib.sh
if ((_fails > 0)); then # what the pods said, for whoever reads the CI log
    for f in "$E2E"/pods/*/*.log "$TMP"/pod-*.log "$TMP/injector.log"; do
        [[ -f $f ]] && { echo "---- $f"; tail -15 "$f"; }
    done
fi
for f in "$E2E"/pods/*/remora-proxy.log; do
    if grep -q 'ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer' "$f"; then
        fail "sanitizer report in $f"
    fi
done
finish
