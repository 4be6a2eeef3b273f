//! A Loupe parser plugin for the Kafka wire protocol.
//!
//! Every message is a 4-byte size then the message. Requests carry a header
//! (`api_key`, `api_version`, `correlation_id`, `client_id`, and tagged fields
//! in flexible versions); responses carry the `correlation_id` (and tagged fields
//! in flexible versions, except ApiVersions, whose response header is always v0).
//! Pairing is by `correlation_id`; the parser remembers the API and version of each
//! request awaiting its response (bounded) to read the response header right.
//! Produce with `acks=0` gets no response and is not paired.
//!
//! Body fields: the first topic and the topic count of Produce, Fetch,
//! ListOffsets, Metadata, OffsetCommit, OffsetFetch, CreateTopics and
//! DeleteTopics requests (versions that name topics by id — Produce/Fetch v13+,
//! OffsetCommit/OffsetFetch v10+ — give the count only); `acks` of Produce; the
//! top-level error code of responses that have one; and a summary of the
//! per-partition error codes (per topic or group where those carry them): how
//! many are non-zero, and the first.
// no_std in the component (zero imports); std natively, so tests and a cdylib link.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod apis;
mod deny;
mod request;
mod response;
mod wire;

use loupe_sdk::{
    Correlation, Direction, Frame, Info, MessageKind, ParseError, Parser, Request, Sniff, String,
    Vec,
};

use wire::Reader;

/// Field ids: indexes into [`Kafka::INFO`]'s `fields`.
pub mod field {
    loupe_sdk::fields! {
        /// API key (0 Produce, 1 Fetch, 3 Metadata…).
        API_KEY: Unsigned = "api-key", "API key (0 Produce, 1 Fetch, 3 Metadata…)";
        /// API name (`Produce`).
        API_NAME: Text = "api-name", "API name (Produce, Fetch, Metadata…)";
        /// API version.
        API_VERSION: Unsigned = "api-version", "API version";
        /// Correlation id.
        CORRELATION_ID: Signed = "correlation-id", "correlation id pairing a request and its response";
        /// Client id.
        CLIENT_ID: Text = "client-id", "client id of the request";
        /// First topic of the request.
        TOPIC: Text = "topic", "first topic of a Produce, Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch, CreateTopics or DeleteTopics request";
        /// Number of topics in the request.
        TOPICS: Unsigned = "topics", "number of topics in the request";
        /// Produce `acks`.
        ACKS: Signed = "acks", "acks of a Produce request";
        /// Top-level error code of a response.
        ERROR_CODE: Signed = "error-code", "top-level error code of a response (ApiVersions, Fetch v7+, OffsetFetch v2+, group and transaction APIs)";
        /// Number of partitions (topics, groups) of a response with a non-zero
        /// error code.
        PARTITION_ERRORS: Unsigned = "partition-errors", "partitions of a response with a non-zero error code (topics for Metadata, CreateTopics, DeleteTopics; groups for DeleteGroups)";
        /// The first non-zero error code among them.
        PARTITION_ERROR_CODE: Signed = "partition-error-code", "the first non-zero partition (topic, group) error code of a response";
    }
}

/// Largest message accepted (the SDK buffers a message until it is whole).
const MAX_MESSAGE: usize = 16 << 20;
/// Requests awaiting responses that the parser remembers.
const MAX_AWAITING: usize = 1024;

/// The Kafka parser: one per connection.
#[derive(Debug, Default)]
pub struct Kafka {
    /// (correlation id, api key, api version) of requests awaiting responses.
    awaiting: Vec<(i32, i16, i16)>,
}

impl Parser for Kafka {
    const INFO: Info = Info {
        name: "kafka",
        version: "0.1.0",
        protocol: "kafka",
        default_ports: &[9092],
        fields: field::FIELDS,
    };

    fn sniff(direction: Direction, bytes: &[u8]) -> Sniff {
        if bytes.len() < 8 {
            return Sniff::Maybe;
        }
        let size = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if size < 4 || size as usize > MAX_MESSAGE {
            return Sniff::No;
        }
        match direction {
            Direction::ToServer => {
                let key = i16::from_be_bytes([bytes[4], bytes[5]]);
                let version = i16::from_be_bytes([bytes[6], bytes[7]]);
                if apis::name(key).is_some() && (0..=20).contains(&version) {
                    Sniff::Yes
                } else {
                    Sniff::No
                }
            }
            Direction::ToClient => Sniff::Maybe,
        }
    }

    fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (4..=MAX_MESSAGE).contains(s))
            .ok_or_else(|| ParseError::new(0, "message size out of range"))?;
        if buf.len() < 4 + size {
            return Ok(None);
        }
        let mut r = Reader {
            buf: &buf[4..4 + size],
            pos: 0,
            base: 4,
        };
        let frame = match direction {
            Direction::ToServer => self.request(&mut r)?,
            Direction::ToClient => self.response(&mut r)?,
        };
        Ok(Some(Frame {
            len: 4 + size,
            ..frame
        }))
    }

    fn deny_reply(request: &Request<'_>) -> Vec<u8> {
        deny::reply(request.bytes())
    }
}

loupe_sdk::export_parser!(Kafka);

/// The request header: (api key, version, correlation id, client id range in
/// the message, flexible).
pub(crate) struct Header {
    pub(crate) key: i16,
    pub(crate) version: i16,
    pub(crate) correlation: i32,
    pub(crate) client_id: Option<(usize, usize)>,
    pub(crate) flexible: bool,
}

pub(crate) fn request_header(r: &mut Reader<'_>) -> Result<Header, ParseError> {
    let key = r.i16()?;
    let version = r.i16()?;
    if apis::name(key).is_none() {
        return Err(ParseError::new(4, "unknown API key"));
    }
    if !(0..=20).contains(&version) {
        return Err(ParseError::new(6, "API version out of range"));
    }
    let correlation = r.i32()?;
    // client_id keeps the classic encoding even in flexible (v2) headers.
    let client_id = r.string(false)?;
    let flexible = apis::flexible(key, version);
    if flexible {
        r.tagged_fields()?;
    }
    Ok(Header {
        key,
        version,
        correlation,
        client_id,
        flexible,
    })
}

impl Kafka {
    fn request(&mut self, r: &mut Reader<'_>) -> Result<Frame, ParseError> {
        let h = request_header(r)?;
        let mut frame = Frame::new(Direction::ToServer, 0)
            .set(field::API_KEY, h.key as u64)
            .set(
                field::API_NAME,
                String::from(apis::name(h.key).unwrap_or("?")),
            )
            .set(field::API_VERSION, h.version as u64)
            .set(field::CORRELATION_ID, i64::from(h.correlation))
            .correlation(Correlation::Id(h.correlation as u32 as u64));
        if let Some((s, e)) = h.client_id {
            frame = frame.set(field::CLIENT_ID, 4 + s..4 + e);
        }
        let prefix = request::to_topics(h.key, h.version, h.flexible, r)?;
        let acks = prefix.and_then(|p| p.acks);
        if let Some(a) = acks {
            frame = frame.set(field::ACKS, i64::from(a));
        }
        if let Some(p) = prefix {
            let (count, name) = request::first_topic(p.list, h.flexible, r)?;
            frame = frame.set(field::TOPICS, count as u64);
            if let Some((s, e)) = name {
                frame = frame.set(field::TOPIC, 4 + s..4 + e);
            }
        }
        if acks == Some(0) {
            // No response will come.
            return Ok(frame.correlation(Correlation::None));
        }
        if self.awaiting.len() >= MAX_AWAITING {
            return Err(ParseError::new(0, "too many requests awaiting responses"));
        }
        self.awaiting.push((h.correlation, h.key, h.version));
        Ok(frame)
    }

    fn response(&mut self, r: &mut Reader<'_>) -> Result<Frame, ParseError> {
        let correlation = r.i32()?;
        let mut frame = Frame::new(Direction::ToClient, 0)
            .set(field::CORRELATION_ID, i64::from(correlation))
            .correlation(Correlation::Id(correlation as u32 as u64));
        let Some(i) = self.awaiting.iter().position(|a| a.0 == correlation) else {
            // Nothing asked for it (the capture started mid-connection).
            return Ok(frame
                .kind(MessageKind::Event)
                .correlation(Correlation::None));
        };
        let (_, key, version) = self.awaiting.remove(i);
        frame = frame
            .set(field::API_KEY, key as u64)
            .set(
                field::API_NAME,
                String::from(apis::name(key).unwrap_or("?")),
            )
            .set(field::API_VERSION, version as u64);
        let flexible = apis::flexible(key, version);
        if flexible && key != apis::API_VERSIONS {
            r.tagged_fields()?;
        }
        let summary = response::summary(key, version, flexible, r)?;
        if let Some(e) = summary.error {
            frame = frame.set(field::ERROR_CODE, i64::from(e));
        }
        if let Some(e) = summary.entries {
            frame = frame.set(field::PARTITION_ERRORS, u64::from(e.count));
            if e.count > 0 {
                frame = frame.set(field::PARTITION_ERROR_CODE, i64::from(e.first));
            }
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests;
