//! The plugin-backed inspector: requests framed by a parser plugin, decided one
//! by one, answered in pipeline order.
//!
//! Each connection has two plugin connections on a shared [`Worker`]: the
//! *client view* is fed every client byte and frames the requests that are
//! decided; the *server view* is fed only the bytes actually forwarded plus the
//! server's bytes, so the plugin pairs responses (and reads response headers
//! that depend on the request, as Kafka's do) exactly as the server sees the
//! conversation, without the denied requests.
//!
//! Replies to the client leave strictly in request order: a queue holds one
//! slot per paired request — forwarded (waiting for the server's response) or
//! denied (holding the plugin's deny reply). Server bytes stream straight
//! through while no denied slot is queued; otherwise they are released message by
//! message, and a denied slot's reply goes out as soon as every slot before it
//! is answered. Unpaired requests (Kafka `acks=0`) take no slot and a denied one
//! gets no reply, since the client expects none.
//!
//! Bytes held are bounded by the plugin's per-direction limit
//! (`plugins.maxMessageKib`): the host refuses to buffer more without a message
//! boundary, which fails the connection like any plugin error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::inspect::{Action, ConnInfo, Inspector, InspectorFactory, PassThrough};
use crate::plugin::{
    ConnError, ConnId, Direction, Message, MessageKind, Plugin, PluginInfo, Worker,
};

/// A decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Answer with the plugin's deny reply.
    Deny {
        /// The policy (`namespace/name`) that denies it, if one does.
        policy: String,
        /// Why, for flows and logs.
        reason: String,
    },
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
        Verdict::Allow
    }
}

/// What the proxy reports per message, to build L7 flows from. Called on the
/// connection's task: implementations must not block (push to a bounded queue).
pub trait ProxyEvents: Send + Sync {
    /// A request and its verdict.
    fn request(&self, conn: &ConnInfo, plugin: &Plugin, request: &Message, verdict: &Verdict);
    /// A response to a forwarded request, `latency` after the request left.
    fn response(
        &self,
        conn: &ConnInfo,
        plugin: &Plugin,
        request: &Message,
        response: &Message,
        latency: Duration,
    );
    /// The connection's L7 view failed (`closed`: the connection was reset,
    /// fail-closed; otherwise it continues unparsed, fail-open).
    fn error(&self, conn: &ConnInfo, plugin: &Plugin, reason: &str, closed: bool);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl ProxyEvents for NoEvents {
    fn request(&self, _: &ConnInfo, _: &Plugin, _: &Message, _: &Verdict) {}
    fn response(&self, _: &ConnInfo, _: &Plugin, _: &Message, _: &Message, _: Duration) {}
    fn error(&self, _: &ConnInfo, _: &Plugin, _: &str, _: bool) {}
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
    Forwarded { request: Message, sent: Instant },
    Denied { reply: Vec<u8> },
}

/// Frames, decides and orders one connection's requests with a plugin.
pub struct PluginInspector {
    worker: Arc<Mutex<Worker>>,
    plugin: Arc<Plugin>,
    client_view: ConnId,
    server_view: ConnId,
    decider: Arc<dyn Decider>,
    events: Arc<dyn ProxyEvents>,
    conn: ConnInfo,
    fail_open: bool,
    /// Client bytes not framed yet (the client view's unframed bytes), from
    /// stream offset `client_base`.
    client_held: Vec<u8>,
    client_base: u64,
    /// Server bytes not released yet, from stream offset `server_released`.
    server_held: Vec<u8>,
    server_released: u64,
    /// Whether bytes that follow the last request (bodies) are forwarded.
    forwarding: bool,
    slots: VecDeque<Slot>,
    denied_queued: usize,
    /// After a fail-open failure: bytes pass unparsed.
    open: Option<PassThrough>,
}

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
        let (plugin, client_view, server_view) = {
            let mut w = worker.lock().unwrap_or_else(|p| p.into_inner());
            (w.plugin().clone(), w.open(), w.open())
        };
        Self {
            worker,
            plugin,
            client_view,
            server_view,
            decider,
            events,
            conn,
            fail_open,
            client_held: Vec::new(),
            client_base: 0,
            server_held: Vec::new(),
            server_released: 0,
            forwarding: true,
            slots: VecDeque::new(),
            denied_queued: 0,
            open: None,
        }
    }

    fn feed(
        &self,
        view: ConnId,
        direction: Direction,
        bytes: &[u8],
    ) -> Result<Vec<Message>, ConnError> {
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        worker.feed(view, direction, bytes)
    }

    fn deny_reply(&self, request: &[u8]) -> Option<Vec<u8>> {
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        worker.deny_reply(request)
    }

    /// The plugin failed on this connection: reset (fail closed) or pass the
    /// rest through unparsed (fail open, configured per protocol).
    fn failure(&mut self, reason: String, out: &mut Vec<Action>) {
        let reason = format!("{} plugin: {reason}", self.plugin.info.name);
        self.events
            .error(&self.conn, &self.plugin, &reason, !self.fail_open);
        if !self.fail_open {
            out.push(Action::Reset(reason));
            return;
        }
        tracing::warn!(conn = self.conn.id, %reason, "L7 view lost; continuing unparsed (fail-open)");
        // Release what was held, in order, then stop parsing.
        while let Some(slot) = self.slots.pop_front() {
            if let Slot::Denied { reply } = slot {
                out.push(Action::ToClient(reply));
            }
        }
        self.denied_queued = 0;
        if !self.server_held.is_empty() {
            out.push(Action::ToClient(std::mem::take(&mut self.server_held)));
        }
        if !self.client_held.is_empty() {
            out.push(Action::ToServer(std::mem::take(&mut self.client_held)));
        }
        self.open = Some(PassThrough);
    }

    /// Feeds the client view what the client is about to receive, so it pairs
    /// (and stays bounded) as the client sees the conversation, deny replies
    /// included.
    fn mirror(&mut self, out: &mut Vec<Action>) {
        let mut failed = None;
        for action in out.iter() {
            if let Action::ToClient(bytes) = action
                && let Err(e) = self.feed(self.client_view, Direction::ToClient, bytes)
            {
                failed = Some(e.to_string());
                break;
            }
        }
        if let Some(reason) = failed {
            self.failure(reason, out);
        }
    }

    /// Replies of denied slots at the head of the queue.
    fn release_denied(&mut self, out: &mut Vec<Action>) {
        while let Some(Slot::Denied { .. }) = self.slots.front() {
            if let Some(Slot::Denied { reply }) = self.slots.pop_front() {
                self.denied_queued -= 1;
                out.push(Action::ToClient(reply));
            }
        }
    }

    /// Server bytes up to stream offset `end`.
    fn release_server(&mut self, end: u64, out: &mut Vec<Action>) {
        if end <= self.server_released {
            return;
        }
        let n = usize::try_from(end - self.server_released)
            .unwrap_or(usize::MAX)
            .min(self.server_held.len());
        out.push(Action::ToClient(self.server_held.drain(..n).collect()));
        self.server_released += n as u64;
    }

    fn request(
        &mut self,
        message: Message,
        unit: Vec<u8>,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let verdict = self.decider.decide(&self.conn, &self.plugin.info, &message);
        self.events
            .request(&self.conn, &self.plugin, &message, &verdict);
        let paired = !matches!(message.correlation, crate::plugin::Correlation::None);
        match verdict {
            Verdict::Allow => {
                self.forwarding = true;
                self.feed(self.server_view, Direction::ToServer, &unit)
                    .map_err(|e| e.to_string())?;
                out.push(Action::ToServer(unit));
                if paired {
                    self.slots.push_back(Slot::Forwarded {
                        request: message,
                        sent: Instant::now(),
                    });
                }
            }
            Verdict::Deny { .. } => {
                self.forwarding = false;
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
        let messages = self
            .feed(self.client_view, Direction::ToServer, bytes)
            .map_err(|e| e.to_string())?;
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
                MessageKind::Event | MessageKind::Response => {
                    if self.forwarding {
                        self.feed(self.server_view, Direction::ToServer, &unit)
                            .map_err(|e| e.to_string())?;
                        out.push(Action::ToServer(unit));
                    }
                }
            }
        }
        self.client_held.drain(..consumed);
        self.client_base += consumed as u64;
        self.release_denied(out);
        Ok(())
    }

    fn server_inner(&mut self, bytes: &[u8], out: &mut Vec<Action>) -> Result<(), String> {
        self.server_held.extend_from_slice(bytes);
        let messages = self
            .feed(self.server_view, Direction::ToClient, bytes)
            .map_err(|e| e.to_string())?;
        for message in messages {
            let end = message.start + message.bytes.len() as u64;
            if self.denied_queued > 0 {
                self.release_server(end, out);
            }
            if message.kind == MessageKind::Response {
                if let Some(Slot::Forwarded { .. }) = self.slots.front()
                    && let Some(Slot::Forwarded { request, sent }) = self.slots.pop_front()
                {
                    self.events.response(
                        &self.conn,
                        &self.plugin,
                        &request,
                        &message,
                        sent.elapsed(),
                    );
                }
                self.release_denied(out);
            }
        }
        if self.denied_queued == 0 && !self.server_held.is_empty() {
            let end = self.server_released + self.server_held.len() as u64;
            self.release_server(end, out);
        }
        Ok(())
    }
}

impl Inspector for PluginInspector {
    fn client_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        if let Some(open) = &mut self.open {
            return open.client_bytes(bytes);
        }
        let mut out = Vec::new();
        match self.client_inner(bytes, &mut out) {
            Ok(()) => self.mirror(&mut out),
            Err(reason) => self.failure(reason, &mut out),
        }
        out
    }

    fn server_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        if let Some(open) = &mut self.open {
            return open.server_bytes(bytes);
        }
        let mut out = Vec::new();
        match self.server_inner(bytes, &mut out) {
            Ok(()) => self.mirror(&mut out),
            Err(reason) => self.failure(reason, &mut out),
        }
        out
    }

    fn closed(&mut self) {
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        worker.close(self.client_view);
        worker.close(self.server_view);
    }
}

impl Drop for PluginInspector {
    fn drop(&mut self) {
        self.closed();
    }
}

/// Chooses the plugin that parses a connection.
pub type SelectPlugin = dyn Fn(&ConnInfo) -> Option<Arc<Plugin>> + Send + Sync;

/// Makes plugin inspectors: `select` chooses each connection's plugin, one
/// shared [`Worker`] per plugin version. A connection no plugin parses passes
/// through unparsed, or is reset with [`PluginInspectorFactory::refuse_unparsed`]
/// (the agent's choice: a connection steered to the proxy is an enforced one).
pub struct PluginInspectorFactory {
    select: Box<SelectPlugin>,
    refuse_unparsed: bool,
    decider: Arc<dyn Decider>,
    events: Arc<dyn ProxyEvents>,
    fail_open: Vec<String>,
    workers: Mutex<HashMap<String, Arc<Mutex<Worker>>>>,
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
        }
    }

    /// Resets connections no plugin parses instead of passing them through.
    pub fn refuse_unparsed(mut self, refuse: bool) -> Self {
        self.refuse_unparsed = refuse;
        self
    }

    fn worker(&self, plugin: &Arc<Plugin>) -> Arc<Mutex<Worker>> {
        let key = format!(
            "{}@{}#{}",
            plugin.info.name, plugin.info.version, plugin.sha256
        );
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        // Workers of replaced versions go once their last connection closes.
        workers.retain(|_, w| {
            Arc::strong_count(w) > 1 || w.lock().map(|w| w.connections() > 0).unwrap_or(false)
        });
        workers
            .entry(key)
            .or_insert_with(|| Arc::new(Mutex::new(Worker::new(plugin.clone()))))
            .clone()
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
            self.worker(&plugin),
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
