//! Printing flows as `hubble observe` does, in every output format (`compact`,
//! `json`/`jsonpb`, `dict`, `table`); shared by `loupe observe` and `loupe replay`.
//! Times print in UTC.

use std::fmt::Write as _;

use clap::ValueEnum;

use loupe_proto::flow::{
    DropReason, Endpoint, Flow, L7FlowType, LostEvent, LostEventSource, TraceObservationPoint,
    TrafficDirection, Verdict, layer7,
};
use loupe_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

use crate::flow::json::to_json;
use crate::flow::summary;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per flow, Hubble's default.
    Compact,
    /// Protobuf's JSON mapping of each response with proto field names (as
    /// `hubble observe -o json` prints), one per line.
    Json,
    /// Same as `json` (Hubble's name).
    Jsonpb,
    /// Key: value blocks.
    Dict,
    /// Aligned columns.
    Table,
}

/// Printing options.
#[derive(Debug, Clone, Copy)]
pub struct PrintOptions {
    /// Format.
    pub output: Output,
    /// Prefix the node name.
    pub node_name: bool,
    /// Name the deciding policies on policy verdicts (`ALLOWED BY name (kind)`).
    pub policy_names: bool,
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
    let ports = loupe_proto::fields::ports(f);
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
            let matched = loupe_proto::monitor::policy_match_name(f.policy_match_type);
            format!("policy-verdict:{matched} {dir}")
        }
        _ if f.verdict == Verdict::Dropped as i32 => drop_reason_text(f.drop_reason_desc),
        _ if f.trace_observation_point != 0 => trace_point(f.trace_observation_point),
        _ => "UNKNOWN".into(),
    }
}

/// Hubble's verdict column: the verdict's name, except on policy verdicts:
/// `ALLOWED`, `DENIED` or `AUDITED`, with `BY name (kind), …` when asked for.
fn verdict(f: &Flow, policy_names: bool) -> String {
    let v = Verdict::try_from(f.verdict);
    let name = v.map_or("VERDICT_UNKNOWN", |v| v.as_str_name());
    if f.event_type.as_ref().map(|e| e.r#type) != Some(loupe_proto::monitor::POLICY_VERDICT) {
        return name.to_string();
    }
    let ingress = f.traffic_direction == TrafficDirection::Ingress as i32;
    let egress = f.traffic_direction == TrafficDirection::Egress as i32;
    let (outcome, by) = match v {
        Ok(Verdict::Forwarded | Verdict::Redirected) => (
            "ALLOWED",
            if ingress {
                &f.ingress_allowed_by
            } else {
                &f.egress_allowed_by
            },
        ),
        Ok(Verdict::Dropped | Verdict::Error) => (
            "DENIED",
            if ingress {
                &f.ingress_denied_by
            } else {
                &f.egress_denied_by
            },
        ),
        Ok(Verdict::Audit) => return "AUDITED".into(),
        _ => return name.to_string(),
    };
    let mut out = outcome.to_string();
    if policy_names && (ingress || egress) {
        let named = by
            .iter()
            .filter(|p| !p.kind.is_empty() && !p.name.is_empty());
        for (i, p) in named.enumerate() {
            out.push_str(if i == 0 { " BY " } else { ", " });
            let _ = write!(out, "{} ({})", p.name, p.kind);
        }
    }
    out
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
                        verdict(f, self.opts.policy_names),
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
                    let _ = writeln!(s, "    VERDICT: {}", verdict(f, self.opts.policy_names));
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
                    row.extend([
                        src,
                        dst,
                        flow_type(f),
                        verdict(f, self.opts.policy_names),
                        summary(f),
                    ]);
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
