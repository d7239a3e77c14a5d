#!/usr/bin/env python3
"""A discovery service that never answers by name (test/integration/egress.sh):
HTTPS with the given certificate chain; GET /v1/destination?addr=... gets 404 at
once, ?host=... is held open without an answer until the client goes away.
Each request line is appended to FILE.

  slow_discovery.py --cert CHAIN --key KEY --log FILE

Prints "listening on 127.0.0.1:PORT", then serves until killed.
"""
import argparse
import socket
import ssl
import threading

lock = threading.Lock()


def serve(conn, ctx, log):
    try:
        conn.settimeout(60)
        t = ctx.wrap_socket(conn, server_side=True)
        data = b""
        while b"\r\n\r\n" not in data:
            d = t.recv(4096)
            if not d:
                return
            data += d
        line = data.split(b"\r\n", 1)[0]
        with lock, open(log, "ab") as f:
            f.write(line + b"\n")
        if b"?addr=" in line:
            t.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            while t.recv(4096):  # held: no answer until the client closes
                pass
        t.close()
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    open(a.log, "wb").close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print("listening on 127.0.0.1:%d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, ctx, a.log), daemon=True).start()


if __name__ == "__main__":
    main()
