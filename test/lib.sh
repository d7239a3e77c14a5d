# Shell helpers for integration tests: source it, then use check/expect_*.
# Everything started with `bg` is killed by PID at exit, even when a test fails.
set -uo pipefail
: "${REMORA_BUILD:=build/asan}"
: "${REMORA_ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$REMORA_ROOT"
PROXY=$REMORA_ROOT/$REMORA_BUILD/remora-proxy
INJECTOR=$REMORA_ROOT/$REMORA_BUILD/remora-injector
UPSTREAM=$REMORA_ROOT/$REMORA_BUILD/test-upstream
TMP=$(mktemp -d /tmp/remora-test.XXXXXX)
_pids=()
_cleanups=()
_fails=0

_cleanup() {
    set +u # one broken cleanup command must not stop the rest
    local c p
    for c in "${_cleanups[@]}"; do eval "$c" || true; done
    for p in "${_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${_pids[@]}"; do
        wait_until 5 gone "$p" || kill -9 "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap _cleanup EXIT

# wait_until TIMEOUT_S CMD...: run CMD every 0.1 s (WAIT_UNTIL_STEP) until it succeeds
# (return 0) or TIMEOUT_S seconds (fractions allowed) have passed (return 1). CMD runs in
# this shell, so a function may set variables for the caller; it is tried at least once,
# and once more at the deadline. Bounded, and measured on the clock, not in tries: a slow
# CMD on a loaded machine does not stretch the bound.
wait_until() {
    local t=$1 now end; shift
    now=${EPOCHREALTIME//[!0-9]/}
    end=$((now + $(awk -v t="$t" 'BEGIN {printf "%d", t * 1000000}')))
    while :; do
        "$@" && return 0
        now=${EPOCHREALTIME//[!0-9]/}
        ((now >= end)) && return 1
        sleep "${WAIT_UNTIL_STEP:-0.1}"
    done
}

# on_exit CMD: run CMD at exit (namespaces, links...)
on_exit() { _cleanups+=("$1"); }

# bg NAME CMD...: start CMD in the background, log to $TMP/NAME.log; sets $LASTPID.
bg() {
    local name=$1; shift
    "$@" >"$TMP/$name.log" 2>&1 &
    LASTPID=$!
    _pids+=("$LASTPID")
}

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; _fails=$((_fails + 1)); }

# expect_sanitizers_clean NAME LOG: PASS when LOG holds no ASan, UBSan or
# LeakSanitizer report; else FAIL and show the report.
expect_sanitizers_clean() {
    if grep -q "ERROR: AddressSanitizer\|runtime error\|LeakSanitizer" "$2"; then
        fail "$1"; grep -A30 "Sanitizer\|runtime error" "$2" | head -60
    else
        pass "$1"
    fi
}

# check NAME CMD...: PASS when CMD succeeds.
check() {
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# expect_eq NAME GOT WANT
expect_eq() {
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1: got '$2', want '$3'"; fi
}

# expect_match NAME GOT REGEX
expect_match() {
    if [[ "$2" =~ $3 ]]; then pass "$1"; else fail "$1: '$2' does not match /$3/"; fi
}

# A TCP port nobody uses right now, below the kernel's ephemeral range: the
# port is closed again until a server binds it, and a port the kernel picked
# could meanwhile become the local port of some outgoing connection (then the
# server's bind fails with EADDRINUSE). Ports handed out once are not handed
# out again in this suite ($TMP/ports).
free_port() {
    python3 - "$TMP/ports" <<'PY'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
try:
    used = set(int(x) for x in open(sys.argv[1]).read().split())
except OSError:
    used = set()
for _ in range(1000):
    port = random.randrange(10000, max(low, 10001))
    if port in used:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    open(sys.argv[1], "a").write("%d\n" % port)
    print(port)
    sys.exit(0)
sys.exit("free_port: no free port below %d" % low)
PY
}

# accepts PORT [HOST]: something accepts a TCP connection on it now.
accepts() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }
# wait_port PORT [HOST]: wait until something accepts on it (10 s).
wait_port() { wait_until 10 accepts "$1" "${2:-127.0.0.1}"; }

# answers URL CODE: URL answers CODE now.
answers() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == "$2" ]]; }
# wait_http URL [CODE]: wait until URL answers CODE (default 200), 10 s.
wait_http() { wait_until 10 answers "$1" "${2:-200}"; }

# alive PID: the process still runs (the proxy must never crash).
alive() { kill -0 "$1" 2>/dev/null; }
# gone PID: the process has ended.
gone() { ! kill -0 "$1" 2>/dev/null; }

# listen_port FILE: the port of the first "listening on HOST:PORT" line in FILE, in $LISTEN_PORT;
# fails while there is none (wait_until 5 listen_port FILE waits for it).
listen_port() {
    LISTEN_PORT=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$1" 2>/dev/null | head -1)
    [[ -n $LISTEN_PORT ]]
}

# finish: exit status for the runner (0 when nothing failed).
finish() { exit $((_fails > 0)); }

# start_upstream NAME [ARGS...]: run test-upstream on a kernel-chosen port;
# sets UP_PORT and UP_PID.
start_upstream() {
    local name=$1; shift
    bg "$name" "$UPSTREAM" --listen 127.0.0.1:0 --name "$name" "$@"
    UP_PID=$LASTPID
    UP_PORT=""
    if wait_until 5 listen_port "$TMP/$name.log"; then
        UP_PORT=$LISTEN_PORT
        return 0
    fi
    fail "start_upstream $name: no port"; cat "$TMP/$name.log" >&2
    return 1
}

# start_proxy NAME CONFIG-FILE: run remora-proxy; waits for its admin /ready
# (ADMIN_PORT must be the config's admin port). Sets PROXY_PID.
start_proxy() {
    local name=$1 cfg=$2
    bg "$name" "$PROXY" -c "$cfg"
    PROXY_PID=$LASTPID
    if ! wait_http "http://127.0.0.1:$ADMIN_PORT/ready"; then
        fail "start_proxy $name: not ready"; tail -20 "$TMP/$name.log" >&2
        return 1
    fi
}

# stop_pid PID: SIGTERM and wait up to 10 s; sets STOP_RC to its exit status
# (124 when it did not exit). Call it in the shell that started PID, not in $(...).
stop_pid() {
    kill -TERM "$1" 2>/dev/null
    STOP_RC=124
    WAIT_UNTIL_STEP=0.05 wait_until 10 gone "$1" || return
    wait "$1" 2>/dev/null; STOP_RC=$?
}

# rss_hwm_kb PID: peak resident set (VmHWM) in kB.
rss_hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

RAW="python3 $REMORA_ROOT/test/tools/raw.py"
PATTERN="python3 $REMORA_ROOT/test/upstream/pattern.py"

# start_recorder NAME [h1_recorder.py ARGS...]: test/tools/h1_recorder.py, an HTTP/1.1 app that
# records every byte it receives into $TMP/NAME/ (per connection and all.bin) and answers fixed
# responses; sets REC_PORT (hostile_h1.sh, hostile_h1_upstream.sh).
start_recorder() {
    local name=$1; shift
    bg "$name" python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/$name" "$@"
    REC_PORT=""
    WAIT_UNTIL_STEP=0.05 wait_until 10 listen_port "$TMP/$name.log" && { REC_PORT=$LISTEN_PORT; return 0; }
    fail "start_recorder $name: no port"; return 1
}

# ---- the CA suites' fixture (ca.sh, ca_config.sh, ca_rotation.sh) --------------------------
# ca_pki: a mesh root and an "east" intermediate (the CA's signing pair), a server
# certificate under it, the webhook's own self-signed certificate (the CA port must not
# depend on it), an unrelated root, service-account token keys ($TMP/tok, $TMP/tok2) and
# the CA's JWKS ($TMP/jwks.json). Sets D (the directory), SVC, CERTS, MINT, TD, WH, CAP.
ca_pki() {
    CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
    MINT=(node "$REMORA_ROOT/test/tools/mint-token.js")
    TD=cluster.local
    SVC=remora-injector.remora-system.svc
    D=$TMP/pki
    mkdir -p "$D"
    "$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" || return 1
    "$CERTS" intermediate --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --cn east \
        --out-cert "$D/int.pem" --out-key "$D/int-key.pem" || return 1
    "$CERTS" server --ca-cert "$D/int.pem" --ca-key "$D/int-key.pem" \
        --dns "$SVC" --out-cert "$D/srv.pem" --out-key "$D/srv-key.pem" || return 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$D/wh-key.pem" -out "$D/wh.pem" -subj "/CN=remora-injector" \
        -addext "subjectAltName=DNS:$SVC" 2>/dev/null || return 1
    "$CERTS" root --out-cert "$D/other-root.pem" --out-key "$D/other-root-key.pem" --cn "other root" || return 1
    "${MINT[@]}" keys "$TMP/tok" || return 1
    "${MINT[@]}" keys "$TMP/tok2" || return 1 # a rotated service-account signing key
    cp "$TMP/tok/jwks.json" "$TMP/jwks.json"
    WH=$(free_port)
    CAP=$(free_port)
}

# ca_config NAME TTL [EXTRA-JSON [JQ-FILTER]]: $TMP/NAME.json, an injector with the CA
# of ca_pki on ca.address; EXTRA is merged over it, then the filter runs (del(.ca.x)
# drops a key).
ca_config() {
    jq -n --arg wh "127.0.0.1:$WH" --arg ca "127.0.0.1:$CAP" --arg d "$D" --arg jwks "$TMP/jwks.json" \
        --argjson ttl "$2" --argjson extra "${3:-{\}}" '{
        webhook: {address: $wh, cert_file: ($d + "/wh.pem"), key_file: ($d + "/wh-key.pem"),
                  reload_interval_ms: 200, max_connections_per_ip: 32},
        ca: {address: $ca, cert_file: ($d + "/int.pem"), key_file: ($d + "/int-key.pem"),
             root_file: ($d + "/root.pem"), jwks_file: $jwks, ttl_seconds: $ttl},
        trust_domain: "cluster.local", log_level: "info"} * $extra | '"${4:-.}" >"$TMP/$1.json"
}

# ca_start_injector CONFIG: an injector in the background (log $TMP/injector-<n>.log, n
# counting from 1), its PID in IPID; waits for the CA and webhook ports.
CA_NINJ=0
ca_start_injector() {
    CA_NINJ=$((CA_NINJ + 1))
    bg "injector-$CA_NINJ" "$INJECTOR" -c "$1"
    IPID=$LASTPID
    wait_port "$CAP" && wait_port "$WH"
}
# ca_tok [mint-token.js token options]: a service-account token signed with $TMP/tok's keys.
ca_tok() { "${MINT[@]}" token "$TMP/tok" "$@"; }
# ca_bearer TOKEN: the Authorization header line for curl -H.
ca_bearer() { printf 'Authorization: Bearer %s' "$1"; }
# ca_csr NAME SPIFFE-ID: a workload key and CSR as the proxy makes them: $TMP/NAME-key.pem,
# $TMP/NAME.csr, and the /v1/sign body $TMP/NAME.json.
ca_csr() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/$1-key.pem" 2>/dev/null
    "$CERTS" csr --key "$TMP/$1-key.pem" --spiffe-id "$2" --out "$TMP/$1.csr" || return 1
    jq -n --rawfile csr "$TMP/$1.csr" '{csr: $csr}' >"$TMP/$1.json"
}

# ---- a registry for discovery (discovery_wire, service_balance, egress, metrics_labels) -------
# After ca_pki. disc_registry: the API server's CA and certificate in $D (apica, api), the token
# the fake accepts ($TMP/sa-token), the fake (test/tools/fake_apiserver.py) with its control port;
# sets APIP and CTL and defines `ctl PATH [curl args]` on the control API (objects/pods, ...).
disc_registry() {
    _fake_ca apica || return 1
    _fake_cert api "DNS:localhost,IP:127.0.0.1" || return 1
    echo "tok-$$" >"$TMP/sa-token"
    bg fake python3 "$REMORA_ROOT/test/tools/fake_apiserver.py" --cert "$D/api.pem" \
        --key "$D/api-key.pem" --port-file "$TMP/api.port" \
        --control-listen 127.0.0.1:0 --control-port-file "$TMP/ctl.port"
    WAIT_UNTIL_STEP=0.05 wait_until 20 test -s "$TMP/ctl.port" -a -s "$TMP/api.port" ||
        { fail "fake API server starts"; cat "$TMP/fake.log"; return 1; }
    APIP=$(cat "$TMP/api.port")
    CTL=http://127.0.0.1:$(cat "$TMP/ctl.port")/_control
    ctl state -X PUT --data-binary "{\"token\": \"tok-$$\"}" >/dev/null
}
# disc_pod NAME IP SA MESHED(true|false) APP: a Running, Ready pod shop/NAME at IP with the
# label app=APP, running as SA, meshed (the injector's remora.io/status annotation) or not
disc_pod() {
    local ann=''
    [[ $4 == true ]] && ann=', "annotations": {"remora.io/status": "{}"}'
    ctl objects/pods -X PUT --data-binary "{\"metadata\": {\"name\": \"$1\", \"namespace\": \"shop\",
        \"labels\": {\"app\": \"$5\"}$ann}, \"spec\": {\"serviceAccountName\": \"$3\", \"nodeName\": \"n1\"},
        \"status\": {\"phase\": \"Running\", \"podIP\": \"$2\", \"podIPs\": [{\"ip\": \"$2\"}],
        \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\"}]}}" >/dev/null
}
# disc_workload SA [FILE]: a workload certificate of spiffe://cluster.local/ns/shop/sa/SA in
# $D/FILE.pem and $D/FILE-key.pem (FILE defaults to SA)
disc_workload() {
    "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" \
        --spiffe-id "spiffe://cluster.local/ns/shop/sa/$1" --out-cert "$D/${2:-$1}.pem" \
        --out-key "$D/${2:-$1}-key.pem" >/dev/null
}
# disc_injector: the injector with its CA and the discovery service on 127.0.0.1:$DP (set here)
# fed by the fake of disc_registry; returns when the discovery port listens and /readyz says
# the watches have synced (a FAIL line otherwise).
disc_injector() {
    DP=$(free_port)
    ca_config main 3600 "$(jq -n --arg a "127.0.0.1:$DP" --arg api "https://127.0.0.1:$APIP" \
        --arg tok "$TMP/sa-token" --arg ca "$D/apica.pem" \
        '{discovery: {address: $a, api: $api, token_file: $tok, ca_file: $ca}}')"
    ca_start_injector "$TMP/main.json" || { fail "injector starts"; cat "$TMP/injector-1.log"; return 1; }
    wait_port "$DP" || { fail "discovery port listens"; cat "$TMP/injector-1.log"; return 1; }
    check "injector synced (/readyz 200)" wait_until 30 disc_readyz
}
# shellcheck disable=SC2317 # called through check/wait_until
disc_readyz() {
    [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/wh.pem" \
        --resolve "$SVC:$WH:127.0.0.1" "https://$SVC:$WH/readyz") == 200 ]]
}
# disc_sidecar NAME SA APP-PORT ADDRESS...: a meshed pod's inbound sidecar (strict mTLS) on
# each ADDRESS (IP:PORT) in front of the app on 127.0.0.1:APP-PORT, presenting SA's
# certificate (disc_workload SA); config $TMP/NAME.json, log $TMP/NAME.log; sets SIDE_PID
# and returns once its admin /ready answers (a FAIL line otherwise).
disc_sidecar() {
    local name=$1 sa=$2 app=$3 admin l ls='' i=0; shift 3
    admin=$(free_port)
    for l in "$@"; do
        i=$((i + 1))
        ls+="${ls:+,}{\"name\": \"in$i\", \"address\": \"$l\", \"direction\": \"inbound\",
            \"tls\": \"strict\", \"upstream\": \"127.0.0.1:$app\"}"
    done
    cat >"$TMP/$name.json" <<JSON
{"admin": {"address": "127.0.0.1:$admin"}, "listeners": [$ls],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "$sa",
              "cert_file": "$D/$sa.pem", "key_file": "$D/$sa-key.pem", "bundle_file": "$D/root.pem"}}
JSON
    bg "$name" "$PROXY" -c "$TMP/$name.json"
    SIDE_PID=$LASTPID
    wait_http "http://127.0.0.1:$admin/ready" || { fail "sidecar $name starts"; cat "$TMP/$name.log"; return 1; }
}
# disc_client NAME LISTENERS [EXTRA-JSON [JQ-FILTER]]: $TMP/NAME.json, the client pod's proxy:
# admin on 127.0.0.1:$ADMIN_PORT, LISTENERS (a JSON list; `outbound` writes one), the identity
# shop/client (disc_workload client) and discovery at 127.0.0.1:$DP (lookup_timeout_ms 3000);
# EXTRA is merged over it, then the filter runs (del(.discovery) drops the block).
disc_client() {
    jq -n --arg admin "127.0.0.1:$ADMIN_PORT" --argjson ls "$2" --arg d "$D" --arg disc "127.0.0.1:${DP:-}" \
        --argjson extra "${3:-{\}}" '{admin: {address: $admin}, listeners: $ls,
        identity: {trust_domain: "cluster.local", namespace: "shop", service_account: "client",
                   cert_file: ($d + "/client.pem"), key_file: ($d + "/client-key.pem"),
                   bundle_file: ($d + "/root.pem")},
        discovery: {address: $disc, lookup_timeout_ms: 3000}} * $extra | '"${4:-.}" >"$TMP/$1.json"
}
# outbound NAME PORT UPSTREAM [TLS]: one outbound listener on 127.0.0.1:PORT (tls "mesh")
outbound() {
    printf '{"name": "%s", "address": "127.0.0.1:%s", "direction": "outbound", "tls": "%s", "upstream": "%s"}' \
        "$1" "$2" "${4:-mesh}" "$3"
}
# h1_exchange PORT: the bytes on stdin (one HTTP/1.1 request) sent to 127.0.0.1:PORT; prints
# the response's status line and its body (Content-Length bytes, or none), one space between
h1_exchange() {
    timeout 20 python3 -c '
import re, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
s.sendall(sys.stdin.buffer.read())
data = b""
while b"\r\n\r\n" not in data:
    d = s.recv(4096)
    if not d: break
    data += d
head, _, body = data.partition(b"\r\n\r\n")
m = re.search(rb"content-length: *(\d+)", head, re.I)
n = int(m.group(1)) if m else 0
while len(body) < n:
    d = s.recv(4096)
    if not d: break
    body += d
print(head.split(b"\r\n")[0].decode(), body.decode(errors="replace").rstrip("\n"))' "$1"
}
# tcp_exchange PORT: the bytes on stdin sent to 127.0.0.1:PORT, then read until the peer
# closes: prints "closed N" (N bytes came back) or "error MESSAGE" (a reset, or 15 s of silence)
tcp_exchange() {
    timeout 20 python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
s.sendall(sys.stdin.buffer.read())
data = b""
try:
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
    print("closed", len(data))
except OSError as e:
    print("error", e)' "$1"
}

# ---- the fake API server's fixture (publish.sh, publish_jwks.sh) ------------------------------
# fake_pki: in $D (made here) the API server's CA apica (and an unrelated otherca), its
# certificate api (localhost, 127.0.0.1) and wrongname (another name, another IP); the token
# the fake accepts in $TMP/token (FAKE_TOKEN), a stale one in $TMP/bad-token. The suite
# writes the fake's state to $TMP/state.json (test/tools/fake_apiserver.py: token, namespaces,
# configmaps, faults, jwks).
fake_pki() {
    D=$TMP/pki
    mkdir -p "$D"
    local n
    for n in apica otherca; do _fake_ca "$n" || return 1; done
    _fake_cert api "DNS:localhost,IP:127.0.0.1" || return 1
    _fake_cert wrongname "DNS:wrong.example,IP:10.9.8.7" || return 1
    FAKE_TOKEN=tok-$$-good
    echo "$FAKE_TOKEN" >"$TMP/token"
    echo "tok-$$-stale" >"$TMP/bad-token"
}
_fake_ca() { # NAME: a self-signed CA, $D/NAME.pem and $D/NAME-key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$D/$1-key.pem" -out "$D/$1.pem" -subj "/CN=$1" 2>/dev/null
}
_fake_cert() { # NAME SAN: a serving certificate for the fake, signed by apica
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$D/$1-key.pem" \
        -out "$D/$1.csr" -subj "/CN=kube-apiserver" 2>/dev/null &&
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$2" >"$D/$1.ext" &&
        openssl x509 -req -in "$D/$1.csr" -CA "$D/apica.pem" -CAkey "$D/apica-key.pem" -CAcreateserial \
            -days 2 -extfile "$D/$1.ext" -out "$D/$1.pem" 2>/dev/null
}
# fake_start NAME CERT: the fake on $TMP/state.json with $D/CERT.pem; sets FPORT (exits when
# it does not start). The first one started also sets API, the URL ctl and friends use.
fake_start() {
    rm -f "$TMP/$1.port"
    bg "$1" python3 "$REMORA_ROOT/test/tools/fake_apiserver.py" --cert "$D/$2.pem" --key "$D/$2-key.pem" \
        --state "$TMP/state.json" --port-file "$TMP/$1.port"
    WAIT_UNTIL_STEP=0.05 wait_until 10 test -s "$TMP/$1.port"
    FPORT=$(cat "$TMP/$1.port" 2>/dev/null)
    [[ -n $FPORT ]] || { fail "fake API server $1 did not start"; cat "$TMP/$1.log"; exit 1; }
    : "${API:=https://127.0.0.1:$FPORT}"
}
# ctl PATH [curl args]: the fake's control API (state, requests); state JQ: its state through
# jq -c; put_state JSON: merge JSON into it; writes: how many requests since the last
# `ctl requests -X DELETE` were not GETs.
# (after disc_registry: its plain control port, $CTL)
ctl() {
    if [[ -n ${CTL:-} ]]; then
        curl -sS -m 10 "$CTL/$1" "${@:2}"
    else
        curl -sS --cacert "$D/apica.pem" "$API/_control/$1" "${@:2}"
    fi
}
state() { ctl state | jq -c "$@"; }
put_state() { ctl state -X PUT --data-binary "$1" >/dev/null; }
writes() { ctl requests | jq -c '[.[] | select(.method != "GET")] | length'; }
