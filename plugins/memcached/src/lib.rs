//! A Loupe parser plugin for memcached's text protocol — the example the SDK
//! guide (`sdk/README.md`) builds step by step.
//!
//! Requests are one command line, plus a data block for the storage commands
//! (`set`, `add`, `replace`, `append`, `prepend`, `cas`). Responses are one line,
//! except retrievals (`VALUE …` blocks up to `END`) and `stats` (`STAT …` lines up
//! to `END`). Requests sent with `noreply` get no response, so they are not paired.
// no_std in the component (zero imports); std natively, so tests and a cdylib link.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::ops::Range;

use loupe_sdk::{
    Correlation, Direction, Frame, Info, ParseError, Parser, ReadError, Reader, Request, Sniff, Vec,
};

/// The fields, numbered in order: [`Memcached::INFO`]'s schema.
pub mod field {
    loupe_sdk::fields! {
        /// Request command verb (`get`, `set`…).
        COMMAND: Text = "command", "request command verb (get, set, delete…)";
        /// Every key of a request.
        KEY: [Text] = "key", "every key of the request";
        /// Number of keys in a request.
        KEYS: Unsigned = "keys", "number of keys in the request";
        /// Size of the data block (storage request) or of all values (retrieval response).
        VALUE_BYTES: Unsigned = "value-bytes", "bytes of data stored or returned";
        /// The request asked for no reply.
        NOREPLY: Flag = "noreply", "the request asked for no reply";
        /// First word of a response (`STORED`, `VALUE`, `END`, `ERROR`…).
        STATUS: Text = "status", "first word of the response (STORED, END, ERROR…)";
        /// Values returned by a retrieval.
        HITS: Unsigned = "hits", "values returned by a retrieval";
        /// Text of a `CLIENT_ERROR` / `SERVER_ERROR`.
        ERROR: Text = "error", "message of CLIENT_ERROR / SERVER_ERROR";
    }
}

/// Longest command or response line accepted (keys are at most 250 bytes).
const MAX_LINE: usize = 2048;
/// Largest data block accepted (memcached's default item size limit).
const MAX_VALUE: usize = 1 << 20;

const STORAGE: [&[u8]; 6] = [b"set", b"add", b"replace", b"append", b"prepend", b"cas"];
const COMMANDS: [&[u8]; 18] = [
    b"get",
    b"gets",
    b"gat",
    b"gats",
    b"set",
    b"add",
    b"replace",
    b"append",
    b"prepend",
    b"cas",
    b"delete",
    b"incr",
    b"decr",
    b"touch",
    b"stats",
    b"version",
    b"flush_all",
    b"quit",
];
const REPLIES: [&[u8]; 14] = [
    b"VALUE",
    b"END",
    b"STORED",
    b"NOT_STORED",
    b"EXISTS",
    b"NOT_FOUND",
    b"DELETED",
    b"TOUCHED",
    b"OK",
    b"ERROR",
    b"CLIENT_ERROR",
    b"SERVER_ERROR",
    b"STAT",
    b"VERSION",
];

/// The memcached text protocol parser (stateless between messages).
#[derive(Debug, Default)]
pub struct Memcached;

impl Parser for Memcached {
    const INFO: Info = Info {
        name: "memcached",
        version: "0.1.0",
        protocol: "memcached",
        default_ports: &[11211],
        fields: field::FIELDS,
    };

    fn sniff(direction: Direction, bytes: &[u8]) -> Sniff {
        let words: &[&[u8]] = match direction {
            Direction::ToServer => &COMMANDS,
            Direction::ToClient => &REPLIES,
        };
        let first = bytes
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or(bytes);
        if first.len() < bytes.len() {
            return if words.contains(&first) {
                Sniff::Yes
            } else {
                Sniff::No
            };
        }
        if words.iter().any(|w| w.starts_with(first)) {
            Sniff::Maybe
        } else {
            Sniff::No
        }
    }

    fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        match direction {
            Direction::ToServer => request(buf),
            Direction::ToClient => response(buf),
        }
    }

    fn deny_reply(_request: &Request<'_>) -> Vec<u8> {
        b"SERVER_ERROR access denied\r\n".to_vec()
    }
}

#[cfg(feature = "export")]
loupe_sdk::export_parser!(Memcached);

/// Splits a line into words, each with its offset in `buf`.
fn words(buf: &[u8], line: Range<usize>) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = line.start;
    buf[line].split(|&b| b == b' ').filter_map(move |w| {
        let here = at;
        at += w.len() + 1;
        (!w.is_empty()).then_some((here, w))
    })
}

/// A data block's size: a decimal number of at most [`MAX_VALUE`].
fn size(r: &Reader<'_>, word: &[u8], at: usize) -> Result<usize, ReadError> {
    core::str::from_utf8(word)
        .ok()
        .and_then(|text| text.parse().ok())
        .filter(|&n| n <= MAX_VALUE)
        .ok_or_else(|| r.malformed_at(at, "byte count is not a number up to 1 MiB"))
}

fn request(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    Reader::frame(buf, |r| {
        let line = r.line(MAX_LINE)?;
        let mut ws = words(buf, line.clone());
        let Some((verb_at, verb)) = ws.next() else {
            return Err(r.malformed_at(0, "empty command line"));
        };
        // memcached answers unknown lowercase commands with ERROR: frame them;
        // anything else (`GET / HTTP/1.1`, binary protocol) is not this protocol.
        if verb.len() > 32
            || !verb
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        {
            return Err(r.malformed_at(0, "unknown command"));
        }
        // The first few words are all any command needs; counting the rest
        // avoids an allocation per message.
        let mut head: [(usize, &[u8]); 6] = [(0, &[]); 6];
        let (mut count, mut last) = (0usize, None);
        for w in ws {
            if let Some(slot) = head.get_mut(count) {
                *slot = w;
            }
            count += 1;
            last = Some(w);
        }
        let args = &head[..count.min(head.len())];
        let mut frame =
            Frame::new(Direction::ToServer, 0).set(field::COMMAND, verb_at..verb_at + verb.len());
        // gat/gats carry the exptime before the keys.
        let (keys, key_count) = match verb {
            b"gat" | b"gats" => (args.get(1..).unwrap_or(&[]), count.saturating_sub(1)),
            _ => (args, count),
        };
        let retrieval = matches!(verb, b"get" | b"gets" | b"gat" | b"gats");
        if retrieval {
            // Every key, past the few kept in `head`: policy must see them all.
            let skip = 1 + count - key_count;
            for (at, key) in words(buf, line).skip(skip) {
                frame = frame.set(field::KEY, at..at + key.len());
            }
        } else if let Some(&(at, key)) = keys.first() {
            frame = frame.set(field::KEY, at..at + key.len());
        }
        if STORAGE.contains(&verb) {
            // <cmd> <key> <flags> <exptime> <bytes> [<cas>] [noreply]\r\n<data>\r\n
            let Some(&(at, word)) = args.get(3) else {
                return Err(r.malformed_at(0, "storage command without a byte count"));
            };
            let size = size(r, word, at)?;
            r.skip(size)?;
            r.tag(b"\r\n")?;
            frame = frame.set(field::VALUE_BYTES, size as u64);
        } else if retrieval {
            frame = frame.set(field::KEYS, key_count as u64);
        }
        if last.is_some_and(|(_, w)| w == b"noreply") {
            // No response will come: do not pair it.
            frame = frame
                .set(field::NOREPLY, true)
                .correlation(Correlation::None);
        }
        frame.len = r.pos();
        Ok(frame)
    })
}

fn response(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    Reader::frame(buf, |r| {
        let mut line = r.line(MAX_LINE)?;
        let first = words(buf, line.clone()).next().map_or(&b""[..], |(_, w)| w);
        let mut frame = Frame::new(Direction::ToClient, 0).set(field::STATUS, 0..first.len());
        match first {
            b"VALUE" | b"END" => {
                // VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n … END\r\n
                let (mut hits, mut total) = (0u64, 0u64);
                loop {
                    let mut ws = words(buf, line.clone());
                    match ws.next() {
                        Some((_, b"END")) if line.len() == 3 => break,
                        Some((_, b"VALUE")) => {
                            let Some((at, word)) = ws.nth(2) else {
                                return Err(
                                    r.malformed_at(line.start, "VALUE line without a byte count")
                                );
                            };
                            let size = size(r, word, at)?;
                            r.skip(size)?;
                            r.tag(b"\r\n")?;
                            hits += 1;
                            total += size as u64;
                            line = r.line(MAX_LINE)?;
                        }
                        _ => return Err(r.malformed_at(line.start, "expected VALUE or END")),
                    }
                }
                frame = frame.set(field::HITS, hits).set(field::VALUE_BYTES, total);
            }
            b"STAT" => {
                while &buf[line.clone()] != b"END" {
                    if !buf[line.clone()].starts_with(b"STAT ") {
                        return Err(r.malformed_at(line.start, "expected STAT or END"));
                    }
                    line = r.line(MAX_LINE)?;
                }
            }
            b"CLIENT_ERROR" | b"SERVER_ERROR" => {
                let text = (first.len() + 1).min(line.end);
                frame = frame.set(field::ERROR, text..line.end);
            }
            w if REPLIES.contains(&w) || (!w.is_empty() && w.iter().all(u8::is_ascii_digit)) => {}
            _ => return Err(r.malformed_at(0, "unknown response")),
        }
        frame.len = r.pos();
        Ok(frame)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loupe_sdk::Stream;

    #[test]
    fn frames_a_pipelined_session() {
        let mut s = Stream::<Memcached>::new();
        let req = b"set k 0 0 5\r\nhello\r\nget k x\r\ndelete k noreply\r\n";
        let out = s.feed(Direction::ToServer, req).unwrap();
        assert_eq!(out.messages.len(), 3);
        assert_eq!(out.messages[0].len, 20);
        assert_eq!(out.messages[2].correlation, Correlation::None);
        let resp = b"STORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\n";
        let out = s.feed(Direction::ToClient, resp).unwrap();
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.messages[1].len, 25);
        assert_eq!(out.pending, 0);
    }

    #[test]
    fn the_command_is_the_verb_wherever_the_line_puts_it() {
        let req = b"  get k\r\n";
        let out = Stream::<Memcached>::new()
            .feed(Direction::ToServer, req)
            .unwrap();
        let frame = Frame {
            kind: out.messages[0].kind,
            len: out.messages[0].len as usize,
            correlation: out.messages[0].correlation,
            fields: out.messages[0].fields.clone(),
        };
        assert_eq!(frame.text_of(field::COMMAND, req), Some("get"));
    }

    #[test]
    fn a_multi_key_request_lists_every_key() {
        // More keys than the parser keeps words of: the list still has them all.
        let req = b"get a b c d e f g h\r\ngat 60 x y\r\n";
        let mut parser = Memcached;
        let get = parser.parse(Direction::ToServer, req).unwrap().unwrap();
        let keys: Vec<&str> = get.texts_of(field::KEY, req).collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e", "f", "g", "h"]);
        assert_eq!(get.unsigned_of(field::KEYS), Some(8));
        let rest = &req[get.len..];
        let gat = parser.parse(Direction::ToServer, rest).unwrap().unwrap();
        let keys: Vec<&str> = gat.texts_of(field::KEY, rest).collect();
        assert_eq!(keys, ["x", "y"], "gat's exptime is not a key");
    }

    #[test]
    fn waits_for_the_data_block_and_refuses_garbage() {
        let mut s = Stream::<Memcached>::new();
        let out = s.feed(Direction::ToServer, b"set k 0 0 5\r\nhel").unwrap();
        assert!(out.messages.is_empty());
        assert_eq!(out.pending, 16);
        let mut s = Stream::<Memcached>::new();
        let out = s.feed(Direction::ToServer, b"GET / HTTP/1.1\r\n").unwrap();
        assert!(out.error.is_some());
    }

    #[test]
    fn sniffs() {
        assert_eq!(
            Memcached::sniff(Direction::ToServer, b"get foo\r\n"),
            Sniff::Yes
        );
        assert_eq!(Memcached::sniff(Direction::ToServer, b"ge"), Sniff::Maybe);
        assert_eq!(
            Memcached::sniff(Direction::ToServer, b"GET / HTTP"),
            Sniff::No
        );
        assert_eq!(
            Memcached::sniff(Direction::ToClient, b"STORED\r\n"),
            Sniff::Yes
        );
    }
}
