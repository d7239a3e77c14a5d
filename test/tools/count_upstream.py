#!/usr/bin/env python3
"""An HTTP/1.1 keep-alive upstream that counts its connections (test/integration/limits.sh).

count_upstream.py PORTFILE: binds 127.0.0.1:0, writes the port to PORTFILE, serves until
SIGTERM. Python's http.server parses; one thread per connection.

  Connections are counted from their first request other than these two:
  GET /_stats          {"open": N, "max_open": N, "accepted": N, "requests": N,
                        "max_inflight": N} (ask it directly, not through the proxy)
  GET /_reset          zero max_open, accepted, requests and max_inflight (open stays)
  anything /delay/MS   answered after MS milliseconds
  anything /fail-once/KEY  503 the first time KEY is asked for, 200 after (retries)
  anything else        200 "ok <path>"
Request bodies are read (Content-Length) and discarded.
A connection counts as open until its handler reads the EOF: one the client closed can still
count while the client's next one is accepted (ss sees the kernel's view).
"""
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
failed_once = set()
st = {"open": 0, "max_open": 0, "accepted": 0, "requests": 0, "inflight": 0,
      "max_inflight": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    counted = False  # this connection carried a request other than /_stats, /_reset

    def setup(self):
        super().setup()
        # two writes per answer (head, body): Nagle would hold the second for an ACK
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self):
        try:
            super().finish()
        finally:
            if self.counted:
                with lock:
                    st["open"] -= 1

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        n = int(self.headers.get("content-length") or 0)
        if n > 0:
            self.rfile.read(n)
        if self.path == "/_stats":
            with lock:
                s = {k: v for k, v in st.items() if k != "inflight"}
            return self.reply(200, json.dumps(s))
        if self.path == "/_reset":
            with lock:
                st.update(max_open=st["open"], accepted=0, requests=0, max_inflight=0)
            return self.reply(200, "reset")
        with lock:
            if not self.counted:
                self.counted = True
                st["open"] += 1
                st["accepted"] += 1
                st["max_open"] = max(st["max_open"], st["open"])
            st["requests"] += 1
            st["inflight"] += 1
            st["max_inflight"] = max(st["max_inflight"], st["inflight"])
        try:
            if self.path.startswith("/delay/"):
                time.sleep(int(self.path[7:].split("?")[0]) / 1000.0)
            if self.path.startswith("/fail-once/"):
                with lock:
                    first = self.path not in failed_once
                    failed_once.add(self.path)
                if first:
                    return self.reply(503, "failing once\n")
            self.reply(200, "ok %s\n" % self.path)
        finally:
            with lock:
                st["inflight"] -= 1

    do_GET = do_POST = do_PUT = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write("%d\n" % srv.server_address[1])
    import os
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
    srv.serve_forever()


if __name__ == "__main__":
    main()
