//! The accept loop and the per-connection relay.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::inspect::{Action, ConnInfo, InspectorFactory};
use super::transparent;
use crate::metrics::{MetricFamily, MetricKind};
use loupe_proto::flow::Endpoint;

/// Bytes read from either side at once.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes queued for one side before the proxy stops reading (per direction).
const MAX_QUEUED: usize = 256 * 1024;
/// Pending connections per listener.
const BACKLOG: i32 = 1024;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listener could not be created (needs `CAP_NET_ADMIN` for
    /// `IP_TRANSPARENT`, and a free port).
    #[error("L7 proxy listener on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The proxy's threads could not be started.
    #[error("L7 proxy threads: {0}")]
    Threads(std::io::Error),
}

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The port both listeners (IPv4, IPv6) use (`l7.proxyPort`).
    pub port: u16,
    /// Connections carried at once; more are reset (`l7.proxyMaxConnections`).
    pub max_connections: usize,
    /// Time allowed to reach the original destination.
    pub connect_timeout: Duration,
}

/// Resolves an address to its endpoint (identity, pod, labels).
pub type Resolver = Arc<dyn Fn(IpAddr) -> Option<Endpoint> + Send + Sync>;

/// Counters of the proxy (read by metrics and tests).
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted from redirected clients.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections whose upstream connect failed.
    pub upstream_failures: AtomicU64,
    /// Connections reset by their inspector (denied or failed closed).
    pub resets: AtomicU64,
    /// Bytes sent to servers.
    pub bytes_to_server: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_to_client: AtomicU64,
}

impl ProxyStats {
    /// The counters as Prometheus families (`loupe_proxy_*`).
    pub fn families(&self) -> Vec<MetricFamily> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        vec![
            MetricFamily::new(
                "loupe_proxy_connections_total",
                "Connections the L7 proxy accepted from redirected clients.",
                MetricKind::Counter,
            )
            .value(&[], get(&self.accepted)),
            MetricFamily::new(
                "loupe_proxy_connections_active",
                "Connections the L7 proxy carries now.",
                MetricKind::Gauge,
            )
            .value(&[], get(&self.active)),
            MetricFamily::new(
                "loupe_proxy_connection_failures_total",
                "Proxied connections that ended abnormally, by reason.",
                MetricKind::Counter,
            )
            .value(&[("reason", "limit")], get(&self.refused))
            .value(&[("reason", "upstream")], get(&self.upstream_failures))
            .value(&[("reason", "reset")], get(&self.resets)),
            MetricFamily::new(
                "loupe_proxy_bytes_total",
                "Bytes the L7 proxy forwarded, by direction.",
                MetricKind::Counter,
            )
            .value(&[("direction", "to_server")], get(&self.bytes_to_server))
            .value(&[("direction", "to_client")], get(&self.bytes_to_client)),
        ]
    }
}

/// A running proxy: listeners on the proxy port; each connection its own task
/// on one of the proxy's threads (one per core, each a single-threaded
/// runtime), so a connection's reads, parsing and writes stay on one thread and
/// connections on different threads share no lock (see
/// [`super::PluginInspectorFactory`]'s worker shards).
pub struct Proxy {
    stats: Arc<ProxyStats>,
    listeners: Vec<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
    /// Dropped with the proxy: its threads end, and their connections with them.
    _threads: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// How many threads the proxy runs connections on: one per core. A connection
/// runs on thread `id % threads()`.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

/// Starts `n` proxy threads; returns their runtimes' handles and their stop
/// senders.
fn start_threads(
    n: usize,
) -> std::io::Result<(Vec<Handle>, Vec<tokio::sync::oneshot::Sender<()>>)> {
    let mut handles = Vec::new();
    let mut stops = Vec::new();
    for i in 0..n {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(runtime.handle().clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        std::thread::Builder::new()
            .name(format!("loupe-proxy-{i}"))
            .spawn(move || {
                // Runs the connections spawned on it until the proxy is dropped.
                let _ = runtime.block_on(stopped);
            })?;
    }
    Ok((handles, stops))
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addrs", &self.addrs)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Binds the IPv4 listener (required) and the IPv6 one (skipped with a
    /// warning when the host has no IPv6) and starts accepting. Needs a tokio
    /// runtime.
    pub fn start(
        settings: ProxySettings,
        resolver: Resolver,
        factory: Arc<dyn InspectorFactory>,
    ) -> Result<Self, ProxyError> {
        let stats = Arc::new(ProxyStats::default());
        let (handles, stops) = start_threads(threads()).map_err(ProxyError::Threads)?;
        let handles = Arc::new(handles);
        let limit = Arc::new(Semaphore::new(settings.max_connections));
        let next_id = Arc::new(AtomicU64::new(1));
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            let addr = SocketAddr::new(ip, settings.port);
            let listener = match transparent::listener(addr, BACKLOG) {
                Ok(l) => l,
                Err(source) if ip.is_ipv6() => {
                    tracing::warn!(%addr, error = %source, "no IPv6 L7 proxy listener");
                    continue;
                }
                Err(source) => return Err(ProxyError::Listen { addr, source }),
            };
            addrs.push(addr);
            let (stats, limit, next_id, resolver, factory, settings, handles) = (
                stats.clone(),
                limit.clone(),
                next_id.clone(),
                resolver.clone(),
                factory.clone(),
                settings.clone(),
                handles.clone(),
            );
            listeners.push(tokio::spawn(async move {
                loop {
                    let (client, peer) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "L7 proxy accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        transparent::reset(&client);
                        continue;
                    };
                    let Ok(server) = client.local_addr() else {
                        continue;
                    };
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let conn = ConnInfo {
                        id: next_id.fetch_add(1, Ordering::Relaxed),
                        client: peer,
                        server,
                        client_endpoint: resolver(peer.ip()),
                        server_endpoint: resolver(server.ip()),
                        accepted: Instant::now(),
                    };
                    let (stats, factory, timeout) =
                        (stats.clone(), factory.clone(), settings.connect_timeout);
                    // The connection moves to its thread (the same one for the
                    // same worker shard: both follow the connection id).
                    let Ok(client) = client.into_std() else {
                        continue;
                    };
                    let thread = usize::try_from(conn.id).unwrap_or(0) % handles.len().max(1);
                    handles[thread].spawn(async move {
                        let Ok(client) = TcpStream::from_std(client) else {
                            return;
                        };
                        stats.active.fetch_add(1, Ordering::Relaxed);
                        handle(client, conn, factory, &stats, timeout).await;
                        stats.active.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
            }));
        }
        tracing::info!(?addrs, "L7 proxy listening");
        Ok(Self {
            stats,
            listeners,
            addrs,
            _threads: stops,
        })
    }

    /// The proxy's counters.
    pub fn stats(&self) -> Arc<ProxyStats> {
        self.stats.clone()
    }

    /// The addresses it listens on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting (open connections finish on their own).
    pub fn stop(&self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(
    client: TcpStream,
    conn: ConnInfo,
    factory: Arc<dyn InspectorFactory>,
    stats: &ProxyStats,
    timeout: Duration,
) {
    let _ = client.set_nodelay(true);
    let upstream = match transparent::connect_upstream(
        conn.client.ip(),
        conn.server,
        loupe_common::proxy::FROM_PROXY,
        timeout,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(conn = conn.id, client = %conn.client, server = %conn.server, error = %e, "L7 proxy: upstream connect failed");
            transparent::reset(&client);
            return;
        }
    };
    tracing::debug!(conn = conn.id, client = %conn.client, server = %conn.server, "L7 proxy: connection");
    let mut inspector = factory.inspector(&conn);
    if let Err(reason) = relay(client, upstream, inspector.as_mut(), stats).await {
        stats.resets.fetch_add(1, Ordering::Relaxed);
        tracing::info!(conn = conn.id, client = %conn.client, server = %conn.server, %reason, "L7 proxy: connection reset");
    }
    inspector.closed();
}

/// Bytes queued for one side, written as the side accepts them.
#[derive(Default)]
struct Outbox {
    chunks: std::collections::VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Bytes queued in total.
    queued: usize,
}

impl Outbox {
    fn push(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    fn front(&self) -> &[u8] {
        self.chunks
            .front()
            .and_then(|c| c.get(self.offset..))
            .unwrap_or_default()
    }

    fn advance(&mut self, n: usize) {
        self.offset += n;
        self.queued -= n;
        if self.chunks.front().is_some_and(|c| self.offset >= c.len()) {
            self.chunks.pop_front();
            self.offset = 0;
        }
    }

    fn is_empty(&self) -> bool {
        self.queued == 0
    }
}

/// Moves bytes both ways through the inspector until both sides have closed;
/// `Err(reason)` when the inspector reset the connection.
///
/// Reads and writes are multiplexed on one task, so a side that is slow to read
/// never stops the other direction; reading a side pauses (backpressure) while
/// the outbox its bytes go to holds more than [`MAX_QUEUED`] bytes.
async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    inspector: &mut dyn super::Inspector,
    stats: &ProxyStats,
) -> Result<(), String> {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = upstream.into_split();
    let mut client_buf = vec![0u8; READ_CHUNK];
    let mut server_buf = vec![0u8; READ_CHUNK];
    let (mut to_client, mut to_server) = (Outbox::default(), Outbox::default());
    let (mut client_eof, mut server_eof) = (false, false);
    let (mut client_shut, mut server_shut) = (false, false);
    loop {
        // Half-closes follow once everything before them is written.
        if client_eof && to_server.is_empty() && !server_shut {
            let _ = server_wr.shutdown().await;
            server_shut = true;
        }
        if server_eof && to_client.is_empty() && !client_shut {
            let _ = client_wr.shutdown().await;
            client_shut = true;
        }
        if client_shut && server_shut {
            return Ok(());
        }
        // Client bytes keep flowing while the server takes them, even when the
        // client is not reading its replies yet (a pipeline written before it is
        // read, as servers allow); only a flood of local deny replies stops them.
        let read_client = to_server.queued < MAX_QUEUED
            && to_client.queued < 4 * MAX_QUEUED
            && !inspector.client_paused();
        let read_server = to_client.queued < MAX_QUEUED;
        let actions = tokio::select! {
            r = client_rd.read(&mut client_buf), if !client_eof && read_client => match r {
                Ok(0) | Err(_) => {
                    client_eof = true;
                    continue;
                }
                Ok(n) => inspector.client_bytes(&client_buf[..n]),
            },
            r = server_rd.read(&mut server_buf), if !server_eof && read_server => match r {
                Ok(0) | Err(_) => {
                    server_eof = true;
                    continue;
                }
                Ok(n) => inspector.server_bytes(&server_buf[..n]),
            },
            r = client_wr.write(to_client.front()), if !to_client.is_empty() => match r {
                Ok(n) if n > 0 => {
                    to_client.advance(n);
                    stats.bytes_to_client.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                // The client is gone: closing the other side is all that is left.
                _ => return Ok(()),
            },
            r = server_wr.write(to_server.front()), if !to_server.is_empty() => match r {
                Ok(n) if n > 0 => {
                    to_server.advance(n);
                    stats.bytes_to_server.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                _ => return Ok(()),
            },
        };
        for action in actions {
            match action {
                Action::ToServer(bytes) => to_server.push(bytes),
                Action::ToClient(bytes) => to_client.push(bytes),
                Action::Reset(reason) => {
                    transparent::reset(client_rd.as_ref());
                    transparent::reset(server_rd.as_ref());
                    // Dropping a write half would send a FIN before the reset.
                    client_wr.forget();
                    server_wr.forget();
                    return Err(reason);
                }
            }
        }
    }
}
