//! The active L7 path: connections under enforcing L7 rules are steered by the
//! datapath to the transparent proxy, which forwards allowed requests byte for
//! byte and answers denied ones in order — with real clients and servers in
//! lab pods, nothing in the pods changed.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use loupe_runtime::plugin::{Limits, Message, Plugin, PluginHost, PluginInfo};
use loupe_runtime::proxy::server::{ProxySettings, Resolver};
use loupe_runtime::proxy::{
    ConnInfo, Decider, NoEvents, PluginInspectorFactory, Proxy, Verdict, field_text,
};
use loupe_tests::{TestAgent, TestLab, guest, metric, scrape, serial, tcp_ok, wait_for};

fn write_policy(agent: &TestAgent, name: &str, text: &str) -> String {
    let dir = agent.state_dir.parent().unwrap().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// db-service takes Redis from api-service only, and only what the rules allow.
const REDIS_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-redis-l7, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts:
    - ports: [{port: "6379", protocol: TCP}]
      rules:
        l7proto: redis
        l7: [{command: "GET|SET|CLIENT"}]
"#;

/// api-service may send db-service Redis GETs (and CLIENT) only.
const API_EGRESS_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-redis-egress, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: api-service}}
  egress:
  - toEndpoints: [{matchLabels: {app: db-service}}]
    toPorts:
    - ports: [{port: "6379", protocol: TCP}]
      rules:
        l7proto: redis
        l7: [{command: "GET|CLIENT"}]
"#;

/// api-service takes HTTP from the frontend, GET /get only.
const HTTP_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-http-l7, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: api-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/get"}]
"#;

/// The broker takes Kafka from api-service, produce only.
const KAFKA_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-l7, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce}]
"#;

/// The broker's port parsed by the hostile line plugin, one line allowed.
const LINES_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-lines, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        l7proto: lines
        l7: [{line: "hello"}]
"#;

/// Sends a line the hostile plugin traps on; prints how the connection ended.
const TRAP_SCRIPT: &str = r#"
import socket
s = socket.create_connection(('kafka', 9092), timeout=5)
s.sendall(b'trap\n')
try:
    print('data' if s.recv(100) else 'eof')
except ConnectionResetError:
    print('reset')
except socket.timeout:
    print('timeout')
"#;

fn pod_ip(lab: &TestLab, pod: &str, family: &str) -> String {
    let state = lab.state().unwrap();
    state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .and_then(|p| p[family].as_str())
        .unwrap()
        .to_string()
}

#[test]
fn l7_enforced_connections_go_through_the_proxy_and_keep_their_addresses() {
    let _guard = serial();
    let lab = TestLab::up("e2e-px", 231).unwrap();
    let mut agent = TestAgent::start(
        "px",
        "e2e-px",
        "prometheus:\n  enabled: true\n  port: 19481\n",
        4,
    )
    .unwrap();
    agent
        .loupe_ok(&[
            "plugin",
            "install",
            guest("loupe_plugin_redis").to_str().unwrap(),
        ])
        .unwrap();
    let proxied = || metric(19481, "loupe_proxy_connections_total", &[]);
    assert!(
        wait_for(Duration::from_secs(10), || scrape(19481)
            .lines()
            .any(|l| l.starts_with("loupe_proxy_connections_total "))),
        "proxy metrics missing\n{}",
        agent.log()
    );

    // Without L7 policy nothing passes through the proxy.
    let pong = lab
        .exec_ok("api-service", &["redis-cli", "-h", "db-service", "PING"])
        .unwrap();
    assert_eq!(pong.trim(), "PONG");
    assert_eq!(proxied(), 0.0);

    let file = write_policy(&agent, "redis.yaml", REDIS_L7);
    agent.loupe_ok(&["policy", "apply", "-f", &file]).unwrap();

    let redis = |args: &[&str]| {
        let mut argv = vec!["redis-cli", "-h", "db-service"];
        argv.extend_from_slice(args);
        lab.exec_ok("api-service", &argv).unwrap()
    };
    assert_eq!(redis(&["SET", "k", "v"]).trim(), "OK");
    assert_eq!(redis(&["GET", "k"]).trim(), "v");
    // The server sees the client's own address, not the proxy's or the host's.
    let api_ip = pod_ip(&lab, "api-service", "ipv4");
    let clients = redis(&["CLIENT", "LIST"]);
    assert!(
        clients.contains(&format!("addr={api_ip}:")),
        "{clients} (api-service is {api_ip})"
    );
    assert!(proxied() >= 3.0, "{}\n{}", proxied(), agent.log());
    // The agent enforces the rules: FLUSHALL is not an allowed command, and the
    // data is still there.
    let flush = redis(&["FLUSHALL"]);
    assert!(flush.contains("NOPERM"), "{flush}");
    assert_eq!(redis(&["GET", "k"]).trim(), "v");
    // Both decisions are L7 flows: the denied request DROPPED, the allowed one
    // forwarded and answered.
    let observe = |verdict: &str| {
        agent
            .loupe_ok(&[
                "observe",
                "--type",
                "l7",
                "--verdict",
                verdict,
                "--last",
                "50",
                "-o",
                "json",
            ])
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(5), || observe("DROPPED")
            .contains("FLUSHALL")),
        "{}",
        observe("DROPPED")
    );
    let forwarded = observe("FORWARDED");
    assert!(
        forwarded.contains("\"GET\"") && forwarded.contains("RESPONSE"),
        "{forwarded}"
    );

    // A client that writes its whole pipeline before reading any reply (as
    // Redis allows) must not wedge the proxy: 20000 GETs of 1 KiB, tiny buffers.
    let script = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
s.settimeout(30)
s.connect(('db-service', 6379))
s.sendall(b'*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$1024\r\n' + b'x' * 1024 + b'\r\n')
n = 20000
s.sendall(b'*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n' * n)
want = 5 + n * (len(b'$1024\r\n') + 1024 + 2)
got = 0
while got < want:
    d = s.recv(1 << 20)
    if not d:
        break
    got += len(d)
print(got, want)
"#;
    let counts = lab
        .exec_ok("api-service", &["python3", "-c", script])
        .unwrap();
    let counts: Vec<&str> = counts.split_whitespace().collect();
    assert_eq!(counts[0], counts[1], "{counts:?}");

    // IPv6 the same way.
    let db6 = pod_ip(&lab, "db-service", "ipv6");
    let api6 = pod_ip(&lab, "api-service", "ipv6");
    let before = proxied();
    let clients6 = lab
        .exec_ok("api-service", &["redis-cli", "-h", &db6, "CLIENT", "LIST"])
        .unwrap();
    assert!(
        clients6.contains(&format!("addr={api6}:"))
            || clients6.contains(&format!("addr=[{api6}]:")),
        "{clients6} (api-service is {api6})"
    );
    assert_eq!(proxied(), before + 1.0);
    let flush6 = lab
        .exec_ok("api-service", &["redis-cli", "-h", &db6, "FLUSHALL"])
        .unwrap();
    assert!(flush6.contains("NOPERM"), "{flush6}");

    // Egress rules of the client's own endpoint are enforced too, on top of
    // the server's ingress rules: SET is allowed at db-service but not by
    // api-service's egress policy.
    let file = write_policy(&agent, "egress.yaml", API_EGRESS_L7);
    agent.loupe_ok(&["policy", "apply", "-f", &file]).unwrap();
    let set = redis(&["SET", "k", "w"]);
    assert!(set.contains("NOPERM"), "{set}");
    assert_eq!(redis(&["GET", "k"]).trim(), "v");
    agent.loupe_ok(&["policy", "delete", "-f", &file]).unwrap();
    assert_eq!(redis(&["SET", "k", "v"]).trim(), "OK");

    // Ports without L7 rules never touch the proxy.
    let before = proxied();
    assert!(tcp_ok(&lab, "frontend", "api-service", 80, 2));
    assert!(tcp_ok(&lab, "frontend", "kafka", 9092, 2));
    assert_eq!(proxied(), before);
    // L3/L4 policy still applies under L7 rules: the frontend is not allowed.
    assert!(!tcp_ok(&lab, "frontend", "db-service", 6379, 2));
    assert_eq!(proxied(), before);

    // A plugin that traps on an enforced connection: the agent resets it and
    // reports an ERROR flow with the reason.
    agent
        .loupe_ok(&[
            "plugin",
            "install",
            guest("loupe_hostile_misbehave").to_str().unwrap(),
        ])
        .unwrap();
    let file = write_policy(&agent, "lines.yaml", LINES_L7);
    agent.loupe_ok(&["policy", "apply", "-f", &file]).unwrap();
    let outcome = lab
        .exec_ok("api-service", &["python3", "-c", TRAP_SCRIPT])
        .unwrap();
    assert_eq!(outcome.trim(), "reset");
    assert!(
        wait_for(Duration::from_secs(5), || observe("ERROR")
            .contains("trapped")),
        "{}",
        observe("ERROR")
    );

    // Without its proxy, L7 enforcement fails closed; nothing else changes; a
    // restarted agent serves enforced connections again.
    agent.kill9();
    assert!(!tcp_ok(&lab, "api-service", "db-service", 6379, 2));
    assert!(tcp_ok(&lab, "frontend", "api-service", 80, 2));
    agent.spawn(4).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || tcp_ok(
            &lab,
            "api-service",
            "db-service",
            6379,
            2
        )),
        "{}",
        agent.log()
    );
    assert_eq!(redis(&["GET", "k"]).trim(), "v");
}

/// Denies Redis FLUSHALL and any HTTP path but /get (a stand-in for the L7
/// policy engine's matcher).
struct TestDecider;

impl Decider for TestDecider {
    fn decide(&self, _conn: &ConnInfo, plugin: &PluginInfo, request: &Message) -> Verdict {
        let deny = |reason: String| Verdict::Deny {
            by: Default::default(),
            reason,
        };
        match plugin.name.as_str() {
            "redis" => match field_text(plugin, request, "command") {
                Some(c) if c.eq_ignore_ascii_case("flushall") => deny(format!("command {c}")),
                _ => Verdict::allow(),
            },
            "http" => match field_text(plugin, request, "path") {
                Some(p) if p == "/get" => Verdict::allow(),
                p => deny(format!("path {p:?}")),
            },
            _ => Verdict::allow(),
        }
    }
}

fn load(host: &PluginHost, name: &str) -> Arc<Plugin> {
    let bytes = std::fs::read(guest(name)).unwrap();
    Arc::new(host.load(&bytes, None).unwrap())
}

#[test]
fn denied_requests_get_the_plugins_reply_in_order_and_connections_stay_usable() {
    let _guard = serial();
    let lab = TestLab::up("e2e-pxd", 232).unwrap();
    // The agent redirects to port 10481, where this test's own proxy listens
    // with a decider that denies.
    let agent = TestAgent::start(
        "pxd",
        "e2e-pxd",
        "l7:\n  proxyEnabled: false\n  proxyPort: 10481\n",
        4,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let host = PluginHost::new(Limits::default()).unwrap();
    let redis = load(&host, "loupe_plugin_redis");
    let http = load(&host, "loupe_plugin_http");
    // On the broker's port, a plugin that traps when asked: the connection
    // must fail closed.
    let hostile = load(&host, "loupe_hostile_misbehave");
    let factory = PluginInspectorFactory::new(
        move |conn: &ConnInfo| match conn.server.port() {
            6379 => Some(redis.clone()),
            80 => Some(http.clone()),
            9092 => Some(hostile.clone()),
            _ => None,
        },
        Arc::new(TestDecider),
        Arc::new(NoEvents),
        Vec::new(),
    );
    let resolver: Resolver = Arc::new(|_: IpAddr| None);
    let proxy = Proxy::start(
        ProxySettings {
            port: 10481,
            max_connections: 64,
            connect_timeout: Duration::from_secs(5),
        },
        resolver,
        Arc::new(factory),
    )
    .unwrap();
    let stats = proxy.stats();

    for (name, text) in [
        ("redis.yaml", REDIS_L7),
        ("http.yaml", HTTP_L7),
        ("kafka.yaml", KAFKA_L7),
    ] {
        let file = write_policy(&agent, name, text);
        agent.loupe_ok(&["policy", "apply", "-f", &file]).unwrap();
    }

    let redis = |args: &[&str]| {
        let mut argv = vec!["redis-cli", "-h", "db-service"];
        argv.extend_from_slice(args);
        lab.exec_ok("api-service", &argv).unwrap()
    };
    assert_eq!(redis(&["SET", "k", "v"]).trim(), "OK");
    let flush = redis(&["FLUSHALL"]);
    assert!(flush.contains("NOPERM"), "{flush}");
    // The denied FLUSHALL never reached the server.
    assert_eq!(redis(&["GET", "k"]).trim(), "v");

    // A pipeline: the denied command's reply takes its place between the
    // server's replies.
    let script = r#"
import socket, sys
s = socket.create_connection(('db-service', 6379), timeout=5)
s.sendall(b'*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*1\r\n$8\r\nFLUSHALL\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n')
buf = b''
while buf.count(b'\r\n') < 5:
    d = s.recv(4096)
    if not d:
        break
    buf += d
sys.stdout.buffer.write(buf)
"#;
    let replies = lab
        .exec_ok("api-service", &["python3", "-c", script])
        .unwrap();
    assert_eq!(
        replies,
        "+OK\r\n-NOPERM policy denies running the 'flushall' command\r\n$1\r\n1\r\n+PONG\r\n"
    );
    assert_eq!(redis(&["GET", "a"]).trim(), "1");

    // HTTP keep-alive: a denied request gets 403 and the same connection
    // carries the next, allowed one.
    let out = lab
        .exec_ok(
            "frontend",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-w",
                "\n%{http_code} %{num_connects}\n",
                "http://api-service/anything/secret",
                "http://api-service/get",
            ],
        )
        .unwrap();
    assert!(out.contains("Access denied\n403 1\n"), "{out}");
    assert!(out.trim_end().ends_with("200 0"), "{out}");
    assert!(out.contains("\"url\": \"http://api-service/get\""), "{out}");

    // Five Redis connections and one HTTP connection, each proxied once.
    assert_eq!(
        stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        6,
        "{stats:?}"
    );
    assert_eq!(stats.resets.load(std::sync::atomic::Ordering::Relaxed), 0);

    // A plugin that traps on an enforced connection: reset, not a pass.
    let outcome = lab
        .exec_ok("api-service", &["python3", "-c", TRAP_SCRIPT])
        .unwrap();
    assert_eq!(outcome.trim(), "reset");
    assert_eq!(stats.resets.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(proxy);
}

/// Denies Kafka Produce to the topic `secret`.
struct DenySecretTopic;

impl Decider for DenySecretTopic {
    fn decide(&self, _conn: &ConnInfo, plugin: &PluginInfo, request: &Message) -> Verdict {
        let produce = field_text(plugin, request, "api-name").as_deref() == Some("Produce");
        let topic = field_text(plugin, request, "topic");
        if produce && topic.as_deref() == Some("secret") {
            Verdict::Deny {
                by: Default::default(),
                reason: "produce to secret".into(),
            }
        } else {
            Verdict::allow()
        }
    }
}

#[test]
fn a_denied_kafka_produce_gets_error_29_and_the_connection_carries_on() {
    let _guard = serial();
    let lab = TestLab::up("e2e-pxk", 233).unwrap();
    let agent = TestAgent::start(
        "pxk",
        "e2e-pxk",
        "l7:\n  proxyEnabled: false\n  proxyPort: 10482\n",
        4,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let host = PluginHost::new(Limits::default()).unwrap();
    let kafka = load(&host, "loupe_plugin_kafka");
    let factory = PluginInspectorFactory::new(
        move |conn: &ConnInfo| (conn.server.port() == 9092).then(|| kafka.clone()),
        Arc::new(DenySecretTopic),
        Arc::new(NoEvents),
        Vec::new(),
    );
    let proxy = Proxy::start(
        ProxySettings {
            port: 10482,
            max_connections: 64,
            connect_timeout: Duration::from_secs(5),
        },
        Arc::new(|_: IpAddr| None),
        Arc::new(factory),
    )
    .unwrap();
    let file = write_policy(&agent, "kafka.yaml", KAFKA_L7);
    agent.loupe_ok(&["policy", "apply", "-f", &file]).unwrap();

    // kafka-python speaks Produce v8 here; the deny reply must be a v8 response
    // for it to read error 29 (TOPIC_AUTHORIZATION_FAILED) on the same connection.
    let script = r#"
from kafka import KafkaProducer
from kafka.errors import TopicAuthorizationFailedError
p = KafkaProducer(bootstrap_servers='kafka:9092', api_version=(2, 4, 0),
                  enable_idempotence=False, retries=0, linger_ms=0,
                  request_timeout_ms=10000, max_block_ms=15000)
p.send('public', b'a').get(timeout=20)
print('public: delivered')
try:
    p.send('secret', b'b').get(timeout=20)
    print('secret: delivered')
except TopicAuthorizationFailedError as e:
    print('secret: denied', type(e).__name__)
p.send('public', b'c').get(timeout=20)
print('public: delivered')
p.close(timeout=5)
"#;
    let out = lab
        .exec_ok("api-service", &["python3", "-c", script])
        .unwrap();
    assert_eq!(
        out.trim(),
        "public: delivered\nsecret: denied TopicAuthorizationFailedError\npublic: delivered",
        "{out}"
    );
    let stats = proxy.stats();
    assert_eq!(stats.resets.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(stats.accepted.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
