#!/usr/bin/env bash
# Admin API of remora-proxy: every endpoint driven with curl against a real
# proxy forwarding to an upstream this test starts (python3 -m http.server).
source "$(dirname "$0")/../lib.sh"

if [[ ! -x $PROXY ]]; then
    fail "no proxy binary at $PROXY"
    finish
fi

# ---- upstream ------------------------------------------------------------------
UP=$(free_port)
mkdir -p "$TMP/www"
echo "hello from upstream" >"$TMP/www/hello.txt"
bg upstream python3 -m http.server --bind 127.0.0.1 --directory "$TMP/www" "$UP"
wait_port "$UP" || { fail "upstream did not start"; finish; }

# start_proxy NAME: a proxy with admin and one inbound listener on free ports;
# sets ADMIN, LISTEN, PID.
start_proxy() {
    local name=$1
    ADMIN=$(free_port)
    LISTEN=$(free_port)
    cat >"$TMP/$name.json" <<EOF
{"admin": {"address": "127.0.0.1:$ADMIN"},
 "listeners": [{"name": "in", "address": "127.0.0.1:$LISTEN", "direction": "inbound",
                "upstream": "127.0.0.1:$UP", "tls": "disabled"}],
 "limits": {"drain_timeout_ms": 2000}}
EOF
    bg "$name" "$PROXY" -c "$TMP/$name.json"
    PID=$LASTPID
    wait_http "http://127.0.0.1:$ADMIN/ready" || { fail "$name: /ready never answered 200"; cat "$TMP/$name.log"; finish; }
}

# wait_exit PID SECONDS: wait for the process to end; sets RC (or fails).
wait_exit() {
    local pid=$1 secs=$2
    if ! wait_until "$secs" gone "$pid"; then
        RC=timeout
        return 1
    fi
    wait "$pid"
    RC=$?
    return 0
}

# json FILE PYEXPR: evaluate PYEXPR with d = the parsed JSON document.
json() {
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>&1
}

# req METHOD PATH [curl args...]: status code in $CODE, body in $TMP/body, headers in $TMP/hdr.
req() {
    local m=$1 p=$2
    shift 2
    CODE=$(curl -s --max-time 10 -X "$m" -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' "$@" \
        "http://127.0.0.1:$ADMIN$p")
}
header() { grep -i "^$1:" "$TMP/hdr" | head -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ //'; }
metric() { grep -F "$1 " "$TMP/body" | grep -v '^#' | awk '{print $NF}' | head -1; }

start_proxy proxy
A_PID=$PID

# ---- /ready ------------------------------------------------------------------------
req GET /ready
expect_eq "ready: 200" "$CODE" 200
expect_eq "ready: body" "$(json "$TMP/body" 'd["ready"]')" True
expect_eq "ready: json content type" "$(header Content-Type)" application/json

# ---- traffic, then counters ----------------------------------------------------------
expect_eq "proxy forwards" "$(curl -s --max-time 10 "http://127.0.0.1:$LISTEN/hello.txt")" "hello from upstream"
expect_eq "proxy forwards 404" \
    "$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LISTEN/missing")" 404
curl -s --max-time 10 -o /dev/null -X POST -d x "http://127.0.0.1:$LISTEN/hello.txt"
# A request is counted when its stream ends, which may be a moment after curl
# has the answer: wait (2 s at most) until all three are in.
requests_total_is() { req GET /stats; [[ $(json "$TMP/body" 'd["requests_total"]') == "$1" ]]; }
wait_until 2 requests_total_is 3

req GET /metrics
expect_eq "metrics: 200" "$CODE" 200
expect_match "metrics: content type" "$(header Content-Type)" '^text/plain; version=0\.0\.4'
for m in remora_requests_total remora_request_duration_seconds remora_upstream_connections_active \
    remora_retries_total remora_policy_denials_total remora_cert_expiry_timestamp_seconds \
    remora_downstream_connections_active remora_downstream_connections_total \
    remora_upstream_connect_failures_total remora_local_errors_total; do
    check "metrics: HELP and TYPE of $m" grep -q "^# TYPE $m " "$TMP/body"
done
expect_eq "metrics: read 200 counted" \
    "$(metric 'remora_requests_total{listener="in",direction="inbound",method_class="read",code="200"}')" 1
expect_eq "metrics: read 404 counted" \
    "$(metric 'remora_requests_total{listener="in",direction="inbound",method_class="read",code="404"}')" 1
expect_match "metrics: write counted" \
    "$(grep -F 'method_class="write"' "$TMP/body" | grep -c '^remora_requests_total')" '^[1-9]'
expect_eq "metrics: histogram count" \
    "$(metric 'remora_request_duration_seconds_count{listener="in",direction="inbound"}')" 3
expect_eq "metrics: histogram +Inf" \
    "$(metric 'remora_request_duration_seconds_bucket{listener="in",direction="inbound",le="+Inf"}')" 3
expect_eq "metrics: cert expiry present at 0" "$(metric remora_cert_expiry_timestamp_seconds)" 0
expect_match "metrics: downstream connections counted" \
    "$(metric remora_downstream_connections_total)" '^[3-9]|^[1-9][0-9]'

req GET /stats
expect_eq "stats: 200" "$CODE" 200
expect_eq "stats: json content type" "$(header Content-Type)" application/json
expect_eq "stats: requests_total" "$(json "$TMP/body" 'd["requests_total"]')" 3
expect_eq "stats: fields" "$(json "$TMP/body" \
    'all(k in d for k in ("downstream_cx_total","upstream_cx_active","connections_live",
    "streams_live","h2_server_sessions","h2_client_sessions","uptime_seconds","draining",
    "retries_total","policy_denials_total","cert_expiry_timestamp","request_duration"))')" True
expect_eq "stats: not draining" "$(json "$TMP/body" 'd["draining"]')" False

# ---- /config_dump ----------------------------------------------------------------------
req GET /config_dump
expect_eq "config_dump: 200" "$CODE" 200
expect_eq "config_dump: listener" "$(json "$TMP/body" 'd["listeners"][0]["name"]')" in
expect_eq "config_dump: the listener's bound address" \
    "$(json "$TMP/body" 'd["listeners"][0]["bound_address"]')" "127.0.0.1:$LISTEN"
expect_eq "config_dump: configured limit" "$(json "$TMP/body" 'd["limits"]["drain_timeout_ms"]')" 2000
expect_match "config_dump: default limit filled in" \
    "$(json "$TMP/body" 'd["limits"]["max_header_bytes"]')" '^[0-9]+$'

# ---- /logging --------------------------------------------------------------------------
req GET /logging
expect_eq "logging: GET shows level" "$(json "$TMP/body" 'd["level"]')" info
req POST '/logging?level=debug'
expect_eq "logging: POST 200" "$CODE" 200
expect_eq "logging: POST answers new level" "$(json "$TMP/body" 'd["level"]')" debug
req GET /logging
expect_eq "logging: level changed" "$(json "$TMP/body" 'd["level"]')" debug
curl -s --max-time 10 -o /dev/null "http://127.0.0.1:$LISTEN/hello.txt"
check "logging: change logged" grep -q "log level info -> debug" "$TMP/proxy.log"
req POST '/logging?level=bogus'
expect_eq "logging: bad level 400" "$CODE" 400
expect_match "logging: bad level named" "$(json "$TMP/body" 'd["error"]')" bogus
req POST /logging
expect_eq "logging: missing level 400" "$CODE" 400
req POST '/logging?level=info'
expect_eq "logging: back to info" "$(json "$TMP/body" 'd["level"]')" info

# ---- errors ------------------------------------------------------------------------------
req POST /stats
expect_eq "wrong method: 405" "$CODE" 405
expect_eq "wrong method: Allow" "$(header Allow)" GET
expect_match "wrong method: JSON error" "$(json "$TMP/body" 'd["error"]')" stats
req GET /drain
expect_eq "GET /drain: 405" "$CODE" 405
req PUT /ready
expect_eq "PUT: 405" "$CODE" 405
req DELETE /nope
expect_eq "DELETE unknown path: 404" "$CODE" 404
CODE=$(curl -s --max-time 10 -I -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/ready")
expect_eq "HEAD: 405" "$CODE" 405
req GET /nope
expect_eq "unknown path: 404" "$CODE" 404
expect_match "unknown path: JSON error" "$(json "$TMP/body" 'd["error"]')" nope
for p in /certs /policy /clusters; do
    req GET $p
    expect_eq "$p: 404 until configured" "$CODE" 404
    expect_match "$p: not configured" "$(json "$TMP/body" 'd["error"]')" "not configured"
done
req POST /policy/reload
expect_eq "/policy/reload: 404 until configured" "$CODE" 404
req GET '/stats?x=%zz'
expect_match "odd query: answered" "$CODE" '^(200|400)$'
big=$(head -c 20000 /dev/zero | tr '\0' a)
req GET /stats -H "X-Big: $big"
expect_match "oversized head refused" "$CODE" '^4[0-9][0-9]$'
head -c 100000 /dev/zero >"$TMP/bigbody"
req POST /drain --data-binary @"$TMP/bigbody"
expect_match "oversized body refused" "$CODE" '^4[0-9][0-9]$'
check "oversized body did not drain" curl -sf --max-time 10 -o /dev/null "http://127.0.0.1:$ADMIN/ready"
check "proxy alive after bad admin input" alive "$A_PID"

# ---- /drain, then /quitquitquit ------------------------------------------------------------
req POST /drain
expect_eq "drain: 200" "$CODE" 200
req GET /ready
expect_eq "drain: /ready 503" "$CODE" 503
expect_eq "drain: /ready says why" "$(json "$TMP/body" 'd["reason"]')" draining
req GET /stats
expect_eq "drain: stats say draining" "$(json "$TMP/body" 'd["draining"]')" True
CODE=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$LISTEN/hello.txt")
expect_eq "drain: listener stops accepting" "$CODE" 000
req POST /quitquitquit
expect_eq "quitquitquit after drain: 200" "$CODE" 200
wait_exit "$A_PID" 10
expect_eq "quitquitquit after drain: exit 0" "$RC" 0

# ---- /quitquitquit alone ---------------------------------------------------------------------
start_proxy proxy2
B_PID=$PID
curl -s --max-time 10 -o /dev/null "http://127.0.0.1:$LISTEN/hello.txt"
req POST /quitquitquit
expect_eq "quitquitquit: 200" "$CODE" 200
expect_eq "quitquitquit: body flushed" "$(json "$TMP/body" 'd["exiting"]')" True
wait_exit "$B_PID" 5
expect_eq "quitquitquit: exit 0 within 5 s" "$RC" 0

# ---- SIGTERM ---------------------------------------------------------------------------------
start_proxy proxy3
C_PID=$PID
curl -s --max-time 10 -o /dev/null "http://127.0.0.1:$ADMIN/stats" # an admin connection, closed
kill -TERM "$C_PID"
wait_exit "$C_PID" 5
expect_eq "SIGTERM: exit 0" "$RC" 0

# ---- admin on port 0 -------------------------------------------------------------------------
LISTEN=$(free_port)
cat >"$TMP/p0.json" <<EOF
{"admin": {"address": "127.0.0.1:0"},
 "listeners": [{"name": "in", "address": "127.0.0.1:$LISTEN", "direction": "inbound",
                "upstream": "127.0.0.1:$UP", "tls": "disabled"}]}
EOF
bg p0 "$PROXY" -c "$TMP/p0.json"
D_PID=$LASTPID
wait_port "$LISTEN"
admin_logged() { port=$(grep -oE 'admin: serving on 127\.0\.0\.1:[0-9]+' "$TMP/p0.log" | grep -oE '[0-9]+$'); [[ -n $port ]]; }
port=""
wait_until 5 admin_logged
expect_match "port 0: real port logged" "$port" '^[1-9][0-9]*$'
ADMIN=$port
req GET /ready
expect_eq "port 0: admin answers" "$CODE" 200
kill -TERM "$D_PID"
wait_exit "$D_PID" 5
expect_eq "port 0: SIGTERM exit 0" "$RC" 0

finish
