#!/usr/bin/env bash
# Issue 18 end to end: service discovery in a cluster of pods (test/e2e, docs/e2e.md
# "Service discovery"). The injector runs its discovery service against a fake API server
# (test/tools/fake_apiserver.py) that describes the pods started here; every injected
# proxy asks it (the template's discovery block, pointed at the node's IP by the harness;
# outbound_policy and egress_allow per pod through pod.py's e2e.remora.io/bootstrap-merge).
#
#   web-0..2  shop/web (sa web), meshed: three replicas behind the Service web,
#             ClusterIP 10.96.0.10:80 -> 8080, which nothing listens on (as in a pod,
#             where kube-proxy's rules are on the node)
#   web-x     registered as a web replica (sa web), but runs as sa rogue; alone behind
#             the Service web-canary (10.96.0.11), and for one check among web's replicas
#   legacy    not meshed (remora.io/inject: "false"), in the registry, Service legacy
#             (10.96.0.12)
#   client    an unmodified curl client, outbound_policy allow_any
#   locked    the same, registry_only
#   listed    registry_only, egress_allow: the internet host by address (:80), by Host
#             name (:8080) and by SNI (:443)
#   internet  a namespace on the bridge at 198.51.100.10 (outside the pod and service
#             ranges; the node routes to it): HTTP on :80 and :8080, HTTPS on :443 with a
#             certificate for api.example.test from its own CA
# Every app records what reached it (h1_recorder.py, internet.py): counts per replica and
# bytes are asserted there, not only at the client. Root only.
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: e2e_discovery.sh needs root (network namespaces, iptables, mounts); nothing was run"
    exit 0
fi
for tool in ip setpriv unshare curl jq node kubectl python3 openssl; do
    command -v "$tool" >/dev/null || { fail "$tool is not installed (scripts/deps.sh)"; finish; }
done
# shellcheck source=../e2e/lib.sh
source "$REMORA_ROOT/test/e2e/lib.sh"
# shellcheck source=../e2e/lib_discovery.sh
source "$REMORA_ROOT/test/e2e/lib_discovery.sh"
T0=$EPOCHSECONDS

SPIFFE=spiffe://cluster.local/ns/shop/sa
WEB_VIP=10.96.0.10
CANARY_VIP=10.96.0.11
LEGACY_VIP=10.96.0.12
declare -A IP=([web-0]=10.232.0.21 [web-1]=10.232.0.22 [web-2]=10.232.0.23 [web-x]=10.232.0.24
    [legacy]=10.232.0.30 [client]=10.232.0.41 [locked]=10.232.0.42 [listed]=10.232.0.43)
INET_IP=198.51.100.10
INET_NS=rm-e2e-$$-inet
INET_NAME=api.example.test

# ---- the registry: what the API server says about the pods started below -----------------
# called by e2e_cluster before the injector starts (test/e2e/lib.sh)
e2e_registry() {
    put pods "$(for p in web-0 web-1 web-2 web-x; do reg_pod "$p" web true; done | jq -s .)" &&
        put pods "$(reg_pod legacy legacy false)" &&
        put pods "$(for p in client locked listed; do reg_pod "$p" "$p" true; done | jq -s .)" &&
        put services "$(reg_service web $WEB_VIP)" &&
        put services "$(reg_service web-canary $CANARY_VIP)" &&
        put services "$(reg_service legacy $LEGACY_VIP)" &&
        put endpointslices "$(reg_slice web web-0 web-1 web-2)" &&
        put endpointslices "$(reg_slice web-canary web-x)" &&
        put endpointslices "$(reg_slice legacy legacy)"
}

# shellcheck disable=SC2034 # read by e2e_cluster (test/e2e/lib.sh)
E2E_DISCOVERY=1
e2e_cluster || { fail "cluster setup (node namespace, PKI, fake API server, injector with discovery)"; finish; }
pass "cluster: node namespace, fake API server, remora-injector (webhook, CA, discovery on $E2E_NODE_IP:$E2E_DISC_PORT, synced)"
e2e_configmap shop/remora-ca-root root.pem "$E2E/pki/root.pem"

# ---- pods ------------------------------------------------------------------------------
mkdir -p "$E2E/rec"
# manifest NAME SA ANNOTATIONS-JSON CONTAINERS-JSON [SPEC-JSON]: SPEC-JSON is merged into spec
manifest() {
    jq -n --arg name "$1" --arg sa "$2" --argjson ann "$3" --argjson cs "$4" --argjson spec "${5:-{\}}" '{
        apiVersion: "v1", kind: "Pod",
        metadata: {name: $name, namespace: "shop", labels: {app: ($name | sub("-[0-9x]$"; ""))},
                   annotations: $ann},
        spec: ({serviceAccountName: $sa, terminationGracePeriodSeconds: 10,
                securityContext: {runAsUser: 1000, runAsGroup: 1000},
                containers: $cs} + $spec)}' >"$E2E/$1.json"
}
# recorder NAME: the app, h1_recorder.py on :8080 recording into $E2E/rec/NAME, answering NAME
recorder() {
    mkdir -p "$E2E/rec/$1" && chmod 777 "$E2E/rec/$1"
    jq -n --arg dir "$E2E/rec/$1" --arg resp "HTTP/1.1 200 OK\\r\\nContent-Length: ${#1}\\r\\n\\r\\n$1" '[
        {name: "app", image: "remora-e2e/recorder",
         args: ["--dir", $dir, "--listen", "0.0.0.0:8080", "--response", $resp],
         readinessProbe: {httpGet: {path: "/ready", port: 8080}, periodSeconds: 1}}]'
}
TOOLBOX='[{"name": "client", "image": "remora-e2e/toolbox"}]'
# the clients know the internet host by name as a cluster's DNS would tell them: the pod's
# /etc/hosts (hostAliases), read by curl and by the sidecar (evdns), which checks that a
# destination allowed by name is an address of that name
DNS="{\"hostAliases\": [{\"ip\": \"$INET_IP\", \"hostnames\": [\"$INET_NAME\"]}]}"
for p in web-0 web-1 web-2; do manifest "$p" web '{}' "$(recorder "$p")"; done
manifest web-x rogue '{}' "$(recorder web-x)"
manifest legacy legacy '{"remora.io/inject": "false"}' "$(recorder legacy)"
manifest client client '{}' "$TOOLBOX" "$DNS"
manifest locked locked '{"e2e.remora.io/bootstrap-merge": "{\"outbound_policy\": \"registry_only\"}"}' \
    "$TOOLBOX" "$DNS"
EGRESS="[\"$INET_IP/32:80\", \"$INET_NAME:8080\", \"$INET_NAME:443\"]"
manifest listed listed "$(jq -n --argjson e "$EGRESS" \
    '{"e2e.remora.io/bootstrap-merge": ({outbound_policy: "registry_only", egress_allow: $e} | tojson)}')" \
    "$TOOLBOX" "$DNS"
PODS=(web-0 web-1 web-2 web-x legacy client locked listed)
for p in "${PODS[@]}"; do e2e_pod_start "$p" "${IP[$p]}" "$E2E/$p.json"; done
for p in "${PODS[@]}"; do check "pod $p Ready" e2e_pod_wait "$p"; done
expect_eq "the injected bootstraps ask the node's discovery service; locked and listed have their outbound policies" \
    "$(for p in client locked listed; do
        jq -c '.metadata.annotations["remora.io/bootstrap"] | fromjson |
            [.discovery.address, (.outbound_policy // "allow_any"), (.egress_allow // [] | length)]' \
            "$E2E/pods/$p/pod.json"; done | jq -sc .)" \
    "[[\"$E2E_NODE_IP:$E2E_DISC_PORT\",\"allow_any\",0],[\"$E2E_NODE_IP:$E2E_DISC_PORT\",\"registry_only\",0],[\"$E2E_NODE_IP:$E2E_DISC_PORT\",\"registry_only\",3]]"
expect_eq "web-x runs as service account rogue (its certificate from the CA)" \
    "$(e2e_exec web-x remora-proxy curl -s -m 5 http://127.0.0.1:15000/certs | jq -r '.. | .spiffe_id? // empty' | head -1)" \
    "$SPIFFE/rogue"

# ---- the "internet" host ---------------------------------------------------------------
# its own namespace on the bridge, 198.51.100.10/32; the node routes to it (and forwards:
# a sysctl of the node's namespace only), it routes the pod range on-link
mkdir -p "$E2E/inet" && chmod 755 "$E2E/inet"
inet_up() {
    (cd "$E2E/inet" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -keyout ca-key.pem -out ca.pem -subj "/CN=internet root" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout srv-key.pem \
            -out srv.csr -subj "/CN=$INET_NAME" &&
        printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$INET_NAME" >srv.ext &&
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
            -extfile srv.ext -out srv.pem && chmod 644 ca.pem) >"$E2E/inet/pki.log" 2>&1 || return 1
    ip netns add "$INET_NS" || return 1
    on_exit "ip netns del $INET_NS"
    _e2e_in_node ip link add v-inet type veth peer name eth0 netns "$INET_NS" &&
        _e2e_in_node ip link set v-inet master br0 up &&
        ip netns exec "$INET_NS" ip link set lo up &&
        ip netns exec "$INET_NS" ip link set eth0 up &&
        ip netns exec "$INET_NS" ip addr add "$INET_IP/32" dev eth0 &&
        ip netns exec "$INET_NS" ip route add 10.232.0.0/24 dev eth0 &&
        _e2e_in_node ip route add "$INET_IP/32" dev br0 &&
        _e2e_in_node sysctl -qw net.ipv4.ip_forward=1 || return 1
    mkdir -p "$E2E/inet/rec"
    bg internet ip netns exec "$INET_NS" python3 "$REMORA_ROOT/test/e2e/internet.py" --dir "$E2E/inet/rec" \
        --host "$INET_IP" --http 80 --http 8080 --tls 443 --cert "$E2E/inet/srv.pem" --key "$E2E/inet/srv-key.pem"
    wait_until 10 bash -c "[[ \$(grep -c '^listening on' '$TMP/internet.log') == 3 ]]"
}
check "internet host up at $INET_IP (HTTP :80, :8080, HTTPS :443 as $INET_NAME)" inet_up

CA_INET=(--cacert "$E2E/inet/ca.pem")
WEBS=(web-0 web-1 web-2)

# ---- a ClusterIP nothing listens on, in front of three meshed replicas --------------------
_e2e_in_node curl -s -m 3 -o /dev/null "http://$WEB_VIP/"
rc=$?
expect_match "the node has nothing at $WEB_VIP:80 (curl exit $rc): only the mesh can reach the Service" "$rc" '^(7|28)$'
e2e_exec legacy app curl -s -m 3 -o /dev/null "http://$WEB_VIP/probe-legacy"
rc=$?
expect_match "a pod without a sidecar cannot reach the ClusterIP either (curl exit $rc)" "$rc" '^(7|28)$'

first=$(pc client -m 15 -w ' %{http_code}' "http://$WEB_VIP/first")
expect_match "client -> Service web ($WEB_VIP:80): a replica answers through the mesh" "$first" '^web-[012] 200$'
# without that, the bulk runs below would wait out a connect timeout per request: each of
# their checks fails at once instead, saying so
VIP_OK=""
[[ $first =~ ^web-[012]\ 200$ ]] && VIP_OK=1
not_run() { fail "$1: not run, the Service's ClusterIP did not answer ('$first')"; }

# At 100 requests a second, as a client with steady traffic sends them: each replica's
# first request pays its sidecars' TLS handshake, a peak the balancer's latency estimate
# (peak-EWMA, docs/routes.md "Choosing an endpoint") takes a few seconds to forget: a
# replica may get nothing for the first ~3 s (measured: requests 9 to 314 of 600 at
# 100/s), and a scheduling hiccup on a loaded machine does the same later; so the run
# lasts 10 s and each replica must get at least 5% (107 of 1,000 was the least seen).
N1=1000
spread_run() {
    out=$(pc client -m 120 --rate 100/s -w ' %{http_code}\n' "http://$WEB_VIP/spread/[1-$N1]")
    expect_eq "client -> web ($WEB_VIP:80), $N1 requests on one keep-alive connection (100/s): all 200" \
        "$(grep -c ' 200$' <<<"$out")" "$N1"
    total=0 xfcc=0
    for w in "${WEBS[@]}"; do
        n=$(hits "$w" /spread/)
        total=$((total + n))
        seen=$(grep -c "^$w 200\$" <<<"$out")
        if ((n >= N1 / 20)); then
            pass "$w's app got $n of the $N1 requests (at least 5%; the client saw $seen answers from it)"
        else
            fail "$w's app got $n of the $N1 requests, want at least $((N1 / 20)) (spread over the three;" \
                "it answered requests no. $(grep -n "^$w 200\$" <<<"$out" | cut -d: -f1 | head -20 | tr '\n' ' '))"
        fi
        expect_eq "$w: the answers the client got from it are the requests its app recorded" "$seen" "$n"
        xfcc=$((xfcc + $(with_header "$w" /spread/ "x-forwarded-client-cert: By=$SPIFFE/web;URI=$SPIFFE/client")))
    done
    expect_eq "the three replicas' apps recorded $N1 requests in all (none lost, none doubled)" "$total" "$N1"
    expect_eq "each of them came with the client's SPIFFE ID (mTLS between the sidecars, XFCC)" "$xfcc" "$N1"
    expect_eq "client's sidecar holds web's three endpoints (/destinations)" \
        "$(dest_endpoints client "$WEB_VIP:80")" "${IP[web-0]}:8080 ${IP[web-1]}:8080 ${IP[web-2]}:8080"
}
if [[ -n $VIP_OK ]]; then
    spread_run
else
    not_run "client -> web, $N1 requests spread over the three replicas over mTLS"
fi

# ---- scale to two during 2,000 requests ---------------------------------------------------
# The change itself (the EndpointSlice update pushed to the client's sidecar by the
# discovery service, then the pod deleted) is made and checked in any case; the 2,000
# requests around it only when the ClusterIP answers (see not_run).
N2=2000
sum_scale() { echo $(($(hits web-0 /scale/) + $(hits web-1 /scale/) + $(hits web-2 /scale/))); }
scaled() { (($(sum_scale) >= $1)); }
two() { [[ $(dest_endpoints client "$WEB_VIP:80") == "${IP[web-0]}:8080 ${IP[web-1]}:8080" ]]; }
at_change="" w2_after_update="" w2_deleted=""
if [[ -n $VIP_OK ]]; then
    pc client -m 180 --rate 200/s -w ' %{http_code}\n' "http://$WEB_VIP/scale/[1-$N2]" \
        >"$E2E/scale.out" 2>"$E2E/scale.err" &
    scale_pid=$!
    wait_until 60 scaled 500 || fail "scale: the first 500 requests did not reach the replicas in 60 s"
fi
t0=${EPOCHREALTIME/./}
put endpointslices "$(reg_slice web web-0 web-1)" || fail "scale to two: the fake API server took the EndpointSlice"
at_change=$(sum_scale)
if WAIT_UNTIL_STEP=0.02 wait_until 15 two; then
    # when the sidecar swapped its answer: /destinations' changed_ms_ago, read now
    t1=${EPOCHREALTIME/./}
    ago=$(admin client /destinations | jq --arg d "$WEB_VIP:80" '.destinations[] | select(.destination == $d) | .changed_ms_ago')
    t2=${EPOCHREALTIME/./}
    pass "scale to two: the client's sidecar got the EndpointSlice change pushed by discovery ($((((t1 + t2) / 2 - t0) / 1000 - ago)) ms from the PUT to the fake API server to the sidecar's swap)"
else
    fail "scale to two: the client's sidecar still holds '$(dest_endpoints client "$WEB_VIP:80")' 15 s after the change"
fi
w2_after_update=$(hits web-2 /scale/)
# then the replica goes away, as a scale-down deletes the pod
e2e_delete web-2
w2_deleted=$(sum_scale)
scale_run() {
    wait "$scale_pid"
    expect_eq "scale to two during $N2 requests: every one answered 200" \
        "$(grep -c ' 200$' "$E2E/scale.out")" "$N2"
    grep -v ' 200$' "$E2E/scale.out" | sort | uniq -c | head -5
    if ((at_change >= 500 && at_change < N2 && w2_deleted < N2)); then
        pass "the change came during the run (at request $at_change; web-2 deleted by request $w2_deleted)"
    else
        fail "the change did not come during the run (at $at_change, web-2 deleted by $w2_deleted)"
    fi
    s0=$(hits web-0 /scale/) s1=$(hits web-1 /scale/) s2=$(hits web-2 /scale/)
    expect_eq "the replicas' apps recorded $N2 requests in all (web-0 $s0, web-1 $s1, web-2 $s2)" \
        "$((s0 + s1 + s2))" "$N2"
    if ((s2 <= w2_after_update + 1 && s2 > 0)); then
        pass "web-2 got requests before the change ($s2) and none after the sidecar had it (at most the one in flight)"
    else
        fail "web-2 got $s2 requests, $w2_after_update when the client's sidecar had the change"
    fi
}
if [[ -n $VIP_OK ]]; then
    scale_run
else
    not_run "scale to two (an EndpointSlice change) during $N2 requests: none fails"
fi

# ---- secure naming: a replica presenting another service account ------------------------
out=$(pc client -m 20 -w '\n%{http_code}' "http://${IP[web-x]}:8080/named/direct")
expect_eq "client -> web-x by pod IP (registered as sa web, presents sa rogue): 503" "${out##*$'\n'}" 503
expect_match "... the 503 names both identities" "${out%$'\n'*}" "$SPIFFE/rogue.*$SPIFFE/web|$SPIFFE/web.*$SPIFFE/rogue"
out=$(pc client -m 20 -w '\n%{http_code}' "http://$CANARY_VIP/named/service")
expect_eq "client -> Service web-canary (its endpoint is web-x): 503" "${out##*$'\n'}" 503
expect_match "... the 503 names both identities" "${out%$'\n'*}" "$SPIFFE/rogue.*$SPIFFE/web|$SPIFFE/web.*$SPIFFE/rogue"
expect_eq "web-x's app got nothing" "$(hits web-x /named/)" 0
check "client's sidecar log names both identities" \
    grep -q "peer is $SPIFFE/rogue, expected $SPIFFE/web" "$E2E/pods/client/remora-proxy.log"
# web-x joins web's replicas (the registry says it is sa web like them): whatever the
# balancer picks, no request reaches web-x's app and none is answered by it; a try that
# picked it is refused (503 naming both) or retried on another replica
three() { [[ $(dest_endpoints client "$WEB_VIP:80") == "${IP[web-0]}:8080 ${IP[web-1]}:8080 ${IP[web-x]}:8080" ]]; }
put endpointslices "$(reg_slice web web-0 web-1 web-x)"
check "web-x added to web's EndpointSlice: the client's sidecar has it" wait_until 15 three
mixed_run() {
    local n0 n1 ok refused
    n0=$(hits web-0 /mixed/) n1=$(hits web-1 /mixed/)
    out=$(pc client -m 60 -w ' %{http_code}\n' "http://$WEB_VIP/mixed/[1-60]")
    ok=$(grep -c '^web-[01] 200$' <<<"$out")
    refused=$(grep -c ' 503$' <<<"$out")
    expect_eq "web with an impostor among its replicas, 60 requests: each answered by web-0 or web-1, or refused 503 ($ok answered, $refused refused)" \
        "$((ok + refused))" 60
    expect_eq "... web-x's app got none of them" "$(hits web-x /mixed/)" 0
    expect_eq "... web-0's and web-1's apps got exactly the ones answered" \
        "$(($(hits web-0 /mixed/) + $(hits web-1 /mixed/) - n0 - n1))" "$ok"
    if ((refused > 0)); then
        expect_match "... a refusal names both identities" "$out" "$SPIFFE/rogue.*$SPIFFE/web|$SPIFFE/web.*$SPIFFE/rogue"
    fi
}
if [[ -n $VIP_OK ]]; then
    mixed_run
else
    not_run "web with an impostor among its replicas: it gets nothing"
fi
put endpointslices "$(reg_slice web web-0 web-1)"
check "web-x removed again: the client's sidecar has web-0 and web-1" wait_until 15 two

# ---- an unmeshed pod in the registry: plaintext, as the app sent it ----------------------
UA=(-H 'User-Agent: e2e' -H 'X-E2E: legacy')
# sent HOST PATH [FIELD-LINE]: the request head curl sends (with UA: FIELD-LINE "X-E2E: legacy")
sent() { printf 'GET %s HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\nUser-Agent: e2e\r\n%s\r\n' "$2" "$1" "${3:+$3$'\r\n'}"; }
sent_legacy() { sent "$1" "$2" 'X-E2E: legacy'; }
out=$(pc client -m 20 "${UA[@]}" -w ' %{http_code}' "http://${IP[legacy]}:8080/legacy/direct?x=1")
expect_eq "client -> legacy by pod IP: its app answers" "$out" "legacy 200"
expect_eq "... its app got the request as the client sent it, in plaintext (no XFCC, nothing but the ids every sidecar adds)" \
    "$(as_sent "$E2E/rec/legacy/all.bin" '/legacy/direct?x=1' "$(sent_legacy "${IP[legacy]}:8080" '/legacy/direct?x=1')")" ok
out=$(pc client -m 20 "${UA[@]}" -w ' %{http_code}' "http://$LEGACY_VIP/legacy/service")
expect_eq "client -> Service legacy ($LEGACY_VIP:80 -> its one unmeshed endpoint): its app answers" "$out" "legacy 200"
expect_eq "... its app got the request as the client sent it, in plaintext" \
    "$(as_sent "$E2E/rec/legacy/all.bin" /legacy/service "$(sent_legacy "$LEGACY_VIP" /legacy/service)")" ok

# ---- the internet: allow_any, registry_only, egress_allow --------------------------------
# inet POD TAG: the three kinds of request to the internet host, paths /TAG/{ip,host,tls};
# sets C80 C8080 C443 (the HTTP status, or "exit N" when curl failed) and B80 B8080 B443
inet() {
    inet_get 80 "$1" "http://$INET_IP/$2/ip"
    inet_get 8080 "$1" "${CA_INET[@]}" "http://$INET_NAME:8080/$2/host"
    inet_get 443 "$1" "${CA_INET[@]}" "https://$INET_NAME/$2/tls"
}
# inet_get PORT POD CURL-ARGS...: one of them; sets CPORT and BPORT
# shellcheck disable=SC2034 # code and body are namerefs to them
inet_get() {
    local -n code=C$1 body=B$1
    local o rc
    o=$(pc "$2" -m 20 -H 'User-Agent: e2e' -w '\n%{http_code}' "${@:3}")
    rc=$?; code=${o##*$'\n'}; body=${o%$'\n'*}; body=${body%$'\n'}; ((rc == 0)) || code="exit $rc"
}
inet client any
expect_eq "allow_any: the internet host over plain HTTP by address: 200" "$C80 $B80" "200 internet 80 /any/ip"
expect_eq "... it got the request as the client sent it" \
    "$(as_sent "$E2E/inet/rec/80.bin" /any/ip "$(sent "$INET_IP" /any/ip)")" ok
expect_eq "allow_any: by name ($INET_NAME:8080): 200" "$C8080 $B8080" "200 internet 8080 /any/host"
expect_eq "... it got the request as the client sent it" \
    "$(as_sent "$E2E/inet/rec/8080.bin" /any/host "$(sent "$INET_NAME:8080" /any/host)")" ok
expect_eq "allow_any: over TLS ($INET_NAME:443), the server's certificate verified by the client: 200" \
    "$C443 $B443" "200 internet 443 /any/tls"
expect_eq "... the server decrypted exactly the client's request (TLS end to end: no sidecar header in it)" \
    "$(head_in "$E2E/inet/rec/443.bin" /any/tls)" "$(sent "$INET_NAME" /any/tls)"
expect_match "client's sidecar counted the three as passthrough" "$(admin client /metrics)" \
    'remora_egress_total\{decision="passthrough"\} 3'

n80=$(inet_conns 80) n8080=$(inet_conns 8080) n443=$(inet_conns 443)
inet locked locked
expect_eq "registry_only: plain HTTP by address refused, 502 naming the destination" "$C80 $B80" \
    "502 destination $INET_IP:80 is not in the mesh registry (outbound_policy registry_only)"
expect_eq "registry_only: by name refused, 502" "$C8080" 502
expect_match "registry_only: TLS refused (the connection closed before a byte: curl $C443)" "$C443" '^exit (35|52|56)$'
expect_eq "registry_only: the internet host saw no connection at all (:80 :8080 :443)" \
    "$(inet_conns 80) $(inet_conns 8080) $(inet_conns 443)" "$n80 $n8080 $n443"
out=$(pc locked -m 20 -w ' %{http_code}' "http://$WEB_VIP/locked/web")
expect_match "registry_only: the Service web (in the registry) still answered" "$out" '^web-[012] 200$'
out=$(pc locked -m 20 -w ' %{http_code}' "http://${IP[legacy]}:8080/locked/legacy")
expect_eq "registry_only: the unmeshed pod in the registry still answered, plaintext" "$out" "legacy 200"

inet listed listed
expect_eq "registry_only + egress_allow $INET_IP/32:80: let out, 200" "$C80 $B80" "200 internet 80 /listed/ip"
expect_eq "... it got the request as the client sent it" \
    "$(as_sent "$E2E/inet/rec/80.bin" /listed/ip "$(sent "$INET_IP" /listed/ip)")" ok
expect_eq "registry_only + egress_allow $INET_NAME:8080 (by Host): let out, 200" "$C8080 $B8080" \
    "200 internet 8080 /listed/host"
expect_eq "registry_only + egress_allow $INET_NAME:443 (by SNI): let out, the certificate verified end to end, 200" \
    "$C443 $B443" "200 internet 443 /listed/tls"
expect_eq "... the server decrypted exactly the client's request" \
    "$(head_in "$E2E/inet/rec/443.bin" /listed/tls)" "$(sent "$INET_NAME" /listed/tls)"
n8080=$(inet_conns 8080)
out=$(pc listed -m 20 -H 'User-Agent: e2e' -w ' %{http_code}' "http://$INET_IP:8080/listed/unlisted")
expect_eq "registry_only + egress_allow: $INET_IP:8080 by address is not what is listed: 502" \
    "${out##* }" 502
expect_eq "... and the internet host saw no connection" "$(inet_conns 8080)" "$n8080"

# ---- the injector stopped mid-test ---------------------------------------------------
kill -TERM "$E2E_INJECTOR_PID"
check "injector stopped" wait_until 15 gone "$E2E_INJECTOR_PID"
wait "$E2E_INJECTOR_PID" 2>/dev/null
stale() {
    admin client /destinations | jq -e --arg d "$WEB_VIP:80" \
        '.destinations[] | select(.destination == $d) | .stale' >/dev/null
}
check "injector stopped: client's held answer for web turns stale" wait_until 60 stale
after_stop_run() {
    before=$(($(hits web-0 /after/) + $(hits web-1 /after/)))
    out=$(pc client -m 60 -w ' %{http_code}\n' "http://$WEB_VIP/after/[1-50]")
    expect_eq "injector stopped: the Service web keeps working, 50 of 50 answered 200" \
        "$(grep -c ' 200$' <<<"$out")" 50
    a0=$(hits web-0 /after/) a1=$(hits web-1 /after/)
    expect_eq "... and the two replicas still held recorded them (web-0 $a0, web-1 $a1)" \
        "$((a0 + a1 - before))" 50
}
if [[ -n $VIP_OK ]]; then
    after_stop_run
else
    not_run "injector stopped: the Service web keeps working"
fi
out=$(pc client -m 20 -w ' %{http_code}' "http://${IP[legacy]}:8080/after/legacy")
expect_eq "injector stopped: the unmeshed pod keeps working" "$out" "legacy 200"
n=$(hits legacy /locked-new)
out=$(pc locked -m 20 -w ' %{http_code}' "http://$LEGACY_VIP/locked-new")
expect_eq "injector stopped, registry_only: a destination never looked up is refused (fails closed)" \
    "${out##* }" 502
expect_eq "... and its app saw nothing" "$(hits legacy /locked-new)" "$n"

# ---- teardown --------------------------------------------------------------------------
for p in "${PODS[@]}"; do e2e_delete "$p"; done
for p in client locked listed web-0 web-1; do
    expect_eq "$p deleted: the proxy exited 0" "$(pod_status "$p" '.containers["remora-proxy"].exitCode')" 0
done
# shellcheck disable=SC2154 # _fails: test/lib.sh
if ((_fails > 0)); then # what the pods said, for whoever reads the CI log
    for f in "$E2E"/pods/*/remora-proxy.log "$TMP"/pod-*.log "$TMP/injector.log" "$TMP/apiserver.log"; do
        [[ -f $f ]] && { echo "---- $f"; tail -15 "$f"; }
    done
fi
for f in "$E2E"/pods/*/remora-proxy.log "$TMP/injector.log"; do
    expect_sanitizers_clean "sanitizers clean: ${f#"$E2E"/}" "$f"
done
echo "   e2e_discovery: $((EPOCHSECONDS - T0)) s"
finish
