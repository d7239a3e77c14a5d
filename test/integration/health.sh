#!/usr/bin/env bash
# The health port's clients on px_httpc (docs/internals/health.md,
# docs/internals/httpc.md), on loopback, no root: app probes (what reached the
# app byte for byte: kubelet's fields minus http.c's hop-by-hop list, the
# fields its Connection names, Host and Proxy-Authorization; the probe's
# httpHeaders; a percent-encoded target), the status mapping (2xx, 3xx -> 200,
# 4xx/5xx, a malformed status line, a timeout, nobody listening, HTTPS without
# verification), /metrics merged with the app's (a body without its last
# newline, a 500, an app gone, an answer over 8 MiB), and `remora-proxy wait`.
source "$(dirname "$0")/../lib.sh"

if [[ ! -x $PROXY ]]; then
    fail "no proxy binary at $PROXY"
    finish
fi

# ---- apps ----------------------------------------------------------------------
start_upstream app || finish
APP=$UP_PORT
mkdir -p "$TMP/rec" "$TMP/mrec" "$TMP/bad"
bg rec python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/rec" \
    --response 'HTTP/1.1 204 No Content\r\nX-Ignored: 1\r\n\r\n'
wait_until 5 listen_port "$TMP/rec.log" || { fail "recorder did not start"; finish; }
REC=$LISTEN_PORT
METRICS_BODY='app_requests_total 7'
bg mrec python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/mrec" \
    --response "HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: ${#METRICS_BODY}\\r\\n\\r\\n$METRICS_BODY" \
    --response 'HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n'
wait_until 5 listen_port "$TMP/mrec.log" || { fail "metrics recorder did not start"; finish; }
MREC=$LISTEN_PORT
MREC_PID=$LASTPID
bg bad python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/bad" --response 'HTTP/1.1 2x0 OK\r\n\r\n'
wait_until 5 listen_port "$TMP/bad.log" || { fail "bad app did not start"; finish; }
BAD=$LISTEN_PORT
TLSP=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -keyout "$TMP/app-key.pem" -out "$TMP/app-cert.pem" -subj /CN=app 2>/dev/null
bg tlsapp openssl s_server -accept "127.0.0.1:$TLSP" -cert "$TMP/app-cert.pem" \
    -key "$TMP/app-key.pem" -www -quiet
wait_port "$TLSP" || { fail "TLS app did not start"; finish; }
NOBODY=$(free_port)

PROBERS=$(cat <<EOF
{"/app-health/rec/readyz": {"httpGet": {"port": $REC, "path": "/ready me?x=1",
   "httpHeaders": [{"name": "X-Probe", "value": "p"}, {"name": "Accept", "value": "text/x"}]},
   "timeoutSeconds": 2},
 "/app-health/app/readyz": {"httpGet": {"port": $APP, "path": "/status/204"}},
 "/app-health/app/redirect": {"httpGet": {"port": $APP, "path": "/status/302"}},
 "/app-health/app/livez": {"httpGet": {"port": $APP, "path": "/status/503"}},
 "/app-health/app/slow": {"httpGet": {"port": $APP, "path": "/delay/5000"}, "timeoutSeconds": 1},
 "/app-health/bad/readyz": {"httpGet": {"port": $BAD, "path": "/"}},
 "/app-health/none/readyz": {"httpGet": {"port": $NOBODY, "path": "/"}},
 "/app-health/tls/readyz": {"httpGet": {"port": $TLSP, "path": "/", "scheme": "HTTPS"}}}
EOF
)

# run_proxy NAME METRICS_URL: a proxy with a health port; sets ADMIN, HP, PID.
run_proxy() {
    local name=$1 url=$2
    ADMIN=$(free_port)
    HP=$(free_port)
    cat >"$TMP/$name.json" <<EOF
{"admin": {"address": "127.0.0.1:$ADMIN"}, "health": {"address": "127.0.0.1:$HP"},
 "listeners": [{"name": "in", "address": "127.0.0.1:$(free_port)", "direction": "inbound",
                "upstream": "127.0.0.1:$APP", "tls": "disabled"}]}
EOF
    bg "$name" env REMORA_APP_PROBERS="$PROBERS" REMORA_APP_METRICS_URL="$url" POD_IP=10.9.9.9 \
        "$PROXY" -c "$TMP/$name.json"
    PID=$LASTPID
    wait_http "http://127.0.0.1:$ADMIN/ready" || { fail "$name: not ready"; tail -20 "$TMP/$name.log"; finish; }
}

run_proxy proxy "http://127.0.0.1:$MREC/metrics?fmt=text"
P1=$PID
H=http://127.0.0.1:$HP
code() { curl -s -m 15 -o "$TMP/body" -w '%{http_code}' "$@"; }

expect_eq "GET /healthz/ready: 200" "$(code "$H/healthz/ready")" 200
expect_eq "GET /healthz/idle with nothing in flight: 200" "$(code "$H/healthz/idle")" 200
expect_eq "POST to the health port: 405" "$(code -X POST "$H/healthz/ready")" 405

# ---- probes ----------------------------------------------------------------------
# kubelet's request, byte for byte (raw.py): fields that must not reach the app
"$REMORA_ROOT/test/tools/raw.py" "127.0.0.1:$HP" \
    'GET /app-health/rec/readyz HTTP/1.1\r\nHost: 10.9.9.9:15020\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nX-Kept: 1\r\n\r\n' \
    --timeout 10 >"$TMP/raw.out" 2>&1
expect_match "probe: the app's 204 passed back to kubelet" "$(head -1 "$TMP/raw.out")" '^HTTP/1.1 204'
want="GET /ready%20me?x=1 HTTP/1.1\r\nHost: 10.9.9.9:$REC\r\nUser-Agent: kube-probe/1.30\r\nX-Kept: 1\r\nX-Probe: p\r\nAccept: text/x\r\nConnection: close\r\n\r\n"
wait_until 5 test -s "$TMP/rec/conn-1.bin"
expect_eq "probe: what reached the app, byte for byte (hop-by-hop, Connection-named, Host, Proxy-Authorization dropped; httpHeaders win)" \
    "$(od -c "$TMP/rec/conn-1.bin")" "$(printf '%b' "$want" | od -c)"
expect_eq "probe: one connection to the app" "$(ls "$TMP/rec" | grep -c '^conn-')" 1

expect_eq "probe 204 -> 204" "$(code "$H/app-health/app/readyz")" 204
expect_eq "probe 302 -> 200 (a redirect is success for kubelet)" "$(code "$H/app-health/app/redirect")" 200
expect_eq "probe 503 -> 503" "$(code "$H/app-health/app/livez")" 503
expect_eq "probe with a malformed status line -> 503" "$(code "$H/app-health/bad/readyz")" 503
expect_match "... saying so" "$(cat "$TMP/body")" 'malformed answer'
t0=$(date +%s%N)
expect_eq "probe past its timeoutSeconds (1 s) -> 503" "$(code "$H/app-health/app/slow")" 503
ms=$((($(date +%s%N) - t0) / 1000000))
expect_match "... saying so" "$(cat "$TMP/body")" 'no complete answer within 1000 ms'
((ms < 4500)) && pass "... after ${ms} ms, not the app's 5 s" || fail "... took ${ms} ms"
expect_eq "probe of a port nobody listens on -> 503" "$(code "$H/app-health/none/readyz")" 503
expect_match "... saying so" "$(cat "$TMP/body")" 'connect: Connection refused'
expect_eq "HTTPS probe (the app's self-signed certificate, not verified) -> 200" \
    "$(code "$H/app-health/tls/readyz")" 200
expect_eq "unknown /app-health path -> 404" "$(code "$H/app-health/x/readyz")" 404
# a burst of probes at once: every one answered
pids=()
for i in $(seq 20); do
    code "$H/app-health/app/readyz" >"$TMP/burst.$i" &
    pids+=($!)
done
wait "${pids[@]}"
ok=0
for i in $(seq 20); do [[ $(cat "$TMP/burst.$i") == 204 ]] && ok=$((ok + 1)); done
expect_eq "20 probes at once: 20 x 204" "$ok" 20

# ---- /metrics ----------------------------------------------------------------------
expect_eq "GET /metrics: 200" "$(code "$H/metrics")" 200
check "... the proxy's series" grep -q '^remora_downstream_connections_total ' "$TMP/body"
check "... then the app's, announced" grep -q "^# remora: the app's metrics (127.0.0.1:$MREC/metrics?fmt=text) follow" "$TMP/body"
expect_eq "... the app's text last, its missing final newline added" "$(tail -c 21 "$TMP/body" | od -c)" \
    "$(printf 'app_requests_total 7\n' | od -c)"
mwant="GET /metrics?fmt=text HTTP/1.1\r\nHost: 127.0.0.1:$MREC\r\nAccept: text/plain\r\nUser-Agent: remora-proxy-health\r\nConnection: close\r\n\r\n"
expect_eq "... the scrape the app received, byte for byte" "$(od -c "$TMP/mrec/conn-1.bin")" "$(printf '%b' "$mwant" | od -c)"
expect_eq "GET /metrics while the app answers 500: still 200" "$(code "$H/metrics")" 200
check "... with the proxy's series" grep -q '^remora_downstream_connections_total ' "$TMP/body"
check "... and why the app's are missing" grep -q "^# remora: the app's metrics are unavailable: status 500" "$TMP/body"
stop_pid "$MREC_PID"
expect_eq "GET /metrics with the app gone: 200" "$(code "$H/metrics")" 200
check "... saying the connect was refused" grep -q "^# remora: the app's metrics are unavailable: connect: Connection refused" "$TMP/body"

# ---- remora-proxy wait ----------------------------------------------------------------
"$PROXY" wait --address "127.0.0.1:$HP" --timeout 5 >"$TMP/wait.log" 2>&1
expect_eq "remora-proxy wait: the health port says ready: exit 0" "$?" 0
"$PROXY" wait --address "127.0.0.1:$NOBODY" --timeout 1 >"$TMP/wait1.log" 2>&1
expect_eq "remora-proxy wait: nobody answers: exit 1 after the timeout" "$?" 1
expect_match "... saying so" "$(cat "$TMP/wait1.log")" 'not 200 after 1 s \(last: 0\)'
"$PROXY" wait --drain --address "127.0.0.1:$HP" --timeout-ms 5000 >"$TMP/drain.log" 2>&1
expect_match "remora-proxy wait --drain: idle proxy" "$?:$(cat "$TMP/drain.log")" '^0:.*nothing in flight'

# ---- an app's metrics over the 8 MiB bound --------------------------------------------
run_proxy proxy-big "http://127.0.0.1:$APP/bytes/9000000"
P2=$PID
expect_eq "GET /metrics with the app's text over 8 MiB: 200" "$(code "http://127.0.0.1:$HP/metrics")" 200
check "... the proxy's series" grep -q '^remora_downstream_connections_total ' "$TMP/body"
check "... and why the app's are missing" grep -q "^# remora: the app's metrics are unavailable: answer's body over 8388608 bytes" "$TMP/body"
size=$(stat -c %s "$TMP/body")
((size < 1000000)) && pass "... none of the app's bytes passed on ($size bytes in all)" || fail "... $size bytes"

for p in "$P1" "$P2"; do
    check "proxy $p still running" alive "$p"
    stop_pid "$p"
    expect_eq "proxy $p exits 0 on SIGTERM" "$STOP_RC" 0
done
expect_sanitizers_clean "proxy: no sanitizer report" "$TMP/proxy.log"
expect_sanitizers_clean "proxy-big: no sanitizer report" "$TMP/proxy-big.log"

finish
