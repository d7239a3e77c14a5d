#!/usr/bin/env bash
# The test upstream itself, driven directly with curl (HTTP/1.1) and
# curl --http2-prior-knowledge / h2load (h2c): every endpoint, in both modes, answers as
# test/upstream/upstream.h says, bodies stream in bounded memory, and SIGTERM exits 0
# (which, in the ASan tree, also means no leak).
source "$(dirname "$0")/../lib.sh"
PATTERN=$REMORA_ROOT/test/upstream/pattern.py

# start_upstream NAME ARGS...: start it on port 0, wait for "listening on"; sets PORT, UPID.
start_upstream() {
    local name=$1; shift
    # ASan's quarantine keeps freed memory (256 MB by default) and would hide whether
    # bodies stream; a small one keeps the RSS checks meaningful in the ASan tree.
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4" \
        bg "$name" "$UPSTREAM" --listen 127.0.0.1:0 --name "$name" "$@"
    UPID=$LASTPID
    PORT=
    wait_until 10 listen_port "$TMP/$name.log" || return 1
    PORT=$LISTEN_PORT
}

# stop_upstream NAME PID: SIGTERM, wait, exit status 0 and no sanitizer report.
stop_upstream() {
    local name=$1 pid=$2 rc
    kill -TERM "$pid"
    wait "$pid"; rc=$?
    expect_eq "$name: SIGTERM exits 0" "$rc" 0
    if grep -qE 'Sanitizer|runtime error' "$TMP/$name.log"; then
        fail "$name: sanitizer report"
        sed 's/^/   | /' "$TMP/$name.log" | head -40
    else
        pass "$name: no sanitizer report"
    fi
}

# hwm PID: peak RSS in kB.
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

head -c 3000000 /dev/urandom >"$TMP/body"
body_sha=$(sha256sum <"$TMP/body" | cut -d' ' -f1)

# run_suite MODE NAME CURLFLAGS...: the endpoint checks common to both protocols.
run_suite() {
    local m=$1 name=$2; shift 2
    local c=(curl -s --max-time 20 "$@") base="http://127.0.0.1:$PORT" out code t0 t1

    out=$("${c[@]}" -H 'X-Test-Header: One' -H 'x-test-header: two' "$base/some/path?q=1")
    expect_eq "$m echo name" "$(jq -r .name <<<"$out")" "$name"
    expect_eq "$m echo method" "$(jq -r .method <<<"$out")" GET
    expect_eq "$m echo path keeps the query" "$(jq -r .path <<<"$out")" "/some/path?q=1"
    expect_eq "$m echo headers lower-cased, repeats joined" \
        "$(jq -r '.headers["x-test-header"]' <<<"$out")" "One, two"
    expect_eq "$m echo authority" "$(jq -r .authority <<<"$out")" "127.0.0.1:$PORT"
    expect_eq "$m echo empty body" "$(jq -r '"\(.body_bytes) \(.body_sha256)"' <<<"$out")" \
        "0 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    out=$("${c[@]}" -X POST --data-binary @"$TMP/body" "$base/echo")
    expect_eq "$m echo hashes a POST body" "$(jq -r '"\(.body_bytes) \(.body_sha256)"' <<<"$out")" \
        "3000000 $body_sha"
    out=$("${c[@]}" -X PUT -T "$TMP/body" "$base/sink")
    expect_eq "$m sink PUT" "$(jq -r '"\(.body_bytes) \(.body_sha256)"' <<<"$out")" \
        "3000000 $body_sha"
    out=$("${c[@]}" -X POST -H 'Transfer-Encoding: chunked' --data-binary @"$TMP/body" "$base/sink")
    expect_eq "$m sink streamed body" "$(jq -r '"\(.body_bytes) \(.body_sha256)"' <<<"$out")" \
        "3000000 $body_sha"
    code=$("${c[@]}" -o /dev/null -w '%{http_code}' "$base/sink")
    expect_eq "$m sink GET is 405" "$code" 405

    out=$("${c[@]}" -D "$TMP/h" "$base/bytes/1048577" | sha256sum | cut -d' ' -f1)
    expect_eq "$m bytes/N matches pattern.py" "$out" "$("$PATTERN" --sha256 1048577)"
    expect_match "$m bytes/N content-length" "$(tr -d '\r' <"$TMP/h")" $'content-length: 1048577'
    out=$("${c[@]}" "$base/bytes/0" | wc -c)
    expect_eq "$m bytes/0 is empty" "$out" 0
    code=$("${c[@]}" -o /dev/null -w '%{http_code}' "$base/bytes/12x")
    expect_eq "$m bytes/garbage is 400" "$code" 400
    out=$("${c[@]}" -I "$base/bytes/10" | tr -d '\r' | grep -i '^content-length')
    expect_eq "$m HEAD bytes/10" "$out" "content-length: 10"

    # a large body streams: the upstream's peak RSS barely moves
    local before after big=400000000
    before=$(hwm "$UPID")
    out=$("${c[@]}" --max-time 120 "$base/bytes/$big" | sha256sum | cut -d' ' -f1)
    after=$(hwm "$UPID")
    expect_eq "$m bytes/400MB matches pattern.py" "$out" "$("$PATTERN" --sha256 $big)"
    check "$m bytes/400MB in bounded memory (${before} -> ${after} kB)" \
        test $((after - before)) -lt 16384

    code=$("${c[@]}" -o "$TMP/s" -w '%{http_code}' "$base/status/503")
    expect_eq "$m status/503" "$code" 503
    check "$m status/503 has a short body" test -s "$TMP/s"
    code=$("${c[@]}" -o "$TMP/s" -w '%{http_code}' "$base/status/204")
    expect_eq "$m status/204" "$code" 204
    check "$m status/204 has no body" test ! -s "$TMP/s"
    code=$("${c[@]}" -o /dev/null -w '%{http_code}' "$base/status/42")
    expect_eq "$m status/42 is 400" "$code" 400

    t0=$(date +%s%N)
    code=$("${c[@]}" -o /dev/null -w '%{http_code}' "$base/delay/300")
    t1=$(date +%s%N)
    expect_eq "$m delay/300 answers" "$code" 200
    check "$m delay/300 waits ($(((t1 - t0) / 1000000)) ms)" test $(((t1 - t0) / 1000000)) -ge 300

    t0=$(date +%s%N)
    out=$("${c[@]}" "$base/slowbody/100?bytes=4" | od -An -tx1 | tr -d ' \n')
    t1=$(date +%s%N)
    expect_eq "$m slowbody bytes are the pattern" "$out" "07264564"
    check "$m slowbody takes 4 ticks ($(((t1 - t0) / 1000000)) ms)" \
        test $(((t1 - t0) / 1000000)) -ge 400

    "${c[@]}" -o /dev/null "$base/close"
    local rc=$?
    check "$m close gives no answer (curl rc=$rc)" test "$rc" -ne 0
    code=$("${c[@]}" -o /dev/null -w '%{http_code}' "$base/")
    expect_eq "$m serves on after /close" "$code" 200

    out=$("${c[@]}" -o /dev/null -o /dev/null -w '%{num_connects} ' "$base/a" "$base/b")
    expect_eq "$m keep-alive reuses the connection" "$out" "1 0 "
}

# ---- HTTP/1.1 ---------------------------------------------------------------
if start_upstream h1 ; then
    pass "h1: prints listening on 127.0.0.1:PORT"
    run_suite h1 h1
    base="http://127.0.0.1:$PORT"

    out=$(curl -s -H 'Expect: 100-continue' -w ' %{http_code} %{time_total}' \
        --data-binary @"$TMP/body" "$base/sink")
    expect_match "h1 100-continue is answered" "$out" '"body_bytes":3000000.* 200 0\.[0-9]'

    # two pipelined requests in one write, then our FIN: both answered, in order
    out=$(python3 - "$PORT" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
          b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
print(data.count(b"HTTP/1.1 200"), data.find(b"/first") < data.find(b"/second"),
      b'"body_bytes":3' in data)
EOF
)
    expect_eq "h1 pipelined requests answered in order" "$out" "2 True True"

    out=$(printf 'GARBAGE\r\n\r\n' | curl -s --max-time 5 telnet://127.0.0.1:$PORT | head -1 | tr -d '\r')
    expect_eq "h1 malformed request is 400" "$out" "HTTP/1.1 400 Bad Request"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "x-big: $(head -c 70000 /dev/zero | tr '\0' a)" "$base/")
    expect_eq "h1 huge header is 431" "$code" 431
    code=$(curl -s -o /dev/null -w '%{http_code}' "$base/$(head -c 70000 /dev/zero | tr '\0' a)")
    expect_eq "h1 huge URL is 414" "$code" 414
    out=$(curl -s -D - -o /dev/null --http1.0 "$base/" | tr -d '\r' | grep -ci '^connection: close')
    expect_eq "h1 HTTP/1.0 closes" "$out" 1
    out=$(curl -s "$base/bytes/300000?chunked=1" -D "$TMP/h" | sha256sum | cut -d' ' -f1)
    expect_eq "h1 chunked bytes match pattern.py" "$out" "$("$PATTERN" --sha256 300000)"
    expect_match "h1 chunked bytes are chunked" "$(tr -d '\r' <"$TMP/h")" 'transfer-encoding: chunked'
    out=$(wrk -t1 -c8 -d1s "$base/" 2>&1 | grep -cE 'Non-2xx|Socket errors')
    expect_eq "h1 wrk burst without errors" "$out" 0
    stop_upstream h1 "$UPID"
else
    fail "h1: test-upstream did not start"
fi

# ---- h2c ------------------------------------------------------------------
if start_upstream h2 --h2; then
    pass "h2: prints listening on 127.0.0.1:PORT"
    run_suite h2 h2 --http2-prior-knowledge
    base="http://127.0.0.1:$PORT"
    out=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version}' "$base/")
    expect_eq "h2 speaks HTTP/2" "$out" 2
    curl -s --http2-prior-knowledge -o /dev/null "$base/close" 2>/dev/null
    rc=$?
    expect_eq "h2 close resets the stream (curl: HTTP/2 stream error)" "$rc" 92
    out=$(h2load -n 2000 -c 4 -m 20 "$base/" 2>&1 | grep '^requests:')
    expect_match "h2 h2load many concurrent streams" "$out" '2000 succeeded, 0 failed, 0 errored'
    out=$(h2load -n 200 -c 2 -m 50 "$base/delay/50" 2>&1 | grep '^requests:')
    expect_match "h2 concurrent delayed streams" "$out" '200 succeeded, 0 failed'
    # nghttp2 itself refuses a header block over 64 KB (REFUSED_STREAM); we serve on
    big=$(head -c 40000 /dev/zero | tr '\0' a)
    code=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}' \
        -H "x-big1: $big" -H "x-big2: $big" "$base/")
    expect_eq "h2 huge header block is refused" "$code" 000
    code=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}' "$base/")
    expect_eq "h2 serves on after a huge header block" "$code" 200
    # a client that goes away mid-body: the upstream frees the stream and serves on
    timeout 1 curl -s --http2-prior-knowledge -o /dev/null "$base/bytes/10000000000"
    timeout 1 curl -s --http2-prior-knowledge -o /dev/null "$base/slowbody/100?bytes=100"
    code=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}' "$base/")
    expect_eq "h2 serves on after clients vanish" "$code" 200
    stop_upstream h2 "$UPID"
else
    fail "h2: test-upstream did not start"
fi

# ---- h1 clients that vanish mid-response ------------------------------------------
if start_upstream h1b; then
    base="http://127.0.0.1:$PORT"
    timeout 1 curl -s -o /dev/null "$base/bytes/10000000000"
    timeout 1 curl -s -o /dev/null "$base/slowbody/100?bytes=100"
    timeout 0.2 curl -s -o /dev/null "$base/delay/1000"
    sleep 1
    code=$(curl -s -o /dev/null -w '%{http_code}' "$base/")
    expect_eq "h1 serves on after clients vanish" "$code" 200
    stop_upstream h1b "$UPID"
fi

finish
