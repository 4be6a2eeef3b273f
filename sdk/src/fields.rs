//! Field declarations without hand-kept numeric ids: [`crate::fields!`] turns a
//! list of fields into typed constants and the schema, and [`Frame::set`](crate::Frame::set)
//! accepts only the value kind a field was declared with.
//!
//! ```
//! use loupe_sdk::{Direction, Frame};
//!
//! pub mod field {
//!     loupe_sdk::fields! {
//!         /// The command verb.
//!         COMMAND: Text = "command", "request command verb";
//!         SIZE: Unsigned = "size", "payload size in bytes";
//!         NOREPLY: Flag = "noreply", "no response will follow";
//!         /// A list: set once per key.
//!         KEY: [Text] = "key", "every key the command names";
//!     }
//! }
//!
//! assert_eq!(field::FIELDS.len(), 4);
//! assert!(field::FIELDS[3].repeated && !field::FIELDS[0].repeated);
//! assert_eq!(field::SIZE.id(), 1);
//! let frame = Frame::new(Direction::ToServer, 9)
//!     .set(field::COMMAND, 0..3)  // a slice of the message
//!     .set(field::SIZE, 5)        // u64
//!     .set(field::NOREPLY, true);
//! assert_eq!(frame.unsigned_of(field::SIZE), Some(5));
//! let get = Frame::new(Direction::ToServer, 9)
//!     .set(field::KEY, 4..5)
//!     .set(field::KEY, 6..7);
//! assert_eq!(get.texts_of(field::KEY, b"get a b\r\n").collect::<Vec<_>>(), ["a", "b"]);
//! // .set(field::SIZE, 0..3) does not compile: `size` is unsigned.
//! ```

use alloc::string::String;
use core::ops::Range;

use crate::{FieldSpec, Span, Value};

macro_rules! typed_field {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(u16);

        impl $name {
            /// The field whose schema entry is at `id` (prefer [`crate::fields!`]).
            pub const fn new(id: u16) -> Self {
                Self(id)
            }

            /// The index into the schema.
            pub const fn id(self) -> u16 {
                self.0
            }
        }

        impl From<$name> for u16 {
            fn from(field: $name) -> u16 {
                field.0
            }
        }
    )*};
}

typed_field! {
    /// A `text` field: set from a range of the message or computed text.
    TextField,
    /// A `bytes` field: set from a range of the message.
    BytesField,
    /// An `unsigned` field: set from a `u64`.
    UnsignedField,
    /// A `signed` field: set from an `i64`.
    SignedField,
    /// A `flag` field: set from a `bool`.
    FlagField,
}

/// A field that takes values of type `V` ([`crate::Frame::set`]).
pub trait Assign<V> {
    /// The index into the schema.
    fn field_id(&self) -> u16;
    /// The contract's value for `v`.
    fn value(v: V) -> Value;
}

macro_rules! assign {
    ($field:ty, $v:ty, |$x:ident| $value:expr) => {
        impl Assign<$v> for $field {
            fn field_id(&self) -> u16 {
                self.0
            }
            fn value($x: $v) -> Value {
                $value
            }
        }
    };
}

assign!(TextField, Range<usize>, |r| Value::Slice(Span::of(r)));
assign!(TextField, String, |s| Value::Computed(s));
assign!(TextField, &str, |s| Value::Computed(String::from(s)));
assign!(BytesField, Range<usize>, |r| Value::Slice(Span::of(r)));
assign!(UnsignedField, u64, |v| Value::Unsigned(v));
assign!(SignedField, i64, |v| Value::Signed(v));
assign!(FlagField, bool, |v| Value::Flag(v));

/// Declares a plugin's fields: one typed constant per field, numbered in order,
/// and `FIELDS`, the schema for [`crate::Info::fields`]. Each entry is
/// `NAME: Kind = "name", "description";` with `Kind` one of `Text`, `Bytes`,
/// `Unsigned`, `Signed`, `Flag`, or `NAME: [Kind] = …` for a field a message may
/// carry more than once (a list: the topics of one subscribe, the keys of one
/// multi-get; set it once per element). The schema is checked when the crate compiles,
/// against the agent's own rules: names lowercase `[a-z0-9][a-z0-9_-]*`, at most
/// 64 bytes, unique; at most 256 fields.
///
/// See the [module documentation](mod@crate::fields) for an example.
#[macro_export]
macro_rules! fields {
    ($($(#[$meta:meta])* $konst:ident : $kind:tt = $name:literal, $description:literal;)*) => {
        /// The field schema, in id order.
        pub const FIELDS: &[$crate::FieldSpec] = &[
            $($crate::FieldSpec {
                name: $name,
                ty: $crate::fields!(@ty $kind),
                repeated: $crate::fields!(@repeated $kind),
                description: $description,
            },)*
        ];
        const _: () = $crate::__private::check_fields(FIELDS);
        $(
            $(#[$meta])*
            pub const $konst: $crate::fields!(@field $kind) =
                <$crate::fields!(@field $kind)>::new($crate::__private::field_index(FIELDS, $name));
        )*
    };
    (@field [$kind:ident]) => { $crate::fields!(@field $kind) };
    (@ty [$kind:ident]) => { $crate::fields!(@ty $kind) };
    (@repeated [$kind:ident]) => { true };
    (@repeated $kind:ident) => { false };
    (@field Text) => { $crate::TextField };
    (@field Bytes) => { $crate::BytesField };
    (@field Unsigned) => { $crate::UnsignedField };
    (@field Signed) => { $crate::SignedField };
    (@field Flag) => { $crate::FlagField };
    (@ty Text) => { $crate::FieldType::Text };
    (@ty Bytes) => { $crate::FieldType::Bytes };
    (@ty Unsigned) => { $crate::FieldType::Unsigned };
    (@ty Signed) => { $crate::FieldType::Signed };
    (@ty Flag) => { $crate::FieldType::Flag };
}

/// The id of the field named `name` (names are unique: [`check_fields`]).
pub(crate) const fn field_index(fields: &[FieldSpec], name: &str) -> u16 {
    let mut i = 0;
    while i < fields.len() {
        if eq(fields[i].name.as_bytes(), name.as_bytes()) {
            return i as u16;
        }
        i += 1;
    }
    panic!("no such field")
}

/// Checks a schema at compile time (used by [`crate::fields!`]).
pub(crate) const fn check_fields(fields: &[FieldSpec]) {
    // The agent's limits (a plugin that breaks them does not install).
    assert!(fields.len() <= 256, "more than 256 fields");
    let mut i = 0;
    while i < fields.len() {
        let name = fields[i].name.as_bytes();
        assert!(!name.is_empty(), "a field name is empty");
        assert!(name.len() <= 64, "a field name is longer than 64 bytes");
        assert!(
            name[0].is_ascii_lowercase() || name[0].is_ascii_digit(),
            "a field name must start with [a-z0-9]"
        );
        let mut k = 0;
        while k < name.len() {
            let b = name[k];
            assert!(
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_',
                "a field name may hold only [a-z0-9_-]"
            );
            k += 1;
        }
        let mut j = 0;
        while j < i {
            assert!(
                !eq(fields[j].name.as_bytes(), name),
                "two fields have the same name"
            );
            j += 1;
        }
        i += 1;
    }
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use crate::{Direction, FieldType, Frame, Value};
    use std::{vec, vec::Vec};

    #[allow(unreachable_pub)]
    mod field {
        crate::fields! {
            /// Doc comments pass through.
            VERB: Text = "verb", "the verb";
            KEY: Bytes = "key", "the key";
            SIZE: Unsigned = "size", "a size";
            ERROR: Signed = "error-code", "an error";
            MORE: Flag = "more", "a flag";
        }
    }

    #[test]
    fn ids_follow_declaration_order_and_the_schema_matches() {
        assert_eq!(
            [
                field::VERB.id(),
                field::KEY.id(),
                field::SIZE.id(),
                field::ERROR.id(),
                field::MORE.id()
            ],
            [0, 1, 2, 3, 4]
        );
        let names: Vec<_> = field::FIELDS.iter().map(|f| (f.name, f.ty)).collect();
        assert_eq!(
            names,
            [
                ("verb", FieldType::Text),
                ("key", FieldType::Bytes),
                ("size", FieldType::Unsigned),
                ("error-code", FieldType::Signed),
                ("more", FieldType::Flag),
            ]
        );
    }

    #[test]
    fn typed_setters_and_getters() {
        let msg = b"SET k 5";
        let frame = Frame::new(Direction::ToServer, msg.len())
            .set(field::VERB, 0..3)
            .set(field::KEY, 4..5)
            .set(field::SIZE, 5)
            .set(field::ERROR, -2)
            .set(field::MORE, false);
        assert_eq!(frame.text_of(field::VERB, msg), Some("SET"));
        assert_eq!(frame.bytes_of(field::KEY, msg), Some(&b"k"[..]));
        assert_eq!(frame.unsigned_of(field::SIZE), Some(5));
        assert_eq!(frame.signed_of(field::ERROR), Some(-2));
        assert_eq!(frame.flag_of(field::MORE), Some(false));
        let computed = Frame::new(Direction::ToServer, 1).set(field::VERB, "get");
        assert_eq!(computed.fields[0].value, Value::Computed("get".into()));
        assert_eq!(computed.text_of(field::VERB, b"x"), Some("get"));
        assert_eq!(computed.unsigned_of(field::SIZE), None);
        // A slice outside the message reads as absent, never a panic.
        let bad = Frame::new(Direction::ToServer, 1).set(field::KEY, 5..9);
        assert_eq!(bad.bytes_of(field::KEY, b"x"), None);
    }

    #[test]
    fn the_schema_check_refuses_bad_and_duplicate_names() {
        use crate::FieldSpec;
        let spec = |name| FieldSpec {
            name,
            ty: FieldType::Text,
            repeated: false,
            description: "",
        };
        let check = |fields: Vec<FieldSpec>| {
            std::panic::catch_unwind(|| super::check_fields(&fields)).is_ok()
        };
        assert!(check(vec![spec("a-b_1"), spec("c")]));
        assert!(!check(vec![spec("a"), spec("a")]));
        assert!(!check(vec![spec("Upper")]));
        assert!(!check(vec![spec("")]));
        assert!(!check(vec![spec("a b")]));
        let long: &'static str = std::string::String::leak("x".repeat(65));
        assert!(!check(vec![spec(long)]));
        let many: Vec<FieldSpec> = (0..257)
            .map(|i| spec(std::string::String::leak(std::format!("f{i}"))))
            .collect();
        assert!(!check(many));
        assert!(check(vec![spec(&long[..64])]));
    }
}
