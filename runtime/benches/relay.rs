//! How many flows per second `loupe relay` merges from N agents, what it costs
//! and where it stops keeping up (issue "relay and multi-node lab").
//!
//! `cargo bench -p loupe-runtime --bench relay [-- --quick]`
//!
//! N agents run in this process (no datapath; each serves its Observer and Peer
//! on TCP, as a node does), the relay runs as its own process (`loupe relay`, so
//! its CPU and memory are its own), and a gRPC client follows the merged stream.
//! A producer thread pushes flows into the agents' stores, round robin, at the
//! offered rate for a fixed time. Baseline, in the same round: the same client
//! following one agent directly at the same total rate. Reported per case: the
//! share of the offered flows the client received, what was lost and counted
//! (LostEvents from the agents' per-subscriber queues), what never arrived, how
//! long after the last offered flow the last one arrived (the sort buffer's
//! drain timeout is 1 s), the relay's CPU while flows were offered (cores) and
//! its peak RSS. Rounds are interleaved; medians are reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_proto::flow::{Endpoint, Flow, FlowType, Ip, Layer4, Tcp, Verdict, layer4};
use loupe_proto::observer::{
    GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes,
    observer_client::ObserverClient,
};
use loupe_runtime::agent::{self, AgentState};
use loupe_runtime::flow::FlowStore;

// The integration tests' helpers (a free port).
#[path = "../tests/common/mod.rs"]
mod common;
use common::free_port;

/// A typical L3/L4 flow: two pod endpoints with labels, TCP.
fn flow(i: u64) -> Flow {
    let ep = |pod: &str, app: &str| Endpoint {
        id: 1234,
        identity: 40_000,
        namespace: "demo-app".into(),
        labels: vec![
            format!("k8s:app={app}"),
            "k8s:io.kubernetes.pod.namespace=demo-app".into(),
        ],
        pod_name: pod.into(),
        ..Endpoint::default()
    };
    Flow {
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L3L4 as i32,
        ip: Some(Ip {
            source: "10.200.0.10".into(),
            destination: "10.200.0.20".into(),
            ..Ip::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 30_000 + (i % 30_000) as u32,
                destination_port: 80,
                flags: None,
            })),
        }),
        source: Some(ep("frontend-7d9f8b6c5-x2k4q", "frontend")),
        destination: Some(ep("api-service-5c8b7f9d4-q8m2z", "api-service")),
        ..Flow::default()
    }
}

struct Agents {
    stores: Vec<FlowStore>,
    ports: Vec<u16>,
    _runtime: tokio::runtime::Runtime,
}

fn agents(dir: &Path, n: usize) -> Agents {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut stores = Vec::new();
    let mut ports = Vec::new();
    for i in 0..n {
        let port = free_port();
        let name = format!("node-{i:02}");
        let config = common::node_config(dir, &name, port);
        config.validate(Path::new("bench")).unwrap();
        let state = Arc::new(AgentState::new(config).unwrap());
        stores.push(state.flows.clone());
        runtime.spawn(agent::run_with_state(state, std::future::pending::<()>()));
        ports.push(port);
    }
    Agents {
        stores,
        ports,
        _runtime: runtime,
    }
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the stat line (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    /// Share of the offered flows the client received.
    delivered: f64,
    lost_counted: u64,
    missing: u64,
    /// How long after the producer's last flow the client had its last one.
    lag_s: f64,
    relay_cores: f64,
    relay_rss_mib: f64,
}

/// Follows `server`, while a producer offers `rate` flows/s into `stores` for
/// `secs`; what the client received.
fn run_case(
    server: &str,
    stores: &[FlowStore],
    rate: u64,
    secs: u64,
    relay_pid: Option<u32>,
) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = ObserverClient::connect(server.to_string()).await.unwrap();
        // The relay sees every node before the clock starts.
        let want = stores.len() as u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while relay_pid.is_some() {
            let s = client
                .server_status(ServerStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            if s.num_connected_nodes == Some(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "relay never connected {want} nodes: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut stream = client
            .get_flows(GetFlowsRequest {
                follow: true,
                ..GetFlowsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Subscriptions in place on every node before the first flow.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let offered = rate * secs;
        let stores_owned: Vec<FlowStore> = stores.to_vec();
        let producer = std::thread::spawn(move || {
            let start = Instant::now();
            let slice = Duration::from_millis(10);
            let per_slice = (rate / 100).max(1);
            let mut sent = 0u64;
            while sent < offered {
                let due = start + slice * u32::try_from(sent / per_slice).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                for _ in 0..per_slice.min(offered - sent) {
                    let store = &stores_owned[(sent as usize) % stores_owned.len()];
                    store.push(flow(sent));
                    sent += 1;
                }
            }
        });
        let cpu_before = relay_pid.map(cpu_seconds);
        let start = Instant::now();
        let (mut received, mut lost) = (0u64, 0u64);
        let mut last = start;
        let end = start + Duration::from_secs(secs + 5);
        while received + lost < offered {
            let Ok(next) = tokio::time::timeout_at(end.into(), stream.message()).await else {
                break;
            };
            match next.unwrap() {
                Some(r) => match r.response_types {
                    Some(ResponseTypes::Flow(_)) => received += 1,
                    Some(ResponseTypes::LostEvents(l)) => lost += l.num_events_lost,
                    _ => {}
                },
                None => break,
            }
            last = Instant::now();
        }
        producer.join().unwrap();
        let relay_cores = match (relay_pid, cpu_before) {
            (Some(pid), Some(before)) => (cpu_seconds(pid) - before) / secs as f64,
            _ => 0.0,
        };
        Outcome {
            delivered: received as f64 / offered as f64,
            lost_counted: lost,
            missing: offered.saturating_sub(received + lost),
            lag_s: (last.duration_since(start).as_secs_f64() - secs as f64).max(0.0),
            relay_cores,
            relay_rss_mib: relay_pid.map_or(0.0, peak_rss_mib),
        }
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (secs, rounds) = if quick { (2, 1) } else { (5, 3) };
    let cases: &[(usize, &[u64])] = if quick {
        &[(3, &[20_000])]
    } else {
        &[
            (3, &[20_000, 100_000, 300_000]),
            (50, &[20_000, 100_000, 300_000]),
        ]
    };
    let dir = tempfile::tempdir().unwrap();
    println!(
        "| agents | offered flows/s | direct: delivered, lost, missing, lag | relay: delivered, lost, missing, lag | relay CPU (cores) | relay peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    for (n, rates) in cases {
        let agents = agents(dir.path(), *n);
        let relay_port = free_port();
        let mut relay = std::process::Command::new(env!("CARGO_BIN_EXE_loupe"))
            .arg("relay")
            .arg(format!("--listen-address=127.0.0.1:{relay_port}"))
            .args(
                agents
                    .ports
                    .iter()
                    .map(|p| format!("--peer-service=127.0.0.1:{p}")),
            )
            .args(["--disable-client-tls", "--disable-server-tls"])
            .env("LOUPE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let relay_addr = format!("http://127.0.0.1:{relay_port}");
        let direct_addr = format!("http://127.0.0.1:{}", agents.ports[0]);
        for rate in *rates {
            let (mut direct, mut via) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                direct.push(run_case(
                    &direct_addr,
                    &agents.stores[..1],
                    *rate,
                    secs,
                    None,
                ));
                via.push(run_case(
                    &relay_addr,
                    &agents.stores,
                    *rate,
                    secs,
                    Some(relay.id()),
                ));
            }
            let pick = |v: &[Outcome], f: fn(&Outcome) -> f64| median(v.iter().map(f).collect());
            println!(
                "| {n} | {rate} | {:.1} %, {:.0}, {:.0}, {:.2} s | {:.1} %, {:.0}, {:.0}, {:.2} s | {:.2} | {:.0} MiB |",
                100.0 * pick(&direct, |o| o.delivered),
                pick(&direct, |o| o.lost_counted as f64),
                pick(&direct, |o| o.missing as f64),
                pick(&direct, |o| o.lag_s),
                100.0 * pick(&via, |o| o.delivered),
                pick(&via, |o| o.lost_counted as f64),
                pick(&via, |o| o.missing as f64),
                pick(&via, |o| o.lag_s),
                pick(&via, |o| o.relay_cores),
                pick(&via, |o| o.relay_rss_mib),
            );
        }
        let _ = relay.kill();
        let _ = relay.wait();
    }
}
