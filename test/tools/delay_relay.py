#!/usr/bin/env python3
"""A TCP relay that adds latency, standing in for a link to a remote cluster
(this kernel has no netem).  Every chunk read from either side is forwarded
after DELAY_MS.  Prints "listening on HOST:PORT" once bound.

    delay_relay.py --listen 127.0.0.1:0 --to 127.0.0.1:8080 --delay-ms 100
"""
import argparse
import asyncio
import signal
import sys


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            # keep order: schedule each chunk's write after the delay
            await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass
    del loop


async def handle(creader, cwriter, to_host, to_port, delay):
    try:
        ureader, uwriter = await asyncio.open_connection(to_host, to_port)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pipe(creader, uwriter, delay), pipe(ureader, cwriter, delay))
    for w in (cwriter, uwriter):
        try:
            w.close()
        except OSError:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--delay-ms", type=float, default=100.0)
    a = ap.parse_args()
    lh, lp = a.listen.rsplit(":", 1)
    th, tp = a.to.rsplit(":", 1)
    delay = a.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, th, int(tp), delay), lh, int(lp))
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    asyncio.run(main())
