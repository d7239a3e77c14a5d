#!/usr/bin/env bash
# Remora's benchmark (issue 9): remora-proxy vs haproxy vs nginx vs direct, in the same run,
# on loopback. Every benchmark of the issue, in this order:
#   sat      1. one sidecar, plaintext, at saturation: wrk (HTTP/1.1) and h2load (h2c)
#   rate     1. the same peers at fixed rates (1,000 and 5,000 req/s, 100 staggered
#               connections, build/perf-load): p50/p99/p99.9, added latency, vCPU
#   body     3. peak RSS across a 30 MB and a 1 GB body
#   mesh     2. client -> sidecar A -> mTLS -> sidecar B -> app, vs direct, vs the same
#               path in plaintext, vs a haproxy pair doing the same mTLS (perf/sec-mesh.sh)
#   memory   3. RSS over time: idle, 1,000 req/s x 100 connections, 1,000 idle client
#               connections, 1,000 idle mTLS connections (perf/sec-memory.sh)
#   tls      4. full and resumed mTLS handshakes/s and latency; resumption between
#               sidecars (perf/sec-tls.sh, perf/tls_hs.py)
#   failure  7. time to full success after an endpoint dies or hangs; retry amplification
#               under a 503 outage (perf/sec-failure.sh)
#   micro    6. policy decision and LB pick cost, mTLS public-key operations (build/perf-micro)
#   injector 5. perf/bench-injector.sh, when present
# then the issue's targets checked against the numbers (perf/sec-report.sh) and the plots
# (gnuplot, perf/plots.gp).
#
#   make bench                     full: 8 s x 3 repetitions per test, medians (~13 min)
#   BENCH_QUICK=1 ./perf/bench.sh  2 s x 1, a smoke run (~4 min)
#   BENCH_ONLY="rate mesh" ./perf/bench.sh   some sections only
#
# Pinning: the load generator (wrk / h2load) and the upstream (an nginx answering "ok\n")
# share CPU 0; the proxy under test runs on CPU 1. Every peer forwards to the same upstream,
# with one worker / thread, keep-alive to the upstream and logging off; their configs are
# rendered from perf/conf/*.in into a temporary directory. Reported per peer: requests/s,
# p50/p99 latency and what the proxy adds to them over direct, CPU microseconds per request
# (the proxy's own utime + stime over the run), idle RSS, peak RSS under load, and peak RSS
# while a 30 MB body goes through to a rate-limited client (so backpressure must hold).
# Results: perf/results/<date>/{results.tsv,memory.tsv,results.md}; raw tool output in raw/.
#
# Knobs: BENCH_QUICK, BENCH_ONLY (sections), BENCH_DURATION (s, saturation runs),
# BENCH_RATE_DURATION (s, fixed-rate runs), BENCH_REPS, BENCH_CONNS (64), BENCH_STREAMS
# (h2load -m, 10), BENCH_RATES ("1000 5000"), BENCH_RATE_CONNS (100), BENCH_PEERS
# ("direct remora haproxy nginx floor"), BENCH_BODY_RATE (curl --limit-rate for the 30 MB body,
# 100M), BENCH_BIG_BYTES (1 GiB; 256 MiB when quick), BENCH_BIG_RATE (500M),
# BENCH_IDLE_CONNS (1000), REMORA_PROXY (binary; build/remora-proxy).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DUR=${BENCH_DURATION:-2} REPS=${BENCH_REPS:-1} RDUR=${BENCH_RATE_DURATION:-2}
    BIG_BYTES=${BENCH_BIG_BYTES:-268435456}
else
    DUR=${BENCH_DURATION:-8} REPS=${BENCH_REPS:-3} RDUR=${BENCH_RATE_DURATION:-4}
    BIG_BYTES=${BENCH_BIG_BYTES:-1073741824}
fi
read -r -a RATES <<<"${BENCH_RATES:-1000 5000}"
RCONNS=${BENCH_RATE_CONNS:-100}
BIG_RATE=${BENCH_BIG_RATE:-500M}
# shellcheck disable=SC2034 # used by perf/sec-memory.sh
IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
SECTIONS=${BENCH_ONLY:-sat rate body mesh memory tls failure micro injector}
# want SECTION: is it part of this run?
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
T_START=$(date +%s)
CONNS=${BENCH_CONNS:-64}
STREAMS=${BENCH_STREAMS:-10}
BODY_RATE=${BENCH_BODY_RATE:-100M}
BODY_BYTES=31457280
read -r -a PEERS <<<"${BENCH_PEERS:-direct remora haproxy nginx floor}"
PROXY_BIN=${REMORA_PROXY:-$ROOT/build/remora-proxy}
LOAD_CPU=0 PROXY_CPU=1
if (($(nproc) < 2)); then
    echo "bench: only one CPU: everything shares it, ratios only" >&2
    PROXY_CPU=0
fi

for tool in wrk h2load haproxy nginx taskset curl python3 pgrep jq; do
    command -v "$tool" >/dev/null || { echo "bench: $tool missing: run 'make deps'" >&2; exit 1; }
done
BUILD_DIR=$(dirname "$PROXY_BIN")
# shellcheck disable=SC2034
PERF_LOAD=$BUILD_DIR/perf-load PERF_MICRO=$BUILD_DIR/perf-micro CERTS_BIN=$BUILD_DIR/remora-certs
# shellcheck disable=SC2034
UPSTREAM_BIN=$BUILD_DIR/test-upstream
FLOOR_BIN=$BUILD_DIR/perf-floor
# always through make: perf-micro links the proxy archive, which changes under us
if ! make --no-print-directory BUILD="$BUILD_DIR" perf-bins >/dev/null; then
    [[ -x $PERF_LOAD && -x $PERF_MICRO ]] ||
        { echo "bench: cannot build perf-load / perf-micro (make perf-bins)" >&2; exit 1; }
    echo "bench: make perf-bins failed: using the perf-load / perf-micro already built" >&2
fi

# what is measured: the tree as it is when the run starts (the binary may be rebuilt meanwhile)
REV="$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- proxy common 2>/dev/null || echo '+dirty')"
LOAD0=$(cut -d' ' -f1 /proc/loadavg) # how busy the machine was before we started
STAMP=$(date -u +%Y-%m-%d-%H%M)
[[ ${BENCH_QUICK:-0} == 1 ]] && STAMP+=-quick
OUT=$ROOT/perf/results/$STAMP
RAW=$OUT/raw
mkdir -p "$RAW"
WORK=$(mktemp -d /tmp/remora-bench.XXXXXX)
source "$ROOT/perf/lib.sh"
trap 'bench_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

log() { echo "bench: $*" >&2; }

# ---- the upstream -------------------------------------------------------------------
UP_PORT=$(free_port)
UP_H2_PORT=$(free_port)
mkdir -p "$WORK/www" "$WORK/upstream-tmp" "$WORK/nginx-tmp"
# run as root, nginx's workers switch to an unprivileged user that must read www/
chmod 755 "$WORK" "$WORK/www"
python3 "$ROOT/test/upstream/pattern.py" $BODY_BYTES >"$WORK/www/large.bin"
truncate -s "$BIG_BYTES" "$WORK/www/big.bin" # sparse: costs no disk, reads as zeros
BODY_SHA=$(python3 "$ROOT/test/upstream/pattern.py" --sha256 $BODY_BYTES)
chmod 644 "$WORK/www/big.bin"
render perf/conf/upstream-nginx.conf.in "$WORK/upstream-nginx.conf" WORK="$WORK" \
    UP_PORT="$UP_PORT" UP_H2_PORT="$UP_H2_PORT" || exit 1
bench_start upstream-nginx $LOAD_CPU nginx -p "$WORK" -e "$WORK/upstream-nginx.error.log" \
    -c "$WORK/upstream-nginx.conf" -g 'daemon off;'
UP_PID=$LASTPID
wait_port "$UP_PORT" || { log "upstream nginx did not start"; cat "$RAW/upstream-nginx.log"; exit 1; }

# ---- the peers ------------------------------------------------------------------------
# Per peer: PID (empty for direct), URL_H1, URL_H2, NOTE (why a peer is missing).
declare -A PID URL_H1 URL_H2 NOTE IDLE PEAK_LOAD PEAK_BODY BODY_OK

start_remora() {
    local port admin
    if [[ ! -x $PROXY_BIN ]]; then
        NOTE[remora]="no $PROXY_BIN (run make)"
        return 1
    fi
    port=$(free_port) admin=$(free_port)
    render perf/conf/remora.json.in "$WORK/remora.json" PORT="$port" ADMIN_PORT="$admin" \
        UP_PORT="$UP_PORT" || return 1
    cp "$WORK/remora.json" "$RAW/remora.json"
    bench_start remora $PROXY_CPU "$PROXY_BIN" -c "$WORK/remora.json"
    PID[remora]=$LASTPID
    URL_H1[remora]=http://127.0.0.1:$port/
    URL_H2[remora]=http://127.0.0.1:$port/
    wait_port "$port"
}

start_haproxy() {
    local port h2
    port=$(free_port) h2=$(free_port)
    render perf/conf/haproxy.cfg.in "$WORK/haproxy.cfg" PORT="$port" H2_PORT="$h2" \
        UP_PORT="$UP_PORT" || return 1
    cp "$WORK/haproxy.cfg" "$RAW/haproxy.cfg"
    bench_start haproxy $PROXY_CPU haproxy -f "$WORK/haproxy.cfg" -db
    PID[haproxy]=$LASTPID
    URL_H1[haproxy]=http://127.0.0.1:$port/
    URL_H2[haproxy]=http://127.0.0.1:$h2/
    wait_port "$port" && wait_port "$h2"
}

# floor: perf/floor.c, a proxy that only moves bytes (HTTP/1.1 only): the CPU per request the
# kernel's TCP stack charges any proxy for the two hops, i.e. the floor under the others.
start_floor() {
    local port
    if [[ ! -x $FLOOR_BIN ]]; then
        NOTE[floor]="no $FLOOR_BIN (make perf-bins)"
        return 1
    fi
    port=$(free_port)
    bench_start floor $PROXY_CPU "$FLOOR_BIN" "$port" "$UP_PORT"
    PID[floor]=$LASTPID
    URL_H1[floor]=http://127.0.0.1:$port/
    URL_H2[floor]=
    wait_port "$port"
}

start_nginx() {
    local port h2
    port=$(free_port) h2=$(free_port)
    render perf/conf/nginx-proxy.conf.in "$WORK/nginx-proxy.conf" WORK="$WORK" PORT="$port" \
        H2_PORT="$h2" UP_PORT="$UP_PORT" || return 1
    cp "$WORK/nginx-proxy.conf" "$RAW/nginx-proxy.conf"
    bench_start nginx $PROXY_CPU nginx -p "$WORK" -e "$WORK/nginx-proxy.error.log" \
        -c "$WORK/nginx-proxy.conf" -g 'daemon off;'
    PID[nginx]=$LASTPID
    URL_H1[nginx]=http://127.0.0.1:$port/
    URL_H2[nginx]=http://127.0.0.1:$h2/
    wait_port "$port" && wait_port "$h2"
}

# smoke URL [CURL FLAGS]: the upstream's "ok" comes back through it.
smoke() {
    local url=$1; shift
    [[ $(curl -s --max-time 5 "$@" "$url") == ok ]]
}

ACTIVE=()
for peer in "${PEERS[@]}"; do
    case $peer in
    direct)
        PID[direct]=
        URL_H1[direct]=http://127.0.0.1:$UP_PORT/
        URL_H2[direct]=http://127.0.0.1:$UP_H2_PORT/
        ;;
    remora | haproxy | nginx | floor)
        if ! "start_$peer"; then
            NOTE[$peer]=${NOTE[$peer]:-"did not start (see raw/$peer.log)"}
            log "$peer: ${NOTE[$peer]}"
            continue
        fi
        ;;
    *) log "unknown peer $peer"; continue ;;
    esac
    if ! smoke "${URL_H1[$peer]}"; then
        NOTE[$peer]="HTTP/1.1 smoke request failed"
        log "$peer: ${NOTE[$peer]}"
        URL_H1[$peer]=
    fi
    if [[ $peer != floor ]] && ! smoke "${URL_H2[$peer]}" --http2-prior-knowledge; then
        NOTE[$peer]="${NOTE[$peer]:+${NOTE[$peer]}; }h2c smoke request failed"
        log "$peer: h2c smoke request failed"
        URL_H2[$peer]=
    fi
    [[ -n ${URL_H1[$peer]} || -n ${URL_H2[$peer]} ]] && ACTIVE+=("$peer")
    # idle: started, one request served, no load yet
    [[ -n ${PID[$peer]} ]] && IDLE[$peer]=$(rss_kb "${PID[$peer]}" VmRSS)
done
log "peers: ${ACTIVE[*]}; $DUR s x $REPS, $CONNS connections, h2c -m $STREAMS"

# ---- throughput and latency -------------------------------------------------------------
# run_load PROTO PEER REP: one measured run; appends "rps p50_us p99_us errors cpu_us" to
# $WORK/PROTO-PEER.samples.
run_load() {
    local proto=$1 peer=$2 rep=$3 url out res t0=0 t1=0 cpu=- pid=${PID[$2]}
    local w0 w1
    if [[ $proto == h1 ]]; then url=${URL_H1[$peer]}; else url=${URL_H2[$peer]}; fi
    [[ -n $url ]] || return 0
    if ! kill -0 "$UP_PID" 2>/dev/null; then
        log "the upstream nginx exited (see raw/upstream-nginx.log)"
        exit 1
    fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
        NOTE[$peer]="exited during the benchmark (see raw/$peer.log)"
        URL_H1[$peer]='' URL_H2[$peer]=''
        log "$peer: ${NOTE[$peer]}"
        return 0
    fi
    out=$RAW/$proto-$peer-$rep.txt
    [[ -n $pid ]] && t0=$(cpu_ns "$pid")
    w0=$(date +%s%N)
    if [[ $proto == h1 ]]; then
        taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$url" >"$out" 2>&1
        res=$(wrk_parse "$out")
    else
        taskset -c $LOAD_CPU h2load -t1 -c"$CONNS" -m"$STREAMS" -D "$DUR" \
            --log-file="$WORK/h2load.log" "$url" >"$out" 2>&1
        res=$(h2load_parse "$out" "$WORK/h2load.log")
        rm -f "$WORK/h2load.log"
    fi
    [[ -n $pid ]] && t1=$(cpu_ns "$pid")
    w1=$(date +%s%N)
    if [[ -z $res ]]; then
        log "$proto $peer run $rep: no result (see $out)"
        return 0
    fi
    read -r rps _ _ _ <<<"$res"
    if [[ -n $pid ]]; then
        # requests = rate x the tool's run; CPU over the whole tool run (connects included)
        cpu=$(awk -v t=$((t1 - t0)) -v r="$rps" -v d="$DUR" \
            'BEGIN {if (r > 0) printf "%.1f\n", t / 1e3 / (r * d); else print "-"}')
    fi
    : "$w0" "$w1"
    echo "$res $cpu" >>"$WORK/$proto-$peer.samples"
    log "$proto $peer run $rep: $res cpu_us/req=$cpu"
}

for peer in "${ACTIVE[@]}"; do # warm-up, not recorded
    [[ -n ${URL_H1[$peer]} ]] && taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d1s "${URL_H1[$peer]}" >/dev/null 2>&1
done
if want sat; then
    for rep in $(seq "$REPS"); do
        for proto in h1 h2; do
            for peer in "${ACTIVE[@]}"; do run_load "$proto" "$peer" "$rep"; done
        done
    done
fi
source "$ROOT/perf/sec-rate.sh"
want rate && sec_rate
for peer in "${ACTIVE[@]}"; do
    [[ -n ${PID[$peer]} ]] && kill -0 "${PID[$peer]}" 2>/dev/null &&
        PEAK_LOAD[$peer]=$(rss_kb "${PID[$peer]}" VmHWM)
done

# ---- a 30 MB body to a rate-limited client, then a 1 GB one ------------------------------
declare -A PEAK_BIG BIG_OK BIG_MBS BIG_CPU
for peer in "${ACTIVE[@]}"; do
    want body || break
    url=${URL_H1[$peer]}
    [[ -n $url ]] || continue
    pid=${PID[$peer]}
    [[ -n $pid ]] && reset_hwm "$pid"
    got=$(curl -s --max-time 120 --limit-rate "$BODY_RATE" "${url}large.bin" | sha256sum | cut -d' ' -f1)
    if [[ $got == "$BODY_SHA" ]]; then BODY_OK[$peer]=yes; else BODY_OK[$peer]=NO; fi
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && PEAK_BODY[$peer]=$(rss_kb "$pid" VmHWM)
    log "30 MB body via $peer: intact=${BODY_OK[$peer]} peak=${PEAK_BODY[$peer]:-} kB"
    # 1 GB (sparse file: zeros) to a client capped at BIG_RATE: all of it must arrive
    [[ -n $pid ]] && reset_hwm "$pid" && c0=$(cpu_ns "$pid")
    read -r got mbs < <(taskset -c $LOAD_CPU curl -s --max-time 300 --limit-rate "$BIG_RATE" \
        -o /dev/null -w '%{size_download} %{speed_download}\n' "${url}big.bin")
    [[ -n $pid ]] && BIG_CPU[$peer]=$(fmt0 "$(calc 'c / 1e6 / (n / 1073741824)' c=$(($(cpu_ns "$pid") - c0)) n="$BIG_BYTES")")
    if [[ $got == "$BIG_BYTES" ]]; then BIG_OK[$peer]=yes; else BIG_OK[$peer]="NO ($got bytes)"; fi
    BIG_MBS[$peer]=$(awk -v b="${mbs:-0}" 'BEGIN {printf "%.0f\n", b / 1048576}')
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && PEAK_BIG[$peer]=$(rss_kb "$pid" VmHWM)
    log "$((BIG_BYTES >> 20)) MB body via $peer: complete=${BIG_OK[$peer]} ${BIG_MBS[$peer]} MB/s peak=${PEAK_BIG[$peer]:-} kB"
done

# ---- report ---------------------------------------------------------------------------
# col FILE N: column N of every sample line.
col() { [[ -f $1 ]] && awk -v n="$2" '$n != "-" {print $n}' "$1"; }

TSV=$OUT/results.tsv
MEM=$OUT/memory.tsv
MD=$OUT/results.md
printf 'proto\tpeer\trps\trps_min\trps_max\tp50_us\tp99_us\tadded_p50_us\tadded_p99_us\tcpu_us_per_req\terrors\truns\n' >"$TSV"
printf 'peer\tidle_rss_kb\tpeak_rss_load_kb\tpeak_rss_30mb_body_kb\tbody_intact\tpeak_rss_big_body_kb\tbig_body_bytes\tbig_body_complete\tbig_body_mb_s\tbig_body_cpu_ms_per_gb\n' >"$MEM"

declare -A M
for proto in h1 h2; do
    for peer in "${PEERS[@]}"; do
        f=$WORK/$proto-$peer.samples
        M[$proto,$peer,rps]=$(col "$f" 1 | median)
        M[$proto,$peer,rpsmin]=$( (col "$f" 1 || true) | sort -g | head -1)
        M[$proto,$peer,rpsmax]=$( (col "$f" 1 || true) | sort -g | tail -1)
        M[$proto,$peer,p50]=$(col "$f" 2 | median)
        M[$proto,$peer,p99]=$(col "$f" 3 | median)
        M[$proto,$peer,err]=$( (col "$f" 4 || true) | awk '{s += $1} END {print s + 0}')
        M[$proto,$peer,cpu]=$(col "$f" 5 | median)
        M[$proto,$peer,runs]=$( [[ -f $f ]] && wc -l <"$f" || echo 0)
    done
    for peer in "${PEERS[@]}"; do
        for q in p50 p99; do
            d=${M[$proto,direct,$q]:--} v=${M[$proto,$peer,$q]}
            if [[ $peer == direct || $d == - || $v == - ]]; then
                M[$proto,$peer,add$q]=-
            else
                M[$proto,$peer,add$q]=$(awk -v a="$v" -v b="$d" 'BEGIN {printf "%.0f\n", a - b}')
            fi
        done
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proto" "$peer" \
            "${M[$proto,$peer,rps]}" "${M[$proto,$peer,rpsmin]:--}" "${M[$proto,$peer,rpsmax]:--}" \
            "${M[$proto,$peer,p50]}" "${M[$proto,$peer,p99]}" \
            "${M[$proto,$peer,addp50]}" "${M[$proto,$peer,addp99]}" "${M[$proto,$peer,cpu]}" \
            "${M[$proto,$peer,err]}" "${M[$proto,$peer,runs]}" >>"$TSV"
    done
done
for peer in "${PEERS[@]}"; do
    [[ $peer == direct ]] && continue
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$peer" "${IDLE[$peer]:--}" \
        "${PEAK_LOAD[$peer]:--}" "${PEAK_BODY[$peer]:--}" "${BODY_OK[$peer]:--}" \
        "${PEAK_BIG[$peer]:--}" "$BIG_BYTES" "${BIG_OK[$peer]:--}" "${BIG_MBS[$peer]:--}" \
        "${BIG_CPU[$peer]:--}" >>"$MEM"
done

rps_fmt() { [[ $1 == - ]] && echo - || printf "%.0f\n" "$1"; }
add_fmt() { [[ $1 == - ]] && echo - || awk -v v="$1" 'BEGIN {printf "%+.3f\n", v / 1000}'; }
{
    echo "# Remora benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs, Linux $(uname -r);" \
        "load generator + upstream on CPU $LOAD_CPU, proxy on CPU $PROXY_CPU."
    echo "remora $REV, load average $LOAD0 before the run," \
        "$(haproxy -v | head -1 | awk '{print "haproxy", $3}'), $(nginx -v 2>&1 | sed 's/.*nginx\//nginx /')," \
        "$(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'), $(h2load --version | awk '{print "h2load", $2}')."
    echo "Fixed-rate, failure and handshake-latency runs in SCHED_RR: $([[ $RT == 1 ]] && echo "yes (chrt -r $RT_PRIO)" || echo no)."
    echo "Upstream: nginx returning \"ok\\n\" (HTTP/1.1 keep-alive from every proxy)." \
        "$DUR s per run, $REPS run(s), medians; $CONNS connections; h2c with $STREAMS streams each."
    for proto in h1 h2; do
        echo
        if [[ $proto == h1 ]]; then
            echo "## HTTP/1.1 (wrk -t1 -c$CONNS --latency)"
        else
            echo "## h2c (h2load -t1 -c$CONNS -m$STREAMS) to the proxy, HTTP/1.1 to the upstream"
        fi
        echo
        echo "| peer | req/s | req/s range | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU us/req | errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for peer in "${PEERS[@]}"; do
            range=-
            [[ -n ${M[$proto,$peer,rpsmin]} ]] &&
                range="$(rps_fmt "${M[$proto,$peer,rpsmin]}")-$(rps_fmt "${M[$proto,$peer,rpsmax]}")"
            echo "| $peer | $(rps_fmt "${M[$proto,$peer,rps]}") | $range | $(ms "${M[$proto,$peer,p50]}")" \
                "| $(ms "${M[$proto,$peer,p99]}") | $(add_fmt "${M[$proto,$peer,addp50]}")" \
                "| $(add_fmt "${M[$proto,$peer,addp99]}") | ${M[$proto,$peer,cpu]}" \
                "| ${M[$proto,$peer,err]} |"
        done
    done
    want rate && report_rate
    echo
    echo "## Memory (RSS of the proxy process tree; nginx: master + worker)"
    echo
    big="$((BIG_BYTES >> 20)) MB"
    echo "| peer | idle RSS MB | peak RSS under load MB | peak RSS, 30 MB body at $BODY_RATE/s MB | body intact | peak RSS, $big body at $BIG_RATE/s MB | $big complete, MB/s | CPU ms per GB |"
    echo "|---|---:|---:|---:|---|---:|---|---:|"
    for peer in "${PEERS[@]}"; do
        [[ $peer == direct ]] && continue
        echo "| $peer | $(mb "${IDLE[$peer]:--}") | $(mb "${PEAK_LOAD[$peer]:--}")" \
            "| $(mb "${PEAK_BODY[$peer]:--}") | ${BODY_OK[$peer]:--} | $(mb "${PEAK_BIG[$peer]:--}")" \
            "| ${BIG_OK[$peer]:--}, ${BIG_MBS[$peer]:--} | ${BIG_CPU[$peer]:--} |"
    done
    notes=0
    for peer in "${PEERS[@]}"; do
        if [[ -n ${NOTE[$peer]:-} ]]; then
            ((notes++)) || { echo; echo "Notes:"; }
            echo "- $peer: ${NOTE[$peer]}"
        fi
    done
} >"$MD"

# ---- the mesh path, memory over time, TLS, failure, micro, injector ---------------------
# Each section file defines sec_<name> (measure, write its TSV) and report_<name> (markdown).
# shellcheck source=/dev/null
for sec in mesh memory tls failure micro injector report; do source "$ROOT/perf/sec-$sec.sh"; done
want mesh && sec_mesh
want memory && sec_memory
want tls && sec_tls
want failure && sec_failure
want micro && sec_micro
want injector && sec_injector
{
    want mesh && report_mesh
    want memory && report_memory
    want tls && report_tls
    want failure && report_failure
    want micro && report_micro
    want injector && report_injector
    report_targets
    report_plots
    echo
    echo "Run time: $(($(date +%s) - T_START)) s; load average before $LOAD0, after $(cut -d" " -f1 /proc/loadavg)."
} >>"$MD"
cat "$MD"
log "results in ${OUT#"$ROOT"/}"
