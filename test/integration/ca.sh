#!/usr/bin/env bash
# The CA in remora-injector, end to end (docs/ca.md):
#  - POST /v1/sign over HTTPS with curl: tokens minted here (RSA and EC keys,
#    a JWKS) for every refusal (401 token, 403 identity, 400 body/CSR, 413),
#    each with its reason in the answer, the log and /metrics; a good request
#    returns a chain `openssl verify` accepts, with the right URI SAN and TTL;
#  - the JWKS file reloaded when it changes (and a bad one keeps the keys);
#    the CA on the webhook's port when ca.address is unset; config errors;
#  - the real proxy in CA mode: two sidecars get their certificates from the
#    CA (/certs, /ready), talk mTLS with them, rotate under continuous load
#    with a 10 s TTL and no failed request, and keep serving while the CA is
#    down, rotating again once it is back.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
MINT=(node "$REMORA_ROOT/test/tools/mint-token.js")
TD=cluster.local

# ---- PKI, token keys, configs -----------------------------------------------------
D=$TMP/pki
mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" || exit 1
"$CERTS" intermediate --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --cn east \
    --out-cert "$D/int.pem" --out-key "$D/int-key.pem" || exit 1
"$CERTS" server --ca-cert "$D/int.pem" --ca-key "$D/int-key.pem" \
    --dns remora-injector.remora-system.svc --out-cert "$D/srv.pem" --out-key "$D/srv-key.pem" || exit 1
# The webhook's own certificate, from a CA of its own (docs/install.md): the CA
# port must not depend on it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$D/wh-key.pem" -out "$D/wh.pem" -subj "/CN=remora-injector" \
    -addext "subjectAltName=DNS:remora-injector.remora-system.svc" 2>/dev/null || exit 1
SVC=remora-injector.remora-system.svc
"$CERTS" root --out-cert "$D/other-root.pem" --out-key "$D/other-root-key.pem" --cn "other root" || exit 1
"${MINT[@]}" keys "$TMP/tok" || exit 1
"${MINT[@]}" keys "$TMP/tok2" || exit 1 # a rotated service-account signing key
cp "$TMP/tok/jwks.json" "$TMP/jwks.json"

WH=$(free_port)
CAP=$(free_port)
# config NAME TTL [EXTRA-JSON [JQ-FILTER]]: a CA on ca.address; EXTRA is merged
# over it, then the filter runs (del(.ca.x) drops a key)
config() {
    jq -n --arg wh "127.0.0.1:$WH" --arg ca "127.0.0.1:$CAP" --arg d "$D" --arg jwks "$TMP/jwks.json" \
        --argjson ttl "$2" --argjson extra "${3:-{\}}" '{
        webhook: {address: $wh, cert_file: ($d + "/wh.pem"), key_file: ($d + "/wh-key.pem"),
                  reload_interval_ms: 200, max_connections_per_ip: 32},
        ca: {address: $ca, cert_file: ($d + "/int.pem"), key_file: ($d + "/int-key.pem"),
             root_file: ($d + "/root.pem"), jwks_file: $jwks, ttl_seconds: $ttl},
        trust_domain: "cluster.local", log_level: "info"} * $extra | '"${4:-.}" >"$TMP/$1.json"
}
config main 3600

# ---- config errors --------------------------------------------------------------------
check_bad() { # NAME EXTRA-JSON REGEX [JQ-FILTER]
    config "bad-$1" 3600 "$2" "${4:-.}"
    local out rc
    out=$("$INJECTOR" --check-config -c "$TMP/bad-$1.json" 2>&1)
    rc=$?
    if [[ $rc -ne 0 && $out =~ $3 ]]; then pass "--check-config refuses $1"; else
        fail "--check-config refuses $1: rc=$rc out='$out' want /$3/"; fi
}
out=$("$INJECTOR" --check-config -c "$TMP/main.json" 2>&1)
expect_eq "--check-config accepts a CA config" "$?:$out" "0:$TMP/main.json: ok"
check_bad no-jwks '{}' 'ca\.jwks_file: required with ca\.cert_file' 'del(.ca.jwks_file)'
echo '{"keys": [{"kty": "RSA", "n": "AQAB"' >"$TMP/broken-jwks.json"
check_bad jwks-broken "{\"ca\": {\"jwks_file\": \"$TMP/broken-jwks.json\"}}" 'broken-jwks\.json: not JSON'
check_bad jwks-missing '{"ca": {"jwks_file": "/nonexistent/jwks.json"}}' '/nonexistent/jwks\.json'
check_bad ttl-9 '{"ca": {"ttl_seconds": 9}}' 'ca\.ttl_seconds: 9 is out of range'
check_bad address-without-ca '{}' 'ca\.address: set, but there is no CA' \
    'del(.ca.cert_file, .ca.key_file)'
check_bad key-mismatch "{\"ca\": {\"key_file\": \"$D/root-key.pem\"}}" 'key'
check_bad not-a-ca "{\"ca\": {\"cert_file\": \"$D/srv.pem\", \"key_file\": \"$D/srv-key.pem\"}}" 'CA'
check_bad wrong-root "{\"ca\": {\"root_file\": \"$D/other-root.pem\"}}" 'root|chain|verify'
config ok-ttl-10 10
check "--check-config accepts ca.ttl_seconds 10" "$INJECTOR" --check-config -c "$TMP/ok-ttl-10.json"

# ---- the shipped manifests ------------------------------------------------------------------
# config.json's CA, with this test's files in place of the mounted ones, and the
# Deployment / Service / CronJob that must agree with it.
echo "sa-token" >"$TMP/sa-token" # ca.token_review's own token (issue 14; tokenreview.sh tests it)
jq --arg d "$D" --arg j "$TMP/jwks.json" --arg t "$TMP/sa-token" \
    '.webhook.cert_file = ($d + "/wh.pem") | .webhook.key_file = ($d + "/wh-key.pem") | del(.template_file) |
     .ca.cert_file = ($d + "/int.pem") | .ca.key_file = ($d + "/int-key.pem") |
     .ca.root_file = ($d + "/root.pem") | .ca.jwks_file = $j |
     .kube.token_file = $t | .kube.ca_file = ($d + "/root.pem")' \
    "$REMORA_ROOT/manifests/injector/config.json" >"$TMP/shipped.json"
out=$("$INJECTOR" --check-config -c "$TMP/shipped.json" 2>&1)
expect_eq "the shipped config.json's CA passes --check-config (with CA files)" "$?:$out" "0:$TMP/shipped.json: ok"
if kubectl kustomize "$REMORA_ROOT/manifests" 2>/dev/null |
    python3 -c 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))' \
        >"$TMP/manifests.json"; then
    mj() { jq -r "$1" "$TMP/manifests.json"; }
    cfg=$REMORA_ROOT/manifests/injector/config.json
    expect_eq "config.json: the CA on its own port, 15012" "$(jq -r .ca.address "$cfg")" "0.0.0.0:15012"
    expect_eq "config.json: ca.token_review on (issue 14), answers cached 60 s" \
        "$(jq -r '[.ca.token_review, .ca.token_review_cache_seconds] | join(" ")' "$cfg")" "true 60"
    expect_eq "... the ServiceAccount may create TokenReviews and get pods, nothing else" \
        "$(mj '[.[] | select(.kind == "ClusterRoleBinding" and .metadata.name == "remora-injector-token-review") |
            .subjects[0].name] + [.[] | select(.kind == "ClusterRole" and .metadata.name == "remora-injector-token-review") |
            .rules[] | (.resources[0] + ":" + (.verbs | join(",")))] | join(" ")')" \
        "remora-injector tokenreviews:create pods:get"
    dep0='.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") | .spec.template.spec'
    expect_eq "... and the Deployment mounts its token and the API server's CA where kube.* looks" \
        "$(mj "$dep0 | [(.containers[0].volumeMounts[] | select(.name == \"kube-api-access\") | .mountPath),
            (.volumes[] | select(.name == \"kube-api-access\") | .projected.sources | map(keys[0]) | join(\",\"))] | join(\" \")")" \
        "/var/run/secrets/kubernetes.io/serviceaccount serviceAccountToken,configMap"
    dep='.[] | select(.kind == "Deployment" and .metadata.name == "remora-injector") | .spec.template.spec'
    expect_eq "Deployment: container port https-ca 15012" \
        "$(mj "$dep | .containers[0].ports[] | select(.name == \"https-ca\") | .containerPort")" 15012
    expect_eq "Service: port 15012 to https-ca" \
        "$(mj '.[] | select(.kind == "Service" and .metadata.name == "remora-injector") | .spec.ports[] |
            select(.port == 15012) | .targetPort')" https-ca
    for k in cert_file key_file root_file jwks_file; do
        dir=$(dirname "$(jq -r ".ca.$k" "$cfg")")
        vol=$(mj "$dep | .containers[0].volumeMounts[] | select(.mountPath == \"$dir\") | .name")
        src=$(mj "$dep | .volumes[] | select(.name == \"$vol\") | (.secret.secretName // .configMap.name)")
        case $k in jwks_file) want=remora-jwks ;; *) want=remora-ca ;; esac
        expect_eq "Deployment: ca.$k ($dir) is mounted from $want" "${src:-none}" "$want"
    done
    expect_eq "a CronJob keeps remora-jwks current from /openid/v1/jwks (remora-injector refresh-jwks)" \
        "$(mj '.[] | select(.kind == "CronJob" and .metadata.name == "remora-jwks-refresh") |
            [.spec.schedule, (.spec.jobTemplate.spec.template.spec.containers[0].command | join(" "))] |
            join(" ")')" \
        "*/10 * * * * remora-injector refresh-jwks"
    expect_eq "... allowed to read the JWKS and patch that ConfigMap alone" \
        "$(mj '[.[] | select(.kind == "ClusterRole" and .metadata.name == "remora-jwks-reader") | .rules[0].nonResourceURLs[0]] +
            [.[] | select(.kind == "Role" and .metadata.name == "remora-jwks-refresh") | .rules[0].resourceNames[0]] | join(" ")')" \
        "/openid/v1/jwks remora-jwks"
else
    fail "kubectl kustomize manifests/ renders"
fi

# ---- the CA on its own port ---------------------------------------------------------------
NINJ=0
start_injector() { # CONFIG: logs to $TMP/injector-<n>.log
    NINJ=$((NINJ + 1))
    bg "injector-$NINJ" "$INJECTOR" -c "$1"
    IPID=$LASTPID
    wait_port "$CAP" && wait_port "$WH"
}
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
csr() { # NAME SPIFFE-ID: $TMP/NAME.csr and NAME-key.pem, body $TMP/NAME.json
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/$1-key.pem" 2>/dev/null
    "$CERTS" csr --key "$TMP/$1-key.pem" --spiffe-id "$2" --out "$TMP/$1.csr" || return 1
    jq -n --rawfile csr "$TMP/$1.csr" '{csr: $csr}' >"$TMP/$1.json"
}
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

tok() { "${MINT[@]}" token "$TMP/tok" "$@"; }
# sign BODY-FILE [CURL-ARGS...]: sets CODE and BODY
sign() {
    local body=$1; shift
    CODE=$(curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" \
        -o "$TMP/answer" -w '%{http_code}' --data-binary @"$body" "$@" "https://$SVC:$CAP/v1/sign")
    BODY=$(cat "$TMP/answer" 2>/dev/null)
}
bearer() { printf 'Authorization: Bearer %s' "$1"; }

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
ok=0
for _ in $(seq 40); do
    sign "$W" -H "$(bearer "$(tok2 --kid rsa-2)")"
    [[ $CODE == 200 ]] && { ok=1; break; }
    sleep 0.1
done
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
for _ in $(seq 30); do
    sign "$W" -H "$(bearer "$(tok2 --kid rsa-2)")"
    [[ $CODE == 401 ]] && break
    sleep 0.1
done
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
    for _ in $(seq 150); do grep -q 'ca_root .* reloaded' "$TMP/r.log" && [[ $(r_certs | jq -r .last_error) != null ]] && break; sleep 0.1; done
    c=$(r_certs)
    check "a changed ca_root is reloaded before the next CA request" grep -q 'ca_root .* reloaded' "$TMP/r.log"
    expect_match "... an unrelated root: the CA cannot be verified, the rotation fails" \
        "$(jq -r .last_error <<<"$c")" '.'
    expect_eq "... and R keeps its valid certificate (ready)" "$(jq -r .ready <<<"$c")" true
    rot1=$(jq -r .rotations <<<"$c")
    cat "$TMP/unrelated-root.pem" "$D/root.pem" >"$TMP/r-root.new" && mv "$TMP/r-root.new" "$TMP/r-root.pem"
    for _ in $(seq 200); do (($(r_certs | jq -r .rotations) > rot1)) && break; sleep 0.1; done
    rot2=$(r_certs | jq -r .rotations)
    ((rot2 > rot1)) && pass "a bundle with both roots: R rotates again, no restart ($rot0 -> $rot1 -> $rot2)" ||
        fail "no rotation after the bundle with both roots ($rot0 -> $rot1 -> $rot2): $(r_certs)"
    echo 'not a PEM' >"$TMP/r-root.new" && mv "$TMP/r-root.new" "$TMP/r-root.pem"
    for _ in $(seq 150); do grep -q 'ca_root .* cannot be used' "$TMP/r.log" && break; sleep 0.1; done
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
for _ in $(seq 100); do
    na=$(date -d "$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .not_after)" +%s)
    (((na - $(date +%s)) > 30)) && break
    sleep 0.2
done
(((na - $(date +%s)) > 30)) && pass "proxies pick up the longer TTL on their next rotation" || fail "no 40 s cert"
serial=$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .serial)
stop_pid "$IPID"
for _ in $(seq 200); do
    c=$(curl -s "http://127.0.0.1:$B_ADMIN/certs")
    [[ $(jq -r .last_error <<<"$c") =~ CA\ unreachable|CA\ connection ]] && break
    sleep 0.2
done
expect_match "CA down: B reports it" "$(jq -r .last_error <<<"$c")" 'CA unreachable|CA connection'
expect_eq "CA down: B keeps its valid cert and stays ready" \
    "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$B_ADMIN/ready"):$(jq -r .ready <<<"$c")" "200:true"
(($(date -d "$(jq -r .not_after <<<"$c")" +%s) > $(date +%s))) && pass "CA down: the cert is still valid" ||
    fail "CA down: the cert expired"
out=$(curl -s -m 5 "http://127.0.0.1:$A_OUT/ca-down")
expect_match "CA down: traffic still flows over mTLS" "$out" '"path":"/ca-down"'
rot_b=$(curl -s "http://127.0.0.1:$B_ADMIN/certs" | jq -r .rotations)
start_injector "$TMP/ttl40.json" || { fail "injector restarts"; finish; }
for _ in $(seq 150); do
    c=$(curl -s "http://127.0.0.1:$B_ADMIN/certs")
    [[ $(jq -r .rotations <<<"$c") -gt $rot_b ]] && break
    sleep 0.2
done
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
wait_reloads() { # RESULT N
    for _ in $(seq 100); do [[ $(reloads "$1") -ge $2 ]] && return 0; sleep 0.1; done
    return 1
}
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
for _ in $(seq 100); do
    [[ $(dsign 3) == 200 && $(issuer "$R/leaf3.pem") == east-3 ]] && break; sleep 0.1
done
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
