#!/usr/bin/env bash
# Backpressure at the end of a body. With buffer_bytes at its minimum and an
# HTTP/2 peer whose stream window is about as small, the HTTP/1.1 parser
# pauses on most body chunks, the last one included. A pause there must not
# lose the end of the message: the h1 peer sends nothing more until it gets
# an answer (request) or until it asks again (keep-alive response), so the
# parser has to finish the message without new input.
#   request:  h1 client -> proxy -> h2 upstream announcing a 4 KiB window
#   response: h1 upstream -> proxy -> h2 client announcing a 4 KiB window
source "$(dirname "$0")/../lib.sh"

start_upstream up1 || exit 1
H1_PORT=$UP_PORT
start_upstream up2 --h2 --h2-window 4096 || exit 1
H2_PORT=$UP_PORT
ADMIN_PORT=$(free_port); P1=$(free_port); P2=$(free_port)
cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "log_level": "info",
 "limits": {"buffer_bytes": 4096},
 "listeners": [
  {"name": "toh1", "address": "127.0.0.1:$P1", "direction": "inbound",
   "upstream": "127.0.0.1:$H1_PORT", "tls": "disabled"},
  {"name": "toh2", "address": "127.0.0.1:$P2", "direction": "inbound",
   "upstream": "127.0.0.1:$H2_PORT", "tls": "disabled", "upstream_protocol": "h2"}]}
JSON
start_proxy proxy "$TMP/proxy.json" || exit 1
stat() { curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

# Sizes around multiples of the bound and the window, so that the last chunk
# lands at different offsets of a pause.
SIZES="4097 5000 6000 8000 8192 9000 10000 12000 12289 14000 16384 20000 24576 30000 40000 65536 100000 1000000"

# -- request bodies: h1 client -> h2 upstream with a small window ---------------------------
# uploads CURL-ARGS SIZES: prints the sizes whose echo did not come back intact
uploads() {
    local n w out bad=""
    for n in $2; do
        head -c "$n" /dev/urandom >"$TMP/body"
        w=$(sha256sum <"$TMP/body" | cut -d' ' -f1)
        # shellcheck disable=SC2086 # CURL-ARGS is a list of words
        out=$(curl -s -m 5 $1 --data-binary @"$TMP/body" "http://127.0.0.1:$P2/echo")
        [[ $out == *"\"body_sha256\":\"$w\""* ]] || bad+=" $n"
    done
    echo "$bad"
}
expect_eq "h1 uploads of 4 KB-1 MB to a small-window h2 upstream: all answered intact" \
    "$(uploads '-H Expect:' "$SIZES")" ""
expect_eq "... with Expect: 100-continue" "$(uploads '' '9000 12000 20000')" ""
expect_eq "... chunked" "$(uploads '-H Transfer-Encoding:chunked' '9000 12000 20000')" ""

# -- response bodies: h1 upstream -> h2 client with a small window --------------------------
# nghttp -w 12: a 4 KiB stream window. A lost end of message leaves the h2
# stream without END_STREAM: nghttp would wait for it until the timeout.
bad=""
for n in $SIZES; do
    got=$(timeout 5 nghttp -w 12 "http://127.0.0.1:$P1/bytes/$n" | sha256sum | cut -d' ' -f1)
    [[ $got == "$($PATTERN --sha256 "$n")" ]] || bad+=" $n"
done
expect_eq "h1 responses of 4 KB-1 MB to a small-window h2 client: all ended, intact" "$bad" ""
check "... and the upstream connections went back to the pool" test "$(stat upstream_cx_reused)" -gt 0

check "proxy alive" alive "$PROXY_PID"
stop_pid "$PROXY_PID"
expect_eq "SIGTERM: proxy exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean (ASan, UBSan, LeakSanitizer)" "$TMP/proxy.log"
finish
