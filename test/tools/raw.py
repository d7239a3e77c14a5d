#!/usr/bin/env python3
"""Send raw bytes to HOST:PORT and print what comes back (until close or an
idle timeout). Escapes like \\r\\n in the argument are interpreted.
   raw.py 127.0.0.1:8080 'GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n' [--timeout 2] [--half-close]
          [--cert CERT.pem --key KEY.pem]
With --cert/--key the bytes go inside TLS with that client certificate (the
server's certificate is not checked: a test tool for mTLS listeners).
"""
import socket
import ssl
import sys


def main():
    args = sys.argv[1:]
    timeout, half = 2.0, False
    if "--timeout" in args:
        i = args.index("--timeout")
        timeout = float(args[i + 1])
        del args[i:i + 2]
    if "--half-close" in args:
        args.remove("--half-close")
        half = True
    cert = key = None
    if "--cert" in args:
        i = args.index("--cert")
        cert = args[i + 1]
        del args[i:i + 2]
    if "--key" in args:
        i = args.index("--key")
        key = args[i + 1]
        del args[i:i + 2]
    host, port = args[0].rsplit(":", 1)
    data = args[1].encode("latin-1").decode("unicode_escape").encode("latin-1")
    s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s)
    s.sendall(data)
    if half:
        s.shutdown(socket.SHUT_WR)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except socket.timeout:
        pass
    except (ConnectionResetError, ssl.SSLError):
        out += b"\n[reset]"
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
