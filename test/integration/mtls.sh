#!/usr/bin/env bash
# mTLS between two sidecars with static identities: client -> A (outbound,
# tls mesh) -> h2 over mTLS -> B (inbound, strict) -> app. Peer identity in
# x-forwarded-client-cert, refusals (plaintext, no cert, foreign trust domain,
# unknown root), session resumption, and certificate rotation under load.
source "$(dirname "$0")/../lib.sh"
export REMORA_WATCH_MS=100 # the static identity files are looked at every 100 ms
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" || exit 1
"$CERTS" intermediate --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" \
    --out-cert "$D/int.pem" --out-key "$D/int-key.pem" || exit 1
wl() { "$CERTS" workload --ca-cert "$D/int.pem" --ca-key "$D/int-key.pem" --spiffe-id "$1" \
        --out-cert "$2" --out-key "$3" ${4:+--ttl-seconds $4}; }
wl spiffe://cluster.local/ns/shop/sa/frontend "$D/a.pem" "$D/a-key.pem"
wl spiffe://cluster.local/ns/shop/sa/web "$D/b.pem" "$D/b-key.pem"
wl spiffe://evil.example/ns/shop/sa/frontend "$D/evil.pem" "$D/evil-key.pem"
"$CERTS" root --out-cert "$D/other-root.pem" --out-key "$D/other-root-key.pem"
"$CERTS" workload --ca-cert "$D/other-root.pem" --ca-key "$D/other-root-key.pem" \
    --spiffe-id spiffe://cluster.local/ns/shop/sa/frontend --out-cert "$D/rogue.pem" --out-key "$D/rogue-key.pem"

start_upstream app || exit 1
APP=$UP_PORT
A_ADMIN=$(free_port); A_OUT=$(free_port); B_ADMIN=$(free_port); B_IN=$(free_port); B_PERM=$(free_port)
A_PLAIN=$(free_port)
cat >"$TMP/a.json" <<JSON
{"admin": {"address": "127.0.0.1:$A_ADMIN"},
 "listeners": [
   {"name": "outbound", "address": "127.0.0.1:$A_OUT", "direction": "outbound",
    "upstream": "127.0.0.1:$B_IN", "tls": "mesh"},
   {"name": "to-plain", "address": "127.0.0.1:$A_PLAIN", "direction": "outbound",
    "upstream": "127.0.0.1:$APP", "tls": "mesh"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "frontend",
              "cert_file": "$D/a.pem", "key_file": "$D/a-key.pem", "bundle_file": "$D/root.pem"}}
JSON
cat >"$TMP/b.json" <<JSON
{"admin": {"address": "127.0.0.1:$B_ADMIN"},
 "listeners": [
   {"name": "inbound", "address": "127.0.0.1:$B_IN", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "strict"},
   {"name": "permissive", "address": "127.0.0.1:$B_PERM", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "permissive"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
              "cert_file": "$D/b.pem", "key_file": "$D/b-key.pem", "bundle_file": "$D/root.pem"}}
JSON
ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || exit 1
BPID=$PROXY_PID
ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || exit 1
APID=$PROXY_PID

# -- the mesh path ----------------------------------------------------------------------
out=$(curl -s -H 'x-forwarded-client-cert: By=forged;URI=spiffe://cluster.local/ns/kube-system/sa/admin' \
      "http://127.0.0.1:$A_OUT/hello")
expect_match "HTTP/1.1 app -> A -> mTLS -> B -> app" "$out" '"path":"/hello"'
expect_match "app sees the caller's verified identity in XFCC" "$out" \
    '"x-forwarded-client-cert":"By=spiffe://cluster.local/ns/shop/sa/web;URI=spiffe://cluster.local/ns/shop/sa/frontend"'
[[ $out == *forged* ]] && fail "client-supplied XFCC leaked" || pass "client-supplied XFCC is replaced"
out=$(curl -s --http2-prior-knowledge "http://127.0.0.1:$A_OUT/h2")
expect_match "h2c app traffic crosses the mTLS hop too" "$out" 'URI=spiffe://cluster.local/ns/shop/sa/frontend'
head -c 3000000 /dev/urandom >"$TMP/body"
want=$(sha256sum <"$TMP/body" | cut -d' ' -f1)
out=$(curl -s --data-binary @"$TMP/body" "http://127.0.0.1:$A_OUT/echo")
expect_match "3 MB request body intact over mTLS" "$out" "\"body_sha256\":\"$want\""
got=$(curl -s "http://127.0.0.1:$A_OUT/bytes/20000000" | sha256sum | cut -d' ' -f1)
expect_eq "20 MB response intact over mTLS" "$got" "$($PATTERN --sha256 20000000)"
out=$(curl -s "http://127.0.0.1:$A_ADMIN/stats")
expect_match "A reports the upstream handshake" "$out" '"tls_handshakes": [1-9]'

# -- opaque TCP between sidecars is wrapped in mTLS too --------------------------------------------
hs0=$(curl -s "http://127.0.0.1:$B_ADMIN/stats" | jq .tls_handshakes)
out=$($RAW 127.0.0.1:$A_OUT '\x00\x01not-http\r\n\r\n' --timeout 3 | head -c 200)
expect_match "non-HTTP bytes cross A -> mTLS -> B -> app (the app's answer comes back)" "$out" '^HTTP/1.1 400'
hs1=$(curl -s "http://127.0.0.1:$B_ADMIN/stats" | jq .tls_handshakes)
check "... over a new mTLS connection ($hs0 -> $hs1)" test "$hs1" -gt "$hs0"

# -- refusals on the strict listener ---------------------------------------------------------
code=$(curl -s -m 3 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$B_IN/")
expect_eq "plaintext to a strict listener is refused" "$code" 000
tls() { curl -s -m 3 -k -o /dev/null -w '%{http_code}' "$@" "https://127.0.0.1:$B_IN/"; }
expect_eq "TLS without a client certificate is refused" "$(tls)" 000
expect_eq "a certificate from a foreign trust domain is refused" \
    "$(tls --cert "$D/evil.pem" --key "$D/evil-key.pem")" 000
expect_eq "a certificate from an unknown root is refused" \
    "$(tls --cert "$D/rogue.pem" --key "$D/rogue-key.pem")" 000
expect_eq "a valid mesh certificate is accepted (curl as the client)" \
    "$(tls --cert "$D/a.pem" --key "$D/a-key.pem")" 200
m=$(curl -s "http://127.0.0.1:$B_ADMIN/metrics")
expect_match "refused handshakes are counted" "$m" 'remora_tls_handshake_failures_total [3-9]'
expect_match "refused plaintext is counted" "$m" 'remora_tls_plaintext_refused_total [1-9]'
check "B still alive" alive "$BPID"

# -- permissive: both, identity only when verified ---------------------------------------------
out=$(curl -s -H 'x-forwarded-client-cert: forged' "http://127.0.0.1:$B_PERM/p")
expect_match "permissive accepts plaintext" "$out" '"path":"/p"'
[[ $out == *x-forwarded-client-cert* ]] && fail "permissive plaintext got an XFCC" \
    || pass "permissive plaintext carries no identity (forged XFCC dropped)"
out=$(curl -s -k --cert "$D/a.pem" --key "$D/a-key.pem" "https://127.0.0.1:$B_PERM/p")
expect_match "permissive accepts mTLS with identity" "$out" 'URI=spiffe://cluster.local/ns/shop/sa/frontend'

# -- outbound mesh to something that is not a sidecar ---------------------------------------------
out=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$A_PLAIN/")
expect_match "mesh upstream without TLS -> 503 naming mTLS" "$out" 'mTLS.* 503$'

# -- secure naming: a route endpoint names the workload it must be ------------------------------
# N: an outbound sidecar whose routes send good.local to B expecting B's identity (web), bad.local
# to B expecting another one, and plain.local to B with no identity (trust domain only). A
# session checked for one identity is never reused for a request expecting another.
N_ADMIN=$(free_port); N_OUT=$(free_port); N_PLAIN=$(free_port)
WEB=spiffe://cluster.local/ns/shop/sa/web
cat >"$TMP/n-routes.json" <<JSON
{"routes": [
  {"name": "good", "match": {"host": "good.local"},
   "endpoints": [{"address": "127.0.0.1:$B_IN", "identity": "$WEB"}]},
  {"name": "bad", "match": {"host": "bad.local"},
   "endpoints": [{"address": "127.0.0.1:$B_IN", "identity": "spiffe://cluster.local/ns/shop/sa/payments"}]},
  {"name": "plain", "match": {"host": "plain.local"}, "endpoints": [{"address": "127.0.0.1:$B_IN"}]}]}
JSON
cat >"$TMP/n.json" <<JSON
{"admin": {"address": "127.0.0.1:$N_ADMIN"},
 "listeners": [
   {"name": "outbound", "address": "127.0.0.1:$N_OUT", "direction": "outbound",
    "upstream": "127.0.0.1:$B_IN", "tls": "mesh"},
   {"name": "no-mtls", "address": "127.0.0.1:$N_PLAIN", "direction": "outbound",
    "upstream": "127.0.0.1:$APP", "tls": "disabled"}],
 "routes_file": "$TMP/n-routes.json",
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "frontend",
              "cert_file": "$D/a.pem", "key_file": "$D/a-key.pem", "bundle_file": "$D/root.pem"}}
JSON
if ADMIN_PORT=$N_ADMIN start_proxy n "$TMP/n.json"; then
    NPID=$PROXY_PID
    n_get() { curl -s -o "$TMP/n.out" -w '%{http_code}' -H "Host: $1" "http://127.0.0.1:${2:-$N_OUT}/sn"; }
    expect_eq "secure naming: the expected identity (B is $WEB) -> 200" "$(n_get good.local)" 200
    expect_match "... and B's app sees N's identity" "$(cat "$TMP/n.out")" 'URI=spiffe://cluster.local/ns/shop/sa/frontend'
    expect_eq "secure naming: B is not the expected identity -> 503, never sent" "$(n_get bad.local)" 503
    check "... N logs who B is and whom it expected" \
        grep -q "peer is $WEB, expected spiffe://cluster.local/ns/shop/sa/payments" "$TMP/n.log"
    expect_eq "... while the verified session to B still serves the good route" "$(n_get good.local)" 200
    expect_eq "an endpoint without identity: trust domain only -> 200" "$(n_get plain.local)" 200
    expect_eq "an endpoint identity on a listener without mTLS -> 503 (fail closed)" \
        "$(n_get good.local "$N_PLAIN")" 503
    expect_match "... saying why" "$(cat "$TMP/n.out")" 'identity can only be checked over mTLS'
    out=$(curl -s "http://127.0.0.1:$N_ADMIN/clusters")
    expect_match "/clusters shows each endpoint's expected identity" "$out" "\"identity\": *\"$WEB\""
    sed "s|\"$WEB\"|\"spiffe://bad id\"|" "$TMP/n-routes.json" >"$TMP/n-bad.json"
    sed "s|$TMP/n-routes.json|$TMP/n-bad.json|" "$TMP/n.json" >"$TMP/n2.json"
    out=$("$PROXY" --check-config -c "$TMP/n2.json" 2>&1)
    expect_match "a malformed endpoint identity is refused, naming the key" "$out" \
        'routes\[0\]\.endpoints\[0\]\.identity: "spiffe://bad id" is not a SPIFFE ID'
    stop_pid "$NPID"; expect_eq "N exits 0" "$STOP_RC" 0
    expect_sanitizers_clean "sanitizers clean (n)" "$TMP/n.log"
else
    fail "N did not start"
fi

# -- session resumption -------------------------------------------------------------------------
sess=$TMP/sess.pem
openssl s_client -connect 127.0.0.1:$B_IN -cert "$D/a.pem" -cert_chain "$D/a.pem" -key "$D/a-key.pem" -CAfile "$D/root.pem" \
    -sess_out "$sess" </dev/null >/dev/null 2>&1
out=$(openssl s_client -connect 127.0.0.1:$B_IN -cert "$D/a.pem" -cert_chain "$D/a.pem" -key "$D/a-key.pem" \
    -CAfile "$D/root.pem" -sess_in "$sess" </dev/null 2>/dev/null | grep -E '^(Reused|New),')
expect_match "a reconnect resumes the session (ticket)" "$out" '^Reused'
m=$(curl -s "http://127.0.0.1:$B_ADMIN/metrics")
expect_match "resumed handshakes are counted" "$m" 'remora_tls_handshakes_resumed_total [1-9]'

# -- rotation under load: new certs for both, no failed request ---------------------------------------
old_b=$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .serial)
h2load -n 6000 -c 4 -m 4 --rps 1500 "http://127.0.0.1:$A_OUT/r" >"$TMP/load.txt" 2>&1 &
lpid=$!
sleep 1
wl spiffe://cluster.local/ns/shop/sa/web "$D/b2.pem" "$D/b2-key.pem"
cat "$D/b2-key.pem" >"$D/b-key.pem.new"; cat "$D/b2.pem" >"$D/b.pem.new"
mv "$D/b-key.pem.new" "$D/b-key.pem"; mv "$D/b.pem.new" "$D/b.pem"
wl spiffe://cluster.local/ns/shop/sa/frontend "$D/a2.pem" "$D/a2-key.pem"
mv "$D/a2-key.pem" "$D/a-key.pem"; mv "$D/a2.pem" "$D/a.pem"
wait $lpid
out=$(grep -E '^requests:' "$TMP/load.txt")
expect_match "rotation under load: every request succeeded" "$out" 'requests: 6000 total.* 6000 succeeded, 0 failed'
b_rotated() { c=$(curl -s "http://127.0.0.1:$B_ADMIN/certs"); [[ $(jq -r .rotations <<<"$c") -ge 1 ]]; }
wait_until 10 b_rotated
expect_eq "B rotated once" "$(jq -r .rotations <<<"$c")" 1
[[ $(jq -r .serial <<<"$c") != "$old_b" ]] && pass "B serves a new serial" || fail "B serial unchanged"
out=$(curl -s "http://127.0.0.1:$A_OUT/after")
expect_match "traffic flows after rotation" "$out" '"path":"/after"'

# -- broken new files keep the old identity --------------------------------------------------------
echo "garbage" >"$D/b.pem"
certs_error() { c=$(curl -s "http://127.0.0.1:$B_ADMIN/certs"); [[ $(jq -r .last_error <<<"$c") != null ]]; }
wait_until 10 certs_error
expect_match "a bad certificate file is reported" "$(jq -r .last_error <<<"$c")" 'keeping the current one'
expect_eq "... and the old certificate stays ready" "$(jq -r .ready <<<"$c")" true
out=$(curl -s "http://127.0.0.1:$A_OUT/still")
expect_match "... and traffic still flows" "$out" '"path":"/still"'

# -- a workload posing as the CA never receives the token ----------------------------------------
# ca_address is an IP here: only identity.ca_server_name (default
# remora-injector.remora-system.svc) tells the CA from any other certificate
# under the mesh root. The fake CA (Python's ssl) prints what it receives:
# the token must never appear there.
"$CERTS" server --ca-cert "$D/int.pem" --ca-key "$D/int-key.pem" --dns api.shop.svc \
    --out-cert "$D/api.pem" --out-key "$D/api-key.pem" || exit 1
echo "secret-token-must-not-leak" >"$TMP/token"
NFAKE=0
# c_has_error ADMIN-PORT: that proxy's /certs has a last_error now (sets E)
c_has_error() { E=$(curl -s "http://127.0.0.1:$1/certs" | jq -r .last_error 2>/dev/null); [[ -n $E && $E != null ]]; }
# fake_ca CERT KEY [CA-SERVER-NAME]: a fake CA on 127.0.0.1 and proxy C asking it;
# sets E (C's last_error once it has one) and FAKELOG
fake_ca() {
    NFAKE=$((NFAKE + 1))
    local fake cadmin cin fpid
    fake=$(free_port); cadmin=$(free_port); cin=$(free_port)
    FAKELOG=$TMP/fake-ca-$NFAKE.log
    python3 -c '
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
ls = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    c, _ = ls.accept()
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.settimeout(5)
        data = t.recv(65536)
        print(data.decode("latin-1"), flush=True)
        t.sendall(b"HTTP/1.1 500 Fake\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        t.close()
    except Exception as e:
        print("handshake or read failed:", e, flush=True)
        c.close()
' "$fake" "$1" "$2" >"$FAKELOG" 2>&1 </dev/null &
    fpid=$!; _pids+=("$fpid")
    wait_port "$fake"
    cat >"$TMP/c$NFAKE.json" <<JSON
{"admin": {"address": "127.0.0.1:$cadmin"},
 "listeners": [{"name": "in", "address": "127.0.0.1:$cin", "direction": "inbound",
                "upstream": "127.0.0.1:$APP", "tls": "strict"}],
 "identity": {"namespace": "shop", "service_account": "web", "ca_address": "127.0.0.1:$fake",
              ${3:+\"ca_server_name\": \"$3\",} "ca_root": "$D/root.pem", "token_file": "$TMP/token"}}
JSON
    bg "c$NFAKE" "$PROXY" -c "$TMP/c$NFAKE.json"; CPID=$LASTPID
    E=null
    wait_until 10 c_has_error "$cadmin"
    CODE=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$cadmin/ready")
    stop_pid "$CPID"; expect_eq "proxy C$NFAKE exits 0" "$STOP_RC" 0
    expect_sanitizers_clean "sanitizers clean (c$NFAKE)" "$TMP/c$NFAKE.log"
    stop_pid "$fpid"
}
fake_ca "$D/b2.pem" "$D/b2-key.pem"
expect_match "a workload's certificate at the CA's IP address is refused (no CA name in it)" "$E" \
    "CA connection: .*Common Name \\(CN\\) does not match"
expect_eq "... and the proxy stays not ready" "$CODE" 503
check "... and the token never reached it" bash -c "! grep -q secret-token '$FAKELOG'"
fake_ca "$D/api.pem" "$D/api-key.pem"
expect_match "a mesh server certificate for another name (api.shop.svc) at the CA's IP is refused" "$E" \
    "CA connection: .*Common Name \\(CN\\) does not match"
check "... and the token never reached it" bash -c "! grep -q secret-token '$FAKELOG'"
fake_ca "$D/api.pem" "$D/api-key.pem" api.shop.svc
expect_match "with ca_server_name api.shop.svc the same certificate is taken for the CA" "$E" \
    "CA refused the CSR: 500"
check "... the request went out to it (SNI and name check use ca_server_name)" grep -q "POST /v1/sign" "$FAKELOG"
jq '.identity.ca_server_name = "10.0.0.1"' "$TMP/c3.json" >"$TMP/c-badname.json"
out=$(timeout 20 "$PROXY" -c "$TMP/c-badname.json" 2>&1)
expect_match "a proxy with ca_server_name 10.0.0.1 does not start: it must be a DNS name" "$?:$out" \
    '^[1-9][0-9]*:.*identity\.ca_server_name: "10\.0\.0\.1" is not a DNS name'

stop_pid "$APID"; expect_eq "A exits 0" "$STOP_RC" 0
stop_pid "$BPID"; expect_eq "B exits 0" "$STOP_RC" 0
for l in a b; do
    expect_sanitizers_clean "sanitizers clean ($l)" "$TMP/$l.log"
done
finish
