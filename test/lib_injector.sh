# The injector suites' fixture (injector.sh, injector_server.sh, injector_manifests.sh):
# source it after test/lib.sh. Serving certificates ($TMP/pki "first", $TMP/pki2 "second",
# the live pair in $TMP/live), two configs ($TMP/classic.json on $PORT with its own
# template file $TMP/template.json, $TMP/native.json on $NPORT with native sidecars by
# default), the shared AdmissionReview corpus ($CORPUS) and the cases in test/data/injector/
# ($DATA; a case is a file), and the review machinery: post, review_of, run_review (POST,
# check the answer, apply the patch with kubectl, review again for idempotence), case_one,
# spawn/collect (reviews JOBS at a time), check_pods (kubernetes-models and the injection
# contract over every patched pod) and injector_stop.
DATA=$REMORA_ROOT/test/data/injector
CORPUS=
for d in "${REMORA_CORPUS:-}" "$REMORA_ROOT/../shared/corpus/admission" /work/shared/corpus/admission; do
    if [[ -n $d && -d $d ]]; then CORPUS=$d; break; fi
done
NODE_OK=1
[[ -d $REMORA_ROOT/test/js/node_modules/kubernetes-models ]] ||
    (cd "$REMORA_ROOT/test/js" && npm install --no-audit --no-fund --silent >/dev/null 2>&1) ||
    NODE_OK=0

# ---- certificates and configs ------------------------------------------------
mkcert() { # DIR CN: an ECDSA P-256 serving pair for 127.0.0.1
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$1/key.pem" -out "$1/cert.pem" -subj "/CN=$2" \
        -addext "subjectAltName=DNS:remora-injector.remora-system.svc,IP:127.0.0.1" 2>/dev/null
}
mkcert "$TMP/pki" first
mkcert "$TMP/pki2" second
cp "$TMP/pki/cert.pem" "$TMP/ca.pem" # self-signed: the client trusts exactly this one

# config NAME PORT NATIVE [EXTRA-JSON]: write $TMP/NAME.json
config() {
    jq -n --arg port "$2" --arg cert "$TMP/live/cert.pem" --arg key "$TMP/live/key.pem" \
        --argjson native "$3" --argjson extra "${4:-{\}}" '{
        webhook: {address: ("127.0.0.1:" + $port), cert_file: $cert, key_file: $key,
                  timeout_seconds: 2, reload_interval_ms: 200, max_body_bytes: 1048576,
                  max_connections_per_ip: 128},  # 64 concurrent reviews from 127.0.0.1 below
        ca: {audience: "remora-ca", ttl_seconds: 86400},
        trust_domain: "cluster.local", native_sidecars: $native, log_level: "info"} * $extra' \
        >"$TMP/$1.json"
}
mkdir -p "$TMP/live"
cp "$TMP/pki/cert.pem" "$TMP/pki/key.pem" "$TMP/live/"

PORT=$(free_port)
NPORT=$(free_port)
cp "$REMORA_ROOT/manifests/injector/template.json" "$TMP/template.json"
config classic "$PORT" false "{\"template_file\": \"$TMP/template.json\"}"
config native "$NPORT" true

# injector_start classic|native...: start those injectors (IPID, NPID; logs
# $TMP/injector.log, $TMP/injector-native.log) and wait for their ports
injector_start() {
    local w
    for w in "$@"; do
        case $w in
        classic) bg injector "$INJECTOR" -c "$TMP/classic.json"; IPID=$LASTPID ;;
        native) bg injector-native "$INJECTOR" -c "$TMP/native.json"; NPID=$LASTPID ;;
        esac
    done
    for w in "$@"; do
        case $w in
        classic) check "injector listens" wait_port "$PORT" ;;
        native) check "native injector listens" wait_port "$NPORT" ;;
        esac
    done
}

CURL=(curl -sS --cacert "$TMP/ca.pem" --max-time 10)
url() { echo "https://127.0.0.1:$1$2"; }
healthy() { [[ $("${CURL[@]}" -o /dev/null -w '%{http_code}' "$(url "${1:-$PORT}" /healthz)") == 200 ]]; }

# post PORT FILE [OUT]: POST a body; sets $CODE and $RESP (the response file).
post() {
    RESP=${3:-$TMP/resp.json}
    CODE=$("${CURL[@]}" -o "$RESP" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary "@$2" "$(url "$1" "${INJECT_PATH:-/inject}")")
}

# review_of CASE-FILE NAME: the AdmissionReview a case describes
review_of() {
    jq --arg uid "uid-$2" 'if has("review") then .review else
      {apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
       request: ({uid: $uid,
                  kind: {group: "", version: "v1", kind: "Pod"},
                  requestKind: {group: "", version: "v1", kind: "Pod"},
                  resource: {group: "", version: "v1", resource: "pods"},
                  requestResource: {group: "", version: "v1", resource: "pods"},
                  namespace: (.namespace // "shop"), operation: "CREATE",
                  userInfo: {username: "kubernetes-admin"},
                  object: (.pod // null), oldObject: null, dryRun: false} + (.request // {}))}
      end' "$1"
}

mkdir -p "$TMP/check" "$TMP/work" "$TMP/out"

# run_review PORT NAME REVIEW-FILE WANT-PATCH(1/0/"") WANT-MODE
# POSTs, checks the AdmissionReview answer, applies the patch with kubectl,
# checks idempotence. Leaves the patched pod in $TMP/check/NAME.patched.json.
run_review() {
    local port=$1 name=$2 rf=$3 want=$4 mode=$5 w=$TMP/work/$2 verdict
    post "$port" "$rf" "$w.resp.json"
    if [[ $CODE != 200 ]]; then fail "$name: HTTP $CODE"; return 1; fi
    verdict=$(jq -r --slurpfile rq "$rf" '($rq[0].request.uid) as $uid |
        if .apiVersion == "admission.k8s.io/v1" and .kind == "AdmissionReview"
           and .response.uid == $uid and .response.allowed == true
        then (if .response.patch == null then "0"
              elif .response.patchType == "JSONPatch" then "1" else "badtype" end)
        else "bad" end' "$w.resp.json")
    case $verdict in
    0 | 1) pass "$name: answered with its uid, allowed" ;;
    *) fail "$name: bad AdmissionReview answer ($verdict): $(head -c 300 "$w.resp.json")"; return 1 ;;
    esac
    if [[ -n $want && $verdict != "$want" ]]; then
        fail "$name: patch expected=$want got=$verdict"
        return 1
    fi
    [[ $verdict == 1 ]] || { pass "$name: no patch"; return 0; }
    jq -r '.response.patch | @base64d' "$w.resp.json" >"$w.patch.json"
    jq '.request.object' "$rf" >"$TMP/check/$name.orig.json"
    if kubectl patch --local --type=json -f "$TMP/check/$name.orig.json" \
        -p "$(cat "$w.patch.json")" -o json --show-managed-fields \
        >"$TMP/check/$name.patched.json" 2>"$w.kubectl.err"; then
        pass "$name: kubectl applies the patch"
    else
        fail "$name: kubectl patch: $(head -c 300 "$w.kubectl.err")"
        rm -f "$TMP/check/$name.patched.json"
        return 1
    fi
    # Reinvocation: the injected pod, reviewed again, yields no patch.
    jq --slurpfile p "$TMP/check/$name.patched.json" '.request.object = $p[0]' "$rf" >"$w.again.json"
    post "$port" "$w.again.json" "$w.again.resp.json"
    verdict=$(jq -r --slurpfile p "$TMP/check/$name.patched.json" '
        (if .response.allowed == true and .response.patch == null then "none" else "patch" end)
        + " " + ($p[0].metadata.annotations["remora.io/status"] | fromjson | .mode)' "$w.again.resp.json")
    if [[ $CODE == 200 && $verdict == none* ]]; then
        pass "$name: re-injection yields no patch"
    else
        fail "$name: re-injection: HTTP $CODE $(head -c 200 "$w.again.resp.json")"
    fi
    [[ -z $mode ]] || expect_eq "$name: $mode sidecar" "${verdict#* }" "$mode"
}

# Reviews run JOBS at a time (they mostly wait on curl, kubectl and jq); each
# writes its PASS/FAIL lines to its own file, printed and counted in order.
JOBS=${INJECTOR_TEST_JOBS:-6}
_spawned=()
slot_free() { # fewer than JOBS spawned reviews still run
    local live=0 p
    for p in "${_spawned[@]}"; do kill -0 "$p" 2>/dev/null && live=$((live + 1)); done
    ((live < JOBS))
}
spawn() { # OUT-NAME FUNCTION ARGS...
    local out=$TMP/out/$1
    shift
    WAIT_UNTIL_STEP=0.02 wait_until 300 slot_free || fail "spawn ${out##*/}: no free slot among $JOBS jobs in 300 s"
    "$@" >"$out" 2>&1 &
    _spawned+=($!)
}
collect() { # wait for the spawned reviews only (the servers run on)
    local f p
    for p in "${_spawned[@]}"; do wait "$p"; done
    _spawned=()
    for f in "$TMP"/out/*; do
        cat "$f"
        _fails=$((_fails + $(grep -c '^FAIL: ' "$f" || true)))
    done
    rm -f "$TMP"/out/*
}

# case_one CASE-FILE: one case of test/data/injector/ (its format: docs/injector.md, "Testing", and case_one itself)
case_one() {
    local f=$1 name port status want w e
    # .path: the webhook entry's path (/inject/pod/psa/restricted..., manifests/injector/
    # webhook.yaml); post() sees it (bash's dynamic scope), the re-review too
    local INJECT_PATH
    INJECT_PATH=$(jq -r '.path // "/inject"' "$f")
    name=case-$(basename "$f" .json)
    w=$TMP/work/$name
    port=$PORT
    [[ $(jq -r '.injector // "classic"' "$f") == native ]] && port=$NPORT
    status=$(jq -r '.expect.status // 200' "$f")
    if jq -e 'has("body")' "$f" >/dev/null; then
        jq -j '.body' "$f" >"$w.body"
        post "$port" "$w.body" "$w.resp.json"
        if [[ $CODE == "$status" ]] && jq -e '.error | type == "string"' "$w.resp.json" >/dev/null; then
            pass "$name: HTTP $status with a JSON error"
        else
            fail "$name: HTTP $CODE (want $status): $(head -c 200 "$w.resp.json")"
        fi
        check "$name: still serving" healthy "$port"
        return
    fi
    review_of "$f" "$name" >"$w.review.json"
    if [[ $status != 200 ]]; then
        post "$port" "$w.review.json" "$w.resp.json"
        expect_eq "$name: HTTP $status" "$CODE" "$status"
        check "$name: still serving" healthy "$port"
        return
    fi
    want=$(jq -r 'if .expect.patched == null then "" elif .expect.patched then 1 else 0 end' "$f")
    run_review "$port" "$name" "$w.review.json" "$want" "$(jq -r '.expect.mode // ""' "$f")" || return
    if jq -e '.expect.warning' "$f" >/dev/null; then
        w=$(jq -r '.response.warnings // [] | join(" | ")' "$TMP/work/$name.resp.json")
        expect_match "$name: warns" "$w" "$(jq -r '.expect.warning' "$f")"
    fi
    if jq -e '.expect.no_warning' "$f" >/dev/null; then
        w=$(jq -r '.response.warnings // [] | join(" | ")' "$TMP/work/$name.resp.json")
        if [[ $w =~ $(jq -r '.expect.no_warning' "$f") ]]; then fail "$name: warns: $w"
        else pass "$name: no warning /$(jq -r '.expect.no_warning' "$f")/"; fi
    fi
    jq -e '.expect.no_schema == true' "$f" >/dev/null && touch "$TMP/check/$name.noschema"
    while IFS= read -r e; do
        [[ -n $e ]] || continue
        if [[ $(jq "$e" "$TMP/check/$name.patched.json" 2>&1) == true ]]; then pass "$name: $e"
        else fail "$name: $e"; fi
    done < <(jq -r '.expect.jq // [] | .[]' "$f")
    while IFS= read -r e; do
        [[ -n $e ]] || continue
        if [[ $(jq "$e" "$TMP/work/$name.patch.json" 2>&1) == true ]]; then pass "$name: patch: $e"
        else fail "$name: patch: $e"; fi
    done < <(jq -r '.expect.patch_jq // [] | .[]' "$f")
}

# check_pods: every patched pod in $TMP/check through kubernetes-models + the injection contract
check_pods() {
    if ((NODE_OK)); then
        node "$REMORA_ROOT/test/js/check-pods.js" "$TMP/check" >"$TMP/check.out" 2>&1
        cat "$TMP/check.out"
        # check-pods prints its own PASS/FAIL lines; count its failures here too.
        _fails=$((_fails + $(grep -c '^FAIL: ' "$TMP/check.out" || true)))
        grep -qE '^(PASS|FAIL): ' "$TMP/check.out" || fail "check-pods.js ran no check: $(tail -3 "$TMP/check.out")"
    else
        fail "kubernetes-models not installed (npm install in test/js)"
    fi
}

# injector_stop NAME PID: SIGTERM, exit 0, no sanitizer report
injector_stop() {
    kill -TERM "$2"
    local rc=0
    wait "$2" || rc=$?
    expect_eq "$1 exits 0 on SIGTERM" "$rc" 0
    if grep -qE 'Sanitizer|runtime error' "$TMP/$1.log"; then
        fail "$1: sanitizer report"
        grep -E -A20 'Sanitizer|runtime error' "$TMP/$1.log" | head -40
    else
        pass "$1: no sanitizer report (leaks included)"
    fi
}
