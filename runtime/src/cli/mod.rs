//! The `loupe` command line: one binary, one subcommand per job.

mod endpoint;
mod lab;
pub mod observe;
mod plugin;
mod plugin_new;
mod policy;
pub mod print;
pub mod replay;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{AgentConfig, DEFAULT_SOCKET};
use crate::{agent, proxy, relay};

/// Loupe: eBPF network observability and policy, with WebAssembly L7 parsers.
#[derive(Debug, Parser)]
#[command(name = "loupe", version = crate::VERSION, about)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "LOUPE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// `--socket` (or `LOUPE_SOCKET`) was given, not defaulted: it then wins over
    /// `socketPath` in an agent's config file, as flags do.
    #[arg(skip)]
    pub socket_given: bool,
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
    /// CiliumNetworkPolicy: validate, apply, delete, list.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Remove the pinned datapath: detach every program and drop its maps (stop the
    /// agent first). Enforcement ends.
    Cleanup {
        /// Pin path of the datapath.
        #[arg(long, default_value = loupe_common::PIN_ROOT)]
        pin_path: PathBuf,
        /// Really do it.
        #[arg(long)]
        force: bool,
    },
    /// Print flows, as `hubble observe` does.
    Observe(Box<observe::ObserveArgs>),
    /// The agent's health (non-zero exit while unhealthy).
    Status(status::StatusArgs),
    /// L7 parser plugins in the running agent.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run a pcap / pcapng capture through the L7 engine and print its L7 flows.
    Replay(Box<replay::ReplayArgs>),
    /// Serve every node's flows as one Observer (Hubble Relay's job).
    Relay(Box<relay::RelayArgs>),
}

impl Cli {
    /// The process's command line, noting which global flags were given.
    pub fn from_env() -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let matches = Self::command().get_matches();
        let given = !matches!(
            matches.value_source("socket"),
            None | Some(clap::parser::ValueSource::DefaultValue)
        );
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cli.socket_given = given;
        cli
    }
}

/// Runs the parsed command line; the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Agent { config } => {
            let config = match config {
                // Flags win over the file.
                Some(path) if cli.socket_given => AgentConfig {
                    socket_path: cli.socket,
                    ..AgentConfig::load(&path)?
                },
                Some(path) => AgentConfig::load(&path)?,
                None => AgentConfig {
                    socket_path: cli.socket,
                    ..AgentConfig::default()
                },
            };
            // Before the first thread: every thread inherits the reduced sets.
            agent::privileges::drop_unused(&config)?;
            runtime()?.block_on(agent::run(config, shutdown_signal()))?;
            Ok(0)
        }
        Command::Lab(cmd) => lab::run(cmd),
        Command::Endpoint(cmd) => runtime()?.block_on(endpoint::run(cmd, &cli.socket)),
        Command::Policy(cmd) => runtime()?.block_on(policy::run(cmd, &cli.socket)),
        Command::Cleanup { pin_path, force } => {
            if !force {
                anyhow::bail!(
                    "this detaches Loupe from every endpoint and ends enforcement; add --force"
                );
            }
            if std::os::unix::net::UnixStream::connect(&cli.socket).is_ok() {
                anyhow::bail!(
                    "an agent answers on {}; stop it first",
                    cli.socket.display()
                );
            }
            // Links first: unpinning the last reference detaches the program.
            let links = pin_path.join("links");
            let detached = std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
            if links.exists() {
                std::fs::remove_dir_all(&links)?;
            }
            if pin_path.exists() {
                std::fs::remove_dir_all(&pin_path)?;
            }
            proxy::routing::remove();
            println!("removed {} ({detached} links)", pin_path.display());
            Ok(0)
        }
        Command::Observe(args) => runtime()?.block_on(observe::run(*args, &cli.socket)),
        Command::Status(args) => runtime()?.block_on(status::run(args, &cli.socket)),
        Command::Plugin(cmd) => runtime()?.block_on(plugin::run(cmd, &cli.socket)),
        Command::Replay(args) => replay::run(*args),
        Command::Relay(args) => {
            runtime()?.block_on(relay::run(*args, shutdown_signal()))?;
            Ok(0)
        }
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
