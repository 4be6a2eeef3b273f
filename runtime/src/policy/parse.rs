//! From YAML text to validated [`Policy`] values. Everything is checked before
//! anything is returned: one bad document refuses the whole input, and the error
//! names the file, the document, the field path and the reason.

use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize as _;

use super::cnp::{
    CidrRule, EgressRule, IcmpRule, IngressRule, L7Rules, PolicyDocument, PortRule, PortValue, Rule,
};
use super::selector::LabelSelector;
use super::{Direction, Entity, L7Spec, Peer, PeerRule, Policy, PolicyRule, PortRange, Protocol};
use crate::labels::is_dns_label;

/// A document that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: document {document}{name}: {field}: {message}")]
pub struct PolicyError {
    /// File (or `-`).
    pub source_name: String,
    /// Index of the document in the file (0-based).
    pub document: usize,
    /// ` (namespace/name)` when the document got that far.
    pub name: String,
    /// Field path, e.g. `spec.ingress[0].toPorts[0].ports[0].port`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Largest policy text accepted: Kubernetes' limit on one object (etcd's 1.5 MiB).
pub const MAX_POLICY_BYTES: usize = 1536 << 10;
/// Deepest nesting of `[` / `{` accepted; real policies stay under ten.
pub const MAX_NESTING: usize = 64;

/// Parses every document of a YAML text. Texts too large or nested too deeply to
/// be policies are refused before parsing, so they cost nothing.
pub fn parse_policies(source_name: &str, text: &str) -> Result<Vec<Policy>, PolicyError> {
    let refuse = |message: String| PolicyError {
        source_name: source_name.to_string(),
        document: 0,
        name: String::new(),
        field: "(file)".into(),
        message,
    };
    if text.len() > MAX_POLICY_BYTES {
        return Err(refuse(format!(
            "{} bytes; a policy file may hold at most {MAX_POLICY_BYTES} (Kubernetes' object size limit)",
            text.len()
        )));
    }
    if let Some(line) = nested_too_deep(text) {
        return Err(refuse(format!(
            "line {line}: nested more than {MAX_NESTING} levels deep"
        )));
    }
    let mut out = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let err = |field: String, message: String, name: String| PolicyError {
            source_name: source_name.to_string(),
            document: index,
            name,
            field,
            message,
        };
        // An empty document (a trailing `---`) is not a policy.
        let value = serde_norway::Value::deserialize(document)
            .map_err(|e| err("(document)".into(), e.to_string(), String::new()))?;
        if value.is_null() {
            continue;
        }
        let document = serde_norway::to_string(&value).unwrap_or_default();
        let doc: PolicyDocument = serde_path_to_error::deserialize(value).map_err(|e| {
            // The document itself (a bad top-level key, even an empty one) has no path.
            let field = match e.path().to_string() {
                f if f.is_empty() || f == "." => "(document)".to_string(),
                f => f,
            };
            err(field, e.into_inner().to_string(), String::new())
        })?;
        let mut policy = validate_document(doc, source_name)
            .map_err(|(name, field, message)| err(field, message, name))?;
        policy.document = document;
        out.push(policy);
    }
    Ok(out)
}

/// Parses a file, or every `.yaml` / `.yml` / `.json` file of a directory (sorted).
pub fn parse_path(path: &Path) -> Result<Vec<Policy>, PolicyError> {
    let io_err = |p: &Path, e: std::io::Error| PolicyError {
        source_name: p.display().to_string(),
        document: 0,
        name: String::new(),
        field: "(file)".into(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| io_err(path, e))?;
        for entry in entries {
            let p = entry.map_err(|e| io_err(path, e))?.path();
            if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| io_err(&file, e))?;
        out.extend(parse_policies(&file.display().to_string(), &text)?);
    }
    Ok(out)
}

type Invalid = (String, String, String);

fn validate_document(doc: PolicyDocument, source: &str) -> Result<Policy, Invalid> {
    let bare = |field: &str, message: String| (String::new(), field.to_string(), message);
    if doc.api_version != "cilium.io/v2" {
        return Err(bare(
            "apiVersion",
            format!("{:?} is not supported (use cilium.io/v2)", doc.api_version),
        ));
    }
    let clusterwide = match doc.kind.as_str() {
        "CiliumNetworkPolicy" => false,
        "CiliumClusterwideNetworkPolicy" => true,
        other => {
            return Err(bare(
                "kind",
                format!("{other:?} is not CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy"),
            ));
        }
    };
    if !is_dns_label(&doc.metadata.name) && !is_dns_subdomain(&doc.metadata.name) {
        return Err(bare(
            "metadata.name",
            format!("{:?} is not a valid object name", doc.metadata.name),
        ));
    }
    let namespace = if clusterwide {
        if doc.metadata.namespace.is_some() {
            return Err(bare(
                "metadata.namespace",
                "a CiliumClusterwideNetworkPolicy has no namespace".into(),
            ));
        }
        None
    } else {
        let ns = doc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if !is_dns_label(&ns) {
            return Err(bare(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace"),
            ));
        }
        Some(ns)
    };
    let display = match &namespace {
        Some(ns) => format!(" ({ns}/{})", doc.metadata.name),
        None => format!(" ({})", doc.metadata.name),
    };
    let named = |(field, message): (String, String)| (display.clone(), field, message);

    let mut specs = Vec::new();
    match (doc.spec, doc.specs) {
        (Some(_), Some(_)) => {
            return Err(named((
                "spec".into(),
                "set either spec or specs, not both".into(),
            )));
        }
        (Some(spec), None) => specs.push(("spec".to_string(), spec)),
        (None, Some(list)) => {
            specs.extend(
                list.into_iter()
                    .enumerate()
                    .map(|(i, s)| (format!("specs[{i}]"), s)),
            );
        }
        (None, None) => {
            return Err(named((
                "spec".into(),
                "a policy needs spec or specs".into(),
            )));
        }
    }
    let mut rules = Vec::new();
    for (field, spec) in specs {
        rules.push(validate_rule(&field, spec).map_err(named)?);
    }
    Ok(Policy {
        name: doc.metadata.name,
        namespace,
        source: source.to_string(),
        labels: doc.metadata.labels,
        rules,
        document: String::new(),
    })
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

type FieldErr = (String, String);

fn validate_rule(at: &str, rule: Rule) -> Result<PolicyRule, FieldErr> {
    if rule.node_selector.is_some() {
        return Err((
            format!("{at}.nodeSelector"),
            "host policies are not supported; use endpointSelector".into(),
        ));
    }
    let selector = rule
        .endpoint_selector
        .ok_or_else(|| (format!("{at}.endpointSelector"), "is required".to_string()))?;
    selector
        .validate()
        .map_err(|(f, m)| (format!("{at}.endpointSelector.{f}"), m))?;
    let default_deny = rule.enable_default_deny.unwrap_or(super::cnp::DefaultDeny {
        ingress: None,
        egress: None,
    });
    let log = match rule.log.and_then(|l| l.value).filter(|v| !v.is_empty()) {
        Some(v) if v.chars().count() > 32 => {
            return Err((
                format!("{at}.log.value"),
                format!(
                    "is {} characters long; at most 32 are allowed",
                    v.chars().count()
                ),
            ));
        }
        Some(v) if v.chars().any(char::is_control) => {
            return Err((
                format!("{at}.log.value"),
                "must be printable (no control characters)".into(),
            ));
        }
        other => other,
    };
    let mut out = PolicyRule {
        endpoint_selector: selector,
        log,
        ingress: Vec::new(),
        ingress_deny: Vec::new(),
        egress: Vec::new(),
        egress_deny: Vec::new(),
        default_deny_ingress: default_deny.ingress.unwrap_or(true),
        default_deny_egress: default_deny.egress.unwrap_or(true),
    };
    for (list, name, deny) in [
        (rule.ingress, "ingress", false),
        (rule.ingress_deny, "ingressDeny", true),
    ] {
        for (i, r) in list.unwrap_or_default().into_iter().enumerate() {
            let field = format!("{at}.{name}[{i}]");
            let peer_rule = ingress_rule(&field, r, deny)?;
            if deny {
                out.ingress_deny.push(peer_rule);
            } else {
                out.ingress.push(peer_rule);
            }
        }
    }
    for (list, name, deny) in [
        (rule.egress, "egress", false),
        (rule.egress_deny, "egressDeny", true),
    ] {
        for (i, r) in list.unwrap_or_default().into_iter().enumerate() {
            let field = format!("{at}.{name}[{i}]");
            let peer_rule = egress_rule(&field, r, deny)?;
            if deny {
                out.egress_deny.push(peer_rule);
            } else {
                out.egress.push(peer_rule);
            }
        }
    }
    Ok(out)
}

fn ingress_rule(at: &str, r: IngressRule, deny: bool) -> Result<PeerRule, FieldErr> {
    let peers = peers(
        at,
        Direction::Ingress,
        r.from_endpoints,
        r.from_entities,
        r.from_cidr,
        r.from_cidr_set,
    )?;
    finish_rule(at, peers, r.to_ports, r.icmps, deny)
}

fn egress_rule(at: &str, r: EgressRule, deny: bool) -> Result<PeerRule, FieldErr> {
    if r.to_fqdns.is_some() {
        return Err((
            format!("{at}.toFQDNs"),
            "DNS-based rules are not supported yet".into(),
        ));
    }
    if r.to_services.is_some() {
        return Err((
            format!("{at}.toServices"),
            "service-based rules are not supported".into(),
        ));
    }
    let peers = peers(
        at,
        Direction::Egress,
        r.to_endpoints,
        r.to_entities,
        r.to_cidr,
        r.to_cidr_set,
    )?;
    finish_rule(at, peers, r.to_ports, r.icmps, deny)
}

fn peers(
    at: &str,
    dir: Direction,
    endpoints: Option<Vec<LabelSelector>>,
    entities: Option<Vec<String>>,
    cidr: Option<Vec<String>>,
    cidr_set: Option<Vec<CidrRule>>,
) -> Result<Option<Vec<Peer>>, FieldErr> {
    let (ep_f, ent_f, cidr_f, set_f) = match dir {
        Direction::Ingress => ("fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet"),
        Direction::Egress => ("toEndpoints", "toEntities", "toCIDR", "toCIDRSet"),
    };
    let any = endpoints.is_some() || entities.is_some() || cidr.is_some() || cidr_set.is_some();
    let mut peers = Vec::new();
    for (i, sel) in endpoints.unwrap_or_default().into_iter().enumerate() {
        sel.validate()
            .map_err(|(f, m)| (format!("{at}.{ep_f}[{i}].{f}"), m))?;
        peers.push(Peer::Endpoints(sel));
    }
    for (i, e) in entities.unwrap_or_default().into_iter().enumerate() {
        let entity = Entity::parse(&e).ok_or_else(|| {
            (
                format!("{at}.{ent_f}[{i}]"),
                format!(
                    "unknown entity {e:?} (known: all, world, cluster, host, remote-node, \
                     health, init, unmanaged, kube-apiserver, ingress)"
                ),
            )
        })?;
        peers.push(Peer::Entity(entity));
    }
    for (i, c) in cidr.unwrap_or_default().into_iter().enumerate() {
        let net = parse_cidr(&c).map_err(|m| (format!("{at}.{cidr_f}[{i}]"), m))?;
        peers.push(Peer::Cidr {
            net,
            except: Vec::new(),
        });
    }
    for (i, set) in cidr_set.unwrap_or_default().into_iter().enumerate() {
        let net = parse_cidr(&set.cidr).map_err(|m| (format!("{at}.{set_f}[{i}].cidr"), m))?;
        let mut except = Vec::new();
        for (j, e) in set.except.iter().enumerate() {
            let field = format!("{at}.{set_f}[{i}].except[{j}]");
            let ex = parse_cidr(e).map_err(|m| (field.clone(), m))?;
            if !net.contains(&ex) {
                return Err((field, format!("{ex} is not inside {net}")));
            }
            except.push(ex);
        }
        peers.push(Peer::Cidr { net, except });
    }
    Ok(any.then_some(peers))
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = match s.parse() {
        Ok(net) => net,
        // A bare address is a host prefix, as Cilium reads it.
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("{s:?} is not a CIDR prefix")),
        },
    };
    Ok(net.trunc())
}

fn finish_rule(
    at: &str,
    peers: Option<Vec<Peer>>,
    to_ports: Option<Vec<PortRule>>,
    icmps: Option<Vec<IcmpRule>>,
    deny: bool,
) -> Result<PeerRule, FieldErr> {
    let mut ports = Vec::new();
    for (i, pr) in to_ports.unwrap_or_default().into_iter().enumerate() {
        let field = format!("{at}.toPorts[{i}]");
        let l7 = match pr.rules {
            Some(rules) if deny => {
                let _ = rules;
                return Err((
                    format!("{field}.rules"),
                    "deny rules cannot carry L7 rules".into(),
                ));
            }
            Some(rules) => Some(l7_rules(&format!("{field}.rules"), rules)?),
            None => None,
        };
        let mut ranges = Vec::new();
        if pr.ports.is_empty() {
            return Err((format!("{field}.ports"), "needs at least one port".into()));
        }
        for (j, pp) in pr.ports.iter().enumerate() {
            let pf = format!("{field}.ports[{j}]");
            let protocol = match pp.protocol.as_deref().unwrap_or("ANY") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                "ANY" => Protocol::Any,
                other => {
                    return Err((
                        format!("{pf}.protocol"),
                        format!("unknown protocol {other:?} (TCP, UDP, SCTP or ANY)"),
                    ));
                }
            };
            let port = match &pp.port {
                None => 0,
                Some(PortValue::Number(n)) => {
                    port_number(*n).map_err(|m| (format!("{pf}.port"), m))?
                }
                Some(PortValue::Text(t)) => match t.parse::<i64>() {
                    Ok(n) => port_number(n).map_err(|m| (format!("{pf}.port"), m))?,
                    Err(_) => {
                        return Err((
                            format!("{pf}.port"),
                            format!("{t:?} is not a port number (named ports are not supported)"),
                        ));
                    }
                },
            };
            let end = match pp.end_port {
                None => port,
                Some(e) => {
                    let e = port_number(e).map_err(|m| (format!("{pf}.endPort"), m))?;
                    if port == 0 || e < port {
                        return Err((
                            format!("{pf}.endPort"),
                            format!("{e} must be at least port {port} (and port must be set)"),
                        ));
                    }
                    e
                }
            };
            if l7.is_some() && (protocol == Protocol::Udp || protocol == Protocol::Sctp) {
                return Err((format!("{pf}.protocol"), "L7 rules need TCP".into()));
            }
            ranges.push(PortRange {
                protocol,
                first: port,
                last: end,
            });
        }
        ports.push((ranges, l7));
    }
    let mut icmp_types = Vec::new();
    for (i, rule) in icmps.unwrap_or_default().into_iter().enumerate() {
        for (j, f) in rule.fields.iter().enumerate() {
            let field = format!("{at}.icmps[{i}].fields[{j}]");
            let v6 = match f.family.as_deref().unwrap_or("IPv4") {
                "IPv4" => false,
                "IPv6" => true,
                other => {
                    return Err((
                        format!("{field}.family"),
                        format!("unknown family {other:?}"),
                    ));
                }
            };
            let ty = match &f.icmp_type {
                PortValue::Number(n) if (0..=255).contains(n) => *n as u8,
                PortValue::Text(name) => icmp_type_by_name(name, v6).ok_or_else(|| {
                    (
                        format!("{field}.type"),
                        format!("unknown ICMP type {name:?}"),
                    )
                })?,
                PortValue::Number(n) => {
                    return Err((
                        format!("{field}.type"),
                        format!("{n} is not an ICMP type (0-255)"),
                    ));
                }
            };
            icmp_types.push((v6, ty));
        }
    }
    Ok(PeerRule {
        peers,
        ports,
        icmps: icmp_types,
    })
}

fn port_number(n: i64) -> Result<u16, String> {
    u16::try_from(n).map_err(|_| format!("{n} is not a port (0-65535)"))
}

fn icmp_type_by_name(name: &str, v6: bool) -> Option<u8> {
    Some(match (name, v6) {
        ("EchoReply", false) => 0,
        ("DestinationUnreachable", false) => 3,
        ("Redirect", false) => 5,
        ("EchoRequest", false) => 8,
        ("TimeExceeded", false) => 11,
        ("DestinationUnreachable", true) => 1,
        ("PacketTooBig", true) => 2,
        ("TimeExceeded", true) => 3,
        ("EchoRequest", true) => 128,
        ("EchoReply", true) => 129,
        _ => return None,
    })
}

fn l7_rules(at: &str, rules: L7Rules) -> Result<L7Spec, FieldErr> {
    let kinds = [
        rules.http.is_some(),
        rules.kafka.is_some(),
        rules.dns.is_some(),
        rules.l7.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds > 1 {
        return Err((
            at.to_string(),
            "only one of http, kafka, dns, l7 per port".into(),
        ));
    }
    if rules.dns.is_some() {
        return Err((
            format!("{at}.dns"),
            "DNS rules are not supported yet".into(),
        ));
    }
    if let Some(http) = rules.http {
        if rules.l7proto.is_some() {
            return Err((
                format!("{at}.l7proto"),
                "l7proto goes with l7 rules, not http".into(),
            ));
        }
        for (i, r) in http.iter().enumerate() {
            for (name, re) in [("method", &r.method), ("path", &r.path), ("host", &r.host)] {
                if let Some(re) = re {
                    check_regex(re).map_err(|m| (format!("{at}.http[{i}].{name}"), m))?;
                }
            }
            for (j, h) in r.headers.iter().flatten().enumerate() {
                let (name, _) = super::l7::rules::split_header(h);
                if name.is_empty() || !name.bytes().all(is_token_byte) {
                    return Err((
                        format!("{at}.http[{i}].headers[{j}]"),
                        format!("{h:?} is not \"Name: value\" or \"Name\" (a header name)"),
                    ));
                }
            }
        }
        return Ok(L7Spec::Http(http));
    }
    if let Some(kafka) = rules.kafka {
        for (i, r) in kafka.iter().enumerate() {
            let nonempty = |f: &Option<String>| f.clone().filter(|v| !v.is_empty());
            if let Some(role) = nonempty(&r.role) {
                if super::l7::kafka::role(&role).is_none() {
                    return Err((
                        format!("{at}.kafka[{i}].role"),
                        format!("{role:?} is not produce or consume"),
                    ));
                }
                if nonempty(&r.api_key).is_some() {
                    return Err((
                        format!("{at}.kafka[{i}]"),
                        "set role or apiKey, not both".into(),
                    ));
                }
            }
            if let Some(key) = nonempty(&r.api_key)
                && super::l7::kafka::api_key(&key).is_none()
            {
                return Err((
                    format!("{at}.kafka[{i}].apiKey"),
                    format!(
                        "unknown Kafka API key {key:?} (known: {})",
                        super::l7::kafka::api_key_names()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if let Some(version) = nonempty(&r.api_version)
                && version.parse::<u16>().map_or(true, |v| v > 32767)
            {
                return Err((
                    format!("{at}.kafka[{i}].apiVersion"),
                    format!("{version:?} is not an API version (0-32767)"),
                ));
            }
            if let Some(topic) = nonempty(&r.topic)
                && !super::l7::kafka::valid_topic(&topic)
            {
                return Err((
                    format!("{at}.kafka[{i}].topic"),
                    format!("{topic:?} is not a topic name (1-255 of a-z A-Z 0-9 . _ -)"),
                ));
            }
        }
        return Ok(L7Spec::Kafka(kafka));
    }
    if let Some(l7) = rules.l7 {
        let Some(proto) = rules.l7proto else {
            return Err((
                format!("{at}.l7proto"),
                "l7 rules need l7proto (the plugin's name)".into(),
            ));
        };
        if !is_dns_label(&proto) {
            return Err((
                format!("{at}.l7proto"),
                format!("{proto:?} is not a plugin name"),
            ));
        }
        for (i, r) in l7.iter().enumerate() {
            for (field, pattern) in r {
                check_regex(pattern).map_err(|m| (format!("{at}.l7[{i}].{field}"), m))?;
            }
        }
        return Ok(L7Spec::Generic {
            protocol: proto,
            rules: l7,
        });
    }
    match rules.l7proto {
        Some(proto) => Ok(L7Spec::Generic {
            protocol: proto,
            rules: vec![Default::default()],
        }),
        None => Err((
            at.to_string(),
            "rules is empty (use http: [{}] for visibility)".into(),
        )),
    }
}

/// An HTTP token character (RFC 9110), as header names use.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_regex(re: &str) -> Result<(), String> {
    regex::Regex::new(&format!("^(?:{re})$"))
        .map(|_| ())
        .map_err(|e| format!("invalid regex {re:?}: {e}"))
}

/// The line where `[` / `{` nesting (outside quotes and comments) passes
/// [`MAX_NESTING`], if it does.
fn nested_too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(n + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}
