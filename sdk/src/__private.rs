//! Glue between the generated bindings and the [`Parser`] trait, used by
//! [`crate::export_parser!`]. Not part of the SDK's API.

use alloc::string::{String, ToString as _};
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::__bindings::exports::loupe::plugin::parser as wit;
use crate::{
    Correlation, Direction, FieldType, MessageKind, Parser, Sniff, Stream, Transport, Value,
};

/// The resource behind `connection`: a [`Stream`] (the component model hands out
/// shared references, hence the cell; calls never re-enter).
pub struct Connection<P>(RefCell<Stream<P>>);

impl<P: Parser> wit::GuestConnection for Connection<P> {
    fn new() -> Self {
        Self(RefCell::new(Stream::new()))
    }

    /// Frames into the contract's flat lists: each message's fields go onto
    /// one list for the whole feed, computed text onto one string.
    fn feed(&self, direction: wit::Direction, bytes: Vec<u8>) -> wit::Frames {
        // Sized for a segment's worth of small messages, so the lists rarely
        // grow (each growth is a copy in the guest's allocator).
        let mut messages = Vec::with_capacity(16);
        let mut fields = Vec::with_capacity(128);
        let mut text = String::new();
        let (pending, error) =
            self.0
                .borrow_mut()
                .feed_with(direction_from(direction), &bytes, &mut |m| {
                    messages.push(message(m, &mut fields, &mut text));
                });
        wit::Frames {
            messages,
            fields,
            text,
            pending,
            error: error.map(|e| wit::ParseError {
                offset: e.offset,
                reason: e.reason,
            }),
        }
    }
}

/// `describe()` from [`Parser::INFO`].
pub fn describe<P: Parser>() -> wit::PluginInfo {
    let info = P::INFO;
    wit::PluginInfo {
        name: info.name.to_string(),
        version: info.version.to_string(),
        protocol: info.protocol.to_string(),
        default_ports: info.default_ports.to_vec(),
        transport: match P::TRANSPORT {
            Transport::Stream => wit::Transport::Stream,
            Transport::Datagram => wit::Transport::Datagram,
        },
        fields: info
            .fields
            .iter()
            .map(|f| wit::FieldSpec {
                name: f.name.to_string(),
                ty: match f.ty {
                    FieldType::Text => wit::FieldType::Text,
                    FieldType::Bytes => wit::FieldType::Bytes,
                    FieldType::Unsigned => wit::FieldType::Unsigned,
                    FieldType::Signed => wit::FieldType::Signed,
                    FieldType::Flag => wit::FieldType::Flag,
                },
                repeated: f.repeated,
                description: f.description.to_string(),
            })
            .collect(),
    }
}

/// `sniff()` through [`Parser::sniff`].
pub fn sniff<P: Parser>(direction: wit::Direction, bytes: &[u8]) -> wit::SniffVerdict {
    match P::sniff(direction_from(direction), bytes) {
        Sniff::No => wit::SniffVerdict::No,
        Sniff::Maybe => wit::SniffVerdict::Maybe,
        Sniff::Yes => wit::SniffVerdict::Yes,
    }
}

/// Compile-time schema check behind [`crate::fields!`].
pub const fn check_fields(fields: &[crate::FieldSpec]) {
    crate::fields::check_fields(fields);
}

/// A field's id by name, behind [`crate::fields!`].
pub const fn field_index(fields: &[crate::FieldSpec], name: &str) -> u16 {
    crate::fields::field_index(fields, name)
}

fn direction_from(d: wit::Direction) -> Direction {
    match d {
        wit::Direction::ToServer => Direction::ToServer,
        wit::Direction::ToClient => Direction::ToClient,
    }
}

/// `m` as the contract's record, its fields packed onto `fields` (two words
/// each, `wit/parser.wit`) and its computed text appended to `text`.
fn message(m: crate::Message, fields: &mut Vec<u64>, text: &mut String) -> wit::Message {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let first = clamp(fields.len() / 2);
    let count = clamp(m.fields.len());
    fields.reserve(m.fields.len() * 2);
    for f in m.fields {
        let (kind, offset, word) = match f.value {
            Value::Slice(s) => (wit::ValueKind::Slice, s.offset, u64::from(s.len)),
            Value::Computed(s) => {
                let at = clamp(text.len());
                text.push_str(&s);
                (wit::ValueKind::Computed, at, s.len() as u64)
            }
            Value::Unsigned(v) => (wit::ValueKind::Unsigned, 0, v),
            Value::Signed(v) => (wit::ValueKind::Signed, 0, v as u64),
            Value::Flag(v) => (wit::ValueKind::Flag, 0, u64::from(v)),
        };
        fields.push(u64::from(f.id) | (kind as u64) << 16 | u64::from(offset) << 32);
        fields.push(word);
    }
    wit::Message {
        kind: match m.kind {
            MessageKind::Request => wit::MessageKind::Request,
            MessageKind::Response => wit::MessageKind::Response,
            MessageKind::Event => wit::MessageKind::Event,
        },
        start: m.start,
        len: m.len,
        correlation: match m.correlation {
            Correlation::InOrder => wit::Correlation::InOrder,
            Correlation::Id(id) => wit::Correlation::Id(id),
            Correlation::None => wit::Correlation::None,
        },
        fields: wit::Span {
            offset: first,
            len: count,
        },
    }
}
