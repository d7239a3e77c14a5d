#!/usr/bin/env bash
# Traffic leaving the mesh, by name (issue 18; docs/operations.md "Egress"): the
# real injector's discovery service over mTLS, fed by the fake API server, and a
# proxy under outbound_policy registry_only whose egress_allow lists host names.
# On loopback a listener's fixed upstream stands for the original destination,
# which discovery does not know (404):
#  - HTTP: the request's Host decides (its port, else the destination's): a
#    listed name is forwarded (what reached the app, byte for byte), a name,
#    port or address not listed gets 502 "destination HOST:PORT is not in the
#    mesh registry (outbound_policy registry_only)" and the app sees nothing;
#    "*.domain" matches names under the domain, not the domain itself;
#  - TLS passthrough: the ClientHello's SNI decides; a listed name's session
#    works end to end (the client verifies the destination's certificate, the
#    bytes echo back unchanged); an unlisted or missing SNI is closed before
#    anything is forwarded: the destination never sees a connection;
#  - the Host lookup: a request for the meshed Service web.shop:80 on a connection
#    whose address discovery does not know is looked up by its Host, found, and
#    sent over mTLS to a peer that must be shop/web (not an egress); a second
#    request is answered from the cache; a plaintext Service named in the Host of a
#    connection to an address that is none of its endpoints is not believed (502);
#    a Service-shaped Host that does not exist is refused by name;
#  - names are checked against DNS (egress_verify_names, default on): the proxy runs in a
#    private mount namespace (unshare -m) whose /etc/hosts maps the listed names to
#    127.0.0.4, and whose resolv.conf points at a nameserver that never answers; a listed
#    Host or SNI sent to another address (127.0.0.8, where another app listens) is refused
#    (502 naming both; TLS closed) and nothing reaches that app; a listed name that does not
#    resolve, or whose resolver does not answer within lookup_timeout_ms, is refused; with
#    "egress_verify_names": false the name is believed as written (as before);
#  - remora_egress_total{decision} counts each decision, the log names each refusal.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# ---- PKI: the mesh (ca_pki), the API server's, and the outside TLS destination's ----------
ca_pki || exit 1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$D/outca-key.pem" -out "$D/outca.pem" -subj "/CN=outside ca" 2>/dev/null || exit 1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$D/out-key.pem" \
    -out "$D/out.csr" -subj "/CN=outside" 2>/dev/null &&
    printf 'subjectAltName=DNS:tls-ok.example,DNS:*.tlswild.example,DNS:evil.example\nextendedKeyUsage=serverAuth\n' \
        >"$D/out.ext" &&
    openssl x509 -req -in "$D/out.csr" -CA "$D/outca.pem" -CAkey "$D/outca-key.pem" -CAcreateserial \
        -days 2 -extfile "$D/out.ext" -out "$D/out.pem" 2>/dev/null || exit 1
for sa in client web; do disc_workload "$sa" || exit 1; done

# ---- the apps: outside HTTP (127.0.0.4), outside TLS (127.0.0.4), the Service web --------
mkdir -p "$TMP/out" "$TMP/webapp"
RESP='HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
APPO=$(free_port)
bg out python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/out" --listen "127.0.0.4:$APPO" \
    --response "$RESP"
wait_until 5 listen_port "$TMP/out.log" || { fail "outside app starts"; cat "$TMP/out.log"; finish; }
TLSP=$(free_port)
bg tls python3 "$REMORA_ROOT/test/tools/tls_echo.py" --listen "127.0.0.4:$TLSP" --cert "$D/out.pem" \
    --key "$D/out-key.pem" --dir "$TMP/tlsdst"
wait_until 5 listen_port "$TMP/tls.log" || { fail "outside TLS server starts"; cat "$TMP/tls.log"; finish; }
# web.shop (meshed, shop/web): its pod at 127.0.0.5; the app's connection goes to 127.0.0.6
# (an address discovery does not know: a stale DNS answer, say). The pod's sidecar listens
# on both (strict mTLS as shop/web) in front of the app.
WEBP=$(free_port)
bg webapp python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/webapp" --response "$RESP"
wait_until 5 listen_port "$TMP/webapp.log" || { fail "web app starts"; finish; }
disc_sidecar websc web "$LISTEN_PORT" "127.0.0.5:$WEBP" "127.0.0.6:$WEBP" || finish
WEBSC_PID=$SIDE_PID

# ---- the fake API server and the injector's discovery service ------------------------------
disc_registry || finish
disc_pod web-0 127.0.0.5 web true web
ctl objects/services -X PUT --data-binary "{\"metadata\": {\"name\": \"web\", \"namespace\": \"shop\"},
    \"spec\": {\"clusterIP\": \"10.96.0.10\", \"clusterIPs\": [\"10.96.0.10\"], \"selector\": {\"app\": \"web\"},
               \"ports\": [{\"name\": \"http\", \"port\": 80, \"targetPort\": $WEBP, \"protocol\": \"TCP\"}]}}" >/dev/null
ctl objects/endpointslices -X PUT --data-binary "{\"metadata\": {\"name\": \"web-0\", \"namespace\": \"shop\",
    \"labels\": {\"kubernetes.io/service-name\": \"web\"}}, \"addressType\": \"IPv4\",
    \"ports\": [{\"name\": \"http\", \"port\": $WEBP, \"protocol\": \"TCP\"}],
    \"endpoints\": [{\"addresses\": [\"127.0.0.5\"], \"conditions\": {\"ready\": true, \"serving\": true, \"terminating\": false},
                   \"targetRef\": {\"kind\": \"Pod\", \"namespace\": \"shop\", \"name\": \"web-0\"}}]}" >/dev/null
# legacy.shop: a plaintext Service (no sidecar) with its pod at 127.0.0.7
disc_pod legacy-0 127.0.0.7 legacy false legacy
ctl objects/services -X PUT --data-binary '{"metadata": {"name": "legacy", "namespace": "shop"},
    "spec": {"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"], "selector": {"app": "legacy"},
             "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}' >/dev/null
ctl objects/endpointslices -X PUT --data-binary '{"metadata": {"name": "legacy-0", "namespace": "shop",
    "labels": {"kubernetes.io/service-name": "legacy"}}, "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    "endpoints": [{"addresses": ["127.0.0.7"], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "targetRef": {"kind": "Pod", "namespace": "shop", "name": "legacy-0"}}]}' >/dev/null

disc_injector || finish

# ---- the wrong destinations (127.0.0.8) and the proxy's private /etc/hosts -------------------
mkdir -p "$TMP/wrong"
bg wrong python3 "$REMORA_ROOT/test/tools/h1_recorder.py" --dir "$TMP/wrong" --listen "127.0.0.8:$APPO" \
    --response "$RESP"
wait_until 5 listen_port "$TMP/wrong.log" || { fail "wrong app starts"; cat "$TMP/wrong.log"; finish; }
bg wrongtls python3 "$REMORA_ROOT/test/tools/tls_echo.py" --listen "127.0.0.8:$TLSP" --cert "$D/out.pem" \
    --key "$D/out-key.pem" --dir "$TMP/wrongtls"
wait_until 5 listen_port "$TMP/wrongtls.log" || { fail "wrong TLS server starts"; finish; }
# the proxy's nameserver: NXDOMAIN for names under ghost.example; names under late.example are
# 127.0.0.4, answered 400 ms late; no answer ever for the rest (a silent resolver); every
# query's name is appended to dns.q. Port 53 is fixed (resolv.conf names no port), so it binds
# a loopback address of its own, picked at random: another run of this suite may hold one.
bg dns python3 -c '
import random, socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(100):
    ns = "127.%d.%d.%d" % (random.randrange(200, 255), random.randrange(256), random.randrange(2, 255))
    try:
        s.bind((ns, 53))
        break
    except OSError:
        pass
else:
    sys.exit("no free loopback address for port 53")
print("listening on %s:53" % ns, flush=True)
while True:
    d, a = s.recvfrom(4096)
    i, labels = 12, []
    while i < len(d) and d[i] != 0:
        labels.append(d[i + 1:i + 1 + d[i]]); i += 1 + d[i]
    name, question = b".".join(labels), d[12:i + 5]
    open(sys.argv[1], "ab").write(name + b"\n")
    rd = (d[2] & 1) << 8  # recursion desired, echoed
    if name.endswith(b"ghost.example"):  # a response, recursion available, NXDOMAIN
        s.sendto(d[:2] + (0x8183 | rd).to_bytes(2, "big") + b"\0\1\0\0\0\0\0\0" + question, a)
    elif name.endswith(b"late.example"):  # A: 127.0.0.4 (ttl 30); AAAA: no data
        ans = b"\xc0\x0c\0\1\0\1\0\0\0\x1e\0\4\x7f\0\0\4" if d[i + 2] == 1 else b""
        msg = (d[:2] + (0x8180 | rd).to_bytes(2, "big") + b"\0\1\0" + bytes([1 if ans else 0]) +
               b"\0\0\0\0" + question + ans)
        threading.Timer(0.4, s.sendto, (msg, a)).start()' "$TMP/dns.q"
wait_until 5 grep -q listening "$TMP/dns.log" || { fail "the test nameserver starts"; cat "$TMP/dns.log"; finish; }
NS=$(sed -n 's/^listening on \(.*\):53$/\1/p' "$TMP/dns.log")
cat >"$TMP/hosts" <<HOSTS
127.0.0.1 localhost
127.0.0.4 allowed.example a.b.wild.example fresh.wild.example tls-ok.example x.tlswild.example held.shop
HOSTS
printf 'nameserver %s\noptions timeout:3 attempts:1\n' "$NS" >"$TMP/resolv.conf"
# the proxy in its own mount namespace with those files (exec: the PID stays the proxy's)
cat >"$TMP/nsproxy" <<SH
#!/bin/sh
exec unshare -m sh -c 'mount --bind "\$0" /etc/hosts && mount --bind "\$1" /etc/resolv.conf && shift && exec "\$@"' \\
    "$TMP/hosts" "$TMP/resolv.conf" "$PROXY" "\$@"
SH
chmod +x "$TMP/nsproxy"
REAL_PROXY=$PROXY
PROXY=$TMP/nsproxy

# ---- the proxy: registry_only, names in egress_allow ---------------------------------------
ADMIN_PORT=$(free_port); LO=$(free_port); LT=$(free_port); LW=$(free_port); LX=$(free_port)
LXT=$(free_port)
disc_client proxy "[$(outbound out "$LO" "127.0.0.4:$APPO"), $(outbound tls "$LT" "127.0.0.4:$TLSP"),
    $(outbound web "$LW" "127.0.0.6:$WEBP"), $(outbound wrong "$LX" "127.0.0.8:$APPO"),
    $(outbound wrongtls "$LXT" "127.0.0.8:$TLSP")]" "{\"outbound_policy\": \"registry_only\",
    \"egress_allow\": [\"allowed.example:$APPO\", \"*.wild.example:$APPO\", \"tls-ok.example:$TLSP\",
                     \"*.tlswild.example:$TLSP\", \"ghost.example:$APPO\"]}"
start_proxy proxy "$TMP/proxy.json" || finish
A=http://127.0.0.1:$ADMIN_PORT

# send PORT HOST: a GET with that Host through the proxy; prints the status line and body
send() { printf 'GET /x?y=1 HTTP/1.1\r\nHost: %s\r\nX-App: 1\r\n\r\n' "$2" | h1_exchange "$1"; }
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
timed_h() { curl -s -o /dev/null -w '%{http_code} %{time_total}' -H "Host: $2" "http://127.0.0.1:$1/t"; }
# exact_req FILE HOST: "match" when FILE holds exactly the request send() makes for HOST as
# the proxy forwards it (names lower-cased, then its traceparent and x-request-id), else the bytes
exact_req() {
    python3 -c '
import re, sys
data = open(sys.argv[1], "rb").read()
want = (rb"GET /x\?y=1 HTTP/1\.1\r\nhost: " + re.escape(sys.argv[2].encode()) +
        rb"\r\nx-app: 1\r\ntraceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\r\n"
        rb"x-request-id: [0-9a-f-]{36}\r\n\r\n")
print("match" if re.fullmatch(want, data) else repr(data))' "$1" "$2"
}
refused() { echo "HTTP/1.1 502 Bad Gateway destination $1 is not in the mesh registry (outbound_policy registry_only)"; }

# ---- HTTP: the Host decides ------------------------------------------------------------------
expect_eq "Host allowed.example:$APPO (listed): forwarded, 200" "$(send "$LO" "allowed.example:$APPO")" \
    "HTTP/1.1 200 OK ok"
# what reached the app: the request as the app sent it (field names lower-cased), with the
# proxy's own trace context and request id after it
expect_eq "... what reached the app, byte for byte" "$(exact_req "$TMP/out/conn-1.bin" "allowed.example:$APPO")" match
n0=$(size "$TMP/out/all.bin")
expect_eq "Host Allowed.Example. (no port: the destination's; any case, trailing dot): 200" \
    "$(send "$LO" "Allowed.Example.")" "HTTP/1.1 200 OK ok"
check "... and it reached the app" test "$(size "$TMP/out/all.bin")" -gt "$n0"
n0=$(size "$TMP/out/all.bin")
expect_eq "Host unlisted.example (not listed): 502 naming it" \
    "$(send "$LO" "unlisted.example:$APPO")" "$(refused "unlisted.example:$APPO")"
expect_eq "Host allowed.example:9999 (listed name, other port): 502 naming it" \
    "$(send "$LO" "allowed.example:9999")" "$(refused "allowed.example:9999")"
expect_eq "Host wild.example (*.wild.example does not cover the domain itself): 502" \
    "$(send "$LO" "wild.example:$APPO")" "$(refused "wild.example:$APPO")"
expect_eq "Host 127.0.0.4:$APPO (an address: matched by address, never as a name): 502" \
    "$(send "$LO" "127.0.0.4:$APPO")" "$(refused "127.0.0.4:$APPO")"
expect_eq "... the app saw none of the four refused requests" "$(size "$TMP/out/all.bin")" "$n0"
expect_eq "Host a.b.wild.example (under *.wild.example): 200" "$(send "$LO" "a.b.wild.example:$APPO")" \
    "HTTP/1.1 200 OK ok"
h2() { curl -s --http2-prior-knowledge -w ' %{http_code} %{http_version}' -H "Host: $2" "http://127.0.0.1:$1/h2"; }
expect_eq "h2c, :authority allowed.example:$APPO: 200" "$(h2 "$LO" "allowed.example:$APPO")" "ok 200 2"
expect_eq "h2c, :authority unlisted.example:$APPO: 502 naming it" "$(h2 "$LO" "unlisted.example:$APPO")" \
    "destination unlisted.example:$APPO is not in the mesh registry (outbound_policy registry_only)
 502 2"
expect_match "the refusal is logged with the Host and the address" "$(cat "$TMP/proxy.log")" \
    "egress: unlisted.example:$APPO at 127.0.0.4:$APPO refused: not in the mesh registry"

# ---- TLS passthrough: the SNI decides --------------------------------------------------------
# tls_try PORT SNI: a TLS client verifying the outside CA and the name ("-": no SNI, the
# certificate chain still verified); prints "ok ECHO" or "refused"
tls_try() {
    timeout 20 python3 -c '
import socket, ssl, sys
port, sni, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
if sni == "-":
    ctx.check_hostname = False
    sni = None
msg = b"through the mesh, untouched \x00\xff\r\n"
s = socket.create_connection(("127.0.0.1", port), timeout=15)
try:
    t = ctx.wrap_socket(s, server_hostname=sni)
    t.sendall(msg)
    got = b""
    while len(got) < len(msg):
        d = t.recv(4096)
        if not d: break
        got += d
    print("ok", "same" if got == msg else repr(got))
except (OSError, ssl.SSLError) as e:
    print("refused")' "$1" "$2" "$D/outca.pem"
}
expect_eq "TLS with SNI tls-ok.example (listed): the session works end to end" \
    "$(tls_try "$LT" tls-ok.example)" "ok same"
expect_eq "... the destination got the client's bytes, decrypted by its own TLS" \
    "$(od -An -c "$TMP/tlsdst/plain.bin" | tr -s ' \n' ' ')" \
    "$(printf 'through the mesh, untouched \x00\xff\r\n' | od -An -c | tr -s ' \n' ' ')"
expect_eq "TLS with SNI x.tlswild.example (under *.tlswild.example): works" \
    "$(tls_try "$LT" x.tlswild.example)" "ok same"
expect_eq "... the destination saw both names" "$(tr '\n' ' ' <"$TMP/tlsdst/sni")" \
    "tls-ok.example x.tlswild.example "
a0=$(wc -l <"$TMP/tlsdst/accepts")
expect_eq "TLS with SNI evil.example (not listed): closed" "$(tls_try "$LT" evil.example)" "refused"
expect_eq "TLS without SNI: closed" "$(tls_try "$LT" -)" "refused"
expect_eq "... the destination never saw a connection (zero bytes)" \
    "$(wc -l <"$TMP/tlsdst/accepts")" "$a0"
expect_match "the TLS refusal is logged with the SNI" "$(cat "$TMP/proxy.log")" \
    "egress: evil.example:$TLSP at 127.0.0.4:$TLSP refused"
# tls_cut PORT SNI MODE: the ClientHello for SNI sent "trickle" (in two TCP segments 300 ms
# apart, then the handshake goes on) or "split" (re-framed as two TLS records); prints "ok"
# when the verified session echoes, else "refused"
tls_cut() {
    timeout 20 python3 -c '
import socket, ssl, sys, time
port, sni, ca, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
t = ctx.wrap_bio(inc, out, server_hostname=sni)
s = socket.create_connection(("127.0.0.1", port), timeout=15)
try:
    t.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
if mode == "split":
    body = hello[5:]
    hello = (hello[:3] + (60).to_bytes(2, "big") + body[:60] + hello[:3] +
             (len(body) - 60).to_bytes(2, "big") + body[60:])
    s.sendall(hello)
else:
    s.sendall(hello[:40]); time.sleep(0.3); s.sendall(hello[40:])
try:
    while True:
        try:
            t.do_handshake()
            break
        except ssl.SSLWantReadError:
            s.sendall(out.read())
            d = s.recv(65536)
            if not d:
                raise OSError("closed")
            inc.write(d)
    s.sendall(out.read())
    t.write(b"cut hello"); s.sendall(out.read())
    got = b""
    while b"cut hello" not in got:
        d = s.recv(65536)
        if not d:
            raise OSError("closed")
        inc.write(d)
        try:
            got += t.read(65536)
        except ssl.SSLWantReadError:
            pass
    print("ok")
except (OSError, ssl.SSLError):
    print("refused")' "$1" "$2" "$D/outca.pem" "$3"
}
expect_eq "TLS: a listed SNI in a ClientHello trickled over two segments: works" \
    "$(tls_cut "$LT" tls-ok.example trickle)" ok
a0=$(wc -l <"$TMP/tlsdst/accepts")
expect_eq "TLS: a listed SNI in a ClientHello split over two records (no name read): closed" \
    "$(tls_cut "$LT" tls-ok.example split)" refused
expect_eq "... the destination never saw that connection" "$(wc -l <"$TMP/tlsdst/accepts")" "$a0"

# ---- names are checked against DNS ------------------------------------------------------------
# dnsref DEST NAME [WHY]: the 502 of a destination that is not an address of the name
dnsref() { echo "HTTP/1.1 502 Bad Gateway destination $1 is not an address of $2 (egress_allow names are checked against DNS${3:+: $3})"; }
w0=$(size "$TMP/wrong/all.bin")
expect_eq "Host allowed.example:$APPO on a connection to 127.0.0.8 (not its address): 502 naming both" \
    "$(send "$LX" "allowed.example:$APPO")" "$(dnsref "127.0.0.8:$APPO" allowed.example)"
expect_eq "h2c, :authority A.B.Wild.Example:$APPO to 127.0.0.8: 502 naming both" \
    "$(h2 "$LX" "A.B.Wild.Example:$APPO")" \
    "destination 127.0.0.8:$APPO is not an address of a.b.wild.example (egress_allow names are checked against DNS)
 502 2"
expect_eq "... nothing reached the app at 127.0.0.8 (zero bytes)" "$(size "$TMP/wrong/all.bin")" "$w0"
expect_match "the refusal is logged naming both" "$(cat "$TMP/proxy.log")" \
    "egress: 127.0.0.8:$APPO refused: not an address of allowed.example \(egress_allow names are checked against DNS: the name resolves to other addresses\)"
n0=$(size "$TMP/out/all.bin")
expect_eq "Host ghost.example:$APPO (listed; the nameserver says NXDOMAIN): 502" \
    "$(send "$LO" "ghost.example:$APPO")" "$(dnsref "127.0.0.4:$APPO" ghost.example "the name does not resolve")"
check "... the name was asked of the nameserver" grep -qx ghost.example "$TMP/dns.q"
expect_eq "... nothing reached the app at 127.0.0.4" "$(size "$TMP/out/all.bin")" "$n0"
read -r c1 t1 <<<"$(timed_h "$LO" "fresh.wild.example:$APPO")"
read -r c2 t2 <<<"$(timed_h "$LO" "fresh.wild.example:$APPO")"
expect_eq "Host fresh.wild.example (its address in /etc/hosts): 200, twice" "$c1 $c2" "200 200"
echo "   measured (curl time_total, $REMORA_BUILD): first request ${t1}s (name resolved), second ${t2}s (cached)"
a0=$(wc -l <"$TMP/wrongtls/accepts" 2>/dev/null || echo 0)
expect_eq "TLS with SNI tls-ok.example on a connection to 127.0.0.8: closed" "$(tls_try "$LXT" tls-ok.example)" \
    refused
expect_eq "... 127.0.0.8 never saw a connection (zero bytes)" \
    "$(wc -l <"$TMP/wrongtls/accepts" 2>/dev/null || echo 0)" "$a0"
expect_match "the TLS refusal is logged naming both" "$(cat "$TMP/proxy.log")" \
    "egress: 127.0.0.8:$TLSP refused: not an address of tls-ok.example"
expect_eq "... while tls-ok.example at its own address still works" "$(tls_try "$LT" tls-ok.example)" "ok same"

# ---- the Host lookup -------------------------------------------------------------------------
sent() { curl -s "$A/metrics" | sed -n 's/^remora_discovery_requests_total{outcome="sent"} //p'; }
expect_eq "Host web.shop:80 on an address discovery does not know: the meshed Service, 200" \
    "$(send "$LW" "web.shop:80")" "HTTP/1.1 200 OK ok"
dest=$(curl -s "$A/destinations")
expect_eq "/destinations: web.shop:80 is shop/web (found by the Host)" \
    "$(jq -c --arg d "web.shop:80" '[.destinations[] | select(.destination == $d) |
        .state, .answer.service]' <<<"$dest")" '["current","shop/web"]'
expect_match "... the request reached web's app through its sidecar (mTLS as shop/web)" \
    "$(cat "$TMP/webapp/all.bin")" \
    $'^GET /x\\?y=1 HTTP/1.1\r\n.*host: web.shop:80\r\n.*x-forwarded-client-cert: By=spiffe://cluster.local/ns/shop/sa/web;URI=spiffe://cluster.local/ns/shop/sa/client\r\n'
s0=$(sent)
expect_eq "a second request for web.shop:80: 200" "$(send "$LW" "web.shop:80")" "HTTP/1.1 200 OK ok"
expect_eq "... answered from the cache: no new request to discovery" "$(sent)" "$s0"
read -r c1 t1 <<<"$(timed_h "$LW" web.shop.svc:80)"
read -r c2 t2 <<<"$(timed_h "$LW" web.shop.svc:80)"
expect_eq "web.shop.svc:80 (the same Service by its other name): 200, twice" "$c1 $c2" "200 200"
echo "   measured (curl time_total, $REMORA_BUILD): first request ${t1}s (a Host lookup), second ${t2}s (a hit)"
expect_eq "Host legacy.shop:80 (a plaintext Service, none of its endpoints at this address): 502" \
    "$(send "$LW" "legacy.shop:80")" "$(refused "legacy.shop:80")"
expect_match "... the log says why" "$(cat "$TMP/proxy.log")" \
    "egress: Host legacy.shop:80 is shop/legacy in the registry, but the connection goes to 127.0.0.6:$WEBP, not one of its endpoints"
expect_eq "Host nosuch.shop:80 (no such Service): 502 naming it" "$(send "$LW" "nosuch.shop:80")" \
    "$(refused "nosuch.shop:80")"
expect_eq "/destinations: svc.ns-shaped Hosts were asked about, a.b.wild.example (no Service's shape) never" \
    "$(jq -c '[.destinations[].destination | select(test("example"))] | sort' <<<"$(curl -s "$A/destinations")")" \
    "[\"allowed.example:$APPO\",\"allowed.example:9999\",\"ghost.example:$APPO\",\"unlisted.example:$APPO\",\"wild.example:$APPO\"]"

# ---- the counter -----------------------------------------------------------------------------
m=$(curl -s "$A/metrics")
expect_eq "remora_egress_total: allowed 10 (6 HTTP, 4 TLS), refused 14 (5 HTTP, 3 TLS, legacy, nosuch, 4 by DNS)" \
    "$(grep '^remora_egress_total' <<<"$m" | sort | tr '\n' ' ')" \
    'remora_egress_total{decision="allowed"} 10 remora_egress_total{decision="passthrough"} 0 remora_egress_total{decision="refused"} 14 '
expect_eq "remora_egress_refused_dns_total: 4 (2 HTTP to 127.0.0.8, ghost.example, 1 TLS)" \
    "$(sed -n 's/^remora_egress_refused_dns_total //p' <<<"$m")" 4
# names checked: allowed.example (a miss, then hits), a.b.wild.example, tls-ok.example, x.tlswild.example,
# fresh.wild.example (each a miss first), ghost.example (a miss, no address): 6 look-ups, 5 with addresses
expect_eq "remora_egress_resolve_*: 6 misses, 5 answers with addresses and 1 without, nothing queued" \
    "$(grep -E '^remora_egress_resolve_(asks_total\{result="miss"\}|answers_total|queued|names)' <<<"$m" | sort | tr '\n' ' ')" \
    'remora_egress_resolve_answers_total{result="addresses"} 5 remora_egress_resolve_answers_total{result="none"} 1 remora_egress_resolve_asks_total{result="miss"} 6 remora_egress_resolve_names 6 remora_egress_resolve_queued 0 '
stop_pid "$PROXY_PID"
expect_eq "proxy exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "proxy: sanitizers clean" "$TMP/proxy.log"
stop_pid "$WEBSC_PID"
expect_sanitizers_clean "web sidecar: sanitizers clean" "$TMP/websc.log"

# ---- egress_verify_names: false: the name is believed as written --------------------------------
jq '.egress_verify_names = "no"' "$TMP/proxy.json" >"$TMP/bad.json"
out=$("$REAL_PROXY" --check-config -c "$TMP/bad.json" 2>&1) && fail "egress_verify_names \"no\" is refused"
expect_match "egress_verify_names \"no\": refused, the error names the key" "$out" "egress_verify_names"
ADMIN_PORT=$(free_port)
jq --arg a "127.0.0.1:$ADMIN_PORT" '.egress_verify_names = false | .admin.address = $a' "$TMP/proxy.json" \
    >"$TMP/off.json"
start_proxy off "$TMP/off.json" || finish
w0=$(size "$TMP/wrong/all.bin")
expect_eq "egress_verify_names false: Host allowed.example:$APPO to 127.0.0.8 is let out, 200" \
    "$(send "$LX" "allowed.example:$APPO")" "HTTP/1.1 200 OK ok"
expect_eq "... what reached 127.0.0.8, byte for byte" \
    "$(exact_req "$TMP/wrong/conn-$(find "$TMP/wrong" -name 'conn-*.bin' | wc -l).bin" "allowed.example:$APPO")" match
check "... and it was not asked of DNS (only ghost.example was, earlier)" test "$(sort -u "$TMP/dns.q")" = ghost.example
stop_pid "$PROXY_PID"
expect_eq "proxy (egress_verify_names false) exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "proxy (egress_verify_names false): sanitizers clean" "$TMP/off.log"

# ---- a Host lookup that gets no answer: bounded, cancelled by the client, body held ----------
# A discovery service that answers addresses (404) and holds every lookup by name.
cat "$D/srv.pem" "$D/int.pem" >"$D/srv-chain.pem"
bg slowdisc python3 "$REMORA_ROOT/test/tools/slow_discovery.py" --cert "$D/srv-chain.pem" \
    --key "$D/srv-key.pem" --log "$TMP/slowdisc.req"
wait_until 5 listen_port "$TMP/slowdisc.log" || { fail "slow discovery starts"; finish; }
SLOWP=$LISTEN_PORT
ADMIN_PORT=$(free_port); LS=$(free_port)
disc_client slow "[$(outbound out "$LS" "127.0.0.4:$APPO")]" "{\"outbound_policy\": \"registry_only\",
    \"discovery\": {\"address\": \"127.0.0.1:$SLOWP\", \"lookup_timeout_ms\": 1500},
    \"egress_allow\": [\"held.shop:$APPO\", \"*.slowdns.example:$APPO\", \"*.late.example:$APPO\"]}"
start_proxy slow "$TMP/slow.json" || finish
A=http://127.0.0.1:$ADMIN_PORT
unavailable() { curl -s "$A/metrics" | sed -n 's/^remora_discovery_lookups_total{result="unavailable"} //p'; }
n0=$(size "$TMP/out/all.bin")
# the client sends its request, waits until the lookup by name is asked, and goes away (a
# reset: a half-close would still wait for the answer, as HTTP/1.1 allows)
timeout 20 python3 -c '
import socket, struct, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
s.sendall(b"GET /gone HTTP/1.1\r\nHost: gone.shop:80\r\n\r\n")
end = time.time() + 10
while time.time() < end and b"host=gone.shop" not in open(sys.argv[2], "rb").read():
    time.sleep(0.05)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()' "$LS" "$TMP/slowdisc.req"
check "the lookup of gone.shop:80 was asked" grep -q 'host=gone.shop%3A80' "$TMP/slowdisc.req"
sleep 2.5 # past lookup_timeout_ms (1500): a waiter left behind would time out now
expect_eq "the client went away: its lookup was cancelled (no waiter timed out)" "$(unavailable)" 0
expect_eq "... and nothing reached the app" "$(size "$TMP/out/all.bin")" "$n0"
t0=${EPOCHREALTIME/./}
expect_eq "Host slow.shop:80, no answer: 502 naming it once lookup_timeout_ms passed" \
    "$(send "$LS" slow.shop:80)" "$(refused "slow.shop:80")"
ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
check "... after the bound, not long after (${ms} ms; lookup_timeout_ms 1500)" test "$ms" -ge 1400 -a "$ms" -lt 10000
expect_eq "... one waiter timed out" "$(unavailable)" 1
# post PORT PATH HOST BODY: POST PATH with Host HOST and BODY through the proxy; prints the
# first line of what came back
post() {
    printf 'POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s' "$2" "$3" "${#4}" "$4" |
        timeout 20 python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
s.sendall(sys.stdin.buffer.read())
print(s.recv(4096).split(b"\r\n")[0].decode())' "$1"
}
# posted FILE PATH HOST BODY [last]: "match" when FILE holds exactly that POST as the proxy
# forwards it (field names lower-cased, its traceparent and x-request-id in any place), from
# the file's first byte (with "last": its last POST PATH, a kept-alive connection), else the bytes
posted() {
    python3 -c '
import re, sys
data, path, host, body_want = open(sys.argv[1], "rb").read(), sys.argv[2].encode(), sys.argv[3].encode(), sys.argv[4].encode()
if sys.argv[5:] == ["last"]:
    data = data[data.rfind(b"POST " + path + b" "):]
head, _, body = data.partition(b"\r\n\r\n")
lines = head.split(b"\r\n")
rest = sorted(l for l in lines[1:] if not re.match(rb"(traceparent|x-request-id): ", l))
print("match" if lines[0] == b"POST " + path + b" HTTP/1.1" and body == body_want and
      rest == [b"content-length: %d" % len(body_want), b"host: " + host] else repr(head + body))' "$@"
}
# a body sent while the lookup waits is held, then forwarded (held.shop is listed)
expect_eq "POST with its body during the wait (held.shop listed): 200" \
    "$(post "$LS" /held "held.shop:$APPO" "hello world")" "HTTP/1.1 200 OK"
last=$TMP/out/conn-$(find "$TMP/out" -name 'conn-*.bin' | wc -l).bin # numbered from 1
expect_eq "... the app got the request and the body that waited, byte for byte" \
    "$(posted "$last" /held "held.shop:$APPO" "hello world")" match
check "the proxy is alive" alive "$PROXY_PID"
# a listed name its nameserver answers 400 ms late: the request waits, its body held, then forwarded
expect_eq "POST to api.late.example (resolved 400 ms late): 200" \
    "$(post "$LS" /late "api.late.example:$APPO" "hello late")" "HTTP/1.1 200 OK"
check "... its name was asked of the nameserver" grep -qx api.late.example "$TMP/dns.q"
last=$TMP/out/conn-$(find "$TMP/out" -name 'conn-*.bin' | wc -l).bin # a kept-alive one: its last request
expect_eq "... the app got the request and the body that waited, byte for byte" \
    "$(posted "$last" /late "api.late.example:$APPO" "hello late" last)" match
# a listed name whose nameserver never answers: refused once lookup_timeout_ms passed
n0=$(size "$TMP/out/all.bin")
t0=${EPOCHREALTIME/./}
expect_eq "Host api.slowdns.example:$APPO, the resolver silent: 502 once lookup_timeout_ms passed" \
    "$(send "$LS" "api.slowdns.example:$APPO")" \
    "$(dnsref "127.0.0.4:$APPO" api.slowdns.example "no answer from the resolver in time")"
ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
check "... after the bound, not long after (${ms} ms; lookup_timeout_ms 1500)" test "$ms" -ge 1400 -a "$ms" -lt 10000
check "... the name was asked of the nameserver" grep -qx api.slowdns.example "$TMP/dns.q"
expect_eq "... nothing reached the app" "$(size "$TMP/out/all.bin")" "$n0"
# a client that goes away (a reset) 300 ms into the wait for its name: the wait is dropped
# (the sanitizers at exit would see a wait left behind firing on a freed stream)
timeout 20 python3 -c '
import socket, struct, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
s.sendall(b"GET /gone HTTP/1.1\r\nHost: gone.slowdns.example:" + sys.argv[2].encode() + b"\r\n\r\n")
time.sleep(0.3)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()' "$LS" "$APPO"
sleep 1.5 # past lookup_timeout_ms
check "a client that went away mid-wait: the proxy is alive" alive "$PROXY_PID"
expect_eq "... and nothing reached the app" "$(size "$TMP/out/all.bin")" "$n0"
# SIGTERM while a request waits for its Host lookup: it is answered within the drain
send "$LS" wait.shop:80 >"$TMP/wait.out" &
WAITER=$!
check "the lookup of wait.shop:80 was asked" wait_until 10 grep -q 'host=wait.shop' "$TMP/slowdisc.req"
stop_pid "$PROXY_PID"
wait "$WAITER"
expect_eq "SIGTERM during a Host lookup: the request still gets its answer" "$(cat "$TMP/wait.out")" \
    "$(refused "wait.shop:80")"
expect_eq "proxy (slow discovery) exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "proxy (slow discovery): sanitizers clean" "$TMP/slow.log"
finish
