#!/usr/bin/env bash
# remora-injector as a server: the real binary over HTTPS on loopback (fixture:
# test/lib_injector.sh). --version, --check-config (good, and every bad config of
# test/data/injector/config/), --print-template; the routes (405, 404, plain HTTP);
# bodies over the bound (413), slow clients (cut after webhook.timeout_seconds),
# keep-alive, 64 concurrent reviews, TLS handshakes without busy-wait or Nagle stall,
# the metrics after reviews of each kind, certificate and template reload, and a clean
# SIGTERM exit without sanitizer reports. The reviews themselves: injector.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$REMORA_ROOT/test/lib_injector.sh"

# ---- command line ------------------------------------------------------------
expect_match "--version prints the version" "$("$INJECTOR" --version 2>&1)" '^remora-injector [0-9]+\.[0-9]+\.[0-9]+$'
out=$("$INJECTOR" --check-config -c "$TMP/classic.json" 2>&1)
expect_eq "--check-config accepts a good config" "$?:$out" "0:$TMP/classic.json: ok"
check "manifests' template.json is the built-in template" \
    diff <(jq -S . "$REMORA_ROOT/manifests/injector/template.json") <("$INJECTOR" --print-template | jq -S .)

# Each bad config is a file: {"config": <merged over a good one>, "error": "<regex>"}.
for f in "$DATA"/config/*.json; do
    n=$(basename "$f" .json)
    config "bad-$n" 1 false "$(jq -c '.config' "$f" | sed -e "s#@TMP@#$TMP#g" -e "s#@DATA@#$DATA#g")"
    out=$("$INJECTOR" --check-config -c "$TMP/bad-$n.json" 2>&1)
    rc=$?
    want=$(jq -r '.error' "$f")
    if [[ $rc -ne 0 && $out =~ $want ]]; then
        pass "--check-config refuses $n"
    else
        fail "--check-config refuses $n: rc=$rc out='$out' want /$want/"
    fi
done

# ---- start -------------------------------------------------------------------------
injector_start classic
check "GET /healthz is 200" healthy
expect_eq "GET /readyz is 200" "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /readyz)")" 200
expect_eq "GET /inject is 405" "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /inject)")" 405
expect_eq "GET /inject/pod/psa/baseline (a webhook entry's path) is 405" \
    "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /inject/pod/psa/baseline)")" 405
expect_eq "POST /inject/psa/privileged (no such entry) is not reviewed: 405, as any POST off the routes" \
    "$("${CURL[@]}" -o /dev/null -w '%{http_code}' --data-binary '{}' "$(url "$PORT" /inject/psa/privileged)")" 405
expect_eq "unknown path is 404" "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "$PORT" /nope)")" 404
expect_eq "plain HTTP is refused" "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/healthz")" 000
check "still serving after plain HTTP" healthy

# ---- one review of each kind the metrics count (the cases of test/data/injector/) --------------
for c in inject-opt-in skip-host-network skip-already-injected bad-not-json; do
    spawn "case-$c" case_one "$DATA/$c.json"
done
collect

# ---- bodies over the bound, slow clients, keep-alive, load ---------------------
head -c $((2 * 1024 * 1024)) /dev/zero | tr '\0' ' ' >"$TMP/big.json"
post "$PORT" "$TMP/big.json"
expect_eq "body over max_body_bytes (Content-Length) is 413" "$CODE" 413
check "still serving after 413" healthy
CODE=$("${CURL[@]}" -o "$TMP/resp.json" -w '%{http_code}' -H 'Transfer-Encoding: chunked' \
    --data-binary "@$TMP/big.json" "$(url "$PORT" /inject)")
expect_eq "chunked body over max_body_bytes is 413" "$CODE" 413
check "still serving after chunked 413" healthy

# A client that opens TLS and then says nothing, and one that stops mid-headers:
# each is cut after webhook.timeout_seconds (2 s here) while others are served.
# The end time is taken when s_client sees the server close.
t_slow=$(date +%s%N)
(sleep 6 | { openssl s_client -quiet -connect "127.0.0.1:$PORT" >/dev/null 2>&1
    date +%s%N >"$TMP/slow1.end"; }) &
slow1=$!
( (printf 'POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n'; sleep 6) |
    { openssl s_client -quiet -connect "127.0.0.1:$PORT" >/dev/null 2>&1
      date +%s%N >"$TMP/slow2.end"; }) &
slow2=$!
sleep 0.5
check "serving while slow clients hang" healthy

f=$CORPUS/istio-hello.json
[[ -f $f ]] || f=$TMP/work/case-inject-opt-in.review.json
urls=()
for _ in $(seq 20); do urls+=(-o /dev/null --data-binary "@$f" "$(url "$PORT" /inject)"); done
conns=$("${CURL[@]}" -v -w '%{http_code}\n' "${urls[@]}" 2>&1 | grep -c 'Re-using existing connection' || true)
expect_match "keep-alive: 20 reviews on one connection" "$conns" '^1[0-9]$'
codes=$(seq 64 | xargs -P 8 -I{} "${CURL[@]}" -o /dev/null -w '%{http_code}\n' \
    --data-binary "@$f" "$(url "$PORT" /inject)" | sort | uniq -c | tr -s ' ')
expect_eq "64 concurrent reviews all answered 200" "$codes" " 64 200"

wait "$slow1" "$slow2"
for n in 1 2; do
    waited=$((($(cat "$TMP/slow$n.end" 2>/dev/null || echo 0) - t_slow) / 1000000))
    # cut no earlier than the 2 s timeout (measured from before the connection), and well
    # before the 6 s the clients hold on; a loaded machine only adds handshake time
    if ((waited > 1500 && waited < 5500)); then
        pass "slow client $n is cut after webhook.timeout_seconds (${waited} ms)"
    else
        fail "slow client $n was not cut after ~2 s (${waited} ms)"
    fi
done
check "still serving after the slow clients" healthy

# ---- fresh TLS connections: no busy-wait, no Nagle stall -----------------------
# docs/injector.md, "Performance". A handshake waiting for the client's Finished
# must cost no CPU (libmicrohttpd's epoll loop spun on it, a whole round trip of
# CPU per connection), and a client that delays its ACKs must get the server's
# first flight at once (TCP_NODELAY; with Nagle, its second half waited ~40 ms).
cpu_ms() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d\n", s / 1000000}'; }
c0=$(cpu_ms "$IPID")
python3 - "$PORT" "$TMP/ca.pem" <<'PY'
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
t = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
try:
    t.do_handshake()
except ssl.SSLWantReadError:
    pass
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(out.read())  # the ClientHello; the server answers, then waits for us
s.recv(65536)
time.sleep(1.5)
s.close()
PY
c1=$(cpu_ms "$IPID")
if ((c1 - c0 < 200)); then
    pass "a handshake waiting 1.5 s for the client costs the server $((c1 - c0)) ms of CPU"
else
    fail "a handshake waiting 1.5 s for the client cost the server $((c1 - c0)) ms of CPU (busy-wait?)"
fi
# The stall is the client's delayed-ACK timer (40 ms at least on Linux): compare handshakes
# of a delayed-ACK client with those of an ordinary one, interleaved, so that load slows
# both alike; the medians differ by the stall with Nagle, by noise without.
hs=$(python3 - "$PORT" "$TMP/ca.pem" <<'PY'
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
ms = {False: [], True: []}
for _ in range(9):
    for delayed in (False, True):
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        if delayed:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # delayed ACKs
        t0 = time.monotonic()
        t = ctx.wrap_socket(s, server_hostname="127.0.0.1")
        ms[delayed].append((time.monotonic() - t0) * 1000)
        t.close()
print(int(sorted(ms[False])[4]), int(sorted(ms[True])[4]))
PY
)
read -r hs_quick hs_delayed <<<"$hs"
if [[ $hs_quick =~ ^[0-9]+$ && $hs_delayed =~ ^[0-9]+$ ]] && ((hs_delayed - hs_quick < 25)); then
    pass "TLS 1.3 handshake with a delayed-ACK client: median ${hs_delayed} ms, ordinary client ${hs_quick} ms (no Nagle stall)"
else
    fail "TLS 1.3 handshake with a delayed-ACK client: median '${hs_delayed}' ms against '${hs_quick}' ms (Nagle stall?)"
fi

# ---- metrics -----------------------------------------------------------------
m=$("${CURL[@]}" "$(url "$PORT" /metrics)")
for series in 'remora_injector_reviews_total\{result="injected",reason=""\} [1-9]' \
    'remora_injector_reviews_total\{result="skipped",reason="host-network"\} [1-9]' \
    'remora_injector_reviews_total\{result="skipped",reason="already-injected"\} [1-9]' \
    'remora_injector_reviews_total\{result="invalid",reason=""\} [1-9]' \
    'remora_injector_reviews_total\{result="too_large",reason=""\} [1-9]' \
    'remora_injector_review_duration_seconds_bucket\{le="\+Inf"\} [1-9]' \
    'remora_injector_review_duration_seconds_count [1-9]' \
    'remora_injector_cert_expiry_timestamp_seconds [1-9]'; do
    if grep -qE "^$series" <<<"$m"; then pass "metrics: $series"; else fail "metrics: $series"; fi
done

# ---- reloads -----------------------------------------------------------------
subject() { openssl s_client -connect "127.0.0.1:$PORT" </dev/null 2>/dev/null | openssl x509 -noout -subject; }
expect_match "serves the first certificate" "$(subject)" 'CN ?= ?first'
# A keep-alive connection opened before the swap must survive it.
# It sends a request every 0.25 s until the swap is done ($TMP/swapped; at most 30 s), then a
# last one with Connection: close, and writes how many it sent to $TMP/keep.sent.
exec {keep}< <( (n=0
    while ((n < 120)); do
        printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'; n=$((n + 1))
        [[ -e $TMP/swapped ]] && break
        sleep 0.25
    done
    echo $((n + 1)) >"$TMP/keep.sent"
    printf 'GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n') |
    openssl s_client -quiet -connect "127.0.0.1:$PORT" 2>/dev/null)
sleep 0.3 # the connection is open before the swap
subject_is() { [[ $(subject) =~ CN\ ?=\ ?$1 ]]; }
mismatch_logged() { grep -q 'key does not match' "$TMP/injector.log"; }
cp "$TMP/pki2/cert.pem" "$TMP/live/cert.pem" # the key lags: the pair does not match yet
check "the mismatched pair was logged" wait_until 10 mismatch_logged
expect_match "a mismatched cert/key pair is not loaded" "$(subject)" 'CN ?= ?first'
cp "$TMP/pki2/key.pem" "$TMP/live/key.pem"
wait_until 10 subject_is second
touch "$TMP/swapped"
expect_match "the renewed certificate is served without restart" "$(subject)" 'CN ?= ?second'
got=$(timeout 15 cat <&"$keep" | grep -ao 'HTTP/1.1 200' | wc -l)
expect_eq "a connection from before the swap finishes (every one of its requests answered)" \
    "$got" "$(cat "$TMP/keep.sent" 2>/dev/null)"
exec {keep}<&-
cp "$TMP/pki2/cert.pem" "$TMP/ca.pem"
check "still serving after the certificate swap" healthy

jq '.image = "registry.example/remora-proxy:canary" | .env = [{"name": "REMORA_EXTRA", "value": "1"}]' \
    "$REMORA_ROOT/manifests/injector/template.json" >"$TMP/template.new"
mv "$TMP/template.new" "$TMP/template.json"
f=$TMP/work/case-inject-opt-in.review.json
# sidecar_image: post the opt-in review; the sidecar image of its patch in $img
sidecar_image() {
    post "$PORT" "$f"
    img=$(jq -r '.response.patch' "$TMP/resp.json" | base64 -d | jq -r '[.[] | .value | .. | objects | select(.name == "remora-proxy") | .image][0]')
}
canary() { sidecar_image; [[ $img == registry.example/remora-proxy:canary ]]; }
wait_until 10 canary
expect_eq "a changed template is used without restart" "$img" "registry.example/remora-proxy:canary"
echo '{"image": 1}' >"$TMP/template.new"
mv "$TMP/template.new" "$TMP/template.json"
template_refused() { grep -q 'template not reloaded' "$TMP/injector.log"; }
wait_until 10 template_refused
sidecar_image
expect_eq "a broken template keeps the last good one" "$img" "registry.example/remora-proxy:canary"
expect_match "the broken template is logged with its key" "$(grep 'template not reloaded' "$TMP/injector.log")" "template.json: image: expected a string"

# ---- clean exit ----------------------------------------------------------------
injector_stop injector "$IPID"
finish
