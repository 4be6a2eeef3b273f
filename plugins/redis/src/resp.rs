//! The RESP value scanner: finds where one RESP2 or RESP3 value ends without
//! copying it, and says what type it is. Every length and count is bounded, and
//! nesting is limited, so hostile input ends in an error, never in a hang, a deep
//! recursion or a huge allocation.

use loupe_sdk::ParseError;

/// Largest message the parser waits for (the SDK buffers a message until it is
/// whole); a value announcing more ends the connection's L7 view.
pub(crate) const MAX_MESSAGE: usize = 8 << 20;
/// Longest simple line (`+…`, `-…`, `:…`, length headers, inline commands).
pub(crate) const MAX_LINE: usize = 64 << 10;
/// Deepest nesting of aggregates accepted.
pub(crate) const MAX_DEPTH: usize = 32;

/// The type of a RESP value, as the `reply-type` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    SimpleString,
    Error,
    Integer,
    BulkString,
    Array,
    Null,
    Boolean,
    Double,
    BigNumber,
    BulkError,
    Verbatim,
    Map,
    Set,
    Push,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::SimpleString => "simple-string",
            Self::Error => "error",
            Self::Integer => "integer",
            Self::BulkString => "bulk-string",
            Self::Array => "array",
            Self::Null => "null",
            Self::Boolean => "boolean",
            Self::Double => "double",
            Self::BigNumber => "big-number",
            Self::BulkError => "bulk-error",
            Self::Verbatim => "verbatim-string",
            Self::Map => "map",
            Self::Set => "set",
            Self::Push => "push",
        }
    }
}

/// A scanned value: where it ends, its type, and for strings and errors the
/// range of their content (for the top-level `error` field and pub/sub kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub(crate) end: usize,
    pub(crate) kind: Kind,
    /// Content of a simple/bulk string or error; for aggregates, of their first
    /// element when it is a string.
    pub(crate) text: Option<(usize, usize)>,
    /// Number of elements of an aggregate (pairs count twice), when announced.
    pub(crate) count: Option<i64>,
    /// The value of the last integer element of an aggregate (pub/sub counts).
    pub(crate) last_int: Option<i64>,
}

/// The outcome of scanning: a whole value, or the number of bytes (from the
/// start of the buffer) needed before scanning can possibly succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step<T> {
    Done(T),
    Need(usize),
}

macro_rules! need {
    ($e:expr) => {
        match $e {
            Step::Done(v) => v,
            Step::Need(n) => return Ok(Step::Need(n)),
        }
    };
}
pub(crate) use need;

/// Finds the `\r\n` ending the line that starts at `at`: the index of `\r`.
pub(crate) fn line(buf: &[u8], at: usize) -> Result<Step<usize>, ParseError> {
    let window = &buf[at..buf.len().min(at + MAX_LINE)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(ParseError::new(at + i, "bare LF in a RESP line")),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Ok(Step::Done(at + i)),
            Some(_) => Err(ParseError::new(at + i + 1, "CR not followed by LF")),
            None if i + 1 >= MAX_LINE => Err(ParseError::new(at, "RESP line too long")),
            None => Ok(Step::Need(at + i + 2)),
        },
        None if window.len() >= MAX_LINE => Err(ParseError::new(at, "RESP line too long")),
        None => Ok(Step::Need(buf.len() + 1)),
    }
}

/// A decimal integer (optional `-`, 1–18 digits): RESP lengths, counts, `:` values.
pub(crate) fn integer(bytes: &[u8], at: usize) -> Result<i64, ParseError> {
    let (neg, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::new(at, "invalid integer"));
    }
    let v = digits
        .iter()
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Ok(if neg { -v } else { v })
}

fn length(buf: &[u8], at: usize, eol: usize) -> Result<i64, ParseError> {
    integer(&buf[at..eol], at)
}

/// Scans one value starting at `at`.
pub(crate) fn value(buf: &[u8], at: usize, depth: usize) -> Result<Step<Scanned>, ParseError> {
    let Some(&tag) = buf.get(at) else {
        return Ok(Step::Need(at + 1));
    };
    if depth > MAX_DEPTH {
        return Err(ParseError::new(at, "RESP nesting deeper than 32"));
    }
    if !b"+-:_#,($!=*~>%|".contains(&tag) {
        return Err(ParseError::new(at, "not a RESP type byte"));
    }
    let eol = need!(line(buf, at)?);
    let head = at + 1;
    let after = eol + 2;
    let simple = |kind| {
        Ok(Step::Done(Scanned {
            end: after,
            kind,
            text: Some((head, eol)),
            count: None,
            last_int: None,
        }))
    };
    match tag {
        b'+' => simple(Kind::SimpleString),
        b'-' => simple(Kind::Error),
        b':' => {
            let v = integer(&buf[head..eol], head)?;
            Ok(Step::Done(Scanned {
                end: after,
                kind: Kind::Integer,
                text: None,
                count: None,
                last_int: Some(v),
            }))
        }
        b'_' if eol == head => simple(Kind::Null),
        b'#' if matches!(&buf[head..eol], b"t" | b"f") => simple(Kind::Boolean),
        b',' if double(&buf[head..eol]) => simple(Kind::Double),
        b'(' if big_number(&buf[head..eol]) => simple(Kind::BigNumber),
        b'_' | b'#' | b',' | b'(' => Err(ParseError::new(head, "invalid RESP3 scalar")),
        b'$' | b'!' | b'=' => {
            let kind = match tag {
                b'$' => Kind::BulkString,
                b'!' => Kind::BulkError,
                _ => Kind::Verbatim,
            };
            if tag == b'$' && &buf[head..eol] == b"?" {
                return streamed_string(buf, after);
            }
            let len = length(buf, head, eol)?;
            if len == -1 && tag == b'$' {
                return simple(Kind::Null);
            }
            let len = usize::try_from(len)
                .map_err(|_| ParseError::new(head, "negative string length"))?;
            if len > MAX_MESSAGE {
                return Err(ParseError::new(head, "string longer than 8 MiB"));
            }
            let end = after + len + 2;
            if buf.len() < end {
                return Ok(Step::Need(end));
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(ParseError::new(end - 2, "string not followed by CRLF"));
            }
            if tag == b'=' && (len < 4 || buf[after + 3] != b':') {
                return Err(ParseError::new(after, "verbatim string without a format"));
            }
            Ok(Step::Done(Scanned {
                end,
                kind,
                text: Some((after, end - 2)),
                count: None,
                last_int: None,
            }))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let kind = match tag {
                b'*' => Kind::Array,
                b'~' => Kind::Set,
                b'>' => Kind::Push,
                _ => Kind::Map,
            };
            let per = if matches!(tag, b'%' | b'|') { 2 } else { 1 };
            let streamed = &buf[head..eol] == b"?";
            let count = if streamed {
                None
            } else {
                let n = length(buf, head, eol)?;
                if n == -1 && tag == b'*' {
                    return simple(Kind::Null);
                }
                let n = usize::try_from(n)
                    .map_err(|_| ParseError::new(head, "negative aggregate count"))?;
                // Each element takes at least 3 bytes.
                if n.saturating_mul(per) > MAX_MESSAGE / 3 {
                    return Err(ParseError::new(head, "aggregate too large"));
                }
                Some(n * per)
            };
            let agg = need!(aggregate(buf, after, depth, count)?);
            if tag == b'|' {
                // An attribute describes the value that follows; the message is both.
                let mut next = need!(value(buf, agg.end, depth)?);
                next.text = next.text.or(agg.text);
                return Ok(Step::Done(next));
            }
            Ok(Step::Done(Scanned {
                kind,
                count: count.map(|n| n as i64),
                ..agg
            }))
        }
        _ => Err(ParseError::new(at, "not a RESP type byte")),
    }
}

/// Elements of an aggregate from `at`: `count` of them, or up to `.\r\n`.
fn aggregate(
    buf: &[u8],
    mut at: usize,
    depth: usize,
    count: Option<usize>,
) -> Result<Step<Scanned>, ParseError> {
    let mut text = None;
    let mut last_int = None;
    let mut i = 0usize;
    loop {
        match count {
            Some(n) if i == n => break,
            None => {
                if buf.get(at) == Some(&b'.') {
                    let eol = need!(line(buf, at)?);
                    if eol != at + 1 {
                        return Err(ParseError::new(at, "invalid end of streamed aggregate"));
                    }
                    at = eol + 2;
                    break;
                }
                if at >= MAX_MESSAGE {
                    return Err(ParseError::new(at, "streamed aggregate too large"));
                }
            }
            _ => {}
        }
        let v = need!(value(buf, at, depth + 1)?);
        if i == 0 && matches!(v.kind, Kind::BulkString | Kind::SimpleString) {
            text = v.text;
        }
        if v.kind == Kind::Integer {
            last_int = v.last_int;
        }
        at = v.end;
        i += 1;
    }
    Ok(Step::Done(Scanned {
        end: at,
        kind: Kind::Array,
        text,
        count: None,
        last_int,
    }))
}

/// `$?\r\n` then `;len\r\ndata\r\n` chunks up to `;0\r\n`.
fn streamed_string(buf: &[u8], mut at: usize) -> Result<Step<Scanned>, ParseError> {
    let start = at;
    loop {
        if at - start > MAX_MESSAGE {
            return Err(ParseError::new(at, "streamed string too large"));
        }
        let Some(&tag) = buf.get(at) else {
            return Ok(Step::Need(at + 1));
        };
        if tag != b';' {
            return Err(ParseError::new(at, "expected a streamed string chunk"));
        }
        let eol = need!(line(buf, at)?);
        let len = usize::try_from(length(buf, at + 1, eol)?)
            .map_err(|_| ParseError::new(at + 1, "negative chunk length"))?;
        if len == 0 {
            return Ok(Step::Done(Scanned {
                end: eol + 2,
                kind: Kind::BulkString,
                text: None,
                count: None,
                last_int: None,
            }));
        }
        if len > MAX_MESSAGE {
            return Err(ParseError::new(at + 1, "chunk longer than 8 MiB"));
        }
        let end = eol + 2 + len + 2;
        if buf.len() < end {
            return Ok(Step::Need(end));
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(ParseError::new(end - 2, "chunk not followed by CRLF"));
        }
        at = end;
    }
}

fn double(s: &[u8]) -> bool {
    matches!(s, b"inf" | b"-inf" | b"nan")
        || (!s.is_empty()
            && s.iter().any(u8::is_ascii_digit)
            && s.iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')))
}

fn big_number(s: &[u8]) -> bool {
    let digits = s.strip_prefix(b"-").or(s.strip_prefix(b"+")).unwrap_or(s);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scan(bytes: &[u8]) -> Result<Step<(usize, Kind)>, ParseError> {
        value(bytes, 0, 0).map(|s| match s {
            Step::Done(v) => Step::Done((v.end, v.kind)),
            Step::Need(n) => Step::Need(n),
        })
    }

    #[test]
    fn every_resp3_type() {
        let table: &[(&[u8], Kind)] = &[
            (b"+OK\r\n", Kind::SimpleString),
            (b"-ERR x\r\n", Kind::Error),
            (b":-12\r\n", Kind::Integer),
            (b"$3\r\nfoo\r\n", Kind::BulkString),
            (b"$0\r\n\r\n", Kind::BulkString),
            (b"$-1\r\n", Kind::Null),
            (b"*-1\r\n", Kind::Null),
            (b"*0\r\n", Kind::Array),
            (b"*2\r\n:1\r\n*1\r\n+a\r\n", Kind::Array),
            (b"_\r\n", Kind::Null),
            (b"#t\r\n", Kind::Boolean),
            (b",3.14\r\n", Kind::Double),
            (b",-inf\r\n", Kind::Double),
            (
                b"(3492890328409238509324850943850943825024385\r\n",
                Kind::BigNumber,
            ),
            (b"!21\r\nSYNTAX invalid syntax\r\n", Kind::BulkError),
            (b"=15\r\ntxt:Some string\r\n", Kind::Verbatim),
            (b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", Kind::Map),
            (b"~2\r\n+a\r\n+b\r\n", Kind::Set),
            (b">3\r\n+message\r\n+ch\r\n+hi\r\n", Kind::Push),
            (
                b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n",
                Kind::Array,
            ),
            (b"$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n", Kind::BulkString),
            (b"*?\r\n:1\r\n:2\r\n.\r\n", Kind::Array),
            (b"%?\r\n+a\r\n:1\r\n.\r\n", Kind::Map),
            (b"~?\r\n.\r\n", Kind::Set),
        ];
        for (bytes, kind) in table {
            assert_eq!(
                scan(bytes),
                Ok(Step::Done((bytes.len(), *kind))),
                "{:?}",
                core::str::from_utf8(bytes)
            );
            // Every strict prefix needs more bytes, never errors.
            for cut in 0..bytes.len() {
                assert!(
                    matches!(scan(&bytes[..cut]), Ok(Step::Need(n)) if n > cut),
                    "{:?} cut at {cut}",
                    core::str::from_utf8(bytes)
                );
            }
        }
    }

    #[test]
    fn refuses_hostile_values() {
        let deep: Vec<u8> = b"*1\r\n".repeat(40);
        let table: &[&[u8]] = &[
            b"$99999999999\r\n",
            b"$-5\r\n",
            b"*-2\r\n",
            b"*9999999999\r\n",
            b"%-1\r\n",
            b"$3\r\nfooXX",
            b"?\r\n",
            b"+OK\rX",
            b"+OK\n",
            b":12a\r\n",
            b"#x\r\n",
            b"=2\r\nab\r\n",
            b"*1\r\n.\r\n",
            b"$?\r\n;-1\r\n",
            &deep,
        ];
        for bytes in table {
            assert!(scan(bytes).is_err(), "{:?}", String::from_utf8_lossy(bytes));
        }
        assert!(scan(&[b'+'; MAX_LINE + 10]).is_err());
    }
}
