//! `loupe agent`: wires the endpoint sources, the registry and the API together and
//! runs until SIGINT / SIGTERM.

mod observability;
mod proxy;

pub use observability::ObservabilityError;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, RwLock, mpsc};
use tokio_stream::wrappers::UnixListenerStream;

use crate::api::{
    self, daemon::DaemonService, policy::PolicyService, proto::daemon::daemon_server::DaemonServer,
    proto::policy::policies_server::PoliciesServer,
};
use crate::config::AgentConfig;
use crate::datapath::{
    Datapath, controller::Controller, events, flows as datapath_flows, metrics::DatapathCollector,
};
use crate::endpoint::{self, EndpointRegistry, SourceKind};
use crate::flow::FlowStore;
use crate::metrics::MetricsRegistry;
use crate::plugin::{InstallError, PluginManager};

/// Health of one component, for `loupe status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Current state.
    pub state: ComponentState,
    /// A line for humans.
    pub detail: String,
}

/// Component states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentState {
    /// Working.
    Ok,
    /// Turned off by configuration.
    Disabled,
    /// Failing; `detail` says why.
    Error,
}

impl ComponentState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Disabled => "disabled",
            Self::Error => "error",
        }
    }
}

/// State shared by the agent's tasks and API handlers.
#[derive(Debug)]
pub struct AgentState {
    /// The configuration in force.
    pub config: AgentConfig,
    /// The node's name.
    pub node_name: String,
    /// When the agent started.
    pub started: Instant,
    /// The endpoint registry.
    pub registry: RwLock<EndpointRegistry>,
    /// Component health by name.
    pub components: RwLock<BTreeMap<String, ComponentStatus>>,
    /// Identities, policies and the datapath's maps.
    pub controller: Mutex<Controller>,
    /// Recent flows and live subscribers: producers call `flows.push(flow)`.
    pub flows: FlowStore,
    /// The agent's metrics (`prometheus.port`): register datapath, policy and
    /// plugin collectors here.
    pub metrics: MetricsRegistry,
    /// Flow-derived metrics (`hubble.metrics.port`).
    pub hubble_metrics: MetricsRegistry,
    /// Installed L7 parser plugins (`plugins.dir`).
    pub plugins: Arc<PluginManager>,
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
        let node_name = config.node_name();
        Self {
            plugins,
            flows: FlowStore::new(
                config.hubble.event_buffer_capacity as usize,
                node_name.clone(),
            ),
            metrics: MetricsRegistry::new(),
            hubble_metrics: MetricsRegistry::new(),
            node_name,
            config,
            started: Instant::now(),
            registry: RwLock::new(EndpointRegistry::new()),
            components: RwLock::new(BTreeMap::new()),
            controller: Mutex::new(controller),
        }
    }

    /// Records a component's health.
    pub async fn set_component(
        &self,
        name: &str,
        state: ComponentState,
        detail: impl Into<String>,
    ) {
        self.components.write().await.insert(
            name.to_string(),
            ComponentStatus {
                state,
                detail: detail.into(),
            },
        );
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
    let listener = api::bind_socket(&state.config.socket_path)?;
    tracing::info!(socket = %state.config.socket_path.display(), node = %state.node_name, "agent starting");
    if state.config.bpf.enabled {
        state
            .set_component(
                "datapath",
                ComponentState::Ok,
                format!("loaded, pinned at {}", state.config.bpf.pin_path.display()),
            )
            .await;
    } else {
        state
            .set_component("datapath", ComponentState::Disabled, "bpf.enabled: false")
            .await;
    }
    if let Some(ring) = io.events {
        let (snapshot, gauges) = {
            let controller = state.controller.lock().await;
            (controller.snapshot(), controller.gauges())
        };
        let collector = Arc::new(DatapathCollector::new(&state.config.bpf.pin_path, gauges));
        state.metrics.register("datapath", collector);
        let flows = state.flows.clone();
        let node = state.node_name.clone();
        tokio::spawn(async move {
            let result = events::read_events(ring, |event| {
                let snap = snapshot.read().map(|s| s.clone()).unwrap_or_default();
                flows.push(datapath_flows::to_flow(&event, &snap, &node));
            })
            .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "datapath event reader stopped");
            }
        });
        tokio::spawn(report_lost_events(state.clone()));
    }

    if state.config.endpoints.lab {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(endpoint::lab_source::watch(
            Duration::from_millis(state.config.endpoints.lab_poll_ms),
            state.config.endpoints.lab_names.clone(),
            tx,
        ));
        tokio::spawn(apply_source(state.clone(), SourceKind::Lab, rx));
        state
            .set_component("endpoints/lab", ComponentState::Ok, "watching lab state")
            .await;
    } else {
        state
            .set_component(
                "endpoints/lab",
                ComponentState::Disabled,
                "endpoints.lab: false",
            )
            .await;
    }

    tokio::spawn(collect_conntrack(state.clone()));
    let l7_proxy = proxy::start(&state).await;
    let observability = observability::start(&state).await?;
    if state.config.plugins.bundled {
        let installed = crate::plugin::bundled::install_missing(&state.plugins);
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
    let detail = format!(
        "{} installed in {}",
        state.plugins.list().len(),
        state.config.plugins.dir(&state.config.state_dir).display()
    );
    state
        .set_component("plugins", ComponentState::Ok, detail)
        .await;

    let socket_path = state.config.socket_path.clone();
    let server = tonic::transport::Server::builder()
        .add_service(DaemonServer::new(DaemonService::new(state.clone())))
        .add_service(PoliciesServer::new(PolicyService::new(state.clone())))
        .add_optional_service(observability.observer())
        .add_optional_service(observability.peer())
        .add_service(api::plugin::PluginService::server(state.plugins.clone()))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    let result = server.await;
    observability.stop();
    proxy::stop(l7_proxy);
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("agent stopped");
    result.map_err(Into::into)
}

/// Starts the live L7 path on the datapath's payload copies, after making the
/// protocol switches' ports visible.
async fn start_l7(state: &Arc<AgentState>, map: aya::maps::Map) {
    let l7 = &state.config.l7;
    let mut global_ports = std::collections::BTreeSet::new();
    for protocol in l7.global_protocols() {
        match state.plugins.for_protocol(protocol) {
            Some(plugin) => global_ports.extend(plugin.info.default_ports.iter().copied()),
            None => tracing::warn!(
                protocol,
                "l7.{protocol}Protocol is on but no plugin for it is installed"
            ),
        }
    }
    let (snapshot, policy) = {
        let mut controller = state.controller.lock().await;
        if let Err(e) = controller.set_l7_ports(&global_ports) {
            tracing::error!(error = %e, "could not set the globally visible L7 ports");
        }
        (controller.snapshot(), controller.l7_policy())
    };
    let config = crate::l7::live::LiveConfig {
        buffer_pages: l7.buffer_pages as usize,
        queue: l7.queue_size as usize,
        reassembly: l7.reassembly(),
        global_ports: global_ports.clone(),
    };
    match crate::l7::live::start(
        map,
        config,
        state.plugins.clone(),
        snapshot,
        policy,
        state.flows.clone(),
    ) {
        Ok(stats) => {
            state
                .metrics
                .register("l7", Arc::new(crate::l7::live::LiveCollector(stats)));
            let detail = if global_ports.is_empty() {
                "ports with L7 policy".to_string()
            } else {
                format!("ports with L7 policy, and {global_ports:?} everywhere")
            };
            state.set_component("l7", ComponentState::Ok, detail).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "L7 path not started");
            state
                .set_component("l7", ComponentState::Error, e.to_string())
                .await;
        }
    }
}

/// Turns events the datapath could not queue (full ring) into LostEvents, once a
/// second, so `observe` and `hubble_lost_events_total` show them.
async fn report_lost_events(state: Arc<AgentState>) {
    use crate::api::proto::flow::{LostEvent, LostEventSource};
    let counters = DatapathCollector::new(&state.config.bpf.pin_path, Default::default());
    let mut seen = counters.lost_events();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = counters.lost_events();
        if now > seen {
            state.flows.push_lost(LostEvent {
                source: LostEventSource::PerfEventRingBuffer as i32,
                num_events_lost: now - seen,
                ..LostEvent::default()
            });
            seen = now;
        }
    }
}

/// Garbage-collects conntrack every 30 seconds and warns when the table fills.
async fn collect_conntrack(state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut controller = state.controller.lock().await;
        let Some(capacity) = controller.datapath().map(|d| d.sizes.conntrack) else {
            return;
        };
        let (left, removed) = controller.gc_conntrack();
        drop(controller);
        let pressure = left as f64 / f64::from(capacity.max(1));
        if pressure > 0.9 {
            tracing::warn!(
                entries = left,
                capacity,
                "conntrack map above 90%: oldest connections are being evicted; raise bpf.ctGlobalTcpMax"
            );
        }
        tracing::debug!(entries = left, removed, "conntrack garbage collected");
    }
}

/// Applies a source's successive full listings to the registry.
async fn apply_source(
    state: Arc<AgentState>,
    source: SourceKind,
    mut rx: mpsc::Receiver<Vec<endpoint::EndpointSpec>>,
) {
    while let Some(specs) = rx.recv().await {
        let count = specs.len();
        let mut controller = state.controller.lock().await;
        // Keep the endpoint numbers the pinned datapath already uses.
        let pinned = controller.pinned_endpoint_ids();
        let (errors, endpoints) = {
            let mut registry = state.registry.write().await;
            let errors =
                registry.sync_source(source, specs, |spec| pinned.get(&spec.ifindex).copied());
            (errors, registry.list().cloned().collect::<Vec<_>>())
        };
        for err in &errors {
            tracing::warn!(?source, error = %err, "endpoint refused");
        }
        let result = controller.set_endpoints(endpoints);
        drop(controller);
        match result {
            Ok(()) => {
                state
                    .set_component("policy", ComponentState::Ok, "endpoints regenerated")
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, "endpoint regeneration failed");
                state
                    .set_component("policy", ComponentState::Error, e.to_string())
                    .await;
            }
        }
        tracing::info!(
            ?source,
            endpoints = count,
            refused = errors.len(),
            "endpoints synced"
        );
    }
}
