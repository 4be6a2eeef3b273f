//! Apply-time validation of generic L7 rules (`l7proto` + `l7`) against the
//! field schemas of the installed plugins. Parsing ([`crate::policy::parse`])
//! checks what a policy says on its own; this checks what it needs from the
//! agent: a plugin for `l7proto`, and every `l7` field in that plugin's schema.

use std::collections::BTreeMap;

use crate::plugin::{FieldSpec, PluginManager};
use crate::policy::Policy;
use crate::policy::cnp::{PolicyDocument, PortRule};

/// Where the installed plugins' schemas come from.
pub trait SchemaSource {
    /// The field schema of the active plugin for `protocol` (its protocol name, or
    /// the name it is installed under).
    fn fields(&self, protocol: &str) -> Option<Vec<FieldSpec>>;

    /// The protocols that have an active plugin, for error messages.
    fn protocols(&self) -> Vec<String>;
}

impl SchemaSource for PluginManager {
    fn fields(&self, protocol: &str) -> Option<Vec<FieldSpec>> {
        if let Some(plugin) = self.active(protocol) {
            return Some(plugin.info.fields.clone());
        }
        self.list()
            .into_iter()
            .filter_map(|s| s.plugin)
            .find(|p| p.info.protocol == protocol)
            .map(|p| p.info.fields.clone())
    }

    fn protocols(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .list()
            .into_iter()
            .filter_map(|s| s.plugin.map(|p| p.info.protocol.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Schemas by protocol, for tests and embedders.
impl SchemaSource for BTreeMap<String, Vec<FieldSpec>> {
    fn fields(&self, protocol: &str) -> Option<Vec<FieldSpec>> {
        self.get(protocol).cloned()
    }

    fn protocols(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// A policy whose generic L7 rules do not fit the installed plugins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name} ({policy}): {field}: {message}")]
pub struct L7SchemaError {
    /// File the policy came from.
    pub source_name: String,
    /// `namespace/name`.
    pub policy: String,
    /// Field path, e.g. `spec.ingress[0].toPorts[0].rules.l7[1].cmd`.
    pub field: String,
    /// What is wrong, with the plugin's schema when a field is unknown.
    pub message: String,
}

/// Checks every `l7proto` / `l7` of `policy` against `schemas`.
pub fn validate_l7(policy: &Policy, schemas: &dyn SchemaSource) -> Result<(), L7SchemaError> {
    let err = |field: String, message: String| L7SchemaError {
        source_name: policy.source.clone(),
        policy: policy.key(),
        field,
        message,
    };
    // The validated form drops field paths; the document keeps them.
    let doc: PolicyDocument = serde_norway::from_str(&policy.document)
        .map_err(|e| err("(document)".into(), e.to_string()))?;
    let specs: Vec<(String, _)> = match (doc.spec, doc.specs) {
        (Some(spec), _) => vec![("spec".to_string(), spec)],
        (None, Some(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("specs[{i}]"), s))
            .collect(),
        (None, None) => Vec::new(),
    };
    for (at, spec) in specs {
        let ingress = spec
            .ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| (format!("{at}.ingress[{i}]"), &r.to_ports));
        let egress = spec
            .egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| (format!("{at}.egress[{i}]"), &r.to_ports));
        for (at, ports) in ingress.chain(egress) {
            for (i, port) in ports.iter().flatten().enumerate() {
                check_port(&format!("{at}.toPorts[{i}].rules"), port, schemas)
                    .map_err(|(f, m)| err(f, m))?;
            }
        }
    }
    Ok(())
}

fn check_port(
    at: &str,
    port: &PortRule,
    schemas: &dyn SchemaSource,
) -> Result<(), (String, String)> {
    let Some(rules) = &port.rules else {
        return Ok(());
    };
    let Some(protocol) = &rules.l7proto else {
        return Ok(());
    };
    let Some(fields) = schemas.fields(protocol) else {
        let installed = schemas.protocols();
        return Err((
            format!("{at}.l7proto"),
            format!(
                "no installed plugin parses {protocol:?} (installed: {})",
                if installed.is_empty() {
                    "none".to_string()
                } else {
                    installed.join(", ")
                }
            ),
        ));
    };
    for (i, rule) in rules.l7.iter().flatten().enumerate() {
        for name in rule.keys() {
            if !fields.iter().any(|f| f.name == *name) {
                return Err((
                    format!("{at}.l7[{i}].{name}"),
                    format!(
                        "{protocol} has no field {name:?}; its fields: {}",
                        describe(&fields)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `command (text), key (text), db (unsigned)`.
fn describe(fields: &[FieldSpec]) -> String {
    if fields.is_empty() {
        return "none".into();
    }
    fields
        .iter()
        .map(|f| format!("{} ({})", f.name, f.ty.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
