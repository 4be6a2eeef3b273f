//! Datapath events as Hubble flows: L3/L4 type, verdict, drop reason, direction,
//! addresses, ports and TCP flags, both endpoints with identity, namespace, pod,
//! labels and workload, and the policies that decided.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use loupe_common::{attribution, ct_status, direction, drop_reason, event_kind, identity as id};

use super::controller::SnapshotHandle;
use super::events::{self, DatapathEvent};
use super::metrics::DatapathCollector;
use crate::endpoint;
use crate::flow::FlowStore;
use crate::policy::attribution::PolicyTable;
use loupe_proto::flow::Flow;
use loupe_proto::flow::{
    CiliumEventType, Endpoint, FlowType, IcmPv4, IcmPv6, Ip, IpVersion, Layer4, Sctp, Tcp,
    TcpFlags, TraceObservationPoint, TrafficDirection, Udp, Verdict, Workload, layer4,
};
use loupe_proto::monitor;

/// What flows need to know about endpoints, identities and policies, rebuilt
/// whenever they change so converting an event takes no lock.
#[derive(Debug, Default, Clone)]
pub struct EndpointSnapshot {
    by_id: HashMap<u16, Endpoint>,
    by_ip: HashMap<IpAddr, Endpoint>,
    identity_labels: HashMap<u32, Vec<String>>,
    /// Policy attribution by policy revision (modulo `attribution::REVISIONS`).
    policies: [Arc<PolicyTable>; attribution::REVISIONS],
}

impl EndpointSnapshot {
    /// Builds the snapshot from endpoints with their identities (pods on other
    /// nodes have number 0 and are found by address only); `labels` gives the
    /// labels of other identities (CIDR, reserved).
    pub fn build<'a>(
        endpoints: impl IntoIterator<Item = &'a (endpoint::Endpoint, u32)>,
        labels: impl Fn(u32) -> Vec<String>,
        cidr_identities: impl IntoIterator<Item = u32>,
    ) -> Self {
        let mut snap = Self::default();
        for (ep, identity) in endpoints {
            let mut labels: Vec<String> = ep
                .spec
                .identity_labels()
                .iter()
                .map(|(k, v)| format!("k8s:{k}={v}"))
                .collect();
            labels.sort();
            let flow_ep = Endpoint {
                id: u32::from(ep.id),
                identity: *identity,
                cluster_name: String::new(),
                namespace: ep.spec.namespace.clone(),
                labels,
                pod_name: ep.spec.pod_name.clone(),
                workloads: ep
                    .spec
                    .workload
                    .iter()
                    .map(|w| Workload {
                        name: w.name.clone(),
                        kind: w.kind.clone(),
                    })
                    .collect(),
            };
            for ip in ep.spec.ips() {
                snap.by_ip.insert(ip, flow_ep.clone());
            }
            if ep.id != 0 {
                snap.by_id.insert(ep.id, flow_ep);
            }
        }
        for identity in [id::HOST, id::WORLD, id::WORLD_IPV4, id::WORLD_IPV6]
            .into_iter()
            .chain(cidr_identities)
        {
            let mut l = labels(identity);
            if identity >= id::FIRST_LOCAL {
                // CIDR identities are part of the world, as Cilium labels them.
                l.push("reserved:world".into());
            }
            snap.identity_labels.insert(identity, l);
        }
        snap
    }

    /// The snapshot with these policy tables (by policy revision).
    pub fn with_policies(mut self, policies: [Arc<PolicyTable>; attribution::REVISIONS]) -> Self {
        self.policies = policies;
        self
    }

    /// The local endpoint with this address.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.by_ip.get(&ip)
    }

    /// The endpoint with address `ip`, else what identity `identity` says of it.
    pub fn remote(&self, ip: IpAddr, identity: u32) -> Endpoint {
        if let Some(ep) = self.by_ip.get(&ip) {
            return ep.clone();
        }
        Endpoint {
            identity,
            labels: self
                .identity_labels
                .get(&identity)
                .cloned()
                .unwrap_or_default(),
            ..Endpoint::default()
        }
    }

    /// Local endpoint number `ep_id`.
    pub fn local(&self, ep_id: u16, identity: u32) -> Endpoint {
        self.by_id.get(&ep_id).cloned().unwrap_or(Endpoint {
            id: u32::from(ep_id),
            identity,
            ..Endpoint::default()
        })
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn tcp_flags(bits: u8) -> TcpFlags {
    TcpFlags {
        fin: bits & 0x01 != 0,
        syn: bits & 0x02 != 0,
        rst: bits & 0x04 != 0,
        psh: bits & 0x08 != 0,
        ack: bits & 0x10 != 0,
        urg: bits & 0x20 != 0,
        ece: bits & 0x40 != 0,
        cwr: bits & 0x80 != 0,
        ns: false,
    }
}

/// Converts one datapath event into a flow.
pub fn to_flow(event: &DatapathEvent, snap: &EndpointSnapshot, node_name: &str) -> Flow {
    let raw = &event.raw;
    let local = snap.local(raw.ep_id, raw.local_identity);
    let ingress = raw.dir == direction::INGRESS;
    let (source, destination) = if ingress {
        (snap.remote(event.src, raw.remote_identity), local)
    } else {
        (local, snap.remote(event.dst, raw.remote_identity))
    };
    let l4 = match raw.proto {
        6 => Some(layer4::Protocol::Tcp(Tcp {
            source_port: u32::from(raw.sport),
            destination_port: u32::from(raw.dport),
            flags: Some(tcp_flags(raw.tcp_flags)),
        })),
        17 => Some(layer4::Protocol::Udp(Udp {
            source_port: u32::from(raw.sport),
            destination_port: u32::from(raw.dport),
        })),
        132 => Some(layer4::Protocol::Sctp(Sctp {
            source_port: u32::from(raw.sport),
            destination_port: u32::from(raw.dport),
        })),
        // Echo: the datapath keys by identifier; policy saw the request type.
        1 => Some(layer4::Protocol::IcmPv4(IcmPv4 { r#type: 8, code: 0 })),
        58 => Some(layer4::Protocol::IcmPv6(IcmPv6 {
            r#type: 128,
            code: 0,
        })),
        _ => None,
    };
    let dropped = raw.kind == event_kind::DROP;
    let (event_type, point) = if dropped {
        (
            (monitor::DROP, i32::from(raw.reason)),
            TraceObservationPoint::UnknownPoint,
        )
    } else if raw.ct_status == ct_status::NEW {
        (
            (monitor::POLICY_VERDICT, 0),
            TraceObservationPoint::UnknownPoint,
        )
    } else if ingress {
        (
            (monitor::TRACE, monitor::TRACE_TO_LXC),
            TraceObservationPoint::ToEndpoint,
        )
    } else {
        (
            (monitor::TRACE, monitor::TRACE_FROM_LXC),
            TraceObservationPoint::FromEndpoint,
        )
    };
    let mut flow = Flow {
        time: Some(timestamp(event.time)),
        verdict: if dropped {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        } as i32,
        drop_reason_desc: if dropped { i32::from(raw.reason) } else { 0 },
        ip: Some(Ip {
            source: event.src.to_string(),
            destination: event.dst.to_string(),
            ip_version: if raw.family == 6 {
                IpVersion::IPv6
            } else {
                IpVersion::IPv4
            } as i32,
            ..Ip::default()
        }),
        l4: Some(Layer4 { protocol: l4 }),
        source: Some(source),
        destination: Some(destination),
        r#type: FlowType::L3L4 as i32,
        node_name: node_name.to_string(),
        event_type: Some(CiliumEventType {
            r#type: event_type.0,
            sub_type: event_type.1,
        }),
        traffic_direction: if ingress {
            TrafficDirection::Ingress
        } else {
            TrafficDirection::Egress
        } as i32,
        trace_observation_point: point as i32,
        is_reply: Some(raw.ct_status == ct_status::REPLY),
        ..Flow::default()
    };
    attribute(&mut flow, raw, snap);
    flow
}

/// The policies that decided: on a policy verdict, who allowed it and how its
/// entry matched; on a drop by a deny rule, who denied it.
fn attribute(flow: &mut Flow, raw: &loupe_common::FlowEvent, snap: &EndpointSnapshot) {
    let verdict = raw.kind != event_kind::DROP && raw.ct_status == ct_status::NEW;
    let denied = raw.kind == event_kind::DROP && raw.reason == drop_reason::POLICY_DENY;
    if raw.policy == 0 || !(verdict || denied) {
        return;
    }
    let (slot, rule) = attribution::split(raw.policy);
    let Some(decided) = snap.policies.get(slot).and_then(|t| t.get(rule)) else {
        return;
    };
    if verdict {
        flow.policy_match_type = decided.match_type;
    }
    decided.record(flow, raw.dir == direction::INGRESS, denied);
}

/// Starts turning the datapath's events into flows: one task reads the event ring
/// and pushes each event, enriched from the current endpoint snapshot, to `flows`;
/// another reports events the ring could not hold (read from the pinned counters
/// under `pin_path`) as `PERF_EVENT_RING_BUFFER` LostEvents, once a second.
pub fn start(
    ring: aya::maps::Map,
    pin_path: &std::path::Path,
    snapshot: SnapshotHandle,
    flows: FlowStore,
    node_name: String,
) -> Vec<tokio::task::JoinHandle<()>> {
    let store = flows.clone();
    let reader = tokio::spawn(async move {
        let result = events::read_events(ring, |event| {
            let snap = snapshot.read().map(|s| s.clone()).unwrap_or_default();
            store.push(to_flow(&event, &snap, &node_name));
        })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "datapath event reader stopped");
        }
    });
    let counters = DatapathCollector::new(pin_path, Default::default());
    let lost = tokio::spawn(async move {
        let mut seen = counters.lost_events();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = counters.lost_events();
            if now > seen {
                flows.push_lost(loupe_proto::flow::LostEvent {
                    source: loupe_proto::flow::LostEventSource::PerfEventRingBuffer as i32,
                    num_events_lost: now - seen,
                    ..Default::default()
                });
                seen = now;
            }
        }
    });
    vec![reader, lost]
}
