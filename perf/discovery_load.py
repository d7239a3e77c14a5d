#!/usr/bin/env python3
"""Simulated proxies long-polling remora-injector's discovery service (perf/bench-discovery.sh).

N proxies, each one TLS connection (HTTP/1.1 keep-alive, a mesh client certificate),
each watching one destination: proxy i watches the ClusterIP of svc-(i mod D), port 80
(the fake API server's generated cluster: svc-I has ClusterIP 10.96.0.0/12 + I + 1).
Each proxy asks once, then long-polls with &wait=VERSION&timeout_s=60 for ever.

Then C changes, one after the other: change k flips the readiness of one endpoint of
svc-(k mod D) through the fake API server's control port, and waits until every proxy
watching that Service has its answer. Latency = control request sent -> answer read by
the proxy (an upper bound: it includes the fake API server's own work and the watch's
trip). The injector's CPU (its threads' /proc/PID/task/*/schedstat, i.e. utime+stime in ns) is read before and after the
changes, and over an idle window of the same length before them.

Prints one JSON object: proxies, destinations, connect_s, changes, answers, p50/p90/p99/max
latency (ms), event_p50/p99 (from the moment the fake API server queued the watch event,
which its control answer reports, to the answer: without the control request's own trip),
cpu_ms_per_change (and idle_cpu_ms over the same time), timeouts.
"""
import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time
import urllib.request


def cluster_ip(i):
    return "10.%d.%d.%d" % (96 + (i >> 16), ((i + 1) >> 8) & 255, (i + 1) & 255)


def cpu_ticks(pid):
    """The process's CPU time in ns: the sum of its threads' /proc/PID/task/*/schedstat run
    time (the same as utime+stime of /proc/PID/stat, without its 10 ms ticks)."""
    total = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that just ended
    return total


class Proxy:
    def __init__(self, i, dest):
        self.i, self.dest = i, dest
        self.version = None
        self.answers = []   # monotonic times of 200 answers to long-polls
        self.event = asyncio.Event()
        self.errors = 0


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    if "content-length" in hdrs:
        body = await reader.readexactly(int(hdrs["content-length"]))
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if n == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(n)
            await reader.readexactly(2)
    else:
        body = b""
    return code, hdrs, body


async def connect(p, a, ctx, sem):
    """Proxy i connects from its own loopback address (127.1.X.Y), as pods have their own IPs:
    the injector's per-IP connection cap applies per proxy, as in a cluster."""
    src = "127.1.%d.%d" % (p.i >> 8, p.i & 255)
    for attempt in range(20):
        try:
            async with sem:
                return await asyncio.open_connection(a.host, a.port, ssl=ctx, server_hostname=a.sni,
                                                     local_addr=(src, 0))
        except (ConnectionError, ssl.SSLError, OSError):
            p.errors += 1
            await asyncio.sleep(0.2 * (attempt + 1))
    raise ConnectionError("proxy %d: no connection after 20 attempts" % p.i)


async def run_proxy(p, a, ctx, sem, ready):
    reader, writer = await connect(p, a, ctx, sem)
    ready.append(p.i)
    q = "addr=%s:80" % p.dest
    while True:
        path = "/v1/destination?" + q
        if p.version is not None:
            path += "&wait=%s&timeout_s=60" % p.version
        writer.write(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, a.sni)).encode())
        try:
            code, hdrs, body = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            p.errors += 1
            writer.close()
            await asyncio.sleep(0.1)
            reader, writer = await connect(p, a, ctx, sem)
            continue
        now = time.monotonic()
        if code == 200:
            v = json.loads(body)["version"]
            if p.version is not None:
                p.answers.append(now)
                p.event.set()
            p.version = v
        elif code != 304:
            p.errors += 1
            await asyncio.sleep(0.5)
        if hdrs.get("connection", "").lower() == "close":
            writer.close()
            reader, writer = await connect(p, a, ctx, sem)


def control(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sni", required=True)
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--control", required=True, help="http://127.0.0.1:PORT/_control")
    ap.add_argument("--pid", type=int, required=True, help="the injector, for its CPU")
    ap.add_argument("--proxies", type=int, default=1000)
    ap.add_argument("--destinations", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=20)
    ap.add_argument("--namespaces", type=int, default=50, help="as the generated cluster's")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.proxies + 256)), hard))
    ctx = ssl.create_default_context(cafile=a.cacert)
    ctx.load_cert_chain(a.cert, a.key)
    proxies = [Proxy(i, cluster_ip(i % a.destinations)) for i in range(a.proxies)]
    by_dest = {}
    for p in proxies:
        by_dest.setdefault(i_of(p, a), []).append(p)
    sem = asyncio.Semaphore(32)
    ready = []
    t0 = time.monotonic()
    tasks = [asyncio.create_task(run_proxy(p, a, ctx, sem, ready)) for p in proxies]
    while sum(1 for p in proxies if p.version is not None) < a.proxies:
        await asyncio.sleep(0.05)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
        if time.monotonic() - t0 > 300:
            sys.exit("discovery_load: only %d of %d proxies got a first answer in 300 s"
                     % (sum(1 for p in proxies if p.version is not None), a.proxies))
    connect_s = time.monotonic() - t0
    await asyncio.sleep(1.0)  # every proxy is now in its long-poll
    loop = asyncio.get_running_loop()
    lat, lat_q, timeouts = [], [], 0
    dests = sorted(by_dest)
    # idle CPU over as long as the changes will take (estimated: gap + 10 ms each)
    idle_s = a.changes * (a.gap_ms + 10) / 1000.0
    c0 = cpu_ticks(a.pid)
    await asyncio.sleep(idle_s)
    idle_ticks = cpu_ticks(a.pid) - c0
    c0 = cpu_ticks(a.pid)
    tc0 = time.monotonic()
    for k in range(a.changes):
        d = dests[k % len(dests)]
        subs = by_dest[d]
        for p in subs:
            p.event.clear()
        before = [len(p.answers) for p in subs]
        ready_flag = (k // len(dests)) % 2 == 1  # first round: not ready, next: ready again
        t = time.monotonic()
        ans = await loop.run_in_executor(None, control, a.control + "/endpoint",
                                         {"pod": pod_of(d, a), "ready": ready_flag})
        tq = ans.get("monotonic", t)  # the fake API server queued the watch event
        for p, n in zip(subs, before):
            try:
                while len(p.answers) <= n:
                    await asyncio.wait_for(p.event.wait(), timeout=5 - (time.monotonic() - t))
                    p.event.clear()
                lat.append((p.answers[n] - t) * 1000)
                lat_q.append((p.answers[n] - tq) * 1000)
            except asyncio.TimeoutError:
                timeouts += 1
        await asyncio.sleep(a.gap_ms / 1000.0)
    change_s = time.monotonic() - tc0
    ticks = cpu_ticks(a.pid) - c0
    hz = 1e9  # "ticks" are ns: ticks * 1000 / hz = ms
    out = {"proxies": a.proxies, "destinations": len(dests), "connect_s": round(connect_s, 2),
           "changes": a.changes, "answers": len(lat), "timeouts": timeouts,
           "errors": sum(p.errors for p in proxies),
           "p50_ms": round(pct(lat, 0.50), 2) if lat else None,
           "p90_ms": round(pct(lat, 0.90), 2) if lat else None,
           "p99_ms": round(pct(lat, 0.99), 2) if lat else None,
           "max_ms": round(max(lat), 2) if lat else None,
           "event_p50_ms": round(pct(lat_q, 0.50), 2) if lat_q else None,
           "event_p99_ms": round(pct(lat_q, 0.99), 2) if lat_q else None,
           "change_s": round(change_s, 2),
           "cpu_ms": round(ticks * 1000.0 / hz, 1),
           "idle_cpu_ms": round(idle_ticks * 1000.0 / hz * change_s / idle_s, 1),
           "cpu_ms_per_change": round(ticks * 1000.0 / hz / a.changes, 3),
           "net_cpu_ms_per_change": round(max(0, ticks - idle_ticks * change_s / idle_s)
                                          * 1000.0 / hz / a.changes, 3)}
    print(json.dumps(out), flush=True)
    for t in tasks:
        t.cancel()


def i_of(p, a):
    return p.i % a.destinations


def pod_of(d, a):
    return "ns-%d/svc-%d-0" % (d % a.namespaces, d)


if __name__ == "__main__":
    asyncio.run(main())
