#!/usr/bin/env bash
# What service discovery costs the proxy (issue 18, docs/discovery.md "Proxy side"): the real
# injector's discovery service (mTLS) fed by test/tools/fake_apiserver.py, and the -O2 proxy
# ($REMORA_BUILD, default build/). Not a test (nothing asserted, no timing bound): numbers.
#   latency   LISTENERS (30) outbound listeners, listener i with upstream 127.0.1.i:APP, each
#             address an unmeshed pod in the registry (the request goes as the app sent it);
#             one backend (test-upstream) on 0.0.0.0:APP. Per i, in one curl process, each
#             request on a new connection (Connection: close): direct to 127.0.1.i:APP,
#             through listener i (a cache miss: the lookup is asked at accept), through it
#             again (a hit). Added latency = proxied - direct (the proxy's own hop included:
#             the hit's added latency is that hop); miss - hit = what the lookup adds. The
#             first miss goes over the warm lookup connection, opened when the proxy started
#             (the bench waits until /metrics shows its warm-up request sent:
#             remora_discovery_lookup_connections_total{event="keepalive"} 1; how long after
#             ready that took is in latency.json); the rest reuse it.
#   memory    a proxy with an outbound listener on 0.0.0.0:PORT without upstream, so a
#             connection to 127.1.X.Y:PORT has that destination (its local address: no
#             iptables on loopback); 1,000 pods at 127.1.X.Y in the registry. Connect and
#             close to 100, then 1,000 of them: every one becomes a destination in use, held
#             current. VmRSS of the proxy idle (the identity loaded, nothing looked up), with
#             100 and with 1,000; its connections to the discovery port (ss); the injector's
#             VmRSS, held long-polls (remora_discovery_subscribers) and CPU over the same.
# Results: perf/results/<date>-discovery-proxy/ (summary.md, results.json, logs).
#   perf/bench-discovery-proxy.sh          LISTENERS=30 DESTS="100 1000"
set -uo pipefail
export REMORA_BUILD=${REMORA_BUILD:-build}
source "$(dirname "${BASH_SOURCE[0]}")/../test/lib.sh"
LISTENERS=${LISTENERS:-30}
DESTS=${DESTS:-100 1000}
OUT=${OUT:-$REMORA_ROOT/perf/results/$(date -u +%F-%H%M)-discovery-proxy}
mkdir -p "$OUT"
die() { echo "bench-discovery-proxy: $*" >&2; exit 1; }

# ---- PKI, fake API server (test/lib.sh disc_registry), injector ------------------------
ca_pki || die "pki"
disc_registry || die "fake API server: $(tail -5 "$TMP/fake.log")"
"$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" \
    --spiffe-id spiffe://cluster.local/ns/bench/sa/client --out-cert "$D/w.pem" --out-key "$D/w-key.pem" \
    >/dev/null || die "workload cert"
NMAX=0
for n in $DESTS; do ((n > NMAX)) && NMAX=$n; done
# unmeshed pods: 127.0.1.1..LISTENERS (latency) and 127.1.X.Y (memory)
python3 - "$CTL" "$LISTENERS" "$NMAX" <<'PY' || die "seeding pods"
import json, sys, urllib.request
ctl, nl, nm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def put(name, ip):
    body = {"metadata": {"name": name, "namespace": "bench", "labels": {"app": name}},
            "spec": {"serviceAccountName": "legacy", "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    rq = urllib.request.Request(ctl + "/objects/pods", data=json.dumps(body).encode(), method="PUT")
    urllib.request.urlopen(rq, timeout=10).read()
for i in range(1, nl + 1):
    put("lat-%d" % i, "127.0.1.%d" % i)
for i in range(nm):
    put("mem-%d" % i, "127.1.%d.%d" % (i // 250, i % 250 + 1))
PY
DP=$(free_port)
ca_config main 3600 "$(jq -n --arg a "127.0.0.1:$DP" --arg api "https://127.0.0.1:$APIP" \
    --arg tok "$TMP/sa-token" --arg ca "$D/apica.pem" \
    '{discovery: {address: $a, api: $api, token_file: $tok, ca_file: $ca,
                  max_connections_per_ip: 4000, max_connections: 8000}}')" '.log_level = "warn"'
ca_start_injector "$TMP/main.json" || die "injector: $(tail -5 "$TMP/injector-1.log")"
wait_port "$DP" || die "discovery port"
wait_until 60 disc_readyz || die "injector not synced"

APP=$(free_port)
bg backend "$UPSTREAM" --listen "0.0.0.0:$APP" --name backend
wait_until 5 accepts "$APP" || die "backend"

identity='"identity": {"trust_domain": "cluster.local", "namespace": "bench", "service_account": "client",
  "cert_file": "'$D/w.pem'", "key_file": "'$D/w-key.pem'", "bundle_file": "'$D/root.pem'"}'
disc='"discovery": {"address": "127.0.0.1:'$DP'", "lookup_timeout_ms": 3000}'

# ---- latency ------------------------------------------------------------------------------
ADMIN_PORT=$(free_port)
ls=()
ports=()
for i in $(seq 1 "$LISTENERS"); do
    p=$(free_port)
    ports+=("$p")
    ls+=("{\"name\": \"l$i\", \"address\": \"127.0.0.1:$p\", \"direction\": \"outbound\", \"tls\": \"mesh\", \"upstream\": \"127.0.1.$i:$APP\"}")
done
(IFS=,; printf '{"admin": {"address": "127.0.0.1:%s"}, "log_level": "warn", "listeners": [%s], %s, %s}\n' \
    "$ADMIN_PORT" "${ls[*]}" "$identity" "$disc") >"$TMP/lat.json"
start_proxy lat "$TMP/lat.json" || die "latency proxy: $(tail -5 "$TMP/lat.log")"
t_ready=$(date +%s%N)
warm_open() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
    grep -q '^remora_discovery_lookup_connections_total{event="keepalive"} 1$'; }
WAIT_UNTIL_STEP=0.005 wait_until 10 warm_open || echo "bench-discovery-proxy: no warm lookup connection" >&2
warm_after_ready_ms=$(( ($(date +%s%N) - t_ready) / 1000000 ))
sleep 0.2 # its answer (a round trip)
urls=()
for i in $(seq 1 "$LISTENERS"); do
    urls+=(-o /dev/null "http://127.0.1.$i:$APP/d" -o /dev/null "http://127.0.0.1:${ports[$((i - 1))]}/m"
        -o /dev/null "http://127.0.0.1:${ports[$((i - 1))]}/h")
done
curl -s -H 'Connection: close' -w '%{http_code} %{time_total}\n' "${urls[@]}" >"$OUT/latency.txt"
python3 - "$OUT/latency.txt" "$warm_after_ready_ms" >"$OUT/latency.json" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
bad = [r for r in rows if r[0] != "200"]
t = [float(r[1]) * 1000 for r in rows]
direct, miss, hit = t[0::3], t[1::3], t[2::3]
def s(v):
    v = sorted(v)
    return {"n": len(v), "median_ms": round(statistics.median(v), 3), "min_ms": round(v[0], 3),
            "max_ms": round(v[-1], 3)}
warm = miss[1:]
out = {"non_200": len(bad), "direct": s(direct), "miss_first": round(miss[0], 3),
       "miss_first_over_hit_ms": round(miss[0] - statistics.median(hit), 3),
       "warm_connection_open_ms_after_ready": int(sys.argv[2]),
       "miss_warm": s(warm), "hit": s(hit),
       "added_by_lookup_warm_median_ms": round(statistics.median([m - h for m, h in zip(warm, hit[1:])]), 3),
       "miss_over_direct": round(statistics.median(warm) / statistics.median(direct), 2),
       "hit_over_direct": round(statistics.median(hit) / statistics.median(direct), 2)}
print(json.dumps(out, indent=1))
PY
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^remora_discovery' >"$OUT/latency-metrics.txt"
stop_pid "$PROXY_PID"

# ---- memory -------------------------------------------------------------------------------
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
conns_to_dp() { ss -tnH state established "( dport = :$DP )" | wc -l; }
subscribers() { curl -s --cacert "$D/wh.pem" --resolve "$SVC:$WH:127.0.0.1" "https://$SVC:$WH/metrics" |
    awk '/^remora_discovery_subscribers / {print $2} /^remora_discovery_watched_destinations / {print "w" $2}' | tr '\n' ' '; }
ADMIN_PORT=$(free_port)
MP=$(free_port)
printf '{"admin": {"address": "127.0.0.1:%s"}, "log_level": "warn", "listeners": [{"name": "o", "address": "0.0.0.0:%s", "direction": "outbound"}], %s, %s}\n' \
    "$ADMIN_PORT" "$MP" "$identity" "$disc" >"$TMP/mem.json"
start_proxy mem "$TMP/mem.json" || die "memory proxy: $(tail -5 "$TMP/mem.log")"
sleep 2
idle=$(rss "$PROXY_PID")
idle_conns=$(conns_to_dp)
inj_idle=$(rss "$IPID")
inj_cpu0=$(cpu_ticks "$IPID")
echo "{\"proxy_idle_kb\": $idle, \"proxy_idle_conns_to_discovery\": $idle_conns, \"injector_idle_kb\": $inj_idle}" >"$OUT/memory.jsonl"
done_n=0
for n in $DESTS; do
    python3 - "$MP" "$done_n" "$n" <<'PY'
import socket, sys
port, a, b = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(a, b):
    s = socket.create_connection(("127.1.%d.%d" % (i // 250, i % 250 + 1), port), timeout=10)
    s.close()
PY
    done_n=$n
    current() { [[ $(curl -s "http://127.0.0.1:$ADMIN_PORT/destinations" |
        jq '[.destinations[] | select(.state == "current")] | length') -ge $n ]]; }
    wait_until 120 current || echo "bench-discovery-proxy: only $(curl -s "http://127.0.0.1:$ADMIN_PORT/destinations" | jq '[.destinations[] | select(.state == "current")] | length') of $n current" >&2
    sleep 3 # the watch settles
    r=$(rss "$PROXY_PID")
    jq -nc --argjson n "$n" --argjson rss "$r" --argjson idle "$idle" --argjson c "$(conns_to_dp)" \
        --argjson ir "$(rss "$IPID")" --argjson ii "$inj_idle" --arg subs "$(subscribers)" \
        --argjson cpu "$(( ($(cpu_ticks "$IPID") - inj_cpu0) * 10 ))" \
        '{destinations: $n, proxy_rss_kb: $rss, proxy_over_idle_kb: ($rss - $idle),
          proxy_conns_to_discovery: $c, injector_rss_kb: $ir, injector_over_idle_kb: ($ir - $ii),
          injector_metrics: $subs, injector_cpu_ms_since_idle: $cpu}' | tee -a "$OUT/memory.jsonl"
done
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^remora_discovery' >"$OUT/memory-metrics.txt"
stop_pid "$PROXY_PID"

# ---- the injector's cost of an idle proxy connection (the warm lookup connection) ----------
# CONNS (500) mTLS connections with the workload certificate, each through one GET /v1/ping
# (authenticated, its buffers allocated), then held idle: the injector's VmRSS over before.
CONNS=${CONNS:-500}
sleep 1
python3 - "$DP" "$CONNS" "$D" "$IPID" >"$OUT/idle-conns.json" <<'PY'
import json, socket, ssl, sys, time
port, n, d, ipid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=d + "/root.pem")
ctx.check_hostname = False
ctx.load_cert_chain(d + "/w.pem", d + "/w-key.pem")
def rss():
    for l in open("/proc/%s/status" % ipid):
        if l.startswith("VmRSS"):
            return int(l.split()[1])
before = rss()
held = []
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    s.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    held.append(s)
time.sleep(2)
after = rss()
print(json.dumps({"connections": n, "injector_rss_before_kb": before, "injector_rss_after_kb": after,
                  "injector_kb_per_idle_connection": round((after - before) / n, 1),
                  "status_line": data.split(b"\r\n")[0].decode()}))
for s in held:
    s.close()
PY
cat "$OUT/idle-conns.json"
cp "$TMP"/*.log "$OUT/" 2>/dev/null
{
    echo "# bench-discovery-proxy $(date -u +%FT%TZ) ($(git -C "$REMORA_ROOT" rev-parse --short HEAD), $REMORA_BUILD)"
    echo; echo '## latency (ms)'; echo '```'; cat "$OUT/latency.json"; echo '```'
    echo; echo '## memory'; echo '```'; cat "$OUT/memory.jsonl"; echo '```'
    echo; echo '## the injector, idle proxy connections'; echo '```'; cat "$OUT/idle-conns.json"; echo '```'
} >"$OUT/summary.md"
cat "$OUT/summary.md"
