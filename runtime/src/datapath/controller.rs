//! Where policy decisions are made: the controller turns endpoints and policies into
//! the datapath's maps, and is the only writer of those maps.
//!
//! Every change goes through [`Controller::reconcile`]: identities for endpoints,
//! compile, check capacity, then write — ipcache additions first, the complete new
//! policy under the inactive generation, one flip of the active generation, then
//! removal of what is no longer needed. A policy that fails any step changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use loupe_common::{
    DatapathConfig, EndpointInfo, IpcacheValue, attribution, endpoint_flags, identity as id,
};

use super::flows::EndpointSnapshot;
use super::metrics::DatapathGauges;
use super::{Datapath, DatapathError, mapped};
use crate::config::{AgentConfig, PolicyEnforcementMode};
use crate::endpoint::{Endpoint, EndpointSpec};
use crate::identity::{IdentityAllocator, IdentityError, LabelSet};
use crate::policy::attribution::PolicyTable;
use crate::policy::l7::{L7Policy, L7PolicyHandle};
use crate::policy::repository::{PolicyRepository, StoreError};
use crate::policy::{Compiled, EndpointView, Policy, PolicyError, compile};

/// A change the controller refused or could not make.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The datapath refused a write.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// No identity could be allocated.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The policy store could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Policies named for deletion do not exist.
    #[error("no such policy: {0}")]
    NotFound(String),
}

/// Counters for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerStats {
    /// Policy generations written.
    pub regenerations: u64,
    /// Duration of the last regeneration.
    pub last_regeneration: Duration,
    /// Regenerations refused (map full, identity exhaustion, write errors).
    pub failures: u64,
    /// Policy map entries in force.
    pub policy_entries: usize,
    /// Conntrack entries at the last garbage collection.
    pub conntrack_entries: usize,
    /// Conntrack entries removed by garbage collection, in total.
    pub conntrack_collected: u64,
}

/// How long a closed connection's entry is kept (late retransmissions still match).
const CT_CLOSED_GRACE: Duration = Duration::from_secs(10);
/// Idle lifetime of a TCP entry (Cilium's default).
const CT_TCP_LIFETIME: Duration = Duration::from_secs(21_600);
/// Idle lifetime of a non-TCP entry.
const CT_ANY_LIFETIME: Duration = Duration::from_secs(60);

/// What a policy change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Policy keys applied or deleted.
    pub policies: Vec<String>,
    /// Endpoints each selects.
    pub selected: BTreeMap<String, Vec<u16>>,
    /// Policy map entries in force afterwards.
    pub entries: usize,
}

/// Owns identities, policies and the datapath's maps.
pub struct Controller {
    datapath: Option<Datapath>,
    identities: IdentityAllocator,
    policies: PolicyRepository,
    mode: PolicyEnforcementMode,
    allow_localhost: bool,
    endpoints: Vec<(Endpoint, u32)>,
    /// Pods on other nodes (endpoint number 0): peers for policy, ipcache
    /// entries and flow names, never attached to.
    remote: Vec<(Endpoint, u32)>,
    compiled: Option<Compiled>,
    ipcache: BTreeMap<([u8; 16], u32), IpcacheValue>,
    stats: ControllerStats,
    gauges: Arc<DatapathGauges>,
    snapshot: SnapshotHandle,
    /// The L7 rules in force, for the proxy.
    l7: L7PolicyHandle,
    /// Policy attribution by policy revision (modulo `attribution::REVISIONS`),
    /// for flows.
    tables: [Arc<PolicyTable>; attribution::REVISIONS],
    /// Policy map entries one generation may hold (`bpf.policyMapEntries`).
    policy_capacity: usize,
    /// The L7 proxy's port the datapath redirects to (`l7.proxyPort`, 0: none).
    proxy_port: u16,
    /// Which trace events the hooks report (`bpf.monitorAggregation`, `monitorFlags`).
    monitor: u8,
}

/// The endpoint snapshot flows are enriched from, swapped after every change.
pub type SnapshotHandle = Arc<std::sync::RwLock<Arc<EndpointSnapshot>>>;

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("datapath", &self.datapath)
            .field("endpoints", &self.endpoints.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller for `config`; with `datapath` `None` it validates and compiles
    /// but writes nothing to the kernel. Returns persisted policies that no longer
    /// parse.
    pub fn new(
        config: &AgentConfig,
        datapath: Option<Datapath>,
    ) -> Result<(Self, Vec<PolicyError>), ControllerError> {
        let identities = IdentityAllocator::open(&config.state_dir.join("identities.json"))?;
        let (policies, errors) = PolicyRepository::open(&config.state_dir.join("policies"));
        let mut ipcache = BTreeMap::new();
        if let Some(dp) = &datapath {
            // Adopt what an earlier agent wrote, so stale entries get removed.
            ipcache = dp.ipcache();
        }
        Ok((
            Self {
                datapath,
                identities,
                policies,
                mode: config.policy_enforcement_mode,
                allow_localhost: true,
                endpoints: Vec::new(),
                remote: Vec::new(),
                compiled: None,
                ipcache,
                stats: ControllerStats::default(),
                gauges: Arc::default(),
                snapshot: SnapshotHandle::default(),
                l7: L7PolicyHandle::default(),
                tables: Default::default(),
                policy_capacity: config.bpf.policy_map_entries as usize,
                proxy_port: config.l7.proxy_port,
                monitor: monitor_of(config),
            },
            errors,
        ))
    }

    /// A controller with nothing on disk and no kernel datapath (embedders, tests).
    pub fn in_memory(config: &AgentConfig) -> Self {
        Self {
            datapath: None,
            identities: IdentityAllocator::in_memory(),
            policies: PolicyRepository::in_memory(),
            mode: config.policy_enforcement_mode,
            allow_localhost: true,
            endpoints: Vec::new(),
            remote: Vec::new(),
            compiled: None,
            ipcache: BTreeMap::new(),
            stats: ControllerStats::default(),
            gauges: Arc::default(),
            snapshot: SnapshotHandle::default(),
            l7: L7PolicyHandle::default(),
            tables: Default::default(),
            policy_capacity: config.bpf.policy_map_entries as usize,
            proxy_port: config.l7.proxy_port,
            monitor: monitor_of(config),
        }
    }

    /// Gauges for the metrics collector.
    pub fn gauges(&self) -> Arc<DatapathGauges> {
        self.gauges.clone()
    }

    /// The endpoint snapshot handle for flow enrichment.
    pub fn snapshot(&self) -> SnapshotHandle {
        self.snapshot.clone()
    }

    /// The L7 rules in force, replaced after every change (cheap to load from
    /// any thread).
    pub fn l7_policy(&self) -> L7PolicyHandle {
        self.l7.clone()
    }

    fn publish(&self) {
        let cidrs = self.compiled.iter().flat_map(|c| c.cidrs.values().copied());
        let snap = EndpointSnapshot::build(
            self.endpoints.iter().chain(&self.remote),
            |id| self.identity_labels(id),
            cidrs,
        )
        .with_policies(self.tables.clone());
        if let Ok(mut guard) = self.snapshot.write() {
            *guard = Arc::new(snap);
        }
        let g = &self.gauges;
        g.policy_entries
            .store(self.stats.policy_entries as u64, Ordering::Relaxed);
        g.policy_capacity.store(
            self.datapath
                .as_ref()
                .map(|d| u64::from(d.sizes.policy))
                .unwrap_or(0),
            Ordering::Relaxed,
        );
        g.ct_capacity.store(
            self.datapath
                .as_ref()
                .map(|d| u64::from(d.sizes.conntrack))
                .unwrap_or(0),
            Ordering::Relaxed,
        );
        g.identities
            .store(self.identities.len() as u64, Ordering::Relaxed);
        g.policies
            .store(self.policies.policies().count() as u64, Ordering::Relaxed);
        g.endpoints
            .store(self.endpoints.len() as u64, Ordering::Relaxed);
    }

    /// Endpoint numbers the pinned datapath already uses, by interface index, so a
    /// restarted agent keeps them.
    pub fn pinned_endpoint_ids(&self) -> BTreeMap<u32, u16> {
        self.datapath
            .as_ref()
            .map(|dp| {
                dp.endpoints()
                    .into_iter()
                    .map(|(i, e)| (i, e.ep_id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the kernel datapath is loaded.
    pub fn has_datapath(&self) -> bool {
        self.datapath.is_some()
    }

    /// The datapath, for readers (counters, events).
    pub fn datapath_mut(&mut self) -> Option<&mut Datapath> {
        self.datapath.as_mut()
    }

    /// The datapath, read-only.
    pub fn datapath(&self) -> Option<&Datapath> {
        self.datapath.as_ref()
    }

    /// Makes exactly `ports` L7-visible without policy (no-op without a datapath).
    pub fn set_l7_ports(
        &mut self,
        ports: &std::collections::BTreeSet<u16>,
    ) -> Result<(), super::DatapathError> {
        match self.datapath.as_mut() {
            Some(dp) => dp.set_l7_ports(ports),
            None => Ok(()),
        }
    }

    /// Statistics.
    pub fn stats(&self) -> &ControllerStats {
        &self.stats
    }

    /// The policies in force.
    pub fn policies(&self) -> &PolicyRepository {
        &self.policies
    }

    /// What the last successful compilation produced.
    pub fn compiled(&self) -> Option<&Compiled> {
        self.compiled.as_ref()
    }

    /// The identity of an endpoint (by `namespace/pod`).
    pub fn endpoint_identity(&self, key: &str) -> Option<u32> {
        self.endpoints
            .iter()
            .find(|(e, _)| e.spec.key() == key)
            .map(|(_, i)| *i)
    }

    /// Labels of an identity, as `source:key=value`.
    pub fn identity_labels(&self, identity: u32) -> Vec<String> {
        self.identities
            .labels(identity)
            .map(|l| l.0)
            .unwrap_or_default()
    }

    /// Number of identities allocated.
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// Replaces the endpoint set (this node's pods, and `remote`: pods on other
    /// nodes) and re-applies policy. `assigned` are identities the cluster
    /// assigned to label sets (empty for a node-local allocator).
    pub fn set_endpoints(
        &mut self,
        endpoints: Vec<Endpoint>,
        remote: Vec<EndpointSpec>,
        assigned: &[(LabelSet, u32)],
    ) -> Result<(), ControllerError> {
        for (labels, id) in assigned {
            self.identities.assign(labels, *id);
        }
        let local_ips: BTreeSet<IpAddr> = endpoints.iter().flat_map(|e| e.spec.ips()).collect();
        let mut with_ids = Vec::with_capacity(endpoints.len());
        let mut remote_ids = Vec::with_capacity(remote.len());
        let remote = remote
            .into_iter()
            // An address this node's pod has is this node's.
            .filter(|spec| !spec.ips().any(|ip| local_ips.contains(&ip)))
            .map(|spec| (Endpoint { id: 0, spec }, true));
        for (ep, is_remote) in endpoints.into_iter().map(|e| (e, false)).chain(remote) {
            let labels = LabelSet::from_k8s(&ep.spec.identity_labels());
            match self.identities.endpoint_identity(&labels) {
                Ok(identity) if is_remote => remote_ids.push((ep, identity)),
                Ok(identity) => with_ids.push((ep, identity)),
                Err(e) => {
                    self.identities.rollback();
                    return Err(e.into());
                }
            }
        }
        let previous = std::mem::replace(&mut self.endpoints, with_ids);
        let previous_remote = std::mem::replace(&mut self.remote, remote_ids);
        let policies = self.policies.to_vec();
        if let Err(e) = self.reconcile(&policies, self.policies.revision()) {
            self.endpoints = previous;
            self.remote = previous_remote;
            return Err(e);
        }
        Ok(())
    }

    /// Compiles `policies` as they would apply now, without writing anything: the
    /// identities the compilation needed are taken back.
    pub fn validate(&mut self, policies: &[Policy]) -> Result<Compiled, ControllerError> {
        let candidate = self.policies.with_applied(policies);
        let compiled = self.compile(&candidate);
        self.identities.rollback();
        let compiled = compiled?;
        self.check_capacity(&compiled)?;
        Ok(compiled)
    }

    /// Applies policies (replacing those with the same name). On any error nothing
    /// changes: the previous policies stay in force.
    pub fn apply(&mut self, policies: Vec<Policy>) -> Result<ApplyReport, ControllerError> {
        let keys: Vec<String> = policies.iter().map(Policy::key).collect();
        let candidate = self.policies.with_applied(&policies);
        self.reconcile(&candidate, self.policies.revision() + 1)?;
        self.policies.commit(candidate)?;
        self.publish();
        Ok(self.report(keys))
    }

    /// Replaces every policy read from `source` with `policies` (the source's
    /// full listing). On any error nothing changes. Reports the keys of the new
    /// listing; a listing equal to what is in force changes nothing.
    pub fn sync_source(
        &mut self,
        source: &str,
        policies: Vec<Policy>,
    ) -> Result<ApplyReport, ControllerError> {
        let keys: Vec<String> = policies.iter().map(Policy::key).collect();
        let candidate = self.policies.with_source(source, &policies);
        // Both in key order.
        if candidate == self.policies.to_vec() {
            return Ok(self.report(keys));
        }
        self.reconcile(&candidate, self.policies.revision() + 1)?;
        self.policies.commit(candidate)?;
        self.publish();
        Ok(self.report(keys))
    }

    /// Deletes policies by `namespace/name`.
    pub fn delete(&mut self, keys: &[String]) -> Result<ApplyReport, ControllerError> {
        let (candidate, missing) = self.policies.with_deleted(keys);
        if !missing.is_empty() {
            return Err(ControllerError::NotFound(missing.join(", ")));
        }
        self.reconcile(&candidate, self.policies.revision() + 1)?;
        self.policies.commit(candidate)?;
        self.publish();
        Ok(self.report(keys.to_vec()))
    }

    /// Removes conntrack entries of closed and idle connections; returns
    /// (entries left, entries removed). The LRU map evicts on its own when full; this
    /// keeps it from filling with the dead.
    pub fn gc_conntrack(&mut self) -> (usize, usize) {
        let Some(dp) = self.datapath.as_mut() else {
            return (0, 0);
        };
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().max(0) as u32))
            .unwrap_or_default();
        let entries = dp.conntrack_entries();
        let mut removed = 0;
        for (key, value) in &entries {
            let idle = now.saturating_sub(Duration::from_nanos(value.last_seen_ns));
            // A device's entry sees only the client's side: its FIN closes it.
            let fins = if key.dir == loupe_common::direction::FROM_NETDEV {
                loupe_common::ct_flags::FIN_FWD
            } else {
                loupe_common::ct_flags::FIN_FWD | loupe_common::ct_flags::FIN_REV
            };
            let closed =
                value.flags & loupe_common::ct_flags::RST != 0 || value.flags & fins == fins;
            let lifetime = if key.proto == 6 {
                CT_TCP_LIFETIME
            } else {
                CT_ANY_LIFETIME
            };
            if (closed && idle > CT_CLOSED_GRACE) || idle > lifetime {
                dp.remove_conntrack(key);
                removed += 1;
            }
        }
        let left = entries.len() - removed;
        self.stats.conntrack_entries = left;
        self.gauges.ct_entries.store(left as u64, Ordering::Relaxed);
        self.stats.conntrack_collected += removed as u64;
        (left, removed)
    }

    /// Re-applies the policies in force (after start-up, once endpoints are known).
    pub fn resync(&mut self) -> Result<(), ControllerError> {
        let policies = self.policies.to_vec();
        self.reconcile(&policies, self.policies.revision())
    }

    fn report(&self, policies: Vec<String>) -> ApplyReport {
        let compiled = self.compiled.as_ref();
        ApplyReport {
            selected: policies
                .iter()
                .map(|k| {
                    (
                        k.clone(),
                        compiled
                            .and_then(|c| c.selected.get(k).cloned())
                            .unwrap_or_default(),
                    )
                })
                .collect(),
            policies,
            entries: compiled.map(|c| c.entries.len()).unwrap_or(0),
        }
    }

    fn views(&self) -> Vec<EndpointView> {
        let local = self.endpoints.iter().map(|e| (e, false));
        local
            .chain(self.remote.iter().map(|e| (e, true)))
            .map(|((ep, identity), remote)| EndpointView {
                id: ep.id,
                namespace: ep.spec.namespace.clone(),
                labels: ep.spec.labels.clone(),
                identity: *identity,
                remote,
            })
            .collect()
    }

    fn compile(&mut self, policies: &[Policy]) -> Result<Compiled, ControllerError> {
        let views = self.views();
        let identities = &mut self.identities;
        Ok(compile(
            policies,
            &views,
            self.mode,
            self.allow_localhost,
            &mut |p| identities.cidr_identity(p),
        )?)
    }

    fn check_capacity(&self, compiled: &Compiled) -> Result<(), ControllerError> {
        let capacity = self.policy_capacity;
        if compiled.entries.len() > capacity {
            return Err(DatapathError::PolicyMapFull {
                needed: compiled.entries.len(),
                capacity,
            }
            .into());
        }
        Ok(())
    }

    /// Makes `policies` (the repository at `revision`) the policy in force.
    fn reconcile(&mut self, policies: &[Policy], revision: u64) -> Result<(), ControllerError> {
        let started = Instant::now();
        let result = self.reconcile_inner(policies, revision);
        match &result {
            Ok(()) => {
                self.stats.regenerations += 1;
                self.stats.last_regeneration = started.elapsed();
                self.stats.policy_entries =
                    self.compiled.as_ref().map(|c| c.entries.len()).unwrap_or(0);
                self.gauges
                    .observe_regeneration(self.stats.last_regeneration.as_secs_f64());
                if let Some(compiled) = &self.compiled {
                    self.l7.store(L7Policy::build(compiled, revision));
                }
                self.settle_identities();
                self.publish();
                tracing::info!(
                    endpoints = self.endpoints.len(),
                    policies = policies.len(),
                    entries = self.stats.policy_entries,
                    took = ?self.stats.last_regeneration,
                    "regenerated"
                );
            }
            Err(e) => {
                self.stats.failures += 1;
                self.identities.rollback();
                tracing::warn!(error = %e, "policy regeneration refused; previous policy stays in force");
            }
        }
        result
    }

    /// Keeps the identities the policy in force needs, releases the rest (CIDR
    /// prefixes no policy names any more, label sets no endpoint has) and writes
    /// the table once.
    fn settle_identities(&mut self) {
        let mut used: BTreeSet<u32> = self
            .endpoints
            .iter()
            .chain(&self.remote)
            .map(|(_, id)| *id)
            .collect();
        if let Some(compiled) = &self.compiled {
            used.extend(compiled.cidrs.values().copied());
        }
        let released = self.identities.retain(|id| used.contains(&id));
        if released > 0 {
            tracing::debug!(released, "released unused identities");
        }
        if let Err(e) = self.identities.commit() {
            tracing::warn!(error = %e, "identity table not written; retried with the next change");
        }
    }

    fn reconcile_inner(
        &mut self,
        policies: &[Policy],
        revision: u64,
    ) -> Result<(), ControllerError> {
        let compiled = self.compile(policies)?;
        self.check_capacity(&compiled)?;
        let Some(dp) = self.datapath.as_mut() else {
            self.compiled = Some(compiled);
            return Ok(());
        };

        // 1. The ipcache gains every address the new policy may look up.
        let desired = desired_ipcache(self.endpoints.iter().chain(&self.remote), &compiled.cidrs);
        for (&(addr, len), &value) in &desired {
            if self.ipcache.get(&(addr, len)) != Some(&value) {
                dp.set_ipcache(addr, len, value)?;
                self.ipcache.insert((addr, len), value);
            }
        }

        // 2. Endpoints and enforcement, under the generation about to become active.
        let mut config = dp.config();
        if config.proxy_port != self.proxy_port || config.monitor != self.monitor {
            config.proxy_port = self.proxy_port;
            config.monitor = self.monitor;
            dp.set_config(config)?;
        }
        let active = config.active_gen & 1;
        let changed = self.compiled.as_ref() != Some(&compiled);
        let next = if changed { active ^ 1 } else { active };
        // Flows name the policies of the revision that decided; the table is in
        // place before that revision decides anything.
        let rev = if changed {
            config.policy_rev.wrapping_add(1)
        } else {
            config.policy_rev
        };
        self.tables[rev as usize % attribution::REVISIONS] =
            Arc::new(PolicyTable::build(&compiled, revision));
        // Built outside the write lock, so the flow reader never waits on the copy.
        let current = self.snapshot.read().map(|s| s.clone()).unwrap_or_default();
        let with_table = Arc::new(current.as_ref().clone().with_policies(self.tables.clone()));
        if let Ok(mut guard) = self.snapshot.write() {
            *guard = with_table;
        }
        let existing = dp.endpoints();
        for (ep, identity) in &self.endpoints {
            let (ingress, egress) = compiled
                .enforcement
                .get(&ep.id)
                .copied()
                .unwrap_or((false, false));
            let bits = |generation| {
                let mut f = 0;
                if ingress {
                    f |= endpoint_flags::enforce(loupe_common::direction::INGRESS, generation);
                }
                if egress {
                    f |= endpoint_flags::enforce(loupe_common::direction::EGRESS, generation);
                }
                f
            };
            let active_mask = endpoint_flags::enforce(loupe_common::direction::INGRESS, active)
                | endpoint_flags::enforce(loupe_common::direction::EGRESS, active);
            // Until the flip, an endpoint keeps the enforcement it has; a new one
            // starts with the new policy's.
            let keep = match existing.get(&ep.spec.ifindex) {
                Some(old) if old.ep_id == ep.id && next != active => old.flags & active_mask,
                _ => bits(active),
            };
            let info = EndpointInfo {
                ep_id: ep.id,
                flags: keep | bits(next),
                identity: *identity,
            };
            if existing.get(&ep.spec.ifindex) != Some(&info) {
                dp.set_endpoint(ep.spec.ifindex, info)?;
            }
            dp.attach(&ep.spec.interface, ep.spec.ifindex)?;
        }

        // 3. The complete new policy under the inactive generation, then one flip.
        if changed {
            let mut written = Vec::with_capacity(compiled.entries.len());
            for (key, value) in &compiled.entries {
                let k = key.datapath(next);
                if let Err(e) = dp.set_policy(key.prefix_len, k, *value) {
                    for (len, k) in written {
                        dp.remove_policy(len, k);
                    }
                    return Err(e.into());
                }
                written.push((key.prefix_len, k));
            }
            dp.set_config(DatapathConfig {
                policy_rev: config.policy_rev.wrapping_add(1),
                active_gen: next,
                monitor: self.monitor,
                proxy_port: self.proxy_port,
            })?;
            for (len, key) in dp.policy_keys() {
                if key.generation != next {
                    dp.remove_policy(len, key);
                }
            }
        }

        // 4. What nothing needs any more.
        let live: BTreeSet<u32> = self.endpoints.iter().map(|(e, _)| e.spec.ifindex).collect();
        for ifindex in existing.keys().filter(|i| !live.contains(i)) {
            dp.remove_endpoint(*ifindex);
        }
        let live_ifaces: BTreeSet<&str> = self
            .endpoints
            .iter()
            .map(|(e, _)| e.spec.interface.as_str())
            .collect();
        for iface in dp.pinned_interfaces() {
            if !live_ifaces.contains(iface.as_str()) {
                dp.detach(&iface);
            }
        }
        let stale: Vec<([u8; 16], u32)> = self
            .ipcache
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for (addr, len) in stale {
            dp.remove_ipcache(addr, len);
            self.ipcache.remove(&(addr, len));
        }
        self.compiled = Some(compiled);
        Ok(())
    }
}

/// The configured trace aggregation (validated with the configuration; the
/// default if it somehow is not).
fn monitor_of(config: &AgentConfig) -> u8 {
    config
        .bpf
        .monitor()
        .unwrap_or(loupe_common::monitor::MEDIUM | loupe_common::monitor::FLAGS_ALL)
}

/// Every ipcache entry the datapath needs: endpoint addresses, this host's
/// addresses, the prefixes policies name, and the world for everything else.
fn desired_ipcache<'a>(
    endpoints: impl Iterator<Item = &'a (Endpoint, u32)>,
    cidrs: &BTreeMap<IpNet, u32>,
) -> BTreeMap<([u8; 16], u32), IpcacheValue> {
    let value = |identity, ep_id| IpcacheValue {
        identity,
        ep_id,
        flags: 0,
    };
    let mut out = BTreeMap::new();
    out.insert(
        mapped(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
        value(id::WORLD, 0),
    );
    out.insert(
        mapped(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
        value(id::WORLD, 0),
    );
    for (net, identity) in cidrs {
        out.insert(mapped(net.network(), net.prefix_len()), value(*identity, 0));
    }
    for addr in host_addresses() {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        out.insert(mapped(addr, len), value(id::HOST, 0));
    }
    for (ep, identity) in endpoints {
        for ip in ep.spec.ips() {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            // Local endpoints carry their number: the client's hook reads the
            // server's ingress policy with it to decide an L7 redirect. Pods on
            // other nodes carry 0: their node decides.
            out.insert(mapped(ip, len), value(*identity, ep.id));
        }
    }
    out
}

/// Addresses of this host's own interfaces.
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::SourceKind;
    use crate::policy::parse_policies;

    fn endpoint(id: u16, app: &str) -> Endpoint {
        endpoint_in("demo-app", id, app)
    }

    fn endpoint_in(namespace: &str, id: u16, app: &str) -> Endpoint {
        Endpoint {
            id,
            spec: EndpointSpec {
                source: SourceKind::Lab,
                namespace: namespace.into(),
                pod_name: format!("{app}-x"),
                labels: [("app".to_string(), app.to_string())].into(),
                ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, id as u8)),
                ipv6: None,
                interface: format!("lxc{id}"),
                ifindex: u32::from(id),
                workload: None,
            },
        }
    }

    fn policy(name: &str, ports: std::ops::Range<u16>) -> Vec<Policy> {
        let mut text = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: demo-app}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: api}}}}]\n    toPorts:\n    - ports:\n"
        );
        for p in ports {
            text.push_str(&format!("      - {{port: \"{p}\", protocol: TCP}}\n"));
        }
        parse_policies("t.yaml", &text).unwrap()
    }

    #[test]
    fn a_policy_that_does_not_fit_is_refused_and_the_old_one_stays() {
        let mut config = AgentConfig::default();
        config.bpf.policy_map_entries = 256;
        let mut c = Controller::in_memory(&config);
        c.set_endpoints(vec![endpoint(1, "api"), endpoint(2, "db")], Vec::new(), &[])
            .unwrap();
        let small = c.apply(policy("small", 1..11)).unwrap();
        // 10 ports + the host allow.
        assert_eq!(small.entries, 11);
        // 300 more ports on top of the 11 entries in force.
        let err = c.apply(policy("big", 1000..1300)).unwrap_err();
        assert!(
            err.to_string()
                .contains("policy needs 311 policy map entries but bpf.policyMapEntries is 256"),
            "{err}"
        );
        assert_eq!(
            c.policies().policies().map(Policy::key).collect::<Vec<_>>(),
            vec!["demo-app/small"]
        );
        assert_eq!(c.compiled().unwrap().entries.len(), 11);
        assert_eq!(c.stats().failures, 1);
    }

    #[test]
    fn deleting_an_unknown_policy_names_it() {
        let mut c = Controller::in_memory(&AgentConfig::default());
        let err = c.delete(&["demo-app/nope".to_string()]).unwrap_err();
        assert_eq!(err.to_string(), "no such policy: demo-app/nope");
    }

    #[test]
    fn the_controller_publishes_l7_rules_and_keeps_them_on_a_refused_change() {
        use crate::policy::Direction;
        use crate::policy::l7::tests::{GET_GET, http, policy};

        let endpoint = |id: u16, app: &str| endpoint_in("demo", id, app);
        let mut config = AgentConfig::default();
        config.bpf.policy_map_entries = 4;
        let mut c = Controller::in_memory(&config);
        let handle = c.l7_policy();
        c.set_endpoints(
            vec![endpoint(1, "frontend"), endpoint(2, "api")],
            Vec::new(),
            &[],
        )
        .unwrap();
        assert!(handle.load().is_empty());
        c.apply(parse_policies("p.yaml", &policy("p", &[("frontend", 80, GET_GET)])).unwrap())
            .unwrap();
        let frontend = c.endpoint_identity("demo/frontend-x").unwrap();
        let t = handle.load();
        assert!(
            t.decide(2, Direction::Ingress, 80, frontend, &http("GET", "/get"))
                .allowed()
        );
        assert!(
            !t.decide(2, Direction::Ingress, 80, frontend, &http("PUT", "/get"))
                .allowed()
        );

        // Too many entries: refused, and the L7 rules in force stay.
        let big = policy("p", &[("frontend", 1000, "http:\n- method: PUT")])
            .replace("protocol: TCP\n", "endPort: 1200\n        protocol: TCP\n");
        assert!(c.apply(parse_policies("big.yaml", &big).unwrap()).is_err());
        let t = handle.load();
        assert!(
            !t.decide(2, Direction::Ingress, 80, frontend, &http("PUT", "/get"))
                .allowed()
        );
        assert!(
            t.decide(2, Direction::Ingress, 80, frontend, &http("GET", "/get"))
                .allowed()
        );
    }
}
