//! Flows: the bounded store of recent flows, live fan-out to subscribers, and the
//! filters of Hubble's `FlowFilter`.
//!
//! Every producer (the datapath's event reader, the L7 path) hands finished
//! [`Flow`]s to one [`FlowStore`] with [`FlowStore::push`]; the gRPC Observer,
//! the metrics and `loupe status` read from it. Nothing a reader does can slow a
//! producer down: readers that fall behind lose flows and are told how many.

pub mod fanout;
pub mod filter;
pub mod selector;
pub mod store;

pub use fanout::{Event, Subscription};
pub use filter::{FilterError, FlowFilterSet};
pub use store::{FlowStore, StoreStats};

use prost::Message as _;

use crate::api::proto::extension::L7Extension;
use crate::api::proto::flow::{Flow, layer4, layer7};

/// The `Any` type URL of Loupe's plugin extension.
pub const L7_EXTENSION_TYPE_URL: &str = "type.googleapis.com/loupe.flow.v1.L7Extension";

/// Wraps a plugin's record for `Flow.extensions`.
pub fn extension_any(ext: &L7Extension) -> prost_types::Any {
    prost_types::Any {
        type_url: L7_EXTENSION_TYPE_URL.to_string(),
        value: ext.encode_to_vec(),
    }
}

/// The plugin record carried by a flow, if any (and if it decodes).
pub fn l7_extension(flow: &Flow) -> Option<L7Extension> {
    let any = flow.extensions.as_ref()?;
    if any.type_url != L7_EXTENSION_TYPE_URL {
        return None;
    }
    L7Extension::decode(any.value.as_slice()).ok()
}

/// The L4 protocol's lowercase name (`tcp`, `udp`, `icmpv4`, …).
pub fn l4_protocol(flow: &Flow) -> Option<&'static str> {
    Some(match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(_) => "tcp",
        layer4::Protocol::Udp(_) => "udp",
        layer4::Protocol::IcmPv4(_) => "icmpv4",
        layer4::Protocol::IcmPv6(_) => "icmpv6",
        layer4::Protocol::Sctp(_) => "sctp",
    })
}

/// The L7 protocol's name: `http`, `dns`, `kafka`, or the plugin's protocol.
pub fn l7_protocol(flow: &Flow) -> Option<String> {
    if let Some(record) = flow.l7.as_ref().and_then(|l7| l7.record.as_ref()) {
        return Some(
            match record {
                layer7::Record::Http(_) => "http",
                layer7::Record::Dns(_) => "dns",
                layer7::Record::Kafka(_) => "kafka",
            }
            .to_string(),
        );
    }
    l7_extension(flow).map(|ext| ext.protocol)
}

/// Source and destination ports, when the L4 protocol has them.
pub fn ports(flow: &Flow) -> Option<(u32, u32)> {
    match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => Some((t.source_port, t.destination_port)),
        layer4::Protocol::Udp(u) => Some((u.source_port, u.destination_port)),
        layer4::Protocol::Sctp(s) => Some((s.source_port, s.destination_port)),
        layer4::Protocol::IcmPv4(_) | layer4::Protocol::IcmPv6(_) => None,
    }
}

/// A flow's time in nanoseconds since the epoch (0 when unset).
pub fn time_ns(flow: &Flow) -> i128 {
    flow.time.as_ref().map_or(0, timestamp_ns)
}

/// A protobuf timestamp in nanoseconds since the epoch.
pub fn timestamp_ns(ts: &prost_types::Timestamp) -> i128 {
    i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos)
}

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}
