#!/usr/bin/env bash
# The discovery service of remora-injector (docs/discovery.md) against
# test/tools/fake_apiserver.py (list/watch of Services, EndpointSlices, Pods over HTTPS):
#  - /readyz false while the API server is down at start, true once the first sync is done;
#  - GET /v1/destination answers for a Service (by ClusterIP:port and by every host form),
#    a headless Service, a pod IP (kind pod, one endpoint), with identity only for meshed
#    pods; 404 for an address or a name it does not know; 400 for a query naming nothing;
#  - long-polls (&wait=VERSION) are held, then answered within a bound when the destination
#    changes: scale up, scale down, an endpoint not ready, terminating, a pod becoming
#    meshed; 304 at timeout_s; an old version answers at once;
#  - a watch that gets 410 re-lists; dropped watches resume without a re-list; garbage and a
#    truncated stream are survived; with the API server down the last snapshot keeps answering;
#  - mTLS: no client certificate, a certificate from another CA, or one from another
#    trust domain are refused (401 or a refused handshake); metrics on /metrics;
#  - no sanitizer report.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
FAKE=(python3 "$REMORA_ROOT/test/tools/fake_apiserver.py")
BOUND=${DISCOVERY_BOUND_S:-5} # change -> long-poll answered (ASan build on a shared machine)

# ---- PKI: the mesh (test/lib.sh ca_pki), the API server's own CA ---------------------------
ca_pki || exit 1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$D/apica-key.pem" -out "$D/apica.pem" -subj "/CN=apica" 2>/dev/null || exit 1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$D/api-key.pem" \
    -out "$D/api.csr" -subj "/CN=kube-apiserver" 2>/dev/null &&
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$D/api.ext" &&
    openssl x509 -req -in "$D/api.csr" -CA "$D/apica.pem" -CAkey "$D/apica-key.pem" -CAcreateserial \
        -days 2 -extfile "$D/api.ext" -out "$D/api.pem" 2>/dev/null || exit 1
echo "tok-$$" >"$TMP/sa-token"

# ---- the fake API server: 4 generated Services x 3 pods, plus a headless one ----------------
# svc-I in ns-(I mod 2), ClusterIP 10.96.0.(I+1), pods svc-I-J on 10.64.0.(3I+J+1), account
# sa-I; svc-1 and svc-3 meshed (meshed 0.5), zones z1 z2 z3; svc-2 also has grpc-api 9090.
bg fake "${FAKE[@]}" --cert "$D/api.pem" --key "$D/api-key.pem" --port-file "$TMP/api.port" \
    --control-listen 127.0.0.1:0 --control-port-file "$TMP/ctl.port" \
    --cluster '{"services": 4, "endpoints": 3, "namespaces": 2, "meshed": 0.5}'
WAIT_UNTIL_STEP=0.05 wait_until 20 test -s "$TMP/ctl.port" -a -s "$TMP/api.port" ||
    { fail "fake API server starts"; cat "$TMP/fake.log"; finish; }
APIP=$(cat "$TMP/api.port")
CTL=http://127.0.0.1:$(cat "$TMP/ctl.port")/_control
ctl() { curl -sS -m 10 "$CTL/$1" "${@:2}"; }
post() { ctl "$1" -X POST --data-binary "$2" >/dev/null; }
summary() { ctl cluster | jq -r "$1"; }
ctl state -X PUT --data-binary "{\"token\": \"tok-$$\"}" >/dev/null
post cluster '{"bookmark_s": 1}'
# the headless Service db (ns-0, port 5432) with two meshed pods of account db
for i in 0 1; do
    ctl objects/pods -X PUT --data-binary "$(jq -n --arg i "$i" '{metadata: {name: ("db-" + $i),
        namespace: "ns-0", labels: {app: "db"}, annotations: {"remora.io/status": "{}"}},
        spec: {serviceAccountName: "db", nodeName: "node-z2"},
        status: {phase: "Running", podIP: ("10.65.0." + $i), podIPs: [{ip: ("10.65.0." + $i)}],
                 conditions: [{type: "Ready", status: "True"}]}}')" >/dev/null
done
ctl objects/services -X PUT --data-binary '{"metadata": {"name": "db", "namespace": "ns-0"},
    "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"},
             "ports": [{"name": "tcp-pg", "port": 5432, "targetPort": 5432, "protocol": "TCP"}]}}' >/dev/null
ctl objects/endpointslices -X PUT --data-binary '{"metadata": {"name": "db-0", "namespace": "ns-0",
    "labels": {"kubernetes.io/service-name": "db"}}, "addressType": "IPv4",
    "ports": [{"name": "tcp-pg", "port": 5432, "protocol": "TCP"}],
    "endpoints": [{"addresses": ["10.65.0.0"], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "targetRef": {"kind": "Pod", "namespace": "ns-0", "name": "db-0"}, "zone": "z2"},
                  {"addresses": ["10.65.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "targetRef": {"kind": "Pod", "namespace": "ns-0", "name": "db-1"}, "zone": "z2"}]}' >/dev/null
expect_eq "fake API server seeded: 5 services, 5 slices, 14 pods" \
    "$(summary '[.objects.services, .objects.endpointslices, .objects.pods] | join(",")')" "5,5,14"

# ---- the injector: CA on ca.address, discovery on its own port; API server down at start ---
DP=$(free_port)
ca_config main 3600 "$(jq -n --arg a "127.0.0.1:$DP" --arg api "https://127.0.0.1:$APIP" \
    --arg tok "$TMP/sa-token" --arg ca "$D/apica.pem" \
    '{discovery: {address: $a, api: $api, token_file: $tok, ca_file: $ca}}')"
post down '{}'
# /readyz polled as fast as one client can from before the injector starts until the API
# server comes up: with no sync possible, no probe may ever see 200 (a window between the
# webhook's start and the discovery service's would let a readiness probe through)
python3 - "$WH" "$D/wh.pem" "$SVC" "$TMP/readyz-probes.json" "$TMP/readyz-stop" <<'PY' &
import json, os, socket, ssl, sys, time
port, ca, name, out, stop = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
seen = {}
while not os.path.exists(stop):
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port)), timeout=2),
                             server_hostname=name) as t:
            t.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 65536:
                d = t.recv(4096)
                if not d:
                    break
                data += d
        code = data.split(b" ", 2)[1].decode()
        seen[code] = seen.get(code, 0) + 1
    except (OSError, ssl.SSLError, IndexError):
        time.sleep(0.002)  # not listening yet
json.dump(seen, open(out, "w"))
PY
_pids+=($!)
ca_start_injector "$TMP/main.json" || { fail "injector starts with a discovery block"; cat "$TMP/injector-1.log"; finish; }
ILOG=$TMP/injector-1.log
wait_port "$DP" || { fail "discovery port listens"; cat "$ILOG"; finish; }
pass "injector starts with discovery on its own port while the API server is down"
readyz_is() { [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" \
    "https://$SVC:$WH/readyz") == "$1" ]]; }
metrics() { curl -s --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" "https://$SVC:$WH/metrics"; }
metric() { metrics | awk -v m="$1" '$1 == m {print $2}'; } # NAME{LABELS}: its value
metric_is() { [[ $(metric "$1") == "$2" ]]; }
sleep 1
check "/readyz is 503 while the API server is down (no sync yet)" readyz_is 503
check "... and the log says why, naming the API server" grep -q "127.0.0.1:$APIP" "$ILOG"

# ---- client certificates: from the mesh CA (POST /v1/sign), another CA, another domain ------
ca_csr cli "spiffe://$TD/ns/ns-0/sa/web" || exit 1
curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$CAP:127.0.0.1" -o "$TMP/cli.answer" \
    -H "$(ca_bearer "$(ca_tok --ns ns-0 --sa web)")" --data-binary @"$TMP/cli.json" \
    "https://$SVC:$CAP/v1/sign"
jq -r .cert_chain "$TMP/cli.answer" >"$TMP/cli.pem" 2>/dev/null
check "a mesh client certificate from the injector's CA" grep -q "BEGIN CERTIFICATE" "$TMP/cli.pem"
"$CERTS" intermediate --ca-cert "$D/other-root.pem" --ca-key "$D/other-root-key.pem" --cn east \
    --out-cert "$D/oint.pem" --out-key "$D/oint-key.pem" || exit 1
"$CERTS" workload --ca-cert "$D/oint.pem" --ca-key "$D/oint-key.pem" --spiffe-id "spiffe://$TD/ns/ns-0/sa/web" \
    --out-cert "$TMP/other.pem" --out-key "$TMP/other-key.pem" || exit 1
"$CERTS" workload --ca-cert "$D/int.pem" --ca-key "$D/int-key.pem" --spiffe-id "spiffe://evil.example/ns/ns-0/sa/web" \
    --out-cert "$TMP/evil.pem" --out-key "$TMP/evil-key.pem" || exit 1

# dq QUERY [CURL-ARGS...]: GET /v1/destination?QUERY with the mesh client certificate;
# sets CODE and BODY (curl's own failure: CODE 000)
dq() {
    CODE=$(curl -s -m 75 --cacert "$D/root.pem" --resolve "$SVC:$DP:127.0.0.1" \
        --cert "$TMP/cli.pem" --key "$TMP/cli-key.pem" -o "$TMP/dq" -w '%{http_code}' "${@:2}" \
        "https://$SVC:$DP/v1/destination?$1")
    BODY=$(cat "$TMP/dq" 2>/dev/null)
}
# the endpoints of BODY, sorted, one compact line: address identity meshed zone ready serving terminating pod
eps() { jq -c '[.endpoints[] | [.address, .identity, .meshed, .zone, .ready, .serving, .terminating, .pod]] | sort' <<<"$BODY"; }
addrs() { jq -c '[.endpoints[].address] | sort' <<<"$BODY"; }

touch "$TMP/readyz-stop"
wait_until 10 test -s "$TMP/readyz-probes.json"
expect_eq "/readyz polled from before the start while the API server is down: never 200" \
    "$(jq -c '[(."200" // 0), ((."503" // 0) >= 1)]' "$TMP/readyz-probes.json" 2>/dev/null)" '[0,true]'

# ---- first sync once the API server is up --------------------------------------------------
post up '{}'
check "/readyz turns 200 once the API server answers and the first sync is done" wait_until 30 readyz_is 200
lists() { summary "[.requests.services.list // 0, .requests.endpointslices.list // 0, .requests.pods.list // 0] | add"; }
expect_match "the injector listed all three kinds and watches all three" \
    "$(summary '[(.requests | [.services.list, .endpointslices.list, .pods.list] | all(. >= 1)), (.watches | [.[]] | all(. >= 1))] | @csv')" \
    '^true,true$'

# ---- answers -------------------------------------------------------------------------------
ID1=spiffe://$TD/ns/ns-1/sa/sa-1
dq "addr=10.96.0.2:80"
expect_eq "ClusterIP:port of svc-1 -> 200" "$CODE" 200
expect_eq "... kind service, service ns-1/svc-1, port 80, protocol http" \
    "$(jq -c '[.kind, .service, .port, .protocol]' <<<"$BODY")" '["service","ns-1/svc-1",80,"http"]'
expect_eq "... its three meshed pods on 8080 with their identity, zone and conditions" "$(eps)" \
    "$(jq -nc --arg id "$ID1" '[["10.64.0.4:8080",$id,true,"z1",true,true,false,"ns-1/svc-1-0"],
        ["10.64.0.5:8080",$id,true,"z2",true,true,false,"ns-1/svc-1-1"],
        ["10.64.0.6:8080",$id,true,"z3",true,true,false,"ns-1/svc-1-2"]]')"
V1=$(jq -r .version <<<"$BODY")
check "... and a version" test -n "$V1" -a "$V1" != null
for h in svc-1.ns-1 svc-1.ns-1.svc svc-1.ns-1.svc.cluster.local; do
    dq "host=$h:80"
    expect_eq "host=$h:80 -> the same answer (same version)" "$CODE $(jq -r '.service + " " + .version' <<<"$BODY")" "200 ns-1/svc-1 $V1"
done
dq "addr=10.96.0.1:80"
expect_eq "svc-0 (pods not meshed): identity null, meshed false" \
    "$(jq -c '[.endpoints[] | [.identity, .meshed]] | unique' <<<"$BODY")" '[[null,false]]'
dq "host=svc-2.ns-0:9090"
expect_eq "svc-2 port 9090: protocol grpc from appProtocol, endpoints on 9090" \
    "$(jq -c '[.port, .protocol, ([.endpoints[].address] | sort)]' <<<"$BODY")" \
    '[9090,"grpc",["10.64.0.7:9090","10.64.0.8:9090","10.64.0.9:9090"]]'
dq "host=db.ns-0:5432"
expect_eq "headless Service db: its two pods with the db identity" \
    "$(jq -c '[.kind, .service, .protocol, ([.endpoints[] | [.address, .identity]] | sort)]' <<<"$BODY")" \
    "$(jq -nc --arg id "spiffe://$TD/ns/ns-0/sa/db" '["service","ns-0/db","tcp",[["10.65.0.0:5432",$id],["10.65.0.1:5432",$id]]]')"
dq "addr=10.65.0.1:5432"
expect_eq "a pod IP (headless / direct call): kind pod, that one endpoint" \
    "$(jq -c '[.kind, ([.endpoints[] | [.address, .pod, .meshed]])]' <<<"$BODY")" \
    '["pod",[["10.65.0.1:5432","ns-0/db-1",true]]]'
dq "addr=10.99.99.99:80"
expect_eq "an unknown address -> 404 with an error" "$CODE $(jq -r 'has("error")' <<<"$BODY")" "404 true"
dq "host=nope.nowhere:80"
expect_eq "an unknown name -> 404" "$CODE" 404
dq "addr=10.96.0.2:81"
expect_eq "a known ClusterIP on a port the Service does not have -> 404" "$CODE" 404
for q in "" "addr=" "addr=10.96.0.2" "addr=not-an-ip:80" "addr=10.96.0.2:99999" "host=svc-1.ns-1" \
    "foo=bar" "addr=10.96.0.2:80&wait=x&timeout_s=abc"; do
    dq "$q"
    expect_eq "a query naming nothing ('$q') -> 400 with an error" "$CODE $(jq -r 'has("error")' <<<"$BODY" 2>/dev/null)" "400 true"
done

# ---- long-polls --------------------------------------------------------------------------
LPN=0
# lp QUERY: a long-poll in the background, its answer later in $LP.code / $LP.body
lp() {
    LPN=$((LPN + 1))
    LP=$TMP/lp-$LPN
    (
        c=$(curl -s -m 75 --cacert "$D/root.pem" --resolve "$SVC:$DP:127.0.0.1" --cert "$TMP/cli.pem" \
            --key "$TMP/cli-key.pem" -o "$LP.body" -w '%{http_code}' "https://$SVC:$DP/v1/destination?$1")
        echo "$c" >"$LP.tmp" && mv "$LP.tmp" "$LP.code"
    ) &
    _pids+=($!)
}
answered() { test -s "$LP.code"; }
# change NAME QUERY CONTROL BODY JQ WANT: hold a long-poll on QUERY at its current version,
# make the change, expect JQ(answer) == WANT within BOUND. The three kinds are three watch
# streams, so an intermediate state may be answered first (the pods' watch ahead of the
# slices'): then long-poll again from that version, as a proxy does, within the same bound.
change() {
    local name=$1 q=$2 t0 ms v code got n=0
    dq "$q"
    v=$(jq -r .version <<<"$BODY")
    lp "$q&wait=$v&timeout_s=60"
    sleep 0.5
    if answered; then fail "$name: the long-poll was held until the change (it answered $(cat "$LP.code") at once)"; return; fi
    t0=${EPOCHREALTIME//[!0-9]/}
    post "$3" "$4"
    while :; do
        if ! WAIT_UNTIL_STEP=0.02 wait_until "$BOUND" answered; then
            fail "$name: the long-poll was not answered within $BOUND s"; return
        fi
        ms=$(((${EPOCHREALTIME//[!0-9]/} - t0) / 1000))
        code=$(cat "$LP.code")
        BODY=$(cat "$LP.body")
        got=$(jq -c "$5" <<<"$BODY" 2>/dev/null)
        if [[ $code != 200 || $(jq -r .version <<<"$BODY") == "$v" ]]; then
            fail "$name: the long-poll answered $code with version $v again"; return
        fi
        [[ $got == "$6" ]] && break
        if ((ms > BOUND * 1000)); then fail "$name: not the change within $BOUND s: got '$got', want '$6'"; return; fi
        n=$((n + 1))
        v=$(jq -r .version <<<"$BODY")
        lp "$q&wait=$v&timeout_s=60"
    done
    pass "$name: a held long-poll answered with the change in ${ms} ms (bound ${BOUND} s; $n intermediate answers)"
}
Q1="addr=10.96.0.2:80"
change "scale svc-1 up to 5" "$Q1" scale '{"service": "ns-1/svc-1", "replicas": 5}' \
    '[.endpoints | length, (map(.identity) | unique)]' "$(jq -nc --arg id "$ID1" '[5,[$id]]')"
change "scale svc-1 down to 2" "$Q1" scale '{"service": "ns-1/svc-1", "replicas": 2}' \
    '[.endpoints[].address] | sort' '["10.64.0.4:8080","10.64.0.5:8080"]'
change "svc-1-0 not ready" "$Q1" endpoint '{"pod": "ns-1/svc-1-0", "ready": false}' \
    '[.endpoints[] | [.pod, .ready, .serving, .terminating]] | sort' \
    '[["ns-1/svc-1-0",false,true,false],["ns-1/svc-1-1",true,true,false]]'
change "svc-1-1 terminating" "$Q1" endpoint '{"pod": "ns-1/svc-1-1", "ready": false, "serving": true, "terminating": true}' \
    '[.endpoints[] | select(.pod == "ns-1/svc-1-1") | [.ready, .serving, .terminating]]' '[[false,true,true]]'
change "svc-0-0 becomes meshed" "addr=10.96.0.1:80" mesh '{"pod": "ns-0/svc-0-0"}' \
    '[.endpoints[] | [.pod, .meshed, .identity]] | sort' \
    "$(jq -nc --arg id "spiffe://$TD/ns/ns-0/sa/sa-0" '[["ns-0/svc-0-0",true,$id],["ns-0/svc-0-1",false,null],["ns-0/svc-0-2",false,null]]')"

dq "$Q1"
V=$(jq -r .version <<<"$BODY")
t0=$SECONDS
lp "$Q1&wait=$V&timeout_s=2"
check "a held long-poll counts in remora_discovery_subscribers" wait_until 5 metric_is remora_discovery_subscribers 1
WAIT_UNTIL_STEP=0.05 wait_until 10 answered
expect_eq "nothing changes: 304 at timeout_s (2 s)" "$(cat "$LP.code" 2>/dev/null)" 304
check "... and the subscriber is gone" wait_until 5 metric_is remora_discovery_subscribers 0
dq "$Q1&wait=$V1&timeout_s=30"
expect_eq "an old version answers at once with the current one" "$CODE $(jq -r .version <<<"$BODY")" "200 $V"

# ---- the API server's faults ---------------------------------------------------------------
L0=$(lists)
post watches '{"action": "drop"}'
change "watches dropped: resumed, the change still arrives" "$Q1" scale '{"service": "ns-1/svc-1", "replicas": 3}' \
    '.endpoints | length' 3
expect_eq "... resumed from the resourceVersion, without a re-list" "$(lists)" "$L0"

post compact '{"expire_watches": true}'
change "410 Gone on every watch: re-listed, the change still arrives" "$Q1" scale '{"service": "ns-1/svc-1", "replicas": 4}' \
    '.endpoints | length' 4
check "... a re-list happened after the 410" test "$(lists)" -gt "$L0"

post watches '{"action": "send", "bytes": "{\"type\": \"MODIFIED\", \"object\": {\"garbage\n\u0000\u00ff not json at all\n"}'
post watches '{"action": "truncate"}'
change "a garbage line and a truncated stream: the injector carries on" "$Q1" scale '{"service": "ns-1/svc-1", "replicas": 2}' \
    '.endpoints | length' 2
ctl objects/services -X PUT --data-binary '{"metadata": {"name": "bad", "namespace": "ns-0"},
    "spec": {"clusterIP": 17, "ports": "eighty"}}' >/dev/null
check "an object that fails to decode is named in the log" wait_until "$BOUND" grep -q "ns-0/bad" "$ILOG"
check "... and the injector still runs" alive "$IPID"

# oversized answers: a list declaring 2 GB, then 24 MiB of chunks (the bound is 16 MiB), then
# a 5 MiB watch line (the bound is 4 MiB): each refused and counted, then a list that fits
# shellcheck disable=SC2034 # E0 is read in an eval below
E0=$(metric 'remora_discovery_api_errors_total{kind="pods"}')
ctl state -X PUT --data-binary '{"faults": [
    {"match": "^GET /api/v1/pods\\?", "kind": "huge", "bytes": 2147483648, "times": 1},
    {"match": "^GET /api/v1/pods\\?", "kind": "huge_chunked", "mib": 24, "times": 1}]}' >/dev/null
post compact '{"expire_watches": true}'
change "a 2 GB pods list, then 24 MiB of chunks: refused, the third list syncs, the change arrives" "$Q1" \
    scale '{"service": "ns-1/svc-1", "replicas": 4}' '[.endpoints | length, (map(.identity) | unique)]' \
    "$(jq -nc --arg id "$ID1" '[4,[$id]]')"
expect_eq "... both fault answers were served to the injector" \
    "$(ctl state | jq -c '[.faults[].times]')" '[0,0]'
check "... and counted as API errors (pods: +2 at least)" \
    eval '(( $(metric "remora_discovery_api_errors_total{kind=\"pods\"}") >= E0 + 2 ))'
ctl state -X PUT --data-binary '{"faults": []}' >/dev/null
python3 -c 'import json, sys; json.dump({"action": "send", "kind": "endpointslices", "bytes": "{" + "x" * (5 << 20)}, sys.stdout)' >"$TMP/bigline.json"
ctl watches -X POST --data-binary @"$TMP/bigline.json" >/dev/null
change "a 5 MiB watch line: refused at the line bound, the watch resumes, the change arrives" "$Q1" \
    scale '{"service": "ns-1/svc-1", "replicas": 2}' '.endpoints | length' 2
check "... the injector still runs" alive "$IPID"

post down '{}'
check "API server down: remora_discovery_stale{kind=\"pods\"} turns 1" wait_until 20 metric_is 'remora_discovery_stale{kind="pods"}' 1
dq "$Q1"
expect_eq "... answers keep coming from the last snapshot" "$CODE $(jq '.endpoints | length' <<<"$BODY")" "200 2"
check "... /readyz stays 200 (synced once; the snapshot serves)" readyz_is 200
post up '{}'
change "API server back: watches resume, the change arrives" "$Q1" scale '{"service": "ns-1/svc-1", "replicas": 3}' \
    '.endpoints | length' 3
check "... stale back to 0 for every kind" wait_until 10 eval '[[ $(metrics | grep -c "^remora_discovery_stale{kind=\"[a-z]*\"} 0$") == 3 ]]'

# ---- mTLS ------------------------------------------------------------------------------------
refused() { # CURL-ARGS...: 401, or no HTTP answer at all (handshake refused)
    local c
    c=$(curl -s -m 10 --cacert "$D/root.pem" --resolve "$SVC:$DP:127.0.0.1" -o /dev/null -w '%{http_code}' \
        "$@" "https://$SVC:$DP/v1/destination?addr=10.96.0.2:80")
    [[ $c == 401 || $c == 000 ]]
}
check "no client certificate: 401 or a refused handshake" refused
check "a client certificate from another CA: refused" refused --cert "$TMP/other.pem" --key "$TMP/other-key.pem"
check "a mesh-CA certificate for another trust domain: refused" refused --cert "$TMP/evil.pem" --key "$TMP/evil-key.pem"
dq "addr=10.96.0.2:80"
expect_eq "... while the mesh certificate still gets its answer" "$CODE" 200

# ---- metrics ---------------------------------------------------------------------------------
M=$(metrics)
# 5 Services (ns-0/bad did not decode), 5 slices, 14 pods: svc-0, svc-2, svc-3 x 3, svc-1 x 3, db x 2
expect_eq "metrics: objects held by kind" \
    "$(for k in services endpointslices pods; do metric "remora_discovery_objects{kind=\"$k\"}"; done | paste -sd,)" "5,5,14"
expect_match "metrics: bytes held by kind" "$M" 'remora_discovery_object_bytes\{kind="pods"\} [1-9][0-9]*'
# ns-0/bad came once in a watch event and again in the re-list after the oversized answers
expect_eq "metrics: the object that failed to decode is counted each time it came (event, re-list)" \
    "$(metric 'remora_discovery_skipped_objects_total{kind="services"}')" 2
check "metrics: every kind listed again after the 410 (lists_total >= 2)" \
    eval '[[ $(metrics | awk "/^remora_discovery_lists_total/ && \$2 >= 2" | wc -l) == 3 ]]'
check "metrics: API errors counted (the dropped, truncated and refused watches)" \
    eval '[[ $(metric "remora_discovery_api_errors_total{kind=\"pods\"}") -ge 1 ]]'
expect_match "metrics: answers by status" "$M" 'remora_discovery_answers_total\{code="[^"]*"\} [1-9]'
v=$(metric remora_discovery_push_seconds_count)
(( ${v:-0} >= 9 )) && pass "metrics: push latency histogram, one observation per long-poll answered by a change ($v >= 9)" ||
    fail "metrics: remora_discovery_push_seconds_count is '$v', want >= 9 (one per change above); $(metrics | grep -c '^remora_discovery_push') push lines"

# ---- end -------------------------------------------------------------------------------------
check "the injector still runs" alive "$IPID"
stop_pid "$IPID"
expect_eq "SIGTERM: the injector exits 0 with long-polls and watches open" "$STOP_RC" 0
expect_sanitizers_clean "no sanitizer report" "$ILOG"
finish
