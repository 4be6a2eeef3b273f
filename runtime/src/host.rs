//! Host operations through iproute2: network namespaces, veth pairs, addresses,
//! routes, policy rules, sysctls and processes (the lab builds pods with them; the
//! proxy installs its policy routing with them).
//!
//! iproute2 is the interface operators already read in bug reports, so every step a
//! lab takes is a command they could type; each failure names the command and its
//! stderr.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A host command that failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The program could not be started.
    #[error("running `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The program exited non-zero.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file under /proc/sys or /etc/netns could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs a program to completion; its stdout on success.
pub fn run(program: &str, args: &[&str]) -> Result<String, HostError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS…`.
pub fn ip(args: &[&str]) -> Result<String, HostError> {
    run("ip", args)
}

/// Names of the network namespaces that exist.
pub fn netns_list() -> Result<Vec<String>, HostError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Whether a link of that name exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The interface index of a host link.
pub fn ifindex(name: &str) -> Result<u32, HostError> {
    let path = format!("/sys/class/net/{name}/ifindex");
    let text = std::fs::read_to_string(&path).map_err(|source| HostError::Write {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| HostError::Failed {
        command: format!("read {path}"),
        stderr: format!("not a number: {text:?}"),
    })
}

/// Writes a sysctl of the host namespace.
pub fn sysctl(key: &str, value: &str) -> Result<(), HostError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|source| HostError::Write { path, source })
}

/// Reads a sysctl of the host namespace.
pub fn sysctl_get(key: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// PIDs of the processes whose network namespace is `netns`.
pub fn netns_pids(netns: &str) -> Vec<i32> {
    ip(&["netns", "pids", netns])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Stops processes: SIGTERM, then SIGKILL for those still alive after `grace`.
pub fn terminate(pids: &[i32], grace: Duration) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // Reap our own children so none linger as zombies.
    for &pid in pids {
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}
