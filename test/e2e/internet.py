#!/usr/bin/env python3
"""An "internet" host for test/integration/e2e_discovery.sh: HTTP and HTTPS servers that
record what reached them. Python 3 standard library only.

  internet.py --dir DIR --host ADDR [--http PORT]... [--tls PORT --cert C --key K]

Each accepted connection appends a line "accept" to DIR/PORT.conns; each request (its head,
up to the blank line; bodies are not expected) is appended, byte for byte as received (after
TLS, for --tls), to DIR/PORT.bin, and answered "HTTP/1.1 200 OK" with the body
"internet PORT <path>" and Connection: close. Heads are bounded (16 KiB: longer is closed).
Prints "listening on ADDR:PORT" for each port once all are bound; serves until SIGTERM.
"""
import argparse
import os
import signal
import socket
import ssl
import sys
import threading

MAX_HEAD = 16384
lock = threading.Lock()


def append(path, data):
    with lock:
        with open(path, "ab") as f:
            f.write(data)


def serve_conn(conn, port, d, ctx):
    append(os.path.join(d, "%d.conns" % port), b"accept\n")
    try:
        conn.settimeout(10)
        if ctx is not None:
            conn = ctx.wrap_socket(conn, server_side=True)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            if len(buf) > MAX_HEAD:
                return
        head = buf[:buf.index(b"\r\n\r\n") + 4]
        append(os.path.join(d, "%d.bin" % port), head)
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        path = parts[1] if len(parts) > 1 else b"?"
        body = b"internet %d %s" % (port, path)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(body), body))
    except (OSError, ssl.SSLError) as e:
        append(os.path.join(d, "%d.errors" % port), ("%s\n" % e).encode())
    finally:
        try:
            conn.close()
        except OSError:
            pass


def accept_loop(ls, port, d, ctx):
    while True:
        try:
            conn, _ = ls.accept()
        except OSError:
            return
        threading.Thread(target=serve_conn, args=(conn, port, d, ctx), daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--http", type=int, action="append", default=[])
    ap.add_argument("--tls", type=int)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    ports = [(p, None) for p in a.http]
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        ports.append((a.tls, ctx))
    socks = []
    for port, ctx in ports:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((a.host, port))
        ls.listen(64)
        socks.append((ls, port, ctx))
    for ls, port, ctx in socks:
        threading.Thread(target=accept_loop, args=(ls, port, a.dir, ctx), daemon=True).start()
        print("listening on %s:%d" % (a.host, port), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()


if __name__ == "__main__":
    main()
