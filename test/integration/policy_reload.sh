#!/usr/bin/env bash
# Policy reloads through real sidecars (docs/policy.md), on the topology of test/lib_policy.sh.
# Reloads are checked one path at a time. The watch sees every change (common/watch.h: inode,
# size, mtime and ctime), even an in-place edit with the mtime put back; POST /policy/reload
# and SIGHUP prove their own load by what they answer or log (the rule count of the new file),
# whatever the watch did meanwhile. The watch looks every $REMORA_WATCH_MS (100 ms here), and
# waits are bounded polls of GET /policy. Then: a request in flight finishes under the policy
# it started with, and audit mode lets everything through but counts and logs what it would deny.
source "$(dirname "$0")/../lib.sh"
source "$REMORA_ROOT/test/lib_policy.sh"
policy_start || finish

# ---- POST /policy/reload ---------------------------------------------------------------------------------
# same rules plus one more, same size as the file in force, edited in place
SIZE=4096 # every variant edited in place is padded to this size
jq -c '.rules += [{"name": "reload-probe", "action": "allow", "to": {"paths": ["/probe/post"]}}]' \
    "$TMP/main.json" >"$TMP/post.json"
pad post $SIZE
jq -c '.' "$TMP/main.json" >"$TMP/main-c.json"
pad main-c $SIZE
# the file in force must be the padded compact one first (a watch reload, then quiet)
cm_publish main-c
wait_until 10 policy_is .loads 2
expect_eq "watch: picked up the re-published (equivalent) file" "$(jq -r .loads <<<"$(policy)")" 2
edit_in_place post
check "watch: an in-place edit of the same size with the mtime put back is seen (ctime)" \
    wait_until 10 policy_is .rules 7
r=$(curl -s -w ' %{http_code}' -X POST "http://127.0.0.1:$B_ADMIN/policy/reload")
expect_match "POST /policy/reload: 200 with the summary of what it read" "$r" '"rules": 7.* 200$'
expect_match "... its own load, logged" "$(cat "$TMP/b.log")" \
    "policy: POST /policy/reload: loaded $CM/policy.json: 7 rules"
call "... and the new rule is in force" 200 '"path": "/probe/post"' "$PLAIN/probe/post"
jq -c '.rules[0].from = {"principalz": ["*"]}' "$TMP/post.json" >"$TMP/post-bad.json"
pad post-bad $SIZE
edit_in_place post-bad
r=$(curl -s -w ' %{http_code}' -X POST "http://127.0.0.1:$B_ADMIN/policy/reload")
expect_match "POST /policy/reload with a bad file: 400 naming file and key" "$r" \
    "\"error\": \"$CM/policy.json: rules\[0\]\.from\.principalz: unknown key\".* 400$"
p=$(policy)
expect_match "GET /policy: last_error after the bad reload" "$(jq -r .last_error <<<"$p")" 'principalz: unknown key'
expect_eq "GET /policy: the last good policy is still in force" "$(jq -r .rules <<<"$p")" 7
call "... and enforced" 200 '"path": "/probe/post"' "$PLAIN/probe/post"
call "... deny rules too" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$PLAIN/admin")"

# ---- SIGHUP ------------------------------------------------------------------------------------------------
jq -c '.rules += [{"name": "reload-probe", "action": "allow", "to": {"paths": ["/probe/hup"]}}]' \
    "$TMP/main.json" >"$TMP/hup.json"
pad hup $SIZE
edit_in_place hup
wait_until 10 policy_is .last_error null # the watch may load it first: SIGHUP must load it anyway
hups() { grep -c "policy: reload: loaded $CM/policy.json: 7 rules" "$TMP/b.log"; }
h0=$(hups)
kill -HUP "$BPID"
hup_loaded() { (($(hups) > h0)); }
check "SIGHUP: reloads the file itself (logged with its 7 rules)" wait_until 10 hup_loaded
call "SIGHUP: the new rule is in force" 200 '"path": "/probe/hup"' "$PLAIN/probe/hup"
call "SIGHUP: the rule it replaced is gone" 403 "$DEFAULT_BODY" "$(deny_url "$PLAIN/probe/post")"
edit_in_place post-bad
kill -HUP "$BPID"
hup_failed() { grep -q 'SIGHUP: policy reload failed, keeping the last good policy' "$TMP/b.log"; }
check "SIGHUP with a bad file: logged" wait_until 10 hup_failed
expect_match "SIGHUP with a bad file: last_error" "$(jq -r .last_error <<<"$(policy)")" 'principalz: unknown key'
call "SIGHUP with a bad file: the last good policy stays" 200 '"path": "/probe/hup"' "$PLAIN/probe/hup"
check "B survived the signals" alive "$BPID"

# ---- the ConfigMap ..data swap, seen by the watch ------------------------------------------------------------
jq -c '.rules += [{"name": "reload-probe", "action": "allow", "to": {"paths": ["/probe/watch"]}}]' \
    "$TMP/main.json" >"$TMP/watch.json"
cm_publish watch
t0=$(date +%s%N)
# no reload request, no signal: only the watch can load it (the bound is generous; the
# watch's timer itself is pinned by test/unit/proxy/test_watch.c)
if wait_until 10 answers "$PLAIN/probe/watch" 200; then
    pass "..data swap picked up by the watch in $((($(date +%s%N) - t0) / 1000000)) ms"
else
    fail "..data swap not seen within 10 s"
fi
expect_eq "... and the last error is cleared" "$(jq -r .last_error <<<"$(policy)")" null
echo '{"default": "allow", "rules": [{"name": "x", "action": "alow"}]}' >"$TMP/watch-bad.json"
cm_publish watch-bad
has_last_error() { [[ $(jq -r .last_error <<<"$(policy)") != null ]]; }
wait_until 10 has_last_error
expect_match "a bad ..data swap: last_error" "$(jq -r .last_error <<<"$(policy)")" 'rules\[0\]\.action: "alow" is not one of'
call "a bad ..data swap: the last good policy stays" 200 '"path": "/probe/watch"' "$PLAIN/probe/watch"
call "... deny rules too" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$PLAIN/admin")"
expect_match "a bad ..data swap: logged" "$(cat "$TMP/b.log")" 'reload after a file change failed, keeping the last good policy'

# ---- requests in flight finish under the policy they started with --------------------------------------------
cm_publish main
wait_until 10 policy_is '[.rules, .last_error] | join(" ")' "6 "
curl -s -m 10 -o "$TMP/slow.out" -w '%{http_code}' "$FE_OUT/slow" >"$TMP/slow.code" &
slowpid=$!
slow_at_app() { grep -q '^GET /slow$' "$APPLOG"; } # admitted, and in flight (the app sleeps 3 s)
check "a slow request is in flight at the app" wait_until 10 slow_at_app
echo '{"default": "deny"}' >"$TMP/deny-all.json"
cm_publish deny-all
wait_until 10 policy_is '[.rules, .default] | join(" ")' "0 deny"
call "deny-all is in force" 403 "$DEFAULT_BODY" "$(deny_url "$FE_OUT/api/items")"
wait $slowpid
expect_eq "a request admitted before the swap finished 200" "$(cat "$TMP/slow.code")" 200

# ---- audit mode ---------------------------------------------------------------------------------------------------
cm_publish audit
wait_until 10 policy_is .mode audit
expect_eq "GET /policy: mode audit" "$(jq -r .mode <<<"$(policy)")" audit
before=$(metric 'remora_policy_denials_total{rule="admin-only-from-ops"}')
call "audit: /admin from the frontend goes through" 200 '"path": "/admin\?m=AUDIT-1"' "$FE_OUT/admin?m=AUDIT-1"
call "audit: a default denial goes through" 200 '"path": "/other\?m=AUDIT-2"' "$PLAIN/other?m=AUDIT-2"
call "audit: an encoded slash goes through" 200 '' "$PLAIN/a%2Fb?m=AUDIT-3"
check "audit: the app saw them" grep -q 'AUDIT-1' "$APPLOG"
expect_eq "audit: counted as would-be denials" "$(metric 'remora_policy_audit_denials_total{rule="admin-only-from-ops"}')" 1
expect_eq "audit: default would-be denials" "$(metric 'remora_policy_audit_denials_total{rule="default"}')" 1
expect_eq "audit: enforced denials unchanged" "$(metric 'remora_policy_denials_total{rule="admin-only-from-ops"}')" "$before"
expect_match "audit: logged" "$(cat "$TMP/b.log")" \
    "policy: audit: would deny GET /admin\?m=AUDIT-1 from $FE .* by rule admin-only-from-ops"

# ---- shutdown -----------------------------------------------------------------------------------------------------
policy_stop
finish
