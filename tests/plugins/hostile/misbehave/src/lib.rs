//! A deliberately hostile plugin for the host's fault-isolation tests.
//!
//! It speaks a line protocol (one message per `\n`-terminated line) until a line
//! names a misdeed: `loop`, `oom`, `trap`, `panic`, `flood` (more messages than
//! bytes), `span` (a message past the buffer), `field` (a field past its message),
//! `twice` (a field not declared repeated, set twice), `range` (a message's field
//! range that skips part of the field list), `text` (computed text past the text).
//! It implements the generated bindings directly — the SDK would not let it lie.
#![no_std]
#![cfg(target_arch = "wasm32")]

extern crate alloc;

use alloc::string::ToString as _;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use loupe_sdk::__bindings::exports::loupe::plugin::parser::{
    Correlation, Direction, FieldSpec, FieldType, Frames, Guest, GuestConnection, Message,
    MessageKind, ParseError, PluginInfo, SniffVerdict, Span, Transport, ValueKind,
};

/// A field as `frames.fields` packs it (two words).
fn field(kind: ValueKind, offset: u32, word: u64) -> [u64; 2] {
    [(kind as u64) << 16 | u64::from(offset) << 32, word]
}

struct Hostile;

impl Guest for Hostile {
    type Connection = Conn;

    fn describe() -> PluginInfo {
        PluginInfo {
            name: "misbehave".to_string(),
            version: "0.0.1".to_string(),
            protocol: "lines".to_string(),
            default_ports: vec![9999],
            transport: Transport::Stream,
            fields: vec![FieldSpec {
                name: "line".to_string(),
                ty: FieldType::Text,
                repeated: false,
                description: "the line".to_string(),
            }],
        }
    }

    fn sniff(_: Direction, bytes: Vec<u8>) -> SniffVerdict {
        if bytes.starts_with(b"loop") {
            spin()
        }
        SniffVerdict::Maybe
    }

    fn deny_reply(_: Vec<u8>) -> Vec<u8> {
        b"denied\n".to_vec()
    }
}

#[derive(Default)]
struct Half {
    buf: Vec<u8>,
    base: u64,
}

struct Conn(RefCell<[Half; 2]>);

fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        // SAFETY-free busy work the optimiser cannot remove.
        i = core::hint::black_box(i.wrapping_add(1));
    }
}

impl GuestConnection for Conn {
    fn new() -> Self {
        Self(RefCell::new([Half::default(), Half::default()]))
    }

    fn feed(&self, direction: Direction, bytes: Vec<u8>) -> Frames {
        let mut halves = self.0.borrow_mut();
        let half = &mut halves[match direction {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }];
        half.buf.extend_from_slice(&bytes);
        let mut messages = Vec::new();
        let mut fields = Vec::new();
        let text = alloc::string::String::from("computed");
        let none = Span { offset: 0, len: 0 };
        let mut used = 0;
        while let Some(nl) = half.buf[used..].iter().position(|&b| b == b'\n') {
            let line = &half.buf[used..used + nl];
            let start = half.base + used as u64;
            let len = (nl + 1) as u32;
            match line {
                b"loop" => spin(),
                b"oom" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        core::hint::black_box(&hoard);
                    }
                }
                b"trap" => core::arch::wasm32::unreachable(),
                b"panic" => panic!("asked to panic"),
                b"flood" => {
                    let one = Message {
                        kind: MessageKind::Request,
                        start,
                        len: 1,
                        correlation: Correlation::None,
                        fields: none,
                    };
                    return Frames {
                        messages: vec![one; 5_000],
                        fields: Vec::new(),
                        text,
                        pending: 0,
                        error: None,
                    };
                }
                b"span" => {
                    messages.push(Message {
                        kind: MessageKind::Request,
                        start,
                        len: 1 << 30,
                        correlation: Correlation::InOrder,
                        fields: none,
                    });
                }
                b"field" | b"twice" | b"range" | b"text" => {
                    let first = fields.len() as u32 / 2;
                    let value = match line {
                        b"field" => field(ValueKind::Slice, 0, 4096),
                        b"text" => field(ValueKind::Computed, 4, 100),
                        _ => field(ValueKind::Slice, 0, 1),
                    };
                    fields.extend(value);
                    if line == b"twice" {
                        fields.extend(value);
                    }
                    messages.push(Message {
                        kind: MessageKind::Request,
                        start,
                        len,
                        correlation: Correlation::InOrder,
                        fields: Span {
                            // `range` leaves its field behind, naming none.
                            offset: first + u32::from(line == b"range"),
                            len: fields.len() as u32 / 2 - first - u32::from(line == b"range"),
                        },
                    });
                }
                b"bad" => {
                    return Frames {
                        messages,
                        fields,
                        text,
                        pending: 0,
                        error: Some(ParseError {
                            offset: start,
                            reason: "asked to refuse".to_string(),
                        }),
                    };
                }
                _ => {
                    messages.push(Message {
                        kind: match direction {
                            Direction::ToServer => MessageKind::Request,
                            Direction::ToClient => MessageKind::Response,
                        },
                        start,
                        len,
                        correlation: Correlation::InOrder,
                        fields: Span {
                            offset: fields.len() as u32 / 2,
                            len: 1,
                        },
                    });
                    fields.extend(field(ValueKind::Slice, 0, nl as u64));
                }
            }
            used += nl + 1;
        }
        half.buf.drain(..used);
        half.base += used as u64;
        Frames {
            messages,
            fields,
            text,
            pending: half.buf.len() as u32,
            error: None,
        }
    }
}

loupe_sdk::__bindings::export_plugin_world!(Hostile with_types_in loupe_sdk::__bindings);
