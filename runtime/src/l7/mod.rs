//! The L7 path: reassembled TCP streams are handed to the plugin that speaks their
//! protocol, and every request and response becomes a Hubble L7 flow.
//!
//! The [`Engine`] is fed [`reassembly::Event`]s — by `loupe replay` from a capture
//! and by the agent's live path ([`live`]) from the datapath's payload copies — and
//! is the same in both. Per connection it picks a plugin (the protocol policy
//! names for the port, else the plugin attached to the port, else the first that
//! recognises the stream's first bytes), feeds each direction in order, pairs
//! responses with requests (by order or by correlation id) for latency, and turns
//! holes into a resynchronisation: the plugin's state is dropped and parsing resumes
//! at the first chunk the plugin's `sniff` accepts.

pub mod flows;
pub mod live;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub use flows::{ConnContext, RequestSummary};

use crate::plugin::{ConnId, Correlation, Direction, MessageKind, Plugin, PluginManager, Worker};
use crate::reassembly::{ConnKey, Event, Side};
use loupe_proto::flow::Flow;

/// Bounds of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Bytes of a stream's start kept while plugins are asked whether they know it.
    pub sniff_bytes: usize,
    /// Requests per connection waiting for their response; past it the oldest is
    /// forgotten (its response then has no latency).
    pub pending_requests: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            sniff_bytes: 4096,
            pending_requests: 4096,
        }
    }
}

/// Counters of the engine (for `/metrics`).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Connections handed to a plugin.
    pub connections: AtomicU64,
    /// Connections no plugin recognised.
    pub unidentified: AtomicU64,
    /// Requests parsed.
    pub requests: AtomicU64,
    /// Responses parsed.
    pub responses: AtomicU64,
    /// Unpaired messages (server pushes, notifications).
    pub events: AtomicU64,
    /// Responses without a known request.
    pub unpaired: AtomicU64,
    /// Connections whose L7 view stopped on an error (parse error, fault, size).
    pub errors: AtomicU64,
    /// Holes in streams (lost or never-copied bytes).
    pub gaps: AtomicU64,
    /// Bytes skipped after a hole until the plugin recognised a message start.
    pub resync_skipped_bytes: AtomicU64,
}

impl EngineStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

struct Parsing {
    plugin: Arc<Plugin>,
    id: ConnId,
    /// Per direction: waiting for a chunk the plugin recognises after a hole.
    resync: [bool; 2],
    by_order: VecDeque<(u64, RequestSummary)>,
    by_id: HashMap<u64, RequestSummary>,
}

enum State {
    /// No plugin chosen yet: the stream's first bytes, per direction.
    Choosing {
        buffered: [Vec<u8>; 2],
    },
    Parsing(Box<Parsing>),
    /// Not L7 (no plugin knows it), or its L7 view stopped.
    Off,
}

struct Conn {
    ctx: ConnContext,
    state: State,
}

/// Connections and the plugin workers that parse them.
pub struct Engine {
    plugins: Arc<PluginManager>,
    /// One worker per plugin version (by SHA-256).
    workers: HashMap<String, Worker>,
    conns: HashMap<ConnKey, Conn>,
    limits: EngineLimits,
    stats: Arc<EngineStats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connections", &self.conns.len())
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

fn direction(side: Side) -> Direction {
    match side {
        Side::Client => Direction::ToServer,
        Side::Server => Direction::ToClient,
    }
}

impl Engine {
    /// An engine using the plugins `plugins` has active.
    pub fn new(plugins: Arc<PluginManager>, limits: EngineLimits) -> Self {
        Self {
            plugins,
            workers: HashMap::new(),
            conns: HashMap::new(),
            limits,
            stats: Arc::new(EngineStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Connections being followed.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Handles one reassembly event; `context` describes a new connection (called
    /// once, on [`Event::Opened`]). Flows are appended to `out`.
    pub fn handle(
        &mut self,
        event: Event,
        context: &dyn Fn(&ConnKey) -> ConnContext,
        out: &mut Vec<Flow>,
    ) {
        match event {
            Event::Opened { key, .. } => {
                let ctx = context(&key);
                let state = self.choose(&key, &ctx);
                if let Some(old) = self.conns.insert(key, Conn { ctx, state }) {
                    self.release(old.state);
                }
            }
            Event::Data {
                key,
                side,
                time,
                bytes,
            } => {
                if !self.conns.contains_key(&key) {
                    // Data for a connection opened before a restart of the engine.
                    let ctx = context(&key);
                    let state = self.choose(&key, &ctx);
                    self.conns.insert(key, Conn { ctx, state });
                }
                self.data(key, side, time, &bytes, out);
            }
            Event::Gap { key, side, .. } => {
                EngineStats::add(&self.stats.gaps, 1);
                self.gap(key, side);
            }
            Event::Closed { key, .. } => {
                if let Some(conn) = self.conns.remove(&key) {
                    self.release(conn.state);
                }
            }
        }
    }

    /// Drops workers of plugin versions no connection uses any more.
    pub fn collect_workers(&mut self) {
        let active: Vec<String> = self
            .plugins
            .active_plugins()
            .iter()
            .map(|p| p.sha256.clone())
            .collect();
        self.workers
            .retain(|sha, w| w.connections() > 0 || active.contains(sha));
    }

    fn worker(&mut self, plugin: &Arc<Plugin>) -> &mut Worker {
        self.workers
            .entry(plugin.sha256.clone())
            .or_insert_with(|| Worker::new(plugin.clone()))
    }

    fn start(&mut self, plugin: Arc<Plugin>) -> State {
        EngineStats::add(&self.stats.connections, 1);
        let id = self.worker(&plugin).open();
        State::Parsing(Box::new(Parsing {
            plugin,
            id,
            resync: [false, false],
            by_order: VecDeque::new(),
            by_id: HashMap::new(),
        }))
    }

    /// The plugin policy names, else the port's; else sniffing decides.
    fn choose(&mut self, key: &ConnKey, ctx: &ConnContext) -> State {
        let named = ctx
            .protocol
            .as_deref()
            .and_then(|p| self.plugins.for_protocol(p));
        if let Some(plugin) = named.or_else(|| self.plugins.for_port(key.server.port())) {
            return self.start(plugin);
        }
        State::Choosing {
            buffered: [Vec::new(), Vec::new()],
        }
    }

    fn release(&mut self, state: State) {
        if let State::Parsing(p) = state
            && let Some(w) = self.workers.get_mut(&p.plugin.sha256)
        {
            w.close(p.id);
        }
    }

    fn data(
        &mut self,
        key: ConnKey,
        side: Side,
        time: SystemTime,
        bytes: &[u8],
        out: &mut Vec<Flow>,
    ) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        conn.state = match conn.state {
            State::Off => State::Off,
            State::Choosing { mut buffered } => {
                let i = direction(side).index();
                let room = self.limits.sniff_bytes.saturating_sub(buffered[i].len());
                buffered[i].extend_from_slice(&bytes[..bytes.len().min(room)]);
                match self.sniff(&buffered) {
                    Sniffed::Plugin(plugin) => {
                        let mut state = self.start(plugin);
                        // The buffered starts (requests first), then nothing more:
                        // what did not fit was cut, which the plugin sees as a hole.
                        let complete = buffered[i].len() < self.limits.sniff_bytes;
                        for s in [Side::Client, Side::Server] {
                            let b = std::mem::take(&mut buffered[direction(s).index()]);
                            if !b.is_empty() {
                                state = self.feed(&key, &conn.ctx, state, s, time, &b, out);
                            }
                        }
                        if !complete {
                            state = self.resync_after_gap(state, side);
                        }
                        state
                    }
                    Sniffed::Undecided if room > 0 => State::Choosing { buffered },
                    Sniffed::Undecided | Sniffed::Nobody => {
                        EngineStats::add(&self.stats.unidentified, 1);
                        State::Off
                    }
                }
            }
            State::Parsing(mut p) => {
                let i = direction(side).index();
                if p.resync[i] {
                    let plugin = p.plugin.clone();
                    match self.worker(&plugin).sniff(direction(side), bytes) {
                        Some(crate::plugin::SniffVerdict::No) | None => {
                            EngineStats::add(&self.stats.resync_skipped_bytes, bytes.len() as u64);
                            conn.state = State::Parsing(p);
                            self.conns.insert(key, conn);
                            return;
                        }
                        Some(_) => p.resync[i] = false,
                    }
                }
                self.feed(&key, &conn.ctx, State::Parsing(p), side, time, bytes, out)
            }
        };
        self.conns.insert(key, conn);
    }

    fn sniff(&mut self, buffered: &[Vec<u8>; 2]) -> Sniffed {
        use crate::plugin::SniffVerdict;
        let mut undecided = false;
        for plugin in self.plugins.active_plugins() {
            let mut any = false;
            for (i, dir) in [(0, Direction::ToServer), (1, Direction::ToClient)] {
                if buffered[i].is_empty() {
                    continue;
                }
                any = true;
                match self.worker(&plugin).sniff(dir, &buffered[i]) {
                    Some(SniffVerdict::Yes) => return Sniffed::Plugin(plugin),
                    Some(SniffVerdict::Maybe) => undecided = true,
                    Some(SniffVerdict::No) | None => {}
                }
            }
            if !any {
                undecided = true;
            }
        }
        if undecided {
            Sniffed::Undecided
        } else {
            Sniffed::Nobody
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn feed(
        &mut self,
        key: &ConnKey,
        ctx: &ConnContext,
        state: State,
        side: Side,
        time: SystemTime,
        bytes: &[u8],
        out: &mut Vec<Flow>,
    ) -> State {
        let State::Parsing(mut p) = state else {
            return state;
        };
        let plugin = p.plugin.clone();
        let worker = self.worker(&plugin);
        // A failed feed, or a fault the plugin left after the messages it gave:
        // either ends the connection's L7 view, below.
        let (messages, failed) = match worker.feed(p.id, direction(side), bytes) {
            Ok(messages) => (messages, worker.error(p.id).map(ToString::to_string)),
            Err(err) => (Vec::new(), Some(err.to_string())),
        };
        for msg in &messages {
            match msg.kind {
                MessageKind::Request => {
                    EngineStats::add(&self.stats.requests, 1);
                    out.push(flows::message_flow(ctx, key, &plugin.info, msg, time, None));
                    let summary = flows::summarize_request(&plugin.info, msg, time);
                    match msg.correlation {
                        Correlation::Order(n) => {
                            if p.by_order.len() >= self.limits.pending_requests {
                                p.by_order.pop_front();
                            }
                            p.by_order.push_back((n, summary));
                        }
                        Correlation::Id(id) => {
                            if p.by_id.len() >= self.limits.pending_requests {
                                p.by_id.clear();
                            }
                            p.by_id.insert(id, summary);
                        }
                        Correlation::None => {}
                    }
                }
                MessageKind::Response => {
                    EngineStats::add(&self.stats.responses, 1);
                    let request = match msg.correlation {
                        Correlation::Order(n) => {
                            while p.by_order.front().is_some_and(|(o, _)| *o < n) {
                                p.by_order.pop_front();
                            }
                            match p.by_order.front() {
                                Some((o, _)) if *o == n => p.by_order.pop_front().map(|(_, r)| r),
                                _ => None,
                            }
                        }
                        Correlation::Id(id) => p.by_id.remove(&id),
                        Correlation::None => None,
                    };
                    if request.is_none() {
                        EngineStats::add(&self.stats.unpaired, 1);
                    }
                    out.push(flows::message_flow(
                        ctx,
                        key,
                        &plugin.info,
                        msg,
                        time,
                        request.as_ref(),
                    ));
                }
                MessageKind::Event if is_body_piece(&plugin, msg) => {}
                MessageKind::Event => {
                    EngineStats::add(&self.stats.events, 1);
                    out.push(flows::message_flow(ctx, key, &plugin.info, msg, time, None));
                }
            }
        }
        if let Some(err) = failed {
            EngineStats::add(&self.stats.errors, 1);
            out.push(flows::error_flow(ctx, key, &plugin.info, &err, time));
            self.release(State::Parsing(p));
            return State::Off;
        }
        State::Parsing(p)
    }

    fn gap(&mut self, key: ConnKey, side: Side) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        conn.state = match conn.state {
            State::Choosing { mut buffered } => {
                // What was buffered no longer continues: start that side afresh.
                buffered[direction(side).index()].clear();
                State::Choosing { buffered }
            }
            other => self.resync_after_gap(other, side),
        };
        self.conns.insert(key, conn);
    }

    /// After a hole the plugin's state is stale: a fresh one, fed from the next
    /// chunk it recognises in each direction.
    fn resync_after_gap(&mut self, state: State, _side: Side) -> State {
        let State::Parsing(mut p) = state else {
            return state;
        };
        let plugin = p.plugin.clone();
        let worker = self.worker(&plugin);
        worker.close(p.id);
        p.id = worker.open();
        // Both directions: the other one is mid-message relative to the new state.
        p.resync = [true, true];
        p.by_order.clear();
        p.by_id.clear();
        State::Parsing(p)
    }
}

/// The HTTP plugin frames bodies as pieces (so it never buffers them): they are
/// part of their request or response, not flows of their own.
pub(crate) fn is_body_piece(plugin: &Plugin, msg: &crate::plugin::Message) -> bool {
    plugin.info.protocol == "http"
        && msg.fields.iter().all(|f| {
            plugin
                .info
                .fields
                .get(usize::from(f.id))
                .is_some_and(|s| s.name == "body-bytes")
        })
}

enum Sniffed {
    Plugin(Arc<Plugin>),
    Undecided,
    Nobody,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::*;
    use crate::plugin::Limits;
    use loupe_proto::flow::{L7FlowType, Verdict, layer7};

    /// The shipped plugins, loaded once for the module's tests.
    fn plugins() -> Arc<PluginManager> {
        static MANAGER: OnceLock<(tempfile::TempDir, Arc<PluginManager>)> = OnceLock::new();
        MANAGER
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
                let manager = PluginManager::open(dir.path(), Limits::default())
                    .unwrap_or_else(|e| panic!("plugin manager: {e}"));
                crate::plugin::bundled::install_missing(&manager);
                (dir, Arc::new(manager))
            })
            .1
            .clone()
    }

    fn key(server_port: u16) -> ConnKey {
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap_or_else(|e| panic!("{s}: {e}")) };
        ConnKey {
            client: addr("10.0.0.1:40000"),
            server: addr(&format!("10.0.0.2:{server_port}")),
        }
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn data(key: ConnKey, side: Side, ms: u64, bytes: &[u8]) -> Event {
        Event::Data {
            key,
            side,
            time: at(ms),
            bytes: bytes.to_vec(),
        }
    }

    fn run(events: Vec<Event>, protocol: Option<&str>) -> (Vec<Flow>, Arc<EngineStats>) {
        let mut engine = Engine::new(plugins(), EngineLimits::default());
        let ctx = ConnContext {
            protocol: protocol.map(str::to_string),
            ..ConnContext::default()
        };
        let mut out = Vec::new();
        for e in events {
            engine.handle(e, &|_| ctx.clone(), &mut out);
        }
        (out, engine.stats())
    }

    fn field(flow: &Flow, name: &str) -> Option<String> {
        let ext = loupe_proto::fields::l7_extension(flow)?;
        flows::text(&ext.fields, name)
    }

    fn kind(flow: &Flow) -> i32 {
        flow.l7.as_ref().map_or(-1, |l| l.r#type)
    }

    #[test]
    fn responses_pair_with_requests_and_carry_latency() {
        let k = key(6379);
        let (flows, stats) = run(
            vec![
                Event::Opened {
                    key: k,
                    time: at(0),
                },
                data(
                    k,
                    Side::Client,
                    0,
                    b"*3\r\n$3\r\nSET\r\n$5\r\ncache\r\n$1\r\n1\r\n*1\r\n$4\r\nPING\r\n",
                ),
                data(k, Side::Server, 5, b"+OK\r\n"),
                data(k, Side::Server, 7, b"+PONG\r\n"),
            ],
            None,
        );
        assert_eq!(flows.len(), 4, "{flows:#?}");
        let replies: Vec<&Flow> = flows
            .iter()
            .filter(|f| kind(f) == L7FlowType::Response as i32)
            .collect();
        assert_eq!(replies.len(), 2);
        assert_eq!(
            replies[0].l7.as_ref().map(|l| l.latency_ns),
            Some(5_000_000)
        );
        assert_eq!(
            replies[1].l7.as_ref().map(|l| l.latency_ns),
            Some(7_000_000)
        );
        // A reply names the command it answers.
        assert_eq!(field(replies[0], "command").as_deref(), Some("SET"));
        assert_eq!(field(replies[0], "key").as_deref(), Some("cache"));
        assert_eq!(field(replies[1], "command").as_deref(), Some("PING"));
        assert_eq!(replies[0].is_reply, Some(true));
        assert_eq!(stats.unpaired.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unknown_port_is_recognised_by_sniffing() {
        let k = key(12_345);
        let (flows, stats) = run(
            vec![
                Event::Opened {
                    key: k,
                    time: at(0),
                },
                data(
                    k,
                    Side::Client,
                    0,
                    b"GET /x?y=1 HTTP/1.1\r\nHost: svc\r\n\r\n",
                ),
                data(
                    k,
                    Side::Server,
                    3,
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
                ),
            ],
            None,
        );
        assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
        // Request and response; the body piece is part of the response.
        assert_eq!(flows.len(), 2, "{flows:#?}");
        let Some(layer7::Record::Http(http)) = flows[1].l7.as_ref().and_then(|l| l.record.clone())
        else {
            panic!("no HTTP record: {:#?}", flows[1]);
        };
        assert_eq!(
            (http.code, http.method.as_str(), http.url.as_str()),
            (404, "GET", "http://svc/x?y=1")
        );
    }

    #[test]
    fn a_stream_nobody_knows_is_left_alone() {
        let k = key(12_346);
        let (flows, stats) = run(
            vec![
                Event::Opened {
                    key: k,
                    time: at(0),
                },
                data(k, Side::Client, 0, &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]),
            ],
            None,
        );
        assert!(flows.is_empty(), "{flows:#?}");
        assert_eq!(stats.unidentified.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn after_a_hole_parsing_resumes_at_a_recognised_message() {
        let k = key(6379);
        let (flows, stats) = run(
            vec![
                Event::Opened {
                    key: k,
                    time: at(0),
                },
                data(k, Side::Client, 0, b"*1\r\n$4\r\nPING\r\n"),
                data(k, Side::Server, 1, b"+PONG\r\n"),
                Event::Gap {
                    key: k,
                    side: Side::Client,
                    len: 100,
                },
                // The tail of a message cut by the hole: skipped.
                data(k, Side::Client, 2, b"ue\r\n"),
                data(k, Side::Client, 3, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
                data(k, Side::Server, 4, b"$1\r\nv\r\n"),
            ],
            Some("redis"),
        );
        assert_eq!(stats.gaps.load(Ordering::Relaxed), 1);
        assert_eq!(stats.resync_skipped_bytes.load(Ordering::Relaxed), 4);
        let commands: Vec<Option<String>> = flows.iter().map(|f| field(f, "command")).collect();
        assert_eq!(
            commands,
            vec![
                Some("PING".into()),
                Some("PING".into()),
                Some("GET".into()),
                Some("GET".into())
            ]
        );
    }

    #[test]
    fn a_parse_error_ends_the_connections_l7_view_with_an_error_flow() {
        let k = key(8080);
        let (flows, stats) = run(
            vec![
                Event::Opened {
                    key: k,
                    time: at(0),
                },
                data(k, Side::Client, 0, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
                data(
                    k,
                    Side::Client,
                    1,
                    b"\x00\x01garbage that is no request\r\n\r\n",
                ),
                data(k, Side::Client, 2, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ],
            Some("http"),
        );
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        assert_eq!(flows.len(), 2, "{flows:#?}");
        assert_eq!(flows[1].verdict, Verdict::Error as i32);
        assert!(field(&flows[1], "parse-error").is_some_and(|e| !e.is_empty()));
    }
}
