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

#[test]
fn the_lab_reference_names_every_key_of_the_lab_file() {
    use loupe_runtime::lab::config::{AgentSpec, LabFile, NodeSpec, PodSpec};
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/lab.md"),
    )
    .unwrap();
    // Every field set, so every key appears; a new field fails to compile here.
    let file = LabFile {
        name: "x".into(),
        namespace: "x".into(),
        cidr: "10.0.0.0/16".parse().unwrap(),
        cidr6: Some("fd00::/64".parse().unwrap()),
        nodes: vec![NodeSpec {
            name: "n".into(),
            pod_cidr: "10.0.1.0/24".parse().unwrap(),
            address: Some("10.1.0.2".parse().unwrap()),
        }],
        node_cidr: Some("10.1.0.0/24".parse().unwrap()),
        agent: AgentSpec {
            config: Some("agent.yaml".into()),
        },
        pods: vec![PodSpec {
            name: "p".into(),
            labels: [("app".to_string(), "p".to_string())].into(),
            address: Some("10.0.1.2".parse().unwrap()),
            address6: Some("fd00::2".parse().unwrap()),
            command: vec!["true".into()],
            ready_port: Some(1),
            node: Some("n".into()),
        }],
    };
    let value = serde_json::to_value(&file).unwrap();
    let mut keys = Vec::new();
    lab_paths("", &value, &mut keys);
    assert!(keys.len() > 15, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.lines().any(|l| l.starts_with(&format!("| `{k}` |"))))
        .collect();
    assert!(missing.is_empty(), "docs/lab.md has no row for {missing:?}");
}

/// Key paths of a lab file, lists as `key[]` (`pods[].name`), sections included;
/// label maps are values, not keys.
fn lab_paths(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                if k != "labels" {
                    lab_paths(&path, v, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_object()) {
                lab_paths(&format!("{prefix}[]"), item, out);
            }
        }
        _ => {}
    }
}
