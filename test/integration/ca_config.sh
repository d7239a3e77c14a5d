#!/usr/bin/env bash
# The CA's configuration in remora-injector (docs/ca.md): `--check-config` accepts a
# CA config and the shipped config.json's CA (with this test's files in place of the
# mounted ones), and refuses every case of test/data/ca/bad-*.json with the message
# in its .err file (test/data/ca/README.md). The CA at work is ca.sh; proxies rotating
# their certificates and the reload drill are ca_rotation.sh; the manifests' CA half
# (port, mounts, RBAC, JWKS CronJob) is checked with the other manifests in injector.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
ca_pki || exit 1
ca_config main 3600
DATA=$REMORA_ROOT/test/data/ca

out=$("$INJECTOR" --check-config -c "$TMP/main.json" 2>&1)
expect_eq "--check-config accepts a CA config" "$?:$out" "0:$TMP/main.json: ok"

# ---- refused configs, one per test/data/ca/bad-NAME.json ---------------------------
n=0
for f in "$DATA"/bad-*.json; do
    name=$(basename "$f" .json); name=${name#bad-}
    extra=$(sed -e "s|@D@|$D|g" -e "s|@DATA@|$DATA|g" "$f")
    filter=.
    [[ -f $DATA/bad-$name.jq ]] && filter=$(<"$DATA/bad-$name.jq")
    [[ -f $DATA/bad-$name.err ]] || { fail "--check-config refuses $name: no bad-$name.err"; continue; }
    want=$(<"$DATA/bad-$name.err")
    ca_config "bad-$name" 3600 "$extra" "$filter" || { fail "--check-config refuses $name: jq could not build the case"; continue; }
    out=$("$INJECTOR" --check-config -c "$TMP/bad-$name.json" 2>&1)
    rc=$?
    if [[ $rc -ne 0 && $out =~ $want ]]; then pass "--check-config refuses $name"; else
        fail "--check-config refuses $name: rc=$rc out='$out' want /$want/"; fi
    n=$((n + 1))
done
((n >= 8)) || fail "test/data/ca: only $n bad-*.json cases found (want 8 or more)"

ca_config ok-ttl-10 10
check "--check-config accepts ca.ttl_seconds 10" "$INJECTOR" --check-config -c "$TMP/ok-ttl-10.json"

# ---- the shipped config.json's CA ---------------------------------------------------
echo "sa-token" >"$TMP/sa-token" # ca.token_review's own token (issue 14; tokenreview.sh tests it)
jq --arg d "$D" --arg j "$TMP/jwks.json" --arg t "$TMP/sa-token" \
    '.webhook.cert_file = ($d + "/wh.pem") | .webhook.key_file = ($d + "/wh-key.pem") | del(.template_file) |
     .ca.cert_file = ($d + "/int.pem") | .ca.key_file = ($d + "/int-key.pem") |
     .ca.root_file = ($d + "/root.pem") | .ca.jwks_file = $j |
     .kube.token_file = $t | .kube.ca_file = ($d + "/root.pem")' \
    "$REMORA_ROOT/manifests/injector/config.json" >"$TMP/shipped.json"
out=$("$INJECTOR" --check-config -c "$TMP/shipped.json" 2>&1)
expect_eq "the shipped config.json's CA passes --check-config (with CA files)" "$?:$out" "0:$TMP/shipped.json: ok"

finish
