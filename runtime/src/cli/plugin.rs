//! `loupe plugin install | list | inspect | remove | new`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use loupe_proto::plugin::{
    InspectRequest, InstallRequest, ListRequest, RemoveRequest, plugins_client::PluginsClient,
};

use crate::api::client;

/// Plugin subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check, store and activate a plugin component (no agent restart).
    Install {
        /// The component (`.wasm`, built for wasm32-wasip2).
        file: PathBuf,
        /// Install under this name (default: the plugin's own).
        #[arg(long)]
        name: Option<String>,
        /// Attach to these ports (default: the plugin's default ports).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        /// Replace a plugin of another protocol even if policies in force use it.
        #[arg(long)]
        force: bool,
    },
    /// Installed plugins with their counters.
    List {
        /// Print JSON, one plugin per line.
        #[arg(short, long)]
        json: bool,
    },
    /// A plugin's field schema.
    Inspect {
        /// Installed name.
        name: String,
    },
    /// Start a plugin crate of your own (outside this repository): a working
    /// parser skeleton, native tests, a harness test, a fuzz target, its README.
    New {
        /// The protocol's name (`[a-z][a-z0-9-]*`): the plugin's and `l7proto`'s.
        name: String,
        /// Where to create `loupe-plugin-NAME/` (default: here).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Loupe's `sdk/` directory (default: the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Uninstall a plugin (open connections finish on it).
    Remove {
        /// Installed name.
        name: String,
        /// Remove it even if policies in force use it (their connections then
        /// fail closed).
        #[arg(long)]
        force: bool,
    },
}

/// The bytes of a plugin file: a regular file named directly, never what a
/// symbolic link points at (the CLI may run as root; the agent gets the bytes).
fn read_plugin_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                anyhow::anyhow!(
                    "{} is a symbolic link; give the plugin file itself",
                    path.display()
                )
            } else {
                anyhow::anyhow!("reading {}: {e}", path.display())
            }
        })?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    let limit = crate::plugin::host::MAX_PLUGIN_BYTES;
    let too_big = |len: u64| {
        anyhow::anyhow!(
            "{} is {len} bytes; a plugin may be at most {limit} bytes",
            path.display()
        )
    };
    if meta.len() > limit as u64 {
        return Err(too_big(meta.len()));
    }
    // Read at most one byte past the limit: a file growing meanwhile is caught too.
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

pub(super) async fn run(cmd: PluginCommand, socket: &Path) -> anyhow::Result<i32> {
    if let PluginCommand::New { name, dir, sdk } = cmd {
        let made = super::plugin_new::create(&name, &dir, sdk.as_deref())?;
        println!("created {}", made.display());
        println!(
            "  cd {} && cargo test && cargo build --release --target wasm32-wasip2",
            made.display()
        );
        return Ok(0);
    }
    let mut client = PluginsClient::new(client::connect(socket).await?);
    match cmd {
        PluginCommand::Install {
            file,
            name,
            ports,
            force,
        } => {
            let wasm = read_plugin_file(&file)?;
            let reply = client
                .install(InstallRequest {
                    wasm,
                    name: name.unwrap_or_default(),
                    ports: ports.into_iter().map(u32::from).collect(),
                    force,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", file.display(), s.message()))?
                .into_inner();
            if let Some(p) = reply.plugin {
                println!(
                    "installed {} {} ({}) on ports {} sha256:{}",
                    p.name,
                    p.version,
                    p.protocol,
                    ports_text(&p.ports),
                    p.sha256
                );
            }
        }
        PluginCommand::List { json } => {
            let plugins = client.list(ListRequest {}).await?.into_inner().plugins;
            if json {
                for p in &plugins {
                    let c = p.counters.unwrap_or_default();
                    let value = serde_json::json!({
                        "name": p.name, "version": p.version, "protocol": p.protocol,
                        "ports": p.ports, "sha256": p.sha256, "state": p.state,
                        "contract": p.contract,
                        "counters": {
                            "calls": c.calls, "bytes": c.bytes, "messages": c.messages,
                            "parseNanos": c.parse_nanos, "parseErrors": c.parse_errors,
                            "traps": c.traps, "deadlineKills": c.deadline_kills,
                            "memoryKills": c.memory_kills, "violations": c.violations,
                            "instancesCreated": c.instances_created, "memoryBytes": c.memory_bytes,
                        },
                    });
                    println!("{value}");
                }
                return Ok(0);
            }
            println!(
                "{:<16} {:<10} {:<12} {:<14} {:<14} {:<10} {:>8} {:>8} {:>6} STATE",
                "NAME",
                "VERSION",
                "PROTOCOL",
                "PORTS",
                "SHA256",
                "CALLS",
                "MESSAGES",
                "BYTES",
                "TRAPS"
            );
            for p in &plugins {
                let c = p.counters.unwrap_or_default();
                println!(
                    "{:<16} {:<10} {:<12} {:<14} {:<14} {:<10} {:>8} {:>8} {:>6} {}",
                    p.name,
                    p.version,
                    p.protocol,
                    ports_text(&p.ports),
                    p.sha256.get(..12).unwrap_or(&p.sha256),
                    c.calls,
                    c.messages,
                    c.bytes,
                    c.traps,
                    p.state
                );
            }
        }
        PluginCommand::Inspect { name } => {
            let r = client
                .inspect(InspectRequest { name })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if let Some(p) = &r.plugin {
                println!("name:      {}", p.name);
                println!("version:   {}", p.version);
                println!("protocol:  {} ({})", p.protocol, r.transport);
                println!("ports:     {}", ports_text(&p.ports));
                println!("contract:  loupe:plugin@{}", p.contract);
                println!("sha256:    {}", p.sha256);
                println!("state:     {}", p.state);
            }
            println!("fields:");
            for f in &r.fields {
                let ty = if f.repeated {
                    format!("[{}]", f.r#type)
                } else {
                    f.r#type.clone()
                };
                println!("  {:<16} {:<9} {}", f.name, ty, f.description);
            }
        }
        PluginCommand::Remove { name, force } => {
            client
                .remove(RemoveRequest {
                    name: name.clone(),
                    force,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            println!("removed {name}");
        }
        // Made above, without an agent.
        PluginCommand::New { .. } => {}
    }
    Ok(0)
}

fn ports_text(ports: &[u32]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("p.wasm");
        std::fs::write(&real, b"\0asm").unwrap();
        assert_eq!(read_plugin_file(&real).unwrap(), b"\0asm");
        let link = dir.path().join("link.wasm");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = read_plugin_file(&link).unwrap_err().to_string();
        assert!(
            e.ends_with("is a symbolic link; give the plugin file itself"),
            "{e}"
        );
        let e = read_plugin_file(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("is not a regular file") || e.contains("reading"),
            "{e}"
        );
        // A file past the agent's limit is refused before it is read (sparse here).
        let huge = dir.path().join("huge.wasm");
        let limit = crate::plugin::host::MAX_PLUGIN_BYTES as u64;
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(limit + 1)
            .unwrap();
        let e = read_plugin_file(&huge).unwrap_err().to_string();
        assert!(
            e.ends_with(&format!(
                "is {} bytes; a plugin may be at most {limit} bytes",
                limit + 1
            )),
            "{e}"
        );
    }
}
