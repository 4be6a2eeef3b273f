//! Reading and writing Kafka's primitive types, classic and flexible
//! (compact) encodings. Reads are bounds-checked: running off the message is an
//! error, never a panic.

use loupe_sdk::{ParseError, Vec};

/// A cursor over one whole message (after its size prefix).
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
    /// Offset of `buf[0]` in the buffer given to `parse` (for error offsets).
    pub(crate) base: usize,
}

fn short(at: usize) -> ParseError {
    ParseError::new(at, "field runs past the end of the message")
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| short(self.base + self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), ParseError> {
        self.take(n).map(|_| ())
    }

    /// A topic id (UUID): its 16 bytes.
    pub(crate) fn uuid(&mut self) -> Result<&'a [u8], ParseError> {
        self.take(16)
    }

    pub(crate) fn i8(&mut self) -> Result<i8, ParseError> {
        Ok(self.take(1)?[0] as i8)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ParseError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ParseError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn uvarint(&mut self) -> Result<u64, ParseError> {
        let mut v = 0u64;
        for i in 0..5 {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ParseError::new(
            self.base + self.pos,
            "varint longer than 5 bytes",
        ))
    }

    /// A nullable string: its byte range in `buf`, `None` if null.
    pub(crate) fn string(&mut self, flexible: bool) -> Result<Option<(usize, usize)>, ParseError> {
        let len = if flexible {
            match self.uvarint()? {
                0 => return Ok(None),
                n => (n - 1) as usize,
            }
        } else {
            match self.i16()? {
                -1 => return Ok(None),
                n if n < 0 => {
                    return Err(ParseError::new(
                        self.base + self.pos,
                        "negative string length",
                    ));
                }
                n => n as usize,
            }
        };
        let start = self.pos;
        self.skip(len)?;
        Ok(Some((start, self.pos)))
    }

    /// A nullable string's bytes (empty if null).
    pub(crate) fn text(&mut self, flexible: bool) -> Result<&'a [u8], ParseError> {
        Ok(match self.string(flexible)? {
            Some((s, e)) => &self.buf[s..e],
            None => &[],
        })
    }

    /// Nullable bytes (records): skipped.
    pub(crate) fn bytes(&mut self, flexible: bool) -> Result<(), ParseError> {
        let len = if flexible {
            match self.uvarint()? {
                0 => return Ok(()),
                n => (n - 1) as usize,
            }
        } else {
            match self.i32()? {
                -1 => return Ok(()),
                n if n < 0 => {
                    return Err(ParseError::new(
                        self.base + self.pos,
                        "negative bytes length",
                    ));
                }
                n => n as usize,
            }
        };
        self.skip(len)
    }

    /// An array length; `None` for a null array. Bounded by the bytes left (each
    /// element takes at least one byte).
    pub(crate) fn array(&mut self, flexible: bool) -> Result<Option<usize>, ParseError> {
        let at = self.base + self.pos;
        let n = if flexible {
            match self.uvarint()? {
                0 => return Ok(None),
                n => (n - 1) as i64,
            }
        } else {
            match self.i32()? {
                -1 => return Ok(None),
                n => i64::from(n),
            }
        };
        if n < 0 || n as usize > self.buf.len() - self.pos {
            return Err(ParseError::new(at, "array count out of range"));
        }
        Ok(Some(n as usize))
    }

    /// An array length, 0 for a null array.
    pub(crate) fn count(&mut self, flexible: bool) -> Result<usize, ParseError> {
        Ok(self.array(flexible)?.unwrap_or(0))
    }

    /// Skips an array of `width`-byte elements (`int32[]`, `int64[]`).
    pub(crate) fn skip_array(&mut self, flexible: bool, width: usize) -> Result<(), ParseError> {
        let n = self.count(flexible)?;
        self.skip(n.saturating_mul(width))
    }

    /// Tagged fields, only in flexible versions.
    pub(crate) fn tags(&mut self, flexible: bool) -> Result<(), ParseError> {
        if flexible {
            self.tagged_fields()?;
        }
        Ok(())
    }

    /// Tagged fields (flexible versions): skipped.
    pub(crate) fn tagged_fields(&mut self) -> Result<(), ParseError> {
        let n = self.uvarint()?;
        if n as usize > self.buf.len() - self.pos {
            return Err(ParseError::new(
                self.base + self.pos,
                "too many tagged fields",
            ));
        }
        for _ in 0..n {
            self.uvarint()?;
            let len = self.uvarint()? as usize;
            self.skip(len)?;
        }
        Ok(())
    }
}

/// Builds a message (deny replies).
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn uvarint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    pub(crate) fn array(&mut self, n: usize, flexible: bool) -> &mut Self {
        if flexible {
            self.uvarint(n as u64 + 1)
        } else {
            self.i32(n as i32)
        }
    }
    pub(crate) fn string(&mut self, s: &[u8], flexible: bool) -> &mut Self {
        if flexible {
            self.uvarint(s.len() as u64 + 1);
        } else {
            self.i16(s.len() as i16);
        }
        self.0.extend_from_slice(s);
        self
    }
    pub(crate) fn null_string(&mut self, flexible: bool) -> &mut Self {
        if flexible {
            self.uvarint(0)
        } else {
            self.i16(-1)
        }
    }
    pub(crate) fn tags(&mut self, flexible: bool) -> &mut Self {
        if flexible {
            self.uvarint(0);
        }
        self
    }
    pub(crate) fn null_array(&mut self, flexible: bool) -> &mut Self {
        if flexible {
            self.uvarint(0)
        } else {
            self.i32(-1)
        }
    }
    pub(crate) fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Empty (non-null) bytes.
    pub(crate) fn empty_bytes(&mut self, flexible: bool) -> &mut Self {
        if flexible {
            self.uvarint(1)
        } else {
            self.i32(0)
        }
    }
}
