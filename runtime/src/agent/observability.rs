//! Starts what serves flows and metrics: the Observer / Peer services (on the
//! agent socket, and on TCP with TLS when `hubble.listenAddress` is set), the
//! flow-metrics subscriber and the two `/metrics` listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::{AgentState, ComponentState};
use crate::api::observer::ObserverService;
use crate::api::peer::PeerService;
use crate::api::proto::observer::observer_server::ObserverServer;
use crate::api::proto::peer::peer_server::PeerServer;
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
}

/// Running observability tasks; dropped or stopped with the agent.
#[derive(Debug)]
pub(super) struct Observability {
    state: Arc<AgentState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observability {
    pub(super) fn observer(&self) -> Option<ObserverServer<ObserverService>> {
        self.state
            .config
            .hubble
            .enabled
            .then(|| ObserverServer::new(ObserverService::new(self.state.clone())))
    }

    pub(super) fn peer(&self) -> Option<PeerServer<PeerService>> {
        self.state
            .config
            .hubble
            .enabled
            .then(|| PeerServer::new(PeerService::new(self.state.clone())))
    }

    pub(super) fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ObservabilityError> {
    std::fs::read(path).map_err(|source| ObservabilityError::TlsFile {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) async fn start(state: &Arc<AgentState>) -> Result<Observability, ObservabilityError> {
    let cfg = &state.config;
    let mut tasks = Vec::new();

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
        let s = state.clone();
        state.metrics.register_fn("components", move || {
            // try_read: a scrape never waits on a writer.
            let mut f = metrics::MetricFamily::new(
                "loupe_component_up",
                "1 when a component works, 0 when it fails (disabled ones are absent).",
                metrics::MetricKind::Gauge,
            );
            if let Ok(components) = s.components.try_read() {
                for (name, c) in components.iter() {
                    if c.state != ComponentState::Disabled {
                        let up = if c.state == ComponentState::Ok {
                            1.0
                        } else {
                            0.0
                        };
                        f = f.value(&[("component", name)], up);
                    }
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
        state
            .set_component(
                "metrics/prometheus",
                ComponentState::Ok,
                format!("/metrics on {addr}"),
            )
            .await;
    } else {
        state
            .set_component(
                "metrics/prometheus",
                ComponentState::Disabled,
                "prometheus.enabled: false",
            )
            .await;
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
        state
            .set_component(
                "metrics/hubble",
                ComponentState::Ok,
                format!("/metrics on {addr}"),
            )
            .await;
    } else {
        state
            .set_component(
                "metrics/hubble",
                ComponentState::Disabled,
                "hubble.metrics.enabled is empty",
            )
            .await;
    }

    if cfg.hubble.enabled {
        state
            .set_component(
                "hubble",
                ComponentState::Ok,
                format!("ring of {} flows", cfg.hubble.event_buffer_capacity),
            )
            .await;
    } else {
        state
            .set_component("hubble", ComponentState::Disabled, "hubble.enabled: false")
            .await;
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
        let router = builder
            .add_service(ObserverServer::new(ObserverService::new(state.clone())))
            .add_service(PeerServer::new(PeerService::new(state.clone())));
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
            .set_component("hubble/tcp", ComponentState::Ok, format!("{addr} ({tls})"))
            .await;
    }

    Ok(Observability {
        state: state.clone(),
        tasks,
    })
}
