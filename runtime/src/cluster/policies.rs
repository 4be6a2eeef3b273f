//! Policies from the API server: `CiliumNetworkPolicy` and
//! `CiliumClusterwideNetworkPolicy` (`cilium.io/v2`), and Loupe's
//! `LoupeNetworkPolicy` / `LoupeClusterwideNetworkPolicy` (`loupe.dev/v1`: the same
//! schema, plus the plugin rules `l7proto` / `l7` that Cilium 1.20's CRD schemas
//! no longer carry). Each object goes through the parser and L7 schema checks of
//! `loupe policy apply`; the valid ones are the source `kubernetes`'s full listing,
//! which replaces that source's policies in one regeneration.
//!
//! An invalid object (or a new version of one) is reported — a log line, the
//! `loupe_kubernetes_policy_errors_total` counter and the `policy/kubernetes`
//! status line — and its previous valid version stays in force. A kind whose CRD
//! is not installed (`404`) holds no objects; Loupe's own objects also get a
//! `Valid` condition in their `status` saying so; any other API error (no RBAC, no
//! server) leaves the policies in force untouched until the watch recovers.
//! When the same `namespace/name` exists as a Cilium and a Loupe kind, Loupe's
//! wins (the Loupe kind is where a CNP moves to keep its plugin rules).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

use crate::control::ControlPlane;
use crate::endpoint::kubernetes::KubernetesStats;
use crate::health::{ComponentState, Health};
use crate::metrics::{MetricFamily, MetricKind};
use crate::policy::l7::{SchemaSource, validate_l7};
use crate::policy::{Policy, parse_policies};

/// The policy source name of every policy read from the API server.
pub const SOURCE: &str = "kubernetes";
/// The component the watch reports under in `loupe status`.
pub const HEALTH_COMPONENT: &str = "policy/kubernetes";
/// API group of Loupe's policy kinds.
pub const LOUPE_GROUP: &str = "loupe.dev";
/// API version of Loupe's policy kinds.
pub const LOUPE_VERSION: &str = "v1";
/// What `kubectl apply` records of the object it sent.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// How often objects refused for a reason outside them (a plugin not installed
/// yet) and a failed regeneration are tried again.
const RETRY: Duration = Duration::from_secs(10);

/// The policy kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `cilium.io/v2` `CiliumNetworkPolicy`.
    CiliumNetworkPolicy,
    /// `cilium.io/v2` `CiliumClusterwideNetworkPolicy`.
    CiliumClusterwideNetworkPolicy,
    /// `loupe.dev/v1` `LoupeNetworkPolicy`.
    LoupeNetworkPolicy,
    /// `loupe.dev/v1` `LoupeClusterwideNetworkPolicy`.
    LoupeClusterwideNetworkPolicy,
}

impl PolicyKind {
    /// Every kind, Cilium's first (a Loupe object of the same key wins).
    pub const ALL: [Self; 4] = [
        Self::CiliumNetworkPolicy,
        Self::CiliumClusterwideNetworkPolicy,
        Self::LoupeNetworkPolicy,
        Self::LoupeClusterwideNetworkPolicy,
    ];

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Self::LoupeNetworkPolicy => "LoupeNetworkPolicy",
            Self::LoupeClusterwideNetworkPolicy => "LoupeClusterwideNetworkPolicy",
        }
    }

    /// Cluster-scoped (no namespace).
    pub fn clusterwide(self) -> bool {
        matches!(
            self,
            Self::CiliumClusterwideNetworkPolicy | Self::LoupeClusterwideNetworkPolicy
        )
    }

    /// One of Loupe's own kinds.
    pub fn is_loupe(self) -> bool {
        matches!(
            self,
            Self::LoupeNetworkPolicy | Self::LoupeClusterwideNetworkPolicy
        )
    }

    /// The Cilium kind with the same schema (what the parser reads).
    fn cilium(self) -> Self {
        match self {
            Self::LoupeNetworkPolicy => Self::CiliumNetworkPolicy,
            Self::LoupeClusterwideNetworkPolicy => Self::CiliumClusterwideNetworkPolicy,
            other => other,
        }
    }

    /// The Loupe kind that keeps what this kind's CRD may prune.
    fn loupe(self) -> Self {
        match self {
            Self::CiliumNetworkPolicy => Self::LoupeNetworkPolicy,
            Self::CiliumClusterwideNetworkPolicy => Self::LoupeClusterwideNetworkPolicy,
            other => other,
        }
    }

    /// Group, version, kind and plural for the API.
    pub fn resource(self) -> ApiResource {
        let (group, version) = if self.is_loupe() {
            (LOUPE_GROUP, LOUPE_VERSION)
        } else {
            ("cilium.io", "v2")
        };
        // `…Policy` → `…policies`, as the CRDs name their resources.
        let singular = self.name().to_ascii_lowercase();
        let plural = format!("{}ies", singular.trim_end_matches('y'));
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.name()),
            &plural,
        )
    }
}

/// `namespace/name` (namespaced kinds) or `name`, as policy keys are written.
fn object_key(kind: PolicyKind, obj: &DynamicObject) -> String {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    if kind.clusterwide() {
        name.to_string()
    } else {
        let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
        format!("{ns}/{name}")
    }
}

/// The object as a policy, or why it is refused: the policy parser's field-path
/// errors, the installed plugins' L7 schemas, and fields the API server pruned.
pub fn evaluate(
    kind: PolicyKind,
    obj: &DynamicObject,
    schemas: &dyn SchemaSource,
) -> Result<Policy, String> {
    let key = object_key(kind, obj);
    let refuse = |what: String| format!("{} {key}: {what}", kind.name());
    let Some(name) = obj.metadata.name.as_deref() else {
        return Err(refuse("metadata.name: missing".into()));
    };
    if !kind.is_loupe() {
        let pruned = pruned_fields(obj);
        if !pruned.is_empty() {
            let shown: Vec<&str> = pruned.iter().take(3).map(String::as_str).collect();
            let more = pruned.len().saturating_sub(shown.len());
            return Err(refuse(format!(
                "the API server dropped {}{} that `kubectl apply` sent: the installed {} \
                 CRD's schema prunes them (Cilium 1.20 and later have no Kafka rules and no \
                 `l7proto` / `l7`); move the policy unchanged into a {} ({LOUPE_GROUP}/{LOUPE_VERSION}), \
                 whose schema keeps them",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                kind.name(),
                kind.loupe().name(),
            )));
        }
    }
    let mut metadata = json!({ "name": name });
    if !kind.clusterwide() {
        metadata["namespace"] = json!(obj.metadata.namespace.as_deref().unwrap_or("default"));
    }
    if let Some(labels) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata["labels"] = json!(labels);
    }
    let mut document = json!({
        "apiVersion": "cilium.io/v2",
        "kind": kind.cilium().name(),
        "metadata": metadata,
    });
    for field in ["spec", "specs"] {
        if let Some(value) = obj.data.get(field).filter(|v| !v.is_null()) {
            document[field] = value.clone();
        }
    }
    let mut policies = parse_policies(SOURCE, &document.to_string())
        .map_err(|e| refuse(format!("{}: {}", e.field, e.message)))?;
    let policy = match (policies.pop(), policies.is_empty()) {
        (Some(policy), true) => policy,
        _ => return Err(refuse("not exactly one policy".into())),
    };
    validate_l7(&policy, schemas).map_err(|e| refuse(format!("{}: {}", e.field, e.message)))?;
    Ok(policy)
}

/// Fields of `spec` / `specs` in the object `kubectl apply` last sent (its
/// annotation) that the stored object lacks: what a CRD schema pruned.
fn pruned_fields(obj: &DynamicObject) -> Vec<String> {
    let Some(applied) = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for field in ["spec", "specs"] {
        if let Some(sent) = applied.get(field) {
            let kept = obj.data.get(field).unwrap_or(&Value::Null);
            missing(sent, kept, field.to_string(), &mut out);
        }
    }
    out
}

fn missing(sent: &Value, kept: &Value, path: String, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(sent), Value::Object(kept)) => {
            for (k, v) in sent {
                match kept.get(k) {
                    Some(kv) => missing(v, kv, format!("{path}.{k}"), out),
                    None if !v.is_null() => out.push(format!("{path}.{k}")),
                    None => {}
                }
            }
        }
        (Value::Array(sent), Value::Array(kept)) if sent.len() == kept.len() => {
            for (i, (s, k)) in sent.iter().zip(kept).enumerate() {
                missing(s, k, format!("{path}[{i}]"), out);
            }
        }
        (s, Value::Null) if !s.is_null() => out.push(path),
        _ => {}
    }
}

/// One object as last seen: its newest valid version and why the newest
/// version (if different) is refused.
#[derive(Debug, Clone)]
struct Entry {
    object: DynamicObject,
    good: Option<Policy>,
    error: Option<String>,
}

/// A kind's objects.
#[derive(Debug, Default)]
struct KindState {
    /// Listed once (or known not to exist: its CRD is not installed).
    listed: bool,
    /// The CRD is not installed.
    absent: bool,
    /// Objects of a relist in progress.
    relist: Option<Vec<DynamicObject>>,
    objects: BTreeMap<String, Entry>,
}

/// The counters exported as metrics.
#[derive(Debug, Default)]
pub struct PolicyWatchStats {
    errors: [AtomicU64; 4],
    valid: [AtomicU64; 4],
    invalid: [AtomicU64; 4],
}

impl PolicyWatchStats {
    /// `loupe_kubernetes_policy_errors_total{kind}` and
    /// `loupe_kubernetes_policies{kind,valid}`.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut errors = MetricFamily::new(
            "loupe_kubernetes_policy_errors_total",
            "Policy objects (new versions) from the API server that were refused.",
            MetricKind::Counter,
        );
        let mut objects = MetricFamily::new(
            "loupe_kubernetes_policies",
            "Policy objects from the API server, by whether their newest version is in force.",
            MetricKind::Gauge,
        );
        for (i, kind) in PolicyKind::ALL.iter().enumerate() {
            let load = |a: &[AtomicU64; 4]| a[i].load(Ordering::Relaxed) as f64;
            errors = errors.value(&[("kind", kind.name())], load(&self.errors));
            objects = objects
                .value(
                    &[("kind", kind.name()), ("valid", "true")],
                    load(&self.valid),
                )
                .value(
                    &[("kind", kind.name()), ("valid", "false")],
                    load(&self.invalid),
                );
        }
        vec![errors, objects]
    }
}

/// What the watch needs from the agent.
pub struct PolicyWatch {
    /// Where listings are applied.
    pub control: Arc<ControlPlane>,
    /// The installed plugins' L7 schemas.
    pub schemas: Arc<dyn SchemaSource + Send + Sync>,
    /// Where the watch reports its state.
    pub health: Arc<Health>,
    /// Counters for the metrics.
    pub stats: Arc<PolicyWatchStats>,
    /// Where API errors are counted.
    pub api_stats: Arc<KubernetesStats>,
    /// This node's name (the reporter of the Events it records).
    pub node: String,
}

type KindEvent = (
    PolicyKind,
    Result<watcher::Event<DynamicObject>, watcher::Error>,
);

/// Watches the four policy kinds and keeps the `kubernetes` source's policies in
/// force equal to their valid objects, until the task is dropped.
pub async fn watch(client: kube::Client, w: PolicyWatch) {
    let streams = PolicyKind::ALL.map(|kind| {
        let api = Api::<DynamicObject>::all_with(client.clone(), &kind.resource());
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| (kind, e))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut statuses = StatusWriter::new(client, &w.node);
    let mut state = Watch::new(w);
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    state.report();
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return };
                state.event(event);
            }
            _ = retry.tick() => state.retry(),
        }
        state.sync().await;
        statuses.write(&state).await;
    }
}

/// The `Valid` condition the agent writes in the `status` of Loupe's own policy
/// objects (Loupe owns those CRDs; Cilium's objects get a log line and a metric
/// only): `True` when the object's newest version is in force, `False` with the
/// reason it was refused. Every node judges an object the same way, so they all
/// write the same condition; a node writes only what the object does not say yet.
/// The node that writes a refused object's condition also records a `Warning`
/// Event on it (`kubectl describe` shows it), as controllers do.
struct StatusWriter {
    client: kube::Client,
    /// What this node last wrote, by kind and key, until the watch shows it.
    written: BTreeMap<(PolicyKind, String), Value>,
    events: kube::runtime::events::Recorder,
}

impl StatusWriter {
    fn new(client: kube::Client, node: &str) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "loupe-agent".into(),
            instance: Some(node.to_string()),
        };
        Self {
            events: kube::runtime::events::Recorder::new(client.clone(), reporter),
            client,
            written: BTreeMap::new(),
        }
    }

    async fn write(&mut self, state: &Watch) {
        let mut due = Vec::new();
        for (kind, ks) in state.kinds.iter().filter(|(k, _)| k.is_loupe()) {
            for (key, entry) in &ks.objects {
                let wanted = condition(entry);
                let shown = entry
                    .object
                    .data
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "Valid"));
                let same = |c: &Value| {
                    ["status", "reason", "message", "observedGeneration"]
                        .iter()
                        .all(|f| c[f] == wanted[f])
                };
                let memo = (*kind, key.clone());
                if shown.is_some_and(same) || self.written.get(&memo).is_some_and(same) {
                    continue;
                }
                due.push((*kind, key.clone(), entry.object.clone(), wanted));
            }
        }
        self.written.retain(|(kind, key), _| {
            state
                .kinds
                .get(kind)
                .is_some_and(|k| k.objects.contains_key(key))
        });
        for (kind, key, object, wanted) in due {
            let name = object.metadata.name.clone().unwrap_or_default();
            let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
                Some(ns) if !kind.clusterwide() => {
                    Api::namespaced_with(self.client.clone(), ns, &kind.resource())
                }
                _ => Api::all_with(self.client.clone(), &kind.resource()),
            };
            let patch = json!({"status": {"conditions": [wanted]}});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if wanted["status"] == "False" {
                        self.record_refusal(kind, &object, &wanted).await;
                    }
                    self.written.insert((kind, key), wanted);
                }
                Err(err) => {
                    tracing::warn!(kind = kind.name(), policy = %key, error = %err, "writing the policy's status");
                }
            }
        }
    }
}

impl StatusWriter {
    async fn record_refusal(&self, kind: PolicyKind, object: &DynamicObject, condition: &Value) {
        use kube::runtime::events::{Event, EventType};
        let mut note = condition["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidPolicy".into(),
            note: Some(note),
            action: "Validate".into(),
            secondary: None,
        };
        let reference = kube::Resource::object_ref(object, &kind.resource());
        if let Err(err) = self.events.publish(&event, &reference).await {
            tracing::warn!(kind = kind.name(), error = %err, "recording an event on the policy");
        }
    }
}

/// The `Valid` condition for an object's newest version.
fn condition(entry: &Entry) -> Value {
    let (status, reason, message) = match &entry.error {
        None => ("True", "Valid", "in force".to_string()),
        Some(e) => (
            "False",
            "Invalid",
            format!(
                "{e}{}",
                if entry.good.is_some() {
                    " (the previous valid version stays in force)"
                } else {
                    ""
                }
            ),
        ),
    };
    json!({
        "type": "Valid",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": entry.object.metadata.generation,
        "lastTransitionTime": now_rfc3339(),
    })
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

struct Watch {
    w: PolicyWatch,
    kinds: BTreeMap<PolicyKind, KindState>,
    /// The listing last applied, to skip regenerations that change nothing.
    applied: Option<Vec<Policy>>,
    /// The last regeneration's error, until one succeeds.
    sync_error: Option<String>,
    /// The last API error per kind, until its watch recovers.
    api_errors: BTreeMap<PolicyKind, String>,
}

impl Watch {
    fn new(w: PolicyWatch) -> Self {
        Self {
            w,
            kinds: PolicyKind::ALL
                .into_iter()
                .map(|k| (k, KindState::default()))
                .collect(),
            applied: None,
            sync_error: None,
            api_errors: BTreeMap::new(),
        }
    }

    fn event(&mut self, (kind, event): KindEvent) {
        let Some(ks) = self.kinds.get_mut(&kind) else {
            return;
        };
        match event {
            Ok(event) => {
                // A (re)list starting (`Init`) proves nothing yet: the kind stays
                // absent, or in error, until the API answers with objects.
                if !matches!(event, watcher::Event::Init) {
                    self.api_errors.remove(&kind);
                    ks.absent = false;
                }
                match event {
                    watcher::Event::Init => ks.relist = Some(Vec::new()),
                    watcher::Event::InitApply(obj) => ks.relist.get_or_insert_default().push(obj),
                    watcher::Event::InitDone => {
                        let objects = ks.relist.take().unwrap_or_default();
                        let mut previous = std::mem::take(&mut ks.objects);
                        for obj in objects {
                            let key = object_key(kind, &obj);
                            let entry = judge(
                                kind,
                                obj,
                                previous.remove(&key),
                                self.w.schemas.as_ref(),
                                &self.w.stats,
                            );
                            ks.objects.insert(key, entry);
                        }
                        ks.listed = true;
                    }
                    watcher::Event::Apply(obj) => {
                        let key = object_key(kind, &obj);
                        let previous = ks.objects.remove(&key);
                        let entry =
                            judge(kind, obj, previous, self.w.schemas.as_ref(), &self.w.stats);
                        ks.objects.insert(key, entry);
                    }
                    watcher::Event::Delete(obj) => {
                        let key = object_key(kind, &obj);
                        if ks.objects.remove(&key).is_some() {
                            tracing::info!(kind = kind.name(), policy = %key, "policy deleted in the API");
                        }
                    }
                }
            }
            Err(err) if not_installed(&err) => {
                self.api_errors.remove(&kind);
                if !ks.absent {
                    tracing::info!(
                        kind = kind.name(),
                        "no such resource in the API (its CRD is not installed): no policies of this kind"
                    );
                }
                // Deleting a CRD deletes its objects.
                ks.absent = true;
                ks.listed = true;
                ks.relist = None;
                ks.objects.clear();
            }
            Err(err) => {
                self.w.api_stats.api_error("policies");
                tracing::warn!(kind = kind.name(), error = %err, "policy watch");
                self.api_errors.insert(kind, err.to_string());
            }
        }
        self.count();
    }

    /// Objects refused for a reason outside them (a plugin installed since) are
    /// judged again.
    fn retry(&mut self) {
        for (kind, ks) in &mut self.kinds {
            for entry in ks.objects.values_mut() {
                if entry.error.is_some() {
                    let object = entry.object.clone();
                    *entry = judge(
                        *kind,
                        object,
                        Some(entry.clone()),
                        self.w.schemas.as_ref(),
                        &self.w.stats,
                    );
                }
            }
        }
        self.count();
        if self.sync_error.is_some() {
            // Try the failed regeneration again.
            self.applied = None;
        }
    }

    fn count(&self) {
        for (i, kind) in PolicyKind::ALL.iter().enumerate() {
            let objects = self.kinds.get(kind).map(|k| &k.objects);
            let invalid = objects.map_or(0, |o| o.values().filter(|e| e.error.is_some()).count());
            let all = objects.map_or(0, BTreeMap::len);
            self.w.stats.valid[i].store((all - invalid) as u64, Ordering::Relaxed);
            self.w.stats.invalid[i].store(invalid as u64, Ordering::Relaxed);
        }
    }

    /// The policies in force for the current objects, once every kind is listed.
    fn listing(&self) -> Option<Vec<Policy>> {
        if !self.kinds.values().all(|k| k.listed) {
            return None;
        }
        let mut by_key: BTreeMap<String, Policy> = BTreeMap::new();
        for ks in self.kinds.values() {
            for entry in ks.objects.values() {
                if let Some(policy) = &entry.good {
                    by_key.insert(policy.key(), policy.clone());
                }
            }
        }
        Some(by_key.into_values().collect())
    }

    async fn sync(&mut self) {
        if let Some(listing) = self.listing()
            && self.applied.as_ref() != Some(&listing)
        {
            match self.w.control.sync_policies(SOURCE, listing.clone()).await {
                Ok(outcome) => {
                    tracing::info!(
                        policies = listing.len(),
                        entries = outcome.entries,
                        revision = outcome.revision,
                        "policies from the API server in force"
                    );
                    self.sync_error = None;
                    self.applied = Some(listing);
                }
                Err(err) => {
                    tracing::error!(error = %err, "policies from the API server refused; the previous ones stay in force");
                    self.sync_error = Some(err.to_string());
                    self.applied = Some(listing);
                }
            }
        }
        self.report();
    }

    fn report(&self) {
        let (state, detail) = self.status();
        self.w.health.set(HEALTH_COMPONENT, state, detail);
    }

    fn status(&self) -> (ComponentState, String) {
        if let Some((kind, err)) = self.api_errors.iter().next() {
            return (
                ComponentState::Error,
                format!("API: {}: {err}", kind.name()),
            );
        }
        let waiting: Vec<&str> = self
            .kinds
            .iter()
            .filter(|(_, k)| !k.listed)
            .map(|(kind, _)| kind.name())
            .collect();
        if !waiting.is_empty() {
            return (
                ComponentState::Error,
                format!("listing {}", waiting.join(", ")),
            );
        }
        if let Some(err) = &self.sync_error {
            return (
                ComponentState::Error,
                format!("regeneration refused: {err}"),
            );
        }
        let objects: usize = self.kinds.values().map(|k| k.objects.len()).sum();
        let invalid: Vec<&String> = self
            .kinds
            .values()
            .flat_map(|k| k.objects.values())
            .filter_map(|e| e.error.as_ref())
            .collect();
        let absent: Vec<&str> = self
            .kinds
            .iter()
            .filter(|(_, k)| k.absent)
            .map(|(kind, _)| kind.name())
            .collect();
        let mut detail = format!(
            "in force: {} from {objects} objects",
            self.applied.as_ref().map_or(0, Vec::len)
        );
        if !absent.is_empty() {
            detail.push_str(&format!("; not installed: {}", absent.join(", ")));
        }
        match invalid.first() {
            // The policies in force are right; someone should fix the objects.
            Some(first) => (
                ComponentState::Warning,
                format!(
                    "{detail}; {} invalid, previous versions kept: {first}",
                    invalid.len()
                ),
            ),
            None => (ComponentState::Ok, detail),
        }
    }
}

/// An object's new version judged: in force when valid, else refused with its
/// previous valid version kept.
fn judge(
    kind: PolicyKind,
    object: DynamicObject,
    previous: Option<Entry>,
    schemas: &dyn SchemaSource,
    stats: &PolicyWatchStats,
) -> Entry {
    match evaluate(kind, &object, schemas) {
        Ok(policy) => Entry {
            object,
            good: Some(policy),
            error: None,
        },
        Err(error) => {
            let repeated = previous
                .as_ref()
                .and_then(|p| p.error.as_ref())
                .is_some_and(|e| *e == error);
            if !repeated {
                tracing::warn!(error = %error, "policy object refused; its previous version stays in force");
                if let Some(i) = PolicyKind::ALL.iter().position(|k| *k == kind) {
                    stats.errors[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            Entry {
                object,
                good: previous.and_then(|p| p.good),
                error: Some(error),
            }
        }
    }
}

/// The resource does not exist in the API: its CRD is not installed.
fn not_installed(err: &watcher::Error) -> bool {
    let api = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
        _ => return false,
    };
    api.code == 404
}

#[cfg(test)]
mod tests;
