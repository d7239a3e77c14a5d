#!/usr/bin/env bash
# End-to-end cost of the authorization policy (docs/policy.md): requests/s through one
# inbound remora-proxy with no policy, a 1-rule policy, and 1,000-rule policies, on loopback.
#
#   ./perf/bench-policy.sh                     10 s x 3 repetitions per policy, medians
#   BENCH_QUICK=1 ./perf/bench-policy.sh       3 s x 1, a smoke run
#
# Pinning as in perf/bench.sh: wrk and the upstream (nginx answering "ok\n") share CPU 0, the
# proxy runs alone on CPU 1. wrk sends GET /api/v1/items/42 with a few ordinary headers over
# keep-alive connections, plaintext (no peer identity: the request is decided on its path,
# method, port and headers). The policies (generated here, all ending in the same allow rule
# that lets the request through):
#   none           no policy_file: the authorization step is skipped
#   one            1 rule: allow GET on /api/*
#   mixed-1000     999 rules shaped like a real policy that grew large (half allow rules for
#                  single principals, 3/10 deny rules on path prefixes, 1/10 on exact paths,
#                  1/10 generic deny rules on headers and path suffixes) + the allow rule
#   headers-1000   999 deny rules on a header being present or a path suffix + the allow rule
#                  (found through the header-name and path-suffix indexes)
#   generic-1000   999 deny rules with nothing an index can use (not_namespaces + not_paths)
#                  + the allow rule: every rule is checked on every request, the worst case
# Policies are measured in turn inside each repetition, so drift hits all of them alike.
#
# Knobs: BENCH_QUICK, BENCH_DURATION (s), BENCH_REPS, BENCH_CONNS (64), BENCH_POLICIES,
# REMORA_PROXY (binary; build/remora-proxy), BENCH_OUT (results dir; build/bench-policy/<stamp>).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    DUR=${BENCH_DURATION:-3} REPS=${BENCH_REPS:-1}
else
    DUR=${BENCH_DURATION:-10} REPS=${BENCH_REPS:-3}
fi
CONNS=${BENCH_CONNS:-64}
read -r -a POLICIES <<<"${BENCH_POLICIES:-none one mixed-1000 headers-1000 generic-1000}"
PROXY_BIN=${REMORA_PROXY:-$ROOT/build/remora-proxy}
LOAD_CPU=0 PROXY_CPU=1
(($(nproc) < 2)) && PROXY_CPU=0
for tool in wrk nginx taskset python3 curl; do
    command -v "$tool" >/dev/null || { echo "bench-policy: $tool missing: run 'make deps'" >&2; exit 1; }
done
[[ -x $PROXY_BIN ]] || { echo "bench-policy: $PROXY_BIN missing: run 'make'" >&2; exit 1; }

STAMP=$(date -u +%Y-%m-%d-%H%M)
OUT=${BENCH_OUT:-$ROOT/build/bench-policy/$STAMP}
RAW=$OUT/raw
mkdir -p "$RAW"
WORK=$(mktemp -d /tmp/remora-bench-policy.XXXXXX)
source "$ROOT/perf/lib.sh"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
log() { echo "bench-policy: $*" >&2; }

# ---- upstream: nginx, "ok\n" for every path ---------------------------------------------------
UP_PORT=$(free_port)
mkdir -p "$WORK/tmp"
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
NGINX
bench_start upstream $LOAD_CPU nginx -p "$WORK" -e "$WORK/nginx.error.log" -c "$WORK/nginx.conf" -g 'daemon off;'
wait_port "$UP_PORT" || { log "nginx did not start"; cat "$RAW/upstream.log"; exit 1; }

# ---- policies -------------------------------------------------------------------------------------
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
allow = {"name": "allow-bench", "action": "allow", "to": {"methods": ["GET"], "paths": ["/api/*"]}}
def principal(i):
    return {"name": "p-%d" % i, "action": "allow",
            "from": {"principals": ["spiffe://cluster.local/ns/shop/sa/svc-%d" % i]},
            "to": {"methods": ["GET", "HEAD"], "paths": ["/api/*"]}}
def prefix(i):
    return {"name": "d-%d" % i, "action": "deny",
            "to": {"paths": ["/svc-%d/admin/*" % i, "/svc-%d/debug" % i]}}
def exact(i):
    return {"name": "e-%d" % i, "action": "deny", "to": {"paths": ["/internal/job-%d" % i]}}
def unindexable(i):
    return {"name": "u-%d" % i, "action": "deny",
            "from": {"not_namespaces": ["ns-%d" % i]}, "to": {"not_paths": ["/api/*"]}}
def header(i):
    if i % 2 == 0:
        return {"name": "h-%d" % i, "action": "deny", "when": {"headers": {"x-block-%d" % i: "*"}}}
    return {"name": "h-%d" % i, "action": "deny", "to": {"paths": ["*.ext-%d" % i]}}
def mixed(i):
    k = i % 10
    return principal(i) if k < 5 else prefix(i) if k < 8 else exact(i) if k < 9 else header(i)
def write(name, rules):
    json.dump({"default": "deny", "rules": rules + [allow]}, open("%s/%s.json" % (work, name), "w"))
write("one", [])
write("mixed-1000", [mixed(i) for i in range(999)])
write("headers-1000", [header(i) for i in range(999)])
write("generic-1000", [unindexable(i) for i in range(999)])
PY

# the decision alone, for this exact request (build/policy-bench --file)
PB=$ROOT/build/policy-bench
if [[ -x $PB ]]; then
    for pol in "${POLICIES[@]}"; do
        [[ $pol == none ]] && continue
        cp "$WORK/$pol.json" "$OUT/$pol.json"
        taskset -c $PROXY_CPU "$PB" --file "$WORK/$pol.json" --path /api/v1/items/42?page=2 \
            --header 'host: 127.0.0.1' --header 'user-agent: bench/1' \
            --header 'accept: application/json' \
            --header 'x-request-id: 0f8fad5b-d9cb-469f-a165-70867728950e' | tee -a "$OUT/decision.txt"
    done
fi

PORT=$(free_port) ADMIN=$(free_port)
config() { # POLICY -> proxy config on stdout
    local pol=""
    [[ $1 != none ]] && pol=", \"policy_file\": \"$WORK/$1.json\""
    cat <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN"},
 "listeners": [{"name": "bench", "address": "127.0.0.1:$PORT", "direction": "inbound",
                "upstream": "127.0.0.1:$UP_PORT", "tls": "disabled"}]$pol}
JSON
}

URL="http://127.0.0.1:$PORT/api/v1/items/42?page=2"
HDRS=(-H 'accept: application/json' -H 'x-request-id: 0f8fad5b-d9cb-469f-a165-70867728950e'
      -H 'user-agent: bench/1')
declare -A RPS P99 CPU
for rep in $(seq "$REPS"); do
    for pol in "${POLICIES[@]}"; do
        config "$pol" >"$WORK/proxy.json"
        bench_start "proxy-$pol-$rep" $PROXY_CPU "$PROXY_BIN" -c "$WORK/proxy.json"
        pid=$LASTPID
        if ! wait_port "$PORT"; then log "proxy ($pol) did not start"; cat "$RAW/proxy-$pol-$rep.log"; exit 1; fi
        code=$(curl -s -o /dev/null -w '%{http_code}' "${HDRS[@]}" "$URL")
        [[ $code == 200 ]] || { log "$pol: probe answered $code"; exit 1; }
        taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d1s "${HDRS[@]}" "$URL" >/dev/null 2>&1 # warm up
        t0=$(cpu_ticks "$pid")
        taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "${HDRS[@]}" "$URL" \
            >"$RAW/wrk-$pol-$rep.txt" 2>&1
        t1=$(cpu_ticks "$pid")
        read -r rps p50 p99 errs <<<"$(wrk_parse "$RAW/wrk-$pol-$rep.txt")" || { log "$pol: wrk failed"; exit 1; }
        if ((errs != 0)); then
            # a shared machine can stall a run; the sample is dropped, not averaged in
            log "rep $rep $pol: $errs errors (timeouts?): sample dropped, see $RAW/wrk-$pol-$rep.txt"
            kill -TERM "$pid"; wait "$pid" 2>/dev/null
            continue
        fi
        reqs=$(awk '/requests in/ {print $1}' "$RAW/wrk-$pol-$rep.txt")
        cpu_us=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
        RPS[$pol]+="$rps " P99[$pol]+="$p99 " CPU[$pol]+="$cpu_us "
        log "rep $rep $pol: $rps req/s, p50 ${p50} us, p99 ${p99} us, ${cpu_us} us CPU/request"
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        wait "$pid" 2>/dev/null
    done
done

base=$(tr ' ' '\n' <<<"${RPS[one]:-}" | grep . | median)
{
    echo "| policy | requests/s (median of $REPS x ${DUR}s) | vs 1 rule | p99 latency | proxy CPU per request |"
    echo "|---|---|---|---|---|"
    for pol in "${POLICIES[@]}"; do
        [[ -n ${RPS[$pol]:-} ]] || { echo "| $pol | (no good sample) | | | |"; continue; }
        r=$(tr ' ' '\n' <<<"${RPS[$pol]}" | grep . | median)
        p=$(tr ' ' '\n' <<<"${P99[$pol]}" | grep . | median)
        c=$(tr ' ' '\n' <<<"${CPU[$pol]}" | grep . | median)
        rel=$(awk -v r="$r" -v b="$base" 'BEGIN {if (b > 0) printf "%+.1f%%", (r / b - 1) * 100; else print "-"}')
        echo "| $pol | $r | $rel | $(ms "$p") ms | $c us |"
    done
} | tee "$OUT/results.md"
echo "raw output: $RAW" >&2
