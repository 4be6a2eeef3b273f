//! One plugin instance per worker thread, one resource per connection, and what
//! happens when the plugin misbehaves.
//!
//! A [`Worker`] owns a wasmtime `Store` with one instance of one plugin version and
//! every connection that worker parses with it. The host keeps, per connection and
//! direction, the bytes the plugin has not framed yet. That is what makes faults
//! cheap: when a call traps (panic, loop past the deadline, memory cap, …) the
//! instance is poisoned, so the worker drops the whole store, marks the connection
//! whose bytes caused it with an error, and re-creates the instance from the
//! `InstancePre`. Every other connection gets a new resource on its next feed,
//! primed with its unframed bytes — parsing resumes at the same message boundary,
//! and message positions and in-order counts (kept by the host) are unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::contract::v0_2::exports::loupe::plugin::parser as wit;
use super::contract::{Bindings, unpack};
use super::error::ConnError;
use super::host::{Plugin, StoreData, new_store};
use super::info::FieldSpec;
use super::limits::Limits;
use super::message::{Correlation, Direction, Field, Message, MessageKind, Value};
use super::metrics::Fault;

/// A connection's handle on a [`Worker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl ConnId {
    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

struct Live {
    store: Store<StoreData>,
    bindings: Bindings,
}

#[derive(Default)]
struct Half {
    /// Bytes not framed yet.
    pending: bytes::BytesMut,
    /// Stream offset of `pending[0]`.
    base: u64,
    /// Stream offset the current resource counts from (it started there).
    origin: u64,
    /// In-order messages seen so far.
    order: u64,
}

struct Conn {
    /// The guest's state; `None` until (re-)created on the current instance.
    resource: Option<ResourceAny>,
    halves: [Half; 2],
    failed: Option<ConnError>,
}

/// One plugin version's instance on one worker, with its connections.
pub struct Worker {
    plugin: Arc<Plugin>,
    live: Option<Live>,
    conns: HashMap<u64, Conn>,
    next: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("plugin", &self.plugin.info.name)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

/// The outcome of a guest call that did not return normally.
enum CallError {
    Fault(Fault),
}

impl Worker {
    /// A worker for `plugin`; the instance is created on first use.
    pub fn new(plugin: Arc<Plugin>) -> Self {
        Self {
            plugin,
            live: None,
            conns: HashMap::new(),
            next: 0,
        }
    }

    /// The plugin version this worker runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Connections open on this worker.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Opens a connection. The guest resource is created lazily with the first
    /// bytes, so an idle connection costs only host memory.
    pub fn open(&mut self) -> ConnId {
        let id = self.next;
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                resource: None,
                halves: [Half::default(), Half::default()],
                failed: None,
            },
        );
        ConnId(id)
    }

    /// Opens a connection and creates its guest resource now (the cost measured
    /// as "connection set-up").
    pub fn open_eager(&mut self) -> Result<ConnId, ConnError> {
        let id = self.open();
        self.ensure_resource(id.0)?;
        Ok(id)
    }

    /// Closes a connection and frees its guest resource.
    pub fn close(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id.0) {
            self.drop_resource(conn.resource);
        }
    }

    /// Why the connection's L7 view stopped, if it did.
    pub fn error(&self, id: ConnId) -> Option<&ConnError> {
        self.conns.get(&id.0).and_then(|c| c.failed.as_ref())
    }

    /// Feeds the next `bytes` of one direction of a connection; returns the
    /// messages they complete. A parse error after some messages returns those
    /// messages and marks the connection ([`Worker::error`]); after any error the
    /// connection stays failed and later feeds return the error.
    pub fn feed(
        &mut self,
        id: ConnId,
        direction: Direction,
        bytes: &[u8],
    ) -> Result<Vec<Message>, ConnError> {
        let limit = self.plugin.limits.max_pending_bytes;
        let conn = self
            .conns
            .get_mut(&id.0)
            .ok_or(ConnError::UnknownConnection(id.0))?;
        if let Some(err) = &conn.failed {
            return Err(err.clone());
        }
        let half = &mut conn.halves[direction.index()];
        if half.pending.len() + bytes.len() > limit {
            return Err(self.fail(id.0, ConnError::TooLong { limit }));
        }
        // Create (and prime with earlier unframed bytes) before adding these.
        let resource = self.ensure_resource(id.0)?;
        if let Some(conn) = self.conns.get_mut(&id.0) {
            conn.halves[direction.index()]
                .pending
                .extend_from_slice(bytes);
        }
        let result = self.call(bytes.len(), |bindings, store| {
            bindings.feed(store, resource, direction.to_wit(), bytes)
        });
        match result {
            Ok(mut frames) => {
                let error = frames.error.take();
                let messages = self.accept(id.0, direction, frames)?;
                if let Some(e) = error {
                    self.plugin.metrics.parse_error();
                    let err = ConnError::Parse {
                        offset: e.offset.saturating_add(self.origin(id.0, direction)),
                        reason: e.reason.chars().take(200).collect(),
                    };
                    if messages.is_empty() {
                        return Err(self.fail(id.0, err));
                    }
                    self.fail(id.0, err);
                }
                Ok(messages)
            }
            Err(CallError::Fault(fault)) => Err(self.fault(id.0, fault)),
        }
    }

    /// Asks the plugin whether `bytes` look like its protocol (`None`: it faulted).
    pub fn sniff(&mut self, direction: Direction, bytes: &[u8]) -> Option<wit::SniffVerdict> {
        self.ensure_live().ok()?;
        match self.call(bytes.len(), |b, s| b.sniff(s, direction.to_wit(), bytes)) {
            Ok(v) => Some(v),
            Err(CallError::Fault(fault)) => {
                self.discard(fault);
                None
            }
        }
    }

    /// The plugin's reply to a denied `request` (`None`: it faulted).
    pub fn deny_reply(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        self.ensure_live().ok()?;
        match self.call(request.len(), |b, s| b.deny_reply(s, request)) {
            Ok(v) if v.len() <= self.plugin.limits.max_pending_bytes => Some(v),
            Ok(_) => {
                self.plugin.metrics.violation();
                None
            }
            Err(CallError::Fault(fault)) => {
                self.discard(fault);
                None
            }
        }
    }

    /// Linear memory of the current instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, |l| l.store.data().limiter.memory)
    }

    fn origin(&self, id: u64, direction: Direction) -> u64 {
        self.conns
            .get(&id)
            .map_or(0, |c| c.halves[direction.index()].origin)
    }

    /// Runs one guest call with a fresh deadline, timing and counting it.
    fn call<T>(
        &mut self,
        bytes: usize,
        f: impl FnOnce(&Bindings, &mut Store<StoreData>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        let Some(live) = self.live.as_mut() else {
            return Err(CallError::Fault(Fault::Trap));
        };
        live.store.set_epoch_deadline(Limits::TICKS_PER_DEADLINE);
        let started = Instant::now();
        let result = f(&live.bindings, &mut live.store);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.plugin.metrics.call(bytes, nanos);
        match result {
            Ok(v) => Ok(v),
            Err(err) => {
                let fault = if live.store.data().limiter.refused {
                    Fault::Memory
                } else if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                    Fault::Deadline
                } else {
                    Fault::Trap
                };
                tracing::warn!(plugin = %self.plugin.info.name, ?fault, error = %format!("{err:#}"), "plugin call failed");
                Err(CallError::Fault(fault))
            }
        }
    }

    fn ensure_live(&mut self) -> Result<(), ConnError> {
        if self.live.is_some() {
            return Ok(());
        }
        let mut store = new_store(&self.plugin.engine, &self.plugin.limits);
        let bindings =
            self.plugin
                .pre
                .instantiate(&mut store)
                .map_err(|e| ConnError::Unavailable {
                    plugin: self.plugin.info.name.clone(),
                    detail: format!("{e:#}"),
                })?;
        self.plugin.metrics.instance_created();
        self.live = Some(Live { store, bindings });
        Ok(())
    }

    /// The connection's resource on the live instance, created (and primed with
    /// the connection's unframed bytes) if needed.
    fn ensure_resource(&mut self, id: u64) -> Result<ResourceAny, ConnError> {
        loop {
            if let Err(e) = self.ensure_live() {
                return Err(self.fail(id, e));
            }
            let Some(conn) = self.conns.get(&id) else {
                return Err(ConnError::UnknownConnection(id));
            };
            if let Some(r) = conn.resource {
                return Ok(r);
            }
            let created = self.call(0, |b, s| b.connection(s));
            let resource = match created {
                Ok(r) => r,
                Err(CallError::Fault(fault)) => return Err(self.fault(id, fault)),
            };
            let Some(conn) = self.conns.get_mut(&id) else {
                return Err(ConnError::UnknownConnection(id));
            };
            conn.resource = Some(resource);
            // Replay what the previous instance held but had not framed; the
            // resource counts offsets from there.
            let replays: Vec<(Direction, Vec<u8>)> = [Direction::ToServer, Direction::ToClient]
                .into_iter()
                .filter_map(|d| {
                    let half = &mut conn.halves[d.index()];
                    half.origin = half.base;
                    (!half.pending.is_empty()).then(|| (d, half.pending.to_vec()))
                })
                .collect();
            let mut replay_failed = false;
            for (d, bytes) in replays {
                let r = self.call(bytes.len(), |b, s| b.feed(s, resource, d.to_wit(), &bytes));
                match r {
                    // Bytes that framed nothing before frame nothing now.
                    Ok(frames) if frames.messages.is_empty() && frames.error.is_none() => {}
                    Ok(wit::Frames { error: None, .. }) => {
                        self.plugin.metrics.violation();
                        self.fail(id, self.violation("replayed bytes framed differently"));
                        replay_failed = true;
                        break;
                    }
                    Ok(wit::Frames { error: Some(e), .. }) => {
                        self.plugin.metrics.parse_error();
                        let offset = e.offset.saturating_add(self.origin(id, d));
                        self.fail(
                            id,
                            ConnError::Parse {
                                offset,
                                reason: e.reason,
                            },
                        );
                        replay_failed = true;
                        break;
                    }
                    Err(CallError::Fault(fault)) => {
                        return Err(self.fault(id, fault));
                    }
                }
            }
            if replay_failed {
                return Err(self.error_of(id));
            }
            if self.live.is_some() {
                return Ok(resource);
            }
        }
    }

    fn error_of(&self, id: u64) -> ConnError {
        self.conns
            .get(&id)
            .and_then(|c| c.failed.clone())
            .unwrap_or(ConnError::UnknownConnection(id))
    }

    fn violation(&self, detail: impl Into<String>) -> ConnError {
        ConnError::Violation {
            plugin: self.plugin.info.name.clone(),
            detail: detail.into(),
        }
    }

    /// Checks a `feed` answer against the bytes the host holds and turns it into
    /// messages.
    fn accept(
        &mut self,
        id: u64,
        direction: Direction,
        frames: wit::Frames,
    ) -> Result<Vec<Message>, ConnError> {
        let schema = &self.plugin.info.fields;
        let Some(conn) = self.conns.get_mut(&id) else {
            return Err(ConnError::UnknownConnection(id));
        };
        let half = &mut conn.halves[direction.index()];
        match check(frames, half, direction, schema) {
            Ok((mut messages, ranges, cursor, order)) => {
                // The framed bytes leave the buffer without a copy; messages
                // hold slices of them.
                let framed = half
                    .pending
                    .split_to((cursor - half.base) as usize)
                    .freeze();
                for (m, range) in messages.iter_mut().zip(ranges) {
                    m.bytes = framed.slice(range);
                }
                half.base = cursor;
                half.order = order;
                self.plugin.metrics.messages(messages.len());
                if let Some(live) = &self.live {
                    self.plugin.metrics.memory(live.store.data().limiter.memory);
                }
                Ok(messages)
            }
            Err(detail) => {
                self.plugin.metrics.violation();
                Err(self.fail(id, self.violation(detail)))
            }
        }
    }

    /// Marks a connection failed and frees its resource.
    fn fail(&mut self, id: u64, err: ConnError) -> ConnError {
        let resource = match self.conns.get_mut(&id) {
            Some(conn) => {
                conn.failed = Some(err.clone());
                conn.halves = [Half::default(), Half::default()];
                conn.resource.take()
            }
            None => None,
        };
        self.drop_resource(resource);
        err
    }

    /// A call faulted while handling `id`'s bytes: discard the instance, fail `id`.
    fn fault(&mut self, id: u64, fault: Fault) -> ConnError {
        self.discard(fault);
        let kind = match fault {
            Fault::Trap => "trapped",
            Fault::Deadline => "hit its deadline",
            Fault::Memory => "ran out of memory",
        };
        self.fail(
            id,
            ConnError::Fault {
                plugin: self.plugin.info.name.clone(),
                kind,
            },
        )
    }

    /// Drops the poisoned instance; every connection's resource went with it.
    fn discard(&mut self, fault: Fault) {
        self.plugin.metrics.fault(fault);
        self.live = None;
        for conn in self.conns.values_mut() {
            conn.resource = None;
        }
    }

    fn drop_resource(&mut self, resource: Option<ResourceAny>) {
        if let (Some(resource), Some(live)) = (resource, self.live.as_mut()) {
            live.store.set_epoch_deadline(Limits::TICKS_PER_DEADLINE);
            if resource.resource_drop(&mut live.store).is_err() {
                // A destructor that traps poisons the instance like any call.
                self.discard(Fault::Trap);
            }
        }
    }
}

/// What [`check`] returns.
type Checked = (Vec<Message>, Vec<std::ops::Range<usize>>, u64, u64);

/// Validates a plugin's frames against the unframed bytes of `half`: messages in
/// order, inside the buffer, at least one byte each; field ranges that tile the
/// field list in order; fields in the schema, set once unless `repeated`, slices
/// inside their message and text inside the text arena. Returns the messages
/// (without their bytes yet), each one's range of the buffer, the new stream
/// cursor and the new in-order count.
fn check(
    frames: wit::Frames,
    half: &Half,
    direction: Direction,
    schema: &[FieldSpec],
) -> Result<Checked, String> {
    let end = half.base + half.pending.len() as u64;
    if frames.messages.len() > half.pending.len() {
        return Err(format!(
            "{} messages from {} buffered bytes",
            frames.messages.len(),
            half.pending.len()
        ));
    }
    let wit::Frames {
        messages,
        fields: all_fields,
        text,
        ..
    } = frames;
    let mut out = Vec::with_capacity(messages.len());
    let mut ranges = Vec::with_capacity(messages.len());
    let mut cursor = half.base;
    let mut order = half.order;
    let mut next_field = 0usize;
    for m in messages {
        let start = m.start.saturating_add(half.origin);
        let stop = start.saturating_add(u64::from(m.len));
        if m.len == 0 || start < cursor || stop > end {
            return Err(format!(
                "message spans bytes {start}..{stop}, outside the unframed {cursor}..{end}"
            ));
        }
        let first = m.fields.offset as usize;
        let last = first.saturating_add(m.fields.len as usize);
        let Some(own) = all_fields
            .get(first.saturating_mul(2)..last.saturating_mul(2))
            .filter(|_| first == next_field)
        else {
            return Err(format!(
                "message's fields {first}..{last} do not follow on at {next_field} of {}",
                all_fields.len() / 2
            ));
        };
        next_field = last;
        let mut seen = [0u64; 4];
        let mut fields = Vec::with_capacity(own.len() / 2);
        for &[w0, w1] in own.as_chunks::<2>().0 {
            let Some((id, kind, offset, word)) = unpack(w0, w1) else {
                return Err(format!("field packed as {w0:#x} is not a field"));
            };
            let Some(spec) = schema.get(usize::from(id)) else {
                return Err(format!(
                    "field id {id} outside the schema of {}",
                    schema.len()
                ));
            };
            // Ids are below 256 (the schema's limit), so four words hold them all.
            let (word_at, bit) = (usize::from(id) / 64 % 4, id % 64);
            if seen[word_at] & (1 << bit) != 0 && !spec.repeated {
                return Err(format!(
                    "field {:?} set more than once in a message, but not declared repeated",
                    spec.name
                ));
            }
            seen[word_at] |= 1 << bit;
            let value = match kind {
                wit::ValueKind::Slice => {
                    if u64::from(offset) + word > u64::from(m.len) {
                        return Err(format!(
                            "field slice {offset}+{word} past its {}-byte message",
                            m.len
                        ));
                    }
                    // Within the message's length, so within u32.
                    Value::Slice {
                        offset,
                        len: word as u32,
                    }
                }
                wit::ValueKind::Computed => {
                    let from = offset as usize;
                    let to = usize::try_from(word).map_or(usize::MAX, |n| from.saturating_add(n));
                    let Some(t) = text.get(from..to) else {
                        return Err(format!(
                            "computed text {offset}+{word} outside the {}-byte text (or not on a character boundary)",
                            text.len()
                        ));
                    };
                    Value::Text(t.to_owned())
                }
                wit::ValueKind::Unsigned => Value::Unsigned(word),
                wit::ValueKind::Signed => Value::Signed(word as i64),
                wit::ValueKind::Flag => match word {
                    0 | 1 => Value::Flag(word == 1),
                    _ => return Err(format!("flag field {:?} is {word}", spec.name)),
                },
            };
            fields.push(Field { id, value });
        }
        // Both offsets lie within `pending` (checked above).
        let from = (start - half.base) as usize;
        let to = (stop - half.base) as usize;
        let correlation = match m.correlation {
            wit::Correlation::InOrder => {
                order += 1;
                Correlation::Order(order - 1)
            }
            wit::Correlation::Id(v) => Correlation::Id(v),
            wit::Correlation::None => Correlation::None,
        };
        out.push(Message {
            direction,
            kind: match m.kind {
                wit::MessageKind::Request => MessageKind::Request,
                wit::MessageKind::Response => MessageKind::Response,
                wit::MessageKind::Event => MessageKind::Event,
            },
            start,
            bytes: bytes::Bytes::new(),
            correlation,
            fields,
        });
        ranges.push(from..to);
        cursor = stop;
    }
    if next_field.saturating_mul(2) != all_fields.len() {
        return Err(format!(
            "{} words of fields belong to no message",
            all_fields
                .len()
                .saturating_sub(next_field.saturating_mul(2))
        ));
    }
    Ok((out, ranges, cursor, order))
}
