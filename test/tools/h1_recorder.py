#!/usr/bin/env python3
"""A raw recording HTTP/1.1 upstream for hostile tests: every byte received
is appended, in arrival order, to DIR/all.bin and to DIR/conn-N.bin (N counts
accepted connections from 1), and each complete request (its head, then a
Content-Length or chunked body) gets the next fixed answer, sent verbatim.

  h1_recorder.py --dir DIR [--response ESC]... [--after MS:ESC] [--close]

--response  an answer, with escapes like \\r\\n interpreted; the i-th request
            received (over all connections) gets the i-th one (the last repeats). Default: a 200 "ok".
            Whatever it holds is sent: an invalid status line, or bytes after
            the response (stray bytes) are the point.
--after     MS:ESC  also send ESC on the connection MS ms after each answer (bytes
            from an upstream that should be idle).
--close     close the connection after each answer.
Prints "listening on 127.0.0.1:PORT" (port chosen by the kernel), then serves
until killed. Test tool only: the request parser here just finds where a
request ends, and is lenient.
"""
import argparse
import os
import socket
import sys
import threading
import time

lock = threading.Lock()
counter = [0]
served = [0]


def unescape(s):
    return s.encode("latin-1").decode("unicode_escape").encode("latin-1")


def request_end(buf):
    """Index just past the first complete request in buf, or -1."""
    h = buf.find(b"\r\n\r\n")
    if h < 0:
        return -1
    head = buf[:h].lower()
    body = h + 4
    cl = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            try:
                cl = int(value.strip())
            except ValueError:
                cl = 0
        if name.strip() == b"transfer-encoding" and b"chunked" in value:
            chunked = True
    if chunked:
        end = buf.find(b"\r\n0\r\n\r\n", body - 2)
        if buf[body:body + 5] == b"0\r\n\r\n":
            return body + 5
        return -1 if end < 0 else end + 7
    if cl:
        return body + cl if len(buf) >= body + cl else -1
    return body


def serve(conn, n, args, responses):
    path = os.path.join(args.dir, "conn-%d.bin" % n)
    buf = b""
    with open(path, "ab") as f:
        while True:
            try:
                b = conn.recv(65536)
            except OSError:
                break
            if not b:
                break
            with lock:
                f.write(b)
                f.flush()
                with open(os.path.join(args.dir, "all.bin"), "ab") as a:
                    a.write(b)
            buf += b
            while True:
                e = request_end(buf)
                if e < 0:
                    break
                buf = buf[e:]
                with lock:
                    i = served[0]
                    served[0] += 1
                try:
                    conn.sendall(responses[min(i, len(responses) - 1)])
                except OSError:
                    return
                if args.after:
                    ms, _, extra = args.after.partition(":")
                    time.sleep(int(ms) / 1000.0)
                    try:
                        conn.sendall(unescape(extra))
                    except OSError:
                        return
                if args.close:
                    conn.close()
                    return
    conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--response", action="append")
    p.add_argument("--after")
    p.add_argument("--close", action="store_true")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port (default 127.0.0.1:0)")
    args = p.parse_args()
    responses = [unescape(r) for r in (args.response or
                                       ["HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok"])]
    os.makedirs(args.dir, exist_ok=True)
    open(os.path.join(args.dir, "all.bin"), "ab").close()
    host, _, port = args.listen.rpartition(":")
    s = socket.socket()
    s.bind((host, int(port)))
    s.listen(64)
    print("listening on %s:%d" % (host, s.getsockname()[1]), flush=True)
    while True:
        c, _ = s.accept()
        with lock:
            counter[0] += 1
            n = counter[0]
        threading.Thread(target=serve, args=(c, n, args, responses), daemon=True).start()


if __name__ == "__main__":
    main()
