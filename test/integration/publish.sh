#!/usr/bin/env bash
# `remora-injector publish-ca-root` against test/tools/fake_apiserver.py over
# HTTPS on loopback (docs/ca.md, "Publishing the root"):
#  - labelled namespaces get remora-ca-root with the exact root and our labels;
#    unlabelled ones, kube-system, remora-system and Terminating ones do not
#    with --selector remora-injection=enabled; by default (remora-injection!=disabled)
#    every namespace but the opted-out ones does;
#  - a second run writes nothing; a stale ConfigMap is merge-patched (its
#    other keys kept); a deleted one is recreated; list pages are followed;
#    a 409 race is retried; a namespace deleted mid-run is skipped;
#  - failures name what failed and still let the other namespaces through:
#    401, a 500 in one namespace, a non-HTTP answer, an answer slower than
#    --timeout-ms, a server that never handshakes, a refused port, a body
#    past 16 MiB, a certificate not from --ca-file or for another name;
#  - bad --root files and bad flags (test/data/publish/usage.tsv); the in-cluster
#    default URL from KUBERNETES_SERVICE_HOST/PORT; --interval picks up a newly
#    labelled namespace and stops on SIGTERM with 0; no sanitizer report anywhere.
# refresh-jwks: publish_jwks.sh; the CronJobs in the manifests: injector_manifests.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
CERTS=$REMORA_ROOT/$REMORA_BUILD/remora-certs

# ---- PKI: the mesh root (what is published), the API server's CA and certs (fake_pki) ---------
fake_pki || exit 1
"$CERTS" root --out-cert "$D/root.pem" --out-key "$D/root-key.pem" --cn "mesh root" || exit 1
"$CERTS" root --out-cert "$D/root2.pem" --out-key "$D/root2-key.pem" --cn "mesh root 2" || exit 1

# ---- the fake API server ---------------------------------------------------------------
LAB='{"remora-injection": "enabled"}'
jq -n --arg tok "$FAKE_TOKEN" --argjson lab "$LAB" '{
  token: $tok,
  namespaces: {shop: {labels: $lab}, pay: {labels: $lab}, web: {labels: $lab},
               other: {labels: {team: "x"}}, disabled: {labels: {"remora-injection": "disabled"}},
               "kube-system": {labels: $lab}, "remora-system": {labels: $lab},
               dying: {labels: $lab, phase: "Terminating"}},
  configmaps: {pay: {"remora-ca-root": {apiVersion: "v1", kind: "ConfigMap",
      metadata: {name: "remora-ca-root", namespace: "pay"},
      data: {"root.pem": "stale root", "extra.txt": "keep me"}}}}}' >"$TMP/state.json"
fake_start fake api
PORT=$FPORT

NRUN=0
# publish [ARGS...]: one run; its output in $TMP/run-N.log (LOG), exit status in RC,
# wall time in MS
publish() {
    NRUN=$((NRUN + 1))
    LOG=$TMP/run-$NRUN.log
    local t0=$(date +%s%N)
    "$INJECTOR" publish-ca-root --root "$D/root.pem" --api "$API" --token-file "$TMP/token" \
        --ca-file "$D/apica.pem" --timeout-ms 3000 ${SEL:---selector remora-injection=enabled} "$@" >"$LOG" 2>&1
    RC=$?
    MS=$((($(date +%s%N) - t0) / 1000000))
}
# the root as published in NS, byte for byte
got_root() { state ".configmaps[\"$1\"][\"remora-ca-root\"].data[\"root.pem\"]" | jq -j . 2>/dev/null; }
same_root() { cmp -s <(got_root "$1") "${2:-$D/root.pem}"; }

# ---- first run ------------------------------------------------------------------------
publish
expect_eq "first run: exit 0" "$RC" 0
for ns in shop web; do
    check "$ns: remora-ca-root created with the exact root" same_root "$ns"
    expect_match "$ns: logged as created" "$(grep " $ns: " "$LOG")" "publish-ca-root: $ns: created ConfigMap remora-ca-root \(root.pem\)"
done
expect_eq "created ConfigMap carries the part-of and managed-by labels, and nothing else" \
    "$(state '.configmaps.shop["remora-ca-root"] | [.metadata.labels, (.data | keys)]')" \
    '[{"app.kubernetes.io/part-of":"remora","app.kubernetes.io/managed-by":"remora-injector"},["root.pem"]]'
check "pay (stale): patched to the exact root" same_root pay
expect_eq "pay: its other key kept" "$(state '.configmaps.pay["remora-ca-root"].data["extra.txt"]')" '"keep me"'
expect_eq "pay: the write was a merge patch of data[root.pem] alone" \
    "$(ctl requests | jq -c '[.[] | select(.method == "PATCH") | [.path, .content_type, (.body | fromjson | [keys, (.data | keys)])]]')" \
    '[["/api/v1/namespaces/pay/configmaps/remora-ca-root","application/merge-patch+json",[["data"],["root.pem"]]]]'
expect_match "pay: logged as updated" "$(grep ' pay: ' "$LOG")" 'pay: updated ConfigMap remora-ca-root \(root.pem changed; other keys kept\)'
expect_eq "unlabelled, disabled, kube-system, remora-system and Terminating namespaces get nothing" \
    "$(state '.configmaps | keys')" '["pay","shop","web"]'
expect_match "kube-system and remora-system skipped by name, dying as Terminating" \
    "$(grep -c -E 'kube-system: skipped \(never meshed|remora-system: skipped \(never meshed|dying: skipped \(Terminating\)' "$LOG")" '^3$'
expect_eq "the list asked for the selector, url-encoded, with a page limit" \
    "$(ctl requests | jq -r '[.[] | select(.path | startswith("/api/v1/namespaces?"))][0].path')" \
    "/api/v1/namespaces?labelSelector=remora-injection%3Denabled&limit=500"
expect_match "summary line" "$(tail -1 "$LOG")" \
    '6 namespaces match remora-injection=enabled: 2 created, 1 updated, 0 unchanged, 3 skipped, 0 failed \(.*root.pem: 1 certificate, [0-9]+ bytes; 127\.0\.0\.1:'"$PORT"'; [0-9]+ ms\)'

expect_eq "every request: Host 127.0.0.1:PORT, User-Agent remora-injector/<version> (publish-ca-root)" \
    "$(ctl requests | jq -r '[.[] | .host + " " + .user_agent] | unique | join(",")')" \
    "127.0.0.1:$PORT remora-injector/$("$INJECTOR" --version | cut -d' ' -f2) (publish-ca-root)"
expect_eq "TLS: one full handshake, then every connection resumes its session" \
    "$(ctl requests | jq -c '[.[] | .resumed] | [.[0], (.[1:] | all), length > 5]')" '[false,true,true]'

# ---- second run: nothing to write -------------------------------------------------------
ctl requests -X DELETE >/dev/null
publish
expect_eq "second run: exit 0" "$RC" 0
expect_eq "second run: no POST or PATCH" "$(writes)" 0
expect_eq "second run: shop, pay, web unchanged" "$(grep -c -E ' (shop|pay|web): unchanged$' "$LOG")" 3

# ---- the default selector: every namespace but the opted-out ones -----------------------
# (a pod can opt in by its own label in an unlabelled namespace, and needs the root there too)
ctl requests -X DELETE >/dev/null
SEL=" " publish
expect_eq "default selector: exit 0, the unlabelled namespace 'other' gets the root too" \
    "$RC $(state -r '.configmaps | keys | join(",")')" "0 other,pay,shop,web"
check "other: the exact root" same_root other
expect_eq "... the list asked for remora-injection!=disabled" \
    "$(ctl requests | jq -r '[.[] | select(.path | startswith("/api/v1/namespaces?"))][0].path')" \
    "/api/v1/namespaces?labelSelector=remora-injection%21%3Ddisabled&limit=500"
expect_match "... disabled is not listed; kube-system, remora-system, dying skipped" "$(tail -1 "$LOG")" \
    '7 namespaces match remora-injection!=disabled: 1 created, 0 updated, 3 unchanged, 3 skipped, 0 failed'
put_state "$(state 'del(.configmaps.other) | {configmaps}')"

# ---- stale, deleted, root rotation -----------------------------------------------------
put_state "$(state '.configmaps.shop["remora-ca-root"].data["root.pem"] = "old root" |
    .configmaps.shop["remora-ca-root"].data["other.pem"] = "x" | del(.configmaps.web) | {configmaps}')"
ctl requests -X DELETE >/dev/null
publish
expect_eq "stale + deleted: exit 0" "$RC" 0
check "shop: stale root replaced" same_root shop
expect_eq "shop: other.pem kept" "$(state '.configmaps.shop["remora-ca-root"].data["other.pem"]')" '"x"'
check "web: deleted ConfigMap recreated" same_root web
expect_eq "... with one PATCH (shop) and one POST (web)" \
    "$(ctl requests | jq -c '[.[] | select(.method != "GET") | .method + " " + .path]')" \
    '["PATCH /api/v1/namespaces/shop/configmaps/remora-ca-root","POST /api/v1/namespaces/web/configmaps"]'
cat "$D/root.pem" "$D/root2.pem" >"$D/bundle.pem"
publish --root "$D/bundle.pem"
expect_eq "a two-root bundle (root rotation) is published to every namespace" \
    "$RC:$(grep -c 'updated ConfigMap' "$LOG"):$(grep -c '2 certificates' "$LOG")" "0:3:1"
check "... byte for byte" same_root pay "$D/bundle.pem"
publish
expect_eq "... and back to one root" "$RC:$(grep -c 'updated ConfigMap' "$LOG")" "0:3"

# ---- pagination, a 409 race, a namespace deleted mid-run -----------------------------------
put_state "$(state --argjson lab "$LAB" '.namespaces += {p1: {labels: $lab}, p2: {labels: $lab},
    p3: {labels: $lab}, race: {labels: $lab}, vanish: {labels: $lab}} | .max_page = 2 |
    .faults = [{match: "^POST /api/v1/namespaces/race/", kind: "status", status: 409,
                reason: "AlreadyExists", message: "configmaps \"remora-ca-root\" already exists", times: 1},
               {match: "^GET /api/v1/namespaces/vanish/configmaps", kind: "delete_namespace", ns: "vanish"}] |
    {namespaces, max_page, faults}')"
ctl requests -X DELETE >/dev/null
publish
expect_eq "pages of 2: exit 0" "$RC" 0
expect_eq "every page was listed (11 namespaces, 2 a page: 6 list requests, continue tokens passed on)" \
    "$(ctl requests | jq -c '[.[] | select(.path | startswith("/api/v1/namespaces?"))] |
        [length, ([.[1:][] | .path | test("&continue=[A-Za-z0-9%_-]+")] | all)]')" '[6,true]'
for ns in p1 p2 p3; do check "$ns (a later page): created" same_root "$ns"; done
check "race: a 409 on POST is retried (GET again, POST again) and created" same_root race
expect_eq "... two POSTs for it" "$(ctl requests | jq '[.[] | select(.method == "POST" and (.path | contains("/race/")))] | length')" 2
expect_match "vanish: deleted mid-run is skipped, not failed" "$(grep ' vanish: ' "$LOG")" 'vanish: skipped \(the namespace was deleted\)'
put_state '{"max_page": null, "faults": []}'

# ---- failures -------------------------------------------------------------------------------
publish --token-file "$TMP/bad-token"
expect_eq "bad token: exit 1" "$RC" 1
expect_match "bad token: the 401 is named with the path and the Status message" "$(cat "$LOG")" \
    'list namespaces \(selector remora-injection=enabled\): GET /api/v1/namespaces\?labelSelector=remora-injection%3Denabled&limit=500: 401 Unauthorized: Unauthorized'
publish --token-file "$TMP/no-such-token"
expect_match "missing token file: exit 1 naming it" "$RC $(cat "$LOG")" "^1 .*token: .*no-such-token"

put_state "$(state --argjson lab "$LAB" '.namespaces.late = {labels: $lab} |
    .faults = [{match: "^GET /api/v1/namespaces/pay/configmaps", kind: "status", status: 500}] | {namespaces, faults}')"
publish
expect_eq "a 500 in one namespace: exit 1" "$RC" 1
expect_match "... that namespace is reported with the path, status and message" "$(grep ' pay: ' "$LOG")" \
    'pay: error: GET /api/v1/namespaces/pay/configmaps/remora-ca-root: 500 Internal Server Error: fake-apiserver: injected failure 500'
check "... and the others are still done (late created in the same run)" same_root late
expect_match "... summary counts it" "$(tail -1 "$LOG")" '1 created, 0 updated, [0-9]+ unchanged, [0-9]+ skipped, 1 failed'

put_state '{"faults": [{"match": "^GET /api/v1/namespaces\\?", "kind": "garbage"}]}'
publish
expect_match "a non-HTTP answer: exit 1, named, at once" "$RC $MS $(cat "$LOG")" \
    '^1 [0-9]+ .*GET /api/v1/namespaces\?labelSelector=[^:]*: not a valid HTTP/1.x response: .*\(HPE_'
# the error is the parse error, not the 3 s --timeout-ms (the message above); the bound only
# catches a hang, however loaded the machine
((MS < 10000)) && pass "... in ${MS} ms, no hang" || fail "garbage answer took ${MS} ms"

put_state '{"faults": [{"match": "^GET /api/v1/namespaces/shop/configmaps", "kind": "slow", "seconds": 20}]}'
publish --timeout-ms 600
expect_eq "an answer slower than --timeout-ms: exit 1" "$RC" 1
expect_match "... named, with the bound" "$(grep ' shop: ' "$LOG")" \
    'shop: error: GET /api/v1/namespaces/shop/configmaps/remora-ca-root: read from 127\.0\.0\.1:'"$PORT"': no answer within 600 ms \(--timeout-ms\)'
expect_match "... the others still done" "$(grep -c ': unchanged$' "$LOG")" '^[1-9]'
((MS < 15000)) && pass "... the run took ${MS} ms (one 600 ms timeout, not the 20 s answer)" ||
    fail "slow answer: the run took ${MS} ms"

put_state '{"faults": [{"match": "^GET /api/v1/namespaces\\?", "kind": "huge"}]}'
publish
expect_match "a Content-Length past 16 MiB is refused before reading it" "$RC $(cat "$LOG")" \
    '^1 .*response body exceeds 16777216 bytes'
put_state '{"faults": [{"match": "^GET /api/v1/namespaces\\?", "kind": "huge_chunked"}]}'
publish
expect_match "a chunked body past 16 MiB is cut at the bound" "$RC $(cat "$LOG")" \
    '^1 .*response body exceeds 16777216 bytes'
put_state '{"faults": []}'

# a server that accepts and never speaks TLS; a port nobody listens on
python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True); time.sleep(120)' >"$TMP/silent.port" 2>&1 &
SILENT_PID=$!
_pids+=("$SILENT_PID")
WAIT_UNTIL_STEP=0.05 wait_until 5 test -s "$TMP/silent.port"
publish --api "https://127.0.0.1:$(cat "$TMP/silent.port")" --timeout-ms 500
expect_match "a server that never handshakes: exit 1, named, bounded" "$RC $MS $(cat "$LOG")" \
    '^1 [0-9]+ .*TLS handshake with 127\.0\.0\.1:[0-9]+: no answer within 500 ms'
((MS < 10000)) && pass "... in ${MS} ms (the server stays silent for 120 s)" || fail "silent server: ${MS} ms"
# a listener whose accept queue is full (backlog 0, filled, never accepted): SYNs are dropped
python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0); port = s.getsockname()[1]
fill = [socket.socket() for _ in range(4)]
for c in fill:
    c.setblocking(False)
    try: c.connect(("127.0.0.1", port))
    except BlockingIOError: pass
time.sleep(0.2); print(port, flush=True); time.sleep(120)' >"$TMP/full.port" 2>&1 &
_pids+=("$!")
WAIT_UNTIL_STEP=0.05 wait_until 5 test -s "$TMP/full.port"
publish --api "https://127.0.0.1:$(cat "$TMP/full.port")" --timeout-ms 500
expect_match "a connect that never completes: exit 1, named, bounded" "$RC $MS $(cat "$LOG")" \
    '^1 [0-9]+ .*connect to 127\.0\.0\.1:[0-9]+: no connection within 500 ms'
((MS < 10000)) && pass "... in ${MS} ms (the queue stays full for 120 s)" || fail "full accept queue: ${MS} ms"
CLOSED=$(free_port)
publish --api "https://127.0.0.1:$CLOSED"
expect_match "a refused port: exit 1, named" "$RC $(cat "$LOG")" "^1 .*connect to 127\.0\.0\.1:$CLOSED: Connection refused"

# certificates
publish --ca-file "$D/otherca.pem"
expect_match "an API certificate that does not chain to --ca-file: refused" "$RC $(grep 'not trusted' "$LOG")" \
    "^1 .*TLS handshake with 127\.0\.0\.1:$PORT: the API server's certificate is not trusted \(--ca-file $D/otherca\.pem, name 127\.0\.0\.1\): The certificate is not correctly signed by the trusted CA$"
expect_eq "... and nothing was written" "$(grep -c -E ': (created|updated) ConfigMap' "$LOG")" 0
fake_start fake-wrongname wrongname
publish --api "https://127.0.0.1:$FPORT"
expect_match "a certificate without the URL's IP: refused" "$RC $(grep 'not trusted' "$LOG")" \
    '^1 .*not trusted \(--ca-file .*, name 127\.0\.0\.1\): The certificate Common Name \(CN\) does not match with the expected CN$'
publish --api "https://localhost:$FPORT"
expect_match "a certificate without the URL's DNS name: refused" "$RC $(cat "$LOG")" \
    '^1 .*not trusted \(--ca-file .*, name localhost\): .*Common Name \(CN\) does not match'
publish --api "https://localhost:$PORT"
expect_eq "the right certificate by DNS name (localhost): exit 0" "$RC" 0

# bad --root files: nothing is sent to the API server
ctl requests -X DELETE >/dev/null
bad_root() { # NAME FILE REGEX
    publish --root "$2"
    expect_match "bad --root ($1): exit 1 with a clear message" "$RC $(cat "$LOG")" "^1 .*$3"
}
printf 'hello\n' >"$TMP/notpem.pem"
bad_root "not PEM" "$TMP/notpem.pem" 'no PEM certificate \(want "-----BEGIN CERTIFICATE-----"\)'
openssl x509 -in "$D/root.pem" -outform DER -out "$TMP/root.der"
bad_root "DER" "$TMP/root.der" 'is not PEM text \(a DER file\? want PEM\)'
sed 's/^MI/XX/' "$D/root.pem" >"$TMP/corrupt.pem"
bad_root "corrupt base64" "$TMP/corrupt.pem" 'certificate 1'
cat "$D/root.pem" "$D/root-key.pem" >"$TMP/withkey.pem"
bad_root "with its private key" "$TMP/withkey.pem" 'holds a private key; refusing to publish it'
bad_root "a server certificate" "$D/api.pem" 'certificate 1 is not a CA'
bad_root "missing" "$TMP/nope.pem" "nope\.pem"
: >"$TMP/empty.pem"
bad_root "empty" "$TMP/empty.pem" 'empty\.pem'
expect_eq "... no request reached the API server" "$(ctl requests | jq length)" 0


# usage errors: exit 2 (test/data/publish/usage.tsv: NAME REGEX [ARGS])
while IFS=$'\t' read -r -u 3 name re args; do
    [[ -z $name || $name == '#'* ]] && continue
    eval "argv=($args)"
    out=$("$INJECTOR" publish-ca-root "${argv[@]}" 2>&1)
    rc=$?
    expect_match "usage: $name -> 2" "$rc $out" "^2 .*$re"
    nusage=$((${nusage:-0} + 1))
done 3<"$REMORA_ROOT/test/data/publish/usage.tsv"
check "the usage table ran its cases (${nusage:-0})" test "${nusage:-0}" -ge 9
out=$("$INJECTOR" publish-ca-root --help 2>&1)
expect_match "--help: exit 0 with the flags" "$? $out" '^0 usage: remora-injector publish-ca-root --root FILE.*--timeout-ms'

# the in-cluster default: KUBERNETES_SERVICE_HOST/PORT, like client-go
out=$(KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=$PORT "$INJECTOR" publish-ca-root \
    --root "$D/root.pem" --token-file "$TMP/token" --ca-file "$D/apica.pem" 2>&1)
expect_match "no --api: KUBERNETES_SERVICE_HOST:PORT is used" "$? $(tail -1 <<<"$out")" "^0 .*; 127\.0\.0\.1:$PORT; "
echo "$out" >"$TMP/run-env.log"

# a different name and key
publish --name mesh-root --key ca.crt --selector 'remora-injection=enabled,!nokey'
expect_eq "--name/--key/--selector: exit 0" "$RC" 0
expect_eq "... ConfigMap mesh-root with key ca.crt in shop" \
    "$(state '.configmaps.shop["mesh-root"].data | keys')" '["ca.crt"]'

# ---- loop mode -------------------------------------------------------------------------------
bg loop "$INJECTOR" publish-ca-root --root "$D/root.pem" --api "$API" --token-file "$TMP/token" \
    --ca-file "$D/apica.pem" --interval 1
LOOP_PID=$LASTPID
wait_until 10 grep -q 'namespaces match' "$TMP/loop.log"
expect_match "--interval 1: the first run's summary" "$(grep -m1 'namespaces match' "$TMP/loop.log")" '0 failed'
put_state "$(state --argjson lab "$LAB" '.namespaces.newcomer = {labels: $lab} | {namespaces}')"
wait_until 10 same_root newcomer
check "--interval: a newly labelled namespace gets the ConfigMap within a period" same_root newcomer
check "... still running" alive "$LOOP_PID"
stop_pid "$LOOP_PID"
expect_eq "... SIGTERM: exit 0" "$STOP_RC" 0
expect_match "... logged" "$(tail -1 "$TMP/loop.log")" 'publish-ca-root: signal 15: stopping'


# ---- sanitizers -------------------------------------------------------------------------------
cat "$TMP"/run-*.log >"$TMP/all-runs.log"
expect_sanitizers_clean "sanitizers clean ($NRUN runs)" "$TMP/all-runs.log"
expect_sanitizers_clean "sanitizers clean (loop)" "$TMP/loop.log"
finish
