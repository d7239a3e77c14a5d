#!/usr/bin/env python3
"""Open N keep-alive connections, send one request on each, then hold them idle.

    conns.py --addr 127.0.0.1:PORT --n 1000 [--path /] [--host H]
             [--cert C --key K --ca ROOT]   (mTLS, TLS 1.2, no hostname check)

Prints "ready OK FAILED SECONDS" once every connection has had its answer, then
holds them all until SIGTERM or stdin closes. perf/bench.sh measures the
proxy's RSS meanwhile: memory per idle client connection."""
import argparse
import signal
import socket
import ssl
import sys
import time


def request(sock, host, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    ok = lines[0].split()[1].startswith("2")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if "content-length" in hdrs:
        need = int(hdrs["content-length"]) - len(body)
        while need > 0:
            chunk = sock.recv(min(need, 65536))
            if not chunk:
                return False
            need -= len(chunk)
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            body += chunk
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--path", default="/")
    ap.add_argument("--host")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--ca")
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    ctx = None
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(a.ca)
        ctx.load_cert_chain(a.cert, a.key)
        ctx.set_alpn_protocols(["http/1.1"])
    socks, ok, bad = [], 0, 0
    t0 = time.monotonic()
    for _ in range(a.n):
        try:
            s = socket.create_connection((host, int(port)), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx is not None:
                s = ctx.wrap_socket(s)
            if request(s, a.host or a.addr, a.path):
                ok += 1
            else:
                bad += 1
            socks.append(s)
        except OSError as e:
            bad += 1
            print(f"conns.py: {e}", file=sys.stderr)
    print(f"ready {ok} {bad} {time.monotonic() - t0:.2f}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.stdin.read()  # until stdin closes
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
