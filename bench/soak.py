"""Soak: real traffic through a real agent while policies change, invalid policies
are refused, the Redis parser is replaced by a new install of itself, the agent is
killed with SIGKILL and restarted, and `observe --follow` clients read fast and
slowly. Prints one table (and writes it as JSON): policy gaps, wrong denials,
flows unaccounted for, memory and descriptors over time, restart times, and what
cleanup left behind. Run by bench/soak.sh; see RELIABILITY.md.

Judging. The policy in force alternates between none (everything allowed) and the
article's policies plus Redis and Kafka L7 rules. Each request is judged against the state
in force for its whole life; requests that overlap a policy change or an agent
restart are in the transition window and are counted apart (a restart is one:
L7-enforced connections need the agent's proxy and fail closed while it is down).
A request the policy denies that was allowed anyway is a policy gap (must be 0).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each request must get under each state: "allow" or "deny".
EXPECT = {
    "none": {
        "http-get": "allow", "http-post": "allow",
        "redis-set-other": "allow", "redis-set-cache": "allow", "tcp-connect": "allow",
        "kafka-produce-orders": "allow", "kafka-produce-secret": "allow",
    },
    "policy": {
        "http-get": "allow", "http-post": "deny",
        "redis-set-other": "deny", "redis-set-cache": "allow", "tcp-connect": "deny",
        "kafka-produce-orders": "allow", "kafka-produce-secret": "deny",
    },
}


def allowed(kind, outcome):
    """Whether a request got through (None: failed in a way that says neither)."""
    if kind.startswith("http"):
        if outcome == "200":
            return True
        if outcome == "403":
            return False
    if kind.startswith("redis"):
        if outcome == "ok":
            return True
        if outcome == "noperm":
            return False
    if kind.startswith("kafka"):
        if outcome == "ok":
            return True
        if outcome == "denied":
            return False
    if kind == "tcp-connect":
        return outcome == "connected"
    # Timeouts and resets: a denied connection (L3/L4 drops time out).
    return False


POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-http, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: api-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /get}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-redis, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts:
    - ports: [{port: "6379", protocol: TCP}]
      rules:
        l7proto: redis
        l7: [{command: SET, key: "cache:.*"}, {command: GET}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-kafka, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{role: produce, topic: orders}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-cidrs, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  egress:
  - toCIDRSet:
%s
"""
# Well-formed, so the CLI sends it; the agent refuses it against the Redis
# plugin's field schema.
INVALID = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-invalid, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - toPorts:
    - ports: [{port: "6379", protocol: TCP}]
      rules: {l7proto: redis, l7: [{nosuchfield: x}]}
"""
NAMES = ["demo-app/soak-http", "demo-app/soak-redis", "demo-app/soak-kafka", "demo-app/soak-cidrs"]


class Soak:
    def __init__(self, args):
        self.args = args
        self.loupe = args.loupe
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.sock = str(self.work / "loupe.sock")
        self.pin = "/sys/fs/bpf/loupe-soak"
        self.prom = 19490
        self.start = time.time()
        self.deadline = self.start + args.duration
        self.events = []  # (t0, t1, what): transitions
        self.states = []  # (t_from, state) once a change completed
        self.samples = []  # (t, rss_kib, fds)
        self.pressure = {}  # map -> highest fill seen (%)
        self.restarts = []  # {"api_ready_s", "policy_ready_s"}
        self.invalid_refused = 0
        self.invalid_accepted = 0
        self.invalid_unanswered = 0
        self.plugin_replaced = 0
        self.plugin_failed = 0
        self.follow = {"fast": [], "slow": []}  # per session accounting
        self.agent = None
        self.stop = threading.Event()
        # Traffic is over: followers read at full speed until they are idle.
        self.draining = threading.Event()
        self.last_line = {"fast": time.time(), "slow": time.time()}
        self.lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------
    def cli(self, *args, timeout=30):
        return subprocess.run([self.loupe, "--socket", self.sock, *args], capture_output=True,
                              text=True, timeout=timeout)

    def log(self, msg):
        print(f"[{time.time() - self.start:7.1f}s] {msg}", flush=True)

    def setup_lab(self):
        text = (ROOT / "lab/demo-app.yaml").read_text()
        text = re.sub(r"^name: demo$", "name: soak", text, flags=re.M)
        text = text.replace("10.200.0.", "10.240.0.").replace("fd00:10:200::", "fd00:10:240::")
        text = text.replace("{lab}/", f"{ROOT}/lab/")
        (self.work / "lab.yaml").write_text(text)
        subprocess.run([self.loupe, "lab", "up", "--file", str(self.work / "lab.yaml")],
                       check=True, capture_output=True)

    def start_agent(self):
        config = self.work / "agent.yaml"
        config.write_text(
            f"socketPath: {self.sock}\nstateDir: {self.work / 'state'}\n"
            f"bpf:\n  pinPath: {self.pin}\n  policyMapEntries: 1024\n"
            f"  ctGlobalTcpMax: 1024\n  ctGlobalAnyMax: 1024\n"
            f"endpoints:\n  labNames: [soak]\n"
            # A short follower queue, so the slow follower overflows it and its
            # LostEvents are counted within the run.
            f"hubble:\n  eventQueueSize: 256\n"
            # Every flow on disk too: the exporter under the same faults, and the
            # record to explain a finding with.
            f"  export:\n    static:\n      enabled: true\n"
            f"      filePath: {self.work / 'flows.log'}\n"
            f"      fileMaxSizeMb: 64\n      fileMaxBackups: 0\n"
            f"prometheus:\n  enabled: true\n  port: {self.prom}\n")
        t0 = time.time()
        log = open(self.work / "agent.log", "a")
        self.agent = subprocess.Popen([self.loupe, "agent", "--config", str(config)],
                                      stdout=log, stderr=log, env={**os.environ, "LOUPE_LOG": "warn"})
        api = policy = None
        while time.time() - t0 < 60:
            if api is None and self.cli("endpoint", "list", timeout=5).returncode == 0:
                api = time.time() - t0
            if api is not None:
                status = self.cli("status", timeout=5).stdout
                if re.search(r"^\s+policy\s+ok", status, re.M) and "Endpoints:      4" in status:
                    policy = time.time() - t0
                    break
            time.sleep(0.05)
        return api, policy

    def kill_agent(self):
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait()

    def rss_fds(self):
        try:
            status = Path(f"/proc/{self.agent.pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            fds = len(os.listdir(f"/proc/{self.agent.pid}/fd"))
            return rss, fds
        except (OSError, AttributeError):
            return None

    # -- followers -------------------------------------------------------------
    def follower(self, name, delay):
        """Follows flows, session by session (the agent restarts); per session:
        flows received, lost reported, and the sequence range seen (from uuids)."""
        while not self.stop.is_set():
            proc = subprocess.Popen([self.loupe, "--socket", self.sock, "observe", "--follow",
                                     "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
            # The store offers flows to a subscriber in sequence order, with its
            # loss markers in place: each flow's number must be the previous one's
            # plus one plus the losses reported in between. Losses before the
            # first flow or after the last one of a session are outside its range.
            session = {"received": 0, "lost": 0, "first": None, "last": None, "upstream_lost": 0,
                       "unaccounted": 0, "reordered": 0}
            pending = 0
            for line in proc.stdout:
                if self.stop.is_set():
                    break
                self.last_line[name] = time.time()
                try:
                    resp = json.loads(line)
                except ValueError:
                    continue
                if "flow" in resp:
                    seq = int(resp["flow"]["uuid"].split("-")[-1], 16)
                    last = session["last"]
                    if last is not None and seq <= last:
                        session["reordered"] += 1
                        continue
                    if last is None:
                        session["first"] = seq
                    else:
                        session["unaccounted"] += abs(seq - last - 1 - pending)
                        session["lost"] += pending
                    pending = 0
                    session["last"] = seq
                    session["received"] += 1
                elif "lost_events" in resp:
                    lost = resp["lost_events"]
                    n = int(lost.get("num_events_lost", 0))
                    if lost.get("source") == "HUBBLE_RING_BUFFER":
                        pending += n if session["last"] is not None else 0
                    else:
                        session["upstream_lost"] += n
                if delay and not self.draining.is_set():
                    time.sleep(delay)
            proc.kill()
            proc.wait()
            if session["first"] is not None:
                with self.lock:
                    self.follow[name].append(session)
            time.sleep(0.2)

    # -- the run -----------------------------------------------------------------
    def policy_file(self):
        cidrs = "\n".join(f"    - cidr: 198.18.{i // 250}.{i % 250 + 1}/32" for i in range(900))
        path = self.work / "policy.yaml"
        path.write_text(POLICY % cidrs)
        (self.work / "invalid.yaml").write_text(INVALID)
        return str(path)

    def change(self, what, fn):
        t0 = time.time()
        result = fn()
        t1 = time.time()
        with self.lock:
            self.events.append((t0, t1, what))
        return result

    def run(self):
        self.setup_lab()
        api, policy = self.start_agent()
        if api is None or policy is None:
            sys.exit(f"the agent did not come up (API {api}, policy {policy}); see {self.work}/agent.log")
        self.log(f"agent up: API {api:.2f}s, policy {policy:.2f}s")
        policy_file = self.policy_file()
        redis_wasm = str(ROOT / "target/wasm-guests/wasm32-wasip2/release/loupe_plugin_redis.wasm")
        state = "none"
        self.states.append((time.time(), state))
        out = self.work / "requests.jsonl"
        out.write_text("")
        clients = []
        # The smallest conntrack the agent accepts (2,048 entries) and a client that
        # holds 400-800 UDP entries in it: the map runs near its limit.
        for pod, kind in [("frontend", "http"), ("api-service", "redis"), ("api-service", "kafka"),
                          ("frontend", "tcp"), ("frontend", "ct-fill")]:
            clients.append(subprocess.Popen(
                [self.loupe, "lab", "exec", "--lab", "soak", pod, "--", "python3",
                 str(ROOT / "bench/soak_client.py"), kind, str(out), str(self.deadline)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        followers = [threading.Thread(target=self.follower, args=("fast", 0), daemon=True),
                     threading.Thread(target=self.follower, args=("slow", 0.01), daemon=True)]
        for f in followers:
            f.start()
        a = self.args
        next_policy = time.time() + a.policy_every
        next_plugin = time.time() + a.plugin_every
        next_kill = time.time() + a.kill_every
        next_sample = time.time()
        while time.time() < self.deadline - 3:
            now = time.time()
            if now >= next_sample:
                s = self.rss_fds()
                if s:
                    self.samples.append((now - self.start, *s))
                status = self.cli("status", timeout=5).stdout
                line = re.search(r"^Map pressure:\s+(.*)$", status, re.M)
                for name, pct in re.findall(r"(\w+) ([\d.]+)%", line.group(1) if line else ""):
                    self.pressure[name] = max(self.pressure.get(name, 0.0), float(pct))
                next_sample = now + 2
            if now >= next_policy:
                if state == "none":
                    r = self.change("apply", lambda: self.cli("policy", "apply", "-f", policy_file))
                    state = "policy"
                else:
                    r = self.change("delete", lambda: self.cli("policy", "delete", *NAMES))
                    state = "none"
                if r.returncode != 0:
                    self.log(f"policy change failed: {r.stderr.strip()}")
                    state = "unknown"
                self.states.append((time.time(), state))
                bad = self.cli("policy", "apply", "-f", str(self.work / "invalid.yaml"))
                if bad.returncode == 0:
                    self.invalid_accepted += 1
                elif "nosuchfield" in bad.stderr:
                    self.invalid_refused += 1
                else:
                    self.log(f"invalid policy not answered: {bad.stderr.strip()}")
                    self.invalid_unanswered += 1
                next_policy = now + a.policy_every
            if now >= next_plugin:
                r = self.change("plugin", lambda: self.cli("plugin", "install", redis_wasm))
                if r.returncode == 0:
                    self.plugin_replaced += 1
                else:
                    self.plugin_failed += 1
                    self.log(f"plugin replace failed: {r.stderr.strip()}")
                next_plugin = now + a.plugin_every
            if now >= next_kill:
                t0 = time.time()
                self.kill_agent()
                api, policy = self.start_agent()
                self.events.append((t0, time.time(), "restart"))
                self.restarts.append({"api_ready_s": api, "policy_ready_s": policy})
                self.log(f"restarted: API {api and round(api, 2)} s, policy {policy and round(policy, 2)} s")
                next_kill = time.time() + a.kill_every
            time.sleep(0.05)
        for c in clients:
            c.wait(timeout=30)
        # Let the followers read what is queued for them (the slow one's backlog
        # ends with the LostEvent that accounts for what it could not keep).
        self.draining.set()
        drain_until = time.time() + 60
        while time.time() < drain_until and any(time.time() - t < 2 for t in self.last_line.values()):
            time.sleep(0.2)
        self.stop.set()
        # A follower blocked on a quiet stream: the agent's stop ends its stream.
        time.sleep(0.5)
        stop_started = time.time()
        self.agent.send_signal(signal.SIGTERM)
        try:
            self.agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait()
        self.stop_s = time.time() - stop_started
        for f in followers:
            f.join(timeout=10)
        subprocess.run([self.loupe, "lab", "down", "--lab", "soak"], capture_output=True)
        subprocess.run([self.loupe, "cleanup", "--force", "--pin-path", self.pin], capture_output=True)
        return self.judge(out)

    # -- judging -----------------------------------------------------------------
    def state_at(self, t0, t1):
        """The state in force for all of [t0, t1], or None when a change or restart
        overlaps it."""
        for (e0, e1, _) in self.events:
            if t0 <= e1 + 0.2 and t1 >= e0:
                return None
        state = None
        for (t, s) in self.states:
            if t <= t0:
                state = s
        return state

    def judge(self, out):
        counts = {"requests": 0, "judged": 0, "transition": 0, "policy_gaps": 0,
                  "wrong_denials": 0}
        gaps, denials = [], []
        by_kind = {}
        for line in out.read_text().splitlines():
            r = json.loads(line)
            counts["requests"] += 1
            by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + 1
            state = self.state_at(r["t0"], r["t1"])
            if state not in EXPECT:
                counts["transition"] += 1
                continue
            counts["judged"] += 1
            want = EXPECT[state][r["kind"]]
            got = allowed(r["kind"], r["outcome"])
            if want == "deny" and got:
                counts["policy_gaps"] += 1
                gaps.append(r)
            elif want == "allow" and not got:
                counts["wrong_denials"] += 1
                denials.append(r)
        unaccounted = 0
        follow = {}
        for name, sessions in self.follow.items():
            total = {k: sum(s[k] for s in sessions)
                     for k in ("received", "lost", "upstream_lost", "unaccounted", "reordered")}
            unaccounted += total["unaccounted"] + total["reordered"]
            follow[name] = {"sessions": len(sessions),
                            "flows_in_range": sum(s["last"] - s["first"] + 1 for s in sessions),
                            "received": total["received"], "lost_reported": total["lost"],
                            "upstream_lost_reported": total["upstream_lost"],
                            "reordered": total["reordered"],
                            "unaccounted": total["unaccounted"]}
        warm = [s for s in self.samples if s[0] > 30] or self.samples
        pins_left = sum(1 for _ in Path(self.pin).rglob("*")) if Path(self.pin).exists() else 0
        netns_left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                text=True).stdout.split() if n.startswith("soak")]
        report = {
            "duration_s": round(time.time() - self.start),
            **counts,
            "requests_by_kind": by_kind,
            "policy_changes": sum(1 for e in self.events if e[2] in ("apply", "delete")),
            "invalid_refused": self.invalid_refused,
            "invalid_accepted": self.invalid_accepted,
            "invalid_unanswered": self.invalid_unanswered,
            "plugin_replaced": self.plugin_replaced,
            "plugin_replace_failed": self.plugin_failed,
            "restarts": len(self.restarts),
            "sigterm_stop_s": round(self.stop_s, 2),
            "restart_api_ready_s_max": max((round(r["api_ready_s"] or 99, 2) for r in self.restarts), default=None),
            "restart_policy_ready_s_max": max((round(r["policy_ready_s"] or 99, 2) for r in self.restarts), default=None),
            "follow": follow,
            "flows_unaccounted": unaccounted,
            "rss_kib_first_last_max": [warm[0][1], warm[-1][1], max(s[1] for s in warm)] if warm else None,
            "fds_first_last_max": [warm[0][2], warm[-1][2], max(s[2] for s in warm)] if warm else None,
            "map_pressure_max_pct": self.pressure,
            "pins_left": pins_left,
            "netns_left": len(netns_left),
            "gaps": gaps,
            "wrong_denial_examples": denials[:5],
        }
        return report


def table(r):
    rows = [
        ("duration", f"{r['duration_s']} s"),
        ("requests (judged / in transition)", f"{r['requests']} ({r['judged']} / {r['transition']})"),
        ("requests by kind", ", ".join(f"{k} {n}" for k, n in sorted(r["requests_by_kind"].items()))),
        ("policy gaps: denied requests allowed (aim 0)", r["policy_gaps"]),
        ("allowed requests denied outside transitions (aim 0)", r["wrong_denials"]),
        ("policy changes / invalid refused / invalid accepted",
         f"{r['policy_changes']} / {r['invalid_refused']} / {r['invalid_accepted']}"),
        ("parser replaced (failed)", f"{r['plugin_replaced']} ({r['plugin_replace_failed']})"),
        ("agent SIGKILL restarts; API / policy ready (max s)",
         f"{r['restarts']}; {r['restart_api_ready_s_max']} / {r['restart_policy_ready_s_max']}"),
        ("agent stop on SIGTERM with followers attached", f"{r['sigterm_stop_s']} s"),
    ]
    for name, f in r["follow"].items():
        rows.append((f"follower {name}: in range / received / lost reported / unaccounted / out of order",
                     f"{f['flows_in_range']} / {f['received']} / {f['lost_reported']} / {f['unaccounted']}"
                     f" / {f['reordered']}"))
    rows += [
        ("flows unaccounted (aim 0)", r["flows_unaccounted"]),
        ("agent RSS KiB after warm-up: first / last / max", r["rss_kib_first_last_max"]),
        ("agent open fds: first / last / max", r["fds_first_last_max"]),
        ("map pressure, highest seen", ", ".join(f"{k} {v}%" for k, v in r["map_pressure_max_pct"].items())),
        ("pinned objects / lab netns left after cleanup (aim 0)", f"{r['pins_left']} / {r['netns_left']}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["| measure | value |", "|---|---|"]
                     + [f"| {k:<{width}} | {v} |" for k, v in rows])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--loupe", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--duration", type=float, default=180)
    p.add_argument("--policy-every", type=float, default=10)
    p.add_argument("--plugin-every", type=float, default=25)
    p.add_argument("--kill-every", type=float, default=45)
    p.add_argument("--json")
    args = p.parse_args()
    report = Soak(args).run()
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    ok = (report["policy_gaps"] == 0 and report["flows_unaccounted"] == 0
          and report["invalid_accepted"] == 0 and report["pins_left"] == 0
          and report["netns_left"] == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
