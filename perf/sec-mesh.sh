# shellcheck shell=bash disable=SC2034
# Benchmark 2, the mesh path: client -> sidecar A (outbound) -> sidecar B (inbound) -> app,
# against the client talking to the app directly. Mesh peers:
#   remora-mtls   A "tls": "mesh" (HTTP/2 over mTLS to B), B "tls": "strict"
#   remora-plain  the same two proxies with "tls": "disabled" and no identity (issue 4's
#                 mTLS/plaintext ratio)
#   haproxy-mtls  two haproxy 2.6 doing the same: HTTP/2 over mTLS between them, the same
#                 workload certificates (perf/conf/haproxy-mesh-*.cfg.in)
# The app is the shared upstream nginx; A and B both run on the proxy CPU. Certificates: a
# root, an intermediate and two workload certs from build/remora-certs (ECDSA P-256), A is
# spiffe://cluster.local/ns/shop/sa/frontend and B .../sa/web.
# Sourced by perf/bench.sh. mesh_setup is shared with the memory and TLS sections.
#
# mesh.tsv: kind peer rate rps p50_us p90_us p99_us p999_us added_p50_us added_p99_us
#           added_p999_us cpu_a_us_per_req cpu_b_us_per_req vcpu_a vcpu_b errors runs
#   kind "rate" (perf-load, RCONNS connections) or "sat" (wrk -c CONNS, rate = "-")
# mesh-body.tsv: peer body_bytes peak_a_kb peak_b_kb complete mb_s cpu_a_ms_per_gb cpu_b_ms_per_gb

MESH_PEERS=(direct remora-mtls remora-plain haproxy-mtls)
MESH_DUR=${BENCH_MESH_DURATION:-$([[ $QUICK == 1 ]] && echo 2 || echo 5)}
declare -A MPID_A MPID_B MURL MADMIN_A MADMIN_B MPORT_B MNOTE
MESH_UP=0
PKI=$WORK/pki

# mesh_pki: root -> intermediate -> workload certs for A and B (chains: leaf + intermediate).
mesh_pki() {
    [[ -f $PKI/b.pem ]] && return 0
    mkdir -p "$PKI"
    "$CERTS_BIN" root --out-cert "$PKI/root.pem" --out-key "$PKI/root-key.pem" --cn "bench root" &&
        "$CERTS_BIN" intermediate --ca-cert "$PKI/root.pem" --ca-key "$PKI/root-key.pem" \
            --out-cert "$PKI/int.pem" --out-key "$PKI/int-key.pem" &&
        "$CERTS_BIN" workload --ca-cert "$PKI/int.pem" --ca-key "$PKI/int-key.pem" \
            --spiffe-id spiffe://cluster.local/ns/shop/sa/frontend \
            --out-cert "$PKI/a.pem" --out-key "$PKI/a-key.pem" &&
        "$CERTS_BIN" workload --ca-cert "$PKI/int.pem" --ca-key "$PKI/int-key.pem" \
            --spiffe-id spiffe://cluster.local/ns/shop/sa/web \
            --out-cert "$PKI/b.pem" --out-key "$PKI/b-key.pem" || return 1
    cat "$PKI/a.pem" "$PKI/a-key.pem" >"$PKI/a-haproxy.pem"
    cat "$PKI/b.pem" "$PKI/b-key.pem" >"$PKI/b-haproxy.pem"
} >/dev/null

# identity_json SA: the "identity" member for a remora config (static files), on one line
# (render substitutes with sed).
identity_json() {
    local c=$PKI/a.pem k=$PKI/a-key.pem
    [[ $1 == web ]] && c=$PKI/b.pem k=$PKI/b-key.pem
    printf ', "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "%s", "cert_file": "%s", "key_file": "%s", "bundle_file": "%s"}' \
        "$1" "$c" "$k" "$PKI/root.pem"
}

# start_remora_sidecar NAME DIRECTION PORT UPSTREAM_PORT TLS SA|- [EXTRA_JSON]: sets
# LASTPID, LASTADMIN. EXTRA_JSON: more top-level members, one line, starting with ",".
start_remora_sidecar() {
    local name=$1 admin id=""
    admin=$(free_port)
    [[ $6 != - ]] && id=$(identity_json "$6")
    render perf/conf/remora-mesh.json.in "$WORK/$name.json" ADMIN_PORT="$admin" NAME="$name" \
        PORT="$3" DIRECTION="$2" UPSTREAM_PORT="$4" TLS="$5" IDENTITY="$id" EXTRA="${7:-}" ||
        return 1
    cp "$WORK/$name.json" "$RAW/$name.json"
    bench_start "$name" "$PROXY_CPU" "$PROXY_BIN" -c "$WORK/$name.json"
    LASTADMIN=$admin
    wait_port "$3"
}

# mesh_start PEER: start (or restart, fresh) the two sidecars of a mesh path and check it
# with one request; 1 when the path does not work (MNOTE says why).
mesh_start() {
    local peer=$1 a b
    MURL[$peer]=
    b=$(free_port) a=$(free_port)
    case $peer in
    remora-mtls | remora-plain)
        local tls_b=strict tls_a=mesh sa_a=frontend sa_b=web
        [[ $peer == remora-plain ]] && tls_b=disabled tls_a=disabled sa_a=- sa_b=-
        if [[ ! -x $PROXY_BIN ]] ||
            ! start_remora_sidecar "$peer-b" inbound "$b" "$UP_PORT" "$tls_b" "$sa_b"; then
            MNOTE[$peer]="sidecar B did not start (raw/$peer-b.log)"
            return 1
        fi
        MPID_B[$peer]=$LASTPID MADMIN_B[$peer]=$LASTADMIN MPORT_B[$peer]=$b
        if ! start_remora_sidecar "$peer-a" outbound "$a" "$b" "$tls_a" "$sa_a"; then
            MNOTE[$peer]="sidecar A did not start (raw/$peer-a.log)"
            return 1
        fi
        MPID_A[$peer]=$LASTPID MADMIN_A[$peer]=$LASTADMIN
        ;;
    haproxy-mtls)
        render perf/conf/haproxy-mesh-b.cfg.in "$WORK/haproxy-mesh-b.cfg" PORT="$b" \
            CRT="$PKI/b-haproxy.pem" CA="$PKI/root.pem" UP_PORT="$UP_PORT" &&
            render perf/conf/haproxy-mesh-a.cfg.in "$WORK/haproxy-mesh-a.cfg" PORT="$a" \
                B_PORT="$b" CRT="$PKI/a-haproxy.pem" CA="$PKI/root.pem" || return 1
        cp "$WORK"/haproxy-mesh-?.cfg "$RAW/"
        bench_start haproxy-mtls-b "$PROXY_CPU" haproxy -f "$WORK/haproxy-mesh-b.cfg" -db
        MPID_B[$peer]=$LASTPID MPORT_B[$peer]=$b
        bench_start haproxy-mtls-a "$PROXY_CPU" haproxy -f "$WORK/haproxy-mesh-a.cfg" -db
        MPID_A[$peer]=$LASTPID
        if ! wait_port "$b" || ! wait_port "$a"; then
            MNOTE[$peer]="haproxy did not start (raw/haproxy-mtls-?.log)"
            return 1
        fi
        ;;
    *) return 1 ;;
    esac
    if ! smoke "http://127.0.0.1:$a/"; then
        MNOTE[$peer]="smoke request through the path failed"
        return 1
    fi
    MURL[$peer]=http://127.0.0.1:$a/
}

# mesh_stop PEER: both sidecars of a path.
mesh_stop() {
    stop_pid "${MPID_A[$1]:-}"
    stop_pid "${MPID_B[$1]:-}"
    MPID_A[$1]='' MPID_B[$1]=''
}

mesh_setup() {
    ((MESH_UP)) && return 0
    MESH_UP=1
    if ! mesh_pki; then
        log "mesh: remora-certs failed; no mesh benchmarks"
        MESH_PEERS=(direct)
        return 1
    fi
    MURL[direct]=http://127.0.0.1:$UP_PORT/
    local ok=(direct) p
    for p in "${MESH_PEERS[@]}"; do
        [[ $p == direct ]] && continue
        if mesh_start "$p"; then ok+=("$p"); else log "mesh $p: ${MNOTE[$p]}"; fi
    done
    MESH_PEERS=("${ok[@]}")
    log "mesh peers: ${MESH_PEERS[*]}"
}

# mesh_cpu PEER: "nsA nsB" CPU so far of the peer's two sidecars (0 0 for direct).
mesh_cpu() {
    if [[ $1 == direct ]]; then echo "0 0"; return; fi
    echo "$(cpu_ns "${MPID_A[$1]}") $(cpu_ns "${MPID_B[$1]}")"
}

# mesh_run KIND PEER RATE REP: KIND rate (perf-load) or sat (wrk); appends to
# $WORK/mesh-KIND-PEER-RATE.samples "p50 p90 p99 p999 errors rps cpuA cpuB vcpuA vcpuB".
mesh_run() {
    local kind=$1 peer=$2 rate=$3 rep=$4 url=${MURL[$2]} a0 b0 a1 b1 line out res n d
    out=$RAW/mesh-$kind-$peer-$rate-$rep.txt
    read -r a0 b0 < <(mesh_cpu "$peer")
    if [[ $kind == rate ]]; then # (the chrt calls add a few ms of CPU to nobody: not to A / B)
        rt_set "${MPID_A[$peer]:-}" "${MPID_B[$peer]:-}" "$UP_PID"
        line=$(rt_run taskset -c "$LOAD_CPU" "$PERF_LOAD" -a "$(addr_of "$url")" -c "$RCONNS" \
            -r "$rate" -d "$RDUR" 2>"$out.err")
        rt_clear "${MPID_A[$peer]:-}" "${MPID_B[$peer]:-}" "$UP_PID"
        echo "$line" >"$out"
        d=$RDUR
    else
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${MESH_DUR}s" --latency "$url" >"$out" 2>&1
        d=$MESH_DUR
    fi
    read -r a1 b1 < <(mesh_cpu "$peer")
    local p50 p90 p99 p999 err rps
    if [[ $kind == rate ]]; then
        [[ $(kv "$line" sent) == - ]] && { log "mesh $peer $rate: no result ($out.err)"; return 0; }
        p50=$(kv "$line" p50_us) p90=$(kv "$line" p90_us) p99=$(kv "$line" p99_us)
        p999=$(kv "$line" p999_us) rps=$(kv "$line" rps)
        err=$(($(kv "$line" non2xx) + $(kv "$line" fail)))
        n=$(($(kv "$line" ok) + $(kv "$line" non2xx)))
    else
        res=$(wrk_parse "$out") || { log "mesh $peer sat: no result ($out)"; return 0; }
        read -r rps p50 p99 err <<<"$res"
        p90=- p999=-
        n=$(calc 'r * d' r="$rps" d="$d")
    fi
    local ca=- cb=- va=- vb=-
    if [[ $peer != direct ]]; then
        ca=$(calc 'n > 0 ? c / 1e3 / n : 0' c=$((a1 - a0)) n="$n")
        cb=$(calc 'n > 0 ? c / 1e3 / n : 0' c=$((b1 - b0)) n="$n")
        va=$(calc 'c / (d * 1e9)' c=$((a1 - a0)) d="$d")
        vb=$(calc 'c / (d * 1e9)' c=$((b1 - b0)) d="$d")
    fi
    echo "$p50 $p90 $p99 $p999 $err $rps $ca $cb $va $vb" >>"$WORK/mesh-$kind-$peer-$rate.samples"
    log "mesh $kind $peer ${rate/-/sat} run $rep: rps=$rps p50=$p50 p99=$p99 p99.9=$p999 us" \
        "errors=$err cpu_us/req A=$ca B=$cb"
}

# mesh_body PEER BYTES FILE: peak RSS of A and B while FILE goes through the path.
mesh_body() {
    local peer=$1 bytes=$2 file=$3 got mbs pa pb ok a0 b0 a1 b1
    reset_hwm "${MPID_A[$peer]}"
    reset_hwm "${MPID_B[$peer]}"
    read -r a0 b0 < <(mesh_cpu "$peer")
    read -r got mbs < <(taskset -c "$LOAD_CPU" curl -s --max-time 300 --limit-rate "$BIG_RATE" \
        -o /dev/null -w '%{size_download} %{speed_download}\n' "${MURL[$peer]}$file")
    read -r a1 b1 < <(mesh_cpu "$peer")
    pa=$(rss_kb "${MPID_A[$peer]}" VmHWM) pb=$(rss_kb "${MPID_B[$peer]}" VmHWM)
    if [[ $got == "$bytes" ]]; then ok=yes; else ok="NO ($got bytes)"; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$peer" "$bytes" "$pa" "$pb" "$ok" \
        "$(awk -v b="${mbs:-0}" 'BEGIN {printf "%.0f\n", b / 1048576}')" \
        "$(fmt0 "$(calc 'c / 1e6 / (n / 1073741824)' c=$((a1 - a0)) n="$bytes")")" \
        "$(fmt0 "$(calc 'c / 1e6 / (n / 1073741824)' c=$((b1 - b0)) n="$bytes")")" >>"$OUT/mesh-body.tsv"
    log "mesh body $bytes via $peer: complete=$ok peak A=$pa B=$pb kB"
}

sec_mesh() {
    mesh_setup || return 0
    log "mesh: rates ${RATES[*]} ($RDUR s) and saturation (wrk -c$CONNS, $MESH_DUR s), $REPS reps"
    local rep rate peer
    for peer in "${MESH_PEERS[@]}"; do # warm-up: pools, sessions
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "${MURL[$peer]}" >/dev/null 2>&1
    done
    for rep in $(seq "$REPS"); do
        for rate in "${RATES[@]}"; do
            for peer in "${MESH_PEERS[@]}"; do mesh_run rate "$peer" "$rate" "$rep"; done
        done
        for peer in "${MESH_PEERS[@]}"; do mesh_run sat "$peer" - "$rep"; done
    done
    if [[ -n ${MADMIN_B[remora-mtls]:-} ]]; then
        curl -s "http://127.0.0.1:${MADMIN_B[remora-mtls]}/stats" >"$RAW/mesh-remora-mtls-b-stats.json"
        curl -s "http://127.0.0.1:${MADMIN_A[remora-mtls]}/stats" >"$RAW/mesh-remora-mtls-a-stats.json"
    fi
    if want body; then
        printf 'peer\tbody_bytes\tpeak_a_kb\tpeak_b_kb\tcomplete\tmb_s\tcpu_a_ms_per_gb\tcpu_b_ms_per_gb\n' >"$OUT/mesh-body.tsv"
        for peer in "${MESH_PEERS[@]}"; do
            [[ $peer == direct ]] && continue
            mesh_body "$peer" "$BODY_BYTES" large.bin
            mesh_body "$peer" "$BIG_BYTES" big.bin
        done
    fi
}

report_mesh() {
    local tsv=$OUT/mesh.tsv kind rate peer f q d v
    declare -gA MS
    printf 'kind\tpeer\trate\trps\tp50_us\tp90_us\tp99_us\tp999_us\tadded_p50_us\tadded_p99_us\tadded_p999_us\tcpu_a_us_per_req\tcpu_b_us_per_req\tvcpu_a\tvcpu_b\terrors\truns\n' >"$tsv"
    for kind in rate sat; do
        local rates=("${RATES[@]}")
        [[ $kind == sat ]] && rates=(-)
        for rate in "${rates[@]}"; do
            for peer in "${MESH_PEERS[@]}"; do
                f=$WORK/mesh-$kind-$peer-$rate.samples
                local i=1
                for q in p50 p90 p99 p999 err rps ca cb va vb; do
                    if [[ $q == err ]]; then
                        MS[$kind,$peer,$rate,$q]=$( (col "$f" $i || true) | awk '{s += $1} END {print s + 0}')
                    else
                        MS[$kind,$peer,$rate,$q]=$(col "$f" $i | median)
                    fi
                    i=$((i + 1))
                done
                MS[$kind,$peer,$rate,runs]=$([[ -f $f ]] && wc -l <"$f" || echo 0)
            done
            for peer in "${MESH_PEERS[@]}"; do
                for q in p50 p99 p999; do
                    d=${MS[$kind,direct,$rate,$q]:--} v=${MS[$kind,$peer,$rate,$q]}
                    if [[ $peer == direct ]]; then MS[$kind,$peer,$rate,add$q]=-
                    else MS[$kind,$peer,$rate,add$q]=$(calc 'a - b' a="$v" b="$d"); fi
                done
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
                    "$kind" "$peer" "$rate" "${MS[$kind,$peer,$rate,rps]}" \
                    "${MS[$kind,$peer,$rate,p50]}" "${MS[$kind,$peer,$rate,p90]}" \
                    "${MS[$kind,$peer,$rate,p99]}" "${MS[$kind,$peer,$rate,p999]}" \
                    "${MS[$kind,$peer,$rate,addp50]}" "${MS[$kind,$peer,$rate,addp99]}" \
                    "${MS[$kind,$peer,$rate,addp999]}" "${MS[$kind,$peer,$rate,ca]}" \
                    "${MS[$kind,$peer,$rate,cb]}" "${MS[$kind,$peer,$rate,va]}" \
                    "${MS[$kind,$peer,$rate,vb]}" "${MS[$kind,$peer,$rate,err]}" \
                    "${MS[$kind,$peer,$rate,runs]}" >>"$tsv"
            done
        done
    done
    add() { [[ $1 == - ]] && echo - || awk -v v="$1" 'BEGIN {printf "%+.3f\n", v / 1000}'; }
    echo
    echo "## Mesh path: client -> A -> B -> app (HTTP/1.1 from the client; A to B: HTTP/2 over mTLS for *-mtls, HTTP/1.1 for remora-plain)"
    echo
    echo "Fixed rates ($RCONNS staggered connections, $RDUR s x $REPS). Added latency is for both"
    echo "sidecars together, over \`direct\` measured in the same section. CPU per sidecar."
    echo
    echo "| path | rate/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | CPU us/req A | CPU us/req B | vCPU A | vCPU B | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for rate in "${RATES[@]}"; do
        for peer in "${MESH_PEERS[@]}"; do
            echo "| $peer | $rate | $(ms "${MS[rate,$peer,$rate,p50]}") | $(ms "${MS[rate,$peer,$rate,p99]}")" \
                "| $(ms "${MS[rate,$peer,$rate,p999]}") | $(add "${MS[rate,$peer,$rate,addp50]}")" \
                "| $(add "${MS[rate,$peer,$rate,addp99]}") | $(add "${MS[rate,$peer,$rate,addp999]}")" \
                "| $(fmt1 "${MS[rate,$peer,$rate,ca]}") | $(fmt1 "${MS[rate,$peer,$rate,cb]}")" \
                "| $(fmt3 "${MS[rate,$peer,$rate,va]}") | $(fmt3 "${MS[rate,$peer,$rate,vb]}") | ${MS[rate,$peer,$rate,err]} |"
        done
    done
    echo
    echo "Saturation (wrk -t1 -c$CONNS, $MESH_DUR s x $REPS):"
    echo
    echo "| path | req/s | vs direct | p50 ms | p99 ms | CPU us/req A | CPU us/req B | CPU us/req A+B | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for peer in "${MESH_PEERS[@]}"; do
        echo "| $peer | $(fmt0 "${MS[sat,$peer,-,rps]}") | $(fmt2 "$(calc 'a / b' a="${MS[sat,$peer,-,rps]}" b="${MS[sat,direct,-,rps]:--}")")" \
            "| $(ms "${MS[sat,$peer,-,p50]}") | $(ms "${MS[sat,$peer,-,p99]}")" \
            "| $(fmt1 "${MS[sat,$peer,-,ca]}") | $(fmt1 "${MS[sat,$peer,-,cb]}")" \
            "| $(fmt1 "$(calc 'a + b' a="${MS[sat,$peer,-,ca]}" b="${MS[sat,$peer,-,cb]}")") | ${MS[sat,$peer,-,err]} |"
    done
    local r
    r=$(calc 'a / b' a="${MS[sat,remora-mtls,-,rps]:--}" b="${MS[sat,remora-plain,-,rps]:--}")
    echo
    echo "remora mTLS / plaintext throughput: $(fmt2 "$r") (issue 4 wants >= 0.8)."
    if [[ -f $RAW/mesh-remora-mtls-b-stats.json ]]; then
        echo "Handshakes B accepted from A over the whole section:" \
            "$(jq -r '"\(.tls_handshakes) (\(.tls_handshakes_resumed) resumed)"' "$RAW/mesh-remora-mtls-b-stats.json" 2>/dev/null)"
    fi
    if [[ -f $OUT/mesh-body.tsv ]]; then
        echo
        echo "Bodies through the path (client reading at most $BIG_RATE/s; VmHWM of each sidecar):"
        echo
        echo "| path | body | peak RSS A MB | peak RSS B MB | complete | MB/s | CPU ms per GB, A | CPU ms per GB, B |"
        echo "|---|---:|---:|---:|---|---:|---:|---:|"
        tail -n +2 "$OUT/mesh-body.tsv" | while IFS=$'\t' read -r p bytes pa pb ok mbs ca cb; do
            echo "| $p | $((bytes >> 20)) MB | $(mb "$pa") | $(mb "$pb") | $ok | $mbs | $ca | $cb |"
        done
    fi
    local p
    for p in remora-mtls remora-plain haproxy-mtls; do
        [[ -n ${MNOTE[$p]:-} ]] && echo "- $p: ${MNOTE[$p]}"
    done
    return 0
}
