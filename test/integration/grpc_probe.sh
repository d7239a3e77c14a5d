#!/usr/bin/env bash
# Issue 19: kubelet gRPC probes. The injector (over HTTPS) rewrites a pod's
# `grpc:` probes to httpGet probes of the health port with the targets in
# REMORA_APP_GRPC_PROBERS; remora-proxy started with that env answers them by
# running grpc.health.v1.Health/Check against a real gRPC server (Debian's
# python3-grpcio, test/tools/grpc_health_server.py) over h2c: 200 on SERVING,
# 503 for every other answer, an app without the health service, an app that
# does not answer within the probe's timeout, and an app that is down.
source "$(dirname "$0")/../lib.sh"
PY=/usr/bin/python3 # Debian's interpreter: python3-grpcio is installed for it
if ! "$PY" -c 'import grpc' 2>/dev/null; then
    fail "python3-grpcio is not installed for $PY (scripts/deps.sh)"
    finish
fi

GPORT=$(free_port)
echo SERVING >"$TMP/state"
bg grpc "$PY" "$REMORA_ROOT/test/tools/grpc_health_server.py" "$GPORT" "$TMP/state"
GPID=$LASTPID
check "the gRPC server listens" wait_until 15 listen_port "$TMP/grpc.log"

# ---- the injector rewrites the probes ---------------------------------------------------------
mkdir -p "$TMP/ipki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/ipki/key.pem" -out "$TMP/ipki/cert.pem" -subj "/CN=injector" \
    -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null
IPORT=$(free_port)
jq -n --arg port "$IPORT" --arg cert "$TMP/ipki/cert.pem" --arg key "$TMP/ipki/key.pem" '{
    webhook: {address: ("127.0.0.1:" + $port), cert_file: $cert, key_file: $key},
    ca: {audience: "remora-ca", ttl_seconds: 86400}, trust_domain: "cluster.local"}' >"$TMP/injector.json"
bg injector "$INJECTOR" -c "$TMP/injector.json"
IPID=$LASTPID
check "injector listens" wait_port "$IPORT"
jq -n --argjson port "$GPORT" '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
    request: {uid: "uid-grpc", kind: {group: "", version: "v1", kind: "Pod"},
              resource: {group: "", version: "v1", resource: "pods"}, namespace: "shop",
              operation: "CREATE", object: {apiVersion: "v1", kind: "Pod",
                metadata: {name: "api-1", namespace: "shop"},
                spec: {containers: [{name: "api", image: "api",
                  ports: [{name: "grpc", containerPort: $port}],
                  livenessProbe: {grpc: {port: $port}, timeoutSeconds: 2, periodSeconds: 10},
                  readinessProbe: {grpc: {port: $port, service: "shop.Cart"}, timeoutSeconds: 2}}]}}}}' \
    >"$TMP/review.json"
code=$(curl -sS --cacert "$TMP/ipki/cert.pem" --max-time 10 -o "$TMP/resp.json" -w '%{http_code}' \
    -H 'Content-Type: application/json' --data-binary "@$TMP/review.json" "https://127.0.0.1:$IPORT/inject")
expect_eq "injector: HTTP 200, allowed, a patch" \
    "$code:$(jq -r '[.response.allowed, .response.patchType] | map(tostring) | join(" ")' "$TMP/resp.json")" \
    "200:true JSONPatch"
jq -r '.response.patch | @base64d' "$TMP/resp.json" >"$TMP/patch.json"
jq '.request.object' "$TMP/review.json" >"$TMP/pod.json"
if kubectl patch --local --type=json -f "$TMP/pod.json" -p "$(cat "$TMP/patch.json")" -o json \
    >"$TMP/patched.json" 2>"$TMP/kubectl.err"; then
    pass "kubectl applies the patch"
else
    fail "kubectl patch: $(head -c 300 "$TMP/kubectl.err")"; finish
fi
app() { jq -c --arg f "$1" '.spec.containers[] | select(.name == "api") | .[$f]' "$TMP/patched.json"; }
expect_eq "the liveness probe is an httpGet of the health port, its other fields kept" "$(app livenessProbe)" \
    '{"httpGet":{"path":"/app-health/api/livez","port":15020,"scheme":"HTTP"},"periodSeconds":10,"timeoutSeconds":2}'
expect_eq "the readiness probe too" "$(app readinessProbe)" \
    '{"httpGet":{"path":"/app-health/api/readyz","port":15020,"scheme":"HTTP"},"timeoutSeconds":2}'
GENV=$(jq -r '.spec.containers[] | select(.name == "remora-proxy") | .env[]
    | select(.name == "REMORA_APP_GRPC_PROBERS") | .value' "$TMP/patched.json")
expect_eq "REMORA_APP_GRPC_PROBERS holds the original targets" "$(jq -cS . <<<"$GENV")" \
    "{\"/app-health/api/livez\":{\"grpc\":{\"port\":$GPORT},\"timeoutSeconds\":2},\"/app-health/api/readyz\":{\"grpc\":{\"port\":$GPORT,\"service\":\"shop.Cart\"},\"timeoutSeconds\":2}}"
stop_pid "$IPID"; expect_eq "injector exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean (injector)" "$TMP/injector.log"

# ---- the proxy answers them --------------------------------------------------------------------
P_ADMIN=$(free_port); P_HEALTH=$(free_port); P_IN=$(free_port)
cat >"$TMP/p.json" <<JSON
{"admin": {"address": "127.0.0.1:$P_ADMIN"}, "health": {"address": "127.0.0.1:$P_HEALTH"},
 "listeners": [{"name": "in", "address": "127.0.0.1:$P_IN", "direction": "inbound"}]}
JSON
# a broken entry and one for a port nobody listens on, next to the injector's
DOWN=$(free_port)
GENV2=$(jq -c --argjson down "$DOWN" '. + {"/app-health/down/livez": {grpc: {port: $down}},
    "/app-health/bad/livez": {grpc: {port: "x"}}}' <<<"$GENV")
REMORA_APP_GRPC_PROBERS=$GENV2 ADMIN_PORT=$P_ADMIN start_proxy p "$TMP/p.json" || { cat "$TMP/p.log"; finish; }
PPID_=$PROXY_PID
probe() { # PATH: sets CODE and BODY, as kubelet's httpGet would see them
    BODY=$(curl -s -m 15 -w '\n%{http_code}' "http://127.0.0.1:$P_HEALTH$1")
    CODE=${BODY##*$'\n'}; BODY=${BODY%$'\n'*}; BODY=${BODY%$'\n'}
}
probe /app-health/api/livez
expect_eq "SERVING -> 200" "$CODE:$BODY" "200:gRPC health check: SERVING"
: >"$TMP/state.requests"
probe /app-health/api/readyz
expect_eq "readiness (service shop.Cart), SERVING -> 200" "$CODE" 200
expect_eq "... the app was asked about service shop.Cart" "$(cat "$TMP/state.requests")" "shop.Cart"
for s in NOT_SERVING UNKNOWN SERVICE_UNKNOWN; do
    echo "$s" >"$TMP/state"
    probe /app-health/api/livez
    expect_eq "$s -> 503 naming it" "$CODE:$BODY" "503:gRPC health check: $s"
done
echo UNIMPLEMENTED >"$TMP/state"
probe /app-health/api/livez
expect_match "an app without the health service -> 503, grpc-status 12" "$CODE:$BODY" \
    '^503:gRPC health check: grpc-status 12 \(the app does not serve grpc.health.v1.Health\)'
echo HANG >"$TMP/state"
t0=${EPOCHREALTIME//[!0-9]/}
probe /app-health/api/livez
ms=$(( (${EPOCHREALTIME//[!0-9]/} - t0) / 1000 ))
expect_eq "an app that does not answer -> 503 at the probe's timeoutSeconds" "$CODE:$BODY" \
    "503:gRPC health check: no answer from 127.0.0.1:$GPORT within 2000 ms"
check "... after about 2 s (${ms} ms), not kubelet's own timeout" test "$ms" -ge 1900 -a "$ms" -lt 8000
echo SERVING >"$TMP/state"
probe /app-health/down/livez
expect_match "an app that is down -> 503" "$CODE:$BODY" "^503:gRPC health check: .*127.0.0.1:$DOWN"
probe /app-health/bad/livez
expect_eq "a malformed entry answers 404 (kubelet: failure)" "$CODE" 404
check "... and was logged, naming it" grep -q 'REMORA_APP_GRPC_PROBERS\["/app-health/bad/livez"\]: grpc.port is not a port number' "$TMP/p.log"

# 40 probes at once, while the app is slow for some (HANG is per check: flip it back)
echo SERVING >"$TMP/state"
for i in $(seq 1 40); do
    curl -s -m 15 -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$P_HEALTH/app-health/api/livez" &
done >"$TMP/many.txt"
wait_many() { [[ $(wc -l <"$TMP/many.txt") -ge 40 ]]; }
wait_until 20 wait_many
expect_eq "40 concurrent probes: all 200" "$(sort "$TMP/many.txt" | uniq -c | tr -s ' ')" " 40 200"

stop_pid "$GPID"
probe /app-health/api/livez
expect_match "the gRPC server stopped -> 503" "$CODE:$BODY" "^503:gRPC health check: "
check "the proxy is still alive" alive "$PPID_"
stop_pid "$PPID_"; expect_eq "the proxy exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean (proxy)" "$TMP/p.log"
finish
