#!/usr/bin/env bash
# `remora-injector refresh-jwks` against test/tools/fake_apiserver.py over HTTPS on loopback
# (docs/ca.md): the cluster's service-account token keys (GET /openid/v1/jwks) into
# remora-system/remora-jwks, what the remora-jwks-refresh CronJob runs from the injector's
# image. No JWKS (404), created byte for byte, unchanged (no write), a rotated key set (other
# keys kept), answers that are not a usable JWKS (nothing written, the good one kept), a
# refused token, a bad --namespace; no sanitizer report. The CronJob: injector_manifests.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
fake_pki || exit 1
jq -n --arg tok "$FAKE_TOKEN" '{token: $tok, namespaces: {"remora-system": {}}, configmaps: {}}' >"$TMP/state.json"
fake_start fake api
NRUN=0
jwks_refresh() {
    NRUN=$((NRUN + 1))
    LOG=$TMP/run-$NRUN.log
    "$INJECTOR" refresh-jwks --api "$API" --token-file "$TMP/token" --ca-file "$D/apica.pem" \
        --timeout-ms 3000 "$@" >"$LOG" 2>&1
    RC=$?
}
jcm() { ctl state | jq -j '.configmaps["remora-system"]["remora-jwks"]'" | $1"; }
JW=$REMORA_ROOT/test/data/token
put_state '{"faults": [], "jwks": null}'
ctl requests -X DELETE >/dev/null
jwks_refresh
expect_eq "refresh-jwks: the API server has no JWKS (404): exit 1, nothing written" "$RC $(writes)" "1 0"
expect_match "... the error names the request and the status" "$(cat "$LOG")" \
    'refresh-jwks: GET /openid/v1/jwks: 404'
put_state "$(jq -n --rawfile j "$JW/jwks.json" '{jwks: $j}')"
jwks_refresh
expect_eq "refresh-jwks: exit 0, ConfigMap created" "$RC $(grep -c 'remora-jwks (jwks.json) created: 2 keys' "$LOG")" "0 1"
expect_eq "... data[jwks.json] is the API server's answer byte for byte" \
    "$(jcm '.data["jwks.json"]' | sha256sum)" "$(sha256sum <"$JW/jwks.json")"
expect_eq "... labelled part-of remora" "$(jcm '.metadata.labels["app.kubernetes.io/part-of"]')" remora
ctl requests -X DELETE >/dev/null
jwks_refresh
expect_eq "refresh-jwks again: unchanged, no write" "$RC $(writes) $(grep -c ' unchanged: ' "$LOG")" "0 0 1"
put_state "$(state --rawfile j "$JW/jwks/ok-rsa-only.json" '.jwks = $j |
    .configmaps["remora-system"]["remora-jwks"].data["note"] = "keep me"')"
jwks_refresh
expect_eq "a rotated key set: updated, the other key kept" \
    "$RC $(jcm '.data["jwks.json"]' | sha256sum | cut -c1-16) $(jcm '.data.note')" \
    "0 $(sha256sum <"$JW/jwks/ok-rsa-only.json" | cut -c1-16) keep me"
for bad in bad-not-json bad-only-unsupported bad-rsa-small; do
    put_state "$(jq -n --rawfile j "$JW/jwks/$bad.json" '{jwks: $j}')"
    ctl requests -X DELETE >/dev/null
    jwks_refresh
    expect_eq "an answer that is not a usable JWKS ($bad): exit 1, no write, the good one kept" \
        "$RC $(writes) $(jcm '.data["jwks.json"]' | sha256sum | cut -c1-16)" \
        "1 0 $(sha256sum <"$JW/jwks/ok-rsa-only.json" | cut -c1-16)"
done
expect_match "... and says why" "$(cat "$LOG")" 'refresh-jwks: .*(RSA|bits|key)'
put_state "$(jq -n --rawfile j "$JW/jwks.json" '{jwks: $j}')"
jwks_refresh --token-file "$TMP/bad-token"
expect_match "refresh-jwks with a token the API server refuses: exit 1, 401 named" "$RC $(cat "$LOG")" \
    '^1 .*GET /openid/v1/jwks: 401'
jwks_refresh --namespace 'Not_A_Namespace'
expect_match "refresh-jwks with a bad --namespace: exit 2, the flag named" "$RC $(cat "$LOG")" \
    '^2 .*--namespace Not_A_Namespace: not a valid namespace name'

# ---- sanitizers -------------------------------------------------------------------------------
cat "$TMP"/run-*.log >"$TMP/all-runs.log"
expect_sanitizers_clean "sanitizers clean ($NRUN runs)" "$TMP/all-runs.log"
finish
