//! What a plugin says about itself (`describe()`), checked and in host types.

use super::contract::v0_2::exports::loupe::plugin::parser as wit;
use super::error::InstallError;

/// Transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP-like byte streams.
    Stream,
    /// Datagrams (not loaded yet).
    Datagram,
}

/// Field value types of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
    /// Unsigned integer.
    Unsigned,
    /// Signed integer.
    Signed,
    /// Boolean.
    Flag,
}

impl FieldType {
    /// The WIT name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Bytes => "bytes",
            Self::Unsigned => "unsigned",
            Self::Signed => "signed",
            Self::Flag => "flag",
        }
    }
}

/// One schema entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// Field name.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// Whether a message may carry it more than once (a list value).
    pub repeated: bool,
    /// For humans.
    pub description: String,
}

/// A plugin's self-description, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Protocol name for policies.
    pub protocol: String,
    /// Default ports.
    pub default_ports: Vec<u16>,
    /// Stream or datagram.
    pub transport: Transport,
    /// Field schema; message field ids index it.
    pub fields: Vec<FieldSpec>,
}

/// At most this many schema fields (ids are u16; policies stay readable).
const MAX_FIELDS: usize = 256;
/// At most this many default ports.
const MAX_PORTS: usize = 64;

/// A lowercase identifier: `[a-z0-9][a-z0-9_-]{0,63}`. Plugin names, protocol
/// names and field names all use it, so a name can be a file name and a policy key.
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

impl PluginInfo {
    /// Converts and checks `describe()`'s answer.
    pub(crate) fn from_wit(info: wit::PluginInfo) -> Result<Self, InstallError> {
        let insane = |what: String| InstallError::Describe(what);
        if !is_identifier(&info.name) {
            return Err(insane(format!(
                "name {:?} is not [a-z0-9][a-z0-9_-]{{0,63}}",
                info.name
            )));
        }
        if !is_identifier(&info.protocol) {
            return Err(insane(format!(
                "protocol {:?} is not [a-z0-9][a-z0-9_-]{{0,63}}",
                info.protocol
            )));
        }
        if info.version.is_empty()
            || info.version.len() > 64
            || info.version.contains(char::is_whitespace)
        {
            return Err(insane(format!(
                "version {:?} is not a version",
                info.version
            )));
        }
        if info.default_ports.len() > MAX_PORTS || info.default_ports.contains(&0) {
            return Err(insane(format!(
                "default ports {:?}: at most {MAX_PORTS}, none 0",
                info.default_ports
            )));
        }
        if info.fields.len() > MAX_FIELDS {
            return Err(insane(format!(
                "{} fields (at most {MAX_FIELDS})",
                info.fields.len()
            )));
        }
        let mut fields = Vec::with_capacity(info.fields.len());
        for f in info.fields {
            if !is_identifier(&f.name) {
                return Err(insane(format!(
                    "field name {:?} is not [a-z0-9][a-z0-9_-]{{0,63}}",
                    f.name
                )));
            }
            if fields.iter().any(|g: &FieldSpec| g.name == f.name) {
                return Err(insane(format!("field {:?} declared twice", f.name)));
            }
            fields.push(FieldSpec {
                name: f.name,
                ty: match f.ty {
                    wit::FieldType::Text => FieldType::Text,
                    wit::FieldType::Bytes => FieldType::Bytes,
                    wit::FieldType::Unsigned => FieldType::Unsigned,
                    wit::FieldType::Signed => FieldType::Signed,
                    wit::FieldType::Flag => FieldType::Flag,
                },
                repeated: f.repeated,
                description: f.description.chars().take(200).collect(),
            });
        }
        let transport = match info.transport {
            wit::Transport::Stream => Transport::Stream,
            wit::Transport::Datagram => {
                return Err(insane(
                    "datagram plugins are not loaded yet (this host parses streams)".into(),
                ));
            }
        };
        Ok(Self {
            name: info.name,
            version: info.version,
            protocol: info.protocol,
            default_ports: info.default_ports,
            transport,
            fields,
        })
    }
}
