//! A Loupe parser plugin for Redis: RESP2 and RESP3.
//!
//! Requests are RESP arrays of bulk strings (what every client library sends) or
//! inline commands (`PING\r\n`, what `telnet` users type). Replies are any RESP2 or
//! RESP3 value — maps, sets, attributes, pushes, big numbers, verbatim strings,
//! streamed strings and aggregates included (`resp.rs`).
//!
//! Pairing is by order (RESP pipelining): the n-th reply answers the n-th request.
//! Three things break the one-to-one rule, and the parser keeps the little state
//! needed to keep the agent's count right:
//! - RESP3 pushes (`>`) and, on RESP2 connections in subscribe mode, `message` /
//!   `pmessage` / `smessage` arrays are events, never paired;
//! - a RESP2 `SUBSCRIBE a b c` gets one confirmation per channel: the first
//!   answers the request, the others are events; in RESP3 the confirmations are
//!   pushes, so the request expects no paired reply;
//! - replies with no request waiting (after `MONITOR`, or when the capture
//!   started mid-connection) are events.
//!
//! `SELECT n` and `HELLO 2|3` take effect when the request is seen (so pipelined
//! requests after them carry the new `db`) and are undone if their reply is an
//! error.
// no_std in the component (zero imports); std natively, so tests and a cdylib link.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod commands;
mod resp;

use alloc::collections::VecDeque;
use alloc::format;

use loupe_sdk::{
    Correlation, Direction, Frame, Info, MessageKind, ParseError, Parser, Sniff, String, TextField,
    Vec,
};

use commands::KeyAt;
use resp::{Kind, MAX_LINE, MAX_MESSAGE, Step};

/// Field ids: indexes into [`Redis::INFO`]'s `fields`.
pub mod field {
    loupe_sdk::fields! {
        /// Request command, uppercase (`GET`, `CONFIG`).
        COMMAND: Text = "command", "request command, uppercase (GET, SET, CONFIG…)";
        /// Subcommand, uppercase, for commands that have one (`GET` of `CONFIG GET`).
        SUBCOMMAND: Text = "subcommand", "subcommand, uppercase, where Redis has one (CONFIG GET, CLIENT LIST)";
        /// First key of a request, by the command table.
        KEY: Bytes = "key", "first key of the request (by command table)";
        /// Number of arguments after the command name.
        ARGS: Unsigned = "args", "number of arguments after the command name";
        /// Database the request runs in (tracked across `SELECT`).
        DB: Unsigned = "db", "database the request runs in (tracked across SELECT)";
        /// Type of a reply (`simple-string`, `error`, `map`, `push`…).
        REPLY_TYPE: Text = "reply-type", "RESP type of the reply (simple-string, error, integer, bulk-string, array, null, map, set, push…)";
        /// First word of an error reply (`ERR`, `WRONGTYPE`, `NOPERM`).
        ERROR_CODE: Text = "error-code", "first word of an error reply (ERR, WRONGTYPE, NOPERM…)";
        /// Whole text of an error reply.
        ERROR: Text = "error", "text of an error reply";
    }
}

/// Requests awaiting a reply that the parser tracks at most (runs of plain
/// requests count once); a client pipelining more than this ends the L7 view.
const MAX_AWAITING: usize = 1024;
/// Plain requests awaiting replies, in total.
const MAX_PLAIN: u64 = 1 << 20;
/// Longest command or subcommand name.
const MAX_NAME: usize = 64;

/// What a request awaiting its reply needs when the reply comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// `n` requests with nothing to undo.
    Plain(u64),
    /// `SELECT`: the database before it, restored if the reply is an error.
    Select { prev: u64 },
    /// `HELLO`: the protocol before it, restored if the reply is an error.
    Hello { prev_resp3: bool },
    /// A RESP2 (un)subscribe: its first confirmation answers it.
    Subscribe,
}

/// The Redis parser: one per connection.
#[derive(Debug, Default)]
pub struct Redis {
    resp3: bool,
    db: u64,
    /// RESP2 connection in subscribe mode (message arrays are events).
    subscribed: bool,
    awaiting: VecDeque<Awaiting>,
    /// Per direction: bytes needed before the message at the buffer's start can
    /// be whole (so a large value arriving in many segments is not rescanned).
    need: [usize; 2],
}

impl Parser for Redis {
    const INFO: Info = Info {
        name: "redis",
        version: "0.1.0",
        protocol: "redis",
        default_ports: &[6379],
        fields: field::FIELDS,
    };

    fn sniff(direction: Direction, bytes: &[u8]) -> Sniff {
        match direction {
            Direction::ToServer => match bytes {
                [] | [b'*'] => Sniff::Maybe,
                [b'*', d, ..] if d.is_ascii_digit() => Sniff::Yes,
                [b'*', ..] => Sniff::No,
                _ => {
                    let word_len = bytes
                        .iter()
                        .position(|b| matches!(b, b' ' | b'\r' | b'\n'))
                        .unwrap_or(bytes.len());
                    let word = &bytes[..word_len];
                    let mut upper = [0u8; MAX_NAME];
                    let Some(name) = uppercase(word, &mut upper) else {
                        return Sniff::No;
                    };
                    if word_len == bytes.len() {
                        Sniff::Maybe
                    } else if commands::key_at(name) != KeyAt::None
                        || matches!(name, b"PING" | b"INFO" | b"HELLO" | b"AUTH" | b"SELECT")
                    {
                        Sniff::Yes
                    } else {
                        Sniff::No
                    }
                }
            },
            Direction::ToClient => match resp::value(bytes, 0, 0) {
                Ok(Step::Done(_)) => Sniff::Yes,
                Ok(Step::Need(_)) => Sniff::Maybe,
                Err(_) => Sniff::No,
            },
        }
    }

    fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        let d = direction.index();
        if buf.len() < self.need[d] {
            return Ok(None);
        }
        let step = match direction {
            Direction::ToServer => self.request(buf)?,
            Direction::ToClient => match resp::value(buf, 0, 0)? {
                Step::Done(v) => Step::Done(self.reply(buf, &v)),
                Step::Need(n) => Step::Need(n),
            },
        };
        match step {
            Step::Done(frame) => {
                self.need[d] = 0;
                Ok(Some(frame))
            }
            Step::Need(n) if n > MAX_MESSAGE || buf.len() >= MAX_MESSAGE => {
                Err(ParseError::new(0, "message larger than 8 MiB"))
            }
            Step::Need(n) => {
                self.need[d] = n;
                Ok(None)
            }
        }
    }

    fn deny_reply(request: &loupe_sdk::Request<'_>) -> Vec<u8> {
        // A simple error reads the same in RESP2 and RESP3 (and a denied `HELLO 3`
        // leaves the connection on RESP2), so one form answers every connection.
        match request.text(field::COMMAND) {
            Some(name) => format!(
                "-NOPERM policy denies running the '{}' command\r\n",
                name.to_ascii_lowercase()
            )
            .into_bytes(),
            None => b"-NOPERM policy denies this command\r\n".to_vec(),
        }
    }
}

loupe_sdk::export_parser!(Redis);

/// `word` uppercased into `out`, if it can be a command name (1–64 printable
/// ASCII bytes).
fn uppercase<'a>(word: &[u8], out: &'a mut [u8; MAX_NAME]) -> Option<&'a [u8]> {
    if word.is_empty() || word.len() > MAX_NAME || !word.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let out = &mut out[..word.len()];
    out.copy_from_slice(word);
    out.make_ascii_uppercase();
    Some(out)
}

/// Byte ranges of a request's first arguments.
type Spans = Vec<(usize, usize)>;

/// Arguments whose spans a request keeps (command, subcommand / `SELECT` index /
/// `HELLO` version).
const KEEP: usize = 2;

struct Request {
    end: usize,
    /// Spans of arguments 0..KEEP.
    first: Spans,
    count: usize,
    key: Option<(usize, usize)>,
}

impl Redis {
    fn request(&mut self, buf: &[u8]) -> Result<Step<Frame>, ParseError> {
        let req = match buf.first() {
            Some(b'*') => resp::need!(multibulk(buf)?),
            _ => resp::need!(inline(buf)?),
        };
        let mut frame = Frame::new(Direction::ToServer, req.end);
        let mut upper = [0u8; MAX_NAME];
        let Some(&(s, e)) = req.first.first() else {
            // An empty request (`*0`, a blank inline line): Redis answers nothing.
            return Ok(Step::Done(frame.correlation(Correlation::None)));
        };
        let Some(cmd) = uppercase(&buf[s..e], &mut upper) else {
            return Err(ParseError::new(s, "command name is not printable ASCII"));
        };
        frame = text_field(frame, field::COMMAND, buf, s, e, cmd);
        if commands::has_subcommand(cmd)
            && let Some(&(s, e)) = req.first.get(1)
        {
            let mut sub = [0u8; MAX_NAME];
            if let Some(name) = uppercase(&buf[s..e], &mut sub) {
                frame = text_field(frame, field::SUBCOMMAND, buf, s, e, name);
            }
        }
        if let Some((s, e)) = req.key {
            frame = frame.set(field::KEY, s..e);
        }
        let arg1 = req.first.get(1).map(|&(s, e)| &buf[s..e]);
        frame = frame.set(field::ARGS, (req.count - 1) as u64);
        let awaiting = match cmd {
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
            | b"SUNSUBSCRIBE" => {
                if cmd.ends_with(b"SUBSCRIBE") && !cmd.ends_with(b"UNSUBSCRIBE") {
                    self.subscribed = !self.resp3;
                }
                if self.resp3 {
                    // Confirmations come as pushes.
                    frame = frame.set(field::DB, self.db);
                    return Ok(Step::Done(frame.correlation(Correlation::None)));
                }
                Awaiting::Subscribe
            }
            b"SELECT" => match arg1.and_then(|a| resp::integer(a, 0).ok()) {
                Some(n) if n >= 0 && req.count == 2 => {
                    let prev = self.db;
                    self.db = n as u64;
                    Awaiting::Select { prev }
                }
                _ => Awaiting::Plain(1),
            },
            b"HELLO" => match arg1 {
                Some(b"2") | Some(b"3") => {
                    let prev_resp3 = self.resp3;
                    self.resp3 = arg1 == Some(b"3");
                    Awaiting::Hello { prev_resp3 }
                }
                _ => Awaiting::Plain(1),
            },
            b"RESET" => {
                self.db = 0;
                self.resp3 = false;
                self.subscribed = false;
                Awaiting::Plain(1)
            }
            _ => Awaiting::Plain(1),
        };
        frame = frame.set(field::DB, self.db);
        self.wait_for(awaiting)?;
        Ok(Step::Done(frame))
    }

    fn wait_for(&mut self, awaiting: Awaiting) -> Result<(), ParseError> {
        if let (Awaiting::Plain(n), Some(Awaiting::Plain(m))) = (awaiting, self.awaiting.back_mut())
        {
            if *m + n > MAX_PLAIN {
                return Err(ParseError::new(0, "more than 1M requests awaiting replies"));
            }
            *m += n;
            return Ok(());
        }
        if self.awaiting.len() >= MAX_AWAITING {
            return Err(ParseError::new(0, "too many requests awaiting replies"));
        }
        self.awaiting.push_back(awaiting);
        Ok(())
    }

    /// The request the next reply answers, if any.
    fn answered(&mut self) -> Option<Awaiting> {
        let front = self.awaiting.front_mut()?;
        if let Awaiting::Plain(n) = front
            && *n > 1
        {
            *n -= 1;
            return Some(Awaiting::Plain(1));
        }
        self.awaiting.pop_front()
    }

    fn reply(&mut self, buf: &[u8], v: &resp::Scanned) -> Frame {
        let mut frame = Frame::new(Direction::ToClient, v.end)
            .set(field::REPLY_TYPE, String::from(v.kind.name()));
        let is_error = matches!(v.kind, Kind::Error | Kind::BulkError);
        if is_error && let Some((s, e)) = v.text {
            let code_end = buf[s..e]
                .iter()
                .position(|&b| b == b' ')
                .map_or(e, |i| s + i);
            frame = frame
                .set(field::ERROR_CODE, s..code_end)
                .set(field::ERROR, s..e);
        }
        let event = |frame: Frame| {
            frame
                .kind(MessageKind::Event)
                .correlation(Correlation::None)
        };
        if v.kind == Kind::Push {
            return event(frame);
        }
        if !self.resp3 && v.kind == Kind::Array {
            let first = v.text.map_or(&b""[..], |(s, e)| &buf[s..e]);
            let first = if first.len() <= 16 { first } else { &b""[..] };
            let mut word = [0u8; MAX_NAME];
            let word = uppercase(first, &mut word).unwrap_or_default();
            match word {
                b"MESSAGE" | b"PMESSAGE" | b"SMESSAGE" if self.subscribed => return event(frame),
                b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
                | b"SUNSUBSCRIBE" => {
                    if word.ends_with(b"UNSUBSCRIBE") && v.last_int == Some(0) {
                        self.subscribed = false;
                    }
                    return if self.awaiting.front() == Some(&Awaiting::Subscribe) {
                        self.awaiting.pop_front();
                        frame
                    } else if self.subscribed || word.ends_with(b"UNSUBSCRIBE") {
                        // The 2nd… confirmation of a multi-channel (un)subscribe.
                        event(frame)
                    } else {
                        self.answer(is_error);
                        frame
                    };
                }
                _ => {}
            }
        }
        if self.answer(is_error) {
            frame
        } else {
            // Nothing awaits a reply: MONITOR output, or a capture that started
            // mid-connection.
            event(frame)
        }
    }

    /// Pairs a reply with the oldest request awaiting one, undoing its effect on
    /// the connection if the reply is an error. False if none awaits.
    fn answer(&mut self, is_error: bool) -> bool {
        match self.answered() {
            None => false,
            Some(Awaiting::Select { prev }) if is_error => {
                self.db = prev;
                true
            }
            Some(Awaiting::Hello { prev_resp3 }) if is_error => {
                self.resp3 = prev_resp3;
                true
            }
            Some(_) => true,
        }
    }
}

/// A text field: a slice when the bytes already are the normalised form,
/// computed otherwise.
fn text_field(frame: Frame, id: TextField, buf: &[u8], s: usize, e: usize, norm: &[u8]) -> Frame {
    if &buf[s..e] == norm {
        frame.set(id, s..e)
    } else {
        frame.set(id, String::from_utf8_lossy(norm).into_owned())
    }
}

/// Tracks the first key of a request while its arguments are read.
struct KeyFinder {
    at: KeyAt,
    key: Option<(usize, usize)>,
    after_streams: bool,
}

impl KeyFinder {
    fn new(cmd: &[u8]) -> Self {
        let mut upper = [0u8; MAX_NAME];
        let at = uppercase(cmd, &mut upper).map_or(KeyAt::None, commands::key_at);
        Self {
            at,
            key: None,
            after_streams: false,
        }
    }

    fn see(&mut self, i: usize, arg: &[u8], span: (usize, usize)) {
        if self.key.is_some() {
            return;
        }
        match self.at {
            KeyAt::Arg(n) if i == n => self.key = Some(span),
            KeyAt::AfterNumkeys(n) if i == n => {
                if resp::integer(arg, 0).unwrap_or(0) > 0 {
                    self.at = KeyAt::Arg(n + 1);
                }
            }
            KeyAt::AfterStreams if self.after_streams => self.key = Some(span),
            KeyAt::AfterStreams if i > 0 => {
                self.after_streams = arg.eq_ignore_ascii_case(b"STREAMS");
            }
            _ => {}
        }
    }
}

/// `*N\r\n` then N bulk strings.
fn multibulk(buf: &[u8]) -> Result<Step<Request>, ParseError> {
    let eol = resp::need!(resp::line(buf, 0)?);
    let n = resp::integer(&buf[1..eol], 1)?;
    let n = usize::try_from(n).map_err(|_| ParseError::new(1, "negative request length"))?;
    // Each argument takes at least 6 bytes (`$0\r\n\r\n`).
    if n > MAX_MESSAGE / 6 {
        return Err(ParseError::new(1, "request with too many arguments"));
    }
    let mut at = eol + 2;
    let mut first = Vec::new();
    let mut keys = None;
    for i in 0..n {
        if buf.get(at).is_some_and(|&b| b != b'$') {
            return Err(ParseError::new(at, "request argument is not a bulk string"));
        }
        let v = resp::need!(resp::value(buf, at, 1)?);
        let (s, e) = match (v.kind, v.text) {
            (Kind::BulkString, Some(span)) => span,
            _ => return Err(ParseError::new(at, "request argument is not a bulk string")),
        };
        if i < KEEP {
            first.push((s, e));
        }
        let finder = keys.get_or_insert_with(|| KeyFinder::new(&buf[s..e]));
        finder.see(i, &buf[s..e], (s, e));
        at = v.end;
    }
    Ok(Step::Done(Request {
        end: at,
        first,
        count: n,
        key: keys.and_then(|k| k.key),
    }))
}

/// An inline command: words separated by spaces, up to `\n`.
fn inline(buf: &[u8]) -> Result<Step<Request>, ParseError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if window.len() >= MAX_LINE {
            return Err(ParseError::new(0, "inline command longer than 64 KiB"));
        }
        return Ok(Step::Need(buf.len() + 1));
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if core::str::from_utf8(line).is_err()
        || line.iter().any(|&b| b.is_ascii_control() && b != b'\t')
    {
        return Err(ParseError::new(0, "inline command is not text"));
    }
    let mut first = Vec::new();
    let mut keys: Option<KeyFinder> = None;
    let mut count = 0;
    let mut at = 0;
    for word in line.split(|&b| b == b' ' || b == b'\t') {
        let span = (at, at + word.len());
        at += word.len() + 1;
        if word.is_empty() {
            continue;
        }
        if count < KEEP {
            first.push(span);
        }
        keys.get_or_insert_with(|| KeyFinder::new(word))
            .see(count, word, span);
        count += 1;
    }
    Ok(Step::Done(Request {
        end: nl + 1,
        first,
        count,
        key: keys.and_then(|k| k.key),
    }))
}

#[cfg(test)]
mod tests;
