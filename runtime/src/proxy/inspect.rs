//! What the proxy does with the bytes between client and server.

use std::net::SocketAddr;
use std::time::Instant;

use loupe_proto::flow::Endpoint;

/// A proxied connection, as the proxy knows it when it accepts it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Proxy-wide connection number.
    pub id: u64,
    /// The client's address and port (as the client sent).
    pub client: SocketAddr,
    /// The original destination (the accepted socket's local address).
    pub server: SocketAddr,
    /// The client endpoint (identity, pod, labels), if it is a known address.
    pub client_endpoint: Option<Endpoint>,
    /// The server endpoint, if it is a known address.
    pub server_endpoint: Option<Endpoint>,
    /// When the proxy accepted it.
    pub accepted: Instant,
}

/// One step the proxy takes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes to the server.
    ToServer(Vec<u8>),
    /// Send these bytes to the client.
    ToClient(Vec<u8>),
    /// Reset both sides; the reason is logged and reported.
    Reset(String),
}

/// Per-connection logic between the two sockets. Called from one task, in
/// stream order; every answer is bounded by what the inspector holds.
pub trait Inspector: Send {
    /// Bytes from the client. Returns what to do, in order.
    fn client_bytes(&mut self, bytes: &[u8]) -> Vec<Action>;
    /// Bytes from the server. Returns what to do, in order.
    fn server_bytes(&mut self, bytes: &[u8]) -> Vec<Action>;
    /// Whether the proxy should stop reading the client for now (the
    /// inspector holds enough of its bytes); asked again after every step.
    fn client_paused(&self) -> bool {
        false
    }
    /// The connection ended (either side closed or it was reset).
    fn closed(&mut self) {}
}

/// Makes the inspector of each accepted connection.
pub trait InspectorFactory: Send + Sync {
    /// The inspector for `conn`.
    fn inspector(&self, conn: &ConnInfo) -> Box<dyn Inspector>;
}

/// Forwards everything unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Inspector for PassThrough {
    fn client_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        vec![Action::ToServer(bytes.to_vec())]
    }

    fn server_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        vec![Action::ToClient(bytes.to_vec())]
    }
}

/// Gives every connection a [`PassThrough`].
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughFactory;

impl InspectorFactory for PassThroughFactory {
    fn inspector(&self, _conn: &ConnInfo) -> Box<dyn Inspector> {
        Box::new(PassThrough)
    }
}
