#!/usr/bin/python3
"""WebSocket test peers on Debian's python3-websockets (run with /usr/bin/python3:
the library is a Debian package, not a pip one). The proxy between them is the
thing under test; neither side here was written for it.

  ws.py server [--headers FILE] [--listen HOST:PORT]
      echo server (default 127.0.0.1:0): "/echo" echoes every message; "/close/CODE" closes at once
      with CODE and reason "bye". With --headers, the handshake request the
      app received is appended to FILE as JSON (one line per connection).
  ws.py noread-server
      completes the handshake (101, the Accept computed from the key), then
      never reads: a peer that applies backpressure forever.
  ws.py halfclose-server DIR
      answers any request with 101, then reads until the client's EOF, writes
      the bytes that followed the request head to DIR/tunnel-N.bin (N counts
      connections from 1), sends "got:" + those bytes and closes: the
      half-close both ways, and whatever the proxy held before the 101.
  ws.py client URL CASE...
      cases: echo, big (1 MiB binary echoed, compared), ping (pong awaited),
      close (expects the server's close code 4001 "bye" at URL's /close/4001),
      many:N (N sockets open at once, each echoes its own message),
      flood:SECONDS (write 64 KiB messages to a server that never reads, for
      SECONDS or until the writes block; prints the bytes written).
      Prints "ok CASE ..." or "FAIL CASE ..." per case; exit 1 on any failure.
Servers print "listening on 127.0.0.1:PORT" (a kernel-chosen port).
"""
import asyncio
import base64
import hashlib
import json
import os
import socket
import sys

import websockets


async def serve(headers_file, host="127.0.0.1", port=0):
    async def handler(ws, path):
        if headers_file:
            with open(headers_file, "a") as f:
                f.write(json.dumps([[k, v] for k, v in ws.request_headers.raw_items()]) + "\n")
        if path.startswith("/close/"):
            await ws.close(code=int(path[7:]), reason="bye")
            return
        async for msg in ws:
            await ws.send(msg)

    async with websockets.serve(handler, host, port, max_size=4 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on {host}:{port}", flush=True)
        await asyncio.Future()


def read_head(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def halfclose_server(d):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    print(f"listening on 127.0.0.1:{ls.getsockname()[1]}", flush=True)
    n = 0
    while True:
        c, _ = ls.accept()
        n += 1
        _, rest = read_head(c)
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        while True:
            b = c.recv(65536)
            if not b:
                break
            rest += b
        with open(os.path.join(d, f"tunnel-{n}.bin"), "wb") as f:
            f.write(rest)
        c.sendall(b"got:" + rest)
        c.close()


def noread_server():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    print(f"listening on 127.0.0.1:{ls.getsockname()[1]}", flush=True)
    held = []
    while True:
        c, _ = ls.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            if not d:
                break
            buf += d
        key = b""
        for line in buf.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        acc = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
        held.append(c)  # never read again


async def case(url, name):
    base = url.rstrip("/")
    if name == "echo":
        async with websockets.connect(base + "/echo") as ws:
            await ws.send("hello through the mesh")
            got = await asyncio.wait_for(ws.recv(), 20)
            return got == "hello through the mesh", repr(got)[:60]
    if name == "big":
        data = os.urandom(1 << 20)
        async with websockets.connect(base + "/echo", max_size=4 << 20) as ws:
            await ws.send(data)
            got = await asyncio.wait_for(ws.recv(), 60)
            return got == data, f"{len(got)} bytes back"
    if name == "ping":
        async with websockets.connect(base + "/echo") as ws:
            pong = await ws.ping(b"are-you-there")
            lat = await asyncio.wait_for(pong, 20)
            return True, f"pong after {lat * 1000 if lat else 0:.1f} ms"
    if name == "close":
        async with websockets.connect(base + "/close/4001") as ws:
            try:
                await asyncio.wait_for(ws.recv(), 20)
                return False, "a message instead of the close"
            except websockets.ConnectionClosed as e:
                return (e.rcvd is not None and e.rcvd.code == 4001 and e.rcvd.reason == "bye",
                        f"code {e.rcvd.code if e.rcvd else None} "
                        f"reason {e.rcvd.reason if e.rcvd else None}")
    if name.startswith("many:"):
        n = int(name[5:])

        async def one(i):
            async with websockets.connect(base + "/echo", open_timeout=60) as ws:
                await ws.send(f"socket {i}")
                return await asyncio.wait_for(ws.recv(), 60) == f"socket {i}"

        socks = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        good = sum(1 for r in socks if r is True)
        errs = {repr(r)[:80] for r in socks if r is not True}
        return good == n, f"{good}/{n} echoed {' '.join(sorted(errs))[:200]}"
    if name.startswith("flood:"):
        secs = float(name[6:])
        chunk = b"x" * 65536
        sent = 0
        async with websockets.connect(base + "/", close_timeout=1) as ws:
            loop = asyncio.get_running_loop()
            end = loop.time() + secs
            try:
                while loop.time() < end:
                    await asyncio.wait_for(ws.send(chunk), max(0.1, end - loop.time()))
                    sent += len(chunk)
            except asyncio.TimeoutError:
                pass
            ws.transport.abort()
        return True, f"{sent} bytes written"
    return False, "unknown case"


async def client(url, names):
    bad = 0
    for n in names:
        try:
            ok, why = await case(url, n)
        except Exception as e:  # report every failure as a line, keep going
            ok, why = False, repr(e)[:200]
        print(f"{'ok' if ok else 'FAIL'} {n} {why}", flush=True)
        bad += not ok
    return bad


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "server":
        opts = dict(zip(sys.argv[2::2], sys.argv[3::2]))
        host, _, port = opts.get("--listen", "127.0.0.1:0").rpartition(":")
        asyncio.run(serve(opts.get("--headers"), host, int(port)))
    elif len(sys.argv) >= 3 and sys.argv[1] == "halfclose-server":
        halfclose_server(sys.argv[2])
    elif len(sys.argv) >= 2 and sys.argv[1] == "noread-server":
        noread_server()
    elif len(sys.argv) >= 4 and sys.argv[1] == "client":
        sys.exit(1 if asyncio.run(client(sys.argv[2], sys.argv[3:])) else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
