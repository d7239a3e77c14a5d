#!/usr/bin/env bash
# remora-injector's reviews end to end: the real binary over HTTPS on loopback
# (fixture: test/lib_injector.sh).
#  - every AdmissionReview of the shared corpus and every case in
#    test/data/injector/ (a case is a file; format in docs/injector.md, "Testing"),
#    each patch applied with `kubectl patch --local --type=json`, the result
#    validated with kubernetes-models and the injection contract
#    (test/js/check-pods.js), and posted again to check idempotence;
#  - the corpus twice: with classic and with native sidecars by default;
#  - every bootstrap the cases produced loads in remora-proxy --check-config;
#  - a clean SIGTERM exit without sanitizer reports.
# The server itself (bad bodies, bounds, slow clients, keep-alive, load, TLS, metrics,
# reloads, config errors): injector_server.sh; the shipped manifests: injector_manifests.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$REMORA_ROOT/test/lib_injector.sh"
injector_start classic native

# ---- the shared corpus, classic and native -------------------------------------
corpus_one() {
    local f=$1 base want
    base=$(basename "$f" .json)
    # The oracle: the skip rules, read straight from the review.
    want=$(jq -r '.request as $r | ($r.object.metadata.annotations // {}) as $a |
        ($r.object.metadata.labels // {}) as $l |
        if ($r.object.spec.hostNetwork == true) or ($a["remora.io/status"] != null)
           or ($a["remora.io/inject"] == "false") or ($l["remora.io/inject"] == "false")
           or $r.operation != "CREATE"
           or ($r.namespace == "kube-system") or ($r.namespace == "remora-system")
        then 0 else 1 end' "$f")
    run_review "$PORT" "corpus-$base" "$f" "$want" classic
    run_review "$NPORT" "corpus-native-$base" "$f" "$want" native
}
if [[ -z $CORPUS ]]; then
    fail "shared corpus not found (../shared/corpus/admission)"
else
    n=0
    for f in "$CORPUS"/*.json; do
        spawn "corpus-$(basename "$f")" corpus_one "$f"
        n=$((n + 1))
    done
    collect
    expect_match "corpus has every file ($n)" "$n" '^[1-9][0-9]+$'
fi

# ---- own cases ---------------------------------------------------------------
for f in "$DATA"/*.json; do
    spawn "case-$(basename "$f")" case_one "$f"
done
collect

# Every bootstrap the cases produced is one remora-proxy loads (--check-config; the
# policy and routes files are left out: they are the pods' ConfigMaps), opaque_ports
# (remora.io/opaque-ports, issue 14) included.
# discovery.address (issue 18) is the template's Service name, which the proxy takes as it
# is (resolved at run time); the block itself is compared with the template's below.
nboot=0 nbad=0 nopaque=0 ndiscoff=0 nwrongdisc=0
want_disc=$(jq -c .discovery "$REMORA_ROOT/manifests/injector/template.json")
for pf in "$TMP"/check/case-*.patched.json; do
    jq '.metadata.annotations["remora.io/bootstrap"] | fromjson | del(.policy_file, .routes_file)' \
        "$pf" >"$TMP/boot.json" 2>/dev/null || continue
    jq -e 'has("opaque_ports")' "$TMP/boot.json" >/dev/null && nopaque=$((nopaque + 1))
    # the template's block, or none with remora.io/discovery: "off"
    if [[ $(jq -r '.metadata.annotations["remora.io/discovery"] // ""' "$pf") == off ]]; then
        ndiscoff=$((ndiscoff + 1))
        want=null
    else
        want=$want_disc
    fi
    [[ $(jq -c .discovery "$TMP/boot.json") == "$want" ]] || nwrongdisc=$((nwrongdisc + 1))
    nboot=$((nboot + 1))
    if ! out=$("$PROXY" --check-config -c "$TMP/boot.json" 2>&1); then
        nbad=$((nbad + 1))
        echo "  $(basename "$pf"): $out"
    fi
done
expect_eq "remora-proxy --check-config loads every injected bootstrap of the cases ($nboot, $nopaque with opaque_ports)" \
    "$nbad" 0
((nopaque >= 2)) && pass "... opaque_ports among them ($nopaque)" || fail "... only $nopaque with opaque_ports"
((nboot > 30)) && pass "... that is most cases ($nboot)" || fail "... only $nboot bootstraps checked"
# issue 18: the template's discovery block in every bootstrap, none with remora.io/discovery: "off"
expect_eq "every bootstrap has the template's discovery block ($want_disc), none of the $ndiscoff with remora.io/discovery: off" \
    "$nwrongdisc" 0
((ndiscoff >= 1)) && pass "... remora.io/discovery: off among them ($ndiscoff)" || fail "... no case with remora.io/discovery: off"

# ---- every patched pod: kubernetes-models + the injection contract --------------
check_pods

# ---- clean exit ----------------------------------------------------------------
injector_stop injector "$IPID"
injector_stop injector-native "$NPID"
finish
