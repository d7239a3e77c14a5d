#!/usr/bin/env bash
# The outbound path asks service discovery (issue 18, the first wired piece;
# docs/discovery.md "Proxy side"): the real injector's discovery service over
# mTLS, fed by the fake API server, and a proxy whose outbound listener is
# tls "mesh" (which without discovery wraps everything in mTLS). On loopback
# the connection's destination is the listener's fixed upstream, which the
# proxy looks up as it would an original destination:
#  - a pod in the registry that is not meshed gets the request as the app
#    sent it (plaintext), byte for byte;
#  - a meshed pod is reached over mTLS and must present exactly its identity
#    from the registry (secure naming): another workload's certificate -> 503;
#  - an address nothing in the registry has: passed through under allow_any,
#    502 "destination X is not in the mesh registry (outbound_policy
#    registry_only)" under registry_only (the app sees nothing), let out again
#    when egress_allow lists it; opaque TCP refused (closed) the same way;
#  - the unmeshed pod still answered under registry_only (it is in the registry);
#  - the injector stopped: the held answer keeps working (stale), and
#    /destinations and the series say so.
# The wire (docs/discovery.md "Proxy side", the transport), with discovery.address a name
# (localhost:PORT, resolved through the hosts file without blocking): 20 destinations looked up one
# after another go over one kept-alive lookup connection; the injector holds ONE
# POST /v1/watch listing them (its remora_discovery_watched_destinations/_subscribers, and
# `ss`: at most 3 connections from the proxy); an update arrives through it; a destination
# added while it is held is watched and updated; hostile watch bodies (malformed, 10,000
# entries, 2 MB, an unknown field, a bad address, no client certificate) get 400/401 naming
# what is wrong and leave the held watch alone, and the injector is sanitizer-clean; the
# injector restarted: every answer stale, then current again through a new watch.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

ca_pki || exit 1
for sa in client web other; do disc_workload "$sa" || exit 1; done

disc_registry || finish
# an unmeshed pod at 127.0.0.1 (the app below listens there)
disc_pod legacy-0 127.0.0.1 legacy false legacy

# a meshed pod at 127.0.0.3 running as shop/web (its sidecar is started below)
disc_pod web-0 127.0.0.3 web true web

disc_injector || finish

# the app: a recorder on 127.0.0.1 (in the registry), and one on 127.0.0.2 (outside it)
mkdir -p "$TMP/rec1" "$TMP/rec2"
bg rec1 python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/rec1" \
    --response 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
wait_until 5 listen_port "$TMP/rec1.log" || { fail "recorder 1 did not start"; finish; }
APP1=$LISTEN_PORT
APP2=$(free_port)
bg rec2 python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/rec2" --listen "127.0.0.2:$APP2" \
    --response 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
wait_until 5 listen_port "$TMP/rec2.log" || { fail "recorder 2 did not start"; cat "$TMP/rec2.log"; finish; }

# web_sidecar SA: the meshed pod's inbound sidecar on 127.0.0.3:$WEBP (strict mTLS, to the
# app on 127.0.0.1:$APP1), presenting the certificate of service account SA; sets SIDE_PID.
WEBP=$(free_port)
web_sidecar() { disc_sidecar "web-$1" "$1" "$APP1" "127.0.0.3:$WEBP"; }

# run_proxy NAME POLICY EGRESS-JSON: a proxy with two mesh outbound listeners (L1 -> APP1,
# L2 -> APP2) and a TCP one on an opaque port (L3 -> APP2); sets ADMIN_PORT, L1, L2, PROXY_PID.
run_proxy() {
    ADMIN_PORT=$(free_port); L1=$(free_port); L2=$(free_port); L3=$(free_port)
    disc_client "$1" "[$(outbound l1 "$L1" "127.0.0.1:$APP1"), $(outbound l2 "$L2" "127.0.0.2:$APP2"),
        $(outbound l3 "$L3" "127.0.0.3:$WEBP")]" "{\"outbound_policy\": \"$2\", \"egress_allow\": $3}"
    start_proxy "$1" "$TMP/$1.json"
}

REQ=$'GET /hello?x=1 HTTP/1.1\r\nHost: legacy.shop:80\r\nX-App: 1\r\n\r\n'
# send PORT: the app's request through the proxy; prints the status line and body
send() { printf '%s' "$REQ" | h1_exchange "$1"; }

run_proxy allow allow_any '[]' || finish
A=http://127.0.0.1:$ADMIN_PORT
expect_eq "unmeshed pod in the registry: plaintext, 200" "$(send "$L1")" "HTTP/1.1 200 OK ok"
got=$(head -c 400 "$TMP/rec1/all.bin")
expect_match "the app got the request as sent (path, Host, field)" "$got" \
    $'^GET /hello\\?x=1 HTTP/1.1\r\n.*[Hh]ost: legacy.shop:80\r\n'
expect_eq "outside the mesh, allow_any: passed through, 200" "$(send "$L2")" "HTTP/1.1 200 OK ok"
dest=$(curl -s "$A/destinations")
jq -r '.destinations[] | select(.last_error) | "   " + .destination + ": " + .last_error' <<<"$dest"
# (the outside address's request then looked its Host legacy.shop:80 up: no such Service)
expect_eq "/destinations: the pod (current), the outside address and its Host (not in the registry)" \
    "$(jq -c '[.destinations[] | [.destination, .state, (.answer.kind // "")]] | sort' <<<"$dest")" \
    "[[\"127.0.0.1:$APP1\",\"current\",\"pod\"],[\"127.0.0.2:$APP2\",\"not in the registry\",\"\"],[\"legacy.shop:80\",\"not in the registry\",\"\"]]"
expect_match "remora_egress_total passthrough" "$(curl -s "$A/metrics")" \
    'remora_egress_total\{decision="passthrough"\} 1'
# secure naming from discovery: the pod at 127.0.0.3 is shop/web
web_sidecar other || finish
n1=$(stat -c %s "$TMP/rec1/all.bin")
expect_eq "meshed pod answered by another workload: 503, never sent" "$(send "$L3")" \
    "HTTP/1.1 503 Service Unavailable upstream mTLS handshake failed: peer is spiffe://cluster.local/ns/shop/sa/other, expected spiffe://cluster.local/ns/shop/sa/web"
expect_eq "... the app behind it saw nothing" "$(stat -c %s "$TMP/rec1/all.bin")" "$n1"
expect_match "... the log names both identities" "$(cat "$TMP/allow.log")" \
    'peer is spiffe://cluster.local/ns/shop/sa/other, expected spiffe://cluster.local/ns/shop/sa/web'
stop_pid "$SIDE_PID"
expect_sanitizers_clean "web sidecar (other): sanitizers clean" "$TMP/web-other.log"
web_sidecar web || finish
n1=$(stat -c %s "$TMP/rec1/all.bin")
expect_eq "meshed pod answered by its own workload: mTLS, 200" "$(send "$L3")" "HTTP/1.1 200 OK ok"
check "... and the app behind its sidecar got the request" test "$(stat -c %s "$TMP/rec1/all.bin")" -gt "$n1"
stop_pid "$SIDE_PID"
expect_sanitizers_clean "web sidecar (web): sanitizers clean" "$TMP/web-web.log"
stop_pid "$PROXY_PID"
expect_sanitizers_clean "allow_any proxy: sanitizers clean" "$TMP/allow.log"

before=$(stat -c %s "$TMP/rec2/all.bin")
run_proxy strict registry_only '[]' || finish
A=http://127.0.0.1:$ADMIN_PORT
expect_eq "registry_only: 502 naming the destination (the request's Host)" "$(send "$L2")" \
    "HTTP/1.1 502 Bad Gateway destination legacy.shop:80 is not in the mesh registry (outbound_policy registry_only)"
expect_eq "registry_only: the outside app saw nothing" "$(stat -c %s "$TMP/rec2/all.bin")" "$before"
timed() { curl -s -o /dev/null -w '%{http_code} %{time_total}' -H 'Host: legacy.shop:80' "http://127.0.0.1:$1/t"; }
read -r c1 s1 <<<"$(timed "$L1")"
read -r c2 s2 <<<"$(timed "$L1")"
expect_eq "registry_only: the unmeshed pod in the registry still 200, twice" "$c1 $c2" "200 200"
echo "   measured (curl time_total): first request ${s1}s (a lookup over mTLS), second ${s2}s (a hit)"
tcp_answer=$(printf '\x00\x01\x02 not http\r\n' | tcp_exchange "$L2")
expect_eq "registry_only: opaque TCP to the outside address closed, nothing answered" "$tcp_answer" "closed 0"
expect_eq "registry_only: the outside app saw no TCP bytes either" "$(stat -c %s "$TMP/rec2/all.bin")" "$before"
expect_match "remora_egress_total refused (the request and the TCP connection)" \
    "$(curl -s "$A/metrics")" 'remora_egress_total\{decision="refused"\} 2'
expect_match "the refusal is logged with the destination" "$(cat "$TMP/strict.log")" \
    "egress: 127.0.0.2:$APP2 refused: not in the mesh registry"
# the injector stops: the held answer keeps working, stale
kill -TERM "$IPID"; wait "$IPID" 2>/dev/null
# shellcheck disable=SC2317 # called through wait_until
stale() { curl -s "$A/destinations" | jq -e --arg d "127.0.0.1:$APP1" \
    '.destinations[] | select(.destination == $d) | .stale' >/dev/null; }
check "injector stopped: the held answer turns stale" wait_until 30 stale
expect_eq "injector stopped: the known destination keeps working" "$(send "$L1")" "HTTP/1.1 200 OK ok"
stop_pid "$PROXY_PID"
expect_sanitizers_clean "registry_only proxy: sanitizers clean" "$TMP/strict.log"

ca_start_injector "$TMP/main.json" || { fail "injector restarts"; finish; }
check "injector synced again" wait_until 30 disc_readyz
run_proxy listed registry_only "[\"127.0.0.0/8:$APP2\"]" || finish
expect_eq "registry_only + egress_allow CIDR: let out, 200" "$(send "$L2")" "HTTP/1.1 200 OK ok"
expect_match "remora_egress_total allowed" "$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")" \
    'remora_egress_total\{decision="allowed"\} 1'
stop_pid "$PROXY_PID"
expect_sanitizers_clean "egress_allow proxy: sanitizers clean" "$TMP/listed.log"
# ---- the wire (keep-alive lookups, one watch for every destination, POST /v1/watch) -------
# 20 unmeshed pods at 127.0.2.1..20 and a proxy with a listener toward each (connect and
# close: the lookup is asked at accept; the app behind is not needed)
for i in $(seq 1 21); do disc_pod "w-$i" "127.0.2.$i" w false w; done
ADMIN_PORT=$(free_port)
WP=()
ls=()
for i in $(seq 1 21); do
    WP+=("$(free_port)")
    ls+=("$(outbound "w$i" "${WP[$((i - 1))]}" "127.0.2.$i:$APP1")")
done
disc_client many "[$(IFS=,; echo "${ls[*]}")]" "{\"discovery\": {\"address\": \"localhost:$DP\"}}"
imetric() { curl -s --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" "https://$SVC:$WH/metrics" |
    awk -v m="$1" '$1 == m {print $2}'; }
# shellcheck disable=SC2317
imetric_is() { [[ $(imetric "$1") == "$2" ]]; }
pings0=$(imetric 'remora_discovery_answers_total{code="204"}')
start_proxy many "$TMP/many.json" || finish
A=http://127.0.0.1:$ADMIN_PORT
# shellcheck disable=SC2317 # called through wait_until
n_state() { curl -s "$A/destinations" | jq --arg s "$1" '[.destinations[] | select(.state == $s)] | length'; }
# shellcheck disable=SC2317
states_are() { [[ $(n_state "$1") == "$2" ]]; }
pmetric() { curl -s "$A/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# shellcheck disable=SC2317
pmetric_is() { [[ $(pmetric "$1") == "$2" ]]; }
# the warm lookup connection: open before any destination is asked (the only proxy now)
check "the warm lookup connection is open before the first lookup (the proxy's gauge)" \
    wait_until 15 pmetric_is 'remora_discovery_connections{use="lookup"}' 1
check "... one connection at the injector (remora_discovery_connections 1)" \
    wait_until 15 imetric_is remora_discovery_connections 1
check "... warmed up: its GET /v1/ping answered 204 (remora_discovery_answers_total{code=\"204\"})" \
    wait_until 15 imetric_is 'remora_discovery_answers_total{code="204"}' $((pings0 + 1))
expect_eq "... opened warm, nothing asked yet (warm 1, opened 1, 0 entries)" \
    "$(pmetric 'remora_discovery_lookup_connections_total{event="warm"}') $(pmetric 'remora_discovery_lookup_connections_total{event="opened"}') $(curl -s "$A/destinations" | jq .entries)" "1 1 0"
for i in $(seq 1 20); do
    accepts "${WP[$((i - 1))]}"
    wait_until 15 states_are current "$i" || break
done
expect_eq "20 destinations looked up one after another: all current" "$(n_state current)" 20
expect_eq "discovery.address as a name (localhost, the hosts file): resolved without blocking" \
    "$(curl -s "$A/destinations" | jq -r '.discovery + " " + .resolved')" "localhost:$DP 127.0.0.1:$DP"
expect_eq "... over the warm lookup connection: the first miss too (opened 1, warm 1, reused 20: after its warm-up GET /v1/ping)" \
    "$(pmetric 'remora_discovery_lookup_connections_total{event="opened"}') $(pmetric 'remora_discovery_lookup_connections_total{event="warm"}') $(pmetric 'remora_discovery_lookup_connections_total{event="reused"}')" "1 1 20"
check "the injector holds one watch listing the 20 (remora_discovery_watched_destinations)" \
    wait_until 15 imetric_is remora_discovery_watched_destinations 20
expect_eq "... one held request (remora_discovery_subscribers)" "$(imetric remora_discovery_subscribers)" 1
nconn=$(ss -tnpH state established "( dport = :$DP )" | grep -c "pid=$PROXY_PID,")
check "the proxy has at most 3 connections to the discovery port (1 lookup + the watch's 2): $nconn" \
    test "$nconn" -le 3
# an update reaches the proxy through the batch watch: w-5 becomes meshed
disc_pod w-5 127.0.2.5 w true w
# shellcheck disable=SC2317
meshed_now() { curl -s "$A/destinations" | jq -e --arg d "127.0.2.$1:$APP1" \
    '.destinations[] | select(.destination == $d) | .answer.endpoints[0].meshed == true' >/dev/null; }
check "an update reaches the proxy through the watch (127.0.2.5 now meshed)" wait_until 15 meshed_now 5
# a destination added while the watch is held is watched
accepts "${WP[20]}"
check "a destination added while the watch is held: current" wait_until 15 states_are current 21
check "... and watched (21 listed)" wait_until 15 imetric_is remora_discovery_watched_destinations 21
disc_pod w-21 127.0.2.21 w true w
check "... its update arrives too" wait_until 15 meshed_now 21
expect_eq "remora_discovery_updates_total 2" "$(pmetric remora_discovery_updates_total)" 2

# hostile watch bodies at the injector: 400 naming what is wrong, nothing held
watch_post() { # BODY-FILE: "CODE BODY"
    curl -s -m 20 --cacert "$D/root.pem" --cert "$D/client.pem" --key "$D/client-key.pem" \
        --resolve "$SVC:$DP:127.0.0.1" -w ' %{http_code}' -H 'Content-Type: application/json' \
        --data-binary @"$1" "https://$SVC:$DP/v1/watch?timeout_s=1"
}
printf '{"watch": [{"addr": "127.0.2.1:%s"' "$APP1" >"$TMP/h1.json"
expect_match "malformed watch body: 400 not JSON" "$(watch_post "$TMP/h1.json")" 'body: not JSON.* 400$'
python3 -c 'import json; print(json.dumps({"watch": [{"addr": "10.1.%d.%d:80" % (i // 250, i % 250 + 1), "version": "a"} for i in range(10000)]}))' >"$TMP/h2.json"
expect_match "10,000 entries: 400 naming the bound" "$(watch_post "$TMP/h2.json")" \
    'watch: 10000 destinations, at most 4096.* 400$'
head -c 2000000 /dev/zero | tr '\0' ' ' >"$TMP/h3.json"
expect_match "a 2 MB body: 400 over the size bound" "$(watch_post "$TMP/h3.json")" \
    'body: over 524288 bytes.* 400$'
printf '{"watch": [{"addr": "127.0.2.1:%s", "versoin": "x"}]}' "$APP1" >"$TMP/h4.json"
expect_match "an unknown field: 400 naming it" "$(watch_post "$TMP/h4.json")" 'watch\[0\]: unknown field.* 400$'
printf '{"watch": [{"addr": "127.0.2.1:0"}]}' >"$TMP/h5.json"
expect_match "a bad address: 400 naming watch[0].addr" "$(watch_post "$TMP/h5.json")" 'watch\[0\]\.addr: .* 400$'
printf '{"watch": [{"addr": "127.0.2.1:%s", "version": "0"}]}' "$APP1" >"$TMP/h6.json"
expect_match "a stale version: answered at once with the current answer" "$(watch_post "$TMP/h6.json")" \
    '^\{"changed": \[\{"addr": "127.0.2.1:[0-9]+", "status": 200, "answer": \{.*\}\]\} 200$'
expect_eq "no client certificate: refused" "$(curl -s -m 10 --cacert "$D/root.pem" \
    --resolve "$SVC:$DP:127.0.0.1" -o /dev/null -w '%{http_code}' --data-binary @"$TMP/h6.json" \
    "https://$SVC:$DP/v1/watch")" "401"
expect_eq "after the hostile bodies: still one watch of 21 held" \
    "$(imetric remora_discovery_subscribers) $(imetric remora_discovery_watched_destinations)" "1 21"
# a watch listing one destination twice (adjacent in its wake bucket), held, then woken
v1=$(curl -s "$A/destinations" | jq -r --arg d "127.0.2.1:$APP1" '.destinations[] | select(.destination == $d) | .version')
printf '{"watch": [{"addr": "127.0.2.1:%s", "version": "%s"}, {"addr": "127.0.2.1:%s", "version": "%s"}]}' \
    "$APP1" "$v1" "$APP1" "$v1" >"$TMP/h7.json"
curl -s -m 30 --cacert "$D/root.pem" --cert "$D/client.pem" --key "$D/client-key.pem" --resolve "$SVC:$DP:127.0.0.1" \
    -w ' %{http_code}' --data-binary @"$TMP/h7.json" "https://$SVC:$DP/v1/watch?timeout_s=20" >"$TMP/h7.out" &
H7=$!
check "a watch listing one destination twice is held" wait_until 15 imetric_is remora_discovery_watched_destinations 23
ctl objects/pods -X PUT --data-binary '{"metadata": {"name": "w-1", "namespace": "shop",
    "labels": {"app": "w", "tier": "x"}, "annotations": {"remora.io/status": "{}"}},
    "spec": {"serviceAccountName": "w", "nodeName": "n1"},
    "status": {"phase": "Running", "podIP": "127.0.2.1", "podIPs": [{"ip": "127.0.2.1"}],
               "conditions": [{"type": "Ready", "status": "True"}]}}' >/dev/null
wait "$H7"
expect_match "... and answered once w-1 changes: 200 listing it" "$(cat "$TMP/h7.out")" \
    '^\{"changed": \[\{"addr": "127.0.2.1:[0-9]+", "status": 200, "answer": \{.*"meshed": ?true.*\}\]\} 200$'
check "... and nothing of it stays held (21 watched)" wait_until 15 imetric_is remora_discovery_watched_destinations 21

# the injector restarted: stale, then current again through a new watch
kill -TERM "$IPID"; wait "$IPID" 2>/dev/null
expect_sanitizers_clean "injector (watch bodies, held watches): sanitizers clean" "$TMP/injector-2.log"
check "injector stopped: every held answer turns stale" wait_until 30 states_are stale 21
ca_start_injector "$TMP/main.json" || { fail "injector restarts"; finish; }
check "injector back: all 21 current again" wait_until 60 states_are current 21
check "... watched again by one watch" wait_until 30 imetric_is remora_discovery_watched_destinations 21
# shellcheck disable=SC2317
warm_back() { pmetric_is 'remora_discovery_connections{use="lookup"}' 1 &&
    (($(pmetric 'remora_discovery_lookup_connections_total{event="warm"}') >= 2)); }
check "... and the warm lookup connection is back (re-opened with backoff, 1 open)" wait_until 60 warm_back
nconn=$(ss -tnpH state established "( dport = :$DP )" | grep -c "pid=$PROXY_PID,")
check "... the proxy has at most 3 connections to the discovery port: $nconn" test "$nconn" -le 3
stop_pid "$PROXY_PID"
expect_sanitizers_clean "many-destinations proxy: sanitizers clean" "$TMP/many.log"

# discovery down at start (nothing listens at its address): ready all the same, the warm
# connection retried with backoff (250 ms doubling), and a request still passes (allow_any)
ADMIN_PORT=$(free_port); L1=$(free_port)
disc_client down "[$(outbound l1 "$L1" "127.0.0.2:$APP2")]" \
    "{\"discovery\": {\"address\": \"127.0.0.1:$(free_port)\"}}"
t0=$(date +%s%N)
start_proxy down "$TMP/down.json" || finish
pass "discovery down at start: the proxy is ready ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"
A=http://127.0.0.1:$ADMIN_PORT
sleep 3
w=$(pmetric 'remora_discovery_lookup_connections_total{event="warm"}')
check "... the warm connection retried with backoff, not in a loop: $w tries in ~3 s" \
    test "$w" -ge 2 -a "$w" -le 6
expect_eq "... a request still passes (allow_any, outside the mesh)" "$(send "$L1")" "HTTP/1.1 200 OK ok"
stop_pid "$PROXY_PID"
expect_sanitizers_clean "discovery-down proxy: sanitizers clean" "$TMP/down.log"
finish
