//! `fieldAggregate` (Cilium 1.19): over each window, flows that agree on the listed
//! fields become one line — those fields, the time of the group's first flow, and
//! `aggregate` counting its flows by traffic direction.

use std::collections::HashMap;
use std::time::Duration;

use loupe_proto::flow::{Aggregate, Flow, TrafficDirection};
use prost::Message as _;

use super::config::Aggregation;

/// One window's groups.
#[derive(Debug)]
pub struct Aggregator {
    spec: Aggregation,
    /// Encoded group fields → the group's flow (fields, first time, counts).
    groups: HashMap<Vec<u8>, Flow>,
}

impl Aggregator {
    /// An empty window.
    pub fn new(spec: Aggregation) -> Self {
        Self {
            spec,
            groups: HashMap::new(),
        }
    }

    /// The window length.
    pub fn interval(&self) -> Duration {
        self.spec.interval
    }

    /// Counts `flow` in its group.
    pub fn add(&mut self, flow: &Flow) {
        let fields = self.spec.fields.apply(flow);
        let key = fields.encode_to_vec();
        let group = self.groups.entry(key).or_insert_with(|| Flow {
            time: flow.time,
            aggregate: Some(Aggregate::default()),
            ..fields
        });
        if let Some(counts) = group.aggregate.as_mut() {
            let n = match TrafficDirection::try_from(flow.traffic_direction) {
                Ok(TrafficDirection::Ingress) => &mut counts.ingress_flow_count,
                Ok(TrafficDirection::Egress) => &mut counts.egress_flow_count,
                _ => &mut counts.unknown_direction_flow_count,
            };
            *n = n.saturating_add(1);
        }
    }

    /// The window's groups (oldest first), and a new window.
    pub fn take(&mut self) -> Vec<Flow> {
        let mut out: Vec<Flow> = self.groups.drain().map(|(_, f)| f).collect();
        out.sort_by_key(|f| f.time.map(|t| (t.seconds, t.nanos)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FieldMask;
    use loupe_proto::flow::{Endpoint, Verdict};

    fn flow(ns: &str, verdict: Verdict, dir: TrafficDirection, secs: i64) -> Flow {
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            verdict: verdict as i32,
            traffic_direction: dir as i32,
            node_name: "node-1".into(),
            source: Some(Endpoint {
                namespace: ns.into(),
                pod_name: format!("{ns}-pod-{secs}"),
                ..Endpoint::default()
            }),
            ..Flow::default()
        }
    }

    #[test]
    fn flows_agreeing_on_the_fields_are_counted_by_direction() {
        let mut agg = Aggregator::new(Aggregation {
            fields: FieldMask::new(&["source.namespace".into(), "verdict".into()]).unwrap(),
            interval: Duration::from_secs(10),
        });
        use TrafficDirection::{Egress, Ingress, Unknown};
        agg.add(&flow("a", Verdict::Forwarded, Ingress, 100));
        agg.add(&flow("a", Verdict::Forwarded, Ingress, 101));
        agg.add(&flow("a", Verdict::Forwarded, Egress, 102));
        agg.add(&flow("b", Verdict::Forwarded, Unknown, 99));
        agg.add(&flow("a", Verdict::Dropped, Ingress, 103));
        let out = agg.take();
        assert_eq!(out.len(), 3);
        // Oldest first; each keeps only the fields, the first time and the counts.
        assert_eq!(out[0].source.as_ref().unwrap().namespace, "b");
        assert_eq!(out[0].aggregate.unwrap().unknown_direction_flow_count, 1);
        let a = &out[1];
        assert_eq!(a.time.unwrap().seconds, 100);
        assert_eq!(a.source.as_ref().unwrap().pod_name, "");
        assert_eq!(a.node_name, "");
        assert_eq!(
            a.aggregate,
            Some(Aggregate {
                ingress_flow_count: 2,
                egress_flow_count: 1,
                unknown_direction_flow_count: 0
            })
        );
        assert_eq!(out[2].verdict, Verdict::Dropped as i32);
        assert!(agg.take().is_empty(), "a new window starts empty");
    }
}
