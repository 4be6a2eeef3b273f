//! A bounded reader over the bytes given to [`crate::Parser::parse`]: the
//! integers, varints and length-prefixed fields every binary protocol repeats,
//! each read checked against the bytes there are.
//!
//! Running off the end means two different things, and the reader keeps them
//! apart:
//!
//! - over the buffer `parse` was given ([`Reader::new`]), the message is not all
//!   here yet: [`ReadError::Incomplete`], which [`Reader::frame`] turns into
//!   `Ok(None)` ("call me again with more bytes");
//! - over one message whose length is known ([`Reader::message`]), a field that
//!   runs past the message is malformed: [`ReadError::Malformed`], which becomes
//!   the connection's parse error.
//!
//! ```
//! use loupe_sdk::{Direction, Frame, ParseError, Reader, TextField};
//!
//! const NAME: TextField = TextField::new(0);
//!
//! /// A u16 big-endian length, then that many bytes of UTF-8 name.
//! fn parse(direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
//!     Reader::frame(buf, |r| {
//!         let name = r.utf8_u16_be(64)?; // at most 64 bytes, else malformed
//!         Ok(r.frame_here(direction).set(NAME, name))
//!     })
//! }
//!
//! assert_eq!(parse(Direction::ToServer, b"\x00\x03ab").unwrap(), None); // incomplete
//! assert_eq!(parse(Direction::ToServer, b"\x00\x03abc").unwrap().unwrap().len, 5);
//! assert!(parse(Direction::ToServer, b"\x01\x00").is_err()); // 256 > 64
//! ```

use alloc::string::String;
use core::ops::Range;

use crate::{Direction, Frame, ParseError};

/// Why a read stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The bytes end before the value does: more are coming.
    Incomplete,
    /// The bytes are not this protocol.
    Malformed(ParseError),
}

impl From<ParseError> for ReadError {
    fn from(err: ParseError) -> Self {
        Self::Malformed(err)
    }
}

/// A cursor over bytes, positioned relative to the buffer `parse` was given so
/// that ranges it returns are a message's [`Frame::slice`] ranges as they are.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Whether the end of `buf` is the end of a whole message (running off it is
    /// malformed) or just the end of the bytes so far (incomplete).
    whole: bool,
}

impl<'a> Reader<'a> {
    /// A reader over the bytes given to `parse`: running off the end is
    /// [`ReadError::Incomplete`].
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            whole: false,
        }
    }

    /// Runs `read` over `buf` and maps its result onto what
    /// [`crate::Parser::parse`] returns: a frame, `Ok(None)` when the bytes ran
    /// out, or the parse error.
    pub fn frame(
        buf: &'a [u8],
        read: impl FnOnce(&mut Reader<'a>) -> Result<Frame, ReadError>,
    ) -> Result<Option<Frame>, ParseError> {
        match read(&mut Reader::new(buf)) {
            Ok(frame) => Ok(Some(frame)),
            Err(ReadError::Incomplete) => Ok(None),
            Err(ReadError::Malformed(err)) => Err(err),
        }
    }

    /// A frame for `direction` spanning every byte read so far.
    pub fn frame_here(&self, direction: Direction) -> Frame {
        Frame::new(direction, self.pos)
    }

    /// The next `len` bytes as one whole message: a reader over them in which
    /// running off the end is malformed ("field runs past the end of the
    /// message"). Offsets stay relative to the outer buffer. This reader moves
    /// past the message; if it is not all here yet, [`ReadError::Incomplete`].
    pub fn message(&mut self, len: usize) -> Result<Reader<'a>, ReadError> {
        let start = self.pos;
        self.take(len)?;
        Ok(Reader {
            buf: &self.buf[..self.pos],
            pos: start,
            whole: true,
        })
    }

    /// Offset of the next byte from the start of the buffer.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left before the end (inside a [`Reader::message`]: of the
    /// message; over `parse`'s buffer: of the bytes so far, wherever TCP cut).
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been read (meaningful inside a
    /// [`Reader::message`]).
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The bytes from `start` (an earlier [`Reader::pos`]) to here.
    pub fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start.min(self.pos)..self.pos]
    }

    /// The bytes of `range` (a range this reader returned); empty if it is not
    /// inside the bytes.
    pub fn slice(&self, range: Range<usize>) -> &'a [u8] {
        self.buf.get(range).unwrap_or_default()
    }

    /// A malformed-input error at the current position.
    pub fn malformed(&self, reason: impl Into<String>) -> ReadError {
        ReadError::Malformed(ParseError::new(self.pos, reason))
    }

    /// A malformed-input error at `at` (an earlier [`Reader::pos`]).
    pub fn malformed_at(&self, at: usize, reason: impl Into<String>) -> ReadError {
        ReadError::Malformed(ParseError::new(at, reason))
    }

    /// `Ok(())` if `ok`, else malformed with `reason` at the current position.
    pub fn ensure(&self, ok: bool, reason: &str) -> Result<(), ReadError> {
        if ok {
            Ok(())
        } else {
            Err(self.malformed(reason))
        }
    }

    fn short(&self) -> ReadError {
        if self.whole {
            self.malformed("field runs past the end of the message")
        } else {
            ReadError::Incomplete
        }
    }

    /// Fails unless `n` more bytes are there, without reading them — to wait for
    /// a whole message before parsing its fields.
    pub fn need(&self, n: usize) -> Result<(), ReadError> {
        if n <= self.remaining() {
            Ok(())
        } else {
            Err(self.short())
        }
    }

    /// The range of the next `n` bytes, read.
    pub fn range(&mut self, n: usize) -> Result<Range<usize>, ReadError> {
        self.need(n)?;
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let range = self.range(n)?;
        Ok(&self.buf[range])
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), ReadError> {
        self.range(n).map(|_| ())
    }

    /// The rest of the bytes, read (inside a [`Reader::message`]: the rest of
    /// the message; over `parse`'s buffer it depends on how TCP cut the stream).
    pub fn rest(&mut self) -> Range<usize> {
        let start = self.pos;
        self.pos = self.buf.len();
        start..self.pos
    }

    /// The next byte, not read.
    pub fn peek(&self) -> Result<u8, ReadError> {
        self.buf.get(self.pos).copied().ok_or_else(|| self.short())
    }

    /// Reads `expected` or fails (malformed if the bytes differ).
    pub fn tag(&mut self, expected: &[u8]) -> Result<(), ReadError> {
        let here = &self.buf[self.pos..];
        let n = here.len().min(expected.len());
        if here[..n] != expected[..n] {
            return Err(self.malformed(alloc::format!("expected \"{}\"", expected.escape_ascii())));
        }
        self.skip(expected.len())
    }

    /// The range of the bytes up to `delimiter` (not included); the reader moves
    /// past the delimiter. More than `max` bytes before it is malformed.
    pub fn until(&mut self, delimiter: &[u8], max: usize) -> Result<Range<usize>, ReadError> {
        if delimiter.is_empty() {
            return Err(self.malformed("empty delimiter"));
        }
        let here = &self.buf[self.pos..];
        // The delimiter starts at most `max` bytes in.
        let window = max.saturating_add(delimiter.len());
        let searched = &here[..here.len().min(window)];
        if let Some(i) = searched
            .windows(delimiter.len())
            .position(|w| w == delimiter)
        {
            let range = self.pos..self.pos + i;
            self.pos += i + delimiter.len();
            return Ok(range);
        }
        if here.len() >= window {
            Err(self.malformed("delimiter not found within the limit"))
        } else {
            Err(self.short())
        }
    }

    /// A line ending in `\r\n` (not included) of at most `max` bytes.
    pub fn line(&mut self, max: usize) -> Result<Range<usize>, ReadError> {
        self.until(b"\r\n", max)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let b = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.array::<1>()?[0])
    }

    /// A signed byte.
    pub fn i8(&mut self) -> Result<i8, ReadError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    /// A big-endian (network order) `u16`.
    pub fn u16_be(&mut self) -> Result<u16, ReadError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A little-endian `u16`.
    pub fn u16_le(&mut self) -> Result<u16, ReadError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub fn u32_be(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    pub fn u32_le(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    pub fn u64_be(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A little-endian `u64`.
    pub fn u64_le(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A big-endian `i16`.
    pub fn i16_be(&mut self) -> Result<i16, ReadError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// A little-endian `i16`.
    pub fn i16_le(&mut self) -> Result<i16, ReadError> {
        Ok(i16::from_le_bytes(self.array()?))
    }

    /// A big-endian `i32`.
    pub fn i32_be(&mut self) -> Result<i32, ReadError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A little-endian `i32`.
    pub fn i32_le(&mut self) -> Result<i32, ReadError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// A big-endian `i64`.
    pub fn i64_be(&mut self) -> Result<i64, ReadError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A little-endian `i64`.
    pub fn i64_le(&mut self) -> Result<i64, ReadError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// An unsigned LEB128 varint (protobuf, Kafka's compact lengths, MQTT's
    /// remaining length) of at most `max_bytes` bytes; a longer one, or one
    /// that overflows 64 bits, is malformed.
    pub fn uvarint(&mut self, max_bytes: usize) -> Result<u64, ReadError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..max_bytes.min(10) {
            let b = match self.u8() {
                Ok(b) => b,
                Err(e) => {
                    self.pos = start;
                    return Err(e);
                }
            };
            let shift = 7 * i as u32;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(self.malformed_at(start, "varint overflows 64 bits"));
            }
            value |= part << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed_at(start, "varint too long"))
    }

    /// A zigzag-encoded signed varint (protobuf `sint64`, Kafka's record fields).
    pub fn varint(&mut self, max_bytes: usize) -> Result<i64, ReadError> {
        let v = self.uvarint(max_bytes)?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A length checked against `max` (malformed if above), as a `usize`.
    pub fn bounded(&self, len: u64, max: usize) -> Result<usize, ReadError> {
        match usize::try_from(len) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(self.malformed("length over the limit")),
        }
    }

    /// A length read by `len`, then that many bytes (at most `max`); on any
    /// error the reader is back before the length.
    fn prefixed(
        &mut self,
        max: usize,
        len: impl FnOnce(&mut Self) -> Result<u64, ReadError>,
    ) -> Result<Range<usize>, ReadError> {
        let start = self.pos;
        let read = len(self).and_then(|n| {
            let n = self.bounded(n, max)?;
            self.range(n)
        });
        read.inspect_err(|_| self.pos = start)
    }

    /// A byte length, then that many bytes (at most `max`): their range.
    pub fn prefixed_u8(&mut self, max: usize) -> Result<Range<usize>, ReadError> {
        self.prefixed(max, |r| r.u8().map(u64::from))
    }

    /// A big-endian `u16` length, then that many bytes (at most `max`).
    pub fn prefixed_u16_be(&mut self, max: usize) -> Result<Range<usize>, ReadError> {
        self.prefixed(max, |r| r.u16_be().map(u64::from))
    }

    /// A big-endian `u32` length, then that many bytes (at most `max`).
    pub fn prefixed_u32_be(&mut self, max: usize) -> Result<Range<usize>, ReadError> {
        self.prefixed(max, |r| r.u32_be().map(u64::from))
    }

    /// A little-endian `u32` length, then that many bytes (at most `max`).
    pub fn prefixed_u32_le(&mut self, max: usize) -> Result<Range<usize>, ReadError> {
        self.prefixed(max, |r| r.u32_le().map(u64::from))
    }

    /// An unsigned varint length (at most 5 bytes), then that many bytes (at
    /// most `max`).
    pub fn prefixed_uvarint(&mut self, max: usize) -> Result<Range<usize>, ReadError> {
        self.prefixed(max, |r| r.uvarint(5))
    }

    /// Like [`Reader::prefixed_u16_be`], checked to be UTF-8 (MQTT, many
    /// binary protocols' strings).
    pub fn utf8_u16_be(&mut self, max: usize) -> Result<Range<usize>, ReadError> {
        let start = self.pos;
        let range = self.prefixed_u16_be(max)?;
        if core::str::from_utf8(&self.buf[range.clone()]).is_err() {
            return Err(self.malformed_at(start, "string is not UTF-8"));
        }
        Ok(range)
    }
}

/// Appends `v` as an unsigned LEB128 varint, the inverse of [`Reader::uvarint`]:
/// for replies that carry a length this way (MQTT's remaining length, Kafka's
/// compact lengths, protobuf).
///
/// ```
/// let mut reply = vec![0x90];
/// loupe_sdk::put_uvarint(&mut reply, 300);
/// assert_eq!(reply, [0x90, 0xac, 0x02]);
/// ```
pub fn put_uvarint(out: &mut alloc::vec::Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_off_the_buffer_is_incomplete_and_off_a_message_malformed() {
        let mut r = Reader::new(b"\x00\x01\x02");
        assert_eq!(r.u16_be(), Ok(1));
        assert_eq!(r.u16_be(), Err(ReadError::Incomplete));
        assert_eq!(r.pos(), 2, "a short read does not move the reader");

        let mut r = Reader::new(b"\x03abcXYZ");
        let n = usize::from(r.u8().unwrap());
        let mut m = r.message(n).unwrap();
        assert_eq!(r.pos(), 4);
        assert_eq!(m.pos(), 1, "offsets stay relative to the outer buffer");
        assert_eq!(m.take(2), Ok(&b"ab"[..]));
        match m.u16_be() {
            Err(ReadError::Malformed(e)) => assert_eq!(e.at, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Reader::new(b"\x05ab").message(5).err(),
            Some(ReadError::Incomplete)
        );
    }

    #[test]
    fn integers_both_ways() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(Reader::new(&bytes).u32_be(), Ok(0x0102_0304));
        assert_eq!(Reader::new(&bytes).u32_le(), Ok(0x0403_0201));
        assert_eq!(Reader::new(&bytes).u64_be(), Ok(0x0102_0304_0506_0708));
        assert_eq!(Reader::new(&bytes).u64_le(), Ok(0x0807_0605_0403_0201));
        assert_eq!(Reader::new(&[0xff, 0xfe]).i16_be(), Ok(-2));
        assert_eq!(Reader::new(&[0xfe, 0xff]).i16_le(), Ok(-2));
        assert_eq!(Reader::new(&[0xff; 4]).i32_be(), Ok(-1));
        assert_eq!(Reader::new(&[0x80]).i8(), Ok(-128));
    }

    #[test]
    fn varints() {
        assert_eq!(Reader::new(&[0x96, 0x01]).uvarint(5), Ok(150));
        assert_eq!(Reader::new(&[0x7f]).uvarint(1), Ok(127));
        // Zigzag: 0 → 0, 1 → -1, 2 → 1, 3 → -2.
        for (raw, v) in [(0u8, 0i64), (1, -1), (2, 1), (3, -2)] {
            assert_eq!(Reader::new(&[raw]).varint(5), Ok(v));
        }
        let mut r = Reader::new(&[0x80, 0x80]);
        assert_eq!(r.uvarint(4), Err(ReadError::Incomplete));
        assert_eq!(r.pos(), 0);
        assert!(matches!(
            Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x01]).uvarint(4),
            Err(ReadError::Malformed(_))
        ));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).uvarint(10), Ok(u64::MAX));
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(
            Reader::new(&over).uvarint(10),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn length_prefixed() {
        let mut r = Reader::new(b"\x00\x02hi\x02ok");
        assert_eq!(r.utf8_u16_be(8), Ok(2..4));
        assert_eq!(r.prefixed_u8(8), Ok(5..7));
        let mut r = Reader::new(b"\x00\x05hi");
        assert_eq!(r.prefixed_u16_be(8), Err(ReadError::Incomplete));
        assert_eq!(
            r.pos(),
            0,
            "an incomplete field is read again from its prefix"
        );
        assert!(matches!(
            Reader::new(b"\x00\x09").prefixed_u16_be(8),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            Reader::new(b"\x00\x01\xff").utf8_u16_be(8),
            Err(ReadError::Malformed(_))
        ));
        assert_eq!(Reader::new(b"\x03abc").prefixed_uvarint(3), Ok(1..4));
        assert_eq!(
            Reader::new(b"\x00\x00\x00\x01x").prefixed_u32_be(3),
            Ok(4..5)
        );
        assert_eq!(
            Reader::new(b"\x01\x00\x00\x00x").prefixed_u32_le(3),
            Ok(4..5)
        );
    }

    #[test]
    fn delimited() {
        let mut r = Reader::new(b"GET k\r\nrest");
        assert_eq!(r.line(16), Ok(0..5));
        assert_eq!(r.pos(), 7);
        assert_eq!(Reader::new(b"GET k\r").line(16), Err(ReadError::Incomplete));
        assert_eq!(Reader::new(b"GET").line(3), Err(ReadError::Incomplete));
        assert_eq!(Reader::new(b"GET\r\n").line(3), Ok(0..3));
        assert!(matches!(
            Reader::new(b"GETX").line(3),
            Err(ReadError::Incomplete)
        ));
        assert!(matches!(
            Reader::new(b"GETXY").line(3),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            Reader::new(b"GETXYZ\r\n").line(3),
            Err(ReadError::Malformed(_))
        ));
        let mut m = Reader::new(b"ab").message(2).unwrap();
        assert!(matches!(m.line(8), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn tags() {
        let mut r = Reader::new(b"MQ");
        assert_eq!(r.tag(b"MQTT"), Err(ReadError::Incomplete));
        assert!(matches!(
            Reader::new(b"MX").tag(b"MQTT"),
            Err(ReadError::Malformed(_))
        ));
        assert_eq!(Reader::new(b"MQTT!").tag(b"MQTT"), Ok(()));
    }

    #[test]
    fn frame_maps_onto_parse() {
        let parse = |buf: &[u8]| {
            Reader::frame(buf, |r| {
                let n = r.u8()?;
                r.ensure(n != 0, "empty message")?;
                r.skip(usize::from(n))?;
                Ok(r.frame_here(Direction::ToServer))
            })
        };
        assert_eq!(parse(b"\x02a"), Ok(None));
        assert_eq!(parse(b"\x02ab").unwrap().unwrap().len, 3);
        assert_eq!(parse(b"\x00").unwrap_err().at, 1);
    }
}
