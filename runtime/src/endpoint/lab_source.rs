//! The lab as an endpoint source: what `loupe lab up` recorded, re-read as a
//! Kubernetes reflector would re-list pods.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{EndpointSpec, SourceKind, Workload};
use crate::lab::LabState;

/// The endpoints of the labs that are up (all of them if `names` is empty).
pub fn list(names: &[String]) -> Vec<EndpointSpec> {
    LabState::all()
        .into_iter()
        .filter(|lab| lab.ready && (names.is_empty() || names.contains(&lab.name)))
        .flat_map(|lab| {
            let namespace = lab.namespace.clone();
            lab.pods.into_iter().map(move |pod| EndpointSpec {
                source: SourceKind::Lab,
                namespace: namespace.clone(),
                pod_name: pod.pod_name,
                labels: pod.labels,
                ipv4: Some(pod.ipv4),
                ipv6: pod.ipv6,
                interface: pod.host_if,
                ifindex: pod.ifindex,
                workload: Some(Workload {
                    name: pod.name,
                    kind: "Deployment".into(),
                }),
            })
        })
        .collect()
}

/// Sends the full list whenever it changes (and once at start), polling every
/// `interval`, until the receiver goes away.
pub async fn watch(interval: Duration, names: Vec<String>, tx: mpsc::Sender<Vec<EndpointSpec>>) {
    let mut last: Option<Vec<EndpointSpec>> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let names = names.clone();
        let now = match tokio::task::spawn_blocking(move || list(&names)).await {
            Ok(now) => now,
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
