//! Kubernetes as an endpoint source: every pod of the cluster and every
//! namespace (their labels select pods in policies), kept in kube-rs reflectors.
//! The pods scheduled on this node (`spec.nodeName`) are its endpoints; the
//! others, with their addresses and labels, are remote pods: the ipcache gives
//! their addresses their cluster-wide identities, so a policy here names a client
//! on another node by its labels. After each change the full listing goes to the
//! control plane, as the lab source sends its own: relists after `410 Gone`,
//! reconnects and backoff are kube-rs's watcher's; a pod missing from a relist
//! leaves the listing. (Every pod is held in memory, about 2 KiB each: Cilium
//! reads the same from its CiliumEndpoint objects.)
//!
//! Loupe is not the CNI here (chaining mode): a pod's host-side interface is the
//! one the node routes its address through (`ip route get`), which covers routed
//! CNIs (Calico, Cilium's own routing, kindnet's ptp, the lab); pods on a bridge
//! (flannel's `cni0`, the default `bridge` plugin) resolve to the bridge and are
//! skipped until bridge ports are resolved. Host-network pods are never endpoints.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::{EndpointSpec, Listing, SourceKind, Workload};
use crate::health::{ComponentState, Health};
use crate::metrics::{MetricFamily, MetricKind};

/// Cilium's prefix for a pod's namespace labels in its identity.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Cilium's label for a pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";

/// Finds the host-side interface (name, index) a pod address is reached through.
pub type Resolver = Arc<dyn Fn(IpAddr) -> Option<(String, u32)> + Send + Sync>;

/// What the Kubernetes watches count, for `/metrics`: API errors by watch, this
/// node's pods that are endpoints or skipped, and other nodes' pods.
#[derive(Debug, Default)]
pub struct KubernetesStats {
    api_errors: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    endpoints: AtomicU64,
    skipped: AtomicU64,
    remote: AtomicU64,
}

impl KubernetesStats {
    /// Counts an API error of `watch` (`pods`, `services`, `policies`, …).
    pub fn api_error(&self, watch: &'static str) {
        *self
            .api_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(watch)
            .or_default() += 1;
    }

    fn listing(&self, listing: &PodListing) {
        let n = |v: usize| v as u64;
        self.endpoints
            .store(n(listing.listing.local.len()), Ordering::Relaxed);
        self.skipped.store(n(listing.skipped), Ordering::Relaxed);
        self.remote
            .store(n(listing.listing.remote.len()), Ordering::Relaxed);
    }

    /// `loupe_kubernetes_api_errors_total{watch}` and `loupe_kubernetes_pods{state}`.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut errors = MetricFamily::new(
            "loupe_kubernetes_api_errors_total",
            "Errors from the Kubernetes API server, by watch (each is retried with backoff).",
            MetricKind::Counter,
        );
        for (watch, n) in self
            .api_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            errors = errors.value(&[("watch", watch)], *n as f64);
        }
        let pods = MetricFamily::new(
            "loupe_kubernetes_pods",
            "Pods: this node's endpoints, this node's skipped (host network, no address or interface yet), and other nodes' (remote).",
            MetricKind::Gauge,
        )
        .value(
            &[("state", "endpoint")],
            self.endpoints.load(Ordering::Relaxed) as f64,
        )
        .value(
            &[("state", "skipped")],
            self.skipped.load(Ordering::Relaxed) as f64,
        )
        .value(
            &[("state", "remote")],
            self.remote.load(Ordering::Relaxed) as f64,
        );
        vec![errors, pods]
    }
}

/// Follows every object of `api` in a reflector until the task is dropped: once
/// listed, after each change `changed` reads the store and returns the line for
/// `component` in `loupe status`; API errors are counted under `watch` and
/// reported there (kube-rs's watcher retries them with backoff).
pub(crate) async fn follow_all<K>(
    api: Api<K>,
    watch: &'static str,
    component: &'static str,
    health: Arc<Health>,
    stats: Arc<KubernetesStats>,
    mut changed: impl FnMut(&Store<K>) -> String,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store::<K>();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let mut events = std::pin::pin!(events);
    let mut listed = false;
    health.set(component, ComponentState::Error, format!("listing {watch}"));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => listed = true,
            // A (re)list starting changes nothing yet.
            Ok(watcher::Event::Init) => continue,
            Ok(_) => {}
            Err(err) => {
                stats.api_error(watch);
                tracing::warn!(watch, error = %err, "kubernetes watch");
                health.set(component, ComponentState::Error, format!("API: {err}"));
                continue;
            }
        }
        if listed {
            let detail = changed(&store);
            health.set(component, ComponentState::Ok, detail);
        }
    }
}

/// The component name the source reports under in `loupe status` and `/healthz`.
pub const HEALTH_COMPONENT: &str = "endpoints/kubernetes";

/// Watches this node's pods and every namespace; sends the full listing after
/// each change (once both are listed) until the receiver goes away. Its sync
/// state (listing, endpoints found, the last API error) goes to `health` as it
/// changes.
pub async fn watch(
    client: Client,
    node: String,
    resolve: Resolver,
    health: Arc<Health>,
    stats: Arc<KubernetesStats>,
    tx: mpsc::Sender<Listing>,
) {
    health.set(
        HEALTH_COMPONENT,
        ComponentState::Error,
        "listing pods and namespaces",
    );
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .map(|e| e.map(|e| (Kind::Pod, Step::of(&e))));
    let ns_events = watcher(Api::<Namespace>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(ns_writer)
        .map(|e| e.map(|e| (Kind::Namespace, Step::of(&e))));
    let mut events = std::pin::pin!(futures::stream::select(pod_events, ns_events));
    let (mut pods_listed, mut namespaces_listed) = (false, false);
    let mut last: Option<Listing> = None;
    while let Some(event) = events.next().await {
        match event {
            // A (re)list starting changes nothing yet: the last error or
            // listing stands until the API answers.
            Ok((_, Step::Init)) => continue,
            Ok((kind, step)) => {
                if step == Step::Listed {
                    match kind {
                        Kind::Pod => pods_listed = true,
                        Kind::Namespace => namespaces_listed = true,
                    }
                }
            }
            Err(err) => {
                stats.api_error("pods");
                tracing::warn!(error = %err, "kubernetes watch");
                health.set(
                    HEALTH_COMPONENT,
                    ComponentState::Error,
                    format!("API: {err}"),
                );
                continue;
            }
        }
        if !(pods_listed && namespaces_listed) {
            health.set(
                HEALTH_COMPONENT,
                ComponentState::Error,
                "listing pods and namespaces",
            );
            continue;
        }
        let now = listing(&pods, &namespaces, &node, resolve.as_ref());
        stats.listing(&now);
        health.set(
            HEALTH_COMPONENT,
            ComponentState::Ok,
            format!(
                "{} endpoints (pods skipped: {}), {} pods on other nodes",
                now.listing.local.len(),
                now.skipped,
                now.listing.remote.len()
            ),
        );
        if last.as_ref() != Some(&now.listing) {
            if tx.send(now.listing.clone()).await.is_err() {
                return;
            }
            last = Some(now.listing);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Pod,
    Namespace,
}

/// Where a watch's event leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A (re)list begins.
    Init,
    /// A (re)list is complete.
    Listed,
    /// An object came, changed or went.
    Object,
}

impl Step {
    fn of<K>(event: &watcher::Event<K>) -> Self {
        match event {
            watcher::Event::Init => Self::Init,
            watcher::Event::InitDone => Self::Listed,
            _ => Self::Object,
        }
    }
}

/// What the pods of the cluster are to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodListing {
    /// This node's endpoints and the other nodes' pods, each sorted by
    /// namespace and name.
    pub listing: Listing,
    /// This node's pods left out (host network, done, no address or interface).
    pub skipped: usize,
}

/// The pods in `pods` as node `node` sees them: its own as endpoints (their
/// interfaces found by `resolve`), the others' as remote pods.
pub fn listing(
    pods: &Store<Pod>,
    namespaces: &Store<Namespace>,
    node: &str,
    resolve: &(dyn Fn(IpAddr) -> Option<(String, u32)> + Send + Sync),
) -> PodListing {
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .state()
        .iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            Some((name, ns.metadata.labels.clone().unwrap_or_default()))
        })
        .collect();
    let mut out = PodListing {
        listing: Listing::default(),
        skipped: 0,
    };
    let no_interface = |_: IpAddr| Some((String::new(), 0));
    for pod in pods.state() {
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        if on_node {
            match endpoint(&pod, &ns_labels, resolve) {
                Some(spec) => out.listing.local.push(spec),
                None => out.skipped += 1,
            }
        } else if let Some(spec) = endpoint(&pod, &ns_labels, &no_interface) {
            out.listing.remote.push(spec);
        }
    }
    out.listing.local.sort_by_key(EndpointSpec::key);
    out.listing.remote.sort_by_key(EndpointSpec::key);
    out
}

/// A pod as an endpoint: `None` for host-network pods, pods that are done, and
/// pods without an address or a host interface yet.
pub fn endpoint(
    pod: &Pod,
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
    resolve: &(dyn Fn(IpAddr) -> Option<(String, u32)> + Send + Sync),
) -> Option<EndpointSpec> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let addresses: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ipv4: Option<Ipv4Addr> = addresses.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let ipv6: Option<Ipv6Addr> = addresses.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    let (interface, ifindex) = resolve(*addresses.first()?)?;
    let namespace = pod.metadata.namespace.clone()?;
    let mut labels = pod.metadata.labels.clone().unwrap_or_default();
    for (key, value) in ns_labels.get(&namespace).into_iter().flatten() {
        labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{key}"), value.clone());
    }
    labels.insert(
        SERVICE_ACCOUNT_LABEL.to_string(),
        spec.service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
    );
    Some(EndpointSpec {
        source: SourceKind::Kubernetes,
        namespace,
        pod_name: pod.metadata.name.clone()?,
        labels,
        ipv4,
        ipv6,
        interface,
        ifindex,
        workload: workload(pod),
    })
}

/// The workload that owns a pod, as Hubble names it: a ReplicaSet's Deployment
/// (the ReplicaSet's name less the pod's `pod-template-hash`), a Job's CronJob
/// (the Job's name less its `-<scheduled minute>` suffix), else the controller.
pub fn workload(pod: &Pod) -> Option<Workload> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let labels = pod.metadata.labels.as_ref();
    let (kind, name) = match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = labels.and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => ("Deployment", deployment.to_string()),
                None => ("ReplicaSet", owner.name.clone()),
            }
        }
        "Job" => match owner.name.rsplit_once('-') {
            Some((cronjob, minute))
                if minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()) =>
            {
                ("CronJob", cronjob.to_string())
            }
            _ => ("Job", owner.name.clone()),
        },
        other => (other, owner.name.clone()),
    };
    Some(Workload {
        name,
        kind: kind.to_string(),
    })
}

/// The interface the node routes `ip` through, from `ip -j route get` (the
/// kernel's own answer, whatever the CNI programmed).
pub fn route_interface(ip: IpAddr) -> Option<(String, u32)> {
    let out = crate::host::ip(&["-j", "route", "get", &ip.to_string()]).ok()?;
    let routes: serde_json::Value = serde_json::from_str(&out).ok()?;
    let dev = routes.get(0)?.get("dev")?.as_str()?.to_string();
    // A local address (the host's own) is not a pod's.
    if dev == "lo" {
        return None;
    }
    let index = crate::host::ifindex(&dev).ok()?;
    Some((dev, index))
}

#[cfg(test)]
pub(crate) mod mock;
pub mod nodes;
pub mod services;

#[cfg(test)]
mod tests;
