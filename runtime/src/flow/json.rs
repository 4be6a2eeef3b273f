//! Flows as JSON, as Hubble writes them (`hubble observe -o json`, the flow
//! exporter's files): protobuf's JSON mapping of a `GetFlowsResponse` with proto
//! field names.

use loupe_proto::descriptor_pool;
use loupe_proto::flow::Flow;
use loupe_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use prost::Message as _;
use prost_reflect::{
    DynamicMessage, Kind, MessageDescriptor, ReflectMessage as _, SerializeOptions, Value,
};

use super::mask::FieldMask;
use super::summary::summary;

/// The response for a stored flow, as the Observer streams it and the exporter
/// writes it: `Summary` filled as Cilium's agent fills it (Hubble's CLI prints it
/// as the flow's summary), then the field mask. The response's node and time are
/// the flow's, whatever the mask keeps.
pub fn flow_response(stored: &Flow, mask: Option<&FieldMask>) -> GetFlowsResponse {
    #[allow(deprecated)]
    let needs_summary = stored.summary.is_empty() && mask.is_none_or(|m| m.keeps("Summary"));
    let mut flow = match mask {
        Some(mask) if !needs_summary => mask.apply(stored),
        _ => stored.clone(),
    };
    if needs_summary {
        #[allow(deprecated)]
        {
            flow.summary = summary(stored);
        }
        if let Some(mask) = mask {
            flow = mask.apply(&flow);
        }
    }
    GetFlowsResponse {
        node_name: stored.node_name.clone(),
        time: stored.time,
        response_types: Some(ResponseTypes::Flow(flow)),
    }
}

/// Protobuf's JSON mapping of a response as Hubble's CLI prints it: proto field
/// names (`source_port`, `is_reply`), enum names, RFC 3339 times, `Any` with
/// `@type`, unset fields left out.
pub fn to_json(resp: &GetFlowsResponse) -> Result<String, String> {
    let desc = descriptor_pool()
        .get_message_by_name("observer.GetFlowsResponse")
        .ok_or("observer.GetFlowsResponse descriptor missing")?;
    let msg =
        DynamicMessage::decode(desc, resp.encode_to_vec().as_slice()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    write_message(&msg, &mut out)?;
    Ok(go_escape(out))
}

/// Whether a message is a well-known type, which has its own JSON form.
fn well_known(desc: &MessageDescriptor) -> bool {
    desc.full_name().starts_with("google.protobuf.")
}

/// A message's fields in the order its `.proto` declares them, as Go's protobuf
/// printer writes them (Cilium's `Flow` declares `uuid` = 34 right after `time`).
fn write_message(msg: &DynamicMessage, out: &mut String) -> Result<(), String> {
    let desc = msg.descriptor();
    if well_known(&desc) {
        out.push_str(&serialize(msg)?);
        return Ok(());
    }
    out.push('{');
    let mut first = true;
    // `fields()` goes by number; the descriptor's own list is the `.proto`'s order.
    let declared = desc
        .descriptor_proto()
        .field
        .iter()
        .filter_map(|f| desc.get_field(u32::try_from(f.number()).ok()?));
    for field in declared {
        if !msg.has_field(&field) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        let value = msg.get_field(&field);
        let nested = match field.kind() {
            Kind::Message(m) if !well_known(&m) && !field.is_map() => Some(m),
            _ => None,
        };
        match (nested, value.as_ref()) {
            (Some(_), Value::Message(sub)) => {
                out.push('"');
                out.push_str(field.name());
                out.push_str("\":");
                write_message(sub, out)?;
            }
            (Some(_), Value::List(items)) => {
                out.push('"');
                out.push_str(field.name());
                out.push_str("\":[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let sub = item
                        .as_message()
                        .ok_or("a message list holds a non-message")?;
                    write_message(sub, out)?;
                }
                out.push(']');
            }
            _ => {
                // Scalars, enums, lists of them and well-known types: protobuf's
                // printer writes the field on its own (`{"name":value}`).
                let mut single = DynamicMessage::new(desc.clone());
                single.set_field(&field, value.into_owned());
                let text = serialize(&single)?;
                let body = text
                    .strip_prefix('{')
                    .and_then(|t| t.strip_suffix('}'))
                    .ok_or("protobuf's printer wrote no object")?;
                out.push_str(body);
            }
        }
    }
    out.push('}');
    Ok(())
}

/// Protobuf's JSON mapping with proto field names, numbers as Go writes them.
fn serialize(msg: &DynamicMessage) -> Result<String, String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoNumbers);
    msg.serialize_with_options(
        &mut ser,
        &SerializeOptions::new().use_proto_field_name(true),
    )
    .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Floating-point numbers as Go's protobuf printer writes them: shortest form,
/// no `.0` on whole numbers (`42`, not `42.0`), exponents (`1e-7`, `1e+21`) below
/// 1e-6 and from 1e21.
struct GoNumbers;

impl serde_json::ser::Formatter for GoNumbers {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        w.write_all(go_float(v).as_bytes())
    }

    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        w.write_all(go_float(f64::from(v)).as_bytes())
    }
}

fn go_float(v: f64) -> String {
    let abs = v.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let s = format!("{v:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        }
    } else {
        format!("{v}")
    }
}

/// What Go's `json.Encoder` (Hubble's printer and exporter) does to the text
/// protobuf's JSON printer gives it: `<`, `>`, `&`, U+2028 and U+2029 become
/// `\u` escapes. They only occur inside strings, so replacing them is exact.
fn go_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_proto::flow::{Flow, Http, Layer7, layer7};
    use loupe_proto::observer::get_flows_response::ResponseTypes;

    #[test]
    fn fields_come_in_the_order_the_proto_declares_them() {
        let resp = GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(Flow {
                time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                uuid: "u".into(),
                verdict: 1,
                emitter: Some(loupe_proto::flow::Emitter {
                    name: "Loupe".into(),
                    version: "0.1.0".into(),
                }),
                auth_type: 1,
                ..Flow::default()
            })),
            node_name: "n".into(),
            ..GetFlowsResponse::default()
        };
        // As Hubble's printer writes it: declaration order, not field numbers.
        assert_eq!(
            to_json(&resp).unwrap(),
            r#"{"flow":{"time":"1970-01-01T00:00:01Z","uuid":"u","emitter":{"name":"Loupe","version":"0.1.0"},"verdict":"FORWARDED","auth_type":"SPIRE"},"node_name":"n"}"#
        );
    }

    #[test]
    fn numbers_are_written_as_go_writes_them() {
        let cases = [
            (0.0, "0"),
            (42.0, "42"),
            (-3.0, "-3"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
        ];
        for (v, want) in cases {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    #[test]
    fn html_characters_are_escaped_as_go_writes_them() {
        let resp = GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(Flow {
                l7: Some(Layer7 {
                    record: Some(layer7::Record::Http(Http {
                        url: "http://api/get?a=1&b=<2>\u{2028}".into(),
                        ..Http::default()
                    })),
                    ..Layer7::default()
                }),
                ..Flow::default()
            })),
            ..GetFlowsResponse::default()
        };
        let json = to_json(&resp).unwrap();
        assert!(
            json.contains(r#""url":"http://api/get?a=1\u0026b=\u003c2\u003e\u2028""#),
            "{json}"
        );
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back["flow"]["l7"]["http"]["url"],
            "http://api/get?a=1&b=<2>\u{2028}"
        );
    }
}
