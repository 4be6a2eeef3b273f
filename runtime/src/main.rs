//! The `loupe` binary.

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = loupe_runtime::cli::Cli::parse();
    // Die quietly on a closed pipe (`loupe observe | head`), like other CLI tools —
    // but not the agent: a client that hangs up while the agent answers it on the
    // API socket would kill it (SIGPIPE on the socket write).
    if !matches!(cli.command, loupe_runtime::cli::Command::Agent { .. }) {
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LOUPE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match loupe_runtime::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
