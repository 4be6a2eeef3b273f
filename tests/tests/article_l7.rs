//! The article's L7 scenario with the agent as a user runs it: the
//! `api-allow-frontend` policy applied verbatim, real curl from the frontend pod,
//! and the denied request read back with `loupe observe`.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use loupe_tests::{TestAgent, TestLab, root, serial};

#[test]
fn article_api_allow_frontend_allows_get_and_denies_post() {
    let _guard = serial();
    let lab = TestLab::up("e2e-art7", 234).unwrap();
    let agent = TestAgent::start("art7", "e2e-art7", "", 4).unwrap();
    let policy = root()
        .join("examples/policies/api-allow-frontend.yaml")
        .display()
        .to_string();
    // A POST from a fixed client port, before any policy: allowed. The same port
    // is used again once the policy is in force: a new connection on a closed
    // conntrack entry must be decided afresh (and so go through the proxy).
    let post_from_port = |port: u16| {
        let script = format!(
            "import socket\n\
             s=socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('', {port}))\n\
             s.settimeout(10)\n\
             s.connect(('api-service', 80))\n\
             s.sendall(b'POST /post HTTP/1.1\\r\\nHost: api-service\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n')\n\
             print(s.recv(64).split()[1].decode())\n"
        );
        lab.exec_ok("frontend", &["python3", "-c", &script])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(post_from_port(40123), "200");
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();
    assert_eq!(
        post_from_port(40123),
        "403",
        "a reused client port bypassed the L7 policy"
    );
    // A stray pure ACK crafted with a raw socket in `pod` (a late segment of a
    // connection conntrack has already forgotten), from `from` to `to`.
    let stray = |pod: &str, from: (&str, u16), to: (&str, u16), ttl: u8| {
        let script = format!(
            "import socket,struct\n\
             src,dst=socket.gethostbyname('{}'),socket.gethostbyname('{}')\n\
             def csum(b):\n\
             \x20 b+=b'\\0'*(len(b)%2)\n\
             \x20 s=sum(struct.unpack('!%dH'%(len(b)//2),b))\n\
             \x20 s=(s>>16)+(s&0xffff); s+=s>>16\n\
             \x20 return ~s&0xffff\n\
             tcp=struct.pack('!HHIIBBHHH',{},{},1,1,5<<4,0x10,65535,0,0)\n\
             ph=socket.inet_aton(src)+socket.inet_aton(dst)+struct.pack('!BBH',0,6,len(tcp))\n\
             tcp=tcp[:16]+struct.pack('!H',csum(ph+tcp))+tcp[18:]\n\
             r=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_TCP)\n\
             r.setsockopt(socket.IPPROTO_IP,socket.IP_TTL,{ttl})\n\
             r.sendto(tcp,(dst,0))\n",
            from.0, to.0, from.1, to.1
        );
        lab.exec_ok(pod, &["python3", "-c", &script]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // From api-service:80 to a frontend port nothing tracks: it leaves an entry the
    // other way round; a new connection from that port is still a new connection.
    stray("api-service", ("api-service", 80), ("frontend", 40124), 64);
    assert_eq!(
        post_from_port(40124),
        "403",
        "a stale entry the other way round let a new connection bypass the L7 policy"
    );
    // From frontend:40125 to api-service:80 with TTL 1: the frontend's hook tracks
    // it mid-stream, the host drops it, so no reset ever closes that entry. A SYN
    // from that port is not the one that opened the entry: a new connection.
    stray("frontend", ("frontend", 40125), ("api-service", 80), 1);
    assert_eq!(
        post_from_port(40125),
        "403",
        "an entry opened mid-stream let a new connection bypass the L7 policy"
    );

    let get = lab
        .exec_ok(
            "frontend",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://api-service/get",
            ],
        )
        .unwrap();
    assert_eq!(get.trim(), "200");
    let post = lab
        .exec_ok(
            "frontend",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-w",
                " %{http_code}",
                "-X",
                "POST",
                "http://api-service/post",
            ],
        )
        .unwrap();
    assert_eq!(post.trim(), "Access denied 403");
    // Another path than the rule's is denied too (the path is anchored).
    let other = lab
        .exec_ok(
            "frontend",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://api-service/headers",
            ],
        )
        .unwrap();
    assert_eq!(other.trim(), "403");

    // The last flows of the namespace that pass `filters`.
    let observe = |filters: &[&str]| {
        let mut args = vec!["observe", "--namespace", "demo-app", "--last", "20"];
        args.extend_from_slice(filters);
        agent.loupe_ok(&args).unwrap()
    };
    let dropped = observe(&["--verdict", "DROPPED"]);
    let line = dropped
        .lines()
        .find(|l| l.contains("http-request DROPPED") && l.contains("POST"))
        .unwrap_or_else(|| panic!("no denied POST in:\n{dropped}"));
    assert!(line.contains("demo-app/frontend-"), "{line}");
    assert!(line.contains("demo-app/api-service-"), "{line}");
    assert!(line.contains(":80 "), "{line}");
    assert!(line.contains("http://api-service/post"), "{line}");
    // Denied by policy, as Hubble says it (and as `--drop-reason` filters it).
    let denied = observe(&[
        "--type",
        "l7",
        "--drop-reason-desc",
        "POLICY_DENIED",
        "-o",
        "json",
    ]);
    assert!(
        denied.lines().any(|l| l.contains("\"method\":\"POST\"")
            && l.contains("\"drop_reason_desc\":\"POLICY_DENIED\"")),
        "{denied}"
    );
    // Which policy's rules the request failed, and which allowed the GET.
    let named = |verdict: &str, field: &str, method: &str| {
        let out = observe(&["--type", "l7", "--verdict", verdict, "-o", "json"]);
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|f| f["flow"]["l7"]["http"]["method"] == method)
            .map(|f| {
                f["flow"][field][0]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .next()
            .unwrap_or_else(|| panic!("no {method} {verdict} in:\n{out}"))
    };
    assert_eq!(
        named("DROPPED", "ingress_denied_by", "POST"),
        "api-allow-frontend"
    );
    assert_eq!(
        named("FORWARDED", "ingress_allowed_by", "GET"),
        "api-allow-frontend"
    );
    // The allowed GET is a forwarded request with its response.
    let forwarded = observe(&["--type", "l7", "--verdict", "FORWARDED"]);
    assert!(
        forwarded
            .lines()
            .any(|l| l.contains("http-request FORWARDED")
                && l.contains("GET http://api-service/get")),
        "{forwarded}"
    );
    assert!(
        forwarded
            .lines()
            .any(|l| l.contains("http-response FORWARDED") && l.contains(" 200 ")),
        "{forwarded}"
    );
    // All of the above ran with only the capabilities the agent keeps: CAP_NET_ADMIN,
    // CAP_IPC_LOCK, CAP_PERFMON and CAP_BPF (bits 12, 14, 38, 39) in its bounding,
    // permitted and effective sets; none to inherit; no new privileges for children.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().unwrap())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
            .unwrap_or_else(|| panic!("no {name} in\n{status}"))
            .to_string()
    };
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(field(set), "000000c000005000", "{set}\n{status}");
    }
    assert_eq!(field("CapInh"), "0000000000000000");
    assert_eq!(field("CapAmb"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    drop(agent);
    drop(lab);
}

const KAFKA_ORDERS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-orders, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce, topic: orders}]
"#;

#[test]
fn kafka_produce_rule_allows_orders_and_denies_payments() {
    let _guard = serial();
    let lab = TestLab::up("e2e-art7k", 235).unwrap();
    let agent = TestAgent::start("art7k", "e2e-art7k", "", 4).unwrap();
    let dir = loupe_tests::scratch_dir("art7k");
    let policy = loupe_tests::write_file(&dir, "kafka.yaml", KAFKA_ORDERS);
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();
    let out = lab
        .exec_ok(
            "api-service",
            &[
                "python3",
                &loupe_tests::client("kafka_produce_acl.py"),
                "kafka:9092",
                "orders",
                "payments",
            ],
        )
        .unwrap();
    // The denied produce is answered with error 29 in its own version, which the
    // client reads as TOPIC_AUTHORIZATION_FAILED.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "orders: delivered",
            "payments: TOPIC_AUTHORIZATION_FAILED",
            "orders: delivered"
        ],
        "{out}\n{}",
        agent
            .loupe_ok(&["observe", "--type", "l7", "--last", "30"])
            .unwrap_or_default()
    );
}

const FROM_HOST: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-from-host, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: api-service}}
  ingress:
  - fromEntities: [host]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /get}]}
"#;

/// HTTP rules for a client that is not an endpoint of this node (here the host):
/// its connections cannot pass the proxy (the redirect is taken at a local
/// client's hook), so they fail closed and say why — never a POST let through.
#[test]
fn l7_rules_for_a_client_outside_the_nodes_endpoints_fail_closed() {
    let _guard = serial();
    let _lab = TestLab::up("e2e-art7h", 217).unwrap();
    let agent = TestAgent::start("art7h", "e2e-art7h", "", 4).unwrap();
    let curl = |method: &str, path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-m",
                "3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
            ])
            .arg(format!("http://10.217.0.20{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // No policy: the host reaches api-service.
    assert_eq!(curl("POST", "/post"), "200");
    let dir = loupe_tests::scratch_dir("art7h");
    let policy = loupe_tests::write_file(&dir, "from-host.yaml", FROM_HOST);
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();
    assert_eq!(
        curl("POST", "/post"),
        "000",
        "a POST from the host passed unchecked"
    );
    assert_eq!(curl("GET", "/get"), "000");
    let drops = agent
        .loupe_ok(&["observe", "--type", "drop", "--last", "20", "-o", "json"])
        .unwrap();
    assert!(
        drops.contains("PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL"),
        "{drops}"
    );
    // HTTP rules for any peer: the host's implicit allow (allow-localhost) stays
    // the host's own entry, so probes from the node keep working.
    agent
        .loupe_ok(&["policy", "delete", "demo-app/api-from-host"])
        .unwrap();
    let any_peer = FROM_HOST
        .replace("api-from-host", "api-any-peer")
        .replace("  - fromEntities: [host]\n    toPorts:", "  - toPorts:");
    let policy = loupe_tests::write_file(&dir, "any-peer.yaml", &any_peer);
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();
    assert_eq!(
        curl("GET", "/get"),
        "200",
        "a probe from the node was dropped"
    );
}
