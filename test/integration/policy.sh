#!/usr/bin/env bash
# Per-pod authorization through real sidecars (docs/policy.md).
#
#   frontend app -> A (outbound, mesh, spiffe://cluster.local/ns/shop/sa/frontend) --mTLS h2--+
#   ops app      -> C (outbound, mesh, spiffe://cluster.local/ns/ops/sa/admin) -----mTLS h2--+-> B inbound (strict)    -> app
#   curl with a client certificate (h1 or h2 over TLS) ---------------------------------------+
#   plaintext curl (h1, h2c) ---------------------------------------------------> B permissive -> app
#
# B enforces a policy file laid out like a mounted ConfigMap (cm/policy.json -> ..data/policy.json,
# ..data -> ..<timestamp>). The app is a small Python server that logs every request it gets,
# so "a denied request never reaches the app" is checked against that log.
#
# Reloads are checked one path at a time. The watch sees every change (common/watch.h: inode,
# size, mtime and ctime), even an in-place edit with the mtime put back; POST /policy/reload
# and SIGHUP prove their own load by what they answer or log (the rule count of the new file),
# whatever the watch did meanwhile. The watch looks every $REMORA_WATCH_MS (100 ms here), and
# waits are bounded polls of GET /policy.
source "$(dirname "$0")/../lib.sh"
export REMORA_WATCH_MS=100
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || exit 1
wl() { "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --spiffe-id "$1" \
        --out-cert "$2" --out-key "$3" >/dev/null; }
FE=spiffe://cluster.local/ns/shop/sa/frontend
OPS=spiffe://cluster.local/ns/ops/sa/admin
WEB=spiffe://cluster.local/ns/shop/sa/web
wl $FE "$D/fe.pem" "$D/fe-key.pem" || exit 1
wl $OPS "$D/ops.pem" "$D/ops-key.pem" || exit 1
wl $WEB "$D/web.pem" "$D/web-key.pem" || exit 1

# ---- the app: logs "METHOD TARGET" per request, answers 200 JSON (/slow: after 1.5 s) -------
APPLOG=$TMP/app-requests.log
: >"$APPLOG"
cat >"$TMP/app.py" <<'PY'
import http.server, json, sys, time
log = open(sys.argv[1], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        log.write("%s %s\n" % (self.command, self.path))
        if self.path.startswith("/slow"):
            time.sleep(3)
        body = json.dumps({"method": self.command, "path": self.path,
                           "xfcc": self.headers.get("x-forwarded-client-cert")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = answer
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("listening on 127.0.0.1:%d" % srv.server_address[1], flush=True)
srv.serve_forever()
PY
bg app python3 "$TMP/app.py" "$APPLOG"
APP=""
WAIT_UNTIL_STEP=0.05 wait_until 10 listen_port "$TMP/app.log" && APP=$LISTEN_PORT
[[ -n $APP ]] || { fail "app did not start"; cat "$TMP/app.log"; finish; }

A_ADMIN=$(free_port); A_OUT=$(free_port); C_ADMIN=$(free_port); C_OUT=$(free_port)
B_ADMIN=$(free_port); B_IN=$(free_port); B_PERM=$(free_port)

# ---- B's policy, in a ConfigMap-style directory ----------------------------------------------
CM=$TMP/cm
mkdir -p "$CM"
# cm_publish NAME: write $TMP/NAME.json as a new ConfigMap revision and swap ..data to it
# atomically, as the kubelet does (the watched path cm/policy.json itself never changes).
rev=0
cm_publish() {
    rev=$((rev + 1))
    local dir="..2026_01_01_00_00_$(printf '%02d' $rev).000000001"
    mkdir "$CM/$dir"
    cp "$TMP/$1.json" "$CM/$dir/policy.json"
    ln -sfn "$dir" "$CM/..data_tmp"
    mv -T "$CM/..data_tmp" "$CM/..data"
}
# edit_in_place NAME: overwrite the file in force in place (same inode) with $TMP/NAME.json,
# which must have the same size, and put the mtime back: only ctime tells it changed.
edit_in_place() {
    local target
    target=$(readlink -f "$CM/policy.json")
    [[ $(stat -c %s "$target") == $(stat -c %s "$TMP/$1.json") ]] || { fail "edit_in_place $1: sizes differ"; return 1; }
    touch -r "$target" "$TMP/stamp"
    cat "$TMP/$1.json" >"$target"
    touch -r "$TMP/stamp" "$target"
}
# pad NAME SIZE: pad $TMP/NAME.json with spaces to SIZE bytes (JSON ignores them)
pad() { local f=$TMP/$1.json; printf '%*s' $(($2 - $(stat -c %s "$f"))) '' >>"$f"; }

cat >"$TMP/main.json" <<JSON
{"default": "deny",
 "rules": [
  {"name": "deny-debug", "action": "deny", "when": {"headers": {"x-debug": "*"}}},
  {"name": "admin-only-from-ops", "action": "deny", "to": {"paths": ["/admin", "/admin/*"]},
   "from": {"not_namespaces": ["ops"]}},
  {"name": "frontend-reads", "action": "allow", "from": {"principals": ["$FE"]},
   "to": {"methods": ["GET", "HEAD"], "paths": ["/api/*", "/slow"]}},
  {"name": "tenant-writes", "action": "allow", "from": {"principals": ["cluster.local/ns/shop/sa/frontend"]},
   "to": {"methods": ["POST", "PUT"], "paths": ["/api/*"]}, "when": {"headers": {"x-tenant": "acme"}}},
  {"name": "ops-everything", "action": "allow", "from": {"namespaces": ["ops"]}},
  {"name": "public-health", "action": "allow", "to": {"paths": ["/healthz"], "ports": [$B_PERM]}}
 ]}
JSON
printf '{"mode": "audit",%s' "$(tail -c +2 "$TMP/main.json")" >"$TMP/audit.json"
ln -sfn ..data/policy.json "$CM/policy.json"
cm_publish main

cat >"$TMP/b.json" <<JSON
{"admin": {"address": "127.0.0.1:$B_ADMIN"},
 "listeners": [
   {"name": "inbound", "address": "127.0.0.1:$B_IN", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "strict"},
   {"name": "permissive", "address": "127.0.0.1:$B_PERM", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "permissive"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
              "cert_file": "$D/web.pem", "key_file": "$D/web-key.pem", "bundle_file": "$D/root.pem"},
 "policy_file": "$CM/policy.json"}
JSON
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

client_cfg() { # NAME ADMIN OUT SA-FILE-PREFIX NS SA
    cat >"$TMP/$1.json" <<JSON
{"admin": {"address": "127.0.0.1:$2"},
 "listeners": [{"name": "outbound", "address": "127.0.0.1:$3", "direction": "outbound",
                "upstream": "127.0.0.1:$B_IN", "tls": "mesh"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "$5", "service_account": "$6",
              "cert_file": "$D/$4.pem", "key_file": "$D/$4-key.pem", "bundle_file": "$D/root.pem"}}
JSON
}
client_cfg a "$A_ADMIN" "$A_OUT" fe shop frontend
client_cfg c "$C_ADMIN" "$C_OUT" ops ops admin

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

ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || { cat "$TMP/b.log"; finish; }
BPID=$PROXY_PID
ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || finish
APID=$PROXY_PID
ADMIN_PORT=$C_ADMIN start_proxy c "$TMP/c.json" || finish
CPID=$PROXY_PID

# ---- helpers ------------------------------------------------------------------------------------
FE_OUT="http://127.0.0.1:$A_OUT"  # as the frontend (through A)
OPS_OUT="http://127.0.0.1:$C_OUT" # as ops/admin (through C)
PLAIN="http://127.0.0.1:$B_PERM"  # plaintext, no identity
TLS="https://127.0.0.1:$B_IN"     # curl with a client certificate, straight to B
FE_CERT=(-k --cert "$D/fe.pem" --key "$D/fe-key.pem")
OPS_CERT=(-k --cert "$D/ops.pem" --key "$D/ops-key.pem")
ndenied=0
declare -A denials # rule (or "default") -> 403s sent, for the metrics checks
# call NAME WANT-CODE BODY-REGEX URL [curl args...]: one request. A denied one (403/400) must
# carry a ?m=DENIED-n marker in its URL (deny_url) so the app log can prove it never arrived.
call() {
    local name=$1 want=$2 re=$3 url=$4; shift 4
    local out code body
    if [[ $want == 403 || $want == 400 ]]; then
        ndenied=$((ndenied + 1))
        if [[ $want == 403 && $re =~ ^\^RBAC:\ access\ denied\ by\ (rule\ )?([a-z-]+) ]]; then
            denials[${BASH_REMATCH[2]}]=$((${denials[${BASH_REMATCH[2]}]:-0} + 1))
        fi
    fi
    out=$(curl -s -m 10 --path-as-is -w '\n%{http_code}' "$@" "$url")
    code=${out##*$'\n'}
    body=${out%$'\n'*}
    body=${body%$'\n'} # the proxy ends its short bodies with a newline
    if [[ $code == "$want" && $body =~ $re ]]; then
        pass "$name"
    else
        fail "$name: got $code '${body:0:200}', want $want /$re/"
    fi
}
deny_url() { echo "$1?m=DENIED-$RANDOM"; }
rule_body() { echo "^RBAC: access denied by rule $1\$"; }
DEFAULT_BODY='^RBAC: access denied by default$'
metric() { curl -s "http://127.0.0.1:$B_ADMIN/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
policy() { curl -s "http://127.0.0.1:$B_ADMIN/policy"; }
# policy_is JQ-EXPR VALUE: GET /policy's JQ-EXPR is VALUE now (for wait_until)
policy_is() { [[ $(jq -r "$1" <<<"$(policy)") == "$2" ]]; }

# ---- decisions per principal / namespace / method / path / header --------------------------------
call "frontend GET /api/items (h1 app -> h2 mTLS hop)" 200 '"path": "/api/items"' "$FE_OUT/api/items"
call "frontend HEAD /api/items" 200 '' "$FE_OUT/api/items" -I
call "frontend GET /api/items over h2c from the app" 200 '"path": "/api/h2"' "$FE_OUT/api/h2" --http2-prior-knowledge
call "app sees the verified caller (XFCC)" 200 "URI=$FE" "$FE_OUT/api/xfcc"
call "frontend POST without x-tenant: denied by default" 403 "$DEFAULT_BODY" "$(deny_url "$FE_OUT/api/items")" -X POST
call "frontend POST with x-tenant: acme" 200 '"method": "POST"' "$FE_OUT/api/items" -X POST -H 'x-tenant: acme' -d '{}'
call "frontend PUT with x-tenant: other: denied" 403 "$DEFAULT_BODY" "$(deny_url "$FE_OUT/api/items")" -X PUT -H 'x-tenant: other'
call "frontend DELETE: denied by default" 403 "$DEFAULT_BODY" "$(deny_url "$FE_OUT/api/items")" -X DELETE
call "frontend GET outside /api: denied" 403 "$DEFAULT_BODY" "$(deny_url "$FE_OUT/other")"
call "frontend GET /admin: denied by rule" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$FE_OUT/admin")"
call "frontend GET /admin/users" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$FE_OUT/admin/users")"
call "frontend GET //admin (merged slashes)" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$FE_OUT//admin")"
call "frontend GET /api/../admin (dot segments)" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$FE_OUT/api/../admin")"
call "frontend GET /api/%2e%2e/admin (encoded dots)" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$FE_OUT/api/%2e%2e/admin")"
call "frontend GET /%61dmin (encoded letter)" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$FE_OUT/%61dmin")"
call "frontend GET /admin/ (trailing slash)" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$FE_OUT/admin/")"
call "frontend GET /api%2F..%2Fadmin: 400 (encoded slash)" 400 'encoded slash' "$(deny_url "$FE_OUT/api%2F..%2Fadmin")"
call "frontend GET /api/x\\..\\admin: 400 (backslash)" 400 'backslash' "$(deny_url "$FE_OUT/api/x\\..\\admin")"
call "frontend GET /api/x with x-debug: denied by rule" 403 "$(rule_body deny-debug)" "$(deny_url "$FE_OUT/api/x")" -H 'x-debug: 1'
call "frontend GET /api/x?q=/../admin (query is not path)" 200 '"path": "/api/x\?q=/../admin"' "$FE_OUT/api/x?q=/../admin"
call "ops GET /admin (namespace ops)" 200 '"path": "/admin"' "$OPS_OUT/admin"
call "ops DELETE /anything" 200 '"method": "DELETE"' "$OPS_OUT/anything" -X DELETE
call "ops with x-debug: deny rules come first" 403 "$(rule_body deny-debug)" "$(deny_url "$OPS_OUT/admin")" -H 'x-debug: yes'
call "plaintext GET /healthz on the permissive port" 200 '"path": "/healthz"' "$PLAIN/healthz"
call "plaintext GET /healthz over h2c" 200 '"path": "/healthz"' "$PLAIN/healthz" --http2-prior-knowledge
call "plaintext GET /api/items: no identity, denied" 403 "$DEFAULT_BODY" "$(deny_url "$PLAIN/api/items")"
call "plaintext GET /admin: not_namespaces holds without identity" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$PLAIN/admin")"
call "plaintext h2c GET /admin" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$PLAIN/admin")" --http2-prior-knowledge
call "plaintext forged XFCC does not make an identity" 403 "$DEFAULT_BODY" "$(deny_url "$PLAIN/api/items")" \
    -H "x-forwarded-client-cert: By=x;URI=$FE"
call "frontend GET /healthz on the strict port: port rule does not match" 403 "$DEFAULT_BODY" "$(deny_url "$TLS/healthz")" "${FE_CERT[@]}"
call "curl as frontend over TLS, h1" 200 '"path": "/api/tls1"' "$TLS/api/tls1" "${FE_CERT[@]}" --http1.1
call "curl as frontend over TLS, h2 (ALPN)" 200 '"path": "/api/tls2"' "$TLS/api/tls2" "${FE_CERT[@]}" --http2
call "curl as frontend over TLS, h1: /admin denied" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$TLS/admin")" "${FE_CERT[@]}" --http1.1
call "curl as frontend over TLS, h2: /admin denied" 403 "$(rule_body admin-only-from-ops)" "$(deny_url "$TLS/admin")" "${FE_CERT[@]}" --http2
call "curl as ops over TLS, h2: /admin allowed" 200 '"path": "/admin"' "$TLS/admin" "${OPS_CERT[@]}" --http2
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
wait_until 4 answers "$PLAIN/probe/watch" 200
ms=$((($(date +%s%N) - t0) / 1000000))
((ms <= 2500)) && pass "..data swap picked up by the watch in ${ms} ms" || fail "..data swap not seen within 2.5 s ($ms ms)"
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
sleep 0.3
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
stop_pid "$APID"; expect_eq "A exits 0" "$STOP_RC" 0
stop_pid "$CPID"; expect_eq "C exits 0" "$STOP_RC" 0
stop_pid "$BPID"; expect_eq "B exits 0" "$STOP_RC" 0
for l in a b c b-bad; do
    expect_sanitizers_clean "sanitizers clean ($l)" "$TMP/$l.log"
done
finish
