//! TCP reassembly: per connection and direction, segments in, in-order byte
//! chunks out, with every loss reported. `loupe replay` feeds it from captures; the
//! live L7 path feeds it from the datapath's payload copies.
//!
//! Bounded: at most `max_connections` connections (the least recently active is
//! evicted), `max_pending_per_direction` out-of-order bytes per direction, and
//! `max_pending_total` across all of them (past it, holes are skipped, largest
//! backlog first).

pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

pub use stream::{Chunk, Stream, StreamStats};

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A connection, oriented: the client opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The side that sent the SYN (or, for a capture that starts mid-stream, the
    /// source of its first segment that carries bytes).
    pub client: SocketAddr,
    /// The other side.
    pub server: SocketAddr,
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Client to server (requests).
    Client,
    /// Server to client (responses).
    Server,
}

/// A TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// When it was seen.
    pub time: SystemTime,
    /// Source.
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// TCP flags.
    pub flags: u8,
    /// Payload.
    pub payload: &'a [u8],
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN and everything was delivered.
    Fin,
    /// A RST.
    Rst,
    /// No segment for the idle timeout.
    Idle,
    /// Evicted to stay within the connection bound.
    Evicted,
}

/// What reassembly produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was seen for the first time.
    Opened {
        /// The connection.
        key: ConnKey,
        /// When.
        time: SystemTime,
    },
    /// In-order bytes.
    Data {
        /// The connection.
        key: ConnKey,
        /// Direction.
        side: Side,
        /// Time of the segment that completed them.
        time: SystemTime,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Bytes lost before the next data in that direction.
    Gap {
        /// The connection.
        key: ConnKey,
        /// Direction.
        side: Side,
        /// How many bytes.
        len: u64,
    },
    /// The connection ended.
    Closed {
        /// The connection.
        key: ConnKey,
        /// Why.
        reason: CloseReason,
    },
}

/// Bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections tracked at once.
    pub max_connections: usize,
    /// Out-of-order bytes held per direction.
    pub max_pending_per_direction: usize,
    /// Out-of-order bytes held across all connections.
    pub max_pending_total: usize,
    /// A connection without segments for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            max_pending_per_direction: 256 * 1024,
            max_pending_total: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Totals, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Connections opened.
    pub opened: u64,
    /// Connections evicted by the bound.
    pub evicted: u64,
    /// Bytes skipped over holes.
    pub skipped_bytes: u64,
    /// Holes skipped.
    pub gaps: u64,
    /// Duplicate bytes discarded.
    pub duplicate_bytes: u64,
}

struct Conn {
    client: Stream,
    server: Stream,
    last_seen: SystemTime,
}

/// The connection table.
pub struct Reassembler {
    conns: HashMap<ConnKey, Conn>,
    limits: Limits,
    stats: ReassemblyStats,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Reassembler {
    /// An empty table with these bounds.
    pub fn new(limits: Limits) -> Self {
        Self {
            conns: HashMap::new(),
            limits,
            stats: ReassemblyStats::default(),
        }
    }

    /// Totals.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Connections tracked.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether none are tracked.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn find(&self, a: SocketAddr, b: SocketAddr) -> Option<(ConnKey, Side)> {
        let fwd = ConnKey {
            client: a,
            server: b,
        };
        if self.conns.contains_key(&fwd) {
            return Some((fwd, Side::Client));
        }
        let rev = ConnKey {
            client: b,
            server: a,
        };
        self.conns.contains_key(&rev).then_some((rev, Side::Server))
    }

    /// Feeds one segment.
    pub fn push(&mut self, seg: &Segment<'_>, out: &mut Vec<Event>) {
        // The first sender of bytes is taken for the client.
        self.push_hinted(seg, || seg.dst, out);
    }

    /// Feeds one segment; `server` says which address accepted the connection when
    /// the caller knows it (the live path knows the port policy observes). It is
    /// asked only for a connection first seen without its SYN.
    pub fn push_hinted(
        &mut self,
        seg: &Segment<'_>,
        server: impl FnOnce() -> SocketAddr,
        out: &mut Vec<Event>,
    ) {
        let syn = seg.flags & tcp_flags::SYN != 0;
        let ack = seg.flags & tcp_flags::ACK != 0;
        let (key, side) = match self.find(seg.src, seg.dst) {
            // A new SYN on a finished connection: the port was reused.
            Some((key, Side::Client)) if syn && !ack && self.is_done(&key) => {
                self.close(key, CloseReason::Fin, out);
                self.open(
                    seg,
                    ConnKey {
                        client: seg.src,
                        server: seg.dst,
                    },
                    out,
                )
            }
            Some(found) => found,
            None => {
                // A segment with neither a SYN nor bytes opens nothing: the last
                // ACK of a closed connection (or a reset, or a bare FIN) would
                // otherwise count a connection that carries no data.
                if !syn && seg.payload.is_empty() {
                    return;
                }
                // A SYN-ACK's sender is the server; otherwise the first sender of bytes is
                // taken for the client.
                let key = if (syn && ack) || (!syn && server() == seg.src) {
                    ConnKey {
                        client: seg.dst,
                        server: seg.src,
                    }
                } else {
                    ConnKey {
                        client: seg.src,
                        server: seg.dst,
                    }
                };
                self.open(seg, key, out)
            }
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.last_seen = seg.time;
        let stream = match side {
            Side::Client => &mut conn.client,
            Side::Server => &mut conn.server,
        };
        let mut chunks = Vec::new();
        if syn {
            stream.syn(seg.seq);
        }
        let before = stream.stats();
        let seq = if syn {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        stream.segment(
            seq,
            seg.payload,
            seg.flags & tcp_flags::FIN != 0,
            &mut chunks,
        );
        let after = stream.stats();
        self.stats.duplicate_bytes += after.duplicate - before.duplicate;
        self.emit(key, side, seg.time, chunks, out);
        if seg.flags & tcp_flags::RST != 0 {
            self.close(key, CloseReason::Rst, out);
            return;
        }
        if self.is_done(&key) {
            self.close(key, CloseReason::Fin, out);
            return;
        }
        self.enforce_memory(out);
    }

    fn is_done(&self, key: &ConnKey) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.client.finished() && c.server.finished())
    }

    fn open(&mut self, seg: &Segment<'_>, key: ConnKey, out: &mut Vec<Event>) -> (ConnKey, Side) {
        if self.conns.len() >= self.limits.max_connections
            && let Some(oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(k, _)| *k)
        {
            self.stats.evicted += 1;
            self.close(oldest, CloseReason::Evicted, out);
        }
        let per_dir = self.limits.max_pending_per_direction;
        self.conns.insert(
            key,
            Conn {
                client: Stream::new(per_dir),
                server: Stream::new(per_dir),
                last_seen: seg.time,
            },
        );
        self.stats.opened += 1;
        out.push(Event::Opened {
            key,
            time: seg.time,
        });
        let side = if key.client == seg.src {
            Side::Client
        } else {
            Side::Server
        };
        (key, side)
    }

    fn emit(
        &mut self,
        key: ConnKey,
        side: Side,
        time: SystemTime,
        chunks: Vec<Chunk>,
        out: &mut Vec<Event>,
    ) {
        for chunk in chunks {
            match chunk {
                Chunk::Data(bytes) => out.push(Event::Data {
                    key,
                    side,
                    time,
                    bytes,
                }),
                Chunk::Gap(len) => {
                    self.stats.gaps += 1;
                    self.stats.skipped_bytes += len;
                    out.push(Event::Gap { key, side, len });
                }
            }
        }
    }

    fn close(&mut self, key: ConnKey, reason: CloseReason, out: &mut Vec<Event>) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        // Whatever is still queued behind a hole is delivered (after a gap) first.
        for (side, stream) in [
            (Side::Client, &mut conn.client),
            (Side::Server, &mut conn.server),
        ] {
            let mut chunks = Vec::new();
            while stream.pending_bytes() > 0 {
                stream.skip_hole(&mut chunks);
            }
            self.emit(key, side, conn.last_seen, chunks, out);
        }
        out.push(Event::Closed { key, reason });
    }

    /// Closes connections idle for longer than the timeout.
    pub fn expire(&mut self, now: SystemTime, out: &mut Vec<Event>) {
        let timeout = self.limits.idle_timeout;
        let idle: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_seen).unwrap_or_default() > timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.close(key, CloseReason::Idle, out);
        }
    }

    /// Closes every connection (end of a capture).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let mut keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        keys.sort();
        for key in keys {
            self.close(key, CloseReason::Idle, out);
        }
    }

    fn enforce_memory(&mut self, out: &mut Vec<Event>) {
        loop {
            let total: usize = self
                .conns
                .values()
                .map(|c| c.client.pending_bytes() + c.server.pending_bytes())
                .sum();
            if total <= self.limits.max_pending_total {
                return;
            }
            let Some((key, side)) = self
                .conns
                .iter()
                .flat_map(|(k, c)| {
                    [
                        (*k, Side::Client, c.client.pending_bytes()),
                        (*k, Side::Server, c.server.pending_bytes()),
                    ]
                })
                .max_by_key(|(_, _, p)| *p)
                .map(|(k, s, _)| (k, s))
            else {
                return;
            };
            let mut chunks = Vec::new();
            let time = if let Some(conn) = self.conns.get_mut(&key) {
                let stream = match side {
                    Side::Client => &mut conn.client,
                    Side::Server => &mut conn.server,
                };
                stream.skip_hole(&mut chunks);
                conn.last_seen
            } else {
                return;
            };
            if chunks.is_empty() {
                return;
            }
            self.emit(key, side, time, chunks, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn seg<'a>(src: &str, dst: &str, seq: u32, flags: u8, payload: &'a [u8]) -> Segment<'a> {
        Segment {
            time: SystemTime::UNIX_EPOCH,
            src: addr(src),
            dst: addr(dst),
            seq,
            flags,
            payload,
        }
    }

    use tcp_flags::*;

    #[test]
    fn a_whole_connection() {
        let (c, s) = ("10.0.0.1:40000", "10.0.0.2:6379");
        let mut r = Reassembler::new(Limits::default());
        let mut out = Vec::new();
        for sg in [
            seg(c, s, 100, SYN, b""),
            seg(s, c, 500, SYN | ACK, b""),
            seg(c, s, 101, ACK, b"PING\r\n"),
            seg(s, c, 501, ACK, b"+PONG\r\n"),
            seg(c, s, 107, FIN | ACK, b""),
            seg(s, c, 508, FIN | ACK, b""),
            // The last ACK, after both FINs: the connection is closed, and this
            // opens no other (a capture of N connections counts N).
            seg(c, s, 108, ACK, b""),
        ] {
            r.push(&sg, &mut out);
        }
        assert_eq!(r.stats().opened, 1);
        assert_eq!(out.len(), 4, "{out:?}");
        let key = ConnKey {
            client: addr(c),
            server: addr(s),
        };
        assert_eq!(
            out[0],
            Event::Opened {
                key,
                time: SystemTime::UNIX_EPOCH
            }
        );
        assert!(
            matches!(&out[1], Event::Data { side: Side::Client, bytes, .. } if bytes == b"PING\r\n")
        );
        assert!(
            matches!(&out[2], Event::Data { side: Side::Server, bytes, .. } if bytes == b"+PONG\r\n")
        );
        assert_eq!(
            out[3],
            Event::Closed {
                key,
                reason: CloseReason::Fin
            }
        );
        assert!(r.is_empty());
    }

    #[test]
    fn mid_stream_capture_and_syn_ack_orientation() {
        let mut r = Reassembler::new(Limits::default());
        let mut out = Vec::new();
        // The capture starts at the SYN-ACK: its sender is the server.
        r.push(
            &seg("10.0.0.2:80", "10.0.0.1:5555", 9, SYN | ACK, b""),
            &mut out,
        );
        r.push(
            &seg(
                "10.0.0.1:5555",
                "10.0.0.2:80",
                1,
                ACK,
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            &mut out,
        );
        let Event::Opened { key, .. } = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(key.server, addr("10.0.0.2:80"));
        assert!(matches!(
            &out[1],
            Event::Data {
                side: Side::Client,
                ..
            }
        ));
    }

    #[test]
    fn rst_closes_and_gaps_are_reported() {
        let (c, s) = ("10.0.0.1:1", "10.0.0.2:2");
        let mut r = Reassembler::new(Limits::default());
        let mut out = Vec::new();
        r.push(&seg(c, s, 0, SYN, b""), &mut out);
        r.push(&seg(c, s, 1, ACK, b"ab"), &mut out);
        r.push(&seg(c, s, 5, ACK, b"ef"), &mut out);
        r.push(&seg(c, s, 7, RST, b""), &mut out);
        let kinds: Vec<String> = out
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            ["Opened", "Data", "Gap", "Data", "Closed"],
            "{out:?}"
        );
        assert!(matches!(out[2], Event::Gap { len: 2, .. }));
        assert!(matches!(
            out[4],
            Event::Closed {
                reason: CloseReason::Rst,
                ..
            }
        ));
    }

    #[test]
    fn bounds_evict_and_skip() {
        let limits = Limits {
            max_connections: 2,
            max_pending_total: 10,
            ..Limits::default()
        };
        let mut r = Reassembler::new(limits);
        let mut out = Vec::new();
        for port in 1..=3u16 {
            let c = format!("10.0.0.1:{port}");
            r.push(&seg(&c, "10.0.0.2:80", 0, SYN, b""), &mut out);
        }
        assert_eq!(r.len(), 2);
        assert_eq!(r.stats().evicted, 1);
        // 12 out-of-order bytes exceed the global bound of 10: the hole is skipped.
        r.push(
            &seg("10.0.0.1:3", "10.0.0.2:80", 5, ACK, b"0123456789ab"),
            &mut out,
        );
        assert!(
            out.iter().any(|e| matches!(e, Event::Gap { len: 4, .. })),
            "{out:?}"
        );
    }
}
