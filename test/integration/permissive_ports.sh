#!/usr/bin/env bash
# Issue 19: per-port inbound mTLS mode. A strict inbound listener accepts
# plaintext on the original destination ports it lists in permissive_ports
# (mTLS or plaintext told apart by the first bytes), decided by the policy
# with an empty principal; every other port stays strict and plaintext there
# is refused before any byte reaches the app. What reached each app is
# recorded byte for byte (test/tools/recorder.py). Then the injector, over
# HTTPS, writes the bootstrap from remora.io/inbound-tls and
# remora.io/permissive-ports, and refuses a pod whose value is bad.
#
# Without iptables the original destination of a connection is the address it
# reached, so a listener's own port is what its permissive_ports are matched
# against here (docs/config.md "permissive_ports"). A second part does the same
# through the real capture (iptables in a network namespace, a peer in another),
# where the original destination port is the app's.
#
#   hostile_client.py / curl (plaintext, or mTLS as frontend)
#      -> P: perm        (inbound, strict, permissive_ports [L_PERM])   -> R_HTTP
#            perm-tcp    (inbound, strict, permissive_ports [L_PTCP])   -> R_TCP (echo)
#            strict      (inbound, strict, permissive_ports [L_PERM])   -> R_STRICT (its own port is not listed)
#            strict-tcp  (inbound, strict, permissive_ports [L_PERM])   -> R_STRICT
source "$(dirname "$0")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
HC="python3 $REMORA_ROOT/test/tools/hostile_client.py"
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || exit 1
wl() { "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --spiffe-id "$1" \
        --out-cert "$D/$2.pem" --out-key "$D/$2-key.pem" >/dev/null; }
FE=spiffe://cluster.local/ns/shop/sa/frontend
WEB=spiffe://cluster.local/ns/shop/sa/web
wl $FE fe || exit 1
wl $WEB web || exit 1
FE_TLS=(--tls "$D/fe.pem" "$D/fe-key.pem")

# ---- recorders --------------------------------------------------------------------------------
start_rec() { # NAME ARGS...: sets REC_PORT; the recording goes to $TMP/NAME/
    local name=$1; shift
    bg "$name" python3 "$REMORA_ROOT/test/tools/recorder.py" "$TMP/$name" "$@"
    REC_PORT=""
    WAIT_UNTIL_STEP=0.05 wait_until 10 listen_port "$TMP/$name.log" && { REC_PORT=$LISTEN_PORT; return 0; }
    fail "recorder $name did not start"; cat "$TMP/$name.log"; finish
}
start_rec rhttp --mode http; R_HTTP=$REC_PORT
start_rec rtcp --mode echo; R_TCP=$REC_PORT
start_rec rstrict --mode http; R_STRICT=$REC_PORT
opens() { local n; n=$(grep -c '^open' "$TMP/$1/events" 2>/dev/null); echo "${n:-0}"; }
seen() { grep -qaF -- "$2" "$TMP/$1"/conn-*.bin 2>/dev/null; }
req_with() { local f; f=$(grep -laF -- "$1" "$TMP/rhttp"/req-*.bin 2>/dev/null | head -1); [[ -n $f ]] && cat "$f"; }
hc() { # ARGS...: one connection; sets GOT, GOTHEX, CLOSED
    local j
    j=$($HC one "$@")
    GOT=$(jq -r .got <<<"$j"); GOTHEX=$(jq -r .got_hex <<<"$j"); CLOSED=$(jq -r .closed <<<"$j")
}

P_ADMIN=$(free_port); L_PERM=$(free_port); L_PTCP=$(free_port); L_STRICT=$(free_port); L_STCP=$(free_port)

# ---- the policy: /secure and every TCP port but L_PTCP need frontend's identity ----------------
cat >"$TMP/policy.json" <<JSON
{"rules": [
  {"name": "fe-only", "action": "allow", "from": {"principals": ["$FE"]}},
  {"name": "open", "action": "allow", "to": {"paths": ["/open*"], "ports": [$L_PERM, $L_STRICT]}},
  {"name": "plain-tcp", "action": "allow", "to": {"ports": [$L_PTCP]}}
 ]}
JSON
cat >"$TMP/p.json" <<JSON
{"admin": {"address": "127.0.0.1:$P_ADMIN"},
 "listeners": [
  {"name": "perm", "address": "127.0.0.1:$L_PERM", "direction": "inbound", "upstream": "127.0.0.1:$R_HTTP",
   "tls": "strict", "permissive_ports": [$L_PERM]},
  {"name": "perm-tcp", "address": "127.0.0.1:$L_PTCP", "direction": "inbound", "upstream": "127.0.0.1:$R_TCP",
   "tls": "strict", "permissive_ports": [$L_PTCP]},
  {"name": "strict", "address": "127.0.0.1:$L_STRICT", "direction": "inbound", "upstream": "127.0.0.1:$R_STRICT",
   "tls": "strict", "permissive_ports": [$L_PERM]},
  {"name": "strict-tcp", "address": "127.0.0.1:$L_STCP", "direction": "inbound", "upstream": "127.0.0.1:$R_STRICT",
   "tls": "strict", "permissive_ports": [$L_PERM]}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
   "cert_file": "$D/web.pem", "key_file": "$D/web-key.pem", "bundle_file": "$D/root.pem"},
 "limits": {"detect_timeout_ms": 1000, "header_timeout_ms": 3000},
 "policy_file": "$TMP/policy.json"}
JSON

# ---- config errors name the entry -------------------------------------------------------------
bad_cfg() { # NAME JQ-FILTER REGEX
    jq "$2" "$TMP/p.json" >"$TMP/bad-$1.json"
    local out rc
    out=$("$PROXY" --check-config -c "$TMP/bad-$1.json" 2>&1); rc=$?
    expect_match "--check-config refuses $1, naming the entry" "$rc:$out" "^1:.*$3"
}
out=$("$PROXY" --check-config -c "$TMP/p.json" 2>&1)
expect_match "--check-config accepts permissive_ports" "$?:$out" "^0:.*ok"
bad_cfg port-70000 '.listeners[1].permissive_ports = [9090, 70000]' \
    'listeners\[1\]\.permissive_ports\[1\]: expected a port number 1-65535'
bad_cfg port-string '.listeners[0].permissive_ports = ["9090"]' \
    'listeners\[0\]\.permissive_ports\[0\]: expected a port number 1-65535'
bad_cfg twice '.listeners[0].permissive_ports = [9090, 8080, 9090]' \
    'listeners\[0\]\.permissive_ports\[2\]: port 9090 is listed twice'
bad_cfg 65-ports '.listeners[0].permissive_ports = [range(1000; 1065)]' \
    'listeners\[0\]\.permissive_ports: at most 64 ports'
bad_cfg on-permissive '.listeners[0].tls = "permissive"' \
    'listeners\[0\]\.permissive_ports: only an inbound listener with "tls": "strict" takes permissive_ports'
bad_cfg on-disabled 'del(.listeners[0].tls)' 'listeners\[0\]\.permissive_ports: only an inbound listener'

ADMIN_PORT=$P_ADMIN start_proxy p "$TMP/p.json" || { cat "$TMP/p.log"; finish; }
PPID_=$PROXY_PID
metric() { # SERIES: its value on P (0 when absent)
    local v
    v=$(curl -s "http://127.0.0.1:$P_ADMIN/metrics" | awk -v k="$1" '$1 == k {print $2}')
    echo "${v:-0}"
}

# ---- /config_dump: the decision per port ------------------------------------------------------
dump=$(curl -s "http://127.0.0.1:$P_ADMIN/config_dump")
expect_eq "/config_dump: perm listener's own port is permissive, the rest strict" \
    "$(jq -c '.listeners[0].tls_by_port' <<<"$dump")" "{\"$L_PERM\":\"permissive\",\"other\":\"strict\"}"
expect_eq "/config_dump: the strict listener lists another port; its own falls under other (strict)" \
    "$(jq -c '.listeners[2].tls_by_port' <<<"$dump")" "{\"$L_PERM\":\"permissive\",\"other\":\"strict\"}"
expect_eq "/config_dump keeps the key as written" "$(jq -c '.listeners[1].permissive_ports' <<<"$dump")" "[$L_PTCP]"
expect_eq "plaintext series start at 0: listed ports and other" \
    "$(metric "remora_inbound_plaintext_total{port=\"$L_PERM\"}"):$(metric "remora_inbound_plaintext_total{port=\"$L_PTCP\"}"):$(metric 'remora_inbound_plaintext_total{port="other"}')" \
    "0:0:0"

# ---- a listed port: plaintext reaches the app, decided by the policy -------------------------
# (requests compared byte for byte carry their own x-request-id, which the proxy keeps as sent;
# without one it would add a random UUID: docs/observability.md)
hc "127.0.0.1:$L_PERM" --send 'GET /open/a?m=PLAIN-1 HTTP/1.1\r\nHost: app\r\nX-Request-Id: pp-plain-1\r\nX-Forwarded-Client-Cert: By=x;URI=spiffe://cluster.local/ns/kube-system/sa/admin\r\n\r\n'
expect_match "listed port: plaintext GET /open is allowed (200)" "$GOT" '^HTTP/1.1 200'
expect_eq "listed port: the app got the request byte for byte, without the forged XFCC and without an identity" \
    "$(req_with PLAIN-1 | od -An -c | tr -s ' \n' ' ')" \
    "$(printf 'GET /open/a?m=PLAIN-1 HTTP/1.1\r\nhost: app\r\nx-request-id: pp-plain-1\r\n\r\n' | od -An -c | tr -s ' \n' ' ')"
head -c 200000 /dev/urandom | base64 -w0 | head -c 200000 >"$TMP/body"
code=$(curl -s -o /dev/null -w '%{http_code}' --data-binary @"$TMP/body" -H 'Content-Type: text/plain' \
    "http://127.0.0.1:$L_PERM/open/post?m=PLAIN-BODY")
expect_eq "listed port: plaintext POST with a 200 kB body -> 200" "$code" 200
f=$(grep -laF PLAIN-BODY "$TMP/rhttp"/req-*.bin | head -1)
if [[ -n $f ]] && cmp -s <(python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); sys.stdout.buffer.write(d[d.index(b"\r\n\r\n")+4:])' "$f") "$TMP/body"; then
    pass "listed port: the app got the 200 kB body byte for byte"
else
    fail "listed port: the body the app got differs"
fi

n0=$(opens rhttp)
hc "127.0.0.1:$L_PERM" --send 'GET /secure?m=PLAIN-SECURE HTTP/1.1\r\nHost: app\r\n\r\n'
expect_match "listed port: plaintext to a path only a principal may call -> 403 (empty principal)" \
    "$GOT" '^HTTP/1.1 403 .*RBAC: access denied by default'
if seen rhttp PLAIN-SECURE; then fail "the denied plaintext request reached the app"; else pass "... and it never reached the app"; fi
expect_eq "... no connection was opened to the app" "$(opens rhttp)" "$n0"
hc "127.0.0.1:$L_PERM" --send '\x00\x01binary?m=PLAIN-TCP-DENIED\r\n'
if seen rhttp PLAIN-TCP-DENIED; then fail "plaintext opaque TCP without a principal reached the app"
else pass "listed port: plaintext opaque TCP is decided by the TCP policy (no principal: denied, nothing reached the app)"; fi

hc "127.0.0.1:$L_PERM" "${FE_TLS[@]}" --send 'GET /secure?m=MTLS-SECURE HTTP/1.1\r\nHost: app\r\nX-Request-Id: pp-mtls-1\r\n\r\n'
expect_match "listed port: mTLS as frontend still works (200 on /secure)" "$GOT" '^HTTP/1.1 200'
expect_eq "... and the app sees the verified identity" "$(req_with MTLS-SECURE)" \
    "$(printf 'GET /secure?m=MTLS-SECURE HTTP/1.1\r\nhost: app\r\nx-request-id: pp-mtls-1\r\nx-forwarded-client-cert: By=%s;URI=%s\r\n\r\n' "$WEB" "$FE")"

hc "127.0.0.1:$L_PTCP" --send '\x00\x01\xffopaque-bytes\r\n\x00' --timeout 3
expect_eq "listed TCP port: plaintext opaque bytes allowed by a port rule are echoed back" \
    "$GOTHEX" "$(printf '\x00\x01\xffopaque-bytes\r\n\x00' | od -An -tx1 | tr -d ' \n')"
f=$(ls "$TMP/rtcp"/conn-*.bin 2>/dev/null | head -1)
expect_eq "... and the app got them byte for byte" "$(od -An -tx1 <"${f:-/dev/null}" | tr -d ' \n')" \
    "$(printf '\x00\x01\xffopaque-bytes\r\n\x00' | od -An -tx1 | tr -d ' \n')"

# ---- an unlisted port: plaintext refused before any byte reaches the app ---------------------
refused0=$(metric remora_tls_plaintext_refused_total)
hc "127.0.0.1:$L_STRICT" --send 'GET /open/x?m=STRICT-PLAIN HTTP/1.1\r\nHost: app\r\n\r\n' --timeout 5
expect_eq "unlisted port: plaintext HTTP is refused (closed, nothing back)" "$CLOSED:$GOT" "true:"
hc "127.0.0.1:$L_STCP" --send '\x00\x01binary?m=STRICT-TCP\r\n' --timeout 5
expect_eq "unlisted port: plaintext opaque TCP is refused (closed, nothing back)" "$CLOSED:$GOT" "true:"
code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$L_STRICT/open/curl")
expect_eq "unlisted port: curl in plaintext gets no answer" "$code" 000
expect_eq "unlisted port: the app behind it received nothing (no connection at all)" "$(opens rstrict)" 0
if seen rstrict STRICT; then fail "unlisted port: bytes reached the app"; else pass "unlisted port: no byte reached the app"; fi
expect_eq "unlisted port: the refusals are counted" "$(metric remora_tls_plaintext_refused_total)" "$((refused0 + 3))"
hc "127.0.0.1:$L_STRICT" "${FE_TLS[@]}" --send 'GET /open/x?m=STRICT-MTLS HTTP/1.1\r\nHost: app\r\n\r\n'
expect_match "unlisted port: mTLS still works (200)" "$GOT" '^HTTP/1.1 200'

# ---- counted by port --------------------------------------------------------------------------
# plaintext accepted on L_PERM: GET /open, POST, GET /secure (403), opaque TCP (denied) = 4;
# the mTLS connections to it are not plaintext and not counted
expect_eq "remora_inbound_plaintext_total{port=\"$L_PERM\"} counts the 4 plaintext connections" \
    "$(metric "remora_inbound_plaintext_total{port=\"$L_PERM\"}")" 4
expect_eq "remora_inbound_plaintext_total{port=\"$L_PTCP\"} is 1" \
    "$(metric "remora_inbound_plaintext_total{port=\"$L_PTCP\"}")" 1
expect_eq "remora_inbound_plaintext_total{port=\"other\"} is 0 (no plaintext accepted elsewhere)" \
    "$(metric 'remora_inbound_plaintext_total{port="other"}')" 0
expect_eq "exactly three series (the listed ports and other): the label set is bounded" \
    "$(curl -s "http://127.0.0.1:$P_ADMIN/metrics" | grep -c '^remora_inbound_plaintext_total')" 3
check "P still alive" alive "$PPID_"
stop_pid "$PPID_"; expect_eq "P exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean (p)" "$TMP/p.log"

# ---- with the capture: the real original destination port (network namespaces, root) ----------
# Pod namespace A: `remora-proxy iptables`, the proxy as UID 1337 on 0.0.0.0:15006 (strict,
# permissive_ports [9090]), apps on 127.0.0.1:9090 and :8080. Peer namespace B calls A's address.
if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP: the capture part needs root (network namespaces, iptables); the rest ran"
else
    NA=rm-pp-$$-a NB=rm-pp-$$-b
    ip netns add "$NA" && on_exit "ip netns del $NA"
    ip netns add "$NB" && on_exit "ip netns del $NB"
    ip link add va netns "$NA" type veth peer name vb netns "$NB"
    ip -n "$NA" addr add 10.232.0.1/24 dev va
    ip -n "$NB" addr add 10.232.0.2/24 dev vb
    for ns in "$NA" "$NB"; do ip -n "$ns" link set lo up; done
    ip -n "$NA" link set va up
    ip -n "$NB" link set vb up
    ip netns exec "$NA" "$PROXY" iptables >"$TMP/ipt.log" 2>&1
    expect_eq "capture: iptables rules installed in the pod namespace" "$?" 0
    chmod 755 "$TMP" "$D"; chmod 644 "$D"/*.pem "$TMP/policy.json"
    cat >"$TMP/cap-policy.json" <<JSON
{"rules": [
  {"name": "fe-only", "action": "allow", "from": {"principals": ["$FE"]}},
  {"name": "metrics", "action": "allow", "to": {"ports": [9090], "paths": ["/metrics"]}}]}
JSON
    cat >"$TMP/cap.json" <<JSON
{"admin": {"address": "127.0.0.1:15000"},
 "listeners": [
  {"name": "inbound", "address": "0.0.0.0:15006", "direction": "inbound", "tls": "strict",
   "permissive_ports": [9090]},
  {"name": "outbound", "address": "127.0.0.1:15001", "direction": "outbound", "tls": "mesh"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
   "cert_file": "$D/web.pem", "key_file": "$D/web-key.pem", "bundle_file": "$D/root.pem"},
 "policy_file": "$TMP/cap-policy.json"}
JSON
    chmod 644 "$TMP/cap.json" "$TMP/cap-policy.json"
    mkdir -p "$TMP/a9090" "$TMP/a8080"
    bg a9090 ip netns exec "$NA" python3 "$REMORA_ROOT/test/tools/recorder.py" "$TMP/a9090" --mode http --port 9090
    bg a8080 ip netns exec "$NA" python3 "$REMORA_ROOT/test/tools/recorder.py" "$TMP/a8080" --mode http --port 8080
    bg cap ip netns exec "$NA" setpriv --reuid=1337 --regid=1337 --clear-groups "$PROXY" -c "$TMP/cap.json"
    CAPPID=$LASTPID
    cap_ready() { [[ $(ip netns exec "$NA" curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/ready) == 200 ]]; }
    check "capture: the proxy is ready" wait_until 20 cap_ready
    check "capture: the app on 9090 listens" wait_until 10 listen_port "$TMP/a9090.log"
    check "capture: the app on 8080 listens" wait_until 10 listen_port "$TMP/a8080.log"
    inB() { ip netns exec "$NB" "$@"; }
    j=$(inB $HC one 10.232.0.1:9090 --send 'GET /metrics?m=CAP-9090 HTTP/1.1\r\nHost: pod\r\nX-Request-Id: pp-cap-1\r\n\r\n')
    expect_match "capture: plaintext from another namespace to the pod's port 9090 (listed) -> 200" \
        "$(jq -r .got <<<"$j")" '^HTTP/1.1 200'
    f=$(grep -laF CAP-9090 "$TMP/a9090"/req-*.bin 2>/dev/null | head -1)
    expect_eq "capture: the app on 9090 got the request byte for byte" \
        "$(od -An -c <"${f:-/dev/null}" | tr -s ' \n' ' ')" \
        "$(printf 'GET /metrics?m=CAP-9090 HTTP/1.1\r\nhost: pod\r\nx-request-id: pp-cap-1\r\n\r\n' | od -An -c | tr -s ' \n' ' ')"
    j=$(inB $HC one 10.232.0.1:9090 --send 'GET /admin?m=CAP-ADMIN HTTP/1.1\r\nHost: pod\r\n\r\n')
    expect_match "capture: plaintext to 9090 outside the rule's paths -> 403 (no principal)" \
        "$(jq -r .got <<<"$j")" '^HTTP/1.1 403'
    if grep -qaF CAP-ADMIN "$TMP/a9090"/conn-*.bin 2>/dev/null; then fail "capture: the denied request reached the app"
    else pass "capture: ... and it never reached the app"; fi
    j=$(inB $HC one 10.232.0.1:8080 --send 'GET /metrics?m=CAP-8080 HTTP/1.1\r\nHost: pod\r\n\r\n' --timeout 5)
    expect_eq "capture: plaintext to the pod's port 8080 (not listed) is closed, nothing back" \
        "$(jq -r '[.closed, .got] | map(tostring) | join(":")' <<<"$j")" "true:"
    n=$(grep -c '^open' "$TMP/a8080/events" 2>/dev/null); expect_eq "capture: the app on 8080 received nothing" "${n:-0}" 0
    j=$(inB $HC one 10.232.0.1:8080 "${FE_TLS[@]}" --send 'GET /x?m=CAP-MTLS-8080 HTTP/1.1\r\nHost: pod\r\n\r\n')
    expect_match "capture: mTLS to 8080 as frontend -> 200" "$(jq -r .got <<<"$j")" '^HTTP/1.1 200'
    j=$(inB $HC one 10.232.0.1:9090 "${FE_TLS[@]}" --send 'GET /admin?m=CAP-MTLS-9090 HTTP/1.1\r\nHost: pod\r\n\r\n')
    expect_match "capture: mTLS to 9090 as frontend -> 200 (mTLS still works on a listed port)" \
        "$(jq -r .got <<<"$j")" '^HTTP/1.1 200'
    m=$(ip netns exec "$NA" curl -s http://127.0.0.1:15000/metrics)
    expect_match "capture: remora_inbound_plaintext_total{port=\"9090\"} is 2" "$m" \
        $'(^|\n)remora_inbound_plaintext_total\\{port="9090"\\} 2(\n|$)'
    expect_match "capture: plaintext to 8080 counted as refused" "$m" \
        $'(^|\n)remora_tls_plaintext_refused_total 1(\n|$)'
    stop_pid "$CAPPID"; expect_eq "capture: the proxy exits 0" "$STOP_RC" 0
    expect_sanitizers_clean "sanitizers clean (capture)" "$TMP/cap.log"
fi

# ---- the injector writes the bootstrap from the annotations (AdmissionReview over HTTPS) ------
mkdir -p "$TMP/ipki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/ipki/key.pem" -out "$TMP/ipki/cert.pem" -subj "/CN=injector" \
    -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null
IPORT=$(free_port)
jq -n --arg port "$IPORT" --arg cert "$TMP/ipki/cert.pem" --arg key "$TMP/ipki/key.pem" '{
    webhook: {address: ("127.0.0.1:" + $port), cert_file: $cert, key_file: $key},
    ca: {audience: "remora-ca", ttl_seconds: 86400}, trust_domain: "cluster.local"}' >"$TMP/injector.json"
bg injector "$INJECTOR" -c "$TMP/injector.json"
IPID=$LASTPID
check "injector listens" wait_port "$IPORT"
review() { # NAME ANNOTATIONS-JSON: POST the review of a pod with those annotations; sets RESP, CODE
    jq -n --arg uid "uid-$1" --argjson ann "$2" '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
        request: {uid: $uid, kind: {group: "", version: "v1", kind: "Pod"},
                  resource: {group: "", version: "v1", resource: "pods"}, namespace: "shop",
                  operation: "CREATE", object: {apiVersion: "v1", kind: "Pod",
                    metadata: {name: "web-1", namespace: "shop", annotations: $ann},
                    spec: {serviceAccountName: "web", containers: [{name: "web", image: "nginx"}]}}}}' \
        >"$TMP/review-$1.json"
    RESP=$TMP/resp-$1.json
    CODE=$(curl -sS --cacert "$TMP/ipki/cert.pem" --max-time 10 -o "$RESP" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary "@$TMP/review-$1.json" "https://127.0.0.1:$IPORT/inject")
}
boot_of() { # RESP: the bootstrap the patch writes
    jq -r '.response.patch | @base64d | fromjson | map(select(.path == "/metadata/annotations"
        or .path == "/metadata/annotations/remora.io~1bootstrap")) | .[0].value
        | if type == "object" then .["remora.io/bootstrap"] else . end' "$1"
}
review ports '{"remora.io/permissive-ports": "9090, 8080"}'
expect_eq "injector: permissive-ports -> HTTP 200, allowed, a patch" \
    "$CODE:$(jq -r '.response.allowed, .response.patchType' "$RESP" | tr '\n' ' ')" "200:true JSONPatch "
boot_of "$RESP" >"$TMP/boot-ports.json"
expect_eq "injector: both inbound listeners are strict with permissive_ports [9090, 8080]" \
    "$(jq -c '[.listeners[] | select(.direction == "inbound") | {name, tls, permissive_ports}]' "$TMP/boot-ports.json")" \
    '[{"name":"inbound","tls":"strict","permissive_ports":[9090,8080]},{"name":"inbound6","tls":"strict","permissive_ports":[9090,8080]}]'
expect_eq "injector: the outbound listeners have none" \
    "$(jq -c '[.listeners[] | select(.direction == "outbound") | .permissive_ports]' "$TMP/boot-ports.json")" '[null,null]'
out=$("$PROXY" --check-config -c "$TMP/boot-ports.json" 2>&1)
expect_match "remora-proxy --check-config loads that bootstrap" "$?:$out" '^0:.*ok'
review perm '{"remora.io/inbound-tls": "permissive"}'
boot_of "$RESP" >"$TMP/boot-perm.json"
expect_eq "injector: inbound-tls permissive -> both inbound listeners permissive" \
    "$(jq -c '[.listeners[] | select(.direction == "inbound") | .tls]' "$TMP/boot-perm.json")" '["permissive","permissive"]'
out=$("$PROXY" --check-config -c "$TMP/boot-perm.json" 2>&1)
expect_match "remora-proxy --check-config loads that bootstrap" "$?:$out" '^0:.*ok'
review none '{}'
expect_eq "injector: no annotation -> the template's strict, no permissive_ports" \
    "$(boot_of "$RESP" | jq -c '[.listeners[] | select(.direction == "inbound") | [.tls, .permissive_ports]]')" \
    '[["strict",null],["strict",null]]'

refused() { # NAME ANNOTATIONS-JSON MESSAGE-REGEX
    review "$1" "$2"
    local got
    got=$(jq -r '[.response.allowed, .response.status.code, (.response.patch // "no-patch")] | map(tostring) | join(" ")' "$RESP")
    expect_eq "injector refuses $1: allowed false, code 400, no patch" "$CODE:$got" "200:false 400 no-patch"
    expect_match "... the message names the annotation" "$(jq -r .response.status.message "$RESP")" "$3"
}
refused bad-mode '{"remora.io/inbound-tls": "Permissive"}' \
    '^remora: annotation remora\.io/inbound-tls: "Permissive" is neither "strict" nor "permissive"$'
refused disabled '{"remora.io/inbound-tls": "disabled"}' 'remora\.io/inbound-tls: "disabled" is neither'
refused bad-port '{"remora.io/permissive-ports": "9090,metrics"}' \
    '^remora: annotation remora\.io/permissive-ports: item "metrics" is not a port \(1-65535\)$'
refused flag '{"remora.io/permissive-ports": "--all"}' 'remora\.io/permissive-ports: item "--all" is not a port'
refused twice '{"remora.io/permissive-ports": "9090,9090"}' 'remora\.io/permissive-ports: port 9090 is listed twice'
m=$(curl -sS --cacert "$TMP/ipki/cert.pem" "https://127.0.0.1:$IPORT/metrics")
expect_match "injector metrics count the refusals" "$m" \
    'remora_injector_reviews_total\{result="refused",reason="bad-annotation"\} 5'
check "injector still serving" wait_port "$IPORT"
stop_pid "$IPID"; expect_eq "injector exits 0" "$STOP_RC" 0
expect_sanitizers_clean "sanitizers clean (injector)" "$TMP/injector.log"
finish
