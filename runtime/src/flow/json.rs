//! Flows as JSON, as Hubble writes them (`hubble observe -o json`, the flow
//! exporter's files): protobuf's JSON mapping of a `GetFlowsResponse` with proto
//! field names.

use loupe_proto::descriptor_pool;
use loupe_proto::flow::Flow;
use loupe_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use prost::Message as _;
use prost_reflect::{DynamicMessage, SerializeOptions};

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
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(
        &mut ser,
        &SerializeOptions::new().use_proto_field_name(true),
    )
    .map_err(|e| e.to_string())?;
    String::from_utf8(out)
        .map(go_escape)
        .map_err(|e| e.to_string())
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
