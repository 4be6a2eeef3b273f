//! Cluster-wide identities: every node gives a label set the same number, by
//! allocating through the API server as Cilium's CRD identity mode does, with
//! Loupe's own cluster-scoped `LoupeIdentity` objects (`loupe.dev/v1`; Cilium's
//! operator would collect Loupe's numbers from its `CiliumIdentity` kind):
//!
//! - an object per identity, named by its number, holding the label set in
//!   `securityLabels`; a watch keeps every node's view of them;
//! - a label set with no object is created at the first free number of its
//!   hash-derived probe sequence ([`LabelSet::cluster_slot`]), the same sequence
//!   on every node, so nodes racing for a new label set race for the same name
//!   and the API server's `409 AlreadyExists` settles it: the loser reads the
//!   winner's object and uses its number;
//! - the nodes using an identity keep its `loupe.dev/last-used` annotation
//!   fresh (at most one write per identity per [`REFRESH`] across the cluster,
//!   since every node sees the others' writes); any node deletes an identity
//!   unused for [`UNUSED_FOR`], guarded by its `resourceVersion` so a refresh in
//!   between wins, and a node that finds an identity it uses deleted creates it
//!   again under the same number.
//!
//! The lab keeps the node-local allocator (`identity::IdentityAllocator`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use loupe_common::identity as reserved;
use serde_json::json;
use tokio::sync::watch;

use crate::endpoint::kubernetes::KubernetesStats;
use crate::health::{ComponentState, Health};
use crate::identity::LabelSet;

/// The component the allocator reports under in `loupe status`.
pub const HEALTH_COMPONENT: &str = "identities/kubernetes";
/// When an identity in use is marked used again.
pub const REFRESH: Duration = Duration::from_secs(600);
/// How long an identity must go unmarked before any node deletes it.
pub const UNUSED_FOR: Duration = Duration::from_secs(1800);
/// The annotation holding when a node last used an identity (RFC 3339).
pub const LAST_USED: &str = "loupe.dev/last-used";
/// Probes of the slot sequence before giving up on a label set.
const PROBES: u32 = 64;
/// How long allocation waits for the first listing of identities.
const SYNC_WAIT: Duration = Duration::from_secs(30);

/// The `LoupeIdentity` kind.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            super::policies::LOUPE_GROUP,
            super::policies::LOUPE_VERSION,
            "LoupeIdentity",
        ),
        "loupeidentities",
    )
}

/// An identity object as this node knows it.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    labels: LabelSet,
    last_used: Option<SystemTime>,
    resource_version: Option<String>,
}

#[derive(Debug, Default)]
struct Cache {
    by_id: BTreeMap<u32, Known>,
    /// Identities this node's endpoints use.
    in_use: BTreeSet<u32>,
    /// Objects of a relist in progress.
    relist: Option<BTreeMap<u32, Known>>,
}

impl Cache {
    fn by_labels(&self, labels: &LabelSet) -> Option<u32> {
        self.by_id
            .iter()
            .find(|(_, k)| k.labels == *labels)
            .map(|(id, _)| *id)
    }
}

/// Allocation failed; the endpoints wait for the next try.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    /// The identities were never listed (API server unreachable, no RBAC).
    #[error("identities not listed from the API server within {0:?}")]
    NotSynced(Duration),
    /// Every probed number belongs to other labels.
    #[error("no free identity number for {0} in {PROBES} probes")]
    Exhausted(String),
    /// The API server refused a call.
    #[error("LoupeIdentity {id}: {source}")]
    Api {
        /// The number being created or read.
        id: u32,
        /// What the API server said.
        source: kube::Error,
    },
}

/// The allocator: cheap to clone (a handle).
#[derive(Clone)]
pub struct ClusterIdentities {
    api: Api<DynamicObject>,
    cache: Arc<Mutex<Cache>>,
    synced: watch::Sender<bool>,
    /// Woken when the identities in use change (for the status line).
    used_changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for ClusterIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterIdentities({} known)", self.lock().by_id.len())
    }
}

impl ClusterIdentities {
    /// An allocator over `client`'s API server; [`run`](Self::run) keeps its view.
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all_with(client, &resource()),
            cache: Arc::default(),
            synced: watch::Sender::new(false),
            used_changed: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cluster's identities for `sets` (the label sets of this node's whole
    /// endpoint listing), creating those that have none. They become the
    /// identities this node uses, kept fresh by [`run`](Self::run).
    pub async fn ensure(&self, sets: &[LabelSet]) -> Result<Vec<(LabelSet, u32)>, AllocateError> {
        let mut synced = self.synced.subscribe();
        if tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s))
            .await
            .is_err()
        {
            return Err(AllocateError::NotSynced(SYNC_WAIT));
        }
        let mut out = Vec::with_capacity(sets.len());
        for labels in sets {
            let known = self.lock().by_labels(labels);
            let id = match known {
                Some(id) => id,
                None => self.create(labels).await?,
            };
            out.push((labels.clone(), id));
        }
        let used: BTreeSet<u32> = out.iter().map(|(_, id)| *id).collect();
        self.lock().in_use = used;
        self.used_changed.notify_one();
        self.refresh().await;
        Ok(out)
    }

    /// Creates `labels`' object at the first number of its slot sequence that is
    /// free, or finds that another node just did.
    async fn create(&self, labels: &LabelSet) -> Result<u32, AllocateError> {
        for probe in 0..PROBES {
            let id = labels.cluster_slot(probe);
            if self.lock().by_id.contains_key(&id) {
                // Known to hold other labels (ours would have been found).
                continue;
            }
            let object = object(id, labels, SystemTime::now());
            match self.api.create(&PostParams::default(), &object).await {
                Ok(created) => {
                    tracing::info!(id, labels = %labels.0.join(","), "identity created in the API");
                    self.learn(&created);
                    return Ok(id);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let existing = self
                        .api
                        .get(&id.to_string())
                        .await
                        .map_err(|source| AllocateError::Api { id, source })?;
                    self.learn(&existing);
                    if parse(&existing).is_some_and(|(_, k)| k.labels == *labels) {
                        return Ok(id);
                    }
                }
                Err(source) => return Err(AllocateError::Api { id, source }),
            }
        }
        Err(AllocateError::Exhausted(labels.0.join(",")))
    }

    fn learn(&self, obj: &DynamicObject) {
        if let Some((id, known)) = parse(obj) {
            self.lock().by_id.insert(id, known);
        }
    }

    /// Marks the identities in use whose mark is older than [`REFRESH`].
    async fn refresh(&self) {
        let now = SystemTime::now();
        let stale: Vec<u32> = {
            let cache = self.lock();
            cache
                .in_use
                .iter()
                .filter(|id| {
                    cache.by_id.get(id).is_some_and(|k| {
                        k.last_used
                            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= REFRESH)
                    })
                })
                .copied()
                .collect()
        };
        for id in stale {
            let patch = json!({"metadata": {"annotations": {LAST_USED: rfc3339(now)}}});
            match self
                .api
                .patch(
                    &id.to_string(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(obj) => self.learn(&obj),
                Err(err) => tracing::warn!(id, error = %err, "marking an identity used"),
            }
        }
    }

    /// Deletes identities nobody marked for [`UNUSED_FOR`] and this node does not
    /// use; recreates identities this node uses that someone deleted.
    async fn collect(&self) {
        let now = SystemTime::now();
        let unused: Vec<(u32, Option<String>)> = {
            let cache = self.lock();
            cache
                .by_id
                .iter()
                .filter(|(id, k)| {
                    !cache.in_use.contains(id)
                        && k.last_used.is_some_and(|t| {
                            now.duration_since(t).unwrap_or_default() >= UNUSED_FOR
                        })
                })
                .map(|(id, k)| (*id, k.resource_version.clone()))
                .collect()
        };
        for (id, resource_version) in unused {
            let params = DeleteParams::default().preconditions(Preconditions {
                resource_version,
                uid: None,
            });
            match self.api.delete(&id.to_string(), &params).await {
                Ok(_) => {
                    tracing::info!(id, "unused identity deleted from the API");
                    self.lock().by_id.remove(&id);
                }
                // Gone already, or marked used in between: nothing to do.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(err) => tracing::warn!(id, error = %err, "deleting an unused identity"),
            }
        }
    }

    /// Keeps this node's view of the identities (a watch), marks the ones in use
    /// and collects unused ones, until the task is dropped.
    pub async fn run(self, health: Arc<Health>, stats: Arc<KubernetesStats>) {
        let events = watcher(self.api.clone(), watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut tick = tokio::time::interval(REFRESH / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.set(
            HEALTH_COMPONENT,
            ComponentState::Error,
            "listing identities",
        );
        loop {
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else { return };
                    match event {
                        Ok(event) => self.apply(event).await,
                        Err(err) => {
                            stats.api_error("identities");
                            tracing::warn!(error = %err, "identity watch");
                            health.set(HEALTH_COMPONENT, ComponentState::Error, format!("API: {err}"));
                            continue;
                        }
                    }
                }
                () = self.used_changed.notified() => {}
                _ = tick.tick() => {
                    if *self.synced.borrow() {
                        self.refresh().await;
                        self.collect().await;
                    }
                }
            }
            if *self.synced.borrow() {
                let (known, used) = {
                    let c = self.lock();
                    (c.by_id.len(), c.in_use.len())
                };
                health.set(
                    HEALTH_COMPONENT,
                    ComponentState::Ok,
                    format!("{known} in the cluster, {used} used here"),
                );
            }
        }
    }

    async fn apply(&self, event: watcher::Event<DynamicObject>) {
        let deleted_in_use = {
            let mut cache = self.lock();
            match event {
                watcher::Event::Init => {
                    cache.relist = Some(BTreeMap::new());
                    None
                }
                watcher::Event::InitApply(obj) => {
                    if let Some((id, known)) = parse(&obj) {
                        cache.relist.get_or_insert_default().insert(id, known);
                    }
                    None
                }
                watcher::Event::InitDone => {
                    cache.by_id = cache.relist.take().unwrap_or_default();
                    self.synced.send_replace(true);
                    None
                }
                watcher::Event::Apply(obj) => {
                    if let Some((id, known)) = parse(&obj) {
                        cache.by_id.insert(id, known);
                    }
                    None
                }
                watcher::Event::Delete(obj) => parse(&obj).and_then(|(id, known)| {
                    cache.by_id.remove(&id);
                    cache.in_use.contains(&id).then_some((id, known.labels))
                }),
            }
        };
        // An identity this node uses was deleted (collected while this node could
        // not mark it): create it again under its number.
        if let Some((id, labels)) = deleted_in_use {
            tracing::warn!(
                id,
                "an identity in use was deleted from the API; creating it again"
            );
            match self
                .api
                .create(
                    &PostParams::default(),
                    &object(id, &labels, SystemTime::now()),
                )
                .await
            {
                Ok(obj) => self.learn(&obj),
                Err(err) => tracing::warn!(id, error = %err, "recreating an identity"),
            }
        }
    }
}

/// The object for identity `id`.
fn object(id: u32, labels: &LabelSet, now: SystemTime) -> DynamicObject {
    let mut obj = DynamicObject::new(&id.to_string(), &resource());
    obj.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "loupe".to_string(),
    )]));
    obj.metadata.annotations = Some(BTreeMap::from([(LAST_USED.to_string(), rfc3339(now))]));
    obj.data = json!({ "securityLabels": labels.0 });
    obj
}

/// An object's number and labels; `None` for what is not a valid identity.
fn parse(obj: &DynamicObject) -> Option<(u32, Known)> {
    let id: u32 = obj.metadata.name.as_deref()?.parse().ok()?;
    if !(reserved::FIRST_CLUSTER..=reserved::LAST_CLUSTER).contains(&id) {
        return None;
    }
    let mut labels: Vec<String> = obj
        .data
        .get("securityLabels")?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()?;
    labels.sort();
    let last_used = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_USED))
        .and_then(|t| parse_rfc3339(t))
        .or_else(|| {
            obj.metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| parse_rfc3339(&t.0.to_string()))
        });
    Some((
        id,
        Known {
            labels: LabelSet(labels),
            last_used,
            resource_version: obj.metadata.resource_version.clone(),
        },
    ))
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests;
