//! `loupe endpoint list`.

use std::path::Path;

use clap::Subcommand;

use loupe_proto::daemon::{ListEndpointsRequest, daemon_client::DaemonClient};

use crate::api::client;

/// Endpoint subcommands.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// List the agent's endpoints.
    List {
        /// Print JSON, one endpoint per line.
        #[arg(short, long)]
        json: bool,
    },
}

pub(super) async fn run(cmd: EndpointCommand, socket: &Path) -> anyhow::Result<i32> {
    let EndpointCommand::List { json } = cmd;
    let mut client = DaemonClient::new(client::connect(socket).await?);
    let endpoints = client
        .list_endpoints(ListEndpointsRequest {})
        .await?
        .into_inner()
        .endpoints;
    if json {
        for ep in &endpoints {
            let value = serde_json::json!({
                "id": ep.id,
                "namespace": ep.namespace,
                "podName": ep.pod_name,
                "labels": ep.labels,
                "ips": ep.ips,
                "interface": ep.interface,
                "ifindex": ep.ifindex,
                "identity": ep.identity,
                "source": ep.source,
            });
            println!("{value}");
        }
        return Ok(0);
    }
    println!(
        "{:<6} {:<10} {:<32} {:<28} {:<12} LABELS",
        "ID", "IDENTITY", "POD", "IPS", "INTERFACE"
    );
    for ep in &endpoints {
        println!(
            "{:<6} {:<10} {:<32} {:<28} {:<12} {}",
            ep.id,
            ep.identity,
            format!("{}/{}", ep.namespace, ep.pod_name),
            ep.ips.join(","),
            ep.interface,
            ep.labels.join(",")
        );
    }
    Ok(0)
}
