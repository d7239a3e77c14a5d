#!/usr/bin/env bash
# HTTP/1.1 framing the attacker controls (docs/config.md
# "Hostile HTTP/1.1"). Raw requests through four entry points:
#   P.in   plaintext inbound listener (with a policy)     -> recording app
#   P.out  plaintext outbound listener                    -> recording app
#   A.out  outbound mesh listener: A -> h2 over mTLS -> B -> recording app
#   B.in   strict mTLS inbound listener, HTTP/1.1 inside TLS with a mesh certificate
# Every refused request must reach the app as NOTHING, and every accepted one as
# exactly the expected bytes: after each request a sentinel request goes the
# same way, and what the app received before the sentinel is compared byte for
# byte (test/tools/h1_recorder.py records every byte per connection).
# Then hostile upstreams (bad status, Content-Length overflow, stray bytes,
# an idle pooled connection that speaks), the 5xx warn lines, the access log
# escaping, the rate-limited TLS refusal lines, nginx and haproxy on the same
# requests, and the proxies staying up with bounded memory.
source "$(dirname "$0")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
REC="python3 $REMORA_ROOT/test/tools/h1_recorder.py"

# start_recorder NAME [ARGS...]: sets REC_PORT; records into $TMP/NAME/
start_recorder() {
    local name=$1; shift
    bg "$name" $REC --dir "$TMP/$name" "$@"
    REC_PORT=""
    WAIT_UNTIL_STEP=0.05 wait_until 10 listen_port "$TMP/$name.log" && { REC_PORT=$LISTEN_PORT; return 0; }
    fail "start_recorder $name: no port"; return 1
}

# ---- PKI and the mesh pair (as mtls.sh) -------------------------------------------------
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || exit 1
wl() { "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --spiffe-id "$1" \
        --out-cert "$2" --out-key "$3" >/dev/null; }
wl spiffe://cluster.local/ns/shop/sa/frontend "$D/a.pem" "$D/a-key.pem"
wl spiffe://cluster.local/ns/shop/sa/web "$D/b.pem" "$D/b-key.pem"
FRONT=spiffe://cluster.local/ns/shop/sa/frontend
WEB=spiffe://cluster.local/ns/shop/sa/web

start_recorder app || exit 1; APP=$REC_PORT
start_recorder bad000 --response 'HTTP/1.1 000 Zero\r\ncontent-length: 0\r\n\r\n' || exit 1; R000=$REC_PORT
start_recorder bad600 --response 'HTTP/1.1 600 Six\r\ncontent-length: 0\r\n\r\n' || exit 1; R600=$REC_PORT
SMUG='HTTP/1.1 200 OK\r\nx-smuggled: 1\r\ncontent-length: 0\r\n\r\n' # 52 bytes
start_recorder badcl --response "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n$SMUG" || exit 1; RCL=$REC_PORT
start_recorder headbody --response "HTTP/1.1 200 OK\r\ncontent-length: 52\r\n\r\n$SMUG" \
    --response 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nclean' || exit 1; RHEAD=$REC_PORT
start_recorder idle --response 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nclean' --after "150:$SMUG" || exit 1
RIDLE=$REC_PORT

cat >"$TMP/policy.json" <<'JSON'
{"default": "allow",
 "rules": [{"name": "no-internal", "action": "deny", "when": {"headers": {"host": ["internal.svc", "internal.svc:*"]}}},
           {"name": "all", "action": "allow"}]}
JSON
P_ADMIN=$(free_port); P_IN=$(free_port); P_OUT=$(free_port); P_000=$(free_port); P_600=$(free_port)
P_CL=$(free_port); P_HEAD=$(free_port); P_IDLE=$(free_port); P_DEAD=$(free_port)
cat >"$TMP/p.json" <<JSON
{"admin": {"address": "127.0.0.1:$P_ADMIN"}, "log_level": "info", "access_log": "$TMP/p-access.log",
 "policy_file": "$TMP/policy.json",
 "listeners": [
  {"name": "in", "address": "127.0.0.1:$P_IN", "direction": "inbound", "upstream": "127.0.0.1:$APP", "tls": "disabled"},
  {"name": "out", "address": "127.0.0.1:$P_OUT", "direction": "outbound", "upstream": "127.0.0.1:$APP", "tls": "disabled"},
  {"name": "up000", "address": "127.0.0.1:$P_000", "direction": "outbound", "upstream": "127.0.0.1:$R000", "tls": "disabled"},
  {"name": "up600", "address": "127.0.0.1:$P_600", "direction": "outbound", "upstream": "127.0.0.1:$R600", "tls": "disabled"},
  {"name": "upcl", "address": "127.0.0.1:$P_CL", "direction": "outbound", "upstream": "127.0.0.1:$RCL", "tls": "disabled"},
  {"name": "uphead", "address": "127.0.0.1:$P_HEAD", "direction": "outbound", "upstream": "127.0.0.1:$RHEAD", "tls": "disabled"},
  {"name": "upidle", "address": "127.0.0.1:$P_IDLE", "direction": "outbound", "upstream": "127.0.0.1:$RIDLE", "tls": "disabled"},
  {"name": "dead", "address": "127.0.0.1:$P_DEAD", "direction": "outbound", "upstream": "127.0.0.1:1", "tls": "disabled"}]}
JSON
A_ADMIN=$(free_port); A_OUT=$(free_port); B_ADMIN=$(free_port); B_IN=$(free_port)
cat >"$TMP/a.json" <<JSON
{"admin": {"address": "127.0.0.1:$A_ADMIN"},
 "listeners": [{"name": "outbound", "address": "127.0.0.1:$A_OUT", "direction": "outbound",
                "upstream": "127.0.0.1:$B_IN", "tls": "mesh"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "frontend",
              "cert_file": "$D/a.pem", "key_file": "$D/a-key.pem", "bundle_file": "$D/root.pem"}}
JSON
cat >"$TMP/b.json" <<JSON
{"admin": {"address": "127.0.0.1:$B_ADMIN"}, "log_level": "info", "access_log": "$TMP/b-access.log",
 "policy_file": "$TMP/policy.json",
 "listeners": [{"name": "inbound", "address": "127.0.0.1:$B_IN", "direction": "inbound",
                "upstream": "127.0.0.1:$APP", "tls": "strict"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
              "cert_file": "$D/b.pem", "key_file": "$D/b-key.pem", "bundle_file": "$D/root.pem"}}
JSON
ADMIN_PORT=$P_ADMIN start_proxy p "$TMP/p.json" || exit 1; PPID_=$PROXY_PID
ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || exit 1; BPID=$PROXY_PID
ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || exit 1; APID=$PROXY_PID

# send ENTRY RAW: the raw request through one entry point; prints the answer.
send() {
    case $1 in
    p-in) $RAW "127.0.0.1:$P_IN" "$2" --timeout 3 ;;
    p-out) $RAW "127.0.0.1:$P_OUT" "$2" --timeout 3 ;;
    a-out) $RAW "127.0.0.1:$A_OUT" "$2" --timeout 3 ;;
    b-in) $RAW "127.0.0.1:$B_IN" "$2" --timeout 3 --cert "$D/a.pem" --key "$D/a-key.pem" ;;
    esac
}

# What the app receives for the sentinel request of each entry point, after
# its request line (the mesh adds the verified identity).
sentinel_tail() {
    case $1 in
    p-in | p-out) printf 'host: sentinel.svc\r\n\r\n' ;;
    a-out | b-in) printf 'host: sentinel.svc\r\nx-forwarded-client-cert: By=%s;URI=%s\r\n\r\n' "$WEB" "$FRONT" ;;
    esac
}

SEQ=0
OFF=0 # bytes of $TMP/app/all.bin already accounted for
# app_got ENTRY OUTFILE: send a sentinel through ENTRY, wait (10 s) until the
# app has it, write to OUTFILE what the app received before it, and check the
# sentinel itself arrived exactly. Moves OFF past the sentinel.
app_got() {
    SEQ=$((SEQ + 1))
    local mark="GET /sentinel-$SEQ HTTP/1.1"
    local ans
    ans=$(send "$1" "GET /sentinel-$SEQ HTTP/1.1\r\nHost: sentinel.svc\r\nConnection: close\r\n\r\n" | head -1)
    [[ $ans == "HTTP/1.1 200"* ]] || fail "sentinel $SEQ through $1 answered '$ans'"
    sentinel_tail "$1" >"$TMP/sentinel.want"
    python3 - "$TMP/app/all.bin" "$OFF" "$mark" "$2" "$TMP/sentinel.want" "$TMP/off" <<'PY'
import sys, time
path, off, mark, out, want_tail, offf = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4], sys.argv[5], sys.argv[6]
tail = open(want_tail, "rb").read()
data = b""
for _ in range(200):
    data = open(path, "rb").read()[off:]
    i = data.find(mark)
    if i >= 0 and data.find(b"\r\n\r\n", i) >= 0:
        break
    time.sleep(0.05)
else:
    open(out, "wb").write(data)
    open(offf, "w").write(str(off + len(data)))
    sys.exit("the sentinel never reached the app")
open(out, "wb").write(data[:i])
end = data.find(b"\r\n\r\n", i) + 4
got = data[i + len(mark) + 2:end]
open(offf, "w").write(str(off + end))
if got != tail:
    sys.exit("the sentinel reached the app as %r, want %r" % (got, tail))
PY
    local rc=$?
    OFF=$(cat "$TMP/off")
    return $rc
}

# hostile NAME ENTRY RAW WANT_STATUS [WANT_APP_BYTES]: send RAW through ENTRY;
# the answer's status line must start with "HTTP/1.1 WANT_STATUS" and the app
# must have received exactly WANT_APP_BYTES (printf escapes; default nothing).
hostile() {
    local name=$1 entry=$2 raw=$3 want=$4 bytes=${5:-}
    local ans
    ans=$(send "$entry" "$raw" | head -1 | tr -d '\r')
    expect_match "$name [$entry]: answered $want" "$ans" "^HTTP/1.1 $want"
    if app_got "$entry" "$TMP/got.bin"; then
        printf "$bytes" >"$TMP/want.bin"
        if cmp -s "$TMP/got.bin" "$TMP/want.bin"; then
            pass "$name [$entry]: the app received exactly $(stat -c %s "$TMP/want.bin") bytes"
        else
            fail "$name [$entry]: the app received $(python3 -c 'import sys; print(repr(open(sys.argv[1],"rb").read()[:300]))' "$TMP/got.bin"), want $(python3 -c 'import sys; print(repr(open(sys.argv[1],"rb").read()))' "$TMP/want.bin")"
        fi
    else
        fail "$name [$entry]: sentinel check failed"
    fi
}

ALL="p-in p-out a-out b-in"
# ---- row 1: Content-Length above 2^63-1, the body a second request -----------------------------
for e in $ALL; do
    hostile "row 1: Content-Length 18446744073709551615 -> 400, nothing forwarded" "$e" \
        'POST /upload HTTP/1.1\r\nHost: public.svc\r\nContent-Length: 18446744073709551615\r\n\r\nGET /admin HTTP/1.1\r\nHost: public.svc\r\nX-Forwarded-Client-Cert: By=forged\r\n\r\n' 400
done
hostile "row 1: Content-Length 9223372036854775808 (2^63) -> 400" p-in \
    'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\nxyz' 400
# neighbours: Content-Length spellings and duplicates, CL + TE
for e in p-in a-out; do
    hostile "CL with a leading +" "$e" 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc' 400
    hostile "CL as a list '3, 3'" "$e" 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc' 400
    hostile "two differing Content-Length" "$e" \
        'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc' 400
    hostile "Content-Length and Transfer-Encoding" "$e" \
        'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' 400
done
hostile "CL with surrounding spaces is fine (OWS), body forwarded" p-out \
    'POST /ows HTTP/1.1\r\nConnection: close\r\nHost: a\r\nContent-Length:  3 \r\n\r\nabc' 200 \
    'POST /ows HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc'

# ---- row 6: Transfer-Encoding that does not end in chunked ------------------------------------
for e in $ALL; do
    hostile "row 6: Transfer-Encoding: gzip -> 400 before anything is forwarded" "$e" \
        'POST /transfer?amount=100 HTTP/1.1\r\nHost: public.svc\r\nTransfer-Encoding: gzip\r\n\r\nabc' 400
done
for e in p-in a-out; do
    hostile "TE: chunked, gzip -> 400" "$e" 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n' 400
    hostile "TE: identity -> 400" "$e" 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nabc' 400
    hostile "TE: gzip, chunked -> 501 (coding we cannot pass on)" "$e" \
        'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' 501
    hostile "TE: chunked twice (two lines) -> 400" "$e" \
        'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' 400
    hostile "HTTP/1.0 with Transfer-Encoding -> 400" "$e" \
        'POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' 400
    hostile "obs-fold -> 400" "$e" 'GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n Host: internal.svc\r\n\r\n' 400
    hostile "NUL in a header value -> 400" "$e" 'GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n' 400
    hostile "bare LF ending a header line -> 400" "$e" 'GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n' 400
    hostile "a fragment in the target -> 400" "$e" 'GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n' 400
done
hostile "chunked body re-chunked without its extensions" p-out \
    'POST /c HTTP/1.1\r\nConnection: close\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;name=value\r\nabc\r\n0\r\n\r\n' 200 \
    'POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'
ext=$(head -c 5000 /dev/zero | tr '\0' 'e')
ans=$(send p-out "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;$ext\r\nabc\r\n0\r\n\r\n" | head -1)
expect_match "chunk extensions over 4 KiB -> 400" "$ans" '^HTTP/1.1 400'
app_got p-out "$TMP/got.bin"
python3 - "$TMP/got.bin" <<'PY' && pass "... the app got the head and no body byte" || fail "... the app got body bytes: $(head -c 200 "$TMP/got.bin")"
import sys
d = open(sys.argv[1], "rb").read()
sys.exit(0 if d == b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n" else 1)
PY
ans=$(send p-out 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc' | head -1)
expect_match "chunk size overflow -> 400" "$ans" '^HTTP/1.1 400'
app_got p-out "$TMP/got.bin"

# ---- row 7: absolute-form target vs Host ----------------------------------------------------
hostile "row 7: absolute-form authority wins (outbound, no policy): origin form + matching Host" p-out \
    'GET http://internal.svc/secret?x=1 HTTP/1.1\r\nConnection: close\r\nHost: public.svc\r\n\r\n' 200 \
    'GET /secret?x=1 HTTP/1.1\r\nhost: internal.svc\r\n\r\n'
for e in p-in a-out b-in; do
    hostile "row 7: the policy decides on the absolute-form authority (internal.svc denied)" "$e" \
        'GET http://internal.svc/secret HTTP/1.1\r\nConnection: close\r\nHost: public.svc\r\n\r\n' 403
done
hostile "absolute-form without a path -> '/'" p-out 'GET http://Public.svc:8080?q HTTP/1.1\r\nConnection: close\r\nHost: x\r\n\r\n' 200 \
    'GET /?q HTTP/1.1\r\nhost: Public.svc:8080\r\n\r\n'
hostile "absolute-form with userinfo -> 400" p-in 'GET http://public.svc@internal.svc/ HTTP/1.1\r\nHost: public.svc\r\n\r\n' 400
hostile "absolute-form, another scheme -> 400" p-in 'GET ftp://internal.svc/ HTTP/1.1\r\nHost: public.svc\r\n\r\n' 400
hostile "asterisk-form for GET -> 400" p-in 'GET * HTTP/1.1\r\nHost: a\r\n\r\n' 400
hostile "OPTIONS * is fine" p-out 'OPTIONS * HTTP/1.1\r\nConnection: close\r\nHost: a\r\n\r\n' 200 'OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n'
line=$(grep '"path":"/secret?x=1"' "$TMP/p-access.log" | head -1)
expect_match "row 7: the access log names the authority the app saw" "$line" '"authority":"internal.svc"'

# ---- row 8: two Host headers; invalid Host ---------------------------------------------------
for e in $ALL; do
    hostile "row 8: two different Host headers -> 400" "$e" \
        'GET /secret HTTP/1.1\r\nHost: public.svc\r\nHost: internal.svc\r\n\r\n' 400
done
hostile "two identical Host headers -> 400 too (RFC 9112 3.2)" p-in 'GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n' 400
hostile "Host with a slash -> 400" p-in 'GET / HTTP/1.1\r\nHost: public.svc/x\r\n\r\n' 400
hostile "Host with a space -> 400" p-in 'GET / HTTP/1.1\r\nHost: public.svc x\r\n\r\n' 400
hostile "no Host in HTTP/1.1 -> 400" p-in 'GET / HTTP/1.1\r\nX: y\r\n\r\n' 400

# ---- row 12: bytes the log cannot print ------------------------------------------------------
hostile "row 12: 0xff in the target is forwarded as sent" p-out 'GET /caf\xff HTTP/1.1\r\nConnection: close\r\nHost: a\r\n\r\n' 200 \
    'GET /caf\xff HTTP/1.1\r\nhost: a\r\n\r\n'
hostile "row 12: 0xff in Host -> 400" p-out 'GET /hostff HTTP/1.1\r\nHost: a\xffb\r\n\r\n' 400
sleep 0.3
line=$(grep -a '"path":"/caf' "$TMP/p-access.log" | tail -1)
expect_match "row 12: access log keeps the path, escaped" "$line" '"path":"/caf\\\\xff"'
line=$(grep -a '"path":"/hostff"' "$TMP/p-access.log" | tail -1)
expect_match "row 12: access log keeps the refused Host, escaped, and the 400" "$line" '"authority":"a\\\\xffb".*"status":400'
expect_match "row 12: ... and names the peer" "$line" '"peer":"127.0.0.1:[0-9]+"'
# HTTP/2: :authority and Host must agree (RFC 9113 8.3.1); a refused stream names its peer
code=$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge -H 'Host: internal.svc' "http://127.0.0.1:$P_IN/h2host")
expect_eq "h2: curl turns Host into :authority: the policy denies internal.svc" "$code" 403
app_got p-in "$TMP/got.bin"; expect_eq "... and the app got nothing" "$(stat -c %s "$TMP/got.bin")" 0
out=$(nghttp -v -H 'host: internal.svc' "http://127.0.0.1:$P_IN/h2mismatch" 2>&1)
expect_match "h2: a host field naming another authority than :authority -> stream reset" "$out" 'recv RST_STREAM'
[[ $out == *':status: 200'* ]] && fail "... but it was answered 200" || pass "... not answered"
app_got p-in "$TMP/got.bin"; expect_eq "... and the app got nothing" "$(stat -c %s "$TMP/got.bin")" 0
line=$(grep -a '"path":"/h2mismatch"' "$TMP/p-access.log" | tail -1)
expect_match "row 12: the refused h2 stream's access log line names its peer" "$line" '"peer":"127.0.0.1:[0-9]+"'

# ---- stays up ----------------------------------------------------------------------------------
check "P still alive" alive "$PPID_"
check "A still alive" alive "$APID"
check "B still alive" alive "$BPID"

# ---- rows 10, 11: invalid upstream responses -> 502, logged at warn with cause and endpoint ------
out=$(send p-out 'GET /x HTTP/1.1\r\nHost: a\r\n\r\n' >/dev/null; $RAW "127.0.0.1:$P_000" 'GET /r11 HTTP/1.1\r\nHost: a\r\n\r\n' --timeout 3)
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
for i in $(seq 30); do curl -s -o /dev/null "http://127.0.0.1:$P_DEAD/dead-$i"; done
sleep 2.5 # a window passes; the periodic flush writes the count of what it held back
lines=$(grep -a 'connection refused' "$TMP/p.log" | tail -n +$((n0 + 1)))
written=$(grep -c 'GET /dead-' <<<"$lines")
held=$(grep -o 'suppressed [0-9]* similar' <<<"$lines" | awk '{s += $2} END {print s + 0}')
check "row 10: 503 for a dead upstream logged, rate-limited ($written lines for 30 answers)" test "$written" -ge 1 -a "$written" -lt 30
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
sleep 1 # the upstream speaks on the idle pooled connection 150 ms after its answer
out=$(curl -s -i "http://127.0.0.1:$P_IDLE/i2")
expect_match "idle pool: a pooled connection that became readable is closed; the next request gets a clean answer" "$out" 'clean'
[[ $out == *x-smuggled* ]] && fail "idle pool: stray bytes answered a request" || pass "idle pool: stray bytes answered nothing"
check "idle pool: ... on a new upstream connection" test -s "$TMP/idle/conn-2.bin"
expect_match "idle pool: warn line names the endpoint" "$(grep -a "unexpected bytes" "$TMP/p.log" | grep "$RIDLE" | head -1)" \
    "h1 upstream 127.0.0.1:$RIDLE: .*unexpected bytes"
st=$(curl -s "http://127.0.0.1:$P_ADMIN/stats" | jq .upstream_cx_stray_bytes)
check "stats: upstream_cx_stray_bytes counts them ($st)" test "$st" -ge 2

# ---- row 14: failed TLS handshakes: a rate-limited warn line with counts, and the metric ---------
f0=$(curl -s "http://127.0.0.1:$B_ADMIN/stats" | jq .tls_handshake_failures)
n0=$(grep -ac 'mTLS from .* refused' "$TMP/b.log")
for _ in $(seq 40); do curl -s -k -m 3 -o /dev/null "https://127.0.0.1:$B_IN/"; done
sleep 2.5
f1=$(curl -s "http://127.0.0.1:$B_ADMIN/stats" | jq .tls_handshake_failures)
lines=$(grep -a 'mTLS' "$TMP/b.log" | grep -a 'refused' | tail -n +$((n0 + 1)))
written=$(grep -c 'mTLS from' <<<"$lines")
held=$(grep -o 'suppressed [0-9]* similar' <<<"$lines" | awk '{s += $2} END {print s + 0}')
expect_eq "row 14: the metric counts all 40 failed handshakes" "$((f1 - f0))" 40
check "row 14: at most a few warn lines ($written for 40)" test "$written" -ge 1 -a "$written" -le 20
expect_eq "row 14: lines written + counted as suppressed = 40" "$((written + held))" 40
echo "# sample lines: $(grep -a -m1 'mTLS from' "$TMP/b.log")"
echo "#               $(grep -a -m1 'suppressed .* similar lines' "$TMP/b.log")"

# ---- peers: nginx and haproxy refuse the same requests --------------------------------------------
NG=$(free_port); HA=$(free_port)
start_recorder peerapp || exit 1; PEERAPP=$REC_PORT
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<CONF
daemon off; pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/error.log;
events {}
http { access_log off; client_body_temp_path $TMP/nginx; proxy_temp_path $TMP/nginx;
       fastcgi_temp_path $TMP/nginx; uwsgi_temp_path $TMP/nginx; scgi_temp_path $TMP/nginx;
       server { listen 127.0.0.1:$NG; location / { proxy_pass http://127.0.0.1:$PEERAPP; proxy_http_version 1.1; } } }
CONF
bg nginx nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
cat >"$TMP/haproxy.cfg" <<CONF
defaults
  mode http
  timeout connect 2s
  timeout client 5s
  timeout server 5s
frontend f
  bind 127.0.0.1:$HA
  default_backend b
backend b
  server app 127.0.0.1:$PEERAPP
CONF
bg haproxy haproxy -f "$TMP/haproxy.cfg" -db
wait_port "$NG"; wait_port "$HA"
peer() { # NAME RAW [PEERS]
    local who port ans
    for who in ${3:-nginx haproxy}; do
        [[ $who == nginx ]] && port=$NG || port=$HA
        ans=$($RAW "127.0.0.1:$port" "$2" --timeout 3 | head -1 | tr -d '\r')
        expect_match "peer $who: $1 -> refused" "$ans" '^HTTP/1.1 (400|501)'
    done
}
# haproxy 2.6 accepts a Content-Length up to 2^64-1 and passes it on (the second request stays
# its body, so haproxy itself is not fooled, but an app whose length is signed is): nginx only
peer "row 1: Content-Length 2^64-1" 'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n' nginx
peer "row 6: Transfer-Encoding: gzip" 'POST /transfer?amount=100 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc'
peer "row 8: two different Host" 'GET /secret HTTP/1.1\r\nHost: public.svc\r\nHost: internal.svc\r\n\r\n'
peer "two differing Content-Length" 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc'
sleep 0.5
expect_eq "peers forwarded none of them to their app" "$(stat -c %s "$TMP/peerapp/all.bin")" 0

# ---- the proxies stay up, with bounded memory, and sanitizer-clean -------------------------------
rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$PPID_/status")
python3 - "$P_IN" <<'PY'
import socket, sys
reqs = [b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n" + b"x" * 1000,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n" + b"y" * 1000,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://internal.svc/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]
for i in range(400):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
    s.sendall(reqs[i % len(reqs)])
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
PY
rss1=$(awk '/^VmRSS/ {print $2}' "/proc/$PPID_/status")
check "P survived 400 more hostile requests" alive "$PPID_"
check "P's RSS stays bounded (${rss0} kB -> ${rss1} kB, under +30 MB)" test $((rss1 - rss0)) -lt 30000
for p in p a b; do
    case $p in p) pid=$PPID_ ;; a) pid=$APID ;; b) pid=$BPID ;; esac
    stop_pid "$pid"
    expect_eq "$p exits cleanly on SIGTERM" "$STOP_RC" 0
    expect_sanitizers_clean "$p: no sanitizer report" "$TMP/$p.log"
done
finish
