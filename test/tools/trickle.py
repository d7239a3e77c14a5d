#!/usr/bin/env python3
"""Hostile and normal HTTPS clients for test/integration/injector_abuse.sh.

  trickle.py attack --port P --conns N --mode tls|head|body --seconds S
                    [--src-base 127.0.0.10] [--per-src 8] [--header 'K: V']...
                    [--path /inject] [--length BYTES]
      N connections, at most --per-src from each source address (127.0.0.10,
      .11, ...), each sending one byte a second: of a TLS ClientHello (tls),
      of an HTTP request head after the handshake (head), or of a body after
      a complete head declaring --length bytes (body). A connection the
      server closes is opened again, for S seconds. Prints one JSON line:
      opened, closed_by_server, lifetimes of the closed ones (s), refused
      (closed before the first byte was answered by a handshake), held (open
      at the end), bytes_sent.

  trickle.py probe --port P --n N --path /inject --body FILE [--src 127.0.0.2]
                   [--header 'K: V']... [--cafile F] [--server-name NAME]
      N requests one after the other, each on a fresh TLS connection from
      --src: prints JSON with the status codes and latencies (ms) p50, p99,
      max, from connect to the last byte of the answer.
"""
import argparse
import asyncio
import http.client
import json
import socket
import ssl
import sys
import time


def client_ctx(cafile=None):
    """One context per run: building one loads the system's CA store, tens
    of ms that would slow the client, not the server, if done per connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_hello(server_name):
    """The bytes of a real ClientHello, to be sent one at a time."""
    ctx = client_ctx()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class Stats:
    def __init__(self):
        self.opened = 0
        self.closed = 0
        self.refused = 0
        self.lifetimes = []
        self.bytes_sent = 0
        self.held = 0


async def one(args, src, st, stop_at, hello, ctx):
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        writer = None
        try:
            if args.mode == "tls":
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", args.port, local_addr=(src, 0)), 10)
                payload = hello
            else:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", args.port, local_addr=(src, 0),
                                            ssl=ctx, server_hostname=args.server_name),
                    10)
                head = "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % args.path
                for h in args.header:
                    head += h + "\r\n"
                if args.mode == "head":
                    payload = (head + "Content-Length: 10\r\n\r\n").encode()
                else:
                    writer.write((head + "Content-Length: %d\r\n\r\n" % args.length).encode())
                    await writer.drain()
                    payload = None  # args.length times b"x", one at a time
            st.opened += 1
            st.held += 1

            async def until_eof():
                try:
                    while await reader.read(65536):
                        pass
                except (ConnectionError, OSError, ssl.SSLError):
                    pass  # a reset is a close too

            eof = asyncio.ensure_future(until_eof())
            try:
                n = len(payload) if payload is not None else args.length
                for i in range(n):
                    if time.monotonic() >= stop_at:
                        return
                    writer.write(payload[i:i + 1] if payload is not None else b"x")
                    await writer.drain()
                    st.bytes_sent += 1
                    # one byte a second, until the server closes (EOF or a reset)
                    await asyncio.wait([eof], timeout=1.0)
                    if eof.done():
                        break
                else:
                    await eof
            finally:
                st.held -= 1
                if not eof.done():
                    eof.cancel()
            st.closed += 1
            st.lifetimes.append(time.monotonic() - t0)
        except (ConnectionError, OSError, ssl.SSLError, asyncio.TimeoutError, EOFError):
            st.refused += 1
            if time.monotonic() - t0 < 0.05:
                await asyncio.sleep(0.2)  # refused at once: do not spin
        finally:
            if writer is not None:
                writer.close()


async def attack(args):
    st = Stats()
    stop_at = time.monotonic() + args.seconds
    base = [int(x) for x in args.src_base.split(".")]
    hello = client_hello(args.server_name)
    ctx = client_ctx()
    tasks = []
    for i in range(args.conns):
        a = base[3] + i // args.per_src
        src = "%d.%d.%d.%d" % (base[0], base[1], base[2] + a // 250, a % 250)
        tasks.append(asyncio.ensure_future(one(args, src, st, stop_at, hello, ctx)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # ramp up over ~1 s, not one SYN burst
    await asyncio.gather(*tasks, return_exceptions=True)
    lt = sorted(st.lifetimes)
    print(json.dumps({
        "opened": st.opened, "closed_by_server": st.closed, "refused": st.refused,
        "held": st.held, "bytes_sent": st.bytes_sent,
        "lifetime_min": round(lt[0], 2) if lt else None,
        "lifetime_median": round(lt[len(lt) // 2], 2) if lt else None,
        "lifetime_max": round(lt[-1], 2) if lt else None}))


def probe(args):
    body = open(args.body, "rb").read()
    ctx = client_ctx(args.cafile)
    codes, lat = {}, []
    for _ in range(args.n):
        t0 = time.monotonic()
        code = "error"
        try:
            c = http.client.HTTPSConnection(args.server_name or "127.0.0.1", args.port,
                                            timeout=10, context=ctx)
            raw = socket.create_connection(("127.0.0.1", args.port), 10,
                                           source_address=(args.src, 0))
            c.sock = ctx.wrap_socket(raw, server_hostname=args.server_name)
            hdrs = {"Content-Type": "application/json"}
            for h in args.header:
                k, v = h.split(":", 1)
                hdrs[k.strip()] = v.strip()
            c.request("POST", args.path, body=body, headers=hdrs)
            r = c.getresponse()
            r.read()
            code = str(r.status)
            c.close()
        except Exception as e:  # counted, reported: the test decides
            code = type(e).__name__
        lat.append((time.monotonic() - t0) * 1000)
        codes[code] = codes.get(code, 0) + 1
        if args.gap_ms:
            time.sleep(args.gap_ms / 1000)
    lat.sort()
    p = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)
    print(json.dumps({"n": len(lat), "codes": codes, "p50_ms": p(0.5), "p99_ms": p(0.99),
                      "max_ms": round(lat[-1], 1)}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attack")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--conns", type=int, default=500)
    a.add_argument("--mode", choices=["tls", "head", "body"], default="head")
    a.add_argument("--seconds", type=float, default=20)
    a.add_argument("--src-base", default="127.0.0.10")
    a.add_argument("--per-src", type=int, default=8)
    a.add_argument("--header", action="append", default=[])
    a.add_argument("--path", default="/inject")
    a.add_argument("--length", type=int, default=4 << 20)
    a.add_argument("--server-name", default="remora-injector.remora-system.svc")
    p = sub.add_parser("probe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--path", default="/inject")
    p.add_argument("--body", required=True)
    p.add_argument("--src", default="127.0.0.2")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--cafile")
    p.add_argument("--server-name")
    p.add_argument("--gap-ms", type=float, default=0)
    args = ap.parse_args()
    if args.cmd == "attack":
        asyncio.run(attack(args))
    else:
        probe(args)


if __name__ == "__main__":
    sys.exit(main())
