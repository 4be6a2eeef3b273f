//! The plugin-backed inspector: requests framed by a parser plugin, decided one
//! by one, answered in pipeline order.
//!
//! Each connection has one plugin connection (the *view*, on a [`Worker`]
//! shared with other connections) fed exactly what the client sees: every
//! client byte, and every byte the client receives — the server's bytes and
//! the deny replies, in the order they reach it. So each byte is parsed once,
//! and the plugin pairs responses with requests as the client does (Kafka
//! response headers and HTTP `HEAD` answers depend on their request).
//!
//! Replies to the client leave strictly in request order: a queue holds one
//! slot per paired request — forwarded (waiting for the server's response),
//! denied (holding the plugin's deny reply), or allowed but *held* behind a
//! denied one. Nothing is forwarded behind a pending deny reply, so the server
//! never answers past it and its bytes always stream straight through; a deny
//! reply goes out once every slot before it is answered and the client's stream
//! is between two messages, then the requests held behind it are forwarded.
//! Pipelines without denials never wait; one with a denial in the middle
//! waits one round trip. Unpaired requests (Kafka `acks=0`) take no slot of
//! their own and a denied one gets no reply, since the client expects none.
//! The one exception to "nothing behind a pending deny reply": a client's
//! answer to a request the server made (an MQTT subscriber's `PUBACK`) is no
//! request of the client's, needs no decision and goes out at once — a server
//! may well wait for it before answering what comes before the denial.
//!
//! Bytes held are bounded: unframed ones by the plugin's per-direction limit
//! (`plugins.maxMessageKib`: the host refuses to buffer more without a message
//! boundary, which fails the connection like any plugin error), held requests
//! by [`Inspector::client_paused`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::inspect::{Action, ConnInfo, Inspector, InspectorFactory, PassThrough};
use crate::plugin::{
    ConnId, Correlation, Direction, Message, MessageKind, Plugin, PluginInfo, Worker,
};
use crate::policy::attribution::L7Attribution;

/// A decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it; the policies that allow it, for its flow.
    Allow(L7Attribution),
    /// Answer with the plugin's deny reply.
    Deny {
        /// The policies whose rules it failed, for its flow.
        by: L7Attribution,
        /// Why, for flows and logs.
        reason: String,
    },
}

impl Verdict {
    /// Forward it, naming no policy.
    pub fn allow() -> Self {
        Self::Allow(L7Attribution::default())
    }
}

/// Decides requests of enforced connections (the L7 policy engine implements it).
pub trait Decider: Send + Sync {
    /// The verdict on `request` (its bytes are `request.bytes`), parsed by
    /// `plugin` on connection `conn`.
    fn decide(&self, conn: &ConnInfo, plugin: &PluginInfo, request: &Message) -> Verdict;
}

/// Allows every request (until L7 rules are matched).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Decider for AllowAll {
    fn decide(&self, _: &ConnInfo, _: &PluginInfo, _: &Message) -> Verdict {
        Verdict::allow()
    }
}

/// What the proxy reports, to build L7 flows from: a [`ConnEvents`] per
/// connection, made when the connection starts (so what is the same for all
/// its messages is worked out once).
pub trait ProxyEvents: Send + Sync {
    /// The reporter of `conn`, parsed by `plugin`.
    fn connection(&self, conn: &ConnInfo, plugin: &Arc<Plugin>) -> Box<dyn ConnEvents>;
}

/// What the proxy reports per message of one connection. Called on the
/// connection's task: implementations must not block (push to a bounded queue).
pub trait ConnEvents: Send {
    /// A request and its verdict.
    fn request(&mut self, request: &Message, verdict: &Verdict);
    /// A response to a forwarded request, `latency` after the request left.
    fn response(&mut self, request: &Message, response: &Message, latency: Duration);
    /// A message that is neither a client's request nor the answer to one: a
    /// request or event the server sends, a client's answer to the server.
    fn message(&mut self, message: &Message);
    /// The connection's L7 view failed (`closed`: the connection was reset,
    /// fail-closed; otherwise it continues unparsed, fail-open).
    fn error(&mut self, reason: &str, closed: bool);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl ProxyEvents for NoEvents {
    fn connection(&self, _: &ConnInfo, _: &Arc<Plugin>) -> Box<dyn ConnEvents> {
        Box::new(NoEvents)
    }
}

impl ConnEvents for NoEvents {
    fn request(&mut self, _: &Message, _: &Verdict) {}
    fn response(&mut self, _: &Message, _: &Message, _: Duration) {}
    fn message(&mut self, _: &Message) {}
    fn error(&mut self, _: &str, _: bool) {}
}

/// The text of a message's field by schema name: a slice as (lossy) UTF-8, or
/// a computed value; `None` when the plugin did not set it.
pub fn field_text(plugin: &PluginInfo, message: &Message, name: &str) -> Option<String> {
    let id = plugin.fields.iter().position(|f| f.name == name)?;
    let field = message.field(u16::try_from(id).ok()?)?;
    match &field.value {
        crate::plugin::Value::Slice { .. } => message
            .slice(field)
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        crate::plugin::Value::Text(t) => Some(t.clone()),
        crate::plugin::Value::Unsigned(v) => Some(v.to_string()),
        crate::plugin::Value::Signed(v) => Some(v.to_string()),
        crate::plugin::Value::Flag(v) => Some(v.to_string()),
    }
}

enum Slot {
    /// Sent to the server; waiting for its response.
    Forwarded { request: Message, sent: Instant },
    /// Denied: the plugin's reply goes out once every slot before it is answered.
    Denied { reply: Vec<u8> },
    /// Allowed behind a denied request: held (with any body bytes that follow
    /// it) until the deny reply ahead has gone, so no server response can
    /// overtake a deny reply. `request` is `None` for an unpaired request.
    Held {
        request: Option<Message>,
        bytes: Vec<u8>,
    },
    /// A held unpaired request, forwarded (removed at once).
    Gone,
}

/// Where the client bytes that follow the last request (a body) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Forward,
    Hold,
    Drop,
}

/// Bytes of allowed requests held behind a denied one past which the proxy
/// stops reading the client (until the deny reply ahead goes out).
const MAX_HELD: usize = 256 * 1024;

/// Frames, decides and orders one connection's requests with a plugin.
pub struct PluginInspector {
    worker: Arc<Mutex<Worker>>,
    plugin: Arc<Plugin>,
    view: ConnId,
    decider: Arc<dyn Decider>,
    events: Box<dyn ConnEvents>,
    conn: ConnInfo,
    fail_open: bool,
    /// Client bytes not framed yet, from stream offset `client_base`.
    client_held: Vec<u8>,
    client_base: u64,
    /// Bytes fed to the view towards the client (server bytes and deny
    /// replies), and the end of the last message framed in them: deny replies
    /// go out only where the two are equal (between messages).
    rx_fed: u64,
    rx_framed: u64,
    tail: Tail,
    slots: VecDeque<Slot>,
    denied_queued: usize,
    /// Bytes in `Held` slots.
    held_bytes: usize,
    /// After a fail-open failure: bytes pass unparsed.
    open: Option<PassThrough>,
    /// Requests the server made with an id (an MQTT broker's QoS 1 delivery),
    /// awaiting the client's answer: it pairs with them for its latency.
    server_asked: HashMap<u64, (Message, Instant)>,
}

/// Server requests awaiting the client's answer that an inspector remembers;
/// past it they are forgotten, as the L7 path forgets its own (their answers
/// are then reported unpaired).
const MAX_SERVER_ASKED: usize = 1024;

impl std::fmt::Debug for PluginInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInspector")
            .field("plugin", &self.plugin.info.name)
            .field("conn", &self.conn.id)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl PluginInspector {
    /// An inspector for `conn` on `worker` (which runs `plugin`).
    pub fn new(
        worker: Arc<Mutex<Worker>>,
        conn: ConnInfo,
        decider: Arc<dyn Decider>,
        events: Arc<dyn ProxyEvents>,
        fail_open: bool,
    ) -> Self {
        let (plugin, view) = {
            let mut w = worker.lock().unwrap_or_else(|p| p.into_inner());
            (w.plugin().clone(), w.open())
        };
        let events = events.connection(&conn, &plugin);
        Self {
            worker,
            plugin,
            view,
            decider,
            events,
            conn,
            fail_open,
            client_held: Vec::new(),
            client_base: 0,
            rx_fed: 0,
            rx_framed: 0,
            tail: Tail::Forward,
            slots: VecDeque::new(),
            denied_queued: 0,
            held_bytes: 0,
            open: None,
            server_asked: HashMap::new(),
        }
    }

    fn feed(&self, direction: Direction, bytes: &[u8]) -> Result<Vec<Message>, String> {
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        worker
            .feed(self.view, direction, bytes)
            .map_err(|e| e.to_string())
    }

    /// Feeds the view what the client is about to receive.
    fn feed_to_client(&mut self, bytes: &[u8]) -> Result<Vec<Message>, String> {
        let messages = self.feed(Direction::ToClient, bytes)?;
        self.rx_fed += bytes.len() as u64;
        if let Some(last) = messages.last() {
            self.rx_framed = last.start + last.bytes.len() as u64;
        }
        Ok(messages)
    }

    fn deny_reply(&self, request: &[u8]) -> Option<Vec<u8>> {
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        worker.deny_reply(request)
    }

    /// The plugin failed on this connection: reset (fail closed) or pass the
    /// rest through unparsed (fail open, configured per protocol).
    fn failure(&mut self, reason: String, out: &mut Vec<Action>) {
        let reason = format!("{} plugin: {reason}", self.plugin.info.name);
        self.events.error(&reason, !self.fail_open);
        if !self.fail_open {
            out.push(Action::Reset(reason));
            return;
        }
        tracing::warn!(conn = self.conn.id, %reason, "L7 view lost; continuing unparsed (fail-open)");
        // Release what was held, in order, then stop parsing.
        while let Some(slot) = self.slots.pop_front() {
            match slot {
                Slot::Denied { reply } => out.push(Action::ToClient(reply)),
                Slot::Held { bytes, .. } => out.push(Action::ToServer(bytes)),
                Slot::Forwarded { .. } | Slot::Gone => {}
            }
        }
        self.denied_queued = 0;
        self.held_bytes = 0;
        if !self.client_held.is_empty() {
            out.push(Action::ToServer(std::mem::take(&mut self.client_held)));
        }
        self.open = Some(PassThrough);
    }

    /// Sends what may go now: deny replies at the head of the queue (between
    /// two messages of the client's stream), then every held request that no
    /// denied one precedes any more.
    fn advance(&mut self, out: &mut Vec<Action>) -> Result<(), String> {
        while matches!(self.slots.front(), Some(Slot::Denied { .. }))
            && self.rx_fed == self.rx_framed
        {
            if let Some(Slot::Denied { reply }) = self.slots.pop_front() {
                self.denied_queued -= 1;
                // The view sees what the client sees, so it pairs as the client does.
                self.feed_to_client(&reply)?;
                out.push(Action::ToClient(reply));
            }
        }
        // Every held request has at least one byte.
        if self.held_bytes == 0 {
            return Ok(());
        }
        let mut removed = false;
        for slot in self.slots.iter_mut() {
            match slot {
                Slot::Denied { .. } => break,
                Slot::Forwarded { .. } | Slot::Gone => {}
                Slot::Held { request, bytes } => {
                    self.held_bytes -= bytes.len();
                    out.push(Action::ToServer(std::mem::take(bytes)));
                    *slot = match request.take() {
                        Some(request) => Slot::Forwarded {
                            request,
                            sent: Instant::now(),
                        },
                        None => {
                            removed = true;
                            Slot::Gone
                        }
                    };
                }
            }
        }
        if removed {
            self.slots.retain(|s| !matches!(s, Slot::Gone));
        }
        if self.tail == Tail::Hold && !matches!(self.slots.back(), Some(Slot::Held { .. })) {
            self.tail = Tail::Forward;
        }
        Ok(())
    }

    fn request(
        &mut self,
        message: Message,
        unit: Vec<u8>,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let verdict = self.decider.decide(&self.conn, &self.plugin.info, &message);
        self.events.request(&message, &verdict);
        let paired = !matches!(message.correlation, Correlation::None);
        match verdict {
            Verdict::Allow(_) if self.denied_queued > 0 => {
                self.tail = Tail::Hold;
                self.held_bytes += unit.len();
                self.slots.push_back(Slot::Held {
                    request: paired.then_some(message),
                    bytes: unit,
                });
            }
            Verdict::Allow(_) => {
                self.tail = Tail::Forward;
                out.push(Action::ToServer(unit));
                if paired {
                    self.slots.push_back(Slot::Forwarded {
                        request: message,
                        sent: Instant::now(),
                    });
                }
            }
            Verdict::Deny { .. } => {
                self.tail = Tail::Drop;
                if paired {
                    let reply = self
                        .deny_reply(&message.bytes)
                        .ok_or_else(|| "deny-reply failed".to_string())?;
                    self.slots.push_back(Slot::Denied { reply });
                    self.denied_queued += 1;
                }
            }
        }
        Ok(())
    }

    fn client_inner(&mut self, bytes: &[u8], out: &mut Vec<Action>) -> Result<(), String> {
        // Held before feeding: if the plugin fails, fail-open still has them.
        self.client_held.extend_from_slice(bytes);
        let messages = self.feed(Direction::ToServer, bytes)?;
        let mut consumed = 0usize;
        for message in messages {
            // Bytes between the previous message and this one's end travel with it.
            let end = message.start + message.bytes.len() as u64;
            let rel_end = usize::try_from(end.saturating_sub(self.client_base))
                .unwrap_or(usize::MAX)
                .clamp(consumed, self.client_held.len());
            let unit = self.client_held[consumed..rel_end].to_vec();
            consumed = rel_end;
            match message.kind {
                MessageKind::Request => self.request(message, unit, out)?,
                // The client's answer to a request the server made (an MQTT
                // subscriber's PUBACK) belongs to no request of the client's:
                // it goes out at once, whatever is denied or held before it.
                MessageKind::Response => {
                    let asked = match message.correlation {
                        Correlation::Id(id) => self.server_asked.remove(&id),
                        _ => None,
                    };
                    match asked {
                        Some((request, sent)) => {
                            self.events.response(&request, &message, sent.elapsed());
                        }
                        None => self.events.message(&message),
                    }
                    out.push(Action::ToServer(unit));
                }
                // Body pieces follow their request.
                MessageKind::Event => match self.tail {
                    Tail::Forward => out.push(Action::ToServer(unit)),
                    Tail::Hold => {
                        if let Some(Slot::Held { bytes, .. }) = self.slots.back_mut() {
                            self.held_bytes += unit.len();
                            bytes.extend_from_slice(&unit);
                        }
                    }
                    Tail::Drop => {}
                },
            }
        }
        self.client_held.drain(..consumed);
        self.client_base += consumed as u64;
        self.advance(out)
    }

    fn server_inner(&mut self, bytes: &[u8], out: &mut Vec<Action>) -> Result<(), String> {
        // The server only answers what was forwarded, and nothing is forwarded
        // behind a pending deny reply: its bytes go out as they come (queued
        // before parsing, so a fail-open failure on them still delivers them).
        out.push(Action::ToClient(bytes.to_vec()));
        let messages = self.feed_to_client(bytes)?;
        for message in messages {
            if message.kind != MessageKind::Response {
                // The server asks (an MQTT broker's delivery) or tells.
                self.events.message(&message);
                if let (MessageKind::Request, Correlation::Id(id)) =
                    (message.kind, message.correlation)
                {
                    if self.server_asked.len() >= MAX_SERVER_ASKED {
                        self.server_asked.clear();
                    }
                    self.server_asked.insert(id, (message, Instant::now()));
                }
            } else if let Some(Slot::Forwarded { .. }) = self.slots.front()
                && let Some(Slot::Forwarded { request, sent }) = self.slots.pop_front()
            {
                self.events.response(&request, &message, sent.elapsed());
            }
        }
        self.advance(out)
    }
}

impl Inspector for PluginInspector {
    fn client_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        if let Some(open) = &mut self.open {
            return open.client_bytes(bytes);
        }
        let mut out = Vec::new();
        if let Err(reason) = self.client_inner(bytes, &mut out) {
            self.failure(reason, &mut out);
        }
        out
    }

    fn server_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        if let Some(open) = &mut self.open {
            return open.server_bytes(bytes);
        }
        let mut out = Vec::new();
        if let Err(reason) = self.server_inner(bytes, &mut out) {
            self.failure(reason, &mut out);
        }
        out
    }

    fn client_paused(&self) -> bool {
        // Unframed bytes are bounded by the plugin's limit, and a request must
        // be read whole to be decided: only bytes held behind a denial count.
        self.open.is_none() && self.held_bytes > MAX_HELD
    }

    fn closed(&mut self) {
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        worker.close(self.view);
    }
}

impl Drop for PluginInspector {
    fn drop(&mut self) {
        self.closed();
    }
}

/// Chooses the plugin that parses a connection.
pub type SelectPlugin = dyn Fn(&ConnInfo) -> Option<Arc<Plugin>> + Send + Sync;

/// Makes plugin inspectors: `select` chooses each connection's plugin; each
/// plugin version has a few [`Worker`]s (two per core), connections spread
/// over them, so connections on different threads rarely wait for each other. A connection no plugin parses passes
/// through unparsed, or is reset with [`PluginInspectorFactory::refuse_unparsed`]
/// (the agent's choice: a connection steered to the proxy is an enforced one).
pub struct PluginInspectorFactory {
    select: Box<SelectPlugin>,
    refuse_unparsed: bool,
    decider: Arc<dyn Decider>,
    events: Arc<dyn ProxyEvents>,
    fail_open: Vec<String>,
    workers: Mutex<HashMap<String, Vec<Arc<Mutex<Worker>>>>>,
    shards: usize,
}

impl std::fmt::Debug for PluginInspectorFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInspectorFactory")
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl PluginInspectorFactory {
    /// A factory choosing plugins with `select`; `fail_open` names the
    /// protocols whose connections continue unparsed when their plugin fails.
    pub fn new(
        select: impl Fn(&ConnInfo) -> Option<Arc<Plugin>> + Send + Sync + 'static,
        decider: Arc<dyn Decider>,
        events: Arc<dyn ProxyEvents>,
        fail_open: Vec<String>,
    ) -> Self {
        Self {
            select: Box::new(select),
            refuse_unparsed: false,
            decider,
            events,
            fail_open,
            workers: Mutex::new(HashMap::new()),
            // A multiple of the proxy's threads, both chosen by connection id:
            // a shard is only ever used from one thread.
            shards: 2 * super::server::threads(),
        }
    }

    /// Resets connections no plugin parses instead of passing them through.
    pub fn refuse_unparsed(mut self, refuse: bool) -> Self {
        self.refuse_unparsed = refuse;
        self
    }

    fn worker(&self, plugin: &Arc<Plugin>, conn: &ConnInfo) -> Arc<Mutex<Worker>> {
        let key = format!(
            "{}@{}#{}",
            plugin.info.name, plugin.info.version, plugin.sha256
        );
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        // Workers of replaced versions go once their last connection closes.
        workers.retain(|_, shards| {
            shards.iter().any(|w| {
                Arc::strong_count(w) > 1 || w.lock().map(|w| w.connections() > 0).unwrap_or(false)
            })
        });
        let shards = workers.entry(key).or_insert_with(|| {
            (0..self.shards)
                .map(|_| Arc::new(Mutex::new(Worker::new(plugin.clone()))))
                .collect()
        });
        let index = usize::try_from(conn.id).unwrap_or(0) % shards.len().max(1);
        shards[index].clone()
    }
}

impl InspectorFactory for PluginInspectorFactory {
    fn inspector(&self, conn: &ConnInfo) -> Box<dyn Inspector> {
        let Some(plugin) = (self.select)(conn) else {
            if self.refuse_unparsed {
                return Box::new(Refuse(format!(
                    "no installed plugin parses {} for its L7 policy",
                    conn.server
                )));
            }
            return Box::new(PassThrough);
        };
        let fail_open = self
            .fail_open
            .iter()
            .any(|p| *p == plugin.info.protocol || *p == plugin.info.name);
        Box::new(PluginInspector::new(
            self.worker(&plugin, conn),
            conn.clone(),
            self.decider.clone(),
            self.events.clone(),
            fail_open,
        ))
    }
}

/// Resets the connection at its first bytes (an enforced connection nothing
/// can parse fails closed).
struct Refuse(String);

impl Inspector for Refuse {
    fn client_bytes(&mut self, _: &[u8]) -> Vec<Action> {
        vec![Action::Reset(self.0.clone())]
    }

    fn server_bytes(&mut self, _: &[u8]) -> Vec<Action> {
        vec![Action::Reset(self.0.clone())]
    }
}
