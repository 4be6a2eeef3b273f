//! What one plugin instance may use: CPU per call (an epoch deadline), linear
//! memory (`StoreLimits`), and how many instances the pooling allocator holds.

use std::time::Duration;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one call into a plugin may take before it is stopped.
    pub deadline: Duration,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Instances the pooling allocator reserves room for (workers × plugin
    /// versions in use, plus one for install-time checks).
    pub instances: u32,
    /// Bytes a connection may buffer in one direction while a plugin waits for
    /// the end of a message; past it the connection gets a parse error.
    pub max_pending_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(100),
            memory_bytes: 32 << 20,
            instances: 64,
            max_pending_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Epoch ticks per deadline. The ticker runs at `deadline / TICKS_PER_DEADLINE`,
    /// so a call is stopped after between 7/8 and 8/8 of the deadline (plus
    /// scheduling delay of the ticker thread).
    pub(crate) const TICKS_PER_DEADLINE: u64 = 8;

    /// The epoch ticker's period.
    pub(crate) fn tick(&self) -> Duration {
        (self.deadline / Self::TICKS_PER_DEADLINE as u32).max(Duration::from_micros(100))
    }
}

/// A store's resource limiter: `StoreLimits` for the cap, plus what the host
/// reports (current memory, whether a growth was refused).
pub(crate) struct Limiter {
    inner: StoreLimits,
    /// Linear memory in bytes after the last permitted growth.
    pub(crate) memory: usize,
    /// A growth was refused: the next trap is an out-of-memory kill.
    pub(crate) refused: bool,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            memory: 0,
            refused: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let verdict = self.inner.memory_growing(current, desired, maximum);
        match verdict {
            Ok(true) => self.memory = desired,
            _ => self.refused = true,
        }
        verdict
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}
