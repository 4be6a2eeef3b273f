//! The `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy` documents Loupe
//! accepts, as serde types. Unknown fields are refused, so a typo is an error and
//! not a silently ignored rule.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::selector::LabelSelector;

/// One policy document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: Metadata,
    /// One rule.
    #[serde(default)]
    pub spec: Option<Rule>,
    /// Several rules.
    #[serde(default)]
    pub specs: Option<Vec<Rule>>,
    /// Written by Kubernetes; ignored.
    #[serde(default)]
    pub status: Option<serde_norway::Value>,
}

/// Object metadata (the subset that means something to a policy).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Policy name.
    pub name: String,
    /// Namespace (namespaced policies; defaults to `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (kept, not interpreted).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Set by Kubernetes; accepted so exported objects apply as they are.
    #[serde(default)]
    pub uid: Option<String>,
    /// Set by Kubernetes.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// Set by Kubernetes.
    #[serde(default)]
    pub generation: Option<u64>,
    /// Set by Kubernetes.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

/// A policy rule (`spec`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// The endpoints this rule applies to.
    #[serde(default)]
    pub endpoint_selector: Option<LabelSelector>,
    /// Host policies; not supported by Loupe (refused at validation).
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    /// Allowed ingress.
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    /// Denied ingress (wins over allows).
    #[serde(default)]
    pub ingress_deny: Option<Vec<IngressRule>>,
    /// Allowed egress.
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    /// Denied egress.
    #[serde(default)]
    pub egress_deny: Option<Vec<EgressRule>>,
    /// Whether selecting an endpoint turns on default-deny (Cilium ≥ 1.15).
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Rule labels (Cilium's policy labels).
    #[serde(default)]
    pub labels: Option<Vec<serde_norway::Value>>,
    /// What flows this rule decides carry in `policy_log` (Cilium ≥ 1.18).
    #[serde(default)]
    pub log: Option<LogConfig>,
}

/// `log`: a free-form value for flows the rule decides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Up to 32 printable characters.
    #[serde(default)]
    pub value: Option<String>,
}

/// `enableDefaultDeny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// Ingress default-deny when selected (default true).
    #[serde(default)]
    pub ingress: Option<bool>,
    /// Egress default-deny when selected (default true).
    #[serde(default)]
    pub egress: Option<bool>,
}

/// An ingress (or ingress-deny) rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// Source endpoints.
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Source entities (`world`, `host`, `cluster`, `all`, …).
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    /// Source prefixes.
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    /// Source prefixes with exceptions.
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Destination ports on the selected endpoint.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// An egress (or egress-deny) rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination endpoints.
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Destination entities.
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    /// Destination prefixes.
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    /// Destination prefixes with exceptions.
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Destination ports.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
    /// DNS names; not supported by Loupe (refused at validation).
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<serde_norway::Value>>,
    /// Kubernetes services; not supported by Loupe (refused at validation).
    #[serde(default)]
    pub to_services: Option<Vec<serde_norway::Value>>,
}

/// `fromCIDRSet` / `toCIDRSet` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    /// The prefix.
    pub cidr: String,
    /// Prefixes inside `cidr` that are not selected.
    #[serde(default)]
    pub except: Vec<String>,
}

/// `toPorts` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    /// Ports (with protocol).
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    /// L7 rules on these ports.
    #[serde(default)]
    pub rules: Option<L7Rules>,
}

/// A port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    /// Port number as a string (`"80"`); `"0"` or absent means any port.
    #[serde(default)]
    pub port: Option<PortValue>,
    /// Last port of a range starting at `port`.
    #[serde(default)]
    pub end_port: Option<i64>,
    /// `TCP`, `UDP`, `SCTP` or `ANY` (default).
    #[serde(default)]
    pub protocol: Option<String>,
}

/// Ports are strings in Cilium's schema, but YAML users often write numbers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// `port: 80`.
    Number(i64),
    /// `port: "80"` (or a named port, which Loupe refuses).
    Text(String),
}

/// `icmps` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    /// ICMP fields.
    pub fields: Vec<IcmpField>,
}

/// One ICMP type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    /// `IPv4` (default) or `IPv6`.
    #[serde(default)]
    pub family: Option<String>,
    /// Type number or name (`EchoRequest`).
    #[serde(rename = "type")]
    pub icmp_type: PortValue,
}

/// L7 rules of a port. Only one kind per port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    /// HTTP rules.
    #[serde(default)]
    pub http: Option<Vec<HttpRule>>,
    /// Kafka rules.
    #[serde(default)]
    pub kafka: Option<Vec<KafkaRule>>,
    /// DNS rules (not supported yet: refused at validation).
    #[serde(default)]
    pub dns: Option<Vec<serde_norway::Value>>,
    /// The plugin that parses this port, for the generic form.
    #[serde(default, rename = "l7proto")]
    pub l7proto: Option<String>,
    /// Generic rules: field name -> pattern, matched against the plugin's schema.
    #[serde(default)]
    pub l7: Option<Vec<BTreeMap<String, String>>>,
}

/// An HTTP rule (all set fields must match; regexes are anchored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    /// Method regex.
    #[serde(default)]
    pub method: Option<String>,
    /// Path regex.
    #[serde(default)]
    pub path: Option<String>,
    /// Host regex.
    #[serde(default)]
    pub host: Option<String>,
    /// Required headers (`Name: value` or `Name`).
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

/// A Kafka rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaRule {
    /// `produce` or `consume`.
    #[serde(default)]
    pub role: Option<String>,
    /// API key name (`produce`, `fetch`, …).
    #[serde(default)]
    pub api_key: Option<String>,
    /// API version.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Client id.
    #[serde(default, rename = "clientID")]
    pub client_id: Option<String>,
    /// Topic.
    #[serde(default)]
    pub topic: Option<String>,
}
