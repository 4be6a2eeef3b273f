//! `loupe relay`: Hubble Relay's job. It finds the agents through their peer
//! services (`peer.Peer/Notify`), connects to each (plaintext, TLS or mutual TLS,
//! with Hubble Relay's `--tls-*` options), and serves `observer.Observer` for all
//! of them: flows merged in time order, `ServerStatus` summed with the connected
//! and unavailable nodes, `GetNodes`, `GetNamespaces`. A node that is down is
//! reported, never fatal.

pub mod merge;
pub mod observer;
pub mod peers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use loupe_proto::observer::observer_server::ObserverServer;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use observer::RelayObserver;
use peers::{ClientTls, Peers};

/// How the relay runs (Hubble Relay's flags, same names and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Address the relay's Observer listens on.
    #[arg(long, default_value = "0.0.0.0:4245")]
    pub listen_address: SocketAddr,
    /// A peer service to learn nodes from (`host:port`, or `unix:///path` of an
    /// agent's socket); repeat for several. Each agent's own peer service
    /// announces that agent.
    #[arg(long = "peer-service", required = true)]
    pub peer_services: Vec<String>,
    /// Responses held to sort the merged stream by time.
    #[arg(long, default_value_t = 100)]
    pub sort_buffer_len_max: usize,
    /// How long a response may wait in the sort buffer (`1s`, `500ms`).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sort_buffer_drain_timeout: Duration,
    /// Dial the agents in plaintext.
    #[arg(long)]
    pub disable_client_tls: bool,
    /// CA bundles the agents' certificates are checked against.
    #[arg(long)]
    pub tls_hubble_server_ca_files: Vec<PathBuf>,
    /// Client certificate for agents that require one (mutual TLS).
    #[arg(long, requires = "tls_client_key_file")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// Its key.
    #[arg(long, requires = "tls_client_cert_file")]
    pub tls_client_key_file: Option<PathBuf>,
    /// Serve the relay's own Observer in plaintext.
    #[arg(long)]
    pub disable_server_tls: bool,
    /// The relay's server certificate.
    #[arg(long, requires = "tls_relay_server_key_file")]
    pub tls_relay_server_cert_file: Option<PathBuf>,
    /// Its key.
    #[arg(long, requires = "tls_relay_server_cert_file")]
    pub tls_relay_server_key_file: Option<PathBuf>,
    /// CA bundles the relay's clients must present a certificate from (mutual TLS).
    #[arg(long)]
    pub tls_relay_client_ca_files: Vec<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    loupe_proto::time::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// The relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A certificate or key file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Contradictory or missing TLS options.
    #[error("{0}")]
    Tls(String),
    /// The listener.
    #[error("relay listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server.
    #[error("relay server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, RelayError> {
    std::fs::read(path).map_err(|source| RelayError::Read {
        path: path.clone(),
        source,
    })
}

impl RelayArgs {
    fn client_tls(&self) -> Result<Option<ClientTls>, RelayError> {
        if self.disable_client_tls {
            return Ok(None);
        }
        if self.tls_hubble_server_ca_files.is_empty() {
            return Err(RelayError::Tls(
                "client TLS needs --tls-hubble-server-ca-files (or --disable-client-tls)".into(),
            ));
        }
        let mut ca = Vec::new();
        for file in &self.tls_hubble_server_ca_files {
            ca.extend(read(file)?);
            ca.push(b'\n');
        }
        let identity = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(Some(ClientTls {
            ca: Some(ca),
            identity,
        }))
    }

    fn server_tls(&self) -> Result<Option<ServerTlsConfig>, RelayError> {
        if self.disable_server_tls {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (
            &self.tls_relay_server_cert_file,
            &self.tls_relay_server_key_file,
        ) else {
            return Err(RelayError::Tls(
                "server TLS needs --tls-relay-server-cert-file and --tls-relay-server-key-file \
                 (or --disable-server-tls)"
                    .into(),
            ));
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        for ca in &self.tls_relay_client_ca_files {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(tls))
    }
}

/// Runs the relay until `shutdown` resolves.
pub async fn run(
    args: RelayArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let peers = Peers::new(args.client_tls()?);
    let server_tls = args.server_tls()?;
    let listener = tokio::net::TcpListener::bind(args.listen_address)
        .await
        .map_err(|source| RelayError::Listen {
            addr: args.listen_address,
            source,
        })?;
    let local = listener.local_addr().unwrap_or(args.listen_address);
    let mut discovery = Vec::new();
    for source in &args.peer_services {
        discovery.push(tokio::spawn(peers.clone().discover(source.clone())));
    }
    // `hubble status` checks Hubble's name; gRPC's convention and the server as
    // a whole are answered too.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ObserverServer<RelayObserver>>().await;
    for name in [loupe_proto::observer::HEALTH_SERVICE, ""] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let service = RelayObserver::new(
        peers,
        args.sort_buffer_len_max,
        args.sort_buffer_drain_timeout,
    );
    let mut builder = Server::builder();
    let tls = server_tls.is_some();
    if let Some(config) = server_tls {
        builder = builder.tls_config(config)?;
    }
    tracing::info!(addr = %local, tls, peer_services = ?args.peer_services, "relay serving");
    let result = builder
        .add_service(health_service)
        .add_service(ObserverServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    for task in discovery {
        task.abort();
    }
    result.map_err(RelayError::Serve)
}
