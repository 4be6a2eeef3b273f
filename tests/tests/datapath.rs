//! The eBPF datapath in the kernel: CiliumNetworkPolicy enforced on real traffic
//! between lab pods.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use loupe_tests::{TestAgent, TestLab, root, serial, tcp_ok, wait_for};

fn example(name: &str) -> String {
    root()
        .join("examples/policies")
        .join(name)
        .display()
        .to_string()
}

fn write_policy(dir: &std::path::Path, name: &str, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// api-service and frontend talking to db-service:6379 over IPv4 and IPv6.
fn redis_reachability(lab: &TestLab) -> (bool, bool, bool) {
    (
        tcp_ok(lab, "api-service", "db-service", 6379, 2),
        tcp_ok(lab, "frontend", "db-service", 6379, 2),
        tcp_ok(lab, "frontend", &lab_ip6(lab, "db-service"), 6379, 2),
    )
}

fn lab_ip6(lab: &TestLab, pod: &str) -> String {
    let state = lab.state().unwrap();
    state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .and_then(|p| p["ipv6"].as_str())
        .unwrap()
        .to_string()
}

#[test]
fn article_db_policy_is_enforced_in_the_kernel() {
    let _guard = serial();
    let lab = TestLab::up("e2e-dp", 221).unwrap();
    let agent = TestAgent::start("dp", "e2e-dp", "", 4).unwrap();
    // No policy: everything flows, and every endpoint has an identity.
    assert_eq!(redis_reachability(&lab), (true, true, true));
    let endpoints = agent.endpoints().unwrap();
    assert!(
        endpoints
            .iter()
            .all(|e| e["identity"].as_u64().unwrap() >= 256),
        "{endpoints:?}"
    );

    let out = agent
        .loupe_ok(&[
            "policy",
            "apply",
            "-f",
            &example("db-allow-api-service.yaml"),
        ])
        .unwrap();
    assert!(
        out.contains("applied demo-app/db-allow-api-service (selects: demo-app/db-service-"),
        "{out}"
    );
    assert_eq!(redis_reachability(&lab), (true, false, false));
    // The real client agrees: api-service gets PONG.
    let pong = lab
        .exec_ok("api-service", &["redis-cli", "-h", "db-service", "PING"])
        .unwrap();
    assert_eq!(pong.trim(), "PONG");
    // The agent records the drop as Hubble would show it.
    let dropped = agent
        .loupe_ok(&[
            "observe",
            "--namespace",
            "demo-app",
            "--verdict",
            "DROPPED",
            "--last",
            "100",
        ])
        .unwrap();
    let line = dropped
        .lines()
        .find(|l| {
            l.contains(": demo-app/frontend-")
                && l.contains("-> demo-app/db-service-")
                && l.contains(":6379 ")
        })
        .unwrap_or_else(|| panic!("no frontend -> db-service drop in:\n{dropped}"));
    assert!(
        line.contains("Policy denied DROPPED (TCP Flags: SYN)"),
        "{line}"
    );
    let json = agent
        .loupe_ok(&[
            "observe",
            "--verdict",
            "DROPPED",
            "--last",
            "1",
            "-o",
            "json",
        ])
        .unwrap();
    let flow: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(flow["flow"]["drop_reason_desc"], "POLICY_DENIED", "{json}");
    assert_eq!(flow["flow"]["traffic_direction"], "INGRESS", "{json}");
    assert_eq!(flow["flow"]["Type"], "L3_L4", "{json}");
    assert!(
        flow["flow"]["source"]["labels"]
            .as_array()
            .unwrap()
            .contains(&"k8s:app=frontend".into()),
        "{json}"
    );
    // Allowed connections are policy verdicts and traces, not drops.
    let allowed = agent
        .loupe_ok(&[
            "observe",
            "--from-pod",
            "demo-app/api-service",
            "--to-port",
            "6379",
            "--last",
            "100",
        ])
        .unwrap();
    assert!(
        allowed.contains("policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)"),
        "{allowed}"
    );
    assert!(!allowed.contains("DROPPED"), "{allowed}");
    // Which policy allowed it, as Hubble names it.
    let last_verdict = |extra: &[&str]| {
        let mut args = vec![
            "observe",
            "--from-pod",
            "demo-app/api-service",
            "--to-port",
            "6379",
            "--type",
            "policy-verdict",
            "--last",
            "1",
        ];
        args.extend_from_slice(extra);
        agent.loupe_ok(&args).unwrap()
    };
    let named = last_verdict(&["--print-policy-names"]);
    assert!(
        named.contains("ALLOWED BY db-allow-api-service (CiliumNetworkPolicy)"),
        "{named}"
    );
    let json = last_verdict(&["-o", "json"]);
    let flow: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    let by = &flow["flow"]["ingress_allowed_by"][0];
    assert_eq!(by["name"], "db-allow-api-service", "{json}");
    assert_eq!(by["namespace"], "demo-app", "{json}");
    assert_eq!(by["kind"], "CiliumNetworkPolicy", "{json}");
    assert!(by["revision"].as_str().is_some_and(|r| r != "0"), "{json}");
    assert_eq!(flow["flow"]["policy_match_type"], 2, "L3-L4: {json}");
    assert!(flow["flow"].get("egress_allowed_by").is_none(), "{json}");

    // Other traffic of the frontend is not affected (db-service has no egress policy,
    // api-service no policy at all).
    assert!(tcp_ok(&lab, "frontend", "api-service", 80, 2));

    let list = agent.loupe_ok(&["policy", "list"]).unwrap();
    assert!(list.contains("demo-app/db-allow-api-service"), "{list}");
    agent
        .loupe_ok(&["policy", "delete", "demo-app/db-allow-api-service"])
        .unwrap();
    assert_eq!(redis_reachability(&lab), (true, true, true));
}

#[test]
fn enforcement_modes_always_and_never() {
    let _guard = serial();
    let lab = TestLab::up("e2e-modes", 222).unwrap();
    {
        let _always =
            TestAgent::start("always", "e2e-modes", "policyEnforcementMode: always\n", 4).unwrap();
        // No policy at all: every pod-to-pod connection is denied.
        assert_eq!(redis_reachability(&lab), (false, false, false));
        assert!(!tcp_ok(&lab, "frontend", "api-service", 80, 2));
        // The host still reaches its pods (as Cilium allows the local host).
        let addr = format!(
            "{}:6379",
            lab.state().unwrap()["pods"][2]["ipv4"].as_str().unwrap()
        );
        assert!(
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
                .is_ok()
        );
    }
    let never =
        TestAgent::start("never", "e2e-modes", "policyEnforcementMode: never\n", 4).unwrap();
    never
        .loupe_ok(&[
            "policy",
            "apply",
            "-f",
            &example("db-allow-api-service.yaml"),
        ])
        .unwrap();
    assert_eq!(redis_reachability(&lab), (true, true, true));
}

#[test]
fn deny_wins_egress_works_and_changes_apply_within_a_second() {
    let _guard = serial();
    let lab = TestLab::up("e2e-deny", 223).unwrap();
    let agent = TestAgent::start("deny", "e2e-deny", "", 4).unwrap();
    let dir = agent.state_dir.parent().unwrap().join("policies");
    let egress = write_policy(
        &dir,
        "egress.yaml",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-egress, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: api-service}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#,
    );
    agent.loupe_ok(&["policy", "apply", "-f", &egress]).unwrap();
    assert!(tcp_ok(&lab, "frontend", "api-service", 80, 2));
    assert!(
        !tcp_ok(&lab, "frontend", "db-service", 6379, 2),
        "egress policy let frontend reach Redis"
    );
    assert!(tcp_ok(&lab, "api-service", "db-service", 6379, 2));

    // An allow-everything rule plus a deny for the frontend: the deny wins.
    let deny = write_policy(
        &dir,
        "deny.yaml",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-deny-frontend, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: api-service}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#,
    );
    agent.loupe_ok(&["policy", "apply", "-f", &deny]).unwrap();
    let applied = Instant::now();
    // New connections see the change within a second.
    assert!(wait_for(Duration::from_secs(1), || !tcp_ok(
        &lab,
        "frontend",
        "api-service",
        80,
        1
    )));
    assert!(applied.elapsed() < Duration::from_secs(3));
    assert!(
        tcp_ok(&lab, "db-service", "api-service", 80, 2),
        "the allow-all part was lost"
    );
    // Drops by the deny rule name it; the egress allow names its policy.
    let last = |args: &[&str]| -> serde_json::Value {
        let mut argv = vec!["observe", "--last", "1", "-o", "json"];
        argv.extend_from_slice(args);
        let out = agent.loupe_ok(&argv).unwrap();
        serde_json::from_str(out.lines().next().unwrap_or("{}")).unwrap()
    };
    let denied = last(&[
        "--from-pod",
        "demo-app/frontend",
        "--to-port",
        "80",
        "--verdict",
        "DROPPED",
    ]);
    assert_eq!(
        denied["flow"]["drop_reason_desc"], "POLICY_DENY",
        "{denied}"
    );
    assert_eq!(
        denied["flow"]["ingress_denied_by"][0]["name"], "api-deny-frontend",
        "{denied}"
    );
    let allowed = last(&[
        "--from-pod",
        "demo-app/db-service",
        "--to-pod",
        "demo-app/api-service",
        "--type",
        "policy-verdict",
        "--traffic-direction",
        "ingress",
    ]);
    assert_eq!(
        allowed["flow"]["ingress_allowed_by"][0]["name"], "api-deny-frontend",
        "{allowed}"
    );
    assert_eq!(allowed["flow"]["policy_match_type"], 4, "all: {allowed}");
    let egress = last(&[
        "--from-pod",
        "demo-app/frontend",
        "--to-port",
        "6379",
        "--verdict",
        "DROPPED",
    ]);
    assert_eq!(
        egress["flow"]["drop_reason_desc"], "POLICY_DENIED",
        "{egress}"
    );
    assert!(
        egress["flow"].get("egress_denied_by").is_none(),
        "default deny names no policy: {egress}"
    );

    agent.loupe_ok(&["policy", "delete", "-f", &deny]).unwrap();
    assert!(wait_for(Duration::from_secs(1), || tcp_ok(
        &lab,
        "frontend",
        "api-service",
        80,
        1
    )));
}

/// A network namespace outside the lab (the "world"), with addresses the pods of
/// `lab` can route to through the host.
struct Outside {
    netns: String,
    veth: String,
}

impl Outside {
    fn new(name: &str, lab: &TestLab, addrs: &[&str]) -> Self {
        let netns = format!("loupe-outside-{name}");
        let veth = format!("out{name}");
        // Leftovers of an earlier run, if any.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &netns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &veth])
            .output();
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "outpeer",
        ]);
        ip(&["link", "set", "outpeer", "netns", &netns]);
        ip(&["-n", &netns, "link", "set", "outpeer", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&["link", "set", &veth, "up"]);
        for a in addrs {
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "outpeer",
            ]);
            ip(&["route", "add", &format!("{a}/32"), "dev", &veth]);
        }
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{veth}/proxy_arp"), "1").unwrap();
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "outpeer",
            "scope",
            "link",
        ]);
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            "169.254.1.1",
            "dev",
            "outpeer",
        ]);
        // Let the lab's pods route to it (pods normally only reach the lab).
        for pod in ["frontend", "api-service"] {
            let ns = format!("loupe-{}-{pod}", lab.name);
            for a in addrs {
                ip(&[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    &format!("{a}/32"),
                    "via",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                ]);
            }
        }
        let outside = Self { netns, veth };
        // A real server on every address.
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &outside.netns,
                "python3",
                "-m",
                "http.server",
                "--bind",
                "0.0.0.0",
                "8080",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::mem::forget(child);
        assert!(wait_for(Duration::from_secs(5), || {
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &outside.netns,
                    "python3",
                    "-c",
                    "import socket;socket.create_connection(('127.0.0.1',8080),timeout=1)",
                ])
                .output()
                .unwrap()
                .status
                .success()
        }));
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let pids = loupe_tests::sh("ip", &["netns", "pids", &self.netns]);
        for pid in pids.lines() {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

#[test]
fn cidr_and_entity_rules() {
    let _guard = serial();
    let lab = TestLab::up("e2e-cidr", 224).unwrap();
    let outside = Outside::new("c", &lab, &["10.250.0.2", "10.250.1.2", "10.251.0.2"]);
    let agent = TestAgent::start("cidr", "e2e-cidr", "", 4).unwrap();
    let dir = agent.state_dir.parent().unwrap().join("policies");
    // No policy yet: everything outside is reachable.
    for a in ["10.250.0.2", "10.250.1.2", "10.251.0.2"] {
        assert!(tcp_ok(&lab, "frontend", a, 8080, 2), "{a}");
    }
    let policy = write_policy(
        &dir,
        "cidr.yaml",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-out, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toCIDRSet: [{cidr: 10.250.0.0/16, except: [10.250.1.0/24]}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toEntities: [host]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-world, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: api-service}}
  egress:
  - toEntities: [world]
"#,
    );
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();
    assert!(
        tcp_ok(&lab, "frontend", "10.250.0.2", 8080, 2),
        "CIDR allow"
    );
    assert!(
        !tcp_ok(&lab, "frontend", "10.250.1.2", 8080, 2),
        "CIDR except"
    );
    assert!(
        !tcp_ok(&lab, "frontend", "10.251.0.2", 8080, 2),
        "outside the CIDR"
    );
    assert!(
        !tcp_ok(&lab, "frontend", "api-service", 80, 2),
        "pods are not in a CIDR rule"
    );
    // world: anything outside the cluster, prefixes named by policies included.
    assert!(tcp_ok(&lab, "api-service", "10.251.0.2", 8080, 2), "world");
    assert!(
        tcp_ok(&lab, "api-service", "10.250.1.2", 8080, 2),
        "world covers CIDR identities"
    );
    assert!(
        !tcp_ok(&lab, "api-service", "db-service", 6379, 2),
        "world is not the cluster"
    );
    drop(outside);
}

#[test]
fn kill_9_keeps_enforcement_and_restart_adopts() {
    let _guard = serial();
    let lab = TestLab::up("e2e-kill9", 225).unwrap();
    let mut agent = TestAgent::start("kill9", "e2e-kill9", "", 4).unwrap();
    agent
        .loupe_ok(&[
            "policy",
            "apply",
            "-f",
            &example("db-allow-api-service.yaml"),
        ])
        .unwrap();
    let before = agent.endpoints().unwrap();
    assert_eq!(redis_reachability(&lab), (true, false, false));

    // A long-lived allowed connection that keeps talking across the restart.
    let script = "import socket,time\n\
        s=socket.create_connection(('db-service',6379),timeout=2)\n\
        n=0\n\
        end=time.time()+8\n\
        while time.time()<end:\n\
        \x20 s.sendall(b'PING\\r\\n'); assert s.recv(64)==b'+PONG\\r\\n'; n+=1; time.sleep(0.05)\n\
        print(n)\n";
    let lab_name = lab.name.clone();
    let pinger = std::thread::spawn(move || {
        loupe_tests::loupe(&[
            "lab",
            "exec",
            "--lab",
            &lab_name,
            "api-service",
            "--",
            "python3",
            "-c",
            script,
        ])
    });
    std::thread::sleep(Duration::from_secs(1));
    agent.kill9();
    // While the agent is down: blocked stays blocked, allowed stays allowed.
    assert_eq!(redis_reachability(&lab), (true, false, false));
    agent.spawn(4).unwrap();
    assert_eq!(redis_reachability(&lab), (true, false, false));
    let out = pinger.join().unwrap();
    assert!(
        out.status.success(),
        "the established connection broke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pings: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(pings > 50, "{pings} pings");
    // Same endpoint numbers and identities, same policy, no duplicate programs.
    let after = agent.endpoints().unwrap();
    let ids = |eps: &[serde_json::Value]| -> Vec<(String, u64, u64)> {
        let mut v: Vec<_> = eps
            .iter()
            .map(|e| {
                (
                    e["podName"].as_str().unwrap().to_string(),
                    e["id"].as_u64().unwrap(),
                    e["identity"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&before), ids(&after));
    assert!(
        agent
            .loupe_ok(&["policy", "list"])
            .unwrap()
            .contains("demo-app/db-allow-api-service")
    );
    let links = std::fs::read_dir(agent.pin_path.join("links"))
        .unwrap()
        .count();
    assert_eq!(links, 8, "two pinned links per endpoint");
}

#[test]
fn bad_policies_are_refused_and_the_old_one_stays() {
    let _guard = serial();
    let lab = TestLab::up("e2e-badpol", 226).unwrap();
    let agent = TestAgent::start("badpol", "e2e-badpol", "", 4).unwrap();
    agent
        .loupe_ok(&[
            "policy",
            "apply",
            "-f",
            &example("db-allow-api-service.yaml"),
        ])
        .unwrap();
    let good = std::fs::read_to_string(example("db-allow-api-service.yaml")).unwrap();
    let dir = agent.state_dir.parent().unwrap().join("bad");
    let cases = [
        (
            "malformed.yaml",
            "apiVersion: cilium.io/v2\nkind: [unclosed\n".to_string(),
            "did not find expected",
        ),
        (
            "unknown.yaml",
            good.replace("toPorts:", "toPortz:"),
            "unknown field `toPortz`",
        ),
        (
            "selector.yaml",
            good.replace(
                "matchLabels:\n        app: api-service",
                "matchExpressions: [{key: app, operator: Maybe}]",
            ),
            "unknown variant `Maybe`",
        ),
        (
            "port.yaml",
            good.replace("\"6379\"", "\"65536\""),
            "spec.ingress[0].toPorts[0].ports[0].port: 65536 is not a port",
        ),
        (
            "proto.yaml",
            good.replace("protocol: TCP", "protocol: QUIC"),
            "spec.ingress[0].toPorts[0].ports[0].protocol: unknown protocol \"QUIC\"",
        ),
    ];
    // A valid policy in the same apply as a bad one: neither is applied.
    let extra = good
        .replace("db-allow-api-service", "second")
        .replace("app: api-service", "app: frontend");
    for (name, text, want) in cases {
        let path = write_policy(&dir, name, &format!("{extra}\n---\n{text}"));
        let out = agent.loupe(&["policy", "apply", "-f", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(
            stderr.contains(want) && stderr.contains("document 1"),
            "{name}: want {want:?} in {stderr}"
        );
    }
    let list = agent.loupe_ok(&["policy", "list"]).unwrap();
    assert!(!list.contains("demo-app/second"), "{list}");
    assert_eq!(redis_reachability(&lab), (true, false, false));
}

/// `n` policies named `<prefix>-<i>`, each allowing api-service to one port of
/// db-service, in one file.
fn many_policies(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {prefix}-{i}, namespace: demo-app}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db-service}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: api-service}}}}]\n    toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n---\n",
                20000 + i
            )
        })
        .collect()
}

#[test]
fn kill_9_during_an_apply_leaves_the_old_set_or_the_new_one() {
    let _guard = serial();
    let _lab = TestLab::up("e2e-crash", 238).unwrap();
    let mut agent = TestAgent::start("crash", "e2e-crash", "", 4).unwrap();
    let dir = agent.state_dir.parent().unwrap().join("many");
    let count = |agent: &TestAgent| {
        agent
            .loupe_ok(&["policy", "list"])
            .unwrap()
            .lines()
            .filter(|l| l.contains("demo-app/run"))
            .count()
    };
    // How long a 300-policy apply takes here: the kills land across it.
    let file = write_policy(&dir, "run-base.yaml", &many_policies("run-base", 300));
    let started = std::time::Instant::now();
    agent.loupe_ok(&["policy", "apply", "-f", &file]).unwrap();
    let took = started.elapsed().as_millis() as u64;
    let mut in_force = count(&agent);
    assert_eq!(in_force, 300);
    let mut outcomes = Vec::new();
    let delays = [5u64, 20, 40, 60, 80, 100, 120].map(|pct| (took * pct / 100).max(1));
    for (run, delay_ms) in delays.into_iter().enumerate() {
        let file = write_policy(
            &dir,
            &format!("run{run}.yaml"),
            &many_policies(&format!("run{run}"), 300),
        );
        let mut apply = std::process::Command::new(loupe_tests::loupe_bin())
            .arg("--socket")
            .arg(&agent.socket)
            .args(["policy", "apply", "-f", &file])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.kill9();
        let _ = apply.wait();
        agent.spawn(4).unwrap();
        let now = count(&agent);
        assert!(
            now == in_force || now == in_force + 300,
            "run {run} (kill after {delay_ms} ms): {now} policies in force, expected {in_force} or {}",
            in_force + 300
        );
        outcomes.push(now - in_force);
        in_force = now;
        let leftovers: Vec<_> = std::fs::read_dir(agent.state_dir.join("policies"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    eprintln!(
        "a 300-policy apply took {took} ms; policies added per run (0: killed before the commit): {outcomes:?}"
    );
}
