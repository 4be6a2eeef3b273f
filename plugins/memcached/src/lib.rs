//! A Loupe parser plugin for memcached's text protocol — the example the SDK
//! guide (`sdk/README.md`) builds step by step.
//!
//! Requests are one command line, plus a data block for the storage commands
//! (`set`, `add`, `replace`, `append`, `prepend`, `cas`). Responses are one line,
//! except retrievals (`VALUE …` blocks up to `END`) and `stats` (`STAT …` lines up
//! to `END`). Requests sent with `noreply` get no response, so they are not paired.
// no_std in the component (zero imports); std natively, so tests and a cdylib link.
#![cfg_attr(target_arch = "wasm32", no_std)]

use loupe_sdk::{
    Correlation, Direction, FieldSpec, FieldType, Frame, Info, ParseError, Parser, Sniff, Vec,
};

/// Field ids: indexes into [`Memcached::INFO`]'s `fields`.
pub mod field {
    /// Request command verb (`get`, `set`…).
    pub const COMMAND: u16 = 0;
    /// First key of a request.
    pub const KEY: u16 = 1;
    /// Number of keys in a request.
    pub const KEYS: u16 = 2;
    /// Size of the data block (storage request) or of all values (retrieval response).
    pub const VALUE_BYTES: u16 = 3;
    /// The request asked for no reply.
    pub const NOREPLY: u16 = 4;
    /// First word of a response (`STORED`, `VALUE`, `END`, `ERROR`…).
    pub const STATUS: u16 = 5;
    /// Values returned by a retrieval.
    pub const HITS: u16 = 6;
    /// Text of a `CLIENT_ERROR` / `SERVER_ERROR`.
    pub const ERROR: u16 = 7;
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
        fields: &[
            FieldSpec {
                name: "command",
                ty: FieldType::Text,
                description: "request command verb (get, set, delete…)",
            },
            FieldSpec {
                name: "key",
                ty: FieldType::Text,
                description: "first key of the request",
            },
            FieldSpec {
                name: "keys",
                ty: FieldType::Unsigned,
                description: "number of keys in the request",
            },
            FieldSpec {
                name: "value-bytes",
                ty: FieldType::Unsigned,
                description: "bytes of data stored or returned",
            },
            FieldSpec {
                name: "noreply",
                ty: FieldType::Flag,
                description: "the request asked for no reply",
            },
            FieldSpec {
                name: "status",
                ty: FieldType::Text,
                description: "first word of the response (STORED, END, ERROR…)",
            },
            FieldSpec {
                name: "hits",
                ty: FieldType::Unsigned,
                description: "values returned by a retrieval",
            },
            FieldSpec {
                name: "error",
                ty: FieldType::Text,
                description: "message of CLIENT_ERROR / SERVER_ERROR",
            },
        ],
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

    fn deny_reply(_request: &[u8]) -> Vec<u8> {
        b"SERVER_ERROR access denied\r\n".to_vec()
    }
}

loupe_sdk::export_parser!(Memcached);

/// The end of the line starting `buf` (index of its `\r\n`), or `None` if the
/// line is incomplete; an error past [`MAX_LINE`].
fn line_end(buf: &[u8], from: usize) -> Result<Option<usize>, ParseError> {
    let window = &buf[from..buf.len().min(from + MAX_LINE)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if window.len() >= MAX_LINE => {
            Err(ParseError::new(from, "line longer than 2048 bytes"))
        }
        None => Ok(None),
    }
}

/// Splits a line into words, each with its offset in `buf`.
fn words(buf: &[u8], start: usize, end: usize) -> impl Iterator<Item = (usize, &[u8])> {
    let line = &buf[start..end];
    let mut at = start;
    line.split(|&b| b == b' ').filter_map(move |w| {
        let here = at;
        at += w.len() + 1;
        (!w.is_empty()).then_some((here, w))
    })
}

fn number(word: &[u8], at: usize) -> Result<usize, ParseError> {
    let text =
        core::str::from_utf8(word).map_err(|_| ParseError::new(at, "number is not ASCII"))?;
    text.parse()
        .map_err(|_| ParseError::new(at, "not a number"))
}

fn request(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    let Some(eol) = line_end(buf, 0)? else {
        return Ok(None);
    };
    let mut ws = words(buf, 0, eol);
    let Some((_, verb)) = ws.next() else {
        return Err(ParseError::new(0, "empty command line"));
    };
    // memcached answers unknown lowercase commands with ERROR: frame them; anything
    // else (`GET / HTTP/1.1`, binary protocol) is not this protocol.
    if verb.len() > 32
        || !verb
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
    {
        return Err(ParseError::new(0, "unknown command"));
    }
    // The first few words are all any command needs; counting the rest avoids
    // an allocation per message.
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
    let noreply = last.is_some_and(|(_, w)| w == b"noreply");
    let mut len = eol + 2;
    let mut frame = Frame::new(Direction::ToServer, 0).slice(field::COMMAND, 0..verb.len());
    // gat/gats carry the exptime before the keys.
    let (keys, key_count) = match verb {
        b"gat" | b"gats" => (args.get(1..).unwrap_or(&[]), count.saturating_sub(1)),
        _ => (args, count),
    };
    if let Some(&(at, key)) = keys.first() {
        frame = frame.slice(field::KEY, at..at + key.len());
    }
    if STORAGE.contains(&verb) {
        // <cmd> <key> <flags> <exptime> <bytes> [<cas>] [noreply]
        let Some(&(at, size)) = args.get(3) else {
            return Err(ParseError::new(0, "storage command without a byte count"));
        };
        let size = number(size, at)?;
        if size > MAX_VALUE {
            return Err(ParseError::new(at, "data block larger than 1 MiB"));
        }
        len += size + 2;
        if buf.len() < len {
            return Ok(None);
        }
        if &buf[len - 2..len] != b"\r\n" {
            return Err(ParseError::new(len - 2, "data block not followed by CRLF"));
        }
        frame = frame.unsigned(field::VALUE_BYTES, size as u64);
    } else if matches!(verb, b"get" | b"gets" | b"gat" | b"gats") {
        frame = frame.unsigned(field::KEYS, key_count as u64);
    }
    frame.len = len;
    if noreply {
        frame = frame
            .field(field::NOREPLY, loupe_sdk::Value::Flag(true))
            .correlation(Correlation::None);
    }
    Ok(Some(frame))
}

fn response(buf: &[u8]) -> Result<Option<Frame>, ParseError> {
    let Some(eol) = line_end(buf, 0)? else {
        return Ok(None);
    };
    let first = words(buf, 0, eol).next().map_or(&b""[..], |(_, w)| w);
    let mut frame = Frame::new(Direction::ToClient, 0).slice(field::STATUS, 0..first.len());
    match first {
        b"VALUE" | b"END" => {
            // VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n … END\r\n
            let (mut at, mut eol, mut hits, mut total) = (0, eol, 0u64, 0usize);
            loop {
                let mut ws = words(buf, at, eol);
                match ws.next() {
                    Some((_, b"END")) if eol == at + 3 => break,
                    Some((_, b"VALUE")) => {
                        let Some((size_at, size)) = ws.nth(2) else {
                            return Err(ParseError::new(at, "VALUE line without a byte count"));
                        };
                        let size = number(size, size_at)?;
                        if size > MAX_VALUE {
                            return Err(ParseError::new(size_at, "value larger than 1 MiB"));
                        }
                        let data_end = eol + 2 + size;
                        if buf.len() < data_end + 2 {
                            return Ok(None);
                        }
                        if &buf[data_end..data_end + 2] != b"\r\n" {
                            return Err(ParseError::new(data_end, "value not followed by CRLF"));
                        }
                        hits += 1;
                        total += size;
                        at = data_end + 2;
                        eol = match line_end(buf, at)? {
                            Some(e) => e,
                            None => return Ok(None),
                        };
                    }
                    _ => return Err(ParseError::new(at, "expected VALUE or END")),
                }
            }
            frame = frame
                .unsigned(field::HITS, hits)
                .unsigned(field::VALUE_BYTES, total as u64);
            frame.len = eol + 2;
        }
        b"STAT" => {
            let mut at = 0;
            let mut eol = eol;
            while &buf[at..eol] != b"END" {
                if !buf[at..eol].starts_with(b"STAT ") {
                    return Err(ParseError::new(at, "expected STAT or END"));
                }
                at = eol + 2;
                eol = match line_end(buf, at)? {
                    Some(e) => e,
                    None => return Ok(None),
                };
            }
            frame.len = eol + 2;
        }
        b"CLIENT_ERROR" | b"SERVER_ERROR" => {
            let msg = (first.len() + 1).min(eol);
            frame = frame.slice(field::ERROR, msg..eol);
            frame.len = eol + 2;
        }
        w if REPLIES.contains(&w) || (!w.is_empty() && w.iter().all(u8::is_ascii_digit)) => {
            frame.len = eol + 2;
        }
        _ => return Err(ParseError::new(0, "unknown response")),
    }
    Ok(Some(frame))
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
