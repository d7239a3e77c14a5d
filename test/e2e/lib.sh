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

    # The template the cluster's injector uses: the shipped one, with the CA at the
    # node's address (the proxy takes ip:port; a cluster would use the Service IP),
    # and no discovery block (issue 18: this injector runs no discovery service).
    jq --arg ca "$E2E_NODE_IP:15012" '.ca_address = $ca | .discovery = false' \
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
    if [[ ${E2E_BACKEND:-} == podman ]]; then
        e2e_podman_cluster_json || return 1 # images instead of binaries
    fi
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
