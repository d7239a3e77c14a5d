# shellcheck shell=bash disable=SC2034
# Helpers for perf/bench.sh: pinned processes we own, configs from templates,
# wrk / h2load output parsing, RSS and CPU from /proc. Source it; needs $WORK and $RAW.
# Every process started here is recorded by PID and killed by PID at exit: never by name.

bench_pids=()

# bench_start NAME CPU CMD...: start CMD pinned to CPU, output in $RAW/NAME.log; sets LASTPID.
bench_start() {
    local name=$1 cpu=$2; shift 2
    taskset -c "$cpu" "$@" >"$RAW/$name.log" 2>&1 &
    LASTPID=$!
    bench_pids+=("$LASTPID")
}

# bench_cleanup: SIGTERM every process we started, wait 5 s, then SIGKILL what is left.
bench_cleanup() {
    local p
    for p in "${bench_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${bench_pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    bench_pids=()
}

# A TCP port nobody listens on right now (the kernel picks it).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s).
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# render TEMPLATE OUT KEY=VALUE...: copy TEMPLATE to OUT replacing every @KEY@.
render() {
    local in=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$in" >"$out"
    if grep -q '@[A-Z_0-9]*@' "$out"; then
        echo "bench: $out: unreplaced placeholder: $(grep -o '@[A-Z_0-9]*@' "$out" | head -1)" >&2
        return 1
    fi
}

# proc_tree PID: PID and its children (nginx: master and worker).
proc_tree() {
    echo "$1"
    pgrep -P "$1" 2>/dev/null || true
}

# rss_kb PID FIELD: FIELD (VmRSS, VmHWM) in kB summed over the process and its children.
rss_kb() {
    local p sum=0 v
    for p in $(proc_tree "$1"); do
        v=$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# reset_hwm PID: restart the peak-RSS count (VmHWM := VmRSS) of the process tree.
reset_hwm() {
    local p
    for p in $(proc_tree "$1"); do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
}

# cpu_ticks PID: user + system clock ticks used so far by the process tree.
cpu_ticks() {
    local p sum=0 v
    for p in $(proc_tree "$1"); do
        # fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the name
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

# to_us VALUE: wrk's "812.00us" / "1.23ms" / "1.02s" in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /m$/) m = 60e6;
        else if (v ~ /s$/) m = 1e6; else m = 1
        printf "%.0f\n", n * m }'
}

# median: the median of the numbers on stdin, one a line ("-" when none).
median() {
    sort -g | awk '{a[NR] = $1} END {
        if (NR == 0) print "-"
        else if (NR % 2) print a[(NR + 1) / 2]
        else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# wrk_parse FILE: "rps p50_us p99_us errors" from `wrk --latency` output.
wrk_parse() {
    local rps p50 p99 err
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$1")
    p50=$(awk '$1 == "50%" {print $2}' "$1")
    p99=$(awk '$1 == "99%" {print $2}' "$1")
    err=$(awk '/Non-2xx or 3xx responses:/ {e += $NF}
               /Socket errors:/ {for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) e += $i}
               END {print e + 0}' "$1")
    [[ -n $rps && -n $p50 && -n $p99 ]] || return 1
    echo "$rps $(to_us "$p50") $(to_us "$p99") $err"
}

# h2load_parse FILE LOG: "rps p50_us p99_us errors" from h2load's output and its --log-file
# (tab-separated: start time, status, microseconds until the response ended).
h2load_parse() {
    local rps err pct
    rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s,.*/\1/p' "$1")
    err=$(awk '/^requests:/ {print $10}' "$1")  # "failed" includes errored and timeout
    pct=$(awk -F'\t' '$2 >= 200 && $2 < 400 {print $3}' "$2" | sort -n | awk '
        {a[NR] = $1} END {
            if (NR == 0) exit 1
            i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
            i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
            print a[i50], a[i99] }')
    [[ -n $rps && -n $pct ]] || return 1
    echo "$rps $pct ${err:-0}"
}

# ms US: microseconds as milliseconds with 3 decimals ("-" stays "-").
ms() {
    [[ $1 == - || -z $1 ]] && { echo -; return; }
    awk -v v="$1" 'BEGIN {printf "%.3f\n", v / 1000}'
}

# mb KB: kilobytes as megabytes with 1 decimal.
mb() {
    [[ $1 == - || -z $1 ]] && { echo -; return; }
    awk -v v="$1" 'BEGIN {printf "%.1f\n", v / 1024}'
}

# ---- the full harness (perf/bench.sh) ----------------------------------------------------

# cpu_ns PID: nanoseconds on CPU so far, summed over every thread of the process tree
# (/proc/PID/task/*/schedstat, first field). Unlike clock ticks (10 ms) this resolves the
# few milliseconds a proxy spends at 1,000 req/s.
cpu_ns() {
    local p sum=0 v
    for p in $(proc_tree "$1"); do
        # %.0f: mawk prints integers past 2^31 as 2.1e+09
        v=$(cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}')
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# now_ms: wall clock in epoch milliseconds (lines up with rss_sample.py's stamps).
now_ms() { date +%s%3N; }

# kv LINE KEY: the value of KEY=VALUE in a perf-load / key=value line ("-" when absent).
kv() { awk -v k="$2" '{for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) {print substr($i, length(k) + 2); f = 1}} END {if (!f) print "-"}' <<<"$1"; }

# addr_of URL: "127.0.0.1:PORT" of http://127.0.0.1:PORT/...
addr_of() { sed -E 's|^[a-z]+://([^/]+).*|\1|' <<<"$1"; }

# wait_line FILE REGEX [SECONDS]: until FILE has a line matching REGEX (default 60 s).
wait_line() {
    local n=$((${3:-60} * 10))
    for _ in $(seq "$n"); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# sampler_start OUT LABEL=PID...: RSS of each process tree every 100 ms into OUT
# (perf/rss_sample.py, pinned with the load generator); sets SAMPLER_PID.
sampler_start() {
    local out=$1; shift
    taskset -c "$LOAD_CPU" python3 "$ROOT/perf/rss_sample.py" "$out" 100 "$@" &
    SAMPLER_PID=$!
    bench_pids+=("$SAMPLER_PID")
}
sampler_stop() {
    kill -TERM "$SAMPLER_PID" 2>/dev/null
    wait "$SAMPLER_PID" 2>/dev/null || true
}

# stop_pid PID: SIGTERM one process we started, wait for it (5 s), then SIGKILL; it is
# dropped from bench_pids so the cleanup never signals a PID the system may have reused.
stop_pid() {
    [[ -n $1 ]] || return 0
    local p keep=()
    for p in "${bench_pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    bench_pids=("${keep[@]}")
    if kill -TERM "$1" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$1" 2>/dev/null || true
    fi
    { wait "$1"; } 2>/dev/null || true
}

# pctl Q: the Q-quantile (0..1) of the numbers on stdin, nearest rank ("-" when none).
pctl() {
    sort -g | awk -v q="$1" '{a[NR] = $1} END {
        if (NR == 0) {print "-"; exit}
        i = int(NR * q); if (i < NR * q) i++; if (i < 1) i = 1
        print a[i] }'
}

# fmt1 / fmt0 / fmt3 VALUE: numbers with 1 / 0 / 3 decimals; "-" stays "-".
fmt0() { [[ -z $1 || $1 == - ]] && echo - || awk -v v="$1" 'BEGIN {printf "%.0f\n", v}'; }
fmt1() { [[ -z $1 || $1 == - ]] && echo - || awk -v v="$1" 'BEGIN {printf "%.1f\n", v}'; }
fmt2() { [[ -z $1 || $1 == - ]] && echo - || awk -v v="$1" 'BEGIN {printf "%.2f\n", v}'; }
fmt3() { [[ -z $1 || $1 == - ]] && echo - || awk -v v="$1" 'BEGIN {printf "%.3f\n", v}'; }

# calc EXPR VAR=VALUE...: awk arithmetic; "-" when any VALUE is "-" or empty.
calc() {
    local e=$1 kv args=()
    shift
    for kv in "$@"; do
        [[ -z ${kv#*=} || ${kv#*=} == - ]] && { echo -; return; }
        args+=(-v "$kv")
    done
    # parenthesised: a bare ">" in printf's arguments would be an output redirection
    awk "${args[@]}" "BEGIN {printf \"%.6g\\n\", ($e)}"
}

# ---- realtime scheduling for latency runs -----------------------------------------------
# On a machine shared with CPU-bound jobs (builds, fuzzers) a process that sleeps between
# requests waits milliseconds for the CPU at every wakeup, and fixed-rate latencies measure
# the scheduler, not the proxy (seen here: p50 0.2 s at 5,000 req/s for every peer, direct
# included, and 0.07 ms with SCHED_RR). So fixed-rate, failure and handshake-latency runs
# put the load generator, the upstream and the proxies under test in SCHED_RR (every peer
# alike) for the length of the run; saturation runs stay SCHED_OTHER (at 100 % CPU they
# would starve everything else). BENCH_RT=0 turns it off; it is off when chrt fails.
RT=${BENCH_RT:-1}
RT_PRIO=${BENCH_RT_PRIO:-10}
if [[ $RT == 1 ]] && ! chrt -r "$RT_PRIO" true 2>/dev/null; then
    echo "bench: chrt -r failed (not root?): latency runs use the normal scheduler" >&2
    RT=0
fi

# rt_set PID...: SCHED_RR for those process trees (all threads); rt_clear: back to normal.
rt_set() {
    [[ $RT == 1 ]] || return 0
    local p q
    for p in "$@"; do
        [[ -n $p ]] || continue
        for q in $(proc_tree "$p"); do chrt -a -r -p "$RT_PRIO" "$q" >/dev/null 2>&1; done
    done
    return 0
}
rt_clear() {
    [[ $RT == 1 ]] || return 0
    local p q
    for p in "$@"; do
        [[ -n $p ]] || continue
        for q in $(proc_tree "$p"); do chrt -a -o -p 0 "$q" >/dev/null 2>&1; done
    done
    return 0
}

# rt_run CMD...: run CMD in SCHED_RR (when RT is on).
rt_run() {
    if [[ $RT == 1 ]]; then chrt -r "$RT_PRIO" "$@"; else "$@"; fi
}
