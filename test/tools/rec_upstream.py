#!/usr/bin/env python3
"""A recording HTTP/1.1 upstream: answers every request 200 with a small body
and appends one JSON line per accepted connection and per request to LOG
({"event": "connect"} / {"event": "request", "method", "path", "body": hex,
"headers": {...}}), so a test can assert what reached the app byte for byte.

   rec_upstream.py LOG            prints "listening on 127.0.0.1:PORT"
"""
import http.server
import json
import sys
import threading

LOCK = threading.Lock()


def record(obj):
    with LOCK, open(sys.argv[1], "a") as f:
        f.write(json.dumps(obj) + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        record({"event": "connect"})

    def handle_one(self):
        n = int(self.headers.get("content-length") or 0)
        body = b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        elif n:
            body = self.rfile.read(n)
        record({"event": "request", "method": self.command, "path": self.path,
                "body": body.hex(), "headers": {k.lower(): v for k, v in self.headers.items()}})
        out = b"recorded"
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = handle_one

    def log_message(self, *a):
        pass


def main():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print("listening on 127.0.0.1:%d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
