#!/usr/bin/env bash
# gRPC through the sidecars (docs/grpc.md), with Debian's python3-grpcio on both ends
# (test/tools/grpc_peer.py: a real gRPC server and client, no generated code).
#
#   grpc client -> A (outbound, mesh) --mTLS h2--> B (inbound, strict, policy) --h2c--> grpc app
#   grpc client / curl -> C (outbound, plaintext) --h2c--> grpc app / test-upstream
#
# Unary, server streaming, bidirectional streaming (10,000 messages), 4 MB messages, every
# status code passed through untouched, deadlines (the proxy's route timeout answers
# DEADLINE_EXCEEDED; grpc-timeout bounds the request), retries.on "unavailable" (counted at
# the app), a policy denial seen as PERMISSION_DENIED naming the rule, no endpoint seen as
# UNAVAILABLE, and grpc_status in remora_requests_total.
source "$(dirname "$0")/../lib.sh"
PY=/usr/bin/python3 # Debian's python, which has python3-grpcio
PEER=("$PY" "$REMORA_ROOT/test/tools/grpc_peer.py")
if ! "$PY" -c 'import grpc' 2>/dev/null; then
    fail "python3-grpcio is not installed (scripts/deps.sh)"
    finish
fi
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || exit 1
wl() { "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --spiffe-id "$1" \
        --out-cert "$2" --out-key "$3" >/dev/null; }
wl spiffe://cluster.local/ns/shop/sa/frontend "$D/a.pem" "$D/a-key.pem" || exit 1
wl spiffe://cluster.local/ns/shop/sa/web "$D/b.pem" "$D/b-key.pem" || exit 1

# ---- the gRPC app and a plain h2 upstream -------------------------------------------------
bg app "${PEER[@]}" server "$TMP/app.port"
wait_until 20 test -s "$TMP/app.port" || { fail "grpc app did not start"; cat "$TMP/app.log"; finish; }
APP=$(cat "$TMP/app.port")
start_upstream plain --h2 || exit 1
PLAIN=$UP_PORT

A_ADMIN=$(free_port); A_OUT=$(free_port); B_ADMIN=$(free_port); B_IN=$(free_port)
C_ADMIN=$(free_port); C_APP=$(free_port); C_PLAIN=$(free_port); C_DEAD=$(free_port); DEAD=$(free_port)
cat >"$TMP/routes.json" <<JSON
{"routes": [
  {"name": "flaky", "match": {"host": "flaky.test"},
   "retries": {"attempts": 3, "on": ["unavailable", "connect-failure"], "backoff_base_ms": 1},
   "endpoints": [{"address": "127.0.0.1:$B_IN"}]},
  {"name": "short", "match": {"host": "short.test"}, "timeout_ms": 300,
   "endpoints": [{"address": "127.0.0.1:$B_IN"}]},
  {"name": "noep", "match": {"host": "noep.test"},
   "endpoints": [{"address": "127.0.0.1:$DEAD"}]}]}
JSON
cat >"$TMP/policy.json" <<JSON
{"default": "allow",
 "rules": [{"name": "no-secrets", "action": "deny", "to": {"paths": ["/remora.Test/Secret"]}}]}
JSON
cat >"$TMP/a.json" <<JSON
{"admin": {"address": "127.0.0.1:$A_ADMIN"},
 "routes_file": "$TMP/routes.json",
 "listeners": [
   {"name": "outbound", "address": "127.0.0.1:$A_OUT", "direction": "outbound",
    "upstream": "127.0.0.1:$B_IN", "tls": "mesh"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "frontend",
              "cert_file": "$D/a.pem", "key_file": "$D/a-key.pem", "bundle_file": "$D/root.pem"}}
JSON
cat >"$TMP/b.json" <<JSON
{"admin": {"address": "127.0.0.1:$B_ADMIN"},
 "policy_file": "$TMP/policy.json",
 "listeners": [
   {"name": "inbound", "address": "127.0.0.1:$B_IN", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "strict", "upstream_protocol": "h2"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
              "cert_file": "$D/b.pem", "key_file": "$D/b-key.pem", "bundle_file": "$D/root.pem"}}
JSON
cat >"$TMP/c.json" <<JSON
{"admin": {"address": "127.0.0.1:$C_ADMIN"},
 "limits": {"request_timeout_ms": 10000},
 "listeners": [
   {"name": "c-app", "address": "127.0.0.1:$C_APP", "direction": "outbound",
    "upstream": "127.0.0.1:$APP", "upstream_protocol": "h2"},
   {"name": "c-plain", "address": "127.0.0.1:$C_PLAIN", "direction": "outbound",
    "upstream": "127.0.0.1:$PLAIN", "upstream_protocol": "h2"},
   {"name": "c-dead", "address": "127.0.0.1:$C_DEAD", "direction": "outbound",
    "upstream": "127.0.0.1:$DEAD", "upstream_protocol": "h2"}]}
JSON
ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || exit 1
BPID=$PROXY_PID
ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || exit 1
APID=$PROXY_PID
ADMIN_PORT=$C_ADMIN start_proxy c "$TMP/c.json" || exit 1
CPID=$PROXY_PID

gc() { "${PEER[@]}" client "$@"; }
field() { jq -r "$1" <<<"$2"; }
count() { field .reply "$(gc 127.0.0.1:$APP count "$1")"; }

for path in "A -> B:127.0.0.1:$A_OUT" "C:127.0.0.1:$C_APP"; do
    name=${path%%:*}; t=${path#*:}
    out=$(gc "$t" echo "hello grpc")
    expect_eq "$name: unary call" "$(field '.code + " " + .reply' "$out")" "OK hello grpc"
    out=$(gc "$t" stream 1000)
    expect_eq "$name: server streaming, 1000 messages in order" "$(field '.code + " " + (.n|tostring)' "$out")" "OK 1000"
    t0=$EPOCHREALTIME
    out=$(gc "$t" bidi 10000 --timeout 120)
    dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%d", (b - a) * 1000}')
    expect_eq "$name: bidirectional streaming, 10,000 messages echoed in order (${dt} ms)" \
        "$(field '.code + " " + (.n|tostring)' "$out")" "OK 10000"
    out=$(gc "$t" big 4194304 --timeout 60)
    check "$name: a 4 MB message both ways, intact" \
        test "$(field '.code + " " + (.len|tostring) + " " + (.sent_sha == .got_sha|tostring)' "$out")" = "OK 4194304 true"
    out=$(gc "$t" statuses)
    want=$(for c in $(seq 1 16); do printf '"%d": "%d app says %d", ' "$c" "$c" "$c"; done)
    got=$(jq -r '.statuses | to_entries | map("\"\(.key)\": \"\(.value)\", ") | join("")' <<<"$out")
    expect_eq "$name: statuses 1..16 from the app reach the client untouched (code and message)" "$got" "$want"
    out=$(gc "$t" slow 3000 --timeout 0.5)
    expect_eq "$name: the client's deadline ends a slow call with DEADLINE_EXCEEDED" "$(field .code "$out")" DEADLINE_EXCEEDED
done

# ---- retries.on "unavailable" (trailers-only UNAVAILABLE from the app) ----------------------
n0=$(count Flaky)
out=$(gc 127.0.0.1:$A_OUT flaky k1 --authority flaky.test)
expect_eq "retries.on unavailable: the client sees the second try's answer" "$(field '.code + " " + .reply' "$out")" "OK ok k1"
expect_eq "... and the app received the call twice" "$(( $(count Flaky) - n0 ))" 2
n0=$(count Flaky)
out=$(gc 127.0.0.1:$A_OUT flaky k2)
expect_eq "without a route naming it, UNAVAILABLE goes to the client" "$(field '.code + " " + .details' "$out")" "UNAVAILABLE first call fails"
expect_eq "... after one call at the app" "$(( $(count Flaky) - n0 ))" 1
n0=$(count Status)
out=$(gc 127.0.0.1:$A_OUT status 13 --authority flaky.test)
expect_eq "a status the route does not name is not retried" "$(field '.code + " " + .details' "$out")" "INTERNAL app says 13"
expect_eq "... one call at the app" "$(( $(count Status) - n0 ))" 1
n0=$(count Stream)
out=$(gc 127.0.0.1:$A_OUT stream 50 --authority flaky.test)
expect_eq "a streamed answer through a retrying route is whole" "$(field '.code + " " + (.n|tostring)' "$out")" "OK 50"
expect_eq "... from one call" "$(( $(count Stream) - n0 ))" 1
stats=$(curl -s "http://127.0.0.1:$A_ADMIN/metrics")
expect_match "the retry is counted" "$stats" 'remora_retries_by_reason_total\{reason="retry_on"\} [1-9]'

# ---- deadlines made by the proxy ----------------------------------------------------------------
t0=$EPOCHREALTIME
out=$(gc 127.0.0.1:$A_OUT slow 10000 --timeout 30 --authority short.test)
dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%d", (b - a) * 1000}')
expect_eq "the route's timeout_ms (300 ms, smaller than the client's 30 s) answers DEADLINE_EXCEEDED" \
    "$(field '.code + " " + .details' "$out")" "DEADLINE_EXCEEDED upstream request timeout"
check "... well before the app's 10 s (${dt} ms, client start-up included)" test "$dt" -lt 8000
h2h() { curl -s --http2-prior-knowledge -X POST -o /dev/null -D - -m 10 -H 'content-type: application/grpc' -H 'te: trailers' "$@"; }
t0=$EPOCHREALTIME
hdrs=$(h2h -H 'grpc-timeout: 200m' "http://127.0.0.1:$C_PLAIN/delay/6000")
dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%d", (b - a) * 1000}')
expect_match "grpc-timeout 200m bounds a request to a slow upstream: HTTP 200, trailers-only grpc-status 4" \
    "$hdrs" $'HTTP/2 200.*content-type: application/grpc.*grpc-status: 4\r\n.*grpc-message: upstream request timeout'
check "... after about 200 ms, not the upstream's 6 s nor the listener's 10 s (${dt} ms)" test "$dt" -lt 5000
hdrs=$(h2h -H 'grpc-timeout: 1S' "http://127.0.0.1:$C_PLAIN/delay/100")
expect_match "a grpc-timeout longer than the answer takes changes nothing" "$hdrs" '^HTTP/2 200'
[[ $hdrs == *grpc-status* ]] && fail "... but a grpc-status was added" || pass "... and adds no grpc-status"
hdrs=$(h2h -H 'grpc-timeout: 12x' "http://127.0.0.1:$C_PLAIN/delay/100")
expect_match "a malformed grpc-timeout is refused as INTERNAL naming it" "$hdrs" \
    $'HTTP/2 200.*grpc-status: 13\r\n.*grpc-message: malformed grpc-timeout'
code=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}' -m 5 -H 'grpc-timeout: 12x' "http://127.0.0.1:$C_PLAIN/hello")
expect_eq "grpc-timeout means nothing to a request that is not gRPC" "$code" 200

# ---- errors the proxy makes are gRPC errors ---------------------------------------------------
n0=$(count Secret)
out=$(gc 127.0.0.1:$A_OUT secret)
expect_eq "a policy denial is PERMISSION_DENIED naming the rule" "$(field '.code + " " + .details' "$out")" \
    "PERMISSION_DENIED RBAC: access denied by rule no-secrets"
expect_eq "... and never reached the app" "$(count Secret)" "$n0"
out=$(gc 127.0.0.1:$A_OUT echo x --authority noep.test)
expect_eq "no endpoint (connection refused) is UNAVAILABLE" "$(field '.code + " " + .details' "$out")" \
    "UNAVAILABLE upstream connect error: connection refused"
out=$(gc 127.0.0.1:$C_DEAD echo x)
expect_eq "... also through a single sidecar" "$(field '.code + " " + .details' "$out")" \
    "UNAVAILABLE upstream connect error: connection refused"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: noep.test' "http://127.0.0.1:$A_OUT/")
expect_eq "a request that is not gRPC still gets the HTTP 503" "$code" 503
hdrs=$(h2h -H 'content-type: application/grpc+proto' "http://127.0.0.1:$C_DEAD/x")
expect_match "application/grpc+proto is gRPC too (percent-encoded grpc-message)" "$hdrs" \
    $'grpc-status: 14\r\n.*grpc-message: upstream connect error: connection refused\r\n'

# ---- metrics ------------------------------------------------------------------------------------
m=$(curl -s "http://127.0.0.1:$A_ADMIN/metrics")
expect_match "remora_requests_total carries grpc_status for gRPC (OK)" "$m" \
    'remora_requests_total\{listener="outbound",direction="outbound",method_class="write",code="200",grpc_status="0"\} [1-9]'
expect_match "... UNAVAILABLE made by the proxy" "$m" 'code="200",grpc_status="14"\} [1-9]'
expect_match "... PERMISSION_DENIED made by the other sidecar" "$m" 'code="200",grpc_status="7"\} [1-9]'
expect_match "... DEADLINE_EXCEEDED" "$m" 'code="200",grpc_status="4"\} [1-9]'
expect_match "... statuses from the app" "$m" 'code="200",grpc_status="16"\} 1'
expect_match "requests that are not gRPC have no grpc_status" "$m" 'method_class="read",code="503"\} 1'

for p in "a $APID" "b $BPID" "c $CPID"; do
    set -- $p
    check "proxy $1 still running" alive "$2"
    stop_pid "$2"
    expect_sanitizers_clean "proxy $1: no sanitizer report" "$TMP/$1.log"
done
finish
