# shellcheck shell=bash
# Benchmark 6: build/perf-micro (perf/micro.c), pinned to the proxy CPU: policy decision
# cost with 1 / 100 / 1,000 rules, route match and LB pick with up to 1,000 routes /
# endpoints, and the public-key operations of one mTLS handshake (mbedTLS).
# Sourced by perf/bench.sh. micro.tsv: case n ns_per_op_min ns_per_op_median ops

sec_micro() {
    local args=(-t)
    [[ $QUICK == 1 ]] && args+=(-q)
    mesh_pki && args+=(-c "$PKI")
    log "micro: $PERF_MICRO ${args[*]}"
    taskset -c "$PROXY_CPU" "$PERF_MICRO" "${args[@]}" >"$OUT/micro.tsv" 2>"$RAW/micro.err" ||
        log "micro: failed (raw/micro.err)"
}

# micro_ns CASE N: the fastest ns/op of a case ("-" when absent).
micro_ns() {
    awk -F'\t' -v c="$1" -v n="$2" '$1 == c && $2 == n {v = $3} END {print (v == "" ? "-" : v)}' \
        "$OUT/micro.tsv" 2>/dev/null || echo -
}

report_micro() {
    [[ -s $OUT/micro.tsv ]] || return 0
    echo
    echo "## Per-request decisions and handshake crypto (perf-micro, ns per operation: fastest / median batch)"
    echo
    echo "| case | n | ns/op | median | what |"
    echo "|---|---:|---:|---:|---|"
    tail -n +2 "$OUT/micro.tsv" | while IFS=$'\t' read -r c n lo med _; do
        local what
        case $c in
        policy_allow_last_rule) what="n rules, one principal each; the request matches the last" ;;
        policy_unknown_caller_deny) what="n rules; unknown principal -> default deny" ;;
        policy_one_principal_allow_last) what="n rules all for one principal (paths differ); matches the last" ;;
        lb_pick_local) what="px_route_pick, n endpoints in our cluster" ;;
        lb_pick_half_local) what="px_route_pick, n endpoints, half in our cluster" ;;
        route_match_last) what="px_routes_match, n host routes, the last matches" ;;
        lb_random_draw_ctr_drbg) what="4 bytes from the CTR_DRBG (pki_rng_fn): what each of px_route_pick's 2 draws cost before 41d870b (xorshift since)" ;;
        tls_ecdhe_x25519) what="ECDHE X25519: fresh context, make public + shared secret" ;;
        tls_ecdhe_p256) what="ECDHE P-256: the same" ;;
        tls_ecdsa_p256_sign) what="ECDSA P-256 sign (ServerKeyExchange / CertificateVerify)" ;;
        tls_ecdsa_p256_verify_known_key) what="ECDSA P-256 verify, long-lived key" ;;
        tls_ecdsa_p256_verify_new_key) what="ECDSA P-256 verify, key loaded afresh (a peer's)" ;;
        tls_peer_chain_parse) what="parse a peer chain (leaf + intermediate, PEM)" ;;
        tls_peer_chain_parse_verify) what="parse + verify it against the root" ;;
        tls_record_16k_*) what="seal one 16 KiB TLS record: $(fmt0 "$(calc '16384 / l * 1e9 / 1048576' l="$lo")") MB/s on one core" ;;
        *) what= ;;
        esac
        echo "| $c | $n | $(fmt0 "$lo") | $(fmt0 "$med") | $what |"
    done
    local est
    est=$(calc '(a + b + c + d) / 1000' a="$(micro_ns tls_ecdhe_x25519 1)" b="$(micro_ns tls_ecdsa_p256_sign 1)" \
        c="$(micro_ns tls_peer_chain_parse_verify 2)" d="$(micro_ns tls_ecdsa_p256_verify_new_key 1)")
    echo
    echo "Public-key work of one full mTLS handshake on either side (ECDHE + one signature + the"
    echo "peer's chain + the peer's CertificateVerify or ServerKeyExchange signature):" \
        "about $(fmt0 "$est") us of CPU with this mbedTLS."
}
