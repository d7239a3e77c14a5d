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
