#!/usr/bin/env bash
# Service discovery, the proxy side, as far as it is wired today
# (docs/discovery.md "Proxy side"): the bootstrap keys (discovery,
# outbound_policy, egress_allow) refused with the key named; a proxy with a
# "discovery" block starts with the destination cache, GET /destinations and
# its series on /metrics; /config_dump shows the keys; a proxy without one
# answers /destinations 404. The cache itself (lookups, long-polls, staleness,
# bounds) is covered by test/unit/proxy/test_discovery.c against a fake
# discovery service, the outbound path asking it by discovery_wire.sh.
source "$(dirname "$0")/../lib.sh"

if [[ ! -x $PROXY ]]; then
    fail "no proxy binary at $PROXY"
    finish
fi

CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || exit 1
"$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" \
    --spiffe-id spiffe://cluster.local/ns/shop/sa/web --out-cert "$D/w.pem" --out-key "$D/w-key.pem" \
    >/dev/null || exit 1
IDENTITY="\"identity\": {\"trust_domain\": \"cluster.local\", \"namespace\": \"shop\",
  \"service_account\": \"web\", \"cert_file\": \"$D/w.pem\", \"key_file\": \"$D/w-key.pem\",
  \"bundle_file\": \"$D/root.pem\"}"

# config_fails NAME EXTRA WANT: a proxy whose config has EXTRA (top-level keys) exits
# non-zero at start with WANT in its message.
config_fails() {
    local name=$1 extra=$2 want=$3 out rc
    cat >"$TMP/$name.json" <<JSON
{"listeners": [{"name": "out", "address": "127.0.0.1:$(free_port)", "direction": "outbound"}],
 $extra}
JSON
    out=$(timeout 20 "$PROXY" -c "$TMP/$name.json" 2>&1); rc=$?
    if ((rc != 0 && rc != 124)) && grep -qF -- "$want" <<<"$out"; then
        pass "config: $name refused: $want"
    else
        fail "config: $name (exit $rc): want \"$want\", got: $(head -3 <<<"$out")"
    fi
}
config_fails egress_no_port '"egress_allow": ["api.example.com"]' \
    'egress_allow[0]: "api.example.com": no port'
config_fails egress_bad_cidr '"egress_allow": ["10.0.0.0/40:443"]' \
    'egress_allow[0]: "10.0.0.0/40:443": the prefix length is not 0-32'
config_fails policy '"outbound_policy": "deny_all"' 'outbound_policy'
config_fails no_identity '"discovery": {"address": "127.0.0.1:15011"}' \
    'discovery: needs an "identity" block'
config_fails bad_address "\"discovery\": {\"address\": \"remora injector:15011\"}, $IDENTITY" \
    'discovery.address: "remora injector:15011" is not an address'
config_fails typo "\"discovery\": {\"address\": \"127.0.0.1:1\", \"lookup_timeout\": 5}, $IDENTITY" \
    'discovery.lookup_timeout: unknown key'

# ---- a proxy with discovery -----------------------------------------------------------
ADMIN_PORT=$(free_port); OUT=$(free_port); DISC=$(free_port)
cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "listeners": [{"name": "out", "address": "127.0.0.1:$OUT", "direction": "outbound"}],
 "discovery": {"address": "127.0.0.1:$DISC", "lookup_timeout_ms": 30000},
 "outbound_policy": "registry_only",
 "egress_allow": ["api.example.com:443", "*.googleapis.com:443", "203.0.113.0/24:80"],
 $IDENTITY}
JSON
# a discovery service that accepts and never answers: lookups wait their lookup_timeout_ms
bg silent python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
print("listening on 127.0.0.1:%d" % s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept(); held.append(c)' "$DISC"
wait_port "$DISC" || { fail "silent discovery service starts"; finish; }
start_proxy proxy "$TMP/proxy.json" || finish
A=http://127.0.0.1:$ADMIN_PORT
dest=$(curl -s "$A/destinations")
expect_eq "/destinations: no destination yet" \
    "$(jq -c '[.discovery, .outbound_policy, .entries, (.destinations | length)]' <<<"$dest")" \
    "[\"127.0.0.1:$DISC\",\"registry_only\",0,0]"
expect_match "log names the discovery service and the policy" "$(cat "$TMP/proxy.log")" \
    "discovery: asking 127.0.0.1:$DISC \\(remora-injector.remora-system.svc\\), outbound_policy registry_only, 3 egress_allow entries"
metrics=$(curl -s "$A/metrics")
expect_match "/metrics: remora_destinations" "$metrics" $'\nremora_destinations 0\n'
expect_match "/metrics: lookups by result" "$metrics" 'remora_discovery_lookups_total\{result="unavailable"\} 0'
expect_match "/metrics: requests to discovery" "$metrics" 'remora_discovery_requests_total\{outcome="sent"\} 0'
dump=$(curl -s "$A/config_dump")
expect_eq "/config_dump: the discovery keys" \
    "$(jq -c '[.discovery.lookup_timeout_ms, .outbound_policy, (.egress_allow | length)]' <<<"$dump")" \
    '[30000,"registry_only",3]'
# a connection whose destination is being looked up when the proxy stops
exec 7<>"/dev/tcp/127.0.0.1/$OUT"
printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' >&7
# shellcheck disable=SC2317 # called through wait_until
waiting() { curl -s "$A/destinations" | jq -e '.destinations[0].state == "looking up"' >/dev/null; }
check "a lookup in flight (the service does not answer)" wait_until 10 waiting
stop_pid "$PROXY_PID"
expect_eq "proxy exits 0 on SIGTERM with a lookup in flight" "$STOP_RC" 0
exec 7>&-
expect_sanitizers_clean "proxy: sanitizers clean" "$TMP/proxy.log"

# ---- a proxy without discovery -----------------------------------------------------------
ADMIN_PORT=$(free_port); OUT=$(free_port)
cat >"$TMP/plain.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "listeners": [{"name": "out", "address": "127.0.0.1:$OUT", "direction": "outbound"}]}
JSON
start_proxy plain "$TMP/plain.json" || finish
code=$(curl -s -o "$TMP/nodisc.json" -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/destinations")
expect_eq "no discovery: /destinations 404" "$code $(jq -r .error "$TMP/nodisc.json")" \
    "404 /destinations: no \"discovery\" in the bootstrap configuration"
stop_pid "$PROXY_PID"
expect_sanitizers_clean "plain proxy: sanitizers clean" "$TMP/plain.log"
finish
