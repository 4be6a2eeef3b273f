//! Stream framing: per-direction buffering around a [`Parser`]. The same code
//! runs inside the component and natively in tests, which is what makes the
//! harness's native-vs-component comparison meaningful.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::{Correlation, Direction, Field, MessageKind, ParseError, Parser};

/// One framed message, positioned in its direction's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request, response or event.
    pub kind: MessageKind,
    /// Offset of its first byte in the direction's stream.
    pub start: u64,
    /// Bytes it spans.
    pub len: u32,
    /// How it pairs.
    pub correlation: Correlation,
    /// Its fields; slices are relative to `start`.
    pub fields: Vec<Field>,
}

/// The result of one [`Stream::feed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feed {
    /// Messages completed by this feed, in stream order.
    pub messages: Vec<Message>,
    /// Bytes buffered awaiting the rest of a message.
    pub pending: u32,
    /// The error that stopped parsing after `messages` (the stream then stays
    /// failed).
    pub error: Option<StreamError>,
}

/// Parsing stopped for good on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// Stream offset of the failure.
    pub offset: u64,
    /// Why.
    pub reason: String,
}

#[derive(Default)]
struct Half {
    /// Bytes not yet framed.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
}

/// A connection's framing state: a parser and both directions' buffers.
pub struct Stream<P> {
    parser: P,
    halves: [Half; 2],
    failed: Option<StreamError>,
}

impl<P: Parser> Default for Stream<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Parser> Stream<P> {
    /// A fresh connection.
    pub fn new() -> Self {
        Self {
            parser: P::default(),
            halves: [Half::default(), Half::default()],
            failed: None,
        }
    }

    /// Feeds the next `bytes` of `direction`; frames every message they complete.
    /// A parse error comes after the messages framed before it ([`Feed::error`]);
    /// `Err` means the stream had already failed.
    pub fn feed(&mut self, direction: Direction, bytes: &[u8]) -> Result<Feed, StreamError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let half = &mut self.halves[direction.index()];
        let mut messages = Vec::new();
        // Frame straight from the caller's bytes when nothing is buffered: the
        // common case (whole segments) then never copies.
        let result = if half.buf.is_empty() {
            let result = frame_all(&mut self.parser, direction, half.base, bytes, &mut messages);
            if let Ok(used) = result {
                half.buf.extend_from_slice(&bytes[used..]);
                half.base += used as u64;
            }
            result
        } else {
            half.buf.extend_from_slice(bytes);
            let result = frame_all(
                &mut self.parser,
                direction,
                half.base,
                &half.buf,
                &mut messages,
            );
            if let Ok(used) = result {
                half.buf.drain(..used);
                half.base += used as u64;
            }
            result
        };
        let pending = u32::try_from(half.buf.len()).unwrap_or(u32::MAX);
        let error = result.err();
        self.failed.clone_from(&error);
        Ok(Feed {
            messages,
            pending,
            error,
        })
    }
}

/// Frames messages from `buf` (which starts at stream offset `base`) until it
/// needs more bytes; returns how many bytes were framed.
fn frame_all<P: Parser>(
    parser: &mut P,
    direction: Direction,
    base: u64,
    buf: &[u8],
    out: &mut Vec<Message>,
) -> Result<usize, StreamError> {
    let mut used = 0;
    while used < buf.len() {
        let rest = &buf[used..];
        let at = base + used as u64;
        match parser.parse(direction, rest) {
            Ok(None) => break,
            Ok(Some(frame)) => {
                if frame.len == 0 || frame.len > rest.len() {
                    return Err(StreamError {
                        offset: at,
                        reason: format!(
                            "parser framed {} bytes with {} available",
                            frame.len,
                            rest.len()
                        ),
                    });
                }
                let len = u32::try_from(frame.len).map_err(|_| StreamError {
                    offset: at,
                    reason: format!("message of {} bytes is too long", frame.len),
                })?;
                out.push(Message {
                    kind: frame.kind,
                    start: at,
                    len,
                    correlation: frame.correlation,
                    fields: frame.fields,
                });
                used += frame.len;
            }
            Err(ParseError { at: off, reason }) => {
                return Err(StreamError {
                    offset: at + off as u64,
                    reason,
                });
            }
        }
    }
    Ok(used)
}
