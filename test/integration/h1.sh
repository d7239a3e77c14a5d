#!/usr/bin/env bash
# HTTP/1.1 through remora-proxy: keep-alive, pipelining, bodies both ways,
# 100-continue, hop-by-hop headers, upgrades, bad input, upstream failures,
# timeouts, opaque TCP with half-close, drain on SIGTERM.
source "$(dirname "$0")/../lib.sh"

start_upstream up1 || exit 1
ADMIN_PORT=$(free_port); PORT=$(free_port); DEAD=$(free_port); TCPUP=$(free_port); TPORT=$(free_port)
cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "log_level": "info",
 "access_log": "$TMP/access.log",
 "limits": {"header_timeout_ms": 600, "max_request_body": 200000, "max_header_bytes": 16384},
 "listeners": [
  {"name": "in", "address": "127.0.0.1:$PORT", "direction": "inbound",
   "upstream": "127.0.0.1:$UP_PORT", "tls": "disabled"},
  {"name": "dead", "address": "127.0.0.1:$DEAD", "direction": "outbound",
   "upstream": "127.0.0.1:1", "tls": "disabled"},
  {"name": "tcp", "address": "127.0.0.1:$TPORT", "direction": "outbound",
   "upstream": "127.0.0.1:$TCPUP", "tls": "disabled"}]}
JSON
start_proxy proxy "$TMP/proxy.json" || exit 1
U=http://127.0.0.1:$PORT

# -- basic forwarding and keep-alive ----------------------------------------------
out=$(curl -s "$U/hello?x=1")
expect_match "GET reaches the upstream with path and query" "$out" '"path":"/hello\?x=1"'
expect_match "Host is passed through" "$out" "\"authority\":\"127.0.0.1:$PORT\""
v=$(curl -sv "$U/a" "$U/b" 2>&1 >/dev/null | grep -c 'Re-using existing connection')
expect_eq "client keep-alive: second request reuses the connection" "$v" 1
reused=$(curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["upstream_cx_reused"] > 0)' 2>/dev/null)
expect_eq "upstream keep-alive: pooled connections are reused" "$reused" True

# -- pipelining: three requests in one write, answered in order ---------------------
out=$($RAW 127.0.0.1:$PORT 'GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
order=$(grep -ao '"path":"/p[0-9]"' <<<"$out" | tr -d '\n')
expect_eq "pipelined requests are answered in order" "$order" '"path":"/p1""path":"/p2""path":"/p3"'
expect_eq "pipelined: three 200 responses" "$(grep -ao 'HTTP/1.1 200' <<<"$out" | wc -l)" 3

# -- request bodies ---------------------------------------------------------------------
head -c 150000 /dev/urandom >"$TMP/body"
want=$(sha256sum <"$TMP/body" | cut -d' ' -f1)
out=$(curl -s --data-binary @"$TMP/body" "$U/echo")
expect_match "content-length body arrives intact" "$out" "\"body_sha256\":\"$want\""
out=$(curl -s -H 'Transfer-Encoding: chunked' --data-binary @"$TMP/body" "$U/echo")
expect_match "chunked body arrives intact" "$out" "\"body_sha256\":\"$want\""
out=$(curl -sv -H 'Expect: 100-continue' --data-binary @"$TMP/body" "$U/echo" 2>&1)
expect_match "Expect: 100-continue gets 100 Continue" "$out" 'HTTP/1.1 100 Continue'
expect_match "... and the body arrives" "$out" "\"body_sha256\":\"$want\""
expect_match "... Expect is not forwarded" "$out" '"headers":\{[^}]*\}' 
[[ $out == *'"expect"'* ]] && fail "Expect header leaked upstream" || pass "Expect header not forwarded"

# -- response bodies ----------------------------------------------------------------------
n=20000000
got=$(curl -s "$U/bytes/$n" | sha256sum | cut -d' ' -f1)
expect_eq "20 MB content-length download intact" "$got" "$($PATTERN --sha256 $n)"
got=$(curl -s "$U/bytes/$n?chunked=1" | sha256sum | cut -d' ' -f1)
expect_eq "20 MB chunked download intact" "$got" "$($PATTERN --sha256 $n)"
out=$(curl -s -I "$U/bytes/1234")
expect_match "HEAD keeps content-length, no body" "$out" '[Cc]ontent-[Ll]ength: 1234'
out=$($RAW 127.0.0.1:$PORT 'GET /bytes/10 HTTP/1.0\r\n\r\n')
expect_match "HTTP/1.0 client gets an HTTP/1.0 answer" "$out" '^HTTP/1.0 200'

# -- hop-by-hop headers and upgrades ----------------------------------------------------
out=$(curl -s -H 'Connection: keep-alive, X-Secret' -H 'X-Secret: 1' -H 'Keep-Alive: timeout=5' \
      -H 'Proxy-Connection: keep-alive' -H 'TE: trailers' -H 'X-End: ok' "$U/hop")
bad=$(grep -oE '"(x-secret|keep-alive|proxy-connection|te|connection)"' <<<"$out" | tr '\n' ' ')
expect_eq "hop-by-hop headers and those named by Connection are removed" "$bad" ""
expect_match "end-to-end headers pass" "$out" '"x-end":"ok"'
# an Upgrade request goes to the app (the tunnel after a 101: websocket.sh); this app does
# not upgrade, so its 200 is an ordinary response
out=$(curl -s -i -H 'Connection: Upgrade' -H 'Upgrade: websocket' "$U/ws")
expect_match "Upgrade answered 200 by the app: an ordinary HTTP/1.1 response" "$out" '^HTTP/1.1 200'
expect_match "... the app saw the Upgrade request" "$out" '"upgrade":"websocket"'
expect_match "... with Connection: upgrade and nothing else" "$out" '"connection":"upgrade"'
out=$($RAW 127.0.0.1:$PORT 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')
expect_match "CONNECT is refused with 405" "$out" '^HTTP/1.1 405'

# -- bad input ----------------------------------------------------------------------------
out=$($RAW 127.0.0.1:$PORT 'GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n')
expect_match "space in a header name -> 400" "$out" '^HTTP/1.1 400'
out=$($RAW 127.0.0.1:$PORT 'GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n')
expect_match "header line without a colon -> 400" "$out" '^HTTP/1.1 400'
out=$($RAW 127.0.0.1:$PORT 'GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n')
expect_match "NUL in a header value -> 400" "$out" '^HTTP/1.1 400'
out=$($RAW 127.0.0.1:$PORT 'GET / HTTP/1.1\r\n\r\n')
expect_match "HTTP/1.1 without Host -> 400" "$out" '^HTTP/1.1 400'
out=$($RAW 127.0.0.1:$PORT 'GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n')
expect_match "control byte in the target -> 400" "$out" '^HTTP/1.1 400'
out=$($RAW 127.0.0.1:$PORT 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab')
expect_match "duplicate Content-Length -> 400" "$out" '^HTTP/1.1 400'
out=$($RAW 127.0.0.1:$PORT 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n')
expect_match "Transfer-Encoding with Content-Length (smuggling) -> 400" "$out" '^HTTP/1.1 400'
big=$(head -c 20000 /dev/zero | tr '\0' a)
out=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $big" "$U/")
expect_eq "headers over max_header_bytes -> 431" "$out" 431
out=$(curl -s -o /dev/null -w '%{http_code}' --data-binary @"$TMP/body" -H 'Content-Type: x' "$U/")
[[ $(stat -c %s "$TMP/body") -gt 200000 ]] || true
head -c 300000 /dev/zero >"$TMP/big"
out=$(curl -s -o /dev/null -w '%{http_code}' --data-binary @"$TMP/big" "$U/")
expect_eq "content-length over max_request_body -> 413" "$out" 413
out=$(curl -s -o /dev/null -w '%{http_code}' -H 'Transfer-Encoding: chunked' --data-binary @"$TMP/big" "$U/")
expect_eq "chunked body over max_request_body -> 413" "$out" 413
start=$(date +%s%N)
out=$($RAW 127.0.0.1:$PORT 'GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ' --timeout 3)
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect_match "a client that never finishes its head gets 408" "$out" '^HTTP/1.1 408'
check "... within the header timeout (took ${ms} ms)" test "$ms" -lt 2500
check "proxy alive after bad input" alive "$PROXY_PID"

# -- upstream failures ---------------------------------------------------------------------
out=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$DEAD/")
expect_match "refused upstream -> 503 naming the cause" "$out" 'connection refused.* 503$'
out=$(curl -s -w ' %{http_code}' "$U/close")
expect_match "upstream closing before answering -> 502" "$out" 'upstream reset.* 502$'
out=$(curl -s -o /dev/null -w '%{http_code}' "$U/status/503")
expect_eq "upstream statuses pass through" "$out" 503

# -- opaque TCP with half-close ---------------------------------------------------------------
python3 - "$TCPUP" >"$TMP/tcpup.log" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4)
for _ in range(2):
    c, _ = s.accept(); data = b""
    while True:
        b = c.recv(65536)
        if not b: break
        data += b
    c.sendall(b"echo:" + data); c.close()
PY
_pids+=($!)
wait_port "$TCPUP"
out=$($RAW 127.0.0.1:$TPORT '\x00\x01binary-protocol\xff' --half-close | od -An -tx1 | tr -d ' \n')
expect_eq "non-HTTP bytes are forwarded as TCP, half-close respected" "$out" \
    "$(printf 'echo:\x00\x01binary-protocol\xff' | od -An -tx1 | tr -d ' \n')"

# -- memory: a 1 GB download and a 256 MB upload through the release build ---------------
# (the ASan build's allocator quarantine would hide what the proxy itself holds)
REL=$REMORA_ROOT/build/remora-proxy
if [[ -x $REL ]]; then
    MPORT=$(free_port); MADMIN=$(free_port)
    cat >"$TMP/mem.json" <<JSON
{"admin": {"address": "127.0.0.1:$MADMIN"},
 "listeners": [{"name": "mem", "address": "127.0.0.1:$MPORT", "direction": "inbound",
                "upstream": "127.0.0.1:$UP_PORT", "tls": "disabled"}]}
JSON
    bg mem "$REL" -c "$TMP/mem.json"; MPID=$LASTPID
    wait_http "http://127.0.0.1:$MADMIN/ready"
    idle=$(awk '/^VmRSS/ {print $2}' /proc/$MPID/status)
    n=1073741824
    got=$(curl -s "http://127.0.0.1:$MPORT/bytes/$n" | wc -c)
    expect_eq "1 GB download streamed through" "$got" "$n"
    head -c 268435456 /dev/zero | curl -s -X POST -T - "http://127.0.0.1:$MPORT/sink" >"$TMP/sink.out"
    expect_match "256 MB chunked upload streamed through" "$(cat "$TMP/sink.out")" '"body_bytes":268435456'
    hwm=$(rss_hwm_kb $MPID)
    echo "memory: idle RSS ${idle} kB, peak RSS ${hwm} kB across 1 GB down + 256 MB up"
    check "peak RSS stays under 12 MB (${hwm} kB)" test "$hwm" -lt 12288
    check "idle RSS under 4 MB (${idle} kB)" test "$idle" -lt 4096
else
    fail "release build missing: $REL (make test builds it)"
fi

# -- access log, metrics --------------------------------------------------------------------
check "access log has JSON lines" grep -q '"path":"/hello?x=1"' "$TMP/access.log"
m=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
expect_match "remora_requests_total counts by listener/direction/method/code" "$m" 'remora_requests_total\{listener="in",direction="inbound",method_class="read",code="200"\} [1-9]'

# -- idle timers: they move with every request (proxy/io.c lazy timers) -----------------------
# A second proxy with short idle timeouts. A keep-alive connection that sends a request every
# 400 ms outlives several idle_timeout_ms (900 ms) and keeps its one upstream connection; once
# quiet, the client connection is closed after about idle_timeout_ms and the pooled upstream
# connection after about pool_idle_timeout_ms (700 ms). Generous bounds: these check that the
# timeouts happen and are pushed back, not how precisely.
MAIN_ADMIN=$ADMIN_PORT
ADMIN_PORT=$(free_port); IPORT=$(free_port)
cat >"$TMP/idle.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "limits": {"idle_timeout_ms": 900, "pool_idle_timeout_ms": 700},
 "listeners": [{"name": "in", "address": "127.0.0.1:$IPORT", "direction": "inbound",
                "upstream": "127.0.0.1:$UP_PORT", "tls": "disabled"}]}
JSON
MAIN_PID=$PROXY_PID
if start_proxy idle "$TMP/idle.json"; then
    IDLE_PID=$PROXY_PID
    out=$(python3 - "$IPORT" "$ADMIN_PORT" <<'PY'
import json, socket, sys, time, urllib.request
port, admin = int(sys.argv[1]), int(sys.argv[2])
def stats():
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats"))
s = socket.create_connection(("127.0.0.1", port))
s.settimeout(5)
ok = 0
for i in range(7):  # 2.8 s of traffic, one request every 400 ms
    s.sendall(b"GET /t HTTP/1.1\r\nHost: a\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += s.recv(65536)
    ok += data.startswith(b"HTTP/1.1 200")
    time.sleep(0.4)
up_total = stats()["upstream_cx_total"]
t0 = time.monotonic()
closed = s.recv(1) == b""  # waits for the proxy to close the idle connection
idle_s = time.monotonic() - t0 + 0.4
time.sleep(1.0)
print(ok, up_total, int(closed), round(idle_s, 2), stats()["upstream_cx_active"])
PY
)
    read -r ok uptotal closed idle_s upactive <<<"$out"
    expect_eq "idle timer: 7 requests 400 ms apart on one connection all answered" "$ok" 7
    expect_eq "... over one pooled upstream connection (pool idle timer pushed back)" "$uptotal" 1
    expect_eq "... then the quiet client connection is closed by the proxy" "$closed" 1
    check "... after about idle_timeout_ms (${idle_s} s; 0.9 s configured)" \
        python3 -c "import sys; sys.exit(not 0.6 <= float('$idle_s') <= 3.0)"
    expect_eq "... and the pooled upstream connection after pool_idle_timeout_ms" "$upactive" 0
    stop_pid "$IDLE_PID"
    expect_eq "idle-timer proxy exits 0" "$STOP_RC" 0
    check "idle-timer proxy: sanitizers clean" \
        bash -c "! grep -q 'ERROR: AddressSanitizer\\|runtime error\\|LeakSanitizer' '$TMP/idle.log'"
else
    fail "idle-timer proxy did not start"
fi
PROXY_PID=$MAIN_PID ADMIN_PORT=$MAIN_ADMIN

# -- drain on SIGTERM: the in-flight request completes, then exit 0 ---------------------------
curl -s -o "$TMP/slow.out" -w '%{http_code}' "$U/delay/700" >"$TMP/slow.code" &
cpid=$!
sleep 0.3
stop_pid "$PROXY_PID"; rc=$STOP_RC
wait "$cpid"
expect_eq "SIGTERM: in-flight request still answered" "$(cat "$TMP/slow.code")" 200
expect_eq "SIGTERM: proxy exits 0 after draining" "$rc" 0
expect_sanitizers_clean "sanitizers clean (ASan, UBSan, LeakSanitizer)" "$TMP/proxy.log"
finish
