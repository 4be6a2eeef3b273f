//! L7 rules compiled for matching: regexes built once, anchored as Cilium
//! anchors them (`^(?:pattern)$`), Kafka names resolved to numbers.

use std::collections::BTreeMap;

use regex::bytes::Regex;

use super::kafka;
use super::request::{FieldValue, L7Request};
use crate::policy::cnp::{HttpRule, KafkaRule};

/// Compiles `pattern` anchored at both ends. Patterns were checked when the
/// policy was parsed; one that still fails becomes `None`, which the callers
/// turn into a rule that matches nothing (fail closed).
fn anchored(pattern: &str) -> Option<Regex> {
    match Regex::new(&format!("^(?:{pattern})$")) {
        Ok(re) => Some(re),
        Err(err) => {
            tracing::warn!(%pattern, error = %err, "L7 rule pattern does not compile; the rule matches nothing");
            None
        }
    }
}

/// A pattern that failed to compile matches nothing.
#[derive(Debug, Clone)]
enum Pattern {
    Regex(Regex),
    Never,
}

impl Pattern {
    fn new(pattern: &str) -> Self {
        anchored(pattern).map_or(Self::Never, Self::Regex)
    }

    fn matches(&self, bytes: &[u8]) -> bool {
        match self {
            Self::Regex(re) => re.is_match(bytes),
            Self::Never => false,
        }
    }
}

/// A rule field that is set: an empty string means unset, as in Cilium.
fn set(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|s| !s.is_empty())
}

/// Whether an HTTP rule restricts nothing (`{}`).
pub(crate) fn http_rule_is_empty(rule: &HttpRule) -> bool {
    set(&rule.method).is_none()
        && set(&rule.path).is_none()
        && set(&rule.host).is_none()
        && rule.headers.as_ref().is_none_or(Vec::is_empty)
}

/// Whether a Kafka rule restricts nothing (`{}`).
pub(crate) fn kafka_rule_is_empty(rule: &KafkaRule) -> bool {
    [
        &rule.role,
        &rule.api_key,
        &rule.api_version,
        &rule.client_id,
        &rule.topic,
    ]
    .into_iter()
    .all(|f| set(f).is_none())
}

/// `rules.http[i]`.
#[derive(Debug, Clone)]
pub(crate) struct HttpMatcher {
    method: Option<Pattern>,
    path: Option<Pattern>,
    host: Option<Pattern>,
    /// (name, exact value or presence only).
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl HttpMatcher {
    pub(crate) fn new(rule: &HttpRule) -> Self {
        Self {
            method: set(&rule.method).map(Pattern::new),
            path: set(&rule.path).map(Pattern::new),
            host: set(&rule.host).map(Pattern::new),
            headers: rule
                .headers
                .iter()
                .flatten()
                .map(|h| {
                    let (name, value) = split_header(h);
                    (name.to_string(), value.map(|v| v.as_bytes().to_vec()))
                })
                .collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.path.is_none()
            && self.host.is_none()
            && self.headers.is_empty()
    }

    pub(crate) fn matches(&self, req: &dyn L7Request) -> bool {
        let text = |p: &Option<Pattern>, field: &str| match p {
            None => true,
            Some(p) => match req.value(field) {
                Some(v) => p.matches(&v.text_form()),
                None => false,
            },
        };
        text(&self.method, "method")
            && text(&self.path, "path")
            && text(&self.host, "host")
            && self.headers.iter().all(|(name, value)| {
                let found = req.headers(name);
                match value {
                    None => !found.is_empty(),
                    Some(v) => found.contains(&v.as_slice()),
                }
            })
    }
}

/// Splits a header rule: `Name: value` (exact value), `Name value` (Cilium's
/// space-separated form), or `Name` (presence).
pub(crate) fn split_header(rule: &str) -> (&str, Option<&str>) {
    let rule = rule.trim();
    if let Some((name, value)) = rule.split_once(':') {
        return (name.trim(), Some(value.trim()));
    }
    match rule.split_once([' ', '\t']) {
        Some((name, value)) => (name, Some(value.trim())),
        None => (rule, None),
    }
}

/// `rules.kafka[i]`.
#[derive(Debug, Clone)]
pub(crate) struct KafkaMatcher {
    /// `None`: any API key. An unknown name gives an empty list (matches nothing).
    api_keys: Option<Vec<u16>>,
    /// `None`: any version. An invalid version gives `Some(None)` (matches nothing).
    api_version: Option<Option<u64>>,
    client_id: Option<String>,
    pub(crate) topic: Option<String>,
}

impl KafkaMatcher {
    pub(crate) fn new(rule: &KafkaRule) -> Self {
        let nonempty = |s: &Option<String>| set(s).map(str::to_string);
        let api_keys = match (set(&rule.role), set(&rule.api_key)) {
            (Some(role), _) => Some(kafka::role(role).map(<[u16]>::to_vec).unwrap_or_default()),
            (None, Some(key)) => Some(kafka::api_key(key).into_iter().collect()),
            (None, None) => None,
        };
        Self {
            api_keys,
            api_version: nonempty(&rule.api_version).map(|v| v.parse::<u16>().ok().map(u64::from)),
            client_id: nonempty(&rule.client_id),
            topic: nonempty(&rule.topic),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.api_keys.is_none()
            && self.api_version.is_none()
            && self.client_id.is_none()
            && self.topic.is_none()
    }

    /// Everything but the topic: API key (or role), version, client id.
    pub(crate) fn matches_header(&self, req: &KafkaView<'_>) -> bool {
        if let Some(keys) = &self.api_keys
            && !req
                .api_key
                .is_some_and(|k| keys.iter().any(|x| u64::from(*x) == k))
        {
            return false;
        }
        if let Some(version) = &self.api_version
            && (version.is_none() || *version != req.api_version)
        {
            return false;
        }
        if let Some(client) = &self.client_id
            && req.client_id != Some(client.as_bytes())
        {
            return false;
        }
        true
    }
}

/// The Kafka fields of a request, read once per decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaView<'a> {
    pub(crate) api_key: Option<u64>,
    pub(crate) api_version: Option<u64>,
    pub(crate) client_id: Option<&'a [u8]>,
    /// Topic names the parser reported (deduplicated).
    pub(crate) topics: Vec<&'a [u8]>,
    /// Whether `topics` is every topic the request names.
    pub(crate) topics_complete: bool,
}

impl<'a> KafkaView<'a> {
    /// Reads the kafka plugin's fields (`api-key`, `api-version`, `client-id`,
    /// `topic`, `topics`).
    pub(crate) fn new(req: &'a dyn L7Request) -> Self {
        let api_key = req.value("api-key").and_then(|v| v.as_unsigned());
        let mut topics: Vec<&[u8]> = Vec::new();
        for v in req.values("topic") {
            if let FieldValue::Text(t) | FieldValue::Bytes(t) = v
                && !topics.contains(&t)
            {
                topics.push(t);
            }
        }
        let count = req.value("topics").and_then(|v| v.as_unsigned());
        let topics_complete = match count {
            // More topics than names seen: some were not reported.
            Some(n) => usize::try_from(n).is_ok_and(|n| n <= topics.len()),
            // No count: complete only if names were reported or the API names none.
            None => {
                !topics.is_empty()
                    || api_key
                        .is_some_and(|k| u16::try_from(k).is_ok_and(|k| !kafka::names_topics(k)))
            }
        };
        Self {
            api_key,
            api_version: req.value("api-version").and_then(|v| v.as_unsigned()),
            client_id: match req.value("client-id") {
                Some(FieldValue::Text(t) | FieldValue::Bytes(t)) => Some(t),
                _ => None,
            },
            topics,
            topics_complete,
        }
    }
}

/// `rules.l7[i]`: field → pattern, all must match.
#[derive(Debug, Clone)]
pub(crate) struct GenericMatcher {
    fields: Vec<(String, Pattern)>,
}

impl GenericMatcher {
    pub(crate) fn new(rule: &BTreeMap<String, String>) -> Self {
        Self {
            fields: rule
                .iter()
                .map(|(f, p)| (f.clone(), Pattern::new(p)))
                .collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Every field named must be present, and each of its values must match
    /// (a field carried several times cannot sneak a second value past a rule).
    pub(crate) fn matches(&self, req: &dyn L7Request) -> bool {
        self.fields.iter().all(|(name, pattern)| {
            let values = req.values(name);
            !values.is_empty() && values.iter().all(|v| pattern.matches(&v.text_form()))
        })
    }
}
