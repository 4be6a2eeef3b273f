//! The lab file: which pods to build, with which labels, addresses and servers.
//!
//! Parsed with unknown keys refused and then validated as a whole before anything
//! is created, so a bad file never leaves half a lab behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::labels::{self, is_dns_label};

/// A lab: one Kubernetes-like namespace of pods on this machine, on this host
/// alone or on several nodes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabFile {
    /// Name of the lab; prefixes every namespace and state directory it creates.
    pub name: String,
    /// The Kubernetes namespace the pods belong to (as in `demo-app/frontend-…`).
    pub namespace: String,
    /// IPv4 range of the pods. Without nodes its first address is the host's
    /// side (the gateway); with nodes it is the cluster's pod range, holding
    /// every node's `podCidr`.
    pub cidr: Ipv4Net,
    /// Optional IPv6 range; when set every pod also gets an IPv6 address
    /// (single-node labs only).
    #[serde(default)]
    pub cidr6: Option<Ipv6Net>,
    /// Nodes: each a network namespace with its own pods and its own agent,
    /// routed to the others as a cluster's nodes are. Empty: the pods hang off
    /// this host, whose agent you start yourself.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// The nodes' own addresses (the network between them); required with
    /// `nodes`. Its first address is the host's, which routes between nodes.
    #[serde(default)]
    pub node_cidr: Option<Ipv4Net>,
    /// The agents `loupe lab up` starts on the nodes.
    #[serde(default)]
    pub agent: AgentSpec,
    /// The pods.
    pub pods: Vec<PodSpec>,
}

/// One node of a multi-node lab.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// Node name (the agent's `nodeName`, the relay's node names).
    pub name: String,
    /// The node's pod range, inside `cidr`; its first address is the node's
    /// own (the gateway of its pods).
    pub pod_cidr: Ipv4Net,
    /// The node's address in `nodeCidr`; allocated in order when absent.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
}

/// How the nodes' agents run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentSpec {
    /// An agent configuration file (relative to the lab file) every node's
    /// agent starts from; `lab up` sets the node's own keys over it.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

/// One pod: a network namespace with a veth into the host and one server process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// Deployment name; also the name other pods resolve it by.
    pub name: String,
    /// Kubernetes labels of the pod.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// IPv4 address inside the lab CIDR; allocated in order when absent.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// IPv6 address inside `cidr6`; derived from the IPv4 host part when absent.
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
    /// The server to run, as argv. `{ip}`, `{ip6}`, `{state}` (this pod's state
    /// directory) and `{lab}` (the lab file's directory) are substituted.
    pub command: Vec<String>,
    /// Readiness: the server accepts TCP connections on this port.
    #[serde(default)]
    pub ready_port: Option<u16>,
    /// The node the pod runs on (required when the lab has nodes).
    #[serde(default)]
    pub node: Option<String>,
}

/// A lab file that failed to load, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum LabConfigError {
    /// The file could not be read.
    #[error("reading lab file {path}: {source}")]
    Read {
        /// The lab file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema.
    #[error("lab file {path}: {field}: {message}")]
    Parse {
        /// The lab file.
        path: PathBuf,
        /// Path of the offending field, e.g. `pods[1].labels`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The values are inconsistent.
    #[error("lab file {path}: {field}: {message}")]
    Invalid {
        /// The lab file.
        path: PathBuf,
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A validated lab: every pod with its final addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    /// Lab name.
    pub name: String,
    /// Kubernetes namespace of the pods.
    pub namespace: String,
    /// IPv4 range.
    pub cidr: Ipv4Net,
    /// IPv6 range, if any.
    pub cidr6: Option<Ipv6Net>,
    /// The host's address in the lab (first address of `cidr`).
    pub gateway: Ipv4Addr,
    /// The host's IPv6 address in the lab.
    pub gateway6: Option<Ipv6Addr>,
    /// Directory of the lab file (for `{lab}`).
    pub dir: PathBuf,
    /// The nodes' range and the host's address in it (with nodes).
    pub node_net: Option<(Ipv4Net, Ipv4Addr)>,
    /// The nodes, in file order (empty: a single-node lab on this host).
    pub nodes: Vec<Node>,
    /// The agents' base configuration file (absolute).
    pub agent_config: Option<PathBuf>,
    /// The pods, in file order.
    pub pods: Vec<Pod>,
}

/// A validated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// The node's pod range.
    pub pod_cidr: Ipv4Net,
    /// The node's own address in its pod range (its pods' gateway).
    pub gateway: Ipv4Addr,
    /// The node's address between nodes.
    pub address: Ipv4Addr,
}

/// A validated pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Deployment name.
    pub name: String,
    /// Pod name, `<deployment>-<stable suffix>`, as Kubernetes names replicas.
    pub pod_name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address, when the lab has `cidr6`.
    pub ipv6: Option<Ipv6Addr>,
    /// argv before substitution.
    pub command: Vec<String>,
    /// Readiness port.
    pub ready_port: Option<u16>,
    /// The node it runs on (`None` in a single-node lab).
    pub node: Option<String>,
}

impl LabFile {
    /// Reads and validates a lab file.
    pub fn load(path: &Path) -> Result<Lab, LabConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = Self::parse(path, &text)?;
        let dir = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let lab = file.validate(path, dir, &|program| program_exists(program))?;
        if let Some(base) = &lab.agent_config {
            read_agent_base(base).map_err(|message| LabConfigError::Invalid {
                path: path.to_path_buf(),
                field: "agent.config".into(),
                message,
            })?;
        }
        Ok(lab)
    }

    /// Parses YAML text, reporting the path of a field that does not fit.
    pub fn parse(path: &Path, text: &str) -> Result<Self, LabConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let field = err.path().to_string();
            LabConfigError::Parse {
                path: path.to_path_buf(),
                field: if field == "." {
                    "(document)".into()
                } else {
                    field
                },
                message: err.into_inner().to_string(),
            }
        })
    }

    /// Checks everything that can be checked before a single namespace is made.
    pub fn validate(
        self,
        path: &Path,
        dir: PathBuf,
        program_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Lab, LabConfigError> {
        let invalid = |field: String, message: String| LabConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if !is_dns_label(&self.name) || self.name.len() > 20 {
            return Err(invalid(
                "name".into(),
                format!(
                    "{:?} must be a DNS label of at most 20 characters",
                    self.name
                ),
            ));
        }
        if !is_dns_label(&self.namespace) {
            return Err(invalid(
                "namespace".into(),
                format!("{:?} is not a valid namespace name", self.namespace),
            ));
        }
        if self.cidr.prefix_len() > 30 {
            return Err(invalid(
                "cidr".into(),
                format!("{} leaves no room for pods (need /30 or larger)", self.cidr),
            ));
        }
        let cidr = self.cidr.trunc();
        let gateway = cidr
            .hosts()
            .next()
            .ok_or_else(|| invalid("cidr".into(), format!("{cidr} has no host addresses")))?;
        let cidr6 = self.cidr6.map(|c| c.trunc());
        if let Some(c6) = cidr6.filter(|c| c.prefix_len() > 120) {
            return Err(invalid(
                "cidr6".into(),
                format!("{c6} is too small (need /120 or larger)"),
            ));
        }
        let gateway6 = cidr6.map(|c| offset6(c, 1));
        if self.pods.is_empty() {
            return Err(invalid(
                "pods".into(),
                "a lab needs at least one pod".into(),
            ));
        }

        let (nodes, node_net) = self.validate_nodes(cidr, &invalid)?;
        let agent_config = match self.agent.config {
            Some(_) if nodes.is_empty() => {
                return Err(invalid(
                    "agent.config".into(),
                    "only a lab with nodes starts agents".into(),
                ));
            }
            Some(file) => Some(dir.join(file)),
            None => None,
        };
        let pool_of =
            |i: usize, node: &Option<String>| -> Result<(Ipv4Net, Ipv4Addr), LabConfigError> {
                match (node, nodes.is_empty()) {
                    (None, true) => Ok((cidr, gateway)),
                    (Some(_), true) => Err(invalid(
                        format!("pods[{i}].node"),
                        "set, but the lab has no nodes".into(),
                    )),
                    (None, false) => Err(invalid(
                        format!("pods[{i}].node"),
                        "required: the lab has nodes".into(),
                    )),
                    (Some(name), false) => nodes
                        .iter()
                        .find(|n| n.name == *name)
                        .map(|n| (n.pod_cidr, n.gateway))
                        .ok_or_else(|| {
                            invalid(format!("pods[{i}].node"), format!("no node named {name:?}"))
                        }),
                }
            };

        let mut names = BTreeSet::new();
        let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
        if nodes.is_empty() {
            taken.insert(IpAddr::V4(gateway));
        }
        taken.extend(nodes.iter().map(|n| IpAddr::V4(n.gateway)));
        taken.extend(gateway6.map(IpAddr::V6));
        // Explicit addresses first, so allocation never hands out one a later pod names.
        for (i, pod) in self.pods.iter().enumerate() {
            let (pool, pool_gateway) = pool_of(i, &pod.node)?;
            if let Some(addr) = pod.address {
                let field = format!("pods[{i}].address");
                let range = if nodes.is_empty() {
                    format!("cidr {pool}")
                } else {
                    format!("its node's podCidr {pool}")
                };
                if !pool.contains(&addr) || addr == pool.network() || addr == pool.broadcast() {
                    return Err(invalid(
                        field,
                        format!("{addr} is outside the usable range of {range}"),
                    ));
                }
                if addr == pool_gateway {
                    return Err(invalid(
                        field,
                        format!("{addr} is the gateway address of {range}"),
                    ));
                }
                if !taken.insert(IpAddr::V4(addr)) {
                    return Err(invalid(field, format!("{addr} is used by another pod")));
                }
            }
            if let Some(addr6) = pod.address6 {
                let field = format!("pods[{i}].address6");
                let Some(c6) = cidr6 else {
                    return Err(invalid(field, "set, but the lab has no cidr6".into()));
                };
                if !c6.contains(&addr6) || Some(addr6) == gateway6 || addr6 == c6.network() {
                    return Err(invalid(
                        field,
                        format!("{addr6} is outside the usable range of cidr6 {c6}"),
                    ));
                }
                if !taken.insert(IpAddr::V6(addr6)) {
                    return Err(invalid(field, format!("{addr6} is used by another pod")));
                }
            }
        }
        let mut pods = Vec::with_capacity(self.pods.len());
        for (i, spec) in self.pods.into_iter().enumerate() {
            if !is_dns_label(&spec.name) || spec.name.len() > 40 {
                return Err(invalid(
                    format!("pods[{i}].name"),
                    format!(
                        "{:?} must be a DNS label of at most 40 characters",
                        spec.name
                    ),
                ));
            }
            if !names.insert(spec.name.clone()) {
                return Err(invalid(
                    format!("pods[{i}].name"),
                    format!("duplicate pod name {:?}", spec.name),
                ));
            }
            for (key, value) in &spec.labels {
                labels::validate_label(key, value)
                    .map_err(|message| invalid(format!("pods[{i}].labels.{key}"), message))?;
            }
            let Some(program) = spec.command.first() else {
                return Err(invalid(
                    format!("pods[{i}].command"),
                    "is empty: every pod runs a server".into(),
                ));
            };
            if !program_exists(program) {
                return Err(invalid(
                    format!("pods[{i}].command[0]"),
                    format!("program {program:?} not found (is scripts/bootstrap done?)"),
                ));
            }
            let (pool, _) = pool_of(i, &spec.node)?;
            let ipv4 = match spec.address {
                Some(a) => a,
                None => pool
                    .hosts()
                    .find(|a| !taken.contains(&IpAddr::V4(*a)))
                    .ok_or_else(|| {
                        invalid(format!("pods[{i}].address"), format!("{pool} is full"))
                    })?,
            };
            if nodes.iter().any(|n| n.name == spec.name) {
                return Err(invalid(
                    format!("pods[{i}].name"),
                    format!(
                        "{:?} is also a node's name (their network namespaces would clash)",
                        spec.name
                    ),
                ));
            }
            taken.insert(IpAddr::V4(ipv4));
            let ipv6 = match (spec.address6, cidr6) {
                (Some(a), _) => Some(a),
                (None, Some(c6)) => {
                    let host = u32::from(ipv4) & !u32::from(cidr.netmask());
                    let addr = offset6(c6, u128::from(host));
                    let fits = u128::from(host)
                        .checked_shr(u32::from(128 - c6.prefix_len()))
                        .unwrap_or(0)
                        == 0;
                    if !fits {
                        return Err(invalid(
                            format!("pods[{i}].address6"),
                            format!(
                                "the IPv4 host part {host} does not fit in cidr6 {c6}; \
                                 set address6 or widen cidr6"
                            ),
                        ));
                    }
                    if !taken.insert(IpAddr::V6(addr)) {
                        return Err(invalid(
                            format!("pods[{i}].address6"),
                            format!("derived {addr} is used by another pod; set address6"),
                        ));
                    }
                    Some(addr)
                }
                (None, None) => None,
            };
            pods.push(Pod {
                pod_name: pod_name(&self.namespace, &spec.name),
                name: spec.name,
                labels: spec.labels,
                ipv4,
                ipv6,
                command: spec.command,
                ready_port: spec.ready_port,
                node: spec.node,
            });
        }
        Ok(Lab {
            name: self.name,
            namespace: self.namespace,
            cidr,
            cidr6,
            gateway,
            gateway6,
            dir,
            node_net,
            nodes,
            agent_config,
            pods,
        })
    }

    /// The nodes with their addresses, and the nodes' range with the host's
    /// address in it.
    #[allow(clippy::type_complexity)]
    fn validate_nodes(
        &self,
        cidr: Ipv4Net,
        invalid: &dyn Fn(String, String) -> LabConfigError,
    ) -> Result<(Vec<Node>, Option<(Ipv4Net, Ipv4Addr)>), LabConfigError> {
        if self.nodes.is_empty() {
            if let Some(net) = self.node_cidr {
                return Err(invalid(
                    "nodeCidr".into(),
                    format!("{net} is set, but the lab has no nodes"),
                ));
            }
            return Ok((Vec::new(), None));
        }
        if self.cidr6.is_some() {
            return Err(invalid(
                "cidr6".into(),
                "a lab with nodes is IPv4 only for now".into(),
            ));
        }
        let Some(node_cidr) = self.node_cidr.map(|n| n.trunc()) else {
            return Err(invalid(
                "nodeCidr".into(),
                "required with nodes: the nodes' own addresses".into(),
            ));
        };
        if node_cidr.contains(&cidr) || cidr.contains(&node_cidr) {
            return Err(invalid(
                "nodeCidr".into(),
                format!("{node_cidr} overlaps the pods' cidr {cidr}"),
            ));
        }
        let mut hosts = node_cidr.hosts();
        let fabric = hosts
            .next()
            .ok_or_else(|| invalid("nodeCidr".into(), format!("{node_cidr} has no hosts")))?;
        let explicit: BTreeSet<Ipv4Addr> = self.nodes.iter().filter_map(|n| n.address).collect();
        let mut out: Vec<Node> = Vec::with_capacity(self.nodes.len());
        for (i, spec) in self.nodes.iter().enumerate() {
            let field = |key: &str| format!("nodes[{i}].{key}");
            if !is_dns_label(&spec.name) || spec.name.len() > 20 {
                return Err(invalid(
                    field("name"),
                    format!(
                        "{:?} must be a DNS label of at most 20 characters",
                        spec.name
                    ),
                ));
            }
            if out.iter().any(|n| n.name == spec.name) {
                return Err(invalid(
                    field("name"),
                    format!("duplicate node name {:?}", spec.name),
                ));
            }
            let pod_cidr = spec.pod_cidr.trunc();
            if !cidr.contains(&pod_cidr) {
                return Err(invalid(
                    field("podCidr"),
                    format!("{pod_cidr} is not inside the lab's cidr {cidr}"),
                ));
            }
            if pod_cidr.prefix_len() > 30 {
                return Err(invalid(
                    field("podCidr"),
                    format!("{pod_cidr} leaves no room for pods (need /30 or larger)"),
                ));
            }
            if let Some(other) = out
                .iter()
                .find(|n| n.pod_cidr.contains(&pod_cidr) || pod_cidr.contains(&n.pod_cidr))
            {
                return Err(invalid(
                    field("podCidr"),
                    format!(
                        "{pod_cidr} overlaps node {}'s {}",
                        other.name, other.pod_cidr
                    ),
                ));
            }
            let address = match spec.address {
                Some(a) => {
                    if !node_cidr.contains(&a) || a == fabric || a == node_cidr.broadcast() {
                        return Err(invalid(
                            field("address"),
                            format!(
                                "{a} is outside the usable range of nodeCidr {node_cidr} \
                                 (its first address is the host's)"
                            ),
                        ));
                    }
                    if out.iter().any(|n| n.address == a) {
                        return Err(invalid(field("address"), format!("{a} is another node's")));
                    }
                    a
                }
                None => hosts
                    .by_ref()
                    .find(|a| !explicit.contains(a) && !out.iter().any(|n| n.address == *a))
                    .ok_or_else(|| {
                        invalid(field("address"), format!("nodeCidr {node_cidr} is full"))
                    })?,
            };
            let gateway = pod_cidr
                .hosts()
                .next()
                .ok_or_else(|| invalid(field("podCidr"), format!("{pod_cidr} has no hosts")))?;
            out.push(Node {
                name: spec.name.clone(),
                pod_cidr,
                gateway,
                address,
            });
        }
        Ok((out, Some((node_cidr, fabric))))
    }
}

impl Lab {
    /// The node a pod runs on.
    pub fn node_of(&self, pod: &Pod) -> Option<&Node> {
        let name = pod.node.as_deref()?;
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every range of the lab, for routes and membership checks.
    pub fn nets(&self) -> Vec<IpNet> {
        let mut nets = vec![IpNet::V4(self.cidr)];
        nets.extend(self.cidr6.map(IpNet::V6));
        nets
    }
}

fn offset6(net: Ipv6Net, offset: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) | offset)
}

/// The nodes' base agent configuration: a YAML mapping (an empty file is an
/// empty one). The agent checks the keys when it starts.
pub fn read_agent_base(path: &Path) -> Result<serde_norway::Mapping, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match serde_norway::from_str::<serde_norway::Value>(&text) {
        Ok(serde_norway::Value::Mapping(map)) => Ok(map),
        Ok(serde_norway::Value::Null) => Ok(serde_norway::Mapping::new()),
        Ok(_) => Err(format!(
            "{}: an agent configuration is a mapping of keys",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A stable pod name for a deployment: `<name>-<5 chars>` from Kubernetes' safe
/// alphabet, derived from the namespace and name so it survives lab restarts.
pub fn pod_name(namespace: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    let suffix: String = digest
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{name}-{suffix}")
}

/// Whether `program` names an executable: a path, or a name on the pods' `PATH`.
pub fn program_exists(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::split_paths(&super::pod_path()).any(|dir| executable(&dir.join(program)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Lab, LabConfigError> {
        let path = Path::new("lab.yaml");
        LabFile::parse(path, text)?.validate(path, PathBuf::from("."), &|p| p != "missing")
    }

    const GOOD: &str = r#"
name: demo
namespace: demo-app
cidr: 10.200.0.0/24
cidr6: fd00:10:200::/64
pods:
  - name: frontend
    labels: {app: frontend}
    command: [nginx]
  - name: db
    labels: {app: db, tier: database}
    address: 10.200.0.9
    command: [redis-server]
    readyPort: 6379
"#;

    #[test]
    fn allocates_addresses_around_explicit_ones() {
        let lab = load(GOOD).unwrap();
        assert_eq!(lab.gateway, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(lab.pods[0].ipv4, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(lab.pods[1].ipv4, Ipv4Addr::new(10, 200, 0, 9));
        assert_eq!(lab.pods[1].ipv6, Some("fd00:10:200::9".parse().unwrap()));
        assert_eq!(lab.gateway6, Some("fd00:10:200::1".parse().unwrap()));
        assert!(lab.pods[0].pod_name.starts_with("frontend-"));
        assert_eq!(lab.pods[0].pod_name, pod_name("demo-app", "frontend"));
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn refuses_unknown_key_with_its_path() {
        let e = err(&GOOD.replace("readyPort", "readyPorts"));
        assert!(
            e.contains("pods[1]") && e.contains("unknown field `readyPorts`"),
            "{e}"
        );
    }

    #[test]
    fn refuses_duplicate_pod_name() {
        let e = err(&GOOD.replace("name: db", "name: frontend"));
        assert!(
            e.contains("pods[1].name: duplicate pod name \"frontend\""),
            "{e}"
        );
    }

    #[test]
    fn refuses_address_outside_cidr() {
        let e = err(&GOOD.replace("10.200.0.9", "10.9.0.5"));
        assert!(e.contains("pods[1].address: 10.9.0.5 is outside"), "{e}");
        let e = err(&GOOD.replace("10.200.0.9", "10.200.0.1"));
        assert!(e.contains("gateway"), "{e}");
        let e = err(&GOOD.replace("10.200.0.9", "10.200.0.255"));
        assert!(e.contains("outside the usable range"), "{e}");
    }

    #[test]
    fn refuses_ipv6_addresses_a_topology_cannot_have() {
        // A /16 of pods and a /120 for their IPv6 addresses: host part 0x105 does
        // not fit (it used to alias into the range).
        let e = err(&GOOD
            .replace("10.200.0.0/24", "10.200.0.0/16")
            .replace("10.200.0.9", "10.200.1.5")
            .replace("fd00:10:200::/64", "fd00::100/120"));
        assert!(
            e.contains(
                "pods[1].address6: the IPv4 host part 261 does not fit in cidr6 fd00::100/120"
            ),
            "{e}"
        );
        let lab = load(&GOOD.replace("10.200.0.0/24", "10.200.0.0/16")).unwrap();
        assert_eq!(lab.pods[1].ipv6, Some("fd00:10:200::9".parse().unwrap()));
    }

    #[test]
    fn refuses_missing_or_empty_command() {
        let e = err(&GOOD.replace("[redis-server]", "[missing]"));
        assert!(
            e.contains("pods[1].command[0]: program \"missing\" not found"),
            "{e}"
        );
        let e = err(&GOOD.replace("[redis-server]", "[]"));
        assert!(e.contains("pods[1].command: is empty"), "{e}");
        let e = err(&GOOD.replace("    command: [redis-server]\n", ""));
        assert!(
            e.contains("pods[1]") && e.contains("missing field `command`"),
            "{e}"
        );
    }

    #[test]
    fn refuses_bad_labels_and_names() {
        let e = err(&GOOD.replace("app: db,", "'bad key!': db,"));
        assert!(e.contains("pods[1].labels.bad key!"), "{e}");
        let e = err(&GOOD.replace("name: db", "name: Db_1"));
        assert!(e.contains("pods[1].name"), "{e}");
        let e = err(&GOOD.replace("cidr: 10.200.0.0/24", "cidr: 10.200.0.0/33"));
        assert!(e.contains("cidr"), "{e}");
    }

    const NODES: &str = r#"
name: cluster
namespace: demo-app
cidr: 10.201.0.0/16
nodeCidr: 10.202.0.0/24
nodes:
  - {name: node-a, podCidr: 10.201.1.0/24}
  - {name: node-b, podCidr: 10.201.2.0/24, address: 10.202.0.9}
  - {name: node-c, podCidr: 10.201.3.0/24}
pods:
  - {name: frontend, node: node-a, labels: {app: frontend}, command: [nginx]}
  - {name: db, node: node-b, labels: {app: db}, command: [redis-server]}
  - {name: api, node: node-b, address: 10.201.2.7, command: [nginx]}
"#;

    #[test]
    fn nodes_get_addresses_and_pods_their_nodes_ranges() {
        let lab = load(NODES).unwrap();
        let addrs: Vec<(String, Ipv4Addr, Ipv4Addr)> = lab
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.address, n.gateway))
            .collect();
        assert_eq!(
            addrs,
            vec![
                (
                    "node-a".into(),
                    "10.202.0.2".parse().unwrap(),
                    "10.201.1.1".parse().unwrap()
                ),
                (
                    "node-b".into(),
                    "10.202.0.9".parse().unwrap(),
                    "10.201.2.1".parse().unwrap()
                ),
                (
                    "node-c".into(),
                    "10.202.0.3".parse().unwrap(),
                    "10.201.3.1".parse().unwrap()
                ),
            ]
        );
        assert_eq!(lab.node_net.unwrap().1, Ipv4Addr::new(10, 202, 0, 1));
        let pods: Vec<Ipv4Addr> = lab.pods.iter().map(|p| p.ipv4).collect();
        assert_eq!(
            pods,
            [[10, 201, 1, 2], [10, 201, 2, 2], [10, 201, 2, 7]].map(Ipv4Addr::from)
        );
        assert_eq!(lab.node_of(&lab.pods[1]).unwrap().name, "node-b");
    }

    #[test]
    fn refuses_node_layouts_a_cluster_cannot_have() {
        let cases = [
            (
                NODES.replace("nodeCidr: 10.202.0.0/24\n", ""),
                "nodeCidr: required with nodes",
            ),
            (
                NODES.replace("node: node-a, ", ""),
                "pods[0].node: required: the lab has nodes",
            ),
            (
                NODES.replace("node: node-a", "node: node-x"),
                "pods[0].node: no node named \"node-x\"",
            ),
            (
                NODES.replace("10.201.3.0/24", "10.201.2.128/25"),
                "nodes[2].podCidr: 10.201.2.128/25 overlaps node node-b's 10.201.2.0/24",
            ),
            (
                NODES.replace("10.201.3.0/24", "10.9.3.0/24"),
                "nodes[2].podCidr: 10.9.3.0/24 is not inside the lab's cidr 10.201.0.0/16",
            ),
            (
                NODES.replace("10.201.2.7", "10.201.1.7"),
                "pods[2].address: 10.201.1.7 is outside the usable range of its node's podCidr 10.201.2.0/24",
            ),
            (
                NODES.replace("10.202.0.9", "10.202.0.1"),
                "nodes[1].address: 10.202.0.1 is outside the usable range",
            ),
            (
                NODES.replace("name: node-c", "name: node-a"),
                "nodes[2].name: duplicate node name",
            ),
            (
                NODES.replace("name: api", "name: node-c"),
                "pods[2].name: \"node-c\" is also a node's name",
            ),
            (
                NODES.replace("10.202.0.0/24", "10.201.200.0/24"),
                "nodeCidr: 10.201.200.0/24 overlaps the pods' cidr",
            ),
            (
                NODES.replace("nodeCidr:", "cidr6: fd00::/64\nnodeCidr:"),
                "cidr6: a lab with nodes is IPv4 only",
            ),
        ];
        for (text, expected) in cases {
            let e = err(&text);
            assert!(e.contains(expected), "expected {expected:?} in {e}");
        }
        let e = err(&GOOD.replace("    command: [nginx]", "    node: a\n    command: [nginx]"));
        assert!(
            e.contains("pods[0].node: set, but the lab has no nodes"),
            "{e}"
        );
    }

    #[test]
    fn an_agent_base_file_must_be_a_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert!(
            read_agent_base(&write("empty.yaml", "# nothing\n"))
                .unwrap()
                .is_empty()
        );
        let map = read_agent_base(&write("ok.yaml", "hubble:\n  enabled: true\n")).unwrap();
        assert_eq!(map.len(), 1);
        let e = read_agent_base(&write("list.yaml", "- a\n")).unwrap_err();
        assert!(
            e.contains("list.yaml: an agent configuration is a mapping"),
            "{e}"
        );
        let e = read_agent_base(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(e.contains("missing.yaml"), "{e}");
    }

    #[test]
    fn pod_names_are_stable_and_kubernetes_like() {
        let a = pod_name("demo-app", "api-service");
        assert_eq!(a, pod_name("demo-app", "api-service"));
        assert_ne!(a, pod_name("other", "api-service"));
        assert_eq!(a.len(), "api-service-".len() + 5);
        assert!(is_dns_label(&a));
    }
}
