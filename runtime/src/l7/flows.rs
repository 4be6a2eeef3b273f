//! Plugin messages as Hubble L7 flows: HTTP in `l7.http`, Kafka in `l7.kafka` (as
//! Hubble has them), and every plugin's fields in `Flow.extensions` (an
//! [`L7Extension`] sent as a `google.protobuf.Struct`). Flows of other plugins get
//! their `Summary` here, with the fields in the order the plugin gave them.
//! A message's flow goes the way its bytes went: client → server, or server →
//! client with `is_reply` (responses also carry the latency since their request).

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::datapath::flows::timestamp;
use crate::flow::summary::plugin_summary;
use crate::plugin::{Direction, FieldType, Message, MessageKind, PluginInfo, Value};
use crate::reassembly::ConnKey;
use loupe_proto::extension::{self as ext, L7Extension};
use loupe_proto::flow::{
    CiliumEventType, Endpoint, Flow, FlowType, Http, HttpHeader, Ip, IpVersion, Kafka, L7FlowType,
    Layer4, Layer7, Tcp, TrafficDirection, Verdict, layer4, layer7,
};

/// Cilium's monitor type for L7 records (`MessageTypeAccessLog`).
pub const EVENT_TYPE_L7: i32 = 129;

/// Who a connection joins, as its flows show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnContext {
    /// The side that opened the connection.
    pub client: Endpoint,
    /// The side that accepted it.
    pub server: Endpoint,
    /// Ingress when observed at the server's endpoint, egress at the client's.
    pub traffic_direction: TrafficDirection,
    /// The protocol policy names for the connection's port, if any.
    pub protocol: Option<String>,
}

/// What a response needs of its request: when it was sent and what it asked.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSummary {
    /// When the request was seen.
    pub time: SystemTime,
    /// Its fields, named.
    pub fields: Vec<ext::Field>,
    /// HTTP method and URL.
    pub http: Option<Http>,
    /// Kafka API, topic and correlation id.
    pub kafka: Option<Kafka>,
}

/// A message's fields, named and typed as the plugin's schema says. A field the
/// schema declares `repeated` is one list, however many values it has (flows
/// then show `"topic": ["a"]` as they show `"topic": ["a", "b"]`).
pub fn named_fields(plugin: &PluginInfo, msg: &Message) -> Vec<ext::Field> {
    let mut out: Vec<ext::Field> = Vec::with_capacity(msg.fields.len());
    for (field, repeated) in field_values(plugin, msg) {
        if !repeated {
            out.push(field);
            continue;
        }
        let value = field.value.unwrap_or_default();
        match out.iter_mut().find(|f| f.name == field.name) {
            Some(ext::Field {
                value:
                    Some(ext::Value {
                        kind: Some(ext::value::Kind::List(list)),
                    }),
                ..
            }) => list.values.push(value),
            _ => out.push(ext::Field {
                name: field.name,
                value: Some(ext::Value {
                    kind: Some(ext::value::Kind::List(ext::ValueList {
                        values: vec![value],
                    })),
                }),
            }),
        }
    }
    out
}

/// Each field of `msg` with its value, and whether the schema declares it a list.
fn field_values(plugin: &PluginInfo, msg: &Message) -> Vec<(ext::Field, bool)> {
    let schema = &plugin.fields;
    msg.fields
        .iter()
        .filter_map(|f| {
            let spec = schema.get(usize::from(f.id))?;
            let kind = match &f.value {
                Value::Slice { .. } => {
                    let bytes = msg.slice(f)?;
                    match std::str::from_utf8(bytes) {
                        // Binary-safe fields (a Redis key) read as text when they are.
                        Ok(text) => ext::value::Kind::String(text.to_string()),
                        Err(_) if spec.ty == FieldType::Bytes => {
                            ext::value::Kind::Bytes(bytes.to_vec())
                        }
                        Err(_) => {
                            ext::value::Kind::String(String::from_utf8_lossy(bytes).into_owned())
                        }
                    }
                }
                Value::Text(t) => ext::value::Kind::String(t.clone()),
                Value::Unsigned(u) => ext::value::Kind::Uint(*u),
                Value::Signed(i) => ext::value::Kind::Int(*i),
                Value::Flag(b) => ext::value::Kind::Bool(*b),
            };
            Some((
                ext::Field {
                    name: spec.name.clone(),
                    value: Some(ext::Value { kind: Some(kind) }),
                },
                spec.repeated,
            ))
        })
        .collect()
}

/// A field's value as text (numbers in decimal).
pub fn text(fields: &[ext::Field], name: &str) -> Option<String> {
    let value = fields.iter().find(|f| f.name == name)?.value.as_ref()?;
    Some(match value.kind.as_ref()? {
        ext::value::Kind::String(s) => s.clone(),
        ext::value::Kind::Int(i) => i.to_string(),
        ext::value::Kind::Uint(u) => u.to_string(),
        ext::value::Kind::Bool(b) => b.to_string(),
        ext::value::Kind::Float(f) => f.to_string(),
        ext::value::Kind::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        ext::value::Kind::List(_) => return None,
    })
}

fn number(fields: &[ext::Field], name: &str) -> Option<i64> {
    text(fields, name)?.parse().ok()
}

/// Hubble's HTTP record of a request.
fn http_request(fields: &[ext::Field]) -> Http {
    let host = text(fields, "host").unwrap_or_default();
    let target = text(fields, "url")
        .or_else(|| text(fields, "path"))
        .unwrap_or_default();
    let absolute = target.starts_with("http://") || target.starts_with("https://");
    let url = if absolute || host.is_empty() {
        target
    } else {
        format!("http://{host}{target}")
    };
    Http {
        code: 0,
        method: text(fields, "method").unwrap_or_default(),
        url,
        protocol: text(fields, "version").unwrap_or_default(),
        headers: headers(fields),
    }
}

fn headers(fields: &[ext::Field]) -> Vec<HttpHeader> {
    [
        ("host", "Host"),
        ("content-type", "Content-Type"),
        ("content-length", "Content-Length"),
        ("user-agent", "User-Agent"),
    ]
    .into_iter()
    .filter_map(|(field, header)| {
        text(fields, field).map(|value| HttpHeader {
            key: header.into(),
            value,
        })
    })
    .collect()
}

/// Kafka API names as Cilium's policies and Hubble's flows spell them.
pub fn kafka_api_key(name: &str) -> String {
    match name {
        "ListOffsets" => "offsets".into(),
        other => other.to_ascii_lowercase(),
    }
}

fn kafka(fields: &[ext::Field]) -> Kafka {
    Kafka {
        error_code: number(fields, "error-code")
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(0),
        api_version: number(fields, "api-version")
            .and_then(|v| i32::try_from(v).ok())
            .unwrap_or(0),
        api_key: text(fields, "api-name")
            .map(|n| kafka_api_key(&n))
            .unwrap_or_default(),
        correlation_id: number(fields, "correlation-id")
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(0),
        topic: text(fields, "topic").unwrap_or_default(),
    }
}

/// What a later response needs to know about this request.
pub fn summarize_request(plugin: &PluginInfo, msg: &Message, time: SystemTime) -> RequestSummary {
    let fields = named_fields(plugin, msg);
    let (http, kafka) = match plugin.protocol.as_str() {
        "http" => (Some(http_request(&fields)), None),
        "kafka" => (None, Some(kafka(&fields))),
        _ => (None, None),
    };
    RequestSummary {
        time,
        fields,
        http,
        kafka,
    }
}

/// The flow of one message. `request` is the request a response answers.
pub fn message_flow(
    ctx: &ConnContext,
    key: &ConnKey,
    plugin: &PluginInfo,
    msg: &Message,
    time: SystemTime,
    request: Option<&RequestSummary>,
) -> Flow {
    let mut fields = named_fields(plugin, msg);
    let l7_type = match msg.kind {
        MessageKind::Request => L7FlowType::Request,
        MessageKind::Response => L7FlowType::Response,
        MessageKind::Event => L7FlowType::Sample,
    };
    // A message keeps the direction it was parsed from: an event the client
    // sends goes client → server, a request the server sends goes server → client.
    let reply = msg.direction == Direction::ToClient;
    let latency_ns = match (msg.kind, request) {
        (MessageKind::Response, Some(req)) => time
            .duration_since(req.time)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        _ => 0,
    };
    let record = match plugin.protocol.as_str() {
        "http" => Some(layer7::Record::Http(match (msg.kind, request) {
            (MessageKind::Request, _) => http_request(&fields),
            (_, req) => {
                let mut http = req.and_then(|r| r.http.clone()).unwrap_or_default();
                http.code = number(&fields, "status")
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(0);
                if let Some(version) = text(&fields, "version") {
                    http.protocol = version;
                }
                http.headers = headers(&fields);
                http
            }
        })),
        "kafka" => Some(layer7::Record::Kafka(match (msg.kind, request) {
            (MessageKind::Request, _) => kafka(&fields),
            (_, req) => {
                let mut k = req.and_then(|r| r.kafka.clone()).unwrap_or_default();
                let own = kafka(&fields);
                k.error_code = own.error_code;
                k.correlation_id = own.correlation_id;
                if k.topic.is_empty() {
                    k.topic = own.topic;
                }
                k
            }
        })),
        _ => None,
    };
    // A response also carries what it answers (a Redis reply's `command`).
    if let Some(req) = request {
        for f in &req.fields {
            if !fields.iter().any(|own| own.name == f.name) {
                fields.push(f.clone());
            }
        }
    }
    let extension = L7Extension {
        protocol: plugin.protocol.clone(),
        plugin: plugin.name.clone(),
        plugin_version: plugin.version.clone(),
        fields,
    };
    let (src, dst, source, destination) = if reply {
        (key.server, key.client, &ctx.server, &ctx.client)
    } else {
        (key.client, key.server, &ctx.client, &ctx.server)
    };
    let flow = Flow {
        time: Some(timestamp(time)),
        verdict: Verdict::Forwarded as i32,
        l7: Some(Layer7 {
            r#type: l7_type as i32,
            latency_ns,
            record,
        }),
        extensions: Some(loupe_proto::fields::extension_any(&extension)),
        is_reply: Some(reply),
        ..base_flow(ctx, src, dst, source, destination)
    };
    with_plugin_summary(flow, &extension)
}

/// A flow without an HTTP / Kafka record gets its summary from the plugin's
/// fields now, in the plugin's order (the Struct they travel in is a map).
fn with_plugin_summary(mut flow: Flow, extension: &L7Extension) -> Flow {
    if flow.l7.as_ref().is_some_and(|l7| l7.record.is_none()) {
        #[allow(deprecated)]
        {
            flow.summary = plugin_summary(&flow, extension);
        }
    }
    flow
}

/// The flow that says a connection's L7 view stopped (parse error, plugin fault,
/// a message over the size bound).
pub fn error_flow(
    ctx: &ConnContext,
    key: &ConnKey,
    plugin: &PluginInfo,
    reason: &str,
    time: SystemTime,
) -> Flow {
    let extension = L7Extension {
        protocol: plugin.protocol.clone(),
        plugin: plugin.name.clone(),
        plugin_version: plugin.version.clone(),
        fields: vec![ext::Field {
            name: "parse-error".into(),
            value: Some(ext::Value {
                kind: Some(ext::value::Kind::String(reason.to_string())),
            }),
        }],
    };
    let flow = Flow {
        time: Some(timestamp(time)),
        verdict: Verdict::Error as i32,
        l7: Some(Layer7 {
            r#type: L7FlowType::UnknownL7Type as i32,
            latency_ns: 0,
            record: None,
        }),
        extensions: Some(loupe_proto::fields::extension_any(&extension)),
        is_reply: Some(false),
        ..base_flow(ctx, key.client, key.server, &ctx.client, &ctx.server)
    };
    with_plugin_summary(flow, &extension)
}

fn base_flow(
    ctx: &ConnContext,
    src: SocketAddr,
    dst: SocketAddr,
    source: &Endpoint,
    destination: &Endpoint,
) -> Flow {
    Flow {
        ip: Some(Ip {
            source: src.ip().to_canonical().to_string(),
            destination: dst.ip().to_canonical().to_string(),
            ip_version: if src.ip().to_canonical().is_ipv4() {
                IpVersion::IPv4
            } else {
                IpVersion::IPv6
            } as i32,
            ..Ip::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: u32::from(src.port()),
                destination_port: u32::from(dst.port()),
                flags: None,
            })),
        }),
        source: Some(source.clone()),
        destination: Some(destination.clone()),
        r#type: FlowType::L7 as i32,
        event_type: Some(CiliumEventType {
            r#type: EVENT_TYPE_L7,
            sub_type: 0,
        }),
        traffic_direction: ctx.traffic_direction as i32,
        ..Flow::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish/subscribe plugin with `fields`.
    fn pubsub(fields: Vec<crate::plugin::FieldSpec>) -> PluginInfo {
        PluginInfo {
            name: "pubsub".into(),
            version: "0.1.0".into(),
            protocol: "pubsub".into(),
            default_ports: vec![1883],
            transport: crate::plugin::Transport::Stream,
            fields,
        }
    }

    fn field(name: &str, v: ext::value::Kind) -> ext::Field {
        ext::Field {
            name: name.into(),
            value: Some(ext::Value { kind: Some(v) }),
        }
    }

    #[test]
    fn http_url_joins_host_and_target() {
        let f = vec![
            field("method", ext::value::Kind::String("GET".into())),
            field("url", ext::value::Kind::String("/get?x=1".into())),
            field("host", ext::value::Kind::String("api-service".into())),
            field("version", ext::value::Kind::String("HTTP/1.1".into())),
        ];
        let h = http_request(&f);
        assert_eq!(h.url, "http://api-service/get?x=1");
        assert_eq!(h.method, "GET");
        assert_eq!(h.protocol, "HTTP/1.1");
        assert_eq!(h.headers[0].key, "Host");
        // An absolute-form target is kept as is.
        let f = vec![field("url", ext::value::Kind::String("http://x/y".into()))];
        assert_eq!(http_request(&f).url, "http://x/y");
    }

    #[test]
    fn kafka_names_follow_cilium() {
        assert_eq!(kafka_api_key("Produce"), "produce");
        assert_eq!(kafka_api_key("ListOffsets"), "offsets");
        assert_eq!(kafka_api_key("OffsetCommit"), "offsetcommit");
        let f = vec![
            field("api-name", ext::value::Kind::String("Fetch".into())),
            field("api-version", ext::value::Kind::Uint(11)),
            field("correlation-id", ext::value::Kind::Int(7)),
            field("error-code", ext::value::Kind::Int(29)),
            field("topic", ext::value::Kind::String("orders".into())),
        ];
        let k = kafka(&f);
        assert_eq!(
            (
                k.api_key.as_str(),
                k.api_version,
                k.correlation_id,
                k.error_code
            ),
            ("fetch", 11, 7, 29)
        );
        assert_eq!(k.topic, "orders");
    }

    /// A message's flow goes the way its bytes went, whatever its kind: an event
    /// the client sends is client → server, a request the server sends is
    /// server → client, a response server → client.
    #[test]
    fn a_message_keeps_the_direction_it_was_parsed_from() {
        use crate::plugin::Correlation;
        let info = pubsub(Vec::new());
        let pod = |name: &str| Endpoint {
            pod_name: name.into(),
            ..Endpoint::default()
        };
        let ctx = ConnContext {
            client: pod("client"),
            server: pod("broker"),
            traffic_direction: TrafficDirection::Ingress,
            protocol: None,
        };
        let key = ConnKey {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:1883".parse().unwrap(),
        };
        let flow = |direction, kind| {
            let msg = Message {
                direction,
                kind,
                start: 0,
                bytes: bytes::Bytes::new(),
                correlation: Correlation::Order(0),
                fields: Vec::new(),
            };
            let f = message_flow(&ctx, &key, &info, &msg, SystemTime::now(), None);
            (
                f.source.map(|e| e.pod_name).unwrap_or_default(),
                f.ip.map(|ip| ip.source).unwrap_or_default(),
                f.is_reply,
            )
        };
        let from_client = || ("client".to_string(), "10.0.0.1".to_string(), Some(false));
        let from_broker = || ("broker".to_string(), "10.0.0.2".to_string(), Some(true));
        assert_eq!(flow(Direction::ToServer, MessageKind::Event), from_client());
        assert_eq!(flow(Direction::ToClient, MessageKind::Event), from_broker());
        assert_eq!(
            flow(Direction::ToServer, MessageKind::Request),
            from_client()
        );
        assert_eq!(
            flow(Direction::ToClient, MessageKind::Request),
            from_broker()
        );
        assert_eq!(
            flow(Direction::ToClient, MessageKind::Response),
            from_broker()
        );
    }

    /// A field the schema declares a list is one list in the flow, however many
    /// values it has; other fields stay single values.
    #[test]
    fn a_list_field_is_a_list_with_one_value_or_several() {
        use crate::plugin::{Correlation, Field, FieldSpec};
        let spec = |name: &str, repeated| FieldSpec {
            name: name.into(),
            ty: FieldType::Text,
            repeated,
            description: String::new(),
        };
        let info = pubsub(vec![spec("type", false), spec("topic", true)]);
        let text = |id, t: &str| Field {
            id,
            value: Value::Text(t.into()),
        };
        let msg = |fields| Message {
            direction: Direction::ToServer,
            kind: MessageKind::Request,
            start: 0,
            bytes: bytes::Bytes::new(),
            correlation: Correlation::Order(0),
            fields,
        };
        let s = |t: &str| ext::Value {
            kind: Some(ext::value::Kind::String(t.into())),
        };
        let list = |values: Vec<ext::Value>| {
            field("topic", ext::value::Kind::List(ext::ValueList { values }))
        };
        let one = named_fields(&info, &msg(vec![text(0, "SUB"), text(1, "a")]));
        assert_eq!(
            one,
            [
                field("type", ext::value::Kind::String("SUB".into())),
                list(vec![s("a")])
            ]
        );
        let two = named_fields(
            &info,
            &msg(vec![text(1, "a"), text(0, "SUB"), text(1, "b")]),
        );
        assert_eq!(
            two,
            [
                list(vec![s("a"), s("b")]),
                field("type", ext::value::Kind::String("SUB".into()))
            ]
        );
    }
}
