//! Why a plugin is refused, and why a connection lost its L7 view.

/// A plugin cannot be installed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The file is not WebAssembly at all, or is truncated / damaged.
    #[error("corrupt plugin file: {0}")]
    Corrupt(String),
    /// A core WebAssembly module, not a component.
    #[error(
        "not a component: this is a core WebAssembly module; build the plugin for `wasm32-wasip2` (see sdk/README.md)"
    )]
    NotAComponent,
    /// The file is larger than the host accepts.
    #[error("plugin file is {size} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The component imports something; plugins get no ambient authority.
    #[error(
        "forbidden import {import:?}: plugins may import nothing (no filesystem, network, clocks or environment){more}"
    )]
    ForbiddenImport {
        /// The first import.
        import: String,
        /// ", and N more" when there are others.
        more: String,
    },
    /// No `loupe:plugin/parser` export at a version this host speaks.
    #[error(
        "unsupported contract: the component exports {found}; this host supports loupe:plugin/parser@{{{supported}}}"
    )]
    UnsupportedContract {
        /// What it exports.
        found: String,
        /// What the host speaks.
        supported: String,
    },
    /// The component could not be compiled or linked.
    #[error("plugin does not load: {0}")]
    Load(String),
    /// `describe()` failed or returned nonsense.
    #[error("describe() is not sane: {0}")]
    Describe(String),
    /// The plugin name cannot be used.
    #[error("invalid plugin name {0:?}: use [a-z0-9][a-z0-9_-]{{0,63}} (no paths)")]
    InvalidName(String),
    /// The plugin directory failed.
    #[error("plugin directory {path}: {source}")]
    Directory {
        /// What was being accessed.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No such plugin installed.
    #[error("no plugin named {0:?} is installed")]
    NotInstalled(String),
    /// Policies in force need the plugin this change would take away.
    #[error(
        "plugin {plugin:?} parses {protocol:?} for policies in force ({policies}); {change} would make their connections fail closed: change those policies first, or pass --force"
    )]
    InUse {
        /// The installed name.
        plugin: String,
        /// The protocol the policies name.
        protocol: String,
        /// The policies (`namespace/name`, comma-separated).
        policies: String,
        /// What was asked (`removing it`, `replacing it with a "kafka" parser`).
        change: String,
    },
    /// The engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// Why a connection's L7 view stopped. The connection itself is never affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The plugin says the stream is not its protocol.
    #[error("parse error at byte {offset}: {reason}")]
    Parse {
        /// Stream offset.
        offset: u64,
        /// The plugin's reason.
        reason: String,
    },
    /// The plugin trapped (or was killed) while handling this connection's bytes.
    #[error("plugin {plugin} {kind} while parsing this connection; instance discarded")]
    Fault {
        /// The plugin.
        plugin: String,
        /// `trapped`, `hit its deadline`, `ran out of memory`.
        kind: &'static str,
    },
    /// The plugin returned something impossible (spans past the buffer, …).
    #[error("plugin {plugin} broke the contract: {detail}")]
    Violation {
        /// The plugin.
        plugin: String,
        /// What it did.
        detail: String,
    },
    /// A message grew past the per-connection buffer limit.
    #[error("no message boundary within {limit} buffered bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// The plugin could not be instantiated (pool exhausted, …).
    #[error("plugin {plugin} cannot be instantiated: {detail}")]
    Unavailable {
        /// The plugin.
        plugin: String,
        /// Why.
        detail: String,
    },
    /// No such connection on this worker.
    #[error("unknown connection {0}")]
    UnknownConnection(u64),
}
