//! `loupe lab up | down | status | exec`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::host;
use crate::lab::{self, LabFile, LabState, UpOutcome};

/// Lab subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab (idempotent; cleans up after a crashed run).
    Up {
        /// Lab file.
        #[arg(short, long, default_value_os_t = default_lab_file())]
        file: PathBuf,
    },
    /// Remove every namespace, link, route and process the lab made.
    Down {
        /// Lab file (to also clean names a crashed run did not record).
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// Lab name (default: the only lab that is up).
        #[arg(long)]
        lab: Option<String>,
    },
    /// Show the lab's pods and their health.
    Status {
        /// Lab name.
        #[arg(long)]
        lab: Option<String>,
        /// Print the state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a pod (`loupe lab exec frontend -- curl http://api-service/get`)
    /// or a node (`loupe lab exec node-a -- ip route`).
    Exec {
        /// Lab name.
        #[arg(long)]
        lab: Option<String>,
        /// Pod (deployment name or pod name) or node name.
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// `lab/demo-app.yaml` of the working directory, else of the source tree.
fn default_lab_file() -> PathBuf {
    let local = PathBuf::from("lab/demo-app.yaml");
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/demo-app.yaml")
}

pub(super) fn run(cmd: LabCommand) -> anyhow::Result<i32> {
    match cmd {
        LabCommand::Up { file } => {
            let lab = LabFile::load(&file)?;
            match lab::up(&lab, &file)? {
                UpOutcome::Created(state) => {
                    println!("lab {} is up:", state.name);
                    print_pods(&state);
                }
                UpOutcome::AlreadyUp(state) => {
                    println!("lab {} is already up:", state.name);
                    print_pods(&state);
                }
                UpOutcome::AgentsRestarted(state, nodes) => {
                    println!(
                        "lab {} is up; restarted the agents of {}:",
                        state.name,
                        nodes.join(", ")
                    );
                    print_pods(&state);
                }
            }
            Ok(0)
        }
        LabCommand::Down { file, lab: name } => {
            if let Some(file) = file {
                let lab = LabFile::load(&file)?;
                lab::down_names(&lab)?;
                println!("lab {} is down", lab.name);
                return Ok(0);
            }
            match lab::find_state(name.as_deref()) {
                Ok(state) => {
                    lab::teardown(&state)?;
                    println!("lab {} is down", state.name);
                }
                Err(lab::LabError::NotFound(msg)) => println!("{msg}: nothing to do"),
                Err(e) => return Err(e.into()),
            }
            Ok(0)
        }
        LabCommand::Status { lab: name, json } => {
            let state = lab::find_state(name.as_deref())?;
            let healthy = state.ready && lab::healthy(&state);
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                println!(
                    "lab {} (namespace {}): {}",
                    state.name,
                    state.namespace,
                    if healthy { "healthy" } else { "DEGRADED" }
                );
                print_pods(&state);
            }
            Ok(if healthy { 0 } else { 1 })
        }
        LabCommand::Exec {
            lab: name,
            pod,
            command,
        } => {
            let state = lab::find_state(name.as_deref())?;
            let netns = lab::exec_target(&state, &pod)?;
            let err = lab::exec(&netns, &command);
            Err(anyhow::anyhow!("exec {command:?} in {netns}: {err}"))
        }
    }
}

fn print_pods(state: &LabState) {
    if !state.nodes.is_empty() {
        println!(
            "  {:<12} {:<14} {:<16} {:<22} {:<8} SOCKET",
            "NODE", "ADDRESS", "POD CIDR", "OBSERVER", "AGENT"
        );
        for node in &state.nodes {
            println!(
                "  {:<12} {:<14} {:<16} {:<22} {:<8} {}",
                node.name,
                node.address,
                node.pod_cidr,
                node.observer,
                match node.agent_pid {
                    Some(pid) if host::alive(pid) => pid.to_string(),
                    Some(_) => "dead".into(),
                    None => "-".into(),
                },
                node.socket.display()
            );
        }
    }
    println!(
        "  {:<28} {:<16} {:<22} {:<12} {:<8} {:<8} LABELS",
        "POD", "IPV4", "IPV6", "INTERFACE", "NODE", "PID"
    );
    for pod in &state.pods {
        let alive = pod.pid.is_some_and(host::alive);
        println!(
            "  {:<28} {:<16} {:<22} {:<12} {:<8} {:<8} {}",
            format!("{}/{}", state.namespace, pod.pod_name),
            pod.ipv4,
            pod.ipv6
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            pod.host_if,
            pod.node.as_deref().unwrap_or("-"),
            match (pod.pid, alive) {
                (Some(pid), true) => pid.to_string(),
                (Some(_), false) => "dead".into(),
                (None, _) => "-".into(),
            },
            pod.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
    }
}
