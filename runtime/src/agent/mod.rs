//! `loupe agent`: wires the endpoint sources, the control plane, the datapath's
//! readers, the L7 path, the proxy and the API together and runs until SIGINT /
//! SIGTERM. Nothing below imports this module: each part gets exactly what it
//! reads from here.

mod observability;
pub mod privileges;
mod proxy;

pub use observability::ObservabilityError;

use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_proto::daemon::daemon_server::DaemonServer;
use loupe_proto::policy::policies_server::PoliciesServer;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;

use crate::api::{
    self, NodeInfo, authority::AuthorityFix, daemon::DaemonService, policy::PolicyService,
};
use crate::cluster;
use crate::config::AgentConfig;
use crate::control::ControlPlane;
use crate::datapath::{self, Datapath, controller::Controller, metrics::DatapathCollector};
use crate::endpoint::{self, SourceKind};
use crate::flow::FlowStore;
use crate::health::{ComponentState, Health};
use crate::l7::live::{self, GlobalPorts, LiveCollector, LiveConfig};
use crate::metrics::MetricsRegistry;
use crate::plugin::{InstallError, PluginManager, bundled};

/// What the agent is made of, before it runs. Embedders and tests keep a handle to
/// `flows` and `metrics`; everything else is handed to the parts that use it when
/// the agent starts.
#[derive(Debug)]
pub struct AgentState {
    config: AgentConfig,
    node: NodeInfo,
    control: Arc<ControlPlane>,
    plugins: Arc<PluginManager>,
    health: Arc<Health>,
    /// Recent flows and live subscribers: producers call `flows.push(flow)`.
    pub flows: FlowStore,
    /// The agent's metrics (`prometheus.port`): register datapath, policy and
    /// plugin collectors here.
    pub metrics: MetricsRegistry,
    /// Flow-derived metrics (`hubble.metrics.port`).
    hubble_metrics: MetricsRegistry,
    /// The cluster's nodes, for `peer.Peer` (filled by the Kubernetes source).
    cluster_nodes: endpoint::kubernetes::nodes::ClusterNodes,
}

impl AgentState {
    /// Fresh state for a configuration, without a kernel datapath and with
    /// identities and policies kept in memory (embedders and tests); plugins are
    /// read from `plugins.dir`.
    pub fn new(config: AgentConfig) -> Result<Self, InstallError> {
        let controller = Controller::in_memory(&config);
        let plugins = Arc::new(open_plugins(&config)?);
        Ok(Self::with_controller(config, controller, plugins))
    }

    /// Fresh state around a controller and a plugin manager (the agent's own).
    pub fn with_controller(
        config: AgentConfig,
        controller: Controller,
        plugins: Arc<PluginManager>,
    ) -> Self {
        let name = config.node_name();
        let node = NodeInfo {
            address: config.hubble_listen_address().map_or_else(
                || config.socket_path.display().to_string(),
                |a| a.to_string(),
            ),
            tls: config.hubble.tls.enabled,
            started: Instant::now(),
            name: name.clone(),
        };
        Self {
            flows: FlowStore::new(config.hubble.event_buffer_capacity as usize, name),
            metrics: MetricsRegistry::new(),
            hubble_metrics: MetricsRegistry::new(),
            control: Arc::new(ControlPlane::new(controller)),
            health: Arc::default(),
            node,
            plugins,
            config,
            cluster_nodes: endpoint::kubernetes::nodes::ClusterNodes::default(),
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut datapath = if config.bpf.enabled {
        Some(Datapath::load(&config.bpf)?)
    } else {
        None
    };
    if let Some(dp) = datapath.as_mut() {
        dp.keep_devices(&config.devices);
        for device in &config.devices {
            let ifindex = crate::host::ifindex(device)
                .map_err(|e| anyhow::anyhow!("devices: {device}: no such interface ({e})"))?;
            dp.attach_device(device, ifindex)?;
            tracing::info!(device, "device program attached");
        }
    }
    let io = datapath.as_mut().map(DatapathIo::take).unwrap_or_default();
    let (controller, stale_policies) = Controller::new(&config, datapath)?;
    for err in &stale_policies {
        tracing::error!(error = %err, "persisted policy no longer valid; not loaded");
    }
    let plugins = Arc::new(open_plugins(&config)?);
    serve(
        Arc::new(AgentState::with_controller(config, controller, plugins)),
        io,
        shutdown,
    )
    .await
}

/// Opens the plugin directory the configuration names.
fn open_plugins(config: &AgentConfig) -> Result<PluginManager, InstallError> {
    PluginManager::open(
        &config.plugins.dir(&config.state_dir),
        config.plugins.limits(),
    )
}

/// The maps the agent reads continuously, taken from the datapath.
#[derive(Default)]
struct DatapathIo {
    events: Option<aya::maps::Map>,
    payload: Option<aya::maps::Map>,
}

impl DatapathIo {
    fn take(datapath: &mut Datapath) -> Self {
        Self {
            events: datapath.take_events(),
            payload: datapath.take_payload(),
        }
    }
}

/// Runs the agent on prepared state (embedders and tests keep a handle to
/// `state.flows` and `state.metrics`) until `shutdown` resolves.
pub async fn run_with_state(
    state: Arc<AgentState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve(state, DatapathIo::default(), shutdown).await
}

async fn serve(
    state: Arc<AgentState>,
    io: DatapathIo,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = &state.config;
    let health = &state.health;
    let listener = api::bind_socket(&config.socket_path)?;
    tracing::info!(socket = %config.socket_path.display(), node = %state.node.name, "agent starting");
    let mut tasks = Tasks::default();
    if config.bpf.enabled {
        let devices = if config.devices.is_empty() {
            String::new()
        } else {
            format!(", devices {}", config.devices.join(","))
        };
        health.set(
            "datapath",
            ComponentState::Ok,
            format!(
                "loaded, pinned at {}{devices}",
                config.bpf.pin_path.display()
            ),
        );
    } else {
        health.set("datapath", ComponentState::Disabled, "bpf.enabled: false");
    }
    if let Some(ring) = io.events {
        let collector = DatapathCollector::new(&config.bpf.pin_path, state.control.gauges());
        state.metrics.register("datapath", Arc::new(collector));
        tasks.0.extend(datapath::flows::start(
            ring,
            &config.bpf.pin_path,
            state.control.snapshot(),
            state.flows.clone(),
            state.node.name.clone(),
        ));
    }

    if config.endpoints.lab {
        let tx = tasks.source(&state, SourceKind::Lab, None);
        // A lab with nodes: the peer service announces them all.
        let nodes = state.cluster_nodes.clone();
        let on_nodes = move |lab_nodes: Vec<endpoint::kubernetes::nodes::ClusterNode>| {
            if !lab_nodes.is_empty() {
                nodes.set(lab_nodes);
            }
        };
        tasks.0.push(tokio::spawn(endpoint::lab_source::watch(
            Duration::from_millis(config.endpoints.lab_poll_ms),
            config.endpoints.lab_names.clone(),
            state.node.name.clone(),
            on_nodes,
            tx,
        )));
        health.set("endpoints/lab", ComponentState::Ok, "watching lab state");
    } else {
        health.set(
            "endpoints/lab",
            ComponentState::Disabled,
            "endpoints.lab: false",
        );
    }

    if config.endpoints.kubernetes {
        match kubernetes_client(config.endpoints.kubeconfig.as_deref()).await {
            Ok(client) => {
                let api_stats = Arc::new(endpoint::kubernetes::KubernetesStats::default());
                let families = api_stats.clone();
                state
                    .metrics
                    .register_fn("kubernetes", move || families.families());
                let identities = cluster::identities::ClusterIdentities::new(client.clone());
                tasks.0.push(tokio::spawn(
                    identities
                        .clone()
                        .run(state.health.clone(), api_stats.clone()),
                ));
                let tx = tasks.source(&state, SourceKind::Kubernetes, Some(identities));
                tasks.0.push(tokio::spawn(endpoint::kubernetes::watch(
                    client.clone(),
                    state.node.name.clone(),
                    Arc::new(endpoint::kubernetes::route_interface),
                    state.health.clone(),
                    api_stats.clone(),
                    tx,
                )));
                // Peers are announced at each node's internal address with this
                // agent's Observer port (Hubble's 4244 when none is configured).
                let observer_port = config.hubble_listen_address().map_or(4244, |a| a.port());
                tasks
                    .0
                    .push(tokio::spawn(endpoint::kubernetes::nodes::watch(
                        client.clone(),
                        state.cluster_nodes.clone(),
                        observer_port,
                        state.health.clone(),
                        api_stats.clone(),
                    )));
                tasks
                    .0
                    .push(tokio::spawn(endpoint::kubernetes::services::watch(
                        client.clone(),
                        state.flows.services(),
                        state.health.clone(),
                        api_stats.clone(),
                    )));
                let stats = Arc::new(cluster::policies::PolicyWatchStats::default());
                let families = stats.clone();
                state
                    .metrics
                    .register_fn("kubernetes-policies", move || families.families());
                tasks.0.push(tokio::spawn(cluster::policies::watch(
                    client,
                    cluster::policies::PolicyWatch {
                        control: state.control.clone(),
                        schemas: state.plugins.clone(),
                        health: state.health.clone(),
                        stats,
                        api_stats,
                        node: state.node.name.clone(),
                    },
                )));
            }
            Err(e) => {
                health.set(
                    endpoint::kubernetes::HEALTH_COMPONENT,
                    ComponentState::Error,
                    e.clone(),
                );
                health.set(
                    cluster::policies::HEALTH_COMPONENT,
                    ComponentState::Error,
                    e,
                );
            }
        }
    } else {
        for component in [
            endpoint::kubernetes::HEALTH_COMPONENT,
            endpoint::kubernetes::services::HEALTH_COMPONENT,
            endpoint::kubernetes::nodes::HEALTH_COMPONENT,
            cluster::identities::HEALTH_COMPONENT,
            cluster::policies::HEALTH_COMPONENT,
        ] {
            health.set(
                component,
                ComponentState::Disabled,
                "endpoints.kubernetes: false",
            );
        }
    }

    tasks
        .0
        .push(tokio::spawn(collect_conntrack(state.control.clone())));
    let l7_proxy = proxy::start(&state);
    let observability = observability::start(&state).await?;
    if config.plugins.bundled {
        let installed = bundled::install_missing(&state.plugins);
        if !installed.is_empty() {
            tracing::info!(plugins = ?installed, "bundled plugins installed");
        }
    }
    if let Some(map) = io.payload {
        start_l7(&state, map).await;
    }
    let plugins = state.plugins.clone();
    state
        .metrics
        .register_fn("plugins", move || plugins.families());
    // The count lives in `Plugins:` (from `loupe_plugins`, always current); this
    // line says where they are, which no install or removal changes.
    let detail = format!(
        "installed in {}",
        config.plugins.dir(&config.state_dir).display()
    );
    health.set("plugins", ComponentState::Ok, detail);

    let status = api::daemon::StatusSources {
        started: state.node.started,
        health: state.health.clone(),
        metrics: state.metrics.clone(),
        flows: config.hubble.enabled.then(|| state.flows.clone()),
    };
    let (stopping, watcher) = Stopping::new(shutdown);
    tasks.0.push(watcher);
    let server = tonic::transport::Server::builder()
        .add_service(DaemonServer::new(DaemonService::new(
            state.control.clone(),
            status,
        )))
        .add_service(PoliciesServer::new(PolicyService::new(
            state.control.clone(),
            state.plugins.clone(),
        )))
        .add_optional_service(observability.observer())
        .add_optional_service(observability.peer())
        .add_service(observability.grpc_health())
        .add_service(api::plugin::PluginService::server(
            state.plugins.clone(),
            state.control.clone(),
        ))
        // grpcio clients name the socket path as `:authority`, which h2 refuses.
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new)),
            stopping.clone().wait(),
        );
    // A graceful stop waits for open calls, and `observe --follow` streams never
    // end by themselves: after a short grace the rest are closed.
    let flows = state.flows.clone();
    let result = tokio::select! {
        result = server => result,
        () = async {
            stopping.wait().await;
            // Follow streams end once their queued flows are sent.
            flows.end_subscriptions();
            tokio::time::sleep(STOP_GRACE).await;
        } => {
            tracing::info!("closing the streams still open");
            Ok(())
        }
    };
    observability.stop();
    proxy::stop(l7_proxy);
    drop(tasks);
    let _ = std::fs::remove_file(&config.socket_path);
    tracing::info!("agent stopped");
    result.map_err(Into::into)
}

/// How long a stopping agent lets open calls finish.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves (for every clone) once the agent is asked to stop.
#[derive(Clone)]
struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// Watches `shutdown`.
    fn new(
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        (Self(rx), task)
    }

    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// The agent's background tasks: aborted when the agent stops, or when start-up
/// fails half way (an embedder's runtime keeps running).
#[derive(Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    /// Where an endpoint source sends its listings: each one is applied to that
    /// source's endpoints by a task of its own.
    /// `identities`: the cluster's allocator, for a source whose endpoints take
    /// cluster-wide identities.
    fn source(
        &mut self,
        state: &AgentState,
        kind: SourceKind,
        identities: Option<cluster::identities::ClusterIdentities>,
    ) -> mpsc::Sender<endpoint::Listing> {
        let (tx, rx) = mpsc::channel(4);
        self.0.push(tokio::spawn(apply_source(
            state.control.clone(),
            state.health.clone(),
            kind,
            identities,
            rx,
        )));
        tx
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the live L7 path on the datapath's payload copies, after making the
/// protocol switches' ports visible; follows plugin installs and removals, which
/// change those ports.
async fn start_l7(state: &AgentState, map: aya::maps::Map) {
    let l7 = &state.config.l7;
    let global = GlobalPorts::default();
    let ports = global_l7_ports(l7, &state.plugins, true);
    set_global_l7_ports(&state.control, &global, ports.clone()).await;
    let config = LiveConfig {
        buffer_pages: l7.buffer_pages as usize,
        queue: l7.queue_size as usize,
        reassembly: l7.reassembly(),
        global_ports: global.clone(),
    };
    match live::start(
        map,
        config,
        state.plugins.clone(),
        state.control.snapshot(),
        state.control.l7_policy(),
        state.flows.clone(),
    ) {
        Ok(stats) => {
            state.metrics.register("l7", Arc::new(LiveCollector(stats)));
            state
                .health
                .set("l7", ComponentState::Ok, l7_detail(&ports));
            tokio::spawn(follow_plugins(
                l7.clone(),
                state.plugins.clone(),
                state.control.clone(),
                state.health.clone(),
                global,
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "L7 path not started");
            state.health.set("l7", ComponentState::Error, e.to_string());
        }
    }
}

/// The ports of the protocols observed everywhere (`l7.*Protocol`,
/// `l7.protocols`): those their installed plugins are attached to.
fn global_l7_ports(
    l7: &crate::config::L7Config,
    plugins: &PluginManager,
    warn: bool,
) -> std::collections::BTreeSet<u16> {
    let mut ports = std::collections::BTreeSet::new();
    for protocol in l7.global_protocols() {
        match plugins.ports_for_protocol(protocol) {
            Some(p) => ports.extend(p),
            None if warn => tracing::warn!(
                protocol,
                "{protocol} is to be observed everywhere (l7.*Protocol, l7.protocols) but no plugin for it is installed yet"
            ),
            None => {}
        }
    }
    ports
}

async fn set_global_l7_ports(
    control: &ControlPlane,
    global: &GlobalPorts,
    ports: std::collections::BTreeSet<u16>,
) {
    if let Err(e) = control.set_l7_ports(&ports).await {
        tracing::error!(error = %e, "could not set the globally visible L7 ports");
    }
    global.store(ports);
}

fn l7_detail(ports: &std::collections::BTreeSet<u16>) -> String {
    if ports.is_empty() {
        "ports with L7 policy".to_string()
    } else {
        format!("ports with L7 policy, and {ports:?} everywhere")
    }
}

/// Re-reads the globally observed ports after every plugin install and
/// removal: a plugin listed in `l7.protocols` is observed from its install on.
async fn follow_plugins(
    l7: crate::config::L7Config,
    plugins: Arc<PluginManager>,
    control: Arc<ControlPlane>,
    health: Arc<Health>,
    global: GlobalPorts,
) {
    let mut changes = plugins.changes();
    while changes.changed().await.is_ok() {
        let ports = global_l7_ports(&l7, &plugins, false);
        if *global.load() != ports {
            tracing::info!(
                ?ports,
                "ports observed everywhere changed with the installed plugins"
            );
            set_global_l7_ports(&control, &global, ports.clone()).await;
            health.set("l7", ComponentState::Ok, l7_detail(&ports));
        }
    }
}

/// Garbage-collects conntrack every 30 seconds and warns when the table fills.
async fn collect_conntrack(control: Arc<ControlPlane>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gc) = control.gc_conntrack().await else {
            return;
        };
        let pressure = gc.left as f64 / f64::from(gc.capacity.max(1));
        if pressure > 0.9 {
            tracing::warn!(
                entries = gc.left,
                capacity = gc.capacity,
                "conntrack map above 90%: oldest connections are being evicted; raise bpf.ctGlobalTcpMax"
            );
        }
        tracing::debug!(
            entries = gc.left,
            removed = gc.removed,
            "conntrack garbage collected"
        );
    }
}

/// A client for the API server: from `kubeconfig` when given, else inferred
/// (in-cluster service account, then `$KUBECONFIG` / `~/.kube/config`).
async fn kubernetes_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("endpoints.kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("endpoints.kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes API configuration: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// Applies a source's successive full listings to the control plane.
async fn apply_source(
    control: Arc<ControlPlane>,
    health: Arc<Health>,
    source: SourceKind,
    identities: Option<cluster::identities::ClusterIdentities>,
    mut rx: mpsc::Receiver<endpoint::Listing>,
) {
    let mut retry: Option<endpoint::Listing> = None;
    loop {
        let mut listing = match retry.take() {
            Some(listing) => listing,
            None => match rx.recv().await {
                Some(listing) => listing,
                None => return,
            },
        };
        // A cluster's source: the identities come from the API server, so every
        // node gives the same labels the same number.
        if let Some(ids) = &identities {
            match ids.ensure(&listing.label_sets()).await {
                Ok(assigned) => listing.assigned = assigned,
                Err(e) => {
                    tracing::warn!(?source, error = %e, "endpoints wait for their identities");
                    health.set(
                        cluster::identities::HEALTH_COMPONENT,
                        ComponentState::Error,
                        format!("allocating: {e}"),
                    );
                    // A newer listing replaces this one; else try again soon.
                    retry = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                        Ok(Some(newer)) => Some(newer),
                        Ok(None) => return,
                        Err(_) => Some(listing),
                    };
                    continue;
                }
            }
        }
        let (count, remote) = (listing.local.len(), listing.remote.len());
        let report = control.sync_endpoints(source, listing).await;
        for err in &report.refused {
            tracing::warn!(?source, error = %err, "endpoint refused");
        }
        match report.regenerated {
            Ok(()) => health.set("policy", ComponentState::Ok, "endpoints regenerated"),
            Err(e) => {
                tracing::error!(error = %e, "endpoint regeneration failed");
                health.set("policy", ComponentState::Error, e.to_string());
            }
        }
        tracing::info!(
            ?source,
            endpoints = count,
            remote,
            refused = report.refused.len(),
            "endpoints synced"
        );
    }
}
