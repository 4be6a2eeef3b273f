//! The versions of the `loupe:plugin` contract this host speaks, and which one a
//! component exports. Each version gets its own generated bindings module; the
//! host works in the newest version's types and adapts older plugins' answers to
//! them ([`v0_1`]'s adapters), so plugins built against older contracts keep
//! loading.

/// Bindings for `loupe:plugin@0.2.0` (`wit/parser.wit`): the types the host works in.
pub(crate) mod v0_2 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "loupe:plugin/plugin@0.2.0",
    });
}

/// Bindings for `loupe:plugin@0.1.0` (`wit/0.1/parser.wit`, frozen), and the
/// adapters from its answers to 0.2's.
pub(crate) mod v0_1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    wasmtime::component::bindgen!({
        path: "../wit/0.1",
        world: "loupe:plugin/plugin@0.1.0",
    });

    use super::v0_2::exports::loupe::plugin::parser as new;
    use exports::loupe::plugin::parser as old;

    /// A 0.1 `describe()` in 0.2 terms. 0.1 could not say which fields repeat and
    /// let any of them: every field is `repeated`.
    pub(crate) fn info(info: old::PluginInfo) -> new::PluginInfo {
        new::PluginInfo {
            name: info.name,
            version: info.version,
            protocol: info.protocol,
            default_ports: info.default_ports,
            transport: match info.transport {
                old::Transport::Stream => new::Transport::Stream,
                old::Transport::Datagram => new::Transport::Datagram,
            },
            fields: info
                .fields
                .into_iter()
                .map(|f| new::FieldSpec {
                    name: f.name,
                    ty: match f.ty {
                        old::FieldType::Text => new::FieldType::Text,
                        old::FieldType::Bytes => new::FieldType::Bytes,
                        old::FieldType::Unsigned => new::FieldType::Unsigned,
                        old::FieldType::Signed => new::FieldType::Signed,
                        old::FieldType::Flag => new::FieldType::Flag,
                    },
                    repeated: true,
                    description: f.description,
                })
                .collect(),
        }
    }

    /// A 0.1 `feed` answer in 0.2 terms: nested field lists flattened, computed
    /// strings moved into the text arena. Lengths past `u32` are left for the
    /// host's checks to refuse (they saturate, which no buffer can satisfy).
    pub(crate) fn frames(frames: old::Frames) -> new::Frames {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut fields = Vec::new();
        let mut text = String::new();
        let messages = frames
            .messages
            .into_iter()
            .map(|m| {
                // `fields` holds two words per field: the next field's index.
                let first = clamp(fields.len() / 2);
                let count = clamp(m.fields.len());
                for f in m.fields {
                    let (kind, offset, word) = match f.value {
                        old::Value::Slice(s) => (new::ValueKind::Slice, s.offset, u64::from(s.len)),
                        old::Value::Computed(s) => {
                            let at = clamp(text.len());
                            text.push_str(&s);
                            (new::ValueKind::Computed, at, s.len() as u64)
                        }
                        old::Value::Unsigned(v) => (new::ValueKind::Unsigned, 0, v),
                        old::Value::Signed(v) => (new::ValueKind::Signed, 0, v as u64),
                        old::Value::Flag(v) => (new::ValueKind::Flag, 0, u64::from(v)),
                    };
                    fields.extend(super::pack(f.id, kind, offset, word));
                }
                new::Message {
                    kind: match m.kind {
                        old::MessageKind::Request => new::MessageKind::Request,
                        old::MessageKind::Response => new::MessageKind::Response,
                        old::MessageKind::Event => new::MessageKind::Event,
                    },
                    start: m.start,
                    len: m.len,
                    correlation: match m.correlation {
                        old::Correlation::InOrder => new::Correlation::InOrder,
                        old::Correlation::Id(id) => new::Correlation::Id(id),
                        old::Correlation::None => new::Correlation::None,
                    },
                    fields: new::Span {
                        offset: first,
                        len: count,
                    },
                }
            })
            .collect();
        new::Frames {
            messages,
            fields,
            text,
            pending: frames.pending,
            error: frames.error.map(|e| new::ParseError {
                offset: e.offset,
                reason: e.reason,
            }),
        }
    }

    /// A 0.1 sniff verdict in 0.2 terms.
    pub(crate) fn verdict(v: old::SniffVerdict) -> new::SniffVerdict {
        match v {
            old::SniffVerdict::No => new::SniffVerdict::No,
            old::SniffVerdict::Maybe => new::SniffVerdict::Maybe,
            old::SniffVerdict::Yes => new::SniffVerdict::Yes,
        }
    }

    /// A 0.2 direction in 0.1 terms.
    pub(crate) fn direction(d: new::Direction) -> old::Direction {
        match d {
            new::Direction::ToServer => old::Direction::ToServer,
            new::Direction::ToClient => old::Direction::ToClient,
        }
    }
}

/// One field as 0.2's `frames.fields` packs it: two words.
pub(crate) fn pack(id: u16, kind: wit::ValueKind, offset: u32, word: u64) -> [u64; 2] {
    let kind = match kind {
        wit::ValueKind::Slice => 0u64,
        wit::ValueKind::Computed => 1,
        wit::ValueKind::Unsigned => 2,
        wit::ValueKind::Signed => 3,
        wit::ValueKind::Flag => 4,
    };
    [u64::from(id) | kind << 16 | u64::from(offset) << 32, word]
}

/// A packed field's id, kind, offset and second word; `None` for an unknown
/// kind or reserved bits set.
pub(crate) fn unpack(w0: u64, w1: u64) -> Option<(u16, wit::ValueKind, u32, u64)> {
    let kind = match (w0 >> 16) & 0xffff {
        0 => wit::ValueKind::Slice,
        1 => wit::ValueKind::Computed,
        2 => wit::ValueKind::Unsigned,
        3 => wit::ValueKind::Signed,
        4 => wit::ValueKind::Flag,
        _ => return None,
    };
    let offset = (w0 >> 32) as u32;
    if offset != 0 && !matches!(kind, wit::ValueKind::Slice | wit::ValueKind::Computed) {
        return None;
    }
    Some((w0 as u16, kind, offset, w1))
}

/// The export every parser plugin has, before its `@version`.
pub const PARSER_INTERFACE: &str = "loupe:plugin/parser";

/// Contract versions the host can instantiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    /// `loupe:plugin@0.1.x`, adapted to 0.2.
    V0_1,
    /// `loupe:plugin@0.2.x`.
    V0_2,
}

impl ContractVersion {
    /// Every supported version, oldest first.
    pub const SUPPORTED: &'static [&'static str] = &["0.1", "0.2"];

    /// The version a `loupe:plugin/parser@X.Y.Z` export speaks, if supported.
    pub fn from_version(version: &str) -> Option<Self> {
        let mut parts = version.split('.');
        match (parts.next(), parts.next()) {
            // 0.x versions are compatible within a minor version (semver).
            (Some("0"), Some("1")) => Some(Self::V0_1),
            (Some("0"), Some("2")) => Some(Self::V0_2),
            _ => None,
        }
    }

    /// `0.1` etc.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1",
            Self::V0_2 => "0.2",
        }
    }
}

use wasmtime::component::ResourceAny;
use wasmtime::{AsContextMut, Result};

use v0_2::exports::loupe::plugin::parser as wit;

/// A component checked against the contract it exports, ready to instantiate.
pub(crate) enum Pre<T: 'static> {
    /// A 0.1 plugin.
    V0_1(v0_1::PluginPre<T>),
    /// A 0.2 plugin.
    V0_2(v0_2::PluginPre<T>),
}

impl<T: 'static> Pre<T> {
    /// Checks `pre` against the exports of `version`.
    pub(crate) fn new(
        version: ContractVersion,
        pre: wasmtime::component::InstancePre<T>,
    ) -> Result<Self> {
        Ok(match version {
            ContractVersion::V0_1 => Self::V0_1(v0_1::PluginPre::new(pre)?),
            ContractVersion::V0_2 => Self::V0_2(v0_2::PluginPre::new(pre)?),
        })
    }

    /// A new instance in `store`.
    pub(crate) fn instantiate(&self, store: impl AsContextMut<Data = T>) -> Result<Bindings> {
        Ok(match self {
            Self::V0_1(pre) => Bindings::V0_1(pre.instantiate(store)?),
            Self::V0_2(pre) => Bindings::V0_2(pre.instantiate(store)?),
        })
    }
}

/// One instance's exports, answering in 0.2 types whatever version it speaks.
pub(crate) enum Bindings {
    /// A 0.1 plugin, adapted.
    V0_1(v0_1::Plugin),
    /// A 0.2 plugin.
    V0_2(v0_2::Plugin),
}

impl Bindings {
    /// `describe()`.
    pub(crate) fn describe<T: 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
    ) -> Result<wit::PluginInfo> {
        match self {
            Self::V0_1(b) => Ok(v0_1::info(b.loupe_plugin_parser().call_describe(store)?)),
            Self::V0_2(b) => b.loupe_plugin_parser().call_describe(store),
        }
    }

    /// `sniff()`.
    pub(crate) fn sniff<T: 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
        direction: wit::Direction,
        bytes: &[u8],
    ) -> Result<wit::SniffVerdict> {
        match self {
            Self::V0_1(b) => Ok(v0_1::verdict(b.loupe_plugin_parser().call_sniff(
                store,
                v0_1::direction(direction),
                bytes,
            )?)),
            Self::V0_2(b) => b.loupe_plugin_parser().call_sniff(store, direction, bytes),
        }
    }

    /// `deny-reply()`.
    pub(crate) fn deny_reply<T: 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
        request: &[u8],
    ) -> Result<Vec<u8>> {
        match self {
            Self::V0_1(b) => b.loupe_plugin_parser().call_deny_reply(store, request),
            Self::V0_2(b) => b.loupe_plugin_parser().call_deny_reply(store, request),
        }
    }

    /// A new `connection` resource.
    pub(crate) fn connection<T: 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
    ) -> Result<ResourceAny> {
        match self {
            Self::V0_1(b) => b.loupe_plugin_parser().connection().call_constructor(store),
            Self::V0_2(b) => b.loupe_plugin_parser().connection().call_constructor(store),
        }
    }

    /// `connection.feed()`.
    pub(crate) fn feed<T: 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
        connection: ResourceAny,
        direction: wit::Direction,
        bytes: &[u8],
    ) -> Result<wit::Frames> {
        match self {
            Self::V0_1(b) => Ok(v0_1::frames(
                b.loupe_plugin_parser().connection().call_feed(
                    store,
                    connection,
                    v0_1::direction(direction),
                    bytes,
                )?,
            )),
            Self::V0_2(b) => b
                .loupe_plugin_parser()
                .connection()
                .call_feed(store, connection, direction, bytes),
        }
    }
}
