#!/usr/bin/env bash
# The CA's ca.token_review (issue 14, docs/ca.md "TokenReview"), against
# test/tools/fake_apiserver.py over HTTPS on loopback:
#  - a token the API server authenticates, for a pod that exists with the
#    token's uid: signed; what was asked (TokenReview with our audience, GET of
#    the pod, the CA's own bearer token, its User-Agent);
#  - the cache: a second request within ca.token_review_cache_seconds makes
#    no API call; after it, the API server is asked again;
#  - refusals: the bound pod deleted (401 token_pod_gone, cached), re-created
#    under its name (new uid), a token the API server does not authenticate,
#    one it says is another service account's, one for another audience;
#  - the API server down, failing (500), forbidding the CA (403) or too slow:
#    503 token_review_unavailable with the reason, counted, not cached (the
#    same token is signed once the API server answers again);
#  - the CA's own token file rotated: the next call uses the new token;
#  - config errors, /metrics, a clean SIGTERM exit, no sanitizer report.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
MINT=(node "$REMORA_ROOT/test/tools/mint-token.js")
FAKE=(python3 "$REMORA_ROOT/test/tools/fake_apiserver.py")
TD=cluster.local
SVC=remora-injector.remora-system.svc
CACHE_S=5

# ---- PKI: the mesh CA, the webhook's certificate, the API server's -----------------------
D=$TMP/pki
mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" || exit 1
"$CERTS" intermediate --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --cn east \
    --out-cert "$D/int.pem" --out-key "$D/int-key.pem" || exit 1
ossl_ca() { # NAME
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$D/$1-key.pem" -out "$D/$1.pem" -subj "/CN=$1" \
        -addext "subjectAltName=DNS:$SVC" 2>/dev/null
}
ossl_ca wh || exit 1
ossl_ca apica || exit 1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$D/api-key.pem" \
    -out "$D/api.csr" -subj "/CN=kube-apiserver" 2>/dev/null &&
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$D/api.ext" &&
    openssl x509 -req -in "$D/api.csr" -CA "$D/apica.pem" -CAkey "$D/apica-key.pem" \
        -CAcreateserial -days 2 -extfile "$D/api.ext" -out "$D/api.pem" 2>/dev/null || exit 1
"${MINT[@]}" keys "$TMP/tok" || exit 1
echo "ca-sa-token-1" >"$TMP/ca-token" # the CA's own service-account token

# ---- the fake API server -------------------------------------------------------------------
FPORT=$(free_port)
API=https://127.0.0.1:$FPORT
jq -n '{token: "ca-sa-token-1", reviews: {}, pods: {}}' >"$TMP/state.json"
start_fake() {
    bg "fake-$1" "${FAKE[@]}" --cert "$D/api.pem" --key "$D/api-key.pem" --state "$TMP/state.json" \
        --listen "127.0.0.1:$FPORT"
    FAKE_PID=$LASTPID
    wait_port "$FPORT"
}
start_fake 1 || { fail "fake API server starts"; cat "$TMP/fake-1.log"; finish; }
ctl() { curl -sS --cacert "$D/apica.pem" "$API/_control/$1" "${@:2}"; }
put_state() { ctl state -X PUT --data-binary "$1" >/dev/null; }
ncalls() { ctl requests | jq 'length'; }

# ---- configs ---------------------------------------------------------------------------------
WH=$(free_port)
CAP=$(free_port)
config() { # NAME [EXTRA-JSON [JQ-FILTER]]
    jq -n --arg wh "127.0.0.1:$WH" --arg ca "127.0.0.1:$CAP" --arg d "$D" --arg t "$TMP" \
        --arg api "$API" --argjson cache "$CACHE_S" --argjson extra "${2:-{\}}" '{
        webhook: {address: $wh, cert_file: ($d + "/wh.pem"), key_file: ($d + "/wh-key.pem"),
                  max_connections_per_ip: 64},
        ca: {address: $ca, cert_file: ($d + "/int.pem"), key_file: ($d + "/int-key.pem"),
             root_file: ($d + "/root.pem"), jwks_file: ($t + "/tok/jwks.json"), ttl_seconds: 3600,
             token_review: true, token_review_cache_seconds: $cache},
        kube: {api: $api, token_file: ($t + "/ca-token"), ca_file: ($d + "/apica.pem"),
               timeout_ms: 1500},
        trust_domain: "cluster.local", log_level: "info"} * $extra | '"${3:-.}" >"$TMP/$1.json"
}
config main
out=$("$INJECTOR" --check-config -c "$TMP/main.json" 2>&1)
expect_eq "--check-config accepts ca.token_review with a kube block" "$?:$out" "0:$TMP/main.json: ok"
check_bad() { # NAME EXTRA-JSON REGEX [JQ-FILTER]
    config "bad-$1" "$2" "${4:-.}"
    local o rc
    o=$("$INJECTOR" --check-config -c "$TMP/bad-$1.json" 2>&1)
    rc=$?
    if [[ $rc -ne 0 && $o =~ $3 ]]; then pass "--check-config refuses $1: $o"; else
        fail "--check-config refuses $1: rc=$rc out='$o' want /$3/"; fi
}
check_bad not-bool '{"ca": {"token_review": "yes"}}' 'ca\.token_review: expected true or false'
check_bad cache-61 '{"ca": {"token_review_cache_seconds": 61}}' 'ca\.token_review_cache_seconds: 61 is out of range \[0, 60\]'
check_bad http-api '{"kube": {"api": "http://127.0.0.1:1"}}' 'kube\.api: "http://127\.0\.0\.1:1" is not an https:// URL'
check_bad kube-key '{"kube": {"apiserver": "x"}}' 'kube\.apiserver: unknown key'
check_bad timeout '{"kube": {"timeout_ms": 50}}' 'kube\.timeout_ms: 50 is out of range'
check_bad no-token-file "{\"kube\": {\"token_file\": \"$TMP/nope\"}}" "ca\.token_review: token: .*$TMP/nope"
check_bad no-ca '{}' 'ca\.token_review: set, but there is no CA' 'del(.ca.cert_file, .ca.key_file, .ca.address)'

# ---- the injector ------------------------------------------------------------------------------
bg injector "$INJECTOR" -c "$TMP/main.json"
IPID=$LASTPID
check "injector starts with ca.token_review" wait_port "$CAP"

csr() { # NAME SPIFFE-ID
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/$1-key.pem" 2>/dev/null
    "$CERTS" csr --key "$TMP/$1-key.pem" --spiffe-id "$2" --out "$TMP/$1.csr" || return 1
    jq -n --rawfile csr "$TMP/$1.csr" '{csr: $csr}' >"$TMP/$1.json"
}
csr web "spiffe://$TD/ns/shop/sa/web" || exit 1
# tok POD UID [MINT-ARGS...]: a token bound to pod shop/POD with that uid
tok() {
    local pod=$1 uid=$2; shift 2
    "${MINT[@]}" token "$TMP/tok" --claims "$(jq -nc --arg p "$pod" --arg u "$uid" \
        '{"kubernetes.io": {namespace: "shop", pod: {name: $p, uid: $u},
          serviceaccount: {name: "web", uid: "0d3b8c7a-5e2f-4a61-8f0c-9b7e6d5c4a32"}}}')" "$@"
}
# authn TOKEN [USERNAME [AUDIENCES-JSON]]: the fake API server authenticates TOKEN
authn() {
    local st
    st=$(jq -nc --arg u "${2:-system:serviceaccount:shop:web}" --argjson a "${3:-null}" \
        '{authenticated: true, user: {username: $u, groups: ["system:serviceaccounts"]}}
         + (if $a == null then {} else {audiences: $a} end)')
    put_state "$(ctl state | jq -c --arg t "$1" --argjson s "$st" '{reviews: (.reviews + {($t): $s})}')"
}
pod() { # NAME UID: the pod exists
    put_state "$(ctl state | jq -c --arg n "$1" --arg u "$2" '{pods: {shop: (.pods.shop + {($n): {uid: $u}})}}')"
}
sign() { # TOKEN: sets CODE, BODY, REASON, ERR
    CODE=$(curl -s -m 20 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" -o "$TMP/answer" \
        -w '%{http_code}' --data-binary @"$TMP/web.json" -H "Authorization: Bearer $1" \
        "https://$SVC:$CAP/v1/sign")
    BODY=$(cat "$TMP/answer" 2>/dev/null)
    REASON=$(jq -r '.reason // empty' <<<"$BODY" 2>/dev/null)
    ERR=$(jq -r '.error // empty' <<<"$BODY" 2>/dev/null)
}
metric() { # SERIES-REGEX: its value
    curl -s -m 5 --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" "https://$SVC:$WH/metrics" |
        grep -E "^$1 " | awk '{print $2}'
}

# -- a good token: asked, then cached -----------------------------------------------------------
U0=11111111-0000-4000-8000-000000000000
T0=$(tok web-0 "$U0")
authn "$T0"
pod web-0 "$U0"
ctl requests -X DELETE >/dev/null
sign "$T0"
expect_eq "a token the API server authenticates, for a pod that exists: 200" "$CODE" 200
expect_eq "... after one TokenReview and one GET of the pod" \
    "$(ctl requests | jq -c '[.[] | .method + " " + .path + " " + (.status | tostring)]')" \
    '["POST /apis/authentication.k8s.io/v1/tokenreviews 201","GET /api/v1/namespaces/shop/pods/web-0 200"]'
expect_eq "the TokenReview carries the token and the CA's audience" \
    "$(ctl requests | jq -c --arg t "$T0" '.[0].body | fromjson | [.kind, .apiVersion, (.spec.token == $t), .spec.audiences]')" \
    '["TokenReview","authentication.k8s.io/v1",true,["remora-ca"]]'
expect_eq "as the CA's own account (its token file), with a User-Agent of its own" \
    "$(ctl requests | jq -r '[.[] | .user_agent] | unique | join(",")')" "remora-injector/0.1.0 (ca token review)"
expect_eq "... every call authorised (no 401 from the fake)" "$(ctl requests | jq '[.[] | select(.status == 401)] | length')" 0
t_first=$(date +%s%N)
sign "$T0"
expect_eq "the same token again within the cache time: 200" "$CODE" 200
expect_eq "... with no API call (cache hit)" "$(ncalls)" 2
expect_eq "metrics: one hit, one miss, one ok" \
    "$(metric 'remora_injector_ca_token_review_cache_total\{result="hit"\}') $(metric 'remora_injector_ca_token_review_cache_total\{result="miss"\}') $(metric 'remora_injector_ca_token_reviews_total\{result="ok"\}')" \
    "1 1 1"
# the cache time is counted from the first answer
left=$(((CACHE_S * 1000000000 - ($(date +%s%N) - t_first)) / 1000000 + 300))
((left > 0)) && sleep "$(awk -v ms="$left" 'BEGIN {printf "%.3f", ms / 1000}')"
sign "$T0"
expect_eq "after ca.token_review_cache_seconds ($CACHE_S s) the answer expired: 200" "$CODE" 200
expect_eq "... and the API server was asked again (TokenReview + pod)" "$(ncalls)" 4

# -- the pod is deleted ------------------------------------------------------------------------------
U1=22222222-0000-4000-8000-000000000000
T1=$(tok web-1 "$U1")
authn "$T1"
sign "$T1"
expect_eq "token of a deleted pod (TokenReview says yes, GET pod 404): 401" "$CODE" 401
expect_eq "... reason token_pod_gone" "$REASON" token_pod_gone
expect_match "... naming the pod" "$ERR" 'the token is bound to pod shop/web-1, which no longer exists'
n=$(ncalls)
sign "$T1"
expect_eq "refused again from the cache (no call)" "$CODE:$REASON:$(ncalls)" "401:token_pod_gone:$n"
expect_match "... saying it is cached" "$ERR" 'no longer exists \(cached\)'
check "the refusal is logged with the identity" grep -q 'CA: refused /v1/sign .*401 token_pod_gone: the token is bound to pod shop/web-1' "$TMP/injector.log"

U2=33333333-0000-4000-8000-000000000000
T2=$(tok web-2 "$U2")
authn "$T2"
pod web-2 44444444-0000-4000-8000-000000000000
sign "$T2"
expect_eq "token of a pod deleted and re-created under its name (new uid): 401 token_pod_gone" \
    "$CODE:$REASON" "401:token_pod_gone"
expect_match "... naming both uids" "$ERR" "uid $U2, which no longer exists \(a pod of that name now has uid 44444444-"

# -- the API server says no --------------------------------------------------------------------------
T3=$(tok web-3 55555555-0000-4000-8000-000000000000)
sign "$T3"
expect_eq "a token the API server does not authenticate (revoked): 401 token_review_rejected" \
    "$CODE:$REASON" "401:token_review_rejected"
expect_match "... with the API server's reason" "$ERR" 'does not authenticate this token: invalid bearer token'
T4=$(tok web-4 66666666-0000-4000-8000-000000000000)
authn "$T4" system:serviceaccount:shop:admin
sign "$T4"
expect_eq "the API server says the token is another account's: 401 token_review_rejected" \
    "$CODE:$REASON" "401:token_review_rejected"
expect_match "... naming both" "$ERR" 'says the token is for "system:serviceaccount:shop:admin", but it claims system:serviceaccount:shop:web'
T5=$(tok web-5 77777777-0000-4000-8000-000000000000)
authn "$T5" system:serviceaccount:shop:web '["https://kubernetes.default.svc"]'
sign "$T5"
expect_eq "the API server accepts the token for another audience only: 401" "$CODE:$REASON" "401:token_review_rejected"
expect_match "... naming ours" "$ERR" 'audience remora-ca'

# -- the API server does not answer ------------------------------------------------------------------
U6=88888888-0000-4000-8000-000000000000
T6=$(tok web-6 "$U6")
authn "$T6"
pod web-6 "$U6"
ctl state >"$TMP/state.json" # what the restarted fake starts from
stop_pid "$FAKE_PID"
sign "$T6"
expect_eq "API server down: 503 token_review_unavailable (fail closed)" "$CODE:$REASON" "503:token_review_unavailable"
expect_match "... with a clear error" "$ERR" \
    "token review: no answer from the Kubernetes API server: POST /apis/authentication.k8s.io/v1/tokenreviews: connect to 127\.0\.0\.1:$FPORT: Connection refused; refusing to sign while the token cannot be checked \(ca\.token_review\)"
expect_eq "... counted: refusals_total{reason=token_review_unavailable} and token_reviews_total{result=error}" \
    "$(metric 'remora_injector_ca_refusals_total\{reason="token_review_unavailable"\}') $(metric 'remora_injector_ca_token_reviews_total\{result="error"\}')" \
    "1 1"
start_fake 2 || fail "fake API server restarts"
sign "$T6"
expect_eq "... not cached: once the API server is back, the same token is signed" "$CODE" 200

T7=$(tok web-7 99999999-0000-4000-8000-000000000000)
authn "$T7"
put_state '{"faults": [{"match": "^POST /apis/authentication", "kind": "status", "status": 500, "times": 1}]}'
sign "$T7"
expect_eq "TokenReview answered 500: 503 token_review_unavailable" "$CODE:$REASON" "503:token_review_unavailable"
expect_match "... quoting the API server" "$ERR" 'POST /apis/authentication.k8s.io/v1/tokenreviews: 500 Internal Server Error: fake-apiserver: injected failure 500'
put_state '{"faults": [{"match": "^POST /apis/authentication", "kind": "status", "status": 403, "reason": "Forbidden", "message": "tokenreviews.authentication.k8s.io is forbidden", "times": 1}]}'
sign "$T7"
expect_eq "TokenReview forbidden to the CA: 503" "$CODE:$REASON" "503:token_review_unavailable"
expect_match "... saying which RBAC is missing" "$ERR" '403 Forbidden: tokenreviews.authentication.k8s.io is forbidden \(the injector.s service account needs RBAC create tokenreviews\)'
put_state '{"faults": [{"match": "^GET /api/v1/namespaces/shop/pods/", "kind": "status", "status": 403, "reason": "Forbidden", "message": "pods is forbidden", "times": 1}]}'
pod web-7 99999999-0000-4000-8000-000000000000
sign "$T7"
expect_eq "GET pod forbidden: 503" "$CODE:$REASON" "503:token_review_unavailable"
expect_match "... needs get pods" "$ERR" 'needs RBAC get pods'
put_state '{"faults": [{"match": "^POST /apis/authentication", "kind": "slow", "seconds": 20, "times": 1}]}'
t0=$(date +%s%N)
sign "$T7"
ms=$((($(date +%s%N) - t0) / 1000000))
expect_eq "an API server slower than kube.timeout_ms: 503" "$CODE:$REASON" "503:token_review_unavailable"
expect_match "... no answer within 1500 ms" "$ERR" 'no answer within 1500 ms'
# the bound is far below the slow answer (20 s), so a loaded machine cannot blur the two
((ms < 15000)) && pass "... answered before the slow API server did ($ms ms, the API server takes 20 s)" ||
    fail "... took $ms ms"
sign "$T7"
expect_eq "... and signed once it answers in time" "$CODE" 200

# -- the CA's own token rotates --------------------------------------------------------------------
U8=aaaaaaaa-0000-4000-8000-000000000000
T8=$(tok web-8 "$U8")
authn "$T8"
pod web-8 "$U8"
put_state '{"token": "ca-sa-token-2"}'
echo "ca-sa-token-2" >"$TMP/ca-token.new" && mv "$TMP/ca-token.new" "$TMP/ca-token"
sign "$T8"
expect_eq "the CA's token file rotated: the next review uses the new token (200)" "$CODE" 200

# a token without a bound pod: TokenReview only
T9=$("${MINT[@]}" token "$TMP/tok" --claims '{"kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "web"}}}' --exp-in 1800)
authn "$T9"
ctl requests -X DELETE >/dev/null
sign "$T9"
expect_eq "a token bound to no pod: 200 after the TokenReview alone" \
    "$CODE $(ctl requests | jq -c '[.[] | .method]')" '200 ["POST"]'

# -- concurrency: one kube client, many CA threads ---------------------------------------------------
# 24 tokens for 24 pods at once: every review and pod GET goes through the one client (its
# TLS session and token under a lock), from the CA's threads (all from 127.0.0.1: the
# config lifts webhook.max_connections_per_ip to 64)
ctl requests -X DELETE >/dev/null
pods='{}'
for i in $(seq 24); do
    u=$(printf 'cccccccc-0000-4000-8000-%012d' "$i")
    "${MINT[@]}" token "$TMP/tok" --claims "$(jq -nc --arg p "par-$i" --arg u "$u" \
        '{"kubernetes.io": {namespace: "shop", pod: {name: $p, uid: $u}, serviceaccount: {name: "web"}}}')" \
        >"$TMP/par-$i.tok"
    pods=$(jq -c --arg p "par-$i" --arg u "$u" '. + {($p): {uid: $u}}' <<<"$pods")
done
put_state "$(ctl state | jq -c --argjson p "$pods" --slurpfile t <(for i in $(seq 24); do jq -Rn --arg t "$(cat "$TMP/par-$i.tok")" '$t'; done) '
    {pods: {shop: (.pods.shop + $p)},
     reviews: (.reviews + ([$t[] | {(.): {authenticated: true, user: {username: "system:serviceaccount:shop:web"}}}] | add))}')"
par=()
for i in $(seq 24); do
    curl -s -m 30 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" -o /dev/null -w '%{http_code}\n' \
        --data-binary @"$TMP/web.json" -H "Authorization: Bearer $(cat "$TMP/par-$i.tok")" \
        "https://$SVC:$CAP/v1/sign" >"$TMP/par-$i.code" &
    par+=($!)
done
wait "${par[@]}" # not a bare wait: the injector and the fake are children too
expect_eq "24 concurrent signs, each a cache miss: all 200" "$(cat "$TMP"/par-*.code | sort | uniq -c | awk '{print $1 " x " $2}')" "24 x 200"
expect_eq "... after 24 TokenReviews and 24 pod GETs, every one authorised" \
    "$(ctl requests | jq -c '[group_by(.method)[] | [.[0].method, length, ([.[] | .status] | unique)]]')" \
    '[["GET",24,[200]],["POST",24,[201]]]'
# what a check costs, seen from a client (informational)
T10=$(tok web-10 dddddddd-0000-4000-8000-000000000000)
authn "$T10"
pod web-10 dddddddd-0000-4000-8000-000000000000
t_miss=$(curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" -o /dev/null -w '%{time_total}' \
    --data-binary @"$TMP/web.json" -H "Authorization: Bearer $T10" "https://$SVC:$CAP/v1/sign")
t_hit=$(curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" -o /dev/null -w '%{time_total}' \
    --data-binary @"$TMP/web.json" -H "Authorization: Bearer $T10" "https://$SVC:$CAP/v1/sign")
echo "INFO: one sign, new TLS connection, $REMORA_BUILD: ${t_miss}s with a cache miss (TokenReview + pod GET), ${t_hit}s with a hit"

# -- metrics and exit --------------------------------------------------------------------------------
expect_eq "refusals counted by reason (token_pod_gone, token_review_rejected)" \
    "$(metric 'remora_injector_ca_refusals_total\{reason="token_pod_gone"\}') $(metric 'remora_injector_ca_refusals_total\{reason="token_review_rejected"\}')" \
    "3 3"
stop_pid "$IPID"
expect_eq "injector exits 0 on SIGTERM" "$STOP_RC" 0
expect_sanitizers_clean "no sanitizer report" "$TMP/injector.log"
check "the token never reaches the log" bash -c "! grep -qF '$T0' '$TMP/injector.log'"
finish
