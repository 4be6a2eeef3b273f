//! The flow store: a bounded ring of recent flows and the subscribers fed from it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::fanout::{FlowPredicate, Slot, Subscription};
use super::services::Services;
use loupe_proto::flow::{Flow, LostEvent, LostEventSource};

/// Hubble's default ring size (`hubble.eventBufferCapacity`).
pub const DEFAULT_CAPACITY: usize = 4095;

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Flows in the ring now.
    pub stored: u64,
    /// Ring capacity.
    pub capacity: u64,
    /// Flows pushed since start.
    pub seen: u64,
    /// Flows lost by subscribers whose queue was full (`HUBBLE_RING_BUFFER`).
    pub lost_to_subscribers: u64,
    /// Events producers reported lost before they became flows
    /// (`PERF_EVENT_RING_BUFFER` and the like).
    pub lost_upstream: u64,
    /// Live subscribers.
    pub subscribers: u64,
}

#[derive(Debug)]
struct Ring {
    flows: VecDeque<(u64, Arc<Flow>)>,
    next_seq: u64,
}

/// The store of recent flows and the fan-out to live subscribers.
///
/// Cheap to clone (a handle). All methods are synchronous and never wait on a
/// reader: producers call [`push`](Self::push) from any thread, including a
/// datapath reader loop, and pay one short lock plus one non-blocking queue
/// offer per subscriber.
#[derive(Debug, Clone)]
pub struct FlowStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ring: Mutex<Ring>,
    capacity: usize,
    subscribers: RwLock<Vec<Arc<Slot>>>,
    has_closed: AtomicBool,
    seen: AtomicU64,
    lost_to_subscribers: AtomicU64,
    lost_upstream: AtomicU64,
    /// Upstream losses by `LostEventSource`, for `hubble_lost_events_total`.
    lost_by_source: [AtomicU64; 4],
    node_name: String,
    started: Instant,
    uuid_seed: u64,
    /// Synchronous consumers (flow-derived metrics), called for every flow on
    /// the producer's thread: they never lose a flow.
    hooks: Hooks,
    /// Services by frontend, naming `source_service` / `destination_service`.
    services: Services,
}

#[derive(Default)]
struct Hooks(RwLock<Vec<FlowHook>>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} hooks", read(&self.0).len())
    }
}

/// A synchronous flow consumer (see [`FlowStore::add_hook`]).
pub type FlowHook = Arc<dyn Fn(&Flow) + Send + Sync>;

impl FlowStore {
    /// A store keeping the last `capacity` flows (at least 1), stamping flows
    /// that have no node name with `node_name`.
    pub fn new(capacity: usize, node_name: impl Into<String>) -> Self {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let capacity = capacity.max(1);
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    flows: VecDeque::with_capacity(capacity),
                    next_seq: 1,
                }),
                capacity,
                subscribers: RwLock::new(Vec::new()),
                has_closed: AtomicBool::new(false),
                seen: AtomicU64::new(0),
                lost_to_subscribers: AtomicU64::new(0),
                lost_upstream: AtomicU64::new(0),
                lost_by_source: Default::default(),
                node_name: node_name.into(),
                started: Instant::now(),
                uuid_seed: h.finish(),
                hooks: Hooks::default(),
                services: Services::default(),
            }),
        }
    }

    /// Stores a flow and offers it to every subscriber. Never blocks on readers.
    ///
    /// Fills what the producer left empty: `time` (now), `uuid`, `node_name`,
    /// and the Services its addresses are frontends of. The oldest flow leaves
    /// the ring when it is full.
    pub fn push(&self, mut flow: Flow) {
        self.inner.services.annotate(&mut flow);
        if flow.time.is_none() {
            flow.time = Some(loupe_proto::time::now_timestamp());
        }
        if flow.node_name.is_empty() {
            flow.node_name.clone_from(&self.inner.node_name);
        }
        // The evicted flow is freed after the lock is released.
        let (flow, lost, _evicted) = {
            let mut ring = lock(&self.inner.ring);
            let seq = ring.next_seq;
            ring.next_seq += 1;
            if flow.uuid.is_empty() {
                flow.uuid = self.uuid(seq);
            }
            let flow = Arc::new(flow);
            let evicted = if ring.flows.len() >= self.inner.capacity {
                ring.flows.pop_front()
            } else {
                None
            };
            ring.flows.push_back((seq, flow.clone()));
            // Offered while the ring is held (lock order: ring, subscribers, a
            // subscriber's queue): every subscriber gets flows and its loss markers
            // in sequence order, so a stream cut anywhere leaves no hole behind.
            let subscribers = read(&self.inner.subscribers);
            let mut lost = 0;
            for slot in subscribers.iter() {
                if slot.is_closed() {
                    self.inner.has_closed.store(true, Ordering::Relaxed);
                } else if !slot.offer(seq, &flow) {
                    lost += 1;
                }
            }
            (flow, lost, evicted)
        };
        self.inner.seen.fetch_add(1, Ordering::Relaxed);
        for hook in read(&self.inner.hooks.0).iter() {
            hook(&flow);
        }
        if lost > 0 {
            self.inner
                .lost_to_subscribers
                .fetch_add(lost, Ordering::Relaxed);
        }
        if self.inner.has_closed.swap(false, Ordering::Relaxed) {
            write(&self.inner.subscribers).retain(|s| !s.is_closed());
        }
    }

    /// Ends every subscription (the agent is stopping): each subscriber gets
    /// what it has queued, then [`Event::End`](super::Event::End), so follow
    /// streams finish instead of holding a stopping server open.
    pub fn end_subscriptions(&self) {
        for slot in read(&self.inner.subscribers).iter() {
            slot.end();
        }
    }

    /// The Service table flows are annotated from (the Kubernetes source writes it).
    pub fn services(&self) -> Services {
        self.inner.services.clone()
    }

    /// Calls `hook` for every flow pushed from now on, on the producer's thread,
    /// as Hubble runs its metric handlers: counters derived from flows never
    /// miss one, whatever the burst. Keep it cheap (a lock and a few map updates).
    pub fn add_hook(&self, hook: FlowHook) {
        write(&self.inner.hooks.0).push(hook);
    }

    /// Records events a producer lost before they became flows (a full perf
    /// ring, a parser queue…) and tells every subscriber. Never blocks.
    pub fn push_lost(&self, event: LostEvent) {
        self.inner
            .lost_upstream
            .fetch_add(event.num_events_lost, Ordering::Relaxed);
        let index = usize::try_from(event.source).unwrap_or(0).min(3);
        self.inner.lost_by_source[index].fetch_add(event.num_events_lost, Ordering::Relaxed);
        for slot in read(&self.inner.subscribers).iter() {
            if !slot.is_closed() {
                slot.offer_lost(&event);
            }
        }
    }

    /// A live feed of flows pushed from now on that pass `predicate` (all when
    /// `None`), queued up to `queue_capacity` events.
    pub fn subscribe(
        &self,
        queue_capacity: usize,
        predicate: Option<FlowPredicate>,
    ) -> Subscription {
        let slot = Arc::new(Slot::new(queue_capacity, predicate));
        write(&self.inner.subscribers).push(slot.clone());
        Subscription::new(slot)
    }

    /// The flows in the ring, oldest first, with their sequence numbers.
    pub fn snapshot(&self) -> Vec<(u64, Arc<Flow>)> {
        lock(&self.inner.ring).flows.iter().cloned().collect()
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let stored = lock(&self.inner.ring).flows.len();
        let subscribers = read(&self.inner.subscribers)
            .iter()
            .filter(|s| !s.is_closed())
            .count();
        StoreStats {
            stored: stored as u64,
            capacity: self.inner.capacity as u64,
            seen: self.inner.seen.load(Ordering::Relaxed),
            lost_to_subscribers: self.inner.lost_to_subscribers.load(Ordering::Relaxed),
            lost_upstream: self.inner.lost_upstream.load(Ordering::Relaxed),
            subscribers: subscribers as u64,
        }
    }

    /// Events lost, by source: upstream reports plus subscriber overflow
    /// (`HUBBLE_RING_BUFFER`, as Hubble reports a reader the ring overran).
    pub fn lost_by_source(&self) -> Vec<(LostEventSource, u64)> {
        let mut out: Vec<(LostEventSource, u64)> = [
            LostEventSource::UnknownLostEventSource,
            LostEventSource::PerfEventRingBuffer,
            LostEventSource::ObserverEventsQueue,
            LostEventSource::HubbleRingBuffer,
        ]
        .into_iter()
        .zip(&self.inner.lost_by_source)
        .map(|(s, n)| (s, n.load(Ordering::Relaxed)))
        .collect();
        if let Some(entry) = out
            .iter_mut()
            .find(|(s, _)| *s == LostEventSource::HubbleRingBuffer)
        {
            entry.1 += self.inner.lost_to_subscribers.load(Ordering::Relaxed);
        }
        out
    }

    /// Flows per second over the last minute (from the ring's timestamps).
    pub fn flows_rate(&self) -> f64 {
        let now = loupe_proto::time::timestamp_ns(&loupe_proto::time::now_timestamp());
        let window = 60_000_000_000_i128;
        let ring = lock(&self.inner.ring);
        let recent = ring
            .flows
            .iter()
            .rev()
            .take_while(|(_, f)| now - loupe_proto::fields::time_ns(f) <= window)
            .count();
        let secs = self.inner.started.elapsed().as_secs_f64().clamp(1.0, 60.0);
        recent as f64 / secs
    }

    /// The node name flows are stamped with.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// Time since the store was created.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    fn uuid(&self, seq: u64) -> String {
        // Unique per node and run: a per-run random seed and the sequence number,
        // laid out as a version-4-shaped UUID. Written digit by digit: this runs
        // for every flow, and `format!` cost more than the rest of `push`.
        let a = self.inner.uuid_seed;
        let groups: [(u64, u32); 5] = [
            (a >> 32, 8),
            ((a >> 16) & 0xffff, 4),
            (0x4000 | (a & 0xfff), 4),
            (0x8000 | ((seq >> 48) & 0x3fff), 4),
            (seq & 0xffff_ffff_ffff, 12),
        ];
        let mut out = String::with_capacity(36);
        for (i, (value, digits)) in groups.into_iter().enumerate() {
            if i > 0 {
                out.push('-');
            }
            for d in (0..digits).rev() {
                let nibble = (value >> (4 * d)) & 0xf;
                out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
            }
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Event;

    fn flow(n: u32) -> Flow {
        Flow {
            policy_match_type: n,
            ..Default::default()
        }
    }

    #[test]
    fn ring_keeps_the_last_capacity_flows() {
        let store = FlowStore::new(3, "node");
        for n in 0..5 {
            store.push(flow(n));
        }
        let kept: Vec<u32> = store
            .snapshot()
            .iter()
            .map(|(_, f)| f.policy_match_type)
            .collect();
        assert_eq!(kept, vec![2, 3, 4]);
        let stats = store.stats();
        assert_eq!((stats.stored, stats.capacity, stats.seen), (3, 3, 5));
        let (_, f) = &store.snapshot()[0];
        assert_eq!(f.node_name, "node");
        assert!(f.time.is_some());
        assert_eq!(f.uuid.len(), 36);
        // The layout `format!` would give.
        let a = store.inner.uuid_seed;
        for seq in [0, 1, 0xabcd, u64::MAX, 0x1234_5678_9abc_def0] {
            assert_eq!(
                store.uuid(seq),
                format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    (a >> 32) as u32,
                    (a >> 16) as u16,
                    (a & 0xfff) as u16,
                    0x8000 | ((seq >> 48) as u16 & 0x3fff),
                    seq & 0xffff_ffff_ffff
                )
            );
        }
    }

    #[test]
    fn full_queue_loses_in_order_and_counts() {
        let store = FlowStore::new(16, "node");
        let mut slow = store.subscribe(2, None);
        let mut fast = store.subscribe(100, None);
        for n in 0..10 {
            store.push(flow(n));
        }
        let mut got = Vec::new();
        while let Some(e) = slow.try_recv() {
            got.push(match e {
                Event::Flow { flow, .. } => format!("f{}", flow.policy_match_type),
                Event::Lost(l) => format!("lost{}", l.num_events_lost),
                Event::End => "end".into(),
            });
        }
        assert_eq!(got, vec!["f0", "f1", "lost8"]);
        assert_eq!(slow.lost(), 8);
        let mut fast_count = 0;
        while let Some(e) = fast.try_recv() {
            assert!(matches!(e, Event::Flow { .. }));
            fast_count += 1;
        }
        assert_eq!(fast_count, 10);
        assert_eq!(store.stats().lost_to_subscribers, 8);
        // Room again: new flows flow.
        store.push(flow(10));
        assert!(matches!(slow.try_recv(), Some(Event::Flow { .. })));
    }

    #[test]
    fn predicate_and_unsubscribe() {
        let store = FlowStore::new(16, "node");
        let mut odd = store.subscribe(16, Some(Box::new(|f: &Flow| f.policy_match_type % 2 == 1)));
        for n in 0..4 {
            store.push(flow(n));
        }
        let mut got = Vec::new();
        while let Some(Event::Flow { flow, .. }) = odd.try_recv() {
            got.push(flow.policy_match_type);
        }
        assert_eq!(got, vec![1, 3]);
        drop(odd);
        store.push(flow(5));
        assert_eq!(store.stats().subscribers, 0);
    }

    #[test]
    fn upstream_losses_reach_subscribers_and_counters() {
        let store = FlowStore::new(4, "node");
        let mut sub = store.subscribe(4, None);
        store.push_lost(LostEvent {
            source: LostEventSource::PerfEventRingBuffer as i32,
            num_events_lost: 7,
            ..Default::default()
        });
        match sub.try_recv() {
            Some(Event::Lost(l)) => assert_eq!(l.num_events_lost, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.stats().lost_upstream, 7);
        assert!(
            store
                .lost_by_source()
                .contains(&(LostEventSource::PerfEventRingBuffer, 7))
        );
    }

    #[test]
    fn an_upstream_loss_on_a_full_queue_keeps_its_source() {
        let store = FlowStore::new(16, "node");
        let mut sub = store.subscribe(1, None);
        store.push(flow(0));
        store.push(flow(1)); // lost to the full queue
        store.push_lost(LostEvent {
            source: LostEventSource::PerfEventRingBuffer as i32,
            num_events_lost: 5,
            ..Default::default()
        });
        store.push(flow(2)); // lost, merged into the queue's own marker
        let mut got = Vec::new();
        while let Some(e) = sub.try_recv() {
            got.push(match e {
                Event::Flow { flow, .. } => format!("f{}", flow.policy_match_type),
                Event::Lost(l) => format!(
                    "{}:{}",
                    LostEventSource::try_from(l.source).map_or("?", |s| s.as_str_name()),
                    l.num_events_lost
                ),
                Event::End => "end".into(),
            });
        }
        assert_eq!(
            got,
            vec!["f0", "HUBBLE_RING_BUFFER:2", "PERF_EVENT_RING_BUFFER:5"]
        );
    }

    /// Producers on several threads, a small queue read while they push: the
    /// subscriber sees sequence numbers in order, and at every point of its stream
    /// each earlier number was either delivered or counted by a loss marker.
    #[test]
    fn concurrent_producers_reach_a_subscriber_in_sequence_order() {
        const PER_THREAD: u32 = 20_000;
        let store = FlowStore::new(1024, "node");
        let mut sub = store.subscribe(8, None);
        let producers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for n in 0..PER_THREAD {
                        store.push(flow(n));
                    }
                })
            })
            .collect();
        let (mut accounted, mut received) = (0u64, 0u64);
        let mut finished = false;
        loop {
            match sub.try_recv() {
                Some(Event::Flow { seq, .. }) => {
                    assert_eq!(seq, accounted + 1, "a hole or a reordering before {seq}");
                    accounted = seq;
                    received += 1;
                }
                Some(Event::Lost(l)) => accounted += l.num_events_lost,
                Some(Event::End) => unreachable!("nothing ends this store"),
                None if finished => break,
                None => {
                    finished = producers.iter().all(std::thread::JoinHandle::is_finished);
                    std::thread::yield_now();
                }
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(accounted, u64::from(PER_THREAD) * 4);
        assert_eq!(accounted - received, sub.lost());
    }

    #[test]
    fn ended_subscriptions_deliver_what_is_queued_then_end() {
        let store = FlowStore::new(16, "n");
        let mut sub = store.subscribe(16, None);
        store.push(Flow::default());
        store.end_subscriptions();
        assert!(matches!(sub.try_recv(), Some(Event::Flow { .. })));
        assert!(matches!(sub.try_recv(), Some(Event::End)));
        assert!(matches!(sub.try_recv(), Some(Event::End)));
        // A subscription taken later is not ended.
        let mut later = store.subscribe(16, None);
        assert!(later.try_recv().is_none());
    }
}
