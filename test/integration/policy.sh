#!/usr/bin/env bash
# Per-pod authorization through real sidecars (docs/policy.md): the topology of
# test/lib_policy.sh; --check-config on policy and routes files, a bad policy at startup,
# then every decision of test/data/policy/integration/decisions.tsv (per principal,
# namespace, method, path, header, port; h1, h2c, h2 over mTLS), many decisions on one
# connection, denied requests never reaching the app, the metrics, /stats, the log lines
# and GET /policy. Reloads, the watch, in-flight requests and audit mode: policy_reload.sh.
source "$(dirname "$0")/../lib.sh"
source "$REMORA_ROOT/test/lib_policy.sh"

# --check-config compiles the policy (and routes) file the config names, as startup would
out=$("$PROXY" --check-config -c "$TMP/b.json" 2>&1)
expect_eq "--check-config accepts B's config and its policy" "$?:$out" "0:$TMP/b.json: ok (2 listeners, policy)"
sed "s|$CM/policy.json|$TMP/bad-policy.json|" "$TMP/b.json" >"$TMP/b-badpol.json"
cp "$REMORA_ROOT/test/data/policy/bad-default-value.json" "$TMP/bad-policy.json"
out=$("$PROXY" --check-config -c "$TMP/b-badpol.json" 2>&1); rc=$?
expect_match "--check-config refuses a bad policy file, naming it (rc $rc)" "$rc:$out" "^1:remora-proxy: policy_file: .*bad-policy.json.*default"
printf '{"listeners": [{"name": "o", "address": "127.0.0.1:1", "direction": "outbound", "tls": "disabled"}],
 "routes_file": "%s"}' "$TMP/bad-routes.json" >"$TMP/badrt.json"
echo '{"routes": [{"name": "r", "match": {"host": "a.local"}, "endpoints": []}]}' >"$TMP/bad-routes.json"
out=$("$PROXY" --check-config -c "$TMP/badrt.json" 2>&1); rc=$?
expect_match "--check-config refuses a bad routes file, naming the key (rc $rc)" "$rc:$out" "^1:remora-proxy: routes_file: .*endpoints"
rm -f "$TMP/bad-routes.json"
out=$("$PROXY" --check-config -c "$TMP/badrt.json" 2>&1); rc=$?
expect_match "--check-config refuses a missing routes file (rc $rc)" "$rc:$out" "^1:remora-proxy: routes_file: .*bad-routes.json"

# ---- a bad policy at startup is fatal, naming file and key -----------------------------------
echo '{"default": "deny", "rules": [{"name": "x", "action": "allow", "from": {"principalz": ["*"]}}]}' \
    >"$TMP/bad-start-policy.json"
sed "s|\"policy_file\": \"[^\"]*\"|\"policy_file\": \"$TMP/bad-start-policy.json\"|" "$TMP/b.json" >"$TMP/b-bad.json"
"$PROXY" -c "$TMP/b-bad.json" >"$TMP/b-bad.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] && pass "a bad policy file at startup stops the proxy (exit $rc)" \
    || fail "a bad policy file at startup: exit 0"
expect_match "... with the file and key in the message" "$(cat "$TMP/b-bad.log")" \
    "bad-start-policy.json: rules\[0\]\.from\.principalz: unknown key"

policy_start || finish

# ---- decisions per principal / namespace / method / path / header: the table ------------------------
# NAME STATUS BODY URL [CURL-ARGS], tab-separated (format in the file's header)
ncalls=0
while IFS=$'\t' read -r -u 3 name want body url args; do
    [[ -z $name || $name == '#'* ]] && continue
    case $body in
    default) body=$DEFAULT_BODY ;;
    "rule "*) body=$(rule_body "${body#rule }") ;;
    esac
    body=${body//\$FE/$FE}
    eval "url=\"$url\"; args=($args)"
    [[ $want == 403 || $want == 400 ]] && url=$(deny_url "$url")
    call "$name" "$want" "$body" "$url" "${args[@]}"
    ncalls=$((ncalls + 1))
done 3<"$REMORA_ROOT/test/data/policy/integration/decisions.tsv"
check "the decision table ran its cases ($ncalls)" test "$ncalls" -ge 35
v=$(curl -s -o /dev/null -w '%{http_version}' "${FE_CERT[@]}" --http2 "$TLS/api/v")
expect_eq "... and that was h2 indeed" "$v" 2

# every request and every h2 stream is decided on its own, on one connection
out=$(h2load -n 300 -c 1 -m 10 "$PLAIN/healthz" "$(deny_url "$PLAIN/admin")" "$PLAIN/healthz" 2>&1 |
    grep -E '^(requests|status codes):' | tr '\n' ' ')
expect_match "h2c: 300 streams on one connection, every third denied" "$out" \
    'requests: 300 total.* status codes: 200 2xx, 0 3xx, 100 4xx, 0 5xx'
denials[admin-only-from-ops]=$((${denials[admin-only-from-ops]} + 100)); ndenied=$((ndenied + 100))
out=$(curl -s -w '%{http_code} %{num_connects}\n' -o /dev/null \
    "$PLAIN/healthz" -o /dev/null "$(deny_url "$PLAIN/api/x")" -o /dev/null "$PLAIN/healthz")
expect_match "h1 keep-alive: allowed, denied, allowed requests" "$(tr '\n' ' ' <<<"$out")" "^200 1 403 [01] 200 [01] $"
out=$(curl -s -w '%{http_code}\n' -o /dev/null -X POST -d 'body that is never forwarded' \
    "$(deny_url "$PLAIN/api/x")" -o /dev/null "$PLAIN/healthz")
expect_eq "h1: a denied request with a body, then an allowed one" "$(tr '\n' ' ' <<<"$out")" "403 200 "
denials[default]=$((${denials[default]} + 2)); ndenied=$((ndenied + 2))

# ---- denied requests never reached the app -------------------------------------------------------
sleep 0.3
if grep -q 'DENIED' "$APPLOG"; then
    fail "denied requests reached the app: $(grep DENIED "$APPLOG" | head -3 | tr '\n' ' ')"
else
    pass "none of the $ndenied denied requests reached the app"
fi
check "the app did see the allowed ones" grep -q '^GET /admin$' "$APPLOG"

# ---- metrics and log ---------------------------------------------------------------------------------
total=0
for r in "${!denials[@]}"; do
    expect_eq "metrics: remora_policy_denials_total{rule=\"$r\"}" \
        "$(metric "remora_policy_denials_total{rule=\"$r\"}")" "${denials[$r]}"
    total=$((total + denials[$r]))
done
expect_eq "metrics: three rules denied something" "${#denials[@]}" 3
m=$(curl -s "http://127.0.0.1:$B_ADMIN/metrics")
[[ $m == *$'\nremora_policy_denials_total '* ]] && fail "metrics: unlabelled series next to labelled ones" \
    || pass "metrics: remora_policy_denials_total is only labelled"
expect_eq "metrics: the 400s are counted as bad requests" \
    "$(metric 'remora_local_errors_total{cause="bad_request"}')" 2
s=$(curl -s "http://127.0.0.1:$B_ADMIN/stats")
expect_eq "/stats: policy_denials_total" "$(jq -r .policy_denials_total <<<"$s")" "$total"
expect_eq "/stats: policy_denials by rule" "$(jq -r '.policy_denials["admin-only-from-ops"]' <<<"$s")" \
    "${denials[admin-only-from-ops]}"
expect_match "log: one line per denial with identity, method, path, rule" "$(cat "$TMP/b.log")" \
    "policy: denied GET /admin\?m=DENIED-[0-9]+ from $FE \(127\.0\.0\.1:[0-9]+\) to port $B_IN by rule admin-only-from-ops"
expect_match "log: plaintext peers are '-'" "$(cat "$TMP/b.log")" \
    "policy: denied GET /api/items\?m=DENIED-[0-9]+ from - \(127\.0\.0\.1:[0-9]+\) to port $B_PERM by default"
expect_match "log: the 400s say why" "$(cat "$TMP/b.log")" "policy: rejected GET .* encoded slash"

# ---- GET /policy ---------------------------------------------------------------------------------------
p=$(policy)
expect_eq "GET /policy: file" "$(jq -r .file <<<"$p")" "$CM/policy.json"
expect_eq "GET /policy: mode" "$(jq -r .mode <<<"$p")" enforce
expect_eq "GET /policy: rules" "$(jq -r '[.rules, .allow_rules, .deny_rules, .default] | join(" ")' <<<"$p")" "6 4 2 deny"
expect_eq "GET /policy: the document in force" "$(jq -r '.policy.rules[1].name' <<<"$p")" admin-only-from-ops
expect_match "GET /policy: loaded_at" "$(jq -r .loaded_at <<<"$p")" '^20[0-9]{2}-[0-9]{2}-[0-9]{2}T'
expect_eq "GET /policy: last_error" "$(jq -r .last_error <<<"$p")" null

# ---- shutdown -----------------------------------------------------------------------------------------------------
policy_stop b-bad
finish
