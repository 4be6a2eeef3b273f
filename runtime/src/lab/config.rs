//! The lab file: which pods to build, with which labels, addresses and servers.
//!
//! Parsed with unknown keys refused and then validated as a whole before anything
//! is created, so a bad file never leaves half a lab behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::labels::{self, is_dns_label};

/// A lab: one Kubernetes-like namespace of pods on this machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabFile {
    /// Name of the lab; prefixes every namespace and state directory it creates.
    pub name: String,
    /// The Kubernetes namespace the pods belong to (as in `demo-app/frontend-…`).
    pub namespace: String,
    /// IPv4 range of the pods. Its first address is the host's side (the gateway).
    pub cidr: Ipv4Net,
    /// Optional IPv6 range; when set every pod also gets an IPv6 address.
    #[serde(default)]
    pub cidr6: Option<Ipv6Net>,
    /// The pods.
    pub pods: Vec<PodSpec>,
}

/// One pod: a network namespace with a veth into the host and one server process.
#[derive(Debug, Clone, Deserialize)]
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
    /// The pods, in file order.
    pub pods: Vec<Pod>,
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
        file.validate(path, dir, &|program| program_exists(program))
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

        let mut names = BTreeSet::new();
        let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
        taken.insert(IpAddr::V4(gateway));
        taken.extend(gateway6.map(IpAddr::V6));
        // Explicit addresses first, so allocation never hands out one a later pod names.
        for (i, pod) in self.pods.iter().enumerate() {
            if let Some(addr) = pod.address {
                let field = format!("pods[{i}].address");
                if !cidr.contains(&addr) || addr == cidr.network() || addr == cidr.broadcast() {
                    return Err(invalid(
                        field,
                        format!("{addr} is outside the usable range of cidr {cidr}"),
                    ));
                }
                if addr == gateway {
                    return Err(invalid(
                        field,
                        format!("{addr} is the host's gateway address of the lab"),
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
        let mut free = cidr.hosts().filter(|a| *a != gateway);
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
            let ipv4 = match spec.address {
                Some(a) => a,
                None => free
                    .by_ref()
                    .find(|a| !taken.contains(&IpAddr::V4(*a)))
                    .ok_or_else(|| {
                        invalid(format!("pods[{i}].address"), format!("cidr {cidr} is full"))
                    })?,
            };
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
            pods,
        })
    }
}

impl Lab {
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

    #[test]
    fn pod_names_are_stable_and_kubernetes_like() {
        let a = pod_name("demo-app", "api-service");
        assert_eq!(a, pod_name("demo-app", "api-service"));
        assert_ne!(a, pod_name("other", "api-service"));
        assert_eq!(a.len(), "api-service-".len() + 5);
        assert!(is_dns_label(&a));
    }
}
