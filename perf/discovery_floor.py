#!/usr/bin/env python3
"""The harness's own floor for perf/bench-discovery.sh: a stand-in for the discovery
service that does the least possible, so that the bench's latency numbers can be read
against what the fake API server, its watch stream and the load generator cost alone.

It watches the fake API server's EndpointSlices (one watch, from the list's
resourceVersion), keeps one version per Service ClusterIP (svc-I of the generated
cluster), and answers GET /v1/destination?addr=IP:PORT[&wait=V&timeout_s=T] over TLS with
{"version": ...} only: at once when V differs, else when a slice of that Service changes,
else 304 at the timeout. No client certificate check, no endpoints in the answer.

  discovery_floor.py --api https://127.0.0.1:PORT --api-ca CA --token T
                     --cert C --key K --listen 127.0.0.1:PORT
"""
import argparse
import asyncio
import json
import ssl
import threading
import urllib.parse
import urllib.request

VERS = {}      # ClusterIP -> int
WAITERS = {}   # ClusterIP -> set of futures
LOOP = None


def cluster_ip(i):
    return "10.%d.%d.%d" % (96 + (i >> 16), ((i + 1) >> 8) & 255, (i + 1) & 255)


def bump(ip):
    VERS[ip] = VERS.get(ip, 0) + 1
    for f in WAITERS.pop(ip, ()):
        if not f.done():
            f.set_result(None)


def watch(a, ctx):
    hdr = {"Authorization": "Bearer " + a.token}
    base = a.api + "/apis/discovery.k8s.io/v1/endpointslices"
    d = json.load(urllib.request.urlopen(urllib.request.Request(base, headers=hdr), context=ctx))
    rv = d["metadata"]["resourceVersion"]
    r = urllib.request.urlopen(urllib.request.Request(
        base + "?watch=1&allowWatchBookmarks=true&resourceVersion=" + rv, headers=hdr), context=ctx)
    for line in r:
        ev = json.loads(line)
        if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
            svc = ev["object"]["metadata"]["labels"]["kubernetes.io/service-name"]
            LOOP.call_soon_threadsafe(bump, cluster_ip(int(svc.split("-")[1])))


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            ip = q["addr"][0].rsplit(":", 1)[0]
            code = 200
            if "wait" in q and q["wait"][0] == str(VERS.get(ip, 0)):
                f = LOOP.create_future()
                WAITERS.setdefault(ip, set()).add(f)
                try:
                    await asyncio.wait_for(f, float(q.get("timeout_s", ["30"])[0]))
                except asyncio.TimeoutError:
                    code = 304
            body = b"" if code == 304 else json.dumps({"version": str(VERS.get(ip, 0))}).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (code, len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main():
    global LOOP
    ap = argparse.ArgumentParser()
    for k in ("--api", "--api-ca", "--token", "--cert", "--key", "--listen"):
        ap.add_argument(k, required=True)
    a = ap.parse_args()
    LOOP = asyncio.get_running_loop()
    threading.Thread(target=watch, args=(a, ssl.create_default_context(cafile=a.api_ca)),
                     daemon=True).start()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(a.cert, a.key)
    host, port = a.listen.rsplit(":", 1)
    srv = await asyncio.start_server(serve, host, int(port), ssl=sctx, backlog=2048)
    print("listening on %s:%d" % (host, srv.sockets[0].getsockname()[1]), flush=True)
    await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
