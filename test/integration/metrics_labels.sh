#!/usr/bin/env bash
# Issue 18, the request labels (docs/observability.md "destination_service and
# source_principal"): the real injector's discovery service over mTLS, fed by the
# fake API server (the set-up of discovery_wire.sh), and one proxy with
#  - an outbound listener whose destination is the ClusterIP of the Service shop/web:
#    remora_requests_total and the duration histogram carry
#    destination_service="shop/web";
#  - an outbound listener to an address nothing in the registry has:
#    destination_service="external";
#  - an inbound permissive listener with a policy file that says
#    "metrics": {"source_principal": true}: source_principal="spiffe://..." over mTLS,
#    "unauthenticated" in plaintext; the policy reloaded without the key: no label on
#    the new requests; a bad "metrics" key refused on reload, naming the key;
#  - 300 distinct client identities: 254 values, then "other", counted (the bound).
# A proxy without a discovery block keeps its outbound series as they were.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

ca_pki || exit 1
for sa in client frontend; do disc_workload "$sa" || exit 1; done

# the apps: shop/web on 127.0.0.5:$SP, both its ClusterIP and its one endpoint's address
# (with discovery the proxy balances over the endpoints, docs/routes.md "Services";
# without it the request goes to the ClusterIP), an outside one on 127.0.0.2, the
# inbound app on 127.0.0.1
SP=$(free_port)
mkdir -p "$TMP/web" "$TMP/ext" "$TMP/in"
OK='HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
bg web python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/web" --listen "127.0.0.5:$SP" --response "$OK"
wait_until 5 listen_port "$TMP/web.log" || { fail "web app starts"; cat "$TMP/web.log"; finish; }
EXTP=$(free_port)
bg ext python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/ext" --listen "127.0.0.2:$EXTP" --response "$OK"
wait_until 5 listen_port "$TMP/ext.log" || { fail "outside app starts"; cat "$TMP/ext.log"; finish; }
bg inapp python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/in" --response "$OK"
wait_until 5 listen_port "$TMP/inapp.log" || { fail "inbound app starts"; finish; }
INAPP=$LISTEN_PORT

disc_registry || finish
ctl objects/services -X PUT --data-binary "{\"metadata\": {\"name\": \"web\", \"namespace\": \"shop\"},
    \"spec\": {\"clusterIP\": \"127.0.0.5\", \"clusterIPs\": [\"127.0.0.5\"], \"selector\": {\"app\": \"web\"},
               \"ports\": [{\"name\": \"http\", \"port\": $SP, \"targetPort\": $SP, \"protocol\": \"TCP\"}]}}" >/dev/null
ctl objects/endpointslices -X PUT --data-binary "{\"metadata\": {\"name\": \"web-0\", \"namespace\": \"shop\",
    \"labels\": {\"kubernetes.io/service-name\": \"web\"}}, \"addressType\": \"IPv4\",
    \"ports\": [{\"name\": \"http\", \"port\": $SP, \"protocol\": \"TCP\"}],
    \"endpoints\": [{\"addresses\": [\"127.0.0.5\"], \"conditions\": {\"ready\": true}}]}" >/dev/null

disc_injector || finish

echo '{"metrics": {"source_principal": true}}' >"$TMP/policy.json"
# run_proxy NAME DISCOVERY(0/1): the proxy; sets ADMIN_PORT, LWEB, LEXT, LIN, PROXY_PID, A
run_proxy() {
    ADMIN_PORT=$(free_port); LWEB=$(free_port); LEXT=$(free_port); LIN=$(free_port)
    local tls=disabled filter='del(.discovery)'
    (($2)) && tls=mesh && filter=.
    disc_client "$1" "[$(outbound web "$LWEB" "127.0.0.5:$SP" "$tls"), $(outbound ext "$LEXT" "127.0.0.2:$EXTP" "$tls"),
        {\"name\": \"in\", \"address\": \"127.0.0.1:$LIN\", \"direction\": \"inbound\", \"tls\": \"permissive\",
         \"upstream\": \"127.0.0.1:$INAPP\"}]" \
        "{\"discovery\": {\"lookup_timeout_ms\": 5000}, \"policy_file\": \"$TMP/policy.json\"}" "$filter"
    start_proxy "$1" "$TMP/$1.json" || return 1
    A=http://127.0.0.1:$ADMIN_PORT
}
get() { curl -s -m 20 -o /dev/null -w '%{http_code}' "$@"; }
# metric SERIES: its value on /metrics, or "none"
metric() {
    curl -s "$A/metrics" | awk -v k="$1" 'index($0, k " ") == 1 { print $2; f = 1 } END { if (!f) print "none" }'
}
R='remora_requests_total{listener="web",direction="outbound",method_class="read",code="200"'
RX='remora_requests_total{listener="ext",direction="outbound",method_class="read",code="200"'
RI='remora_requests_total{listener="in",direction="inbound",method_class="read",code="200"'

run_proxy labels 1 || finish
expect_eq "shop/web through its ClusterIP: 200, three times" \
    "$(get "http://127.0.0.1:$LWEB/a") $(get "http://127.0.0.1:$LWEB/b") $(get "http://127.0.0.1:$LWEB/c")" \
    "200 200 200"
expect_match "... the app got them" "$(head -c 300 "$TMP/web/all.bin")" '^GET /a HTTP/1.1'
expect_eq "the outside address: 200 (allow_any)" "$(get "http://127.0.0.1:$LEXT/x")" 200
dest=$(curl -s "$A/destinations")
expect_eq "/destinations: shop/web's ClusterIP is the Service" \
    "$(jq -r --arg d "127.0.0.5:$SP" '.destinations[] | select(.destination == $d) | .answer.service' <<<"$dest")" \
    shop/web
expect_eq "remora_requests_total: destination_service=\"shop/web\" 3" \
    "$(metric "$R,destination_service=\"shop/web\"}")" 3
expect_eq "remora_requests_total: destination_service=\"external\" 1" \
    "$(metric "$RX,destination_service=\"external\"}")" 1
expect_eq "no unlabelled outbound series in a proxy with discovery" "$(metric "$R}") $(metric "$RX}")" \
    "none none"
expect_eq "the duration histogram by destination_service" \
    "$(metric 'remora_request_duration_seconds_count{listener="web",direction="outbound",destination_service="shop/web"}')" 3
expect_eq "... and its +Inf bucket" \
    "$(metric 'remora_request_duration_seconds_bucket{listener="web",direction="outbound",destination_service="shop/web",le="+Inf"}')" 3
expect_eq "/stats: the series with its label" \
    "$(curl -s "$A/stats" | jq -c '[.. | objects | select(.destination_service == "shop/web" and .code == "200") | .count]')" \
    '[3]'

# inbound: source_principal by the policy file
tls_in() { get -k --cert "$D/$1.pem" --key "$D/$1-key.pem" "https://127.0.0.1:$LIN/$2"; }
expect_eq "inbound over mTLS as shop/frontend: 200, twice" "$(tls_in frontend p) $(tls_in frontend q)" "200 200"
expect_eq "inbound in plaintext: 200" "$(get "http://127.0.0.1:$LIN/plain")" 200
expect_eq "source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\" 2" \
    "$(metric "$RI,source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\"}")" 2
expect_eq "source_principal=\"unauthenticated\" 1" "$(metric "$RI,source_principal=\"unauthenticated\"}")" 1
expect_eq "inbound series carry no destination_service" \
    "$(curl -s "$A/metrics" | grep -c 'listener="in".*destination_service')" 0
expect_eq "outbound series carry no source_principal" \
    "$(curl -s "$A/metrics" | grep -c 'direction="outbound".*source_principal')" 0

# hot reload: a bad key is refused naming it, the policy in force stays
echo '{"metrics": {"source_principals": true}}' >"$TMP/policy.json"
out=$(curl -s -X POST "$A/policy/reload")
expect_match "policy reload refuses an unknown metrics key, naming it" "$out" 'metrics.source_principals: unknown key'
expect_eq "... the label stays" "$(tls_in frontend r) $(metric "$RI,source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\"}")" "200 3"
echo '{"metrics": {"source_principal": "yes"}}' >"$TMP/policy.json"
expect_match "policy reload refuses a wrong type, naming the key" "$(curl -s -X POST "$A/policy/reload")" \
    'metrics.source_principal: expected true or false'
# without the key: no label on new requests
echo '{}' >"$TMP/policy.json"
curl -s -X POST "$A/policy/reload" >/dev/null
expect_eq "policy without the key: 200" "$(tls_in frontend s)" 200
expect_eq "... counted without source_principal" "$(metric "$RI}")" 1
expect_eq "... the labelled series is unchanged" \
    "$(metric "$RI,source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\"}")" 3

# the bound: 300 distinct identities; 254 values ("other" is the 255th), then "other"
echo '{"metrics": {"source_principal": true}}' >"$TMP/policy.json"
curl -s -X POST "$A/policy/reload" >/dev/null
mkdir -p "$TMP/ids"
for i in $(seq 1 300); do
    "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" \
        --spiffe-id "spiffe://cluster.local/ns/load/sa/sa-$i" --out-cert "$TMP/ids/$i.pem" \
        --out-key "$TMP/ids/$i-key.pem" >/dev/null || { fail "workload certificate $i"; break; }
done
nok=0
for i in $(seq 1 300); do
    [[ $(get -k --cert "$TMP/ids/$i.pem" --key "$TMP/ids/$i-key.pem" "https://127.0.0.1:$LIN/load") == 200 ]] &&
        nok=$((nok + 1))
done
expect_eq "300 requests from 300 identities: 200" "$nok" 300
m=$(curl -s "$A/metrics")
# 2 values before the flood (frontend, unauthenticated) + 252 of the 300 = 254
expect_eq "remora_metrics_label_values{label=\"source_principal\"}: the bound (254 + other)" \
    "$(metric 'remora_metrics_label_values{label="source_principal"}')" 255
expect_eq "remora_metrics_label_folded_total{label=\"source_principal\"}: the other 48" \
    "$(metric 'remora_metrics_label_folded_total{label="source_principal"}')" 48
expect_eq "source_principal=\"other\" holds them" "$(metric "$RI,source_principal=\"other\"}")" 48
expect_eq "the first identities have their own series" \
    "$(metric "$RI,source_principal=\"spiffe://cluster.local/ns/load/sa/sa-1\"}")" 1
expect_eq "... the last ones do not" \
    "$(metric "$RI,source_principal=\"spiffe://cluster.local/ns/load/sa/sa-300\"}")" none
nlines=$(grep -c '^remora_requests_total{listener="in"' <<<"$m")
check "inbound series stay bounded ($nlines)" test "$nlines" -le 260
stop_pid "$PROXY_PID"
expect_eq "proxy exits 0" "$STOP_RC" 0
expect_sanitizers_clean "labels proxy: sanitizers clean" "$TMP/labels.log"

# without a discovery block: the outbound series as before
echo '{}' >"$TMP/policy.json"
run_proxy plain 0 || finish
expect_eq "no discovery: shop/web's address 200" "$(get "http://127.0.0.1:$LWEB/a")" 200
expect_eq "no discovery: the series has no destination_service" "$(metric "$R}")" 1
expect_eq "... nor any other series" "$(curl -s "$A/metrics" | grep -c 'destination_service=')" 0
stop_pid "$PROXY_PID"
expect_sanitizers_clean "plain proxy: sanitizers clean" "$TMP/plain.log"
kill -TERM "$IPID"; wait "$IPID" 2>/dev/null
expect_sanitizers_clean "injector: sanitizers clean" "$TMP/injector-1.log"
finish
