"""A Kubernetes API server that replays a recorded conversation, for driving the
real agent's Kubernetes source without a cluster.

Usage: kube_api.py DIR PORT

For GET /api/v1/<resource> and /apis/<group>/<version>/<resource> (pods,
namespaces, ciliumnetworkpolicies, …) whose DIR/<resource>.list.json exists it
answers, like the API server:
  - a LIST (no watch=true): DIR/<resource>.list.json;
  - a WATCH (watch=true): the events of DIR/<resource>.watch.jsonl, one JSON
    object per line, each {"after": seconds since the watch began, "event": {...}},
    as newline-delimited JSON in a chunked response held open afterwards (the
    first watch gets the file's events; later ones only stay open).
A POST to such a resource creates the object it carries (201, with a
resourceVersion and creationTimestamp; 409 AlreadyExists when the name is taken)
and appends it to DIR/<resource>.created.jsonl; a GET or merge PATCH of
<resource>/<name> reads or updates a created object. Every request line is
appended to DIR/requests.log. Anything else (a resource
without a list file is one whose CRD is not installed): 404 NotFound Status.
"""
import http.server
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

root, port = Path(sys.argv[1]), int(sys.argv[2])
served = set()
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock, open(root / "requests.log", "a") as log:
            log.write(self.path + "\n")
        url = urlparse(self.path)
        query = parse_qs(url.query)
        resource = url.path.rsplit("/", 1)[-1]
        parent, _, name = url.path.rpartition("/")
        if (parent, name) in created:
            return send_json(self, 200, created[(parent, name)])
        known = url.path.startswith(("/api/v1/", "/apis/"))
        if not known or not (root / f"{resource}.list.json").exists():
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                               "status": "Failure", "reason": "NotFound", "code": 404,
                               "message": "the server could not find the requested resource"}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if query.get("watch") != ["true"]:
            body = (root / f"{resource}.list.json").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = []
        with lock:
            if resource not in served:
                served.add(resource)
                path = root / f"{resource}.watch.jsonl"
                if path.exists():
                    events = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        start = time.time()
        try:
            for e in events:
                time.sleep(max(0.0, start + e["after"] - time.time()))
                line = (json.dumps(e["event"]) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            timeout = int(query.get("timeoutSeconds", ["290"])[0])
            time.sleep(min(timeout, 600))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


created = {}


def send_json(handler, code, obj):
    body = json.dumps(obj).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message}


def merge(into, patch):
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def object_call(handler, method):
    with lock, open(root / "requests.log", "a") as log:
        log.write(f"{method} {handler.path}\n")
    path = urlparse(handler.path).path
    length = int(handler.headers.get("Content-Length") or 0)
    body = json.loads(handler.rfile.read(length) or b"null")
    resource_path, _, name = path.rpartition("/")
    with lock:
        if method == "POST":
            resource = path.rsplit("/", 1)[-1]
            if not (root / f"{resource}.list.json").exists():
                return send_json(handler, 404, status(404, "NotFound", "no such resource"))
            key = (path, body["metadata"]["name"])
            if key in created:
                return send_json(handler, 409, status(409, "AlreadyExists", f"{key[1]} already exists"))
            body["metadata"]["resourceVersion"] = str(1000 + len(created))
            body["metadata"]["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            created[key] = body
            with open(root / f"{resource}.created.jsonl", "a") as out:
                out.write(json.dumps(body) + "\n")
            return send_json(handler, 201, body)
        obj = created.get((resource_path, name))
        if obj is None:
            return send_json(handler, 404, status(404, "NotFound", f"{name} not found"))
        if method == "PATCH":
            merge(obj, body)
        return send_json(handler, 200, obj)


Handler.do_POST = lambda self: object_call(self, "POST")
Handler.do_PATCH = lambda self: object_call(self, "PATCH")

server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
server.serve_forever()
