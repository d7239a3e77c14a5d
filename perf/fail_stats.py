#!/usr/bin/env python3
"""Summarise a perf-load per-request log around an event (perf/sec-failure.sh).

    fail_stats.py LOG EVENT_US SCENARIO TIMELINE_OUT

LOG lines: intended start (us after t0), status, latency (us). A request failed when its
status is 0 (connection error, timeout) or >= 500. Prints one TSV line: scenario,
requests, failed, time to full success in ms (event -> end of the last failed request,
0 when none failed), max latency ms, p99 latency of the requests started in the second
after the event (ms). Appends 100 ms buckets to TIMELINE_OUT: scenario, ms from the
event, success percent, p99 latency ms."""
import sys


def p99(v):
    if not v:
        return 0.0
    v = sorted(v)
    i = max(1, -(-len(v) * 99 // 100))
    return v[i - 1]


def main():
    log, ev, sc, tl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rows = []
    with open(log) as f:
        for line in f:
            due, st, lat = line.split("\t")
            rows.append((int(due), int(st), int(lat)))
    failed = [r for r in rows if r[1] == 0 or r[1] >= 500]
    last = max((r[0] + r[2] - ev for r in failed), default=0)
    after = [r[2] for r in rows if ev <= r[0] < ev + 1_000_000]
    mx = max((r[2] for r in rows), default=0)
    print(f"{sc}\t{len(rows)}\t{len(failed)}\t{max(last, 0) / 1000:.1f}\t{mx / 1000:.1f}\t{p99(after) / 1000:.1f}")
    buckets = {}
    for due, st, lat in rows:
        b = (due - ev) // 100_000
        buckets.setdefault(b, []).append((st, lat))
    with open(tl, "a") as f:
        for b in sorted(buckets):
            v = buckets[b]
            ok = sum(1 for st, _ in v if 0 < st < 500)
            f.write(f"{sc}\t{b * 100}\t{100 * ok / len(v):.1f}\t{p99([l for _, l in v]) / 1000:.2f}\n")


if __name__ == "__main__":
    main()
