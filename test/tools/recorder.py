#!/usr/bin/env python3
"""A raw recording upstream for hostile tests: every byte each connection sends
is appended, as it arrives, to DIR/conn-N.bin (N counts connections from 1), and
DIR/events gets "open N" / "close N" lines, so a test can assert what reached
the app byte for byte and how many connections were opened toward it.

   recorder.py DIR [--mode echo|http|sink] [--greet 'bytes\\x00'] [--port P]

  --mode echo   send back what arrives (opaque TCP apps); the default
  --mode http   answer each HTTP/1.1 request (head, then a Content-Length body)
                with 200 and the body "ok N.K\\n" (connection N, request K);
                each request's exact bytes also go to DIR/req-N.K.bin
  --mode sink   read and record, never answer
  --greet B     speak first on every connection, as MySQL does (escapes allowed)

Prints "listening on 127.0.0.1:PORT" once bound. Bounded: at most 4096
connections; a request head over 64 KiB closes its connection.
"""
import os
import socket
import sys
import threading

MAX_CONNS = 4096
MAX_HEAD = 65536


class Recorder:
    def __init__(self, d, mode, greet):
        self.dir, self.mode, self.greet = d, mode, greet
        self.lock = threading.Lock()
        self.n = 0
        self.events = open(os.path.join(d, "events"), "a", buffering=1)

    def event(self, line):
        with self.lock:
            self.events.write(line + "\n")

    def serve(self, conn):
        with self.lock:
            self.n += 1
            n = self.n
        self.event("open %d" % n)
        path = os.path.join(self.dir, "conn-%d.bin" % n)
        try:
            with open(path, "ab", buffering=0) as rec:
                if self.greet:
                    conn.sendall(self.greet)
                if self.mode == "http":
                    self.http(conn, n, rec)
                else:
                    while True:
                        b = conn.recv(65536)
                        if not b:
                            break
                        rec.write(b)
                        if self.mode == "echo":
                            conn.sendall(b)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass
            self.event("close %d" % n)

    def http(self, conn, n, rec):
        buf = b""
        k = 0
        while True:
            while b"\r\n\r\n" not in buf:
                b = conn.recv(65536)
                if not b:
                    return
                rec.write(b)
                buf += b
                if len(buf) > MAX_HEAD and b"\r\n\r\n" not in buf:
                    return
            end = buf.index(b"\r\n\r\n") + 4
            head = buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or b"0")
            while len(buf) < end + length:
                b = conn.recv(65536)
                if not b:
                    return
                rec.write(b)
                buf += b
            k += 1
            with open(os.path.join(self.dir, "req-%d.%d.bin" % (n, k)), "wb") as f:
                f.write(buf[:end + length])
            buf = buf[end + length:]
            body = b"ok %d.%d\n" % (n, k)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def main():
    args = sys.argv[1:]
    mode, greet, port = "echo", b"", 0
    if "--mode" in args:
        i = args.index("--mode")
        mode = args[i + 1]
        del args[i:i + 2]
    if "--greet" in args:
        i = args.index("--greet")
        greet = args[i + 1].encode("latin-1").decode("unicode_escape").encode("latin-1")
        del args[i:i + 2]
    if "--port" in args:
        i = args.index("--port")
        port = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 1 or mode not in ("echo", "http", "sink"):
        sys.exit(__doc__)
    os.makedirs(args[0], exist_ok=True)
    r = Recorder(args[0], mode, greet)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1024)
    print("listening on 127.0.0.1:%d" % srv.getsockname()[1], flush=True)
    sem = threading.BoundedSemaphore(MAX_CONNS)
    while True:
        conn, _ = srv.accept()
        if not sem.acquire(blocking=False):
            conn.close()
            continue

        def run(c=conn):
            try:
                r.serve(c)
            finally:
                sem.release()
        threading.Thread(target=run, daemon=True).start()


if __name__ == "__main__":
    main()
