#!/usr/bin/env python3
"""Print the test upstream's /bytes/N body: byte i is (i * 31 + 7) & 0xff.

    test/upstream/pattern.py N | sha256sum
    test/upstream/pattern.py --sha256 N      (same digest, without a pipe)
"""
import hashlib
import sys


def chunks(n, size=1 << 20):
    # the pattern has period 256, so a block of a multiple of 256 bytes repeats as is
    block = bytes(((i * 31 + 7) & 0xFF) for i in range(256)) * (size // 256)
    while n > 0:
        k = min(n, len(block))
        yield block[:k]
        n -= k


def main(argv):
    args = argv[1:]
    digest = bool(args) and args[0] == "--sha256"
    if digest:
        args = args[1:]
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: pattern.py [--sha256] N\n")
        return 2
    n = int(args[0])
    if digest:
        h = hashlib.sha256()
        for c in chunks(n):
            h.update(c)
        print(h.hexdigest())
        return 0
    out = sys.stdout.buffer
    try:
        for c in chunks(n):
            out.write(c)
        out.flush()
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
