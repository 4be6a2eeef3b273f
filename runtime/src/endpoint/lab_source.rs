//! The lab as an endpoint source: what `loupe lab up` recorded, re-read as a
//! Kubernetes reflector would re-list pods.
//!
//! In a lab with nodes, the pods on the agent's node (`nodeName`) are its
//! endpoints and the others are remote pods; every label set takes the number
//! the lab's nodes agree on ([`SharedIdentities`]), so a policy written for pods
//! on one node holds for clients on another. The lab's nodes are the peers the
//! agent's `peer.Peer` announces.

use std::time::Duration;

use tokio::sync::mpsc;

use super::kubernetes::nodes::ClusterNode;
use super::{EndpointSpec, Listing, SourceKind, Workload};
use crate::lab::identities::{SharedIdentities, SharedIdentityError};
use crate::lab::{LabState, PodState};

/// What the labs that are up (all of them if `names` is empty) hold for the
/// agent of node `node`: its listing and the lab's nodes.
pub fn list(
    names: &[String],
    node: &str,
) -> Result<(Listing, Vec<ClusterNode>), SharedIdentityError> {
    let mut listing = Listing::default();
    let mut nodes = Vec::new();
    for lab in LabState::all()
        .into_iter()
        .filter(|lab| lab.ready && (names.is_empty() || names.contains(&lab.name)))
    {
        let shared = !lab.nodes.is_empty();
        let mut of_lab = Listing::default();
        for pod in lab.pods {
            let local = !shared || pod.node.as_deref() == Some(node);
            let spec = spec(&lab.namespace, pod, local);
            if local {
                of_lab.local.push(spec);
            } else {
                of_lab.remote.push(spec);
            }
        }
        if shared {
            of_lab.assigned = SharedIdentities::of_lab(&lab.name).ensure(&of_lab.label_sets())?;
        }
        nodes.extend(lab.nodes.into_iter().map(|n| ClusterNode {
            name: n.name,
            address: n.observer,
        }));
        listing.local.extend(of_lab.local);
        listing.remote.extend(of_lab.remote);
        listing.assigned.extend(of_lab.assigned);
    }
    Ok((listing, nodes))
}

fn spec(namespace: &str, pod: PodState, local: bool) -> EndpointSpec {
    EndpointSpec {
        source: SourceKind::Lab,
        namespace: namespace.to_string(),
        pod_name: pod.pod_name,
        labels: pod.labels,
        ipv4: Some(pod.ipv4),
        ipv6: pod.ipv6,
        interface: if local { pod.host_if } else { String::new() },
        ifindex: if local { pod.ifindex } else { 0 },
        workload: Some(Workload {
            name: pod.name,
            kind: "Deployment".into(),
        }),
    }
}

/// Sends the full listing whenever it changes (and once at start), polling
/// every `interval`, until the receiver goes away; `on_nodes` hears the lab's
/// nodes after every poll.
pub async fn watch(
    interval: Duration,
    names: Vec<String>,
    node: String,
    on_nodes: impl Fn(Vec<ClusterNode>) + Send + 'static,
    tx: mpsc::Sender<Listing>,
) {
    let mut last: Option<Listing> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (names, node) = (names.clone(), node.clone());
        let now = match tokio::task::spawn_blocking(move || list(&names, &node)).await {
            Ok(Ok((now, nodes))) => {
                on_nodes(nodes);
                now
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "lab identities; listing again at the next poll");
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, "lab endpoint listing failed");
                continue;
            }
        };
        if last.as_ref() != Some(&now) {
            if tx.send(now.clone()).await.is_err() {
                return;
            }
            last = Some(now);
        }
    }
}
