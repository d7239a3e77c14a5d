# shellcheck shell=bash
# Benchmark 5: perf/bench-injector.sh (owned by the injector's developers), when present.
# Its own pinning: injector on CPU 0, clients on CPU 1. Output kept as injector.md.
# Sourced by perf/bench.sh.

INJ_SECS=${BENCH_INJECTOR_SECONDS:-$([[ $QUICK == 1 ]] && echo 2 || echo 5)}

sec_injector() {
    if [[ ! -x $ROOT/perf/bench-injector.sh ]]; then
        log "injector: perf/bench-injector.sh not present: skipped"
        return 0
    fi
    log "injector: perf/bench-injector.sh $INJ_SECS"
    "$ROOT/perf/bench-injector.sh" "$INJ_SECS" >"$OUT/injector.md" 2>"$RAW/injector.err" ||
        log "injector: bench-injector.sh failed (raw/injector.err)"
}

# inj_row REGEX COLUMN: a column (2 reviews/s, 3 p50, 4 p99) of the first matching row.
inj_row() {
    grep -E "^\| *$1" "$OUT/injector.md" 2>/dev/null | head -1 |
        awk -F'|' -v c="$(($2 + 1))" '{gsub(/ /, "", $c); print ($c == "" ? "-" : $c)}'
}

report_injector() {
    echo
    echo "## Injector (perf/bench-injector.sh $INJ_SECS)"
    echo
    if [[ -s $OUT/injector.md ]]; then
        cat "$OUT/injector.md"
    else
        echo "(not run: perf/bench-injector.sh absent or failed; see raw/injector.err)"
    fi
}
