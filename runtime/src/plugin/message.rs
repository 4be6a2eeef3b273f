//! Messages as the host hands them on: checked, positioned, with their bytes.

use super::contract::v0_2::exports::loupe::plugin::parser as wit;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Initiator to listener.
    ToServer,
    /// Listener to initiator.
    ToClient,
}

impl Direction {
    pub(crate) fn index(self) -> usize {
        match self {
            Self::ToServer => 0,
            Self::ToClient => 1,
        }
    }

    pub(crate) fn to_wit(self) -> wit::Direction {
        match self {
            Self::ToServer => wit::Direction::ToServer,
            Self::ToClient => wit::Direction::ToClient,
        }
    }
}

/// Request, response or event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// From the client.
    Request,
    /// The server's answer.
    Response,
    /// Unpaired.
    Event,
}

/// How the message pairs with its counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correlation {
    /// The n-th in-order message of its direction (counted by the host from 0):
    /// response n answers request n.
    Order(u64),
    /// An identifier both carry.
    Id(u64),
    /// Not paired.
    None,
}

/// A field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `bytes[offset..offset + len]` of the message.
    Slice {
        /// From the message's first byte.
        offset: u32,
        /// Length.
        len: u32,
    },
    /// Computed text.
    Text(String),
    /// Unsigned.
    Unsigned(u64),
    /// Signed.
    Signed(i64),
    /// Flag.
    Flag(bool),
}

/// One field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Index into the plugin's schema.
    pub id: u16,
    /// Value.
    pub value: Value,
}

/// One framed, checked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its direction.
    pub direction: Direction,
    /// Kind.
    pub kind: MessageKind,
    /// Offset of its first byte in the direction's stream.
    pub start: u64,
    /// Its bytes: a slice of one buffer shared by the messages of a feed (one
    /// copy out of the connection's buffer per feed, not one per message).
    pub bytes: bytes::Bytes,
    /// Pairing.
    pub correlation: Correlation,
    /// Fields (slices checked to lie inside `bytes`).
    pub fields: Vec<Field>,
}

impl Message {
    /// The bytes of a `Slice` field (`None` for other values).
    pub fn slice(&self, field: &Field) -> Option<&[u8]> {
        match field.value {
            Value::Slice { offset, len } => {
                let start = offset as usize;
                self.bytes.get(start..start + len as usize)
            }
            _ => None,
        }
    }

    /// The first field with schema id `id`.
    pub fn field(&self, id: u16) -> Option<&Field> {
        self.fields.iter().find(|f| f.id == id)
    }
}
