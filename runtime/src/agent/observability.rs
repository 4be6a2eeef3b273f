//! Starts what serves flows and metrics: the Observer / Peer services and
//! `grpc.health.v1.Health` (on the agent socket, and on TCP with TLS when
//! `hubble.listenAddress` is set), the flow-metrics subscriber and the two
//! `/metrics` listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use loupe_proto::observer::observer_server::ObserverServer;
use loupe_proto::peer::peer_server::PeerServer;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The service name Hubble's server reports its health under (`hubble status`).
use super::AgentState;
use crate::api::observer::ObserverService;
use crate::api::peer::PeerService;
use crate::export::Exports;
use crate::export::config::ExportConfig;
use crate::export::config::ExportConfigError;
use crate::health::ComponentState;
use crate::metrics::{self, FlowMetrics, MetricSpec};

/// Something in `hubble.*` / `prometheus.*` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    /// A TLS file could not be read.
    #[error("hubble.tls: reading {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS is on without a certificate or key.
    #[error("hubble.tls: certFile and keyFile are required")]
    MissingTlsFiles,
    /// The TLS configuration was refused.
    #[error("hubble.tls: {0}")]
    Tls(tonic::transport::Error),
    /// A listener could not bind.
    #[error("{what}: binding {addr}: {source}")]
    Bind {
        /// The config key.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A metric spec was refused (config validation normally catches this first).
    #[error("hubble.metrics.enabled: {0}")]
    Metric(#[from] metrics::options::OptionError),
    /// A metrics listener failed.
    #[error(transparent)]
    Listen(#[from] metrics::server::ListenError),
    /// An exporter setting was refused (config validation normally catches this first).
    #[error(transparent)]
    Export(#[from] ExportConfigError),
}

/// Running observability tasks; dropped or stopped with the agent.
#[derive(Debug)]
pub(super) struct Observability {
    /// The Observer and Peer services, when `hubble.enabled`.
    services: Option<(ObserverService, PeerService)>,
    /// `grpc.health.v1.Health`: the server (`""`) and, when Hubble is on,
    /// `hubble.server.Observer`, `observer.Observer` and `peer.Peer` report `SERVING`.
    health: HealthReporter,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Flow exporters (`hubble.export.*`); they stop when this is dropped.
    exports: Arc<Exports>,
}

/// The Observer and Peer services over the agent's flow store and node.
fn services(state: &AgentState) -> (ObserverService, PeerService) {
    let observer = ObserverService::new(
        state.flows.clone(),
        state.node.clone(),
        state.control.summary(),
        state.config.hubble.event_queue_size as usize,
    );
    (
        observer,
        PeerService::new(state.node.clone(), state.cluster_nodes.clone()),
    )
}

impl Observability {
    pub(super) fn observer(&self) -> Option<ObserverServer<ObserverService>> {
        self.services
            .as_ref()
            .map(|(observer, _)| ObserverServer::new(observer.clone()))
    }

    pub(super) fn peer(&self) -> Option<PeerServer<PeerService>> {
        self.services
            .as_ref()
            .map(|(_, peer)| PeerServer::new(peer.clone()))
    }

    pub(super) fn grpc_health(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.health.clone()))
    }

    pub(super) fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        // The last holder: exporters write what they hold and stop.
        drop(self.exports);
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ObservabilityError> {
    std::fs::read(path).map_err(|source| ObservabilityError::TlsFile {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) async fn start(state: &AgentState) -> Result<Observability, ObservabilityError> {
    let cfg = &state.config;
    let mut tasks = Vec::new();
    let health = HealthReporter::new();
    if cfg.hubble.enabled {
        // `hubble status` checks the name Hubble's server registers; gRPC's
        // convention is the service's full name: answer both.
        health
            .set_service_status(
                loupe_proto::observer::HEALTH_SERVICE,
                ServingStatus::Serving,
            )
            .await;
        health
            .set_serving::<ObserverServer<ObserverService>>()
            .await;
        health.set_serving::<PeerServer<PeerService>>().await;
    }

    // The agent's own metrics: pipeline health and flow-derived policy counts.
    let specs = cfg
        .hubble
        .metrics
        .enabled
        .iter()
        .map(|s| MetricSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let want_hubble_metrics = cfg.hubble.enabled && !specs.is_empty();
    let policy_metrics = FlowMetrics::new(Vec::new(), true);
    let flow_metrics = FlowMetrics::new(specs, false);
    let queue = cfg.hubble.event_queue_size as usize;
    if cfg.prometheus.enabled {
        tasks.push(policy_metrics.spawn(&state.flows, queue.max(65_536)));
        let store = state.flows.clone();
        let m = policy_metrics.clone();
        state.metrics.register_fn("flows", move || {
            let mut out = metrics::store_families(&store, false);
            out.extend(
                m.families()
                    .into_iter()
                    .filter(|f| f.name.starts_with("cilium_")),
            );
            out
        });
        let health = state.health.clone();
        state.metrics.register_fn("components", move || {
            let mut f = metrics::MetricFamily::new(
                "loupe_component_up",
                "1 when a component works (with or without a warning), 0 when it fails (disabled ones are absent).",
                metrics::MetricKind::Gauge,
            );
            for (name, c) in health.components() {
                if c.state != ComponentState::Disabled {
                    let up = if c.state == ComponentState::Error {
                        0.0
                    } else {
                        1.0
                    };
                    f = f.value(&[("component", &name)], up);
                }
            }
            vec![f]
        });
        let addr = SocketAddr::new(
            cfg.prometheus
                .address
                .parse()
                .unwrap_or([0, 0, 0, 0].into()),
            cfg.prometheus.port,
        );
        let listener = metrics::server::bind(addr, "prometheus").await?;
        tracing::info!(%addr, "serving agent metrics");
        tasks.push(tokio::spawn(metrics::server::serve(
            listener,
            state.metrics.clone(),
        )));
        state.health.set(
            "metrics/prometheus",
            ComponentState::Ok,
            format!("/metrics on {addr}"),
        );
    } else {
        state.health.set(
            "metrics/prometheus",
            ComponentState::Disabled,
            "prometheus.enabled: false",
        );
    }

    if cfg.health_port != 0 {
        let addr = SocketAddr::new([127, 0, 0, 1].into(), cfg.health_port);
        let listener = metrics::server::bind(addr, "healthPort").await?;
        tracing::info!(%addr, "serving /livez, /readyz and /healthz");
        tasks.push(tokio::spawn(metrics::server::serve_health(
            listener,
            state.health.clone(),
        )));
    }

    if want_hubble_metrics {
        tasks.push(flow_metrics.spawn(&state.flows, queue.max(65_536)));
        let store = state.flows.clone();
        let m = flow_metrics.clone();
        state.hubble_metrics.register_fn("flows", move || {
            let mut out = metrics::store_families(&store, true);
            out.extend(m.families());
            out
        });
        let addr = SocketAddr::new(
            cfg.hubble
                .metrics
                .address
                .parse()
                .unwrap_or([0, 0, 0, 0].into()),
            cfg.hubble.metrics.port,
        );
        let listener = metrics::server::bind(addr, "hubble.metrics").await?;
        tracing::info!(%addr, "serving flow metrics");
        tasks.push(tokio::spawn(metrics::server::serve(
            listener,
            state.hubble_metrics.clone(),
        )));
        state.health.set(
            "metrics/hubble",
            ComponentState::Ok,
            format!("/metrics on {addr}"),
        );
    } else {
        state.health.set(
            "metrics/hubble",
            ComponentState::Disabled,
            "hubble.metrics.enabled is empty",
        );
    }

    let exports = Arc::new(if cfg.hubble.enabled {
        start_exports(state, &cfg.hubble.export)?
    } else {
        Exports::default()
    });
    if !exports.is_empty() {
        register_exports(state, &exports);
    }

    if cfg.hubble.enabled {
        state.health.set(
            "hubble",
            ComponentState::Ok,
            format!("ring of {} flows", cfg.hubble.event_buffer_capacity),
        );
    } else {
        state
            .health
            .set("hubble", ComponentState::Disabled, "hubble.enabled: false");
    }

    if let (true, Some(addr)) = (cfg.hubble.enabled, cfg.hubble_listen_address()) {
        let mut builder = Server::builder();
        if cfg.hubble.tls.enabled {
            let (Some(cert), Some(key)) = (&cfg.hubble.tls.cert_file, &cfg.hubble.tls.key_file)
            else {
                return Err(ObservabilityError::MissingTlsFiles);
            };
            let mut tls =
                ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
            for ca in &cfg.hubble.tls.client_ca_files {
                tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
            }
            builder = builder.tls_config(tls).map_err(ObservabilityError::Tls)?;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ObservabilityError::Bind {
                what: "hubble.listenAddress",
                addr,
                source,
            })?;
        let (observer, peer) = services(state);
        let router = builder
            .add_service(ObserverServer::new(observer))
            .add_service(PeerServer::new(peer))
            .add_service(HealthServer::new(HealthService::from_health_reporter(
                health.clone(),
            )));
        let tls = if cfg.hubble.tls.enabled {
            "TLS"
        } else {
            "plaintext"
        };
        tracing::info!(%addr, tls, "serving the Observer API on TCP");
        tasks.push(tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(err) = router.serve_with_incoming(incoming).await {
                tracing::error!(error = %err, "Observer TCP listener failed");
            }
        }));
        state
            .health
            .set("hubble/tcp", ComponentState::Ok, format!("{addr} ({tls})"));
    }

    Ok(Observability {
        services: cfg.hubble.enabled.then(|| services(state)),
        health,
        tasks,
        exports,
    })
}

/// Starts the flow exporters and offers their counters on both `/metrics`.
fn start_exports(state: &AgentState, cfg: &ExportConfig) -> Result<Exports, ObservabilityError> {
    let queue = (state.config.hubble.event_queue_size as usize).max(65_536);
    let exports = Exports::start(cfg, &state.flows, queue, state.health.clone())?;
    if exports.is_empty() {
        state.health.set(
            "hubble/exporter",
            ComponentState::Disabled,
            "hubble.export.static and .dynamic are off",
        );
    }
    Ok(exports)
}

/// Registers the exporters' families; the registries hold them weakly, so
/// stopping the agent stops the exporters.
fn register_exports(state: &AgentState, exports: &Arc<Exports>) {
    for registry in [&state.metrics, &state.hubble_metrics] {
        let weak = Arc::downgrade(exports);
        registry.register_fn("exporters", move || {
            weak.upgrade().map(|e| e.families()).unwrap_or_default()
        });
    }
}
