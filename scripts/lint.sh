#!/usr/bin/env bash
# clang-format check and a grep for banned calls (curl's checksrc, in small).
set -uo pipefail
rc=0
files=$(git ls-files '*.c' '*.h' | grep -v '^test/fuzz/corpus/')
if command -v clang-format >/dev/null; then
  for f in $files; do
    if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
      echo "lint: $f: not clang-formatted"; rc=1
    fi
  done
fi
if grep -nE '\b(sprintf|strcpy|strcat|atoi|atol|gets)\s*\(' $files; then
  echo "lint: banned call above (use snprintf, memcpy with a bound, strtol)"; rc=1
fi
exit $rc
