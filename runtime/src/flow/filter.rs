//! Hubble's flow filters, compiled once per request.
//!
//! A request's result is the flows that match ANY whitelist filter (all flows
//! when there is none) and NO blacklist filter. Inside one [`FlowFilter`] every
//! non-empty field must match (AND); a field matches when any of its values does
//! (OR). Values are parsed and checked up front so a bad request is refused with
//! its reason instead of silently matching nothing.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use super::selector::LabelSelector;
use crate::api::proto::flow::{
    DropReason, Endpoint, Flow, FlowFilter, HttpHeader, IpVersion, TcpFlags, TrafficDirection,
    Verdict, Workload, layer4, layer7,
};

/// A filter value that cannot be used; the message names the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid flow filter: {field}: {message}")]
pub struct FilterError {
    /// The FlowFilter field (`source_ip`, `http_status_code`, …).
    pub field: &'static str,
    /// What is wrong with the value.
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> FilterError {
    FilterError {
        field,
        message: message.into(),
    }
}

/// A whitelist and a blacklist, compiled.
#[derive(Debug, Clone, Default)]
pub struct FlowFilterSet {
    whitelist: Vec<CompiledFilter>,
    blacklist: Vec<CompiledFilter>,
}

impl FlowFilterSet {
    /// Compiles a request's filters.
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        Ok(Self {
            whitelist: whitelist
                .iter()
                .map(CompiledFilter::new)
                .collect::<Result<_, _>>()?,
            blacklist: blacklist
                .iter()
                .map(CompiledFilter::new)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a flow passes: any whitelist filter (or none given) and no blacklist filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }

    /// True when every flow passes.
    pub fn is_empty(&self) -> bool {
        self.whitelist.is_empty() && self.blacklist.is_empty()
    }
}

/// A pod filter: namespace, and a pod-name prefix (empty: any pod).
#[derive(Debug, Clone)]
struct PodPrefix {
    namespace: String,
    prefix: String,
}

/// `404` (exact), `5+` or `40+` (prefix).
#[derive(Debug, Clone)]
enum StatusMatch {
    Exact(u32),
    Prefix(String),
}

#[derive(Debug, Clone)]
struct EventTypeMatch {
    r#type: i32,
    sub_type: Option<i32>,
}

/// One FlowFilter, parsed. Empty vectors mean "not constrained".
#[derive(Debug, Clone, Default)]
struct CompiledFilter {
    uuid: Vec<String>,
    source_ip: Vec<IpNet>,
    source_ip_xlated: Vec<IpNet>,
    destination_ip: Vec<IpNet>,
    source_pod: Vec<PodPrefix>,
    destination_pod: Vec<PodPrefix>,
    source_fqdn: Vec<Regex>,
    destination_fqdn: Vec<Regex>,
    source_label: Vec<LabelSelector>,
    destination_label: Vec<LabelSelector>,
    source_service: Vec<PodPrefix>,
    destination_service: Vec<PodPrefix>,
    source_workload: Vec<Workload>,
    destination_workload: Vec<Workload>,
    source_cluster: Vec<String>,
    destination_cluster: Vec<String>,
    traffic_direction: Vec<i32>,
    verdict: Vec<i32>,
    drop_reason: Vec<i32>,
    event_type: Vec<EventTypeMatch>,
    http_status: Vec<StatusMatch>,
    protocol: Vec<String>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    reply: Vec<bool>,
    dns_query: Vec<Regex>,
    source_identity: Vec<u32>,
    destination_identity: Vec<u32>,
    http_method: Vec<String>,
    http_path: Vec<Regex>,
    http_url: Vec<Regex>,
    http_header: Vec<HttpHeader>,
    tcp_flags: Vec<TcpFlags>,
    node_name: Vec<Regex>,
    node_labels: Vec<LabelSelector>,
    ip_version: Vec<i32>,
    encrypted: Vec<bool>,
}

fn parse_ips(field: &'static str, values: &[String]) -> Result<Vec<IpNet>, FilterError> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| err(field, format!("{v:?} is neither an IP address nor a CIDR")))
        })
        .collect()
}

fn parse_pods(field: &'static str, values: &[String]) -> Result<Vec<PodPrefix>, FilterError> {
    values
        .iter()
        .map(|v| {
            // Kubernetes' default namespace when none is given, as the Hubble CLI does.
            let (namespace, prefix) = v.split_once('/').unwrap_or(("default", v.as_str()));
            if namespace.is_empty() {
                return Err(err(field, format!("{v:?}: empty namespace")));
            }
            Ok(PodPrefix {
                namespace: namespace.to_string(),
                prefix: prefix.to_string(),
            })
        })
        .collect()
}

fn parse_regexes(field: &'static str, values: &[String]) -> Result<Vec<Regex>, FilterError> {
    values
        .iter()
        .map(|v| Regex::new(v).map_err(|e| err(field, format!("{v:?}: {e}"))))
        .collect()
}

/// A `*` wildcard pattern (FQDNs, node names) as an anchored regex.
fn parse_globs(field: &'static str, values: &[String]) -> Result<Vec<Regex>, FilterError> {
    values
        .iter()
        .map(|v| {
            if v.is_empty() {
                return Err(err(field, "empty pattern"));
            }
            let pattern = v
                .split('*')
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join("[^/]*");
            Regex::new(&format!("^(?:{pattern})$")).map_err(|e| err(field, format!("{v:?}: {e}")))
        })
        .collect()
}

fn parse_selectors(
    field: &'static str,
    values: &[String],
) -> Result<Vec<LabelSelector>, FilterError> {
    values
        .iter()
        .map(|v| LabelSelector::parse(v).map_err(|e| err(field, e)))
        .collect()
}

fn parse_ports(field: &'static str, values: &[String]) -> Result<Vec<u16>, FilterError> {
    values
        .iter()
        .map(|v| {
            v.parse::<u16>()
                .map_err(|_| err(field, format!("{v:?} is not a port number (0-65535)")))
        })
        .collect()
}

fn parse_status(values: &[String]) -> Result<Vec<StatusMatch>, FilterError> {
    values
        .iter()
        .map(|v| {
            let bad = || {
                err(
                    "http_status_code",
                    format!("{v:?}: expected a status code (404) or a class (5+, 40+)"),
                )
            };
            if let Some(prefix) = v.strip_suffix('+') {
                if prefix.is_empty()
                    || prefix.len() > 2
                    || !prefix.bytes().all(|b| b.is_ascii_digit())
                    || !(b'1'..=b'5').contains(&prefix.as_bytes()[0])
                {
                    return Err(bad());
                }
                Ok(StatusMatch::Prefix(prefix.to_string()))
            } else {
                match v.parse::<u32>() {
                    Ok(code) if (100..=599).contains(&code) && v.len() == 3 => {
                        Ok(StatusMatch::Exact(code))
                    }
                    _ => Err(bad()),
                }
            }
        })
        .collect()
}

fn check_enum(
    field: &'static str,
    values: &[i32],
    valid: impl Fn(i32) -> bool,
) -> Result<Vec<i32>, FilterError> {
    for v in values {
        if !valid(*v) {
            return Err(err(field, format!("unknown value {v}")));
        }
    }
    Ok(values.to_vec())
}

impl CompiledFilter {
    fn new(f: &FlowFilter) -> Result<Self, FilterError> {
        if !f.trace_id.is_empty() {
            return Err(err("trace_id", "Loupe does not record trace IDs"));
        }
        let protocol = f
            .protocol
            .iter()
            .map(|p| {
                let p = p.trim().to_ascii_lowercase();
                if p.is_empty()
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(err("protocol", format!("{p:?} is not a protocol name")));
                }
                Ok(p)
            })
            .collect::<Result<_, _>>()?;
        let http_method = f
            .http_method
            .iter()
            .map(|m| {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(err("http_method", format!("{m:?} is not an HTTP method")));
                }
                Ok(m.to_ascii_uppercase())
            })
            .collect::<Result<_, _>>()?;
        let event_type = f
            .event_type
            .iter()
            .map(|e| EventTypeMatch {
                r#type: e.r#type,
                sub_type: e.match_sub_type.then_some(e.sub_type),
            })
            .collect();
        for h in &f.http_header {
            if h.key.is_empty() {
                return Err(err("http_header", "empty header name"));
            }
        }
        Ok(Self {
            uuid: f.uuid.clone(),
            source_ip: parse_ips("source_ip", &f.source_ip)?,
            source_ip_xlated: parse_ips("source_ip_xlated", &f.source_ip_xlated)?,
            destination_ip: parse_ips("destination_ip", &f.destination_ip)?,
            source_pod: parse_pods("source_pod", &f.source_pod)?,
            destination_pod: parse_pods("destination_pod", &f.destination_pod)?,
            source_fqdn: parse_globs("source_fqdn", &f.source_fqdn)?,
            destination_fqdn: parse_globs("destination_fqdn", &f.destination_fqdn)?,
            source_label: parse_selectors("source_label", &f.source_label)?,
            destination_label: parse_selectors("destination_label", &f.destination_label)?,
            source_service: parse_pods("source_service", &f.source_service)?,
            destination_service: parse_pods("destination_service", &f.destination_service)?,
            source_workload: f.source_workload.clone(),
            destination_workload: f.destination_workload.clone(),
            source_cluster: f.source_cluster_name.clone(),
            destination_cluster: f.destination_cluster_name.clone(),
            traffic_direction: check_enum("traffic_direction", &f.traffic_direction, |v| {
                TrafficDirection::try_from(v).is_ok()
            })?,
            verdict: check_enum("verdict", &f.verdict, |v| Verdict::try_from(v).is_ok())?,
            drop_reason: check_enum("drop_reason_desc", &f.drop_reason_desc, |v| {
                DropReason::try_from(v).is_ok()
            })?,
            event_type,
            http_status: parse_status(&f.http_status_code)?,
            protocol,
            source_port: parse_ports("source_port", &f.source_port)?,
            destination_port: parse_ports("destination_port", &f.destination_port)?,
            reply: f.reply.clone(),
            dns_query: parse_regexes("dns_query", &f.dns_query)?,
            source_identity: f.source_identity.clone(),
            destination_identity: f.destination_identity.clone(),
            http_method,
            http_path: parse_regexes("http_path", &f.http_path)?,
            http_url: parse_regexes("http_url", &f.http_url)?,
            http_header: f.http_header.clone(),
            tcp_flags: f.tcp_flags.clone(),
            node_name: parse_globs("node_name", &f.node_name)?,
            node_labels: parse_selectors("node_labels", &f.node_labels)?,
            ip_version: check_enum("ip_version", &f.ip_version, |v| {
                IpVersion::try_from(v).is_ok()
            })?,
            encrypted: f.encrypted.clone(),
        })
    }

    fn matches(&self, flow: &Flow) -> bool {
        let src = flow.source.as_ref();
        let dst = flow.destination.as_ref();
        let ip = flow.ip.as_ref();
        let http = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Http(h)) => Some(h),
            _ => None,
        };
        let ports = super::ports(flow);
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
    }

    fn protocol_matches(&self, flow: &Flow) -> bool {
        let l4 = super::l4_protocol(flow);
        let l7 = super::l7_protocol(flow);
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

fn service_in(svc: Option<&crate::api::proto::flow::Service>, want: &[PodPrefix]) -> bool {
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
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = if url.contains("://") {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        rest
    };
    path.split(['?', '#']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::extension::{Field, L7Extension, Value, value};
    use crate::api::proto::flow::{Http, Ip, Layer4, Layer7, Tcp};

    fn flow() -> Flow {
        Flow {
            verdict: Verdict::Dropped as i32,
            drop_reason_desc: DropReason::PolicyDenied as i32,
            traffic_direction: TrafficDirection::Ingress as i32,
            node_name: "kind-worker".into(),
            ip: Some(Ip {
                source: "10.0.1.5".into(),
                destination: "10.0.2.7".into(),
                ip_version: IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            source: Some(Endpoint {
                identity: 1234,
                namespace: "demo-app".into(),
                pod_name: "frontend-7d9f".into(),
                labels: vec!["k8s:app=frontend".into()],
                ..Default::default()
            }),
            destination: Some(Endpoint {
                identity: 5678,
                namespace: "demo-app".into(),
                pod_name: "api-service-5c8b".into(),
                labels: vec!["k8s:app=api-service".into()],
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 43210,
                    destination_port: 8080,
                    flags: Some(TcpFlags {
                        syn: true,
                        ack: true,
                        ..Default::default()
                    }),
                })),
            }),
            l7: Some(Layer7 {
                r#type: 2,
                latency_ns: 1_000_000,
                record: Some(layer7::Record::Http(Http {
                    code: 503,
                    method: "POST".into(),
                    url: "http://api-service/post?x=1".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: vec![HttpHeader {
                        key: "Content-Type".into(),
                        value: "application/json".into(),
                    }],
                })),
            }),
            ..Default::default()
        }
    }

    fn one(f: FlowFilter) -> Result<bool, FilterError> {
        Ok(FlowFilterSet::new(&[f], &[])?.matches(&flow()))
    }

    #[test]
    fn each_field_matches_and_mismatches() {
        let cases: Vec<(FlowFilter, bool)> = vec![
            (
                FlowFilter {
                    source_ip: vec!["10.0.1.5".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_ip: vec!["10.0.0.0/16".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    destination_ip: vec!["10.0.1.0/24".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    source_pod: vec!["demo-app/front".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_pod: vec!["demo-app/".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_pod: vec!["other/front".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_pod: vec!["demo-app/api".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_label: vec!["app=frontend".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    destination_label: vec!["app in (redis)".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    source_identity: vec![1, 1234],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    destination_identity: vec![1234],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    verdict: vec![Verdict::Forwarded as i32, Verdict::Dropped as i32],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    verdict: vec![Verdict::Forwarded as i32],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    drop_reason_desc: vec![DropReason::PolicyDenied as i32],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    traffic_direction: vec![TrafficDirection::Egress as i32],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    protocol: vec!["http".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    protocol: vec!["TCP".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    protocol: vec!["udp".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_port: vec!["8080".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_port: vec!["8080".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    tcp_flags: vec![TcpFlags {
                        syn: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    tcp_flags: vec![TcpFlags {
                        fin: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    http_method: vec!["post".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    http_method: vec!["GET".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    http_path: vec!["^/post$".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    http_path: vec!["^/get".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    http_url: vec!["api-service".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    http_status_code: vec!["5+".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    http_status_code: vec!["50+".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    http_status_code: vec!["404".into(), "2+".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    http_header: vec![HttpHeader {
                        key: "content-type".into(),
                        value: "application/json".into(),
                    }],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    node_name: vec!["kind-*".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    node_name: vec!["other".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    ip_version: vec![IpVersion::IPv6 as i32],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    reply: vec![false],
                    ..Default::default()
                },
                false,
            ),
            // Fields AND: the pod matches, the verdict does not.
            (
                FlowFilter {
                    source_pod: vec!["demo-app/".into()],
                    verdict: vec![Verdict::Forwarded as i32],
                    ..Default::default()
                },
                false,
            ),
        ];
        for (i, (filter, want)) in cases.into_iter().enumerate() {
            assert_eq!(one(filter.clone()).unwrap(), want, "case {i}: {filter:?}");
        }
    }

    #[test]
    fn whitelist_any_blacklist_none() {
        let ns = FlowFilter {
            source_pod: vec!["demo-app/".into()],
            ..Default::default()
        };
        let other = FlowFilter {
            source_pod: vec!["kube-system/".into()],
            ..Default::default()
        };
        let http = FlowFilter {
            protocol: vec!["http".into()],
            ..Default::default()
        };
        let f = flow();
        assert!(
            FlowFilterSet::new(&[other.clone(), ns.clone()], &[])
                .unwrap()
                .matches(&f)
        );
        assert!(
            !FlowFilterSet::new(std::slice::from_ref(&other), &[])
                .unwrap()
                .matches(&f)
        );
        assert!(
            !FlowFilterSet::new(std::slice::from_ref(&ns), &[http])
                .unwrap()
                .matches(&f)
        );
        assert!(
            FlowFilterSet::new(&[ns], std::slice::from_ref(&other))
                .unwrap()
                .matches(&f)
        );
        assert!(
            !FlowFilterSet::new(&[], &[FlowFilter::default()])
                .unwrap()
                .matches(&f)
        );
        assert!(FlowFilterSet::new(&[], &[]).unwrap().matches(&f));
    }

    #[test]
    fn plugin_protocol_names_match() {
        let ext = L7Extension {
            protocol: "redis".into(),
            fields: vec![Field {
                name: "command".into(),
                value: Some(Value {
                    kind: Some(value::Kind::String("SET".into())),
                }),
            }],
            ..Default::default()
        };
        let f = Flow {
            extensions: Some(super::super::extension_any(&ext)),
            ..Default::default()
        };
        let set = |p: &str| {
            FlowFilterSet::new(
                &[FlowFilter {
                    protocol: vec![p.into()],
                    ..Default::default()
                }],
                &[],
            )
            .unwrap()
        };
        assert!(set("redis").matches(&f));
        assert!(!set("kafka").matches(&f));
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let cases = [
            (
                FlowFilter {
                    source_ip: vec!["10.0.0.300".into()],
                    ..Default::default()
                },
                "source_ip",
            ),
            (
                FlowFilter {
                    http_status_code: vec!["6+".into()],
                    ..Default::default()
                },
                "http_status_code",
            ),
            (
                FlowFilter {
                    http_status_code: vec!["20".into()],
                    ..Default::default()
                },
                "http_status_code",
            ),
            (
                FlowFilter {
                    destination_port: vec!["http".into()],
                    ..Default::default()
                },
                "destination_port",
            ),
            (
                FlowFilter {
                    http_path: vec!["(".into()],
                    ..Default::default()
                },
                "http_path",
            ),
            (
                FlowFilter {
                    source_label: vec!["a in (b".into()],
                    ..Default::default()
                },
                "source_label",
            ),
            (
                FlowFilter {
                    verdict: vec![42],
                    ..Default::default()
                },
                "verdict",
            ),
            (
                FlowFilter {
                    source_pod: vec!["/x".into()],
                    ..Default::default()
                },
                "source_pod",
            ),
        ];
        for (filter, field) in cases {
            let e = one(filter).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://a/b/c?d"), "/b/c");
        assert_eq!(url_path("http://a"), "/");
        assert_eq!(url_path("/x#y"), "/x");
    }
}
