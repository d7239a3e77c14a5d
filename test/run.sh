#!/usr/bin/env bash
# Runs every suite against the tree in $REMORA_BUILD (the ASan+UBSan one under
# `make test`) and ends with one summary line: "N passed, N failed".
#   unit:        $REMORA_BUILD/test/unit/*/test_*   (cmocka, TAP output)
#   integration: test/integration/*.sh              (PASS:/FAIL: lines)
# ONLY=<glob> restricts to suites whose name matches.
set -uo pipefail
cd "$(dirname "$0")/.."
export REMORA_BUILD=${REMORA_BUILD:-build/asan}
export REMORA_ROOT=$PWD
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export CMOCKA_MESSAGE_OUTPUT=TAP
only=${ONLY:-*}
passed=0 failed=0 failures=()
logdir=$REMORA_BUILD/test-logs
mkdir -p "$logdir"

count() { # suite-name log-file exit-code pass-regex fail-regex
    local name=$1 log=$2 rc=$3 p f
    p=$(grep -cE "$4" "$log" || true)
    f=$(grep -cE "$5" "$log" || true)
    if [[ $rc -ne 0 && $f -eq 0 ]]; then
        f=1
        echo "FAIL: $name exited with status $rc" >>"$log"
    fi
    passed=$((passed + p)); failed=$((failed + f))
    if ((f)); then
        failures+=("$name")
        echo "== $name: $p passed, $f failed (log: $log)"
        grep -E "$5" "$log" | head -20
        tail -n 30 "$log" | sed 's/^/   | /'
    else
        echo "== $name: $p passed"
    fi
}

for t in "$REMORA_BUILD"/test/unit/*/test_*; do
    [[ -x $t && ! $t =~ \.(o|d)$ ]] || continue
    name=unit/$(basename "$(dirname "$t")")/$(basename "$t")
    [[ $name == $only ]] || continue
    log=$logdir/${name//\//_}.log
    timeout 300 "$t" >"$log" 2>&1; rc=$?
    count "$name" "$log" $rc '^ok ' '^not ok '
done

for t in test/integration/*.sh; do
    [[ -f $t ]] || continue
    name=integration/$(basename "$t" .sh)
    [[ $name == $only ]] || continue
    log=$logdir/${name//\//_}.log
    timeout 600 bash "$t" >"$log" 2>&1; rc=$?
    count "$name" "$log" $rc '^PASS: ' '^FAIL: '
done

if ((${#failures[@]})); then
    echo "failed suites: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
((failed == 0 && passed > 0))
