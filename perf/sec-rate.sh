# shellcheck shell=bash disable=SC2034
# Benchmark 1, fixed rates: every single-sidecar peer at BENCH_RATES (1,000 and 5,000 req/s)
# over RCONNS (100) connections, HTTP/1.1 and h2c, with build/perf-load: sends are spread
# evenly (connection i of C sends at (i + k C) / rate), latency runs from the intended send
# time (no coordinated omission). Sourced by perf/bench.sh (uses its peers and knobs).
#
# rate.tsv: proto peer rate rps p50_us p90_us p99_us p999_us added_p50_us added_p99_us
#           added_p999_us cpu_us_per_req vcpu errors runs
# vcpu = the proxy's CPU time / the run's schedule length, i.e. vCPU used at that rate.

# rate_run PROTO PEER RATE REP: one run; appends to $WORK/rate-PROTO-PEER-RATE.samples
# "p50 p90 p99 p999 errors rps cpu_us_per_req vcpu".
rate_run() {
    local proto=$1 peer=$2 rate=$3 rep=$4 url pid=${PID[$2]} c0=0 c1=0 line out flag=()
    if [[ $proto == h1 ]]; then url=${URL_H1[$peer]}; else url=${URL_H2[$peer]}; flag=(-2); fi
    [[ -n $url ]] || return 0
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
        NOTE[$peer]="exited during the benchmark (see raw/$peer.log)"
        return 0
    fi
    out=$RAW/rate-$proto-$peer-$rate-$rep.txt
    rt_set "$pid" "$UP_PID"
    [[ -n $pid ]] && c0=$(cpu_ns "$pid")
    line=$(rt_run taskset -c "$LOAD_CPU" "$PERF_LOAD" -a "$(addr_of "$url")" -c "$RCONNS" \
        -r "$rate" -d "$RDUR" "${flag[@]}" 2>"$out.err")
    [[ -n $pid ]] && c1=$(cpu_ns "$pid")
    rt_clear "$pid" "$UP_PID"
    echo "$line cpu_ns_before=$c0 cpu_ns_after=$c1" >"$out"
    if [[ $(kv "$line" sent) == - ]]; then
        log "rate $proto $peer $rate run $rep: no result (see $out.err)"
        return 0
    fi
    local ok non fail cpu=- vcpu=-
    ok=$(kv "$line" ok) non=$(kv "$line" non2xx) fail=$(kv "$line" fail)
    if [[ -n $pid ]]; then
        cpu=$(calc 'n > 0 ? c / 1e3 / n : 0' c=$((c1 - c0)) n=$((ok + non)))
        vcpu=$(calc 'c / (d * 1e9)' c=$((c1 - c0)) d="$RDUR")
    fi
    echo "$(kv "$line" p50_us) $(kv "$line" p90_us) $(kv "$line" p99_us) $(kv "$line" p999_us)" \
        "$((non + fail)) $(kv "$line" rps) $cpu $vcpu" >>"$WORK/rate-$proto-$peer-$rate.samples"
    log "rate $proto $peer $rate/s run $rep: p50=$(kv "$line" p50_us) p99=$(kv "$line" p99_us)" \
        "p99.9=$(kv "$line" p999_us) us errors=$((non + fail)) cpu_us/req=$cpu vcpu=$vcpu"
}

sec_rate() {
    log "fixed rates ${RATES[*]} req/s, $RCONNS connections, $RDUR s x $REPS"
    local rep proto rate peer
    for rep in $(seq "$REPS"); do
        for proto in h1 h2; do
            for rate in "${RATES[@]}"; do
                for peer in "${ACTIVE[@]}"; do rate_run "$proto" "$peer" "$rate" "$rep"; done
            done
        done
    done
}

# report_rate: rate.tsv and the markdown tables (inside bench.sh's report block).
report_rate() {
    local tsv=$OUT/rate.tsv proto rate peer f q d v
    declare -gA RATER # not RT: that is the SCHED_RR flag (lib.sh)
    printf 'proto\tpeer\trate\trps\tp50_us\tp90_us\tp99_us\tp999_us\tadded_p50_us\tadded_p99_us\tadded_p999_us\tcpu_us_per_req\tvcpu\terrors\truns\n' >"$tsv"
    for proto in h1 h2; do
        for rate in "${RATES[@]}"; do
            for peer in "${PEERS[@]}"; do
                f=$WORK/rate-$proto-$peer-$rate.samples
                RATER[$proto,$peer,$rate,p50]=$(col "$f" 1 | median)
                RATER[$proto,$peer,$rate,p90]=$(col "$f" 2 | median)
                RATER[$proto,$peer,$rate,p99]=$(col "$f" 3 | median)
                RATER[$proto,$peer,$rate,p999]=$(col "$f" 4 | median)
                RATER[$proto,$peer,$rate,err]=$( (col "$f" 5 || true) | awk '{s += $1} END {print s + 0}')
                RATER[$proto,$peer,$rate,rps]=$(col "$f" 6 | median)
                RATER[$proto,$peer,$rate,cpu]=$(col "$f" 7 | median)
                RATER[$proto,$peer,$rate,vcpu]=$(col "$f" 8 | median)
                RATER[$proto,$peer,$rate,runs]=$([[ -f $f ]] && wc -l <"$f" || echo 0)
            done
            for peer in "${PEERS[@]}"; do
                for q in p50 p99 p999; do
                    d=${RATER[$proto,direct,$rate,$q]:--} v=${RATER[$proto,$peer,$rate,$q]}
                    if [[ $peer == direct ]]; then RATER[$proto,$peer,$rate,add$q]=-
                    else RATER[$proto,$peer,$rate,add$q]=$(calc 'a - b' a="$v" b="$d"); fi
                done
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proto" "$peer" \
                    "$rate" "${RATER[$proto,$peer,$rate,rps]}" "${RATER[$proto,$peer,$rate,p50]}" \
                    "${RATER[$proto,$peer,$rate,p90]}" "${RATER[$proto,$peer,$rate,p99]}" \
                    "${RATER[$proto,$peer,$rate,p999]}" "${RATER[$proto,$peer,$rate,addp50]}" \
                    "${RATER[$proto,$peer,$rate,addp99]}" "${RATER[$proto,$peer,$rate,addp999]}" \
                    "${RATER[$proto,$peer,$rate,cpu]}" "${RATER[$proto,$peer,$rate,vcpu]}" \
                    "${RATER[$proto,$peer,$rate,err]}" "${RATER[$proto,$peer,$rate,runs]}" >>"$tsv"
            done
        done
    done
    add() { [[ $1 == - ]] && echo - || awk -v v="$1" 'BEGIN {printf "%+.3f\n", v / 1000}'; }
    for proto in h1 h2; do
        echo
        if [[ $proto == h1 ]]; then
            echo "## Fixed rates, HTTP/1.1 (perf-load, $RCONNS staggered connections, $RDUR s x $REPS, medians)"
        else
            echo "## Fixed rates, h2c (perf-load -2, $RCONNS staggered connections, a new stream when due, $RDUR s x $REPS)"
        fi
        echo
        echo "Latency from the intended send time. vCPU: the proxy's CPU seconds per second at that rate."
        echo
        echo "| peer | rate/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | CPU us/req | vCPU | errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for rate in "${RATES[@]}"; do
            for peer in "${PEERS[@]}"; do
                echo "| $peer | $rate | $(ms "${RATER[$proto,$peer,$rate,p50]}") | $(ms "${RATER[$proto,$peer,$rate,p99]}")" \
                    "| $(ms "${RATER[$proto,$peer,$rate,p999]}") | $(add "${RATER[$proto,$peer,$rate,addp50]}")" \
                    "| $(add "${RATER[$proto,$peer,$rate,addp99]}") | $(add "${RATER[$proto,$peer,$rate,addp999]}")" \
                    "| ${RATER[$proto,$peer,$rate,cpu]} | $(fmt3 "${RATER[$proto,$peer,$rate,vcpu]}") | ${RATER[$proto,$peer,$rate,err]} |"
            done
        done
    done
}
