# shellcheck shell=bash
# Benchmark 4, TLS: full and resumed mTLS handshakes against sidecar B's strict listener
# (remora) and haproxy B's mTLS listener, with the mesh's workload certificate as the client
# (perf/tls_hs.py, Python's OpenSSL, TLS 1.2: what mbedTLS 2.28 serves):
#   TLS_N handshakes one after the other (SCHED_RR, like the fixed-rate runs): latency (TCP
#   connect + handshake), and the server's CPU per handshake (its CPU time / handshakes),
#   which does not depend on the client; handshakes/s on one core = 1e6 / that. (Many
#   concurrent clients would measure the shared machine: the Python client and the server
#   then wait for the CPU, not for each other.)
# Then resumption *between sidecars*: a remora A whose idle HTTP/2 sessions to B close after
# 100 ms (limits.pool_idle_timeout_ms), TLS_PAIRS pairs of requests 300 ms apart: the first
# of a pair needs a new A -> B connection (the very first a full handshake, the others
# resumed from A's session cache), the second reuses it. B's counters say which were resumed.
# Sourced by perf/bench.sh.
#
# tls.tsv: server mode n ok resumed seq_per_s p50_us p90_us p99_us mean_us
#          server_cpu_us_per_hs one_core_per_s cipher
# tls-mesh.tsv: pair new_conn_us pooled_us   (curl time_total through A)

TLS_N=${BENCH_TLS_N:-$([[ $QUICK == 1 ]] && echo 50 || echo 200)}
TLS_PAIRS=${BENCH_TLS_PAIRS:-$([[ $QUICK == 1 ]] && echo 5 || echo 12)}
declare -A TLSR

# tls_run SERVER PORT PID MODE
tls_run() {
    local server=$1 port=$2 pid=$3 mode=$4 c0 c1 line
    rt_set "$pid"
    c0=$(cpu_ns "$pid")
    line=$(rt_run taskset -c "$LOAD_CPU" python3 "$ROOT/perf/tls_hs.py" --addr "127.0.0.1:$port" \
        --cert "$PKI/a.pem" --key "$PKI/a-key.pem" --ca "$PKI/root.pem" --mode "$mode" \
        --seq "$TLS_N" 2>>"$RAW/tls-$server.err")
    c1=$(cpu_ns "$pid")
    rt_clear "$pid"
    [[ -n $line ]] || { log "tls $server $mode: no result (raw/tls-$server.err)"; return 0; }
    local m n ok res per p50 p90 p99 mean cipher cpu
    read -r m n ok res per p50 p90 p99 mean cipher <<<"$line"
    # tls_hs.py makes one full handshake first (to get a session): take it out
    if [[ $mode == full ]]; then
        cpu=$(calc 'c / 1e3 / (k + 1)' c=$((c1 - c0)) k="$ok")
    else
        cpu=$(calc '(c / 1e3 - f) / k' c=$((c1 - c0)) f="${TLSR[$server,full,cpu]:-0}" k="$ok")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$m" "$n" "$ok" \
        "$res" "$per" "$p50" "$p90" "$p99" "$mean" "$cpu" "$(fmt0 "$(calc '1e6 / c' c="$cpu")")" \
        "$cipher" >>"$OUT/tls.tsv"
    TLSR[$server,$mode,p50]=$p50 TLSR[$server,$mode,p99]=$p99 TLSR[$server,$mode,cpu]=$cpu
    log "tls $server $mode: $ok/$n ok, $res resumed, $per/s, p50=$p50 p99=$p99 us," \
        "server CPU $(fmt0 "$cpu") us/handshake $cipher"
}

# tls_between_sidecars: the A -> B connection churn test (see the header).
tls_between_sidecars() {
    local a port before after
    [[ -n ${MADMIN_B[remora-mtls]:-} ]] || return 0
    a=$(free_port)
    start_remora_sidecar remora-churn-a outbound "$a" "${MPORT_B[remora-mtls]}" mesh frontend \
        ', "limits": {"pool_idle_timeout_ms": 100}' ||
        { log "tls: churn sidecar did not start (raw/remora-churn-a.log)"; return 0; }
    local churn_pid=$LASTPID
    before=$(curl -s "http://127.0.0.1:${MADMIN_B[remora-mtls]}/stats")
    printf 'pair\tnew_conn_us\tpooled_us\n' >"$OUT/tls-mesh.tsv"
    local i t1 t2
    rt_set "$churn_pid" "${MPID_B[remora-mtls]}" "$UP_PID"
    for i in $(seq "$TLS_PAIRS"); do
        sleep 0.3 # > pool_idle_timeout_ms: A's session to B is gone
        t1=$(rt_run taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$a/")
        t2=$(rt_run taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$a/")
        printf '%s\t%s\t%s\n' "$i" "$(calc 't * 1e6' t="$t1")" "$(calc 't * 1e6' t="$t2")" >>"$OUT/tls-mesh.tsv"
    done
    rt_clear "$churn_pid" "${MPID_B[remora-mtls]}" "$UP_PID"
    after=$(curl -s "http://127.0.0.1:${MADMIN_B[remora-mtls]}/stats")
    TLSR[churn,hs]=$(($(jq .tls_handshakes <<<"$after") - $(jq .tls_handshakes <<<"$before")))
    TLSR[churn,res]=$(($(jq .tls_handshakes_resumed <<<"$after") - $(jq .tls_handshakes_resumed <<<"$before")))
    stop_pid "$churn_pid"
    log "tls between sidecars: $TLS_PAIRS new A->B connections, B saw ${TLSR[churn,hs]} handshakes, ${TLSR[churn,res]} resumed"
}

sec_tls() {
    mesh_setup || return 0
    printf 'server\tmode\tn\tok\tresumed\tseq_per_s\tp50_us\tp90_us\tp99_us\tmean_us\tserver_cpu_us_per_hs\tone_core_per_s\tcipher\n' >"$OUT/tls.tsv"
    local peer server
    for peer in remora-mtls haproxy-mtls; do
        [[ -n ${MPORT_B[$peer]:-} && -n ${MURL[$peer]:-} ]] || continue
        server=${peer%-mtls}
        for mode in full resumed; do
            tls_run "$server" "${MPORT_B[$peer]}" "${MPID_B[$peer]}" "$mode"
        done
    done
    tls_between_sidecars
}

report_tls() {
    echo
    echo "## mTLS handshakes (server: sidecar B; client: perf/tls_hs.py with the mesh workload cert, TLS 1.2)"
    echo
    echo "$TLS_N handshakes one after the other; latency = TCP connect + handshake, at the client."
    echo "Server CPU per handshake = the server's CPU time / handshakes; one core = 1e6 / that."
    echo
    echo "| server | handshake | sequential/s | p50 ms | p99 ms | server CPU us/handshake | handshakes/s on one core | cipher |"
    echo "|---|---|---:|---:|---:|---:|---:|---|"
    tail -n +2 "$OUT/tls.tsv" | while IFS=$'\t' read -r s m n ok res per p50 p90 p99 mean cpu core cipher; do
        echo "| $s | $m ($res/$ok resumed) | $(fmt0 "$per") | $(ms "$p50") | $(ms "$p99") | $(fmt0 "$cpu") | $core | $cipher |"
    done
    if [[ -f $OUT/tls-mesh.tsv ]]; then
        local first res_new pooled
        first=$(awk -F'\t' 'NR == 2 {print $2}' "$OUT/tls-mesh.tsv")
        res_new=$(awk -F'\t' 'NR > 2 {print $2}' "$OUT/tls-mesh.tsv" | median)
        pooled=$(awk -F'\t' 'NR > 1 {print $3}' "$OUT/tls-mesh.tsv" | median)
        TLSR[churn,first]=$first TLSR[churn,resnew]=$res_new TLSR[churn,pooled]=$pooled
        echo
        echo "Between sidecars (client -> A -> B -> app, A's idle sessions to B closed after 100 ms):"
        echo "$TLS_PAIRS new A -> B connections; B counted ${TLSR[churn,hs]:-?} handshakes," \
            "${TLSR[churn,res]:-?} of them resumed (session tickets)."
        echo "Request latency (curl time_total): first request on a new connection with a full"
        echo "handshake $(ms "$first") ms; on a new connection with a resumed handshake (median)" \
            "$(ms "$res_new") ms; on the pooled connection $(ms "$pooled") ms."
    fi
}
