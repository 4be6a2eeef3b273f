//! Metrics end to end: the agent library serves `/metrics` on its two listeners,
//! flows are pushed in-process through `FlowStore::push` (as the datapath and the
//! L7 path do), `promtool check metrics` validates both expositions, and a real
//! Prometheus server scrapes the agent and evaluates the three PromQL queries of
//! the Cilium/Hubble production guide on that data.
//!
//! `cilium_drop_count_total` is a datapath counter: here a collector registered
//! through the same public API the datapath uses (`MetricsRegistry::register_fn`)
//! reports the drops the test pushes.

// Test helpers panic on failure by design (the lint allows it only inside #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loupe_proto::flow::{
    DropReason, Endpoint, Flow, FlowType, Http, Ip, IpVersion, L7FlowType, Layer4, Layer7, Tcp,
    TcpFlags, TrafficDirection, Verdict, layer4, layer7,
};
use loupe_runtime::agent::{self, AgentState};
use loupe_runtime::config::AgentConfig;
use loupe_runtime::metrics::{MetricFamily, MetricKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn ep(pod: &str, app: &str) -> Option<Endpoint> {
    Some(Endpoint {
        namespace: "demo-app".into(),
        pod_name: pod.into(),
        labels: vec![format!("k8s:app={app}")],
        identity: 1000,
        ..Default::default()
    })
}

fn http_response(code: u32) -> Flow {
    Flow {
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L7 as i32,
        traffic_direction: TrafficDirection::Ingress as i32,
        is_reply: Some(true),
        ip: Some(Ip {
            source: "10.0.0.2".into(),
            destination: "10.0.0.1".into(),
            ip_version: IpVersion::IPv4 as i32,
            ..Default::default()
        }),
        source: ep("frontend-abc", "frontend"),
        destination: ep("api-service-xyz", "api-service"),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 80,
                destination_port: 40000,
                flags: None,
            })),
        }),
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 4_000_000,
            record: Some(layer7::Record::Http(Http {
                code,
                method: "GET".into(),
                url: "http://api-service/get".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            })),
        }),
        ..Default::default()
    }
}

fn l4_flow(verdict: Verdict) -> Flow {
    Flow {
        verdict: verdict as i32,
        drop_reason_desc: if verdict == Verdict::Dropped {
            DropReason::PolicyDenied as i32
        } else {
            0
        },
        r#type: FlowType::L3L4 as i32,
        // As the datapath reports them: a policy verdict, or a drop.
        event_type: Some(loupe_proto::flow::CiliumEventType {
            r#type: if verdict == Verdict::Dropped { 1 } else { 5 },
            sub_type: 0,
        }),
        traffic_direction: TrafficDirection::Ingress as i32,
        source: ep("frontend-abc", "frontend"),
        destination: ep("db-service-1", "db-service"),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40001,
                destination_port: 6379,
                flags: Some(TcpFlags {
                    syn: true,
                    ..Default::default()
                }),
            })),
        }),
        ..Default::default()
    }
}

fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt package prometheus; scripts/bootstrap installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 0 for valid text, 3 for lint warnings only, 1 for errors.
    assert!(
        out.status.code() == Some(0) || (out.status.code() == Some(3) && !text.contains("error")),
        "promtool check metrics failed ({:?}): {text}\n{body}",
        out.status
    );
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = http_get(port, &format!("/api/v1/query?query={encoded}")).await;
    assert_eq!(status, 200, "{promql}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_evaluates_the_guide_queries() {
    let dir = tempfile::tempdir().unwrap();
    let agent_port = common::free_port();
    let hubble_port = common::free_port();
    let prom_port = common::free_port();
    let mut config = AgentConfig {
        socket_path: dir.path().join("loupe.sock"),
        node_name: Some("test-node".into()),
        ..AgentConfig::default()
    };
    config.endpoints.lab = false;
    config.prometheus.enabled = true;
    config.prometheus.address = "127.0.0.1".into();
    config.prometheus.port = agent_port;
    config.hubble.metrics.address = "127.0.0.1".into();
    config.hubble.metrics.port = hubble_port;
    config.hubble.metrics.enabled = [
        "dns", "drop", "tcp", "flow", "port-distribution", "icmp", "kafka", "redis",
        "httpV2:exemplars=true;labelsContext=source_ip,source_namespace,source_pod,destination_ip,destination_namespace,destination_pod,traffic_direction,http_status_code",
    ]
    .map(String::from)
    .to_vec();
    let path = dir.path().join("loupe.yaml");
    // The config round-trips through the file format users write.
    std::fs::write(&path, serde_norway_yaml(&config)).unwrap();
    let config = AgentConfig::load(&path).unwrap();
    let mut config = config;
    config.state_dir = dir.path().to_path_buf();
    let state = Arc::new(AgentState::new(config).unwrap());

    // The datapath's drop counters, reported at scrape time.
    let drops = Arc::new(AtomicU64::new(0));
    let d = drops.clone();
    state.metrics.register_fn("datapath", move || {
        vec![
            MetricFamily::new(
                "cilium_drop_count_total",
                "Dropped packets, by reason and direction.",
                MetricKind::Counter,
            )
            .value(
                &[("reason", "Policy denied"), ("direction", "INGRESS")],
                d.load(Ordering::Relaxed) as f64,
            ),
        ]
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(agent::run_with_state(state.clone(), async move {
        let _ = stop_rx.await;
    }));

    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: loupe-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n  - job_name: loupe-hubble\n    static_configs:\n      - targets: ['127.0.0.1:{hubble_port}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt package prometheus; scripts/bootstrap installs it)"),
    );

    // Traffic: per round 3 HTTP 200s and one 503, 2 allowed and 1 denied
    // connection; pushed until Prometheus has enough samples for rate().
    let store = state.flows.clone();
    let started = Instant::now();
    let mut results = None;
    while started.elapsed() < Duration::from_secs(60) {
        for _ in 0..10 {
            for code in [200, 200, 200, 503] {
                store.push(http_response(code));
            }
            store.push(l4_flow(Verdict::Forwarded));
            store.push(l4_flow(Verdict::Forwarded));
            store.push(l4_flow(Verdict::Dropped));
            drops.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() < Duration::from_secs(5) {
            continue;
        }
        let (ready, _) = http_get(prom_port, "/-/ready").await;
        if ready != 200 {
            continue;
        }
        let top_drops = query(
            prom_port,
            "topk(10, sum(rate(cilium_drop_count_total[5m])) by (reason, direction, source_namespace, destination_namespace))",
        )
        .await;
        let error_rate = query(
            prom_port,
            "sum(rate(hubble_http_requests_total{http_status_code=~\"5..\"}[5m])) by (source_pod, destination_pod) / sum(rate(hubble_http_requests_total[5m])) by (source_pod, destination_pod)",
        )
        .await;
        let enforcement = query(
            prom_port,
            "sum(rate(cilium_policy_enforcement_total[5m])) by (namespace, direction)",
        )
        .await;
        if !top_drops.is_empty() && !error_rate.is_empty() && !enforcement.is_empty() {
            results = Some((top_drops, error_rate, enforcement));
            break;
        }
    }
    let (top_drops, error_rate, enforcement) =
        results.expect("Prometheus never returned results for the three queries");

    assert_eq!(top_drops[0]["metric"]["reason"], "Policy denied");
    assert_eq!(top_drops[0]["metric"]["direction"], "INGRESS");
    assert!(value(&top_drops[0]) > 0.0);

    // The HTTP responses went api-service -> frontend; one in four was a 5xx.
    assert_eq!(error_rate.len(), 1, "{error_rate:?}");
    assert_eq!(error_rate[0]["metric"]["source_pod"], "frontend-abc");
    assert_eq!(
        error_rate[0]["metric"]["destination_pod"],
        "api-service-xyz"
    );
    let ratio = value(&error_rate[0]);
    assert!((0.15..=0.35).contains(&ratio), "5xx ratio {ratio}");

    let ingress = enforcement
        .iter()
        .find(|s| s["metric"]["namespace"] == "demo-app" && s["metric"]["direction"] == "ingress")
        .expect("demo-app ingress enforcement");
    assert!(value(ingress) > 0.0);

    // Every query of the shipped Grafana dashboard parses and evaluates.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/loupe.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            query(prom_port, target["expr"].as_str().unwrap()).await;
            exprs += 1;
        }
    }
    assert!(exprs >= 10);

    // Both expositions are valid and carry the names users look for.
    let (status, agent_body) = http_get(agent_port, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check(&agent_body);
    for name in [
        "cilium_drop_count_total{",
        "cilium_policy_enforcement_total{",
        "loupe_flows_seen_total ",
        "loupe_component_up{",
    ] {
        assert!(agent_body.contains(name), "{name} missing:\n{agent_body}");
    }
    let (status, hubble_body) = http_get(hubble_port, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check(&hubble_body);
    for name in [
        "hubble_flows_processed_total{",
        "hubble_drop_total{protocol=\"TCP\",reason=\"POLICY_DENIED\"}",
        "hubble_http_requests_total{",
        "hubble_http_request_duration_seconds_bucket{",
        "hubble_lost_events_total{",
        "hubble_tcp_flags_total{",
        "hubble_port_distribution_total{",
    ] {
        assert!(hubble_body.contains(name), "{name} missing:\n{hubble_body}");
    }
    let (status, _) = http_get(hubble_port, "/nothing").await;
    assert_eq!(status, 404);
    let _ = stop_tx.send(());
}

/// The config as YAML (what a user would write).
fn serde_norway_yaml(config: &AgentConfig) -> String {
    serde_norway::to_string(config).unwrap()
}
