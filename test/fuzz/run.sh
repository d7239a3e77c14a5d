#!/usr/bin/env bash
# Runs every libFuzzer binary of a fuzz build for a bounded time on a copy of
# its seed corpus, and fails if any of them crashes, leaks, hangs or traps.
#
#   test/fuzz/run.sh [BUILD_DIR] [SECONDS]     (make fuzz: build/fuzz, $FUZZ_SECONDS)
#
# For each BUILD_DIR/fuzz-bin/fuzz_<name>: the seeds in test/fuzz/corpus/fuzz_<name>/
# are copied into a temporary working corpus (libFuzzer adds what it finds
# there; the seeds in the repository are never written), the target runs for
# SECONDS (-max_total_time), and one line is printed per target. A crash
# input is kept under BUILD_DIR/fuzz-artifacts/fuzz_<name>/ and the log under
# BUILD_DIR/fuzz-logs/; the run ends with "N passed, N failed".
#
# Environment: ONLY=<glob> runs only matching targets (e.g. ONLY='fuzz_h1*');
# FUZZ_ARGS adds libFuzzer flags (e.g. FUZZ_ARGS='-jobs=4 -workers=4');
# KEEP_CORPUS=<dir> keeps the grown corpora there instead of deleting them.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
build=${1:-build/fuzz}
secs=${2:-15}
only=${ONLY:-*}
extra=${FUZZ_ARGS:-}

if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 1)); then
    echo "usage: $0 [BUILD_DIR] [SECONDS>0]" >&2
    exit 2
fi
shopt -s nullglob
bins=()
for b in "$build"/fuzz-bin/fuzz_*; do
    [[ -x $b && -f $b ]] || continue
    # shellcheck disable=SC2053 # ONLY is a glob on purpose
    [[ $(basename "$b") == $only ]] || continue
    bins+=("$b")
done
if ((${#bins[@]} == 0)); then
    echo "no fuzz binaries in $build/fuzz-bin (run: make fuzz, or make fuzz-bins with a fuzz build)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/remora-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
logdir=$build/fuzz-logs
mkdir -p "$logdir"
# Leaks are bugs; sanitizer reports must stop the run (the target then fails).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

passed=0 failed=0 failures=()
for b in "${bins[@]}"; do
    name=$(basename "$b")
    corpus=$work/corpus/$name
    arts=$build/fuzz-artifacts/$name
    log=$logdir/$name.log
    mkdir -p "$corpus" "$arts"
    seeds=test/fuzz/corpus/$name
    nseeds=0
    if [[ -d $seeds ]]; then
        cp -R "$seeds"/. "$corpus"/
        nseeds=$(find "$seeds" -type f | wc -l)
    fi
    mark=$work/started.$name
    touch "$mark"
    # -timeout: one input taking this long is a hang, and a failure.
    # shellcheck disable=SC2086
    timeout $((secs + 120)) "$b" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$arts/" $extra "$corpus" >"$log" 2>&1
    rc=$?
    art=$(find "$arts" -type f -newer "$mark" | head -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    ncorpus=$(find "$corpus" -type f | wc -l)
    if [[ -n ${KEEP_CORPUS:-} ]]; then
        mkdir -p "$KEEP_CORPUS/$name"
        cp -R "$corpus"/. "$KEEP_CORPUS/$name"/
    fi
    if ((rc == 0)) && [[ -z $art ]]; then
        passed=$((passed + 1))
        printf 'PASS: %-22s %10s execs in %ss, corpus %d -> %d\n' "$name" "${execs:-?}" "$secs" \
            "$nseeds" "$ncorpus"
    else
        failed=$((failed + 1))
        failures+=("$name")
        why=$(grep -m1 -E '^(==[0-9]+==ERROR|SUMMARY)|runtime error|deadly signal|timeout after' "$log" |
            sed 's/^==[0-9]*==//')
        printf 'FAIL: %-22s exit %d after %s execs: %s\n' "$name" "$rc" "${execs:-?}" "${why:-see log}"
        printf '      input: %s\n      log:   %s\n' "${art:-(none written)}" "$log"
        if [[ -n $art ]]; then
            printf '      reproduce: %s %s\n' "$b" "$art"
        fi
    fi
done

if ((${#failures[@]})); then
    echo "failed targets: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
((failed == 0))
