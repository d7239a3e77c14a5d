#!/usr/bin/env python3
"""A TLS echo server for the egress tests (test/integration/egress.sh): the
destination of TLS passed through by the proxy. Every accepted TCP connection
is counted in DIR/accepts (one line each), so a test can tell that nothing
reached it; the TLS is Python's ssl (the client verifies this server's
certificate, so a session that works went through untouched). Decrypted
bytes are echoed back and appended to DIR/plain.bin; the SNI each handshake
carried is appended to DIR/sni, one line each ("-": none).

  tls_echo.py --listen HOST:PORT --cert PEM --key PEM --dir DIR

Prints "listening on HOST:PORT" once listening, then serves until killed.
"""
import argparse
import os
import socket
import ssl
import threading

lock = threading.Lock()


def note(path, data, mode="ab"):
    with lock, open(path, mode) as f:
        f.write(data)


def serve(conn, ctx, d):
    note(os.path.join(d, "accepts"), b"accept\n")
    try:
        conn.settimeout(20)
        tls = ctx.wrap_socket(conn, server_side=True)
        while True:
            data = tls.recv(65536)
            if not data:
                break
            note(os.path.join(d, "plain.bin"), data)
            tls.sendall(data)
        tls.close()
    except (OSError, ssl.SSLError) as e:
        note(os.path.join(d, "errors"), (str(e) + "\n").encode())
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    for f in ("accepts", "plain.bin", "sni"):
        open(os.path.join(a.dir, f), "wb").close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)

    def on_sni(sock, name, c):
        note(os.path.join(a.dir, "sni"), ((name or "-") + "\n").encode())

    ctx.sni_callback = on_sni
    host, _, port = a.listen.rpartition(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(64)
    print("listening on %s:%d" % (host, s.getsockname()[1]), flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, ctx, a.dir), daemon=True).start()


if __name__ == "__main__":
    main()
