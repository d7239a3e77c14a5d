#!/usr/bin/env bash
# remora-injector benchmark: reviews per second on one core and latency per
# review, with keep-alive and with a fresh TLS connection per review (what
# kube-apiserver often does). Prints a small table; docs/injector.md quotes it.
#
#   perf/bench-injector.sh [SECONDS]        (default 10 per keep-alive run)
#   INJECTOR=path/to/remora-injector perf/bench-injector.sh   (skip the build)
#
# Setup: the -O2 build (build/remora-injector), webhook.threads 1, pinned to
# CPU 0; the clients pinned to CPU 1. The review is the shared corpus's
# istio-hello.json sent compact, as the API server sends it (one injection,
# patch of ~4 KB). Serving keys: ECDSA P-256 (what manifests/cert-manager
# issues) and RSA 2048 for comparison on fresh connections.
#   keep-alive   h2load --h1, C connections, as many reviews as they take;
#                latency = h2load's per-request time (request sent -> response end).
#   fresh TLS    a) sequential curl, one process per review: latency is
#                curl's time_total (TCP connect + TLS handshake + review),
#                measured inside curl, so process start-up is not counted;
#                b) h2load opening one connection per review at a fixed rate
#                for the throughput of handshake + review.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
BUILD=${BUILD:-build}
TMP=$(mktemp -d /tmp/remora-bench-injector.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
for t in h2load curl openssl jq taskset python3; do
    command -v "$t" >/dev/null || { echo "bench-injector: $t is needed" >&2; exit 2; }
done
if [[ -n ${INJECTOR:-} ]]; then
    INJ=$INJECTOR # a binary built elsewhere
else
    make --no-print-directory BUILD="$BUILD" "$BUILD/remora-injector" >/dev/null
    INJ=$PWD/$BUILD/remora-injector
fi

CORPUS=
for d in ../shared/corpus/admission /work/shared/corpus/admission; do
    [[ -d $d ]] && { CORPUS=$d; break; }
done
[[ -n $CORPUS ]] || { echo "bench-injector: shared corpus not found" >&2; exit 2; }
jq -c . "$CORPUS/istio-hello.json" >"$TMP/review.json"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start KEYTYPE: an injector on CPU 0 with a fresh key of that type; sets PORT
start() {
    local dir=$TMP/$1
    mkdir -p "$dir"
    if [[ $1 == ec ]]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
            -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=bench \
            -addext subjectAltName=IP:127.0.0.1 2>/dev/null
    else
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 \
            -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=bench \
            -addext subjectAltName=IP:127.0.0.1 2>/dev/null
    fi
    PORT=$(free_port)
    jq -n --arg a "127.0.0.1:$PORT" --arg c "$dir/cert.pem" --arg k "$dir/key.pem" \
        '{webhook: {address: $a, cert_file: $c, key_file: $k, threads: 1, max_connections: 4096},
          log_level: "warn"}' >"$dir/config.json"
    taskset -c 0 "$INJ" -c "$dir/config.json" 2>"$dir/log" &
    PIDS+=($!)
    SPID=$!
    CA=$dir/cert.pem
    for _ in $(seq 100); do
        curl -s --cacert "$CA" "https://127.0.0.1:$PORT/healthz" >/dev/null && return 0
        sleep 0.05
    done
    echo "bench-injector: injector did not start" >&2
    cat "$dir/log" >&2
    exit 1
}

# percentiles FILE COLUMN SCALE: "p50 p99" in ms of a column of numbers
percentiles() {
    awk -v c="$2" -v s="$3" '{print $c * s}' "$1" | sort -g |
        awk '{v[NR]=$1} END {
            if (NR == 0) { print "- -"; exit }
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            printf "%.3f %.3f\n", v[i50], v[i99] }'
}

# The server's CPU time in microseconds (utime + stime): with the machine
# shared, wall-clock rates understate a dedicated core; CPU time per review
# does not depend on what else runs.
cpu_us() {
    local tck
    tck=$(getconf CLK_TCK)
    awk -v t="$tck" '{print ($14 + $15) * 1000000 / t}' "/proc/$SPID/stat"
}
ROWS=()
row() { # NAME REVIEWS/S P50 P99 [CPU-US-PER-REVIEW]
    local cap="-" per="-"
    if [[ -n ${5:-} && $5 != 0 ]]; then
        per=$5
        cap=$((1000000 / $5))
    fi
    ROWS+=("$(printf '| %-34s | %10s | %8s | %8s | %8s | %10s |' "$1" "$2" "$3" "$4" "$per" "$cap")")
}

# keepalive CLIENTS: h2load for SECS seconds
keepalive() {
    local log=$TMP/ka-$1.log out c0 c1 n
    c0=$(cpu_us)
    out=$(taskset -c 1 h2load --h1 -c "$1" -D "$SECS" --warm-up-time=1 -d "$TMP/review.json" \
        -H 'Content-Type: application/json' --log-file="$log" \
        "https://127.0.0.1:$PORT/inject" 2>&1)
    local rps ok
    c1=$(cpu_us)
    rps=$(grep -oE 'finished in [^,]+, [0-9.]+ req/s' <<<"$out" | grep -oE '[0-9.]+ req/s' | cut -d' ' -f1)
    ok=$(grep -oE '[0-9]+ succeeded' <<<"$out" | cut -d' ' -f1)
    n=$(awk '$2 == 200' "$log" | wc -l)
    read -r p50 p99 < <(awk '$2 == 200' "$log" | percentiles /dev/stdin 3 0.001)
    # CPU over the whole run (warm-up included) per review logged (measured period only): an upper bound.
    row "keep-alive, $1 connection(s)" "${rps%.*}" "$p50" "$p99" "$(( ($(printf '%.0f' "$c1") - $(printf '%.0f' "$c0")) / (ok > 0 ? ok : 1) ))"
    : "$n"
    [[ $(awk '$2 != 200' "$log" | wc -l) -eq 0 ]] || echo "bench-injector: non-200 answers in keep-alive run" >&2
    : "$ok"
}

# fresh_curl KEYTYPE N: sequential curl, one connection per review
fresh_curl() {
    local out=$TMP/curl-$1.txt c0 c1
    : >"$out"
    c0=$(cpu_us)
    for _ in $(seq "$2"); do
        taskset -c 1 curl -s -o /dev/null --cacert "$CA" -H 'Content-Type: application/json' \
            --data-binary "@$TMP/review.json" -w '%{http_code} %{time_appconnect} %{time_total}\n' \
            "https://127.0.0.1:$PORT/inject" >>"$out"
    done
    c1=$(cpu_us)
    read -r p50 p99 < <(awk '$1 == 200' "$out" | percentiles /dev/stdin 3 1000)
    read -r h50 h99 < <(awk '$1 == 200' "$out" | percentiles /dev/stdin 2 1000)
    row "fresh TLS ($1), sequential curl" "-" "$p50" "$p99" "$(( ($(printf '%.0f' "$c1") - $(printf '%.0f' "$c0")) / $2 ))"
    row "  of which TCP+TLS handshake" "-" "$h50" "$h99"
}

# fresh_h2load KEYTYPE: one review per connection, connections opened at a fixed rate
fresh_h2load() {
    local n=$((SECS * 1000)) log=$TMP/fresh-$1.log out rps c0 c1 ok
    c0=$(cpu_us)
    out=$(taskset -c 1 h2load --h1 -n "$n" -c "$n" -r 100 --rate-period=50ms \
        -d "$TMP/review.json" -H 'Content-Type: application/json' --log-file="$log" \
        "https://127.0.0.1:$PORT/inject" 2>&1)
    c1=$(cpu_us)
    rps=$(grep -oE 'finished in [^,]+, [0-9.]+ req/s' <<<"$out" | grep -oE '[0-9.]+ req/s' | cut -d' ' -f1)
    ok=$(grep -oE '[0-9]+ succeeded' <<<"$out" | head -1 | cut -d' ' -f1)
    local bad
    bad=$(grep -oE '[0-9]+ failed' <<<"$out" | head -1 | cut -d' ' -f1)
    read -r p50 p99 < <(awk '$2 == 200' "$log" | percentiles /dev/stdin 3 0.001)
    row "fresh TLS ($1), h2load 2000 conn/s" "${rps%.*}" "$p50" "$p99" "$(( ($(printf '%.0f' "$c1") - $(printf '%.0f' "$c0")) / (ok > 0 ? ok : 1) ))"
    [[ ${bad:-0} == 0 ]] || echo "bench-injector: $bad failed requests in the fresh-connection run" >&2
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
start ec
keepalive 1
keepalive 8
keepalive 64
fresh_curl ec 1000
fresh_h2load ec
start rsa
fresh_curl rsa 500

echo "remora-injector $("$INJ" --version | cut -d' ' -f2), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), server on CPU 0 (1 thread), clients on CPU 1"
echo "load average before: $LOAD0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "review: istio-hello.json ($(wc -c <"$TMP/review.json") bytes), injected; latencies in ms;"
echo "cpu us = server CPU time per review; 1-core capacity = 1e6 / cpu us (reviews/s on a dedicated core)"
printf '| %-34s | %10s | %8s | %8s | %8s | %10s |\n' "run" "reviews/s" "p50" "p99" "cpu us" "1-core cap"
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------------" "------------" "----------" "----------" "----------" "------------"
printf '%s\n' "${ROWS[@]}"
