# shellcheck shell=bash
# Benchmark 7, failure. One remora (outbound listener, "cluster": "east", a routes file with
# one route per scenario, docs/routes.md) in front of build/test-upstream endpoints; 1,000
# req/s over 20 connections (perf-load, per-request log) while, FEV s into the run:
#   kill-retry     one of 3 endpoints is killed (SIGKILL: connections refused / reset);
#                  retries on connect-failure, reset and 503 (3 tries), outlier ejection
#                  after 5 consecutive failures
#   kill-noretry   the same with 1 try: only ejection protects the clients
#   hang           one of 3 endpoints stops answering (SIGSTOP: connections accepted by the
#                  kernel, nothing comes back, as with a dead node), per-try timeout 200 ms,
#                  3 tries, ejection after 3 consecutive failures
# A failed request is a connection error or a 5xx. Time to full success: from the event to
# the end of the last failed request (0 when none failed). The paper's figure for Istio:
# 45 s to recover from a node failure.
# Retry amplification: a route whose 2 endpoints answer 503 to everything (total outage),
# 3 tries on 503, budget 20 % (the default) and 100 %; amplification = tries the endpoints
# saw / client requests.
# Sourced by perf/bench.sh.
#
# failure.tsv: scenario requests failed recovery_ms max_latency_ms p99_after_ms
# failure-timeline.tsv: scenario t_ms_from_event success_pct p99_ms   (100 ms buckets)
# amplification.tsv: route budget_percent requests endpoint_tries amplification

FDUR=${BENCH_FAILURE_DURATION:-$([[ $QUICK == 1 ]] && echo 3 || echo 5)}
FEV=1.5
declare -A FUP

# fail_upstream NAME: a test-upstream on the load CPU; sets FUP[NAME,port], FUP[NAME,pid].
fail_upstream() {
    bench_start "fail-$1" "$LOAD_CPU" "$UPSTREAM_BIN" --listen 127.0.0.1:0 --name "$1" \
        --log-level error
    FUP[$1,pid]=$LASTPID
    wait_line "$RAW/fail-$1.log" '^listening on' 10 || return 1
    FUP[$1,port]=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$RAW/fail-$1.log" | head -1)
}

# eps NAME...: the endpoints JSON array of those upstreams (all in cluster east).
eps() {
    local n out=""
    for n in "$@"; do out+="${out:+, }{\"address\": \"127.0.0.1:${FUP[$n,port]}\", \"cluster\": \"east\"}"; done
    echo "[$out]"
}

# route_tries ROUTE: tries the route's endpoints have seen so far (GET /clusters).
route_tries() {
    curl -s "http://127.0.0.1:$FADMIN/clusters" |
        jq "[.routes[] | select(.name == \"$1\") | .endpoints[].requests] | add"
}

# fail_run SCENARIO HOST SIGNAL VICTIM
fail_run() {
    local sc=$1 host=$2 sig=$3 victim=$4 log=$WORK/fail-$1.log ev line pid
    rt_run taskset -c "$LOAD_CPU" "$PERF_LOAD" -a "127.0.0.1:$FPORT" -H "$host" -c 20 -r 1000 \
        -d "$FDUR" -t 5000 -l "$log" >"$RAW/failure-$sc.txt" 2>&1 &
    pid=$!
    bench_pids+=("$pid")
    sleep "$FEV"
    ev=$(date +%s%6N)
    kill "-$sig" "${FUP[$victim,pid]}"
    [[ $sig == KILL ]] && { wait "${FUP[$victim,pid]}"; } 2>/dev/null
    wait "$pid"
    [[ $sig == STOP ]] && kill -CONT "${FUP[$victim,pid]}"
    line=$(cat "$RAW/failure-$sc.txt")
    local t0 evrel
    t0=$(kv "$line" t0_us)
    [[ $t0 == - ]] && { log "failure $sc: no result"; return 0; }
    evrel=$((ev - t0))
    python3 "$ROOT/perf/fail_stats.py" "$log" "$evrel" "$sc" "$OUT/failure-timeline.tsv" \
        >>"$OUT/failure.tsv"
    log "failure $sc: $(tail -1 "$OUT/failure.tsv")"
    # what the victim cost, as counts: tries that failed on it (for hang: requests that each
    # waited a per-try timeout there), and whether outlier detection ejected it
    log "failure $sc: victim $victim: $(curl -s "http://127.0.0.1:$FADMIN/clusters" |
        jq -c ".routes[] | select(.name == \"$sc\") | .endpoints[] |
            select(.address == \"127.0.0.1:${FUP[$victim,port]}\") |
            {requests, failures, ejections, latency_ewma_ms}")"
}

# amp_run ROUTE HOST BUDGET
amp_run() {
    local before after line req
    before=$(route_tries "$1")
    line=$(rt_run taskset -c "$LOAD_CPU" "$PERF_LOAD" -a "127.0.0.1:$FPORT" -H "$2" -p /status/503 \
        -c 10 -r 500 -d "$FDUR" 2>/dev/null)
    after=$(route_tries "$1")
    req=$(($(kv "$line" ok) + $(kv "$line" non2xx) + $(kv "$line" fail)))
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$3" "$req" "$((after - before))" \
        "$(fmt2 "$(calc 't / r' t=$((after - before)) r="$req")")" >>"$OUT/amplification.tsv"
    log "amplification $1 (budget $3 %): $req requests, $((after - before)) tries"
}

sec_failure() {
    [[ -x $UPSTREAM_BIN && -x $PROXY_BIN ]] || { log "failure: no $UPSTREAM_BIN"; return 0; }
    local n
    for n in k1 k2 k3 n1 n2 n3 h1 h2 h3 o1 o2; do
        fail_upstream "$n" || { log "failure: upstream $n did not start"; return 0; }
    done
    cat >"$WORK/routes.json" <<JSON
{"routes": [
  {"name": "kill-retry", "match": {"host": "kill-retry.local"}, "timeout_ms": 5000,
   "retries": {"attempts": 3, "on": ["connect-failure", "reset", "503"], "budget_percent": 20},
   "endpoints": $(eps k1 k2 k3), "outlier": {"consecutive_failures": 5, "base_ejection_ms": 30000}},
  {"name": "kill-noretry", "match": {"host": "kill-noretry.local"}, "timeout_ms": 5000,
   "retries": {"attempts": 1},
   "endpoints": $(eps n1 n2 n3), "outlier": {"consecutive_failures": 5, "base_ejection_ms": 30000}},
  {"name": "hang", "match": {"host": "hang.local"}, "timeout_ms": 3000,
   "retries": {"attempts": 3, "per_try_timeout_ms": 200, "on": ["connect-failure", "reset", "5xx"]},
   "endpoints": $(eps h1 h2 h3), "outlier": {"consecutive_failures": 3, "base_ejection_ms": 30000}},
  {"name": "outage", "match": {"host": "outage.local"},
   "retries": {"attempts": 3, "on": ["503"], "budget_percent": 20},
   "endpoints": $(eps o1 o2), "outlier": {"consecutive_failures": 0}},
  {"name": "outage-nobudget", "match": {"host": "outage-nobudget.local"},
   "retries": {"attempts": 3, "on": ["503"], "budget_percent": 100},
   "endpoints": $(eps o1 o2), "outlier": {"consecutive_failures": 0}}]}
JSON
    FPORT=$(free_port) FADMIN=$(free_port)
    cat >"$WORK/failure.json" <<JSON
{"admin": {"address": "127.0.0.1:$FADMIN"}, "cluster": "east", "routes_file": "$WORK/routes.json",
 "listeners": [{"name": "out", "address": "127.0.0.1:$FPORT", "direction": "outbound",
                "upstream": "127.0.0.1:${FUP[o1,port]}", "tls": "disabled"}]}
JSON
    cp "$WORK/routes.json" "$WORK/failure.json" "$RAW/"
    bench_start failure-remora "$PROXY_CPU" "$PROXY_BIN" -c "$WORK/failure.json"
    local fpid=$LASTPID
    wait_port "$FPORT" || { log "failure: remora did not start (raw/failure-remora.log)"; return 0; }
    printf 'scenario\trequests\tfailed\trecovery_ms\tmax_latency_ms\tp99_1s_after_ms\n' >"$OUT/failure.tsv"
    printf 'scenario\tt_ms\tsuccess_pct\tp99_ms\n' >"$OUT/failure-timeline.tsv"
    printf 'route\tbudget_percent\trequests\tendpoint_tries\tamplification\n' >"$OUT/amplification.tsv"
    # warm the pools of every route
    for h in kill-retry kill-noretry hang; do
        taskset -c "$LOAD_CPU" "$PERF_LOAD" -a "127.0.0.1:$FPORT" -H "$h.local" -c 20 -r 500 -d 0.5 >/dev/null 2>&1
    done
    local ups=()
    for n in k1 k2 k3 n1 n2 n3 h1 h2 h3 o1 o2; do ups+=("${FUP[$n,pid]}"); done
    rt_set "$fpid" "${ups[@]}"
    fail_run kill-retry kill-retry.local KILL k3
    fail_run kill-noretry kill-noretry.local KILL n3
    fail_run hang hang.local STOP h3
    amp_run outage outage.local 20
    amp_run outage-nobudget outage-nobudget.local 100
    rt_clear "$fpid" "${ups[@]}"
    curl -s "http://127.0.0.1:$FADMIN/clusters" >"$RAW/failure-clusters.json"
    stop_pid "$fpid"
    for n in k1 k2 k3 n1 n2 n3 h1 h2 h3 o1 o2; do stop_pid "${FUP[$n,pid]}"; done
}

report_failure() {
    [[ -f $OUT/failure.tsv ]] || return 0
    echo
    echo "## Failure (1,000 req/s over 20 connections through one remora; event at ${FEV} s)"
    echo
    echo "| scenario | requests | failed | time to full success ms | max latency ms | p99 in the 1 s after the event, ms |"
    echo "|---|---:|---:|---:|---:|---:|"
    tail -n +2 "$OUT/failure.tsv" | while IFS=$'\t' read -r sc n f rec mx p99; do
        echo "| $sc | $n | $f | $rec | $mx | $p99 |"
    done
    echo
    echo "kill-*: one of 3 endpoints SIGKILLed (with / without retries); hang: one of 3 endpoints"
    echo "SIGSTOPped (no answer, like a dead node), per-try timeout 200 ms. Time to full success:"
    echo "from the event to the end of the last failed request."
    echo
    echo "Retry amplification under a total 503 outage (3 tries on 503):"
    echo
    echo "| route | retry budget | client requests | tries at the endpoints | amplification |"
    echo "|---|---:|---:|---:|---:|"
    tail -n +2 "$OUT/amplification.tsv" | while IFS=$'\t' read -r r b n t a; do
        echo "| $r | $b % | $n | $t | $a |"
    done
}
