//! Kubernetes label selectors (`app=frontend,tier in (api,web),!canary`) matched
//! against Cilium-style flow labels (`k8s:app=frontend`, `reserved:world`).
//!
//! A selector key without a source (`app`) matches the key from any source; with
//! one (`k8s:app`) only from that source, as Hubble's `--label` does.

use std::collections::BTreeSet;

/// One parsed requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses Kubernetes selector syntax; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("label selector {text:?}: empty requirement"));
            }
            requirements.push(
                parse_requirement(part).map_err(|e| format!("label selector {text:?}: {e}"))?,
            );
        }
        Ok(Self { requirements })
    }

    /// Whether labels (`[source:]key[=value]`) satisfy every requirement.
    pub fn matches<S: AsRef<str>>(&self, labels: &[S]) -> bool {
        let parsed: Vec<(Option<&str>, &str, &str)> =
            labels.iter().map(|l| split_label(l.as_ref())).collect();
        let lookup = |key: &str| -> Vec<&str> {
            let (want_source, want_key) = match key.split_once(':') {
                Some((s, k)) => (Some(s), k),
                None => (None, key),
            };
            parsed
                .iter()
                .filter(|(source, k, _)| {
                    *k == want_key && (want_source.is_none() || *source == want_source)
                })
                .map(|(_, _, v)| *v)
                .collect()
        };
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => !lookup(k).is_empty(),
            Requirement::NotExists(k) => lookup(k).is_empty(),
            Requirement::In(k, values) => lookup(k).iter().any(|v| values.contains(*v)),
            Requirement::NotIn(k, values) => lookup(k).iter().all(|v| !values.contains(*v)),
        })
    }
}

fn split_label(label: &str) -> (Option<&str>, &str, &str) {
    let (key, value) = label.split_once('=').unwrap_or((label, ""));
    match key.split_once(':') {
        Some((source, key)) => (Some(source), key, value),
        None => (None, key, value),
    }
}

fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0_i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("label selector {text:?}: unbalanced ')'"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("label selector {text:?}: unbalanced '('"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn check_key(key: &str) -> Result<String, String> {
    let bare = key.split_once(':').map_or(key, |(_, k)| k);
    if bare.is_empty()
        || !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_string())
}

fn parse_set(text: &str) -> Result<BTreeSet<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised value list, found {text:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key.trim())?));
    }
    for (op, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((key, set)) = part.split_once(op) {
            let key = check_key(key.trim())?;
            let set = parse_set(set)?;
            return Ok(if negate {
                Requirement::NotIn(key, set)
            } else {
                Requirement::In(key, set)
            });
        }
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(
            check_key(key.trim())?,
            BTreeSet::from([value.trim().to_string()]),
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::In(
            check_key(key.trim())?,
            BTreeSet::from([value.trim().to_string()]),
        ));
    }
    Ok(Requirement::Exists(check_key(part)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(selector: &str, labels: &[&str]) -> bool {
        LabelSelector::parse(selector).unwrap().matches(labels)
    }

    #[test]
    fn selector_table() {
        let pod = ["k8s:app=frontend", "k8s:tier=web", "reserved:host"];
        assert!(m("app=frontend", &pod));
        assert!(m("k8s:app=frontend", &pod));
        assert!(!m("other:app=frontend", &pod));
        assert!(m("app==frontend,tier", &pod));
        assert!(!m("app=backend", &pod));
        assert!(m("app in (backend, frontend)", &pod));
        assert!(!m("app notin (frontend)", &pod));
        assert!(m("app!=backend", &pod));
        assert!(m("!canary", &pod));
        assert!(!m("!tier", &pod));
        assert!(m("reserved:host", &pod));
        assert!(m("tier in (web),app", &pod));
    }

    #[test]
    fn bad_selectors_are_refused() {
        for bad in ["", "app in (a", "a,,b", "bad key=1", "app in a"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }
}
