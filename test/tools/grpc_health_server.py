#!/usr/bin/env python3
"""A gRPC server (Debian's python3-grpcio) serving grpc.health.v1.Health/Check,
for the health port's gRPC probes (test/integration/grpc_probe.sh).

   grpc_health_server.py PORT STATE-FILE

Each Check reads STATE-FILE: "SERVING", "NOT_SERVING", "UNKNOWN",
"SERVICE_UNKNOWN" (answered as that HealthCheckResponse status), "UNIMPLEMENTED"
(grpc-status 12, as an app without the health service), "HANG" (no answer
within 30 s). The requested service name is appended to STATE-FILE.requests,
one line per Check. Prints "listening on 127.0.0.1:PORT" once serving.
grpc_health's protobuf module is not in Debian, so the messages are encoded
here (HealthCheckResponse is one enum field) by a generic handler.
"""
import sys
import time
from concurrent import futures

import grpc

STATUS = {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2, "SERVICE_UNKNOWN": 3}


def service_of(req):
    # HealthCheckRequest {string service = 1;}: empty, or 0x0a LEN BYTES (LEN < 128 here)
    if len(req) >= 2 and req[0] == 0x0A:
        return req[2:2 + req[1]].decode("utf-8", "replace")
    return ""


def main():
    port, state = int(sys.argv[1]), sys.argv[2]

    def check(req, ctx):
        with open(state + ".requests", "a") as f:
            f.write(service_of(req) + "\n")
        s = open(state).read().strip()
        if s == "UNIMPLEMENTED":
            ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "unknown service grpc.health.v1.Health")
        if s == "HANG":
            time.sleep(30)
        v = STATUS[s]
        return b"" if v == 0 else bytes([0x08, v])

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("listening on 127.0.0.1:%d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
