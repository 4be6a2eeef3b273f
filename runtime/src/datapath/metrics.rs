//! The datapath's metrics under Cilium's names: drops and forwards by reason and
//! direction (read from the per-CPU counters at scrape time), map pressure,
//! endpoint regeneration time, identities and policies.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aya::maps::{Map, MapData, PerCpuArray};
use loupe_common::{COUNTER_PAYLOAD, Counter, direction, maps};

use crate::metrics::{Collector, MetricFamily, MetricKind, Sample};

/// Cilium's text for a drop reason (what `cilium_drop_count_total{reason}` and
/// Hubble print).
pub fn drop_reason_text(code: u8) -> &'static str {
    match code {
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        181 => "Policy denied by denylist",
        _ => "Unknown reason",
    }
}

/// Regeneration-time histogram buckets, in seconds.
const REGEN_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Values the controller and the agent's tasks update; read at scrape time.
#[derive(Debug, Default)]
pub struct DatapathGauges {
    /// Conntrack entries at the last garbage collection.
    pub ct_entries: AtomicU64,
    /// Conntrack capacity.
    pub ct_capacity: AtomicU64,
    /// Policy map entries in force.
    pub policy_entries: AtomicU64,
    /// Policy map capacity (per generation).
    pub policy_capacity: AtomicU64,
    /// Identities allocated.
    pub identities: AtomicU64,
    /// Policies in force.
    pub policies: AtomicU64,
    /// Endpoints.
    pub endpoints: AtomicU64,
    /// Payload copies lost in the perf buffer.
    pub payload_lost: AtomicU64,
    regen: Mutex<(Vec<u64>, f64, u64)>,
}

impl DatapathGauges {
    /// Records one endpoint regeneration.
    pub fn observe_regeneration(&self, seconds: f64) {
        let Ok(mut h) = self.regen.lock() else {
            return;
        };
        if h.0.is_empty() {
            h.0 = vec![0; REGEN_BUCKETS.len()];
        }
        for (i, bound) in REGEN_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.0[i] += 1;
            }
        }
        h.1 += seconds;
        h.2 += 1;
    }
}

/// Collects the datapath's metrics; holds its own handle on the pinned counters.
pub struct DatapathCollector {
    counters: Option<Mutex<PerCpuArray<MapData, Counter>>>,
    gauges: Arc<DatapathGauges>,
}

impl std::fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathCollector").finish_non_exhaustive()
    }
}

impl DatapathCollector {
    /// A collector over the counters pinned under `pin_path` (if present).
    pub fn new(pin_path: &Path, gauges: Arc<DatapathGauges>) -> Self {
        let counters = MapData::from_pin(pin_path.join(maps::COUNTERS))
            .ok()
            .and_then(|data| PerCpuArray::try_from(Map::PerCpuArray(data)).ok())
            .map(Mutex::new);
        Self { counters, gauges }
    }

    /// Events the datapath could not put on the full event ring, so far.
    pub fn lost_events(&self) -> u64 {
        let Some(array) = self.counters.as_ref().and_then(|m| m.lock().ok()) else {
            return 0;
        };
        array
            .get(&loupe_common::COUNTER_LOST_EVENTS, 0)
            .map(|v| v.iter().map(|c| c.packets).sum())
            .unwrap_or(0)
    }

    fn counters(&self) -> Vec<Counter> {
        let Some(array) = self.counters.as_ref().and_then(|m| m.lock().ok()) else {
            return Vec::new();
        };
        (0..loupe_common::COUNTER_ENTRIES)
            .map(|i| {
                array
                    .get(&i, 0)
                    .map(|v| {
                        v.iter().fold(Counter::default(), |a, c| Counter {
                            packets: a.packets + c.packets,
                            bytes: a.bytes + c.bytes,
                        })
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn dir_name(dir: u8) -> &'static str {
    if dir == direction::INGRESS {
        "INGRESS"
    } else {
        "EGRESS"
    }
}

impl Collector for DatapathCollector {
    fn collect(&self) -> Vec<MetricFamily> {
        let counters = self.counters();
        let mut drop_count = MetricFamily::new(
            "cilium_drop_count_total",
            "Packets dropped by the datapath, by reason and direction.",
            MetricKind::Counter,
        );
        let mut drop_bytes = MetricFamily::new(
            "cilium_drop_bytes_total",
            "Bytes dropped by the datapath, by reason and direction.",
            MetricKind::Counter,
        );
        let mut fwd_count = MetricFamily::new(
            "cilium_forward_count_total",
            "Packets forwarded by the datapath, by direction.",
            MetricKind::Counter,
        );
        let mut fwd_bytes = MetricFamily::new(
            "cilium_forward_bytes_total",
            "Bytes forwarded by the datapath, by direction.",
            MetricKind::Counter,
        );
        for dir in [direction::INGRESS, direction::EGRESS] {
            for reason in 0..=255u8 {
                let Some(c) = counters.get(loupe_common::counter_index(dir, reason) as usize)
                else {
                    continue;
                };
                if reason == 0 {
                    fwd_count = fwd_count.value(&[("direction", dir_name(dir))], c.packets as f64);
                    fwd_bytes = fwd_bytes.value(&[("direction", dir_name(dir))], c.bytes as f64);
                } else if c.packets > 0 {
                    let labels = [
                        ("reason", drop_reason_text(reason)),
                        ("direction", dir_name(dir)),
                    ];
                    drop_count = drop_count.value(&labels, c.packets as f64);
                    drop_bytes = drop_bytes.value(&labels, c.bytes as f64);
                }
            }
        }
        let g = &self.gauges;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let pressure = |used: &AtomicU64, cap: &AtomicU64| {
            let cap = load(cap);
            if cap > 0.0 { load(used) / cap } else { 0.0 }
        };
        let payload = counters
            .get(COUNTER_PAYLOAD as usize)
            .copied()
            .unwrap_or_default();
        let lost_events = counters
            .get(loupe_common::COUNTER_LOST_EVENTS as usize)
            .map(|c| c.packets)
            .unwrap_or(0);
        let mut regen = MetricFamily::new(
            "cilium_endpoint_regeneration_time_stats_seconds",
            "Time to regenerate endpoint datapath state after an endpoint or policy change.",
            MetricKind::Histogram,
        );
        if let Ok(h) = g.regen.lock() {
            let mut buckets = Vec::new();
            for (i, bound) in REGEN_BUCKETS.iter().enumerate() {
                buckets.push((*bound, h.0.get(i).copied().unwrap_or(0)));
            }
            regen.samples.push(Sample::Histogram {
                labels: vec![("scope".into(), "total".into())],
                buckets,
                sum: h.1,
                count: h.2,
            });
        }
        vec![
            drop_count,
            drop_bytes,
            fwd_count,
            fwd_bytes,
            MetricFamily::new(
                "cilium_bpf_map_pressure",
                "Fill level of datapath maps (0 to 1).",
                MetricKind::Gauge,
            )
            .value(
                &[("map_name", "cilium_ct_global")],
                pressure(&g.ct_entries, &g.ct_capacity),
            )
            .value(
                &[("map_name", "cilium_policy")],
                pressure(&g.policy_entries, &g.policy_capacity),
            ),
            regen,
            MetricFamily::new(
                "cilium_identity",
                "Security identities allocated.",
                MetricKind::Gauge,
            )
            .value(&[("type", "cluster_local")], load(&g.identities)),
            MetricFamily::new("cilium_policy", "Policies in force.", MetricKind::Gauge)
                .value(&[], load(&g.policies)),
            MetricFamily::new("cilium_endpoint", "Endpoints managed.", MetricKind::Gauge)
                .value(&[], load(&g.endpoints)),
            MetricFamily::new(
                "loupe_datapath_payload_packets_total",
                "Packets copied to the L7 path.",
                MetricKind::Counter,
            )
            .value(&[], payload.packets as f64),
            MetricFamily::new(
                "loupe_datapath_payload_bytes_total",
                "TCP payload bytes copied to the L7 path.",
                MetricKind::Counter,
            )
            .value(&[], payload.bytes as f64),
            MetricFamily::new(
                "loupe_datapath_lost_total",
                "Records the datapath could not hand to the agent, by buffer.",
                MetricKind::Counter,
            )
            .value(&[("buffer", "events")], lost_events as f64)
            .value(&[("buffer", "payload")], load(&g.payload_lost)),
        ]
    }
}
