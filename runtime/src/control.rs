//! The control plane: the endpoint registry and the policy controller behind one
//! lock. Every change to either (an endpoint source's listing, a policy applied or
//! deleted) and every read that needs both (endpoint names for a policy's selection,
//! identities for an endpoint listing) takes that lock once, so no caller can hold
//! one and wait for the other.
//!
//! What hot paths and status readers need — the endpoint snapshot flows are
//! enriched from, the L7 rules the proxy decides with, the datapath gauges, the
//! registry's summary — is published after every change and handed out here
//! without the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Mutex;

use crate::datapath::controller::{ApplyReport, Controller, ControllerError, SnapshotHandle};
use crate::datapath::metrics::DatapathGauges;
use crate::endpoint::{
    Endpoint, EndpointRegistry, EndpointSpec, Listing, RegistryError, SourceKind,
};
use crate::policy::Policy;
use crate::policy::l7::L7PolicyHandle;

/// What a policy change (or a validation) selected, with endpoints named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// Policy keys (`namespace/name`) validated, applied or deleted.
    pub policies: Vec<String>,
    /// For each policy, in the same order, the endpoints it selects (`namespace/pod`).
    pub selected: Vec<Vec<String>>,
    /// Policy map entries the change compiles to.
    pub entries: usize,
    /// The repository's revision afterwards.
    pub revision: u64,
}

/// A policy in force, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyListing {
    /// `namespace/name`.
    pub key: String,
    /// Where it was read from.
    pub source: String,
    /// The endpoints it selects (`namespace/pod`).
    pub selected: Vec<String>,
    /// The document as applied.
    pub document: String,
}

/// What one endpoint listing did.
#[derive(Debug)]
pub struct SyncReport {
    /// Endpoints the registry refused (the rest were applied).
    pub refused: Vec<RegistryError>,
    /// The regeneration of policy for the new endpoint set.
    pub regenerated: Result<(), ControllerError>,
}

/// Conntrack garbage collection, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackGc {
    /// Entries left.
    pub left: usize,
    /// Entries removed.
    pub removed: usize,
    /// The map's capacity.
    pub capacity: u32,
}

/// What the registry holds, published after every endpoint listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSummary {
    /// Endpoints in the registry.
    pub endpoints: usize,
    /// Their namespaces.
    pub namespaces: BTreeSet<String>,
}

/// The latest [`EndpointSummary`], readable without the control plane's lock.
#[derive(Debug, Clone, Default)]
pub struct SummaryHandle(Arc<RwLock<Arc<EndpointSummary>>>);

impl SummaryHandle {
    /// The summary as of the last endpoint listing.
    pub fn load(&self) -> Arc<EndpointSummary> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store(&self, summary: EndpointSummary) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(summary);
    }
}

#[derive(Debug)]
struct Inner {
    registry: EndpointRegistry,
    controller: Controller,
    /// Each source's pods on other nodes.
    remote: BTreeMap<SourceKind, Vec<EndpointSpec>>,
}

/// Endpoints, identities and policies of this node, behind one lock.
#[derive(Debug)]
pub struct ControlPlane {
    inner: Mutex<Inner>,
    snapshot: SnapshotHandle,
    l7_policy: L7PolicyHandle,
    gauges: Arc<DatapathGauges>,
    summary: SummaryHandle,
    conntrack_capacity: Option<u32>,
}

impl ControlPlane {
    /// A control plane around `controller`, with no endpoints yet.
    pub fn new(controller: Controller) -> Self {
        Self {
            snapshot: controller.snapshot(),
            l7_policy: controller.l7_policy(),
            gauges: controller.gauges(),
            summary: SummaryHandle::default(),
            conntrack_capacity: controller.datapath().map(|d| d.sizes.conntrack),
            inner: Mutex::new(Inner {
                registry: EndpointRegistry::new(),
                controller,
                remote: BTreeMap::new(),
            }),
        }
    }

    /// Whether the controller writes a kernel datapath (false: embedded, tests).
    pub fn has_datapath(&self) -> bool {
        self.conntrack_capacity.is_some()
    }

    /// The endpoint snapshot flows are enriched from (replaced after every change).
    pub fn snapshot(&self) -> SnapshotHandle {
        self.snapshot.clone()
    }

    /// The L7 rules in force (replaced after every change).
    pub fn l7_policy(&self) -> L7PolicyHandle {
        self.l7_policy.clone()
    }

    /// Gauges for the datapath's metrics collector.
    pub fn gauges(&self) -> Arc<DatapathGauges> {
        self.gauges.clone()
    }

    /// The registry's endpoint count and namespaces (replaced after every listing,
    /// even one whose regeneration failed).
    pub fn summary(&self) -> SummaryHandle {
        self.summary.clone()
    }

    /// Applies one source's full listing (a watch's re-list): the registry takes
    /// what it can of this node's pods, the pods on other nodes replace the
    /// source's earlier ones, then policy is regenerated for the new set.
    /// The listing's `assigned` are the identities the cluster gave its label
    /// sets (empty for a node-local source: identities are allocated here).
    pub async fn sync_endpoints(&self, source: SourceKind, listing: Listing) -> SyncReport {
        let mut inner = self.inner.lock().await;
        let Inner {
            registry,
            controller,
            remote,
        } = &mut *inner;
        // Keep the endpoint numbers the pinned datapath already uses.
        let pinned = controller.pinned_endpoint_ids();
        let refused = registry.sync_source(source, listing.local, |spec| {
            pinned.get(&spec.ifindex).copied()
        });
        remote.insert(source, listing.remote);
        let others: Vec<EndpointSpec> = remote.values().flatten().cloned().collect();
        let endpoints: Vec<Endpoint> = registry.list().cloned().collect();
        self.summary.store(EndpointSummary {
            endpoints: endpoints.len(),
            namespaces: endpoints.iter().map(|e| e.spec.namespace.clone()).collect(),
        });
        SyncReport {
            refused,
            regenerated: controller.set_endpoints(endpoints, others, &listing.assigned),
        }
    }

    /// Compiles `policies` as they would apply now, writing nothing.
    pub async fn validate(&self, policies: &[Policy]) -> Result<PolicyOutcome, ControllerError> {
        let mut inner = self.inner.lock().await;
        let compiled = inner.controller.validate(policies)?;
        let keys: Vec<String> = policies.iter().map(Policy::key).collect();
        let report = ApplyReport {
            selected: keys
                .iter()
                .map(|k| {
                    (
                        k.clone(),
                        compiled.selected.get(k).cloned().unwrap_or_default(),
                    )
                })
                .collect(),
            policies: keys,
            entries: compiled.entries.len(),
        };
        Ok(inner.outcome(report))
    }

    /// Applies policies (replacing those with the same key); on any error the
    /// policies in force stay.
    pub async fn apply(&self, policies: Vec<Policy>) -> Result<PolicyOutcome, ControllerError> {
        let mut inner = self.inner.lock().await;
        let report = inner.controller.apply(policies)?;
        Ok(inner.outcome(report))
    }

    /// Replaces the policies read from `source` with its full listing; on any
    /// error the policies in force stay.
    pub async fn sync_policies(
        &self,
        source: &str,
        policies: Vec<Policy>,
    ) -> Result<PolicyOutcome, ControllerError> {
        let mut inner = self.inner.lock().await;
        let report = inner.controller.sync_source(source, policies)?;
        Ok(inner.outcome(report))
    }

    /// Deletes policies by key (`namespace/name`).
    pub async fn delete(&self, keys: &[String]) -> Result<PolicyOutcome, ControllerError> {
        let mut inner = self.inner.lock().await;
        let report = inner.controller.delete(keys)?;
        Ok(inner.outcome(report))
    }

    /// The policies in force and the repository's revision.
    pub async fn policies(&self) -> (Vec<PolicyListing>, u64) {
        let inner = self.inner.lock().await;
        let compiled = inner.controller.compiled();
        let repository = inner.controller.policies();
        let listings = repository
            .policies()
            .map(|p| {
                let key = p.key();
                PolicyListing {
                    selected: compiled
                        .and_then(|c| c.selected.get(&key))
                        .into_iter()
                        .flatten()
                        .filter_map(|id| inner.registry.by_id(*id).map(|e| e.spec.key()))
                        .collect(),
                    key,
                    source: p.source.clone(),
                    document: p.document.clone(),
                }
            })
            .collect();
        (listings, repository.revision())
    }

    /// Which policies in force need a parser for each protocol their L7 rules
    /// name: protocol → `namespace/name`s.
    pub async fn l7_protocols_in_use(&self) -> BTreeMap<String, Vec<String>> {
        let inner = self.inner.lock().await;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for policy in inner.controller.policies().policies() {
            for protocol in policy.l7_protocols() {
                out.entry(protocol.to_string())
                    .or_default()
                    .push(policy.key());
            }
        }
        out
    }

    /// Every endpoint with its security identity (0 while it has none).
    pub async fn endpoints(&self) -> Vec<(Endpoint, u32)> {
        let inner = self.inner.lock().await;
        inner
            .registry
            .list()
            .map(|ep| {
                let identity = inner
                    .controller
                    .endpoint_identity(&ep.spec.key())
                    .unwrap_or(0);
                (ep.clone(), identity)
            })
            .collect()
    }

    /// Makes `ports` L7-visible everywhere (the `l7.<protocol>Protocol` switches).
    pub async fn set_l7_ports(&self, ports: &BTreeSet<u16>) -> Result<(), ControllerError> {
        let mut inner = self.inner.lock().await;
        Ok(inner.controller.set_l7_ports(ports)?)
    }

    /// Removes conntrack entries of closed and idle connections; `None` without a
    /// kernel datapath.
    pub async fn gc_conntrack(&self) -> Option<ConntrackGc> {
        let capacity = self.conntrack_capacity?;
        let (left, removed) = self.inner.lock().await.controller.gc_conntrack();
        Some(ConntrackGc {
            left,
            removed,
            capacity,
        })
    }
}

impl Inner {
    /// Names the endpoints a report selects, under the same lock that made it.
    fn outcome(&self, report: ApplyReport) -> PolicyOutcome {
        let name = |id: &u16| {
            self.registry
                .by_id(*id)
                .map(|e| e.spec.key())
                .unwrap_or_else(|| format!("endpoint {id}"))
        };
        let selected: BTreeMap<&String, Vec<String>> = report
            .selected
            .iter()
            .map(|(k, ids)| (k, ids.iter().map(name).collect()))
            .collect();
        PolicyOutcome {
            selected: report
                .policies
                .iter()
                .map(|k| selected.get(k).cloned().unwrap_or_default())
                .collect(),
            policies: report.policies.clone(),
            entries: report.entries,
            revision: self.controller.policies().revision(),
        }
    }
}
