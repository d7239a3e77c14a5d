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
prints "listening on 127.0.0.1:PORT" once ready.
"""
import argparse
import base64
import copy
import http.server
import json
import os
import re
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
        if u.path.startswith("/_control/"):
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

    # ---- control --------------------------------------------------------------
    def control(self, method, path, raw):
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

    # ---- the API --------------------------------------------------------------
    def api(self, method, u, raw):
        q = urllib.parse.parse_qs(u.query)
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
    a = ap.parse_args()
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
    print("listening on %s:%d" % (host, port), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
