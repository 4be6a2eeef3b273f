//! The exporter's settings as Cilium's Helm values spell them
//! (`hubble.export.static.*`, `hubble.export.dynamic.*`) and the dynamic
//! exporters' file (`flowLogs:` entries, as in Cilium's `flowlogs.yaml`), checked
//! into [`ExportSpec`]s.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use loupe_proto::flow::FlowFilter;
use prost_reflect::DynamicMessage;
use serde::{Deserialize, Serialize};

use crate::flow::{FieldMask, FlowFilterSet};

/// `hubble.export.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ExportConfig {
    /// One exporter configured with the agent.
    #[serde(rename = "static")]
    pub static_: StaticExport,
    /// Named exporters from a file, re-read when it changes.
    pub dynamic: DynamicExport,
}

/// `hubble.export.static.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StaticExport {
    /// Write flows to `filePath`.
    pub enabled: bool,
    /// The file (`stdout`: the agent's standard output).
    pub file_path: PathBuf,
    /// Flow fields written (Hubble's field-mask paths); empty: all.
    pub field_mask: Vec<String>,
    /// Aggregate flows by these fields over `aggregationInterval` (Cilium 1.19).
    pub field_aggregate: Vec<String>,
    /// How long aggregation windows last (`30s`); `0s`: no aggregation.
    pub aggregation_interval: String,
    /// Only flows matching one of these `FlowFilter`s (objects or JSON strings).
    pub allow_list: Vec<serde_json::Value>,
    /// No flows matching one of these.
    pub deny_list: Vec<serde_json::Value>,
    /// Rotate the file at this size.
    pub file_max_size_mb: u32,
    /// Rotated files kept (0: all).
    pub file_max_backups: u32,
    /// Gzip rotated files.
    pub file_compress: bool,
}

impl Default for StaticExport {
    fn default() -> Self {
        Self {
            enabled: false,
            file_path: PathBuf::from("/var/run/loupe/hubble/events.log"),
            field_mask: Vec::new(),
            field_aggregate: Vec::new(),
            aggregation_interval: "0s".into(),
            allow_list: Vec::new(),
            deny_list: Vec::new(),
            file_max_size_mb: DEFAULT_MAX_SIZE_MB,
            file_max_backups: DEFAULT_MAX_BACKUPS,
            file_compress: false,
        }
    }
}

/// `hubble.export.dynamic.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DynamicExport {
    /// Run the exporters `config.path` lists.
    pub enabled: bool,
    /// Where the list is.
    pub config: DynamicExportFile,
}

/// `hubble.export.dynamic.config.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DynamicExportFile {
    /// The `flowLogs:` file (Cilium mounts its `flowlogs.yaml` ConfigMap key here).
    pub path: PathBuf,
}

impl Default for DynamicExportFile {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/etc/loupe/flowlog-config/flowlogs.yaml"),
        }
    }
}

/// Cilium's default rotation size.
pub const DEFAULT_MAX_SIZE_MB: u32 = 10;
/// Cilium's default number of rotated files.
pub const DEFAULT_MAX_BACKUPS: u32 = 5;

/// The dynamic exporters' file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlowLogs {
    /// The exporters.
    #[serde(default)]
    pub flow_logs: Vec<FlowLog>,
}

/// One dynamic exporter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct FlowLog {
    /// Unique name.
    pub name: String,
    /// Unique file.
    pub file_path: PathBuf,
    /// As `static.fieldMask`.
    pub field_mask: Vec<String>,
    /// As `static.fieldAggregate`.
    pub field_aggregate: Vec<String>,
    /// As `static.aggregationInterval`.
    pub aggregation_interval: Option<String>,
    /// As `static.allowList`.
    pub include_filters: Vec<serde_json::Value>,
    /// As `static.denyList`.
    pub exclude_filters: Vec<serde_json::Value>,
    /// Rotation size (0: 10).
    pub file_max_size_mb: u32,
    /// Rotated files kept (0: 5).
    pub file_max_backups: u32,
    /// Gzip rotated files.
    pub file_compress: bool,
    /// Stop writing after this time (RFC 3339).
    pub end: Option<String>,
}

/// Rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a write would pass this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (0: all).
    pub max_backups: usize,
    /// Gzip rotated files.
    pub compress: bool,
}

/// Aggregation settings.
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// The fields flows are grouped by.
    pub fields: FieldMask,
    /// Window length.
    pub interval: Duration,
}

/// One exporter, checked.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    /// `static` or the dynamic entry's name.
    pub name: String,
    /// Where lines go (`stdout`: standard output).
    pub file_path: PathBuf,
    /// Which flows.
    pub filters: FlowFilterSet,
    /// Which fields of them.
    pub mask: Option<FieldMask>,
    /// Counted by groups instead of written one by one.
    pub aggregation: Option<Aggregation>,
    /// Rotation.
    pub rotation: Rotation,
    /// Nothing is written after this time.
    pub end: Option<SystemTime>,
}

impl ExportSpec {
    /// Whether lines go to the agent's standard output.
    pub fn is_stdout(&self) -> bool {
        self.file_path == Path::new("stdout")
    }
}

/// Settings that name what is wrong (`hubble.export.static.allowList[0]: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ExportConfigError {
    /// The setting.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ExportConfigError {
    ExportConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parts shared by the static and the dynamic form.
struct Parts<'a> {
    name: &'a str,
    file_path: &'a Path,
    field_mask: &'a [String],
    field_aggregate: &'a [String],
    aggregation_interval: &'a str,
    allow: &'a [serde_json::Value],
    deny: &'a [serde_json::Value],
    allow_key: &'a str,
    deny_key: &'a str,
    max_size_mb: u32,
    max_backups: u32,
    compress: bool,
    end: Option<&'a str>,
}

impl StaticExport {
    /// The checked exporter, `None` when disabled; `at` prefixes errors.
    pub fn spec(&self, at: &str) -> Result<Option<ExportSpec>, ExportConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        build(
            at,
            Parts {
                name: "static",
                file_path: &self.file_path,
                field_mask: &self.field_mask,
                field_aggregate: &self.field_aggregate,
                aggregation_interval: &self.aggregation_interval,
                allow: &self.allow_list,
                deny: &self.deny_list,
                allow_key: "allowList",
                deny_key: "denyList",
                max_size_mb: self.file_max_size_mb,
                max_backups: self.file_max_backups,
                compress: self.file_compress,
                end: None,
            },
        )
        .map(Some)
    }
}

impl FlowLog {
    /// The checked exporter; `at` prefixes errors.
    pub fn spec(&self, at: &str) -> Result<ExportSpec, ExportConfigError> {
        if self.name.is_empty() {
            return Err(err(format!("{at}.name"), "is required"));
        }
        build(
            at,
            Parts {
                name: &self.name,
                file_path: &self.file_path,
                field_mask: &self.field_mask,
                field_aggregate: &self.field_aggregate,
                aggregation_interval: self.aggregation_interval.as_deref().unwrap_or("0s"),
                allow: &self.include_filters,
                deny: &self.exclude_filters,
                allow_key: "includeFilters",
                deny_key: "excludeFilters",
                max_size_mb: if self.file_max_size_mb == 0 {
                    DEFAULT_MAX_SIZE_MB
                } else {
                    self.file_max_size_mb
                },
                max_backups: if self.file_max_backups == 0 {
                    DEFAULT_MAX_BACKUPS
                } else {
                    self.file_max_backups
                },
                compress: self.file_compress,
                end: self.end.as_deref(),
            },
        )
    }
}

impl FlowLogs {
    /// Parses a `flowLogs:` file and checks every entry; names and files must be
    /// unique, and none may be the static exporter's (`static`, `static_path`).
    pub fn parse(
        source: &str,
        text: &str,
        static_path: Option<&Path>,
    ) -> Result<Vec<(FlowLog, ExportSpec)>, ExportConfigError> {
        let file: FlowLogs =
            serde_norway::from_str(text).map_err(|e| err(source, e.to_string()))?;
        let mut out: Vec<(FlowLog, ExportSpec)> = Vec::new();
        for (i, entry) in file.flow_logs.into_iter().enumerate() {
            let at = format!("{source}: flowLogs[{i}]");
            let spec = entry.spec(&at)?;
            if entry.name == "static" {
                return Err(err(
                    format!("{at}.name"),
                    "\"static\" is the static exporter's name",
                ));
            }
            if static_path.is_some_and(|p| p == entry.file_path) {
                return Err(err(
                    format!("{at}.filePath"),
                    format!(
                        "{} is hubble.export.static.filePath",
                        entry.file_path.display()
                    ),
                ));
            }
            if out.iter().any(|(e, _)| e.name == entry.name) {
                return Err(err(
                    format!("{at}.name"),
                    format!("{:?} is used twice", entry.name),
                ));
            }
            if out.iter().any(|(e, _)| e.file_path == entry.file_path) {
                return Err(err(
                    format!("{at}.filePath"),
                    format!("{} is used twice", entry.file_path.display()),
                ));
            }
            out.push((entry, spec));
        }
        Ok(out)
    }
}

fn build(at: &str, p: Parts<'_>) -> Result<ExportSpec, ExportConfigError> {
    if p.file_path.as_os_str().is_empty() {
        return Err(err(format!("{at}.filePath"), "is required"));
    }
    if p.file_path != Path::new("stdout") && !p.file_path.is_absolute() {
        return Err(err(
            format!("{at}.filePath"),
            format!(
                "{} is not an absolute path (or stdout)",
                p.file_path.display()
            ),
        ));
    }
    let allow = filters(&format!("{at}.{}", p.allow_key), p.allow)?;
    let deny = filters(&format!("{at}.{}", p.deny_key), p.deny)?;
    let filters = FlowFilterSet::new(&allow, &deny)
        .map_err(|e| err(format!("{at}.{}", p.allow_key), e.to_string()))?;
    let mask = if p.field_mask.is_empty() {
        None
    } else {
        Some(FieldMask::new(p.field_mask).map_err(|e| err(format!("{at}.fieldMask"), e))?)
    };
    let interval = loupe_proto::time::parse_duration(p.aggregation_interval)
        .map_err(|e| err(format!("{at}.aggregationInterval"), e))?;
    let aggregation = match (p.field_aggregate.is_empty(), interval.is_zero()) {
        (true, _) => None,
        (false, true) => {
            return Err(err(
                format!("{at}.aggregationInterval"),
                "must be above 0s when fieldAggregate is set",
            ));
        }
        (false, false) => Some(Aggregation {
            fields: FieldMask::new(p.field_aggregate)
                .map_err(|e| err(format!("{at}.fieldAggregate"), e))?,
            interval,
        }),
    };
    if p.max_size_mb == 0 {
        return Err(err(format!("{at}.fileMaxSizeMb"), "must be at least 1"));
    }
    let end = p
        .end
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .map_err(|e| err(format!("{at}.end"), format!("{t:?} is not RFC 3339: {e}")))
        })
        .transpose()?;
    Ok(ExportSpec {
        name: p.name.to_string(),
        file_path: p.file_path.to_path_buf(),
        filters,
        mask,
        aggregation,
        rotation: Rotation {
            max_bytes: u64::from(p.max_size_mb) << 20,
            max_backups: p.max_backups as usize,
            compress: p.compress,
        },
        end,
    })
}

/// `FlowFilter`s written as objects in protobuf's JSON mapping (proto or JSON
/// field names) or as strings holding such an object (Cilium's Helm form).
fn filters(at: &str, values: &[serde_json::Value]) -> Result<Vec<FlowFilter>, ExportConfigError> {
    let desc = loupe_proto::descriptor_pool()
        .get_message_by_name("flow.FlowFilter")
        .ok_or_else(|| err(at, "flow.FlowFilter descriptor missing"))?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("{at}[{i}]");
            let parsed;
            let value = match v {
                serde_json::Value::String(s) => {
                    parsed = serde_json::from_str::<serde_json::Value>(s)
                        .map_err(|e| err(&field, format!("not a JSON FlowFilter: {e}")))?;
                    &parsed
                }
                other => other,
            };
            DynamicMessage::deserialize(desc.clone(), value)
                .map_err(|e| err(&field, e.to_string()))?
                .transcode_to::<FlowFilter>()
                .map_err(|e| err(&field, e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_settings_are_checked_and_name_the_field() {
        let at = "hubble.export.static";
        let ok = StaticExport {
            enabled: true,
            allow_list: vec![
                serde_json::json!({"verdict": ["DROPPED"]}),
                serde_json::json!(r#"{"source_pod": ["demo-app/"]}"#),
            ],
            field_mask: vec!["time".into(), "source.namespace".into()],
            ..StaticExport::default()
        };
        let spec = ok.spec(at).unwrap().unwrap();
        assert_eq!(spec.rotation.max_bytes, 10 << 20);
        assert!(spec.mask.is_some() && spec.aggregation.is_none());
        assert!(StaticExport::default().spec(at).unwrap().is_none());

        let bad = |edit: &dyn Fn(&mut StaticExport)| {
            let mut c = ok.clone();
            edit(&mut c);
            c.spec(at).unwrap_err().to_string()
        };
        let e = bad(&|c| c.allow_list = vec![serde_json::json!({"verdic": ["DROPPED"]})]);
        assert!(e.starts_with("hubble.export.static.allowList[0]: "), "{e}");
        assert!(e.contains("verdic"), "{e}");
        let e = bad(&|c| c.deny_list = vec![serde_json::json!("{not json")]);
        assert!(
            e.starts_with("hubble.export.static.denyList[0]: not a JSON FlowFilter"),
            "{e}"
        );
        let e = bad(&|c| c.field_mask = vec!["source.nope".into()]);
        assert!(e.starts_with("hubble.export.static.fieldMask: "), "{e}");
        let e = bad(&|c| c.field_aggregate = vec!["verdict".into()]);
        assert_eq!(
            e,
            "hubble.export.static.aggregationInterval: must be above 0s when fieldAggregate is set"
        );
        let e = bad(&|c| c.aggregation_interval = "5 minutes".into());
        assert!(
            e.starts_with("hubble.export.static.aggregationInterval: "),
            "{e}"
        );
        let e = bad(&|c| c.file_path = "events.log".into());
        assert!(e.contains("not an absolute path"), "{e}");
    }

    #[test]
    fn dynamic_entries_need_unique_names_and_files() {
        let text = r#"
flowLogs:
- name: drops
  filePath: /var/run/loupe/hubble/drops.log
  includeFilters: [{verdict: [DROPPED]}]
  fieldAggregate: [source.namespace, verdict]
  aggregationInterval: 10s
  end: "2030-01-01T00:00:00Z"
- name: all
  filePath: /var/run/loupe/hubble/all.log
  fileMaxSizeMb: 1
"#;
        let specs = FlowLogs::parse("flowlogs.yaml", text, None).unwrap();
        assert_eq!(specs.len(), 2);
        let drops = &specs[0].1;
        assert_eq!(
            drops.aggregation.as_ref().unwrap().interval,
            Duration::from_secs(10)
        );
        assert!(drops.end.is_some());
        assert_eq!(drops.rotation.max_backups, 5);
        assert_eq!(specs[1].1.rotation.max_bytes, 1 << 20);

        let twice = text.replace("name: all", "name: drops");
        let e = FlowLogs::parse("flowlogs.yaml", &twice, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "flowlogs.yaml: flowLogs[1].name: \"drops\" is used twice"
        );
        let same_file = text.replace("all.log", "drops.log");
        let e = FlowLogs::parse("flowlogs.yaml", &same_file, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("flowLogs[1].filePath"), "{e}");
        let unknown = text.replace("fileMaxSizeMb", "fileMaxSize");
        let e = FlowLogs::parse("flowlogs.yaml", &unknown, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `fileMaxSize`"), "{e}");
        let no_name = text.replace("- name: all\n  filePath", "- filePath");
        let e = FlowLogs::parse("flowlogs.yaml", &no_name, None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "flowlogs.yaml: flowLogs[1].name: is required");
        let bad_end = text.replace("2030-01-01T00:00:00Z", "tomorrow");
        let e = FlowLogs::parse("flowlogs.yaml", &bad_end, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("flowLogs[0].end: \"tomorrow\" is not RFC 3339"),
            "{e}"
        );
        let static_file = Path::new("/var/run/loupe/hubble/all.log");
        let e = FlowLogs::parse("flowlogs.yaml", text, Some(static_file))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("flowLogs[1].filePath: /var/run/loupe/hubble/all.log is hubble.export.static.filePath"),
            "{e}"
        );
        let named_static = text.replace("name: all", "name: static");
        let e = FlowLogs::parse("flowlogs.yaml", &named_static, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("flowLogs[1].name: \"static\" is the static exporter's name"),
            "{e}"
        );
    }
}
