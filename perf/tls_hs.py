#!/usr/bin/env python3
"""mTLS handshakes against a listener that wants a client certificate.

    tls_hs.py --addr 127.0.0.1:PORT --cert C --key K --ca ROOT --mode full|resumed
              (--seq N | --threads T --duration S)

--seq N: N handshakes one after the other (TCP connect + TLS handshake, then
close); prints latency percentiles. --threads T --duration S: T threads
handshaking back to back for S seconds; prints handshakes per second (the
server is the bottleneck when it is the slower side). Resumed handshakes
reuse the session (ticket) of one full handshake made first. TLS 1.2 (what
mbedTLS 2.28 serves), no hostname check (SPIFFE IDs are URI SANs).

Output, one line: mode n ok resumed rate_per_s p50_us p90_us p99_us mean_us cipher"""
import argparse
import socket
import ssl
import sys
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--mode", choices=["full", "resumed"], default="full")
    ap.add_argument("--seq", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    port = int(port)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)

    def once(session):
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = ctx.wrap_socket(s, session=session, do_handshake_on_connect=True)
        out = (t.session, t.session_reused, t.cipher()[0])
        t.close()
        return out

    session, _, cipher = once(None)
    if a.mode == "full":
        session = None
    lat, lock = [], threading.Lock()
    counts = {"ok": 0, "fail": 0, "resumed": 0}

    def one():
        t0 = time.perf_counter_ns()
        try:
            _, reused, _ = once(session)
        except (OSError, ssl.SSLError) as e:
            with lock:
                counts["fail"] += 1
            print(f"tls_hs.py: {e}", file=sys.stderr)
            return
        dt = (time.perf_counter_ns() - t0) // 1000
        with lock:
            lat.append(dt)
            counts["ok"] += 1
            counts["resumed"] += 1 if reused else 0

    t_start = time.monotonic()
    if a.seq:
        for _ in range(a.seq):
            one()
    else:
        end = t_start + a.duration

        def loop():
            while time.monotonic() < end:
                one()

        ths = [threading.Thread(target=loop) for _ in range(a.threads)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
    wall = time.monotonic() - t_start
    lat.sort()

    def pct(q):
        if not lat:
            return 0
        i = max(1, -(-len(lat) * q // 1))
        return lat[int(min(i, len(lat))) - 1]

    n = counts["ok"] + counts["fail"]
    mean = sum(lat) / len(lat) if lat else 0
    print(f"{a.mode} {n} {counts['ok']} {counts['resumed']} {counts['ok'] / wall:.1f} "
          f"{pct(0.5)} {pct(0.9)} {pct(0.99)} {mean:.0f} {cipher}")


if __name__ == "__main__":
    main()
