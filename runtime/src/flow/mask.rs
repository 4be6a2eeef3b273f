//! Hubble's field masks over `flow.Flow`: a `GetFlowsRequest.field_mask` or an
//! exporter's `fieldMask` keeps only the listed paths of each flow.

use loupe_proto::descriptor_pool;
use loupe_proto::flow::Flow;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};

/// A checked `field_mask` over `flow.Flow` (paths like `time`,
/// `source.namespace`, `l7.http.method`).
#[derive(Debug, Clone)]
pub struct FieldMask {
    paths: Vec<Vec<String>>,
    descriptor: MessageDescriptor,
}

/// Paths a field mask may list (flow.Flow has far fewer distinct ones).
pub const MAX_MASK_PATHS: usize = 1024;

impl FieldMask {
    /// Checks every path against the Flow message; the error names the bad path.
    /// A path listed twice counts once.
    pub fn new(paths: &[String]) -> Result<Self, String> {
        if paths.len() > MAX_MASK_PATHS {
            return Err(format!(
                "{} paths; a field mask may list at most {MAX_MASK_PATHS}",
                paths.len()
            ));
        }
        let descriptor = descriptor_pool()
            .get_message_by_name("flow.Flow")
            .ok_or("flow.Flow descriptor missing")?;
        let mut out = Vec::new();
        for path in paths {
            let parts: Vec<String> = path.split('.').map(str::to_string).collect();
            let mut message = descriptor.clone();
            for (i, part) in parts.iter().enumerate() {
                let field = message.get_field_by_name(part).ok_or_else(|| {
                    format!(
                        "{path:?}: {part:?} is not a field of {}",
                        message.full_name()
                    )
                })?;
                if i + 1 < parts.len() {
                    match field.kind() {
                        Kind::Message(m) if !field.is_list() => message = m,
                        _ => return Err(format!("{path:?}: {part:?} has no sub-fields")),
                    }
                }
            }
            out.push(parts);
        }
        out.sort();
        out.dedup();
        Ok(Self {
            paths: out,
            descriptor,
        })
    }

    /// Whether the mask keeps the top-level field `name` (or part of it).
    pub fn keeps(&self, name: &str) -> bool {
        self.paths
            .iter()
            .any(|p| p.first().is_some_and(|f| f == name))
    }

    /// A copy of `flow` with only the masked fields.
    pub fn apply(&self, flow: &Flow) -> Flow {
        let Ok(src) =
            DynamicMessage::decode(self.descriptor.clone(), flow.encode_to_vec().as_slice())
        else {
            return flow.clone();
        };
        let mut dst = DynamicMessage::new(self.descriptor.clone());
        for path in &self.paths {
            copy_path(&src, &mut dst, path);
        }
        dst.transcode_to::<Flow>().unwrap_or_default()
    }
}

fn copy_path(src: &DynamicMessage, dst: &mut DynamicMessage, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if !src.has_field_by_name(first) {
        return;
    }
    let Some(value) = src.get_field_by_name(first) else {
        return;
    };
    if rest.is_empty() {
        dst.set_field_by_name(first, value.into_owned());
        return;
    }
    let Some(sub_src) = value.as_message() else {
        return;
    };
    if let Some(Value::Message(sub_dst)) = dst.get_field_by_name_mut(first) {
        copy_path(sub_src, sub_dst, rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_proto::flow::{Endpoint, Verdict};

    #[test]
    fn field_mask_keeps_only_listed_paths() {
        let flow = Flow {
            verdict: Verdict::Dropped as i32,
            node_name: "n".into(),
            source: Some(Endpoint {
                namespace: "demo-app".into(),
                pod_name: "frontend".into(),
                identity: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mask = FieldMask::new(&["verdict".into(), "source.namespace".into()]).unwrap();
        let out = mask.apply(&flow);
        assert_eq!(out.verdict, Verdict::Dropped as i32);
        assert_eq!(out.node_name, "");
        let src = out.source.unwrap();
        assert_eq!(
            (src.namespace.as_str(), src.pod_name.as_str(), src.identity),
            ("demo-app", "", 0)
        );
        assert!(FieldMask::new(&["nope".into()]).is_err());
        assert!(FieldMask::new(&["verdict.x".into()]).is_err());
        // Repeats cost nothing per flow; too many paths are refused up front.
        let repeated = FieldMask::new(&vec!["verdict".to_string(); MAX_MASK_PATHS]).unwrap();
        assert_eq!(repeated.paths.len(), 1);
        let e = FieldMask::new(&vec!["verdict".to_string(); MAX_MASK_PATHS + 1]).unwrap_err();
        assert!(
            e.contains("1025 paths; a field mask may list at most 1024"),
            "{e}"
        );
    }
}
