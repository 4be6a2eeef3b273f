//! gRPC C-core (grpcio, the stack most scripts use) names a `unix:` target's
//! socket path as the request's `:authority`, percent-encoded
//! (`run%2Floupe%2Floupe.sock`). h2 parses `:authority` as a URI authority, where
//! `%` is invalid, and resets every such stream before tonic sees it. The agent
//! socket has no use for the authority, so [`AuthorityFix`] rewrites it on the way
//! in: every `%` of a literal `:authority` value becomes `-`, in place.
//!
//! The value keeps its length, so HEADERS frames keep theirs and the HPACK
//! dynamic table the server builds stays the size the client accounts for
//! (later requests that index the entry get the rewritten value). Only the
//! client's HEADERS frames are read; anything this reader does not understand
//! (no HTTP/2 preface, a Huffman-coded value, a header block continued in
//! CONTINUATION frames, a malformed block) passes through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HEADERS frames larger than this are passed through without a look.
const MAX_HEADERS_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the client's connection preface.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Inside a frame this reader does not look into.
    Payload(usize),
    /// Not HTTP/2 as expected: every byte as it is.
    Passthrough,
}

/// A server-side connection whose client `:authority` values are made valid.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    state: State,
    /// Read from the client, not yet released.
    held: Vec<u8>,
    /// Released, not yet handed to the reader.
    ready: Vec<u8>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: State::Preface,
            held: Vec::new(),
            ready: Vec::new(),
            eof: false,
        }
    }

    /// Moves what can be released from `held` to `ready`; false when more input
    /// is needed.
    fn advance(&mut self) -> bool {
        let mut progressed = false;
        loop {
            match self.state {
                State::Preface => {
                    let n = self.held.len().min(PREFACE.len());
                    if self.held[..n] != PREFACE[..n] {
                        self.state = State::Passthrough;
                    } else if n == PREFACE.len() {
                        self.release(PREFACE.len());
                        self.state = State::Frame;
                    } else {
                        return progressed;
                    }
                }
                State::Frame => {
                    if self.held.len() < FRAME_HEADER {
                        return progressed;
                    }
                    let len = usize::from(self.held[0]) << 16
                        | usize::from(self.held[1]) << 8
                        | usize::from(self.held[2]);
                    let (kind, flags) = (self.held[3], self.held[4]);
                    if kind == HEADERS && flags & END_HEADERS != 0 && len <= MAX_HEADERS_FRAME {
                        if self.held.len() < FRAME_HEADER + len {
                            return progressed;
                        }
                        rewrite_headers(&mut self.held[FRAME_HEADER..FRAME_HEADER + len], flags);
                        self.release(FRAME_HEADER + len);
                    } else {
                        self.release(FRAME_HEADER);
                        self.state = State::Payload(len);
                    }
                }
                State::Payload(left) => {
                    if self.held.is_empty() {
                        return progressed;
                    }
                    let n = left.min(self.held.len());
                    self.release(n);
                    self.state = if n == left {
                        State::Frame
                    } else {
                        State::Payload(left - n)
                    };
                }
                State::Passthrough => {
                    if self.held.is_empty() {
                        return progressed;
                    }
                    self.release(self.held.len());
                }
            }
            progressed = true;
        }
    }

    fn release(&mut self, n: usize) {
        self.ready.extend(self.held.drain(..n));
    }
}

/// Rewrites, in place, the `%` of every literal `:authority` value in a HEADERS
/// frame's payload; leaves the payload as it is where it cannot read it.
fn rewrite_headers(payload: &mut [u8], flags: u8) {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let Some(&pad) = payload.first() else { return };
        start = 1;
        let Some(e) = end.checked_sub(usize::from(pad)) else {
            return;
        };
        end = e;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    if start > end {
        return;
    }
    let _ = rewrite_block(&mut payload[start..end]);
}

/// Walks an HPACK header block (RFC 7541 §6); `None` where it is malformed.
fn rewrite_block(block: &mut [u8]) -> Option<()> {
    let mut pos = 0;
    while pos < block.len() {
        let first = block[pos];
        let name_index = if first & 0x80 != 0 {
            integer(block, &mut pos, 7)?; // indexed field
            continue;
        } else if first & 0xC0 == 0x40 {
            integer(block, &mut pos, 6)? // literal, incremental indexing
        } else if first & 0xE0 == 0x20 {
            integer(block, &mut pos, 5)?; // dynamic table size update
            continue;
        } else {
            integer(block, &mut pos, 4)? // literal, not / never indexed
        };
        let authority = if name_index == 0 {
            let (huffman, name) = string(block, &mut pos)?;
            !huffman && &block[name] == b":authority"
        } else {
            name_index == 1 // the static table's `:authority`
        };
        let (huffman, value) = string(block, &mut pos)?;
        if authority && !huffman {
            for b in &mut block[value] {
                if *b == b'%' {
                    *b = b'-';
                }
            }
        }
    }
    Some(())
}

/// An HPACK integer with an `n`-bit prefix at `pos` (§5.1).
fn integer(block: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*block.get(*pos)?) & max;
    *pos += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        value = value.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string literal at `pos` (§5.2): whether it is Huffman-coded, and
/// where its bytes are.
fn string(block: &[u8], pos: &mut usize) -> Option<(bool, std::ops::Range<usize>)> {
    let huffman = block.get(*pos)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let range = *pos..pos.checked_add(len)?;
    if range.end > block.len() {
        return None;
    }
    *pos = range.end;
    Some((huffman, range))
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever was held for a frame that never completed goes as is.
                if this.held.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.state = State::Passthrough;
                this.advance();
                continue;
            }
            if this.advance() {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.held.extend_from_slice(read.filled()),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// What grpcio 1.85 sent for a health check on `unix:///tmp/cap.sock`:
    /// SETTINGS, WINDOW_UPDATE, SETTINGS ack, then HEADERS with `:authority`
    /// `tmp%2Fcap.sock` as a literal with incremental indexing.
    const GRPCIO: &str = concat!(
        "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a",
        "000000040000000000",
        "000004080000000000000f0001",
        "000000040100000000",
        "000041010400000001",
        "40053a706174681c2f677270632e6865616c74682e76312e4865616c74682f436865636b",
        "400a3a617574686f726974790e746d702532466361702e736f636b8386",
        "000008000100000001",
        "0000000000000000",
    );

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    /// Feeds `input` in pieces cut at `cuts` and reads everything back.
    async fn through(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut fixed = AuthorityFix::new(server);
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            tokio::io::AsyncWriteExt::write_all(&mut client, &input[at..cut])
                .await
                .unwrap_or_default();
            at = cut;
        }
        drop(client);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap_or_default();
        out
    }

    #[tokio::test]
    async fn percent_in_authority_becomes_dash_at_every_split() {
        let input = hex(GRPCIO);
        let mut want = input.clone();
        let at = input
            .windows(14)
            .position(|w| w == b"tmp%2Fcap.sock")
            .unwrap_or(0);
        want[at..at + 14].copy_from_slice(b"tmp-2Fcap.sock");
        assert_ne!(want, input);
        for cut in 0..=input.len() {
            assert_eq!(through(&input, &[cut]).await, want, "cut at {cut}");
        }
        assert_eq!(
            through(&input, &(1..input.len()).collect::<Vec<_>>()).await,
            want
        );
    }

    #[tokio::test]
    async fn what_it_cannot_read_passes_unchanged() {
        // Not HTTP/2.
        let http1 = b"GET / HTTP/1.1\r\nHost: a%2Fb\r\n\r\n".to_vec();
        assert_eq!(through(&http1, &[3]).await, http1);
        // A truncated header block, and a frame cut short by the peer.
        let mut input = hex(GRPCIO);
        input.truncate(input.len() - 30);
        assert_eq!(through(&input, &[]).await, input);
    }

    #[test]
    fn static_name_index_and_padding_and_priority() {
        // Literal without indexing, name = static index 1 (`:authority`), padded
        // and with priority: 1 pad length byte, 5 priority bytes, block, 2 pad bytes.
        let mut payload = vec![2, 0, 0, 0, 0, 16, 0x01, 3, b'a', b'%', b'b', 0, 0];
        rewrite_headers(&mut payload, PADDED | PRIORITY | END_HEADERS);
        assert_eq!(&payload[8..11], b"a-b");
        // A Huffman-coded value is left alone.
        let mut huffman = vec![0x01, 0x83, b'a', b'%', b'b'];
        rewrite_headers(&mut huffman, END_HEADERS);
        assert_eq!(&huffman[2..], b"a%b");
        // Malformed: a length past the end.
        let mut bad = vec![0x01, 0x7f, 0x05, b'%'];
        rewrite_headers(&mut bad, END_HEADERS);
        assert_eq!(bad, [0x01, 0x7f, 0x05, b'%']);
    }
}
