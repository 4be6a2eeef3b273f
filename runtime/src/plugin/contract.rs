//! The versions of the `loupe:plugin` contract this host speaks, and which one a
//! component exports. Each version gets its own generated bindings module; a new
//! minor version adds a module (and a variant) without touching the old ones, so
//! plugins built against older contracts keep loading.

/// Bindings for `loupe:plugin@0.1.0` (the `wit/` directory at 0.1).
pub(crate) mod v0_1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "loupe:plugin/plugin@0.1.0",
    });
}

/// The export every parser plugin has, before its `@version`.
pub const PARSER_INTERFACE: &str = "loupe:plugin/parser";

/// Contract versions the host can instantiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    /// `loupe:plugin@0.1.x`.
    V0_1,
}

impl ContractVersion {
    /// Every supported version, oldest first.
    pub const SUPPORTED: &'static [&'static str] = &["0.1"];

    /// The version a `loupe:plugin/parser@X.Y.Z` export speaks, if supported.
    pub fn from_version(version: &str) -> Option<Self> {
        let mut parts = version.split('.');
        match (parts.next(), parts.next()) {
            // 0.x versions are compatible within a minor version (semver).
            (Some("0"), Some("1")) => Some(Self::V0_1),
            _ => None,
        }
    }

    /// `0.1` etc.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1",
        }
    }
}
