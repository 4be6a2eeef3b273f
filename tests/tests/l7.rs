//! L7 visibility in the lab: policy marks ports for L7, the datapath copies those
//! connections' packets, the agent reassembles them, the shipped plugins parse
//! them, and every request and response is a flow — checked against what real
//! clients (curl, wrk, redis-benchmark, confluent-kafka) say they did.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use loupe_tests::{
    TestAgent, TestLab, client, l7_latency_ns, metric, scratch_dir, serial, wait_for, write_file,
};
use serde_json::Value;

const VISIBILITY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: api-visibility
  namespace: demo-app
spec:
  endpointSelector:
    matchLabels:
      app: api-service
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - {}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-visibility
  namespace: demo-app
spec:
  endpointSelector:
    matchLabels:
      app: db-service
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: api-service
      toPorts:
        - ports:
            - port: "6379"
              protocol: TCP
          rules:
            l7proto: redis
            l7:
              - {}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: kafka-visibility
  namespace: demo-app
spec:
  endpointSelector:
    matchLabels:
      app: kafka
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: api-service
      toPorts:
        - ports:
            - port: "9092"
              protocol: TCP
          rules:
            kafka:
              - {}
"#;

/// Stops wrk's only connection after exactly this many responses, so wrk's own
/// count is exact.
const WRK_REQUESTS: u64 = 300;

fn wrk_script(dir: &std::path::Path) -> String {
    write_file(
        dir,
        "count.lua",
        &format!(
            "local n = 0\nresponse = function(status, headers, body)\n  n = n + 1\n  if n >= {WRK_REQUESTS} then wrk.thread:stop() end\nend\n"
        ),
    )
}

/// L7 flows in the agent's ring, as JSON.
fn l7_flows(agent: &TestAgent, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--type", "l7", "--last", "4000"];
    args.extend_from_slice(extra);
    agent
        .observe_json(&args)
        .into_iter()
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

fn l7_type(f: &Value) -> &str {
    f["l7"]["type"].as_str().unwrap_or("")
}

/// Waits until the agent has read every copy the datapath made and its message
/// counters stop moving (the parsing thread has caught up).
fn settle(port: u16) {
    let mut last = -1.0;
    wait_for(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(700));
        let copied = metric(port, "loupe_datapath_payload_packets_total", &[]);
        let read =
            metric(port, "loupe_l7_packets_total", &[]) + metric(port, "loupe_l7_lost_total", &[]);
        let now = metric(port, "loupe_l7_messages_total", &[]);
        let done = copied > 0.0 && read >= copied && now == last;
        last = now;
        done
    });
}

#[test]
fn l7_visibility_matches_real_clients() {
    let _guard = serial();
    let lab = TestLab::up("e2e-l7", 223).unwrap();
    let prom = 19_623;
    let hubble = 19_624;
    let agent = TestAgent::start(
        "l7",
        "e2e-l7",
        &format!(
            "prometheus:\n  enabled: true\n  port: {prom}\n  address: 127.0.0.1\nhubble:\n  metrics:\n    port: {hubble}\n    address: 127.0.0.1\n    enabled: [\"httpV2\", \"kafka\", \"redis\"]\nl7:\n  bufferPages: 1024\n  queueSize: 262144\n"
        ),
        4,
    )
    .unwrap();
    let dir = scratch_dir("l7");

    // No L7 policy yet: nothing is copied, whatever the traffic.
    let pong = lab
        .exec_ok("api-service", &["redis-cli", "-h", "db-service", "PING"])
        .unwrap();
    assert_eq!(pong.trim(), "PONG");
    lab.http_status("frontend", &[], "http://api-service/get")
        .unwrap();
    assert_eq!(
        metric(prom, "loupe_datapath_payload_packets_total", &[]),
        0.0,
        "payload copied without L7 policy"
    );

    let policy = write_file(&dir, "visibility.yaml", VISIBILITY);
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();

    // A port without L7 rules (frontend's nginx) still costs nothing.
    let before = metric(prom, "loupe_datapath_payload_packets_total", &[]);
    lab.http_status("api-service", &[], "http://frontend/")
        .unwrap();
    assert_eq!(
        metric(prom, "loupe_datapath_payload_packets_total", &[]),
        before,
        "payload copied for a port with no L7 rule"
    );

    // curl: ten requests on one keep-alive connection.
    let mut urls = vec!["http://api-service/get"; 6];
    urls.extend(["http://api-service/status/418"; 2]);
    urls.extend(["http://api-service/headers"; 2]);
    let mut args = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\\n"];
    args.extend(urls.iter().copied());
    let codes = lab.exec_ok("frontend", &args).unwrap();
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), 8, "{codes}");
    assert_eq!(codes.lines().filter(|c| *c == "418").count(), 2, "{codes}");

    // wrk: exactly WRK_REQUESTS requests.
    let script = wrk_script(&dir);
    let wrk = lab
        .exec_ok(
            "frontend",
            &[
                "wrk",
                "-t1",
                "-c1",
                "-d20s",
                "-s",
                &script,
                "http://api-service/anything/wrk",
            ],
        )
        .unwrap();
    let wrk_count: u64 = wrk
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{wrk}"));
    assert_eq!(wrk_count, WRK_REQUESTS, "{wrk}");
    settle(prom);

    let http = l7_flows(&agent, &["--protocol", "http"]);
    let requests = |path: &str| {
        http.iter()
            .filter(|f| l7_type(f) == "REQUEST" && f["l7"]["http"]["url"] == path)
            .count() as u64
    };
    let responses: Vec<&Value> = http.iter().filter(|f| l7_type(f) == "RESPONSE").collect();
    assert_eq!(requests("http://api-service/get"), 6);
    assert_eq!(requests("http://api-service/status/418"), 2);
    assert_eq!(requests("http://api-service/headers"), 2);
    assert_eq!(requests("http://api-service/anything/wrk"), wrk_count);
    let mut by_url = std::collections::BTreeMap::<String, usize>::new();
    for r in &responses {
        *by_url
            .entry(format!(
                "{} {}",
                r["l7"]["http"]["url"], r["l7"]["http"]["code"]
            ))
            .or_default() += 1;
    }
    assert_eq!(
        responses.len() as u64,
        10 + wrk_count,
        "one response per request: {by_url:?}\n{}",
        loupe_tests::samples(prom, &["loupe_l7", "loupe_datapath_payload"])
    );
    let teapots: Vec<&&Value> = responses
        .iter()
        .filter(|f| f["l7"]["http"]["code"] == 418)
        .collect();
    assert_eq!(teapots.len(), 2);
    let sample = teapots[0];
    assert_eq!(sample["l7"]["http"]["method"], "GET", "{sample}");
    assert_eq!(sample["l7"]["http"]["url"], "http://api-service/status/418");
    assert_eq!(sample["traffic_direction"], "INGRESS", "{sample}");
    assert_eq!(sample["is_reply"], true, "{sample}");
    assert!(
        sample["source"]["pod_name"]
            .as_str()
            .unwrap()
            .starts_with("api-service-"),
        "{sample}"
    );
    assert!(
        sample["destination"]["pod_name"]
            .as_str()
            .unwrap()
            .starts_with("frontend-"),
        "{sample}"
    );
    for r in &responses {
        let ns = l7_latency_ns(r);
        assert!(
            (1_000..5_000_000_000).contains(&ns),
            "implausible latency {ns} ns: {r}"
        );
    }
    // The compact line a Hubble user reads.
    let compact = agent
        .loupe_ok(&["observe", "--type", "l7", "--last", "50"])
        .unwrap();
    assert!(
        compact.contains("http-response FORWARDED (HTTP/1.1 418")
            || compact.contains("http-request FORWARDED (HTTP/1.1 GET"),
        "{compact}"
    );
    // Flow-derived metrics agree with the clients.
    assert_eq!(
        metric(
            hubble,
            "hubble_http_requests_total",
            &["method=\"GET\"", "status=\"418\""]
        ),
        2.0
    );

    // Kafka: a confluent-kafka producer and consumer.
    let topic = "l7-orders";
    let out = lab
        .exec_ok(
            "api-service",
            &[
                "python3",
                &client("kafka_roundtrip.py"),
                "kafka:9092",
                topic,
            ],
        )
        .unwrap();
    assert!(out.contains("consumed"), "{out}");
    settle(prom);
    let kafka = l7_flows(&agent, &["--protocol", "kafka"]);
    let find = |kind: &str, api: &str| {
        kafka
            .iter()
            .filter(|f| {
                l7_type(f) == kind
                    && f["l7"]["kafka"]["api_key"] == api
                    && f["l7"]["kafka"]["topic"] == topic
            })
            .count()
    };
    let seen: Vec<String> = kafka
        .iter()
        .map(|f| {
            format!(
                "{} {} v{} {}",
                l7_type(f),
                f["l7"]["kafka"]["api_key"],
                f["l7"]["kafka"]["api_version"],
                f["l7"]["kafka"]["topic"]
            )
        })
        .collect();
    // Fetch v13+ names topics by id only (the name is in another connection's
    // Metadata), so a Fetch is checked for its API and its answer.
    let any_topic = |kind: &str, api: &str| {
        kafka
            .iter()
            .filter(|f| l7_type(f) == kind && f["l7"]["kafka"]["api_key"] == api)
            .count()
    };
    assert!(any_topic("REQUEST", "fetch") >= 1, "{seen:#?}");
    assert!(any_topic("RESPONSE", "fetch") >= 1, "{seen:#?}");
    for api in ["produce", "metadata"] {
        assert!(
            find("REQUEST", api) >= 1,
            "no {api} request for {topic}: {seen:#?}"
        );
        assert!(
            find("RESPONSE", api) >= 1,
            "no {api} response for {topic}: {seen:#?}"
        );
    }
    let produce_ok = kafka.iter().any(|f| {
        l7_type(f) == "RESPONSE"
            && f["l7"]["kafka"]["api_key"] == "produce"
            && f["l7"]["kafka"]["topic"] == topic
            && f["l7"]["kafka"]["error_code"].as_i64().unwrap_or(0) == 0
            && l7_latency_ns(f) > 0
    });
    assert!(produce_ok, "no successful produce response with latency");

    // Redis: redis-benchmark pipelining 16 deep; every command and reply counted.
    let requests_before = metric(prom, "loupe_l7_messages_total", &["kind=\"request\""]);
    let replies_before = metric(prom, "loupe_l7_messages_total", &["kind=\"response\""]);
    let n = 100_000u64;
    let bench = lab
        .exec_ok(
            "api-service",
            &[
                "redis-benchmark",
                "-h",
                "db-service",
                "-P",
                "16",
                "-n",
                &n.to_string(),
                "-t",
                "set,get,lpush",
                "-q",
            ],
        )
        .unwrap();
    assert!(bench.contains("SET") && bench.contains("LPUSH"), "{bench}");
    settle(prom);
    for command in ["SET", "GET", "LPUSH"] {
        let series = format!("command=\"{command}\"");
        // Flow-derived metrics follow the flow stream a little behind.
        wait_for(Duration::from_secs(20), || {
            metric(hubble, "loupe_redis_requests_total", &[&series]) as u64 == n
        });
        let counted = metric(hubble, "loupe_redis_requests_total", &[&series]);
        assert_eq!(
            counted as u64,
            n,
            "{command} replies counted\n{}\n{}\n{}",
            agent
                .loupe_ok(&["observe", "--verdict", "ERROR", "--last", "5", "-o", "json"])
                .unwrap_or_default(),
            loupe_tests::samples(prom, &["loupe_l7", "hubble_lost"]),
            loupe_tests::samples(hubble, &["loupe_redis_requests", "hubble_lost"])
        );
    }
    // Every Redis command answered (the Kafka consumer may close with a Fetch
    // still waiting, so only the benchmark's own messages are compared).
    let requests = metric(prom, "loupe_l7_messages_total", &["kind=\"request\""]) - requests_before;
    let replies = metric(prom, "loupe_l7_messages_total", &["kind=\"response\""]) - replies_before;
    assert_eq!(requests, replies, "every request answered");
    assert_eq!(metric(prom, "loupe_l7_unpaired_responses_total", &[]), 0.0);
    assert_eq!(metric(prom, "loupe_l7_lost_total", &[]), 0.0);
    assert_eq!(metric(prom, "loupe_l7_gaps_total", &[]), 0.0);
    let redis = l7_flows(&agent, &["--protocol", "redis"]);
    let keyed = |cmd: &str, key: &str| {
        redis.iter().any(|f| {
            let fields = &f["extensions"]["value"]["fields"];
            let has = |name: &str, value: &str| fields[name] == value;
            has("command", cmd) && has("key", key)
        })
    };
    assert!(
        keyed("LPUSH", "mylist"),
        "no LPUSH mylist among {}",
        redis.len()
    );
    drop(agent);
    drop(lab);
}

#[test]
fn starved_capture_reports_lost_events() {
    let _guard = serial();
    let lab = TestLab::up("e2e-l7loss", 224).unwrap();
    let prom = 19_625;
    let agent = TestAgent::start(
        "l7loss",
        "e2e-l7loss",
        &format!(
            "prometheus:\n  enabled: true\n  port: {prom}\n  address: 127.0.0.1\nl7:\n  bufferPages: 1\n  queueSize: 8\n"
        ),
        4,
    )
    .unwrap();
    let dir = scratch_dir("l7loss");
    let policy = write_file(&dir, "visibility.yaml", VISIBILITY);
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();
    // A follower sees the LostEvents as they happen (into a file: a pipe nobody
    // reads would block it).
    let stream = dir.join("follow.json");
    let follow = std::process::Command::new(loupe_tests::loupe_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["observe", "--follow", "-o", "json"])
        .stdout(std::fs::File::create(&stream).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the follower subscribe before anything is lost.
    std::thread::sleep(Duration::from_secs(2));
    let bench = lab
        .exec_ok(
            "api-service",
            &[
                "redis-benchmark",
                "-h",
                "db-service",
                "-P",
                "64",
                "-c",
                "8",
                "-n",
                "200000",
                "-t",
                "set",
                "-d",
                "512",
                "-q",
            ],
        )
        .unwrap();
    assert!(bench.contains("SET"), "{bench}");
    assert!(
        wait_for(Duration::from_secs(10), || metric(
            prom,
            "loupe_l7_lost_total",
            &[]
        ) > 0.0),
        "a 1-page buffer and an 8-packet queue lost nothing"
    );
    // LostEvents are reported once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let mut follow = follow;
    let _ = follow.kill();
    let out = follow.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&stream).unwrap();
    assert!(
        text.lines().any(|l| l.contains("lost_events")),
        "no LostEvent in the flow stream ({} lines: {:?}; stderr {}); metrics:\n{}",
        text.lines().count(),
        text.lines()
            .filter(|l| !l.starts_with("{\"flow\""))
            .take(3)
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr),
        loupe_tests::samples(prom, &["loupe_l7", "hubble_lost"])
    );
    // Still parsing, still serving.
    let pong = lab
        .exec_ok("api-service", &["redis-cli", "-h", "db-service", "PING"])
        .unwrap();
    assert_eq!(pong.trim(), "PONG");
    // The bundled plugins, and the one that parsed all this, in the metrics.
    let status = agent.loupe_ok(&["status"]).unwrap();
    assert!(status.contains("Plugins:        4\n"), "{status}");
    assert!(metric(prom, "loupe_plugin_messages_total", &["plugin=\"redis\""]) > 0.0);
}
