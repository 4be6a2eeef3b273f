//! The nodes a relay serves: found through each configured peer service's
//! `peer.Peer/Notify` (added / updated / deleted), dialled at the address the
//! notification gives (its unspecified host replaced by the peer service's), and
//! marked connected or unavailable by the calls made to them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use loupe_proto::peer::{ChangeNotificationType, NotifyRequest, peer_client::PeerClient};
use loupe_proto::relay::NodeState;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// TLS towards the agents (Hubble Relay's `--tls-*` client options).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA bundle the agents' certificates are checked against.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, for agents that require them (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// One node as the relay knows it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Where its Observer is dialled.
    pub address: String,
    /// TLS server name, when the node serves TLS.
    pub tls_server_name: Option<String>,
    /// Connected, or unavailable since the last failed call.
    pub state: NodeState,
    /// Why it is unavailable.
    pub message: String,
    /// The peer service that announced it.
    source: String,
    channel: Channel,
}

impl Node {
    /// A channel to the node's Observer.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// The node set, shared by the discovery tasks and the Observer service.
#[derive(Debug, Clone)]
pub struct Peers {
    nodes: Arc<RwLock<BTreeMap<String, Node>>>,
    tls: Option<ClientTls>,
}

/// An address the relay cannot dial.
#[derive(Debug, thiserror::Error)]
#[error("peer address {address:?}: {message}")]
pub struct AddressError {
    address: String,
    message: String,
}

impl Peers {
    /// An empty set; `tls` is used towards every node (None: plaintext).
    pub fn new(tls: Option<ClientTls>) -> Self {
        Self {
            nodes: Arc::default(),
            tls,
        }
    }

    /// Every node, by name.
    pub fn nodes(&self) -> Vec<Node> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Records a call's outcome on a node.
    pub fn mark(&self, name: &str, outcome: Result<(), String>) {
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get_mut(name) {
            match outcome {
                Ok(()) => {
                    if node.state != NodeState::NodeConnected {
                        tracing::info!(node = name, "node connected");
                    }
                    node.state = NodeState::NodeConnected;
                    node.message.clear();
                }
                Err(message) => {
                    if node.state != NodeState::NodeUnavailable {
                        tracing::warn!(node = name, %message, "node unavailable");
                    }
                    node.state = NodeState::NodeUnavailable;
                    node.message = message;
                }
            }
        }
    }

    /// Adds or updates a node announced by `source`.
    pub fn upsert(
        &self,
        source: &str,
        name: &str,
        address: &str,
        tls_server_name: Option<String>,
    ) -> Result<(), AddressError> {
        let dial = dial_address(source, address)?;
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(name)
            && node.address == dial
            && node.tls_server_name == tls_server_name
        {
            return Ok(());
        }
        let channel = self.channel(&dial, tls_server_name.as_deref())?;
        tracing::info!(node = name, address = %dial, "node added");
        nodes.insert(
            name.to_string(),
            Node {
                name: name.to_string(),
                address: dial,
                tls_server_name,
                state: NodeState::UnknownNodeState,
                message: String::new(),
                source: source.to_string(),
                channel,
            },
        );
        Ok(())
    }

    /// Forgets a node.
    pub fn remove(&self, name: &str) {
        if self
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
        {
            tracing::info!(node = name, "node removed");
        }
    }

    /// Marks every node `source` announced unavailable (its peer service is).
    fn source_down(&self, source: &str, message: &str) {
        let names: Vec<String> = self
            .nodes()
            .into_iter()
            .filter(|n| n.source == source)
            .map(|n| n.name)
            .collect();
        for name in names {
            self.mark(&name, Err(message.to_string()));
        }
    }

    /// A lazily connecting channel to `address` (`host:port`, or `unix:///path`).
    pub fn channel(
        &self,
        address: &str,
        server_name: Option<&str>,
    ) -> Result<Channel, AddressError> {
        let bad = |message: String| AddressError {
            address: address.to_string(),
            message,
        };
        if let Some(path) = address.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            let endpoint = Endpoint::from_static("http://loupe.agent");
            return Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            );
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = server_name {
                config = config.domain_name(name);
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// Follows `source`'s peer service until the task is dropped: its
    /// notifications add, update and remove nodes; when it fails, its nodes are
    /// marked unavailable and it is asked again with backoff.
    pub async fn discover(self, source: String) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.follow(&source).await {
                Ok(()) => {
                    self.source_down(&source, "peer service closed its stream");
                }
                Err(message) => {
                    tracing::warn!(peer_service = %source, %message, "peer service");
                    self.source_down(&source, &format!("peer service {source}: {message}"));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn follow(&self, source: &str) -> Result<(), String> {
        let channel = self.channel(source, None).map_err(|e| e.to_string())?;
        let mut stream = PeerClient::new(channel)
            .notify(NotifyRequest {})
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        while let Some(change) = stream
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            match ChangeNotificationType::try_from(change.r#type) {
                Ok(ChangeNotificationType::PeerDeleted) => self.remove(&change.name),
                Ok(ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated) => {
                    let server_name = change.tls.map(|t| t.server_name);
                    if let Err(e) = self.upsert(source, &change.name, &change.address, server_name)
                    {
                        tracing::warn!(node = %change.name, error = %e, "peer not added");
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Where to dial a node announced at `address` by the peer service at `source`:
/// a socket path as `unix://`, an unspecified host (`0.0.0.0:4244`, `:4244`) as
/// the peer service's host.
pub fn dial_address(source: &str, address: &str) -> Result<String, AddressError> {
    if address.is_empty() {
        return Ok(source.to_string());
    }
    if address.starts_with('/') {
        return Ok(format!("unix://{address}"));
    }
    if address.starts_with("unix://") {
        return Ok(address.to_string());
    }
    let text = if address.starts_with(':') {
        format!("0.0.0.0{address}")
    } else {
        address.to_string()
    };
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let host = source
                .rsplit_once(':')
                .map(|(h, _)| h)
                .filter(|h| !h.is_empty() && !h.starts_with("unix"))
                .ok_or_else(|| AddressError {
                    address: address.to_string(),
                    message: format!("unspecified host and no host in the peer service {source:?}"),
                })?;
            Ok(format!("{host}:{}", addr.port()))
        }
        Ok(addr) => Ok(addr.to_string()),
        // A host name and port: dialled as given.
        Err(_) if address.contains(':') => Ok(address.to_string()),
        Err(_) => Err(AddressError {
            address: address.to_string(),
            message: "neither host:port nor a socket path".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_addresses_are_dialled_where_they_can_be_reached() {
        let from = |a: &str| dial_address("10.0.0.7:4244", a).map_err(|e| e.to_string());
        assert_eq!(from("10.0.0.8:4244").unwrap(), "10.0.0.8:4244");
        assert_eq!(from("0.0.0.0:4244").unwrap(), "10.0.0.7:4244");
        assert_eq!(from(":4244").unwrap(), "10.0.0.7:4244");
        assert_eq!(from("[::]:4244").unwrap(), "10.0.0.7:4244");
        assert_eq!(from("").unwrap(), "10.0.0.7:4244");
        assert_eq!(
            from("/run/loupe/loupe.sock").unwrap(),
            "unix:///run/loupe/loupe.sock"
        );
        assert_eq!(from("node-b.example:4244").unwrap(), "node-b.example:4244");
        assert!(from("nonsense").is_err());
        assert!(dial_address("unix:///run/loupe/loupe.sock", ":4244").is_err());
    }
}
