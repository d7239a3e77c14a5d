# The policy suites' fixture (policy.sh, policy_reload.sh): source it after test/lib.sh.
#
#   frontend app -> A (outbound, mesh, spiffe://cluster.local/ns/shop/sa/frontend) --mTLS h2--+
#   ops app      -> C (outbound, mesh, spiffe://cluster.local/ns/ops/sa/admin) -----mTLS h2--+-> B inbound (strict)    -> app
#   curl with a client certificate (h1 or h2 over TLS) ---------------------------------------+
#   plaintext curl (h1, h2c) ---------------------------------------------------> B permissive -> app
#
# B enforces a policy file laid out like a mounted ConfigMap (cm/policy.json -> ..data/policy.json,
# ..data -> ..<timestamp>), first $TMP/main.json. The app is a small Python server that logs
# every request it gets ($APPLOG), so "a denied request never reaches the app" is checked
# against that log. The watch looks every $REMORA_WATCH_MS (100 ms here).
# policy_start writes the configs and starts B, A and C (BPID, APID, CPID); before it, the
# suite may use the configs ($TMP/b.json, a.json, c.json) for --check-config cases.
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

# ---- the app: logs "METHOD TARGET" per request, answers 200 JSON (/slow: after 3 s) -------
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

policy_start() {
    ADMIN_PORT=$B_ADMIN start_proxy b "$TMP/b.json" || { cat "$TMP/b.log"; return 1; }
    BPID=$PROXY_PID
    ADMIN_PORT=$A_ADMIN start_proxy a "$TMP/a.json" || return 1
    APID=$PROXY_PID
    ADMIN_PORT=$C_ADMIN start_proxy c "$TMP/c.json" || return 1
    CPID=$PROXY_PID
}

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

# policy_stop: A, C and B exit 0 on SIGTERM, and every proxy log LOG... is sanitizer-clean
policy_stop() {
    local l
    stop_pid "$APID"; expect_eq "A exits 0" "$STOP_RC" 0
    stop_pid "$CPID"; expect_eq "C exits 0" "$STOP_RC" 0
    stop_pid "$BPID"; expect_eq "B exits 0" "$STOP_RC" 0
    for l in a b c "$@"; do
        expect_sanitizers_clean "sanitizers clean ($l)" "$TMP/$l.log"
    done
}
