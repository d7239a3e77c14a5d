#!/usr/bin/env python3
"""Clients that behave as an attacker would, for test/integration/hostile_tcp.sh.

One connection (prints one JSON line: what came back and when):
   hostile_client.py one HOST:PORT [--send 'bytes\\r\\n'] [--sleep S] [--then 'more']
                     [--tls CERT KEY] [--source IP] [--timeout T] [--half-close]
  --sleep S   stay silent S seconds after connecting (after the TLS handshake)
              before sending; --then sends more bytes after the first ones
  output: {"got": "<latin-1 text>", "got_hex": "<the same in hex>", "closed": true|false (EOF or reset within
           --timeout), "reset": bool, "first_s": seconds to the first byte back
           (null: none), "close_s": seconds to EOF/reset (null), "handshake": bool}

Many connections that hold (prints one JSON line):
   hostile_client.py hold HOST:PORT N --send 'G' --for S
  opens N connections, sends the bytes (may be empty) on each, then waits up
  to S seconds; output: {"opened": n, "closed": k, "last_close_s": t}
"""
import json
import select
import socket
import ssl
import sys
import time


def unescape(s):
    return s.encode("latin-1").decode("unicode_escape").encode("latin-1")


def opt(args, name, n=1, default=None):
    if name not in args:
        return default
    i = args.index(name)
    v = args[i + 1:i + 1 + n]
    del args[i:i + 1 + n]
    return v[0] if n == 1 else v


def connect(hostport, source, tls, timeout):
    host, port = hostport.rsplit(":", 1)
    host = host.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect((host, int(port)))
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(tls[0], tls[1])
        s = ctx.wrap_socket(s)
    return s


def one(args):
    send = unescape(opt(args, "--send", default=""))
    then = unescape(opt(args, "--then", default=""))
    sleep = float(opt(args, "--sleep", default="0"))
    timeout = float(opt(args, "--timeout", default="3"))
    tls = opt(args, "--tls", 2)
    source = opt(args, "--source")
    half = "--half-close" in args
    if half:
        args.remove("--half-close")
    out = {"got": "", "closed": False, "reset": False, "first_s": None, "close_s": None,
           "handshake": False}
    t0 = time.monotonic()
    try:
        s = connect(args[0], source, tls, timeout)
    except (OSError, ssl.SSLError) as e:
        out.update(closed=True, reset=True, error=str(e), close_s=time.monotonic() - t0)
        print(json.dumps(out))
        return
    out["handshake"] = True
    got = b""
    try:
        if sleep:
            time.sleep(sleep)
        t0 = time.monotonic()
        if send:
            s.sendall(send)
        if then:
            time.sleep(0.2)
            s.sendall(then)
        if half:
            s.shutdown(socket.SHUT_WR)
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            b = s.recv(65536)
            if not b:
                out["closed"] = True
                out["close_s"] = time.monotonic() - t0
                break
            if out["first_s"] is None:
                out["first_s"] = time.monotonic() - t0
            got += b
    except (socket.timeout, TimeoutError):
        pass
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
        out.update(closed=True, reset=True, close_s=time.monotonic() - t0)
    out["got"] = got.decode("latin-1")
    out["got_hex"] = got.hex()
    print(json.dumps(out))


def hold(args):
    send = unescape(opt(args, "--send", default=""))
    dur = float(opt(args, "--for", default="5"))
    n = int(args[1])
    socks = []
    for _ in range(n):
        try:
            s = connect(args[0], None, None, 5)
            if send:
                s.sendall(send)
            s.setblocking(False)
            socks.append(s)
        except OSError:
            break
    t0 = time.monotonic()
    open_ = set(socks)
    last = None
    while open_ and time.monotonic() - t0 < dur:
        r, _, _ = select.select(list(open_), [], [], 0.1)
        for s in r:
            try:
                b = s.recv(4096)
            except OSError:
                b = b""
            if not b:
                open_.discard(s)
                last = time.monotonic() - t0
    print(json.dumps({"opened": len(socks), "closed": len(socks) - len(open_),
                      "last_close_s": last}))
    sys.stdout.flush()
    for s in socks:
        s.close()


def main():
    args = sys.argv[1:]
    if not args or args[0] not in ("one", "hold"):
        sys.exit(__doc__)
    (one if args[0] == "one" else hold)(args[1:])


if __name__ == "__main__":
    main()
