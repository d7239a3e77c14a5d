#!/usr/bin/env python3
"""Pods on one machine: a pod manifest becomes a running pod, set up by the pieces
Kubernetes would run (docs/e2e.md). Python 3 standard library only.

  pod.py run     --cluster C.json --manifest POD.json --ip IP [--ip6 IP6] --state DIR
                 the pod's kubelet, in the foreground until SIGTERM (= pod deletion):
                 admission (AdmissionReview over HTTPS to remora-injector, as the API
                 server sends it), the returned JSONPatch applied with
                 `kubectl patch --local --type=json`, a network namespace on the
                 cluster's bridge, volumes, init containers, containers (postStart
                 hooks, readiness/startup probes), and on SIGTERM the termination
                 sequence. DIR/status.json says how the pod is doing. --ip6 makes
                 the pod dual-stack: IP6/64 on eth0 too, an IPv6 default route via
                 the node's node_ip6.
  pod.py exec    --state DIR [--container NAME] [--user UID] -- CMD...
                 run CMD inside a running pod's container (netns, mounts, user, env)
  pod.py cleanup --state DIR
                 kill what a pod started (by PID) and delete its namespace: for test
                 teardown, when `run` itself was killed

C.json (written by the test; see test/integration/e2e.sh):
  {"node_ns": "...", "bridge": "br0", "node_ip": "10.232.0.1", "prefix_len": 24,
   "node_ip6": "fd32::1",
   "netns_prefix": "rm-e2e-123-",
   "injector": {"url": "https://remora-injector.remora-system.svc:8443/inject",
                "resolve": "10.232.0.1", "cacert": "root.pem"},
   "images": {"<image>": {"bin": {"<command>": "<path>"}, "entrypoint": [...], "cmd": [...]}},
   "token": {"mint": ["node", "mint-token.js"], "keys": "DIR"},
   "configmaps": {"<namespace>/<name>": {"<key>": "<file>"}},
   "secrets": {"<namespace>/<name>": {"<key>": "<file>"}},
   "kubectl": "kubectl"}

A pod's annotation `e2e.remora.io/bootstrap-merge` (a JSON object) is the harness's
override of the injected proxy's bootstrap, for what the injector does not set per pod
(outbound_policy, egress_allow: test/integration/e2e_discovery.sh): after admission it is
applied to the `remora.io/bootstrap` annotation as an RFC 7386 merge patch (objects merge,
null deletes), and the pod's log says which top-level keys changed. A pod without a
sidecar is left alone.

spec.hostAliases: the containers' /etc/hosts is the file kubelet would write (localhost,
the pod's IP and name, the aliases), bind-mounted; under podman, `pod create --add-host`.

With "backend": "podman" in C.json (test/integration/image.sh, docs/e2e.md "The podman
backend") the pod is a podman pod and its containers run from real images:
  "podman": {"argv": ["podman"], "prefix": "rm-img-123-"},
  "images": {"<image>": {"ref": "<local image>", "entrypoint": [...], "cmd": [...]}}
The pod is `podman pod create --network none` (its infra container holds the pod's
network namespace, which `ip netns attach` names so the veth goes into it as above);
init containers are `podman run` to completion, containers `podman run --pod` (users,
capabilities, read-only root, no_new_privs, env, args, volumes bind-mounted from the
pod's directory); hooks and exec probes `podman exec`.

What runs is what the patched spec says: commands and args, env (downward-API
fields filled in), volumes and mounts (mapped into a per-pod directory and
bind-mounted over the mount paths in a private mount namespace; directories that
do not exist on the machine are made on a tmpfs overlay, so the machine's
filesystem is never changed), securityContext users, capability bounding sets,
no_new_privs and read-only root filesystems. If the patch is wrong, the pod does
not work.
"""
import argparse
import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def log(state, msg):
    line = "%s pod.py: %s\n" % (time.strftime("%H:%M:%S"), msg)
    sys.stderr.write(line)
    sys.stderr.flush()


def die(msg):
    sys.stderr.write("pod.py: %s\n" % msg)
    sys.exit(1)


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ---- admission ---------------------------------------------------------------------


def admission_review(pod):
    ns = pod["metadata"]["namespace"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def admit(cluster, pod, state):
    """Send the pod to the injector as the API server would (HTTPS, the webhook's CA
    bundle, the Service's DNS name) and apply the patch it returns with kubectl."""
    review = admission_review(pod)
    req_file = os.path.join(state, "admission-request.json")
    write_json(req_file, review)
    inj = cluster["injector"]
    url = inj["url"]
    m = re.match(r"https://([^:/]+):(\d+)/", url)
    if not m:
        raise RuntimeError("injector.url must be https://HOST:PORT/PATH")
    argv = ["ip", "netns", "exec", cluster["node_ns"], "curl", "-sS", "--max-time", "10",
            "--cacert", inj["cacert"], "--resolve", "%s:%s:%s" % (m.group(1), m.group(2),
                                                                  inj["resolve"]),
            "-H", "Content-Type: application/json", "--data-binary", "@" + req_file,
            "-w", "\n%{http_code}", url]
    r = run(argv)
    if r.returncode != 0:
        raise RuntimeError("admission: curl failed: %s" % r.stderr.strip())
    body, _, code = r.stdout.rpartition("\n")
    if code != "200":
        raise RuntimeError("admission: HTTP %s: %s" % (code, body[:300]))
    with open(os.path.join(state, "admission-response.json"), "w") as f:
        f.write(body)
    resp = json.loads(body).get("response") or {}
    if resp.get("uid") != review["request"]["uid"]:
        raise RuntimeError("admission: response uid %r is not the request's" % resp.get("uid"))
    if not resp.get("allowed"):
        raise RuntimeError("admission: not allowed: %s" % resp.get("status"))
    for w in resp.get("warnings") or []:
        log(state, "admission warning: %s" % w)
    if "patch" not in resp:
        return pod
    if resp.get("patchType") != "JSONPatch":
        raise RuntimeError("admission: patchType %r" % resp.get("patchType"))
    patch = base64.b64decode(resp["patch"]).decode()
    with open(os.path.join(state, "patch.json"), "w") as f:
        f.write(patch)
    pod_file = os.path.join(state, "pod-original.json")
    write_json(pod_file, pod)
    r = run([cluster.get("kubectl", "kubectl"), "patch", "--local", "--type=json", "-f", pod_file,
             "-p", patch, "-o", "json"])
    if r.returncode != 0:
        raise RuntimeError("kubectl patch --local failed: %s" % r.stderr.strip())
    return json.loads(r.stdout)


def host_aliases(pod):
    """spec.hostAliases as (ip, [hostnames]), validated."""
    out = []
    for i, a in enumerate(pod["spec"].get("hostAliases") or []):
        ip, names = a.get("ip"), a.get("hostnames") or []
        if not isinstance(ip, str) or not re.fullmatch(r"[0-9a-fA-F.:]+", ip) or not names or \
                not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9.-]+", n) for n in names):
            raise ValueError("spec.hostAliases[%d]: want an IP and hostnames" % i)
        out.append((ip, names))
    return out


def write_etc_hosts(pod, ip, state):
    """/etc/hosts as kubelet writes it for a pod with hostAliases: localhost, the pod's
    IP and name, then the aliases. None (the machine's file is left) without them."""
    aliases = host_aliases(pod)
    if not aliases:
        return None
    lines = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet",
             "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters",
             "%s\t%s" % (ip, pod["metadata"]["name"]), "", "# Entries added by HostAliases."]
    lines += ["%s\t%s" % (a, "\t".join(names)) for a, names in aliases]
    path = os.path.join(state, "etc-hosts")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return path


BOOTSTRAP_ANNOTATION = "remora.io/bootstrap"
MERGE_ANNOTATION = "e2e.remora.io/bootstrap-merge"


def merge_patch(target, patch):
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def override_bootstrap(pod, state):
    """The harness's override of the injected bootstrap (see the module's doc)."""
    ann = pod["metadata"].get("annotations") or {}
    if BOOTSTRAP_ANNOTATION not in ann or MERGE_ANNOTATION not in ann:
        return pod
    try:
        patch = json.loads(ann[MERGE_ANNOTATION])
    except ValueError as e:
        raise RuntimeError("annotation %s: not JSON: %s" % (MERGE_ANNOTATION, e))
    if not isinstance(patch, dict):
        raise RuntimeError("annotation %s: not a JSON object" % MERGE_ANNOTATION)
    boot = json.loads(ann[BOOTSTRAP_ANNOTATION])
    new = merge_patch(boot, patch)
    changed = sorted(k for k in set(boot) | set(new) if boot.get(k) != new.get(k))
    log(state, "bootstrap overridden by the harness (%s): %s"
        % (MERGE_ANNOTATION, ", ".join(changed) or "nothing changed"))
    ann[BOOTSTRAP_ANNOTATION] = json.dumps(new, separators=(",", ":"))
    return pod


# ---- fields, env, volumes ---------------------------------------------------------------


def field_value(pod, ip, path):
    meta = pod["metadata"]
    spec = pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "spec.nodeName": "node-1",
        "status.podIP": ip,
        "status.hostIP": "",
    }
    if path in simple:
        return simple[path]
    m = re.match(r"metadata\.(labels|annotations)\['(.*)'\]$", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise ValueError("unsupported fieldRef %s" % path)


def expand(s, env):
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, s)


def container_env(cluster, pod, ip, c):
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": pod["metadata"]["name"], "HOME": "/"}
    for e in c.get("env") or []:
        name = e["name"]
        if "value" in e:
            env[name] = expand(e["value"], env)
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[name] = field_value(pod, ip, vf["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                key = "%s/%s" % (pod["metadata"]["namespace"], ref["name"])
                f = (cluster.get("configmaps", {}).get(key) or {}).get(ref["key"])
                if f is None:
                    raise ValueError("configMapKeyRef %s:%s not found" % (key, ref["key"]))
                with open(f) as fh:
                    env[name] = fh.read()
            else:
                raise ValueError("env %s: unsupported valueFrom %s" % (name, list(vf)))
        else:
            env[name] = ""
    return env


def data_tree(root, files, mode):
    """A volume the way kubelet writes configMap/downwardAPI/projected volumes: the
    files in a timestamped directory, `..data` pointing at it, each top-level name a
    symlink through `..data` (so updates are atomic renames)."""
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    ts = "..%s.%d" % (time.strftime("%Y_%m_%d_%H_%M_%S"), os.getpid())
    d = os.path.join(root, ts)
    os.makedirs(d)
    os.chmod(d, 0o755)
    tops = set()
    for rel, data in files.items():
        rel = rel.lstrip("/")
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        os.chmod(p, mode)
        tops.add(rel.split("/")[0])
    os.symlink(ts, os.path.join(root, "..data"))
    for t in sorted(tops):
        os.symlink(os.path.join("..data", t), os.path.join(root, t))


def configmap_files(cluster, ns, src, what, kind="ConfigMap"):
    """The files of a ConfigMap (or, with kind="Secret", a Secret: cluster["secrets"],
    named by secretName in a volume and name in a projected source)."""
    key = "%s/%s" % (ns, src.get("secretName", src.get("name")))
    cm = cluster.get("secrets" if kind == "Secret" else "configmaps", {}).get(key)
    if cm is None:
        if src.get("optional"):
            return {}
        raise ValueError("%s: %s %s not found" % (what, kind, key))
    items = src.get("items")
    out = {}
    if items is None:
        items = [{"key": k, "path": k} for k in cm]
    for it in items:
        if it["key"] not in cm:
            raise ValueError("%s: %s %s has no key %s" % (what, kind, key, it["key"]))
        with open(cm[it["key"]], "rb") as f:
            out[it["path"]] = f.read()
    return out


def mint_token(cluster, pod, sat):
    tok = cluster["token"]
    ns = pod["metadata"]["namespace"]
    sa = pod["spec"].get("serviceAccountName", "default")
    argv = list(tok["mint"]) + ["token", tok["keys"], "--ns", ns, "--sa", sa, "--pod",
                                pod["metadata"]["name"], "--aud",
                                sat.get("audience") or "https://kubernetes.default.svc",
                                "--exp-in", str(sat.get("expirationSeconds", 3600))]
    r = run(argv)
    if r.returncode != 0:
        raise ValueError("minting a token failed: %s" % r.stderr.strip())
    return r.stdout.strip()


def make_volumes(cluster, pod, ip, state):
    vols = {}
    ns = pod["metadata"]["namespace"]
    for v in pod["spec"].get("volumes") or []:
        name = v["name"]
        root = os.path.join(state, "volumes", name)
        what = "volume %s" % name
        if "emptyDir" in v:
            os.makedirs(root)
            os.chmod(root, 0o777)
        elif "configMap" in v:
            src = v["configMap"]
            data_tree(root, configmap_files(cluster, ns, src, what), src.get("defaultMode", 0o644))
        elif "secret" in v:
            src = v["secret"]
            data_tree(root, configmap_files(cluster, ns, src, what, "Secret"),
                      src.get("defaultMode", 0o644))
        elif "downwardAPI" in v:
            src = v["downwardAPI"]
            files = {it["path"]: field_value(pod, ip, it["fieldRef"]["fieldPath"])
                     for it in src.get("items") or []}
            data_tree(root, files, src.get("defaultMode", 0o644))
        elif "projected" in v:
            src = v["projected"]
            files = {}
            for s in src.get("sources") or []:
                if "serviceAccountToken" in s:
                    sat = s["serviceAccountToken"]
                    files[sat["path"]] = mint_token(cluster, pod, sat)
                elif "configMap" in s:
                    files.update(configmap_files(cluster, ns, s["configMap"], what))
                elif "secret" in s:
                    files.update(configmap_files(cluster, ns, s["secret"], what, "Secret"))
                elif "downwardAPI" in s:
                    for it in s["downwardAPI"].get("items") or []:
                        files[it["path"]] = field_value(pod, ip, it["fieldRef"]["fieldPath"])
                else:
                    raise ValueError("%s: unsupported projected source %s" % (what, list(s)))
            data_tree(root, files, src.get("defaultMode", 0o644))
        else:
            raise ValueError("%s: unsupported volume type %s" % (what, list(v)))
        vols[name] = root
    return vols


# ---- containers ---------------------------------------------------------------------------


def image_of(cluster, c):
    img = cluster["images"].get(c.get("image", ""))
    if img is None:
        raise ValueError("container %s: image %r is not mapped to local binaries"
                         % (c["name"], c.get("image")))
    return img


def image_bindir(cluster, state, c):
    """A directory of symlinks: the image's commands, first on PATH."""
    img = image_of(cluster, c)
    d = os.path.join(state, "images", re.sub(r"[^A-Za-z0-9_.-]", "_", c["image"]))
    if not os.path.isdir(d):
        os.makedirs(d)
        os.chmod(d, 0o755)
        for cmd, path in img.get("bin", {}).items():
            os.symlink(path, os.path.join(d, cmd))
    return d, img


def security(pod, c):
    psc = pod["spec"].get("securityContext") or {}
    sc = c.get("securityContext") or {}
    uid = sc.get("runAsUser", psc.get("runAsUser", 0))
    gid = sc.get("runAsGroup", psc.get("runAsGroup", 0 if uid == 0 else uid))
    nonroot = sc.get("runAsNonRoot", psc.get("runAsNonRoot", False))
    if nonroot and uid == 0:
        raise ValueError("container %s: runAsNonRoot with UID 0" % c["name"])
    return uid, gid, sc


# The capabilities a container runtime grants by default (containerd's list).
DEFAULT_CAPS = ["chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid",
                "setuid", "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill",
                "audit_write"]


def launch_script(cluster, pod, ip, state, vols, c, argv, extra_env=None, user=None):
    """The shell script that puts a process in the pod: private mount namespace with
    the volumes, read-only root if asked, then the container's user, capabilities and
    env; `exec`s so the PID is the container's process."""
    uid, gid, sc = security(pod, c)
    if user is not None:
        uid, gid = user, user
    bindir, _ = image_bindir(cluster, state, c)
    env = container_env(cluster, pod, ip, c)
    env["PATH"] = bindir + ":" + env.get("PATH", DEFAULT_PATH)
    if extra_env:
        env.update(extra_env)
    lines = ["set -e"]
    if sc.get("readOnlyRootFilesystem"):
        # remount,bind changes this namespace's view only (never the superblock)
        lines.append("mount -o remount,bind,ro /")
    mounts = c.get("volumeMounts") or []
    overlay_dir = os.path.join(state, "ovl", c["name"])
    os.makedirs(overlay_dir, exist_ok=True)
    tops = []
    for m in mounts:
        target = os.path.normpath(m["mountPath"])
        real = os.path.realpath(target)
        if os.path.isdir(real):
            continue
        top = "/" + real.strip("/").split("/")[0]
        if top == "/" or not os.path.isdir(top):
            raise ValueError("mountPath %s: cannot be made" % target)
        if top not in tops:
            tops.append(top)
    if tops:
        lines.append("mount -t tmpfs -o mode=755 remora-e2e %s" % shlex.quote(overlay_dir))
        for i, top in enumerate(tops):
            up, work = "%s/u%d" % (overlay_dir, i), "%s/w%d" % (overlay_dir, i)
            lines.append("mkdir -p %s %s" % (up, work))
            lines.append("mount -t overlay overlay -o lowerdir=%s,upperdir=%s,workdir=%s %s"
                         % (top, up, work, top))
    for m in mounts:
        src = vols.get(m["name"])
        if src is None:
            raise ValueError("volumeMount %s: no such volume" % m["name"])
        if m.get("subPath"):
            src = os.path.join(src, m["subPath"])
        target = os.path.realpath(os.path.normpath(m["mountPath"]))
        lines.append("mkdir -p %s" % shlex.quote(target))
        lines.append("mount --bind %s %s" % (shlex.quote(src), shlex.quote(target)))
        if m.get("readOnly"):
            lines.append("mount -o remount,bind,ro %s" % shlex.quote(target))
    hosts = os.path.join(state, "etc-hosts")
    if os.path.exists(hosts):  # hostAliases (write_etc_hosts): after the overlay of /etc
        lines.append("mount --bind %s /etc/hosts" % shlex.quote(hosts))
    lines.append("cd %s" % shlex.quote(c.get("workingDir") or "/"))
    priv = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--clear-groups"]
    caps = sc.get("capabilities") or {}
    drop = [x.lower() for x in caps.get("drop") or []]
    add = [x.lower() for x in caps.get("add") or []]
    if uid == 0 and not sc.get("privileged"):
        have = [] if "all" in drop else [x for x in DEFAULT_CAPS if x not in drop]
        have += [x for x in add if x not in have]
        bset = "-all" + "".join(",+" + x for x in have)
        priv.append("--bounding-set=" + bset)
    elif uid != 0:
        priv.append("--bounding-set=-all")
    if sc.get("allowPrivilegeEscalation") is False:
        priv.append("--no-new-privs")
    envargs = ["%s=%s" % (k, v) for k, v in sorted(env.items())]
    # env -i first: setpriv and the command are then found on the container's PATH
    cmd = ["env", "-i"] + envargs + priv + ["--"] + argv
    lines.append("exec " + " ".join(shlex.quote(x) for x in cmd))
    return "\n".join(lines) + "\n"


def container_argv(cluster, pod, ip, c):
    img = image_of(cluster, c)
    env = container_env(cluster, pod, ip, c)
    if "command" in c:
        argv = list(c["command"]) + list(c.get("args") or [])
    else:
        argv = list(img.get("entrypoint", [])) + list(
            c["args"] if "args" in c else img.get("cmd", []))
    if not argv and cluster.get("backend") == "podman":
        argv = ["(the image's entrypoint)"] + list(c.get("args") or [])
    if not argv:
        raise ValueError("container %s: nothing to run" % c["name"])
    return [expand(a, env) for a in argv]


# ---- the podman backend -------------------------------------------------------------------


def podman(cluster):
    return list((cluster.get("podman") or {}).get("argv") or ["podman"])


def podman_pod_name(cluster, podname):
    return (cluster.get("podman") or {}).get("prefix", "rm-pod-") + podname


def podman_ref(cluster, c):
    img = image_of(cluster, c)
    if "ref" not in img:
        raise ValueError("container %s: image %r has no local image (ref)" % (c["name"], c["image"]))
    return img


def podman_run_argv(cluster, pod, ip, vols, c, podname):
    """`podman run` for a container of the patched spec: what kubelet would ask the
    runtime for (user, capabilities, read-only root, no_new_privs, env, volumes)."""
    img = podman_ref(cluster, c)
    uid, gid, sc = security(pod, c)
    env = container_env(cluster, pod, ip, c)
    spec_names = {e["name"] for e in c.get("env") or []}
    if "PATH" not in spec_names:
        del env["PATH"]  # the image's PATH (its config) applies
    argv = podman(cluster) + ["run", "--name", "%s-%s" % (podname, c["name"]), "--pod", podname,
                              "--log-driver", "k8s-file", "--user", "%d:%d" % (uid, gid),
                              "--pull", "never"]
    caps = sc.get("capabilities") or {}
    if sc.get("privileged"):
        argv.append("--privileged")
    else:
        for x in caps.get("drop") or []:
            argv += ["--cap-drop", x.upper()]
        for x in caps.get("add") or []:
            argv += ["--cap-add", x.upper()]
    if sc.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    for m in c.get("volumeMounts") or []:
        src = vols.get(m["name"])
        if src is None:
            raise ValueError("volumeMount %s: no such volume" % m["name"])
        if m.get("subPath"):
            src = os.path.join(src, m["subPath"])
        argv += ["-v", "%s:%s%s" % (src, m["mountPath"], ":ro" if m.get("readOnly") else "")]
    for k, v in sorted(env.items()):
        argv += ["-e", "%s=%s" % (k, v)]
    if c.get("workingDir"):
        argv += ["--workdir", c["workingDir"]]
    # Kubernetes' rules over the image's entrypoint and cmd; the image map may name them
    # for test images whose one image serves several programs.
    if "command" in c:
        ep, args = list(c["command"]), list(c.get("args") or [])
    else:
        ep = img.get("entrypoint")
        args = list(c["args"]) if "args" in c else list(img.get("cmd") or [])
    ep = [expand(a, env) for a in ep] if ep is not None else None
    args = [expand(a, env) for a in args]
    if ep is not None:
        argv += ["--entrypoint", json.dumps(ep)]
    return argv + [img["ref"]] + args


class Pod:
    def __init__(self, cluster, state):
        self.cluster = cluster
        self.state = state
        self.procs = {}      # name -> Popen
        self.status = {"phase": "Pending", "ready": False, "containers": {}, "events": []}
        self.terminating = False
        self.podman = cluster.get("backend") == "podman"

    # -- status and bookkeeping
    def event(self, msg):
        log(self.state, msg)
        self.status["events"].append("%s %s" % (time.strftime("%H:%M:%S"), msg))
        self.save()

    def save(self):
        write_json(os.path.join(self.state, "status.json"), self.status)

    def record_pid(self, pid):
        with open(os.path.join(self.state, "pids"), "a") as f:
            f.write("%d\n" % pid)

    def cstatus(self, name):
        return self.status["containers"].setdefault(name, {"state": "waiting", "ready": False})

    # -- network
    def network(self):
        cl = self.cluster
        ns = self.netns
        node = cl["node_ns"]
        host_if = "vp%s" % self.ip.split(".")[-1]
        steps = [
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", host_if,
             "netns", node],
            ["ip", "-n", node, "link", "set", host_if, "master", cl["bridge"], "up"],
            ["ip", "-n", ns, "addr", "add", "%s/%d" % (self.ip, cl["prefix_len"]), "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "route", "add", "default", "via", cl["node_ip"]],
        ]
        if self.ip6:
            if not cl.get("node_ip6"):
                raise RuntimeError("--ip6: the cluster has no node_ip6")
            # nodad: usable at once rather than tentative for a second, and in place
            # before remora-init looks for a global IPv6 address (its ip6tables rules)
            steps += [
                ["ip", "-n", ns, "addr", "add", "%s/64" % self.ip6, "dev", "eth0", "nodad"],
                ["ip", "-n", ns, "-6", "route", "add", "default", "via", cl["node_ip6"]],
            ]
        if self.podman:
            steps = self.podman_pod() + steps[1:]
        for s in steps:
            r = run(s)
            if r.returncode != 0:
                raise RuntimeError("%s: %s" % (" ".join(s), r.stderr.strip()))
            if s[:2] == ["ip", "netns"] and s[2] in ("add", "attach"):
                with open(os.path.join(self.state, "netns"), "w") as f:
                    f.write(ns + "\n")

    def podman_pod(self):
        """The pod: its infra container holds a network namespace with only lo, which
        `ip netns attach` names; the caller puts eth0 in it. Returns the attach step."""
        pm = podman(self.cluster)
        name = self.podman_pod_name
        write_json(os.path.join(self.state, "podman-argv"), pm)
        with open(os.path.join(self.state, "podman-pod"), "w") as f:
            f.write(name + "\n")
        hosts = ["--add-host=%s:%s" % (n, a) for a, names in host_aliases(self.pod) for n in names]
        for argv in (pm + ["pod", "create", "--name", name, "--network", "none",
                           "--hostname", self.pod["metadata"]["name"]] + hosts,
                     pm + ["pod", "start", name]):
            r = run(argv)
            if r.returncode != 0:
                raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.strip()))
        r = run(pm + ["pod", "inspect", "--format", "{{.InfraContainerID}}", name])
        infra = r.stdout.strip()
        r = run(pm + ["inspect", "--format", "{{.State.Pid}}", infra])
        pid = r.stdout.strip()
        if r.returncode != 0 or not pid.isdigit() or pid == "0":
            raise RuntimeError("podman pod %s: no infra process (%s)" % (name, r.stderr.strip()))
        self.status["podman_pod"] = name
        return [["ip", "netns", "attach", self.netns, pid]]

    def podman_ctr(self, c):
        return "%s-%s" % (self.podman_pod_name, c["name"])

    def podman_spawn(self, c, logname):
        argv = podman_run_argv(self.cluster, self.pod, self.ip, self.vols, c,
                               self.podman_pod_name)
        with open(os.path.join(self.state, "podman-%s.argv" % logname), "w") as f:
            f.write(" ".join(shlex.quote(x) for x in argv) + "\n")
        logf = open(os.path.join(self.state, "%s.log" % logname), "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.record_pid(p.pid)
        return p

    def podman_wait_running(self, c, p, budget_s=60):
        """postStart runs once the container has started, as kubelet's does."""
        deadline = time.time() + budget_s
        while time.time() < deadline:
            r = run(podman(self.cluster) + ["container", "inspect", "--format",
                                            "{{.State.Status}}", self.podman_ctr(c)])
            if r.stdout.strip() in ("running", "exited", "stopped") or p.poll() is not None:
                return
            time.sleep(0.1)

    # -- processes
    def spawn(self, c, argv, logname, extra_env=None, user=None):
        if self.podman:  # a hook or an exec probe: in the running container
            logf = open(os.path.join(self.state, "%s.log" % logname), "ab")
            p = subprocess.Popen(podman(self.cluster) + ["exec", self.podman_ctr(c)] + argv,
                                 stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            logf.close()
            self.record_pid(p.pid)
            return p
        script = launch_script(self.cluster, self.pod, self.ip, self.state, self.vols, c, argv,
                               extra_env, user)
        sfile = os.path.join(self.state, "launch-%s.sh" % logname)
        with open(sfile, "w") as f:
            f.write(script)
        logf = open(os.path.join(self.state, "%s.log" % logname), "ab")
        p = subprocess.Popen(["ip", "netns", "exec", self.netns, "unshare", "-m",
                              "--propagation", "private", "bash", sfile],
                             stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
        logf.close()
        self.record_pid(p.pid)
        return p

    def run_to_end(self, c, argv, logname, timeout):
        p = self.spawn(c, argv, logname)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            return -1

    # -- probes, from the node as kubelet does
    def probe(self, c, probe):
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            h = probe["httpGet"]
            port = h["port"]
            if isinstance(port, str) and not port.isdigit():
                port = next((p["containerPort"] for p in c.get("ports") or []
                             if p.get("name") == port), None)
                if port is None:
                    return False
            scheme = (h.get("scheme") or "HTTP").lower()
            url = "%s://%s:%s%s" % (scheme, h.get("host") or self.ip, port, h.get("path", "/"))
            argv = ["ip", "netns", "exec", self.cluster["node_ns"], "curl", "-s", "-k", "-o",
                    "/dev/null", "-w", "%{http_code}", "-m", str(timeout),
                    "-H", "User-Agent: kube-probe/1.30", "-H", "Accept: */*"]
            for hh in h.get("httpHeaders") or []:
                argv += ["-H", "%s: %s" % (hh["name"], hh["value"])]
            r = run(argv + [url])
            try:
                code = int(r.stdout.strip() or "0")
            except ValueError:
                code = 0
            return 200 <= code < 400
        if "tcpSocket" in probe:
            port = probe["tcpSocket"]["port"]
            r = run(["ip", "netns", "exec", self.cluster["node_ns"], "timeout", str(timeout),
                     "bash", "-c", "exec 3<>/dev/tcp/%s/%s" % (self.ip, port)])
            return r.returncode == 0
        if "exec" in probe:
            return self.run_to_end(c, probe["exec"]["command"], "probe-%s" % c["name"],
                                   timeout) == 0
        return False

    def wait_probe(self, c, probe, what, budget_s):
        period = max(0.2, float(probe.get("periodSeconds", 1)) / 4)
        deadline = time.time() + budget_s
        while time.time() < deadline and not self.terminating:
            if self.probe(c, probe):
                return True
            if self.procs[c["name"]].poll() is not None:
                return False
            time.sleep(period)
        self.event("%s: %s probe did not pass in %d s" % (c["name"], what, budget_s))
        return False

    # -- lifecycle
    def start_container(self, c, native=False):
        name = c["name"]
        argv = container_argv(self.cluster, self.pod, self.ip, c)
        self.event("start %s%s: %s" % (name, " (native sidecar)" if native else "",
                                       " ".join(argv)))
        if self.podman:
            p = self.podman_spawn(c, name)
            self.podman_wait_running(c, p)
        else:
            p = self.spawn(c, argv, name)
        self.procs[name] = p
        cs = self.cstatus(name)
        cs.update({"state": "running", "pid": p.pid, "argv": argv, "native": native})
        self.save()
        hook = ((c.get("lifecycle") or {}).get("postStart") or {}).get("exec")
        if hook:
            rc = self.run_to_end(c, hook["command"], "%s-poststart" % name, 120)
            self.event("%s: postStart %s -> exit %d" % (name, " ".join(hook["command"]), rc))
            if rc != 0:
                # kubelet kills a container whose postStart hook failed
                self.kill(name, signal.SIGKILL)
                raise RuntimeError("%s: postStart hook failed (exit %d)" % (name, rc))
        if native and c.get("startupProbe"):
            if not self.wait_probe(c, c["startupProbe"], "startup", 60):
                raise RuntimeError("%s: startup probe never passed" % name)

    def kill(self, name, sig):
        p = self.procs.get(name)
        if p is not None and p.poll() is None and self.podman:
            run(podman(self.cluster) + ["kill", "--signal", str(int(sig)),
                                        "%s-%s" % (self.podman_pod_name, name)])
            return
        if p is not None and p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass

    def reap(self):
        for name, p in self.procs.items():
            cs = self.cstatus(name)
            if cs["state"] == "running" and p.poll() is not None:
                cs.update({"state": "terminated", "exitCode": p.returncode, "ready": False})
                self.event("%s exited with %d" % (name, p.returncode))

    def create(self, manifest, ip, ip6=None):
        pod = manifest
        pod.setdefault("metadata", {}).setdefault("namespace", "default")
        pod.setdefault("spec", {}).setdefault("serviceAccountName", "default")
        pod["metadata"].setdefault("uid", str(uuid.uuid4()))
        self.ip = ip
        self.ip6 = ip6
        self.netns = self.cluster["netns_prefix"] + pod["metadata"]["name"]
        self.podman_pod_name = podman_pod_name(self.cluster, pod["metadata"]["name"])
        self.save()
        self.pod = override_bootstrap(admit(self.cluster, pod, self.state), self.state)
        write_json(os.path.join(self.state, "pod.json"), self.pod)
        with open(os.path.join(self.state, "ip"), "w") as f:
            f.write(ip + "\n")
        self.status["podIP"] = ip
        self.status["podIPs"] = [{"ip": x} for x in (ip, ip6) if x]
        self.status["netns"] = self.netns
        self.status["injected"] = "remora.io/status" in (self.pod["metadata"].get("annotations")
                                                         or {})
        self.network()
        self.vols = make_volumes(self.cluster, self.pod, ip, self.state)
        if not self.podman:  # podman writes its own, with --add-host (podman_pod)
            write_etc_hosts(self.pod, ip, self.state)
        self.status["phase"] = "Initializing"
        self.save()
        for c in self.pod["spec"].get("initContainers") or []:
            if self.terminating:
                return
            if c.get("restartPolicy") == "Always":
                self.start_container(c, native=True)
                continue
            argv = container_argv(self.cluster, self.pod, ip, c)
            self.event("init %s: %s" % (c["name"], " ".join(argv)))
            if self.podman:
                p = self.podman_spawn(c, c["name"])
                try:
                    rc = p.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    run(podman(self.cluster) + ["kill", self.podman_ctr(c)])
                    rc = p.wait()
            else:
                rc = self.run_to_end(c, argv, c["name"], 120)
            self.cstatus(c["name"]).update({"state": "terminated", "exitCode": rc})
            if rc != 0:
                raise RuntimeError("init container %s failed with %d" % (c["name"], rc))
        for c in self.pod["spec"]["containers"]:
            if self.terminating:
                return
            self.start_container(c)
        self.status["phase"] = "Running"
        self.save()

    def supervise(self):
        spec = self.pod["spec"]
        all_c = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        all_c += spec["containers"]
        last = {}
        while not self.terminating:
            self.reap()
            now = time.time()
            for c in all_c:
                cs = self.cstatus(c["name"])
                rp = c.get("readinessProbe")
                if cs["state"] != "running":
                    continue
                if rp is None:
                    cs["ready"] = True
                    continue
                period = rp.get("periodSeconds", 10)
                if now - last.get(c["name"], 0) >= min(period, 1):
                    last[c["name"]] = now
                    cs["ready"] = self.probe(c, rp)
            ready = all(self.cstatus(c["name"]).get("ready") for c in all_c)
            if ready != self.status["ready"]:
                self.status["ready"] = ready
                self.event("pod %s" % ("Ready" if ready else "not Ready"))
            self.save()
            time.sleep(0.3)

    def terminate(self):
        """Pod deletion: SIGTERM to the app containers (all at once), then, native
        sidecars last, each group within terminationGracePeriodSeconds; SIGKILL after."""
        self.status["phase"] = "Terminating"
        self.status["ready"] = False
        self.save()
        grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30) if hasattr(
            self, "pod") else 5
        spec = self.pod["spec"] if hasattr(self, "pod") else {"containers": []}
        natives = [c["name"] for c in spec.get("initContainers") or []
                   if c.get("restartPolicy") == "Always"]
        apps = [n for n in self.procs if n not in natives]
        specs = {c["name"]: c for c in (spec.get("initContainers") or []) + spec["containers"]}
        deadline = time.time() + grace
        for group in (apps, list(reversed(natives))):
            # kubelet: a container with a preStop hook gets its SIGTERM when the
            # hook returns (the hooks run in parallel, within the grace period);
            # the others get it at once
            hooks = {}
            for n in group:
                hook = ((specs.get(n, {}).get("lifecycle") or {}).get("preStop") or {}).get("exec")
                if hook and self.procs[n].poll() is None:
                    self.event("%s: preStop %s" % (n, " ".join(hook["command"])))
                    hooks[n] = (self.spawn(specs[n], hook["command"], "%s-prestop" % n),
                                time.time())
                else:
                    self.kill(n, signal.SIGTERM)
            for n, (hp, t0) in hooks.items():
                try:
                    rc = hp.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    os.kill(hp.pid, signal.SIGKILL)
                    rc = hp.wait()
                    self.event("%s: preStop still running at the end of the grace period" % n)
                self.cstatus(n)["preStop"] = {
                    "exitCode": rc, "ms": int((time.time() - t0) * 1000)}
                self.event("%s: preStop -> exit %d after %d ms: SIGTERM" % (
                    n, rc, int((time.time() - t0) * 1000)))
                self.kill(n, signal.SIGTERM)
            for n in group:
                p = self.procs[n]
                try:
                    p.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    self.event("%s: still running after the grace period: SIGKILL" % n)
                    self.kill(n, signal.SIGKILL)
                    p.wait()
        self.reap()
        self.status["phase"] = "Deleted"
        self.save()
        cleanup(self.state)


def cleanup(state):
    """Kill everything the pod started (by PID) and delete its namespace."""
    pids = []
    try:
        with open(os.path.join(state, "pids")) as f:
            pids = [int(x) for x in f.read().split()]
    except FileNotFoundError:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        if not alive:
            break
        for _ in range(30):
            alive = [p for p in alive if os.path.exists("/proc/%d" % p)
                     and not open("/proc/%d/stat" % p).read().split(")")[-1].split()[0] == "Z"]
            if not alive:
                break
            time.sleep(0.1)
    try:  # the podman backend's pod: its containers, then the infra holding the netns
        with open(os.path.join(state, "podman-pod")) as f:
            name = f.read().strip()
        with open(os.path.join(state, "podman-argv")) as f:
            pm = json.load(f)
        if name:
            run(pm + ["pod", "rm", "--force", "--time", "0", name])
            os.unlink(os.path.join(state, "podman-pod"))
    except FileNotFoundError:
        pass
    try:
        with open(os.path.join(state, "netns")) as f:
            ns = f.read().strip()
        if ns:
            run(["ip", "netns", "del", ns])
            os.unlink(os.path.join(state, "netns"))
    except FileNotFoundError:
        pass


def cmd_run(args):
    with open(args.cluster) as f:
        cluster = json.load(f)
    with open(args.manifest) as f:
        manifest = json.load(f)
    os.makedirs(args.state, exist_ok=True)
    os.chmod(args.state, 0o755)
    pod = Pod(cluster, args.state)

    def on_term(sig, frame):
        pod.terminating = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        pod.create(manifest, args.ip, args.ip6)
        pod.supervise()
    except Exception as e:  # the pod failed: say why where the test looks
        pod.status["phase"] = "Failed"
        pod.status["reason"] = str(e)
        pod.event("FAILED: %s" % e)
        while not pod.terminating:
            pod.reap()
            time.sleep(0.3)
    pod.terminate()
    return 0


def cmd_exec(args):
    with open(os.path.join(args.state, "pod.json")) as f:
        podspec = json.load(f)
    with open(os.path.join(args.state, "ip")) as f:
        ip = f.read().strip()
    with open(os.path.join(args.state, "netns")) as f:
        netns = f.read().strip()
    with open(args.cluster) as f:
        cluster = json.load(f)
    cs = [c for c in podspec["spec"]["containers"]] + [
        c for c in podspec["spec"].get("initContainers") or []]
    name = args.container or podspec["spec"]["containers"][0]["name"]
    c = next((x for x in cs if x["name"] == name), None)
    if c is None:
        die("no container %s" % name)
    if cluster.get("backend") == "podman":
        with open(os.path.join(args.state, "podman-pod")) as f:
            ctr = "%s-%s" % (f.read().strip(), name)
        user = ["--user", str(args.user)] if args.user is not None else []
        return subprocess.run(podman(cluster) + ["exec"] + user + [ctr] + args.cmd).returncode
    vols = {}
    for v in podspec["spec"].get("volumes") or []:
        vols[v["name"]] = os.path.join(args.state, "volumes", v["name"])
    script = launch_script(cluster, podspec, ip, args.state, vols, c, args.cmd, None, args.user)
    fd, path = tempfile.mkstemp(prefix="exec-", suffix=".sh", dir=args.state)
    with os.fdopen(fd, "w") as f:
        f.write(script)
    try:
        r = subprocess.run(["ip", "netns", "exec", netns, "unshare", "-m", "--propagation",
                            "private", "bash", path])
    finally:
        os.unlink(path)
    return r.returncode


def main():
    ap = argparse.ArgumentParser(prog="pod.py")
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cluster", required=True)
    r.add_argument("--manifest", required=True)
    r.add_argument("--ip", required=True)
    r.add_argument("--ip6", help="an IPv6 address too (dual-stack pod), e.g. fd32::12")
    r.add_argument("--state", required=True)
    e = sub.add_parser("exec")
    e.add_argument("--cluster", required=True)
    e.add_argument("--state", required=True)
    e.add_argument("--container")
    e.add_argument("--user", type=int)
    e.add_argument("cmd", nargs=argparse.REMAINDER)
    c = sub.add_parser("cleanup")
    c.add_argument("--state", required=True)
    args = ap.parse_args()
    if args.cmd_name == "run":
        return cmd_run(args)
    if args.cmd_name == "exec":
        if args.cmd and args.cmd[0] == "--":
            args.cmd = args.cmd[1:]
        if not args.cmd:
            die("exec: no command")
        return cmd_exec(args)
    cleanup(args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
