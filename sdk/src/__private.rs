//! Glue between the generated bindings and the [`Parser`] trait, used by
//! [`crate::export_parser!`]. Not part of the SDK's API.

use alloc::string::ToString as _;
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

    fn feed(&self, direction: wit::Direction, bytes: Vec<u8>) -> wit::Frames {
        let error = |e: crate::StreamError| wit::ParseError {
            offset: e.offset,
            reason: e.reason,
        };
        match self.0.borrow_mut().feed(direction_from(direction), &bytes) {
            Ok(feed) => wit::Frames {
                messages: feed.messages.into_iter().map(message).collect(),
                pending: feed.pending,
                error: feed.error.map(error),
            },
            Err(e) => wit::Frames {
                messages: Vec::new(),
                pending: 0,
                error: Some(error(e)),
            },
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

fn message(m: crate::Message) -> wit::Message {
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
        fields: m
            .fields
            .into_iter()
            .map(|f| wit::Field {
                id: f.id,
                value: match f.value {
                    Value::Slice(s) => wit::Value::Slice(wit::Span {
                        offset: s.offset,
                        len: s.len,
                    }),
                    Value::Computed(s) => wit::Value::Computed(s),
                    Value::Unsigned(v) => wit::Value::Unsigned(v),
                    Value::Signed(v) => wit::Value::Signed(v),
                    Value::Flag(v) => wit::Value::Flag(v),
                },
            })
            .collect(),
    }
}
