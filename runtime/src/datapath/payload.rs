//! Reading the packets the datapath copies for L7 visibility: one perf buffer per
//! CPU, each record a [`PayloadEvent`] header followed by the packet from its
//! Ethernet header on.

use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use aya::maps::perf::{PerfEvent, PerfEventArrayBuffer};
use aya::maps::{Map, MapData, PerfEventArray};
use loupe_common::PayloadEvent;
use tokio::io::unix::AsyncFd;

use super::events::BootClock;

/// A copied packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPacket {
    /// Wall-clock time.
    pub time: SystemTime,
    /// The header.
    pub header: PayloadEvent,
    /// The packet (Ethernet frame), possibly cut at [`loupe_common::MAX_PAYLOAD_COPY`].
    pub frame: Vec<u8>,
}

/// Counters of the payload path.
#[derive(Debug, Default)]
pub struct PayloadStats {
    /// Records read.
    pub packets: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Records the kernel dropped (buffer full).
    pub lost: AtomicU64,
    /// Records too short to hold their header.
    pub malformed: AtomicU64,
}

/// Decodes one perf sample.
pub fn decode(sample: &[u8], clock: &BootClock) -> Option<PayloadPacket> {
    let size = std::mem::size_of::<PayloadEvent>();
    if sample.len() < size {
        return None;
    }
    // SAFETY: `PayloadEvent` is `#[repr(C)]` plain data; the length was checked.
    let header: PayloadEvent = unsafe { std::ptr::read_unaligned(sample.as_ptr().cast()) };
    let frame = sample.get(size..size + header.len as usize)?.to_vec();
    Some(PayloadPacket {
        time: clock.to_wall(header.ts_ns),
        header,
        frame,
    })
}

/// Opens a buffer of `pages` pages per CPU and hands every packet to `sink` from
/// one task per CPU, until the runtime stops.
pub fn start(
    map: Map,
    pages: usize,
    stats: Arc<PayloadStats>,
    sink: impl Fn(PayloadPacket) + Send + Sync + 'static,
) -> Result<(), std::io::Error> {
    let mut array: PerfEventArray<MapData> =
        PerfEventArray::try_from(map).map_err(std::io::Error::other)?;
    let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
    let sink = Arc::new(sink);
    for cpu in cpus {
        let buffer = PerfEventArrayBuffer::open(cpu, pages).map_err(std::io::Error::other)?;
        array.set(cpu, &buffer).map_err(std::io::Error::other)?;
        // SAFETY: the buffer owns its perf fd for as long as the AsyncFd owns the
        // buffer, and always reports that same fd.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(buffer, tokio::io::Interest::READABLE) }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        let sink = sink.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let clock = BootClock::now();
            let mut scratch = Vec::new();
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    tracing::error!(
                        cpu,
                        "payload buffer unreadable; L7 copies from this CPU stop"
                    );
                    return;
                };
                let buffer = guard.get_inner_mut();
                let raw = buffer.as_raw_fd();
                buffer.for_each(|event| match event {
                    PerfEvent::Sample { head, tail } => {
                        let sample = if tail.is_empty() {
                            head
                        } else {
                            scratch.clear();
                            scratch.extend_from_slice(head);
                            scratch.extend_from_slice(tail);
                            &scratch[..]
                        };
                        match decode(sample, &clock) {
                            Some(packet) => {
                                stats.packets.fetch_add(1, Ordering::Relaxed);
                                stats
                                    .bytes
                                    .fetch_add(packet.frame.len() as u64, Ordering::Relaxed);
                                sink(packet);
                            }
                            None => {
                                stats.malformed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    PerfEvent::Lost { count } => {
                        stats.lost.fetch_add(count, Ordering::Relaxed);
                        tracing::warn!(
                            cpu,
                            fd = raw,
                            lost = count,
                            "L7 payload copies lost: buffer full"
                        );
                    }
                });
                guard.clear_ready();
            }
        });
    }
    // The array must outlive the tasks: the kernel writes through its slots.
    std::mem::forget(array);
    Ok(())
}
