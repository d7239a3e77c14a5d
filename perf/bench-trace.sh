#!/usr/bin/env bash
# What request ids and trace context cost (issue 19: "no more than 3% more CPU per request
# for plain HTTP with request ids and trace headers on"), as an A/B of two proxy binaries
# in the same run: BASE (built without them, e.g. from the commit before) and NEW.
#
#   perf/bench-trace.sh BASE_PROXY NEW_PROXY
#
# Setup as perf/bench.sh's "sat" section: wrk (HTTP/1.1, -t1 -c$CONNS) and the upstream
# (nginx answering "ok\n") share CPU 0, the proxy under test runs on CPU 1, plaintext, one
# listener, access log off. Each binary serves three cases:
#   in-plain    inbound listener, the client sends no ids: a request id is generated
#   in-headers  inbound listener, the client sends x-request-id and traceparent: the id is
#               kept, the parent-id rewritten with the sidecar's span
#   out-plain   outbound listener (tls disabled), no ids: a request id is generated and a
#               trace started
# The runs are interleaved (rep 1: every case on BASE then NEW, rep 2: ...), so a neighbour's
# load drifting over the run hits both binaries alike. Reported per case and binary: the
# median over REPS of CPU microseconds per request (the proxy's schedstat time over the run
# / the requests wrk completed) and requests/s, then NEW vs BASE in percent.
# Then, because CPU time per request on a shared 2-CPU machine moves by more than the 3 %
# being checked, the same three cases under valgrind's callgrind (as perf/callgrind.sh):
# user-space instructions one more request costs, (Ir(N2) - Ir(N1)) / (N2 - N1) with h2load
# --h1 -c 8, repeatable whatever else runs. The kernel's share (socket I/O, most of the
# CPU per request) is the same for both binaries but for the ~100 header bytes added.
# Knobs: BENCH_DURATION (s, 5), BENCH_REPS (5), BENCH_CONNS (64), CALLGRIND_N1 (2000),
# CALLGRIND_N2 (12000), BENCH_CALLGRIND (1; 0 skips it), BENCH_WALL (1; 0 skips the wrk runs).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BASE=${1:?usage: $0 BASE_PROXY NEW_PROXY}
NEW=${2:?usage: $0 BASE_PROXY NEW_PROXY}
DUR=${BENCH_DURATION:-5} REPS=${BENCH_REPS:-5} CONNS=${BENCH_CONNS:-64}
LOAD_CPU=0 PROXY_CPU=1
(($(nproc) < 2)) && PROXY_CPU=0
for tool in wrk nginx taskset; do
    command -v "$tool" >/dev/null || { echo "bench-trace: $tool missing: run 'make deps'" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/remora-bench-trace.XXXXXX)
RAW=$WORK/raw
mkdir -p "$RAW" "$WORK/www" "$WORK/upstream-tmp"
# shellcheck source=perf/lib.sh
source "$ROOT/perf/lib.sh"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
chmod 755 "$WORK" "$WORK/www"

UP_PORT=$(free_port) UP_H2_PORT=$(free_port)
render perf/conf/upstream-nginx.conf.in "$WORK/upstream-nginx.conf" WORK="$WORK" \
    UP_PORT="$UP_PORT" UP_H2_PORT="$UP_H2_PORT" || exit 1
bench_start upstream $LOAD_CPU nginx -p "$WORK" -e "$WORK/upstream-nginx.error.log" \
    -c "$WORK/upstream-nginx.conf" -g 'daemon off;'
wait_port "$UP_PORT" || { echo "bench-trace: upstream did not start" >&2; exit 1; }

declare -A PID PORT_IN PORT_OUT
for bin in base new; do
    exe=$BASE
    [[ $bin == new ]] && exe=$NEW
    PORT_IN[$bin]=$(free_port) PORT_OUT[$bin]=$(free_port)
    cat >"$WORK/$bin.json" <<JSON
{"listeners": [
   {"name": "in", "address": "127.0.0.1:${PORT_IN[$bin]}", "direction": "inbound",
    "upstream": "127.0.0.1:$UP_PORT", "tls": "disabled"},
   {"name": "out", "address": "127.0.0.1:${PORT_OUT[$bin]}", "direction": "outbound",
    "upstream": "127.0.0.1:$UP_PORT", "tls": "disabled"}]}
JSON
    bench_start "$bin" $PROXY_CPU "$exe" -c "$WORK/$bin.json"
    PID[$bin]=$LASTPID
    wait_port "${PORT_IN[$bin]}" && wait_port "${PORT_OUT[$bin]}" ||
        { echo "bench-trace: $bin proxy did not start" >&2; cat "$RAW/$bin.log" >&2; exit 1; }
done

HDRS=(-H 'x-request-id: 9d3b1c0e-2f47-4a8b-b1c2-7e6f5a4d3c2b'
      -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')
CASES=(in-plain in-headers out-plain)
# run BIN CASE REP: one measured wrk run; appends "cpu_us_per_req rps" to $WORK/BIN-CASE
run() {
    local bin=$1 case=$2 port args=() out t0 t1 n
    port=${PORT_IN[$bin]}
    [[ $case == out-* ]] && port=${PORT_OUT[$bin]}
    [[ $case == *-headers ]] && args=("${HDRS[@]}")
    out=$RAW/$bin-$case-$3.txt
    taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d1s "${args[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1
    t0=$(cpu_ns "${PID[$bin]}")
    taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DUR}s" "${args[@]}" "http://127.0.0.1:$port/" >"$out" 2>&1
    t1=$(cpu_ns "${PID[$bin]}")
    n=$(awk '/requests in/ {print $1}' "$out")
    if [[ -z $n || $n == 0 ]] || grep -q 'Non-2xx' "$out"; then
        echo "bench-trace: $bin $case: bad run (see below)" >&2; cat "$out" >&2; exit 1
    fi
    awk -v t=$((t1 - t0)) -v n="$n" -v d="$DUR" 'BEGIN {printf "%.3f %.0f\n", t / 1e3 / n, n / d}' \
        >>"$WORK/$bin-$case"
    echo "bench-trace: rep $3 $bin $case: $(tail -1 "$WORK/$bin-$case") (cpu_us/req rps)" >&2
}
if [[ ${BENCH_WALL:-1} == 1 ]]; then
    for rep in $(seq "$REPS"); do
        for case in "${CASES[@]}"; do
            # alternate which binary goes first
            if ((rep % 2)); then run base "$case" "$rep"; run new "$case" "$rep"
            else run new "$case" "$rep"; run base "$case" "$rep"; fi
        done
    done
    echo "CPU time per request (proxy's schedstat / requests; median of $REPS x ${DUR}s, wrk -c$CONNS):"
    printf '%-11s %14s %14s %12s %12s %8s\n' case base_us/req new_us/req base_rps new_rps cpu_delta
    for case in "${CASES[@]}"; do
        b=$(cut -d' ' -f1 "$WORK/base-$case" | median) n=$(cut -d' ' -f1 "$WORK/new-$case" | median)
        br=$(cut -d' ' -f2 "$WORK/base-$case" | median) nr=$(cut -d' ' -f2 "$WORK/new-$case" | median)
        printf '%-11s %14s %14s %12s %12s %7s%%\n' "$case" "$b" "$n" "$br" "$nr" \
            "$(awk -v b="$b" -v n="$n" 'BEGIN {printf "%+.1f", (n - b) / b * 100}')"
    done
fi

[[ ${BENCH_CALLGRIND:-1} == 1 ]] || exit 0
command -v valgrind >/dev/null && command -v h2load >/dev/null ||
    { echo "bench-trace: no valgrind or h2load: no instruction counts" >&2; exit 0; }
N1=${CALLGRIND_N1:-2000} N2=${CALLGRIND_N2:-12000}
# cg_run BIN CASE N: total Ir of one fresh proxy process under callgrind serving N requests
cg_run() {
    local exe=$BASE p args=() out
    [[ $1 == new ]] && exe=$NEW
    [[ $2 == *-headers ]] && args=("${HDRS[@]}")
    p=$(free_port)
    local dir=inbound
    [[ $2 == out-* ]] && dir=outbound
    cat >"$WORK/cg.json" <<JSON
{"listeners": [{"name": "cg", "address": "127.0.0.1:$p", "direction": "$dir",
  "upstream": "127.0.0.1:$UP_PORT", "tls": "disabled"}], "log_level": "error"}
JSON
    out=$WORK/cg-$1-$2-$3.out
    valgrind --tool=callgrind --callgrind-out-file="$out" "$exe" -c "$WORK/cg.json" \
        >"$RAW/cg-$1-$2-$3.log" 2>&1 &
    local vp=$!
    bench_pids+=("$vp")
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
    taskset -c $LOAD_CPU h2load --h1 -n "$3" -c 8 "${args[@]}" "http://127.0.0.1:$p/" \
        >"$RAW/cg-$1-$2-$3.h2load" 2>&1
    grep -q "$3 succeeded" "$RAW/cg-$1-$2-$3.h2load" ||
        { echo "bench-trace: callgrind $1 $2: requests failed" >&2; }
    kill -TERM "$vp"; wait "$vp" 2>/dev/null || true
    awk '/^summary:/ {s += $2} END {print s}' "$out"
}
echo "User-space instructions per request (callgrind, h2load --h1 -c 8, ($N2 - $N1) requests):"
printf '%-11s %14s %14s %8s\n' case base_Ir/req new_Ir/req delta
for case in "${CASES[@]}"; do
    declare -A IR=()
    for bin in base new; do
        a=$(cg_run $bin "$case" "$N1") b=$(cg_run $bin "$case" "$N2")
        IR[$bin]=$(awk -v a="$a" -v b="$b" -v n1="$N1" -v n2="$N2" 'BEGIN {printf "%.0f", (b - a) / (n2 - n1)}')
    done
    printf '%-11s %14s %14s %7s%%\n' "$case" "${IR[base]}" "${IR[new]}" \
        "$(awk -v b="${IR[base]}" -v n="${IR[new]}" 'BEGIN {printf "%+.1f", (n - b) / b * 100}')"
done
