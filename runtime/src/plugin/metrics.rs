//! Per-plugin counters: plain atomics bumped once per call (not per message), read
//! by [`PluginMetrics::snapshot`] for `loupe plugin list` and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one installed plugin version, shared by all its instances.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    calls: AtomicU64,
    bytes: AtomicU64,
    messages: AtomicU64,
    parse_nanos: AtomicU64,
    parse_errors: AtomicU64,
    traps: AtomicU64,
    deadline_kills: AtomicU64,
    memory_kills: AtomicU64,
    violations: AtomicU64,
    instances_created: AtomicU64,
    memory_bytes: AtomicU64,
}

/// A consistent-enough copy of a plugin's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Calls into the plugin (`feed`, `sniff`, `deny-reply`, constructors).
    pub calls: u64,
    /// Bytes fed.
    pub bytes: u64,
    /// Messages framed.
    pub messages: u64,
    /// Time spent inside the plugin, in nanoseconds.
    pub parse_nanos: u64,
    /// Connections the plugin declared not to be its protocol.
    pub parse_errors: u64,
    /// Calls that trapped (panics, `unreachable`, out-of-bounds, …), deadline and
    /// memory kills included.
    pub traps: u64,
    /// Calls stopped at the epoch deadline.
    pub deadline_kills: u64,
    /// Calls stopped because the instance hit its memory cap.
    pub memory_kills: u64,
    /// Results the host refused (spans past the buffer, too many messages, …).
    pub violations: u64,
    /// Instances created (the first per worker, then one per discarded instance).
    pub instances_created: u64,
    /// Linear memory of the instance that grew last, in bytes.
    pub memory_bytes: u64,
}

/// How a call ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Trap,
    Deadline,
    Memory,
}

impl PluginMetrics {
    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            calls: self.calls.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            messages: self.messages.load(Relaxed),
            parse_nanos: self.parse_nanos.load(Relaxed),
            parse_errors: self.parse_errors.load(Relaxed),
            traps: self.traps.load(Relaxed),
            deadline_kills: self.deadline_kills.load(Relaxed),
            memory_kills: self.memory_kills.load(Relaxed),
            violations: self.violations.load(Relaxed),
            instances_created: self.instances_created.load(Relaxed),
            memory_bytes: self.memory_bytes.load(Relaxed),
        }
    }

    pub(crate) fn call(&self, bytes: usize, nanos: u64) {
        self.calls.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.parse_nanos.fetch_add(nanos, Relaxed);
    }

    pub(crate) fn messages(&self, n: usize) {
        self.messages.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn parse_error(&self) {
        self.parse_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn violation(&self) {
        self.violations.fetch_add(1, Relaxed);
    }

    pub(crate) fn instance_created(&self) {
        self.instances_created.fetch_add(1, Relaxed);
    }

    pub(crate) fn memory(&self, bytes: usize) {
        self.memory_bytes.store(bytes as u64, Relaxed);
    }

    pub(crate) fn fault(&self, fault: Fault) {
        self.traps.fetch_add(1, Relaxed);
        match fault {
            Fault::Trap => {}
            Fault::Deadline => {
                self.deadline_kills.fetch_add(1, Relaxed);
            }
            Fault::Memory => {
                self.memory_kills.fetch_add(1, Relaxed);
            }
        }
    }
}
