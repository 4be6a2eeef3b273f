//! The `loupe` command line: one binary, one subcommand per job.

mod endpoint;
mod lab;
mod plugin;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{AgentConfig, DEFAULT_SOCKET};

/// Loupe: eBPF network observability and policy, with WebAssembly L7 parsers.
#[derive(Debug, Parser)]
#[command(name = "loupe", version = crate::VERSION, about)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "LOUPE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground.
    Agent {
        /// Configuration file (YAML, Helm-values style).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Build, inspect and tear down the demo lab.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Endpoints known to the agent.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// L7 parser plugins in the running agent.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// Runs the parsed command line; the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Agent { config } => {
            let config = match config {
                Some(path) => AgentConfig::load(&path)?,
                None => AgentConfig {
                    socket_path: cli.socket,
                    ..AgentConfig::default()
                },
            };
            runtime()?.block_on(crate::agent::run(config, shutdown_signal()))?;
            Ok(0)
        }
        Command::Lab(cmd) => lab::run(cmd),
        Command::Endpoint(cmd) => runtime()?.block_on(endpoint::run(cmd, &cli.socket)),
        Command::Plugin(cmd) => runtime()?.block_on(plugin::run(cmd, &cli.socket)),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
