# shellcheck shell=bash
# The fixture of test/integration/e2e_discovery.sh (docs/e2e.md "Service discovery"):
# objects for the fake API server, and readers of what the apps recorded. Source after
# test/e2e/lib.sh; the functions read the suite's IP map (pod -> address), $E2E (the
# recorders write under $E2E/rec/POD and $E2E/inet/rec) and e2e_ctl.

# ---- the registry: objects for the fake API server (test/tools/fake_apiserver.py) ---------
# reg_pod NAME SA MESHED: a running, Ready Pod at IP[NAME]; meshed pods carry
# remora.io/status as injected pods do
reg_pod() {
    jq -n --arg name "$1" --arg sa "$2" --argjson meshed "$3" --arg ip "${IP[$1]}" '{
        metadata: ({name: $name, namespace: "shop", labels: {app: ($name | sub("-[0-9x]$"; ""))}}
                   + (if $meshed then {annotations: {"remora.io/status": "{\"version\":\"e2e\"}"}}
                      else {} end)),
        spec: {serviceAccountName: $sa, nodeName: "node-1",
               containers: [{name: "app", image: "app", ports: [{name: "http", containerPort: 8080}]}]},
        status: {phase: "Running", podIP: $ip, podIPs: [{ip: $ip}],
                 conditions: [{type: "Ready", status: "True"}]}}'
}
# reg_service NAME VIP: port 80 (http) -> 8080
reg_service() {
    jq -n --arg name "$1" --arg vip "$2" '{metadata: {name: $name, namespace: "shop"},
        spec: {type: "ClusterIP", clusterIP: $vip, clusterIPs: [$vip], selector: {app: $name},
               ports: [{name: "http", port: 80, targetPort: 8080, protocol: "TCP"}]}}'
}
# reg_slice SERVICE POD...: the Service's one EndpointSlice, with these pods, ready
reg_slice() {
    local svc=$1 eps=() p
    shift
    for p in "$@"; do
        eps+=("$(jq -n --arg p "$p" --arg ip "${IP[$p]}" '{addresses: [$ip],
            conditions: {ready: true, serving: true, terminating: false},
            targetRef: {kind: "Pod", namespace: "shop", name: $p}, nodeName: "node-1", zone: "z1"}')")
    done
    jq -n --arg svc "$svc" --argjson eps "$(printf '%s\n' "${eps[@]}" | jq -s .)" '{
        metadata: {name: ($svc + "-e2e"), namespace: "shop",
                   labels: {"kubernetes.io/service-name": $svc,
                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        addressType: "IPv4", ports: [{name: "http", port: 8080, protocol: "TCP"}],
        endpoints: $eps}'
}
put() { # KIND JSON: an object (or a list) into the fake API server; fails on its refusal
    local out
    out=$(e2e_ctl "objects/$1" --fail-with-body -X PUT --data-binary "$2") ||
        { echo "put $1: $out" >&2; return 1; }
}

# ---- what reached the apps, and the clients' side -------------------------------------
# hits NAME PATH-PREFIX: requests for PATH-PREFIX* that reached NAME's app
hits() { grep -ao "GET $2[^ ]* HTTP/1.1" "$E2E/rec/$1/all.bin" 2>/dev/null | wc -l; }
# inet_conns PORT: connections the internet host accepted on PORT
inet_conns() { wc -l <"$E2E/inet/rec/$1.conns" 2>/dev/null || echo 0; }
# head_in FILE PATH: the head of the first request for PATH* recorded in FILE
head_in() {
    python3 - "$1" "$2" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
i = data.find(b"GET " + sys.argv[2].encode())
if i >= 0:
    j = data.find(b"\r\n\r\n", i)
    sys.stdout.write(data[i:j + 4 if j >= 0 else len(data)].decode("latin-1"))
PY
}
# as_sent FILE PATH SENT: "ok" when the first request for PATH recorded in FILE is SENT (a
# request head) byte for byte, but for what every sidecar does to an HTTP request
# (docs/observability.md): header names lower-cased, and x-request-id and traceparent
# (well-formed) appended, nothing else; otherwise what differs
as_sent() {
    python3 - "$@" <<'PY'
import re, sys
data = open(sys.argv[1], "rb").read() if len(sys.argv) > 1 else b""
path, sent = sys.argv[2].encode(), sys.argv[3].encode().rstrip(b"\r\n")
i = data.find(b"GET " + path + b" ")
if i < 0:
    sys.exit(print("nothing for %s reached it" % path.decode()))
got = data[i:data.find(b"\r\n\r\n", i) + 4]
line, *hdrs = sent.split(b"\r\n")
want = b"\r\n".join([line] + [h.split(b":")[0].lower() + h[h.index(b":"):] for h in hdrs])
extra = got[len(want):-4]
ok = got.startswith(want + b"\r\n") and re.fullmatch(
    rb"\r\ntraceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\r\nx-request-id: [0-9a-f-]{36}", extra)
print("ok" if ok else "got %r, sent %r" % (got, sent))
PY
}
# with_header NAME PATH HEADER-LINE: how many requests for PATH* that reached NAME's app
# carry HEADER-LINE exactly
with_header() {
    python3 - "$E2E/rec/$1/all.bin" "$2" "$3" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
heads = [h for h in data.split(b"\r\n\r\n") if h.startswith(b"GET " + sys.argv[2].encode())]
print(sum(1 for h in heads if sys.argv[3].encode() in h.split(b"\r\n")[1:]))
PY
}
# pc POD CURL-ARGS...: curl in POD's client container (UID 1000, no proxy settings)
pc() { local p=$1; shift; e2e_exec "$p" client curl -s "$@"; }
# admin POD PATH: the pod's sidecar admin API (127.0.0.1:15000 in the pod's network
# namespace; loopback is not captured)
admin() { ip netns exec "$(pod_status "$1" .netns)" curl -s -m 5 "http://127.0.0.1:15000$2"; }
# dest_endpoints POD DEST: the endpoints the pod's sidecar holds for DEST ("a b c")
dest_endpoints() {
    admin "$1" /destinations | jq -r --arg d "$2" \
        '[.destinations[] | select(.destination == $d) | .answer.endpoints[]?.address] | sort | join(" ")'
}
