//! Prometheus metrics: two `/metrics` listeners like Cilium's agent —
//! `prometheus.port` (9962: `cilium_*`, `loupe_*`) and `hubble.metrics.port`
//! (9965: `hubble_*` and other flow-derived metrics).
//!
//! Other components add their numbers through [`MetricsRegistry::register`]
//! with a [`Collector`] that is asked for current values at scrape time; see
//! `ARCHITECTURE.md` for the names each one owns.

pub mod flow;
pub mod options;
pub mod registry;
pub mod server;
pub mod status;

pub use flow::FlowMetrics;
pub use options::MetricSpec;
pub use registry::{Collector, Labels, MetricFamily, MetricKind, MetricsRegistry, Sample};

use crate::flow::FlowStore;

/// Flow-store and pipeline counters (`loupe_flows_*`, `hubble_lost_events_total`).
pub fn store_families(store: &FlowStore, hubble_names: bool) -> Vec<MetricFamily> {
    let stats = store.stats();
    let mut out = Vec::new();
    if hubble_names {
        let mut lost = MetricFamily::new(
            "hubble_lost_events_total",
            "Events lost, by where they were lost.",
            MetricKind::Counter,
        );
        for (source, n) in store.lost_by_source() {
            lost = lost.value(&[("source", source.as_str_name())], n as f64);
        }
        out.push(lost);
    } else {
        out.push(
            MetricFamily::new(
                "loupe_flows_seen_total",
                "Flows pushed into the flow store.",
                MetricKind::Counter,
            )
            .value(&[], stats.seen as f64),
        );
        out.push(
            MetricFamily::new(
                "loupe_flows_lost_total",
                "Flows or events lost, by where.",
                MetricKind::Counter,
            )
            .value(
                &[("source", "subscriber_queue")],
                stats.lost_to_subscribers as f64,
            )
            .value(&[("source", "upstream")], stats.lost_upstream as f64),
        );
        out.push(
            MetricFamily::new(
                "loupe_flow_store_flows",
                "Flows in the ring now.",
                MetricKind::Gauge,
            )
            .value(&[], stats.stored as f64),
        );
        out.push(
            MetricFamily::new(
                "loupe_flow_store_capacity",
                "Ring capacity (hubble.eventBufferCapacity).",
                MetricKind::Gauge,
            )
            .value(&[], stats.capacity as f64),
        );
        out.push(
            MetricFamily::new(
                "loupe_flow_subscribers",
                "Live flow subscribers (GetFlows --follow, metrics).",
                MetricKind::Gauge,
            )
            .value(&[], stats.subscribers as f64),
        );
    }
    out
}
