#!/usr/bin/env bash
# The CA's numbers (docs/ca.md, "Numbers"): POST /v1/sign per second and the
# latency of one sign, on loopback, with the optimised build.
#
#   make && ./perf/bench-ca.sh
#
# Setup: a root, the cluster's intermediate (EC P-256), token keys from
# test/tools/mint-token.js, the injector with its CA on ca.address (2 MHD
# threads, the shipped default) pinned to CPU 1 when there are two CPUs; the
# load generator on CPU 0. One CSR (EC P-256, as the proxy makes) and one
# token are reused: every request still verifies the token and the CSR and
# signs a fresh certificate.
#   keepalive  h2load --h1 over TLS, BENCH_CA_CONNS connections (default 1 and 4),
#              BENCH_CA_N requests: signs/s, p50/p99 from h2load's per-request log
#   rs256/es256  the token's algorithm (RS256 is what Kubernetes issues by default)
#   new-conn   what a proxy does: one TLS connection per sign (curl, sequential,
#              BENCH_CA_SEQ requests): p50/p99 of curl's time_total
#   refused    a token with a bad signature (401): what a flood of bad tokens costs
# Knobs: REMORA_BUILD (build), BENCH_CA_N (4000), BENCH_CA_SEQ (300), BENCH_CA_CONNS ("1 4").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
BUILD=${REMORA_BUILD:-build}
INJECTOR=$PWD/$BUILD/remora-injector
CERTS=$PWD/$BUILD/remora-certs
N=${BENCH_CA_N:-4000}
SEQ=${BENCH_CA_SEQ:-300}
CONNS=${BENCH_CA_CONNS:-"1 4"}
for t in "$INJECTOR" "$CERTS"; do
    [[ -x $t ]] || { echo "bench-ca: $t missing (run make)" >&2; exit 2; }
done
for t in h2load curl node jq openssl python3; do
    command -v "$t" >/dev/null || { echo "bench-ca: needs $t" >&2; exit 2; }
done

W=$(mktemp -d /tmp/remora-bench-ca.XXXXXX)
IPID=
cleanup() {
    if [[ -n $IPID ]]; then
        kill -TERM "$IPID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$IPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$IPID" 2>/dev/null
    fi
    rm -rf "$W"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
pin() { # CPU CMD...: taskset when the machine has that CPU
    local cpu=$1; shift
    if (($(nproc) > 1)); then taskset -c "$cpu" "$@"; else "$@"; fi
}

"$CERTS" root --out-cert "$W/root.pem" --out-key "$W/root-key.pem" >/dev/null || exit 1
"$CERTS" intermediate --ca-cert "$W/root.pem" --ca-key "$W/root-key.pem" --cn bench \
    --out-cert "$W/int.pem" --out-key "$W/int-key.pem" >/dev/null || exit 1
"$CERTS" server --ca-cert "$W/int.pem" --ca-key "$W/int-key.pem" --dns remora-injector.remora-system.svc \
    --out-cert "$W/srv.pem" --out-key "$W/srv-key.pem" >/dev/null || exit 1
node test/tools/mint-token.js keys "$W/tok" || exit 1
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/wl-key.pem" 2>/dev/null
"$CERTS" csr --key "$W/wl-key.pem" --spiffe-id spiffe://cluster.local/ns/shop/sa/web --out "$W/csr.pem" || exit 1
jq -n --rawfile csr "$W/csr.pem" '{csr: $csr}' >"$W/body.json"
for a in RS256 ES256; do
    node test/tools/mint-token.js token "$W/tok" --alg $a --exp-in 36000 >"$W/$a.token"
done
node test/tools/mint-token.js token "$W/tok" --bad-sig --exp-in 36000 >"$W/bad.token"

WH=$(port)
CAP=$(port)
jq -n --arg w "$W" --arg wh "127.0.0.1:$WH" --arg ca "127.0.0.1:$CAP" '{
    webhook: {address: $wh, cert_file: ($w + "/srv.pem"), key_file: ($w + "/srv-key.pem")},
    ca: {address: $ca, cert_file: ($w + "/int.pem"), key_file: ($w + "/int-key.pem"),
         root_file: ($w + "/root.pem"), jwks_file: ($w + "/tok/jwks.json"), ttl_seconds: 86400},
    log_level: "info"}' >"$W/injector.json"
# taskset execs the injector: $! is the injector itself (CPU time, cleanup)
if (($(nproc) > 1)); then
    taskset -c 1 "$INJECTOR" -c "$W/injector.json" >"$W/injector.log" 2>&1 &
else
    "$INJECTOR" -c "$W/injector.json" >"$W/injector.log" 2>&1 &
fi
IPID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$CAP") 2>/dev/null && break; sleep 0.1; done
URL=https://127.0.0.1:$CAP/v1/sign
load0=$(cut -d' ' -f1-3 /proc/loadavg)

# pct FILE P: the P-th percentile (nearest rank) of the numbers in FILE, one a line
pct() { sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
ms() { awk -v us="$1" 'BEGIN {printf "%.2f", us / 1000}'; }

rows=()
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$IPID/stat"; }
# cpu_us T0 N: the injector's CPU per request since T0 ticks, in microseconds
cpu_us() { awk -v a="$1" -v b="$(cpu_ticks)" -v n="$2" -v hz="$hz" 'BEGIN {printf "%.0f", (b - a) * 1e6 / hz / n}'; }
# h2load_run NAME TOKEN-FILE CONNS N WANT-STATUS
h2load_run() {
    local name=$1 tok=$2 c=$3 n=$4 want=$5 log=$W/$1.$3.log c0
    c0=$(cpu_ticks)
    pin 0 h2load --h1 -n "$n" -c "$c" -d "$W/body.json" -H "authorization: Bearer $(cat "$tok")" \
        -H 'content-type: application/json' --log-file="$log" "$URL" >"$W/$name.$c.out" 2>&1
    local rps ok
    rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$W/$name.$c.out")
    ok=$(awk -v s="$want" '$2 == s' "$log" | wc -l)
    awk '{print $3}' "$log" >"$W/$name.$c.lat"
    rows+=("| $name | keep-alive, $c conn | $n | $ok x $want | ${rps:-?} | $(ms "$(pct "$W/$name.$c.lat" 50)") | $(ms "$(pct "$W/$name.$c.lat" 99)") | $(cpu_us "$c0" "$n") |")
}

# warm-up (EC tables, TLS session caches)
pin 0 h2load --h1 -n 200 -c 2 -d "$W/body.json" -H "authorization: Bearer $(cat "$W/RS256.token")" \
    -H 'content-type: application/json' "$URL" >/dev/null 2>&1
for c in $CONNS; do
    h2load_run sign-rs256 "$W/RS256.token" "$c" "$N" 200
    h2load_run sign-es256 "$W/ES256.token" "$c" "$N" 200
done
h2load_run refused-bad-sig "$W/bad.token" 4 "$N" 401

# one TLS connection per sign, as the proxy does
: >"$W/seq.lat"
c0=$(cpu_ticks)
t0=$(date +%s.%N)
for _ in $(seq "$SEQ"); do
    pin 0 curl -sk -o /dev/null -w '%{http_code} %{time_total}\n' -H "authorization: Bearer $(cat "$W/RS256.token")" \
        --data-binary @"$W/body.json" "$URL" >>"$W/seq.out"
done
t1=$(date +%s.%N)
ok=$(awk '$1 == 200' "$W/seq.out" | wc -l)
awk '{printf "%d\n", $2 * 1000000}' "$W/seq.out" >"$W/seq.lat"
rate=$(awk -v n="$SEQ" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
rows+=("| sign-rs256 | new TLS connection each (curl, sequential) | $SEQ | $ok x 200 | $rate (incl. curl start) | $(ms "$(pct "$W/seq.lat" 50)") | $(ms "$(pct "$W/seq.lat" 99)") | $(cpu_us "$c0" "$SEQ") |")

cpu=$(cpu_ticks)
issued=$(grep -c 'CA: issued' "$W/injector.log")
answered=$((issued + $(grep -c 'CA: refused' "$W/injector.log")))
echo "# remora CA: POST /v1/sign on $(nproc) CPUs ($(uname -m)), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "# injector: $BUILD/remora-injector, 2 MHD threads, pinned to CPU 1; load on CPU 0;"
echo "# load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | connections | requests | answers | req/s | p50 ms | p99 ms | injector CPU us/req |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
awk -v t="$cpu" -v hz="$hz" -v n="$issued" -v a="$answered" 'BEGIN {
    printf "injector CPU: %.2f s for %d requests (%d certificates issued): %.0f us per request\n",
        t / hz, a, n, a ? t / hz * 1e6 / a : 0 }'
