//! The cluster's nodes, watched in a kube-rs reflector, for the agent's
//! `peer.Peer` service: with a cluster view every agent's peer service announces
//! every node (its name, and its internal address with the Observer's port), as
//! Cilium's does, so a relay behind the node-local `hubble-peer` Service finds
//! them all.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::watch;

use super::KubernetesStats;
use crate::health::Health;

/// The component the watch reports under in `loupe status`.
pub const HEALTH_COMPONENT: &str = "nodes/kubernetes";

/// A node as peers are announced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterNode {
    /// The node's name.
    pub name: String,
    /// Where its Observer answers (`internal IP:port`).
    pub address: String,
}

/// The cluster's nodes, shared by the watch (writer) and the peer service
/// (readers): `None` while there is no cluster view (the agent announces itself).
#[derive(Debug, Clone)]
pub struct ClusterNodes(Arc<watch::Sender<Option<Vec<ClusterNode>>>>);

impl Default for ClusterNodes {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(None)))
    }
}

impl ClusterNodes {
    /// Follows the node list.
    pub fn subscribe(&self) -> watch::Receiver<Option<Vec<ClusterNode>>> {
        self.0.subscribe()
    }

    /// Replaces the node list (sorted by name); readers wake only on a change.
    pub fn set(&self, mut nodes: Vec<ClusterNode>) {
        nodes.sort();
        self.0.send_if_modified(|current| {
            if current.as_ref() == Some(&nodes) {
                false
            } else {
                *current = Some(nodes);
                true
            }
        });
    }
}

/// Watches every Node and keeps `nodes` equal to them, each at its internal
/// address (IPv4 first) and `port`, until the task is dropped.
pub async fn watch(
    client: Client,
    nodes: ClusterNodes,
    port: u16,
    health: Arc<Health>,
    stats: Arc<KubernetesStats>,
) {
    let api = Api::<Node>::all(client);
    super::follow_all(api, "nodes", HEALTH_COMPONENT, health, stats, |store| {
        let list = peers(store, port);
        let detail = format!(
            "{} nodes ({} with an internal address)",
            store.len(),
            list.len()
        );
        nodes.set(list);
        detail
    })
    .await;
}

/// Every node of `store` with an internal address, at `port`.
pub fn peers(store: &Store<Node>, port: u16) -> Vec<ClusterNode> {
    let mut out = Vec::new();
    for node in store.state() {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let mut internal: Vec<IpAddr> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        // IPv4 first, as Cilium prefers it for the Observer's address.
        internal.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        if let Some(ip) = internal.first() {
            out.push(ClusterNode {
                name,
                address: std::net::SocketAddr::new(*ip, port).to_string(),
            });
        }
    }
    out
}
