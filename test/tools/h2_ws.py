#!/usr/bin/python3
"""HTTP/2 extended CONNECT (RFC 8441) peers on Debian's python3-h2 (run with
/usr/bin/python3), for the WebSocket tests.

  h2_ws.py client HOST:PORT PATH
      h2c prior knowledge: SETTINGS, wait for the server's SETTINGS (it must
      enable extended CONNECT), then :method CONNECT, :protocol websocket,
      sec-websocket-version 13 and no Sec-WebSocket-Key (a browser's WebSocket
      over HTTP/2); then one masked text frame "over h2", read the server's
      echo frame, send a close frame (1000), read the server's close, and
      END_STREAM. Prints "settings enable_connect_protocol=N", "status S",
      "echo TEXT", "close CODE" as they happen.
  h2_ws.py tls-server CERT KEY
      an HTTP/2 server over TLS (ALPN h2, no client certificate asked for)
      that does NOT enable extended CONNECT and answers every request 200
      "plain": the peer a sidecar must not send an extended CONNECT to.
      Prints "listening on 127.0.0.1:PORT".
"""
import os
import socket
import ssl
import struct
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.settings


def ws_frame(opcode, payload):
    """A masked client frame (RFC 6455 5.2), payload < 126 bytes."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def ws_parse(buf):
    """(opcode, payload, rest) of the first unmasked server frame, or None."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    off = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
        off = 4
    if len(buf) < off + n:
        return None
    return buf[0] & 0x0F, buf[off:off + n], buf[off + n:]


def client(hostport, path):
    host, port = hostport.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    sid = None
    data = b""
    state = "settings"
    while True:
        raw = s.recv(65536)
        if not raw:
            print("connection closed", flush=True)
            return 1
        for ev in c.receive_data(raw):
            if isinstance(ev, h2.events.RemoteSettingsChanged) and state == "settings":
                v = c.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0)
                print(f"settings enable_connect_protocol={v}", flush=True)
                if not v:
                    return 1
                sid = c.get_next_available_stream_id()
                c.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                     (":scheme", "http"), (":path", path),
                                     (":authority", hostport), ("sec-websocket-version", "13")])
                state = "head"
            elif isinstance(ev, h2.events.ResponseReceived):
                st = dict(ev.headers).get(b":status", b"?").decode()
                print(f"status {st}", flush=True)
                if st != "200":
                    return 1
                c.send_data(sid, ws_frame(1, b"over h2"))
                state = "echo"
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                data += ev.data
                while True:
                    f = ws_parse(data)
                    if f is None:
                        break
                    op, payload, data = f
                    if op == 1 and state == "echo":
                        print(f"echo {payload.decode()}", flush=True)
                        c.send_data(sid, ws_frame(8, struct.pack("!H", 1000)))
                        state = "close"
                    elif op == 8:
                        print(f"close {struct.unpack('!H', payload[:2])[0]}", flush=True)
                        c.end_stream(sid)
                        s.sendall(c.data_to_send())
                        return 0
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                print(f"reset {ev}", flush=True)
                return 1
        s.sendall(c.data_to_send())


def serve_conn(sock):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    c.initiate_connection()
    sock.sendall(c.data_to_send())
    while True:
        try:
            raw = sock.recv(65536)
        except OSError:
            return
        if not raw:
            return
        try:
            events = c.receive_data(raw)
        except Exception:
            sock.sendall(c.data_to_send())
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                c.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "5")])
                c.send_data(ev.stream_id, b"plain", end_stream=True)
        sock.sendall(c.data_to_send())


def tls_server(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    print(f"listening on 127.0.0.1:{ls.getsockname()[1]}", flush=True)
    while True:
        c, _ = ls.accept()
        try:
            t = ctx.wrap_socket(c, server_side=True)
        except (ssl.SSLError, OSError):
            c.close()
            continue
        threading.Thread(target=serve_conn, args=(t,), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "client":
        sys.exit(client(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 4 and sys.argv[1] == "tls-server":
        tls_server(sys.argv[2], sys.argv[3])
    sys.exit(__doc__)
