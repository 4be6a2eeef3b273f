//! Kubernetes label selectors, with Cilium's label sources (`k8s:`, `any:`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::labels;

/// `matchLabels` and `matchExpressions`, ANDed. An empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact key = value requirements.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: Operator,
    /// Values for `In` / `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// Selector operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is not one of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Strips Cilium's label source from a selector key: `k8s:app` and `any:app` both
/// mean the Kubernetes label `app`. Other sources are reported.
pub fn plain_key(key: &str) -> Result<&str, String> {
    match key.split_once(':') {
        None => Ok(key),
        Some(("k8s" | "any", rest)) => Ok(rest),
        Some((source, _)) => Err(format!(
            "label source {source:?} in {key:?} is not supported (use k8s: or any:)"
        )),
    }
}

impl LabelSelector {
    /// Checks keys, values and operators; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (k, v) in &self.match_labels {
            let key = plain_key(k).map_err(|m| (format!("matchLabels.{k}"), m))?;
            labels::validate_label(key, v).map_err(|m| (format!("matchLabels.{k}"), m))?;
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let field = format!("matchExpressions[{i}]");
            let key = plain_key(&r.key).map_err(|m| (format!("{field}.key"), m))?;
            labels::validate_key(key).map_err(|m| (format!("{field}.key"), m))?;
            match r.operator {
                Operator::In | Operator::NotIn if r.values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {:?} needs at least one value", r.operator),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {:?} takes no values", r.operator),
                    ));
                }
                _ => {}
            }
            for v in &r.values {
                labels::validate_value(v).map_err(|m| (format!("{field}.values"), m))?;
            }
        }
        Ok(())
    }

    /// Whether the selector names a key (e.g. the namespace label).
    pub fn mentions(&self, key: &str) -> bool {
        self.match_labels.keys().any(|k| plain_key(k) == Ok(key))
            || self
                .match_expressions
                .iter()
                .any(|r| plain_key(&r.key) == Ok(key))
    }

    /// Whether `labels` (plain Kubernetes keys) satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| plain_key(k).is_ok_and(|key| labels.get(key) == Some(v)))
            && self.match_expressions.iter().all(|r| {
                let Ok(key) = plain_key(&r.key) else {
                    return false;
                };
                let value = labels.get(key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(yaml: &str) -> LabelSelector {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn match_labels_and_expressions() {
        let api = labels(&[("app", "api-service"), ("tier", "backend")]);
        let db = labels(&[("app", "db-service"), ("tier", "database")]);
        let cases = [
            ("{}", true, true),
            ("matchLabels: {app: api-service}", true, false),
            ("matchLabels: {k8s:app: api-service}", true, false),
            ("matchLabels: {any:tier: database}", false, true),
            (
                "matchExpressions: [{key: tier, operator: In, values: [backend, frontend]}]",
                true,
                false,
            ),
            (
                "matchExpressions: [{key: tier, operator: NotIn, values: [backend]}]",
                false,
                true,
            ),
            (
                "matchExpressions: [{key: zone, operator: NotIn, values: [a]}]",
                true,
                true,
            ),
            (
                "matchExpressions: [{key: tier, operator: Exists}]",
                true,
                true,
            ),
            (
                "matchExpressions: [{key: tier, operator: DoesNotExist}]",
                false,
                false,
            ),
            (
                "{matchLabels: {app: api-service}, matchExpressions: [{key: tier, operator: In, values: [database]}]}",
                false,
                false,
            ),
        ];
        for (yaml, want_api, want_db) in cases {
            let s = sel(yaml);
            assert_eq!(s.matches(&api), want_api, "{yaml} on api");
            assert_eq!(s.matches(&db), want_db, "{yaml} on db");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let e = sel("matchExpressions: [{key: tier, operator: In}]")
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "matchExpressions[0].values");
        let e = sel("matchLabels: {'bad key': x}").validate().unwrap_err();
        assert_eq!(e.0, "matchLabels.bad key");
        let e = sel("matchLabels: {reserved:host: ''}")
            .validate()
            .unwrap_err();
        assert!(e.1.contains("label source \"reserved\""), "{e:?}");
        let err =
            serde_norway::from_str::<LabelSelector>("matchExpressions: [{key: a, operator: Like}]")
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown variant `Like`"), "{err}");
    }
}
