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
        let mut messages = Vec::new();
        let (pending, error) = self.feed_with(direction, bytes, &mut |m| messages.push(m));
        Ok(Feed {
            messages,
            pending,
            error,
        })
    }

    /// [`Stream::feed`] handing each message to `sink` as it is framed (the
    /// component's export glue writes them straight into the contract's flat
    /// lists). Returns the bytes left pending and the error that stopped
    /// parsing, if one did; a stream that had failed repeats its error.
    #[doc(hidden)]
    pub fn feed_with(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        sink: &mut dyn FnMut(Message),
    ) -> (u32, Option<StreamError>) {
        if let Some(err) = &self.failed {
            return (0, Some(err.clone()));
        }
        let half = &mut self.halves[direction.index()];
        // Frame straight from the caller's bytes when nothing is buffered: the
        // common case (whole segments) then never copies.
        let result = if half.buf.is_empty() {
            let result = frame_all(&mut self.parser, direction, half.base, bytes, sink);
            if let Ok(used) = result {
                half.buf.extend_from_slice(&bytes[used..]);
                half.base += used as u64;
            }
            result
        } else {
            half.buf.extend_from_slice(bytes);
            let result = frame_all(&mut self.parser, direction, half.base, &half.buf, sink);
            if let Ok(used) = result {
                half.buf.drain(..used);
                half.base += used as u64;
            }
            result
        };
        let pending = u32::try_from(half.buf.len()).unwrap_or(u32::MAX);
        let error = result.err();
        self.failed.clone_from(&error);
        (pending, error)
    }
}

/// Frames messages from `buf` (which starts at stream offset `base`) until it
/// needs more bytes; returns how many bytes were framed.
fn frame_all<P: Parser>(
    parser: &mut P,
    direction: Direction,
    base: u64,
    buf: &[u8],
    sink: &mut dyn FnMut(Message),
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
                check_schema::<P>(&frame.fields)
                    .map_err(|reason| StreamError { offset: at, reason })?;
                sink(Message {
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

/// A frame's fields against `P`'s schema, as the agent checks them: ids in the
/// schema, and only `repeated` fields set more than once.
fn check_schema<P: Parser>(fields: &[Field]) -> Result<(), String> {
    let schema = P::INFO.fields;
    let mut seen = [0u64; 4];
    for f in fields {
        let Some(spec) = schema.get(usize::from(f.id)) else {
            return Err(format!(
                "field id {} outside the schema of {}",
                f.id,
                schema.len()
            ));
        };
        // Schemas have at most 256 fields, so four words hold every id.
        let (word, bit) = (usize::from(f.id) / 64 % 4, f.id % 64);
        if seen[word] & (1 << bit) != 0 && !spec.repeated {
            return Err(format!(
                "field {:?} set more than once, but not declared as a list ([Kind])",
                spec.name
            ));
        }
        seen[word] |= 1 << bit;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Frame, Info, Request, Sniff};

    #[allow(unreachable_pub)]
    mod field {
        crate::fields! {
            ONE: Text = "one", "set once";
            MANY: [Text] = "many", "a list";
        }
    }

    /// One message per byte; `m` sets the list twice, `o` sets `one` twice.
    #[derive(Default)]
    struct Twice;

    impl Parser for Twice {
        const INFO: Info = Info {
            name: "twice",
            version: "0.0.0",
            protocol: "twice",
            default_ports: &[],
            fields: field::FIELDS,
        };
        fn sniff(_: Direction, _: &[u8]) -> Sniff {
            Sniff::Yes
        }
        fn parse(&mut self, d: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
            let frame = Frame::new(d, 1);
            Ok(Some(match buf[0] {
                b'm' => frame.set(field::MANY, 0..1).set(field::MANY, 0..1),
                b'o' => frame.set(field::ONE, 0..1).set(field::ONE, 0..1),
                _ => frame.set(field::ONE, 0..1),
            }))
        }
        fn deny_reply(_: &Request<'_>) -> Vec<u8> {
            Vec::new()
        }
    }

    #[test]
    fn only_list_fields_may_be_set_more_than_once() {
        let mut s = Stream::<Twice>::new();
        let out = s.feed(Direction::ToServer, b"xmmo").unwrap();
        assert_eq!(out.messages.len(), 3);
        assert_eq!(out.messages[1].fields.len(), 2);
        let err = out.error.unwrap();
        assert_eq!(err.offset, 3);
        assert!(
            err.reason.contains("\"one\" set more than once"),
            "{}",
            err.reason
        );
        assert!(
            s.feed(Direction::ToServer, b"x").is_err(),
            "the stream stays failed"
        );
    }
}
