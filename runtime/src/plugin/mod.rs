//! The sandboxed plugin host: L7 parsers as WebAssembly components.
//!
//! - [`contract`]: the `loupe:plugin` versions spoken (bindings per version).
//! - [`host`]: the engine (component model, epochs, pooling) and loading a
//!   component into a checked [`Plugin`] — no imports, a supported contract, a
//!   sane `describe()`.
//! - [`store`]: a [`Worker`]: one instance per worker thread, one resource per
//!   connection, fault containment.
//! - [`limits`], [`metrics`], [`cache`] (precompiled `.cwasm`), [`directory`]
//!   (the plugin directory through `cap-std`), [`manager`] (install / list /
//!   remove, activation without restart).

pub mod bundled;
pub mod cache;
pub mod contract;
pub mod directory;
pub mod error;
pub mod host;
pub mod info;
pub mod limits;
pub mod manager;
pub mod message;
pub mod metrics;
pub mod store;

pub use contract::ContractVersion;
/// A plugin's answer to "is this your protocol?".
pub use contract::v0_2::exports::loupe::plugin::parser::SniffVerdict;
pub use error::{ConnError, InstallError};
pub use host::{Plugin, PluginHost};
pub use info::{FieldSpec, FieldType, PluginInfo, Transport};
pub use limits::Limits;
pub use manager::{PluginManager, PluginState, PluginSummary};
pub use message::{Correlation, Direction, Field, Message, MessageKind, Value};
pub use metrics::{MetricsSnapshot, PluginMetrics};
pub use store::{ConnId, Worker};
