//! The memcached parser exported through contract 0.1 (`wit/0.1/parser.wit`),
//! with the export glue the 0.1 SDK had: nested field lists per message,
//! computed text as strings. It stands for every plugin built before 0.2; the
//! host must keep loading it, adapting its answers, and the benchmarks compare
//! it with the same parser exported through 0.2.
#![no_std]
#![cfg(target_arch = "wasm32")]

extern crate alloc;

use alloc::string::ToString as _;
use alloc::vec::Vec;
use core::cell::RefCell;

use loupe_plugin_memcached::Memcached;
use loupe_sdk::{Correlation, FieldType, MessageKind, Parser, Sniff, Stream, Value};

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/0.1",
        world: "loupe:plugin/plugin@0.1.0",
    });
}

use bindings::exports::loupe::plugin::parser as wit;

struct V0_1;

impl wit::Guest for V0_1 {
    type Connection = Connection;

    fn describe() -> wit::PluginInfo {
        let info = Memcached::INFO;
        wit::PluginInfo {
            name: info.name.to_string(),
            version: info.version.to_string(),
            protocol: info.protocol.to_string(),
            default_ports: info.default_ports.to_vec(),
            transport: wit::Transport::Stream,
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

    fn sniff(direction: wit::Direction, bytes: Vec<u8>) -> wit::SniffVerdict {
        match Memcached::sniff(direction_from(direction), &bytes) {
            Sniff::No => wit::SniffVerdict::No,
            Sniff::Maybe => wit::SniffVerdict::Maybe,
            Sniff::Yes => wit::SniffVerdict::Yes,
        }
    }

    fn deny_reply(request: Vec<u8>) -> Vec<u8> {
        loupe_sdk::deny_reply::<Memcached>(&request)
    }
}

struct Connection(RefCell<Stream<Memcached>>);

impl wit::GuestConnection for Connection {
    fn new() -> Self {
        Self(RefCell::new(Stream::new()))
    }

    fn feed(&self, direction: wit::Direction, bytes: Vec<u8>) -> wit::Frames {
        let error = |e: loupe_sdk::StreamError| wit::ParseError {
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

fn direction_from(d: wit::Direction) -> loupe_sdk::Direction {
    match d {
        wit::Direction::ToServer => loupe_sdk::Direction::ToServer,
        wit::Direction::ToClient => loupe_sdk::Direction::ToClient,
    }
}

fn message(m: loupe_sdk::Message) -> wit::Message {
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

bindings::export!(V0_1 with_types_in bindings);
