#!/usr/bin/env bash
# Requests you can follow (docs/observability.md), through two sidecars:
# client -> A (outbound, tls mesh) -> h2 over mTLS -> B (inbound, strict) -> app.
# The app is test/tools/recorder.py: each request's exact bytes land in
# app/req-N.K.bin and its answer "ok N.K" names that file, so every check is on
# what reached the app byte for byte. x-request-id kept / generated (UUIDv4) /
# replaced when malformed; traceparent's trace-id kept and the parent-id
# rewritten by each sidecar; tracestate and B3 untouched; the proxy's own
# 403/503/504 carry x-request-id; both sidecars' access log lines share the
# request id and trace id and carry the documented fields; TCP connections log.
source "$(dirname "$0")/../lib.sh"
export REMORA_WATCH_MS=100
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" || exit 1
"$CERTS" intermediate --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" \
    --out-cert "$D/int.pem" --out-key "$D/int-key.pem" || exit 1
wl() { "$CERTS" workload --ca-cert "$D/int.pem" --ca-key "$D/int-key.pem" --spiffe-id "$1" \
        --out-cert "$2" --out-key "$3"; }
FE=spiffe://cluster.local/ns/shop/sa/frontend
wl "$FE" "$D/a.pem" "$D/a-key.pem" || exit 1
wl spiffe://cluster.local/ns/shop/sa/web "$D/b.pem" "$D/b-key.pem" || exit 1

# the apps: an HTTP recorder, a TCP echo recorder, and one that reads and never answers
bg app python3 "$REMORA_ROOT/test/tools/recorder.py" "$TMP/app" --mode http
wait_until 5 listen_port "$TMP/app.log" || { fail "recorder did not start"; finish; }
APP=$LISTEN_PORT
bg echo python3 "$REMORA_ROOT/test/tools/recorder.py" "$TMP/echo" --mode echo
wait_until 5 listen_port "$TMP/echo.log" || { fail "echo recorder did not start"; finish; }
ECHO=$LISTEN_PORT
bg sink python3 "$REMORA_ROOT/test/tools/recorder.py" "$TMP/sink" --mode sink
wait_until 5 listen_port "$TMP/sink.log" || { fail "sink recorder did not start"; finish; }
SINK=$LISTEN_PORT

A_ADMIN=$(free_port); A_OUT=$(free_port); A_DEAD=$(free_port); A_SLOW=$(free_port)
A_TCP=$(free_port); B_ADMIN=$(free_port); B_IN=$(free_port); B_TCP=$(free_port)
DEAD=$(free_port) # nothing listens there
cat >"$TMP/policy.json" <<JSON
{"default": "deny",
 "rules": [
  {"name": "no-forbidden", "action": "deny", "to": {"ports": [$B_IN], "paths": ["/forbidden"]}},
  {"name": "allow-frontend", "action": "allow", "from": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}
 ]}
JSON
cat >"$TMP/b.json" <<JSON
{"admin": {"address": "127.0.0.1:$B_ADMIN"},
 "listeners": [
   {"name": "inbound", "address": "127.0.0.1:$B_IN", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "strict"},
   {"name": "inbound-tcp", "address": "127.0.0.1:$B_TCP", "direction": "inbound",
    "upstream": "127.0.0.1:$ECHO", "tls": "strict"}],
 "opaque_ports": [$B_TCP],
 "policy_file": "$TMP/policy.json",
 "access_log": "$TMP/b-access.log",
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
              "cert_file": "$D/b.pem", "key_file": "$D/b-key.pem", "bundle_file": "$D/root.pem"}}
JSON
cat >"$TMP/a.json" <<JSON
{"admin": {"address": "127.0.0.1:$A_ADMIN"},
 "listeners": [
   {"name": "outbound", "address": "127.0.0.1:$A_OUT", "direction": "outbound",
    "upstream": "127.0.0.1:$B_IN", "tls": "mesh"},
   {"name": "dead", "address": "127.0.0.1:$A_DEAD", "direction": "outbound",
    "upstream": "127.0.0.1:$DEAD", "tls": "disabled"},
   {"name": "slow", "address": "127.0.0.1:$A_SLOW", "direction": "outbound",
    "upstream": "127.0.0.1:$SINK", "tls": "disabled"},
   {"name": "outbound-tcp", "address": "127.0.0.1:$A_TCP", "direction": "outbound",
    "upstream": "127.0.0.1:$B_TCP", "tls": "mesh"}],
 "opaque_ports": [$A_TCP],
 "tracing": {"sample_percent": 100},
 "limits": {"request_timeout_ms": 2000},
 "access_log": "$TMP/a-access.log",
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "frontend",
              "cert_file": "$D/a.pem", "key_file": "$D/a-key.pem", "bundle_file": "$D/root.pem"}}
JSON

# -- tracing.sample_percent is checked, naming the key ----------------------------------------
jq '.tracing.sample_percent = 101' "$TMP/a.json" >"$TMP/bad.json"
out=$("$PROXY" --check-config -c "$TMP/bad.json" 2>&1)
expect_match "sample_percent 101 is refused, naming the key" "$?:$out" "^1:.*tracing\.sample_percent.*range"
jq '.tracing = {"sample_percent": 5, "sampled": true}' "$TMP/a.json" >"$TMP/bad.json"
out=$("$PROXY" --check-config -c "$TMP/bad.json" 2>&1)
expect_match "an unknown key under tracing is refused" "$?:$out" "^1:.*tracing.*sampled"

ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || finish
BPID=$PROXY_PID
ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || finish
APID=$PROXY_PID

UUID='^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'
TP_RE='^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'

# get NAME URL [curl args...]: GET through the sidecars; the body in $TMP/NAME.body, the
# response head in $TMP/NAME.head, and REQ = the app's file of that request ("" if none).
get() {
    local name=$1 url=$2; shift 2
    curl -s -m 10 -D "$TMP/$name.head" -o "$TMP/$name.body" "$@" "$url"
    REQ=""
    local nk
    nk=$(sed -n 's/^ok \([0-9]*\.[0-9]*\)$/\1/p' "$TMP/$name.body")
    [[ -n $nk ]] && REQ=$TMP/app/req-$nk.bin
}
# hdr FILE NAME: the values of header NAME in a raw head (one per line, CR dropped)
hdr() { grep -a -i "^$2:" "$1" | sed 's/^[^:]*: *//' | tr -d '\r'; }
# logline FILE ID: the access log line with request_id ID (waits for it), in LINE
has_line() { LINE=$(jq -c --arg id "$2" 'select(.request_id == $id)' "$1" 2>/dev/null | tail -1); [[ -n $LINE ]]; }
logline() { LINE=""; wait_until 5 has_line "$1" "$2"; }

# -- a request id and a trace the caller sent ---------------------------------------------
TP=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
get kept "http://127.0.0.1:$A_OUT/kept" -H 'x-request-id: caller-id-42' -H "traceparent: $TP" \
    -H 'tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE' \
    -H 'b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90' \
    -H 'X-B3-TraceId: 80f198ee56343ba864fe8b2a57d3eff7' -H 'X-B3-SpanId: e457b5a2e4d86bd1' \
    -H 'X-B3-Sampled: 1'
if [[ -n $REQ && -f $REQ ]]; then
    pass "the request crossed A -> mTLS -> B -> app"
    expect_eq "the app got the caller's x-request-id byte for byte, once" \
        "$(grep -a -c -i '^x-request-id:' "$REQ"):$(grep -a -c -x $'x-request-id: caller-id-42\r' "$REQ")" "1:1"
    tp=$(hdr "$REQ" traceparent)
    expect_match "the app got one well-formed traceparent" "$tp" "$TP_RE"
    expect_eq "... with the caller's trace-id and flags" "${tp:0:36}|${tp:52}" "${TP:0:36}|${TP:52}"
    [[ ${tp:36:16} != "${TP:36:16}" ]] && pass "... and a new parent-id (B's span)" \
        || fail "the parent-id was not rewritten"
    check "tracestate reached the app byte for byte" \
        grep -a -q -x $'tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r' "$REQ"
    check "B3 single header untouched" \
        grep -a -q -x $'b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90\r' "$REQ"
    expect_eq "B3 multi headers untouched" \
        "$(hdr "$REQ" x-b3-traceid) $(hdr "$REQ" x-b3-spanid) $(hdr "$REQ" x-b3-sampled)" \
        "80f198ee56343ba864fe8b2a57d3eff7 e457b5a2e4d86bd1 1"
    # each sidecar's line: A's parent is the caller's span, B's parent is A's span, the app
    # sees B's span
    logline "$TMP/a-access.log" caller-id-42; ALINE=$LINE
    logline "$TMP/b-access.log" caller-id-42; BLINE=$LINE
    a_span=$(jq -r .span_id <<<"$ALINE"); b_span=$(jq -r .span_id <<<"$BLINE")
    expect_eq "A's log: the caller's trace, the caller's span as parent" \
        "$(jq -r '[.trace_id, .parent_span_id, .sampled] | join(" ")' <<<"$ALINE")" \
        "${TP:3:32} ${TP:36:16} true"
    expect_eq "B's log: the same trace, A's span as parent" \
        "$(jq -r '[.trace_id, .parent_span_id] | join(" ")' <<<"$BLINE")" "${TP:3:32} $a_span"
    expect_eq "the app's parent-id is B's span" "${tp:36:16}" "$b_span"
    expect_eq "A's line: the documented fields" \
        "$(jq -r '[.listener, .direction, .protocol, .peer | tostring] | join(" ")' <<<"$ALINE" | sed 's/:[0-9]*$//')" \
        "outbound outbound HTTP/1.1 127.0.0.1"
    expect_eq "... upstream, its protocol, status, retries, no identity, no rule" \
        "$(jq -r '[.upstream, .upstream_protocol, .status, .retries, .peer_identity, .policy_rule] | map(tostring) | join(" ")' <<<"$ALINE")" \
        "127.0.0.1:$B_IN HTTP/2 200 0 null null"
    expect_eq "B's line: inbound HTTP/2 from A's verified identity, the allow rule, the app" \
        "$(jq -r '[.direction, .protocol, .peer_identity, .policy_rule, .upstream, .status, .method, .path] | map(tostring) | join(" ")' <<<"$BLINE")" \
        "inbound HTTP/2 $FE allow-frontend 127.0.0.1:$APP 200 GET /kept"
    check "both lines carry a duration and the byte counts" \
        jq -e -s 'all(.[]; (.duration_ms | type) == "number" and .response_bytes == 7 and .request_bytes == 0)' \
        <<<"$ALINE$BLINE"
else
    fail "the request did not reach the app: $(cat "$TMP/kept.body" "$TMP/kept.head" 2>&1 | head -5)"
fi

# -- none sent: A generates both ----------------------------------------------------------------
get fresh "http://127.0.0.1:$A_OUT/fresh"
if [[ -n $REQ && -f $REQ ]]; then
    id=$(hdr "$REQ" x-request-id)
    expect_match "no x-request-id: the app gets a generated UUIDv4" "$id" "$UUID"
    tp=$(hdr "$REQ" traceparent)
    expect_match "no traceparent: A starts one (sampled: sample_percent 100)" "$tp" '^00-[0-9a-f]{32}-[0-9a-f]{16}-01$'
    logline "$TMP/a-access.log" "$id"; ALINE=$LINE
    logline "$TMP/b-access.log" "$id"; BLINE=$LINE
    expect_eq "A's and B's lines share the request id and the trace id the app saw" \
        "$(jq -r .trace_id <<<"$ALINE") $(jq -r .trace_id <<<"$BLINE")" "${tp:3:32} ${tp:3:32}"
    expect_eq "A started the trace (no parent); B's parent is A's span" \
        "$(jq -r '.parent_span_id' <<<"$ALINE") $(jq -r .parent_span_id <<<"$BLINE")" \
        "null $(jq -r .span_id <<<"$ALINE")"
else
    fail "fresh request did not reach the app"
fi
# uniqueness across requests
get fresh2 "http://127.0.0.1:$A_OUT/fresh2"
id2=$([[ -n $REQ ]] && hdr "$REQ" x-request-id)
[[ $id2 =~ $UUID && $id2 != "${id:-}" ]] && pass "the next request gets another id" \
    || fail "second generated id: '$id2' (first '${id:-}')"

# -- malformed: replaced ---------------------------------------------------------------------------
long=$(printf 'x%.0s' $(seq 129))
for bad in 'has space' "$long" $'caf\xc3\xa9'; do
    get bad "http://127.0.0.1:$A_OUT/bad" -H "x-request-id: $bad"
    id=$([[ -n $REQ ]] && hdr "$REQ" x-request-id)
    expect_match "a malformed x-request-id ('${bad:0:12}'...) is replaced by a UUIDv4" "$id" "$UUID"
done
get badtp "http://127.0.0.1:$A_OUT/badtp" -H 'traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01' \
    -H 'tracestate: rojo=1'
if [[ -n $REQ ]]; then
    tp=$(hdr "$REQ" traceparent)
    [[ $tp =~ $TP_RE && ${tp:3:32} != 4bf92f3577b34da6a3ce929d0e0e4736 ]] \
        && pass "an invalid traceparent (upper-case hex) is replaced by a new trace" \
        || fail "invalid traceparent: app got '$tp'"
    expect_eq "... and its tracestate dropped (W3C)" "$(grep -a -c -i '^tracestate:' "$REQ")" 0
else
    fail "badtp request did not reach the app"
fi

# -- a Connection header naming them cannot strip them ------------------------------------------
get conn "http://127.0.0.1:$A_OUT/conn" -H 'Connection: x-request-id, traceparent' \
    -H 'x-request-id: conn-named-1' -H "traceparent: $TP"
if [[ -n $REQ ]]; then
    expect_eq "'Connection: x-request-id, traceparent': the app still gets the id, once" \
        "$(grep -a -c -i '^x-request-id:' "$REQ"):$(hdr "$REQ" x-request-id)" "1:conn-named-1"
    tp=$(hdr "$REQ" traceparent)
    expect_eq "... and the caller's trace" "${tp:0:36}" "${TP:0:36}"
else
    fail "conn request did not reach the app"
fi

# -- the proxy's own errors carry x-request-id -----------------------------------------------------
get e403 "http://127.0.0.1:$A_OUT/forbidden" -H 'x-request-id: deny-me-1'
expect_match "B's 403 reaches the client with its x-request-id" \
    "$(head -1 "$TMP/e403.head" | tr -d '\r') $(hdr "$TMP/e403.head" x-request-id)" "^HTTP/1.1 403 .* deny-me-1$"
check "... and nothing reached the app" test -z "$REQ"
logline "$TMP/b-access.log" deny-me-1
expect_eq "B's line names the deny rule" "$(jq -r '[.status, .policy_rule] | join(" ")' <<<"$LINE")" \
    "403 no-forbidden"
get e503 "http://127.0.0.1:$A_DEAD/x" -H 'x-request-id: dead-1'
expect_match "A's 503 (connection refused) carries the caller's x-request-id" \
    "$(head -1 "$TMP/e503.head" | tr -d '\r') $(hdr "$TMP/e503.head" x-request-id)" "^HTTP/1.1 503 .* dead-1$"
logline "$TMP/a-access.log" dead-1
expect_eq "... its line names the cause and the upstream" \
    "$(jq -r '[.status, .cause, .upstream] | join("|")' <<<"$LINE")" \
    "503|upstream connect error: connection refused|127.0.0.1:$DEAD"
get e503g "http://127.0.0.1:$A_DEAD/y"
id=$(hdr "$TMP/e503g.head" x-request-id)
expect_match "a 503 for a request without one carries a generated UUIDv4" "$id" "$UUID"
check "... the same id as A's log line" logline "$TMP/a-access.log" "$id"
get e504 "http://127.0.0.1:$A_SLOW/z" -H 'x-request-id: slow-1'
expect_match "A's 504 (request timeout) carries x-request-id" \
    "$(head -1 "$TMP/e504.head" | tr -d '\r') $(hdr "$TMP/e504.head" x-request-id)" "^HTTP/1.1 504 .* slow-1$"
logline "$TMP/a-access.log" slow-1
expect_eq "... its line names the cause" "$(jq -r '[.status, .cause] | join("|")' <<<"$LINE")" \
    "504|upstream request timeout"

# -- HTTP/2 from the caller: the same ----------------------------------------------------------------
get h2 "http://127.0.0.1:$A_OUT/h2" --http2-prior-knowledge -H 'x-request-id: h2-caller'
expect_eq "h2c caller: the app gets its x-request-id" "$([[ -n $REQ ]] && hdr "$REQ" x-request-id)" "h2-caller"
logline "$TMP/a-access.log" h2-caller
expect_eq "... A logs protocol HTTP/2" "$(jq -r .protocol <<<"$LINE")" "HTTP/2"

# -- opaque TCP through both sidecars logs too ----------------------------------------------------
out=$($RAW "127.0.0.1:$A_TCP" 'hello tcp\n' --timeout 2 --half-close)
expect_eq "TCP bytes cross A -> mTLS -> B -> echo app" "$out" "hello tcp"
has_tcp() { LINE=$(jq -c 'select(.protocol == "tcp")' "$1" 2>/dev/null | tail -1); [[ -n $LINE ]]; }
if wait_until 10 has_tcp "$TMP/a-access.log"; then
    expect_eq "A's TCP line: bytes both ways, upstream, no cause" \
        "$(jq -r '[.listener, .request_bytes, .response_bytes, .upstream, .cause] | map(tostring) | join(" ")' <<<"$LINE")" \
        "outbound-tcp 10 10 127.0.0.1:$B_TCP null"
else
    fail "A wrote no TCP line"
fi
if wait_until 10 has_tcp "$TMP/b-access.log"; then
    expect_eq "B's TCP line: bytes, the peer's identity, the allow rule, the app" \
        "$(jq -r '[.direction, .request_bytes, .response_bytes, .peer_identity, .policy_rule, .upstream] | map(tostring) | join(" ")' <<<"$LINE")" \
        "inbound 10 10 $FE allow-frontend 127.0.0.1:$ECHO"
else
    fail "B wrote no TCP line"
fi

check "A still alive" alive "$APID"
check "B still alive" alive "$BPID"
stop_pid "$APID"
expect_eq "A exits cleanly" "$STOP_RC" 0
stop_pid "$BPID"
expect_eq "B exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "A: no sanitizer report" "$TMP/a.log"
expect_sanitizers_clean "B: no sanitizer report" "$TMP/b.log"
finish
