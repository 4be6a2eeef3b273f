//! What a lab has created, recorded as it goes: `down` and a later `up` read it to
//! clean up after a crash, and the agent's lab endpoint source reads it to register
//! the pods.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file of one lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// Kubernetes namespace of the pods.
    pub namespace: String,
    /// The lab file it was built from.
    pub file: PathBuf,
    /// The host's address in the lab.
    pub gateway: Ipv4Addr,
    /// The host's IPv6 address in the lab.
    pub gateway6: Option<Ipv6Addr>,
    /// Lab ranges (`10.200.0.0/24`, …).
    pub nets: Vec<String>,
    /// Sysctls changed on the host, with their previous values, restored by `down`.
    pub sysctls: BTreeMap<String, String>,
    /// The nodes created so far (empty: a single-node lab on this host).
    #[serde(default)]
    pub nodes: Vec<NodeState>,
    /// The host's address between the nodes (with nodes).
    #[serde(default)]
    pub fabric: Option<Ipv4Addr>,
    /// The pods created so far.
    pub pods: Vec<PodState>,
    /// Every pod is up and ready.
    pub ready: bool,
}

/// One node as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// The host's side of its link.
    pub host_if: String,
    /// Its address between nodes.
    pub address: Ipv4Addr,
    /// Its pod range.
    pub pod_cidr: String,
    /// Its own address in the pod range.
    pub gateway: Ipv4Addr,
    /// Its agent's API socket.
    pub socket: PathBuf,
    /// Its agent's configuration file (written by `lab up`).
    pub config: PathBuf,
    /// Where its agent's Observer and Peer services answer (`address:port`).
    pub observer: String,
    /// PID of its agent.
    pub agent_pid: Option<i32>,
}

impl NodeState {
    /// The node's directory: agent configuration, state, pins, log.
    pub fn dir(lab: &str, node: &str) -> PathBuf {
        lab_dir(lab).join("nodes").join(node)
    }
}

/// One pod as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// Deployment name.
    pub name: String,
    /// Pod name.
    pub pod_name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Network namespace.
    pub netns: String,
    /// Host-side veth.
    pub host_if: String,
    /// Interface index of the host-side veth.
    pub ifindex: u32,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// The server's argv as written in the lab file.
    pub command: Vec<String>,
    /// PID of the pod's server.
    pub pid: Option<i32>,
    /// The node it runs on (a lab with nodes).
    #[serde(default)]
    pub node: Option<String>,
}

/// Loupe's runtime directory (`/run/loupe`, or `$LOUPE_RUN_DIR`).
pub fn run_dir() -> PathBuf {
    std::env::var_os("LOUPE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/loupe"))
}

/// Directory holding every lab's state.
pub fn labs_dir() -> PathBuf {
    run_dir().join("lab")
}

/// Directory of one lab's state, logs and pod scratch space.
pub fn lab_dir(name: &str) -> PathBuf {
    labs_dir().join(name)
}

impl LabState {
    /// Path of the state file.
    pub fn path(name: &str) -> PathBuf {
        lab_dir(name).join("state.json")
    }

    /// Reads a lab's state; `None` if there is none.
    pub fn read(name: &str) -> std::io::Result<Option<Self>> {
        Self::read_file(&Self::path(name))
    }

    /// Reads a state file; `None` if it does not exist.
    pub fn read_file(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically (write to a temporary file, then rename), so a
    /// reader never sees half a file.
    pub fn write(&self) -> std::io::Result<()> {
        let path = Self::path(&self.name);
        let dir = lab_dir(&self.name);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    /// Every lab with a state file.
    pub fn all() -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir(labs_dir()) else {
            return Vec::new();
        };
        let mut labs: Vec<Self> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Self::read_file(&e.path().join("state.json")).ok().flatten())
            .collect();
        labs.sort_by(|a, b| a.name.cmp(&b.name));
        labs
    }
}
