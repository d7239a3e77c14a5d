#!/usr/bin/env bash
# Hostile HTTP/1.1 upstreams (docs/config.md "Hostile HTTP/1.1", rows 10 and 11): a plaintext
# outbound listener per recording upstream (test/tools/h1_recorder.py) that answers status
# 000 / 600, Content-Length 2^64-1 followed by a smuggled response, a body after a HEAD
# response, or speaks on an idle pooled connection; and a dead upstream. Each answer is a
# 502/503 with a warn line naming cause and endpoint, the warn lines rate-limited without
# losing a count, stray bytes never answer a request (a fresh connection does), and the
# proxy exits clean. Hostile requests: hostile_h1.sh.
source "$(dirname "$0")/../lib.sh"

start_recorder bad000 --response 'HTTP/1.1 000 Zero\r\ncontent-length: 0\r\n\r\n' || exit 1; R000=$REC_PORT
start_recorder bad600 --response 'HTTP/1.1 600 Six\r\ncontent-length: 0\r\n\r\n' || exit 1; R600=$REC_PORT
SMUG='HTTP/1.1 200 OK\r\nx-smuggled: 1\r\ncontent-length: 0\r\n\r\n' # 52 bytes
start_recorder badcl --response "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n$SMUG" || exit 1; RCL=$REC_PORT
start_recorder headbody --response "HTTP/1.1 200 OK\r\ncontent-length: 52\r\n\r\n$SMUG" \
    --response 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nclean' || exit 1; RHEAD=$REC_PORT
start_recorder idle --response 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nclean' --after "150:$SMUG" || exit 1
RIDLE=$REC_PORT

P_ADMIN=$(free_port); P_000=$(free_port); P_600=$(free_port)
P_CL=$(free_port); P_HEAD=$(free_port); P_IDLE=$(free_port); P_DEAD=$(free_port)
cat >"$TMP/p.json" <<JSON
{"admin": {"address": "127.0.0.1:$P_ADMIN"}, "log_level": "info",
 "listeners": [
  {"name": "up000", "address": "127.0.0.1:$P_000", "direction": "outbound", "upstream": "127.0.0.1:$R000", "tls": "disabled"},
  {"name": "up600", "address": "127.0.0.1:$P_600", "direction": "outbound", "upstream": "127.0.0.1:$R600", "tls": "disabled"},
  {"name": "upcl", "address": "127.0.0.1:$P_CL", "direction": "outbound", "upstream": "127.0.0.1:$RCL", "tls": "disabled"},
  {"name": "uphead", "address": "127.0.0.1:$P_HEAD", "direction": "outbound", "upstream": "127.0.0.1:$RHEAD", "tls": "disabled"},
  {"name": "upidle", "address": "127.0.0.1:$P_IDLE", "direction": "outbound", "upstream": "127.0.0.1:$RIDLE", "tls": "disabled"},
  {"name": "dead", "address": "127.0.0.1:$P_DEAD", "direction": "outbound", "upstream": "127.0.0.1:1", "tls": "disabled"}]}
JSON
ADMIN_PORT=$P_ADMIN start_proxy p "$TMP/p.json" || exit 1; PPID_=$PROXY_PID

# ---- rows 10, 11: invalid upstream responses -> 502, logged at warn with cause and endpoint ------
out=$($RAW "127.0.0.1:$P_000" 'GET /r11 HTTP/1.1\r\nHost: a\r\n\r\n' --timeout 3)
expect_match "row 11: status 000 from the upstream -> 502" "$out" '^HTTP/1.1 502'
[[ $out == *" 0 "* || $out == *Informational* ]] && fail "row 11: status 0 passed on" || pass "row 11: nothing of the 000 response passed on"
out=$($RAW "127.0.0.1:$P_600" 'GET /r600 HTTP/1.1\r\nHost: a\r\n\r\n' --timeout 3)
expect_match "status 600 from the upstream -> 502" "$out" '^HTTP/1.1 502'
out=$($RAW "127.0.0.1:$P_CL" 'GET /rcl HTTP/1.1\r\nHost: a\r\n\r\n' --timeout 3)
expect_match "row 1 (response): Content-Length 2^64-1 from the upstream -> 502" "$out" '^HTTP/1.1 502'
[[ $out == *x-smuggled* ]] && fail "... the smuggled response reached the client" || pass "... the smuggled response did not reach the client"
wait_until 5 grep -q 'GET /rcl' "$TMP/p.log"
expect_match "row 10: 502 warn line: status 000, cause and endpoint" "$(grep -a 'GET /r11' "$TMP/p.log")" \
    "warn  proxy: listener up000: 502 for GET /r11 from 127.0.0.1:[0-9]+, upstream 127.0.0.1:$R000: upstream sent an invalid response: invalid status code"
expect_match "row 10: 502 warn line for the Content-Length overflow" "$(grep -a 'GET /rcl' "$TMP/p.log")" \
    "warn  proxy: listener upcl: 502 for GET /rcl .*upstream 127.0.0.1:$RCL: upstream sent an invalid response: Content-Length above 2\^63-1"
# a dead upstream fails every request: the warn lines are rate-limited, no count is lost
n0=$(grep -ac 'connection refused' "$TMP/p.log")
dead=(); for i in $(seq 30); do dead+=(-o /dev/null "http://127.0.0.1:$P_DEAD/dead-$i"); done
t0=${EPOCHREALTIME/./}
curl -s "${dead[@]}" # one client, one connection: 30 answers in a burst
secs=$(((${EPOCHREALTIME/./} - t0) / 1000000 + 1))
# dead_accounted: the lines written plus the periodic flush's counts add up to the 30 answers
# (the flush comes once a second after the kind went quiet: polled, not slept for)
dead_accounted() {
    lines=$(grep -a 'connection refused' "$TMP/p.log" | tail -n +$((n0 + 1)))
    written=$(grep -c 'GET /dead-' <<<"$lines")
    held=$(grep -o 'suppressed [0-9]* similar' <<<"$lines" | awk '{s += $2} END {print s + 0}')
    ((written + held == 30))
}
wait_until 15 dead_accounted
# the limit is 5 lines a second per kind: the burst took $secs s (rounded up), so at most
# 5 * ($secs + 1) lines, however slow the machine made it
check "row 10: 503 for a dead upstream logged, rate-limited ($written lines for 30 answers in ${secs} s)" \
    test "$written" -ge 1 -a "$written" -le $((5 * (secs + 1)))
expect_eq "row 10: lines written + counted as suppressed = 30 answers" "$((written + held))" 30
expect_match "row 10: ... naming the endpoint" "$(grep -a 'GET /dead-1 ' "$TMP/p.log")" \
    "503 for GET /dead-1 from 127.0.0.1:[0-9]+, upstream 127.0.0.1:1: upstream connect error: connection refused"

# ---- row 10: stray bytes from an upstream never answer the next request ------------------------
out=$(curl -s -i -I "http://127.0.0.1:$P_HEAD/h1" ; curl -s -i "http://127.0.0.1:$P_HEAD/h2")
[[ $out == *x-smuggled* ]] && fail "a body after a HEAD response answered the next request" \
    || pass "a body after a HEAD response never answers the next request"
expect_match "... the next request got its own answer" "$out" 'clean'
check "... on a fresh upstream connection (the first was dropped)" test -s "$TMP/headbody/conn-2.bin"
expect_match "... and a warn line says so" "$(grep -a 'unexpected bytes' "$TMP/p.log" | head -1)" \
    "h1 upstream 127.0.0.1:$RHEAD: [0-9]+ unexpected bytes after a complete response; connection closed, not reused"
out=$(curl -s -i "http://127.0.0.1:$P_IDLE/i1")
expect_match "idle pool: first answer" "$out" 'clean'
# the upstream speaks on the idle pooled connection 150 ms after its answer; the proxy
# closes that connection when it becomes readable, and says so
idle_seen() { grep -a "unexpected bytes" "$TMP/p.log" | grep -q "$RIDLE"; }
check "idle pool: the stray bytes on the pooled connection are seen" wait_until 10 idle_seen
out=$(curl -s -i "http://127.0.0.1:$P_IDLE/i2")
expect_match "idle pool: a pooled connection that became readable is closed; the next request gets a clean answer" "$out" 'clean'
[[ $out == *x-smuggled* ]] && fail "idle pool: stray bytes answered a request" || pass "idle pool: stray bytes answered nothing"
check "idle pool: ... on a new upstream connection" test -s "$TMP/idle/conn-2.bin"
expect_match "idle pool: warn line names the endpoint" "$(grep -a "unexpected bytes" "$TMP/p.log" | grep "$RIDLE" | head -1)" \
    "h1 upstream 127.0.0.1:$RIDLE: .*unexpected bytes"
st=$(curl -s "http://127.0.0.1:$P_ADMIN/stats" | jq .upstream_cx_stray_bytes)
check "stats: upstream_cx_stray_bytes counts them ($st)" test "$st" -ge 2

check "P still alive" alive "$PPID_"
stop_pid "$PPID_"
expect_eq "p exits cleanly on SIGTERM" "$STOP_RC" 0
expect_sanitizers_clean "p: no sanitizer report" "$TMP/p.log"
finish
