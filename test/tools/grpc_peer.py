#!/usr/bin/python3
"""A real gRPC server and client (Debian's python3-grpcio) for
test/integration/grpc.sh. No generated code: generic handlers with raw-bytes
(de)serializers on the service remora.Test.

  grpc_peer.py server PORT_FILE
      listens on 127.0.0.1:0, writes the port to PORT_FILE. Methods:
        Echo(bytes) -> the same bytes (any size up to 16 MiB)
        Stream(b"N") -> N messages b"msg-<i>"
        Bidi(stream) -> each message echoed, in order
        Slow(b"MS") -> sleeps MS ms, then b"slept" (aborts if the call is gone)
        Status(b"CODE") -> fails with that status code, message "app says CODE"
        Flaky(b"KEY") -> UNAVAILABLE the first time KEY is seen, then b"ok KEY"
        Secret(bytes) -> b"secret" (a method the tests' policy denies)
        Count(b"METHOD") -> how many calls of METHOD reached the app (decimal)

  grpc_peer.py client TARGET CMD [ARG] [--timeout S]
      CMD: echo TEXT | big BYTES | stream N | bidi N | slow MS | status CODE |
           statuses (Status 1..16, one call each) | flaky KEY | secret | count METHOD
      prints one JSON line: {"code": "OK"|"UNAVAILABLE"|..., "details": ..., ...}
"""
import hashlib
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

MAX = 16 << 20
OPTS = [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]
SVC = "remora.Test"
raw = lambda b: b  # noqa: E731

counts = {}
lock = threading.Lock()
seen = set()


def count(name):
    with lock:
        counts[name] = counts.get(name, 0) + 1


def echo(req, ctx):
    count("Echo")
    return req


def stream(req, ctx):
    count("Stream")
    for i in range(int(req)):
        yield b"msg-%d" % i


def bidi(it, ctx):
    count("Bidi")
    for m in it:
        yield m


def slow(req, ctx):
    count("Slow")
    end = time.monotonic() + int(req) / 1000.0
    while time.monotonic() < end:
        if not ctx.is_active():
            return b""
        time.sleep(0.01)
    return b"slept"


def status(req, ctx):
    count("Status")
    code = int(req)
    sc = next(c for c in grpc.StatusCode if c.value[0] == code)
    ctx.abort(sc, "app says %d" % code)


def flaky(req, ctx):
    count("Flaky")
    with lock:
        first = req not in seen
        seen.add(req)
    if first:
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "first call fails")
    return b"ok " + req


def secret(req, ctx):
    count("Secret")
    return b"secret"


def getcount(req, ctx):
    with lock:
        return str(counts.get(req.decode(), 0)).encode()


def serve(port_file):
    u = lambda f: grpc.unary_unary_rpc_method_handler(f, raw, raw)  # noqa: E731
    handlers = {
        "Echo": u(echo),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, raw, raw),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, raw, raw),
        "Slow": u(slow),
        "Status": u(status),
        "Flaky": u(flaky),
        "Secret": u(secret),
        "Count": u(getcount),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SVC, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(port_file + ".tmp", port_file)
    server.wait_for_termination()


def client(target, cmd, arg, timeout, authority):
    opts = OPTS + ([("grpc.default_authority", authority)] if authority else [])
    ch = grpc.insecure_channel(target, options=opts)
    out = {"code": "OK", "details": ""}
    m = lambda name: "/%s/%s" % (SVC, name)  # noqa: E731
    uu = lambda name: ch.unary_unary(m(name), raw, raw)  # noqa: E731
    try:
        if cmd == "echo":
            out["reply"] = uu("Echo")(arg.encode(), timeout=timeout).decode()
        elif cmd == "big":
            body = os.urandom(int(arg))
            r = uu("Echo")(body, timeout=timeout)
            out["sent_sha"] = hashlib.sha256(body).hexdigest()
            out["got_sha"] = hashlib.sha256(r).hexdigest()
            out["len"] = len(r)
        elif cmd == "stream":
            n = 0
            for i, msg in enumerate(ch.unary_stream(m("Stream"), raw, raw)(arg.encode(), timeout=timeout)):
                if msg != b"msg-%d" % i:
                    out["bad"] = i
                    break
                n += 1
            out["n"] = n
        elif cmd == "bidi":
            total = int(arg)
            msgs = (b"bidi-%d-" % i + b"x" * (i % 200) for i in range(total))
            n = 0
            for i, msg in enumerate(ch.stream_stream(m("Bidi"), raw, raw)(msgs, timeout=timeout)):
                if msg != b"bidi-%d-" % i + b"x" * (i % 200):
                    out["bad"] = i
                    break
                n += 1
            out["n"] = n
        elif cmd == "slow":
            out["reply"] = uu("Slow")(arg.encode(), timeout=timeout).decode()
        elif cmd == "status":
            out["reply"] = uu("Status")(arg.encode(), timeout=timeout).decode()
        elif cmd == "statuses":
            got = {}
            for code in range(1, 17):
                try:
                    uu("Status")(b"%d" % code, timeout=timeout)
                    got[code] = "OK"
                except grpc.RpcError as e:
                    got[code] = "%d %s" % (e.code().value[0], e.details())
            out["statuses"] = got
        elif cmd == "secret":
            out["reply"] = uu("Secret")(b"", timeout=timeout).decode()
        elif cmd == "flaky":
            out["reply"] = uu("Flaky")(arg.encode(), timeout=timeout).decode()
        elif cmd == "count":
            out["reply"] = uu("Count")(arg.encode(), timeout=timeout).decode()
        else:
            raise SystemExit("unknown command " + cmd)
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details()
        out["trailing"] = {k: v if isinstance(v, str) else v.decode("latin-1")
                           for k, v in (e.trailing_metadata() or ())}
    print(json.dumps(out, sort_keys=True))
    ch.close()


def main():
    a = sys.argv[1:]
    timeout = 30.0
    if "--timeout" in a:
        i = a.index("--timeout")
        timeout = float(a[i + 1])
        del a[i:i + 2]
    authority = None
    if "--authority" in a:
        i = a.index("--authority")
        authority = a[i + 1]
        del a[i:i + 2]
    if a and a[0] == "server" and len(a) == 2:
        serve(a[1])
    elif a and a[0] == "client" and len(a) in (3, 4):
        client(a[1], a[2], a[3] if len(a) == 4 else "", timeout, authority)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
