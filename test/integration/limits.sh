#!/usr/bin/env bash
# Upstream circuit breakers (docs/routes.md "Circuit breakers"): 10 HTTP/2 client connections x
# 128 streams toward an HTTP/1.1 app behind limits.upstream_max_connections 16 (the app counts
# its connections; every request succeeds by waiting); a small max_pending_requests answers the
# excess 503 naming the cause and counts it; pending_timeout_ms; streams reset while waiting open
# nothing; a request body that arrives while waiting reaches the app intact; HTTP/2 upstreams
# keep max_requests_per_connection; a route's circuit_breakers override the limits;
# --check-config names bad keys.
source "$(dirname "$0")/../lib.sh"

# count_upstream NAME: a counting HTTP/1.1 app (test/tools/count_upstream.py); sets CU_PORT.
count_upstream() {
    bg "$1" python3 "$REMORA_ROOT/test/tools/count_upstream.py" "$TMP/$1.port"
    CU_PORT=""
    wait_until 10 test -s "$TMP/$1.port" && { CU_PORT=$(cat "$TMP/$1.port"); return 0; }
    fail "count_upstream $1: no port"; return 1
}
app_stat() { curl -s -m 10 "http://127.0.0.1:$1/_stats" | jq -r ".$2"; }

count_upstream big || exit 1; A_PORT=$CU_PORT
count_upstream small || exit 1; B_PORT=$CU_PORT
count_upstream slow || exit 1; C_PORT=$CU_PORT
count_upstream reset || exit 1; D_PORT=$CU_PORT
count_upstream retry || exit 1; G_PORT=$CU_PORT
start_upstream body || exit 1; E_PORT=$UP_PORT
start_upstream h2app --h2 || exit 1; F_PORT=$UP_PORT
ADMIN_PORT=$(free_port); P1=$(free_port); P2=$(free_port)

cat >"$TMP/routes.json" <<JSON
{"routes": [
  {"name": "small", "match": {"host": "small.local"}, "endpoints": [{"address": "127.0.0.1:$B_PORT"}],
   "circuit_breakers": {"max_connections": 2, "max_pending_requests": 4}},
  {"name": "slow", "match": {"host": "slow.local"}, "endpoints": [{"address": "127.0.0.1:$C_PORT"}],
   "circuit_breakers": {"max_connections": 1, "max_pending_requests": 10, "pending_timeout_ms": 300}},
  {"name": "reset", "match": {"host": "reset.local"}, "endpoints": [{"address": "127.0.0.1:$D_PORT"}],
   "circuit_breakers": {"max_connections": 1, "pending_timeout_ms": 20000}},
  {"name": "retry", "match": {"host": "retry.local"}, "endpoints": [{"address": "127.0.0.1:$G_PORT"}],
   "retries": {"attempts": 2, "on": ["503"]},
   "circuit_breakers": {"max_connections": 1, "pending_timeout_ms": 20000}},
  {"name": "body", "match": {"host": "body.local"}, "endpoints": [{"address": "127.0.0.1:$E_PORT"}],
   "circuit_breakers": {"max_connections": 1}},
  {"name": "h2", "match": {"host": "h2.local"}, "endpoints": [{"address": "127.0.0.1:$F_PORT"}],
   "circuit_breakers": {"max_connections": 3, "max_requests_per_connection": 4}}]}
JSON
cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"}, "log_level": "info",
 "routes_file": "$TMP/routes.json",
 "limits": {"upstream_max_connections": 16, "upstream_max_pending_requests": 2048,
            "upstream_pending_timeout_ms": 60000, "request_timeout_ms": 120000},
 "listeners": [
  {"name": "fixed", "address": "127.0.0.1:$P1", "direction": "inbound",
   "upstream": "127.0.0.1:$A_PORT", "tls": "disabled"},
  {"name": "toh2", "address": "127.0.0.1:$P2", "direction": "inbound",
   "upstream": "127.0.0.1:$F_PORT", "tls": "disabled", "upstream_protocol": "h2"}]}
JSON
check "--check-config accepts the limits and circuit_breakers" "$PROXY" --check-config -c "$TMP/proxy.json"
start_proxy proxy "$TMP/proxy.json" || exit 1
metric() { curl -s -m 10 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
clusters() { curl -s -m 10 "http://127.0.0.1:$ADMIN_PORT/clusters"; }
# upstream_field PORT FIELD: a field of /clusters' "upstreams" entry for 127.0.0.1:PORT
upstream_field() { clusters | jq -r --arg a "127.0.0.1:$1" ".upstreams[] | select(.address == \$a) | .$2"; }
# wait_pending PORT N: wait (20 s) until N requests wait for a connection to 127.0.0.1:PORT
pending_is() { [[ $(upstream_field "$1" pending) == "$2" ]]; }
wait_pending() { wait_until 20 pending_is "$1" "$2"; }
# app_requests_are PORT N: the counting app on PORT has seen N requests
app_requests_are() { [[ $(app_stat "$1" requests) == "$2" ]]; }
# route_outstanding_is ROUTE N: ROUTE's first endpoint has N requests outstanding
route_outstanding_is() {
    [[ $(clusters | jq -r --arg r "$1" '.routes[] | select(.name == $r) | .endpoints[0].outstanding') == "$2" ]]
}

# -- 10 x 128 h2 streams -> an HTTP/1.1 app, at most 16 connections --------------------------
h2load -c10 -m128 -n12800 "http://127.0.0.1:$P1/delay/2" >"$TMP/h2load.log" 2>&1
expect_match "10 x 128 h2 streams: all 12800 requests succeed (they wait, not refused)" \
    "$(grep -E '^status codes:' "$TMP/h2load.log")" '^status codes: 12800 2xx, 0 3xx, 0 4xx, 0 5xx'
expect_eq "... the app saw at most 16 connections at once (it counts them)" "$(app_stat "$A_PORT" max_open)" 16
expect_eq "... and accepted 16 in all (waiters reuse them)" "$(app_stat "$A_PORT" accepted)" 16
expect_eq "... and got every request" "$(app_stat "$A_PORT" requests)" 12800
hwm=$(rss_hwm_kb "$PROXY_PID")
check "... proxy peak RSS bounded (${hwm} kB < 256 MB)" test "$hwm" -lt 262144
queued=$(upstream_field "$A_PORT" queued_total)
check "... requests did wait in the queue (queued_total $queued)" test "${queued:-0}" -gt 1000
expect_eq "... nobody waits any more (remora_upstream_pending)" "$(metric remora_upstream_pending)" 0
expect_eq "... no overflow" "$(metric 'remora_upstream_overflow_total{reason="max_pending_requests"}')" 0
expect_eq "/clusters: the fixed upstream's active connections" "$(upstream_field "$A_PORT" active_connections)" 16

# -- a small max_pending_requests: the excess is 503 with the cause ------------------------------
small=()
for i in 1 2 3 4 5 6; do
    curl -s -m 60 -o /dev/null -w '%{http_code}\n' -H 'Host: small.local' \
        "http://127.0.0.1:$P1/delay/3000" >>"$TMP/small.codes" &
    small+=($!)
done
check "max_connections 2 + max_pending_requests 4: 4 requests wait" wait_pending "$B_PORT" 4
out=$(curl -s -m 30 -w ' %{http_code}' -H 'Host: small.local' "http://127.0.0.1:$P1/x")
expect_match "... the 7th is 503 naming the breaker" "$out" \
    '^upstream overflow: max_pending_requests \(4 requests already wait for a connection to 127\.0\.0\.1:[0-9]+; max_connections 2\)'$'\n'' 503$'
out=$(h2load -c1 -m10 -n10 -H ':authority: small.local' "http://127.0.0.1:$P1/y" 2>&1 | grep '^status codes:')
expect_match "... 10 more h2 streams: all 503" "$out" '0 2xx, 0 3xx, 0 4xx, 10 5xx'
expect_eq "... remora_upstream_overflow_total{reason=\"max_pending_requests\"} counts them" \
    "$(metric 'remora_upstream_overflow_total{reason="max_pending_requests"}')" 11
expect_eq "... /clusters: the route's endpoint counts them too" \
    "$(clusters | jq -r '.routes[] | select(.name == "small") | .endpoints[0].circuit_breakers.overflows.max_pending_requests')" 11
expect_eq "... /clusters: pending 4 on that endpoint" \
    "$(clusters | jq -r '.routes[] | select(.name == "small") | .endpoints[0].circuit_breakers.pending')" 4
wait "${small[@]}"
expect_eq "... the 2 sent and the 4 that waited all succeed" "$(sort "$TMP/small.codes" | uniq -c | awk '{print $1"x"$2}' | tr '\n' ' ')" "6x200 "
expect_eq "... over 2 app connections" "$(app_stat "$B_PORT" max_open)" 2
expect_eq "... the refused never reached the app" "$(app_stat "$B_PORT" requests)" 6
check "... logged with the whole cause" grep -q "listener fixed: 503 for GET /x from 127.0.0.1:[0-9]*, upstream 127.0.0.1:$B_PORT: upstream overflow: max_pending_requests (4 requests already wait for a connection to 127.0.0.1:$B_PORT; max_connections 2)" "$TMP/proxy.log"
n=$(grep -c 'upstream overflow: max_pending_requests' "$TMP/proxy.log")
check "... rate-limited: fewer lines than the 11 overflows ($n)" test "$n" -le 7

# -- pending_timeout_ms -------------------------------------------------------------------------
curl -s -m 60 -o /dev/null -H 'Host: slow.local' "http://127.0.0.1:$P1/delay/4000" &
holder=$!
WAIT_UNTIL_STEP=0.05 wait_until 10 app_requests_are "$C_PORT" 1
t0=$(date +%s%N)
out=$(curl -s -m 30 -w ' %{http_code}' -H 'Host: slow.local' "http://127.0.0.1:$P1/late")
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
alive "$holder" && holding=yes || holding=no
expect_match "pending_timeout_ms 300: 503 naming the timeout" "$out" \
    '^upstream pending timeout: no connection to 127\.0\.0\.1:[0-9]+ became free within 300 ms \(max_connections 1\)'$'\n'' 503$'
# not before the 300 ms, and while the holder's 4 s request still held the connection (the
# mechanism; a wall-clock ceiling would only measure the machine's load)
check "... after the timeout, before the holder finished (${ms} ms, holder running: $holding)" \
    test "$ms" -ge 250 -a "$holding" = yes
expect_eq "... counted as reason=\"pending_timeout\"" "$(metric 'remora_upstream_overflow_total{reason="pending_timeout"}')" 1
wait "$holder"
expect_eq "... the app saw only the holder" "$(app_stat "$C_PORT" requests)" 1

# -- streams reset while waiting open nothing ---------------------------------------------------
curl -s -m 60 -o /dev/null -H 'Host: reset.local' "http://127.0.0.1:$P1/delay/12000" &
holder=$!
WAIT_UNTIL_STEP=0.05 wait_until 10 app_requests_are "$D_PORT" 1
node "$REMORA_ROOT/test/tools/h2_reset.js" "http://127.0.0.1:$P1/never" reset.local 20 3000 >"$TMP/reset.out" 2>&1 &
resetter=$!
check "20 h2 streams wait behind max_connections 1" wait_pending "$D_PORT" 20
wait "$resetter"
expect_eq "... the client resets them all while they wait" "$(cat "$TMP/reset.out")" "responses 0 resets 20"
check "... they leave the queue" wait_pending "$D_PORT" 0
check "... while the connection is still busy" alive "$holder"
# HTTP/1.1: a client that closes after a complete request may be half-closing and still read
# the answer (h1_server.c), so only one gone mid-body is cancelled
hc=()
for i in 1 2 3; do
    $RAW "127.0.0.1:$P1" 'POST /never-h1 HTTP/1.1\r\nHost: reset.local\r\nContent-Length: 1000\r\n\r\npart' \
        --timeout 3 >/dev/null &
    hc+=($!)
done
check "3 HTTP/1.1 requests, bodies unfinished, wait too" wait_pending "$D_PORT" 3
wait "${hc[@]}"
check "... their clients close the connections mid-body: they leave the queue" wait_pending "$D_PORT" 0
check "... while the connection is still busy" alive "$holder"
wait "$holder"
sleep 1
expect_eq "... nothing of them reached the app" "$(app_stat "$D_PORT" requests)" 1
expect_eq "... and no connection was opened for them" "$(app_stat "$D_PORT" accepted)" 1
expect_eq "... no overflow counted for them" "$(metric 'remora_upstream_overflow_total{reason="pending_timeout"}')" 1

# -- a retry waits for a connection like any try ------------------------------------------------
# the app counts a connection until it reads its EOF, so a connection the proxy closed can
# overlap the next one there; the kernel's view (ss: ESTABLISHED on the app's side) cannot
( for _ in $(seq 500); do ss -Htn state established "( sport = :$G_PORT )" | wc -l; sleep 0.02; done ) >"$TMP/retryconns" &
sampler=$!
curl -s -m 60 -o /dev/null -H 'Host: retry.local' "http://127.0.0.1:$P1/delay/3000" &
holder=$!
# (not asking the app itself while ss counts its connections)
WAIT_UNTIL_STEP=0.05 wait_until 10 route_outstanding_is retry 1
curl -s -m 60 -o "$TMP/retry.out" -w '%{http_code}' -H 'Host: retry.local' "http://127.0.0.1:$P1/fail-once/r" >"$TMP/retry.code" &
r=$!
check "a request waits behind the holder" wait_pending "$G_PORT" 1
curl -s -m 60 -o /dev/null -H 'Host: retry.local' "http://127.0.0.1:$P1/delay/2000" &
w=$!
check "... and one more behind it" wait_pending "$G_PORT" 2
wait "$r" "$w" "$holder"
expect_eq "... the first gets 503 from the app, is retried and answered 200" "$(cat "$TMP/retry.code")" 200
expect_eq "... its retry waited too (3 waits: the request, the one behind it, the retry)" \
    "$(upstream_field "$G_PORT" queued_total)" 3
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
peak=$(sort -n "$TMP/retryconns" | tail -1)
check "... one connection at a time (ss peak $peak; the dropped 503 closes one)" test "$peak" -eq 1
expect_eq "... the app saw holder, try 1, the other, try 2" "$(app_stat "$G_PORT" requests)" 4

# -- a request body that arrives while waiting reaches the app intact ---------------------------
head -c 300000 /dev/urandom >"$TMP/body.bin"
want=$(sha256sum "$TMP/body.bin" | cut -d' ' -f1)
for proto in --http1.1 --http2-prior-knowledge; do
    q0=$(upstream_field "$E_PORT" queued_total); q0=${q0:-0}
    curl -s -m 60 -o /dev/null -H 'Host: body.local' "http://127.0.0.1:$P1/delay/3000" &
    holder=$!
    WAIT_UNTIL_STEP=0.05 wait_until 10 route_outstanding_is body 1 # the holder's try is under way
    out=$(curl -s -m 60 $proto -H 'Host: body.local' --data-binary @"$TMP/body.bin" "http://127.0.0.1:$P1/sink")
    expect_eq "POST of 300 KB ($proto) behind max_connections 1: the app got every byte" \
        "$(jq -r '"\(.body_bytes) \(.body_sha256)"' <<<"$out")" "300000 $want"
    q1=$(upstream_field "$E_PORT" queued_total)
    check "... it waited for the connection (queued_total $q0 -> $q1)" test "${q1:-0}" -gt "$q0"
    wait "$holder"
done

# -- HTTP/2 upstream: max_requests_per_connection, max_connections ------------------------------
( for _ in $(seq 400); do ss -Htn state established "( sport = :$F_PORT )" | wc -l; sleep 0.02; done ) >"$TMP/h2conns" &
sampler=$!
t0=$(date +%s%N)
out=$(h2load -c1 -m36 -n36 -H ':authority: h2.local' "http://127.0.0.1:$P2/delay/400" 2>&1 | grep '^status codes:')
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
expect_match "h2 upstream, 3 connections x 4 streams: 36 streams all succeed" "$out" '36 2xx'
check "... in at least 3 rounds of 400 ms (${ms} ms; 12 at a time)" test "$ms" -ge 1150
peak=$(sort -n "$TMP/h2conns" | tail -1)
check "... the app never had more than 3 connections (peak $peak)" test "$peak" -le 3 -a "$peak" -ge 1
queued=$(upstream_field "$F_PORT" queued_total)
check "... the rest waited for a stream slot (queued_total $queued)" test "${queued:-0}" -ge 24
out=$(clusters | jq -c '.routes[] | select(.name == "h2") | .circuit_breakers')
expect_eq "/clusters: the route's overrides over the limits" "$out" \
    '{"max_connections":3,"max_pending_requests":2048,"pending_timeout_ms":60000,"max_requests_per_connection":4}'

out=$(curl -s -m 10 "http://127.0.0.1:$ADMIN_PORT/config_dump" | jq -c '[.limits.upstream_max_connections, .limits.upstream_max_pending_requests, .limits.upstream_pending_timeout_ms, .limits.upstream_max_requests_per_connection]')
expect_eq "/config_dump: the upstream_* limits (set and default)" "$out" '[16,2048,60000,128]'

# -- --check-config names the bad key ------------------------------------------------------------
bad_cfg() { # NAME SED-ON-PROXY-JSON SED-ON-ROUTES-JSON WANT
    sed -e "$2" -e "s|$TMP/routes.json|$TMP/bad-routes.json|" "$TMP/proxy.json" >"$TMP/bad.json"
    sed -e "$3" "$TMP/routes.json" >"$TMP/bad-routes.json"
    out=$("$PROXY" --check-config -c "$TMP/bad.json" 2>&1); rc=$?
    if [[ $rc != 0 && $out == *"$4"* ]]; then pass "$1"; else fail "$1: rc $rc, '$out'"; fi
}
bad_cfg "--check-config: limits.upstream_max_connections 0" 's|"upstream_max_connections": 16|"upstream_max_connections": 0|' '' \
    'limits.upstream_max_connections: 0 is out of range'
bad_cfg "--check-config: limits.upstream_pending_timeout_ms \"x\"" 's|"upstream_pending_timeout_ms": 60000|"upstream_pending_timeout_ms": "x"|' '' \
    'limits.upstream_pending_timeout_ms: expected an integer'
bad_cfg "--check-config: limits.upstream_max_requests_per_connection 0" \
    's|"upstream_max_connections": 16|"upstream_max_requests_per_connection": 0|' '' \
    'limits.upstream_max_requests_per_connection: 0 is out of range'
bad_cfg "--check-config: limits.upstream_max_pending_requests 2^32" \
    's|"upstream_max_pending_requests": 2048|"upstream_max_pending_requests": 4294967296|' '' \
    'limits.upstream_max_pending_requests: 4294967296 is out of range'
bad_cfg "--check-config: circuit_breakers.max_pending_requests -1" '' \
    's|"max_pending_requests": 4|"max_pending_requests": -1|' 'routes[0].circuit_breakers.max_pending_requests: -1 is out of range'
bad_cfg "--check-config: circuit_breakers unknown key" '' \
    's|"max_connections": 2,|"max_conns": 2,|' 'routes[0].circuit_breakers.max_conns: unknown key'
bad_cfg "--check-config: circuit_breakers not an object" '' \
    's|"circuit_breakers": {"max_connections": 2, "max_pending_requests": 4}|"circuit_breakers": 5|' \
    'routes[0].circuit_breakers: expected an object'
bad_cfg "--check-config: circuit_breakers.pending_timeout_ms 0" '' \
    's|"pending_timeout_ms": 300|"pending_timeout_ms": 0|' 'routes[1].circuit_breakers.pending_timeout_ms: 0 is out of range'

check "proxy still alive" alive "$PROXY_PID"
stop_pid "$PROXY_PID"
expect_eq "drains and exits 0" "$STOP_RC" 0
expect_sanitizers_clean "no sanitizer reports" "$TMP/proxy.log"
finish
