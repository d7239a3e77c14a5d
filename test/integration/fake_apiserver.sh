#!/usr/bin/env bash
# test/tools/fake_apiserver.py's list/watch itself (what discovery.sh and
# perf/bench-discovery.sh rely on), checked the way client-go would see it:
#  - lists of Services, EndpointSlices, Pods, cluster-wide and per namespace, paged with
#    limit/continue from one snapshot (a write between pages does not show; one RV);
#    labelSelector; an expired continue token is 410; no token is 401;
#  - a watch from the list's RV streams the writes after it, in RV order, as chunked JSON
#    lines; bookmarks carry an RV no older than the last event; RV 0 replays ADDED;
#    an RV older than the history is an ERROR event with a 410 Status (or HTTP 410);
#    expire/drop/garbage/truncate reach open watches; down refuses connections, up accepts;
#  - kubectl finds the kinds (API discovery), lists them and watches (get pods -w);
#  - the generated 10,000 x 10 cluster is ready and listed within generous bounds.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
FAKE=(python3 "$REMORA_ROOT/test/tools/fake_apiserver.py")
D=$TMP/pki
mkdir -p "$D"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout "$D/api-key.pem" \
    -out "$D/api.pem" -subj "/CN=api" -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null || exit 1

start_fake() { # NAME CLUSTER-JSON: sets API, CTL, FAKE_PID
    bg "$1" "${FAKE[@]}" --cert "$D/api.pem" --key "$D/api-key.pem" --port-file "$TMP/$1.port" \
        --control-listen 127.0.0.1:0 --control-port-file "$TMP/$1.cport" --cluster "$2"
    FAKE_PID=$LASTPID
    wait_until 60 test -s "$TMP/$1.port" -a -s "$TMP/$1.cport" || { fail "$1 starts"; cat "$TMP/$1.log"; finish; }
    API=https://127.0.0.1:$(cat "$TMP/$1.port")
    CTL=http://127.0.0.1:$(cat "$TMP/$1.cport")/_control
    curl -s -X PUT --data-binary '{"token": "tok"}' "$CTL/state" >/dev/null
}
start_fake small '{"services": 6, "endpoints": 4, "namespaces": 2, "meshed": 0.5, "headless": 0.2}'
# the checks that need a stream reader are in Python; they print PASS:/FAIL: lines
python3 - "$API" "$CTL" "$D/api.pem" <<'PY'
import base64, http.client, json, socket, ssl, sys, time, urllib.request, urllib.error
API, CTL, CA = sys.argv[1:]
ctx = ssl.create_default_context(cafile=CA)
host, port = API.split("//")[1].rsplit(":", 1)
fails = 0

def check(name, ok, extra=""):
    global fails
    print(("PASS: " if ok else "FAIL: ") + name + ("" if ok else " " + extra), flush=True)
    fails += not ok

def get(path, token="tok"):
    req = urllib.request.Request(API + path, headers={"Authorization": "Bearer " + token} if token else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

def ctl(what, body):
    req = urllib.request.Request(CTL + "/" + what, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())

def names(items):
    return [i["metadata"]["namespace"] + "/" + i["metadata"]["name"] for i in items]

class Watch:
    """One watch stream, read line by line with a deadline."""
    def __init__(self, path):
        self.c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=20)
        self.c.request("GET", path, headers={"Authorization": "Bearer tok"})
        self.r = self.c.getresponse()
        self.status = self.r.status
        self.headers = dict(self.r.getheaders())
    def next(self, timeout=10):
        self.c.sock.settimeout(timeout)
        line = self.r.readline()
        return json.loads(line) if line.strip() else None
    def raw(self, timeout=10):
        self.c.sock.settimeout(timeout)
        return self.r.readline()
    def close(self):
        self.c.close()

# ---- lists ------------------------------------------------------------------------------
code, b = get("/api/v1/services")
check("services list: 200 ServiceList with 6 items and a resourceVersion",
      code == 200 and b["kind"] == "ServiceList" and len(b["items"]) == 6 and b["metadata"]["resourceVersion"].isdigit(), str(b)[:200])
check("... svc-1 has ClusterIP 10.96.0.2, svc-4 is headless (None)",
      {i["metadata"]["name"]: i["spec"]["clusterIP"] for i in b["items"]}.get("svc-1") == "10.96.0.2" and
      {i["metadata"]["name"]: i["spec"]["clusterIP"] for i in b["items"]}.get("svc-4") == "None")
code, b = get("/api/v1/namespaces/ns-1/services")
check("per-namespace list: only ns-1's services", code == 200 and names(b["items"]) == ["ns-1/svc-1", "ns-1/svc-3", "ns-1/svc-5"], str(names(b["items"])))
code, b = get("/apis/discovery.k8s.io/v1/namespaces/ns-0/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dsvc-2")
eps = b["items"][0]["endpoints"] if code == 200 and b["items"] else []
check("labelSelector: svc-2's one slice, 4 endpoints with pod targetRefs, zones and conditions",
      code == 200 and len(b["items"]) == 1 and len(eps) == 4 and
      [e["zone"] for e in eps] == ["z1", "z2", "z3", "z1"] and
      all(e["conditions"] == {"ready": True, "serving": True, "terminating": False} for e in eps) and
      [e["targetRef"]["name"] for e in eps] == ["svc-2-0", "svc-2-1", "svc-2-2", "svc-2-3"], str(b)[:300])
code, b = get("/api/v1/pods")
meshed = {p["metadata"]["name"].rsplit("-", 1)[0] for p in b["items"] if "remora.io/status" in (p["metadata"].get("annotations") or {})}
check("pods: 24, service account sa-I, pods of svc-1, svc-3, svc-5 meshed (remora.io/status)",
      len(b["items"]) == 24 and meshed == {"svc-1", "svc-3", "svc-5"} and
      all(p["spec"]["serviceAccountName"] == "sa-" + p["metadata"]["name"].split("-")[1] for p in b["items"]), str(meshed))
code, _ = get("/api/v1/pods", token=None)
check("no token: 401", code == 401)
code, _ = get("/api/v1/pods?labelSelector=a%20b%20c")
check("a bad labelSelector: 400", code == 400)

code, p1 = get("/api/v1/pods?limit=10")
rv = p1["metadata"]["resourceVersion"]
ctl("scale", {"service": "ns-0/svc-0", "replicas": 6})
seen = list(p1["items"])
cont, pages = p1["metadata"].get("continue"), 1
while cont:
    code, p = get("/api/v1/pods?limit=10&continue=" + cont)
    check("page %d: 200, same resourceVersion %s" % (pages + 1, rv), code == 200 and p["metadata"]["resourceVersion"] == rv, str(p)[:200])
    seen += p["items"]
    cont, pages = p["metadata"].get("continue"), pages + 1
check("paged list: 3 pages, the 24 pods of the snapshot (the 2 pods added after page 1 are not in it)",
      pages == 3 and len(set(names(seen))) == 24 and "ns-0/svc-0-5" not in names(seen), "%d pages, %d" % (pages, len(seen)))
code, p1 = get("/api/v1/pods?limit=5")
ctl("compact", {})
code, b = get("/api/v1/pods?limit=5&continue=" + p1["metadata"]["continue"])
check("a continue token from before a compaction: 410 Expired", code == 410 and b["reason"] == "Expired", str(b))
code, b = get("/api/v1/pods?limit=5&continue=bm90IGpzb24=")
check("a garbage continue token: 400", code == 400)

# ---- watches ------------------------------------------------------------------------------
code, b = get("/apis/discovery.k8s.io/v1/endpointslices")
rv = int(b["metadata"]["resourceVersion"])
ctl("cluster", {"bookmark_s": 0.5})
w = Watch("/apis/discovery.k8s.io/v1/endpointslices?watch=1&allowWatchBookmarks=true&resourceVersion=%d" % rv)
check("watch: 200, chunked", w.status == 200 and w.headers.get("Transfer-Encoding") == "chunked", str(w.headers))
ctl("endpoint", {"pod": "ns-1/svc-1-0", "ready": False})
ctl("endpoint", {"pod": "ns-1/svc-1-1", "ready": False, "serving": True, "terminating": True})
ctl("scale", {"service": "ns-1/svc-1", "replicas": 2})
evs = [w.next() for _ in range(3)]
rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
check("three MODIFIED events for svc-1's slice, in RV order after the list's RV",
      [e["type"] for e in evs] == ["MODIFIED"] * 3 and rvs == sorted(rvs) and rvs[0] > rv, str(rvs))
c = [(e["targetRef"]["name"], e["conditions"]) for e in evs[1]["object"]["endpoints"]][:2]
check("... not ready, then terminating (serving), then 2 endpoints",
      c == [("svc-1-0", {"ready": False, "serving": True, "terminating": False}),
            ("svc-1-1", {"ready": False, "serving": True, "terminating": True})] and
      len(evs[2]["object"]["endpoints"]) == 2, str(c))
bm = w.next(5)
check("a BOOKMARK while idle, RV >= the last event's", bm and bm["type"] == "BOOKMARK" and
      int(bm["object"]["metadata"]["resourceVersion"]) >= rvs[-1], str(bm))
ctl("watches", {"action": "send", "bytes": "garbage{\n"})
check("garbage reaches the open watch as a raw line", w.raw() == b"garbage{\n")
ctl("compact", {"expire_watches": True})
e = w.next()
check("expire: an ERROR event with a 410 Expired Status, then the stream ends",
      e["type"] == "ERROR" and e["object"]["code"] == 410 and e["object"]["reason"] == "Expired" and w.raw() == b"", str(e))
w.close()

w = Watch("/api/v1/pods?watch=1&resourceVersion=%d" % rv)
e = w.next()
check("watch from an RV older than the history: ERROR 410 'too old resource version'",
      e["type"] == "ERROR" and e["object"]["code"] == 410 and "too old resource version" in e["object"]["message"], str(e))
w.close()
ctl("cluster", {"gone_as": "http"})
code, b = get("/api/v1/pods?watch=1&resourceVersion=%d" % rv)
check("gone_as http: the same watch is HTTP 410", code == 410 and b["code"] == 410, str(code))
ctl("cluster", {"gone_as": "event"})

w = Watch("/api/v1/namespaces/ns-1/services?watch=1&resourceVersion=0")
evs = [w.next() for _ in range(3)]
check("watch from RV 0: ADDED for each of ns-1's services first",
      [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "svc-1"), ("ADDED", "svc-3"), ("ADDED", "svc-5")], str(evs)[:200])
ctl("watches", {"action": "drop"})
check("drop: the stream ends cleanly", w.raw() == b"")
w.close()

code, b = get("/api/v1/pods")
w = Watch("/api/v1/pods?watch=1&resourceVersion=" + b["metadata"]["resourceVersion"])
ctl("mesh", {"pod": "ns-0/svc-0-0"})
e = w.next()
check("mesh: the pod MODIFIED with remora.io/status", e["type"] == "MODIFIED" and
      "remora.io/status" in e["object"]["metadata"]["annotations"], str(e)[:200])
ctl("watches", {"action": "truncate"})
try:
    w.raw(); w.raw()
    ok = False
except (http.client.IncompleteRead, ConnectionError, ValueError):
    ok = True
check("truncate: the stream stops in the middle of a chunk", ok)
w.close()

ctl("down", {})
try:
    get("/api/v1/pods?limit=1")
    ok = False
except (urllib.error.URLError, ConnectionError, ssl.SSLError, OSError):
    ok = True
check("down: API connections are closed", ok)
ctl("up", {})
check("up: answered again", get("/api/v1/pods?limit=1")[0] == 200)
sys.exit(1 if fails else 0)
PY

# ---- kubectl against it (API discovery, list, watch) ---------------------------------------------
cat >"$TMP/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "$API", certificate-authority: "$D/api.pem"}}]
users: [{name: u, user: {token: tok}}]
contexts: [{name: c, context: {cluster: fake, user: u}}]
current-context: c
KC
K=(kubectl --kubeconfig "$TMP/kubeconfig" --cache-dir "$TMP/kcache" --request-timeout 20s)
expect_eq "kubectl get endpointslices -A: the 6 slices, by name" \
    "$("${K[@]}" get endpointslices -A -o name 2>&1 | sort | paste -sd,)" \
    "$(for i in 0 1 2 3 4 5; do echo "endpointslice.discovery.k8s.io/svc-$i-0"; done | sort | paste -sd,)"
bg kwatch "${K[@]}" get pods -n ns-1 -w -o name
KW=$LASTPID
kw_has() { grep -q "^pod/$1\$" "$TMP/kwatch.log"; }
wait_until 20 kw_has svc-5-0 || { fail "kubectl get pods -w lists ns-1's pods"; cat "$TMP/kwatch.log"; }
curl -s -X POST --data-binary '{"service": "ns-1/svc-5", "replicas": 5}' "$CTL/scale" >/dev/null
check "kubectl get pods -w: the pod a scale-up adds arrives on the watch" wait_until 10 kw_has svc-5-4
kill "$KW"
stop_pid "$FAKE_PID"

# ---- the benchmark's size -----------------------------------------------------------------------
t0=$SECONDS
start_fake big '{"services": 10000, "endpoints": 10, "namespaces": 50}'
s=$((SECONDS - t0))
((s < 60)) && pass "10,000 services x 10 endpoints generated and listening in ${s} s (bound 60)" ||
    fail "10,000 x 10 took ${s} s"
t0=${EPOCHREALTIME//[!0-9]/}
n=$(curl -s --cacert "$D/api.pem" -H "Authorization: Bearer tok" "$API/api/v1/pods" | jq '.items | length')
ms=$(((${EPOCHREALTIME//[!0-9]/} - t0) / 1000))
expect_eq "all 100,000 pods in one list (${ms} ms)" "$n" 100000
expect_eq "... and 10,000 EndpointSlices" \
    "$(curl -s "$CTL/cluster" | jq -c '[.objects.services, .objects.endpointslices, .objects.pods]')" '[10000,10000,100000]'
finish
