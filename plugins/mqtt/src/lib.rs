//! A Loupe parser plugin for MQTT 3.1 and 3.1.1 — the SDK guide's example of a
//! protocol that is not "the client asks, the server answers":
//!
//! - **both sides ask**: a broker delivers a QoS 1 `PUBLISH` to a subscriber,
//!   which acknowledges it with `PUBACK`; the parser marks the broker's
//!   `PUBLISH` a request and the client's `PUBACK` its response;
//! - **in-order and id pairing on one connection**: `CONNECT`/`CONNACK` and
//!   `PINGREQ`/`PINGRESP` pair in order, everything else by packet id, tagged
//!   with the direction that asked (each side numbers its own packets);
//! - **messages that expect no answer**: QoS 0 publishes (a request policy
//!   decides when the client sends it, an event when the broker delivers it);
//! - **a request naming several items**: a `SUBSCRIBE`'s topic filters, each a
//!   value of `topic` (flows show a list; a policy rule must match every one).
//!
//! MQTT 5 (protocol level 5) adds properties to most packets; a `CONNECT` asking
//! for it ends the connection's L7 view with a clear error.
#![cfg_attr(target_arch = "wasm32", no_std)]

use loupe_sdk::{
    Correlation, Direction, Frame, Info, MessageKind, ParseError, Parser, ReadError, Reader,
    Request, Sniff, Vec, vec,
};

/// The fields, numbered in order: [`Mqtt::INFO`]'s schema.
pub mod field {
    loupe_sdk::fields! {
        /// Control packet type (`CONNECT`, `PUBLISH`…).
        PACKET_TYPE: Text = "packet-type", "control packet type (CONNECT, PUBLISH, SUBSCRIBE…)";
        /// Client identifier of a `CONNECT`.
        CLIENT_ID: Text = "client-id", "client identifier of a CONNECT";
        /// User name of a `CONNECT`.
        USERNAME: Text = "username", "user name of a CONNECT";
        /// Topic of a `PUBLISH`; each filter of a `SUBSCRIBE` / `UNSUBSCRIBE`.
        TOPIC: [Text] = "topic", "topic of a PUBLISH; every topic filter of a SUBSCRIBE or UNSUBSCRIBE";
        /// Topic filters of a `SUBSCRIBE` / `UNSUBSCRIBE`.
        TOPICS: Unsigned = "topics", "number of topic filters of a SUBSCRIBE or UNSUBSCRIBE";
        /// QoS of a `PUBLISH`; requested QoS of each of a `SUBSCRIBE`'s filters.
        QOS: [Unsigned] = "qos", "QoS of a PUBLISH; requested QoS of each filter of a SUBSCRIBE";
        /// The `PUBLISH` is retained.
        RETAIN: Flag = "retain", "the PUBLISH is to be retained";
        /// The `PUBLISH` is a redelivery.
        DUP: Flag = "dup", "the PUBLISH is a redelivery";
        /// Packet identifier.
        PACKET_ID: Unsigned = "packet-id", "packet identifier";
        /// Bytes of a `PUBLISH`'s application message.
        PAYLOAD_BYTES: Unsigned = "payload-bytes", "bytes of a PUBLISH's application message";
        /// Return code of a `CONNACK`; first return code of a `SUBACK`.
        RETURN_CODE: Unsigned = "return-code", "return code of a CONNACK; first return code of a SUBACK (128: failure)";
    }
}

/// Control packet types by number (`packet-type`'s values; tshark's
/// `mqtt.msgtype`).
pub const PACKET_TYPES: [&str; 16] = [
    "Reserved",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "AUTH",
];

/// Largest packet accepted (MQTT allows 256 MiB; a peer cannot make the plugin
/// hold more than this).
const MAX_PACKET: usize = 16 << 20;
/// Longest string (topic, client id): MQTT's own limit.
const MAX_STRING: usize = 65_535;

/// The MQTT parser. It keeps no state between packets: every packet says
/// everything the parser needs, so nothing is lost when the agent re-creates
/// the plugin's instance.
#[derive(Debug, Default)]
pub struct Mqtt;

impl Parser for Mqtt {
    const INFO: Info = Info {
        name: "mqtt",
        version: "0.1.0",
        protocol: "mqtt",
        default_ports: &[1883],
        fields: field::FIELDS,
    };

    /// A connection opens with the client's `CONNECT` (protocol name `MQTT` or
    /// `MQIsdp`) and the broker's `CONNACK`.
    fn sniff(direction: Direction, bytes: &[u8]) -> Sniff {
        let mut r = Reader::new(bytes);
        match (direction, r.u8()) {
            (_, Err(_)) => Sniff::Maybe,
            (Direction::ToServer, Ok(0x10)) => match r.uvarint(4) {
                Ok(_) => Sniff::from_prefix(&bytes[r.pos()..], b"\0\x04MQTT")
                    .max(Sniff::from_prefix(&bytes[r.pos()..], b"\0\x06MQIsdp")),
                Err(ReadError::Incomplete) => Sniff::Maybe,
                Err(ReadError::Malformed(_)) => Sniff::No,
            },
            (Direction::ToClient, Ok(0x20)) => Sniff::from_prefix(&bytes[1..], b"\x02"),
            _ => Sniff::No,
        }
    }

    fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        Reader::frame(buf, |r| {
            // Fixed header: type and flags, then the remaining length.
            let first = r.u8()?;
            // PUBREL, SUBSCRIBE and UNSUBSCRIBE carry flags 0010, PUBLISH any
            // but QoS 3, the others 0000: checked before waiting for the body.
            let ok = match (first >> 4, first & 0x0f) {
                (3, flags) => flags & 0b0110 != 0b0110,
                // MQTT 3.1 clients may set DUP on their retries.
                (6 | 8 | 10, flags) => flags & !0b1000 == 0b0010,
                (_, flags) => flags == 0,
            };
            r.ensure(ok, "invalid header flags for the packet type")?;
            let len = r.uvarint(4)?;
            let mut body = r.message(r.bounded(len, MAX_PACKET)?)?;
            // The reader is past the packet: its position is the packet's length.
            packet(direction, first, r.pos(), &mut body)
        })
    }

    /// What a broker answers when it refuses: `CONNACK` "not authorized", a
    /// `SUBACK` failing every filter. MQTT 3.1.1 has no negative `PUBACK`, so a
    /// denied QoS 1/2 publish is acknowledged and dropped (as brokers do with a
    /// publish their ACL refuses); a denied QoS 0 publish expects no answer.
    fn deny_reply(request: &Request<'_>) -> Vec<u8> {
        let [hi, lo] = (request.unsigned(field::PACKET_ID).unwrap_or(0) as u16).to_be_bytes();
        match request.text(field::PACKET_TYPE) {
            Some("CONNECT") => vec![0x20, 2, 0, 5],
            Some("PUBLISH") if request.unsigned(field::QOS) == Some(1) => vec![0x40, 2, hi, lo],
            Some("PUBLISH") if request.unsigned(field::QOS) == Some(2) => vec![0x50, 2, hi, lo],
            Some("PUBREL") => vec![0x70, 2, hi, lo],
            Some("SUBSCRIBE") => {
                let n = request.unsigned(field::TOPICS).unwrap_or(1) as usize;
                let mut reply = vec![0x90];
                loupe_sdk::put_uvarint(&mut reply, n as u64 + 2);
                reply.extend_from_slice(&[hi, lo]);
                reply.resize(reply.len() + n, 0x80);
                reply
            }
            Some("UNSUBSCRIBE") => vec![0xb0, 2, hi, lo],
            Some("PINGREQ") => vec![0xd0, 0],
            _ => Vec::new(),
        }
    }
}

loupe_sdk::export_parser!(Mqtt);

/// Pairs by packet id in the id space of the side that asked.
fn by_id(asker: Direction, id: u16) -> Correlation {
    Correlation::Id(u64::from(id) | (asker.index() as u64) << 16)
}

/// One packet, from its first byte and its body.
fn packet(d: Direction, first: u8, len: usize, p: &mut Reader<'_>) -> Result<Frame, ReadError> {
    use MessageKind::{Event, Request, Response};
    let (kind, flags) = (usize::from(first >> 4), first & 0x0f);
    let frame = |k, c| {
        Frame::new(d, len)
            .kind(k)
            .correlation(c)
            .set(field::PACKET_TYPE, PACKET_TYPES[kind])
    };
    let client = d == Direction::ToServer;
    match (kind, client) {
        (1, true) => connect(frame(Request, Correlation::InOrder), p),
        (2, false) => {
            p.skip(1)?; // session present
            let code = p.u8()?;
            Ok(frame(Response, Correlation::InOrder).set(field::RETURN_CODE, u64::from(code)))
        }
        (3, _) => {
            let qos = (flags >> 1) & 3;
            let topic = p.utf8_u16_be(MAX_STRING)?;
            let mut f = frame(Request, Correlation::None);
            if qos == 0 && !client {
                f = f.kind(Event); // a delivery nobody answers
            } else if qos > 0 {
                let id = p.u16_be()?;
                f = f
                    .correlation(by_id(d, id))
                    .set(field::PACKET_ID, u64::from(id));
            }
            let payload = p.rest();
            Ok(f.set(field::TOPIC, topic)
                .set(field::QOS, u64::from(qos))
                .set(field::RETAIN, flags & 1 != 0)
                .set(field::DUP, flags & 8 != 0)
                .set(field::PAYLOAD_BYTES, payload.len() as u64))
        }
        // PUBREL asks; PUBACK, PUBREC and PUBCOMP answer the other side's
        // PUBLISH or PUBREL.
        (4..=7, _) => {
            let id = p.u16_be()?;
            let (k, asker) = if kind == 6 {
                (Request, d)
            } else {
                (Response, d.reverse())
            };
            Ok(frame(k, by_id(asker, id)).set(field::PACKET_ID, u64::from(id)))
        }
        (8 | 10, true) => {
            let id = p.u16_be()?;
            let mut f = frame(Request, by_id(d, id)).set(field::PACKET_ID, u64::from(id));
            // Every filter: a policy rule on `topic` must match each of them.
            let mut topics = 0u64;
            while !p.is_empty() {
                f = f.set(field::TOPIC, p.utf8_u16_be(MAX_STRING)?);
                if kind == 8 {
                    f = f.set(field::QOS, u64::from(p.u8()?));
                }
                topics += 1;
            }
            p.ensure(topics > 0, "no topic filter")?;
            Ok(f.set(field::TOPICS, topics))
        }
        (9 | 11, false) => {
            let id = p.u16_be()?;
            let mut f = frame(Response, by_id(Direction::ToServer, id))
                .set(field::PACKET_ID, u64::from(id));
            if kind == 9 {
                f = f.set(field::RETURN_CODE, u64::from(p.u8()?));
            }
            Ok(f)
        }
        (12, true) => Ok(frame(Request, Correlation::InOrder)),
        (13, false) => Ok(frame(Response, Correlation::InOrder)),
        (14, true) => Ok(frame(Request, Correlation::None)),
        _ => Err(p.malformed_at(0, "packet type not sent in this direction by MQTT 3.1.1")),
    }
}

/// `CONNECT`: protocol name and level, flags, keep-alive, then the payload's
/// client id, will topic and message, user name.
fn connect(frame: Frame, p: &mut Reader<'_>) -> Result<Frame, ReadError> {
    let name = p.prefixed_u16_be(6)?;
    let name = p.slice(name);
    p.ensure(name == b"MQTT" || name == b"MQIsdp", "not MQTT")?;
    let level = p.u8()?;
    p.ensure(matches!(level, 3 | 4), "only MQTT 3.1 and 3.1.1 are parsed")?;
    let flags = p.u8()?;
    p.skip(2)?; // keep-alive
    let mut frame = frame.set(field::CLIENT_ID, p.utf8_u16_be(MAX_STRING)?);
    if flags & 0x04 != 0 {
        p.utf8_u16_be(MAX_STRING)?; // will topic
        p.prefixed_u16_be(MAX_STRING)?; // will message
    }
    if flags & 0x80 != 0 {
        frame = frame.set(field::USERNAME, p.utf8_u16_be(MAX_STRING)?);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests;
