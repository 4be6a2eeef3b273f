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

/// What the reader hands on: packets, and after every pass over all CPUs' buffers
/// a watermark — every copy the datapath stamped before it has been handed on.
#[derive(Debug)]
pub enum PayloadItem {
    /// A copied packet.
    Packet(PayloadPacket),
    /// `CLOCK_BOOTTIME` nanoseconds: no later packet has an earlier stamp.
    Watermark(u64),
}

/// Copies are stamped in the kernel a few microseconds before they land in the
/// buffer: the watermark stays this far behind the start of a pass.
const WATERMARK_MARGIN_NS: u64 = 1_000_000;

/// How long the reader sleeps after a pass that found nothing.
const IDLE_SLEEP: std::time::Duration = std::time::Duration::from_millis(2);

fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec().max(0) as u64) * 1_000_000_000 + t.tv_nsec().max(0) as u64)
        .unwrap_or(0)
}

/// Opens a buffer of `pages` pages per CPU and reads them all from one thread,
/// in passes: each pass drains every CPU's buffer, then hands on a watermark, so
/// the consumer can put copies from different CPUs back in datapath order.
pub fn start(
    map: Map,
    pages: usize,
    stats: Arc<PayloadStats>,
    mut sink: impl FnMut(PayloadItem) + Send + 'static,
) -> Result<(), std::io::Error> {
    let mut array: PerfEventArray<MapData> =
        PerfEventArray::try_from(map).map_err(std::io::Error::other)?;
    let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
    let mut buffers = Vec::new();
    for cpu in cpus {
        let buffer = PerfEventArrayBuffer::open(cpu, pages).map_err(std::io::Error::other)?;
        array.set(cpu, &buffer).map_err(std::io::Error::other)?;
        buffers.push((cpu, buffer));
    }
    std::thread::Builder::new()
        .name("loupe-l7-read".into())
        .spawn(move || {
            // The array must outlive the reads: the kernel writes through its slots.
            let _array = array;
            let clock = BootClock::now();
            let mut scratch = Vec::new();
            loop {
                let pass = boot_ns();
                let mut read = 0usize;
                for (cpu, buffer) in &mut buffers {
                    let raw = buffer.as_raw_fd();
                    buffer.for_each(|event| match event {
                        PerfEvent::Sample { head, tail } => {
                            read += 1;
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
                                    sink(PayloadItem::Packet(packet));
                                }
                                None => {
                                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        PerfEvent::Lost { count } => {
                            stats.lost.fetch_add(count, Ordering::Relaxed);
                            tracing::debug!(
                                cpu = *cpu,
                                fd = raw,
                                lost = count,
                                "L7 payload copies lost: buffer full"
                            );
                        }
                    });
                }
                sink(PayloadItem::Watermark(
                    pass.saturating_sub(WATERMARK_MARGIN_NS),
                ));
                if read == 0 {
                    std::thread::sleep(IDLE_SLEEP);
                }
            }
        })?;
    Ok(())
}
