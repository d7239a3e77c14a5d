# shellcheck shell=bash disable=SC2034
# Benchmark 3, memory over time. For every proxy (single sidecars: remora, haproxy, nginx;
# mesh paths: remora-mtls, remora-plain, haproxy-mtls, both sidecars) one timeline, RSS
# sampled every 100 ms (perf/rss_sample.py):
# Every proxy is restarted for its timeline, so "idle" is a fresh process after one request.
#   idle      1 s, nothing happening
#   load      1,000 req/s over RCONNS (100) client connections (perf-load), MEM_DUR s
#   conns     IDLE_CONNS (1,000) client connections, each after one request, held idle
#   mtls      (mTLS mesh paths) IDLE_CONNS mTLS connections straight to sidecar B, each
#             after one request, held idle: what B pays per mesh peer connection
#   after     everything closed again
# Sourced by perf/bench.sh.
#
# memory-phases.tsv: path process idle_kb load_kb load_max_kb conns_kb mtls_conns_kb after_kb
#   (medians of the samples in each phase; load_max the highest)
# memtime.tsv: path process t_s rss_kb, every sample (the RSS plot)

MEM_DUR=${BENCH_MEM_DURATION:-$([[ $QUICK == 1 ]] && echo 2 || echo 4)}
MEM_PATHS=()

# hold_conns NAME ADDR [conns.py TLS flags]: open and hold the idle connections; sets
# HOLD_PID once every connection has had its answer (or after 120 s).
hold_conns() {
    local name=$1 addr=$2
    shift 2
    rm -f "$WORK/$name.conns"
    taskset -c "$LOAD_CPU" python3 "$ROOT/perf/conns.py" --addr "$addr" --n "$IDLE_CONNS" "$@" \
        </dev/null >"$WORK/$name.conns" 2>>"$RAW/$name.conns.err" &
    HOLD_PID=$!
    bench_pids+=("$HOLD_PID")
    wait_line "$WORK/$name.conns" '^ready' 120 || log "memory $name: connections not ready"
    log "memory $name: $IDLE_CONNS connections: $(cat "$WORK/$name.conns")"
}

# mem_timeline PATH ADDR B_TLS_PORT|- LABEL=PID...
mem_timeline() {
    local path=$1 addr=$2 tlsport=$3 samples=$WORK/memtime-$1.raw ph=$WORK/phases-$1
    shift 3
    rm -f "$samples"
    : >"$ph"
    sampler_start "$samples" "$@"
    local t0
    t0=$(now_ms)
    echo "start $t0" >>"$ph"
    sleep 1
    echo "load $(now_ms)" >>"$ph"
    taskset -c "$LOAD_CPU" "$PERF_LOAD" -a "$addr" -c "$RCONNS" -r 1000 -d "$MEM_DUR" \
        >"$RAW/memory-$path-load.txt" 2>&1
    echo "load_end $(now_ms)" >>"$ph"
    sleep 1
    hold_conns "$path" "$addr"
    echo "conns $(now_ms)" >>"$ph"
    sleep 1.5
    echo "conns_end $(now_ms)" >>"$ph"
    stop_pid "$HOLD_PID"
    sleep 1
    if [[ $tlsport != - ]]; then
        hold_conns "$path-to-b" "127.0.0.1:$tlsport" --cert "$PKI/a.pem" --key "$PKI/a-key.pem" \
            --ca "$PKI/root.pem"
        echo "mtls $(now_ms)" >>"$ph"
        sleep 1.5
        echo "mtls_end $(now_ms)" >>"$ph"
        stop_pid "$HOLD_PID"
        sleep 1
    fi
    # "after" is the last samples: remora hands freed heap back on a 1 s tick
    sleep 1.5
    echo "end $(now_ms)" >>"$ph"
    sampler_stop
    MEM_PATHS+=("$path")
}

sec_memory() {
    local peer
    log "memory: timelines (1,000 req/s x $RCONNS connections for $MEM_DUR s, $IDLE_CONNS idle connections)"
    for peer in "${ACTIVE[@]}"; do
        [[ $peer == direct || -z ${URL_H1[$peer]} ]] && continue
        stop_pid "${PID[$peer]}"
        if ! "start_$peer" || ! smoke "${URL_H1[$peer]}"; then
            log "memory $peer: did not restart (raw/$peer.log)"
            continue
        fi
        mem_timeline "$peer" "$(addr_of "${URL_H1[$peer]}")" - "$peer=${PID[$peer]}"
    done
    mesh_setup || return 0
    for peer in "${MESH_PEERS[@]}"; do
        [[ $peer == direct ]] && continue
        mesh_stop "$peer"
        mesh_start "$peer" || { log "memory $peer: ${MNOTE[$peer]}"; continue; }
        local tls=-
        [[ $peer == *-mtls ]] && tls=${MPORT_B[$peer]}
        mem_timeline "$peer" "$(addr_of "${MURL[$peer]}")" "$tls" \
            "A=${MPID_A[$peer]}" "B=${MPID_B[$peer]}"
    done
}

# phase_stat RAW LABEL FROM TO STAT: median or max of LABEL's samples with FROM <= t <= TO.
phase_stat() {
    [[ -z $3 || -z $4 ]] && { echo -; return; }
    local v
    v=$(awk -F'\t' -v l="$2" -v a="$3" -v b="$4" '$2 == l && $1 >= a && $1 <= b {print $3}' "$1")
    if [[ $5 == max ]]; then sort -g <<<"$v" | tail -1 | sed 's/^$/-/'
    else median <<<"$v"; fi
}

report_memory() {
    local tsv=$OUT/memory-phases.tsv tt=$OUT/memtime.tsv path label
    printf 'path\tprocess\tidle_kb\tload_kb\tload_max_kb\tconns_kb\tmtls_conns_kb\tafter_kb\n' >"$tsv"
    printf 'path\tprocess\tt_s\trss_kb\n' >"$tt"
    declare -gA MEM
    for path in "${MEM_PATHS[@]}"; do
        local raw=$WORK/memtime-$path.raw ph=$WORK/phases-$path
        local -A P=()
        while read -r k v; do P[$k]=$v; done <"$ph"
        awk -F'\t' -v p="$path" -v t0="${P[start]}" 'BEGIN {OFS = "\t"}
            {print p, $2, sprintf("%.1f", ($1 - t0) / 1000), $3}' "$raw" >>"$tt"
        for label in $(cut -f2 "$raw" | sort -u); do
            local idle load lmax conns mtls after
            idle=$(phase_stat "$raw" "$label" "${P[start]}" "${P[load]}" median)
            load=$(phase_stat "$raw" "$label" "$((P[load] + 500))" "${P[load_end]}" median)
            lmax=$(phase_stat "$raw" "$label" "${P[load]}" "${P[load_end]}" max)
            conns=$(phase_stat "$raw" "$label" "${P[conns]}" "${P[conns_end]}" median)
            mtls=$(phase_stat "$raw" "$label" "${P[mtls]:-}" "${P[mtls_end]:-}" median)
            after=$(awk -F'\t' -v l="$label" '$2 == l {v = $3} END {print v + 0}' "$raw")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$path" "$label" "$idle" "$load" "$lmax" \
                "$conns" "$mtls" "$after" >>"$tsv"
            MEM[$path,$label,idle]=$idle MEM[$path,$label,load]=$load MEM[$path,$label,conns]=$conns
            MEM[$path,$label,mtls]=$mtls MEM[$path,$label,lmax]=$lmax MEM[$path,$label,after]=$after
        done
    done
    echo
    echo "## Memory over time (VmRSS every 100 ms; medians per phase)"
    echo
    echo "Phases: idle; 1,000 req/s over $RCONNS connections ($MEM_DUR s); $IDLE_CONNS idle client"
    echo "connections (one request each); for mTLS paths, $IDLE_CONNS idle mTLS connections straight"
    echo "to B; after (all closed). A and B are the two sidecars of a mesh path."
    echo
    echo "| path | process | idle MB | at 1,000 req/s MB (max) | $IDLE_CONNS idle conns MB | $IDLE_CONNS idle mTLS conns MB | after MB | per idle conn kB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    tail -n +2 "$tsv" | while IFS=$'\t' read -r p l idle load lmax conns mtls after; do
        local per=$conns
        [[ $mtls != - ]] && per=$mtls
        per=$(calc '(c - i) / n' c="$per" i="$idle" n="$IDLE_CONNS")
        echo "| $p | $l | $(mb "$idle") | $(mb "$load") ($(mb "$lmax")) | $(mb "$conns") | $(mb "$mtls") | $(mb "$after") | $(fmt1 "$per") |"
    done
    echo
    echo "per idle conn: (RSS with the idle connections - idle RSS) / $IDLE_CONNS; for mTLS paths"
    echo "measured on the mTLS connections to B."
}
