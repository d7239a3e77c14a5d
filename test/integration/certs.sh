#!/usr/bin/env bash
# remora-certs end to end, checked by OpenSSL: root -> intermediate ->
# server / workload certificates verify with `openssl verify`, carry the
# extensions we promise (`openssl x509 -text`), our CSRs pass
# `openssl req -verify`, OpenSSL's CSRs, keys and CAs work with our tools,
# and usage errors are one line with exit status 2 (failures: 1).
source "$(dirname "$0")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs
ID=spiffe://cluster.local/ns/shop/sa/web
D=$TMP/pki
mkdir -p "$D"
cd "$D" || exit 1

if [[ ! -x $CERTS ]]; then fail "no binary at $CERTS"; finish; fi

# first certificate of a PEM file
first() { awk '/BEGIN CERT/{p=1} p{print} /END CERT/{exit}' "$1"; }
text() { openssl x509 -noout -text -in "$1" 2>&1; }
mode() { stat -c %a "$1"; }

# ---- making the PKI ------------------------------------------------------------
check "root" "$CERTS" root --out-cert root.pem --out-key root-key.pem --days 30
check "second root" "$CERTS" root --out-cert root2.pem --out-key root2-key.pem --cn "Next Root"
check "intermediate" "$CERTS" intermediate --ca-cert root.pem --ca-key root-key.pem \
    --out-cert int.pem --out-key int-key.pem --cn "east, cluster" --days 10
check "server" "$CERTS" server --ca-cert int.pem --ca-key int-key.pem \
    --dns remora-injector.remora-system.svc,remora-injector.remora-system.svc.cluster.local \
    --out-cert server.pem --out-key server-key.pem
check "workload" "$CERTS" workload --ca-cert int.pem --ca-key int-key.pem --root root.pem \
    --spiffe-id "$ID" --out-cert web.pem --out-key web-key.pem --ttl-seconds 600
expect_eq "root key mode" "$(mode root-key.pem)" 600
expect_eq "intermediate key mode" "$(mode int-key.pem)" 600
expect_eq "workload key mode" "$(mode web-key.pem)" 600
expect_eq "certificate mode" "$(mode web.pem)" 644
(umask 0; "$CERTS" root --out-cert root3.pem --out-key root3-key.pem)
expect_eq "key mode under umask 0" "$(mode root3-key.pem)" 600
expect_eq "workload file holds leaf + intermediate" "$(grep -c 'BEGIN CERTIFICATE' web.pem)" 2
expect_eq "server file holds leaf + intermediate" "$(grep -c 'BEGIN CERTIFICATE' server.pem)" 2
first web.pem >web-leaf.pem
first server.pem >server-leaf.pem

# ---- openssl verify ---------------------------------------------------------------
check "openssl verify workload" openssl verify -CAfile root.pem -untrusted int.pem web-leaf.pem
check "openssl verify workload as TLS client" \
    openssl verify -purpose sslclient -CAfile root.pem -untrusted int.pem web-leaf.pem
check "openssl verify workload as TLS server" \
    openssl verify -purpose sslserver -CAfile root.pem -untrusted int.pem web-leaf.pem
check "openssl verify intermediate" openssl verify -CAfile root.pem int.pem
check "openssl verify server for its name" openssl verify -purpose sslserver \
    -verify_hostname remora-injector.remora-system.svc -CAfile root.pem -untrusted int.pem \
    server-leaf.pem
if openssl verify -verify_hostname other.svc -CAfile root.pem -untrusted int.pem \
    server-leaf.pem >/dev/null 2>&1; then
    fail "openssl refuses the server cert for another name"
else
    pass "openssl refuses the server cert for another name"
fi
cat root2.pem root.pem >two-roots.pem
check "openssl verify against a two-root bundle" \
    openssl verify -CAfile two-roots.pem -untrusted int.pem web-leaf.pem
if openssl verify -CAfile root2.pem -untrusted int.pem web-leaf.pem >/dev/null 2>&1; then
    fail "openssl refuses an unrelated root"
else
    pass "openssl refuses an unrelated root"
fi
check "openssl strict X.509 checks" \
    openssl verify -x509_strict -CAfile root.pem -untrusted int.pem web-leaf.pem

# ---- extensions, as OpenSSL reads them ---------------------------------------------
t=$(text web-leaf.pem)
expect_match "workload URI SAN" "$t" "URI:$ID"
expect_match "workload EKU" "$t" "TLS Web Server Authentication, TLS Web Client Authentication"
expect_match "workload KU critical" "$t" "Key Usage: critical"$'\n'" +Digital Signature, Key Encipherment"
expect_match "workload CA:FALSE" "$t" "CA:FALSE"
expect_match "workload SKI" "$t" "Subject Key Identifier"
expect_match "workload AKI" "$t" "Authority Key Identifier"
expect_match "workload EC P-256" "$t" "NIST CURVE: P-256"
expect_match "workload signed with SHA-256" "$t" "ecdsa-with-SHA256"
nb=$(openssl x509 -noout -startdate -in web-leaf.pem | cut -d= -f2)
na=$(openssl x509 -noout -enddate -in web-leaf.pem | cut -d= -f2)
life=$(( $(date -d "$na" +%s) - $(date -d "$nb" +%s) ))
expect_eq "workload lifetime = ttl + 5 min backdating" "$life" 900
serial_len=$(openssl x509 -noout -serial -in web-leaf.pem | cut -d= -f2 | tr -d '\n' | wc -c)
expect_eq "serial is 128 bits" "$serial_len" 32
t=$(text int.pem)
expect_match "intermediate CA:TRUE pathlen 0" "$t" "CA:TRUE, pathlen:0"
expect_match "intermediate KU" "$t" "Certificate Sign, CRL Sign"
expect_match "intermediate subject keeps the comma" "$t" 'CN *= *"?east\\?, cluster'
t=$(text root.pem)
expect_match "root CA:TRUE" "$t" "CA:TRUE"
t=$(text server-leaf.pem)
expect_match "server DNS SANs" "$t" \
    "DNS:remora-injector.remora-system.svc, DNS:remora-injector.remora-system.svc.cluster.local"
expect_match "server EKU serverAuth" "$t" "TLS Web Server Authentication"
if [[ $t == *"Client Authentication"* ]]; then fail "server EKU has no clientAuth"; else
    pass "server EKU has no clientAuth"; fi
a=$(openssl x509 -noout -serial -in web-leaf.pem)
"$CERTS" workload --ca-cert int.pem --ca-key int-key.pem --spiffe-id "$ID" \
    --out-cert web2.pem --out-key web2-key.pem
b=$(first web2.pem | openssl x509 -noout -serial)
if [[ $a != "$b" ]]; then pass "serials differ"; else fail "serials differ: $a"; fi

# ---- keys match their certificates -----------------------------------------------------
pub() { openssl pkey -pubout -in "$1" 2>/dev/null; }
cpub() { openssl x509 -noout -pubkey -in "$1" 2>/dev/null; }
expect_eq "workload key matches" "$(pub web-key.pem)" "$(cpub web-leaf.pem)"
expect_eq "server key matches" "$(pub server-key.pem)" "$(cpub server-leaf.pem)"

# ---- CSRs both ways ------------------------------------------------------------------------
check "csr" "$CERTS" csr --key web-key.pem --spiffe-id "$ID" --out web.csr
check "openssl req -verify on our CSR" openssl req -verify -noout -in web.csr
expect_match "our CSR's SAN as OpenSSL reads it" "$(openssl req -noout -text -in web.csr)" "URI:$ID"
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out ossl-key.pem
check "csr with an OpenSSL PKCS#8 key" "$CERTS" csr --key ossl-key.pem --spiffe-id "$ID" --out ossl1.csr
check "openssl req -verify (PKCS#8 key)" openssl req -verify -noout -in ossl1.csr
openssl req -new -key ossl-key.pem -subj "/CN=web" -addext "subjectAltName=URI:$ID" \
    -out ossl.csr 2>/dev/null
out=$("$CERTS" inspect --json ossl.csr)
expect_match "OpenSSL's CSR parses and verifies" "$out" "\"spiffe_id\": \"$ID\""
openssl req -new -key ossl-key.pem -subj "/CN=web" \
    -addext "subjectAltName=URI:$ID,URI:spiffe://cluster.local/ns/shop/sa/admin" -out two.csr 2>/dev/null
out=$("$CERTS" inspect two.csr 2>&1); rc=$?
expect_eq "CSR with two URIs refused" "$rc" 1
expect_match "CSR with two URIs: reason" "$out" "2 URIs"
openssl req -new -key ossl-key.pem -subj "/CN=web" -out nosan.csr 2>/dev/null
out=$("$CERTS" inspect nosan.csr 2>&1)
expect_match "CSR without SAN refused" "$out" "no extensionRequest"
openssl genrsa -out rsa-key.pem 2048 2>/dev/null
openssl req -new -key rsa-key.pem -subj "/CN=web" -addext "subjectAltName=URI:$ID" \
    -out rsa.csr 2>/dev/null
expect_match "RSA-2048 CSR accepted" "$("$CERTS" inspect rsa.csr 2>&1)" "spiffe_id: +$ID"

# ---- an external CA (OpenSSL-made, PrintableString country, comma in O) ---------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 5 \
    -subj "/C=US/O=Example, Inc./CN=External Root" -keyout ext-key.pem -out ext.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
check "intermediate under an OpenSSL root" "$CERTS" intermediate --ca-cert ext.pem \
    --ca-key ext-key.pem --out-cert ext-int.pem --out-key ext-int-key.pem
check "workload under it" "$CERTS" workload --ca-cert ext-int.pem --ca-key ext-int-key.pem \
    --root ext.pem --spiffe-id "$ID" --out-cert ext-web.pem --out-key ext-web-key.pem
first ext-web.pem >ext-web-leaf.pem
check "openssl verify through the OpenSSL root" \
    openssl verify -x509_strict -CAfile ext.pem -untrusted ext-int.pem ext-web-leaf.pem
expect_eq "issuer name kept byte for byte" \
    "$(openssl x509 -noout -issuer -nameopt RFC2253 -in ext-int.pem)" \
    "issuer=$(openssl x509 -noout -subject -nameopt RFC2253 -in ext.pem | cut -d= -f2-)"

# ---- inspect --------------------------------------------------------------------------------
out=$("$CERTS" inspect web.pem)
expect_match "inspect: SPIFFE ID" "$out" "spiffe_id: +$ID"
expect_match "inspect: CA flag of the intermediate" "$out" "ca: +true \(pathlen 0\)"
expect_match "inspect: leaf is not a CA" "$out" "ca: +false"
out=$("$CERTS" inspect --json server.pem)
expect_match "inspect --json: DNS names" "$out" '"remora-injector.remora-system.svc"'
expect_match "inspect --json: serial" "$out" '"serial": "[0-9a-f]{32}"'
python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[0]["ext_key_usage"]==["serverAuth"]' \
    <<<"$out" && pass "inspect --json is JSON" || fail "inspect --json is JSON"

# ---- errors: one line, naming the flag or file, status 2 (usage) or 1 ------------------------
err_case() { # NAME WANT-RC REGEX CMD...
    local name=$1 want=$2 re=$3; shift 3
    local out rc
    out=$("$@" 2>&1 >/dev/null); rc=$?
    if [[ $rc -eq $want && $(wc -l <<<"$out") -eq 1 && $out =~ $re ]]; then pass "$name"
    else fail "$name: rc=$rc out='$out'"; fi
}
err_case "missing flag" 2 "--out-key is required" "$CERTS" root --out-cert x.pem
err_case "unknown flag" 2 "unknown flag --colour" "$CERTS" root --colour --out-cert x.pem
err_case "flag of another subcommand" 2 "--dns does not apply" "$CERTS" root --dns a --out-cert x
err_case "bad number" 2 "--days: expected a whole number" "$CERTS" root --days 0 \
    --out-cert x.pem --out-key x-key.pem
err_case "bad ttl" 2 "--ttl-seconds" "$CERTS" workload --ca-cert int.pem --ca-key int-key.pem \
    --spiffe-id "$ID" --out-cert x --out-key y --ttl-seconds 12x
err_case "no subcommand" 2 "subcommand is required" "$CERTS"
err_case "unknown subcommand" 2 "unknown subcommand" "$CERTS" frobnicate
err_case "missing file" 1 "nope.pem: No such file" "$CERTS" intermediate --ca-cert nope.pem \
    --ca-key root-key.pem --out-cert x --out-key y
err_case "bad SPIFFE ID" 1 "--spiffe-id: .*trailing|--spiffe-id: .*service account" \
    "$CERTS" workload --ca-cert int.pem --ca-key int-key.pem --spiffe-id "$ID/" --out-cert x --out-key y
err_case "key does not match" 1 "root-key.pem.*does not match" "$CERTS" workload \
    --ca-cert int.pem --ca-key root-key.pem --spiffe-id "$ID" --out-cert x --out-key y
err_case "leaf as CA" 1 "web.pem: not a CA" "$CERTS" workload --ca-cert web.pem \
    --ca-key web-key.pem --spiffe-id "$ID" --out-cert x --out-key y
err_case "wrong root" 1 "does not chain to a root in root2.pem" "$CERTS" workload \
    --ca-cert int.pem --ca-key int-key.pem --root root2.pem --spiffe-id "$ID" --out-cert x --out-key y
err_case "bad DNS name" 1 "--dns: DNS name" "$CERTS" server --ca-cert int.pem --ca-key int-key.pem \
    --dns 'bad_name!' --out-cert x --out-key y
err_case "empty DNS name" 2 "--dns: empty name" "$CERTS" server --ca-cert int.pem \
    --ca-key int-key.pem --dns 'a,,b' --out-cert x --out-key y
err_case "unwritable output" 1 "/nonexistent/k.pem" "$CERTS" root --out-cert x.pem \
    --out-key /nonexistent/k.pem
err_case "inspect a key" 1 "root-key.pem: no PEM certificate" "$CERTS" inspect root-key.pem
[[ ! -e x.pem && ! -e y ]] && pass "nothing written on failure" || fail "nothing written on failure"
check "--help" "$CERTS" --help
expect_match "--version" "$("$CERTS" --version)" "^remora-certs [0-9]"

finish
