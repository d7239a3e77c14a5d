#!/usr/bin/env bash
# HTTP/2 clients that attack the proxy: rapid reset (HEADERS + RST_STREAM
# loops, CVE-2023-44487), CONTINUATION floods, huge header blocks, SETTINGS
# and PING floods, window overflow, empty DATA floods and a client that
# never reads. Each asserts what reached the app (a recording upstream that
# logs every connection and request), what the client got back, and that
# the proxy stays up with bounded memory.
source "$(dirname "$0")/../lib.sh"

PEER="python3 $REMORA_ROOT/test/tools/h2peer.py"
APPLOG=$TMP/app.jsonl
: >"$APPLOG"
bg app python3 "$REMORA_ROOT/test/tools/rec_upstream.py" "$APPLOG"
APP_PORT=""
wait_until 10 listen_port "$TMP/app.log" && APP_PORT=$LISTEN_PORT
[[ -n $APP_PORT ]] || { fail "recording upstream did not start"; finish; }
start_upstream bulk || exit 1
BULK_PORT=$UP_PORT
ADMIN_PORT=$(free_port); P=$(free_port); PD=$(free_port); PB=$(free_port)

cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "log_level": "info",
 "limits": {"max_header_bytes": 8192, "h2_max_resets_per_window": 100,
            "h2_reset_window_ms": 10000, "buffer_bytes": 65536},
 "listeners": [
  {"name": "h2only", "address": "127.0.0.1:$P", "direction": "inbound",
   "upstream": "127.0.0.1:$APP_PORT", "tls": "disabled", "downstream_protocol": "h2"},
  {"name": "detect", "address": "127.0.0.1:$PD", "direction": "inbound",
   "upstream": "127.0.0.1:$APP_PORT", "tls": "disabled"},
  {"name": "bulk", "address": "127.0.0.1:$PB", "direction": "inbound",
   "upstream": "127.0.0.1:$BULK_PORT", "tls": "disabled"}]}
JSON
start_proxy proxy "$TMP/proxy.json" || exit 1

stat_of() { curl -s -m 60 "http://127.0.0.1:$ADMIN_PORT/stats" |
    python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
# app_count EVENT [PATH-REGEX]: connections or requests the app has seen
app_count() {
    python3 - "$APPLOG" "$1" "${2:-.}" <<'PY'
import json, re, sys
n = 0
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == sys.argv[2] and (e["event"] == "connect" or re.search(sys.argv[3], e["path"])):
        n += 1
print(n)
PY
}
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); v=d.get(sys.argv[2]); print('null' if v is None else v)" "$1" "$2"; }

# -- a control request --------------------------------------------------------------------
out=$($PEER "$P" get)
expect_eq "control: a plain GET is answered 200" "$(field "$out" statuses)" "[200]"
expect_eq "... and reached the app once" "$(app_count request '^/ok$')" 1

# -- rapid reset ---------------------------------------------------------------------------
cx0=$(app_count connect); upcx0=$(stat_of upstream_cx_total)
out=$(H2PEER_WAIT=3 $PEER "$P" rapid-reset 50)
expect_eq "rapid reset under the budget (50 pairs): no GOAWAY" "$(field "$out" goaway)" null
expect_eq "... no reset stream reached the app" "$(app_count request '^/rr/')" 0
out=$($PEER "$P" rapid-reset 1000)
expect_eq "rapid reset, 1000 HEADERS+RST_STREAM pairs: GOAWAY ENHANCE_YOUR_CALM (11)" \
    "$(field "$out" goaway)" 11
last=$(field "$out" last_stream)
check "... after the budget (last stream $last <= 2*101+1)" test "$last" -le 203
expect_eq "... no reset stream reached the app" "$(app_count request '^/rr/')" 0
expect_eq "... no upstream connection was opened (app side)" "$(app_count connect)" "$cx0"
expect_eq "... no upstream connection was opened (proxy upstream_cx_total)" \
    "$(stat_of upstream_cx_total)" "$upcx0"
expect_eq "... counted in h2_reset_flood" "$(stat_of h2_reset_flood)" 1
early=$(stat_of h2_resets_early)
check "... h2_resets_early counts the cancelled streams ($early >= 150)" test "$early" -ge 150
# 20 attackers in a row (also through the detecting listener), then RSS
rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status")
goaways=0
for i in $(seq 10); do
    for port in "$P" "$PD"; do
        o=$($PEER "$port" rapid-reset 2000)
        [[ $(field "$o" goaway) == 11 ]] && goaways=$((goaways + 1))
    done
done
expect_eq "20 more rapid-reset connections: each ends with GOAWAY(11)" "$goaways" 20
expect_eq "... still nothing reached the app" "$(app_count request '^/rr/')" 0
expect_eq "... and no upstream connection was opened" "$(app_count connect)" "$cx0"
rss1=$(awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status")
check "... proxy RSS bounded (${rss0} kB -> ${rss1} kB, growth < 32 MB)" test $((rss1 - rss0)) -lt 32768
check "... proxy alive" alive "$PROXY_PID"
out=$($PEER "$P" get)
expect_eq "... and serving: GET answered 200" "$(field "$out" statuses)" "[200]"

# -- CONTINUATION flood ----------------------------------------------------------------------
n0=$(app_count request)
out=$(H2PEER_WAIT=5 $PEER "$P" continuation-flood 10000)
expect_eq "CONTINUATION flood (10000 frames): GOAWAY ENHANCE_YOUR_CALM (11)" "$(field "$out" goaway)" 11
check "... well before all of it was sent ($(field "$out" sent) bytes)" test "$(field "$out" sent)" -lt 200000
expect_eq "... nothing reached the app" "$(app_count request)" "$n0"

# -- huge header blocks ----------------------------------------------------------------------
out=$($PEER "$P" big-header 200000)
expect_eq "a 200 kB header field: GOAWAY COMPRESSION_ERROR (9)" "$(field "$out" goaway)" 9
expect_eq "... nothing reached the app" "$(app_count request)" "$n0"
big=$(head -c 10000 /dev/zero | tr '\0' a)
code=$(curl -s -m 60 --http2-prior-knowledge -o /dev/null -w '%{http_code}' -H "x-big: $big" \
    "http://127.0.0.1:$P/big")
expect_eq "a 10 kB header over max_header_bytes 8192: 431" "$code" 431
expect_eq "... nothing reached the app" "$(app_count request)" "$n0"

# -- control-frame floods ---------------------------------------------------------------------
for a in settings-flood ping-flood; do
    t0=$(date +%s)
    out=$(H2PEER_WAIT=10 $PEER "$P" $a 100000)
    t1=$(date +%s)
    check "$a (100000 frames, ACKs never read): the proxy ends the connection ($(field "$out" closed), goaway $(field "$out" goaway), $((t1 - t0)) s)" \
        test "$(field "$out" closed)" == True -o "$(field "$out" goaway)" != null
    check "... proxy alive" alive "$PROXY_PID"
done
out=$($PEER "$P" window-overflow)
expect_eq "WINDOW_UPDATE past 2^31-1: GOAWAY FLOW_CONTROL_ERROR (3)" "$(field "$out" goaway)" 3

# -- empty DATA frames -------------------------------------------------------------------------
zero_bodies() { python3 -c "
import json,sys
for l in open(sys.argv[1]):
    e=json.loads(l)
    if e['event']=='request' and e['path']=='/zero': print(e['body'])" "$APPLOG" | tr '\n' ' '; }
out=$($PEER "$P" zero-data 100)
expect_eq "100 empty DATA frames then 'hello': answered 200" "$(field "$out" statuses)" "[200]"
expect_eq "... the app got exactly the 5 body bytes" "$(zero_bodies)" "68656c6c6f "
out=$($PEER "$P" zero-data 10000)
expect_eq "10000 empty DATA frames: GOAWAY ENHANCE_YOUR_CALM (11)" "$(field "$out" goaway)" 11
expect_eq "... counted in h2_empty_frame_flood" "$(stat_of h2_empty_frame_flood)" 1
expect_eq "... the app never got a complete second request" "$(zero_bodies)" "68656c6c6f "

# -- a client that never reads ----------------------------------------------------------------
rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status")
H2PEER_WAIT=4 $PEER "$PB" never-read 50 >"$TMP/never.json" &
npid=$!
sleep 3
rss1=$(awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status")
wait $npid
check "50 streams of 100 MB, client never reads: proxy RSS ${rss0} -> ${rss1} kB (growth < 64 MB)" \
    test $((rss1 - rss0)) -lt 65536
no_h2_sessions() { [[ $(stat_of h2_server_sessions) == 0 ]]; }
wait_until 10 no_h2_sessions
expect_eq "... the session is gone after the client left" "$(stat_of h2_server_sessions)" 0
out=$($PEER "$P" get)
expect_eq "... and the proxy still serves: GET answered 200" "$(field "$out" statuses)" "[200]"

stop_pid "$PROXY_PID"
expect_eq "proxy exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "no sanitizer report" "$TMP/proxy.log"
finish
