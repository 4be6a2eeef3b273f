//! The `loupe` binary.

use tracing_subscriber::EnvFilter;

// The agent allocates per message on its hot paths (flows, plugin frames, relay
// chunks) from several threads; glibc's allocator spent a fifth of the proxy's
// CPU time there (bench/proxy.sh under perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = loupe_runtime::cli::Cli::from_env();
    if !matches!(cli.command, loupe_runtime::cli::Command::Agent { .. }) {
        // A CLI command dies quietly on a closed pipe (`loupe observe | head`), like
        // other tools. Never the agent: a client hanging up mid-reply would kill it.
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
