//! Reading the datapath's event ring buffer.

use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, SystemTime};

use aya::maps::{Map, RingBuf};
use loupe_common::FlowEvent;
use tokio::io::unix::AsyncFd;

use super::unmapped;

/// A decoded datapath event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathEvent {
    /// Wall-clock time of the packet.
    pub time: SystemTime,
    /// The raw record.
    pub raw: FlowEvent,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
}

/// Decodes one ring-buffer record; `None` if it is not a whole [`FlowEvent`].
pub fn decode(bytes: &[u8], clock: &BootClock) -> Option<DatapathEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: `FlowEvent` is `#[repr(C)]` plain data with no invalid bit patterns,
    // and the length was checked; read_unaligned copes with any alignment.
    let raw: FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some(DatapathEvent {
        time: clock.to_wall(raw.ts_ns),
        src: unmapped(raw.saddr),
        dst: unmapped(raw.daddr),
        raw,
    })
}

/// Converts `CLOCK_BOOTTIME` nanoseconds (what the datapath stamps) to wall time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall time minus boot time, sampled at start.
    offset: Duration,
}

impl BootClock {
    /// Samples both clocks now.
    pub fn now() -> Self {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().max(0) as u32))
            .unwrap_or_default();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            offset: wall.saturating_sub(boot),
        }
    }

    /// Wall time of a boot-time stamp.
    pub fn to_wall(&self, boot_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.offset + Duration::from_nanos(boot_ns)
    }
}

/// Reads events until the map goes away, handing each to `sink`. Batches: every
/// wake-up drains the ring before sleeping again.
pub async fn read_events(
    map: Map,
    mut sink: impl FnMut(DatapathEvent) + Send,
) -> Result<(), std::io::Error> {
    let ring = RingBuf::try_from(map).map_err(std::io::Error::other)?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf,
    // and always reports that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let clock = BootClock::now();
    // The datapath wakes us only for large batches; a short timer drains the rest,
    // so a flow is at most one tick late.
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &clock, &mut sink);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(fd.get_mut(), &clock, &mut sink),
        }
    }
}

/// Longest a datapath event waits in the ring when the datapath did not wake us.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

fn drain(
    ring: &mut RingBuf<aya::maps::MapData>,
    clock: &BootClock,
    sink: &mut impl FnMut(DatapathEvent),
) {
    let mut malformed = 0u64;
    while let Some(item) = ring.next() {
        match decode(&item, clock) {
            Some(event) => sink(event),
            None => malformed += 1,
        }
    }
    if malformed > 0 {
        tracing::warn!(
            malformed,
            fd = ring.as_raw_fd(),
            "short datapath event records"
        );
    }
}
