//! `loupe lab`: the article's demo-app on one machine.
//!
//! Each pod is a network namespace joined to the host by a veth pair, routed at L3
//! by the host (no bridge), so every packet to or from a pod crosses the host-side
//! veth where the datapath's TC programs run — the same place Cilium attaches to a
//! pod's `lxc` interface.
//!
//! ```text
//!  netns loupe-<lab>-<pod>            host
//!  eth0 10.200.0.2/32  <──veth──>  lxcXXXXXXXX (proxy ARP, route 10.200.0.2/32)
//!  route 10.200.0.0/24 via 169.254.1.1          lo: 10.200.0.1/32 (the lab gateway)
//! ```
//!
//! Pods only have routes to the lab's ranges: nothing they run can reach beyond
//! the lab.
//!
//! A lab with `nodes` puts another layer in between: each node is a network
//! namespace linked to the host the same way, its pods hang off it as above,
//! the host routes each node's pod range to the node (a cluster's native
//! routing), and `lab up` starts one agent per node inside the node's namespace.
//!
//! ```text
//!  pod netns ──veth── node netns loupe-<lab>-<node> (agent, lxc*, eth0) ──veth── host
//!                     lo: podCidr's first address          host: route podCidr via node
//! ```

pub mod config;
pub mod identities;
pub mod state;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::host::{self, HostError};
pub use config::{Lab, LabConfigError, LabFile, Node, Pod};
pub use state::{LabState, NodeState, PodState};

/// The link-local next hop pods route through; the host answers for it by proxy ARP.
const POD_GATEWAY4: &str = "169.254.1.1";
/// The IPv6 link-local address of every host-side veth.
const POD_GATEWAY6: &str = "fe80::1";
/// How long a pod's server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node's agent may take to serve its Observer.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The port a node's agent serves Observer and Peer on (Hubble's).
const OBSERVER_PORT: u16 = 4244;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab file is invalid.
    #[error(transparent)]
    Config(#[from] LabConfigError),
    /// A host operation failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The state directory could not be used.
    #[error("lab state {path}: {source}")]
    State {
        /// File or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A pod's server did not come up.
    #[error("pod {pod}: {message}")]
    Pod {
        /// Pod (deployment) name.
        pod: String,
        /// What happened, with the end of its log.
        message: String,
    },
    /// A node or its agent did not come up.
    #[error("node {node}: {message}")]
    Node {
        /// Node name.
        node: String,
        /// What happened, with the end of the agent's log.
        message: String,
    },
    /// No lab or no such pod.
    #[error("{0}")]
    NotFound(String),
    /// A pod's namespace name is already another lab's.
    #[error(
        "pod {pod}: its network namespace {netns} is lab {other}'s (lab and pod names join \
         with '-'); rename the lab or the pod"
    )]
    Clash {
        /// Pod (deployment) name.
        pod: String,
        /// The namespace name both would use.
        netns: String,
        /// The lab that has it.
        other: String,
    },
}

/// Names of everything a lab creates, derived from the lab and pod names alone so a
/// crashed run can be cleaned up from the lab file even without its state.
pub mod names {
    use super::*;

    fn hash8(s: &str) -> String {
        let d = Sha256::digest(s.as_bytes());
        d.iter().take(4).fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }

    /// The pod's network namespace.
    pub fn netns(lab: &str, pod: &str) -> String {
        format!("loupe-{lab}-{pod}")
    }

    /// The pod's host-side veth (15 characters at most, like Cilium's `lxc…`).
    pub fn host_veth(lab: &str, pod: &str) -> String {
        format!("lxc{}", hash8(&format!("{lab}/{pod}")))
    }

    /// The peer's name before it moves into the pod and becomes `eth0`.
    pub fn peer_veth(lab: &str, pod: &str) -> String {
        format!("tmp{}", hash8(&format!("{lab}/{pod}")))
    }

    /// Prefix of every namespace of a lab.
    pub fn netns_prefix(lab: &str) -> String {
        format!("loupe-{lab}-")
    }

    /// A node's host-side link.
    pub fn node_veth(lab: &str, node: &str) -> String {
        format!("nod{}", hash8(&format!("{lab}/node/{node}")))
    }

    /// A node's link before it moves into the node and becomes `eth0`.
    pub fn node_peer_veth(lab: &str, node: &str) -> String {
        format!("tmn{}", hash8(&format!("{lab}/node/{node}")))
    }
}

/// Where the host side of a pod's link lives: this host, or a node's namespace.
#[derive(Debug, Clone, Copy)]
struct Side<'a> {
    netns: Option<&'a str>,
}

impl Side<'_> {
    fn ip(&self, args: &[&str]) -> Result<String, HostError> {
        match self.netns {
            None => host::ip(args),
            Some(ns) => {
                let mut full = vec!["-n", ns];
                full.extend_from_slice(args);
                host::ip(&full)
            }
        }
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<(), HostError> {
        match self.netns {
            None => host::sysctl(key, value),
            Some(ns) => host::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("{key}={value}"),
                ],
            )
            .map(drop),
        }
    }

    fn ifindex(&self, name: &str) -> Result<u32, HostError> {
        match self.netns {
            None => host::ifindex(name),
            Some(_) => {
                // `12: lxc…@if2: <…>`
                let out = self.ip(&["-o", "link", "show", "dev", name])?;
                out.split(':')
                    .next()
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| HostError::Failed {
                        command: format!("ip link show dev {name}"),
                        stderr: format!("no interface index in {out:?}"),
                    })
            }
        }
    }

    fn link_exists(&self, name: &str) -> bool {
        match self.netns {
            None => host::link_exists(name),
            Some(_) => self.ip(&["link", "show", "dev", name]).is_ok(),
        }
    }
}

/// PATH given to pod processes: Loupe's tools (`/opt/loupe`, or `$LOUPE_TOOLS`), its
/// Python venv, then the caller's PATH.
pub fn pod_path() -> std::ffi::OsString {
    let tools = tools_dir();
    let mut dirs = vec![tools.join("bin"), tools.join("venv/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    } else {
        dirs.extend(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        );
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Where `scripts/bootstrap` puts the lab's tools.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("LOUPE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/loupe"))
}

/// What `up` did.
#[derive(Debug, PartialEq, Eq)]
pub enum UpOutcome {
    /// The lab was built.
    Created(LabState),
    /// The lab was already up and healthy; nothing changed.
    AlreadyUp(LabState),
    /// The lab was up but these nodes' agents had stopped: they were started
    /// again (pods, links and pins untouched).
    AgentsRestarted(LabState, Vec<String>),
}

/// Builds the lab. Idempotent: a healthy lab built from the same file is left as it
/// is; anything else of the same name (a crashed run, a changed file) is torn down
/// first. A failure half-way tears down what was made.
pub fn up(lab: &Lab, file: &Path) -> Result<UpOutcome, LabError> {
    if let Some(mut existing) = readable_state(&lab.name)
        && existing.ready
        && matches_lab(&existing, lab)
        && links_healthy(&existing)
    {
        let stopped: Vec<usize> = (0..existing.nodes.len())
            .filter(|&i| !existing.nodes[i].agent_pid.is_some_and(host::alive))
            .collect();
        if stopped.is_empty() {
            return Ok(UpOutcome::AlreadyUp(existing));
        }
        for &i in &stopped {
            // What the dead agent left in its namespace (a CLI it forked).
            stop_pod(&existing.nodes[i].netns, None);
            let pid = start_agent(lab, &lab.nodes[i], &existing.nodes[i])?;
            existing.nodes[i].agent_pid = Some(pid);
            write_state(&existing)?;
        }
        for &i in &stopped {
            wait_agent(&lab.name, &existing.nodes[i])?;
        }
        let names = stopped
            .iter()
            .map(|&i| existing.nodes[i].name.clone())
            .collect();
        return Ok(UpOutcome::AgentsRestarted(existing, names));
    }
    refuse_clashes(lab)?;
    down_names(lab)?;
    let mut state = LabState {
        name: lab.name.clone(),
        namespace: lab.namespace.clone(),
        file: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()),
        gateway: lab.gateway,
        gateway6: lab.gateway6,
        nets: lab.nets().iter().map(ToString::to_string).collect(),
        sysctls: BTreeMap::new(),
        nodes: Vec::new(),
        fabric: lab.node_net.map(|(_, host)| host),
        pods: Vec::new(),
        ready: false,
    };
    match build(lab, &mut state) {
        Ok(()) => Ok(UpOutcome::Created(state)),
        Err(err) => {
            tracing::warn!(lab = %lab.name, error = %err, "lab up failed; rolling back");
            let _ = teardown(&state);
            let _ = down_names(lab);
            Err(err)
        }
    }
}

fn read_state(name: &str) -> Result<Option<LabState>, LabError> {
    LabState::read(name).map_err(|source| LabError::State {
        path: LabState::path(name),
        source,
    })
}

/// The recorded state, if it can be read; an unreadable one (a crash mid-write, an
/// older format) is reported and then cleaned up by name instead.
fn readable_state(name: &str) -> Option<LabState> {
    match read_state(name) {
        Ok(state) => state,
        Err(err) => {
            tracing::warn!(lab = name, error = %err, "ignoring unreadable lab state");
            None
        }
    }
}

fn write_state(state: &LabState) -> Result<(), LabError> {
    state.write().map_err(|source| LabError::State {
        path: LabState::path(&state.name),
        source,
    })
}

fn matches_lab(state: &LabState, lab: &Lab) -> bool {
    state.namespace == lab.namespace
        && state.nodes.len() == lab.nodes.len()
        && state.nodes.iter().zip(&lab.nodes).all(|(s, n)| {
            s.name == n.name
                && s.address == n.address
                && s.pod_cidr == n.pod_cidr.to_string()
                && agent_config_text(lab, n).is_ok_and(|text| {
                    std::fs::read_to_string(&s.config).is_ok_and(|now| now == text)
                })
        })
        && state.pods.len() == lab.pods.len()
        && state.pods.iter().zip(&lab.pods).all(|(s, p)| {
            s.name == p.name
                && s.labels == p.labels
                && s.ipv4 == p.ipv4
                && s.ipv6 == p.ipv6
                && s.command == p.command
                && s.node == p.node
        })
}

/// Every node's and pod's namespace and link exist, and its agent or server is
/// alive.
pub fn healthy(state: &LabState) -> bool {
    links_healthy(state)
        && state
            .nodes
            .iter()
            .all(|n| n.agent_pid.is_some_and(host::alive))
}

/// As [`healthy`], leaving the agents out.
fn links_healthy(state: &LabState) -> bool {
    let Ok(netns) = host::netns_list() else {
        return false;
    };
    let nodes_ok = state
        .nodes
        .iter()
        .all(|n| netns.contains(&n.netns) && host::link_exists(&n.host_if));
    nodes_ok
        && state.pods.iter().all(|p| {
            let side = Side {
                netns: node_netns(state, p.node.as_deref()),
            };
            netns.contains(&p.netns)
                && side.link_exists(&p.host_if)
                && p.pid.is_some_and(host::alive)
        })
}

/// The namespace of a pod's node (`None`: this host).
fn node_netns<'a>(state: &'a LabState, node: Option<&str>) -> Option<&'a str> {
    let node = node?;
    state
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.netns.as_str())
}

fn build(lab: &Lab, state: &mut LabState) -> Result<(), LabError> {
    let dir = state::lab_dir(&lab.name);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::State {
        path: dir.clone(),
        source,
    })?;
    write_state(state)?;

    // Forwarding between the host-side veths; the previous values are restored by `down`.
    let mut sysctls = vec!["net.ipv4.ip_forward"];
    if lab.cidr6.is_some() {
        sysctls.push("net.ipv6.conf.all.forwarding");
    }
    for key in sysctls {
        if let Some(old) = host::sysctl_get(key) {
            state.sysctls.entry(key.to_string()).or_insert(old);
        }
        host::sysctl(key, "1")?;
    }
    write_state(state)?;

    if let Some((_, fabric)) = lab.node_net {
        // The host routes between the nodes: its address among them on loopback.
        host::ip(&["addr", "add", &format!("{fabric}/32"), "dev", "lo"])?;
        for node in &lab.nodes {
            let node_state = make_node(lab, node, fabric)?;
            state.nodes.push(node_state);
            write_state(state)?;
        }
    } else {
        // The host's own address in the lab, on loopback: replies to the host
        // route back through the pod's veth, and no extra device is needed.
        for gw in gateway_addrs(lab.gateway, lab.gateway6) {
            host::ip(&["addr", "add", &gw, "dev", "lo"])?;
        }
    }

    let hosts = hosts_file(lab);
    for pod in &lab.pods {
        let pod_state = make_pod(lab, pod, &hosts)?;
        state.pods.push(pod_state);
        write_state(state)?;
    }
    for (pod, pod_state) in lab.pods.iter().zip(state.pods.iter_mut()) {
        pod_state.pid = Some(start_server(lab, pod, pod_state)?);
    }
    write_state(state)?;
    for (pod, pod_state) in lab.pods.iter().zip(&state.pods) {
        wait_ready(lab, pod, pod_state)?;
    }
    // The agents list the lab's pods once it is ready.
    state.ready = true;
    write_state(state)?;
    for i in 0..state.nodes.len() {
        let pid = start_agent(lab, &lab.nodes[i], &state.nodes[i])?;
        state.nodes[i].agent_pid = Some(pid);
        write_state(state)?;
    }
    for node in &state.nodes {
        wait_agent(&lab.name, node)?;
    }
    Ok(())
}

/// Makes a node: its namespace, its link to the host, routes both ways.
fn make_node(lab: &Lab, node: &Node, fabric: std::net::Ipv4Addr) -> Result<NodeState, LabError> {
    let netns = names::netns(&lab.name, &node.name);
    let host_if = names::node_veth(&lab.name, &node.name);
    let peer = names::node_peer_veth(&lab.name, &node.name);
    let Some((node_cidr, _)) = lab.node_net else {
        return Err(LabError::NotFound("a node without a node range".into()));
    };
    host::ip(&["netns", "add", &netns])?;
    host::ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
    ])?;
    host::ip(&["link", "set", &peer, "netns", &netns])?;
    let side = Side {
        netns: Some(&netns),
    };
    side.ip(&["link", "set", &peer, "name", "eth0"])?;
    side.ip(&["link", "set", "lo", "up"])?;
    side.ip(&[
        "addr",
        "add",
        &format!("{}/32", node.address),
        "dev",
        "eth0",
    ])?;
    // The node's own address in its pod range: its pods' gateway.
    side.ip(&["addr", "add", &format!("{}/32", node.gateway), "dev", "lo"])?;
    side.ip(&["link", "set", "eth0", "up"])?;
    side.ip(&["route", "add", POD_GATEWAY4, "dev", "eth0", "scope", "link"])?;
    // Other nodes and their pods through the host.
    for net in [lab.cidr.to_string(), node_cidr.to_string()] {
        side.ip(&["route", "add", &net, "via", POD_GATEWAY4, "dev", "eth0"])?;
    }
    side.sysctl("net.ipv4.ip_forward", "1")?;
    host::sysctl(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1")?;
    host::ip(&["link", "set", &host_if, "up"])?;
    host::ip(&[
        "route",
        "add",
        &format!("{}/32", node.address),
        "dev",
        &host_if,
        "src",
        &fabric.to_string(),
    ])?;
    host::ip(&[
        "route",
        "add",
        &node.pod_cidr.to_string(),
        "via",
        &node.address.to_string(),
        "src",
        &fabric.to_string(),
    ])?;
    let dir = NodeState::dir(&lab.name, &node.name);
    Ok(NodeState {
        name: node.name.clone(),
        netns,
        host_if,
        address: node.address,
        pod_cidr: node.pod_cidr.to_string(),
        gateway: node.gateway,
        socket: dir.join("loupe.sock"),
        config: dir.join("agent.yaml"),
        observer: format!("{}:{OBSERVER_PORT}", node.address),
        agent_pid: None,
    })
}

/// A node's agent configuration: the lab's base file with the node's own keys
/// over it.
fn agent_config_text(lab: &Lab, node: &Node) -> Result<String, LabError> {
    use serde_norway::Value;
    let mut config = match &lab.agent_config {
        None => Value::Mapping(serde_norway::Mapping::new()),
        Some(path) => {
            Value::Mapping(
                config::read_agent_base(path).map_err(|message| LabError::Node {
                    node: node.name.clone(),
                    message,
                })?,
            )
        }
    };
    let dir = NodeState::dir(&lab.name, &node.name);
    let path = |p: PathBuf| Value::String(p.display().to_string());
    let keys: [(&[&str], Value); 8] = [
        (&["nodeName"], Value::String(node.name.clone())),
        (&["socketPath"], path(dir.join("loupe.sock"))),
        (&["stateDir"], path(dir.join("state"))),
        (&["bpf", "pinPath"], path(dir.join("bpf"))),
        (&["endpoints", "lab"], Value::Bool(true)),
        (
            &["endpoints", "labNames"],
            Value::Sequence(vec![Value::String(lab.name.clone())]),
        ),
        (
            &["hubble", "listenAddress"],
            Value::String(format!("{}:{OBSERVER_PORT}", node.address)),
        ),
        // Traffic from other nodes arrives on the node's link.
        (
            &["devices"],
            Value::Sequence(vec![Value::String("eth0".into())]),
        ),
    ];
    for (key, value) in keys {
        set(&mut config, key, value);
    }
    let text = serde_norway::to_string(&config).map_err(|e| LabError::Pod {
        pod: node.name.clone(),
        message: format!("agent configuration: {e}"),
    })?;
    Ok(format!(
        "# Written by `loupe lab up` for node {} of lab {}.\n{text}",
        node.name, lab.name
    ))
}

fn set(value: &mut serde_norway::Value, key: &[&str], new: serde_norway::Value) {
    use serde_norway::{Mapping, Value};
    let Some((last, parents)) = key.split_last() else {
        return;
    };
    let mut at = value;
    for k in parents {
        if !at.get(k).is_some_and(Value::is_mapping)
            && let Some(map) = at.as_mapping_mut()
        {
            map.insert(
                Value::String((*k).to_string()),
                Value::Mapping(Mapping::new()),
            );
        }
        let Some(next) = at.get_mut(k) else { return };
        at = next;
    }
    if let Some(map) = at.as_mapping_mut() {
        map.insert(Value::String((*last).to_string()), new);
    }
}

/// Starts a node's agent inside the node's namespace, detached like the pods'
/// servers; its pins live on a bpffs of the node's own.
fn start_agent(lab: &Lab, node: &Node, state: &NodeState) -> Result<i32, LabError> {
    let dir = NodeState::dir(&lab.name, &node.name);
    let bpf = dir.join("bpf");
    for d in [&dir, &bpf] {
        std::fs::create_dir_all(d).map_err(|source| LabError::State {
            path: d.clone(),
            source,
        })?;
    }
    if !is_mount_point(&bpf) {
        host::run("mount", &["-t", "bpf", "bpf", &bpf.display().to_string()])?;
    }
    let text = agent_config_text(lab, node)?;
    std::fs::write(&state.config, text).map_err(|source| LabError::State {
        path: state.config.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|source| LabError::State {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut argv = vec![exe.display().to_string(), "agent".into(), "--config".into()];
    argv.push(state.config.display().to_string());
    let pid = spawn_detached(&state.netns, &argv, &dir, &dir.join("agent.log"), false).map_err(
        |message| LabError::Node {
            node: node.name.clone(),
            message: format!("starting the agent: {message}"),
        },
    )?;
    tracing::info!(node = %node.name, pid, "agent started");
    Ok(pid)
}

/// Starts `argv` in namespace `netns`, in its own session so it outlives this
/// command, output appended to `log`; returns its PID. `pod_env`: the pods'
/// `PATH` and `HOME` (= `dir`).
fn spawn_detached(
    netns: &str,
    argv: &[String],
    dir: &Path,
    log: &Path,
    pod_env: bool,
) -> Result<i32, String> {
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .args(argv)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?);
    if pod_env {
        cmd.env("PATH", pod_path()).env("HOME", dir);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of this process.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("{argv:?}: {e}"))?;
    i32::try_from(child.id()).map_err(|_| "PID out of range".to_string())
}

/// The last 20 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn is_mount_point(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts_under(&path).contains(&path)
}

/// Mount points at or below `dir` (as `/proc/self/mounts` writes them, which is
/// canonical), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(PathBuf::from))
        .filter(|m| m.starts_with(&dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// Unmounts every mount at or below `dir` (the nodes' bpffs); one that stays is
/// logged, and removing the directory then says why.
fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        if let Err(e) = host::run("umount", &[&mount.display().to_string()]) {
            tracing::warn!(mount = %mount.display(), error = %e, "unmounting");
        }
    }
}

/// Waits until a node's agent serves its Observer.
fn wait_agent(lab: &str, node: &NodeState) -> Result<(), LabError> {
    let failed = |message: String| LabError::Node {
        node: node.name.clone(),
        message,
    };
    let addr: SocketAddr = node
        .observer
        .parse()
        .map_err(|_| failed(format!("observer address {:?}", node.observer)))?;
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    let log = || tail(&NodeState::dir(lab, &node.name).join("agent.log"));
    loop {
        if !node.agent_pid.is_some_and(host::alive) {
            return Err(failed(format!("agent exited; log:\n{}", log())));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "agent not serving on {addr} after {AGENT_READY_TIMEOUT:?}; log:\n{}",
                log()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/etc/hosts` for every pod: each deployment by its name, its service-style names
/// and its pod name, as cluster DNS would answer.
fn hosts_file(lab: &Lab) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for pod in &lab.pods {
        let names = format!(
            "{n} {n}.{ns} {n}.{ns}.svc {n}.{ns}.svc.cluster.local {p}",
            n = pod.name,
            ns = lab.namespace,
            p = pod.pod_name
        );
        let _ = writeln!(out, "{}\t{names}", pod.ipv4);
        if let Some(v6) = pod.ipv6 {
            let _ = writeln!(out, "{v6}\t{names}");
        }
    }
    out
}

fn make_pod(lab: &Lab, pod: &Pod, hosts: &str) -> Result<PodState, LabError> {
    let node = lab.node_of(pod);
    let node_netns = node.map(|n| names::netns(&lab.name, &n.name));
    let side = Side {
        netns: node_netns.as_deref(),
    };
    let gateway = node.map_or(lab.gateway, |n| n.gateway);
    let netns = names::netns(&lab.name, &pod.name);
    let host_if = names::host_veth(&lab.name, &pod.name);
    let peer = names::peer_veth(&lab.name, &pod.name);

    // `ip netns exec` bind-mounts /etc/netns/<name>/hosts over /etc/hosts.
    let etc = Path::new("/etc/netns").join(&netns);
    std::fs::create_dir_all(&etc).map_err(|source| LabError::State {
        path: etc.clone(),
        source,
    })?;
    let hosts_path = etc.join("hosts");
    std::fs::write(&hosts_path, hosts).map_err(|source| LabError::State {
        path: hosts_path,
        source,
    })?;

    host::ip(&["netns", "add", &netns])?;
    side.ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
    ])?;
    side.ip(&["link", "set", &peer, "netns", &netns])?;
    let n = |args: &[&str]| -> Result<String, HostError> {
        let mut full = vec!["-n", netns.as_str()];
        full.extend_from_slice(args);
        host::ip(&full)
    };
    n(&["link", "set", &peer, "name", "eth0"])?;
    n(&["link", "set", "lo", "up"])?;
    if pod.ipv6.is_some() {
        // No duplicate address detection: addresses are usable at once.
        Side {
            netns: Some(&netns),
        }
        .sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
    }
    n(&["addr", "add", &format!("{}/32", pod.ipv4), "dev", "eth0"])?;
    n(&["link", "set", "eth0", "up"])?;
    n(&["route", "add", POD_GATEWAY4, "dev", "eth0", "scope", "link"])?;
    n(&[
        "route",
        "add",
        &lab.cidr.to_string(),
        "via",
        POD_GATEWAY4,
        "dev",
        "eth0",
    ])?;
    // With nodes, the host (and the relay on it) talks to pods from the nodes' range.
    if let Some((node_cidr, _)) = lab.node_net {
        n(&[
            "route",
            "add",
            &node_cidr.to_string(),
            "via",
            POD_GATEWAY4,
            "dev",
            "eth0",
        ])?;
    }

    side.sysctl(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1")?;
    if lab.cidr6.is_some() {
        side.sysctl(&format!("net.ipv6.conf.{host_if}.accept_dad"), "0")?;
    }
    side.ip(&["link", "set", &host_if, "up"])?;
    side.ip(&[
        "route",
        "add",
        &format!("{}/32", pod.ipv4),
        "dev",
        &host_if,
        "src",
        &gateway.to_string(),
    ])?;
    if let (Some(v6), Some(c6), Some(g6)) = (pod.ipv6, lab.cidr6, lab.gateway6) {
        host::ip(&[
            "-6",
            "addr",
            "add",
            &format!("{POD_GATEWAY6}/64"),
            "dev",
            &host_if,
            "nodad",
        ])?;
        n(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        n(&[
            "-6",
            "route",
            "add",
            &c6.to_string(),
            "via",
            POD_GATEWAY6,
            "dev",
            "eth0",
        ])?;
        host::ip(&[
            "-6",
            "route",
            "add",
            &format!("{v6}/128"),
            "dev",
            &host_if,
            "src",
            &g6.to_string(),
        ])?;
    }
    Ok(PodState {
        name: pod.name.clone(),
        pod_name: pod.pod_name.clone(),
        labels: pod.labels.clone(),
        ifindex: side.ifindex(&host_if)?,
        netns,
        host_if,
        ipv4: pod.ipv4,
        ipv6: pod.ipv6,
        command: pod.command.clone(),
        pid: None,
        node: pod.node.clone(),
    })
}

fn substitute(arg: &str, lab: &Lab, pod: &Pod, state_dir: &Path) -> String {
    arg.replace("{ip}", &pod.ipv4.to_string())
        .replace(
            "{ip6}",
            &pod.ipv6.map(|a| a.to_string()).unwrap_or_default(),
        )
        .replace("{state}", &state_dir.display().to_string())
        .replace("{lab}", &lab.dir.display().to_string())
}

fn pod_dir(lab: &str, pod: &str) -> PathBuf {
    state::lab_dir(lab).join(pod)
}

fn log_path(lab: &str, pod: &str) -> PathBuf {
    state::lab_dir(lab).join(format!("{pod}.log"))
}

/// Starts the pod's server in its namespace, detached in its own session so it
/// outlives this command; returns its PID.
fn start_server(lab: &Lab, pod: &Pod, state: &PodState) -> Result<i32, LabError> {
    let dir = pod_dir(&lab.name, &pod.name);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::State {
        path: dir.clone(),
        source,
    })?;
    let argv: Vec<String> = pod
        .command
        .iter()
        .map(|a| substitute(a, lab, pod, &dir))
        .collect();
    let log = log_path(&lab.name, &pod.name);
    let pid =
        spawn_detached(&state.netns, &argv, &dir, &log, true).map_err(|message| LabError::Pod {
            pod: pod.name.clone(),
            message: format!("starting {message}"),
        })?;
    tracing::info!(pod = %pod.pod_name, pid, command = ?argv, "started");
    Ok(pid)
}

fn wait_ready(lab: &Lab, pod: &Pod, state: &PodState) -> Result<(), LabError> {
    let Some(pid) = state.pid else {
        return Ok(());
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !host::alive(pid) {
            return Err(LabError::Pod {
                pod: pod.name.clone(),
                message: format!("server exited; log:\n{}", log_tail(&lab.name, &pod.name)),
            });
        }
        let Some(port) = pod.ready_port else {
            return Ok(());
        };
        let addr = SocketAddr::new(IpAddr::V4(state.ipv4), port);
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Pod {
                pod: pod.name.clone(),
                message: format!(
                    "not accepting connections on {addr} after {READY_TIMEOUT:?}; log:\n{}",
                    log_tail(&lab.name, &pod.name)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last lines of a pod's log.
pub fn log_tail(lab: &str, pod: &str) -> String {
    tail(&log_path(lab, pod))
}

/// Removes everything a lab state records: processes, namespaces, links, routes
/// (they go with the links), hosts files, sysctls, state.
pub fn teardown(state: &LabState) -> Result<(), LabError> {
    // Agents first: nothing enforces on a half-removed lab.
    for node in &state.nodes {
        stop_pod(&node.netns, node.agent_pid);
    }
    for pod in &state.pods {
        stop_pod(&pod.netns, pod.pid);
        remove_pod_net(&pod.netns, &pod.host_if);
    }
    for node in &state.nodes {
        remove_node(&state.name, &node.name);
    }
    if let Some(fabric) = state.fabric {
        remove_gateway(fabric, None);
    }
    remove_gateway(state.gateway, state.gateway6);
    // Forwarding is restored only when no other lab still needs it.
    let others = LabState::all().into_iter().any(|s| s.name != state.name);
    if !others {
        for (key, old) in &state.sysctls {
            let _ = host::sysctl(key, old);
        }
    }
    let dir = state::lab_dir(&state.name);
    unmount_under(&dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| LabError::State { path: dir, source })?;
    }
    Ok(())
}

fn gateway_addrs(v4: std::net::Ipv4Addr, v6: Option<std::net::Ipv6Addr>) -> Vec<String> {
    let mut addrs = vec![format!("{v4}/32")];
    addrs.extend(v6.map(|a| format!("{a}/128")));
    addrs
}

fn remove_gateway(v4: std::net::Ipv4Addr, v6: Option<std::net::Ipv6Addr>) {
    let present = host::ip(&["addr", "show", "dev", "lo"]).unwrap_or_default();
    for gw in gateway_addrs(v4, v6) {
        if present.contains(&format!(" {gw} ")) {
            let _ = host::ip(&["addr", "del", &gw, "dev", "lo"]);
        }
    }
}

/// Removes a node: its processes, pins, namespace and link.
fn remove_node(lab: &str, node: &str) {
    let netns = names::netns(lab, node);
    stop_pod(&netns, None);
    unmount_under(&NodeState::dir(lab, node));
    remove_pod_net(&netns, &names::node_veth(lab, node));
    let peer = names::node_peer_veth(lab, node);
    if host::link_exists(&peer) {
        let _ = host::ip(&["link", "del", &peer]);
    }
}

fn stop_pod(netns: &str, pid: Option<i32>) {
    let mut pids = host::netns_pids(netns);
    if let Some(pid) = pid.filter(|p| host::alive(*p))
        && !pids.contains(&pid)
    {
        pids.push(pid);
    }
    host::terminate(&pids, Duration::from_secs(3));
}

fn remove_pod_net(netns: &str, host_if: &str) {
    if host::netns_list().is_ok_and(|l| l.iter().any(|n| n == netns)) {
        let _ = host::ip(&["netns", "del", netns]);
    }
    // Deleting the namespace destroys the pair, but a veth whose peer never moved
    // into it stays behind on the host.
    if host::link_exists(host_if) {
        let _ = host::ip(&["link", "del", host_if]);
    }
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(netns));
}

/// Every other lab (with a state file) and how to tell its namespaces: recorded,
/// or carrying its prefix when its name is longer (more specific) than `name`.
fn others_netns(name: &str) -> Vec<(String, OtherLab)> {
    LabState::all()
        .into_iter()
        .filter(|o| o.name != name)
        .map(|o| {
            let other = OtherLab {
                prefix: (o.name.len() > name.len()).then(|| names::netns_prefix(&o.name)),
                netns: o
                    .pods
                    .iter()
                    .map(|p| p.netns.clone())
                    .chain(o.nodes.iter().map(|n| n.netns.clone()))
                    .collect(),
                addresses: std::iter::once(o.gateway).chain(o.fabric).collect(),
            };
            (o.name, other)
        })
        .collect()
}

struct OtherLab {
    prefix: Option<String>,
    netns: Vec<String>,
    /// The host addresses it put on `lo`.
    addresses: Vec<std::net::Ipv4Addr>,
}

impl OtherLab {
    fn is_match(&self, ns: &str) -> bool {
        self.netns.iter().any(|n| n == ns)
            || self.prefix.as_ref().is_some_and(|p| ns.starts_with(p))
    }
}

/// Refuses a lab whose pods' or nodes' namespace names another lab already
/// uses, or whose host addresses another lab holds.
fn refuse_clashes(lab: &Lab) -> Result<(), LabError> {
    let others = others_netns(&lab.name);
    let names = lab
        .pods
        .iter()
        .map(|p| &p.name)
        .chain(lab.nodes.iter().map(|n| &n.name));
    for name in names {
        let netns = names::netns(&lab.name, name);
        if let Some((other, _)) = others.iter().find(|(_, o)| o.netns.contains(&netns)) {
            return Err(LabError::Clash {
                pod: name.clone(),
                netns,
                other: other.clone(),
            });
        }
    }
    let ours: Vec<std::net::Ipv4Addr> = match lab.node_net {
        Some((_, fabric)) => vec![fabric],
        None => vec![lab.gateway],
    };
    for (other, o) in &others {
        if let Some(addr) = ours.iter().find(|a| o.addresses.contains(a)) {
            return Err(LabError::NotFound(format!(
                "lab {other} already holds this host's address {addr} (the lab's ranges \
                 overlap): give this lab other ranges"
            )));
        }
    }
    Ok(())
}

/// Tears down whatever exists of a lab: its recorded state, then every name the
/// lab file implies and every namespace carrying the lab's prefix (a run killed
/// before it recorded them).
pub fn down_names(lab: &Lab) -> Result<(), LabError> {
    if let Some(state) = readable_state(&lab.name) {
        teardown(&state)?;
    }
    let prefix = names::netns_prefix(&lab.name);
    // Lab `a`'s prefix `loupe-a-` also starts lab `a-b`'s namespaces: those of
    // other labs are never this lab's leftovers.
    let others = others_netns(&lab.name);
    let ours = |ns: &String| !others.iter().any(|(_, o)| o.netns.contains(ns));
    let nodes: Vec<&Node> = lab
        .nodes
        .iter()
        .filter(|n| ours(&names::netns(&lab.name, &n.name)))
        .collect();
    // Agents first, then the nodes once their pods are gone (below).
    for node in &nodes {
        stop_pod(&names::netns(&lab.name, &node.name), None);
    }
    let mut netns: Vec<(String, String)> = lab
        .pods
        .iter()
        .map(|p| {
            (
                names::netns(&lab.name, &p.name),
                names::host_veth(&lab.name, &p.name),
            )
        })
        // A name this lab's file implies but another lab has recorded is theirs.
        .filter(|(ns, _)| !others.iter().any(|(_, o)| o.netns.contains(ns)))
        .collect();
    let node_netns: Vec<String> = lab
        .nodes
        .iter()
        .map(|n| names::netns(&lab.name, &n.name))
        .collect();
    for ns in host::netns_list()? {
        if ns.starts_with(&prefix)
            && !netns.iter().any(|(n, _)| *n == ns)
            && !node_netns.contains(&ns)
            && !others.iter().any(|(_, o)| o.is_match(&ns))
        {
            let pod = &ns[prefix.len()..];
            netns.push((ns.clone(), names::host_veth(&lab.name, pod)));
        }
    }
    for (ns, veth) in &netns {
        stop_pod(ns, None);
        remove_pod_net(ns, veth);
    }
    for pod in &lab.pods {
        let peer = names::peer_veth(&lab.name, &pod.name);
        if host::link_exists(&peer) {
            let _ = host::ip(&["link", "del", &peer]);
        }
    }
    for node in &nodes {
        remove_node(&lab.name, &node.name);
    }
    let held = |a: &std::net::Ipv4Addr| others.iter().any(|(_, o)| o.addresses.contains(a));
    if let Some((_, fabric)) = lab.node_net.filter(|(_, f)| !held(f)) {
        remove_gateway(fabric, None);
    }
    if !held(&lab.gateway) {
        remove_gateway(lab.gateway, lab.gateway6);
    }
    let dir = state::lab_dir(&lab.name);
    // A node the state did not record (or a renamed one) keeps its bpffs here.
    unmount_under(&dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| LabError::State { path: dir, source })?;
    }
    Ok(())
}

/// Finds a lab's state by name, or the only lab when no name is given.
pub fn find_state(name: Option<&str>) -> Result<LabState, LabError> {
    let labs = LabState::all();
    match name {
        Some(n) => labs
            .into_iter()
            .find(|l| l.name == n)
            .ok_or_else(|| LabError::NotFound(format!("no lab named {n:?} is up"))),
        None => {
            let mut labs = labs.into_iter();
            match (labs.next(), labs.next()) {
                (Some(l), None) => Ok(l),
                (None, _) => Err(LabError::NotFound(
                    "no lab is up (run `loupe lab up`)".into(),
                )),
                (Some(_), Some(_)) => Err(LabError::NotFound(
                    "several labs are up; name one with --lab".into(),
                )),
            }
        }
    }
}

/// Finds a pod by deployment name or pod name.
pub fn find_pod<'a>(state: &'a LabState, pod: &str) -> Result<&'a PodState, LabError> {
    state
        .pods
        .iter()
        .find(|p| p.name == pod || p.pod_name == pod)
        .ok_or_else(|| {
            let known: Vec<&str> = state.pods.iter().map(|p| p.name.as_str()).collect();
            LabError::NotFound(format!(
                "no pod {pod:?} in lab {} (pods: {})",
                state.name,
                known.join(", ")
            ))
        })
}

/// The namespace `lab exec` runs in: a pod's (by deployment or pod name) or a
/// node's (by node name).
pub fn exec_target(state: &LabState, name: &str) -> Result<String, LabError> {
    if let Some(node) = state.nodes.iter().find(|n| n.name == name) {
        return Ok(node.netns.clone());
    }
    find_pod(state, name).map(|p| p.netns.clone())
}

/// Replaces this process with `argv` run inside the namespace `netns`.
pub fn exec(netns: &str, argv: &[String]) -> std::io::Error {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .env("PATH", pod_path())
        .exec()
}
