# shellcheck shell=bash disable=SC2034
# The e2e cluster's podman backend (docs/e2e.md "The podman backend"): source after
# test/lib.sh and before test/e2e/lib.sh, set the images, then E2E_BACKEND=podman.
#
#   podman_setup              a containers.conf for this machine (runc; ulimits below the
#                             hard limit), exported as CONTAINERS_CONF; PODMAN=(podman)
#   podman_load NAME TARBALL VAR   load a docker-archive as localhost/rm-img-<pid>/NAME:<tag>
#                             (this test's own name: another test's images are never
#                             touched), removed at exit; sets VAR to that reference
#   E2E_PODMAN_IMAGES         JSON, the cluster's image map ({"<spec image>": {"ref": ...}})
#   E2E_INJECTOR_REF          the injector image that serves the webhook and the CA
#   E2E_INJECTOR_SC           how to run it: {"pod": <pod securityContext>, "c": <container's>}
# Everything started here is removed at exit, even when a test fails: the injector
# container, every pod (pod.py cleanup: podman pod rm), the loaded images.
E2E_BACKEND=podman
PODMAN_PREFIX=rm-img-$$
PODMAN=(podman)
E2E_PODMAN_IMAGES='{}'
E2E_INJECTOR_REF=
E2E_INJECTOR_SC='{}'

podman_setup() {
    # crun fails on this machine's hybrid cgroups, and podman asks for more open files
    # than the hard limit (20000) allows: runc, and ulimits within the limits.
    local nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [[ $nofile == unlimited ]] && nofile=1048576
    [[ $nproc == unlimited ]] && nproc=32768
    ((nproc > 32768)) && nproc=32768
    cat >"$TMP/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
events_logger = "file"
EOF
    export CONTAINERS_CONF=$TMP/containers.conf
}

archive_tag() { # TARBALL: the name:tag a docker-archive carries (its manifest.json)
    tar -xOf "$1" manifest.json | jq -r '.[0].RepoTags[0] // empty'
}

podman_load() { # NAME TARBALL VAR: VAR is set to the loaded image's reference
    local name=$1 tar=$2 tag
    tag=$(archive_tag "$tar")
    printf -v "$3" '%s' "localhost/$PODMAN_PREFIX/$name:${tag##*:}"
    # registered before loading, in this shell (not a subshell): removed even if half-loaded
    on_exit "${PODMAN[*]} rmi --force '${!3}' >/dev/null 2>&1"
    skopeo copy --quiet "docker-archive:$tar" "containers-storage:${!3}" 2>"$TMP/load-$name.log" ||
        { cat "$TMP/load-$name.log" >&2; return 1; }
}

# The injector as the Deployment runs it: E2E_INJECTOR_SC is its pod's and container's
# securityContext from the rendered manifests ({"pod": {...}, "c": {...}}): user and group,
# read-only root filesystem, capabilities dropped, no privilege escalation. Its config and
# PKI are mounted read-only (the same paths as on the machine, so injector.json is the
# netns backend's). In the node's network namespace: the webhook and the CA on the node's
# address.
e2e_podman_injector() {
    local name=$PODMAN_PREFIX-injector sc=$E2E_INJECTOR_SC uid gid flags=() x
    uid=$(jq -r '.c.runAsUser // .pod.runAsUser // 0' <<<"$sc")
    gid=$(jq -r '.c.runAsGroup // .pod.runAsGroup // 0' <<<"$sc")
    if [[ $(jq -r '.c.runAsNonRoot // .pod.runAsNonRoot // false' <<<"$sc") == true && $uid == 0 ]]; then
        echo "e2e: the injector's securityContext says runAsNonRoot with UID 0" >&2
        return 1
    fi
    [[ $(jq -r '.c.readOnlyRootFilesystem // false' <<<"$sc") == true ]] &&
        flags+=(--read-only --read-only-tmpfs=false)
    [[ $(jq -r '.c.allowPrivilegeEscalation' <<<"$sc") == false ]] &&
        flags+=(--security-opt no-new-privileges)
    for x in $(jq -r '.c.capabilities.drop // [] | .[]' <<<"$sc"); do flags+=(--cap-drop "$x"); done
    for x in $(jq -r '.c.capabilities.add // [] | .[]' <<<"$sc"); do flags+=(--cap-add "$x"); done
    # Secrets are mounted readable by the pod's user
    chown -R "$uid:$gid" "$E2E/pki" "$E2E/jwt" "$E2E/template.json" "$E2E/injector.json"
    on_exit "${PODMAN[*]} rm --force --time 0 $name >/dev/null 2>&1"
    echo "${PODMAN[*]} run --name $name --user $uid:$gid ${flags[*]}" >"$E2E/injector.argv"
    bg injector "${PODMAN[@]}" run --rm --name "$name" --pull never \
        --network "ns:/run/netns/$E2E_NODE" --user "$uid:$gid" "${flags[@]}" \
        -v "$E2E:$E2E:ro" "$E2E_INJECTOR_REF" -c "$E2E/injector.json"
    E2E_INJECTOR_PID=$LASTPID
    E2E_INJECTOR_CTR=$name
}

e2e_podman_cluster_json() {
    local tmp=$E2E/cluster.json.tmp
    jq --argjson images "$E2E_PODMAN_IMAGES" --arg prefix "$PODMAN_PREFIX-" \
        --argjson argv "$(printf '%s\n' "${PODMAN[@]}" | jq -R . | jq -s .)" \
        '.backend = "podman" | .podman = {argv: $argv, prefix: $prefix} | .images = $images' \
        "$E2E/cluster.json" >"$tmp" && mv "$tmp" "$E2E/cluster.json"
}

# podman_ctr_pid POD CONTAINER: the host PID of a pod's container
podman_ctr_pid() {
    "${PODMAN[@]}" container inspect --format '{{.State.Pid}}' "$PODMAN_PREFIX-$1-$2" 2>/dev/null
}
podman_ctr_field() { # POD CONTAINER GO-TEMPLATE
    "${PODMAN[@]}" container inspect --format "$3" "$PODMAN_PREFIX-$1-$2" 2>/dev/null
}
