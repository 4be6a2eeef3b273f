//! `loupe policy validate | apply | delete | list`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use loupe_proto::policy::{
    DeleteRequest, ListRequest, PolicyDocuments, PolicyFile, PolicyResult,
    policies_client::PoliciesClient,
};

use crate::api::client;
use crate::policy::parse_path;

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files (offline); with a running agent, also compile them against
    /// its endpoints.
    Validate {
        /// Files or directories of CiliumNetworkPolicy YAML.
        #[arg(required_unless_present = "files")]
        paths: Vec<PathBuf>,
        /// The same with `-f`, as `apply` and kubectl take them.
        #[arg(short = 'f', long = "file")]
        files: Vec<PathBuf>,
        /// Only check the files, do not ask the agent.
        #[arg(long)]
        offline: bool,
    },
    /// Apply policies: all of them, or none if any is invalid.
    Apply {
        /// Files or directories (`-f` as in kubectl is accepted too).
        #[arg(short = 'f', long = "file", required = true)]
        paths: Vec<PathBuf>,
        /// Apply on every node of this multi-node lab (each node's agent), as the
        /// API server hands a policy to every node: checked on all first, so a
        /// node that would refuse it leaves every node as it was.
        #[arg(long)]
        lab: Option<String>,
    },
    /// Delete policies by `namespace/name` (or by the files that define them).
    Delete {
        /// `namespace/name` of each policy.
        keys: Vec<String>,
        /// Files whose policies to delete.
        #[arg(short = 'f', long = "file")]
        paths: Vec<PathBuf>,
        /// Delete on every node of this multi-node lab.
        #[arg(long)]
        lab: Option<String>,
    },
    /// List the policies in force.
    List {
        /// Print each policy's YAML too.
        #[arg(short, long)]
        verbose: bool,
    },
}

fn read_files(paths: &[PathBuf]) -> anyhow::Result<PolicyDocuments> {
    let mut files = Vec::new();
    for path in paths {
        // Parse locally first: a bad file fails here with the same message.
        parse_path(path)?;
        let mut names = Vec::new();
        if path.is_dir() {
            for entry in
                std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
            {
                let p = entry?.path();
                if matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                ) {
                    names.push(p);
                }
            }
            names.sort();
        } else {
            names.push(path.clone());
        }
        for name in names {
            let text = std::fs::read_to_string(&name)
                .with_context(|| format!("reading {}", name.display()))?;
            files.push(PolicyFile {
                name: name.display().to_string(),
                text,
            });
        }
    }
    // The agent takes gRPC messages up to 4 MiB; say so before sending more.
    let total: usize = files.iter().map(|f| f.text.len() + f.name.len()).sum();
    if total > REQUEST_LIMIT {
        anyhow::bail!(
            "the policy files hold {:.1} MiB; one request carries at most {} MiB: apply them in parts",
            total as f64 / f64::from(1 << 20),
            REQUEST_LIMIT >> 20
        );
    }
    Ok(PolicyDocuments { files })
}

/// What one apply / validate request may carry (tonic's default message limit,
/// less room for the envelope).
const REQUEST_LIMIT: usize = (4 << 20) - (64 << 10);

fn print_result(verb: &str, result: &PolicyResult) {
    for (i, key) in result.policies.iter().enumerate() {
        let selected = result
            .selected
            .get(i)
            .map(|s| s.endpoints.join(", "))
            .unwrap_or_default();
        let selected = if selected.is_empty() {
            "no endpoints".to_string()
        } else {
            selected
        };
        println!("{verb} {key} (selects: {selected})");
    }
    println!(
        "policy revision {}, {} policy map entries",
        result.revision, result.entries
    );
}

/// Clients of the agents a command goes to: every node's of `lab` (by node
/// name), else the one at `socket` (unnamed); all connected before any is used.
async fn connect_all(
    socket: &Path,
    lab: Option<&str>,
) -> anyhow::Result<Vec<(String, PoliciesClient<tonic::transport::Channel>)>> {
    let agents = match lab {
        None => vec![(String::new(), socket.to_path_buf())],
        Some(name) => {
            let state = crate::lab::find_state(Some(name))?;
            if state.nodes.is_empty() {
                anyhow::bail!("lab {name} has no nodes: its agent is the one at --socket");
            }
            state
                .nodes
                .into_iter()
                .map(|n| (n.name, n.socket))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(agents.len());
    for (node, path) in agents {
        let channel = client::connect(&path).await.map_err(|e| {
            let e = anyhow::Error::new(e);
            if node.is_empty() {
                e
            } else {
                e.context(format!("node {node}"))
            }
        })?;
        out.push((node, PoliciesClient::new(channel)));
    }
    Ok(out)
}

/// An agent's refusal, naming its node when there are several.
fn on_node(node: &str, status: tonic::Status) -> anyhow::Error {
    if node.is_empty() {
        anyhow::anyhow!("{}", status.message())
    } else {
        anyhow::anyhow!("node {node}: {}", status.message())
    }
}

pub(super) async fn run(cmd: PolicyCommand, socket: &Path) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Validate {
            mut paths,
            files,
            offline,
        } => {
            paths.extend(files);
            let mut count = 0;
            for path in &paths {
                count += parse_path(path)?.len();
            }
            if offline {
                println!("{count} policies valid");
                return Ok(0);
            }
            let docs = read_files(&paths)?;
            match client::connect(socket).await {
                Ok(channel) => {
                    let result = PoliciesClient::new(channel)
                        .validate(docs)
                        .await?
                        .into_inner();
                    print_result("valid", &result);
                }
                Err(_) => println!(
                    "{count} policies valid (no agent reachable: not compiled against endpoints)"
                ),
            }
            Ok(0)
        }
        PolicyCommand::Apply { paths, lab } => {
            let docs = read_files(&paths)?;
            let mut nodes = connect_all(socket, lab.as_deref()).await?;
            if nodes.len() > 1 {
                // Every node must take it before any does.
                for (node, client) in &mut nodes {
                    client
                        .validate(docs.clone())
                        .await
                        .map_err(|s| on_node(node, s))?;
                }
            }
            for (node, client) in &mut nodes {
                let result = client
                    .apply(docs.clone())
                    .await
                    .map_err(|s| on_node(node, s))?
                    .into_inner();
                if !node.is_empty() {
                    println!("node {node}:");
                }
                print_result("applied", &result);
            }
            Ok(0)
        }
        PolicyCommand::Delete {
            mut keys,
            paths,
            lab,
        } => {
            for path in &paths {
                keys.extend(parse_path(path)?.iter().map(crate::policy::Policy::key));
            }
            if keys.is_empty() {
                anyhow::bail!("name policies as namespace/name, or give -f FILE");
            }
            let mut nodes = connect_all(socket, lab.as_deref()).await?;
            if nodes.len() > 1 {
                // Every node must have them before any deletes.
                for (node, client) in &mut nodes {
                    let list = client
                        .list(ListRequest {})
                        .await
                        .map_err(|s| on_node(node, s))?
                        .into_inner();
                    let missing: Vec<&String> = keys
                        .iter()
                        .filter(|k| !list.policies.iter().any(|p| p.key == **k))
                        .collect();
                    if !missing.is_empty() {
                        anyhow::bail!(
                            "node {node}: no policy {missing:?}; nothing was deleted on any node"
                        );
                    }
                }
            }
            for (node, client) in &mut nodes {
                let result = client
                    .delete(DeleteRequest { keys: keys.clone() })
                    .await
                    .map_err(|s| on_node(node, s))?
                    .into_inner();
                if !node.is_empty() {
                    println!("node {node}:");
                }
                for key in &result.policies {
                    println!("deleted {key}");
                }
                println!(
                    "policy revision {}, {} policy map entries",
                    result.revision, result.entries
                );
            }
            Ok(0)
        }
        PolicyCommand::List { verbose } => {
            let mut client = PoliciesClient::new(client::connect(socket).await?);
            let list = client.list(ListRequest {}).await?.into_inner();
            println!("{:<40} {:<40} SELECTS", "POLICY", "SOURCE");
            for p in &list.policies {
                println!("{:<40} {:<40} {}", p.key, p.source, p.selected.join(","));
                if verbose {
                    println!("{}", p.document);
                }
            }
            println!("revision {}", list.revision);
            Ok(0)
        }
    }
}
