#!/usr/bin/env bash
# Issue 13 (part B): no connection is forwarded without a policy decision. Each check is an
# attack that got past the policy before, tried through a plaintext listener and a strict mTLS
# listener, with what reached the app checked byte for byte by raw recording upstreams
# (test/tools/recorder.py: every byte of every connection, and each open/close).
#
#   hostile_client.py (plain, or TLS with a workload cert; source 127.0.0.1 or .2)
#      -> P: plain      (inbound, disabled)  -> R_HTTP (HTTP recorder)
#            mtls       (inbound, strict)    -> R_HTTP
#            tcp        (inbound, disabled)  -> R_TCP  (echo recorder)      L4 allow
#            tcp2       (inbound, disabled)  -> R_TCP                       HTTP-only allow
#            greet      (inbound, disabled, opaque port) -> R_GREET (speaks first, as MySQL)
#            mtls-tcp   (inbound, strict)    -> R_TCP
#            mtls-greet (inbound, strict, opaque port)   -> R_GREET
#            perm-greet (inbound, permissive, opaque port) -> R_GREET
#            out-greet  (outbound, opaque port)          -> R_GREET
#            tcp6, tcp6-deny ([::1], inbound)            -> R_TCP
#      -> PA: audit     (inbound, disabled)  -> R_TCP, the same rules in mode audit
#      -> P2: small     (inbound, disabled, max_connections 50) -> R_HTTP
# nginx answers the same leading-CRLF request, to show an app takes it as a request.
source "$(dirname "$0")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
HC="python3 $REMORA_ROOT/test/tools/hostile_client.py"
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || exit 1
wl() { "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --spiffe-id "$1" \
        --out-cert "$D/$2.pem" --out-key "$D/$2-key.pem" >/dev/null; }
FE=spiffe://cluster.local/ns/shop/sa/frontend
WEB=spiffe://cluster.local/ns/shop/sa/web
DB=spiffe://cluster.local/ns/shop/sa/db
wl $FE fe || exit 1
wl $WEB web || exit 1
wl $DB db || exit 1
FE_TLS=(--tls "$D/fe.pem" "$D/fe-key.pem")
WEB_TLS=(--tls "$D/web.pem" "$D/web-key.pem")

# ---- recorders --------------------------------------------------------------------------------
# start_rec NAME ARGS...: sets REC_PORT; the recording goes to $TMP/NAME/
start_rec() {
    local name=$1; shift
    bg "$name" python3 "$REMORA_ROOT/test/tools/recorder.py" "$TMP/$name" "$@"
    REC_PORT=""
    WAIT_UNTIL_STEP=0.05 wait_until 10 listen_port "$TMP/$name.log" && { REC_PORT=$LISTEN_PORT; return 0; }
    fail "recorder $name did not start"; cat "$TMP/$name.log"; finish
}
start_rec rhttp --mode http; R_HTTP=$REC_PORT
start_rec rtcp --mode echo; R_TCP=$REC_PORT
start_rec rgreet --mode echo --greet '\x0a5.7.42-remora\x00'; R_GREET=$REC_PORT
opens() { grep -c '^open' "$TMP/$1/events" 2>/dev/null || echo 0; }
# seen REC MARKER: some connection of recorder REC received MARKER
seen() { grep -qaF -- "$2" "$TMP/$1"/conn-*.bin 2>/dev/null; }
# last_req: the bytes of the newest request the HTTP recorder answered
last_req() { local f; f=$(ls -t "$TMP/rhttp"/req-*.bin 2>/dev/null | head -1); [[ -n $f ]] && cat "$f"; }
# req_with MARKER: the bytes of the request holding MARKER
req_with() { local f; f=$(grep -laF -- "$1" "$TMP/rhttp"/req-*.bin 2>/dev/null | head -1); [[ -n $f ]] && cat "$f"; }

P_ADMIN=$(free_port); L_PLAIN=$(free_port); L_MTLS=$(free_port); L_TCP=$(free_port)
L_TCP2=$(free_port); L_GREET=$(free_port); L_MTLS_TCP=$(free_port); L_MTLS_GREET=$(free_port)
PA_ADMIN=$(free_port); LA_TCP=$(free_port); P2_ADMIN=$(free_port); L2=$(free_port)
L_OUT_GREET=$(free_port); L_PERM_GREET=$(free_port); L6=$(free_port); L6_DENY=$(free_port); L_OUT_GREET2=$(free_port)

# ---- the policy: HTTP rules scoped to the HTTP ports, L4 rules to the TCP ones -----------------
cat >"$TMP/policy.json" <<JSON
{"default": "deny",
 "rules": [
  {"name": "lan-deny", "action": "deny", "from": {"ip_blocks": ["127.0.0.2/32", "fd00::/8"]}},
  {"name": "v6-loopback-deny", "action": "deny", "from": {"ip_blocks": ["::1/128"]}, "to": {"ports": [$L6_DENY]}},
  {"name": "no-admin", "action": "deny", "to": {"paths": ["/admin*"], "ports": [$L_PLAIN, $L_MTLS, $LA_TCP]}},
  {"name": "no-debug", "action": "deny", "when": {"headers": {"x-debug": "*"}}, "to": {"ports": [$L_PLAIN, $L_MTLS]}},
  {"name": "fe-http", "action": "allow", "from": {"principals": ["$FE"]}, "to": {"methods": ["GET", "POST"], "ports": [$L_MTLS]}},
  {"name": "plain-http", "action": "allow", "to": {"methods": ["GET", "POST"], "ports": [$L_PLAIN, $L_TCP2, $L2]}},
  {"name": "fe-tcp", "action": "allow", "from": {"principals": ["$FE"]}, "to": {"ports": [$L_MTLS_TCP, $L_MTLS_GREET]}},
  {"name": "plain-tcp", "action": "allow", "to": {"ports": [$L_TCP, $L_GREET, $LA_TCP, $L_PERM_GREET, $L6, $L6_DENY]}}
 ]}
JSON
printf '{"mode": "audit",%s' "$(tail -c +2 "$TMP/policy.json")" >"$TMP/audit.json"

IDENT="\"identity\": {\"trust_domain\": \"cluster.local\", \"namespace\": \"shop\", \"service_account\": \"db\",
  \"cert_file\": \"$D/db.pem\", \"key_file\": \"$D/db-key.pem\", \"bundle_file\": \"$D/root.pem\"}"
cat >"$TMP/p.json" <<JSON
{"admin": {"address": "127.0.0.1:$P_ADMIN"},
 "listeners": [
  {"name": "plain", "address": "127.0.0.1:$L_PLAIN", "direction": "inbound", "upstream": "127.0.0.1:$R_HTTP"},
  {"name": "mtls", "address": "127.0.0.1:$L_MTLS", "direction": "inbound", "upstream": "127.0.0.1:$R_HTTP", "tls": "strict"},
  {"name": "tcp", "address": "127.0.0.1:$L_TCP", "direction": "inbound", "upstream": "127.0.0.1:$R_TCP"},
  {"name": "tcp2", "address": "127.0.0.1:$L_TCP2", "direction": "inbound", "upstream": "127.0.0.1:$R_TCP"},
  {"name": "greet", "address": "127.0.0.1:$L_GREET", "direction": "inbound", "upstream": "127.0.0.1:$R_GREET"},
  {"name": "mtls-tcp", "address": "127.0.0.1:$L_MTLS_TCP", "direction": "inbound", "upstream": "127.0.0.1:$R_TCP", "tls": "strict"},
  {"name": "mtls-greet", "address": "127.0.0.1:$L_MTLS_GREET", "direction": "inbound", "upstream": "127.0.0.1:$R_GREET", "tls": "strict"},
  {"name": "out-greet", "address": "127.0.0.1:$L_OUT_GREET", "direction": "outbound", "upstream": "127.0.0.1:$R_GREET"},
  {"name": "out-greet2", "address": "127.0.0.1:$L_OUT_GREET2", "direction": "outbound", "upstream": "127.0.0.1:$R_GREET"},
  {"name": "perm-greet", "address": "127.0.0.1:$L_PERM_GREET", "direction": "inbound", "upstream": "127.0.0.1:$R_GREET", "tls": "permissive"},
  {"name": "tcp6", "address": "[::1]:$L6", "direction": "inbound", "upstream": "127.0.0.1:$R_TCP"},
  {"name": "tcp6-deny", "address": "[::1]:$L6_DENY", "direction": "inbound", "upstream": "127.0.0.1:$R_TCP"}],
 $IDENT,
 "opaque_ports": [$L_GREET, $L_MTLS_GREET, $L_OUT_GREET, $L_PERM_GREET],
 "limits": {"detect_timeout_ms": 2000, "header_timeout_ms": 4000, "tcp_idle_timeout_ms": 1500},
 "policy_file": "$TMP/policy.json"}
JSON
cat >"$TMP/pa.json" <<JSON
{"admin": {"address": "127.0.0.1:$PA_ADMIN"},
 "listeners": [
  {"name": "audit", "address": "127.0.0.1:$LA_TCP", "direction": "inbound", "upstream": "127.0.0.1:$R_TCP"}],
 "policy_file": "$TMP/audit.json"}
JSON
cat >"$TMP/p2.json" <<JSON
{"admin": {"address": "127.0.0.1:$P2_ADMIN"},
 "listeners": [
  {"name": "small", "address": "127.0.0.1:$L2", "direction": "inbound", "upstream": "127.0.0.1:$R_HTTP"}],
 "limits": {"max_connections": 50, "header_timeout_ms": 2000, "detect_timeout_ms": 500},
 "policy_file": "$TMP/policy.json"}
JSON
out=$("$PROXY" --check-config -c "$TMP/p.json" 2>&1)
expect_match "--check-config accepts opaque_ports, tcp_idle_timeout_ms and ip_blocks" "$?:$out" "^0:.*ok"
sed 's/"opaque_ports": \[[0-9]*,/"opaque_ports": [70000,/' "$TMP/p.json" >"$TMP/p-bad.json"
out=$("$PROXY" --check-config -c "$TMP/p-bad.json" 2>&1)
expect_match "a bad opaque_ports entry is refused, naming key and index" "$?:$out" \
    "^1:.*opaque_ports\[0\]: expected a port number 1-65535"

ADMIN_PORT=$P_ADMIN start_proxy p "$TMP/p.json" || { cat "$TMP/p.log"; finish; }
PPID_=$PROXY_PID
ADMIN_PORT=$PA_ADMIN start_proxy pa "$TMP/pa.json" || { cat "$TMP/pa.log"; finish; }
PAPID=$PROXY_PID
ADMIN_PORT=$P2_ADMIN start_proxy p2 "$TMP/p2.json" || { cat "$TMP/p2.log"; finish; }
P2PID=$PROXY_PID

metric() { # ADMIN-PORT SERIES: its value (0 when absent)
    local v
    v=$(curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k {print $2}')
    echo "${v:-0}"
}
# hc ARGS...: one hostile connection; sets GOT (text back), GOTHEX (hex), CLOSED, FIRST (s), CLOSE_S (s)
hc() {
    local j
    j=$($HC one "$@")
    GOT=$(jq -r .got <<<"$j"); GOTHEX=$(jq -r .got_hex <<<"$j"); CLOSED=$(jq -r .closed <<<"$j")
    FIRST=$(jq -r .first_s <<<"$j"); CLOSE_S=$(jq -r .close_s <<<"$j")
}
# within S BOUND: S (seconds, "null" = never) is at most BOUND
within() { [[ $1 != null ]] && awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; }

# ---- row 2: leading empty lines ------------------------------------------------------------------
# nginx first: an app skips the empty line (RFC 9112 section 2.2) and serves the request.
NGX=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<NGINX
daemon off; master_process off; worker_processes 1; pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log; events { worker_connections 64; }
http { access_log off; client_body_temp_path $TMP/nginx; proxy_temp_path $TMP/nginx;
  fastcgi_temp_path $TMP/nginx; uwsgi_temp_path $TMP/nginx; scgi_temp_path $TMP/nginx;
  server { listen 127.0.0.1:$NGX; location / { return 200 "nginx served \$uri\n"; } } }
NGINX
if command -v nginx >/dev/null; then
    bg nginx nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx"
    wait_port "$NGX"
    hc "127.0.0.1:$NGX" --send '\r\nGET /admin/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n'
    expect_match "nginx (a peer app) serves a request after a leading CRLF" "$GOT" "^HTTP/1.1 200.*nginx served /admin/x"
else
    fail "nginx is not installed (scripts/deps.sh installs it)"
fi
for pre in '\r\n' '\n' '\r\n\r\n'; do
    n0=$(opens rhttp)
    hc "127.0.0.1:$L_PLAIN" --send "${pre}GET /admin/x?m=CRLF HTTP/1.1\r\nHost: app\r\n\r\n"
    expect_match "plain: '$pre' then GET /admin/x is decided by the policy (403 no-admin)" "$GOT" \
        "^HTTP/1.1 403 .*RBAC: access denied by rule no-admin"
    if seen rhttp "m=CRLF"; then fail "plain: '$pre' /admin/x reached the app"; else pass "plain: '$pre' /admin/x never reached the app"; fi
    hc "127.0.0.1:$L_MTLS" "${FE_TLS[@]}" --send "${pre}GET /admin/x?m=CRLF HTTP/1.1\r\nHost: app\r\n\r\n"
    expect_match "mtls: '$pre' then GET /admin/x is decided by the policy (403 no-admin)" "$GOT" \
        "^HTTP/1.1 403 .*RBAC: access denied by rule no-admin"
    if seen rhttp "m=CRLF"; then fail "mtls: '$pre' /admin/x reached the app"; else pass "mtls: '$pre' /admin/x never reached the app"; fi
    expect_eq "no connection to the app for '$pre' /admin/x" "$(opens rhttp)" "$n0"
done
# (each request carries its own x-request-id, which the proxy keeps: docs/observability.md)
hc "127.0.0.1:$L_PLAIN" --send '\r\nGET /ok?m=CRLF-OK HTTP/1.1\r\nHost: app\r\nX-Request-Id: crlf-ok\r\n\r\n'
expect_match "plain: '\\r\\n' then an allowed GET: 200" "$GOT" "^HTTP/1.1 200"
expect_eq "plain: the app got the request without the empty line, byte for byte" \
    "$(req_with CRLF-OK | od -An -c | tr -s ' \n' ' ')" \
    "$(printf 'GET /ok?m=CRLF-OK HTTP/1.1\r\nhost: app\r\nx-request-id: crlf-ok\r\n\r\n' | od -An -c | tr -s ' \n' ' ')"

# ---- row 3: silence longer than detect_timeout_ms, then a request ---------------------------------
n0=$(opens rhttp)
hc "127.0.0.1:$L_PLAIN" --sleep 2.5 --send 'GET /admin/x?m=SILENT HTTP/1.1\r\nHost: app\r\n\r\n'
expect_match "plain: 2.5 s of silence then GET /admin/x: 403 no-admin (not a tunnel)" "$GOT" "^HTTP/1.1 403 .*no-admin"
hc "127.0.0.1:$L_MTLS" "${WEB_TLS[@]}" --sleep 2.5 --send 'GET /ok?m=SILENT HTTP/1.1\r\nHost: app\r\n\r\n'
expect_match "mtls: a peer the policy denies, silent 2.5 s then GET: 403 default (not 200)" "$GOT" \
    "^HTTP/1.1 403 .*RBAC: access denied by default"
if seen rhttp "m=SILENT"; then fail "silence: a denied request reached the app"; else pass "silence: nothing reached the app"; fi
expect_eq "silence: no connection was opened to the app" "$(opens rhttp)" "$n0"
hc "127.0.0.1:$L_MTLS" "${FE_TLS[@]}" --sleep 2.5 --send 'GET /ok?m=SILENT-FE HTTP/1.1\r\nHost: app\r\nX-Request-Id: silent-fe\r\n\r\n'
expect_match "mtls: an allowed peer silent 2.5 s then GET: 200 (decided as HTTP)" "$GOT" "^HTTP/1.1 200"
expect_eq "mtls: the app got exactly the request and the verified identity" \
    "$(req_with SILENT-FE)" \
    "$(printf 'GET /ok?m=SILENT-FE HTTP/1.1\r\nhost: app\r\nx-request-id: silent-fe\r\nx-forwarded-client-cert: By=%s;URI=%s\r\n\r\n' "$DB" "$FE")"

# ---- row 4: a lowercase method, a leading space or tab: opaque TCP, decided by the TCP policy -----
for req in 'get /admin/x?m=ROW4 HTTP/1.1\r\n\r\n' ' GET /admin/x?m=ROW4 HTTP/1.1\r\n\r\n' \
           '\tGET /admin/x?m=ROW4 HTTP/1.1\r\n\r\n' 'get /ok?m=ROW4 HTTP/1.1\r\n\r\n'; do
    for l in plain mtls; do
        if [[ $l == plain ]]; then hc "127.0.0.1:$L_PLAIN" --send "$req"; else hc "127.0.0.1:$L_MTLS" "${FE_TLS[@]}" --send "$req"; fi
        if [[ $CLOSED == true && -z $GOT ]] && within "$CLOSE_S" 2.5; then
            pass "$l: '${req:0:14}...' is closed at once by the HTTP-only deny no-admin (fail closed)"
        else
            fail "$l: '${req:0:14}...': closed=$CLOSED after $CLOSE_S s, got '${GOT:0:60}'"
        fi
    done
done
if seen rhttp "m=ROW4"; then fail "row 4: bytes reached the app"; else pass "row 4: no byte reached the app"; fi
expect_match "row 4: the denial is logged with the rule" "$(cat "$TMP/p.log")" \
    "policy: denied tcp connection [0-9]+ from - \(127.0.0.1:[0-9]+\) to port $L_PLAIN by rule no-admin"
expect_match "row 4: the mTLS denial names the peer" "$(cat "$TMP/p.log")" \
    "policy: denied tcp connection [0-9]+ from $FE \(127.0.0.1:[0-9]+\) to port $L_MTLS by rule no-admin"

# ---- row 9: merged slashes and header names with '_' ---------------------------------------------
for l in plain mtls; do
    if [[ $l == plain ]]; then to=("127.0.0.1:$L_PLAIN"); else to=("127.0.0.1:$L_MTLS" "${FE_TLS[@]}"); fi
    hc "${to[@]}" --send 'GET //admin/x?m=SLASH HTTP/1.1\r\nHost: app\r\n\r\n'
    expect_match "$l: GET //admin/x is denied by the deny on /admin*" "$GOT" "^HTTP/1.1 403 .*no-admin"
    hc "${to[@]}" --send 'GET ///admin//x?m=SLASH HTTP/1.1\r\nHost: app\r\n\r\n'
    expect_match "$l: GET ///admin//x too" "$GOT" "^HTTP/1.1 403 .*no-admin"
    hc "${to[@]}" --send "GET //ok///a//b?m=MERGED-$l&x=//y HTTP/1.1\r\nHost: app\r\n\r\n"
    expect_match "$l: GET //ok///a//b is allowed" "$GOT" "^HTTP/1.1 200"
    expect_match "$l: the app got the merged path (query untouched), as the policy saw it" \
        "$(req_with "MERGED-$l" | head -1)" "^GET /ok/a/b\?m=MERGED-$l&x=//y HTTP/1.1"$'\r'"$"
    hc "${to[@]}" --send 'GET /ok?m=UNDERSCORE HTTP/1.1\r\nHost: app\r\nx_debug: 1\r\n\r\n'
    expect_match "$l: header x_debug against a rule on x-debug: 400" "$GOT" "^HTTP/1.1 400 "
    hc "${to[@]}" --send 'GET /ok?m=UNDERSCORE HTTP/1.1\r\nHost: app\r\nx-debug: 1\r\n\r\n'
    expect_match "$l: header x-debug: 403 no-debug" "$GOT" "^HTTP/1.1 403 .*no-debug"
    hc "${to[@]}" --send "GET /ok?m=OTHER-US-$l HTTP/1.1\r\nHost: app\r\nx_other: 1\r\n\r\n"
    expect_match "$l: a '_' header the policy does not name passes" "$GOT" "^HTTP/1.1 200"
done
if seen rhttp "m=SLASH" || seen rhttp "m=UNDERSCORE"; then fail "row 9: a refused request reached the app"
else pass "row 9: no refused request reached the app"; fi
expect_match "row 9: the 400 is logged with its reason" "$(cat "$TMP/p.log")" \
    "policy: rejected GET /ok\?m=UNDERSCORE .*differs from one the policy matches only by '_' for '-'"

# ---- the TCP policy ---------------------------------------------------------------------------------
deny0=$(metric "$P_ADMIN" 'remora_policy_denials_total{rule="lan-deny"}')
def0=$(metric "$P_ADMIN" 'remora_policy_denials_total{rule="default"}')
n0=$(opens rtcp)
hc "127.0.0.1:$L_TCP" --send 'hello TCP-ALLOW\x00\x01\xff' --timeout 1
expect_eq "plain tcp: an L4 allow (ports) lets bytes through; the echo comes back" "$GOTHEX" \
    "$(printf 'hello TCP-ALLOW\x00\x01\xff' | od -An -tx1 | tr -d ' \n')"
f=$(grep -laF TCP-ALLOW "$TMP/rtcp"/conn-*.bin | head -1)
expect_eq "plain tcp: the app got exactly the bytes sent" "$(od -An -tx1 "$f" | tr -d ' \n')" \
    "$(printf 'hello TCP-ALLOW\x00\x01\xff' | od -An -tx1 | tr -d ' \n')"
hc "127.0.0.1:$L_TCP" --source 127.0.0.2 --send 'hello TCP-LAN' --timeout 2
if [[ $CLOSED == true && -z $GOT ]]; then pass "plain tcp: from 127.0.0.2 (ip_blocks deny) closed at once"
else fail "plain tcp: from 127.0.0.2: closed=$CLOSED got '$GOT'"; fi
hc "127.0.0.1:$L_TCP2" --send 'binary TCP-HTTPONLY\x00' --timeout 2
if [[ $CLOSED == true && -z $GOT ]]; then pass "plain tcp: an HTTP-only allow (methods) never admits TCP"
else fail "plain tcp: HTTP-only allow: closed=$CLOSED got '$GOT'"; fi
hc "127.0.0.1:$L_MTLS_TCP" "${FE_TLS[@]}" --send 'mtls TCP-FE' --timeout 1
expect_eq "mtls tcp: allowed by principal (fe-tcp), echoed" "$GOT" "mtls TCP-FE"
hc "127.0.0.1:$L_MTLS_TCP" "${WEB_TLS[@]}" --send 'mtls TCP-WEB' --timeout 2
if [[ $CLOSED == true && -z $GOT ]]; then pass "mtls tcp: another principal is closed after the handshake (default deny)"
else fail "mtls tcp: web: closed=$CLOSED got '$GOT'"; fi
hc "127.0.0.1:$L_MTLS_TCP" "${FE_TLS[@]}" --source 127.0.0.2 --send 'mtls TCP-LAN' --timeout 2
if [[ $CLOSED == true && -z $GOT ]]; then pass "mtls tcp: the allowed principal from a denied ip_block is closed"
else fail "mtls tcp: fe from .2: closed=$CLOSED got '$GOT'"; fi
hc "[::1]:$L6" --send 'v6 TCP-V6-OK' --timeout 1
expect_eq "tcp over IPv6: ::1 is outside the denied blocks, allowed, echoed" "$GOT" "v6 TCP-V6-OK"
hc "[::1]:$L6_DENY" --send 'v6 TCP-V6-DENY' --timeout 2
if [[ $CLOSED == true && -z $GOT ]]; then pass "tcp over IPv6: ip_blocks [\"::1/128\"] denies, closed at once"
else fail "tcp over IPv6 deny: closed=$CLOSED got '$GOT'"; fi
for m in TCP-LAN TCP-HTTPONLY TCP-WEB TCP-V6-DENY; do
    if seen rtcp "$m"; then fail "tcp: denied bytes ($m) reached the app"; else pass "tcp: denied bytes ($m) never reached the app"; fi
done
expect_eq "tcp: only the three allowed connections reached the app" "$(opens rtcp)" $((n0 + 3))
expect_eq "metrics: remora_policy_denials_total{rule=\"lan-deny\"} counts TCP denials" \
    "$(metric "$P_ADMIN" 'remora_policy_denials_total{rule="lan-deny"}')" $((deny0 + 2))
expect_eq "metrics: remora_policy_denials_total{rule=\"default\"} too" \
    "$(metric "$P_ADMIN" 'remora_policy_denials_total{rule="default"}')" $((def0 + 2))
expect_match "log: an ip_blocks denial names the rule and the source" "$(cat "$TMP/p.log")" \
    "policy: denied tcp connection [0-9]+ from - \(127.0.0.2:[0-9]+\) to port $L_TCP by rule lan-deny"
expect_match "log: an IPv6 source is logged as such" "$(cat "$TMP/p.log")" \
    "policy: denied tcp connection [0-9]+ from - \(\[::1\]:[0-9]+\) to port $L6_DENY by rule v6-loopback-deny"
expect_match "log: a default TCP denial" "$(cat "$TMP/p.log")" \
    "policy: denied tcp connection [0-9]+ from $WEB \(127.0.0.1:[0-9]+\) to port $L_MTLS_TCP by default"

# ---- audit mode: logged and counted, let through ---------------------------------------------------
n0=$(opens rtcp)
hc "127.0.0.1:$LA_TCP" --send 'get /admin/x AUDIT-TCP\r\n' --timeout 1
expect_eq "audit: a TCP connection a rule would deny goes through (echo)" "$GOT" $'get /admin/x AUDIT-TCP\r'
f=$(grep -laF AUDIT-TCP "$TMP/rtcp"/conn-*.bin | head -1)
expect_eq "audit: the app got exactly the bytes" "$(cat "$f" 2>/dev/null | od -An -c | tr -s ' \n' ' ')" \
    "$(printf 'get /admin/x AUDIT-TCP\r\n' | od -An -c | tr -s ' \n' ' ')"
expect_eq "audit: remora_policy_audit_denials_total{rule=\"no-admin\"}" \
    "$(metric "$PA_ADMIN" 'remora_policy_audit_denials_total{rule="no-admin"}')" 1
expect_eq "audit: nothing enforced" "$(metric "$PA_ADMIN" 'remora_policy_denials_total{rule="no-admin"}')" 0
expect_match "audit: logged" "$(cat "$TMP/pa.log")" \
    "policy: audit: would deny tcp connection [0-9]+ from - \(127.0.0.1:[0-9]+\) to port $LA_TCP by rule no-admin"

# ---- opaque_ports: server-first protocols get the app at once ---------------------------------------
hc "127.0.0.1:$L_GREET" --timeout 3
if [[ $GOT == *5.7.42-remora* ]] && within "$FIRST" 1.5; then
    pass "opaque port: the greeting arrives in $FIRST s, before detect_timeout_ms (2 s)"
else fail "opaque port: greeting '${GOT}' after $FIRST s"; fi
hc "127.0.0.1:$L_OUT_GREET" --timeout 3
if [[ $GOT == *5.7.42-remora* ]] && within "$FIRST" 1.5; then
    pass "outbound opaque port: the greeting arrives at once too ($FIRST s)"
else fail "outbound opaque port: greeting '${GOT}' after $FIRST s"; fi
hc "127.0.0.1:$L_OUT_GREET2" --timeout 6
if [[ $GOT == *5.7.42-remora* ]] && within "$FIRST" 5 && ! within "$FIRST" 1.5; then
    pass "outbound port not declared opaque: silence becomes TCP after detect_timeout_ms (greeting at $FIRST s)"
else fail "outbound undeclared port: greeting '${GOT}' after $FIRST s"; fi
hc "127.0.0.1:$L_PERM_GREET" "${FE_TLS[@]}" --timeout 3
if [[ $GOT == *5.7.42-remora* ]] && within "$FIRST" 1.5; then
    pass "permissive opaque port, mTLS: the greeting arrives right after the handshake ($FIRST s)"
else fail "permissive opaque port, mTLS: greeting '${GOT}' after $FIRST s"; fi
hc "127.0.0.1:$L_PERM_GREET" --timeout 6
if [[ $GOT == *5.7.42-remora* ]] && within "$FIRST" 5 && ! within "$FIRST" 1.5; then
    pass "permissive opaque port, plaintext: silence becomes TCP after detect_timeout_ms (greeting at $FIRST s)"
else fail "permissive opaque port, plaintext: greeting '${GOT}' after $FIRST s"; fi
hc "127.0.0.1:$L_MTLS_GREET" "${FE_TLS[@]}" --timeout 3
if [[ $GOT == *5.7.42-remora* ]] && within "$FIRST" 1.5; then
    pass "mtls opaque port: the greeting arrives right after the handshake ($FIRST s)"
else fail "mtls opaque port: greeting '${GOT}' after $FIRST s"; fi
n0=$(opens rgreet)
hc "127.0.0.1:$L_MTLS_GREET" "${WEB_TLS[@]}" --timeout 3
if [[ $CLOSED == true && $GOT != *remora* ]]; then pass "mtls opaque port: a denied principal is closed, no greeting"
else fail "mtls opaque port: web got '$GOT' closed=$CLOSED"; fi
hc "127.0.0.1:$L_GREET" --source 127.0.0.2 --timeout 3
if [[ $CLOSED == true && $GOT != *remora* ]]; then pass "opaque port: a denied source is closed, no greeting"
else fail "opaque port: .2 got '$GOT' closed=$CLOSED"; fi
expect_eq "opaque port: denied connections never reached the app" "$(opens rgreet)" "$n0"

# ---- row 5: no app connection before the first byte; bounded detection; TCP idle timeout ----------
n0=$(opens rtcp)
hc "127.0.0.1:$L_TCP" --timeout 6
if [[ $CLOSED == true ]] && within "$CLOSE_S" 5.5; then
    pass "silent client: closed at header_timeout_ms (4 s) after $CLOSE_S s"
else fail "silent client: closed=$CLOSED after $CLOSE_S s"; fi
expect_eq "silent client: nothing was opened toward the app (not an opaque port)" "$(opens rtcp)" "$n0"
idle0=$(metric "$P_ADMIN" remora_tcp_idle_timeouts_total)
hc "127.0.0.1:$L_TCP" --send 'idle tcp' --timeout 6
if [[ $GOT == "idle tcp" && $CLOSED == true ]] && within "$CLOSE_S" 3; then
    pass "tcp tunnel: closed after tcp_idle_timeout_ms (1.5 s) of silence ($CLOSE_S s)"
else fail "tcp tunnel idle: got '$GOT' closed=$CLOSED after $CLOSE_S s"; fi
expect_eq "metrics: remora_tcp_idle_timeouts_total" "$(metric "$P_ADMIN" remora_tcp_idle_timeouts_total)" $((idle0 + 1))

# 200 clients that send nothing or one byte and hold, against P: bounded fds and memory, no app
# connection for any of them, all closed within the bounds (one byte: TCP at detect_timeout_ms,
# then closed by the HTTP-only deny; nothing: closed at header_timeout_ms).
fds() { ls "/proc/$1/fd" | wc -l; }
fd0=$(fds "$PPID_"); rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$PPID_/status"); n0=$(opens rhttp)
$HC hold "127.0.0.1:$L_PLAIN" 100 --for 9 >"$TMP/hold-idle.json" &
h1=$!
$HC hold "127.0.0.1:$L_PLAIN" 100 --send 'G' --for 9 >"$TMP/hold-one.json" &
h2=$!
sleep 1.2
fd1=$(fds "$PPID_"); rss1=$(awk '/^VmRSS/ {print $2}' "/proc/$PPID_/status")
wait $h1 $h2
if ((fd1 - fd0 <= 210)); then pass "200 holding clients: proxy fds $fd0 -> $fd1 (one each, none toward the app)"
else fail "200 holding clients: proxy fds $fd0 -> $fd1"; fi
if (((rss1 - rss0) < 65536)); then pass "200 holding clients: RSS $rss0 -> $rss1 kB"
else fail "200 holding clients: RSS $rss0 -> $rss1 kB"; fi
expect_eq "200 holding clients: no connection was opened toward the app" "$(opens rhttp)" "$n0"
expect_eq "100 silent clients: all opened and closed by the proxy" \
    "$(jq -r '"\(.opened) \(.closed)"' "$TMP/hold-idle.json")" "100 100"
check "... within header_timeout_ms + slack ($(jq -r .last_close_s "$TMP/hold-idle.json") s)" \
    within "$(jq -r .last_close_s "$TMP/hold-idle.json")" 7
expect_eq "100 one-byte clients: all opened and closed by the proxy" \
    "$(jq -r '"\(.opened) \(.closed)"' "$TMP/hold-one.json")" "100 100"
check "... within detect_timeout_ms + slack ($(jq -r .last_close_s "$TMP/hold-one.json") s)" \
    within "$(jq -r .last_close_s "$TMP/hold-one.json")" 5
check "P is still up" alive "$PPID_"

# max_connections 50 (P2): 60 silent clients no longer lock the listener for good
$HC hold "127.0.0.1:$L2" 60 --for 8 >"$TMP/hold-p2.json"
expect_eq "P2: 60 silent clients all closed (50 at header_timeout_ms, 10 refused)" \
    "$(jq -r '"\(.opened) \(.closed)"' "$TMP/hold-p2.json")" "60 60"
check "... the last within 2 s + slack ($(jq -r .last_close_s "$TMP/hold-p2.json") s)" \
    within "$(jq -r .last_close_s "$TMP/hold-p2.json")" 5
hc "127.0.0.1:$L2" --send 'GET /ok?m=P2-AFTER HTTP/1.1\r\nHost: app\r\n\r\n'
expect_match "P2: a request is served after them" "$GOT" "^HTTP/1.1 200"
expect_eq "metrics: remora_detect_silent_closed_total (P2)" "$(metric "$P2_ADMIN" remora_detect_silent_closed_total)" 50

# ---- shutdown ------------------------------------------------------------------------------------
stop_pid "$PPID_"; expect_eq "P exits 0" "$STOP_RC" 0
stop_pid "$PAPID"; expect_eq "PA exits 0" "$STOP_RC" 0
stop_pid "$P2PID"; expect_eq "P2 exits 0" "$STOP_RC" 0
for l in p pa p2; do
    expect_sanitizers_clean "sanitizers clean ($l)" "$TMP/$l.log"
done
finish
