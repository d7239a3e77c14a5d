#!/usr/bin/env bash
# The CA in remora-injector, its signing API (docs/ca.md):
#  - POST /v1/sign over HTTPS with curl: tokens minted here (RSA and EC keys,
#    a JWKS) for every refusal (401 token, 403 identity, 400 body/CSR, 413),
#    each with its reason in the answer, the log and /metrics; a good request
#    returns a chain `openssl verify` accepts, with the right URI SAN and TTL;
#  - the JWKS file reloaded when it changes (and a bad one keeps the keys);
#    the CA on the webhook's port when ca.address is unset.
# Config cases: ca_config.sh. Proxies in CA mode, rotation under load and the
# reload drill: ca_rotation.sh. The manifests' CA wiring: injector.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# ---- PKI, token keys, configs (test/lib.sh) -------------------------------------------
ca_pki || exit 1
config() { ca_config "$@"; }
config main 3600

# ---- the CA on its own port ---------------------------------------------------------------
start_injector() { ca_start_injector "$@"; } # CONFIG: logs to $TMP/injector-<n>.log
start_injector "$TMP/main.json" || { fail "injector starts"; cat "$TMP/injector-1.log"; finish; }
pass "injector starts with a CA on ca.address"
out=$(openssl s_client -connect "127.0.0.1:$CAP" -servername "$SVC" -CAfile "$D/root.pem" \
    -verify_return_error -verify_hostname "$SVC" </dev/null 2>&1)
expect_match "the CA port's certificate verifies with the mesh root, for the Service name" "$out" \
    'Verify return code: 0 \(ok\)'
expect_match "... issued by the cluster's intermediate, not the webhook's CA" "$out" 'issuer=O ?= ?Remora, CN ?= ?east'
out=$(openssl s_client -connect "127.0.0.1:$WH" -servername "$SVC" -CAfile "$D/wh.pem" </dev/null 2>&1)
expect_match "the webhook port keeps its own certificate" "$out" 'Verify return code: 0 \(ok\)'

# workload key + CSR as the proxy makes them
csr() { ca_csr "$@"; } # NAME SPIFFE-ID: $TMP/NAME.csr and NAME-key.pem, body $TMP/NAME.json
csr web "spiffe://$TD/ns/shop/sa/web" || exit 1
csr evil "spiffe://evil.example/ns/shop/sa/web" || exit 1
csr other "spiffe://$TD/ns/payments/sa/web" || exit 1
openssl req -new -key "$TMP/web-key.pem" -subj "/CN=web" -out "$TMP/nosan.csr" 2>/dev/null
jq -n --rawfile csr "$TMP/nosan.csr" '{csr: $csr}' >"$TMP/nosan.json"
# the same CSR with one bit of its signature flipped
python3 - "$TMP/web.csr" "$TMP/tampered.json" <<'PY'
import base64, json, sys
pem = open(sys.argv[1]).read().strip().splitlines()
der = bytearray(base64.b64decode("".join(pem[1:-1])))
der[-2] ^= 0x01
b64 = base64.b64encode(bytes(der)).decode()
out = "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)) + "\n-----END CERTIFICATE REQUEST-----\n"
json.dump({"csr": out}, open(sys.argv[2], "w"))
PY

tok() { ca_tok "$@"; }
# sign BODY-FILE [CURL-ARGS...]: sets CODE and BODY
sign() {
    local body=$1; shift
    CODE=$(curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" \
        -o "$TMP/answer" -w '%{http_code}' --data-binary @"$body" "$@" "https://$SVC:$CAP/v1/sign")
    BODY=$(cat "$TMP/answer" 2>/dev/null)
}
bearer() { ca_bearer "$@"; }

# -- a good request ---------------------------------------------------------------------------
sign "$TMP/web.json" -H "$(bearer "$(tok)")"
expect_eq "RS256 token + matching CSR -> 200" "$CODE" 200
jq -r .cert_chain <<<"$BODY" >"$TMP/chain.pem"
jq -r .trust_bundle <<<"$BODY" >"$TMP/bundle.pem"
awk '/BEGIN/{n++} n==1' "$TMP/chain.pem" >"$TMP/leaf.pem"
expect_eq "the chain is leaf + intermediate" "$(grep -c 'BEGIN CERTIFICATE' "$TMP/chain.pem")" 2
out=$(openssl verify -CAfile "$D/root.pem" -untrusted "$D/int.pem" "$TMP/leaf.pem" 2>&1)
expect_eq "openssl verify -CAfile root -untrusted int accepts the leaf" "$out" "$TMP/leaf.pem: OK"
out=$(openssl verify -CAfile "$TMP/bundle.pem" -untrusted "$TMP/chain.pem" "$TMP/leaf.pem" 2>&1)
expect_eq "... and so does the answer's own trust bundle + chain" "$out" "$TMP/leaf.pem: OK"
expect_eq "the trust bundle is the root" "$(openssl x509 -in "$TMP/bundle.pem" -noout -fingerprint -sha256)" \
    "$(openssl x509 -in "$D/root.pem" -noout -fingerprint -sha256)"
text=$(openssl x509 -in "$TMP/leaf.pem" -noout -text)
expect_match "URI SAN is the token's identity" "$text" "URI:spiffe://$TD/ns/shop/sa/web"
na=$(date -d "$(openssl x509 -in "$TMP/leaf.pem" -noout -enddate | cut -d= -f2)" +%s)
left=$((na - $(date +%s)))
((left > 3590 && left <= 3600)) && pass "notAfter is now + ca.ttl_seconds (3600 s; $left s left)" ||
    fail "notAfter is now + ca.ttl_seconds: $left s left"
expect_match "the leaf is not a CA" "$text" 'CA:FALSE'
expect_match "the leaf is for serverAuth + clientAuth" "$text" 'TLS Web Server Authentication, TLS Web Client Authentication'
pubkey_csr=$(openssl req -in "$TMP/web.csr" -noout -pubkey | openssl sha256)
expect_eq "the leaf carries the CSR's key" "$(openssl x509 -in "$TMP/leaf.pem" -noout -pubkey | openssl sha256)" "$pubkey_csr"

sign "$TMP/web.json" -H "$(bearer "$(tok --alg ES256)")"
expect_eq "ES256 token -> 200" "$CODE" 200
sign "$TMP/web.json" -H "$(bearer "$(tok --aud remora-ca --aud-string)")"
expect_eq "aud as a string -> 200" "$CODE" 200
sign "$TMP/web.json" -H "$(bearer "$(tok --aud https://kubernetes.default.svc --aud remora-ca)")"
expect_eq "aud array holding remora-ca among others -> 200" "$CODE" 200
sign "$TMP/web.json" -H "authorization: bearer   $(tok)"
expect_eq "scheme and header name are case-insensitive -> 200" "$CODE" 200
sign "$TMP/web.json" -H "$(bearer "$(tok --exp-in -30)")"
expect_eq "a token expired 30 s ago is inside the 60 s skew -> 200" "$CODE" 200

# -- CSRs as real clients write them (test/data/csr/, made by make-samples.py) ------------------
# openssl, Python's cryptography and Go-style DER, with a subject and without
# one (URI SAN only: what SPIFFE clients send); DER is sent as PEM.
for f in "$REMORA_ROOT"/test/data/csr/*.pem "$REMORA_ROOT"/test/data/csr/*.der; do
    n=$(basename "$f")
    if [[ $f == *.der ]]; then
        { echo "-----BEGIN CERTIFICATE REQUEST-----"; base64 -w 64 "$f"; echo "-----END CERTIFICATE REQUEST-----"; } >"$TMP/flavour.csr"
    else
        cp "$f" "$TMP/flavour.csr"
    fi
    jq -n --rawfile csr "$TMP/flavour.csr" '{csr: $csr}' >"$TMP/flavour.json"
    sign "$TMP/flavour.json" -H "$(bearer "$(tok)")"
    jq -r .cert_chain <<<"$BODY" 2>/dev/null | awk '/BEGIN/{n++} n==1' >"$TMP/flavour-leaf.pem"
    txt=$(openssl x509 -in "$TMP/flavour-leaf.pem" -noout -subject -ext subjectAltName 2>&1)
    if [[ $CODE == 200 && $txt == *"URI:spiffe://$TD/ns/shop/sa/web"* && $txt == *"CN = web"* ]]; then
        pass "CSR $n -> 200, leaf for spiffe://$TD/ns/shop/sa/web, subject rewritten"
    else
        fail "CSR $n: got $CODE '$BODY' / '$txt'"
    fi
done

# -- refusals ------------------------------------------------------------------------------------
refused() { # NAME WANT-CODE WANT-REASON MESSAGE-REGEX BODY [CURL-ARGS...]
    local name=$1 code=$2 reason=$3 re=$4 body=$5; shift 5
    sign "$body" "$@"
    local got_reason got_err
    got_reason=$(jq -r .reason <<<"$BODY" 2>/dev/null)
    got_err=$(jq -r .error <<<"$BODY" 2>/dev/null)
    if [[ $CODE == "$code" && $got_reason == "$reason" && $got_err =~ $re ]]; then
        pass "$name -> $code $reason"
    else
        fail "$name: got $CODE '$BODY', want $code $reason /$re/"
    fi
}
W=$TMP/web.json
refused "no Authorization header" 401 no_token 'Authorization: Bearer' "$W"
refused "Basic credentials" 401 no_token 'not a Bearer' "$W" -H 'Authorization: Basic d2ViOndlYg=='
refused "Bearer with nothing after it" 401 no_token 'empty token|not a Bearer' "$W" -H 'Authorization: Bearer '
refused "a token that is no JWT" 401 token_malformed 'header.payload.signature' "$W" -H "$(bearer abc)"
refused "alg none" 401 token_algorithm 'alg "none"' "$W" -H "$(bearer "$(tok --alg none)")"
refused "HS256 keyed with the RSA public key" 401 token_algorithm 'symmetric' "$W" -H "$(bearer "$(tok --alg HS256)")"
refused "alg PS256 (unsupported)" 401 token_algorithm 'not supported' "$W" -H "$(bearer "$(tok --alg PS256)")"
refused "ES256 header naming the RSA key" 401 token_algorithm 'is RSA' "$W" -H "$(bearer "$(tok --alg ES256 --kid rsa-1)")"
refused "bad RS256 signature" 401 token_signature 'does not verify.*rsa-1' "$W" -H "$(bearer "$(tok --bad-sig)")"
refused "bad ES256 signature" 401 token_signature 'does not verify.*ec-1' "$W" -H "$(bearer "$(tok --alg ES256 --bad-sig)")"
refused "signed by a key not in the JWKS, under its kid" 401 token_signature 'does not verify' \
    "$W" -H "$(bearer "$(tok --key other --kid rsa-1)")"
refused "unknown kid" 401 token_unknown_key 'kid "nobody" is not in the JWKS' "$W" -H "$(bearer "$(tok --kid nobody)")"
refused "expired token" 401 token_expired 'expired at' "$W" -H "$(bearer "$(tok --exp-in -120)")"
refused "token not yet valid (nbf)" 401 token_not_yet_valid 'nbf .* in the future' "$W" -H "$(bearer "$(tok --nbf-in 600)")"
refused "token issued in the future (iat)" 401 token_not_yet_valid 'iat .* in the future' "$W" -H "$(bearer "$(tok --iat-in 600)")"
refused "wrong audience" 401 token_audience 'do not include "remora-ca"' "$W" -H "$(bearer "$(tok --aud https://kubernetes.default.svc)")"
refused "no audience" 401 token_audience 'no aud' "$W" -H "$(bearer "$(tok --no-aud)")"
refused "no kubernetes.io claim" 401 token_claims 'no kubernetes.io claim' "$W" -H "$(bearer "$(tok --no-k8s)")"
refused "no exp (legacy token)" 401 token_claims 'no exp claim' "$W" -H "$(bearer "$(tok --no-exp)")"
refused "namespace that is no DNS label" 401 token_claims 'no valid identity' "$W" -H "$(bearer "$(tok --ns Shop_1)")"
big=$(tok --claims "{\"pad\": \"$(head -c 12500 /dev/zero | tr '\0' x)\"}")
refused "a token over 16 KiB (${#big} bytes)" 401 token_malformed 'at most 16384' "$W" -H "$(bearer "$big")"
refused "token for another service account" 403 identity_mismatch \
    "asks for spiffe://$TD/ns/shop/sa/web but the token is for spiffe://$TD/ns/shop/sa/admin" \
    "$W" -H "$(bearer "$(tok --sa admin)")"
refused "CSR for another namespace" 403 identity_mismatch "ns/payments/sa/web but the token is for .*ns/shop/sa/web" \
    "$TMP/other.json" -H "$(bearer "$(tok)")"
refused "CSR for another trust domain" 403 identity_mismatch 'spiffe://evil.example/ns/shop/sa/web but' \
    "$TMP/evil.json" -H "$(bearer "$(tok)")"
refused "CSR with a broken signature" 400 bad_csr 'bad CSR' "$TMP/tampered.json" -H "$(bearer "$(tok)")"
refused "CSR without a SPIFFE ID" 400 bad_csr 'bad CSR' "$TMP/nosan.json" -H "$(bearer "$(tok)")"
echo '{"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}' >"$TMP/junk.json"
refused "CSR that is not one" 400 bad_csr 'bad CSR' "$TMP/junk.json" -H "$(bearer "$(tok)")"
echo 'csr=abc' >"$TMP/form.txt"
refused "body that is not JSON" 400 bad_request 'not JSON' "$TMP/form.txt" -H "$(bearer "$(tok)")"
echo '{"cert": "x"}' >"$TMP/nocsr.json"
refused "JSON without csr" 400 bad_request 'no "csr"' "$TMP/nocsr.json" -H "$(bearer "$(tok)")"
echo '{"csr": 42}' >"$TMP/csrnum.json"
refused "csr that is not a string" 400 bad_request 'not a non-empty string' "$TMP/csrnum.json" -H "$(bearer "$(tok)")"
echo '[1]' >"$TMP/array.json"
refused "JSON array body" 400 bad_request 'not a JSON object' "$TMP/array.json" -H "$(bearer "$(tok)")"
: >"$TMP/empty.json"
refused "empty body" 400 bad_request 'empty body' "$TMP/empty.json" -H "$(bearer "$(tok)")"
refused "a bad token wins over a bad body (401 before 400)" 401 token_signature 'does not verify' \
    "$TMP/form.txt" -H "$(bearer "$(tok --bad-sig)")"
head -c 70000 /dev/zero | tr '\0' ' ' >"$TMP/huge.json"
sign "$TMP/huge.json" -H "$(bearer "$(tok)")"
expect_eq "body over 64 KiB -> 413" "$CODE" 413
sign "$TMP/huge.json" -H "$(bearer "$(tok)")" -H 'Transfer-Encoding: chunked'
expect_eq "chunked body over 64 KiB -> 413" "$CODE" 413
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" \
    "https://$SVC:$CAP/v1/sign")
expect_eq "GET /v1/sign -> 405" "$code" 405
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" \
    -d x "https://$SVC:$CAP/inject")
expect_eq "the CA port serves nothing else (POST /inject -> 404)" "$code" 404
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" \
    "https://$SVC:$CAP/healthz")
expect_eq "GET /healthz on the CA port -> 200" "$code" 200
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" \
    -H "$(bearer "$(tok)")" --data-binary @"$W" "https://$SVC:$WH/v1/sign")
expect_eq "with ca.address set, the webhook port has no /v1/sign (404)" "$code" 404
# 20 concurrent signs, 10 RS256 + 10 ES256 (wait for those alone: the servers are children too)
cpids=()
for i in $(seq 10); do
    for a in RS256 ES256; do
        curl -s -m 20 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" -o /dev/null -w '%{http_code}\n' \
            -H "$(bearer "$(tok --alg $a)")" --data-binary @"$W" "https://$SVC:$CAP/v1/sign" >"$TMP/conc.$i.$a" &
        cpids+=($!)
    done
done
wait "${cpids[@]}"
cat "$TMP"/conc.* >"$TMP/concurrent.txt"
expect_eq "20 concurrent signs all 200" "$(sort "$TMP/concurrent.txt" | uniq -c | awk '{print $1":"$2}')" "20:200"
check "injector alive after the refusals" alive "$IPID"

# -- what the operator sees ---------------------------------------------------------------------
m=$(curl -s --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" "https://$SVC:$WH/metrics")
expect_match "issued certificates are counted" "$m" $'remora_injector_ca_certificates_issued_total (2[6-9]|[3-9][0-9])\n'
for r in no_token:3 token_algorithm:4 token_signature:4 token_unknown_key:1 token_expired:1 \
    token_not_yet_valid:2 token_audience:2 token_claims:3 token_malformed:2 identity_mismatch:3 \
    bad_csr:3 bad_request:5 too_large:2; do
    expect_match "refusals counted: ${r%%:*} = ${r##*:}" "$m" "remora_injector_ca_refusals_total\\{reason=\"${r%%:*}\"\\} ${r##*:}"$'\n'
done
expect_match "sign latency histogram" "$m" 'remora_injector_ca_sign_duration_seconds_count [0-9]+'
expect_match "JWKS keys gauge" "$m" $'remora_injector_ca_jwks_keys 2\n'
expect_match "CA certificate expiry gauge" "$m" 'remora_injector_ca_cert_expiry_timestamp_seconds [1-9][0-9]{9}'
log=$(cat "$TMP/injector-1.log")
expect_match "a refusal is logged with the identity asked for and the token's" "$log" \
    "refused /v1/sign from 127\\.0\\.0\\.1:[0-9]+: 403 identity_mismatch: .*asked for spiffe://$TD/ns/shop/sa/web; token for ns shop sa admin pod web-0"
expect_match "a token refusal is decided before the body is read" "$log" \
    "401 token_expired: token expired at .*asked for \\(body not read\\); no valid token"
expect_match "issues are logged" "$log" "CA: issued spiffe://$TD/ns/shop/sa/web \\(pod web-0, key rsa-1\\)"

# -- JWKS rotation --------------------------------------------------------------------------------
tok2() { "${MINT[@]}" token "$TMP/tok2" "$@"; }
sign "$W" -H "$(bearer "$(tok2)")"
expect_eq "a token from the next signing key is refused before the JWKS has it" "$CODE" 401
jq -s '{keys: (.[0].keys + [.[1].keys[0] | .kid = "rsa-2"])}' "$TMP/tok/jwks.json" "$TMP/tok2/jwks.json" \
    >"$TMP/jwks.new" && mv "$TMP/jwks.new" "$TMP/jwks.json"
# signs_rsa2 CODE: a token from the rotated key gets CODE now (sets CODE and BODY)
signs_rsa2() { sign "$W" -H "$(bearer "$(tok2 --kid rsa-2)")"; [[ $CODE == "$1" ]]; }
ok=0
wait_until 10 signs_rsa2 200 && ok=1
expect_eq "the changed JWKS is picked up within ~1 s (new key accepted)" "$ok" 1
sign "$W" -H "$(bearer "$(tok)")"
expect_eq "... and the old key still verifies" "$CODE" 200
echo '{"keys": [' >"$TMP/jwks.new" && mv "$TMP/jwks.new" "$TMP/jwks.json"
jwks_refused() { grep -q 'JWKS not reloaded' "$TMP/injector-1.log"; }
wait_until 10 jwks_refused
sign "$W" -H "$(bearer "$(tok2 --kid rsa-2)")"
expect_eq "a broken JWKS file keeps the keys in force" "$CODE" 200
m=$(curl -s --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" "https://$SVC:$WH/metrics")
expect_match "JWKS reloads counted (ok and error)" "$m" \
    'remora_injector_ca_jwks_reloads_total\{result="ok"\} [1-9].*remora_injector_ca_jwks_reloads_total\{result="error"\} [1-9]'
expect_match "the broken JWKS is logged" "$(cat "$TMP/injector-1.log")" 'JWKS not reloaded, keeping the 3 keys in force'
cp "$TMP/tok/jwks.json" "$TMP/jwks.new" && mv "$TMP/jwks.new" "$TMP/jwks.json"
wait_until 10 signs_rsa2 401
expect_eq "a key removed from the JWKS stops verifying" "$CODE:$(jq -r .reason <<<"$BODY")" "401:token_unknown_key"

stop_pid "$IPID"
expect_eq "injector exits 0 on SIGTERM" "$STOP_RC" 0

# ---- the CA sharing the webhook's port ------------------------------------------------------------
# served with the webhook's certificate, which must then chain to the mesh root
config shared 3600 "{\"webhook\": {\"cert_file\": \"$D/srv.pem\", \"key_file\": \"$D/srv-key.pem\"}}" \
    'del(.ca.address)'
bg injector-shared "$INJECTOR" -c "$TMP/shared.json"
SPID=$LASTPID
wait_port "$WH"
code=$(curl -s -o "$TMP/answer" -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$WH:127.0.0.1" \
    -H "$(bearer "$(tok)")" --data-binary @"$W" "https://$SVC:$WH/v1/sign")
expect_eq "ca.address unset: POST /v1/sign on the webhook port -> 200" "$code" 200
code=$(curl -s -o "$TMP/answer" -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$WH:127.0.0.1" \
    -H "$(bearer "$(tok --sa admin)")" --data-binary @"$W" "https://$SVC:$WH/v1/sign")
expect_eq "... with the same refusals (403)" "$code:$(jq -r .reason "$TMP/answer")" "403:identity_mismatch"
head -c 70000 /dev/zero | tr '\0' ' ' >"$TMP/huge.json"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$WH:127.0.0.1" \
    -H "$(bearer "$(tok)")" --data-binary @"$TMP/huge.json" "https://$SVC:$WH/v1/sign")
expect_eq "... and the 64 KiB bound (413)" "$code" 413
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$WH:127.0.0.1" \
    "https://$SVC:$WH/v1/sign")
expect_eq "... GET /v1/sign -> 405" "$code" 405
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/root.pem" --resolve "$SVC:$WH:127.0.0.1" \
    "https://$SVC:$WH/healthz")
expect_eq "... while the webhook still answers (/healthz)" "$code" 200
stop_pid "$SPID"
expect_eq "shared-port injector exits 0" "$STOP_RC" 0

for l in "$TMP"/injector-*.log; do
    expect_sanitizers_clean "sanitizers clean ($(basename "$l" .log))" "$l"
done

finish
