#!/usr/bin/env bash
# HTTP/2 through remora-proxy: h2 -> h1, h1 -> h2, h2 -> h2, many concurrent
# streams, large bodies both ways with bounded memory, backpressure with slow
# readers, trailers, header bounds, resets, GOAWAY / dead upstreams, garbage
# after the preface, idle timeouts, upstream pooling, drain on SIGTERM.
source "$(dirname "$0")/../lib.sh"

start_upstream up1 || exit 1
H1_PORT=$UP_PORT
start_upstream up2 --h2 || exit 1
H2_PORT=$UP_PORT
start_upstream up3 --h2 || exit 1
H2B_PORT=$UP_PORT; H2B_PID=$UP_PID
ADMIN_PORT=$(free_port); P1=$(free_port); P2=$(free_port); PD=$(free_port); PG=$(free_port)
PB=$(free_port); PT=$(free_port); GA_PORT=$(free_port); DEAD_PORT=$(free_port); T_PORT=$(free_port)
PS=$(free_port); SILENT_PORT=$(free_port)

cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "log_level": "info",
 "limits": {"max_header_bytes": 16384, "idle_timeout_ms": 1500, "pool_idle_timeout_ms": 1000,
            "header_timeout_ms": 1000, "connect_timeout_ms": 2500},
 "listeners": [
  {"name": "toh1", "address": "127.0.0.1:$P1", "direction": "inbound",
   "upstream": "127.0.0.1:$H1_PORT", "tls": "disabled"},
  {"name": "toh2", "address": "127.0.0.1:$P2", "direction": "inbound",
   "upstream": "127.0.0.1:$H2_PORT", "tls": "disabled", "upstream_protocol": "h2"},
  {"name": "dead", "address": "127.0.0.1:$PD", "direction": "inbound",
   "upstream": "127.0.0.1:$DEAD_PORT", "tls": "disabled", "upstream_protocol": "h2"},
  {"name": "goaway", "address": "127.0.0.1:$PG", "direction": "inbound",
   "upstream": "127.0.0.1:$GA_PORT", "tls": "disabled", "upstream_protocol": "h2"},
  {"name": "dies", "address": "127.0.0.1:$PB", "direction": "inbound",
   "upstream": "127.0.0.1:$H2B_PORT", "tls": "disabled", "upstream_protocol": "h2"},
  {"name": "trailers", "address": "127.0.0.1:$PT", "direction": "inbound",
   "upstream": "127.0.0.1:$T_PORT", "tls": "disabled", "upstream_protocol": "h2"},
  {"name": "silent", "address": "127.0.0.1:$PS", "direction": "inbound",
   "upstream": "127.0.0.1:$SILENT_PORT", "tls": "disabled", "upstream_protocol": "h2"}]}
JSON
start_proxy proxy "$TMP/proxy.json" || exit 1
H2C="curl -s -m 120 --http2-prior-knowledge"
stats() { curl -s -m 120 "http://127.0.0.1:$ADMIN_PORT/stats"; }
gauge() { stats | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

# -- the three translations ---------------------------------------------------------------
out=$($H2C -w ' %{http_version}' "http://127.0.0.1:$P1/hello?x=1")
expect_match "h2 client -> h1 upstream: path and query arrive" "$out" '"protocol":"HTTP/1.1".*"path":"/hello\?x=1"'
expect_match "... :authority becomes Host" "$out" "\"host\":\"127.0.0.1:$P1\""
expect_match "... answered over HTTP/2" "$out" ' 2$'
out=$(curl -s -m 120 -w ' %{http_version}' "http://127.0.0.1:$P2/hello?y=2")
expect_match "h1 client -> h2 upstream: path and query arrive" "$out" '"protocol":"HTTP/2".*"path":"/hello\?y=2"'
expect_match "... Host becomes :authority" "$out" "\"authority\":\"127.0.0.1:$P2\""
expect_match "... answered over HTTP/1.1" "$out" ' 1.1$'
out=$($H2C -w ' %{http_version}' "http://127.0.0.1:$P2/hello")
expect_match "h2 client -> h2 upstream" "$out" '"protocol":"HTTP/2".* 2$'
out=$(curl -s -m 120 -H 'Connection: keep-alive, X-Secret' -H 'X-Secret: 1' -H 'Keep-Alive: 5' \
      -H 'TE: trailers' -H 'X-End: ok' "http://127.0.0.1:$P2/hop")
bad=$(grep -oE '"(x-secret|keep-alive|connection|transfer-encoding|upgrade|host)"' <<<"$out" | tr '\n' ' ')
expect_eq "h1 -> h2: no connection-specific header reaches the h2 upstream" "$bad" ""
expect_match "... TE: trailers is kept" "$out" '"te":"trailers"'
expect_match "... end-to-end headers pass" "$out" '"x-end":"ok"'
out=$(timeout 60 nghttp -H 'cookie: a=1' -H 'cookie: b=2' "http://127.0.0.1:$P1/c")
expect_match "h2 -> h1: cookie crumbs are joined into one Cookie" "$out" '"cookie":"a=1; b=2"'
out=$($H2C -I "http://127.0.0.1:$P1/bytes/1234")
expect_match "h2 -> h1: HEAD keeps content-length" "$out" 'content-length: 1234'
out=$(curl -s -m 120 -I "http://127.0.0.1:$P2/bytes/1234")
expect_match "h1 -> h2: HEAD keeps content-length" "$out" '[Cc]ontent-[Ll]ength: 1234'
out=$($H2C -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P2/status/404")
expect_eq "h2 -> h2: upstream statuses pass through" "$out" 404
out=$($H2C -X POST "http://127.0.0.1:$P1/empty")
expect_match "h2 -> h1: POST without a body gets content-length: 0" "$out" '"content-length":"0"'
head -c 70000 /dev/urandom >"$TMP/small"
want=$(sha256sum <"$TMP/small" | cut -d' ' -f1)
out=$(curl -s -m 120 -H 'Transfer-Encoding: chunked' --data-binary @"$TMP/small" "http://127.0.0.1:$P2/echo")
expect_match "h1 chunked upload -> h2 upstream intact" "$out" "\"body_sha256\":\"$want\""

# -- many concurrent streams ---------------------------------------------------------------
for p in "$P1:h1" "$P2:h2"; do
    out=$(timeout 120 h2load -n 5000 -c 10 -m 100 "http://127.0.0.1:${p%%:*}/hello" 2>&1)
    expect_match "h2load -c 10 -m 100 to the ${p##*:} upstream: all 2xx" "$out" 'status codes: 5000 2xx, 0 3xx, 0 4xx, 0 5xx'
done
out=$(timeout 120 h2load -n 400 -c 2 -m 100 "http://127.0.0.1:$P2/bytes/100000" 2>&1)
expect_match "h2load 100 KB bodies, 100 streams per connection: all 2xx" "$out" 'status codes: 400 2xx'
check "the h2 upstream pool is reused" test "$(gauge upstream_cx_reused)" -gt 0

# -- large bodies both ways ------------------------------------------------------------------
N=50000000
want_dl=$($PATTERN --sha256 $N)
head -c $N /dev/urandom >"$TMP/big"
want_up=$(sha256sum <"$TMP/big" | cut -d' ' -f1)
for p in "$P1:h1" "$P2:h2"; do
    port=${p%%:*} up=${p##*:}
    got=$($H2C "http://127.0.0.1:$port/bytes/$N" | sha256sum | cut -d' ' -f1)
    expect_eq "50 MB download, h2 client <- $up upstream, intact" "$got" "$want_dl"
    out=$($H2C --data-binary @"$TMP/big" "http://127.0.0.1:$port/echo")
    expect_match "50 MB upload, h2 client -> $up upstream, intact" "$out" "\"body_sha256\":\"$want_up\""
done
got=$(curl -s -m 120 "http://127.0.0.1:$P2/bytes/$N" | sha256sum | cut -d' ' -f1)
expect_eq "50 MB download, h1 client <- h2 upstream, intact" "$got" "$want_dl"
out=$(curl -s -m 120 --data-binary @"$TMP/big" "http://127.0.0.1:$P2/echo")
expect_match "50 MB upload, h1 client -> h2 upstream, intact" "$out" "\"body_sha256\":\"$want_up\""

# Memory: ASan's quarantine hides the real footprint, so peak RSS is measured
# on the plain build (built by `make test`) running the same listeners.
PLAIN=${REMORA_PLAIN_PROXY:-$REMORA_ROOT/build/remora-proxy}
if [[ -x $PLAIN ]]; then
    RA=$(free_port); R1=$(free_port); R2=$(free_port)
    cat >"$TMP/plain.json" <<JSON
{"admin": {"address": "127.0.0.1:$RA"}, "log_level": "warn",
 "listeners": [
  {"name": "toh1", "address": "127.0.0.1:$R1", "direction": "inbound",
   "upstream": "127.0.0.1:$H1_PORT", "tls": "disabled"},
  {"name": "toh2", "address": "127.0.0.1:$R2", "direction": "inbound",
   "upstream": "127.0.0.1:$H2_PORT", "tls": "disabled", "upstream_protocol": "h2"}]}
JSON
    bg plain "$PLAIN" -c "$TMP/plain.json"; PLAIN_PID=$LASTPID
    wait_http "http://127.0.0.1:$RA/ready"
    ok=1
    for port in $R1 $R2; do
        [[ $($H2C "http://127.0.0.1:$port/bytes/$N" | sha256sum | cut -d' ' -f1) == "$want_dl" ]] || ok=0
        $H2C --data-binary @"$TMP/big" "http://127.0.0.1:$port/echo" | grep -q "$want_up" || ok=0
    done
    curl -s -m 120 "http://127.0.0.1:$R2/bytes/$N" -o /dev/null
    curl -s -m 120 --data-binary @"$TMP/big" "http://127.0.0.1:$R2/echo" -o /dev/null
    # slow readers: the upstream must be held back, not buffered
    timeout 3 $H2C --limit-rate 1M "http://127.0.0.1:$R1/bytes/1000000000" -o /dev/null
    timeout 3 $H2C --limit-rate 1M "http://127.0.0.1:$R2/bytes/1000000000" -o /dev/null
    timeout 3 curl -s -m 120 --limit-rate 1M "http://127.0.0.1:$R2/bytes/1000000000" -o /dev/null
    timeout 120 h2load -n 2000 -c 10 -m 100 "http://127.0.0.1:$R2/bytes/20000" >/dev/null 2>&1
    hwm=$(rss_hwm_kb "$PLAIN_PID")
    expect_eq "plain build: 4 x 50 MB each way + slow readers intact" "$ok" 1
    check "plain build: peak RSS ${hwm} kB stays under 12 MB" test "$hwm" -lt 12288
else
    echo "SKIP: peak RSS check (no plain build at $PLAIN; run make test-gcc)"
fi

# -- backpressure on the ASan build: a slow reader holds the upstream back -------------------
timeout 2 $H2C --limit-rate 500K "http://127.0.0.1:$P2/bytes/1000000000" -o "$TMP/slow.out"
sz=$(stat -c %s "$TMP/slow.out")
check "slow h2 reader: the download is paced by the reader (${sz} bytes in 2 s)" test "$sz" -lt 5000000
sleep 0.3
expect_eq "... and its stream is released after the client left" "$(gauge streams_live)" 0

# -- trailers (nghttpd sends response trailers) ------------------------------------------------
mkdir -p "$TMP/docroot"; head -c 100000 /dev/urandom >"$TMP/docroot/file"
bg nghttpd nghttpd --no-tls --trailer 'x-checksum: abc123' -d "$TMP/docroot" "$T_PORT"
if wait_port "$T_PORT"; then
    out=$(timeout 60 nghttp -v "http://127.0.0.1:$PT/file" 2>&1)
    expect_match "h2 -> h2: response trailers are forwarded" "$out" 'x-checksum: abc123'
    head -c 30000 /dev/urandom >"$TMP/post"
    out=$(timeout 60 nghttp -d "$TMP/post" --trailer 'x-req: 1' -s "http://127.0.0.1:$PT/file" 2>&1)
    check "h2 -> h2: a request with trailers completes" grep -q 'responseEnd' <<<"$out"
fi

# -- header bounds and bad input ----------------------------------------------------------------
big=$(head -c 20000 /dev/zero | tr '\0' a)
out=$($H2C -o /dev/null -w '%{http_code}' -H "x-big: $big" "http://127.0.0.1:$P1/")
expect_eq "h2: headers over max_header_bytes -> 431" "$out" 431
many=(); for i in $(seq 200); do many+=(-H "x-h$i: v"); done
out=$($H2C -o /dev/null -w '%{http_code}' "${many[@]}" "http://127.0.0.1:$P2/")
expect_eq "h2: more than max_headers fields -> 431" "$out" 431
out=$($H2C -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P1/after-431")
expect_eq "... the connection-level state is fine afterwards" "$out" 200

h2raw() { # h2raw PORT HEX-AFTER-PREFACE: send the preface + bytes, report what came back
    python3 - "$1" "$2" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex(sys.argv[2]))
data, closed = b"", False
end = time.time() + 3
try:
    while time.time() < end:
        b = s.recv(65536)
        if not b:
            closed = True
            break
        data += b
except (socket.timeout, ConnectionResetError):
    closed = closed or False
types, i = [], 0
while i + 9 <= len(data):
    n = int.from_bytes(data[i:i + 3], "big"); types.append(data[i + 3]); i += 9 + n
print("closed" if closed else "open", "goaway" if 7 in types else "no-goaway")
PY
}
out=$(h2raw "$P1" "$(head -c 3000 /dev/urandom | od -An -tx1 | tr -d ' \n')")
expect_match "garbage after the preface: connection closed" "$out" '^closed'
# a HEADERS frame on stream 1 whose block is not valid HPACK
out=$(h2raw "$P1" "000000040000000000""000004010500000001ffffffff")
expect_match "invalid HPACK: GOAWAY and close" "$out" '^closed goaway'
check "proxy alive after bad input" alive "$PROXY_PID"
out=$(h2raw "$P1" "000000040000000000")
expect_match "idle h2 connection: GOAWAY then close after idle_timeout_ms" "$out" '^closed goaway'
# HEADERS without END_HEADERS, and no CONTINUATION ever
before=$(gauge header_timeout)
out=$(h2raw "$P1" "000000040000000000""00000101000000000182")
expect_match "a request head never finished: connection closed after header_timeout_ms" "$out" '^closed'
check "... counted as a header timeout" test "$(gauge header_timeout)" -gt "$before"

# -- client resets mid-response ------------------------------------------------------------------
for p in "$P1:h1" "$P2:h2"; do
    timeout 1 $H2C "http://127.0.0.1:${p%%:*}/bytes/1000000000" -o /dev/null
done
timeout 120 h2load -n 300 -c 3 -m 100 -T 1 "http://127.0.0.1:$P2/slowbody/50?bytes=1000" >/dev/null 2>&1
sleep 0.5
expect_eq "client resets mid-response release every stream" "$(gauge streams_live)" 0
check "proxy alive after resets" alive "$PROXY_PID"

# -- upstream failures ---------------------------------------------------------------------------
out=$($H2C -w ' %{http_code}' "http://127.0.0.1:$PD/")
expect_match "dead h2 upstream -> 503 naming the cause (h2 client)" "$out" 'connection refused.* 503$'
out=$(curl -s -m 120 -w ' %{http_code}' "http://127.0.0.1:$PD/")
expect_match "dead h2 upstream -> 503 naming the cause (h1 client)" "$out" 'connection refused.* 503$'
out=$($H2C -w ' %{http_code}' "http://127.0.0.1:$P2/close")
expect_match "h2 upstream resets the stream -> 502 naming the cause" "$out" 'upstream reset.* 502$'

# an upstream that answers every connection with SETTINGS + GOAWAY(last stream 0)
python3 - "$GA_PORT" >"$TMP/goaway.log" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
n = 0
while True:
    c, _ = s.accept(); n += 1
    print("conn", n, flush=True)
    c.settimeout(2)
    try:
        c.recv(65536)
        c.sendall(bytes.fromhex("000000040000000000" "0000080700000000000000000000000000"))
        while c.recv(65536):
            pass
    except Exception:
        pass
    c.close()
PY
_pids+=($!)
wait_port "$GA_PORT"
sleep 0.2
before=$(grep -c '^conn' "$TMP/goaway.log")  # wait_port's probe
out=$($H2C -w ' %{http_code}' "http://127.0.0.1:$PG/a")
expect_match "upstream GOAWAY before our stream -> 502 naming the cause" "$out" 'upstream reset.* 502$'
sleep 0.3
expect_eq "... the refused request was resent once, on a new connection" \
    "$(($(grep -c '^conn' "$TMP/goaway.log") - before))" 2
$H2C -o /dev/null "http://127.0.0.1:$PG/b"
sleep 0.3
expect_eq "... GOAWAY'd sessions take no new streams: new connections" \
    "$(($(grep -c '^conn' "$TMP/goaway.log") - before))" 4

# an upstream that accepts connections and never says a word (no SETTINGS)
python3 - "$SILENT_PORT" >"$TMP/silent.log" 2>&1 <<'PY' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
def sink(c):
    try:
        while c.recv(65536):
            pass
    except Exception:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=sink, args=(c,), daemon=True).start()
PY
_pids+=($!)
wait_port "$SILENT_PORT"
start=$(date +%s%N)
out=$($H2C -w ' %{http_code}' "http://127.0.0.1:$PS/")
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect_match "silent h2 upstream (no SETTINGS) -> 504 naming the cause" "$out" 'connect timeout.* 504$'
check "... after connect_timeout_ms (took ${ms} ms)" test "$ms" -lt 4500

# the upstream dies in the middle of a response
$H2C -o "$TMP/dies.out" -w '%{http_code}' "http://127.0.0.1:$PB/slowbody/100?bytes=100" >"$TMP/dies.code" &
cpid=$!
sleep 0.5
kill -9 "$H2B_PID"
wait "$cpid"; rc=$?
check "upstream killed mid-response: the client sees a reset, not a clean end (rc $rc)" test "$rc" -ne 0
out=$($H2C -w ' %{http_code}' "http://127.0.0.1:$PB/again")
expect_match "... and the next request gets 503 naming the cause" "$out" 'connection refused.* 503$'
check "proxy alive after upstream failures" alive "$PROXY_PID"

# -- pool idle timeout ------------------------------------------------------------------------------
sleep 1.6
expect_eq "idle upstream h2 sessions close after pool_idle_timeout_ms" "$(gauge h2_client_sessions)" 0

# -- drain on SIGTERM: the in-flight h2 stream completes, then exit 0 -----------------------------
$H2C -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P2/delay/700" >"$TMP/slow.code" &
cpid=$!
sleep 0.3
stop_pid "$PROXY_PID"; rc=$STOP_RC
wait "$cpid"
expect_eq "SIGTERM: in-flight h2 request still answered" "$(cat "$TMP/slow.code")" 200
expect_eq "SIGTERM: proxy exits 0 after draining" "$rc" 0
expect_sanitizers_clean "sanitizers clean (ASan, UBSan, LeakSanitizer)" "$TMP/proxy.log"
finish
