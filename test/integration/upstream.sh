#!/usr/bin/env bash
# The upstream module's resend of a request the upstream never processed
# (docs/internals/upstream.md): an HTTP/1.1 upstream that closes a pooled
# keep-alive connection as the next request arrives (the keep-alive race).
# A body-less request is resent once on a fresh connection and counted as a
# retry with reason "unprocessed", without any route configuring retries; a
# request with a body is not resent (502). What reached the app is asserted
# from the app's own log, request by request.
source "$(dirname "$0")/../lib.sh"

ADMIN_PORT=$(free_port); PORT=$(free_port); STALE=$(free_port)

# The app: every connection answers its first request and, on the second,
# reads it whole and closes without a byte. Logs "conn N METHOD PATH BODY
# answered|dropped" per request.
python3 - "$STALE" >"$TMP/stale.log" 2>&1 <<'PY' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
lock = threading.Lock(); count = [0]
def read_request(c, buf):
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return None, buf
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    clen = 0
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        if k.strip().lower() == b"content-length":
            clen = int(v.strip())
    while len(rest) < clen:
        d = c.recv(65536)
        if not d:
            return None, b""
        rest += d
    method, path = lines[0].split(b" ")[:2]
    return (method.decode(), path.decode(), rest[:clen].decode()), rest[clen:]
def serve(c):
    buf = b""
    for i in range(2):
        req, buf = read_request(c, buf)
        if req is None:
            break
        if i == 0:
            with lock:  # numbered by first request: a port probe is no connection
                count[0] += 1; n = count[0]
            body = ("conn %d %s" % (n, req[1])).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            print("conn %d %s %s %s answered" % (n, req[0], req[1], req[2] or "-"), flush=True)
        else:
            print("conn %d %s %s %s dropped" % (n, req[0], req[1], req[2] or "-"), flush=True)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
_pids+=($!)
wait_port "$STALE" || { fail "the app did not start"; finish; }

cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "log_level": "debug",
 "listeners": [
  {"name": "out", "address": "127.0.0.1:$PORT", "direction": "outbound",
   "upstream": "127.0.0.1:$STALE", "tls": "disabled"}]}
JSON
start_proxy proxy "$TMP/proxy.json" || exit 1
U=http://127.0.0.1:$PORT
metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
# app_lines N: the app has logged at least N requests (it logs "answered" after its answer
# is sent, so the client can read the answer before the line is written)
app_lines() { (($(grep -c '^conn' "$TMP/stale.log") >= $1)); }

out=$(curl -s -w ' %{http_code}' "$U/one")
expect_eq "first request: answered on connection 1" "$out" "conn 1 /one 200"
out=$(curl -s -w ' %{http_code}' "$U/two")
expect_eq "stale pooled connection: the GET is resent on a fresh connection" "$out" "conn 2 /two 200"
wait_until 10 app_lines 3
app=$(grep '^conn' "$TMP/stale.log")
expect_eq "... the app saw it once dropped, once answered, nothing else" "$app" \
"conn 1 GET /one - answered
conn 1 GET /two - dropped
conn 2 GET /two - answered"
expect_eq "... counted as a retry" "$(metric remora_retries_total)" 1
expect_eq "... with reason unprocessed" \
    "$(metric 'remora_retries_by_reason_total{reason="unprocessed"}')" 1
expect_eq "... not a route retry" "$(metric 'remora_retries_by_reason_total{reason="retry_on"}')" 0
expect_match "... the debug line says why" "$(cat "$TMP/proxy.log")" 'not processed .* resending in 0 ms'

# a body nothing kept: never resent, the client hears the reset
out=$(curl -s -w ' %{http_code}' --data-binary abc "$U/three")
expect_match "stale connection, POST with a body: 502 naming the reset" "$out" 'upstream reset.* 502$'
# a resend would have come before the 502 (the proxy answers 502 instead of resending)
wait_until 10 app_lines 4
app=$(grep '^conn' "$TMP/stale.log" | tail -n +4)
expect_eq "... the app saw the POST once (dropped), never again" "$app" "conn 2 POST /three abc dropped"
expect_eq "... no retry counted" "$(metric remora_retries_total)" 1

stop_pid "$PROXY_PID"
expect_eq "proxy exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean (ASan, UBSan, LeakSanitizer)" "$TMP/proxy.log"
finish
