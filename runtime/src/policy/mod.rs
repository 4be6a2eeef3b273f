//! Network policy: `CiliumNetworkPolicy` documents, validated in full
//! ([`parse`]), compiled against the endpoints and identities of this node into
//! datapath entries ([`compile`]), and kept in a repository that survives restarts
//! ([`repository`]).

pub mod attribution;
pub mod cnp;
pub mod compile;
pub mod l7;
pub mod parse;
pub mod repository;
pub mod selector;

use std::collections::BTreeMap;

use ipnet::IpNet;

pub use compile::{Compiled, EndpointView};
pub use parse::{PolicyError, parse_path, parse_policies};
pub use selector::LabelSelector;

use crate::config::PolicyEnforcementMode;
use crate::identity::IdentityError;

/// Compiles `policies` for `endpoints`: L3/L4 entries and the ports with L7 rules
/// ([`compile::compile_rules`]), then which L7 entries must pass the proxy
/// ([`l7::enforcement_flags`]). `cidr_identity` allocates the identity of a CIDR
/// prefix.
pub fn compile(
    policies: &[Policy],
    endpoints: &[EndpointView],
    mode: PolicyEnforcementMode,
    allow_localhost: bool,
    cidr_identity: &mut dyn FnMut(&IpNet) -> Result<u32, IdentityError>,
) -> Result<Compiled, IdentityError> {
    let mut out =
        compile::compile_rules(policies, endpoints, mode, allow_localhost, cidr_identity)?;
    l7::enforcement_flags(&mut out);
    Ok(out)
}

/// A validated policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; `None` for a clusterwide policy.
    pub namespace: Option<String>,
    /// Where it came from (file name).
    pub source: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The rules (`spec` or `specs`).
    pub rules: Vec<PolicyRule>,
    /// The document as YAML, for persisting and `policy get`.
    pub document: String,
}

impl Policy {
    /// `namespace/name`, or `name` for a clusterwide policy.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// Which endpoints it applies to (within the policy's namespace).
    pub endpoint_selector: LabelSelector,
    /// Allowed ingress.
    pub ingress: Vec<PeerRule>,
    /// Denied ingress.
    pub ingress_deny: Vec<PeerRule>,
    /// Allowed egress.
    pub egress: Vec<PeerRule>,
    /// Denied egress.
    pub egress_deny: Vec<PeerRule>,
    /// Selecting an endpoint for ingress turns on its ingress default-deny.
    pub default_deny_ingress: bool,
    /// Same for egress.
    pub default_deny_egress: bool,
    /// `log.value`: what flows this rule decides carry in `policy_log`.
    pub log: Option<String>,
}

/// Peers and ports of one ingress / egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    /// `None`: no peer field was set (any peer when ports are given).
    pub peers: Option<Vec<Peer>>,
    /// `toPorts`: port ranges with their optional L7 rules.
    pub ports: Vec<(Vec<PortRange>, Option<L7Spec>)>,
    /// `icmps`: (IPv6?, type).
    pub icmps: Vec<(bool, u8)>,
}

/// A peer selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Endpoints by labels.
    Endpoints(LabelSelector),
    /// A reserved entity.
    Entity(Entity),
    /// A prefix, minus exceptions.
    Cidr {
        /// The prefix.
        net: IpNet,
        /// Sub-prefixes not selected.
        except: Vec<IpNet>,
    },
}

/// Cilium's entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entity {
    /// Everything.
    All,
    /// Outside the cluster.
    World,
    /// Inside the cluster.
    Cluster,
    /// The local host.
    Host,
    /// Other nodes.
    RemoteNode,
    /// Health endpoints.
    Health,
    /// Endpoints being initialised.
    Init,
    /// Unmanaged endpoints.
    Unmanaged,
    /// The API server.
    KubeApiserver,
    /// The ingress proxy.
    Ingress,
}

impl Entity {
    /// Parses Cilium's entity names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all" => Self::All,
            "world" => Self::World,
            "cluster" => Self::Cluster,
            "host" => Self::Host,
            "remote-node" => Self::RemoteNode,
            "health" => Self::Health,
            "init" => Self::Init,
            "unmanaged" => Self::Unmanaged,
            "kube-apiserver" => Self::KubeApiserver,
            "ingress" => Self::Ingress,
            _ => return None,
        })
    }
}

/// A protocol in `toPorts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// TCP, UDP and SCTP.
    Any,
}

impl Protocol {
    /// IP protocol numbers this stands for.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Self::Tcp => &[6],
            Self::Udp => &[17],
            Self::Sctp => &[132],
            Self::Any => &[6, 17, 132],
        }
    }
}

/// A port range; `first == 0` means any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Protocol.
    pub protocol: Protocol,
    /// First port (0 = any).
    pub first: u16,
    /// Last port.
    pub last: u16,
}

/// L7 rules on a port, kept for the L7 engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L7Spec {
    /// `rules.http`.
    Http(Vec<cnp::HttpRule>),
    /// `rules.kafka`.
    Kafka(Vec<cnp::KafkaRule>),
    /// `rules.l7proto` + `rules.l7`.
    Generic {
        /// Plugin name.
        protocol: String,
        /// field -> pattern maps.
        rules: Vec<BTreeMap<String, String>>,
    },
}

impl L7Spec {
    /// The protocol whose parser the rules need (`http`, `kafka`, or the plugin
    /// `l7proto` names).
    pub fn protocol(&self) -> &str {
        match self {
            Self::Http(_) => "http",
            Self::Kafka(_) => "kafka",
            Self::Generic { protocol, .. } => protocol,
        }
    }
}

impl Policy {
    /// The protocols its L7 rules need parsers for.
    pub fn l7_protocols(&self) -> std::collections::BTreeSet<&str> {
        self.rules
            .iter()
            .flat_map(|r| {
                r.ingress
                    .iter()
                    .chain(&r.ingress_deny)
                    .chain(&r.egress)
                    .chain(&r.egress_deny)
            })
            .flat_map(|p| p.ports.iter().filter_map(|(_, l7)| l7.as_ref()))
            .map(L7Spec::protocol)
            .collect()
    }
}

/// Direction of a rule relative to the selected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Into the endpoint.
    Ingress,
    /// Out of the endpoint.
    Egress,
}

impl Direction {
    /// The datapath's direction number.
    pub fn datapath(self) -> u8 {
        match self {
            Self::Ingress => loupe_common::direction::INGRESS,
            Self::Egress => loupe_common::direction::EGRESS,
        }
    }
}

#[cfg(test)]
mod tests;
