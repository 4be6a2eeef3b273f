//! Deny replies: a response of the request's own API version whose every
//! partition carries error 29 (TOPIC_AUTHORIZATION_FAILED), so the client sees an
//! authorization failure and keeps the connection. Built for Produce and Fetch
//! (v0–v12); for other APIs no reply is built (empty), and the agent closes the
//! connection instead.

use loupe_sdk::{ParseError, Vec};

use crate::wire::{Reader, Writer};
use crate::{apis, request_header};

/// TOPIC_AUTHORIZATION_FAILED.
const DENIED: i16 = 29;

pub(crate) fn reply(request: &[u8]) -> Vec<u8> {
    build(request).unwrap_or_default()
}

/// (topic name, partition indexes) of a Produce or Fetch request.
type Topics<'a> = Vec<(&'a [u8], Vec<i32>)>;

fn build(request: &[u8]) -> Result<Vec<u8>, ParseError> {
    let body = request.get(4..).unwrap_or_default();
    let mut r = Reader {
        buf: body,
        pos: 0,
        base: 4,
    };
    let h = request_header(&mut r)?;
    let (f, v) = (h.flexible, h.version);
    if v >= 13 || !matches!(h.key, apis::PRODUCE | apis::FETCH) {
        return Ok(Vec::new());
    }
    let mut topics: Topics<'_> = Vec::new();
    if h.key == apis::PRODUCE {
        if v >= 3 {
            r.string(f)?;
        }
        r.i16()?;
        r.i32()?;
    } else {
        r.skip(if v >= 3 { 16 } else { 12 })?;
        if v >= 4 {
            r.skip(1)?;
        }
        if v >= 7 {
            r.skip(8)?;
        }
    }
    for _ in 0..r.array(f)?.unwrap_or(0) {
        let (s, e) = r.string(f)?.unwrap_or((0, 0));
        let mut parts = Vec::new();
        for _ in 0..r.array(f)?.unwrap_or(0) {
            parts.push(r.i32()?);
            if h.key == apis::PRODUCE {
                r.bytes(f)?;
            } else {
                if v >= 9 {
                    r.i32()?;
                }
                r.skip(8)?;
                if v >= 12 {
                    r.i32()?;
                }
                if v >= 5 {
                    r.skip(8)?;
                }
                r.i32()?;
            }
            if f {
                r.tagged_fields()?;
            }
        }
        if f {
            r.tagged_fields()?;
        }
        topics.push((&body[s..e], parts));
    }

    let mut w = Writer::default();
    w.i32(0).i32(h.correlation).tags(f); // size, patched below
    if h.key == apis::PRODUCE {
        w.array(topics.len(), f);
        for (name, parts) in &topics {
            w.string(name, f).array(parts.len(), f);
            for &p in parts {
                w.i32(p).i16(DENIED).i64(-1);
                if v >= 2 {
                    w.i64(-1);
                }
                if v >= 5 {
                    w.i64(-1);
                }
                if v >= 8 {
                    w.array(0, f).null_string(f);
                }
                w.tags(f);
            }
            w.tags(f);
        }
        if v >= 1 {
            w.i32(0);
        }
    } else {
        if v >= 1 {
            w.i32(0);
        }
        if v >= 7 {
            w.i16(DENIED).i32(0);
        }
        w.array(topics.len(), f);
        for (name, parts) in &topics {
            w.string(name, f).array(parts.len(), f);
            for &p in parts {
                w.i32(p).i16(DENIED).i64(-1);
                if v >= 4 {
                    w.i64(-1);
                }
                if v >= 5 {
                    w.i64(-1);
                }
                if v >= 4 {
                    w.array(0, f);
                }
                if v >= 11 {
                    w.i32(-1);
                }
                // records: null
                if f {
                    w.uvarint(0);
                } else {
                    w.i32(-1);
                }
                w.tags(f);
            }
            w.tags(f);
        }
    }
    w.tags(f);
    let size = (w.0.len() - 4) as i32;
    w.0[..4].copy_from_slice(&size.to_be_bytes());
    Ok(w.0)
}
