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
