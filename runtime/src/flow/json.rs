//! Flows as JSON, as Hubble writes them (`hubble observe -o json`, the flow
//! exporter's files): protobuf's JSON mapping of a `GetFlowsResponse` with proto
//! field names.

use loupe_proto::descriptor_pool;
use loupe_proto::observer::GetFlowsResponse;
use prost::Message as _;
use prost_reflect::{DynamicMessage, SerializeOptions};

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
    String::from_utf8(out).map_err(|e| e.to_string())
}
