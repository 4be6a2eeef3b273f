//! Whether a flow matches a compiled filter: every constrained field must match
//! (AND), a field matches when any of its values does (OR).

use std::net::IpAddr;

use ipnet::IpNet;

use super::compile::{CompiledFilter, PodPrefix, StatusMatch};
use crate::flow::selector::LabelSelector;
use loupe_proto::flow::{Endpoint, Flow, TcpFlags, Workload, layer4, layer7};

impl CompiledFilter {
    pub(super) fn matches(&self, flow: &Flow) -> bool {
        let src = flow.source.as_ref();
        let dst = flow.destination.as_ref();
        let ip = flow.ip.as_ref();
        let http = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Http(h)) => Some(h),
            _ => None,
        };
        let ports = loupe_proto::fields::ports(flow);
        let any = |empty: bool, f: &dyn Fn() -> bool| empty || f();
        any(self.uuid.is_empty(), &|| self.uuid.contains(&flow.uuid))
            && any(self.source_ip.is_empty(), &|| {
                ip_in(ip.map(|i| i.source.as_str()), &self.source_ip)
            })
            && any(self.source_ip_xlated.is_empty(), &|| {
                ip_in(ip.map(|i| i.source_xlated.as_str()), &self.source_ip_xlated)
            })
            && any(self.destination_ip.is_empty(), &|| {
                ip_in(ip.map(|i| i.destination.as_str()), &self.destination_ip)
            })
            && any(self.source_pod.is_empty(), &|| {
                pod_in(src, &self.source_pod)
            })
            && any(self.destination_pod.is_empty(), &|| {
                pod_in(dst, &self.destination_pod)
            })
            && any(self.source_fqdn.is_empty(), &|| {
                flow.source_names
                    .iter()
                    .any(|n| self.source_fqdn.iter().any(|r| r.is_match(n)))
            })
            && any(self.destination_fqdn.is_empty(), &|| {
                flow.destination_names
                    .iter()
                    .any(|n| self.destination_fqdn.iter().any(|r| r.is_match(n)))
            })
            && any(self.source_label.is_empty(), &|| {
                labels_in(src, &self.source_label)
            })
            && any(self.destination_label.is_empty(), &|| {
                labels_in(dst, &self.destination_label)
            })
            && any(self.source_service.is_empty(), &|| {
                service_in(flow.source_service.as_ref(), &self.source_service)
            })
            && any(self.destination_service.is_empty(), &|| {
                service_in(flow.destination_service.as_ref(), &self.destination_service)
            })
            && any(self.source_workload.is_empty(), &|| {
                workload_in(src, &self.source_workload)
            })
            && any(self.destination_workload.is_empty(), &|| {
                workload_in(dst, &self.destination_workload)
            })
            && any(self.source_cluster.is_empty(), &|| {
                src.is_some_and(|e| self.source_cluster.contains(&e.cluster_name))
            })
            && any(self.destination_cluster.is_empty(), &|| {
                dst.is_some_and(|e| self.destination_cluster.contains(&e.cluster_name))
            })
            && any(self.traffic_direction.is_empty(), &|| {
                self.traffic_direction.contains(&flow.traffic_direction)
            })
            && any(self.verdict.is_empty(), &|| {
                self.verdict.contains(&flow.verdict)
            })
            && any(self.drop_reason.is_empty(), &|| {
                self.drop_reason.contains(&flow.drop_reason_desc)
            })
            && any(self.event_type.is_empty(), &|| {
                flow.event_type.as_ref().is_some_and(|et| {
                    self.event_type.iter().any(|m| {
                        m.r#type == et.r#type && m.sub_type.is_none_or(|s| s == et.sub_type)
                    })
                })
            })
            && any(self.http_status.is_empty(), &|| {
                // Requests carry no status: only responses match a status filter.
                http.is_some_and(|h| {
                    h.code != 0
                        && self.http_status.iter().any(|s| match s {
                            StatusMatch::Exact(c) => h.code == *c,
                            StatusMatch::Prefix(p) => h.code.to_string().starts_with(p.as_str()),
                        })
                })
            })
            && any(self.protocol.is_empty(), &|| self.protocol_matches(flow))
            && any(self.source_port.is_empty(), &|| {
                ports.is_some_and(|(s, _)| self.source_port.iter().any(|p| u32::from(*p) == s))
            })
            && any(self.destination_port.is_empty(), &|| {
                ports.is_some_and(|(_, d)| self.destination_port.iter().any(|p| u32::from(*p) == d))
            })
            && any(self.reply.is_empty(), &|| {
                flow.is_reply.is_some_and(|r| self.reply.contains(&r))
            })
            && any(self.dns_query.is_empty(), &|| {
                matches!(flow.l7.as_ref().and_then(|l| l.record.as_ref()),
                    Some(layer7::Record::Dns(d)) if self.dns_query.iter().any(|r| r.is_match(&d.query)))
            })
            && any(self.source_identity.is_empty(), &|| {
                src.is_some_and(|e| self.source_identity.contains(&e.identity))
            })
            && any(self.destination_identity.is_empty(), &|| {
                dst.is_some_and(|e| self.destination_identity.contains(&e.identity))
            })
            && any(self.http_method.is_empty(), &|| {
                http.is_some_and(|h| {
                    self.http_method
                        .iter()
                        .any(|m| h.method.eq_ignore_ascii_case(m))
                })
            })
            && any(self.http_path.is_empty(), &|| {
                http.is_some_and(|h| {
                    let path = url_path(&h.url);
                    self.http_path.iter().any(|r| r.is_match(path))
                })
            })
            && any(self.http_url.is_empty(), &|| {
                http.is_some_and(|h| self.http_url.iter().any(|r| r.is_match(&h.url)))
            })
            && any(self.http_header.is_empty(), &|| {
                http.is_some_and(|h| {
                    self.http_header.iter().any(|want| {
                        h.headers.iter().any(|have| {
                            have.key.eq_ignore_ascii_case(&want.key) && have.value == want.value
                        })
                    })
                })
            })
            && any(self.tcp_flags.is_empty(), &|| {
                matches!(flow.l4.as_ref().and_then(|l| l.protocol.as_ref()),
                Some(layer4::Protocol::Tcp(t)) if t.flags.as_ref().is_some_and(|have| {
                    self.tcp_flags.iter().any(|want| flags_subset(want, have))
                }))
            })
            && any(self.node_name.is_empty(), &|| {
                self.node_name.iter().any(|r| r.is_match(&flow.node_name))
            })
            && any(self.node_labels.is_empty(), &|| {
                self.node_labels
                    .iter()
                    .any(|s| s.matches(&flow.node_labels))
            })
            && any(self.ip_version.is_empty(), &|| {
                ip.is_some_and(|i| self.ip_version.contains(&i.ip_version))
            })
            && any(self.encrypted.is_empty(), &|| {
                ip.is_some_and(|i| self.encrypted.contains(&i.encrypted))
            })
            && any(self.interface.is_empty(), &|| {
                flow.interface.as_ref().is_some_and(|have| {
                    self.interface.iter().any(|want| {
                        (want.index == 0 || want.index == have.index)
                            && (want.name.is_empty() || want.name == have.name)
                    })
                })
            })
            // As Hubble reads it: a flow without a trace id has id 0.
            && any(self.ip_trace_id.is_empty(), &|| {
                let id = flow.ip_trace_id.as_ref().map_or(0, |t| t.trace_id);
                self.ip_trace_id.contains(&id)
            })
    }

    fn protocol_matches(&self, flow: &Flow) -> bool {
        let l4 = loupe_proto::fields::l4_protocol(flow);
        let l7 = loupe_proto::fields::l7_protocol(flow);
        self.protocol.iter().any(|want| {
            let want = want.as_str();
            l7.as_deref() == Some(want)
                || l4 == Some(want)
                || (want == "icmp" && matches!(l4, Some("icmpv4" | "icmpv6")))
        })
    }
}

fn ip_in(addr: Option<&str>, nets: &[IpNet]) -> bool {
    addr.and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
}

fn pod_in(ep: Option<&Endpoint>, pods: &[PodPrefix]) -> bool {
    ep.is_some_and(|e| {
        pods.iter()
            .any(|p| e.namespace == p.namespace && e.pod_name.starts_with(&p.prefix))
    })
}

fn service_in(svc: Option<&loupe_proto::flow::Service>, want: &[PodPrefix]) -> bool {
    svc.is_some_and(|s| {
        want.iter()
            .any(|p| s.namespace == p.namespace && s.name.starts_with(&p.prefix))
    })
}

fn labels_in(ep: Option<&Endpoint>, selectors: &[LabelSelector]) -> bool {
    ep.is_some_and(|e| selectors.iter().any(|s| s.matches(&e.labels)))
}

fn workload_in(ep: Option<&Endpoint>, want: &[Workload]) -> bool {
    ep.is_some_and(|e| {
        want.iter().any(|w| {
            e.workloads.iter().any(|have| {
                (w.name.is_empty() || w.name == have.name)
                    && (w.kind.is_empty() || w.kind.eq_ignore_ascii_case(&have.kind))
            })
        })
    })
}

/// Every flag the filter sets is set on the flow.
fn flags_subset(want: &TcpFlags, have: &TcpFlags) -> bool {
    (!want.fin || have.fin)
        && (!want.syn || have.syn)
        && (!want.rst || have.rst)
        && (!want.psh || have.psh)
        && (!want.ack || have.ack)
        && (!want.urg || have.urg)
        && (!want.ece || have.ece)
        && (!want.cwr || have.cwr)
        && (!want.ns || have.ns)
}

/// The path of an HTTP URL (`http://host/a?b` → `/a`), or the URL when it is a path.
pub(super) fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = if url.contains("://") {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        rest
    };
    path.split(['?', '#']).next().unwrap_or(path)
}
