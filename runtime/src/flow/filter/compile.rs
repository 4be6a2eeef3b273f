//! A [`FlowFilter`] parsed and checked once: addresses, pod prefixes, regexes,
//! label selectors, enums and status patterns, each error naming its field.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use super::FilterError;
use crate::flow::selector::LabelSelector;
use loupe_proto::flow::{
    DropReason, FlowFilter, HttpHeader, IpVersion, NetworkInterface, TcpFlags, TrafficDirection,
    Verdict, Workload,
};

fn err(field: &'static str, message: impl Into<String>) -> FilterError {
    FilterError {
        field,
        message: message.into(),
    }
}

/// A pod filter: namespace, and a pod-name prefix (empty: any pod).
#[derive(Debug, Clone)]
pub(super) struct PodPrefix {
    pub(super) namespace: String,
    pub(super) prefix: String,
}

/// `404` (exact), `5+` or `40+` (prefix).
#[derive(Debug, Clone)]
pub(super) enum StatusMatch {
    Exact(u32),
    Prefix(String),
}

#[derive(Debug, Clone)]
pub(super) struct EventTypeMatch {
    pub(super) r#type: i32,
    pub(super) sub_type: Option<i32>,
}

/// One FlowFilter, parsed. Empty vectors mean "not constrained".
#[derive(Debug, Clone, Default)]
pub(super) struct CompiledFilter {
    pub(super) uuid: Vec<String>,
    pub(super) source_ip: Vec<IpNet>,
    pub(super) source_ip_xlated: Vec<IpNet>,
    pub(super) destination_ip: Vec<IpNet>,
    pub(super) source_pod: Vec<PodPrefix>,
    pub(super) destination_pod: Vec<PodPrefix>,
    pub(super) source_fqdn: Vec<Regex>,
    pub(super) destination_fqdn: Vec<Regex>,
    pub(super) source_label: Vec<LabelSelector>,
    pub(super) destination_label: Vec<LabelSelector>,
    pub(super) source_service: Vec<PodPrefix>,
    pub(super) destination_service: Vec<PodPrefix>,
    pub(super) source_workload: Vec<Workload>,
    pub(super) destination_workload: Vec<Workload>,
    pub(super) source_cluster: Vec<String>,
    pub(super) destination_cluster: Vec<String>,
    pub(super) traffic_direction: Vec<i32>,
    pub(super) verdict: Vec<i32>,
    pub(super) drop_reason: Vec<i32>,
    pub(super) event_type: Vec<EventTypeMatch>,
    pub(super) http_status: Vec<StatusMatch>,
    pub(super) protocol: Vec<String>,
    pub(super) source_port: Vec<u16>,
    pub(super) destination_port: Vec<u16>,
    pub(super) reply: Vec<bool>,
    pub(super) dns_query: Vec<Regex>,
    pub(super) source_identity: Vec<u32>,
    pub(super) destination_identity: Vec<u32>,
    pub(super) http_method: Vec<String>,
    pub(super) http_path: Vec<Regex>,
    pub(super) http_url: Vec<Regex>,
    pub(super) http_header: Vec<HttpHeader>,
    pub(super) tcp_flags: Vec<TcpFlags>,
    pub(super) node_name: Vec<Regex>,
    pub(super) node_labels: Vec<LabelSelector>,
    pub(super) ip_version: Vec<i32>,
    pub(super) encrypted: Vec<bool>,
    pub(super) interface: Vec<NetworkInterface>,
    pub(super) ip_trace_id: Vec<u64>,
}

fn parse_ips(field: &'static str, values: &[String]) -> Result<Vec<IpNet>, FilterError> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    err(
                        field,
                        format!("{} is neither an IP address nor a CIDR", quote(v)),
                    )
                })
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
                return Err(err(field, format!("{}: empty namespace", quote(v))));
            }
            Ok(PodPrefix {
                namespace: namespace.to_string(),
                prefix: prefix.to_string(),
            })
        })
        .collect()
}

/// Longest regular expression or wildcard pattern a filter may hold.
pub(super) const MAX_PATTERN: usize = 1024;
/// Memory a compiled pattern may take (less when a request holds many:
/// [`pattern_memory`]).
const PATTERN_MEMORY: usize = 1 << 20;
/// Memory all compiled patterns of a request may take together.
const REQUEST_PATTERN_MEMORY: usize = 32 << 20;

/// Memory each of a request's `patterns` patterns may take.
pub(super) fn pattern_memory(patterns: usize) -> usize {
    PATTERN_MEMORY.min(REQUEST_PATTERN_MEMORY / patterns.max(1))
}

/// Regular expressions and wildcard patterns a filter holds.
pub(super) fn pattern_count(f: &FlowFilter) -> usize {
    [
        &f.source_fqdn,
        &f.destination_fqdn,
        &f.dns_query,
        &f.http_path,
        &f.http_url,
        &f.node_name,
    ]
    .iter()
    .map(|v| v.len())
    .sum()
}

/// A value as quoted in errors: at most 64 characters of it.
pub(super) fn quote(v: &str) -> String {
    match v.char_indices().nth(64) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &v[..cut], v.len()),
    }
}

/// A bounded regular expression: its text and its compiled size.
fn bounded_regex(
    field: &'static str,
    shown: &str,
    pattern: &str,
    memory: usize,
) -> Result<Regex, FilterError> {
    if shown.len() > MAX_PATTERN {
        return Err(err(
            field,
            format!("{} is longer than {MAX_PATTERN} bytes", quote(shown)),
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(memory)
        .dfa_size_limit(memory)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                err(field, format!("{} compiles too large", quote(shown)))
            }
            // The parser's message repeats the pattern: keep only its last line.
            other => {
                let text = other.to_string();
                let reason = text.lines().last().unwrap_or("invalid").trim().to_string();
                err(field, format!("{}: {reason}", quote(shown)))
            }
        })
}

fn parse_regexes(
    field: &'static str,
    values: &[String],
    memory: usize,
) -> Result<Vec<Regex>, FilterError> {
    values
        .iter()
        .map(|v| bounded_regex(field, v, v, memory))
        .collect()
}

/// A `*` wildcard pattern (FQDNs, node names) as an anchored regex.
fn parse_globs(
    field: &'static str,
    values: &[String],
    memory: usize,
) -> Result<Vec<Regex>, FilterError> {
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
            bounded_regex(field, v, &format!("^(?:{pattern})$"), memory)
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
            v.parse::<u16>().map_err(|_| {
                err(
                    field,
                    format!("{} is not a port number (0-65535)", quote(v)),
                )
            })
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
                    format!(
                        "{}: expected a status code (404) or a class (5+, 40+)",
                        quote(v)
                    ),
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
    /// Compiles a filter, each pattern within `memory` bytes.
    pub(super) fn new(f: &FlowFilter, memory: usize) -> Result<Self, FilterError> {
        if !f.trace_id.is_empty() {
            return Err(err("trace_id", "Loupe does not record trace IDs"));
        }
        if f.experimental
            .as_ref()
            .is_some_and(|e| !e.cel_expression.is_empty())
        {
            return Err(err(
                "experimental.cel_expression",
                "CEL expressions are not supported by Loupe",
            ));
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
            source_fqdn: parse_globs("source_fqdn", &f.source_fqdn, memory)?,
            destination_fqdn: parse_globs("destination_fqdn", &f.destination_fqdn, memory)?,
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
            dns_query: parse_regexes("dns_query", &f.dns_query, memory)?,
            source_identity: f.source_identity.clone(),
            destination_identity: f.destination_identity.clone(),
            http_method,
            http_path: parse_regexes("http_path", &f.http_path, memory)?,
            http_url: parse_regexes("http_url", &f.http_url, memory)?,
            http_header: f.http_header.clone(),
            tcp_flags: f.tcp_flags.clone(),
            node_name: parse_globs("node_name", &f.node_name, memory)?,
            node_labels: parse_selectors("node_labels", &f.node_labels)?,
            ip_version: check_enum("ip_version", &f.ip_version, |v| {
                IpVersion::try_from(v).is_ok()
            })?,
            encrypted: f.encrypted.clone(),
            interface: f.interface.clone(),
            ip_trace_id: f.ip_trace_id.clone(),
        })
    }
}
