//! A Loupe parser plugin for the __NAME__ protocol, from `loupe plugin new`.
//!
//! The skeleton parses a line protocol — requests `VERB [ARGUMENT…]\r\n`,
//! responses `+TEXT\r\n` or `-ERROR TEXT\r\n`, answered in order — so that it
//! builds, passes its tests and installs as it is. Replace `request` and
//! `response` with your protocol's framing; the SDK guide (Loupe's
//! `sdk/README.md`) explains each part.
// no_std in the component (zero imports); std natively, so tests link.
#![cfg_attr(target_arch = "wasm32", no_std)]

use loupe_sdk::{Direction, Frame, Info, ParseError, Parser, Reader, Request, Sniff, Vec};

/// The fields, numbered in order: [`__TYPE__::INFO`]'s schema. Each is typed:
/// `Frame::set` takes a range of the message (or text) for `Text`, a `u64` for
/// `Unsigned`, and so on.
pub mod field {
    loupe_sdk::fields! {
        /// The request's verb.
        COMMAND: Text = "command", "the request's verb";
        /// The request's first argument.
        ARGUMENT: Text = "argument", "the request's first argument";
        /// `+` or `-`: the response's outcome.
        STATUS: Text = "status", "+ or -: the response's outcome";
        /// The text of a `-` response.
        ERROR: Text = "error", "the text of a - response";
    }
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
        fields: field::FIELDS,
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

    /// What a client gets when policy denies its request: here, an error line
    /// naming the verb (`request` holds the request's bytes and its fields).
    fn deny_reply(request: &Request<'_>) -> Vec<u8> {
        let mut reply = b"-ERR access denied".to_vec();
        if let Some(verb) = request.text(field::COMMAND) {
            reply.extend_from_slice(b" to ");
            reply.extend_from_slice(verb.as_bytes());
        }
        reply.extend_from_slice(b"\r\n");
        reply
    }
}

loupe_sdk::export_parser!(__TYPE__);

/// `VERB [ARGUMENT…]\r\n`. The reader returns "incomplete" (the SDK waits for
/// more bytes) until the line is all here, and "malformed" past `MAX_LINE`.
fn request(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    Reader::frame(buf, |r| {
        let line = r.line(MAX_LINE)?;
        let mut words = buf[line].split(|&b| b == b' ');
        let verb = words.next().unwrap_or_default();
        if verb.is_empty() || !verb.iter().all(u8::is_ascii_uppercase) {
            return Err(r.malformed_at(0, "a request starts with an upper-case verb"));
        }
        let mut frame = r.frame_here(Direction::ToServer).set(field::COMMAND, 0..verb.len());
        if let Some(argument) = words.next() {
            let start = verb.len() + 1;
            frame = frame.set(field::ARGUMENT, start..start + argument.len());
        }
        Ok(frame)
    })
}

/// `+TEXT\r\n` or `-ERROR TEXT\r\n`.
fn response(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    Reader::frame(buf, |r| {
        let line = r.line(MAX_LINE)?;
        let frame = r.frame_here(Direction::ToClient).set(field::STATUS, 0..1);
        match buf.first() {
            Some(b'+') => Ok(frame),
            Some(b'-') => Ok(frame.set(field::ERROR, 1..line.end)),
            _ => Err(r.malformed_at(0, "a response starts with + or -")),
        }
    })
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

    #[test]
    fn a_denied_request_is_answered_with_an_error_naming_its_verb() {
        let reply = loupe_sdk::deny_reply::<__TYPE__>(b"SET greeting hello\r\n");
        assert_eq!(reply, b"-ERR access denied to SET\r\n");
    }
}
