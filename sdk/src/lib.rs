//! Write Loupe L7 parser plugins in safe, idiomatic Rust.
//!
//! A plugin is a type implementing [`Parser`] — one value per connection — plus one
//! [`export_parser!`] line. Built for `wasm32-wasip2`, the crate becomes a
//! WebAssembly component that exports the `loupe:plugin/parser@0.2.0` contract
//! (`wit/` in the Loupe repository) and imports nothing: no filesystem, network,
//! clock or environment. The SDK supplies the allocator and the panic handler (a
//! panic traps; the agent discards the instance and marks the connection).
//!
//! The SDK frames the stream: it buffers each direction, calls
//! [`Parser::parse`] with the bytes not yet framed and turns the [`Frame`]s you
//! return into the compact records the agent reads (stream offsets, spans,
//! enums). You only say how long the next message is and what is in it.
//!
//! ```
//! use loupe_sdk::{Direction, Frame, Info, ParseError, Parser, Reader, Request, Sniff};
//!
//! /// The fields, numbered in order (typed: `set` takes what each is declared as).
//! pub mod field {
//!     loupe_sdk::fields! {
//!         WORD: Text = "word", "the word";
//!     }
//! }
//!
//! /// "PING\r\n" / "PONG\r\n", one message per line.
//! #[derive(Default)]
//! pub struct Ping;
//!
//! impl Parser for Ping {
//!     const INFO: Info = Info {
//!         name: "ping",
//!         version: "0.1.0",
//!         protocol: "ping",
//!         default_ports: &[7777],
//!         fields: field::FIELDS,
//!     };
//!
//!     fn sniff(_: Direction, bytes: &[u8]) -> Sniff {
//!         Sniff::from_prefix(bytes, b"P")
//!     }
//!
//!     fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
//!         // Incomplete (no CRLF yet) becomes Ok(None): the SDK calls again with more.
//!         Reader::frame(buf, |r| {
//!             let word = r.line(64)?;
//!             Ok(r.frame_here(direction).set(field::WORD, word))
//!         })
//!     }
//!
//!     fn deny_reply(_request: &Request<'_>) -> Vec<u8> {
//!         b"DENIED\r\n".to_vec()
//!     }
//! }
//!
//! loupe_sdk::export_parser!(Ping);
//!
//! // Natively the same parser runs through the SDK's framing, as in tests:
//! let mut stream = loupe_sdk::Stream::<Ping>::new();
//! let out = stream.feed(Direction::ToServer, b"PING\r\nPI").unwrap();
//! assert_eq!(out.messages.len(), 1);
//! assert_eq!(out.pending, 2);
//! assert!(out.error.is_none());
//! ```
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

#[cfg(test)]
extern crate std;

pub mod fields;
mod reader;
mod stream;
mod types;

#[cfg(feature = "harness")]
pub mod harness;

#[cfg(target_arch = "wasm32")]
mod wasm_rt;

pub use fields::{Assign, BytesField, FlagField, SignedField, TextField, UnsignedField};
pub use reader::{ReadError, Reader, put_uvarint};
pub use stream::{Feed, Message, Stream, StreamError};
pub use types::{
    Correlation, Direction, Field, FieldSpec, FieldType, Frame, Info, MessageKind, ParseError,
    Request, Sniff, Span, Transport, Value,
};

// Re-exported so a plugin needs no `extern crate alloc` of its own.
pub use alloc::{string::String, vec, vec::Vec};

/// A protocol parser. One value is created per connection (`Default`) and sees
/// both directions of it, in stream order per direction.
///
/// See the crate documentation for a complete plugin.
pub trait Parser: Default + 'static {
    /// Name, version, protocol, default ports and the field schema. Field ids in
    /// [`Frame`]s index `INFO.fields`.
    const INFO: Info;

    /// The transport the protocol runs on. Hosts load stream plugins only, for now.
    const TRANSPORT: Transport = Transport::Stream;

    /// Does a stream that starts with `bytes` look like this protocol?
    fn sniff(direction: Direction, bytes: &[u8]) -> Sniff;

    /// Frames the next message at the start of `buf`: `Ok(None)` if `buf` holds
    /// only part of it (the SDK calls again with more bytes), or the message's
    /// length and fields. `buf` always starts at a message boundary.
    fn parse(&mut self, direction: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError>;

    /// The bytes a client gets in place of the answer to `request` when policy
    /// denies it, so that the connection survives: a protocol error reply
    /// (`-NOPERM …`, `HTTP/1.1 403`, Kafka's `TOPIC_AUTHORIZATION_FAILED`).
    /// `request` holds the request's bytes and the fields a fresh parser gives
    /// them ([`Request`]).
    ///
    /// An **empty reply** means "send nothing": the agent writes no bytes for
    /// this request. Use it only where the client pairs answers by id or
    /// expects none; with in-order pairing (RESP, HTTP/1.1) the client would
    /// take the next answer for this one, so return a real refusal there.
    fn deny_reply(request: &Request<'_>) -> Vec<u8>;
}

/// The reply [`Parser::deny_reply`] gives to `request`'s bytes, framed the way
/// the exported plugin frames them: what the agent gets from `deny-reply`.
pub fn deny_reply<P: Parser>(request: &[u8]) -> Vec<u8> {
    P::deny_reply(&Request::parse::<P>(request))
}

/// Exports a [`Parser`] as the plugin's implementation of the contract.
///
/// Use it once, at the root of the plugin crate. It expands to nothing when the
/// crate is compiled for anything but WebAssembly, so native tests link normally.
///
/// ```
/// # use loupe_sdk::*;
/// # #[derive(Default)] struct Echo;
/// # impl Parser for Echo {
/// #     const INFO: Info = Info { name: "echo", version: "0.1.0", protocol: "echo", default_ports: &[], fields: &[] };
/// #     fn sniff(_: Direction, _: &[u8]) -> Sniff { Sniff::Maybe }
/// #     fn parse(&mut self, d: Direction, b: &[u8]) -> Result<Option<Frame>, ParseError> { Ok(Some(Frame::new(d, b.len()))) }
/// #     fn deny_reply(_: &Request<'_>) -> Vec<u8> { Vec::new() }
/// # }
/// loupe_sdk::export_parser!(Echo);
/// ```
#[macro_export]
macro_rules! export_parser {
    ($parser:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __LoupeExport;
            impl $crate::__bindings::exports::loupe::plugin::parser::Guest for __LoupeExport {
                type Connection = $crate::__private::Connection<$parser>;
                fn describe() -> $crate::__bindings::exports::loupe::plugin::parser::PluginInfo {
                    $crate::__private::describe::<$parser>()
                }
                fn sniff(
                    direction: $crate::__bindings::exports::loupe::plugin::parser::Direction,
                    bytes: $crate::Vec<u8>,
                ) -> $crate::__bindings::exports::loupe::plugin::parser::SniffVerdict {
                    $crate::__private::sniff::<$parser>(direction, &bytes)
                }
                fn deny_reply(request: $crate::Vec<u8>) -> $crate::Vec<u8> {
                    $crate::deny_reply::<$parser>(&request)
                }
            }
            $crate::__bindings::export_plugin_world!(__LoupeExport with_types_in $crate::__bindings);
        };
    };
}

/// The bindings generated from `wit/` — not part of the SDK's API.
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "loupe:plugin/plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_plugin_world",
        default_bindings_module: "loupe_sdk::__bindings",
    });
}

#[doc(hidden)]
pub mod __private;
