//! `loupe status [--wait]`: the agent's health, like `cilium status`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use crate::api::client;
use loupe_proto::daemon::{StatusRequest, StatusResponse, daemon_client::DaemonClient};

/// `loupe status` flags.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Wait until the agent is reachable and healthy.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_duration: u64,
    /// Print the response as JSON.
    #[arg(short, long)]
    pub json: bool,
}

fn duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn opt(v: Option<u32>) -> String {
    v.map_or_else(|| "not reported".into(), |n| n.to_string())
}

/// The human-readable report.
pub fn render(s: &StatusResponse) -> String {
    let mut out = String::new();
    let health = if s.healthy { "Ok" } else { "Error" };
    let _ = writeln!(
        out,
        "Loupe:          {health}   {} (up {})",
        s.version,
        duration(s.uptime_ns)
    );
    let datapath = s
        .components
        .iter()
        .find(|c| c.name == "datapath")
        .map_or_else(
            || "not reported".into(),
            |c| format!("{}   {}", c.state, c.detail),
        );
    let _ = writeln!(out, "Datapath:       {datapath}");
    let _ = writeln!(out, "Endpoints:      {}", s.endpoints);
    let _ = writeln!(out, "Identities:     {}", opt(s.identities));
    let _ = writeln!(out, "Policies:       {}", opt(s.policies));
    let _ = writeln!(out, "Plugins:        {}", opt(s.plugins));
    match &s.flows {
        Some(f) => {
            let pct = if f.capacity == 0 {
                0.0
            } else {
                f.stored as f64 * 100.0 / f.capacity as f64
            };
            let _ = writeln!(
                out,
                "Hubble:         Ok   Current/Max Flows: {}/{} ({pct:.2}%), Flows/s: {:.2}, Seen: {}, Lost: {} (subscriber queues) + {} (upstream)",
                f.stored,
                f.capacity,
                f.flows_per_second,
                f.seen,
                f.lost_to_subscribers,
                f.lost_upstream
            );
        }
        None => {
            let _ = writeln!(out, "Hubble:         Disabled");
        }
    }
    if s.map_pressure.is_empty() {
        let _ = writeln!(out, "Map pressure:   not reported");
    } else {
        let maps: Vec<String> = s
            .map_pressure
            .iter()
            .map(|m| format!("{} {:.1}%", m.map_name, m.pressure * 100.0))
            .collect();
        let _ = writeln!(out, "Map pressure:   {}", maps.join(", "));
    }
    let _ = writeln!(out, "Components:");
    for c in &s.components {
        let _ = writeln!(out, "  {:<22} {:<9} {}", c.name, c.state, c.detail);
    }
    out
}

async fn fetch(socket: &Path) -> anyhow::Result<StatusResponse> {
    let mut client = DaemonClient::new(client::connect(socket).await?);
    Ok(client.status(StatusRequest {}).await?.into_inner())
}

pub(super) async fn run(args: StatusArgs, socket: &Path) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_duration);
    let status = loop {
        match fetch(socket).await {
            Ok(s) if s.healthy || !args.wait || Instant::now() >= deadline => break Ok(s),
            Err(e) if !args.wait || Instant::now() >= deadline => break Err(e),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }?;
    if args.json {
        let value = serde_json::json!({
            "version": status.version,
            "uptimeNs": status.uptime_ns,
            "healthy": status.healthy,
            "endpoints": status.endpoints,
            "identities": status.identities,
            "policies": status.policies,
            "plugins": status.plugins,
            "flows": status.flows.as_ref().map(|f| serde_json::json!({
                "stored": f.stored, "capacity": f.capacity, "seen": f.seen,
                "lostToSubscribers": f.lost_to_subscribers, "lostUpstream": f.lost_upstream,
                "subscribers": f.subscribers, "flowsPerSecond": f.flows_per_second,
            })),
            "mapPressure": status.map_pressure.iter().map(|m| serde_json::json!({"mapName": m.map_name, "pressure": m.pressure})).collect::<Vec<_>>(),
            "components": status.components.iter().map(|c| serde_json::json!({"name": c.name, "state": c.state, "detail": c.detail})).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        print!("{}", render(&status));
    }
    Ok(if status.healthy { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_proto::daemon::{ComponentStatus, FlowStatus, MapPressure};

    #[test]
    fn renders_like_cilium_status() {
        let s = StatusResponse {
            version: "0.1.0".into(),
            uptime_ns: 125_000_000_000,
            endpoints: 4,
            components: vec![ComponentStatus {
                name: "datapath".into(),
                state: "error".into(),
                detail: "not attached: permission denied".into(),
            }],
            flows: Some(FlowStatus {
                stored: 10,
                capacity: 4095,
                seen: 12,
                lost_to_subscribers: 1,
                lost_upstream: 2,
                subscribers: 1,
                flows_per_second: 0.5,
            }),
            map_pressure: vec![MapPressure {
                map_name: "ct4_global".into(),
                pressure: 0.125,
            }],
            identities: Some(7),
            policies: None,
            plugins: None,
            healthy: false,
        };
        let text = render(&s);
        assert!(
            text.starts_with("Loupe:          Error   0.1.0 (up 2m5s)\n"),
            "{text}"
        );
        assert!(text.contains("Datapath:       error   not attached: permission denied\n"));
        assert!(text.contains("Identities:     7\nPolicies:       not reported\n"));
        assert!(
            text.contains("Current/Max Flows: 10/4095 (0.24%)"),
            "{text}"
        );
        assert!(text.contains("Map pressure:   ct4_global 12.5%\n"));
    }
}
