#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable for the same binary and
# inputs whatever else the machine is doing, so it is the before/after number for changes on the
# request path (wall-clock `make bench` on a shared 2-CPU machine moves by more than 3 %).
#
#   perf/callgrind.sh [BUILD]        (default build: the release tree `make` produces)
#
# For each proxy (remora, haproxy, nginx: one worker each, HTTP/1.1 keep-alive to the upstream)
# it runs h2load --h1 with 8 connections twice, N1 and N2 requests, each in a fresh process under
# callgrind, and prints (Ir(N2) - Ir(N1)) / (N2 - N1): the user-space instructions one more
# request costs, start-up and shut-down cancelled out. Kernel work (most of the real cost, see
# docs/performance.md) is not counted. Loopback only; every process is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
N1=${CALLGRIND_N1:-2000}
N2=${CALLGRIND_N2:-12000}
WORK=$(mktemp -d /tmp/remora-callgrind.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "callgrind: nothing listens on $1" >&2; return 1
}

[[ -x $BUILD/remora-proxy && -x $BUILD/test-upstream ]] || { echo "callgrind: build $BUILD first (make)" >&2; exit 1; }
UP=$(port)
"$BUILD/test-upstream" --listen "127.0.0.1:$UP" --log-level error >"$WORK/up.log" 2>&1 &
pids+=($!)
wait_port "$UP"

# run NAME N CMD...: one proxy process under callgrind, N requests through it; prints total Ir.
run() {
    local name=$1 n=$2 p=$3; shift 3
    local out=$WORK/$name.$n.cg
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name.$n.log" 2>&1 &
    local vp=$!
    wait_port "$p"
    h2load --h1 -n "$n" -c 8 "http://127.0.0.1:$p/" >"$WORK/$name.$n.h2load" 2>&1
    grep -q "succeeded, 0 errored" "$WORK/$name.$n.h2load" ||
        grep -q "$n succeeded" "$WORK/$name.$n.h2load" ||
        { echo "callgrind: $name: requests failed:" >&2; grep -E 'requests:|status codes' "$WORK/$name.$n.h2load" >&2; }
    kill -TERM "$vp"; wait "$vp" 2>/dev/null || true
    # nginx under valgrind leaves one file per pid: sum them.
    cat "$out"* | awk '/^summary:/ {s += $2} END {print s}'
}

per_request() { # NAME SETUP-FUNCTION
    local name=$1 a b
    a=$($2 "$N1"); b=$($2 "$N2")
    awk -v a="$a" -v b="$b" -v n1="$N1" -v n2="$N2" -v name="$name" \
        'BEGIN {printf "%-8s %8.0f instructions/request (Ir %d at %d, %d at %d requests)\n", name, (b-a)/(n2-n1), a, n1, b, n2}'
}

remora() {
    local p; p=$(port)
    cat >"$WORK/remora.json" <<JSON
{"listeners": [{"name": "bench", "address": "127.0.0.1:$p", "direction": "inbound",
  "upstream": "127.0.0.1:$UP", "tls": "disabled"}], "log_level": "error"}
JSON
    run remora "$1" "$p" "$BUILD/remora-proxy" -c "$WORK/remora.json"
}
haproxy_run() {
    local p; p=$(port)
    sed -e "s|@PORT@|$p|g" -e "s|@UP_PORT@|$UP|g" -e "s|@H2_PORT@|$(port)|g" perf/conf/haproxy.cfg.in >"$WORK/haproxy.cfg"
    run haproxy "$1" "$p" haproxy -db -f "$WORK/haproxy.cfg"
}
nginx_run() {
    local p; p=$(port)
    mkdir -p "$WORK/nginx/nginx-tmp"
    sed -e "s|@PORT@|$p|g" -e "s|@UP_PORT@|$UP|g" -e "s|@WORK@|$WORK/nginx|g" -e "s|@H2_PORT@|$(port)|g" \
        perf/conf/nginx-proxy.conf.in >"$WORK/nginx.conf"
    run nginx "$1" "$p" nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" -g 'daemon off; master_process off;'
}

echo "callgrind: user-space instructions per HTTP/1.1 keep-alive request through one proxy ($BUILD)"
per_request remora remora
command -v haproxy >/dev/null && per_request haproxy haproxy_run
command -v nginx >/dev/null && per_request nginx nginx_run
