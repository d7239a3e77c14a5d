#!/usr/bin/env python3
"""A hostile HTTP/2 client for test/integration/hostile_h2.sh: writes raw
frames (HPACK literals without Huffman, enough for tests) and reports what
came back as one JSON line.

   h2peer.py PORT ATTACK [N]        attacks: rapid-reset, continuation-flood,
       big-header, settings-flood, ping-flood, window-overflow, zero-data,
       get (one plain request, a control)
   h2peer.py seeds DIR              write the fuzz_h2_server seed corpus

Output: {"goaway": CODE or null, "rst": {code: count}, "statuses": [...],
"data_bytes": N, "closed": bool, "frames": N, "sent": N}
"""
import json
import os
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINUP, CONT = range(10)
ES, EH, ACK = 0x1, 0x4, 0x1


def frame(ftype, flags, sid, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid & 0x7FFFFFFF) + payload


def lit(name, value):
    """HPACK literal header field without indexing, new name, no Huffman."""
    def s(b):
        b = b.encode() if isinstance(b, str) else b
        if len(b) < 127:
            return bytes([len(b)]) + b
        out, n = bytearray([127]), len(b) - 127
        while n >= 128:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out) + b
    return b"\x00" + s(name) + s(value)


def request_block(method="GET", path="/", extra=()):
    b = lit(":method", method) + lit(":scheme", "http") + lit(":path", path)
    b += lit(":authority", "app.local")
    for k, v in extra:
        b += lit(k, v)
    return b


def hello():
    return PREFACE + frame(SETTINGS, 0, 0)


class Peer:
    def __init__(self, port, timeout=10.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.res = {"goaway": None, "rst": {}, "statuses": [], "data_bytes": 0,
                    "closed": False, "frames": 0, "sent": 0}

    def send(self, data):
        try:
            self.s.sendall(data)
            self.res["sent"] += len(data)
            return True
        except OSError:
            self.res["closed"] = True
            return False

    def read_until(self, done, deadline_s=15.0):
        """Read frames until done(res) or close or deadline; ACK SETTINGS."""
        end = time.monotonic() + deadline_s
        while not self.res["closed"] and not done(self.res) and time.monotonic() < end:
            try:
                b = self.s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                self.res["closed"] = True
                break
            if not b:
                self.res["closed"] = True
                break
            self.buf += b
            self.parse()
        return self.res

    def parse(self):
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                return
            t, fl = self.buf[3], self.buf[4]
            p = self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            self.res["frames"] += 1
            if t == GOAWAY:
                self.res["goaway"] = struct.unpack(">I", p[4:8])[0]
                self.res["last_stream"] = struct.unpack(">I", p[:4])[0] & 0x7FFFFFFF
            elif t == RST:
                c = str(struct.unpack(">I", p)[0])
                self.res["rst"][c] = self.res["rst"].get(c, 0) + 1
            elif t == HEADERS:
                # nghttp2 encodes :status 200/204/... as one indexed byte;
                # other statuses (Huffman literals) are counted as -1
                st = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}
                off = (1 if fl & 0x8 else 0) + (5 if fl & 0x20 else 0)
                self.res["statuses"].append(st.get(p[off], -1) if off < len(p) else -1)
            elif t == DATA:
                self.res["data_bytes"] += n
            elif t == SETTINGS and not fl & ACK:
                self.send(frame(SETTINGS, ACK, 0))


def run(port, attack, n):
    wait = float(os.environ.get("H2PEER_WAIT", "15"))
    p = Peer(port, timeout=min(10.0, wait))
    p.send(hello())
    got_goaway = lambda r: r["goaway"] is not None
    if attack == "get":
        p.send(frame(HEADERS, EH | ES, 1, request_block(path="/ok")))
        p.read_until(lambda r: r["data_bytes"] > 0 and r["statuses"])
    elif attack == "rapid-reset":
        # HEADERS + RST_STREAM(CANCEL) pairs, many to a write (as the
        # CVE-2023-44487 tools do), then one more batch after a pause
        sid, batch = 1, b""
        for i in range(n):
            batch += frame(HEADERS, EH | ES, sid, request_block(path="/rr/%d" % sid))
            batch += frame(RST, 0, sid, struct.pack(">I", 8))
            sid += 2
            if len(batch) > 16384:
                if not p.send(batch):
                    break
                batch = b""
        if batch:
            p.send(batch)
        p.read_until(got_goaway, wait)
    elif attack == "continuation-flood":
        # one header block cut into n CONTINUATION frames of 1 field each
        p.send(frame(HEADERS, 0, 1, request_block()))
        for i in range(n):
            if not p.send(frame(CONT, 0, 1, lit("x-c%d" % i, "v"))):
                break
        p.read_until(lambda r: r["goaway"] is not None or r["rst"] or r["statuses"])
    elif attack == "big-header":
        # one n-byte header value in 16 KiB CONTINUATION pieces
        blk = request_block(extra=[("x-big", "a" * n)])
        first, rest = blk[:16384], blk[16384:]
        p.send(frame(HEADERS, 0 if rest else EH | ES, 1, first))
        while rest:
            piece, rest = rest[:16384], rest[16384:]
            if not p.send(frame(CONT, 0 if rest else EH, 1, piece)):
                break
        p.read_until(lambda r: r["goaway"] is not None or r["rst"] or r["statuses"])
    elif attack == "settings-flood":
        # SETTINGS frames whose ACKs we never read
        for i in range(0, n, 500):
            if not p.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535)) * min(500, n - i)):
                break
        time.sleep(0.5)
        p.read_until(got_goaway)
    elif attack == "ping-flood":
        for i in range(0, n, 500):
            if not p.send(frame(PING, 0, 0, b"12345678") * min(500, n - i)):
                break
        time.sleep(0.5)
        p.read_until(got_goaway)
    elif attack == "window-overflow":
        # a connection window past 2^31-1 is a FLOW_CONTROL_ERROR
        p.send(frame(WINUP, 0, 0, struct.pack(">I", 0x7FFFFFFF)))
        p.read_until(got_goaway)
    elif attack == "zero-data":
        # a POST whose body is n empty DATA frames, then 5 bytes
        p.send(frame(HEADERS, EH, 1, request_block("POST", "/zero")))
        for i in range(0, n, 1000):
            if not p.send(frame(DATA, 0, 1) * min(1000, n - i)):
                break
        p.send(frame(DATA, ES, 1, b"hello"))
        p.read_until(lambda r: r["goaway"] is not None or r["rst"] or r["data_bytes"] > 0)
    elif attack == "never-read":
        # n streams of a large response and a huge window, then no reads
        # for H2PEER_WAIT seconds: what the proxy queues must stay bounded
        p.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0x7FFFFFFF)))
        p.send(frame(WINUP, 0, 0, struct.pack(">I", 0x7FFFFFFF - 65535)))
        for i in range(n):
            p.send(frame(HEADERS, EH | ES, 1 + 2 * i, request_block(path="/bytes/100000000")))
        time.sleep(wait)
        p.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        sys.exit("unknown attack " + attack)
    p.s.close()
    print(json.dumps(p.res, sort_keys=True))


def seeds(d):
    """fuzz_h2_server inputs: byte 0 is the mode (bit 0: the target sends
    the preface itself; bit 1: all at once), then client bytes."""
    os.makedirs(d, exist_ok=True)
    S = frame(SETTINGS, 0, 0)
    ack = frame(SETTINGS, ACK, 0)
    get = frame(HEADERS, EH | ES, 1, request_block())
    post = frame(HEADERS, EH, 1, request_block("POST", "/p", [("content-length", "10")]))
    post += frame(DATA, 0, 1, b"hello") + frame(DATA, ES, 1, b"world")
    rr = b"".join(frame(HEADERS, EH | ES, i, request_block()) + frame(RST, 0, i, b"\0\0\0\x08")
                  for i in range(1, 80, 2))
    trailers = frame(HEADERS, EH, 1, request_block("POST", "/t")) + frame(DATA, 0, 1, b"x")
    trailers += frame(HEADERS, EH | ES, 1, lit("x-trailer", "1"))
    cont = frame(HEADERS, 0, 1, request_block()[:10]) + frame(CONT, EH, 1, request_block()[10:])
    cases = {
        "get": b"\x01" + S + get,
        "get_whole": b"\x03" + S + get + ack,
        "get_own_preface": b"\x00" + hello() + get,
        "post_data": b"\x01" + S + post,
        "rapid_reset": b"\x03" + S + rr,
        "trailers": b"\x01" + S + trailers,
        "continuation": b"\x01" + S + cont,
        "bad_preface": b"\x00INVALID CONNECTION PREFACE\r\n\r\n",
        "lower_stream_id": b"\x01" + S + frame(HEADERS, EH, 5, request_block()) +
        frame(HEADERS, EH, 3, request_block()),
        "data_after_rst": b"\x01" + S + frame(HEADERS, EH, 1, request_block("POST")) +
        frame(RST, 0, 1, b"\0\0\0\x08") + frame(DATA, 0, 1, b"late"),
        "headers_on_closed": b"\x01" + S + get + frame(HEADERS, EH | ES, 1, request_block()),
        "window_overflow": b"\x01" + S + frame(WINUP, 0, 0, b"\x7f\xff\xff\xff"),
        "priority_self": b"\x01" + S + frame(PRIORITY, 0, 3, b"\0\0\0\x03\x10"),
        "pings": b"\x03" + S + frame(PING, 0, 0, b"abcdefgh") * 50,
        "zero_data": b"\x01" + S + frame(HEADERS, EH, 1, request_block("POST")) +
        frame(DATA, 0, 1) * 100 + frame(DATA, ES, 1, b"z"),
        "continuation_flood": b"\x01" + S + frame(HEADERS, 0, 1, request_block()) +
        b"".join(frame(CONT, 0, 1, lit("x-c%d" % i, "v")) for i in range(20)),
        "goaway_from_client": b"\x01" + S + get + frame(GOAWAY, 0, 0, b"\0\0\0\x01\0\0\0\0"),
    }
    for name, data in cases.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    if sys.argv[1] == "seeds":
        seeds(sys.argv[2])
    else:
        run(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1000)
