//! `docs/configuration.md` names every key of the agent's configuration file, with
//! its default: the reference cannot fall behind `AgentConfig`.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used)]

use loupe_runtime::config::AgentConfig;
use serde_json::Value;

/// Every key path of `value` (`hubble.metrics.port`), leaves and sections.
fn paths(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_object() {
                paths(&path, v, out);
            } else {
                out.push((path, v.clone()));
            }
        }
    }
}

#[test]
fn the_configuration_reference_names_every_key_with_its_default() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .unwrap();
    let defaults = serde_json::to_value(AgentConfig::default()).unwrap();
    let mut keys = Vec::new();
    paths("", &defaults, &mut keys);
    assert!(keys.len() > 40, "{keys:?}");
    let mut missing = Vec::new();
    for (path, default) in &keys {
        // A row: | `path` | default | …
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{path}` |")));
        let Some(row) = row else {
            missing.push(format!("{path} (no row)"));
            continue;
        };
        let shown = match default {
            Value::Null => "—".to_string(),
            Value::String(s) if s.is_empty() => "`\"\"`".to_string(),
            Value::Array(a) if a.is_empty() => "`[]`".to_string(),
            other => format!(
                "`{}`",
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string)
            ),
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.get(2) != Some(&shown.as_str()) {
            missing.push(format!(
                "{path}: default {shown}, row says {:?}",
                cells.get(2)
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md:\n{}",
        missing.join("\n")
    );
}
