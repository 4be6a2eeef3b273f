//! The SDK's side of the contract's types: plain Rust, `&'static` where the data
//! is the plugin's own constants.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use crate::fields::{Assign, BytesField, FlagField, SignedField, TextField, UnsignedField};

/// Which way bytes flow on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the connection's initiator to the listener.
    ToServer,
    /// From the listener back to the initiator.
    ToClient,
}

impl Direction {
    /// The other way.
    pub fn reverse(self) -> Self {
        match self {
            Self::ToServer => Self::ToClient,
            Self::ToClient => Self::ToServer,
        }
    }

    /// 0 for [`Direction::ToServer`], 1 for [`Direction::ToClient`].
    pub fn index(self) -> usize {
        match self {
            Self::ToServer => 0,
            Self::ToClient => 1,
        }
    }
}

/// How a protocol's bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A reliable byte stream (TCP).
    Stream,
    /// Self-contained datagrams (UDP); not loaded by hosts yet.
    Datagram,
}

/// The type of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
    /// An unsigned integer.
    Unsigned,
    /// A signed integer.
    Signed,
    /// A boolean.
    Flag,
}

/// One entry of the field schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Lowercase kebab-case name (`command`, `key`).
    pub name: &'static str,
    /// Value type.
    pub ty: FieldType,
    /// Whether a message may carry it more than once: its value is then a list,
    /// in the order set (declared `NAME: [Kind]` in [`crate::fields!`]).
    pub repeated: bool,
    /// One line for `loupe plugin inspect`.
    pub description: &'static str,
}

/// What the plugin is: see [`crate::Parser::INFO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Plugin name, lowercase (`memcached`).
    pub name: &'static str,
    /// The plugin's own version.
    pub version: &'static str,
    /// Protocol name for policy rules (`l7proto: memcached`).
    pub protocol: &'static str,
    /// Ports the agent attaches the plugin to by default.
    pub default_ports: &'static [u16],
    /// The field schema; a [`Field`]'s id is an index into it.
    pub fields: &'static [FieldSpec],
}

/// A sniffing verdict, ordered from `No` to `Yes` (so the most confident of
/// several is their `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sniff {
    /// Not this protocol.
    No,
    /// Cannot tell yet.
    Maybe,
    /// This protocol.
    Yes,
}

impl Sniff {
    /// `Yes` if `bytes` starts with `prefix`, `Maybe` if it is a strict prefix of
    /// it, `No` otherwise.
    pub fn from_prefix(bytes: &[u8], prefix: &[u8]) -> Self {
        if bytes.starts_with(prefix) {
            Self::Yes
        } else if prefix.starts_with(bytes) {
            Self::Maybe
        } else {
            Self::No
        }
    }
}

/// Whether a message asks, answers, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Client to server.
    Request,
    /// Server's answer.
    Response,
    /// Unsolicited.
    Event,
}

/// How a response is paired with its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correlation {
    /// The n-th response answers the n-th request (the agent counts).
    InOrder,
    /// An identifier carried by both.
    Id(u64),
    /// Not paired.
    None,
}

/// A byte range of a message, from the message's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset from the message's first byte.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

impl Span {
    /// The span of `range` of a message. Ranges that do not fit in 32 bits are
    /// clamped (and then refused by the agent).
    pub fn of(range: Range<usize>) -> Self {
        Self {
            offset: u32::try_from(range.start).unwrap_or(u32::MAX),
            len: u32::try_from(range.end.saturating_sub(range.start)).unwrap_or(u32::MAX),
        }
    }
}

/// A field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Bytes of the message itself — the cheap, preferred form.
    Slice(Span),
    /// Text the parser computed.
    Computed(String),
    /// An unsigned integer.
    Unsigned(u64),
    /// A signed integer.
    Signed(i64),
    /// A flag.
    Flag(bool),
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Index into [`Info::fields`].
    pub id: u16,
    /// The value.
    pub value: Value,
}

/// One message framed by [`crate::Parser::parse`]: its length from the start of
/// the buffer, its kind, correlation and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request, response or event.
    pub kind: MessageKind,
    /// Bytes the message spans (at least 1).
    pub len: usize,
    /// How it pairs with its counterpart.
    pub correlation: Correlation,
    /// Its fields.
    pub fields: Vec<Field>,
}

impl Frame {
    /// A message of `len` bytes, paired in order: a request when sent to the
    /// server, a response otherwise.
    pub fn new(direction: Direction, len: usize) -> Self {
        Self {
            kind: match direction {
                Direction::ToServer => MessageKind::Request,
                Direction::ToClient => MessageKind::Response,
            },
            len,
            correlation: Correlation::InOrder,
            fields: Vec::new(),
        }
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the correlation.
    pub fn correlation(mut self, correlation: Correlation) -> Self {
        self.correlation = correlation;
        self
    }

    /// Sets `field` to `value`, checked against the field's declared kind: a
    /// range of the message or text for a [`TextField`], a range for a
    /// [`BytesField`], `u64` / `i64` / `bool` for unsigned, signed and flag
    /// fields (see [`crate::fields!`]).
    pub fn set<F: Assign<V>, V>(self, field: F, value: V) -> Self {
        self.field(field.field_id(), F::value(value))
    }

    /// Adds a field by raw id (untyped; prefer [`Frame::set`]).
    pub fn field(mut self, id: u16, value: Value) -> Self {
        if self.fields.capacity() == 0 {
            // Room for a typical message's fields in one allocation (growing
            // from 4 would copy them once more).
            self.fields.reserve_exact(8);
        }
        self.fields.push(Field { id, value });
        self
    }

    /// Adds a field whose value is `range` of the message's bytes, by raw id
    /// (untyped; prefer [`Frame::set`]). Ranges that do not fit in 32 bits are
    /// clamped (and then refused by the agent).
    pub fn slice(self, id: u16, range: Range<usize>) -> Self {
        self.field(id, Value::Slice(Span::of(range)))
    }

    /// Adds an unsigned field by raw id (untyped; prefer [`Frame::set`]).
    pub fn unsigned(self, id: u16, value: u64) -> Self {
        self.field(id, Value::Unsigned(value))
    }

    /// The first value of field `id`.
    pub fn get(&self, id: impl Into<u16>) -> Option<&Value> {
        self.values(id).next()
    }

    /// Every value of field `id`, in the order set (a repeated field's list).
    pub fn values(&self, id: impl Into<u16>) -> impl Iterator<Item = &Value> {
        let id = id.into();
        self.fields
            .iter()
            .filter(move |f| f.id == id)
            .map(|f| &f.value)
    }

    /// Every text of a (repeated) text field, in the order set; values that are
    /// not UTF-8 or lie outside `message` are left out.
    pub fn texts_of<'a>(
        &'a self,
        field: TextField,
        message: &'a [u8],
    ) -> impl Iterator<Item = &'a str> {
        self.values(field).filter_map(move |v| match v {
            Value::Slice(span) => core::str::from_utf8(span_of(span, message)?).ok(),
            Value::Computed(text) => Some(text.as_str()),
            _ => None,
        })
    }

    /// A text field's value: its slice of `message` (this frame's bytes) as
    /// UTF-8, or its computed text. `None` if absent, not UTF-8 or outside
    /// `message`.
    pub fn text_of<'a>(&'a self, field: TextField, message: &'a [u8]) -> Option<&'a str> {
        match self.get(field)? {
            Value::Slice(span) => core::str::from_utf8(span_of(span, message)?).ok(),
            Value::Computed(text) => Some(text),
            _ => None,
        }
    }

    /// A bytes field's value: its slice of `message`.
    pub fn bytes_of<'a>(&self, field: BytesField, message: &'a [u8]) -> Option<&'a [u8]> {
        match self.get(field)? {
            Value::Slice(span) => span_of(span, message),
            _ => None,
        }
    }

    /// An unsigned field's value.
    pub fn unsigned_of(&self, field: UnsignedField) -> Option<u64> {
        match self.get(field)? {
            Value::Unsigned(v) => Some(*v),
            _ => None,
        }
    }

    /// A signed field's value.
    pub fn signed_of(&self, field: SignedField) -> Option<i64> {
        match self.get(field)? {
            Value::Signed(v) => Some(*v),
            _ => None,
        }
    }

    /// A flag field's value.
    pub fn flag_of(&self, field: FlagField) -> Option<bool> {
        match self.get(field)? {
            Value::Flag(v) => Some(*v),
            _ => None,
        }
    }
}

fn span_of<'a>(span: &Span, message: &'a [u8]) -> Option<&'a [u8]> {
    let start = usize::try_from(span.offset).ok()?;
    let end = start.checked_add(usize::try_from(span.len).ok()?)?;
    message.get(start..end)
}

/// A request that policy denied, as [`crate::Parser::deny_reply`] sees it: its
/// bytes and, when they frame as one request, the fields the parser gives it.
///
/// The agent hands the plugin only the request's bytes; the SDK frames them
/// again with a fresh parser (`Default`), so the fields are those `parse`
/// finds without the connection's earlier messages. A parser whose request
/// fields depend on per-connection state sees that state's defaults here.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    bytes: &'a [u8],
    frame: Option<Frame>,
}

impl<'a> Request<'a> {
    /// `bytes` framed by a fresh `P`: the frame is kept when `parse` frames a
    /// request from them.
    pub fn parse<P: crate::Parser>(bytes: &'a [u8]) -> Self {
        let frame = match P::default().parse(Direction::ToServer, bytes) {
            Ok(Some(frame)) if frame.len <= bytes.len() && frame.kind == MessageKind::Request => {
                Some(frame)
            }
            _ => None,
        };
        Self { bytes, frame }
    }

    /// The request's bytes, exactly as framed on the connection.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The request's frame, if its bytes framed as a request again.
    pub fn frame(&self) -> Option<&Frame> {
        self.frame.as_ref()
    }

    /// A text field's value (see [`Frame::text_of`]).
    pub fn text(&self, field: TextField) -> Option<&str> {
        self.frame.as_ref()?.text_of(field, self.bytes)
    }

    /// Every text of a repeated text field (see [`Frame::texts_of`]).
    pub fn texts(&self, field: TextField) -> impl Iterator<Item = &str> {
        self.frame
            .iter()
            .flat_map(move |frame| frame.texts_of(field, self.bytes))
    }

    /// A bytes field's value.
    pub fn bytes_of(&self, field: BytesField) -> Option<&'a [u8]> {
        self.frame.as_ref()?.bytes_of(field, self.bytes)
    }

    /// An unsigned field's value.
    pub fn unsigned(&self, field: UnsignedField) -> Option<u64> {
        self.frame.as_ref()?.unsigned_of(field)
    }

    /// A signed field's value.
    pub fn signed(&self, field: SignedField) -> Option<i64> {
        self.frame.as_ref()?.signed_of(field)
    }

    /// A flag field's value.
    pub fn flag(&self, field: FlagField) -> Option<bool> {
        self.frame.as_ref()?.flag_of(field)
    }
}

/// The stream is not this protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Offset of the offending byte from the start of the buffer given to
    /// [`crate::Parser::parse`].
    pub at: usize,
    /// What was wrong.
    pub reason: String,
}

impl ParseError {
    /// An error at `at` in the buffer.
    pub fn new(at: usize, reason: impl Into<String>) -> Self {
        Self {
            at,
            reason: reason.into(),
        }
    }
}
