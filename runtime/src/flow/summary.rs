//! The one-line summary of a flow (Hubble's `Summary`): HTTP, Kafka, DNS and TCP
//! flags in the words Cilium's agent uses, plugin records as `<protocol> request
//! name=value …`, other L4 as type and code. Plugin flows get theirs when they are
//! built (in the plugin's field order); the Observer fills it for the rest of the
//! flows it sends, and `observe` / `replay` print it.

use std::fmt::Write as _;

use loupe_proto::extension::{L7Extension, Value, value};
use loupe_proto::flow::{Flow, L7FlowType, TcpFlags, layer4, layer7};

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

/// The summary of a plugin's record: its protocol, `request` or `response` with the
/// latency, then its fields as `name=value` in the order given.
pub fn plugin_summary(f: &Flow, ext: &L7Extension) -> String {
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

/// A flow's summary as Hubble's `Summary` field carries it: the one the flow
/// already has (a plugin flow's, or the server's), else `HTTP/1.1 GET http://…`,
/// `HTTP/1.1 200 3ms (GET http://…)`, `Kafka request produce correlation id 12
/// topic 'orders'`, `TCP Flags: SYN, ACK`, or a plugin's protocol and fields
/// (`redis request command=SET key=k`).
pub fn summary(f: &Flow) -> String {
    #[allow(deprecated)]
    let sent = f.summary.as_str();
    if sent.is_empty() {
        computed(f)
    } else {
        sent.to_string()
    }
}

fn computed(f: &Flow) -> String {
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
    if let Some(ext) = loupe_proto::fields::l7_extension(f) {
        return plugin_summary(f, &ext);
    }
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            format!("TCP Flags: {}", tcp_flag_names(t.flags.as_ref()))
        }
        Some(layer4::Protocol::Udp(_)) => "UDP".into(),
        Some(layer4::Protocol::Sctp(_)) => "SCTP".into(),
        Some(layer4::Protocol::IcmPv4(i)) => format!("ICMPv4 type {} code {}", i.r#type, i.code),
        Some(layer4::Protocol::IcmPv6(i)) => format!("ICMPv6 type {} code {}", i.r#type, i.code),
        Some(layer4::Protocol::Vrrp(v)) => format!("VRRP vrid {} priority {}", v.vrid, v.priority),
        Some(layer4::Protocol::Igmp(i)) => {
            format!("IGMP type {} group {}", i.r#type, i.group_address)
        }
        None => String::new(),
    }
}
