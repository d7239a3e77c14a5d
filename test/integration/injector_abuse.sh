#!/usr/bin/env bash
# remora-injector's two ports under abuse (docs/injector.md, "Abuse bounds"):
#  - a whole-request deadline (webhook.request_timeout_ms) closes clients that
#    trickle the TLS handshake, the request head or the body, one byte a
#    second, on the webhook port and on the CA's own port;
#  - at most webhook.max_connections_per_ip connections per client address;
#  - the CA answers 401 to a missing or bad token before reading the body;
#  - request bodies held by all connections stay under
#    webhook.max_buffered_bytes (503 past it);
#  - the attack: 500 trickling clients on each port (63 addresses each), while
#    a normal AdmissionReview and a normal sign from other addresses are
#    answered within 1 s (p99) and the injector's RSS stays under 100 MB. Run
#    on the plain build (ASan's shadow memory and quarantine would be measured
#    instead of ours), as h2.sh does; the functional checks run on $REMORA_BUILD.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
MINT=(node "$REMORA_ROOT/test/tools/mint-token.js")
TRICKLE=(python3 "$REMORA_ROOT/test/tools/trickle.py")
SVC=remora-injector.remora-system.svc

# ---- PKI, token keys, a review, a CSR --------------------------------------------------
D=$TMP/pki
mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" || exit 1
"$CERTS" intermediate --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --cn east \
    --out-cert "$D/int.pem" --out-key "$D/int-key.pem" || exit 1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$D/wh-key.pem" -out "$D/wh.pem" -subj "/CN=remora-injector" \
    -addext "subjectAltName=DNS:$SVC" 2>/dev/null || exit 1
"${MINT[@]}" keys "$TMP/tok" || exit 1
TOKEN=$("${MINT[@]}" token "$TMP/tok" --ns shop --sa web --pod web-0 --exp-in 3600)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/web-key.pem" 2>/dev/null
"$CERTS" csr --key "$TMP/web-key.pem" --spiffe-id spiffe://cluster.local/ns/shop/sa/web \
    --out "$TMP/web.csr" || exit 1
jq -n --rawfile csr "$TMP/web.csr" '{csr: $csr}' >"$TMP/sign.json"
jq '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
     request: {uid: "uid-abuse", kind: {group: "", version: "v1", kind: "Pod"},
               resource: {group: "", version: "v1", resource: "pods"}, namespace: "shop",
               operation: "CREATE", userInfo: {username: "kubernetes-admin"},
               object: .pod, oldObject: null, dryRun: false}}' \
    "$REMORA_ROOT/test/data/injector/inject-opt-in.json" >"$TMP/review.json" || exit 1

# config NAME WH-PORT CA-PORT [EXTRA-JSON]: the CA on ca.address
config() {
    jq -n --arg wh "127.0.0.1:$2" --arg ca "127.0.0.1:$3" --arg d "$D" \
        --arg jwks "$TMP/tok/jwks.json" --argjson extra "${4:-{\}}" '{
        webhook: {address: $wh, cert_file: ($d + "/wh.pem"), key_file: ($d + "/wh-key.pem")},
        ca: {address: $ca, cert_file: ($d + "/int.pem"), key_file: ($d + "/int-key.pem"),
             root_file: ($d + "/root.pem"), jwks_file: $jwks},
        log_level: "warn"} * $extra' >"$TMP/$1.json"
}
# metric PORT NAME-REGEX: the value of the first matching line of /metrics
metric() {
    curl -s --cacert "$D/wh.pem" --resolve "$SVC:$1:127.0.0.1" "https://$SVC:$1/metrics" |
        grep -E "^$2 " | head -1 | awk '{print $2}'
}

# ---- config -------------------------------------------------------------------------------
config defaults 1 2
out=$("$INJECTOR" --check-config -c "$TMP/defaults.json" 2>&1)
expect_eq "the abuse bounds have defaults (config without them passes)" "$?:$out" "0:$TMP/defaults.json: ok"
bad() { # NAME EXTRA REGEX
    config "bad-$1" 1 2 "$2"
    out=$("$INJECTOR" --check-config -c "$TMP/bad-$1.json" 2>&1)
    if [[ $? -ne 0 && $out =~ $3 ]]; then pass "--check-config refuses $1"; else
        fail "--check-config refuses $1: '$out' want /$3/"; fi
}
bad timeout-50 '{"webhook": {"request_timeout_ms": 50}}' 'webhook\.request_timeout_ms: 50 is out of range'
bad per-ip-0 '{"webhook": {"max_connections_per_ip": 0}}' 'webhook\.max_connections_per_ip: 0 is out of range'
bad per-ip-string '{"webhook": {"max_connections_per_ip": "8"}}' 'webhook\.max_connections_per_ip'
bad buffered-below-body '{"webhook": {"max_buffered_bytes": 100000, "max_body_bytes": 200000}}' \
    'webhook\.max_buffered_bytes: 100000 is below webhook\.max_body_bytes'

# ---- the bounds, one by one (request_timeout_ms 2 s to keep this short) -------------------------
WH=$(free_port); CAP=$(free_port)
config small "$WH" "$CAP" '{"webhook": {"request_timeout_ms": 2000, "max_connections_per_ip": 4,
                                         "max_body_bytes": 65536, "max_buffered_bytes": 131072}}'
bg injector "$INJECTOR" -c "$TMP/small.json"
IPID=$LASTPID
wait_port "$WH" && wait_port "$CAP" || { fail "injector listens on both ports"; finish; }

# deadline: each trickle mode, on each port, is cut at ~2 s (3 x 30 KB bodies fit
# max_buffered_bytes). Each run comes from its own source address: the connections of the run
# before may still count against max_connections_per_ip on a loaded machine, and a connection
# over that limit is closed at once, which would read as a trickler cut early.
src=20
for port in webhook ca; do
    p=$WH; hdr=(); path=/inject
    [[ $port == ca ]] && { p=$CAP; hdr=(--header "Authorization: Bearer $TOKEN"); path=/v1/sign; }
    for mode in tls head body; do
        src=$((src + 1))
        r=$("${TRICKLE[@]}" attack --port "$p" --conns 3 --mode "$mode" --seconds 5.5 --length 30000 \
            --path "$path" "${hdr[@]}" --src-base "127.0.0.$src")
        # No trickler outlives the deadline (max), and the typical one is cut at it (median);
        # on a loaded machine a reconnect can be closed early (the minimum), which is no breach.
        md=$(jq .lifetime_median <<<"$r"); hi=$(jq .lifetime_max <<<"$r"); n=$(jq .closed_by_server <<<"$r")
        if [[ $n -ge 3 ]] && awk -v a="$md" -v b="$hi" 'BEGIN {exit !(a >= 1.9 && b <= 4.5)}'; then
            pass "$port port: a client trickling the $mode one byte a second is closed at the 2 s deadline (median $md s, max $hi s, $n closes)"
        else
            fail "$port port: $mode trickle not cut at 2 s: $r"
        fi
    done
done
expect_match "deadline closes counted on the webhook port" "$(metric "$WH" 'remora_injector_request_deadline_closes_total\{port="webhook"\}')" '^([6-9]|[1-9][0-9]+)$'
expect_match "... and on the CA port" "$(metric "$WH" 'remora_injector_request_deadline_closes_total\{port="ca"\}')" '^([6-9]|[1-9][0-9]+)$'

# a request that keeps a steady pace but lasts past the deadline is cut too
# (the deadline covers the whole request, not the gaps between bytes); curl
# only notices once it has sent everything
before=$(metric "$WH" 'remora_injector_request_deadline_closes_total\{port="webhook"\}')
# (8 KB/s: 7.5 s against the 2 s deadline, so curl's rate limiter sending its first chunks in
# a burst, or a loaded machine, cannot get the whole body in before it; at 20 KB/s it once did)
out=$(curl -s -m 15 --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" --limit-rate 8K \
    -o /dev/null -w '%{http_code} %{time_total}' --data-binary @<(head -c 60000 /dev/zero | tr '\0' x) \
    "https://$SVC:$WH/inject")
expect_match "a 60 KB body at 8 KB/s (7.5 s) is cut, not answered" "$out" '^000 '
expect_eq "... by the deadline (counted)" \
    "$(metric "$WH" 'remora_injector_request_deadline_closes_total\{port="webhook"\}')" $((before + 1))
code=$(curl -s -m 10 --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" -o /dev/null -w '%{http_code}' \
    --data-binary @"$TMP/review.json" "https://$SVC:$WH/inject")
expect_eq "a normal review after that -> 200" "$code" 200

# per-address limit: 4 idle connections from 127.0.0.5 hold its quota; a 5th
# from there is closed at once, one from 127.0.0.6 is served
python3 - "$WH" >"$TMP/perip.txt" <<'PY' &
import socket, sys, time
port = int(sys.argv[1])
held = [socket.create_connection(("127.0.0.1", port), 5, source_address=("127.0.0.5", 0)) for _ in range(4)]
time.sleep(0.5)
s = socket.create_connection(("127.0.0.1", port), 5, source_address=("127.0.0.5", 0))
s.settimeout(3)
try:
    print("fifth:", "closed" if s.recv(1) == b"" else "open")
except socket.timeout:
    print("fifth: open")
except ConnectionError:
    print("fifth: closed")
time.sleep(1.2)
PY
PERIP=$!
sleep 1.2
code=$(curl -s -m 5 --interface 127.0.0.6 --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" -o /dev/null \
    -w '%{http_code}' "https://$SVC:$WH/healthz")
expect_eq "another address is served while 127.0.0.5 is at its limit" "$code" 200
wait "$PERIP"
expect_eq "the 5th connection from one address is closed at once (max_connections_per_ip 4)" "$(cat "$TMP/perip.txt")" "fifth: closed"

# the CA: no token, or a bad one -> 401 before the body (the client never sends it)
ca_head() { # AUTH-HEADER-LINE...: send a head declaring 60000 bytes, no body; print the status line
    python3 - "$CAP" "$@" <<'PY'
import socket, ssl, sys, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t0 = time.monotonic()
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5))
head = "POST /v1/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n"
for h in sys.argv[2:]:
    head += h + "\r\n"
s.sendall((head + "\r\n").encode())
s.settimeout(5)
try:
    data = s.recv(4096)
except Exception as e:
    data = repr(e).encode()
print(data.split(b"\r\n")[0].decode(), "%.1f" % (time.monotonic() - t0))
PY
}
out=$(ca_head)
expect_match "no Authorization: 401 before any body byte" "$out" '^HTTP/1.1 401 .* 0\.[0-9]$'
out=$(ca_head "Authorization: Basic d2ViOndlYg==")
expect_match "Basic credentials: 401 before any body byte" "$out" '^HTTP/1.1 401 .* 0\.[0-9]$'
out=$(ca_head "Authorization: Bearer not.a.jwt")
expect_match "a malformed token: 401 before any body byte" "$out" '^HTTP/1.1 401 .* 0\.[0-9]$'
out=$(ca_head "Authorization: Bearer $("${MINT[@]}" token "$TMP/tok" --ns shop --sa web --exp-in -600)")
expect_match "an expired token: 401 before any body byte" "$out" '^HTTP/1.1 401 .* 0\.[0-9]$'
out=$(ca_head "Authorization: Bearer $TOKEN")
expect_match "a valid token: the CA waits for the body (cut at the deadline)" "$out" '^(|.*timed out.*) [2-5]\.[0-9]$'
code=$(curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $TOKEN" --data-binary @<(head -c 70000 /dev/zero | tr '\0' x) "https://$SVC:$CAP/v1/sign")
expect_eq "a sign body over 64 KiB -> 413" "$code" 413

# bodies held: two 64 KiB heads pass max_buffered_bytes (128 KiB) -> the second is 503
# The second head goes only once the first one's body is held (the gauge; $TMP/budget.go),
# so the two cannot swap places on a loaded machine; every step's failure is printed.
python3 - "$WH" "$TMP/budget.go" >"$TMP/budget.txt" 2>&1 <<'PY' &
import os, socket, ssl, sys, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def head():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), 20))
    s.sendall(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 65536\r\n\r\n{")
    return s
try:
    a = head()
    end = time.monotonic() + 30
    while not os.path.exists(sys.argv[2]) and time.monotonic() < end:
        time.sleep(0.05)
    b = head()
    b.settimeout(10)
    print(b.recv(4096).split(b"\r\n")[0].decode())
    a.close()
except Exception as e:
    print("no answer:", e)
PY
budget=$!
first_held() { [[ $(metric "$WH" remora_injector_buffered_body_bytes) -gt 0 ]] 2>/dev/null; }
check "the first head's body is held (remora_injector_buffered_body_bytes > 0)" wait_until 20 first_held
touch "$TMP/budget.go"
wait "$budget"
expect_match "a body that would pass max_buffered_bytes is refused: 503" "$(cat "$TMP/budget.txt")" '^HTTP/1.1 503'
none_held() { [[ $(metric "$WH" remora_injector_buffered_body_bytes) == 0 ]]; }
wait_until 10 none_held # the client has gone; the server sees the close in its own time
expect_match "... counted" "$(metric "$WH" remora_injector_buffer_refusals_total)" '^[1-9]'
expect_eq "... and given back: nothing held once the connections closed" \
    "$(metric "$WH" remora_injector_buffered_body_bytes)" 0
code=$(curl -s -m 10 --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" -o /dev/null -w '%{http_code}' \
    --data-binary @"$TMP/review.json" "https://$SVC:$WH/inject")
expect_eq "a normal review then -> 200" "$code" 200
stop_pid "$IPID"
expect_eq "injector exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean" "$TMP/injector.log"

# ---- the attack: 500 trickling clients per port, defaults --------------------------------------
PLAIN=${REMORA_PLAIN_INJECTOR:-$REMORA_ROOT/build/remora-injector}
if [[ ! -x $PLAIN ]]; then
    echo "SKIP: the attack (timing and RSS) needs the plain build at $PLAIN (make CC=gcc all)"
    finish
fi
WH=$(free_port); CAP=$(free_port)
config attack "$WH" "$CAP" '{"webhook": {"threads": 2}}'
bg plain "$PLAIN" -c "$TMP/attack.json"
PPID_=$LASTPID
wait_port "$WH" && wait_port "$CAP" || { fail "plain injector starts"; finish; }
SECS=24
# webhook: 250 head + 250 TLS-handshake tricklers; CA: 250 body tricklers
# holding a valid token + 250 TLS-handshake tricklers. 8 per address.
atk() { # NAME PORT MODE SRC-BASE [ARGS...]
    local n=$1 p=$2 m=$3 s=$4; shift 4
    bg "atk-$n" "${TRICKLE[@]}" attack --port "$p" --conns 250 --mode "$m" --seconds "$SECS" \
        --src-base "$s" "$@"
    ATK+=("$LASTPID:$n")
}
ATK=()
atk wh-head "$WH" head 127.0.0.10
atk wh-tls "$WH" tls 127.0.0.50
atk ca-body "$CAP" body 127.0.0.90 --path /v1/sign --length 60000 --header "Authorization: Bearer $TOKEN"
atk ca-tls "$CAP" tls 127.0.0.130
sleep 4 # ramp-up: 1000 connections
held=$(ss -Htn state established "( sport = :$WH or sport = :$CAP )" | wc -l)
echo "connections held by the attackers after 4 s: $held"
check "the attackers hold at least 800 connections ($held)" test "$held" -ge 800
# normal clients from other addresses: a fresh TLS connection per request
"${TRICKLE[@]}" probe --port "$WH" --n 60 --gap-ms 250 --path /inject --body "$TMP/review.json" \
    --src 127.0.0.2 --cafile "$D/wh.pem" --server-name "$SVC" >"$TMP/probe-wh.json" &
P1=$!
"${TRICKLE[@]}" probe --port "$CAP" --n 60 --gap-ms 250 --path /v1/sign --body "$TMP/sign.json" \
    --src 127.0.0.3 --cafile "$D/root.pem" --server-name "$SVC" --header "Authorization: Bearer $TOKEN" \
    >"$TMP/probe-ca.json" &
P2=$!
RSS_MAX=0
while alive "$P1" || alive "$P2"; do
    r=$(awk '/^VmRSS/ {print $2}' "/proc/$PPID_/status")
    [[ ${r:-0} -gt $RSS_MAX ]] && RSS_MAX=$r
    sleep 0.5
done
wait "$P1" "$P2"
for a in "${ATK[@]}"; do wait "${a%%:*}" 2>/dev/null; echo "attacker ${a#*:}: $(cat "$TMP/atk-${a#*:}.log")"; done
hwm=$(rss_hwm_kb "$PPID_")
wh=$(cat "$TMP/probe-wh.json"); ca=$(cat "$TMP/probe-ca.json")
echo "normal AdmissionReviews during the attack: $wh"
echo "normal signs during the attack: $ca"
echo "injector RSS during the attack: max sampled ${RSS_MAX} kB, VmHWM ${hwm} kB"
expect_eq "all 60 AdmissionReviews from 127.0.0.2 -> 200" "$(jq -c .codes <<<"$wh")" '{"200":60}'
expect_eq "all 60 signs from 127.0.0.3 -> 200" "$(jq -c .codes <<<"$ca")" '{"200":60}'
check "review p99 under 1 s with 500 tricklers on the port ($(jq .p99_ms <<<"$wh") ms)" \
    awk -v v="$(jq .p99_ms <<<"$wh")" 'BEGIN {exit !(v < 1000)}'
check "sign p99 under 1 s with 500 tricklers on the port ($(jq .p99_ms <<<"$ca") ms)" \
    awk -v v="$(jq .p99_ms <<<"$ca")" 'BEGIN {exit !(v < 1000)}'
check "peak RSS under 100 MB (${hwm} kB)" test "$hwm" -lt 102400
for a in wh-head ca-body; do
    mx=$(jq .lifetime_max "$TMP/atk-$a.log")
    check "$a tricklers were cut by the 10 s deadline (longest ${mx} s)" \
        awk -v v="$mx" 'BEGIN {exit !(v >= 9.5 && v <= 12.5)}'
done
stop_pid "$PPID_"
expect_eq "plain injector exits 0" "$STOP_RC" 0
finish
