#!/usr/bin/env bash
# Are the images reproducible? Two fresh clones of a commit, in directories of different
# depths, each `make image` from nothing; their image IDs and manifest digests must be
# equal (docs/install.md "Container images"). As root; about two clean builds' time.
#
#   scripts/image-repro.sh [COMMIT]        (default HEAD; the clones are removed after)
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse "${1:-HEAD}")
work=$(mktemp -d /tmp/remora-repro.XXXXXX)
trap 'rm -rf "$work"' EXIT
dirs=("$work/a" "$work/somewhere/much/deeper/b")
for d in "${dirs[@]}"; do
    mkdir -p "$(dirname "$d")"
    git clone -q "$PWD" "$d"
    git -C "$d" checkout -q "$commit"
    start=$(date +%s)
    if ! make -C "$d" -j2 CC=gcc image >"$d.log" 2>&1; then
        tail -20 "$d.log"
        echo "image-repro: make image failed in $d" >&2
        exit 1
    fi
    echo "$d: make image in $(($(date +%s) - start)) s"
done
rc=0
for n in remora-proxy remora-injector; do
    a=$(cat "${dirs[0]}/build/images/$n.digest")
    b=$(cat "${dirs[1]}/build/images/$n.digest")
    if [[ $a == "$b" ]]; then
        echo "same: $n $(tr '\n' ' ' <<<"$a")"
    else
        echo "DIFFERENT: $n"$'\n'"  ${dirs[0]}: $a"$'\n'"  ${dirs[1]}: $b"
        rc=1
    fi
    if cmp -s "${dirs[0]}/build/images/$n.tar" "${dirs[1]}/build/images/$n.tar"; then
        echo "  and the tarballs are byte-identical"
    fi
done
exit $rc
