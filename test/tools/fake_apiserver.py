#!/usr/bin/env python3
"""A small fake Kubernetes API server over HTTPS, for test/integration/publish.sh.

Serves just what `remora-injector publish-ca-root` uses, with real Kubernetes
Status bodies for errors:
  GET   /api/v1/namespaces?labelSelector=S&limit=N&continue=C
  GET   /api/v1/namespaces/NS/configmaps/NAME
  POST  /api/v1/namespaces/NS/configmaps             (application/json)
  PATCH /api/v1/namespaces/NS/configmaps/NAME        (application/merge-patch+json, RFC 7386)
  GET   /openid/v1/jwks                              state.jwks: an object sent as JSON, or a
                                                     string sent as it is (404 when unset)
  POST  /apis/authentication.k8s.io/v1/tokenreviews  (the CA's ca.token_review): 201 with
        status = state.reviews[spec.token] (+ audiences = spec.audiences unless the entry
        has its own), or {"authenticated": false, "error": "invalid bearer token"}
  GET   /api/v1/namespaces/NS/pods/NAME             state.pods[NS][NAME] as a Pod, else 404
Every API request needs `Authorization: Bearer <state.token>` (else 401).

List and watch, as the real API server does them (discovery, docs/discovery.md), for
Services, EndpointSlices (discovery.k8s.io/v1) and Pods, cluster-wide or per namespace:
  GET /api/v1/services                            GET /api/v1/namespaces/NS/services[/NAME]
  GET /apis/discovery.k8s.io/v1/endpointslices    GET /apis/discovery.k8s.io/v1/namespaces/NS/...
  GET /api/v1/pods                                GET /api/v1/namespaces/NS/pods[/NAME]
  list:  ?limit=N&continue=C&labelSelector=S: a consistent snapshot at metadata.resourceVersion
         (pages of one list come from the same snapshot; an expired continue token is 410)
  watch: ?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T: 200, chunked,
         one {"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": ...} line per event
         after RV (RV "" or "0": ADDED for every object first). An RV older than the kept
         history gets an ERROR event with a Status 410 (reason Expired, "too old resource
         version"), or HTTP 410 when cluster.gone_as is "http". Bookmarks every
         cluster.bookmark_s seconds (default 5) while idle.
resourceVersion is one counter over every kind, as etcd's revision is.
  GET /version, /api, /apis, /api/v1, /apis/discovery.k8s.io/v1: API discovery, enough for
  `kubectl get pods -A -w` with a kubeconfig pointing here.

Cluster control (also on the plain-HTTP --control-listen port, which keeps answering while
the API is "down"); bodies are JSON:
  POST /_control/cluster   {"services": N, "endpoints": M, "namespaces": K, "meshed": 0.5,
                            "headless": 0.1, "zones": ["z1","z2","z3"], "reset": true}:
                            generate svc-I in ns-(I mod K) (ClusterIP 10.96/12), M pods
                            svc-I-J (10.64/10, service account sa-I, meshed per the
                            fraction via annotation remora.io/status), EndpointSlices of at
                            most 100 endpoints. reset (default) drops everything first and
                            expires open watches (410).
  PUT  /_control/objects/KIND          an object (KIND services|endpointslices|pods), created
                                       or replaced: ADDED or MODIFIED
  DELETE /_control/objects/KIND/NS/NAME
  GET  /_control/objects/KIND/NS/NAME  the stored object
  POST /_control/scale     {"service": "ns/name", "replicas": N, "meshed": true}
  POST /_control/endpoint  {"pod": "ns/name", "ready": b, "serving": b, "terminating": b}
  POST /_control/mesh      {"pod": "ns/name", "meshed": true}
  POST /_control/compact   {"expire_watches": true}: forget the history (a watch from an
                           older RV gets 410); expire_watches sends 410 to every open watch
  POST /_control/watches   {"action": "drop"}            close every watch stream
                           {"action": "send", "bytes": "..."} raw bytes as one chunk in every
                                                         watch (garbage), then carry on
                           {"action": "truncate"}        half an event, then close mid-chunk
  POST /_control/down | /_control/up   refuse API connections (closed after accept) / accept
  GET  /_control/cluster   counts, the resourceVersion, open watches, requests per kind

Control endpoints (no token; loopback only), for the test to seed and read back:
  GET    /_control/state      the whole state as JSON
  PUT    /_control/state      replace it (any of: token, namespaces, configmaps, faults, max_page)
  GET    /_control/requests   every API request so far: method, path, content_type, body, status,
                              resumed (the TLS session was resumed), host, user_agent
  DELETE /_control/requests   forget them

State:
  {"token": "t",
   "namespaces": {"shop": {"labels": {"remora-injection": "enabled"}, "phase": "Active"}},
   "configmaps": {"shop": {"remora-ca-root": {"metadata": {...}, "data": {...}}}},
   "reviews": {"<token>": {"authenticated": true,
                           "user": {"username": "system:serviceaccount:shop:web"}}},
   "pods": {"shop": {"web-1": {"uid": "..."}}},
   "max_page": 2,          # at most this many namespaces per list page, whatever limit says
   "faults": [{"match": "^GET /api/v1/namespaces/pay/", "kind": "status", "status": 500},
              {"match": "...", "kind": "garbage"},            # non-HTTP bytes, then close
              {"match": "...", "kind": "slow", "seconds": 3}, # answer late
              {"match": "...", "kind": "delete_namespace", "ns": "x"},  # then answer normally
              {"match": "...", "kind": "huge"},         # Content-Length: 17 MiB
              {"match": "...", "kind": "huge_chunked"}, # 17 MiB of chunks
              ...]}       # "times": N limits a fault to its first N matches

  fake_apiserver.py --cert C --key K [--listen 127.0.0.1:0] [--state FILE] [--port-file FILE]
                    [--control-listen 127.0.0.1:0 --control-port-file FILE]
prints "listening on 127.0.0.1:PORT" once ready (and "control on 127.0.0.1:PORT").
"""
import argparse
import base64
import bisect
import collections
import copy
import http.server
import json
import os
import re
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

LOCK = threading.Lock()
STATE = {"token": "", "namespaces": {}, "configmaps": {}, "faults": [], "max_page": None,
         "reviews": {}, "pods": {}}
REQUESTS = []
RV = [1000]


def status_body(code, reason, message, details=None):
    b = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details is not None:
        b["details"] = details
    return b


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def parse_selector(sel):
    """Equality-based selectors: k=v, k==v, k!=v, k, !k (comma-separated)."""
    reqs = []
    for part in [p.strip() for p in sel.split(",") if p.strip()]:
        m = re.fullmatch(r"([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)", part)
        if m:
            reqs.append((m.group(1), m.group(2), m.group(3)))
        elif re.fullmatch(r"![A-Za-z0-9./_-]+", part):
            reqs.append((part[1:], "absent", None))
        elif re.fullmatch(r"[A-Za-z0-9./_-]+", part):
            reqs.append((part, "exists", None))
        else:
            raise ValueError("unable to parse requirement: %r" % part)
    return reqs


def selector_matches(reqs, labels):
    for k, op, v in reqs:
        if op in ("=", "==") and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
        if op == "absent" and k in labels:
            return False
    return True


def ns_object(name, ns):
    phase = ns.get("phase", "Active")
    md = {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
          "resourceVersion": "1", "labels": dict(ns.get("labels", {}),
                                                 **{"kubernetes.io/metadata.name": name})}
    if phase == "Terminating":
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": md, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": phase}}


# ---- the cluster: Services, EndpointSlices, Pods with list/watch ----------------------------
# Objects are kept encoded (compact JSON bytes): a list is a join, a watch event a
# concatenation, and 100,000 pods cost their bytes, not Python dicts.
KINDS = {
    "services": ("Service", "v1", "ServiceList"),
    "endpointslices": ("EndpointSlice", "discovery.k8s.io/v1", "EndpointSliceList"),
    "pods": ("Pod", "v1", "PodList"),
}
STATUS_ANNOTATION = "remora.io/status"
MESHED_STATUS = json.dumps({"version": "0.1.0", "mode": "native"})
MAX_SLICE = 100  # endpoints per EndpointSlice, as the endpointslice controller's default


def enc(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


class Store:
    def __init__(self, kind):
        self.kind = kind
        self.objs = {}        # "ns/name" -> (rv, bytes, labels or None)
        self.hist = []        # (rv, type, ns, labels, bytes), rv ascending
        self.hist_rv = []
        self.oldest = 0       # a watch from RV >= oldest is served from hist, else 410
        self.watchers = set()
        self.counts = collections.Counter()


class Watcher:
    def __init__(self, ns, reqs):
        self.ns, self.reqs = ns, reqs
        self.q = collections.deque()   # (type, bytes) or ("ctl", action, arg)
        self.ev = threading.Event()

    def matches(self, ns, labels):
        return (self.ns is None or ns == self.ns) and \
            (not self.reqs or selector_matches(self.reqs, labels or {}))

    def push(self, item):
        self.q.append(item)
        self.ev.set()


STORES = {k: Store(k) for k in KINDS}
CL = {"bookmark_s": 5.0, "gone_as": "event", "history": 300000, "down": False}
SNAPS = collections.OrderedDict()   # list snapshots for continue tokens (bounded)
IDX = {"pod_slice": {}, "slice_pods": {}, "svc_slices": collections.defaultdict(set),
       "next_ip": 1, "uid": 0}


def new_uid():
    IDX["uid"] += 1
    return "00000000-0000-4000-8000-%012x" % IDX["uid"]


def pod_ip():
    n = IDX["next_ip"]
    IDX["next_ip"] += 1
    return "10.%d.%d.%d" % (64 + (n >> 16), (n >> 8) & 255, n & 255)


def _event(st, rv, typ, ns, labels, b):
    st.hist.append((rv, typ, ns, labels, b))
    st.hist_rv.append(rv)
    if len(st.hist) > CL["history"]:
        cut = len(st.hist) // 2
        st.oldest = st.hist[cut - 1][0]
        del st.hist[:cut]
        del st.hist_rv[:cut]
    for w in st.watchers:
        if w.matches(ns, labels):
            w.push((typ, b))


def _index_slice(key, obj):
    """Under LOCK: which pods a slice holds, which slices a Service has."""
    _unindex_slice(key)
    pods = []
    for ep in obj.get("endpoints") or []:
        t = (ep.get("targetRef") or {}) if isinstance(ep, dict) else {}
        if isinstance(t, dict) and t.get("kind") == "Pod" and t.get("name"):
            pk = "%s/%s" % (t.get("namespace") or key.split("/")[0], t["name"])
            pods.append(pk)
            IDX["pod_slice"][pk] = key
    IDX["slice_pods"][key] = pods
    svc = ((obj.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/service-name")
    if svc:
        IDX["svc_slices"][key.split("/")[0] + "/" + svc].add(key)


def _unindex_slice(key):
    for pk in IDX["slice_pods"].pop(key, []):
        if IDX["pod_slice"].get(pk) == key:
            del IDX["pod_slice"][pk]
    for s in IDX["svc_slices"].values():
        s.discard(key)


def c_put(kind, obj):
    """Under LOCK: create or replace; returns the stored bytes."""
    st = STORES[kind]
    md = obj.setdefault("metadata", {})
    if not isinstance(md.get("name"), str) or not md["name"]:
        raise ValueError("metadata.name is required")
    ns = md.setdefault("namespace", "default")
    key = ns + "/" + md["name"]
    RV[0] += 1
    rv = RV[0]
    old = st.objs.get(key)
    md["resourceVersion"] = str(rv)
    if "uid" not in md:
        md["uid"] = json.loads(old[1])["metadata"].get("uid") if old else new_uid()
    md.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    k, v, _ = KINDS[kind]
    obj.setdefault("kind", k)
    obj.setdefault("apiVersion", v)
    b = enc(obj)
    labels = md.get("labels") or None
    st.objs[key] = (rv, b, labels)
    if kind == "endpointslices":
        _index_slice(key, obj)
    _event(st, rv, "MODIFIED" if old else "ADDED", ns, labels, b)
    return b


def c_get(kind, key):
    o = STORES[kind].objs.get(key)
    return json.loads(o[1]) if o else None


def c_delete(kind, key):
    st = STORES[kind]
    o = st.objs.pop(key, None)
    if o is None:
        return False
    RV[0] += 1
    obj = json.loads(o[1])
    obj["metadata"]["resourceVersion"] = str(RV[0])
    if kind == "endpointslices":
        _unindex_slice(key)
    _event(st, RV[0], "DELETED", key.split("/")[0], o[2], enc(obj))
    return True


def c_expire_watches(reason_rv=None):
    for st in STORES.values():
        for w in list(st.watchers):
            w.push(("ctl", "expire", reason_rv))


def c_compact():
    """Forget every event so far: a watch from an RV before now gets 410."""
    RV[0] += 1  # so that every RV a client holds is older than what is kept
    for st in STORES.values():
        st.hist.clear()
        st.hist_rv.clear()
        st.oldest = RV[0]
    SNAPS.clear()


def c_reset():
    c_expire_watches()
    for st in STORES.values():
        st.objs.clear()
    IDX["pod_slice"].clear()
    IDX["slice_pods"].clear()
    IDX["svc_slices"].clear()
    c_compact()


def make_pod(ns, name, app, sa, ip, zone, meshed, ready=True):
    md = {"name": name, "namespace": ns, "labels": {"app": app}}
    if meshed:
        md["annotations"] = {STATUS_ANNOTATION: MESHED_STATUS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md,
            "spec": {"serviceAccountName": sa, "nodeName": "node-" + zone,
                     "containers": [{"name": "app", "image": "app:1",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def make_endpoint(pod, uid):
    md = pod["metadata"]
    return {"addresses": [pod["status"]["podIP"]],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": md["namespace"], "name": md["name"], "uid": uid},
            "nodeName": pod["spec"]["nodeName"], "zone": pod["spec"]["nodeName"][5:]}


def svc_ports(i):
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    if i % 3 == 2:
        ports.append({"name": "grpc-api", "port": 9090, "targetPort": 9090, "protocol": "TCP",
                      "appProtocol": "grpc"})
    return ports


def slice_ports(ports):
    out = []
    for p in ports:
        q = {"name": p["name"], "port": p["targetPort"], "protocol": p["protocol"]}
        if "appProtocol" in p:
            q["appProtocol"] = p["appProtocol"]
        out.append(q)
    return out


def gen_cluster(spec):
    """Under LOCK. Deterministic: the same spec gives the same names, IPs and accounts."""
    n = int(spec.get("services", 0))
    m = int(spec.get("endpoints", 0))
    k = max(1, int(spec.get("namespaces", 10)))
    meshed = float(spec.get("meshed", 0.5))
    headless = float(spec.get("headless", 0.0))
    zones = spec.get("zones") or ["z1", "z2", "z3"]
    if n < 0 or m < 0 or n > 65000 or m > 1000 or n * m > 2000000:
        raise ValueError("services in 0..65000, endpoints in 0..1000, at most 2,000,000 pods")
    if spec.get("reset", True):
        c_reset()
        IDX["next_ip"] = 1
    for i in range(n):
        ns = "ns-%d" % (i % k)
        name = "svc-%d" % i
        is_meshed = int((i + 1) * meshed) > int(i * meshed)
        is_headless = int((i + 1) * headless) > int(i * headless)
        ports = svc_ports(i)
        cip = "None" if is_headless else "10.%d.%d.%d" % (96 + (i >> 16), ((i + 1) >> 8) & 255,
                                                           (i + 1) & 255)
        c_put("services", {"metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                           "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                                    "selector": {"app": name}, "ports": ports}})
        eps = []
        for j in range(m):
            pod = make_pod(ns, "%s-%d" % (name, j), name, "sa-%d" % i, pod_ip(),
                           zones[j % len(zones)], is_meshed)
            c_put("pods", pod)
            eps.append(make_endpoint(pod, pod["metadata"]["uid"]))
        for s in range(0, max(len(eps), 1), MAX_SLICE):
            c_put("endpointslices", {
                "metadata": {"name": "%s-%d" % (name, s // MAX_SLICE), "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name,
                                        "endpointslice.kubernetes.io/managed-by":
                                            "endpointslice-controller.k8s.io"}},
                "addressType": "IPv4", "ports": slice_ports(ports),
                "endpoints": eps[s:s + MAX_SLICE]})
    if spec.get("reset", True):
        c_compact()  # a freshly seeded cluster has no history: clients list it
    return cluster_summary()


def cluster_summary():
    return {"resourceVersion": str(RV[0]),
            "objects": {k: len(st.objs) for k, st in STORES.items()},
            "watches": {k: len(st.watchers) for k, st in STORES.items()},
            "requests": {k: dict(st.counts) for k, st in STORES.items()},
            "oldest": {k: st.oldest for k, st in STORES.items()},
            "down": CL["down"], "bookmark_s": CL["bookmark_s"], "gone_as": CL["gone_as"]}


def c_scale(spec):
    svc = spec["service"]
    want = int(spec["replicas"])
    if not 0 <= want <= 10000:
        raise ValueError("replicas in 0..10000")
    sobj = c_get("services", svc)
    if sobj is None:
        raise KeyError("no service " + svc)
    ns, name = svc.split("/", 1)
    slices = sorted(IDX["svc_slices"].get(svc, ()), key=lambda s: (len(s), s))
    sl = [c_get("endpointslices", s) for s in slices]
    have = sum(len(s.get("endpoints") or []) for s in sl)
    ports = sobj["spec"].get("ports") or []
    if want > have:
        tmpl = None
        for s in sl:
            for ep in s.get("endpoints") or []:
                tmpl = c_get("pods", "%s/%s" % (ns, ep["targetRef"]["name"]))
                break
            if tmpl:
                break
        sa = tmpl["spec"].get("serviceAccountName", "default") if tmpl else "default"
        meshed = spec.get("meshed", bool(tmpl and STATUS_ANNOTATION in
                                         (tmpl["metadata"].get("annotations") or {})))
        j = 0
        new_eps = []
        for _ in range(want - have):
            while ("%s/%s-%d" % (ns, name, j)) in STORES["pods"].objs:
                j += 1
            pod = make_pod(ns, "%s-%d" % (name, j), name, sa, pod_ip(),
                           ["z1", "z2", "z3"][j % 3], meshed)
            c_put("pods", pod)
            new_eps.append(make_endpoint(pod, pod["metadata"]["uid"]))
        if not sl:
            sl.append({"metadata": {"name": name + "-0", "namespace": ns,
                                    "labels": {"kubernetes.io/service-name": name}},
                       "addressType": "IPv4", "ports": slice_ports(ports), "endpoints": []})
        changed = set()
        for ep in new_eps:
            s = next((x for x in sl if len(x.get("endpoints") or []) < MAX_SLICE), None)
            if s is None:
                s = {"metadata": {"name": "%s-%d" % (name, len(sl)), "namespace": ns,
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4", "ports": slice_ports(ports), "endpoints": []}
                sl.append(s)
            s.setdefault("endpoints", []).append(ep)
            changed.add(id(s))
        for s in sl:
            if id(s) in changed:
                c_put("endpointslices", s)
    elif want < have:
        drop = have - want
        gone = []
        for s in reversed(sl):
            eps = s.get("endpoints") or []
            k = min(drop, len(eps))
            if k == 0:
                continue
            gone += eps[len(eps) - k:]
            s["endpoints"] = eps[:len(eps) - k]
            drop -= k
            c_put("endpointslices", s)
            if drop == 0:
                break
        for ep in gone:
            c_delete("pods", "%s/%s" % (ns, ep["targetRef"]["name"]))
    return {"service": svc, "replicas": want, "was": have}


def c_endpoint(spec):
    pk = spec["pod"]
    sk = IDX["pod_slice"].get(pk)
    if sk is None:
        raise KeyError("no endpoint for pod " + pk)
    s = c_get("endpointslices", sk)
    for ep in s.get("endpoints") or []:
        t = ep.get("targetRef") or {}
        if "%s/%s" % (t.get("namespace"), t.get("name")) == pk:
            c = ep.setdefault("conditions", {})
            for f in ("ready", "serving", "terminating"):
                if f in spec:
                    c[f] = bool(spec[f])
    pod = c_get("pods", pk)
    if pod is not None and ("ready" in spec or spec.get("terminating")):
        pod["status"]["conditions"] = [{"type": "Ready",
                                        "status": "True" if spec.get("ready", True) else "False"}]
        if spec.get("terminating"):
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        c_put("pods", pod)
    c_put("endpointslices", s)
    # when the event went to the open watches (CLOCK_MONOTONIC, comparable across processes)
    return {"pod": pk, "slice": sk, "monotonic": time.monotonic()}


def c_mesh(spec):
    pk = spec["pod"]
    pod = c_get("pods", pk)
    if pod is None:
        raise KeyError("no pod " + pk)
    ann = pod["metadata"].setdefault("annotations", {})
    if spec.get("meshed", True):
        ann[STATUS_ANNOTATION] = MESHED_STATUS
    else:
        ann.pop(STATUS_ANNOTATION, None)
    c_put("pods", pod)
    return {"pod": pk, "meshed": STATUS_ANNOTATION in ann}


def api_kind(parts):
    """(kind, namespace or None, name or None) for a list/watch/get path, else None."""
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif parts[:3] == ["apis", "discovery.k8s.io", "v1"]:
        rest = parts[3:]
    else:
        return None
    ns = name = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if not rest or rest[0] not in KINDS or len(rest) > 2:
        return None
    kind = rest[0]
    if (kind == "endpointslices") != (parts[0] == "apis"):
        return None
    if len(rest) == 2:
        name = rest[1]
    return kind, ns, name


def _resources(*rs):
    return [{"name": n, "singularName": sn, "namespaced": ns, "kind": k, "shortNames": sh,
             "verbs": ["get", "list", "watch"]} for n, sn, ns, k, sh in rs]


# API discovery, enough for kubectl (get, -w) to find the three kinds
DISCOVERY_DOCS = {
    "/version": {"major": "1", "minor": "29", "gitVersion": "v1.29.0-fake", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "discovery.k8s.io",
         "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]},
    "/api/v1": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
                "resources": _resources(("pods", "pod", True, "Pod", ["po"]),
                                        ("services", "service", True, "Service", ["svc"]),
                                        ("namespaces", "namespace", False, "Namespace", ["ns"]),
                                        ("configmaps", "configmap", True, "ConfigMap", ["cm"]))},
    "/apis/discovery.k8s.io/v1": {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
        "resources": _resources(("endpointslices", "endpointslice", True, "EndpointSlice", []))},
}


def event_line(typ, b):
    return b'{"type":"%s","object":%s}\n' % (typ.encode(), b)


def gone_status(rv, oldest):
    return status_body(410, "Expired", "too old resource version: %d (%d)" % (rv, oldest))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-apiserver"
    disable_nagle_algorithm = True  # as Go's net/http does: head and body go out at once

    def log_message(self, fmt, *args):  # quiet: the requests are recorded
        pass

    # ---- plumbing -------------------------------------------------------------
    def send_json(self, code, obj, reason=None):
        body = json.dumps(obj).encode()
        self.send_response(code, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
        self.answered = code

    def status(self, code, reason, message, details=None):
        self.send_json(code, status_body(code, reason, message, details))

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def handle_any(self, method):
        self.answered = None
        raw = self.body()
        u = urllib.parse.urlsplit(self.path)
        if u.path.startswith("/_control/") or getattr(self.server, "control_only", False):
            return self.control(method, u.path, raw)
        rec = {"method": method, "path": self.path,
               "content_type": self.headers.get("Content-Type"),
               "body": raw.decode("utf-8", "replace"), "status": None,
               "resumed": getattr(self.connection, "session_reused", None),
               "host": self.headers.get("Host"), "user_agent": self.headers.get("User-Agent")}
        with LOCK:
            REQUESTS.append(rec)
            fault = self.pick_fault("%s %s" % (method, self.path))
        try:
            if fault is not None and self.inject(fault):
                return
            auth = self.headers.get("Authorization", "")
            with LOCK:
                want = "Bearer " + STATE["token"]
            if auth != want:
                return self.status(401, "Unauthorized", "Unauthorized")
            self.api(method, u, raw)
        finally:
            rec["status"] = self.answered

    def pick_fault(self, line):
        for f in STATE.get("faults") or []:
            if re.search(f.get("match", ""), line) is None:
                continue
            if "times" in f:
                if f["times"] <= 0:
                    continue
                f["times"] -= 1
            return dict(f)
        return None

    def inject(self, f):
        """True when the fault answered (or refused to)."""
        kind = f.get("kind")
        if kind == "status":
            code = int(f.get("status", 500))
            self.status(code, f.get("reason", "InternalError"),
                        f.get("message", "fake-apiserver: injected failure %d" % code))
            return True
        if kind == "garbage":
            self.wfile.write(f.get("bytes", "SSH-2.0-OpenSSH_9.2p1 not HTTP\r\n\x00\x01").encode())
            self.wfile.flush()
            self.close_connection = True
            self.answered = "garbage"
            return True
        if kind == "slow":
            time.sleep(float(f.get("seconds", 5)))
            return False  # then answer normally (the client has gone)
        if kind == "huge":  # a declared length past any sane bound
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(int(f.get("bytes", 17 << 20))))
            self.end_headers()
            self.wfile.write(b'{"kind": "NamespaceList", "items": [')
            self.close_connection = True
            self.answered = "huge"
            return True
        if kind == "huge_chunked":  # no length: the bound must hold while streaming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * (1 << 20)
            try:
                for _ in range(int(f.get("mib", 17))):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client stopped reading at its bound
            self.close_connection = True
            self.answered = "huge_chunked"
            return True
        if kind == "delete_namespace":
            with LOCK:
                STATE["namespaces"].pop(f["ns"], None)
                STATE["configmaps"].pop(f["ns"], None)
            return False
        return False

    # ---- list / watch / get of the cluster's kinds ---------------------------------------
    def cluster_api(self, kind, ns, name, q):
        st = STORES[kind]
        if name is not None:
            with LOCK:
                st.counts["get"] += 1
                o = st.objs.get("%s/%s" % (ns, name))
            if o is None:
                return self.status(404, "NotFound", '%s "%s" not found' % (kind, name),
                                   {"name": name, "kind": kind})
            return self.send_bytes(200, o[1])
        try:
            reqs = parse_selector(q.get("labelSelector", [""])[0])
        except ValueError as e:
            return self.status(400, "BadRequest", str(e))
        if q.get("watch", [""])[0] in ("1", "true"):
            return self.watch(st, ns, reqs, q)
        return self.list_kind(st, ns, reqs, q)

    def send_bytes(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
        self.answered = code

    def list_kind(self, st, ns, reqs, q):
        try:
            limit = int(q.get("limit", ["0"])[0] or 0)
            assert limit >= 0
        except (ValueError, AssertionError):
            return self.status(400, "BadRequest", "limit must be a non-negative integer")
        cont = q.get("continue", [""])[0]
        with LOCK:
            st.counts["list"] += 1
            if cont:
                try:
                    tok = json.loads(base64.urlsafe_b64decode(cont.encode()))
                    snap_id, off, list_rv = tok["id"], int(tok["off"]), int(tok["rv"])
                except Exception:
                    return self.status(400, "BadRequest", "continue key is not valid")
                items = SNAPS.get(snap_id)
                if items is None:
                    return self.status(410, "Expired", "The provided continue parameter is too old "
                                       "to display a consistent list result. You can start a new "
                                       "list without the continue parameter.")
            else:
                off, list_rv = 0, RV[0]
                items = [(key, o[1]) for key, o in st.objs.items()
                         if (ns is None or key.startswith(ns + "/")) and
                         (not reqs or selector_matches(reqs, o[2] or {}))]
                snap_id = None
        if not cont:
            items.sort()
        page = items[off:off + limit] if limit else items[off:]
        md = b'"resourceVersion":"%d"' % list_rv
        if limit and off + limit < len(items):
            with LOCK:
                if snap_id is None:
                    snap_id = uuid.uuid4().hex
                    SNAPS[snap_id] = items
                    while len(SNAPS) > 32:
                        SNAPS.popitem(last=False)
            tok = base64.urlsafe_b64encode(json.dumps(
                {"id": snap_id, "off": off + limit, "rv": list_rv}).encode())
            md += b',"continue":"%s","remainingItemCount":%d' % (tok, len(items) - off - limit)
        k, v, lk = KINDS[st.kind]
        body = b'{"kind":"%s","apiVersion":"%s","metadata":{%s},"items":[%s]}' % (
            lk.encode(), v.encode(), md, b",".join(b for _, b in page))
        self.send_bytes(200, body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def watch(self, st, ns, reqs, q):
        rv_s = q.get("resourceVersion", [""])[0]
        bookmarks = q.get("allowWatchBookmarks", [""])[0] in ("1", "true")
        try:
            timeout = float(q.get("timeoutSeconds", ["0"])[0] or 0)
            r = int(rv_s) if rv_s not in ("", "0") else None
            assert timeout >= 0 and (r is None or r >= 0)
        except (ValueError, AssertionError):
            return self.status(400, "BadRequest", "bad resourceVersion or timeoutSeconds")
        w = Watcher(ns, reqs)
        gone = None
        with LOCK:
            st.counts["watch"] += 1
            if r is None:
                first = [(b"ADDED", o[1]) for key, o in sorted(st.objs.items())
                         if w.matches(key.split("/")[0], o[2])]
            elif r < st.oldest:
                gone = gone_status(r, st.oldest)
            else:
                i = bisect.bisect_right(st.hist_rv, r)
                first = [(typ.encode(), b) for (_, typ, ns_, lab, b) in st.hist[i:]
                         if w.matches(ns_, lab)]
            if gone is None:
                st.watchers.add(w)
            gone_http = CL["gone_as"] == "http"
            kind_name, api_version, _ = KINDS[st.kind]
        if gone is not None and gone_http:
            return self.send_json(410, gone)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.answered = 200
        self.close_connection = True
        end = time.monotonic() + timeout if timeout else None
        idle_since = time.monotonic()
        try:
            if gone is not None:
                self.chunk(b'{"type":"ERROR","object":%s}\n' % enc(gone))
                self.wfile.write(b"0\r\n\r\n")
                return
            for i in range(0, len(first), 512):
                self.chunk(b"".join(event_line(t.decode(), b) for t, b in first[i:i + 512]))
            while True:
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                step = CL["bookmark_s"] - (now - idle_since) if bookmarks else 1.0
                if end is not None:
                    step = min(step, end - now)
                w.ev.wait(max(step, 0.001))
                w.ev.clear()
                if select.select([self.connection], [], [], 0)[0]:
                    break  # the client sends nothing after its request: it has gone
                out = []
                stop = None
                while w.q:
                    item = w.q.popleft()
                    if item[0] == "ctl" and item[1] == "send":
                        out.append(item[2])  # raw bytes in the stream, then carry on
                        continue
                    if item[0] == "ctl":
                        stop = item
                        break
                    out.append(event_line(item[0], item[1]))
                if out:
                    self.chunk(b"".join(out))
                    idle_since = time.monotonic()
                if stop is not None:
                    return self.watch_ctl(st, stop)
                if bookmarks and not out and time.monotonic() - idle_since >= CL["bookmark_s"]:
                    with LOCK:
                        bm = None if w.q else RV[0]
                    if bm is not None:
                        self.chunk(b'{"type":"BOOKMARK","object":{"kind":"%s","apiVersion":"%s",'
                                   b'"metadata":{"resourceVersion":"%d"}}}\n'
                                   % (kind_name.encode(), api_version.encode(), bm))
                        idle_since = time.monotonic()
            self.wfile.write(b"0\r\n\r\n")  # timeoutSeconds: the stream ends cleanly
        except OSError:
            pass  # the client went away
        finally:
            with LOCK:
                st.watchers.discard(w)

    def watch_ctl(self, st, item):
        """A control action on this watch stream; the stream ends unless it is "send"."""
        _, action, arg = item
        if action == "expire":
            with LOCK:
                g = gone_status(arg if arg is not None else st.oldest - 1, st.oldest)
            self.chunk(b'{"type":"ERROR","object":%s}\n' % enc(g))
            self.wfile.write(b"0\r\n\r\n")
        elif action == "drop":
            self.wfile.write(b"0\r\n\r\n")
        elif action == "truncate":
            half = b'{"type":"MODIFIED","object":{"kind":"%s","metadata":{"name":"cut' % \
                KINDS[st.kind][0].encode()
            self.wfile.write(b"%x\r\n%s" % (len(half) * 2, half))
            self.abort()
        elif action == "reset":
            self.abort()

    def abort(self):
        """Close the connection at once, with a TCP reset."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    # ---- control --------------------------------------------------------------
    def control(self, method, path, raw):
        if path.startswith("/_control/") and path.split("/")[2] in (
                "cluster", "objects", "scale", "endpoint", "mesh", "compact", "watches", "down", "up"):
            try:
                body = json.loads(raw) if raw.strip() else {}
                if not isinstance(body, dict) and path.split("/")[2] != "objects":
                    raise ValueError("want a JSON object")
                with LOCK:
                    out = self.cluster_control(method, path, body)
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                return self.status(400, "BadRequest", "control: %s: %r" % (path, e))
            if out is None:
                return self.status(404, "NotFound", "no such control endpoint")
            return self.send_json(200, out)
        with LOCK:
            if path == "/_control/state" and method == "GET":
                return self.send_json(200, STATE)
            if path == "/_control/state" and method == "PUT":
                STATE.update(json.loads(raw or b"{}"))
                return self.send_json(200, STATE)
            if path == "/_control/requests" and method == "GET":
                return self.send_json(200, REQUESTS)
            if path == "/_control/requests" and method == "DELETE":
                REQUESTS.clear()
                return self.send_json(200, [])
        self.status(404, "NotFound", "no such control endpoint")

    def cluster_control(self, method, path, body):
        """Under LOCK. The answer as JSON, or None for an unknown endpoint."""
        parts = path.strip("/").split("/")
        what = parts[1]
        if what == "cluster" and method == "GET":
            return cluster_summary()
        if what == "cluster" and method == "POST":
            for k in ("bookmark_s", "gone_as", "history"):
                if k in body:
                    CL[k] = type(CL[k])(body[k])
            if "services" in body:
                return gen_cluster(body)
            return cluster_summary()
        if what == "objects" and len(parts) >= 3 and parts[2] in KINDS:
            kind = parts[2]
            if method == "PUT" and len(parts) == 3:
                objs = body if isinstance(body, list) else [body]
                return [json.loads(c_put(kind, o)) for o in objs]
            if len(parts) == 5 and method == "GET":
                return c_get(kind, parts[3] + "/" + parts[4])
            if len(parts) == 5 and method == "DELETE":
                return {"deleted": c_delete(kind, parts[3] + "/" + parts[4])}
            return None
        if method != "POST":
            return None
        if what == "scale":
            return c_scale(body)
        if what == "endpoint":
            return c_endpoint(body)
        if what == "mesh":
            return c_mesh(body)
        if what == "compact":
            c_compact()
            if body.get("expire_watches"):
                c_expire_watches()
            return cluster_summary()
        if what == "watches":
            action = body.get("action", "drop")
            if action not in ("drop", "send", "truncate", "reset", "expire"):
                raise ValueError("action: drop, send, truncate, reset or expire")
            arg = body.get("bytes", "").encode() if action == "send" else None
            n = 0
            for st in STORES.values():
                if body.get("kind") not in (None, st.kind):
                    continue
                for w in list(st.watchers):
                    w.push(("ctl", action, arg))
                    n += 1
            return {"watches": n, "action": action}
        if what == "down":
            CL["down"] = True
            for st in STORES.values():
                for w in list(st.watchers):
                    w.push(("ctl", "reset", None))
            return cluster_summary()
        if what == "up":
            CL["down"] = False
            return cluster_summary()
        return None

    # ---- the API --------------------------------------------------------------
    def api(self, method, u, raw):
        q = urllib.parse.parse_qs(u.query)
        if method == "GET" and u.path in DISCOVERY_DOCS:
            return self.send_json(200, DISCOVERY_DOCS[u.path])
        parts = u.path.strip("/").split("/")
        ak = api_kind(parts)
        if ak is not None and method == "GET" and not (
                ak[0] == "pods" and ak[2] is not None and ak[2] in STATE.get("pods", {}).get(ak[1], {})):
            return self.cluster_api(ak[0], ak[1], ak[2], q)
        if u.path == "/openid/v1/jwks" and method == "GET":
            with LOCK:
                j = STATE.get("jwks")
            if j is None:
                return self.status(404, "NotFound", "the server could not find the requested resource")
            body = (j if isinstance(j, str) else json.dumps(j)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/jwk-set+json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            self.answered = 200
            return
        parts = u.path.strip("/").split("/")
        if u.path == "/apis/authentication.k8s.io/v1/tokenreviews" and method == "POST":
            return self.token_review(raw)
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods" \
                and method == "GET":
            return self.get_pod(parts[3], parts[5])
        if parts[:2] != ["api", "v1"] or len(parts) < 3 or parts[2] != "namespaces":
            return self.status(404, "NotFound", "the server could not find the requested resource")
        if len(parts) == 3 and method == "GET":
            return self.list_namespaces(q)
        if len(parts) == 5 and parts[4] == "configmaps" and method == "POST":
            return self.create_configmap(parts[3], raw)
        if len(parts) == 6 and parts[4] == "configmaps":
            if method == "GET":
                return self.get_configmap(parts[3], parts[5])
            if method == "PATCH":
                return self.patch_configmap(parts[3], parts[5], raw)
        return self.status(405, "MethodNotAllowed", "the server does not allow this method")

    def list_namespaces(self, q):
        try:
            reqs = parse_selector(q.get("labelSelector", [""])[0])
        except ValueError as e:
            return self.status(400, "BadRequest", str(e))
        limit = int(q.get("limit", ["0"])[0] or 0)
        cont = q.get("continue", [""])[0]
        with LOCK:
            if STATE.get("max_page"):
                limit = min(limit or STATE["max_page"], STATE["max_page"])
            names = sorted(n for n, ns in STATE["namespaces"].items()
                           if selector_matches(reqs, dict(ns.get("labels", {}),
                                                          **{"kubernetes.io/metadata.name": n})))
            start = 0
            if cont:
                try:
                    after = base64.urlsafe_b64decode(cont.encode()).decode()
                except Exception:
                    return self.status(400, "BadRequest", "continue key is not valid")
                start = len([n for n in names if n <= after])
            page = names[start:start + limit] if limit else names[start:]
            more = limit and start + limit < len(names)
            items = [ns_object(n, STATE["namespaces"][n]) for n in page]
        md = {"resourceVersion": str(RV[0])}
        if more:
            md["continue"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        self.send_json(200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": md,
                             "items": items})

    def token_review(self, raw):
        try:
            obj = json.loads(raw)
            token = obj["spec"]["token"]
            assert obj.get("kind") == "TokenReview" and obj.get("apiVersion") == \
                "authentication.k8s.io/v1" and isinstance(token, str)
        except Exception as e:
            return self.status(400, "BadRequest", "bad TokenReview: %r" % e)
        with LOCK:
            st = copy.deepcopy(STATE.get("reviews", {}).get(token))
        if st is None:
            st = {"authenticated": False, "error": "invalid bearer token"}
        elif "audiences" not in st and obj["spec"].get("audiences"):
            st["audiences"] = obj["spec"]["audiences"]
        out = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": None},
               "spec": {"audiences": obj["spec"].get("audiences")}, "status": st}
        self.send_json(201, out)

    def get_pod(self, ns, name):
        with LOCK:
            p = copy.deepcopy(STATE.get("pods", {}).get(ns, {}).get(name))
        if p is None:
            return self.status(404, "NotFound", 'pods "%s" not found' % name,
                               {"name": name, "kind": "pods"})
        self.send_json(200, {"kind": "Pod", "apiVersion": "v1",
                             "metadata": {"name": name, "namespace": ns, "uid": p.get("uid")},
                             "spec": {}, "status": {"phase": p.get("phase", "Running")}})

    def not_found(self, name):
        self.status(404, "NotFound", 'configmaps "%s" not found' % name,
                    {"name": name, "kind": "configmaps"})

    def get_configmap(self, ns, name):
        with LOCK:
            cm = STATE["configmaps"].get(ns, {}).get(name)
            cm = copy.deepcopy(cm)
        if cm is None:
            return self.not_found(name)
        self.send_json(200, cm)

    def create_configmap(self, ns, raw):
        if (self.headers.get("Content-Type") or "").split(";")[0] != "application/json":
            return self.status(415, "UnsupportedMediaType", "want application/json")
        try:
            obj = json.loads(raw)
            name = obj["metadata"]["name"]
            assert obj.get("kind") == "ConfigMap" and obj.get("apiVersion") == "v1"
        except Exception as e:
            return self.status(400, "BadRequest", "bad ConfigMap: %r" % e)
        with LOCK:
            nso = STATE["namespaces"].get(ns)
            if nso is None:
                return self.status(404, "NotFound", 'namespaces "%s" not found' % ns,
                                   {"name": ns, "kind": "namespaces"})
            if nso.get("phase") == "Terminating":
                return self.status(403, "Forbidden", 'configmaps "%s" is forbidden: unable to create '
                                   'new content in namespace %s because it is being terminated'
                                   % (name, ns), {"name": name, "kind": "configmaps", "causes": [
                                       {"reason": "NamespaceTerminating", "field": "metadata.namespace"}]})
            if obj["metadata"].get("namespace", ns) != ns:
                return self.status(400, "BadRequest", "the namespace of the object does not match")
            cms = STATE["configmaps"].setdefault(ns, {})
            if name in cms:
                return self.status(409, "AlreadyExists", 'configmaps "%s" already exists' % name,
                                   {"name": name, "kind": "configmaps"})
            RV[0] += 1
            obj["metadata"].update({"namespace": ns, "uid": str(uuid.uuid4()),
                                    "resourceVersion": str(RV[0]),
                                    "creationTimestamp": "2026-01-01T00:00:00Z"})
            cms[name] = obj
            out = copy.deepcopy(obj)
        self.send_json(201, out)

    def patch_configmap(self, ns, name, raw):
        if (self.headers.get("Content-Type") or "").split(";")[0] != "application/merge-patch+json":
            return self.status(415, "UnsupportedMediaType",
                               "the body of the request was in an unknown format")
        try:
            patch = json.loads(raw)
        except Exception as e:
            return self.status(400, "BadRequest", "bad patch: %r" % e)
        with LOCK:
            cms = STATE["configmaps"].get(ns, {})
            if name not in cms:
                return self.not_found(name)
            cm = merge_patch(cms[name], patch)
            RV[0] += 1
            cm["metadata"]["resourceVersion"] = str(RV[0])
            cms[name] = cm
            out = copy.deepcopy(cm)
        self.send_json(200, out)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    control_only = False
    request_queue_size = 1024

    def verify_request(self, request, client_address):
        return self.control_only or not CL["down"]  # down: closed right after accept

    def handle_error(self, request, client_address):
        # A client that refuses our certificate, or that gives up on a slow
        # answer, is part of the tests: one line, no traceback.
        e = sys.exc_info()[1]
        print("fake-apiserver: %s: %s" % (client_address, e), file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--state")
    ap.add_argument("--port-file")
    ap.add_argument("--control-listen", help="plain-HTTP control port (loopback)")
    ap.add_argument("--control-port-file")
    ap.add_argument("--cluster", help="a /_control/cluster body to seed with at start")
    a = ap.parse_args()
    if a.cluster:
        with LOCK:
            gen_cluster(json.loads(a.cluster))
    if a.state:
        with open(a.state) as f:
            STATE.update(json.load(f))
    host, port = a.listen.rsplit(":", 1)
    srv = Server((host, int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    # The handshake happens in the handler's thread, on its first read, so a
    # slow or refusing client never blocks accept().
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.rename(a.port_file + ".tmp", a.port_file)
    if a.control_listen:
        chost, cport = a.control_listen.rsplit(":", 1)
        csrv = Server((chost, int(cport)), Handler)
        csrv.control_only = True
        threading.Thread(target=csrv.serve_forever, daemon=True).start()
        cport = csrv.server_address[1]
        if a.control_port_file:
            with open(a.control_port_file + ".tmp", "w") as f:
                f.write("%d\n" % cport)
            os.rename(a.control_port_file + ".tmp", a.control_port_file)
        print("control on %s:%d" % (chost, cport), flush=True)
    print("listening on %s:%d" % (host, port), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
