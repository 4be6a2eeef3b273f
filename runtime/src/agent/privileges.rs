//! The agent keeps only the capabilities it uses. Before its first thread starts
//! (every later thread inherits what the main thread has), it drops every other
//! capability from its bounding, permitted and effective sets, clears the
//! inheritable and ambient sets and sets `no_new_privs`: a compromised agent, or a
//! child it runs (`ip` for the proxy's policy routing), cannot regain the rest.
//!
//! Kept: `CAP_BPF` (maps and TCX links of endpoints that appear later),
//! `CAP_NET_ADMIN` (TC programs, the proxy's transparent sockets and `SO_MARK`,
//! policy routing), `CAP_PERFMON` (the per-CPU perf buffers the L7 path reads, and
//! verifier checks for tracing helpers), `CAP_IPC_LOCK` (perf buffer pages past the
//! per-CPU perf limit are locked memory), and `CAP_NET_BIND_SERVICE` only when a
//! configured port is below 1024.

use crate::config::AgentConfig;

/// `CAP_*` numbers (linux/capability.h).
mod cap {
    pub(super) const SETPCAP: u32 = 8;
    pub(super) const NET_BIND_SERVICE: u32 = 10;
    pub(super) const NET_ADMIN: u32 = 12;
    pub(super) const IPC_LOCK: u32 = 14;
    pub(super) const PERFMON: u32 = 38;
    pub(super) const BPF: u32 = 39;
}

/// Names of the capabilities an agent with `config` keeps, as `/proc` tools print
/// them.
pub fn kept_names(config: &AgentConfig) -> Vec<&'static str> {
    let mut names = Vec::new();
    for c in kept(config) {
        names.push(match c {
            cap::NET_BIND_SERVICE => "cap_net_bind_service",
            cap::NET_ADMIN => "cap_net_admin",
            cap::IPC_LOCK => "cap_ipc_lock",
            cap::PERFMON => "cap_perfmon",
            cap::BPF => "cap_bpf",
            _ => "unknown",
        });
    }
    names
}

fn kept(config: &AgentConfig) -> Vec<u32> {
    let mut keep = vec![cap::NET_ADMIN, cap::IPC_LOCK, cap::PERFMON, cap::BPF];
    let low = |port: u16| port != 0 && port < 1024;
    let listen = config.hubble_listen_address().map_or(0, |a| a.port());
    if [
        listen,
        config.prometheus.port,
        config.hubble.metrics.port,
        config.l7.proxy_port,
    ]
    .into_iter()
    .any(low)
    {
        keep.push(cap::NET_BIND_SERVICE);
    }
    keep.sort_unstable();
    keep
}

/// Error dropping capabilities.
#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities: {what}: {source}")]
pub struct PrivilegeError {
    what: String,
    source: std::io::Error,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability but the kept ones, for this thread and every thread
/// it starts later. Call while the process has one thread. Kept capabilities the
/// process does not have stay missing (a warning names them); without
/// `CAP_SETPCAP` the bounding set stays as it is, everything else is still done.
pub fn drop_unused(config: &AgentConfig) -> Result<(), PrivilegeError> {
    let fail = |what: &str| {
        // Read before anything else can overwrite errno.
        let source = std::io::Error::last_os_error();
        PrivilegeError {
            what: what.to_string(),
            source,
        }
    };
    let keep = kept(config);
    let (mut now, mut header) = ([CapData::default(); 2], v3_header());
    // SAFETY: capget with a v3 header and room for two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, now.as_mut_ptr()) } != 0 {
        return Err(fail("capget"));
    }
    let has = |c: u32| now[(c / 32) as usize].permitted & (1 << (c % 32)) != 0;
    let missing: Vec<u32> = keep.iter().copied().filter(|c| !has(*c)).collect();
    if !missing.is_empty() {
        tracing::warn!(
            capabilities = ?missing,
            "the agent lacks capabilities it uses; enforcement may fail"
        );
    }
    if now[0].effective & (1 << cap::SETPCAP) != 0 {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(cap::BPF);
        for c in (0..=last).filter(|c| !keep.contains(c)) {
            // SAFETY: plain prctl with integer arguments.
            let dropped = unsafe {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    libc::c_ulong::from(c),
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if dropped != 0 {
                return Err(fail(&format!("bounding set, capability {c}")));
            }
        }
    }
    // SAFETY: plain prctl with integer arguments.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if cleared != 0 {
        return Err(fail("ambient set"));
    }
    let mut bits = [0u32; 2];
    for c in &keep {
        bits[(c / 32) as usize] |= 1 << (c % 32);
    }
    // Never more than the process has: capset refuses to grow the permitted set.
    let data = [0, 1].map(|i| CapData {
        effective: bits[i] & now[i].permitted,
        permitted: bits[i] & now[i].permitted,
        inheritable: 0,
    });
    let mut header = v3_header();
    // SAFETY: capset with a v3 header and two data words.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(fail("capset"));
    }
    // SAFETY: plain prctl with integer arguments.
    let no_new = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if no_new != 0 {
        return Err(fail("no_new_privs"));
    }
    Ok(())
}

fn v3_header() -> CapHeader {
    CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_ports_keep_the_bind_capability_only_when_configured() {
        let mut config = AgentConfig::default();
        assert_eq!(
            kept_names(&config),
            ["cap_net_admin", "cap_ipc_lock", "cap_perfmon", "cap_bpf"]
        );
        config.prometheus.port = 443;
        assert!(kept_names(&config).contains(&"cap_net_bind_service"));
    }
}
