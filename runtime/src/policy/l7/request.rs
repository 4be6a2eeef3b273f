//! What the L7 engine needs to know about a request: its protocol and its field
//! values by schema name. The proxy implements [`L7Request`] over a parsed plugin
//! [`Message`] ([`PluginRequest`]); tests implement it over a map.

use crate::plugin::{FieldType, Message, PluginInfo, Value};

/// One field value, typed as the plugin's schema types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    /// Text (UTF-8 as the plugin promises, but matched as bytes: a hostile peer
    /// may send anything).
    Text(&'a [u8]),
    /// Raw bytes.
    Bytes(&'a [u8]),
    /// Unsigned integer.
    Unsigned(u64),
    /// Signed integer.
    Signed(i64),
    /// Boolean.
    Flag(bool),
}

impl FieldValue<'_> {
    /// The form patterns are matched against: text and bytes as they are,
    /// integers in decimal, flags as `true` / `false`.
    pub fn text_form(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        match self {
            Self::Text(b) | Self::Bytes(b) => Cow::Borrowed(b),
            Self::Unsigned(n) => Cow::Owned(n.to_string().into_bytes()),
            Self::Signed(n) => Cow::Owned(n.to_string().into_bytes()),
            Self::Flag(f) => Cow::Borrowed(if *f { b"true" } else { b"false" }),
        }
    }

    /// The value as an unsigned integer, if it is one (or a non-negative signed).
    pub fn as_unsigned(&self) -> Option<u64> {
        match self {
            Self::Unsigned(n) => Some(*n),
            Self::Signed(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }
}

/// A request as the L7 engine sees it.
pub trait L7Request {
    /// The protocol, as the parsing plugin describes it (`http`, `kafka`, `redis`).
    fn protocol(&self) -> &str;

    /// Every value of the schema field `name`, in message order (empty when the
    /// message does not carry it).
    fn values(&self, name: &str) -> Vec<FieldValue<'_>>;

    /// Every value of the header `name` (ASCII case-insensitive), for protocols
    /// with headers (HTTP). The default has none.
    fn headers(&self, name: &str) -> Vec<&[u8]> {
        let _ = name;
        Vec::new()
    }

    /// The first value of `name`.
    fn value(&self, name: &str) -> Option<FieldValue<'_>> {
        self.values(name).into_iter().next()
    }
}

/// A plugin [`Message`] with the schema of the plugin that parsed it.
#[derive(Debug, Clone, Copy)]
pub struct PluginRequest<'a> {
    /// The plugin's self-description (its protocol and field schema).
    pub info: &'a PluginInfo,
    /// The parsed request.
    pub message: &'a Message,
}

impl L7Request for PluginRequest<'_> {
    fn protocol(&self) -> &str {
        &self.info.protocol
    }

    fn values(&self, name: &str) -> Vec<FieldValue<'_>> {
        let Some((index, spec)) = self
            .info
            .fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
        else {
            return Vec::new();
        };
        let Ok(id) = u16::try_from(index) else {
            return Vec::new();
        };
        self.message
            .fields
            .iter()
            .filter(|f| f.id == id)
            .filter_map(|f| match &f.value {
                Value::Slice { .. } => {
                    let bytes = self.message.slice(f)?;
                    Some(match spec.ty {
                        FieldType::Bytes => FieldValue::Bytes(bytes),
                        _ => FieldValue::Text(bytes),
                    })
                }
                Value::Text(t) => Some(match spec.ty {
                    FieldType::Bytes => FieldValue::Bytes(t.as_bytes()),
                    _ => FieldValue::Text(t.as_bytes()),
                }),
                Value::Unsigned(n) => Some(FieldValue::Unsigned(*n)),
                Value::Signed(n) => Some(FieldValue::Signed(*n)),
                Value::Flag(b) => Some(FieldValue::Flag(*b)),
            })
            .collect()
    }

    fn headers(&self, name: &str) -> Vec<&[u8]> {
        if self.info.protocol != "http" {
            return Vec::new();
        }
        http_headers(&self.message.bytes, name)
    }
}

/// The values of header `name` in an HTTP/1.x head: the lines after the start
/// line up to the blank line, `Name: value`, value trimmed of spaces and tabs.
pub fn http_headers<'a>(head: &'a [u8], name: &str) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut lines = head.split(|b| *b == b'\n');
    lines.next(); // the start line
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
            out.push(line[colon + 1..].trim_ascii());
        }
    }
    out
}
