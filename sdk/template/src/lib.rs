//! A Loupe parser plugin for the __NAME__ protocol, from `loupe plugin new`.
//!
//! The skeleton parses a line protocol — requests `VERB [ARGUMENT…]\r\n`,
//! responses `+TEXT\r\n` or `-ERROR TEXT\r\n`, answered in order — so that it
//! builds, passes its tests and installs as it is. Replace `request` and
//! `response` with your protocol's framing; the SDK guide (Loupe's
//! `sdk/README.md`) explains each part.
// no_std in the component (zero imports); std natively, so tests link.
#![cfg_attr(target_arch = "wasm32", no_std)]

use loupe_sdk::{Direction, FieldSpec, FieldType, Frame, Info, ParseError, Parser, Sniff, Vec};

/// Field ids: indexes into [`__TYPE__::INFO`]'s `fields`.
pub mod field {
    /// The request's verb.
    pub const COMMAND: u16 = 0;
    /// The request's first argument.
    pub const ARGUMENT: u16 = 1;
    /// `+` or `-`: the response's outcome.
    pub const STATUS: u16 = 2;
    /// The text of a `-` response.
    pub const ERROR: u16 = 3;
}

/// Longest line accepted: a peer cannot make the plugin buffer more.
const MAX_LINE: usize = 4096;

/// The parser. One value per connection; keep per-connection state in it.
#[derive(Debug, Default)]
pub struct __TYPE__;

impl Parser for __TYPE__ {
    const INFO: Info = Info {
        name: "__NAME__",
        version: "0.1.0",
        protocol: "__NAME__",
        default_ports: &[],
        fields: &[
            FieldSpec {
                name: "command",
                ty: FieldType::Text,
                description: "the request's verb",
            },
            FieldSpec {
                name: "argument",
                ty: FieldType::Text,
                description: "the request's first argument",
            },
            FieldSpec {
                name: "status",
                ty: FieldType::Text,
                description: "+ or -: the response's outcome",
            },
            FieldSpec {
                name: "error",
                ty: FieldType::Text,
                description: "the text of a - response",
            },
        ],
    };

    fn sniff(direction: Direction, bytes: &[u8]) -> Sniff {
        match (direction, bytes.first()) {
            (_, None) => Sniff::Maybe,
            (Direction::ToServer, Some(b)) if b.is_ascii_uppercase() => Sniff::Yes,
            (Direction::ToClient, Some(b'+' | b'-')) => Sniff::Yes,
            _ => Sniff::No,
        }
    }

    fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        match direction {
            Direction::ToServer => request(buf),
            Direction::ToClient => response(buf),
        }
    }

    /// What a client gets when policy denies its request: here, an error line.
    fn deny_reply(_request: &[u8]) -> Vec<u8> {
        b"-ERR access denied\r\n".to_vec()
    }
}

loupe_sdk::export_parser!(__TYPE__);

/// Where the line starting `buf` ends (its `\r\n`); `None` while incomplete.
fn line_end(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if window.len() >= MAX_LINE => Err(ParseError::new(0, "line too long")),
        None => Ok(None),
    }
}

fn request(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    let Some(eol) = line_end(buf)? else {
        return Ok(None);
    };
    let verb_end = buf[..eol].iter().position(|&b| b == b' ').unwrap_or(eol);
    if verb_end == 0 || !buf[..verb_end].iter().all(u8::is_ascii_uppercase) {
        return Err(ParseError::new(0, "a request starts with an upper-case verb"));
    }
    let mut frame = Frame::new(Direction::ToServer, eol + 2).slice(field::COMMAND, 0..verb_end);
    if verb_end < eol {
        let start = verb_end + 1;
        let end = buf[start..eol]
            .iter()
            .position(|&b| b == b' ')
            .map_or(eol, |i| start + i);
        frame = frame.slice(field::ARGUMENT, start..end);
    }
    Ok(Some(frame))
}

fn response(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    let Some(eol) = line_end(buf)? else {
        return Ok(None);
    };
    let frame = Frame::new(Direction::ToClient, eol + 2).slice(field::STATUS, 0..1);
    match buf.first() {
        Some(b'+') => Ok(Some(frame)),
        Some(b'-') => Ok(Some(frame.slice(field::ERROR, 1..eol))),
        _ => Err(ParseError::new(0, "a response starts with + or -")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loupe_sdk::Stream;

    #[test]
    fn frames_pipelined_requests_and_their_responses() {
        let mut s = Stream::<__TYPE__>::new();
        let out = s
            .feed(Direction::ToServer, b"GET greeting\r\nSET greeting hello\r\nPI")
            .unwrap();
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.messages[0].len, 14);
        assert_eq!(out.pending, 2, "the third request is not complete yet");
        let out = s
            .feed(Direction::ToClient, b"+hello\r\n-ERR read only\r\n")
            .unwrap();
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.pending, 0);
    }

    #[test]
    fn refuses_what_is_not_the_protocol() {
        let mut s = Stream::<__TYPE__>::new();
        let out = s.feed(Direction::ToServer, b"get / HTTP/1.1\r\n").unwrap();
        assert!(out.error.is_some());
        assert_eq!(__TYPE__::sniff(Direction::ToServer, b"GET x"), Sniff::Yes);
        assert_eq!(__TYPE__::sniff(Direction::ToClient, b"HTTP/1.1"), Sniff::No);
    }
}
