//! `loupe observe`: Hubble's `observe` against the agent's Observer API, with
//! Hubble's flags and output formats (`compact`, `json`/`jsonpb`, `dict`, `table`).
//!
//! Flag semantics follow Hubble's CLI: different flags AND, a repeated flag ORs
//! its values, a direction-less flag (`--pod`, `--namespace`, `--ip`, `--label`,
//! `--port`, `--identity`) matches either side (two filters: as source, as
//! destination), and `--not` moves the next filter flag to the blacklist.
//! Printing is `print`'s.

use std::ffi::OsString;
use std::path::Path;

use clap::{Args, FromArgMatches as _};

use super::print::{Output, PrintOptions, Printer};
use crate::api::client;
use loupe_proto::flow::{
    DropReason, EventTypeFilter, FlowFilter, TcpFlags, TrafficDirection, Verdict,
};
use loupe_proto::observer::{GetFlowsRequest, observer_client::ObserverClient};

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
    /// A Hubble server or relay to ask (`host:port`, plaintext) instead of the
    /// agent's socket: `--server 127.0.0.1:4245` for `loupe relay`.
    #[arg(long)]
    pub server: Option<String>,
    /// Name the policies that decided on policy verdicts (`ALLOWED BY name (kind)`).
    #[arg(long)]
    pub print_policy_names: bool,
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
    /// Service (`[namespace/]name-prefix`) a flow addresses or comes from.
    #[arg(long)]
    pub service: Vec<String>,
    /// Service a flow comes from (its source address is the Service's frontend).
    #[arg(long)]
    pub from_service: Vec<String>,
    /// Service a flow addresses (its destination is the Service's frontend).
    #[arg(long)]
    pub to_service: Vec<String>,
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
    "service",
    "from_service",
    "to_service",
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
        service,
        from_service,
        to_service,
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
        source_service: a.from_service.clone(),
        destination_service: a.to_service.clone(),
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
        || !a.service.is_empty()
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
    src.source_service.extend(a.service.iter().cloned());
    src.source_label.extend(a.label.iter().cloned());
    src.source_ip.extend(a.ip.iter().cloned());
    src.source_port.extend(a.port.iter().cloned());
    src.source_identity.extend(a.identity.iter().copied());
    base.destination_pod.extend(either_pods);
    base.destination_service.extend(a.service.iter().cloned());
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
    let ago = loupe_proto::time::parse_duration(text)
        .map_err(|_| format!("--{flag}: {text:?} is neither RFC 3339 nor a duration like 5m"))?;
    let at = now
        .checked_sub(ago)
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

pub(super) async fn run(args: ObserveArgs, socket: &Path) -> anyhow::Result<i32> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let request = build_request(&args, &argv).map_err(anyhow::Error::msg)?;
    let opts = PrintOptions {
        output: args.output.unwrap_or(Output::Compact),
        node_name: args.print_node_name,
        policy_names: args.print_policy_names,
    };
    let channel = match &args.server {
        Some(server) => tonic::transport::Endpoint::from_shared(format!("http://{server}"))
            .map_err(|e| anyhow::anyhow!("--server {server}: {e}"))?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("--server {server}: {e}"))?,
        None => client::connect(socket).await?,
    };
    let mut client = ObserverClient::new(channel);
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
        // A relay says when nodes go and come back; Hubble prints it apart from
        // the flows.
        if let Some(loupe_proto::observer::get_flows_response::ResponseTypes::NodeStatus(n)) =
            &resp.response_types
        {
            eprintln!("{}", node_status_line(n));
        }
        let text = printer.format(&resp).map_err(anyhow::Error::msg)?;
        std::io::Write::write_all(&mut stdout, text.as_bytes())?;
        if args.follow {
            std::io::Write::flush(&mut stdout)?;
        }
    }
    std::io::Write::write_all(&mut stdout, printer.finish().as_bytes())?;
    Ok(0)
}

/// A relay's node status event as one line.
fn node_status_line(n: &loupe_proto::relay::NodeStatusEvent) -> String {
    use loupe_proto::relay::NodeState;
    let state = match NodeState::try_from(n.state_change) {
        Ok(NodeState::NodeConnected) => "connected",
        Ok(NodeState::NodeUnavailable) => "unavailable",
        Ok(NodeState::NodeGone) => "gone",
        Ok(NodeState::NodeError) => "in error",
        _ => "in an unknown state",
    };
    let mut line = format!(
        "{} nodes are {state}: {}",
        n.node_names.len(),
        n.node_names.join(", ")
    );
    if !n.message.is_empty() {
        line.push_str(&format!(" ({})", n.message));
    }
    line
}

/// Parses `observe` arguments alone (for tests and tools).
pub fn parse_args(argv: &[&str]) -> Result<ObserveArgs, String> {
    let cmd = ObserveArgs::augment_args(clap::Command::new("observe"));
    let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    ObserveArgs::from_arg_matches(&matches).map_err(|e| e.to_string())
}
