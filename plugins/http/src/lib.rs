//! A Loupe parser plugin for HTTP/1.1 (and 1.0).
//!
//! A message is a request or response **head** (start line and headers): that is
//! what policy sees and what pairs (in order, for pipelining and keep-alive).
//! Bodies are not buffered: their bytes are framed as `event` pieces carrying a
//! `body-bytes` field and no pairing — Content-Length bodies in pieces of at most
//! 64 KiB, chunked bodies one piece per chunk (chunks over 64 KiB in pieces too)
//! and one for the last chunk with its trailers. The piece boundaries depend only
//! on the bytes, never on how they arrived.
//!
//! Responses without a body: to `HEAD`, `1xx`, `204`, `304`. Interim `1xx`
//! responses (`100 Continue` after `Expect: 100-continue`) are events, so the final
//! response pairs with the request. After `101 Switching Protocols` or a `2xx` to
//! `CONNECT` the connection is no longer HTTP: parsing stops there with an error
//! that says so. A response with neither Content-Length nor chunked coding runs
//! to the end of the connection; its body is framed in whole 64 KiB pieces.
// no_std in the component (zero imports); std natively, so tests and a cdylib link.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::collections::VecDeque;

use loupe_sdk::{
    Correlation, Direction, Frame, Info, MessageKind, ParseError, Parser, Request, Sniff, Vec,
};

/// Field ids: indexes into [`Http::INFO`]'s `fields`.
pub mod field {
    loupe_sdk::fields! {
        /// Request method (`GET`).
        METHOD: Text = "method", "request method (GET, POST…)";
        /// Request path, without the query.
        PATH: Text = "path", "request path, without the query";
        /// Request target as sent (path and query, or absolute URL).
        URL: Text = "url", "request target as sent";
        /// `Host` header.
        HOST: Text = "host", "Host header";
        /// Protocol version (`HTTP/1.1`).
        VERSION: Text = "version", "protocol version (HTTP/1.1)";
        /// Response status code.
        STATUS: Unsigned = "status", "response status code";
        /// `Content-Length` of the message.
        CONTENT_LENGTH: Unsigned = "content-length", "Content-Length of the message";
        /// `Content-Type` header.
        CONTENT_TYPE: Text = "content-type", "Content-Type header";
        /// `User-Agent` header.
        USER_AGENT: Text = "user-agent", "User-Agent header";
        /// Body bytes in a body piece (events only).
        BODY_BYTES: Unsigned = "body-bytes", "body bytes in a body piece (events)";
        /// The body is chunked.
        CHUNKED: Flag = "chunked", "the body uses chunked transfer coding";
    }
}

/// Longest head (start line and headers) accepted.
const MAX_HEAD: usize = 64 << 10;
/// Largest body piece framed at once (what is held per direction).
const PIECE: usize = 64 << 10;
/// Requests awaiting responses that the parser tracks.
const MAX_AWAITING: usize = 1024;
/// Largest Content-Length or chunk size accepted (1 TiB).
const MAX_LENGTH: u64 = 1 << 40;

/// What follows a head in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Body {
    /// The next head.
    #[default]
    None,
    /// `n` more body bytes.
    Length(u64),
    /// A chunk-size line (or the last chunk and trailers).
    ChunkLine,
    /// `n` more bytes of a chunk's data, then its CRLF.
    ChunkData(u64),
    /// The CRLF after a large chunk's data.
    ChunkEnd,
    /// Body until the connection closes.
    UntilClose,
    /// No longer HTTP (after 101 or CONNECT).
    Tunnel,
}

/// What a response needs to know about its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Head,
    Connect,
    Other,
}

/// The HTTP/1.x parser: one per connection.
#[derive(Debug, Default)]
pub struct Http {
    body: [Body; 2],
    awaiting: VecDeque<Asked>,
}

impl Parser for Http {
    const INFO: Info = Info {
        name: "http",
        version: "0.1.0",
        protocol: "http",
        default_ports: &[80],
        fields: field::FIELDS,
    };

    fn sniff(direction: Direction, bytes: &[u8]) -> Sniff {
        match direction {
            Direction::ToServer => {
                let word = bytes.split(|&b| b == b' ').next().unwrap_or(bytes);
                if word.len() == bytes.len() {
                    return if word.len() <= 16 && word.iter().all(u8::is_ascii_uppercase) {
                        Sniff::Maybe
                    } else {
                        Sniff::No
                    };
                }
                if !word.is_empty() && word.iter().all(u8::is_ascii_uppercase) {
                    Sniff::Yes
                } else {
                    Sniff::No
                }
            }
            Direction::ToClient => Sniff::from_prefix(bytes, b"HTTP/1."),
        }
    }

    fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        let d = direction.index();
        match self.body[d] {
            Body::None => match direction {
                Direction::ToServer => self.request(buf),
                Direction::ToClient => self.response(buf),
            },
            Body::Tunnel => Err(ParseError::new(
                0,
                "the connection switched protocols: HTTP parsing stops",
            )),
            Body::Length(n) => {
                let take = n.min(PIECE as u64) as usize;
                if buf.len() < take {
                    return Ok(None);
                }
                self.body[d] = if n == take as u64 {
                    Body::None
                } else {
                    Body::Length(n - take as u64)
                };
                Ok(Some(piece(direction, take, take)))
            }
            Body::UntilClose => {
                if buf.len() < PIECE {
                    return Ok(None);
                }
                Ok(Some(piece(direction, PIECE, PIECE)))
            }
            Body::ChunkLine => self.chunk_line(direction, buf),
            Body::ChunkData(n) => {
                let take = n.min(PIECE as u64) as usize;
                if buf.len() < take {
                    return Ok(None);
                }
                self.body[d] = if n == take as u64 {
                    Body::ChunkEnd
                } else {
                    Body::ChunkData(n - take as u64)
                };
                Ok(Some(piece(direction, take, take)))
            }
            Body::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ParseError::new(0, "chunk data not followed by CRLF"));
                }
                self.body[d] = Body::ChunkLine;
                Ok(Some(piece(direction, 2, 0)))
            }
        }
    }

    fn deny_reply(_request: &Request<'_>) -> Vec<u8> {
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nAccess denied"
            .to_vec()
    }
}

loupe_sdk::export_parser!(Http);

/// A body piece: `len` bytes of which `data` are body data.
fn piece(direction: Direction, len: usize, data: usize) -> Frame {
    Frame::new(direction, len)
        .kind(MessageKind::Event)
        .correlation(Correlation::None)
        .set(field::BODY_BYTES, data as u64)
}

/// The end of the head at the start of `buf` (index after its blank line).
fn head_end(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    match window.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => Ok(Some(i + 4)),
        None if window.len() >= MAX_HEAD => Err(ParseError::new(0, "head longer than 64 KiB")),
        None => Ok(None),
    }
}

/// The head's lines after the start line, as (name, value) byte ranges.
struct Headers {
    content_length: Option<u64>,
    chunked: bool,
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(buf: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && matches!(buf[s], b' ' | b'\t') {
        s += 1;
    }
    while e > s && matches!(buf[e - 1], b' ' | b'\t') {
        e -= 1;
    }
    (s, e)
}

fn number(bytes: &[u8], at: usize, radix: u32) -> Result<u64, ParseError> {
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(ParseError::new(at, "invalid number"));
    }
    let mut v: u64 = 0;
    for &b in bytes {
        let digit = (b as char)
            .to_digit(radix)
            .ok_or_else(|| ParseError::new(at, "invalid number"))?;
        v = v * u64::from(radix) + u64::from(digit);
    }
    if v > MAX_LENGTH {
        return Err(ParseError::new(at, "length over 1 TiB"));
    }
    Ok(v)
}

/// Reads the header lines of a head from `from` to `end` (the blank line),
/// adding the selected ones to `frame`.
fn headers(
    buf: &[u8],
    from: usize,
    end: usize,
    mut frame: Frame,
) -> Result<(Frame, Headers), ParseError> {
    let mut h = Headers {
        content_length: None,
        chunked: false,
    };
    let mut at = from;
    while at < end - 2 {
        let eol = at
            + buf[at..end]
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap_or(end - at);
        let line = &buf[at..eol];
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ParseError::new(at, "header line without a colon"));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(ParseError::new(at, "invalid header name"));
        }
        if line.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
            return Err(ParseError::new(at, "control byte in a header"));
        }
        let (vs, ve) = trim(buf, at + colon + 1, eol);
        let value = &buf[vs..ve];
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"host") {
            frame = frame.set(field::HOST, vs..ve);
        } else if is(b"content-type") {
            frame = frame.set(field::CONTENT_TYPE, vs..ve);
        } else if is(b"user-agent") {
            frame = frame.set(field::USER_AGENT, vs..ve);
        } else if is(b"content-length") {
            let n = number(value, vs, 10)?;
            if h.content_length.is_some_and(|m| m != n) {
                return Err(ParseError::new(at, "conflicting Content-Length headers"));
            }
            h.content_length = Some(n);
        } else if is(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
            let (s, e) = trim(last, 0, last.len());
            h.chunked = last[s..e].eq_ignore_ascii_case(b"chunked");
        }
        at = eol + 2;
    }
    if h.chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        frame = frame.set(field::CHUNKED, true);
    } else if let Some(n) = h.content_length {
        frame = frame.set(field::CONTENT_LENGTH, n);
    }
    Ok((frame, h))
}

fn version(bytes: &[u8], at: usize) -> Result<(), ParseError> {
    if matches!(bytes, b"HTTP/1.1" | b"HTTP/1.0") {
        Ok(())
    } else {
        Err(ParseError::new(at, "not HTTP/1.0 or HTTP/1.1"))
    }
}

impl Http {
    fn request(&mut self, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        // Reject garbage before waiting for a whole head.
        let method_end = buf.iter().position(|&b| b == b' ');
        let method_len = method_end.unwrap_or(buf.len());
        if method_len > 32 || !buf[..method_len].iter().all(|&b| is_token(b)) {
            return Err(ParseError::new(0, "not an HTTP request line"));
        }
        let Some(end) = head_end(buf)? else {
            return Ok(None);
        };
        let line_end = buf[..end]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(end);
        let line = &buf[..line_end];
        let mut parts = line.split(|&b| b == b' ');
        let (Some(method), Some(target), Some(ver), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseError::new(
                0,
                "request line is not METHOD TARGET VERSION",
            ));
        };
        if method.is_empty() || target.is_empty() || target.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(ParseError::new(0, "invalid request line"));
        }
        let t = method.len() + 1;
        let v = t + target.len() + 1;
        version(ver, v)?;
        let path_len = target
            .iter()
            .position(|&b| b == b'?' || b == b'#')
            .unwrap_or(target.len());
        let frame = Frame::new(Direction::ToServer, end)
            .set(field::METHOD, 0..method.len())
            .set(field::PATH, t..t + path_len)
            .set(field::URL, t..t + target.len())
            .set(field::VERSION, v..v + ver.len());
        let (frame, h) = headers(buf, line_end + 2, end, frame)?;
        if self.awaiting.len() >= MAX_AWAITING {
            return Err(ParseError::new(0, "too many requests awaiting responses"));
        }
        self.awaiting.push_back(match method {
            b"HEAD" => Asked::Head,
            b"CONNECT" => Asked::Connect,
            _ => Asked::Other,
        });
        self.body[0] = if h.chunked {
            Body::ChunkLine
        } else {
            match h.content_length {
                Some(n) if n > 0 => Body::Length(n),
                _ => Body::None,
            }
        };
        Ok(Some(frame))
    }

    fn response(&mut self, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        let probe = &buf[..buf.len().min(7)];
        if !b"HTTP/1.".starts_with(probe) {
            return Err(ParseError::new(0, "not an HTTP status line"));
        }
        let Some(end) = head_end(buf)? else {
            return Ok(None);
        };
        let line_end = buf[..end]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(end);
        let line = &buf[..line_end];
        if line.len() < 12 || line[8] != b' ' || (line.len() > 12 && line[12] != b' ') {
            return Err(ParseError::new(0, "invalid status line"));
        }
        version(&line[..8], 0)?;
        let status = number(&line[9..12], 9, 10)?;
        if !(100..=999).contains(&status) {
            return Err(ParseError::new(9, "invalid status code"));
        }
        let frame = Frame::new(Direction::ToClient, end)
            .set(field::VERSION, 0..8)
            .set(field::STATUS, status);
        let (mut frame, h) = headers(buf, line_end + 2, end, frame)?;
        if (100..200).contains(&status) && status != 101 {
            // Interim: the final response answers the request.
            return Ok(Some(
                frame
                    .kind(MessageKind::Event)
                    .correlation(Correlation::None),
            ));
        }
        let asked = self.awaiting.pop_front();
        if asked.is_none() {
            frame = frame
                .kind(MessageKind::Event)
                .correlation(Correlation::None);
        }
        self.body[1] = if status == 101 || (asked == Some(Asked::Connect) && status / 100 == 2) {
            self.body[0] = Body::Tunnel;
            Body::Tunnel
        } else if asked == Some(Asked::Head) || status == 204 || status == 304 {
            Body::None
        } else if h.chunked {
            Body::ChunkLine
        } else {
            match h.content_length {
                Some(0) => Body::None,
                Some(n) => Body::Length(n),
                None => Body::UntilClose,
            }
        };
        Ok(Some(frame))
    }

    /// A chunk-size line: with its data and CRLF when the chunk is small, or the
    /// last chunk with its trailers.
    fn chunk_line(
        &mut self,
        direction: Direction,
        buf: &[u8],
    ) -> Result<Option<Frame>, ParseError> {
        let d = direction.index();
        let window = &buf[..buf.len().min(1024)];
        let Some(eol) = window.windows(2).position(|w| w == b"\r\n") else {
            if window.len() >= 1024 {
                return Err(ParseError::new(0, "chunk-size line longer than 1 KiB"));
            }
            return Ok(None);
        };
        let size_end = buf[..eol]
            .iter()
            .position(|&b| b == b';' || b == b' ' || b == b'\t')
            .unwrap_or(eol);
        let size = number(&buf[..size_end], 0, 16)?;
        let after = eol + 2;
        if size == 0 {
            // Last chunk, trailers, blank line.
            if buf.len() >= after + 2 && &buf[after..after + 2] == b"\r\n" {
                self.body[d] = Body::None;
                return Ok(Some(piece(direction, after + 2, 0)));
            }
            let Some(end) = head_end(&buf[eol..])? else {
                return Ok(None);
            };
            self.body[d] = Body::None;
            return Ok(Some(piece(direction, eol + end, 0)));
        }
        if size <= PIECE as u64 {
            let end = after + size as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(ParseError::new(end - 2, "chunk data not followed by CRLF"));
            }
            return Ok(Some(piece(direction, end, size as usize)));
        }
        self.body[d] = Body::ChunkData(size);
        Ok(Some(piece(direction, after, 0)))
    }
}

#[cfg(test)]
mod tests;
