#!/usr/bin/env bash
# Transparent capture in network namespaces (docs/capture.md): `remora-proxy
# iptables` installs its rules idempotently (IPv4 and IPv6); an unmodified
# client running as an ordinary UID reaches another namespace's server
# through the outbound capture listener of a proxy running as UID 1337; the
# inbound capture sends a peer's connection to the app over loopback; the
# proxy's own ports, excluded ports and excluded ranges bypass it; a
# connection whose original destination is the proxy itself is refused;
# the health port answers kubelet-style probes from outside the pod.
#
# Two namespaces joined by a veth pair, both ends created inside them, so
# nothing is added to the host's network; both are deleted at exit.
# Root only (CI runs as root).
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: capture.sh needs root (network namespaces, iptables); nothing was run"
    exit 0
fi
for tool in ip iptables-save ip6tables-save iptables-restore setpriv curl; do
    command -v "$tool" >/dev/null || { fail "$tool is not installed (scripts/deps.sh)"; finish; }
done

A=rm-cap-$$-a # the pod: app client, app server, sidecar
B=rm-cap-$$-b # a peer: a plain server, and a client calling into the pod
A_IP=10.231.0.1
B_IP=10.231.0.2
A_IP6=fd31::1
ip netns add "$A" || { fail "ip netns add $A"; finish; }
on_exit "ip netns del $A"
ip netns add "$B" || { fail "ip netns add $B"; finish; }
on_exit "ip netns del $B"
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add "$A_IP/24" dev va
ip -n "$B" addr add "$B_IP/24" dev vb
ip -n "$A" -6 addr add "$A_IP6/64" dev va nodad
ip -n "$B" -6 addr add fd31::2/64 dev vb nodad
ip -n "$B" addr add 10.231.0.3/24 dev vb # an excluded range (see below)
for ns in "$A" "$B"; do
    ip -n "$ns" link set lo up
done
ip -n "$A" link set va up
ip -n "$B" link set vb up

inA() { ip netns exec "$A" "$@"; }
inB() { ip netns exec "$B" "$@"; }
# as an ordinary user: the unmodified app
as_app() { ip netns exec "$A" setpriv --reuid=1000 --regid=1000 --clear-groups "$@"; }

# saved NS [ip6]: the nat table without comments and counters
saved() {
    local tool=iptables-save
    [[ ${2:-} == 6 ]] && tool=ip6tables-save
    ip netns exec "$1" "$tool" -t nat | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
}

# ---- the rules -------------------------------------------------------------
inA "$PROXY" iptables --dry-run >"$TMP/dry.txt" 2>&1
check "dry-run prints IPv4 and IPv6 documents (the pod has a global IPv6 address)" \
    grep -q 'IPv6 capture' "$TMP/dry.txt"
before=$(saved "$A")
check "dry-run changes nothing" test "$before" == "$(saved "$A")"

inA "$PROXY" iptables >"$TMP/ipt1.log" 2>&1
expect_eq "iptables exits 0" "$?" 0
first=$(saved "$A")
first6=$(saved "$A" 6)
inA "$PROXY" iptables >"$TMP/ipt2.log" 2>&1
expect_eq "iptables exits 0 the second time" "$?" 0
expect_eq "second run: iptables-save -t nat identical" "$(saved "$A")" "$first"
expect_eq "second run: ip6tables-save -t nat identical" "$(saved "$A" 6)" "$first6"
expect_eq "one jump from PREROUTING" "$(grep -c -- '-A PREROUTING .*REMORA' <<<"$first")" 1
expect_eq "one jump from OUTPUT" "$(grep -c -- '-A OUTPUT .*REMORA' <<<"$first")" 1
# every rule of the dry run is installed, exactly as written
want=$(sed -n '/IPv4/,/COMMIT/p' "$TMP/dry.txt" | grep '^-A' | sort)
got=$(grep '^-A' <<<"$first" | sort)
expect_eq "installed IPv4 rules are the dry-run document" "$got" "$want"
want6=$(sed -n '/IPv6/,/COMMIT/p' "$TMP/dry.txt" | grep '^-A' | sort)
expect_eq "installed IPv6 rules are the dry-run document" "$(grep '^-A' <<<"$first6" | sort)" \
    "$want6"
check "IPv6 exempts ::1" grep -q -- '-d ::1/128 -j RETURN' <<<"$first6"

# different flags replace the rules rather than adding to them
inA "$PROXY" iptables --exclude-inbound-ports 8082 --exclude-outbound-ports 9090 \
    --exclude-outbound-ip-ranges "10.231.0.3/32,fd31::3/128" >"$TMP/ipt3.log" 2>&1
third=$(saved "$A")
check "new flags: the exclusion is there" grep -q -- '--dport 8082 -j RETURN' <<<"$third"
check "new flags: the IPv6 range went to ip6tables" grep -q 'fd31::3/128' <<<"$(saved "$A" 6)"
expect_eq "new flags: still one jump from PREROUTING" \
    "$(grep -c -- '-A PREROUTING .*REMORA' <<<"$third")" 1
expect_eq "new flags: rule count grew by exactly the exclusions" \
    "$(($(grep -c '^-A' <<<"$third") - $(grep -c '^-A' <<<"$first")))" 3

# a duplicate jump someone added is repaired
inA iptables -t nat -A OUTPUT -p tcp -j REMORA_OUTPUT
inA "$PROXY" iptables --exclude-inbound-ports 8082 --exclude-outbound-ports 9090 \
    --exclude-outbound-ip-ranges "10.231.0.3/32,fd31::3/128" >"$TMP/ipt4.log" 2>&1
expect_eq "a duplicated jump is removed" "$(saved "$A")" "$third"

# usage errors change nothing and exit 2
inA "$PROXY" iptables --exclude-outbound-ip-ranges 10.0.0.0/40 >"$TMP/ipt5.log" 2>&1
expect_eq "bad CIDR: exit 2" "$?" 2
check "bad CIDR: the message names the flag" grep -q -- '--exclude-outbound-ip-ranges' \
    "$TMP/ipt5.log"
expect_eq "bad CIDR: rules untouched" "$(saved "$A")" "$third"

# no IPv6 address -> no ip6tables rules (a fresh namespace)
C=rm-cap-$$-c
ip netns add "$C" && on_exit "ip netns del $C"
ip netns exec "$C" "$PROXY" iptables >"$TMP/ipt6.log" 2>&1
expect_eq "IPv4-only namespace: exit 0" "$?" 0
check "IPv4-only namespace: no ip6tables chains" \
    bash -c "! ip netns exec $C ip6tables-save -t nat | grep -q REMORA"

# ---- a pod without IPv6: the injector's optional IPv6 listeners are skipped ------
D=rm-cap-$$-d
ip netns add "$D" && on_exit "ip netns del $D"
ip -n "$D" link set lo up
ip netns exec "$D" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1
v4cfg() { # OPTIONAL(true|false)
    cat <<EOF
{"admin": {"address": "127.0.0.1:15000"},
 "health": {"address": "0.0.0.0:15020", "address6": "[::1]:15020"},
 "listeners": [
   {"name": "inbound", "address": "0.0.0.0:15006", "direction": "inbound"},
   {"name": "outbound", "address": "127.0.0.1:15001", "direction": "outbound"},
   {"name": "inbound6", "address": "[::]:15006", "direction": "inbound", "optional": $1},
   {"name": "outbound6", "address": "[::1]:15001", "direction": "outbound", "optional": $1}]}
EOF
}
v4cfg true >"$TMP/v4only.json"
v4cfg false >"$TMP/v4strict.json"
bg proxy-v4only ip netns exec "$D" "$PROXY" -c "$TMP/v4only.json"
V4PID=$LASTPID
v4only_ready() { ready=$(ip netns exec "$D" curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/ready); [[ $ready == 200 ]]; }
ready=""
wait_until 20 v4only_ready
expect_eq "no IPv6 in the pod: the proxy is ready with its optional IPv6 listeners" "$ready" 200
check "... the one that cannot bind ([::1]) is skipped with a warning naming it" \
    grep -q 'warn .*listener outbound6: \[::1\]:15001 is not available here' "$TMP/proxy-v4only.log"
check "... as is an unavailable health.address6" \
    grep -q 'warn .*health: \[::1\]:15020 is not available here' "$TMP/proxy-v4only.log"
dump=$(ip netns exec "$D" curl -s -m 2 http://127.0.0.1:15000/config_dump)
expect_eq "... /config_dump marks it skipped, and shows the others' bound addresses" \
    "$(jq -c '[.listeners[] | .bound_address // "skipped"]' <<<"$dump")" \
    '["0.0.0.0:15006","127.0.0.1:15001","[::]:15006","skipped"]'
out=$(ip netns exec "$D" curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:15001/)
expect_match "... the IPv4 listeners serve (outbound to itself: a loop, refused)" "$out" '^508$'
stop_pid "$V4PID"
expect_eq "... and it exits 0 on SIGTERM" "$STOP_RC" 0
ip netns exec "$D" "$PROXY" -c "$TMP/v4strict.json" >"$TMP/v4strict.log" 2>&1 &
v4s=$!
_pids+=("$v4s")
wait_until 5 gone "$v4s"
wait "$v4s"
rc=$?
check "the same listeners without optional: the proxy refuses to start (exit $rc)" test "$rc" -ne 0
check "... naming the listener and the address" \
    grep -q 'listener outbound6: cannot listen on \[::1\]:15001' "$TMP/v4strict.log"

# ---- traffic ------------------------------------------------------------------
chmod 755 "$TMP" # the proxy (UID 1337) reads its config here
cat >"$TMP/proxy.json" <<EOF
{"admin": {"address": "127.0.0.1:15000"},
 "health": {"address": "0.0.0.0:15020", "address6": "[::]:15020"},
 "access_log": "-",
 "listeners": [
   {"name": "inbound", "address": "0.0.0.0:15006", "direction": "inbound"},
   {"name": "outbound", "address": "127.0.0.1:15001", "direction": "outbound"},
   {"name": "inbound6", "address": "[::]:15006", "direction": "inbound", "optional": true},
   {"name": "outbound6", "address": "[::1]:15001", "direction": "outbound", "optional": true}]}
EOF
chmod 644 "$TMP/proxy.json"
PROBERS='{"/app-health/app/readyz": {"httpGet": {"port": 8081, "path": "/status/204", "scheme": "HTTP"}},
 "/app-health/app/livez": {"httpGet": {"port": 8081, "path": "/status/503"}},
 "/app-health/app/startupz": {"httpGet": {"port": 8099, "path": "/"}},
 "/app-health/tls/readyz": {"httpGet": {"port": 8443, "path": "/", "scheme": "HTTPS"}},
 "/app-health/bad/readyz": "nonsense"}'

# (bg takes commands, not shell functions: the PID it records must be the process)
APP_USER=(setpriv --reuid=1000 --regid=1000 --clear-groups)
bg upstream-b9090 ip netns exec "$B" "$UPSTREAM" --listen "$B_IP:9090" --name b9090
bg upstream-b ip netns exec "$B" "$UPSTREAM" --listen "$B_IP:8080" --name b8080
bg upstream-b3 ip netns exec "$B" "$UPSTREAM" --listen "10.231.0.3:8080" --name b3
bg upstream-b6 ip netns exec "$B" "$UPSTREAM" --listen "[fd31::2]:8080" --name b6
bg app-a6 ip netns exec "$A" "${APP_USER[@]}" "$UPSTREAM" --listen "[::1]:8081" --name app6
bg app-a ip netns exec "$A" "${APP_USER[@]}" "$UPSTREAM" --listen 127.0.0.1:8081 --name app8081
bg app-a-excluded ip netns exec "$A" "${APP_USER[@]}" "$UPSTREAM" --listen 0.0.0.0:8082 \
    --name app8082
# an app serving HTTPS on its probe port (kubelet does not verify its certificate)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -keyout "$TMP/app-key.pem" -out "$TMP/app-cert.pem" -subj /CN=app 2>/dev/null
bg app-tls ip netns exec "$A" openssl s_server -accept 127.0.0.1:8443 -cert "$TMP/app-cert.pem" \
    -key "$TMP/app-key.pem" -www -quiet
inA "$PROXY" wait --timeout 0 >"$TMP/wait0.log" 2>&1
expect_eq "remora-proxy wait before the proxy runs: exit 1" "$?" 1
bg proxy ip netns exec "$A" env REMORA_APP_PROBERS="$PROBERS" POD_IP="$A_IP" \
    setpriv --reuid=1337 --regid=1337 --clear-groups "$PROXY" -c "$TMP/proxy.json"
PROXY_PID=$LASTPID
a_ready() { [[ $(inA curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/ready) == 200 ]]; }
ready=0
wait_until 20 a_ready && ready=1
expect_eq "proxy (UID 1337) ready in the pod namespace" "$ready" 1
check "proxy runs as UID 1337" \
    test "$(awk '/^Uid:/ {print $2}' "/proc/$PROXY_PID/status")" == 1337
b_app_up() { inB bash -c "(exec 3<>/dev/tcp/$B_IP/8080) 2>/dev/null"; }
a_app_up() { inA bash -c "(exec 3<>/dev/tcp/127.0.0.1/8081) 2>/dev/null"; }
wait_until 10 b_app_up
wait_until 10 a_app_up

log_has() { grep -q "$1" "$TMP/proxy.log"; }

# outbound: app (UID 1000) -> B, through 15001
body=$(as_app curl -s -m 5 "http://$B_IP:8080/capture/out-1")
check "app -> peer: answered by the peer's server" grep -q '"name": *"b8080"' <<<"$body"
check "app -> peer: crossed the outbound listener" \
    bash -c "grep '/capture/out-1' '$TMP/proxy.log' | grep -q '\"listener\":\"outbound\"'"
code=$(as_app curl -s -m 5 -o /dev/null -w '%{http_code}' --http2-prior-knowledge \
    "http://$B_IP:8080/capture/out-h2")
expect_eq "app -> peer over h2c: 200" "$code" 200
check "app -> peer over h2c: crossed the outbound listener" log_has '/capture/out-h2'
# root is captured too: only the proxy's UID is exempt
body=$(inA curl -s -m 5 "http://$B_IP:8080/capture/out-root")
check "root -> peer: captured as well" log_has '/capture/out-root'
# excluded port / range (installed above: 9090, 10.231.0.3/32): straight to the peer
body=$(as_app curl -s -m 5 "http://$B_IP:9090/capture/excluded-port")
check "excluded outbound port: answered" grep -q 'b9090' <<<"$body"
check "excluded outbound port: not through the proxy" bash -c "! grep -q excluded-port '$TMP/proxy.log'"
body=$(as_app curl -s -m 5 "http://10.231.0.3:8080/capture/excluded-range")
check "excluded outbound range: answered" grep -q '"b3"' <<<"$body"
check "excluded outbound range: not through the proxy" \
    bash -c "! grep -q excluded-range '$TMP/proxy.log'"
# IPv6: the same through ip6tables, SO_ORIGINAL_DST of an IPv6 connection
body=$(as_app curl -s -m 5 "http://[fd31::2]:8080/capture/out-v6")
check "IPv6 app -> peer: answered by the peer" grep -q '"b6"' <<<"$body"
check "IPv6 app -> peer: crossed the IPv6 outbound listener" \
    bash -c "grep '/capture/out-v6' '$TMP/proxy.log' | grep -q '\"listener\":\"outbound6\"'"
body=$(inB curl -s -m 5 "http://[$A_IP6]:8081/capture/in-v6")
check "IPv6 peer -> pod: answered by the app on ::1" grep -q '"app6"' <<<"$body"
check "IPv6 peer -> pod: crossed the IPv6 inbound listener" \
    bash -c "grep '/capture/in-v6' '$TMP/proxy.log' | grep -q '\"listener\":\"inbound6\"'"

# loop: a connection whose original destination is the proxy's own listener
code=$(as_app curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:15001/capture/loop")
expect_eq "app -> 127.0.0.1:15001 (the outbound listener itself): 508 loop" "$code" 508

# inbound: B -> A:8081 reaches the app on 127.0.0.1:8081 through 15006
body=$(inB curl -s -m 5 "http://$A_IP:8081/capture/in-1")
check "peer -> pod: answered by the app on loopback" grep -q 'app8081' <<<"$body"
check "peer -> pod: crossed the inbound listener" \
    bash -c "grep '/capture/in-1' '$TMP/proxy.log' | grep -q '\"listener\":\"inbound\"'"
body=$(inB curl -s -m 5 "http://$A_IP:8082/capture/in-excluded")
check "excluded inbound port: answered" grep -q 'app8082' <<<"$body"
check "excluded inbound port: not through the proxy" bash -c "! grep -q in-excluded '$TMP/proxy.log'"
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$A_IP:15006/capture/in-loop")
expect_eq "peer -> pod:15006 directly: 508 loop" "$code" 508
# the admin API stays loopback-only: its port is exempt, nothing listens on the pod IP
code=$(inB curl -s -m 3 -o /dev/null -w '%{http_code}' "http://$A_IP:15000/ready")
expect_eq "peer -> pod:15000 (admin): refused, never forwarded to 127.0.0.1:15000" "$code" 000

# health port, from outside the pod as kubelet would
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$A_IP:15020/healthz/ready")
expect_eq "kubelet -> pod:15020/healthz/ready: 200" "$code" 200
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$A_IP:15020/app-health/app/readyz")
expect_eq "rewritten readiness probe: the app's 204" "$code" 204
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://[$A_IP6]:15020/app-health/app/readyz")
expect_eq "... and over IPv6 (health.address6), as kubelet probes an IPv6 pod IP" "$code" 204
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$A_IP:15020/app-health/app/livez")
expect_eq "rewritten liveness probe: the app's 503" "$code" 503
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' \
    "http://$A_IP:15020/app-health/app/startupz")
expect_eq "probe of a port nobody listens on: 503" "$code" 503
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$A_IP:15020/app-health/tls/readyz")
expect_eq "rewritten HTTPS probe: sent over TLS, the app's 200" "$code" 200
code=$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$A_IP:15020/app-health/bad/readyz")
expect_eq "a malformed REMORA_APP_PROBERS entry: 404" "$code" 404
check "the probe did not cross the capture listeners" \
    bash -c "! grep -q '\"path\":\"/status/204\"' '$TMP/proxy.log'"
inA "$PROXY" wait --timeout 5 >"$TMP/wait1.log" 2>&1
expect_eq "remora-proxy wait (the postStart hook) with the proxy ready: exit 0" "$?" 0
inA "$PROXY" wait --timeout x >"$TMP/wait2.log" 2>&1
expect_eq "remora-proxy wait --timeout x: exit 2" "$?" 2
# issue 14: the classic sidecar's preStop, `remora-proxy wait --drain`
expect_eq "GET :15020/healthz/idle with nothing in flight: 200" \
    "$(inB curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$A_IP:15020/healthz/idle")" 200
as_app curl -s -m 20 -o "$TMP/slow.out" -w '%{http_code}' "http://$B_IP:8080/delay/6000" >"$TMP/slow.code" &
slow=$!
a_busy() { busy=$(inA curl -s -m 2 "http://127.0.0.1:15020/healthz/idle"); [[ $busy == busy* ]]; }
busy=
WAIT_UNTIL_STEP=0.05 wait_until 10 a_busy
expect_match "an outbound request in flight: /healthz/idle 503 busy" "$busy" '^busy: 1 requests and 0 TCP connections in flight'
t0=$(date +%s%N)
inA "$PROXY" wait --drain --timeout-ms 300 >"$TMP/drain0.log" 2>&1
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
expect_eq "wait --drain --timeout-ms 300 while busy: exit 0" "$rc" 0
expect_match "... after its bound, saying so" "$(cat "$TMP/drain0.log")" 'still busy after 300 ms'
# it returned on its own bound, not at the request's end: the request is still in flight
check "... in $ms ms, while the request is still in flight (not after the request's 6 s)" a_busy
inA "$PROXY" wait --drain --timeout-ms 20000 >"$TMP/drain1.log" 2>&1
rc=$?
wait "$slow"
expect_eq "wait --drain returns (exit 0) once the slow request is done" "$rc:$(cat "$TMP/slow.code")" 0:200
expect_match "... saying nothing is in flight" "$(cat "$TMP/drain1.log")" 'nothing in flight after [0-9]+ ms'
inA "$PROXY" wait --drain --timeout-ms x >"$TMP/drain2.log" 2>&1
expect_eq "remora-proxy wait --drain --timeout-ms x: exit 2" "$?" 2
inA "$PROXY" wait --drain --address 127.0.0.1:1 --timeout-ms 5000 >"$TMP/drain3.log" 2>&1
expect_match "wait --drain with no proxy answering: exit 0 at once" "$?:$(cat "$TMP/drain3.log")" '^0:.*does not answer'
metrics=$(inB curl -s -m 5 "http://$A_IP:15020/metrics")
check "merged /metrics carries the proxy's series" grep -q '^remora_requests_total' <<<"$metrics"

check "proxy still running" alive "$PROXY_PID"
stop_pid "$PROXY_PID"
expect_eq "proxy exits 0 on SIGTERM" "$STOP_RC" 0

finish
