#!/usr/bin/env bash
# A discovered Service is balanced per request over its endpoints (issue 18;
# docs/routes.md "Services"): the real injector's discovery service over
# mTLS, fed by the fake API server, and an outbound proxy whose listeners go
# to ClusterIPs nothing listens on (on loopback the listener's upstream
# stands for the original destination). shop/web has three endpoints: two
# meshed pods (inbound sidecars with certificates of shop/web, in front of
# their apps) and one unmeshed pod (its app directly).
#  - requests spread over all three (counted at each app); the unmeshed app
#    gets the request as the app sent it, in plaintext HTTP/1.1;
#  - opaque TCP: one endpoint per connection, least connections (2/2/2);
#  - a terminating endpoint gets no new request;
#  - an endpoint removed (and then its app stopped) during a load fails no request;
#  - a meshed pod answered by another workload's certificate: 503 naming both
#    identities, its app sees nothing;
#  - a routes-file entry {"match": {"service": "shop/flaky"}} overrides the
#    defaults (one try on a 503 -> three tries on three endpoints);
#  - a Service port whose protocol is "tcp" skips detection: a server-first
#    app's greeting comes at once (the same app behind a port of unknown
#    protocol: after detect_timeout_ms of silence); protocol "http2": an
#    unmeshed endpoint gets h2c.
#  - locality from discovery: a second client proxy without "cluster", whose
#    POD_IP is an endpoint in zone z1, learns z1 (/clusters "zone_source":
#    "discovery") and sends every request to z1's endpoints while they are
#    ready; with none ready, to z2's; when its pod moves to z2, to z2's only.
#    /clusters lists the Service's endpoints (zone, local, requests),
#    /metrics has their remora_endpoint_* rows.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
REC=(python3 "$REMORA_ROOT/test/tools/h1_recorder.py")

ca_pki || exit 1
for sa in client web other; do disc_workload "$sa" || exit 1; done
disc_registry || finish

SVCP=$(free_port) # the Service port (on ClusterIPs nothing listens on)
EPP=$(free_port)  # the endpoints' port (sidecars and apps on 127.0.0.1x)
pod() { disc_pod "$@"; } # NAME IP SA MESHED(true|false) APP
# service NAME CLUSTER-IP [PORT-NAME]
service() {
    ctl objects/services -X PUT --data-binary "{\"metadata\": {\"name\": \"$1\", \"namespace\": \"shop\"},
        \"spec\": {\"type\": \"ClusterIP\", \"clusterIP\": \"$2\", \"clusterIPs\": [\"$2\"],
        \"selector\": {\"app\": \"$1\"},
        \"ports\": [{\"name\": \"${3:-http}\", \"port\": $SVCP, \"targetPort\": $EPP, \"protocol\": \"TCP\"}]}}" >/dev/null
}
# slice NAME "POD:IP ..." [PORT-NAME]: the Service's EndpointSlice with these ready endpoints
slice() {
    local eps='' p
    for p in $2; do
        [[ -n $eps ]] && eps+=','
        eps+="{\"addresses\": [\"${p#*:}\"], \"conditions\": {\"ready\": true, \"serving\": true,
            \"terminating\": false}, \"targetRef\": {\"kind\": \"Pod\", \"namespace\": \"shop\",
            \"name\": \"${p%%:*}\"}, \"nodeName\": \"n1\", \"zone\": \"z1\"}"
    done
    ctl objects/endpointslices -X PUT --data-binary "{\"metadata\": {\"name\": \"$1-1\",
        \"namespace\": \"shop\", \"labels\": {\"kubernetes.io/service-name\": \"$1\"}},
        \"addressType\": \"IPv4\", \"ports\": [{\"name\": \"${3:-http}\", \"port\": $EPP, \"protocol\": \"TCP\"}],
        \"endpoints\": [$eps]}" >/dev/null
}
pod web-1 127.0.0.11 web true web
pod web-2 127.0.0.12 web true web
pod web-3 127.0.0.13 legacy false web
service web 127.0.0.50
slice web "web-1:127.0.0.11 web-2:127.0.0.12 web-3:127.0.0.13"
pod imp-0 127.0.0.14 web true imp # registered as shop/web; its sidecar will be shop/other
service imp 127.0.0.51
slice imp "imp-0:127.0.0.14"
for i in 1 2 3; do pod "flaky-$i" "127.0.0.2$i" flaky false flaky; done
service flaky 127.0.0.52
slice flaky "flaky-1:127.0.0.21 flaky-2:127.0.0.22 flaky-3:127.0.0.23"
pod banner-0 127.0.0.31 banner false banner # a server-first protocol, port "tcp-banner"
service banner 127.0.0.53 tcp-banner
slice banner "banner-0:127.0.0.31" tcp-banner
service banner2 127.0.0.54 plain # the same app, its protocol unknown: detected
slice banner2 "banner-0:127.0.0.31" plain
pod h2-0 127.0.0.41 h2 false h2svc # an unmeshed h2c app, port "http2-web": protocol http2
service h2svc 127.0.0.55 http2-web
slice h2svc "h2-0:127.0.0.41" http2-web

disc_injector || finish

# the apps: b1, b2 behind the meshed pods' sidecars, b3 the unmeshed pod itself, imp behind
# the impostor's sidecar, f1..f3 the flaky pods (always 503)
for i in 1 2; do
    mkdir -p "$TMP/b$i"
    bg "b$i" "${REC[@]}" --dir "$TMP/b$i" --response "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nb$i"
    wait_until 5 listen_port "$TMP/b$i.log" || { fail "app b$i starts"; finish; }
    eval "APP$i=$LISTEN_PORT"
done
mkdir -p "$TMP/b3" "$TMP/imp"
bg b3 "${REC[@]}" --dir "$TMP/b3" --listen "127.0.0.13:$EPP" \
    --response 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nb3'
B3=$LASTPID
wait_until 5 listen_port "$TMP/b3.log" || { fail "app b3 starts"; cat "$TMP/b3.log"; finish; }
bg imp "${REC[@]}" --dir "$TMP/imp" --response 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nimp'
wait_until 5 listen_port "$TMP/imp.log" || { fail "app imp starts"; finish; }
APPI=$LISTEN_PORT
for i in 1 2 3; do
    mkdir -p "$TMP/f$i"
    bg "f$i" "${REC[@]}" --dir "$TMP/f$i" --listen "127.0.0.2$i:$EPP" \
        --response 'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nflaky'
    wait_until 5 listen_port "$TMP/f$i.log" || { fail "app f$i starts"; finish; }
done

# the banner app: greets first ("220 ready"), then echoes one line
cat >"$TMP/banner.py" <<'PY'
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print("listening on %s:%s" % (sys.argv[1], sys.argv[2]), flush=True)
def serve(c):
    c.sendall(b"220 ready\r\n")
    data = b""
    while b"\n" not in data:
        d = c.recv(100)
        if not d: break
        data += d
    c.sendall(b"echo " + data); c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
bg h2up "$UPSTREAM" --listen "127.0.0.41:$EPP" --h2 --name h2up
wait_port "$EPP" 127.0.0.41 || { fail "h2c app starts"; cat "$TMP/h2up.log"; finish; }
bg banner python3 "$TMP/banner.py" 127.0.0.31 "$EPP"
wait_until 5 listen_port "$TMP/banner.log" || { fail "banner app starts"; cat "$TMP/banner.log"; finish; }

# the meshed pods' inbound sidecars on IP:$EPP (strict mTLS), each presenting its SA's
# certificate to the caller; imp-0's is shop/other
disc_sidecar side-web-1 web "$APP1" "127.0.0.11:$EPP" || finish
S1=$SIDE_PID
disc_sidecar side-web-2 web "$APP2" "127.0.0.12:$EPP" || finish
S2=$SIDE_PID
disc_sidecar side-imp-0 other "$APPI" "127.0.0.14:$EPP" || finish
SI=$SIDE_PID

# the client pod's proxy: outbound listeners to the three ClusterIPs
ADMIN_PORT=$(free_port); LW=$(free_port); LI=$(free_port); LF=$(free_port); LB=$(free_port); LB2=$(free_port); LH=$(free_port)
echo '{"routes": []}' >"$TMP/routes.json"
disc_client proxy "[$(outbound web "$LW" "127.0.0.50:$SVCP"), $(outbound imp "$LI" "127.0.0.51:$SVCP"),
    $(outbound flaky "$LF" "127.0.0.52:$SVCP"), $(outbound banner "$LB" "127.0.0.53:$SVCP"),
    $(outbound banner2 "$LB2" "127.0.0.54:$SVCP"), $(outbound h2svc "$LH" "127.0.0.55:$SVCP")]" \
    "{\"limits\": {\"detect_timeout_ms\": 5000}, \"routes_file\": \"$TMP/routes.json\"}"
start_proxy proxy "$TMP/proxy.json" || finish
A=http://127.0.0.1:$ADMIN_PORT

# reqs DIR: requests the app in DIR received
reqs() { [[ -f $1/all.bin ]] || { echo 0; return; }; grep -ao 'GET /' "$1/all.bin" | wc -l; }

# load PORT N THREADS OUT [PAUSE]: N GET requests over THREADS keep-alive connections, each
# thread pausing PAUSE seconds after each; writes "status body" per request to OUT, and the
# count done so far to OUT.progress
cat >"$TMP/load.py" <<'PY'
import http.client, os, sys, threading, time
port, n, k, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pace = float(sys.argv[5]) if len(sys.argv) > 5 else 0
lock = threading.Lock(); res = []; nxt = [0]
def worker():
    c = None
    while True:
        with lock:
            i = nxt[0]; nxt[0] += 1
        if i >= n:
            return
        try:
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            c.request("GET", "/load?i=%d" % i, headers={"Host": "web.shop"})
            r = c.getresponse(); body = r.read().decode(errors="replace")
            line = "%d %s" % (r.status, body.strip())
            if r.getheader("connection", "").lower() == "close":
                c.close(); c = None
        except Exception as e:
            line = "ERR %s" % e; c = None
        with lock:
            res.append(line)
            open(out + ".progress.tmp", "w").write(str(len(res)))
            os.replace(out + ".progress.tmp", out + ".progress")  # never seen half-written
        time.sleep(pace)
ts = [threading.Thread(target=worker) for _ in range(k)]
[t.start() for t in ts]; [t.join() for t in ts]
open(out, "w").write("\n".join(res) + "\n")
PY
load() { timeout 300 python3 "$TMP/load.py" "$@"; }

# 1. balanced per request over the three endpoints
load "$LW" 90 4 "$TMP/l1.out"
expect_eq "90 requests to the Service (4 at a time): all 200" "$(grep -c '^200 b[123]$' "$TMP/l1.out")" 90
c1=$(reqs "$TMP/b1"); c2=$(reqs "$TMP/b2"); c3=$(reqs "$TMP/b3")
echo "   per backend: b1 $c1, b2 $c2, b3 $c3"
expect_eq "... the apps got 90 in all" "$((c1 + c2 + c3))" 90
expect_eq "... as the client saw it too" \
    "$(grep -c ' b1$' "$TMP/l1.out") $(grep -c ' b2$' "$TMP/l1.out") $(grep -c ' b3$' "$TMP/l1.out")" \
    "$c1 $c2 $c3"
# P2C on peak-EWMA latency: of three endpoints, the one whose estimate is the highest is not
# picked until its estimate decays (no samples: time constant 2 s) or the others are busier,
# so a burst may leave one out; paced requests give it the time. Every endpoint gets some.
if [[ $c1 -eq 0 || $c2 -eq 0 || $c3 -eq 0 ]]; then
    load "$LW" 40 1 "$TMP/l1b.out" 0.1
    expect_eq "40 paced requests: all 200" "$(grep -c '^200 b[123]$' "$TMP/l1b.out")" 40
fi
d1=$(reqs "$TMP/b1"); d2=$(reqs "$TMP/b2"); d3=$(reqs "$TMP/b3")
check "... every endpoint got some (b1 $d1, b2 $d2, b3 $d3)" test "$d1" -ge 1 -a "$d2" -ge 1 -a "$d3" -ge 1
c1=$d1; c2=$d2; c3=$d3
# the unmeshed pod: plaintext HTTP/1.1, the request line and fields as the app sent them
first=$(head -c 300 "$TMP/b3/conn-1.bin")
expect_match "unmeshed endpoint: the request as the app sent it (plaintext HTTP/1.1)" "$first" \
    $'^GET /load\\?i=[0-9]+ HTTP/1.1\r\n(.*\r\n)*[Hh]ost: web.shop\r\n'
# the meshed ones: through their sidecars (mTLS, the client's identity reached the app)
expect_match "meshed endpoint: over mTLS, the app learns the caller's identity" \
    "$(head -c 2000 "$TMP/b1/all.bin")" 'x-forwarded-client-cert: By=spiffe://cluster.local/ns/shop/sa/web;URI=spiffe://cluster.local/ns/shop/sa/client'
dest=$(curl -s "$A/destinations")
expect_eq "/destinations: the Service with its three endpoints" \
    "$(jq -c --arg d "127.0.0.50:$SVCP" '[.destinations[] | select(.destination == $d) |
        .answer.kind, .answer.service, (.answer.endpoints | length)]' <<<"$dest")" '["service","shop/web",3]'

# 2. opaque TCP: one endpoint per connection, the least connected one
cat >"$TMP/tcp.py" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x00\x01TCPMARK-%d\r\n" % i)
    socks.append(s)
    time.sleep(0.3)  # one at a time: each pick sees the connections before it
time.sleep(float(sys.argv[3]))
for s in socks:
    s.close()
PY
bg tcp python3 "$TMP/tcp.py" "$LW" 6 3
TCP_PID=$LASTPID
# shellcheck disable=SC2317 # called through wait_until
tcp_seen() { [[ $(cat "$TMP"/b[123]/conn-*.bin 2>/dev/null | grep -ao 'TCPMARK-[0-9]' | sort -u | wc -l) == 6 ]]; }
check "six TCP connections reached the apps" wait_until 30 tcp_seen
t1=$(cat "$TMP"/b1/conn-*.bin | grep -ao 'TCPMARK' | wc -l)
t2=$(cat "$TMP"/b2/conn-*.bin | grep -ao 'TCPMARK' | wc -l)
t3=$(cat "$TMP"/b3/conn-*.bin | grep -ao 'TCPMARK' | wc -l)
expect_eq "TCP: one endpoint per connection, least connections (2/2/2)" "$t1/$t2/$t3" "2/2/2"
wait "$TCP_PID" 2>/dev/null

# 3. a terminating endpoint gets no new requests
ctl endpoint -X POST --data-binary '{"pod": "shop/web-1", "ready": false, "serving": true,
    "terminating": true}' >/dev/null
# shellcheck disable=SC2317 # called through wait_until
web1_terminating() { curl -s "$A/destinations" | jq -e --arg d "127.0.0.50:$SVCP" '.destinations[] |
    select(.destination == $d) | .answer.endpoints[] | select(.address | startswith("127.0.0.11:")) |
    .terminating' >/dev/null; }
check "the proxy learns web-1 is terminating" wait_until 30 web1_terminating
c1=$(reqs "$TMP/b1")
load "$LW" 30 2 "$TMP/l3.out"
expect_eq "30 requests: all 200" "$(grep -c '^200 b[23]$' "$TMP/l3.out")" 30
expect_eq "... none to the terminating endpoint" "$(reqs "$TMP/b1")" "$c1"

# 4. an endpoint removed during a load fails no request: web-3 (the busiest: plaintext is
# the fastest) leaves the slice, then its app stops
c3a=$(reqs "$TMP/b3")
bg l4 load "$LW" 300 3 "$TMP/l4.out" 0.05
L4_PID=$LASTPID
# shellcheck disable=SC2317 # called through wait_until
progress() { [[ $(cat "$TMP/l4.out.progress" 2>/dev/null || echo 0) -ge $1 ]]; }
wait_until 60 progress 60 || fail "the load makes progress"
# shellcheck disable=SC2317 # called through wait_until
b3_served() { [[ $(reqs "$TMP/b3") -gt $c3a ]]; }
wait_until 30 b3_served || fail "web-3 serves some of the load before it goes"
slice web "web-1:127.0.0.11 web-2:127.0.0.12" # web-3 goes (web-1 is ready again, not terminating)
# shellcheck disable=SC2317 # called through wait_until
web3_gone() { [[ $(curl -s "$A/destinations" | jq -r --arg d "127.0.0.50:$SVCP" '.destinations[] |
    select(.destination == $d) | [.answer.endpoints[].address] | join(" ")') == "127.0.0.11:$EPP 127.0.0.12:$EPP" ]]; }
check "the proxy learns web-3 is gone" wait_until 30 web3_gone
stop_pid "$B3" # the pod goes away once it is out of the slice
c3b=$(reqs "$TMP/b3")
at=$(cat "$TMP/l4.out.progress")
check "... while the load still ran ($at of 300 done)" test "$at" -lt 250
wait "$L4_PID"
expect_eq "300 requests while web-3 was removed and stopped: all 200" \
    "$(grep -c '^200 b[123]$' "$TMP/l4.out")" 300
grep -v '^200 ' "$TMP/l4.out" | sort | uniq -c | head -5
check "... web-3 served some of them before it went ($((c3b - c3a)))" test "$c3b" -gt "$c3a"
expect_eq "... and nothing after it was stopped" "$(grep -c '^200 b3$' "$TMP/l4.out")" "$((c3b - c3a))"
check "... web-1 is back in rotation (ready again)" test "$(reqs "$TMP/b1")" -gt "$c1"

# 5. secure naming per endpoint: shop/imp's pod is registered as shop/web, its sidecar is shop/other
ni=$(reqs "$TMP/imp")
got=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$LI/x")
expect_eq "a pod answered by another workload: 503 naming both identities" "$got" \
    "upstream mTLS handshake failed: peer is spiffe://cluster.local/ns/shop/sa/other, expected spiffe://cluster.local/ns/shop/sa/web
 503"
expect_eq "... its app saw nothing" "$(reqs "$TMP/imp")" "$ni"
tcp_imp=$(printf '\x00\x01IMPMARK\r\n' | tcp_exchange "$LI")
expect_match "... opaque TCP to it: closed, nothing answered" "$tcp_imp" '^(closed 0|error .*reset.*)$'
check "... and its app saw no TCP byte" test -z "$(cat "$TMP"/imp/*.bin 2>/dev/null | grep -ao IMPMARK)"
expect_match "... the proxy logs both identities for the connection" "$(cat "$TMP/proxy.log")" \
    'tcp conn [0-9]+: mTLS to 127.0.0.14:[0-9]+ failed: peer is spiffe://cluster.local/ns/shop/sa/other, expected spiffe://cluster.local/ns/shop/sa/web'

# 6. a routes-file entry for the Service overrides the defaults
total_f() { echo $(($(reqs "$TMP/f1") + $(reqs "$TMP/f2") + $(reqs "$TMP/f3"))); }
got=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LF/f")
expect_eq "defaults: a 503 from the Service is not retried (one try)" "$got $(total_f)" "503 1"
cat >"$TMP/routes.json" <<JSON
{"routes": [{"name": "flaky", "match": {"service": "shop/flaky"},
             "retries": {"attempts": 3, "on": ["5xx"], "backoff_base_ms": 1}}]}
JSON
curl -s -X POST "$A/routes/reload" >/dev/null
got=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LF/f")
expect_eq "\"service\" route: attempts 3 on 5xx -> three tries" "$got $(total_f)" "503 4"
check "... one on each endpoint (a retry avoids the ones that failed)" \
    test "$(reqs "$TMP/f1")" -ge 1 -a "$(reqs "$TMP/f2")" -ge 1 -a "$(reqs "$TMP/f3")" -ge 1

# 7. protocol "tcp" from discovery: no detection, the server's greeting comes at once (a
# detecting proxy would wait detect_timeout_ms, 5 s here, of client silence first)
cat >"$TMP/greet.py" <<'PY'
import socket, sys, time
t0 = time.monotonic()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
g = s.recv(100)
dt = time.monotonic() - t0
s.sendall(b"hi\n")
data = b""
while True:
    d = s.recv(100)
    if not d: break
    data += d
print("%r|%r|%.3f" % (g, data, dt))
PY
for i in 1 2; do
    IFS='|' read -r g e dt <<<"$(timeout 20 python3 "$TMP/greet.py" "$LB")"
    expect_eq "protocol tcp (connection $i): the greeting, then the echo, byte for byte" "$g $e" \
        "b'220 ready\\r\\n' b'echo hi\\n'"
    echo "   greeting after ${dt}s"
    check "... at once (< 2.5 s; detection would wait 5 s)" python3 -c "import sys; sys.exit(0 if $dt < 2.5 else 1)"
done
IFS='|' read -r g e dt <<<"$(timeout 20 python3 "$TMP/greet.py" "$LB2")"
expect_eq "the same app, protocol unknown: the greeting too" "$g $e" "b'220 ready\\r\\n' b'echo hi\\n'"
echo "   greeting after ${dt}s"
check "... only after detection's silence (>= 4 s)" python3 -c "import sys; sys.exit(0 if $dt >= 4 else 1)"

# 8. protocol http2 from discovery: the unmeshed endpoint gets h2c (the app sent HTTP/1.1)
got=$(curl -s "http://127.0.0.1:$LH/h2?x=1" | jq -c '[.name, .protocol, .path]')
expect_eq "protocol http2, unmeshed endpoint: h2c upstream" "$got" '["h2up","HTTP/2","/h2?x=1"]'

# 9. locality from discovery: shop/zoned has zn-1 (the zoned proxy's own pod) and zn-2 in z1,
# zn-3 and zn-4 in z2; all unmeshed, each app answers its name
for i in 1 2 3 4; do
    pod "zn-$i" "127.0.0.6$i" zoned false zoned
    mkdir -p "$TMP/zn$i"
    bg "zn$i" "${REC[@]}" --dir "$TMP/zn$i" --listen "127.0.0.6$i:$EPP" \
        --response "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nzn$i"
    wait_until 5 listen_port "$TMP/zn$i.log" || { fail "app zn$i starts"; finish; }
done
service zoned 127.0.0.56
# zslice "POD:IP:ZONE:READY ...": shop/zoned's EndpointSlice
zslice() {
    local eps='' p pod ip zone ready
    for p in $1; do
        IFS=: read -r pod ip zone ready <<<"$p"
        [[ -n $eps ]] && eps+=','
        eps+="{\"addresses\": [\"$ip\"], \"conditions\": {\"ready\": $ready, \"serving\": $ready,
            \"terminating\": false}, \"targetRef\": {\"kind\": \"Pod\", \"namespace\": \"shop\",
            \"name\": \"$pod\"}, \"nodeName\": \"n1\", \"zone\": \"$zone\"}"
    done
    ctl objects/endpointslices -X PUT --data-binary "{\"metadata\": {\"name\": \"zoned-1\",
        \"namespace\": \"shop\", \"labels\": {\"kubernetes.io/service-name\": \"zoned\"}},
        \"addressType\": \"IPv4\", \"ports\": [{\"name\": \"http\", \"port\": $EPP, \"protocol\": \"TCP\"}],
        \"endpoints\": [$eps]}" >/dev/null
}
zslice "zn-1:127.0.0.61:z1:true zn-2:127.0.0.62:z1:true zn-3:127.0.0.63:z2:true zn-4:127.0.0.64:z2:true"
ZADMIN=$(free_port); LZ=$(free_port)
ADMIN_PORT=$ZADMIN disc_client zoned "[$(outbound zoned "$LZ" "127.0.0.56:$SVCP")]"
export POD_IP=127.0.0.61 # as the injector sets it (downward API)
bg zoned "$PROXY" -c "$TMP/zoned.json"
ZPID=$LASTPID
unset POD_IP
wait_http "http://127.0.0.1:$ZADMIN/ready" || { fail "zoned proxy starts"; cat "$TMP/zoned.log"; finish; }
ZA=http://127.0.0.1:$ZADMIN
# shellcheck disable=SC2317 # called through wait_until
zone_is() { [[ $(curl -s "$ZA/clusters" | jq -r '"\(.zone) \(.zone_source)"') == "$1" ]]; }
check "no cluster key: the proxy learns its zone from discovery (z1)" wait_until 30 zone_is "z1 discovery"
expect_eq "... /clusters says which address it asked about" \
    "$(curl -s "$ZA/clusters" | jq -r '"\(.zone_address) \(.cluster)"')" "127.0.0.61:$LZ z1"
zreqs() { echo "$(reqs "$TMP/zn1") $(reqs "$TMP/zn2") $(reqs "$TMP/zn3") $(reqs "$TMP/zn4")"; }
load "$LZ" 40 4 "$TMP/z1.out"
expect_eq "40 requests: all 200 from z1's endpoints" "$(grep -c '^200 zn[12]$' "$TMP/z1.out")" 40
read -r n1 n2 n3 n4 <<<"$(zreqs)"
echo "   per endpoint: zn1 $n1, zn2 $n2, zn3 $n3, zn4 $n4"
expect_eq "... the apps in z1 got all 40, z2's none" "$((n1 + n2)) $n3 $n4" "40 0 0"
check "... both z1 endpoints got some" test "$n1" -ge 1 -a "$n2" -ge 1
cl=$(curl -s "$ZA/clusters")
expect_eq "/clusters: the discovered Service with its endpoints, zones, locality" \
    "$(jq -c '[.services[] | select(.service == "shop/zoned") | .route_source, .route,
        (.endpoints[] | "\(.address|split(":")[0]) \(.zone) \(.local)")]' <<<"$cl")" \
    '["discovery","service shop/zoned","127.0.0.61 z1 true","127.0.0.62 z1 true","127.0.0.63 z2 false","127.0.0.64 z2 false"]'
expect_eq "... each endpoint's requests (what the apps counted)" \
    "$(jq -r '[.services[] | select(.service == "shop/zoned") | .endpoints[].requests] | join(" ")' <<<"$cl")" \
    "$n1 $n2 0 0"
check "... with outstanding, EWMA latency, ejection, failures" jq -e '.services[] |
    select(.service == "shop/zoned") | .endpoints[0] | (.outstanding == 0) and (.latency_ewma_ms > 0)
    and (.ejected_for_ms == 0) and (.failures.connect == 0) and (.identity == null)' <<<"$cl"
m=$(curl -s "$ZA/metrics")
expect_match "/metrics: the discovered endpoint's outcomes" "$m" \
    "remora_endpoint_requests_total\\{endpoint=\"127.0.0.61:$EPP\",outcome=\"success\"\\} $n1"
expect_match "... and our zone" "$m" 'remora_proxy_zone_info\{zone="z1",source="discovery"\} 1'
# z1's endpoints not ready (the slice still puts our pod in z1): z2 serves
zslice "zn-1:127.0.0.61:z1:false zn-2:127.0.0.62:z1:false zn-3:127.0.0.63:z2:true zn-4:127.0.0.64:z2:true"
# shellcheck disable=SC2317 # called through wait_until
zready() { [[ $(curl -s "$ZA/destinations" | jq -r --arg d "127.0.0.56:$SVCP" '.destinations[] |
    select(.destination == $d) | [.answer.endpoints[] | select(.ready) | .address | split(":")[0]] |
    join(" ")') == "$1" ]]; }
check "the proxy learns z1's endpoints are not ready" wait_until 30 zready "127.0.0.63 127.0.0.64"
load "$LZ" 20 2 "$TMP/z2.out"
expect_eq "z1 has no endpoint: 20 requests, all 200 from z2's" "$(grep -c '^200 zn[34]$' "$TMP/z2.out")" 20
read -r m1 m2 m3 m4 <<<"$(zreqs)"
expect_eq "... as the apps counted" "$((m1 - n1)) $((m2 - n2)) $((m3 + m4))" "0 0 20"
expect_eq "... our zone is still z1" "$(curl -s "$ZA/clusters" | jq -r .zone)" z1
# our pod moves to z2 (and zn-3, zn-4 to z1, zn-2 to z2, all ready): we follow, z2 is zn-1 and zn-2
zslice "zn-1:127.0.0.61:z2:true zn-2:127.0.0.62:z2:true zn-3:127.0.0.63:z1:true zn-4:127.0.0.64:z1:true"
check "its pod moved: the proxy re-learns its zone (z2)" wait_until 30 zone_is "z2 discovery"
check "... and the Service's four endpoints are ready" wait_until 30 zready \
    "127.0.0.61 127.0.0.62 127.0.0.63 127.0.0.64"
load "$LZ" 20 2 "$TMP/z3.out"
expect_eq "20 requests: all 200 from the endpoints now in z2" "$(grep -c '^200 zn[12]$' "$TMP/z3.out")" 20
read -r k1 k2 k3 k4 <<<"$(zreqs)"
expect_eq "... as the apps counted (z1's now: none)" "$((k1 + k2 - m1 - m2)) $((k3 + k4 - m3 - m4))" "20 0"
alive "$ZPID" || fail "the zoned proxy is alive"
stop_pid "$ZPID"
expect_sanitizers_clean "zoned proxy: sanitizers clean" "$TMP/zoned.log"

alive "$PROXY_PID" || fail "the proxy is alive"
stop_pid "$PROXY_PID"
expect_sanitizers_clean "proxy: sanitizers clean" "$TMP/proxy.log"
stop_pid "$S1"; stop_pid "$S2"; stop_pid "$SI"
expect_sanitizers_clean "sidecars: sanitizers clean" \
    <(cat "$TMP/side-web-1.log" "$TMP/side-web-2.log" "$TMP/side-imp-0.log")
finish
