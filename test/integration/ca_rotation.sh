#!/usr/bin/env bash
# Proxies in CA mode, end to end (docs/ca.md): two sidecars get their
# certificates from the injector's CA (/certs, /ready), talk mTLS with them,
# rotate under continuous load with a 10 s TTL and no failed request, and keep
# serving while the CA is down, rotating again once it is back; a proxy with the
# wrong token or the wrong root stays not ready. Then the reload drill: new
# signing material (intermediate, then root) under a running injector.
# The signing API and its refusals are ca.sh; config cases are ca_config.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# ---- PKI, token keys, configs (test/lib.sh) -------------------------------------------
ca_pki || exit 1
config() { ca_config "$@"; }
config main 3600 # the drill starts from it
start_injector() { ca_start_injector "$@"; } # CONFIG: logs to $TMP/injector-<n>.log
tok() { ca_tok "$@"; }
bearer() { ca_bearer "$@"; }
ca_csr web "spiffe://$TD/ns/shop/sa/web" || exit 1 # the drill's CSR

# ---- the proxy in CA mode ---------------------------------------------------------------------
config ttl10 10
start_injector "$TMP/ttl10.json" || { fail "injector (ttl 10) starts"; finish; }
start_upstream app || exit 1
APP=$UP_PORT
A_ADMIN=$(free_port); A_OUT=$(free_port); B_ADMIN=$(free_port); B_IN=$(free_port)
C_ADMIN=$(free_port); C_IN=$(free_port); E_ADMIN=$(free_port); E_IN=$(free_port)
tok --ns shop --sa frontend --pod frontend-0 --exp-in 36000 >"$TMP/a.token"
tok --ns shop --sa web --pod web-0 --alg ES256 --exp-in 36000 >"$TMP/b.token"
tok --ns shop --sa admin --exp-in 36000 >"$TMP/c.token"
proxy_config() { # FILE ADMIN LISTENERS-JSON SA TOKEN ROOT
    cat >"$1" <<JSON
{"admin": {"address": "127.0.0.1:$2"},
 "listeners": $3,
 "identity": {"trust_domain": "$TD", "namespace": "shop", "service_account": "$4",
              "ca_address": "127.0.0.1:$CAP", "ca_root": "$6", "token_file": "$5"}}
JSON
}
proxy_config "$TMP/a.json" "$A_ADMIN" \
    "[{\"name\": \"outbound\", \"address\": \"127.0.0.1:$A_OUT\", \"direction\": \"outbound\",
       \"upstream\": \"127.0.0.1:$B_IN\", \"tls\": \"mesh\"}]" frontend "$TMP/a.token" "$D/root.pem"
proxy_config "$TMP/b.json" "$B_ADMIN" \
    "[{\"name\": \"inbound\", \"address\": \"127.0.0.1:$B_IN\", \"direction\": \"inbound\",
       \"upstream\": \"127.0.0.1:$APP\", \"tls\": \"strict\"}]" web "$TMP/b.token" "$D/root.pem"
ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || { fail "proxy B gets a CA certificate"; finish; }
BPID=$PROXY_PID
ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || { fail "proxy A gets a CA certificate"; finish; }
APID=$PROXY_PID
pass "both proxies turn ready (/ready 200) once the CA signed"
c=$(curl -s "http://127.0.0.1:$B_ADMIN/certs")
expect_eq "B /certs: spiffe_id and source" "$(jq -r '.spiffe_id + " " + .source' <<<"$c")" "spiffe://$TD/ns/shop/sa/web ca"
expect_match "B /certs: a serial" "$(jq -r .serial <<<"$c")" '^[0-9a-f]{16,}$'
na=$(date -d "$(jq -r .not_after <<<"$c")" +%s)
left=$((na - $(date +%s)))
((left > 0 && left <= 10)) && pass "B /certs: not_after within the 10 s TTL ($left s)" || fail "B not_after: $left s left"

out=$(curl -s -m 5 "http://127.0.0.1:$A_OUT/hello")
expect_match "app -> A -> mTLS (CA-issued certs) -> B -> app" "$out" '"path":"/hello"'
expect_match "B hands the app A's CA-issued identity" "$out" \
    "\"x-forwarded-client-cert\":\"By=spiffe://$TD/ns/shop/sa/web;URI=spiffe://$TD/ns/shop/sa/frontend\""
code=$(curl -s -m 3 -k -o /dev/null -w '%{http_code}' "https://127.0.0.1:$B_IN/")
expect_eq "B (strict) still refuses TLS without a client cert" "$code" 000

# a proxy whose token names another service account never gets a cert
proxy_config "$TMP/c.json" "$C_ADMIN" \
    "[{\"name\": \"inbound\", \"address\": \"127.0.0.1:$C_IN\", \"direction\": \"inbound\",
       \"upstream\": \"127.0.0.1:$APP\", \"tls\": \"strict\"}]" web "$TMP/c.token" "$D/root.pem"
bg c "$PROXY" -c "$TMP/c.json"
CPID=$LASTPID
# a proxy that does not trust the CA's serving certificate
proxy_config "$TMP/e.json" "$E_ADMIN" \
    "[{\"name\": \"inbound\", \"address\": \"127.0.0.1:$E_IN\", \"direction\": \"inbound\",
       \"upstream\": \"127.0.0.1:$APP\", \"tls\": \"strict\"}]" web "$TMP/b.token" "$D/other-root.pem"
bg e "$PROXY" -c "$TMP/e.json"
EPID=$LASTPID
wait_port "$C_ADMIN"; wait_port "$E_ADMIN"
sleep 2
expect_eq "a proxy with another service account's token stays not ready (503)" \
    "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$C_ADMIN/ready")" 503
expect_match "... and /certs says the CA refused it (403)" \
    "$(curl -s "http://127.0.0.1:$C_ADMIN/certs" | jq -r .last_error)" 'CA refused the CSR: 403.*identity_mismatch'
expect_eq "a proxy that cannot verify the CA stays not ready (503)" \
    "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$E_ADMIN/ready")" 503
expect_match "... and says why" "$(curl -s "http://127.0.0.1:$E_ADMIN/certs" | jq -r .last_error)" 'CA (unreachable|connection).*'
stop_pid "$CPID"
stop_pid "$EPID"

# -- rotation under continuous load ------------------------------------------------------------
rot_a0=$(curl -s "http://127.0.0.1:$A_ADMIN/certs" | jq -r .rotations)
rot_b0=$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .rotations)
h2load -n 6000 -c 2 -m 2 --rps 200 "http://127.0.0.1:$A_OUT/load" >"$TMP/load.txt" 2>&1
out=$(grep -E '^requests:' "$TMP/load.txt")
expect_match "~15 s of load through both sidecars while they rotate: no failed request" "$out" \
    'requests: 6000 total, 6000 started, 6000 done, 6000 succeeded, 0 failed'
expect_match "... every answer a 2xx" "$(grep -E '^status codes:' "$TMP/load.txt")" 'status codes: 6000 2xx'
rot_a=$(curl -s "http://127.0.0.1:$A_ADMIN/certs" | jq -r .rotations)
rot_b=$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .rotations)
((rot_a - rot_a0 >= 1)) && pass "A rotated during the load ($rot_a0 -> $rot_a)" || fail "A rotations $rot_a0 -> $rot_a"
((rot_b - rot_b0 >= 1)) && pass "B rotated during the load ($rot_b0 -> $rot_b)" || fail "B rotations $rot_b0 -> $rot_b"

# -- ca_root changes under a running proxy (a root rotation publishes a new bundle) -----------------
# R starts with the mesh root as ca_root. Replaced by an unrelated root, the next rotation cannot
# verify the CA (R keeps its valid certificate); replaced by a bundle with both roots, R rotates
# again without a restart.
R_ADMIN=$(free_port); R_IN=$(free_port)
"$REMORA_ROOT/$REMORA_BUILD/remora-certs" root --out-cert "$TMP/unrelated-root.pem" \
    --out-key "$TMP/unrelated-root-key.pem" --cn "unrelated root" >/dev/null
cp "$D/root.pem" "$TMP/r-root.pem"
tok --ns shop --sa web --pod web-1 --alg ES256 --exp-in 36000 >"$TMP/r.token"
proxy_config "$TMP/r.json" "$R_ADMIN" \
    "[{\"name\": \"inbound\", \"address\": \"127.0.0.1:$R_IN\", \"direction\": \"inbound\",
       \"upstream\": \"127.0.0.1:$APP\", \"tls\": \"strict\"}]" web "$TMP/r.token" "$TMP/r-root.pem"
if ADMIN_PORT=$R_ADMIN start_proxy r "$TMP/r.json"; then
    RPID=$PROXY_PID
    r_certs() { curl -s "http://127.0.0.1:$R_ADMIN/certs"; }
    rot0=$(r_certs | jq -r .rotations)
    cp "$TMP/unrelated-root.pem" "$TMP/r-root.new" && mv "$TMP/r-root.new" "$TMP/r-root.pem"
    r_refused() { grep -q 'ca_root .* reloaded' "$TMP/r.log" && [[ $(r_certs | jq -r .last_error) != null ]]; }
    wait_until 15 r_refused
    c=$(r_certs)
    check "a changed ca_root is reloaded before the next CA request" grep -q 'ca_root .* reloaded' "$TMP/r.log"
    expect_match "... an unrelated root: the CA cannot be verified, the rotation fails" \
        "$(jq -r .last_error <<<"$c")" '.'
    expect_eq "... and R keeps its valid certificate (ready)" "$(jq -r .ready <<<"$c")" true
    rot1=$(jq -r .rotations <<<"$c")
    cat "$TMP/unrelated-root.pem" "$D/root.pem" >"$TMP/r-root.new" && mv "$TMP/r-root.new" "$TMP/r-root.pem"
    r_rotated() { (($(r_certs | jq -r .rotations) > $1)); }
    wait_until 20 r_rotated "$rot1"
    rot2=$(r_certs | jq -r .rotations)
    ((rot2 > rot1)) && pass "a bundle with both roots: R rotates again, no restart ($rot0 -> $rot1 -> $rot2)" ||
        fail "no rotation after the bundle with both roots ($rot0 -> $rot1 -> $rot2): $(r_certs)"
    echo 'not a PEM' >"$TMP/r-root.new" && mv "$TMP/r-root.new" "$TMP/r-root.pem"
    wait_until 15 grep -q 'ca_root .* cannot be used' "$TMP/r.log"
    check "a ca_root that does not parse is logged and the one in force kept" \
        grep -q 'ca_root .* cannot be used, keeping the current one' "$TMP/r.log"
    expect_eq "... R still ready" "$(r_certs | jq -r .ready)" true
    stop_pid "$RPID"; expect_eq "R exits 0" "$STOP_RC" 0
    expect_sanitizers_clean "sanitizers clean (r)" "$TMP/r.log"
else
    fail "R (ca_root reload) did not start"
fi

# -- the CA goes away and comes back --------------------------------------------------------------
# Certificates of 40 s: the proxy tries to rotate at 50-80 % of that (20-32 s),
# finds the CA gone, keeps its valid certificate, and rotates once it is back.
stop_pid "$IPID"
expect_eq "injector (ttl 10) exits 0" "$STOP_RC" 0
config ttl40 40
start_injector "$TMP/ttl40.json" || { fail "injector (ttl 40) starts"; finish; }
# b_long_cert: B's certificate has more than 30 s left (sets na)
b_long_cert() {
    na=$(date -d "$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .not_after)" +%s)
    (((na - $(date +%s)) > 30))
}
WAIT_UNTIL_STEP=0.2 wait_until 20 b_long_cert
(((na - $(date +%s)) > 30)) && pass "proxies pick up the longer TTL on their next rotation" || fail "no 40 s cert"
serial=$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .serial)
stop_pid "$IPID"
# b_certs_match JQ REGEX: B's /certs (kept in c) has JQ matching REGEX now
b_certs_match() { c=$(curl -s "http://127.0.0.1:$B_ADMIN/certs"); [[ $(jq -r "$1" <<<"$c") =~ $2 ]]; }
WAIT_UNTIL_STEP=0.2 wait_until 40 b_certs_match .last_error 'CA unreachable|CA connection'
expect_match "CA down: B reports it" "$(jq -r .last_error <<<"$c")" 'CA unreachable|CA connection'
expect_eq "CA down: B keeps its valid cert and stays ready" \
    "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$B_ADMIN/ready"):$(jq -r .ready <<<"$c")" "200:true"
(($(date -d "$(jq -r .not_after <<<"$c")" +%s) > $(date +%s))) && pass "CA down: the cert is still valid" ||
    fail "CA down: the cert expired"
out=$(curl -s -m 5 "http://127.0.0.1:$A_OUT/ca-down")
expect_match "CA down: traffic still flows over mTLS" "$out" '"path":"/ca-down"'
rot_b=$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .rotations)
start_injector "$TMP/ttl40.json" || { fail "injector restarts"; finish; }
b_rotated_past() { c=$(curl -s "http://127.0.0.1:$B_ADMIN/certs"); [[ $(jq -r .rotations <<<"$c") -gt $1 ]]; }
WAIT_UNTIL_STEP=0.2 wait_until 30 b_rotated_past "$rot_b"
(($(jq -r .rotations <<<"$c") > rot_b)) && pass "CA back: B rotates again" || fail "CA back: no rotation ($c)"
[[ $(jq -r .serial <<<"$c") != "$serial" ]] && pass "CA back: B holds a new serial" || fail "CA back: same serial"
out=$(curl -s -m 5 "http://127.0.0.1:$A_OUT/after")
expect_match "CA back: traffic flows" "$out" '"path":"/after"'

# The CA first: a proxy stopped with a CSR in flight leaks that request
# (proxy/caclient.c: the cancel is reaped by an event that never runs once the
# loop has ended); with the CA gone, its retries wait on a timer instead.
stop_pid "$IPID"; expect_eq "injector exits 0" "$STOP_RC" 0
sleep 1
stop_pid "$APID"; expect_eq "A exits 0" "$STOP_RC" 0
stop_pid "$BPID"; expect_eq "B exits 0" "$STOP_RC" 0
for l in "$TMP"/injector-*.log "$TMP"/{a,b,c,e}.log; do
    expect_sanitizers_clean "sanitizers clean ($(basename "$l" .log))" "$l"
done

# ---- the reload drill: new signing material under a running injector ---------------------------
# The CA's files are replaced in place (each by a rename, as a Secret update
# does): first a new intermediate under the same root, then a new root with a
# bundle holding both roots. New certificates come from the new material; the
# ones issued before keep verifying against what a proxy holds until they expire.
R=$TMP/drill; mkdir -p "$R"
"$CERTS" intermediate --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --cn east-2 \
    --out-cert "$R/int2.pem" --out-key "$R/int2-key.pem" || exit 1
"$CERTS" root --out-cert "$R/root2.pem" --out-key "$R/root2-key.pem" --cn "mesh root 2" || exit 1
"$CERTS" intermediate --ca-cert "$R/root2.pem" --ca-key "$R/root2-key.pem" --cn east-3 \
    --out-cert "$R/int3.pem" --out-key "$R/int3-key.pem" || exit 1
cp "$D/int.pem" "$R/cert.pem"; cp "$D/int-key.pem" "$R/key.pem"; cp "$D/root.pem" "$R/root.pem"
DWH=$(free_port); DCAP=$(free_port)
jq --arg wh "127.0.0.1:$DWH" --arg ca "127.0.0.1:$DCAP" --arg r "$R" \
    '.webhook.address = $wh | .ca.address = $ca | .ca.cert_file = ($r + "/cert.pem") |
     .ca.key_file = ($r + "/key.pem") | .ca.root_file = ($r + "/root.pem")' "$TMP/main.json" >"$TMP/drill.json"
bg drill "$INJECTOR" -c "$TMP/drill.json"; DPID=$LASTPID
wait_port "$DCAP" || { fail "drill injector starts"; finish; }
# dsign N: sign web.json (the same CSR each time), leaf in $R/leafN.pem, chain
# in $R/chainN.pem, bundle in $R/bundleN.pem
dsign() {
    local code
    code=$(curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$DCAP:127.0.0.1" -o "$R/answer$1" \
        -w '%{http_code}' -H "$(bearer "$(tok)")" --data-binary @"$TMP/web.json" "https://$SVC:$DCAP/v1/sign")
    jq -r .cert_chain "$R/answer$1" >"$R/chain$1.pem"
    jq -r .trust_bundle "$R/answer$1" >"$R/bundle$1.pem"
    awk '/BEGIN/{n++} n==1' "$R/chain$1.pem" >"$R/leaf$1.pem"
    awk '/BEGIN/{n++} n>=2' "$R/chain$1.pem" >"$R/inter$1.pem"
    echo "$code"
}
# reloads_ok: remora_injector_ca_reloads_total{result="ok"}
reloads() {
    curl -s --cacert "$D/wh.pem" --resolve "$SVC:$DWH:127.0.0.1" "https://$SVC:$DWH/metrics" |
        awk -v r="$1" '$1 == "remora_injector_ca_reloads_total{result=\"" r "\"}" {print $2}'
}
reloads_at_least() { [[ $(reloads "$1") -ge $2 ]]; } # RESULT N
wait_reloads() { wait_until 10 reloads_at_least "$@"; } # RESULT N
issuer() { openssl x509 -in "$1" -noout -issuer | sed 's/.*CN *= *//'; }
vfy() { # LEAF INTERMEDIATES BUNDLE [openssl flags]: "OK" or openssl's messages on one line
    local out
    if out=$(openssl verify -CAfile "$3" -untrusted "$2" "${@:4}" "$1" 2>&1); then echo OK; else
        tr '\n' ' ' <<<"$out"; fi
}
expect_eq "drill: sign with the first intermediate -> 200" "$(dsign 1)" 200
expect_eq "... issued by east" "$(issuer "$R/leaf1.pem")" east

# 1. a new intermediate under the same root; the key lands before the cert:
#    the mismatched pair in between is refused, the next poll loads both
mv "$R/int2-key.pem" "$R/key.pem"
sleep 0.6
expect_eq "drill: a key without its certificate is not loaded (still east)" "$(dsign 1b)" 200
expect_eq "... the old material signs meanwhile" "$(issuer "$R/leaf1b.pem")" east
cp "$R/int2.pem" "$R/cert.tmp"; mv "$R/cert.tmp" "$R/cert.pem"
check "drill: the new intermediate is loaded (reloads_total ok)" wait_reloads ok 1
expect_eq "drill: sign after the new intermediate -> 200" "$(dsign 2)" 200
expect_eq "... issued by east-2" "$(issuer "$R/leaf2.pem")" east-2
expect_eq "... the chain carries east-2" "$(issuer "$R/inter2.pem")" "mesh root"
expect_eq "... the new leaf verifies with the same root" "$(vfy "$R/leaf2.pem" "$R/inter2.pem" "$D/root.pem")" OK
expect_eq "... the leaf issued before verifies still (its own chain, same root)" \
    "$(vfy "$R/leaf1.pem" "$R/inter1.pem" "$D/root.pem")" OK
check "... the mismatched key was refused once (reloads_total error)" wait_reloads error 1

# 2. a new root: its intermediate and key, and a bundle with both roots
cat "$D/root.pem" "$R/root2.pem" >"$R/root.tmp"; mv "$R/root.tmp" "$R/root.pem"
cp "$R/int3-key.pem" "$R/key.tmp"; mv "$R/key.tmp" "$R/key.pem"
cp "$R/int3.pem" "$R/cert.tmp"; mv "$R/cert.tmp" "$R/cert.pem"
signs_from_east3() { [[ $(dsign 3) == 200 && $(issuer "$R/leaf3.pem") == east-3 ]]; }
wait_until 10 signs_from_east3
expect_eq "drill: after the new root, certificates come from east-3" "$(issuer "$R/leaf3.pem")" east-3
expect_eq "... the trust bundle holds both roots" "$(grep -c 'BEGIN CERTIFICATE' "$R/bundle3.pem")" 2
expect_eq "... the new leaf verifies with the bundle" "$(vfy "$R/leaf3.pem" "$R/inter3.pem" "$R/bundle3.pem")" OK
expect_eq "... and not with the old root alone (it is new material)" \
    "$(vfy "$R/leaf3.pem" "$R/inter3.pem" "$D/root.pem" | grep -c 'unable to get local issuer')" 1
for n in 1 2; do
    expect_eq "... leaf $n (issued before) verifies with the new bundle" \
        "$(vfy "$R/leaf$n.pem" "$R/inter$n.pem" "$R/bundle3.pem")" OK
    end=$(date -d "$(openssl x509 -in "$R/leaf$n.pem" -noout -enddate | cut -d= -f2)" +%s)
    expect_match "... until it expires (verify at its notAfter + 60 s fails)" \
        "$(vfy "$R/leaf$n.pem" "$R/inter$n.pem" "$R/bundle3.pem" -attime $((end + 60)))" 'certificate has expired'
done
expect_eq "drill: the CA port's own serving certificate still verifies with the old root" \
    "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$DCAP:127.0.0.1" "https://$SVC:$DCAP/healthz")" 200
stop_pid "$DPID"; expect_eq "drill injector exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean (drill)" "$TMP/drill.log"

finish
