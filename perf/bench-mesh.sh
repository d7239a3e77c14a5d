#!/usr/bin/env bash
# The cost of the mesh on the pod-to-pod path (docs/e2e.md "Numbers").
#
# Two pods with sidecars (injected by remora-injector, exactly as test/integration/e2e.sh
# runs them: strict mTLS, a policy, CA-issued certificates) and the same two pods without
# (remora.io/inject: "false"), on one bridge. A client in pod A sends HTTP/1.1 GETs to
# pod B's app at a fixed rate with h2load --rps (wrk has no fixed rate; h2load's
# per-request log gives every latency, so percentiles are exact, not histogram buckets).
# Keep-alive connections: the steady state, handshakes excluded (docs/performance.md
# measures those). Latency is per request, from h2load's send to the last byte.
#
#   perf/bench-mesh.sh [--rates 1000,5000] [--duration 10] [--repeat 3] [--out DIR]
# Direct and mesh runs alternate, each pair --repeat times; the table shows the median of
# each percentile over the repeats (and the load average, since a busy machine shows up
# in p99 long before p50).
# Needs root, the release build (make), h2load. Writes DIR/summary.md and
# DIR/summary.json (default perf/results/<date>-mesh/).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
RATES=1000,5000
DURATION=10
REPEAT=3
OUT=""
while (($#)); do
    case $1 in
    --rates) RATES=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "bench-mesh: unknown flag $1" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "bench-mesh: needs root (network namespaces)" >&2; exit 2; }
command -v h2load >/dev/null || { echo "bench-mesh: h2load not found (nghttp2-client)" >&2; exit 2; }
export REMORA_BUILD=${REMORA_BUILD:-build}
[[ -x $REMORA_BUILD/remora-proxy && -x $REMORA_BUILD/remora-injector ]] ||
    { echo "bench-mesh: build first (make)" >&2; exit 2; }
OUT=${OUT:-perf/results/$(date +%Y-%m-%d-%H%M)-mesh}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# shellcheck source=../test/lib.sh
source test/lib.sh
# shellcheck source=../test/e2e/lib.sh
source test/e2e/lib.sh
# shellcheck disable=SC2034 # read by e2e_pod
E2E_WAIT=60
e2e_cluster || { echo "bench-mesh: cluster setup failed" >&2; exit 1; }
cat >"$E2E/policy.json" <<'EOF'
{"default": "deny", "rules": [{"name": "frontend", "action": "allow",
  "from": {"principals": ["spiffe://cluster.local/ns/shop/sa/frontend"]},
  "to": {"methods": ["GET"], "paths": ["/bench/*"]}}]}
EOF
e2e_configmap shop/remora-ca-root root.pem "$E2E/pki/root.pem"
e2e_configmap shop/policy policy.json "$E2E/policy.json"

pod() { # NAME SA ANNOTATIONS CONTAINERS
    jq -n --arg name "$1" --arg sa "$2" --argjson ann "$3" --argjson cs "$4" '{
        apiVersion: "v1", kind: "Pod",
        metadata: {name: $name, namespace: "shop", annotations: $ann},
        spec: {serviceAccountName: $sa, terminationGracePeriodSeconds: 10,
               securityContext: {runAsUser: 1000, runAsGroup: 1000},
               volumes: [{name: "scratch", emptyDir: {}}],
               containers: $cs}}' >"$E2E/$1.json"
}
CLIENT='[{"name": "client", "image": "remora-e2e/toolbox",
          "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]}]'
SERVER='[{"name": "app", "image": "remora-e2e/app",
          "args": ["--listen", "0.0.0.0:8080", "--name", "server", "--log-level", "warn"]}]'
pod a frontend '{}' "$CLIENT"
pod b backend '{"remora.io/policy": "policy"}' "$SERVER"
pod a0 frontend '{"remora.io/inject": "false"}' "$CLIENT"
pod b0 backend '{"remora.io/inject": "false"}' "$SERVER"
if ! { e2e_pod b 10.232.0.21 "$E2E/b.json" && e2e_pod a 10.232.0.22 "$E2E/a.json" &&
    e2e_pod b0 10.232.0.31 "$E2E/b0.json" && e2e_pod a0 10.232.0.32 "$E2E/a0.json"; }; then
    echo "bench-mesh: pods did not come up" >&2
    exit 1
fi

rss_kb() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
PA=$(e2e_proxy_pid a)
PB=$(e2e_proxy_pid b)
idle_a=$(rss_kb "$PA" VmRSS)
idle_b=$(rss_kb "$PB" VmRSS)

# run MODE CLIENT-POD SERVER-IP RATE: one fixed-rate run; prints a JSON line
run() {
    local mode=$1 client=$2 ip=$3 rate=$4
    local conns=$((rate / 100)) # 100 req/s per connection, one request in flight each
    ((conns < 1)) && conns=1
    local scratch=$E2E/pods/$client/volumes/scratch
    rm -f "$scratch/lat.log"
    # warm-up: pools, sessions, caches
    e2e_exec "$client" client h2load --h1 -c "$conns" --rps 100 -D 2 -t 1 \
        "http://$ip:8080/bench/warm" >/dev/null 2>&1
    e2e_exec "$client" client h2load --h1 -c "$conns" --rps $((rate / conns)) -D "$DURATION" \
        -t 1 --log-file /tmp/lat.log "http://$ip:8080/bench/x" >"$OUT/h2load-$mode-$rate.txt" 2>&1
    python3 - "$scratch/lat.log" "$mode" "$rate" "$DURATION" <<'EOF'
import json, sys
path, mode, rate, dur = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lat, bad = [], 0
with open(path) as f:
    for line in f:
        p = line.split()
        if len(p) < 3:
            continue
        if not p[1].startswith("2"):
            bad += 1
        lat.append(int(p[2]))
lat.sort()
def q(x):
    return lat[min(len(lat) - 1, int(x * len(lat)))] / 1000.0 if lat else None
print(json.dumps({"mode": mode, "rate": rate, "requests": len(lat), "non_2xx": bad,
                  "achieved_rps": round(len(lat) / dur), "p50_ms": q(0.50), "p90_ms": q(0.90),
                  "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": lat[-1] / 1000.0 if lat else None}))
EOF
}

: >"$OUT/runs.jsonl"
IFS=, read -ra rate_list <<<"$RATES"
# CPU of the sidecars: user+system clock ticks and the requests they served
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
reqs() { e2e_exec "$1" remora-proxy curl -s -m 5 http://127.0.0.1:15000/stats | jq .requests_total; }
cpu0_a=$(cpu_ticks "$PA"); cpu0_b=$(cpu_ticks "$PB")
req0_a=$(reqs a); req0_b=$(reqs b)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((i = 0; i < REPEAT; i++)); do
    for r in "${rate_list[@]}"; do
        run direct a0 10.232.0.31 "$r" >>"$OUT/runs.jsonl"
        run mesh a 10.232.0.21 "$r" >>"$OUT/runs.jsonl"
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
hz=$(getconf CLK_TCK)
us_per_req() { # TICKS0 TICKS1 REQ0 REQ1
    awk -v t="$(($2 - $1))" -v r="$(($4 - $3))" -v hz="$hz" \
        'BEGIN { if (r > 0) printf "%.1f", t * 1e6 / hz / r; else print "null" }'
}
cpu_a=$(us_per_req "$cpu0_a" "$(cpu_ticks "$PA")" "$req0_a" "$(reqs a)")
cpu_b=$(us_per_req "$cpu0_b" "$(cpu_ticks "$PB")" "$req0_b" "$(reqs b)")
load_a=$(rss_kb "$PA" VmRSS)
load_b=$(rss_kb "$PB" VmRSS)
hwm_a=$(rss_kb "$PA" VmHWM)
hwm_b=$(rss_kb "$PB" VmHWM)

python3 - "$OUT" "$idle_a" "$idle_b" "$load_a" "$load_b" "$hwm_a" "$hwm_b" "$load_before" \
    "$load_after" "$cpu_a" "$cpu_b" <<'EOF'
import json, os, platform, statistics, subprocess, sys
out = sys.argv[1]
idle_a, idle_b, load_a, load_b, hwm_a, hwm_b = (int(x) for x in sys.argv[2:8])
loadavg = (sys.argv[8], sys.argv[9])
cpu_us = (sys.argv[10], sys.argv[11])
runs = [json.loads(l) for l in open(os.path.join(out, "runs.jsonl")) if l.strip()]
groups = {}
for r in runs:
    groups.setdefault((r["mode"], r["rate"]), []).append(r)
by = {}
for k, rs in groups.items():
    m = dict(rs[0])
    for f in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "achieved_rps"):
        m[f] = statistics.median(x[f] for x in rs)
    m["non_2xx"] = sum(x["non_2xx"] for x in rs)
    m["requests"] = sum(x["requests"] for x in rs)
    m["repeats"] = len(rs)
    by[k] = m
rows = []
for rate in sorted({r["rate"] for r in runs}):
    d, m = by.get(("direct", rate)), by.get(("mesh", rate))
    if not d or not m:
        continue
    rows.append({"rate": rate, "direct": d, "mesh": m,
                 "added_p50_ms": round(m["p50_ms"] - d["p50_ms"], 3),
                 "added_p99_ms": round(m["p99_ms"] - d["p99_ms"], 3)})
mem = {"sidecar_a_rss_idle_kb": idle_a, "sidecar_b_rss_idle_kb": idle_b,
       "sidecar_a_rss_after_load_kb": load_a, "sidecar_b_rss_after_load_kb": load_b,
       "sidecar_a_hwm_kb": hwm_a, "sidecar_b_hwm_kb": hwm_b,
       "sidecar_a_cpu_us_per_request": json.loads(cpu_us[0]),
       "sidecar_b_cpu_us_per_request": json.loads(cpu_us[1])}
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
doc = {"machine": {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
                   "loadavg_before": loadavg[0], "loadavg_after": loadavg[1]},
       "rows": rows, "memory": mem}
json.dump(doc, open(os.path.join(out, "summary.json"), "w"), indent=1)
lines = ["# remora mesh: two sidecars on the pod-to-pod path", "",
         "%s, %d CPUs, Linux %s, load average %s before / %s after; HTTP/1.1 keep-alive, "
         "h2load --rps, 100 req/s per connection; median of %d runs per cell"
         % (cpu, os.cpu_count(), platform.release(), loadavg[0], loadavg[1],
            min((r["mesh"]["repeats"] for r in rows), default=0)), "",
         "| rate (req/s) | direct p50 | direct p99 | mesh p50 | mesh p99 | added p50 | added p99 | mesh non-2xx | achieved (mesh) |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    d, m = r["direct"], r["mesh"]
    lines.append("| %d | %.3f ms | %.3f ms | %.3f ms | %.3f ms | %+.3f ms | %+.3f ms | %d | %d |" % (
        r["rate"], d["p50_ms"], d["p99_ms"], m["p50_ms"], m["p99_ms"], r["added_p50_ms"],
        r["added_p99_ms"], m["non_2xx"], m["achieved_rps"]))
lines += ["", "| sidecar memory | pod A (client side) | pod B (server side) |", "|---|---|---|",
          "| VmRSS idle, certificate held | %.1f MB | %.1f MB |" % (idle_a / 1024, idle_b / 1024),
          "| VmRSS after the runs | %.1f MB | %.1f MB |" % (load_a / 1024, load_b / 1024),
          "| VmHWM (peak) | %.1f MB | %.1f MB |" % (hwm_a / 1024, hwm_b / 1024),
          "| CPU per request (user+system, all runs) | %s us | %s us |" % cpu_us, ""]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
print("\n".join(lines))
EOF
echo "bench-mesh: results in $OUT"
