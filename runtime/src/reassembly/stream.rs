//! One direction of a TCP connection: segments in, contiguous bytes out.
//!
//! Sequence numbers are compared with wrapping arithmetic and mapped to a 64-bit
//! stream offset, so wrap-around never confuses ordering. Retransmitted and
//! overlapping bytes are delivered once (the first copy wins, as the receiver's
//! stack would keep it). Out-of-order segments wait, within a byte bound; when the
//! bound is hit, or the caller gives up on a hole, the hole is skipped and reported
//! as a [`Chunk::Gap`] so a parser can resynchronise.

use std::collections::BTreeMap;

/// What the reassembler hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Contiguous bytes, in order.
    Data(Vec<u8>),
    /// Bytes that never arrived (this many) before the data that follows.
    Gap(u64),
}

/// Per-direction counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes delivered in order.
    pub delivered: u64,
    /// Bytes dropped as copies of bytes already delivered or queued.
    pub duplicate: u64,
    /// Bytes skipped over holes.
    pub skipped: u64,
    /// Holes skipped.
    pub gaps: u64,
    /// Segments refused as implausibly far ahead.
    pub out_of_window: u64,
}

/// Segments further ahead than this are not part of this stream.
const WINDOW: i64 = 1 << 30;

/// Reassembles one direction.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Sequence number of the next byte to deliver; `None` before the first segment.
    next_seq: Option<u32>,
    /// Stream offset of `next_seq`.
    next_offset: u64,
    /// Out-of-order data by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    max_pending: usize,
    /// The FIN's sequence number, once seen.
    fin_seq: Option<u32>,
    stats: StreamStats,
}

impl Stream {
    /// A stream holding at most `max_pending` out-of-order bytes.
    pub fn new(max_pending: usize) -> Self {
        Self {
            next_seq: None,
            next_offset: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            max_pending,
            fin_seq: None,
            stats: StreamStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Out-of-order bytes held.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Whether every byte up to a FIN has been delivered.
    pub fn finished(&self) -> bool {
        matches!((self.fin_seq, self.next_seq), (Some(f), Some(n)) if f == n)
    }

    /// The SYN: the stream's data starts at `seq + 1`.
    pub fn syn(&mut self, seq: u32) {
        if self.next_seq.is_none() {
            self.next_seq = Some(seq.wrapping_add(1));
        }
    }

    /// A segment; returns what became deliverable.
    pub fn segment(&mut self, seq: u32, payload: &[u8], fin: bool, out: &mut Vec<Chunk>) {
        // Mid-stream start (no SYN seen): this segment defines the origin.
        let next_seq = *self.next_seq.get_or_insert(seq);
        if fin {
            self.fin_seq = Some(seq.wrapping_add(payload.len() as u32));
        }
        if payload.is_empty() {
            return;
        }
        let delta = i64::from(seq.wrapping_sub(next_seq) as i32);
        if delta >= WINDOW {
            self.stats.out_of_window += 1;
            return;
        }
        let offset = self.next_offset as i64 + delta;
        self.insert(offset, payload);
        self.drain(out);
        if self.pending_bytes > self.max_pending {
            // Waiting longer would exceed the bound: give up on the hole.
            self.skip_hole(out);
        }
    }

    /// Skips the first hole (the caller decided it will not be filled: idle
    /// timeout, FIN, memory pressure) and delivers what follows it.
    pub fn skip_hole(&mut self, out: &mut Vec<Chunk>) {
        let Some((&first, _)) = self.pending.iter().next() else {
            return;
        };
        if first > self.next_offset {
            let gap = first - self.next_offset;
            out.push(Chunk::Gap(gap));
            self.stats.skipped += gap;
            self.stats.gaps += 1;
            self.advance(gap);
        }
        self.drain(out);
    }

    fn advance(&mut self, bytes: u64) {
        self.next_offset += bytes;
        if let Some(seq) = self.next_seq.as_mut() {
            *seq = seq.wrapping_add(bytes as u32);
        }
    }

    /// Queues `payload` at `offset`, trimming whatever is already delivered or
    /// queued.
    fn insert(&mut self, mut offset: i64, payload: &[u8]) {
        let mut data = payload;
        let already = self.next_offset as i64 - offset;
        if already > 0 {
            let cut = (already as usize).min(data.len());
            self.stats.duplicate += cut as u64;
            data = &data[cut..];
            offset += cut as i64;
        }
        let mut offset = offset as u64;
        while !data.is_empty() {
            // The queued segment at or before `offset` may cover its start.
            if let Some((&start, seg)) = self.pending.range(..=offset).next_back() {
                let end = start + seg.len() as u64;
                if end > offset {
                    let cut = ((end - offset) as usize).min(data.len());
                    self.stats.duplicate += cut as u64;
                    data = &data[cut..];
                    offset += cut as u64;
                    continue;
                }
            }
            // Up to the next queued segment.
            let room = match self.pending.range(offset + 1..).next() {
                Some((&next, _)) => ((next - offset) as usize).min(data.len()),
                None => data.len(),
            };
            self.pending.insert(offset, data[..room].to_vec());
            self.pending_bytes += room;
            data = &data[room..];
            offset += room as u64;
        }
    }

    fn drain(&mut self, out: &mut Vec<Chunk>) {
        while let Some(seg) = self.pending.remove(&self.next_offset) {
            self.pending_bytes -= seg.len();
            self.stats.delivered += seg.len() as u64;
            self.advance(seg.len() as u64);
            match out.last_mut() {
                Some(Chunk::Data(prev)) => prev.extend_from_slice(&seg),
                _ => out.push(Chunk::Data(seg)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stream: &mut Stream, segs: &[(u32, &[u8])]) -> Vec<Chunk> {
        let mut out = Vec::new();
        for (seq, data) in segs {
            stream.segment(*seq, data, false, &mut out);
        }
        out
    }

    fn bytes(chunks: &[Chunk]) -> Vec<u8> {
        chunks
            .iter()
            .flat_map(|c| match c {
                Chunk::Data(d) => d.clone(),
                Chunk::Gap(_) => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn in_order_out_of_order_duplicates_and_overlaps() {
        type Case<'a> = (&'a str, &'a [(u32, &'a [u8])], &'a [u8]);
        let cases: &[Case<'_>] = &[
            ("in order", &[(1, b"ab"), (3, b"cd")], b"abcd"),
            (
                "reordered",
                &[(1, b"ab"), (5, b"ef"), (3, b"cd")],
                b"abcdef",
            ),
            (
                "retransmission",
                &[(1, b"ab"), (1, b"ab"), (3, b"cd")],
                b"abcd",
            ),
            (
                "overlap keeps first copy",
                &[(1, b"abc"), (2, b"XYde")],
                b"abcde",
            ),
            (
                "queued overlap",
                &[(4, b"de"), (5, b"XY"), (1, b"abc")],
                b"abcdeY",
            ),
            ("covering segment", &[(3, b"c"), (1, b"abcdef")], b"abcdef"),
        ];
        for (name, segs, want) in cases {
            let mut s = Stream::new(1 << 20);
            s.syn(0);
            let out = feed(&mut s, segs);
            assert_eq!(bytes(&out), *want, "{name}");
            assert_eq!(s.pending_bytes(), 0, "{name}");
        }
    }

    #[test]
    fn sequence_wraparound() {
        let mut s = Stream::new(1 << 20);
        s.syn(u32::MAX - 2);
        let out = feed(&mut s, &[(u32::MAX - 1, b"ab"), (2, b"ef"), (0, b"cd")]);
        assert_eq!(bytes(&out), b"abcdef");
    }

    #[test]
    fn holes_are_skipped_when_the_bound_is_hit_and_reported() {
        let mut s = Stream::new(4);
        s.syn(0);
        let mut out = feed(&mut s, &[(1, b"ab"), (6, b"fgh")]);
        assert_eq!(s.pending_bytes(), 3);
        s.segment(9, b"ij", false, &mut out);
        assert_eq!(
            out,
            vec![
                Chunk::Data(b"ab".to_vec()),
                Chunk::Gap(3),
                Chunk::Data(b"fghij".to_vec())
            ]
        );
        assert_eq!(s.stats().gaps, 1);
        // The late bytes of the hole are duplicates now.
        let mut late = Vec::new();
        s.segment(3, b"cde", false, &mut late);
        assert!(late.is_empty());
    }

    #[test]
    fn explicit_skip_and_fin() {
        let mut s = Stream::new(1 << 20);
        s.syn(100);
        let mut out = Vec::new();
        s.segment(105, b"xyz", true, &mut out);
        assert!(out.is_empty() && !s.finished());
        s.skip_hole(&mut out);
        assert_eq!(out, vec![Chunk::Gap(4), Chunk::Data(b"xyz".to_vec())]);
        assert!(s.finished());
    }

    #[test]
    fn far_segments_are_refused() {
        let mut s = Stream::new(1 << 20);
        s.syn(0);
        let out = feed(&mut s, &[(1 << 31, b"zz")]);
        assert!(out.is_empty());
        assert_eq!(s.stats().out_of_window, 1);
    }

    #[test]
    fn every_split_and_order_gives_the_same_bytes() {
        let data: Vec<u8> = (0..200u8).collect();
        for split in 1..data.len() {
            let mut s = Stream::new(1 << 20);
            s.syn(41);
            let mut out = Vec::new();
            // Second half first, then the first half, then a duplicate of all.
            s.segment(42 + split as u32, &data[split..], false, &mut out);
            s.segment(42, &data[..split], false, &mut out);
            s.segment(42, &data, false, &mut out);
            assert_eq!(bytes(&out), data, "split {split}");
        }
    }
}
