# shellcheck shell=bash disable=SC2034
# A cluster on one machine for end-to-end tests and benchmarks (docs/e2e.md).
# Source after test/lib.sh (for bg, on_exit, $TMP, $PROXY, $INJECTOR, $UPSTREAM).
#
#   e2e_cluster               a "node" network namespace with a bridge (10.232.0.1/24,
#                             fd32::1/64),
#                             a PKI (root, CA intermediate, the webhook's serving cert),
#                             service-account token keys, remora-injector serving the
#                             webhook and the CA on the node's address; writes
#                             $E2E/cluster.json for test/e2e/pod.py
#   e2e_configmap NS/NAME KEY FILE    add a ConfigMap key
#   e2e_secret NS/NAME KEY FILE       add a Secret key
#   e2e_pod NAME IP MANIFEST [IP6]  run a pod (pod.py run, in the background), dual-stack
#                             with IP6; waits until Ready (E2E_WAIT seconds); sets
#                             POD_PID[NAME]
#   e2e_pod_start ... / e2e_pod_wait NAME   the same in two steps (pods started together)
# With E2E_DISCOVERY=1 before e2e_cluster, service discovery (docs/discovery.md) is on:
# a fake API server (test/tools/fake_apiserver.py) on the node's 127.0.0.1, the
# injector's discovery service on $E2E_NODE_IP:15011 listing it, and the template's
# discovery block pointed at it (every injected proxy asks it).
#   e2e_ctl PATH [CURL-ARGS...]   the fake's control API (/_control/PATH), from the node
#   e2e_delete NAME           delete a pod (SIGTERM to its kubelet) and wait for it
#   e2e_exec NAME CONTAINER CMD...    run CMD in a pod's container
# Everything is removed at exit, even when a test fails: pods are deleted (their
# processes killed by PID, their namespaces removed), then the node namespace.
E2E=$TMP/e2e
E2E_NODE=rm-e2e-$$-node
E2E_NODE_IP=10.232.0.1
E2E_NODE_IP6=fd32::1
E2E_WAIT=${E2E_WAIT:-40}
E2E_POD_PY=(python3 "$REMORA_ROOT/test/e2e/pod.py")
declare -A POD_PID=()
declare -A POD_IP=()
declare -A POD_IP6=()

_e2e_in_node() { ip netns exec "$E2E_NODE" "$@"; }

e2e_cluster() {
    mkdir -p "$E2E/pki" "$E2E/jwt" "$E2E/pods"
    # E2E_KEEP=DIR: keep a copy of every pod's state and logs (debugging)
    [[ -n ${E2E_KEEP:-} ]] && on_exit "rm -rf '$E2E_KEEP'; cp -r '$E2E' '$E2E_KEEP'"
    chmod 755 "$TMP" "$E2E" "$E2E/pods"
    ip netns add "$E2E_NODE" || return 1
    on_exit "ip netns del $E2E_NODE"
    _e2e_in_node ip link set lo up
    _e2e_in_node ip link add br0 type bridge
    _e2e_in_node ip addr add "$E2E_NODE_IP/24" dev br0
    # nodad: the pods' IPv6 default route works at once (no tentative address)
    _e2e_in_node ip addr add "$E2E_NODE_IP6/64" dev br0 nodad
    _e2e_in_node ip link set br0 up

    local certs=$REMORA_ROOT/$REMORA_BUILD/remora-certs
    [[ -x $certs ]] || certs=$REMORA_ROOT/build/remora-certs
    (cd "$E2E/pki" &&
        "$certs" root --out-cert root.pem --out-key root-key.pem --cn "e2e root" &&
        "$certs" intermediate --ca-cert root.pem --ca-key root-key.pem \
            --out-cert ca.pem --out-key ca-key.pem --cn "e2e mesh CA" &&
        "$certs" server --ca-cert root.pem --ca-key root-key.pem \
            --dns remora-injector.remora-system.svc --out-cert server.pem \
            --out-key server-key.pem) >"$E2E/pki.log" 2>&1 || { cat "$E2E/pki.log"; return 1; }
    node "$REMORA_ROOT/test/tools/mint-token.js" keys "$E2E/jwt" || return 1

    if [[ ${E2E_DISCOVERY:-} == 1 ]]; then
        _e2e_fake_apiserver || return 1
        # the test's objects (a function e2e_registry, if it defines one) are in the
        # API server before the injector lists it: once /readyz says so, it knows them
        if declare -F e2e_registry >/dev/null; then e2e_registry || return 1; fi
    fi

    # The template the cluster's injector uses: the shipped one, with the CA at the
    # node's address (the proxy takes ip:port; a cluster would use the Service IP),
    # and the discovery block likewise at the node's address with E2E_DISCOVERY=1, else
    # none (issue 18: this injector runs no discovery service; every destination would
    # be "outside the mesh", plaintext, instead of mTLS as e2e.sh expects).
    local disc=false
    [[ ${E2E_DISCOVERY:-} == 1 ]] && disc="{\"address\": \"$E2E_NODE_IP:$E2E_DISC_PORT\"}"
    jq --arg ca "$E2E_NODE_IP:15012" --argjson disc "$disc" '.ca_address = $ca | .discovery = $disc' \
        "$REMORA_ROOT/manifests/injector/template.json" >"$E2E/template.json"
    jq -n --arg ip "$E2E_NODE_IP" --arg pki "$E2E/pki" --arg jwks "$E2E/jwt/jwks.json" \
        --arg tpl "$E2E/template.json" '{
        webhook: {address: ($ip + ":8443"), cert_file: ($pki + "/server.pem"),
                  key_file: ($pki + "/server-key.pem")},
        ca: {address: ($ip + ":15012"), cert_file: ($pki + "/ca.pem"),
             key_file: ($pki + "/ca-key.pem"), root_file: ($pki + "/root.pem"),
             jwks_file: $jwks, ttl_seconds: 3600},
        trust_domain: "cluster.local", template_file: $tpl, native_sidecars: false,
        log_level: "info"}' >"$E2E/injector.json"
    if [[ ${E2E_DISCOVERY:-} == 1 ]]; then
        jq --arg a "$E2E_NODE_IP:$E2E_DISC_PORT" --arg api "https://127.0.0.1:$E2E_API_PORT" \
            --arg tok "$E2E/api/token" --arg ca "$E2E/api/apica.pem" \
            '.discovery = {address: $a, api: $api, token_file: $tok, ca_file: $ca}' \
            "$E2E/injector.json" >"$E2E/injector.json.tmp" && mv "$E2E/injector.json.tmp" "$E2E/injector.json"
    fi
    if [[ ${E2E_BACKEND:-} == podman ]]; then
        e2e_podman_injector || return 1 # test/e2e/podman.sh: from its image
    else
        bg injector ip netns exec "$E2E_NODE" "$INJECTOR" -c "$E2E/injector.json"
    fi
    E2E_INJECTOR_PID=$LASTPID
    _e2e_injector_up() {
        _e2e_in_node curl -s -o /dev/null --cacert "$E2E/pki/root.pem" \
            --resolve "remora-injector.remora-system.svc:8443:$E2E_NODE_IP" \
            https://remora-injector.remora-system.svc:8443/healthz
    }
    if ! wait_until 10 _e2e_injector_up; then
        echo "e2e: remora-injector did not come up:" >&2
        tail -20 "$TMP/injector.log" >&2
        return 1
    fi
    _e2e_injector_ready() {
        [[ $(_e2e_in_node curl -s -o /dev/null -w '%{http_code}' --cacert "$E2E/pki/root.pem" \
            --resolve "remora-injector.remora-system.svc:8443:$E2E_NODE_IP" \
            https://remora-injector.remora-system.svc:8443/readyz) == 200 ]]
    }
    if [[ ${E2E_DISCOVERY:-} == 1 ]] && ! wait_until 30 _e2e_injector_ready; then
        echo "e2e: remora-injector's discovery did not list the API server (/readyz):" >&2
        tail -20 "$TMP/injector.log" >&2
        return 1
    fi

    jq -n --arg node "$E2E_NODE" --arg ip "$E2E_NODE_IP" --arg ip6 "$E2E_NODE_IP6" \
        --arg prefix "rm-e2e-$$-" \
        --arg root "$E2E/pki/root.pem" --arg proxy "$PROXY" --arg up "$UPSTREAM" \
        --arg mint "$REMORA_ROOT/test/tools/mint-token.js" --arg keys "$E2E/jwt" \
        --arg ws "$REMORA_ROOT/test/tools/ws.py" '{
        node_ns: $node, bridge: "br0", node_ip: $ip, prefix_len: 24, node_ip6: $ip6,
        netns_prefix: $prefix,
        injector: {url: "https://remora-injector.remora-system.svc:8443/inject",
                   resolve: $ip, cacert: $root},
        images: {
          "ghcr.io/remora-mesh/remora-proxy:0.1.0": {bin: {"remora-proxy": $proxy}},
          "remora-e2e/app": {bin: {"test-upstream": $up}, entrypoint: ["test-upstream"]},
          "remora-e2e/toolbox": {bin: {}, entrypoint: ["sleep"], cmd: ["infinity"]},
          "remora-e2e/ws": {bin: {"python3": "/usr/bin/python3"},
                            entrypoint: ["python3", $ws, "server"]}},
        token: {mint: ["node", $mint], keys: $keys},
        configmaps: {}, kubectl: "kubectl"}' >"$E2E/cluster.json"
    # remora-e2e/recorder: test/tools/h1_recorder.py (records every byte an app receives)
    local tmp=$E2E/cluster.json.tmp
    jq --arg rec "$REMORA_ROOT/test/tools/h1_recorder.py" '
        .images["remora-e2e/recorder"] = {bin: {python3: "/usr/bin/python3"},
                                          entrypoint: ["python3", $rec]}' \
        "$E2E/cluster.json" >"$tmp" && mv "$tmp" "$E2E/cluster.json"
    if [[ ${E2E_BACKEND:-} == podman ]]; then
        e2e_podman_cluster_json || return 1 # images instead of binaries
    fi
}

# _e2e_fake_apiserver: the fake API server in the node namespace, HTTPS on 127.0.0.1 (its
# own CA, $E2E/api/apica.pem; the token in $E2E/api/token), control on 127.0.0.1 too.
E2E_DISC_PORT=15011
_e2e_fake_apiserver() {
    local d=$E2E/api
    mkdir -p "$d"
    # test/lib.sh's fake API server certificates, made in $d
    D=$d _fake_ca apica && D=$d _fake_cert api "DNS:localhost,IP:127.0.0.1" ||
        { echo "e2e: the fake API server's certificates could not be made in $d" >&2; return 1; }
    echo "e2e-token-$$" >"$d/token"
    bg apiserver ip netns exec "$E2E_NODE" python3 "$REMORA_ROOT/test/tools/fake_apiserver.py" \
        --cert "$d/api.pem" --key "$d/api-key.pem" --port-file "$d/api.port" \
        --control-listen 127.0.0.1:0 --control-port-file "$d/ctl.port"
    E2E_API_PID=$LASTPID
    if ! WAIT_UNTIL_STEP=0.05 wait_until 20 test -s "$d/api.port" -a -s "$d/ctl.port"; then
        echo "e2e: the fake API server did not start:" >&2
        tail -20 "$TMP/apiserver.log" >&2
        return 1
    fi
    E2E_API_PORT=$(cat "$d/api.port")
    E2E_CTL_PORT=$(cat "$d/ctl.port")
    e2e_ctl state -X PUT --data-binary "{\"token\": \"e2e-token-$$\"}" >/dev/null
}

e2e_ctl() { # PATH [CURL-ARGS...]
    _e2e_in_node curl -sS -m 10 "http://127.0.0.1:$E2E_CTL_PORT/_control/$1" "${@:2}"
}

e2e_configmap() { # NS/NAME KEY FILE
    local tmp=$E2E/cluster.json.tmp
    jq --arg cm "$1" --arg key "$2" --arg file "$3" '.configmaps[$cm][$key] = $file' \
        "$E2E/cluster.json" >"$tmp" && mv "$tmp" "$E2E/cluster.json"
}

e2e_secret() { # NS/NAME KEY FILE: a Secret's key (secret volumes, projected secrets)
    local tmp=$E2E/cluster.json.tmp
    jq --arg s "$1" --arg key "$2" --arg file "$3" '.secrets[$s][$key] = $file' \
        "$E2E/cluster.json" >"$tmp" && mv "$tmp" "$E2E/cluster.json"
}

# pod_status NAME JQ-EXPR: a field of the pod's status.json
pod_status() { jq -r "$2" "$E2E/pods/$1/status.json" 2>/dev/null; }

e2e_pod() { # NAME IP MANIFEST [IP6]
    e2e_pod_start "$@" && e2e_pod_wait "$1"
}

e2e_pod_start() { # NAME IP MANIFEST [IP6]: pod.py run in the background
    local name=$1 ip=$2 manifest=$3 ip6=${4:-} state=$E2E/pods/$1
    local v6=()
    mkdir -p "$state"
    POD_IP[$name]=$ip
    POD_IP6[$name]=$ip6
    [[ -n $ip6 ]] && v6=(--ip6 "$ip6")
    bg "pod-$name" "${E2E_POD_PY[@]}" run --cluster "$E2E/cluster.json" --manifest "$manifest" \
        --ip "$ip" "${v6[@]}" --state "$state"
    POD_PID[$name]=$LASTPID
    on_exit "e2e_delete $name"
}

e2e_pod_wait() { # NAME: until Ready (E2E_WAIT seconds)
    local name=$1
    E2E_SETTLED=""
    wait_until "$E2E_WAIT" _e2e_pod_settled "$name" && [[ $E2E_SETTLED == ready ]] && return 0
    echo "e2e: pod $name not Ready: $(pod_status "$name" '.phase + " " + (.reason // "")')" >&2
    tail -15 "$TMP/pod-$name.log" >&2
    return 1
}

# _e2e_pod_settled NAME: true once the pod is Ready ($E2E_SETTLED=ready) or never will be
# (Failed, or its kubelet gone); false while it may still come up.
_e2e_pod_settled() {
    [[ $(pod_status "$1" .ready) == true ]] && { E2E_SETTLED=ready; return 0; }
    [[ $(pod_status "$1" .phase) == Failed ]] && { E2E_SETTLED=failed; return 0; }
    alive "${POD_PID[$1]}" || { E2E_SETTLED=gone; return 0; }
    return 1
}

e2e_delete() { # NAME: the pod's kubelet runs the termination sequence, then exits
    local name=$1 pid=${POD_PID[$1]:-}
    [[ -n $pid ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        wait_until 15 gone "$pid"
    fi
    wait "$pid" 2>/dev/null
    # whatever happened to the kubelet: nothing of the pod survives
    "${E2E_POD_PY[@]}" cleanup --state "$E2E/pods/$name"
    POD_PID[$name]=""
}

e2e_exec() { # NAME CONTAINER CMD...
    local name=$1 c=$2
    shift 2
    "${E2E_POD_PY[@]}" exec --cluster "$E2E/cluster.json" --state "$E2E/pods/$name" --container "$c" \
        -- "$@"
}

# e2e_proxy_pid NAME: PID of the pod's remora-proxy container
e2e_proxy_pid() { pod_status "$1" '.containers["remora-proxy"].pid'; }
