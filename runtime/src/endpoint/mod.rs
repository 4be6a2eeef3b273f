//! Endpoints: the pods Loupe enforces and observes, from any source.
//!
//! Sources (the lab today, Kubernetes pod watches later) translate what they see into
//! [`EndpointSpec`]s and hand them to the one [`EndpointRegistry`] through the same
//! calls; nothing downstream knows where an endpoint came from.

pub mod kubernetes;
pub mod lab_source;
pub mod registry;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::identity::LabelSet;
pub use registry::{EndpointRegistry, RegistryError};

/// Which source reported an endpoint; a source's snapshot only replaces its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// `loupe lab`.
    Lab,
    /// The Kubernetes API (pods on this node).
    Kubernetes,
}

/// The controller that owns a pod (`Deployment api-service`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Workload name.
    pub name: String,
    /// Workload kind (`Deployment`, `StatefulSet`, …).
    pub kind: String,
}

/// What a source knows about an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// Reporting source.
    pub source: SourceKind,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Host-side interface name.
    pub interface: String,
    /// Host-side interface index.
    pub ifindex: u32,
    /// Owning workload.
    pub workload: Option<Workload>,
}

impl EndpointSpec {
    /// `namespace/pod`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod_name)
    }

    /// The endpoint's addresses.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }

    /// Labels in Cilium's `k8s:key=value` form, plus the namespace label Cilium adds.
    pub fn identity_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_LABEL.to_string(), self.namespace.clone());
        labels
    }
}

/// One source's full listing: this node's pods, and the pods on other nodes when
/// the source sees the whole cluster (their addresses get their identities in
/// the ipcache, and policies name them as peers; their own nodes enforce them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Pods on this node.
    pub local: Vec<EndpointSpec>,
    /// Pods on other nodes (`interface` empty, `ifindex` 0).
    pub remote: Vec<EndpointSpec>,
    /// The numbers the cluster gave the listing's label sets (empty: this
    /// node allocates them).
    pub assigned: Vec<(LabelSet, u32)>,
}

impl Listing {
    /// A listing of this node's pods only.
    pub fn local(local: Vec<EndpointSpec>) -> Self {
        Self {
            local,
            ..Self::default()
        }
    }

    /// The distinct label sets of the listing's pods, sorted.
    pub fn label_sets(&self) -> Vec<LabelSet> {
        let mut sets: Vec<LabelSet> = self
            .all()
            .map(|s| LabelSet::from_k8s(&s.identity_labels()))
            .collect();
        sets.sort();
        sets.dedup();
        sets
    }

    /// Every pod of the listing, local first.
    pub fn all(&self) -> impl Iterator<Item = &EndpointSpec> {
        self.local.iter().chain(&self.remote)
    }
}

/// The label Cilium adds to every pod's identity: its namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// An endpoint in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Endpoint number on this node (1..=65535), stable while the endpoint lives.
    pub id: u16,
    /// What the source reported.
    pub spec: EndpointSpec,
}
