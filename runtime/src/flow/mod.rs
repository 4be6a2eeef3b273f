//! Flows: the bounded store of recent flows, live fan-out to subscribers, the
//! filters of Hubble's `FlowFilter`, field masks and the JSON form.
//!
//! Every producer (the datapath's event reader, the L7 path) hands finished
//! [`Flow`]s to one [`FlowStore`] with [`FlowStore::push`]; the gRPC Observer,
//! the metrics and `loupe status` read from it. Nothing a reader does can slow a
//! producer down: readers that fall behind lose flows and are told how many.

pub mod fanout;
pub mod filter;
pub mod json;
pub mod mask;
pub mod selector;
pub mod services;
pub mod store;
pub mod summary;

pub use fanout::{Event, Subscription};
pub use filter::{FilterError, FlowFilterSet};
pub use mask::FieldMask;
pub use store::{FlowStore, StoreStats};
pub use summary::summary;
