#!/usr/bin/env bash
# HTTP/2 conformance with h2spec (RFC 7540/7541/9113 cases, 146 of them)
# against two listeners with "downstream_protocol": "h2":
#   h2c  - plaintext, prior knowledge;
#   mtls - a strict mTLS listener, reached through stunnel4 presenting a mesh
#          workload certificate (h2spec speaks TLS but has no client
#          certificate, which a strict listener refuses).
# Every case is one PASS:/FAIL: line, read from h2spec's JUnit XML (-j).
# h2spec is not a Debian package: it is looked for at $H2SPEC, else at
# ../shared/tools/h2spec beside the repository; without it the suite prints
# one SKIP: line.
source "$(dirname "$0")/../lib.sh"

H2SPEC=${H2SPEC:-$REMORA_ROOT/../shared/tools/h2spec}
if [[ ! -x $H2SPEC ]]; then
    echo "SKIP: h2spec not found at $H2SPEC (set H2SPEC=/path/to/h2spec; see docs/testing.md)"
    finish
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel || true)

CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
D=$TMP/pki; mkdir -p "$D"
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" >/dev/null || exit 1
wl() { "$CERTS" workload --ca-cert "$D/root.pem" --ca-key "$D/root-key.pem" --spiffe-id "$1" \
        --out-cert "$2" --out-key "$3" >/dev/null; }
wl spiffe://cluster.local/ns/shop/sa/web "$D/b.pem" "$D/b-key.pem" || exit 1
wl spiffe://cluster.local/ns/test/sa/h2spec "$D/c.pem" "$D/c-key.pem" || exit 1

start_upstream app || exit 1
APP=$UP_PORT
ADMIN_PORT=$(free_port); PC=$(free_port); PM=$(free_port); PR=$(free_port)
cat >"$TMP/proxy.json" <<JSON
{"admin": {"address": "127.0.0.1:$ADMIN_PORT"},
 "listeners": [
   {"name": "h2c", "address": "127.0.0.1:$PC", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "disabled", "downstream_protocol": "h2"},
   {"name": "mtls", "address": "127.0.0.1:$PM", "direction": "inbound",
    "upstream": "127.0.0.1:$APP", "tls": "strict", "downstream_protocol": "h2"}],
 "identity": {"trust_domain": "cluster.local", "namespace": "shop", "service_account": "web",
              "cert_file": "$D/b.pem", "key_file": "$D/b-key.pem", "bundle_file": "$D/root.pem"}}
JSON
start_proxy proxy "$TMP/proxy.json" || exit 1

# run_h2spec LABEL PORT: all cases against 127.0.0.1:PORT, one line per case
run_h2spec() {
    local label=$1 port=$2 xml=$TMP/h2spec-$1.xml
    # -o: seconds h2spec waits for an expected frame; generous under load
    timeout 270 "$H2SPEC" -h 127.0.0.1 -p "$port" -o 10 -j "$xml" >"$TMP/h2spec-$label.log" 2>&1
    if [[ ! -s $xml ]]; then
        fail "$label: h2spec wrote no report"; tail -20 "$TMP/h2spec-$label.log"
        return
    fi
    python3 - "$xml" "$label" <<'PY'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
label, n = sys.argv[2], 0
for suite in root.iter("testsuite"):
    for i, case in enumerate(suite.iter("testcase"), 1):
        n += 1
        name = "%s %s/%d %s" % (label, suite.get("package"), i, case.get("classname"))
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if case.find("skipped") is not None:
            print("FAIL: %s: skipped" % name)
        elif bad is not None:
            msg = " ".join((bad.get("message") or bad.text or "").split())
            print("FAIL: %s: %s" % (name, msg[:300]))
        else:
            print("PASS: %s" % name)
print(("PASS: %s: all 146 cases ran" if n == 146 else "FAIL: %s: %d cases ran, want 146")
      % ((label,) if n == 146 else (label, n)))
PY
}

# -- h2c --------------------------------------------------------------------------------
run_h2spec h2c "$PC"

# -- mTLS through a relay that presents a mesh certificate ----------------------------------
if [[ -z $STUNNEL ]]; then
    fail "mtls: stunnel4 is not installed (scripts/deps.sh installs it)"
else
    cat >"$TMP/stunnel.conf" <<CONF
foreground = yes
pid =
output = $TMP/stunnel-out.log
[h2spec]
client = yes
accept = 127.0.0.1:$PR
connect = 127.0.0.1:$PM
cert = $D/c.pem
key = $D/c-key.pem
CAfile = $D/root.pem
verifyChain = yes
CONF
    bg stunnel "$STUNNEL" "$TMP/stunnel.conf"
    wait_port "$PR" || fail "stunnel did not start"
    out=$(curl -s -m 30 --http2-prior-knowledge "http://127.0.0.1:$PR/through-relay")
    expect_match "mtls: a request through the relay reaches the app" "$out" '"path":"/through-relay"'
    hs=$(curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | jq .tls_handshakes)
    check "mtls: ... over a verified mTLS handshake ($hs)" test "$hs" -ge 1
    run_h2spec mtls "$PR"
    hs2=$(curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | jq .tls_handshakes)
    check "mtls: every case crossed its own mTLS handshake ($hs -> $hs2)" test $((hs2 - hs)) -ge 146
fi
# fail closed: h2spec's own TLS has no client certificate
out=$(timeout 120 "$H2SPEC" -h 127.0.0.1 -p "$PM" -t -k -o 3 generic/1 2>&1 | tail -1)
expect_match "h2spec over TLS without a client certificate is refused by the strict listener" \
    "$out" '^(Error: .*|1 tests, 0 passed, 0 skipped, 1 failed)$'
code=$(curl -s -m 10 --http2-prior-knowledge -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PM/")
expect_eq "plaintext h2c to the strict listener is refused" "$code" 000

check "proxy alive after both runs" alive "$PROXY_PID"
stop_pid "$PROXY_PID"
expect_eq "proxy exits cleanly" "$STOP_RC" 0
expect_sanitizers_clean "no sanitizer report" "$TMP/proxy.log"
finish
