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
Every request line is appended to DIR/requests.log. Anything else (a resource
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


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
server.serve_forever()
