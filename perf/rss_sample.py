#!/usr/bin/env python3
"""Sample the resident memory of process trees every INTERVAL ms until SIGTERM.

    rss_sample.py OUT INTERVAL_MS LABEL=PID [LABEL=PID ...]

OUT gets one line per sample and label: epoch milliseconds, label, VmRSS in kB
summed over PID and its children (nginx: master + worker). A process that is
gone is skipped. Used by perf/bench.sh for the RSS-over-time plot; one process
reading /proc, so sampling costs no fork per sample."""
import os
import signal
import sys
import time


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def main():
    out, interval = sys.argv[1], int(sys.argv[2]) / 1000.0
    targets = [(a.split("=", 1)[0], int(a.split("=", 1)[1])) for a in sys.argv[3:]]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(out, "a", buffering=1) as f:
        nxt = time.monotonic()
        while not stop:
            now_ms = int(time.time() * 1000)
            for label, pid in targets:
                v = rss_kb(pid)
                if v is None:
                    continue
                for c in children(pid):
                    v += rss_kb(c) or 0
                f.write(f"{now_ms}\t{label}\t{v}\n")
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()


if __name__ == "__main__":
    main()
