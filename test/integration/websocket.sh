#!/usr/bin/env bash
# WebSocket and HTTP/1.1 Upgrade through the proxy (docs/proxy.md "Upgrade and the
# tunnel after 101"). Real peers nobody here wrote: Debian's python3-websockets
# (test/tools/ws.py) as client and server; raw sockets for the hostile cases, with
# what reached the app checked byte for byte.
#   plaintext path: client -> inbound listener (tls disabled) -> app
#   an h2 client's extended CONNECT (python3-h2: test/tools/h2_ws.py) -> the same listener -> app
#   mesh path: client -> A (outbound, mesh) -> extended CONNECT over h2/mTLS -> B (strict) -> app
source "$(dirname "$0")/../lib.sh"
WS="/usr/bin/python3 $REMORA_ROOT/test/tools/ws.py"
/usr/bin/python3 -c 'import websockets' 2>/dev/null ||
    { fail "python3-websockets is not installed (scripts/deps.sh)"; finish; }

# start_tool NAME ARGS...: a ws.py server on a kernel-chosen port; sets TOOL_PORT
start_tool() {
    local name=$1; shift
    bg "$name" $WS "$@"
    wait_until 10 listen_port "$TMP/$name.log" || { fail "$name: no port"; return 1; }
    TOOL_PORT=$LISTEN_PORT
}
start_tool app server --headers "$TMP/app-headers.json" || finish
APP=$TOOL_PORT
mkdir -p "$TMP/hc"
start_tool halfclose halfclose-server "$TMP/hc" || finish
HC=$TOOL_PORT
start_tool noread noread-server || finish
NOREAD=$TOOL_PORT
bg rec python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/rec" \
    --response 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n'
wait_until 10 listen_port "$TMP/rec.log" || { fail "recorder: no port"; finish; }
REC101=$LISTEN_PORT
bg rec200 python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/rec200"
wait_until 10 listen_port "$TMP/rec200.log" || { fail "recorder: no port"; finish; }
REC200=$LISTEN_PORT

ADMIN_PORT=$(free_port); P_APP=$(free_port); P_HC=$(free_port); P_NOREAD=$(free_port)
P_REC=$(free_port); P_REC200=$(free_port); P_DENY=$(free_port)
cat >"$TMP/policy.json" <<JSON
{"default": "allow",
 "rules": [{"name": "no-admin-socket", "action": "deny", "to": {"paths": ["/admin"]}}]}
JSON
cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"}, "log_level": "info",
 "access_log": "$TMP/access.log",
 "limits": {"buffer_bytes": 65536, "tcp_idle_timeout_ms": 3000, "max_connections": 1000},
 "policy_file": "$TMP/policy.json",
 "listeners": [
  {"name": "app", "address": "127.0.0.1:$P_APP", "direction": "inbound",
   "upstream": "127.0.0.1:$APP", "tls": "disabled"},
  {"name": "halfclose", "address": "127.0.0.1:$P_HC", "direction": "inbound",
   "upstream": "127.0.0.1:$HC", "tls": "disabled"},
  {"name": "noread", "address": "127.0.0.1:$P_NOREAD", "direction": "inbound",
   "upstream": "127.0.0.1:$NOREAD", "tls": "disabled"},
  {"name": "rec101", "address": "127.0.0.1:$P_REC", "direction": "inbound",
   "upstream": "127.0.0.1:$REC101", "tls": "disabled"},
  {"name": "rec200", "address": "127.0.0.1:$P_REC200", "direction": "inbound",
   "upstream": "127.0.0.1:$REC200", "tls": "disabled"}]}
JSON
start_proxy proxy "$TMP/proxy.json" || finish
PROXY_MAIN=$PROXY_PID
stat() { curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

# -- python3-websockets client and server through the proxy -------------------------------
out=$(timeout 120 $WS client "ws://127.0.0.1:$P_APP" echo big ping close many:200 2>&1)
for c in echo big ping close many:200; do
    if grep -q "^ok $c " <<<"$out"; then pass "websocket $c through the proxy: $(grep "^ok $c " <<<"$out" | cut -d' ' -f3-)"
    else fail "websocket $c through the proxy"; echo "$out" | grep " $c " >&2; fi
done
# what reached the app: the client's handshake fields, Upgrade and Connection: upgrade
first=$(head -1 "$TMP/app-headers.json" 2>/dev/null)
expect_match "the app got Upgrade: websocket and Connection: upgrade" "$first" \
    '\["upgrade", "websocket"\], \["connection", "upgrade"\]'
expect_match "... and the client's Sec-WebSocket-Key and version" "$first" \
    '\["sec-websocket-key", "[A-Za-z0-9+/=]{24}"\], \["sec-websocket-version", "13"\]'
expect_eq "one handshake reached the app per socket (204 = 4 cases + 200)" \
    "$(wc -l <"$TMP/app-headers.json")" 204
# the upgrade request is an HTTP request: access log (status 101) and tunnel bytes
expect_match "the access log has the upgrade request with status 101" \
    "$(grep '"path":"/echo"' "$TMP/access.log" | grep '"status":101' | head -1)" '"method":"GET"'
big=$(grep '"status":101' "$TMP/access.log" | python3 -c '
import json,sys
print(max(json.loads(l)["request_bytes"] for l in sys.stdin))')
check "the access log counts the tunnel bytes (1 MiB message: $big bytes up)" test "$big" -gt 1048576
check "tunnel bytes counted like TCP (remora_tcp_bytes_total in: $(stat tcp_bytes_in))" \
    test "$(stat tcp_bytes_in)" -gt 1048576

# the policy decides the upgrade request like any request
out=$($RAW "127.0.0.1:$P_APP" 'GET /admin HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
expect_match "a denied upgrade request gets 403 from the policy" "$out" '^HTTP/1.1 403'
expect_eq "... and never reached the app" "$(grep -c '/admin' "$TMP/app-headers.json")" 0

# -- hostile -------------------------------------------------------------------------------
# bytes pipelined behind the upgrade request are held (not parsed as HTTP) and reach the app,
# in the tunnel, exactly as sent; the client's half-close reaches the app, the app's answer
# and its close come back
PIPE='GET /smuggled HTTP/1.1\r\nHost: evil\r\n\r\nfree bytes'
out=$($RAW "127.0.0.1:$P_HC" "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n$PIPE" \
    --half-close --timeout 10)
expect_match "101 then the app's answer after the client's half-close" "$out" \
    $'^HTTP/1.1 101 Switching Protocols\r\n.*upgrade: raw\r\n.*connection: upgrade\r\n\r\ngot:GET /smuggled'
expect_eq "the bytes sent behind the upgrade request reached the app byte for byte, in the tunnel" \
    "$(cat "$TMP/hc/tunnel-1.bin" 2>/dev/null)" "$(printf "$PIPE")"
expect_match "... and the proxy did not make a request of them" \
    "$(grep -c smuggled "$TMP/access.log")" '^0$'

# 101 to a request that asked for no upgrade: 502, never a tunnel
out=$($RAW "127.0.0.1:$P_REC" 'GET /plain HTTP/1.1\r\nHost: a\r\n\r\n')
expect_match "101 without an Upgrade request: 502" "$out" '^HTTP/1.1 502'
expect_match "... naming the cause in the body" "$out" 'upstream sent an invalid response'
expect_match "... and why in the proxy's warn line" "$(grep 'GET /plain' "$TMP/proxy.log")" \
    '502 for GET /plain .*: upstream sent an invalid response: 101 Switching Protocols we never asked for'

# an upgrade answered 200: an ordinary response, the connection keeps serving requests
# (requests compared byte for byte carry their own x-request-id: the proxy keeps it as sent)
out=$($RAW "127.0.0.1:$P_REC200" 'GET /ws HTTP/1.1\r\nHost: a\r\nX-Request-Id: ws-1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\nX-Request-Id: ws-2\r\n\r\n')
expect_eq "an upgrade answered 200, then a keep-alive request: two 200s on one connection" \
    "$(grep -o 'HTTP/1.1 200' <<<"$out" | wc -l)" 2
got=$(cat "$TMP/rec200/all.bin" 2>/dev/null)
expect_match "the app got the upgrade request with Upgrade and Connection: upgrade only" "$got" \
    $'^GET /ws HTTP/1.1\r\nhost: a\r\nx-request-id: ws-1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGET /next HTTP/1.1\r\nhost: a\r\nx-request-id: ws-2\r\n'
# other Connection options are still hop-by-hop
$RAW "127.0.0.1:$P_REC200" 'GET /ws2 HTTP/1.1\r\nHost: a\r\nX-Request-Id: ws-3\r\nX-Hop: 1\r\nUpgrade: websocket\r\nConnection: upgrade, x-hop\r\n\r\n' >/dev/null
expect_match "a header named by Connection besides upgrade is still removed" \
    "$(tr -d '\r' <"$TMP/rec200/all.bin" | sed -n '/^GET \/ws2/,/^$/p')" $'^GET /ws2 HTTP/1.1\nhost: a\nx-request-id: ws-3\nupgrade: websocket\nconnection: upgrade$'

# a server that never reads: the client is held by backpressure, the proxy's memory bounded
before=$(rss_hwm_kb "$PROXY_MAIN")
out=$(timeout 60 $WS client "ws://127.0.0.1:$P_NOREAD" flood:2 2>&1)
after=$(rss_hwm_kb "$PROXY_MAIN")
sent=$(sed -n 's/^ok flood:2 \([0-9]*\) bytes written$/\1/p' <<<"$out")
check "a server that never reads: the client's writes block (${sent:-?} bytes accepted in 2 s)" \
    test "${sent:-999999999}" -lt 67108864
[[ -n $sent ]] || echo "$out"
check "... and the proxy's peak RSS grew by at most 16 MB ($before -> $after kB)" \
    test $((after - before)) -lt 16384

# idle tunnels close after tcp_idle_timeout_ms (3 s here)
t0=$EPOCHSECONDS
out=$($RAW "127.0.0.1:$P_REC" 'GET /idle HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n' --timeout 30)
dt=$((EPOCHSECONDS - t0))
expect_match "an idle tunnel is upgraded first" "$out" '^HTTP/1.1 101'
check "... and closed by the proxy after tcp_idle_timeout_ms (${dt} s; 3 s configured)" \
    test "$dt" -ge 2 -a "$dt" -lt 25
check "... counted in remora_tcp_idle_timeouts_total" test "$(stat tcp_idle_timeout)" -ge 1

# -- an HTTP/2 client's own extended CONNECT (a browser's WebSocket over h2), inbound ------------
# python3-h2 speaks RFC 8441 with no Sec-WebSocket-Key; the proxy makes the app's h1 Upgrade
n0=$(wc -l <"$TMP/app-headers.json")
out=$(timeout 30 /usr/bin/python3 "$REMORA_ROOT/test/tools/h2_ws.py" client "127.0.0.1:$P_APP" /echo 2>&1)
expect_match "the proxy's h2 server enables extended CONNECT" "$out" 'settings enable_connect_protocol=1'
expect_match "an h2 client's extended CONNECT gets 200 and its WebSocket frames echoed by the h1 app" \
    "$out" $'status 200\necho over h2\nclose 1000'
last=$(tail -n +$((n0 + 1)) "$TMP/app-headers.json" | head -1)
expect_match "... the app got an HTTP/1.1 Upgrade with a Sec-WebSocket-Key the proxy made" "$last" \
    '\["sec-websocket-version", "13"\], \["sec-websocket-key", "[A-Za-z0-9+/]{22}=="\], (\["x-request-id", "[0-9a-f-]{36}"\], )?\["upgrade", "websocket"\], \["connection", "upgrade"\]'

stop_pid "$PROXY_MAIN"
expect_eq "proxy exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "no sanitizer reports" "$TMP/proxy.log"

# -- the mesh path: client -> A (outbound, mesh) -> extended CONNECT over h2/mTLS -> B (strict) -> app
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || finish
wl() { "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --spiffe-id "$1" \
        --out-cert "$2" --out-key "$3" >/dev/null; }
wl spiffe://cluster.local/ns/shop/sa/frontend "$D/a.pem" "$D/a-key.pem"
wl spiffe://cluster.local/ns/shop/sa/web "$D/b.pem" "$D/b-key.pem"
bg noconnect /usr/bin/python3 "$REMORA_ROOT/test/tools/h2_ws.py" tls-server "$D/b.pem" "$D/b-key.pem"
wait_until 10 listen_port "$TMP/noconnect.log" || { fail "h2_ws.py tls-server: no port"; finish; }
NOCONNECT=$LISTEN_PORT
A_ADMIN=$(free_port); A_OUT=$(free_port); A_NOREAD=$(free_port); A_NOCONN=$(free_port)
B_ADMIN=$(free_port); B_IN=$(free_port); B_NOREAD=$(free_port)
cat >"$TMP/a.json" <<JSON
{"admin": {"address": "127.0.0.1:$A_ADMIN"}, "access_log": "$TMP/a-access.log",
 "limits": {"buffer_bytes": 65536, "tcp_idle_timeout_ms": 3000},
 "listeners": [
   {"name": "outbound", "address": "127.0.0.1:$A_OUT", "direction": "outbound",
    "upstream": "127.0.0.1:$B_IN", "tls": "mesh"},
   {"name": "to-noread", "address": "127.0.0.1:$A_NOREAD", "direction": "outbound",
    "upstream": "127.0.0.1:$B_NOREAD", "tls": "mesh"},
   {"name": "to-noconnect", "address": "127.0.0.1:$A_NOCONN", "direction": "outbound",
    "upstream": "127.0.0.1:$NOCONNECT", "tls": "mesh"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "frontend",
              "cert_file": "$D/a.pem", "key_file": "$D/a-key.pem", "bundle_file": "$D/root.pem"}}
JSON
cat >"$TMP/b.json" <<JSON
{"admin": {"address": "127.0.0.1:$B_ADMIN"}, "access_log": "$TMP/b-access.log",
 "limits": {"buffer_bytes": 65536, "tcp_idle_timeout_ms": 3000},
 "listeners": [
   {"name": "inbound", "address": "127.0.0.1:$B_IN", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "strict"},
   {"name": "noread", "address": "127.0.0.1:$B_NOREAD", "direction": "inbound",
    "upstream": "127.0.0.1:$NOREAD", "tls": "strict"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
              "cert_file": "$D/b.pem", "key_file": "$D/b-key.pem", "bundle_file": "$D/root.pem"}}
JSON
ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || finish
BPID=$PROXY_PID
ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || finish
APID=$PROXY_PID
astat() { curl -s "http://127.0.0.1:$A_ADMIN/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

n0=$(wc -l <"$TMP/app-headers.json")
out=$(timeout 120 $WS client "ws://127.0.0.1:$A_OUT" echo big ping close many:200 2>&1)
for c in echo big ping close many:200; do
    if grep -q "^ok $c " <<<"$out"; then pass "websocket $c over the mesh (mTLS, extended CONNECT): $(grep "^ok $c " <<<"$out" | cut -d' ' -f3-)"
    else fail "websocket $c over the mesh"; echo "$out" | grep " $c " >&2; fi
done
cx=$(astat upstream_cx_total)
check "204 sockets shared A's HTTP/2 connections to B, not one each ($cx connections)" test "$cx" -lt 20
last=$(tail -n +$((n0 + 1)) "$TMP/app-headers.json" | head -1)
expect_match "the app behind B got the Upgrade with the client's key and the caller's identity" "$last" \
    '\["sec-websocket-key", "[A-Za-z0-9+/=]{24}"\].*URI=spiffe://cluster.local/ns/shop/sa/frontend"\], \["upgrade", "websocket"\], \["connection", "upgrade"\]'
expect_match "A's access log has the upgrade request (101)" "$(grep '"path":"/echo"' "$TMP/a-access.log" | head -1)" '"status":101'
expect_match "B's access log has it too (101 to A's extended CONNECT, as GET)" \
    "$(grep '"path":"/echo"' "$TMP/b-access.log" | head -1)" '"method":"GET".*"status":101'

# the peer did not enable extended CONNECT: 502 naming why, never a silent downgrade
out=$($RAW "127.0.0.1:$A_NOCONN" 'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' --timeout 10)
expect_match "a peer without extended CONNECT: 502" "$out" '^HTTP/1.1 502'
expect_match "... saying so" "$out" 'does not accept extended CONNECT'
out=$(curl -s -m 10 "http://127.0.0.1:$A_NOCONN/plain")
expect_eq "... while plain requests to it still work" "$out" plain

# a server that never reads, behind the mesh: the client is held back
out=$(timeout 60 $WS client "ws://127.0.0.1:$A_NOREAD" flood:2 2>&1)
expect_match "a never-reading app behind the mesh: the client is held back" "$out" '^ok flood:2 [0-9]+ bytes written'

stop_pid "$APID"
expect_eq "A exits cleanly" "$STOP_RC" 0
stop_pid "$BPID"
expect_eq "B exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "no sanitizer reports (A)" "$TMP/a.log"
expect_sanitizers_clean "no sanitizer reports (B)" "$TMP/b.log"

# Memory: ASan's quarantine hides the real footprint (h2.sh), so the sidecars' peak RSS with a
# never-reading app is measured on the plain build, on the same configuration.
PLAIN=${REMORA_PLAIN_PROXY:-$REMORA_ROOT/build/remora-proxy}
if [[ -x $PLAIN ]]; then
    bg plain-b "$PLAIN" -c "$TMP/b.json"; PB=$LASTPID
    bg plain-a "$PLAIN" -c "$TMP/a.json"; PA=$LASTPID
    wait_http "http://127.0.0.1:$A_ADMIN/ready"; wait_http "http://127.0.0.1:$B_ADMIN/ready"
    bA=$(rss_hwm_kb "$PA"); bB=$(rss_hwm_kb "$PB")
    out=$(timeout 60 $WS client "ws://127.0.0.1:$A_NOREAD" flood:2 flood:2 flood:2 2>&1)
    aA=$(rss_hwm_kb "$PA"); aB=$(rss_hwm_kb "$PB")
    expect_eq "plain build: 3 floods of a never-reading app through the mesh, each held back" \
        "$(grep -c '^ok flood:2 ' <<<"$out")" 3
    check "plain build: A's peak RSS grew by at most 4 MB ($bA -> $aA kB)" test $((aA - bA)) -lt 4096
    check "plain build: B's peak RSS grew by at most 4 MB ($bB -> $aB kB)" test $((aB - bB)) -lt 4096
    stop_pid "$PA"; stop_pid "$PB"
else
    echo "SKIP: peak RSS check on the plain build (none at $PLAIN; run make test-gcc)"
fi
finish
