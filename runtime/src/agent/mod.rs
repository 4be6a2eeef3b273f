//! `loupe agent`: wires the endpoint sources, the registry and the API together and
//! runs until SIGINT / SIGTERM.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{RwLock, mpsc};
use tokio_stream::wrappers::UnixListenerStream;

use crate::api::{self, daemon::DaemonService, proto::daemon::daemon_server::DaemonServer};
use crate::config::AgentConfig;
use crate::endpoint::{self, EndpointRegistry, SourceKind};

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
}

impl AgentState {
    /// Fresh state for a configuration.
    pub fn new(config: AgentConfig) -> Self {
        Self {
            node_name: config.node_name(),
            config,
            started: Instant::now(),
            registry: RwLock::new(EndpointRegistry::new()),
            components: RwLock::new(BTreeMap::new()),
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
    let state = Arc::new(AgentState::new(config));
    let listener = api::bind_socket(&state.config.socket_path)?;
    tracing::info!(socket = %state.config.socket_path.display(), node = %state.node_name, "agent starting");

    if state.config.endpoints.lab {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(endpoint::lab_source::watch(
            Duration::from_millis(state.config.endpoints.lab_poll_ms),
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

    let plugin_dir = state.config.plugins.dir(&state.config.state_dir);
    let plugins = Arc::new(crate::plugin::PluginManager::open(
        &plugin_dir,
        state.config.plugins.limits(),
    )?);
    let detail = format!(
        "{} installed in {}",
        plugins.list().len(),
        plugin_dir.display()
    );
    state
        .set_component("plugins", ComponentState::Ok, detail)
        .await;

    let socket_path = state.config.socket_path.clone();
    let server = tonic::transport::Server::builder()
        .add_service(DaemonServer::new(DaemonService::new(state.clone())))
        .add_service(api::plugin::PluginService::server(plugins))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    let result = server.await;
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("agent stopped");
    result.map_err(Into::into)
}

/// Applies a source's successive full listings to the registry.
async fn apply_source(
    state: Arc<AgentState>,
    source: SourceKind,
    mut rx: mpsc::Receiver<Vec<endpoint::EndpointSpec>>,
) {
    while let Some(specs) = rx.recv().await {
        let count = specs.len();
        let errors = state
            .registry
            .write()
            .await
            .sync_source(source, specs, |_| None);
        for err in &errors {
            tracing::warn!(?source, error = %err, "endpoint refused");
        }
        tracing::info!(
            ?source,
            endpoints = count,
            refused = errors.len(),
            "endpoints synced"
        );
    }
}
