#!/usr/bin/env bash
# remora-injector benchmark: reviews per second on one core and latency per
# review, with keep-alive and with a fresh TLS connection per review (what
# kube-apiserver does when it has no idle connection). Prints a small table;
# docs/injector.md quotes it.
#
#   perf/bench-injector.sh [SECONDS]        (default 10 per keep-alive run)
#   INJECTOR=path/to/remora-injector perf/bench-injector.sh   (skip the build)
#   FRESH=N                 reviews per fresh-connection run (default 1000)
#   BENCH_RT=0              fresh-connection runs without SCHED_RR
#
# Setup: the -O2 build (build/remora-injector), webhook.threads 1, pinned to
# CPU 0; the clients pinned to CPU 1. The review is the shared corpus's
# istio-hello.json sent compact, as the API server sends it (one injection,
# patch of ~4 KB). Serving keys: ECDSA P-256 (what manifests/cert-manager
# issues) and RSA 2048 for comparison on fresh connections.
#   keep-alive   h2load --h1, C connections, as many reviews as they take;
#                latency = h2load's per-request time (request sent -> response end).
#   fresh TLS    a) one client process (Python's ssl module, OpenSSL 3) opening
#                a new TCP + TLS 1.3 connection per review, one after the
#                other, as the API server would: latency = connect -> response
#                end, measured inside that process. Client and server run in
#                SCHED_RR for the run (as perf/lib.sh does for latency runs), so
#                that neighbours on this shared machine do not add their time
#                slices to the tail; BENCH_RT=0 turns that off;
#                b) the same with the client's second flight (its Finished) held
#                back 1 ms: what the server sees from a client a 1 ms round trip
#                away. The server's CPU per review must not grow with the wait;
#                c) sequential curl, one process per review: curl's time_total
#                includes curl's own OpenSSL set-up (~1.5 ms here), so it
#                measures curl more than the server; kept to compare with older
#                runs;
#                d) h2load opening one connection per review at a fixed rate
#                for the throughput of handshake + review.
# The server's CPU comes from /proc/PID/task/*/schedstat (nanoseconds).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
FRESH=${FRESH:-1000}
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
RT=${BENCH_RT:-1}
if [[ $RT == 1 ]] && ! chrt -r 10 true 2>/dev/null; then
    echo "bench-injector: chrt -r failed (not root?): fresh-connection runs use the normal scheduler" >&2
    RT=0
fi
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

# The fresh-connection client: one process, a new TCP + TLS connection per
# review. Prints "n ok p50 p99 hs_p50 hs_p99" (ms; hs = TCP connect + TLS).
cat >"$TMP/fresh.py" <<'PY'
import argparse, socket, ssl, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--ca", required=True)
ap.add_argument("--body", required=True)
ap.add_argument("-n", type=int, default=1000)
ap.add_argument("--hold-ms", type=float, default=0, help="hold the client's Finished back")
a = ap.parse_args()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(a.ca)
body = open(a.body, "rb").read()
req = (f"POST /inject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def handshake(s):
    if a.hold_ms <= 0:
        return ctx.wrap_socket(s, server_hostname="127.0.0.1"), None
    # Memory BIOs, to send every flight after the ClientHello hold_ms late.
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    t = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    flights = 0
    while True:
        try:
            t.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = out.read()
        if data:
            if flights:
                time.sleep(a.hold_ms / 1000)
            s.sendall(data)
            flights += 1
        if done:
            return t, (inc, out)
        d = s.recv(65536)
        if not d:
            raise OSError("closed during the handshake")
        inc.write(d)


def review(t, bios, s):
    resp = b""
    if bios is None:
        t.sendall(req)
        while True:
            d = t.recv(65536)
            if not d:
                return resp
            resp += d
    inc, out = bios
    t.write(req)
    s.sendall(out.read())
    while True:
        d = s.recv(65536)
        if not d:
            return resp
        inc.write(d)
        try:
            while True:
                r = t.read(65536)
                if not r:
                    break
                resp += r
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass


hs, tot, ok = [], [], 0
for _ in range(a.n):
    t0 = time.perf_counter_ns()
    s = socket.create_connection(("127.0.0.1", a.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t, bios = handshake(s)
    t1 = time.perf_counter_ns()
    resp = review(t, bios, s)
    t2 = time.perf_counter_ns()
    s.close()
    if resp.startswith(b"HTTP/1.1 200"):
        ok += 1
        hs.append((t1 - t0) / 1e6)
        tot.append((t2 - t0) / 1e6)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(len(v) * p) - 1))] if v else float("nan")


print(f"{a.n} {ok} {pct(tot, .5):.3f} {pct(tot, .99):.3f} {pct(hs, .5):.3f} {pct(hs, .99):.3f}")
PY

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
        '{webhook: {address: $a, cert_file: $c, key_file: $k, threads: 1, max_connections: 4096,
                    max_connections_per_ip: 4096},
          log_level: "warn"}' >"$dir/config.json"
    # every client is 127.0.0.1: lift the per-address limit (max_connections_per_ip), where
    # the binary has it (the same script benches older builds)
    if ! "$INJ" --check-config -c "$dir/config.json" >/dev/null 2>&1; then
        jq 'del(.webhook.max_connections_per_ip)' "$dir/config.json" >"$dir/c.json"
        mv "$dir/c.json" "$dir/config.json"
    fi
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

# The server's CPU time in microseconds, all threads (schedstat counts
# nanoseconds; utime + stime count 10 ms ticks). With the machine shared,
# wall-clock rates understate a dedicated core; CPU time per review does not
# depend on what else runs.
cpu_us() {
    cat /proc/"$SPID"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s / 1000}'
}

# rt on|off: the server's threads in SCHED_RR, or back to normal.
rt() {
    [[ $RT == 1 ]] || return 0
    local t
    for t in /proc/"$SPID"/task/*; do
        if [[ $1 == on ]]; then
            chrt -r -p 10 "${t##*/}" >/dev/null
        else
            chrt -o -p 0 "${t##*/}" >/dev/null
        fi
    done
}

ROWS=()
row() { # NAME REVIEWS/S P50 P99 [CPU-US-PER-REVIEW]
    local cap="-" per="-"
    if [[ -n ${5:-} && $5 != 0 ]]; then
        per=$5
        cap=$((1000000 / $5))
    fi
    ROWS+=("$(printf '| %-36s | %10s | %8s | %8s | %8s | %10s |' "$1" "$2" "$3" "$4" "$per" "$cap")")
}

# keepalive CLIENTS: h2load for SECS seconds
keepalive() {
    local log=$TMP/ka-$1.log out c0 c1
    c0=$(cpu_us)
    out=$(taskset -c 1 h2load --h1 -c "$1" -D "$SECS" --warm-up-time=1 -d "$TMP/review.json" \
        -H 'Content-Type: application/json' --log-file="$log" \
        "https://127.0.0.1:$PORT/inject" 2>&1)
    local rps ok
    c1=$(cpu_us)
    rps=$(grep -oE 'finished in [^,]+, [0-9.]+ req/s' <<<"$out" | grep -oE '[0-9.]+ req/s' | cut -d' ' -f1)
    ok=$(grep -oE '[0-9]+ succeeded' <<<"$out" | cut -d' ' -f1)
    read -r p50 p99 < <(awk '$2 == 200' "$log" | percentiles /dev/stdin 3 0.001)
    # CPU over the whole run (warm-up included) per review logged (measured period only): an upper bound.
    row "keep-alive, $1 connection(s)" "${rps%.*}" "$p50" "$p99" "$(( (c1 - c0) / (ok > 0 ? ok : 1) ))"
    [[ $(awk '$2 != 200' "$log" | wc -l) -eq 0 ]] || echo "bench-injector: non-200 answers in keep-alive run" >&2
}

# fresh_one KEYTYPE N [HOLD-MS]: one client process, a new connection per review
fresh_one() {
    local c0 c1 out n ok p50 p99 h50 h99 name rr=()
    [[ $RT == 1 ]] && rr=(chrt -r 10)
    rt on
    c0=$(cpu_us)
    out=$(taskset -c 1 "${rr[@]}" python3 "$TMP/fresh.py" --port "$PORT" --ca "$CA" \
        --body "$TMP/review.json" -n "$2" --hold-ms "${3:-0}")
    c1=$(cpu_us)
    rt off
    read -r n ok p50 p99 h50 h99 <<<"$out"
    [[ $ok == "$n" ]] || echo "bench-injector: $((n - ok)) of $n fresh-connection reviews failed" >&2
    if [[ ${3:-0} == 0 ]]; then
        name="fresh TLS ($1), one client process"
    else
        name="fresh TLS ($1), Finished held $3 ms"
    fi
    row "$name" "-" "$p50" "$p99" "$(( (c1 - c0) / (ok > 0 ? ok : 1) ))"
    [[ ${3:-0} != 0 ]] || row "  of which TCP+TLS handshake" "-" "$h50" "$h99"
}

# fresh_curl KEYTYPE N: sequential curl, one process and one connection per review
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
    row "fresh TLS ($1), sequential curl" "-" "$p50" "$p99" "$(( (c1 - c0) / $2 ))"
    row "  of which curl's TCP+TLS handshake" "-" "$h50" "$h99"
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
    row "fresh TLS ($1), h2load 2000 conn/s" "${rps%.*}" "$p50" "$p99" "$(( (c1 - c0) / (ok > 0 ? ok : 1) ))"
    [[ ${bad:-0} == 0 ]] || echo "bench-injector: $bad failed requests in the fresh-connection run" >&2
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
start ec
keepalive 1
keepalive 8
keepalive 64
fresh_one ec "$FRESH"
fresh_one ec $((FRESH / 2)) 1
fresh_curl ec 200
fresh_h2load ec
start rsa
fresh_one rsa "$FRESH"

echo "remora-injector $("$INJ" --version | cut -d' ' -f2), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), server on CPU 0 (1 thread), clients on CPU 1"
echo "load average before: $LOAD0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "review: istio-hello.json ($(wc -c <"$TMP/review.json") bytes), injected; latencies in ms;"
echo "cpu us = server CPU time per review; 1-core capacity = 1e6 / cpu us (reviews/s on a dedicated core)"
echo "fresh TLS, one client process: $(if [[ $RT == 1 ]]; then echo "client and server in SCHED_RR"; else echo "normal scheduler"; fi)"
printf '| %-36s | %10s | %8s | %8s | %8s | %10s |\n' "run" "reviews/s" "p50" "p99" "cpu us" "1-core cap"
printf '|%s|%s|%s|%s|%s|%s|\n' "--------------------------------------" "------------" "----------" "----------" "----------" "------------"
printf '%s\n' "${ROWS[@]}"
