//! `loupe observe`: Hubble's `observe` against the agent's Observer API, with
//! Hubble's flags and output formats (`compact`, `json`/`jsonpb`, `dict`, `table`).
//!
//! Flag semantics follow Hubble's CLI: different flags AND, a repeated flag ORs
//! its values, a direction-less flag (`--pod`, `--namespace`, `--ip`, `--label`,
//! `--port`, `--identity`) matches either side (two filters: as source, as
//! destination), and `--not` moves the next filter flag to the blacklist.
//! Times print in UTC.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::{Args, FromArgMatches as _, ValueEnum};
use prost::Message as _;
use prost_reflect::{DynamicMessage, SerializeOptions};

use crate::api::client;
use crate::api::observer::descriptor_pool;
use crate::api::proto::extension::{L7Extension, Value, value};
use crate::api::proto::flow::{
    DropReason, Endpoint, EventTypeFilter, Flow, FlowFilter, L7FlowType, LostEvent,
    LostEventSource, TcpFlags, TraceObservationPoint, TrafficDirection, Verdict, layer4, layer7,
};
use crate::api::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes,
    observer_client::ObserverClient,
};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per flow, Hubble's default.
    Compact,
    /// Canonical protobuf JSON of each response, one per line.
    Json,
    /// Same as `json` (Hubble's name).
    Jsonpb,
    /// Key: value blocks.
    Dict,
    /// Aligned columns.
    Table,
}

/// `loupe observe` flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ObserveArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "compact")]
    pub output: Option<Output>,
    /// Print the last N flows (default 20 unless --follow, --since or --all).
    #[arg(long)]
    pub last: Option<u64>,
    /// Print the first N stored flows.
    #[arg(long)]
    pub first: Option<u64>,
    /// Print every stored flow.
    #[arg(long)]
    pub all: bool,
    /// Keep printing new flows.
    #[arg(short, long)]
    pub follow: bool,
    /// Flows since a time: RFC 3339 or a duration ago (`5m`, `1h30m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Flows until a time: RFC 3339 or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Prefix lines with the node name.
    #[arg(long)]
    pub print_node_name: bool,
    /// Negate the next filter flag.
    #[arg(long = "not", action = clap::ArgAction::Count)]
    pub not: u8,

    /// Namespace, either side.
    #[arg(short, long)]
    pub namespace: Vec<String>,
    /// Source namespace.
    #[arg(long)]
    pub from_namespace: Vec<String>,
    /// Destination namespace.
    #[arg(long)]
    pub to_namespace: Vec<String>,
    /// Pod (`[namespace/]pod-name-prefix`), either side.
    #[arg(long)]
    pub pod: Vec<String>,
    /// Source pod.
    #[arg(long)]
    pub from_pod: Vec<String>,
    /// Destination pod.
    #[arg(long)]
    pub to_pod: Vec<String>,
    /// Label selector, either side.
    #[arg(short, long)]
    pub label: Vec<String>,
    /// Source label selector.
    #[arg(long)]
    pub from_label: Vec<String>,
    /// Destination label selector.
    #[arg(long)]
    pub to_label: Vec<String>,
    /// IP or CIDR, either side.
    #[arg(long)]
    pub ip: Vec<String>,
    /// Source IP or CIDR.
    #[arg(long)]
    pub from_ip: Vec<String>,
    /// Destination IP or CIDR.
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// L4 port, either side.
    #[arg(long)]
    pub port: Vec<String>,
    /// Source port.
    #[arg(long)]
    pub from_port: Vec<String>,
    /// Destination port.
    #[arg(long)]
    pub to_port: Vec<String>,
    /// Security identity, either side.
    #[arg(long)]
    pub identity: Vec<u32>,
    /// Source identity.
    #[arg(long)]
    pub from_identity: Vec<u32>,
    /// Destination identity.
    #[arg(long)]
    pub to_identity: Vec<u32>,
    /// Protocol: tcp, udp, icmp, http, dns, kafka, or a plugin's (redis).
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Verdict: FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED.
    #[arg(long)]
    pub verdict: Vec<String>,
    /// Drop reason (`POLICY_DENIED`).
    #[arg(long)]
    pub drop_reason_desc: Vec<String>,
    /// Event type: drop, trace[:to-endpoint…], l7, policy-verdict, capture.
    #[arg(short = 't', long = "type")]
    pub event_type: Vec<String>,
    /// HTTP method.
    #[arg(long)]
    pub http_method: Vec<String>,
    /// HTTP path (regular expression).
    #[arg(long)]
    pub http_path: Vec<String>,
    /// HTTP status: `404` or a class such as `5+`.
    #[arg(long)]
    pub http_status: Vec<String>,
    /// HTTP URL (regular expression).
    #[arg(long)]
    pub http_url: Vec<String>,
    /// Traffic direction: ingress or egress.
    #[arg(long)]
    pub traffic_direction: Vec<String>,
    /// Node name (`*` wildcards).
    #[arg(long)]
    pub node_name: Vec<String>,
    /// TCP flags, comma-separated, all required (`SYN,ACK`).
    #[arg(long)]
    pub tcp_flags: Vec<String>,
}

/// Flag ids that add filters, and how: both sides, source only, or neither side.
const FILTER_FLAGS: &[&str] = &[
    "namespace",
    "from_namespace",
    "to_namespace",
    "pod",
    "from_pod",
    "to_pod",
    "label",
    "from_label",
    "to_label",
    "ip",
    "from_ip",
    "to_ip",
    "port",
    "from_port",
    "to_port",
    "identity",
    "from_identity",
    "to_identity",
    "protocol",
    "verdict",
    "drop_reason_desc",
    "event_type",
    "http_method",
    "http_path",
    "http_status",
    "http_url",
    "traffic_direction",
    "node_name",
    "tcp_flags",
];

/// Flags split by whether a `--not` applies to them.
#[derive(Debug, Default)]
struct Split {
    keep: ObserveArgs,
    negate: ObserveArgs,
}

/// Re-reads the command line to see which filter values follow a `--not`.
fn split_negated(args: &ObserveArgs, argv: &[OsString]) -> Result<Split, String> {
    if args.not == 0 {
        return Ok(Split {
            keep: args.clone(),
            negate: ObserveArgs::default(),
        });
    }
    let start = argv
        .iter()
        .position(|a| a == "observe")
        .ok_or("--not: cannot find the observe arguments")?;
    let cmd = ObserveArgs::augment_args(clap::Command::new("observe"));
    let matches = cmd
        .try_get_matches_from(
            std::iter::once(OsString::from("observe")).chain(argv[start + 1..].iter().cloned()),
        )
        .map_err(|e| e.to_string())?;
    let nots: Vec<usize> = matches
        .indices_of("not")
        .map(Iterator::collect)
        .unwrap_or_default();
    // Every filter value with its position, in command-line order.
    let mut values: Vec<(usize, &str)> = Vec::new();
    for id in FILTER_FLAGS {
        if let Some(indices) = matches.indices_of(id) {
            values.extend(indices.map(|i| (i, *id)));
        }
    }
    values.sort_unstable();
    let mut negated_positions = std::collections::BTreeSet::new();
    for n in nots {
        if let Some((i, _)) = values.iter().find(|(i, _)| *i > n) {
            negated_positions.insert(*i);
        }
    }
    let mut keep = ObserveArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let mut negate = ObserveArgs::default();
    // Move negated values, flag by flag, keeping the order of the rest.
    macro_rules! split_field {
        ($($field:ident),*) => {$(
            if let Some(indices) = matches.indices_of(stringify!($field)) {
                let all = std::mem::take(&mut keep.$field);
                for (value, index) in all.into_iter().zip(indices) {
                    if negated_positions.contains(&index) {
                        negate.$field.push(value);
                    } else {
                        keep.$field.push(value);
                    }
                }
            }
        )*};
    }
    split_field!(
        namespace,
        from_namespace,
        to_namespace,
        pod,
        from_pod,
        to_pod,
        label,
        from_label,
        to_label,
        ip,
        from_ip,
        to_ip,
        port,
        from_port,
        to_port,
        identity,
        from_identity,
        to_identity,
        protocol,
        verdict,
        drop_reason_desc,
        event_type,
        http_method,
        http_path,
        http_status,
        http_url,
        traffic_direction,
        node_name,
        tcp_flags
    );
    Ok(Split { keep, negate })
}

fn pods(namespaces: &[String], pods: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in pods {
        if p.contains('/') {
            out.push(p.clone());
        } else if namespaces.is_empty() {
            out.push(format!("default/{p}"));
        } else {
            out.extend(namespaces.iter().map(|ns| format!("{ns}/{p}")));
        }
    }
    if pods.is_empty() {
        out.extend(namespaces.iter().map(|ns| format!("{ns}/")));
    }
    out
}

fn parse_enum<T>(
    flag: &str,
    values: &[String],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<i32>, String>
where
    T: Into<i32>,
{
    values
        .iter()
        .map(|v| {
            parse(&v.to_ascii_uppercase())
                .map(Into::into)
                .ok_or_else(|| format!("--{flag}: unknown value {v:?}"))
        })
        .collect()
}

/// Cilium's trace observation points as monitor sub-types.
const TRACE_SUBTYPES: &[(&str, i32)] = &[
    ("to-endpoint", 0),
    ("to-proxy", 1),
    ("to-host", 2),
    ("to-stack", 3),
    ("to-overlay", 4),
    ("from-endpoint", 5),
    ("from-proxy", 6),
    ("from-host", 7),
    ("from-stack", 8),
    ("from-overlay", 9),
    ("from-network", 10),
    ("to-network", 11),
];

fn event_types(values: &[String]) -> Result<Vec<EventTypeFilter>, String> {
    values
        .iter()
        .map(|v| {
            let (name, sub) = v
                .split_once(':')
                .map_or((v.as_str(), None), |(n, s)| (n, Some(s)));
            let r#type = match name {
                "drop" => 1,
                "debug" => 2,
                "capture" => 3,
                "trace" => 4,
                "policy-verdict" => 5,
                "l7" => 129,
                _ => return Err(format!("--type: unknown event type {name:?}")),
            };
            let sub_type = match sub {
                None => None,
                Some(s) if r#type == 4 => Some(
                    TRACE_SUBTYPES
                        .iter()
                        .find(|(n, _)| *n == s)
                        .map(|(_, n)| *n)
                        .ok_or_else(|| format!("--type: unknown trace point {s:?}"))?,
                ),
                Some(s) => Some(
                    s.parse::<i32>()
                        .map_err(|_| format!("--type: bad sub-type {s:?}"))?,
                ),
            };
            Ok(EventTypeFilter {
                r#type,
                match_sub_type: sub_type.is_some(),
                sub_type: sub_type.unwrap_or(0),
            })
        })
        .collect()
}

fn tcp_flags(values: &[String]) -> Result<Vec<TcpFlags>, String> {
    values
        .iter()
        .map(|v| {
            let mut f = TcpFlags::default();
            for flag in v.split(',') {
                match flag.trim().to_ascii_uppercase().as_str() {
                    "SYN" => f.syn = true,
                    "ACK" => f.ack = true,
                    "FIN" => f.fin = true,
                    "RST" => f.rst = true,
                    "PSH" => f.psh = true,
                    "URG" => f.urg = true,
                    "ECE" => f.ece = true,
                    "CWR" => f.cwr = true,
                    "NS" => f.ns = true,
                    other => return Err(format!("--tcp-flags: unknown flag {other:?}")),
                }
            }
            Ok(f)
        })
        .collect()
}

/// The filters one group of flags adds (one, or two when a flag matches either side).
fn filters(a: &ObserveArgs) -> Result<Vec<FlowFilter>, String> {
    let mut base = FlowFilter {
        source_pod: pods(&a.from_namespace, &a.from_pod),
        destination_pod: pods(&a.to_namespace, &a.to_pod),
        source_label: a.from_label.clone(),
        destination_label: a.to_label.clone(),
        source_ip: a.from_ip.clone(),
        destination_ip: a.to_ip.clone(),
        source_port: a.from_port.clone(),
        destination_port: a.to_port.clone(),
        source_identity: a.from_identity.clone(),
        destination_identity: a.to_identity.clone(),
        protocol: a.protocol.clone(),
        verdict: parse_enum("verdict", &a.verdict, Verdict::from_str_name)?,
        drop_reason_desc: parse_enum(
            "drop-reason-desc",
            &a.drop_reason_desc,
            DropReason::from_str_name,
        )?,
        event_type: event_types(&a.event_type)?,
        http_method: a.http_method.clone(),
        http_path: a.http_path.clone(),
        http_status_code: a.http_status.clone(),
        http_url: a.http_url.clone(),
        traffic_direction: parse_enum(
            "traffic-direction",
            &a.traffic_direction,
            TrafficDirection::from_str_name,
        )?,
        node_name: a.node_name.clone(),
        tcp_flags: tcp_flags(&a.tcp_flags)?,
        ..Default::default()
    };
    let either_pods = pods(&a.namespace, &a.pod);
    let either = !either_pods.is_empty()
        || !a.label.is_empty()
        || !a.ip.is_empty()
        || !a.port.is_empty()
        || !a.identity.is_empty();
    if base == FlowFilter::default() && !either {
        return Ok(Vec::new());
    }
    if !either {
        return Ok(vec![base]);
    }
    let mut src = base.clone();
    src.source_pod.extend(either_pods.iter().cloned());
    src.source_label.extend(a.label.iter().cloned());
    src.source_ip.extend(a.ip.iter().cloned());
    src.source_port.extend(a.port.iter().cloned());
    src.source_identity.extend(a.identity.iter().copied());
    base.destination_pod.extend(either_pods);
    base.destination_label.extend(a.label.iter().cloned());
    base.destination_ip.extend(a.ip.iter().cloned());
    base.destination_port.extend(a.port.iter().cloned());
    base.destination_identity.extend(a.identity.iter().copied());
    Ok(vec![src, base])
}

/// Parses `--since` / `--until`: RFC 3339, or a duration before `now`.
pub fn parse_time(
    flag: &str,
    text: &str,
    now: std::time::SystemTime,
) -> Result<prost_types::Timestamp, String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(prost_types::Timestamp {
            seconds: t.unix_timestamp(),
            nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
        });
    }
    let mut total = 0_u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| {
            format!("--{flag}: {text:?} is neither RFC 3339 nor a duration like 5m")
        })?;
        number.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("--{flag}: unknown unit {c:?} in {text:?}")),
        };
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!(
            "--{flag}: {text:?} is neither RFC 3339 nor a duration like 5m"
        ));
    }
    let at = now
        .checked_sub(std::time::Duration::from_secs(total))
        .ok_or_else(|| format!("--{flag}: {text:?} is too far back"))?;
    Ok(prost_types::Timestamp::from(at))
}

/// Builds the request the flags describe.
pub fn build_request(args: &ObserveArgs, argv: &[OsString]) -> Result<GetFlowsRequest, String> {
    let split = split_negated(args, argv)?;
    let now = std::time::SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time("since", s, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time("until", s, now))
        .transpose()?;
    let (number, first) = match (args.first, args.last, args.all) {
        (Some(n), None, false) => (n, true),
        (None, Some(n), false) => (n, false),
        (None, None, true) => (u64::MAX, false),
        (None, None, false) if args.follow || since.is_some() => (0, false),
        (None, None, false) => (20, false),
        _ => return Err("use only one of --first, --last and --all".into()),
    };
    Ok(GetFlowsRequest {
        number,
        first,
        follow: args.follow,
        whitelist: filters(&split.keep)?,
        blacklist: filters(&split.negate)?,
        since,
        until,
        ..Default::default()
    })
}

/// Printing options.
#[derive(Debug, Clone, Copy)]
pub struct PrintOptions {
    /// Format.
    pub output: Output,
    /// Prefix the node name.
    pub node_name: bool,
}

/// `Jan _2 15:04:05.000` in UTC.
pub fn format_time(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return "N/A".into() };
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(ts.seconds) else {
        return "N/A".into();
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {:>2} {:02}:{:02}:{:02}.{:03}",
        MONTHS[usize::from(u8::from(t.month())) - 1],
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ts.nanos.clamp(0, 999_999_999) / 1_000_000
    )
}

fn reserved_identity(id: u32) -> Option<&'static str> {
    Some(match id {
        1 => "host",
        2 => "world",
        3 => "unmanaged",
        4 => "health",
        5 => "init",
        6 => "remote-node",
        7 => "kube-apiserver",
        8 => "ingress",
        _ => return None,
    })
}

fn endpoint(ep: Option<&Endpoint>, ip: &str, port: Option<u32>, names: &[String]) -> String {
    let mut host = match ep {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ if !names.is_empty() => names.join(","),
        _ if ip.contains(':') && port.is_some() => format!("[{ip}]"),
        _ if !ip.is_empty() => ip.to_string(),
        _ => "N/A".into(),
    };
    if let Some(port) = port.filter(|p| *p != 0) {
        let _ = write!(host, ":{port}");
    }
    let id = ep.map_or(0, |e| e.identity);
    match reserved_identity(id) {
        Some(name) => format!("{host} ({name})"),
        None => format!("{host} (ID:{id})"),
    }
}

/// Source and destination as printed, and the arrow; replies swap sides so the
/// client stays on the left.
fn sides(f: &Flow) -> (String, &'static str, String) {
    let (sip, dip) =
        f.ip.as_ref()
            .map_or(("", ""), |i| (i.source.as_str(), i.destination.as_str()));
    let ports = crate::flow::ports(f);
    let src = endpoint(f.source.as_ref(), sip, ports.map(|p| p.0), &f.source_names);
    let dst = endpoint(
        f.destination.as_ref(),
        dip,
        ports.map(|p| p.1),
        &f.destination_names,
    );
    match f.is_reply {
        None => (src, "<>", dst),
        Some(true) => (dst, "<-", src),
        Some(false) => (src, "->", dst),
    }
}

/// Cilium's text for a drop reason.
pub fn drop_reason_text(code: i32) -> String {
    let Ok(reason) = DropReason::try_from(code) else {
        return format!("Unknown drop reason ({code})");
    };
    match reason {
        DropReason::PolicyDenied => "Policy denied".into(),
        DropReason::PolicyDeny => "Policy denied by denylist".into(),
        DropReason::InvalidSourceIp => "Invalid source ip".into(),
        DropReason::CtMapInsertionFailed => "CT: Map insertion failed".into(),
        DropReason::UnknownL4Protocol => "Unknown L4 protocol".into(),
        DropReason::UnsupportedL3Protocol => "Unsupported L3 protocol".into(),
        DropReason::StaleOrUnroutableIp => "Stale or unroutable IP".into(),
        DropReason::AuthRequired => "Authentication required".into(),
        DropReason::TtlExceeded => "TTL exceeded".into(),
        DropReason::Unknown => "Unknown drop reason".into(),
        other => {
            let name = other.as_str_name().to_ascii_lowercase().replace('_', " ");
            let mut chars = name.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
    }
}

fn trace_point(point: i32) -> String {
    TraceObservationPoint::try_from(point).map_or_else(
        |_| "UNKNOWN".into(),
        |p| p.as_str_name().to_ascii_lowercase().replace('_', "-"),
    )
}

/// Hubble's event type column: `http-request`, `to-endpoint`, `Policy denied`…
pub fn flow_type(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        let proto = match &l7.record {
            Some(layer7::Record::Http(_)) => "http",
            Some(layer7::Record::Dns(_)) => "dns",
            Some(layer7::Record::Kafka(_)) => "kafka",
            None => "l7",
        };
        let kind = L7FlowType::try_from(l7.r#type).map_or("unknown_l7_type".into(), |t| {
            t.as_str_name().to_ascii_lowercase()
        });
        return format!("{proto}-{kind}");
    }
    match f.event_type.as_ref().map(|e| e.r#type) {
        Some(1) => drop_reason_text(f.drop_reason_desc),
        Some(4) => trace_point(f.trace_observation_point),
        Some(5) => {
            let dir = TrafficDirection::try_from(f.traffic_direction)
                .map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name());
            let outcome = match Verdict::try_from(f.verdict) {
                Ok(Verdict::Dropped) => "DENIED",
                Ok(Verdict::Audit) => "AUDITED",
                _ => "ALLOWED",
            };
            let matched = match f.policy_match_type {
                0 => "none",
                1 => "L3-Only",
                2 => "L3-L4",
                3 => "L4-Only",
                4 => "all",
                5 => "L3-Proto",
                6 => "Proto-Only",
                _ => "unknown",
            };
            format!("policy-verdict:{matched} {dir} {outcome}")
        }
        _ if f.verdict == Verdict::Dropped as i32 => drop_reason_text(f.drop_reason_desc),
        _ if f.trace_observation_point != 0 => trace_point(f.trace_observation_point),
        _ => "UNKNOWN".into(),
    }
}

fn tcp_flag_names(flags: Option<&TcpFlags>) -> String {
    let Some(f) = flags else { return String::new() };
    [
        (f.syn, "SYN"),
        (f.ack, "ACK"),
        (f.rst, "RST"),
        (f.fin, "FIN"),
        (f.psh, "PSH"),
        (f.urg, "URG"),
        (f.ece, "ECE"),
        (f.cwr, "CWR"),
        (f.ns, "NS"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join(", ")
}

fn value_text(v: Option<&Value>) -> String {
    match v.and_then(|v| v.kind.as_ref()) {
        Some(value::Kind::String(s)) => s.clone(),
        Some(value::Kind::Int(i)) => i.to_string(),
        Some(value::Kind::Uint(u)) => u.to_string(),
        Some(value::Kind::Bool(b)) => b.to_string(),
        Some(value::Kind::Float(x)) => x.to_string(),
        Some(value::Kind::Bytes(b)) => format!("<{} bytes>", b.len()),
        Some(value::Kind::List(l)) => format!(
            "[{}]",
            l.values
                .iter()
                .map(|v| value_text(Some(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        None => String::new(),
    }
}

fn extension_summary(f: &Flow, ext: &L7Extension) -> String {
    let l7 = f.l7.as_ref();
    let kind = l7.map_or(0, |l| l.r#type);
    let mut out = ext.protocol.clone();
    if kind == L7FlowType::Response as i32 {
        let _ = write!(
            out,
            " response {}ms",
            l7.map_or(0, |l| l.latency_ns) / 1_000_000
        );
    } else if kind == L7FlowType::Request as i32 {
        out.push_str(" request");
    }
    for field in &ext.fields {
        let _ = write!(out, " {}={}", field.name, value_text(field.value.as_ref()));
    }
    out
}

/// Hubble's summary: `HTTP/1.1 GET http://…`, `TCP Flags: SYN`, plugin fields.
pub fn summary(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        let response = l7.r#type == L7FlowType::Response as i32;
        match &l7.record {
            Some(layer7::Record::Http(h)) => {
                let request = format!("{} {}", h.method, h.url);
                return if response {
                    format!(
                        "{} {} {}ms ({request})",
                        h.protocol,
                        h.code,
                        l7.latency_ns / 1_000_000
                    )
                } else {
                    format!("{} {request}", h.protocol)
                };
            }
            Some(layer7::Record::Kafka(k)) => {
                let base = format!(
                    "Kafka {} {} correlation id {} topic '{}'",
                    if response { "response" } else { "request" },
                    k.api_key,
                    k.correlation_id,
                    k.topic
                );
                return if response {
                    format!("{base} return code {}", k.error_code)
                } else {
                    base
                };
            }
            Some(layer7::Record::Dns(d)) => {
                return if response {
                    format!(
                        "DNS Answer \"{}\" TTL: {} (Proxy {} {})",
                        d.ips.join(","),
                        d.ttl,
                        d.query,
                        d.qtypes.join(",")
                    )
                } else {
                    format!("DNS Query {} {}", d.query, d.qtypes.join(","))
                };
            }
            None => {}
        }
    }
    if let Some(ext) = crate::flow::l7_extension(f) {
        return extension_summary(f, &ext);
    }
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            format!("TCP Flags: {}", tcp_flag_names(t.flags.as_ref()))
        }
        Some(layer4::Protocol::Udp(_)) => "UDP".into(),
        Some(layer4::Protocol::Sctp(_)) => "SCTP".into(),
        Some(layer4::Protocol::IcmPv4(i)) => format!("ICMPv4 type {} code {}", i.r#type, i.code),
        Some(layer4::Protocol::IcmPv6(i)) => format!("ICMPv6 type {} code {}", i.r#type, i.code),
        None => String::new(),
    }
}

fn verdict(f: &Flow) -> &'static str {
    Verdict::try_from(f.verdict).map_or("VERDICT_UNKNOWN", |v| v.as_str_name())
}

fn lost_line(l: &LostEvent) -> String {
    let source = LostEventSource::try_from(l.source)
        .map_or("UNKNOWN_LOST_EVENT_SOURCE", |s| s.as_str_name());
    format!(
        "EVENTS LOST: {source} CPU({}) {}",
        l.cpu.unwrap_or(0),
        l.num_events_lost
    )
}

/// Canonical protobuf JSON of a response (lowerCamelCase, enum names, RFC 3339
/// times, `Any` with `@type`).
pub fn to_json(resp: &GetFlowsResponse) -> Result<String, String> {
    let desc = descriptor_pool()
        .get_message_by_name("observer.GetFlowsResponse")
        .ok_or("observer.GetFlowsResponse descriptor missing")?;
    let msg =
        DynamicMessage::decode(desc, resp.encode_to_vec().as_slice()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &SerializeOptions::new())
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Formats responses; `table` aligns columns over what it was given.
#[derive(Debug)]
pub struct Printer {
    opts: PrintOptions,
    printed: usize,
    rows: Vec<Vec<String>>,
}

impl Printer {
    /// A printer.
    pub fn new(opts: PrintOptions) -> Self {
        Self {
            opts,
            printed: 0,
            rows: Vec::new(),
        }
    }

    /// Text for one response (may be empty for `table`, which prints at `finish`).
    pub fn format(&mut self, resp: &GetFlowsResponse) -> Result<String, String> {
        let text = match self.opts.output {
            Output::Json | Output::Jsonpb => format!("{}\n", to_json(resp)?),
            Output::Compact => match &resp.response_types {
                Some(ResponseTypes::Flow(f)) => {
                    let (src, arrow, dst) = sides(f);
                    let node = if self.opts.node_name {
                        format!(" [{}]", f.node_name)
                    } else {
                        String::new()
                    };
                    format!(
                        "{}{node}: {src} {arrow} {dst} {} {} ({})\n",
                        format_time(f.time.as_ref()),
                        flow_type(f),
                        verdict(f),
                        summary(f)
                    )
                }
                Some(ResponseTypes::LostEvents(l)) => format!("{}\n", lost_line(l)),
                _ => String::new(),
            },
            Output::Dict => match &resp.response_types {
                Some(ResponseTypes::Flow(f)) => {
                    let (src, _, dst) = sides(f);
                    let mut s = String::new();
                    if self.printed > 0 {
                        s.push_str("------------\n");
                    }
                    let _ = writeln!(s, "  TIMESTAMP: {}", format_time(f.time.as_ref()));
                    if self.opts.node_name {
                        let _ = writeln!(s, "       NODE: {}", f.node_name);
                    }
                    let _ = writeln!(s, "     SOURCE: {src}");
                    let _ = writeln!(s, "DESTINATION: {dst}");
                    let _ = writeln!(s, "       TYPE: {}", flow_type(f));
                    let _ = writeln!(s, "    VERDICT: {}", verdict(f));
                    let _ = writeln!(s, "    SUMMARY: {}", summary(f));
                    s
                }
                Some(ResponseTypes::LostEvents(l)) => format!("{}\n", lost_line(l)),
                _ => String::new(),
            },
            Output::Table => {
                if let Some(ResponseTypes::Flow(f)) = &resp.response_types {
                    let (src, _, dst) = sides(f);
                    let mut row = vec![format_time(f.time.as_ref())];
                    if self.opts.node_name {
                        row.push(f.node_name.clone());
                    }
                    row.extend([src, dst, flow_type(f), verdict(f).to_string(), summary(f)]);
                    self.rows.push(row);
                }
                String::new()
            }
        };
        self.printed += 1;
        Ok(text)
    }

    /// Whatever is still buffered (the table).
    pub fn finish(&mut self) -> String {
        if self.opts.output != Output::Table || self.rows.is_empty() {
            return String::new();
        }
        let mut header = vec!["TIMESTAMP".to_string()];
        if self.opts.node_name {
            header.push("NODE".into());
        }
        header.extend(["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(String::from));
        let rows: Vec<Vec<String>> = std::iter::once(header).chain(self.rows.drain(..)).collect();
        let columns = rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == columns {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}   ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

pub(super) async fn run(args: ObserveArgs, socket: &Path) -> anyhow::Result<i32> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let request = build_request(&args, &argv).map_err(anyhow::Error::msg)?;
    let opts = PrintOptions {
        output: args.output.unwrap_or(Output::Compact),
        node_name: args.print_node_name,
    };
    let mut client = ObserverClient::new(client::connect(socket).await?);
    let mut stream = client
        .get_flows(request)
        .await
        .map_err(|s| anyhow::anyhow!("GetFlows: {}", s.message()))?
        .into_inner();
    let mut printer = Printer::new(opts);
    let mut stdout = std::io::stdout().lock();
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("GetFlows: {}", s.message()))?
    {
        let text = printer.format(&resp).map_err(anyhow::Error::msg)?;
        std::io::Write::write_all(&mut stdout, text.as_bytes())?;
        if args.follow {
            std::io::Write::flush(&mut stdout)?;
        }
    }
    std::io::Write::write_all(&mut stdout, printer.finish().as_bytes())?;
    Ok(0)
}

/// Parses `observe` arguments alone (for tests and tools).
pub fn parse_args(argv: &[&str]) -> Result<ObserveArgs, String> {
    let cmd = ObserveArgs::augment_args(clap::Command::new("observe"));
    let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    ObserveArgs::from_arg_matches(&matches).map_err(|e| e.to_string())
}
