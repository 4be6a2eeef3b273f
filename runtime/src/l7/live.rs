//! The agent's live L7 path: the datapath's payload copies (per-CPU perf buffer)
//! → a bounded queue → one parsing thread: frame decoding, TCP reassembly, the
//! [`Engine`], and flows into the flow store.
//!
//! Every loss is counted and shown: copies the kernel could not queue (buffer
//! full) and packets the parsing thread could not take (queue full) become
//! LostEvents in the flow stream and `loupe_l7_lost_total{source}` in metrics;
//! the holes they leave become gaps the engine resynchronises over.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use super::{ConnContext, Engine, EngineLimits, EngineStats};
use crate::capture::{LinkType, packet::Decoded};
use crate::datapath::controller::SnapshotHandle;
use crate::datapath::flows::EndpointSnapshot;
use crate::datapath::payload::{self, PayloadItem, PayloadPacket, PayloadStats};
use crate::flow::FlowStore;
use crate::metrics::{Collector, MetricFamily, MetricKind};
use crate::plugin::PluginManager;
use crate::policy::Direction;
use crate::policy::l7::{L7Policy, L7PolicyHandle};
use crate::reassembly::{ConnKey, Event, Reassembler, Segment};
use loupe_proto::flow::{LostEvent, LostEventSource, TrafficDirection};

/// Counters of the live path.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// The perf buffer readers' counters.
    pub payload: Arc<PayloadStats>,
    /// Packets dropped because the parsing thread's queue was full.
    pub queue_lost: AtomicU64,
    /// Frames that did not decode to TCP.
    pub undecodable: AtomicU64,
    /// Connections being followed.
    pub connections: AtomicU64,
    /// The engine's counters (set once the thread runs).
    pub engine: std::sync::OnceLock<Arc<EngineStats>>,
}

/// What the live path needs from the agent.
pub struct LiveConfig {
    /// Perf buffer pages per CPU.
    pub buffer_pages: usize,
    /// Queue between readers and the parsing thread, in packets.
    pub queue: usize,
    /// Reassembly bounds.
    pub reassembly: crate::reassembly::Limits,
    /// Ports observed without policy (the protocol switches).
    pub global_ports: GlobalPorts,
}

/// The ports observed without policy, shared with the agent, which changes
/// them as plugins are installed and removed; read once per batch.
#[derive(Debug, Clone, Default)]
pub struct GlobalPorts(Arc<std::sync::RwLock<Arc<BTreeSet<u16>>>>);

impl GlobalPorts {
    /// The current set.
    pub fn load(&self) -> Arc<BTreeSet<u16>> {
        // A poisoned lock only means a writer panicked; the set is whole.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the set.
    pub fn store(&self, ports: BTreeSet<u16>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ports);
    }
}

/// Starts the readers and the parsing thread; flows go to `flows`.
pub fn start(
    map: aya::maps::Map,
    config: LiveConfig,
    plugins: Arc<PluginManager>,
    snapshot: SnapshotHandle,
    policy: L7PolicyHandle,
    flows: FlowStore,
) -> std::io::Result<Arc<LiveStats>> {
    let stats = Arc::new(LiveStats::default());
    let (tx, rx) = std::sync::mpsc::sync_channel::<PayloadItem>(config.queue);
    let sink_stats = stats.clone();
    let sink = move |item: PayloadItem| enqueue(&tx, item, &sink_stats);
    payload::start(map, config.buffer_pages, stats.payload.clone(), sink)?;
    let thread_stats = stats.clone();
    std::thread::Builder::new()
        .name("loupe-l7".into())
        .spawn(move || run(rx, config, plugins, snapshot, policy, flows, thread_stats))?;
    Ok(stats)
}

/// What the parsing thread reads of the agent's state, loaded once per batch:
/// endpoints for flows, the L7 rules for which plugin a port's policy names.
struct View {
    endpoints: Arc<EndpointSnapshot>,
    policy: Arc<L7Policy>,
}

impl View {
    fn load(snapshot: &SnapshotHandle, policy: &L7PolicyHandle) -> Self {
        Self {
            endpoints: snapshot.read().map(|s| s.clone()).unwrap_or_default(),
            policy: policy.load(),
        }
    }

    /// The protocol the L7 rules name for `port` of endpoint `ep`.
    fn protocol(&self, ep: u16, dir: Direction, port: u16) -> Option<String> {
        self.policy
            .parser(ep, dir, port)
            .map(|p| p.protocol().to_string())
    }
}

/// A packet waiting for the watermark, ordered by datapath time.
struct Waiting {
    ts: u64,
    arrival: u64,
    packet: PayloadPacket,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.arrival) == (other.ts, other.arrival)
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.ts, self.arrival).cmp(&(other.ts, other.arrival))
    }
}

fn enqueue(tx: &SyncSender<PayloadItem>, item: PayloadItem, stats: &LiveStats) {
    match tx.try_send(item) {
        Ok(()) => {}
        // A watermark that does not fit is superseded by the next one.
        Err(TrySendError::Full(PayloadItem::Watermark(_))) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            stats.queue_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(
    rx: Receiver<PayloadItem>,
    config: LiveConfig,
    plugins: Arc<PluginManager>,
    snapshot: SnapshotHandle,
    policy: L7PolicyHandle,
    flows: FlowStore,
    stats: Arc<LiveStats>,
) {
    let mut engine = Engine::new(plugins, EngineLimits::default());
    let _ = stats.engine.set(engine.stats());
    let mut reassembler = Reassembler::new(config.reassembly);
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut reported = (0u64, 0u64);
    let mut last_tick = Instant::now();
    // Copies from different CPUs arrive in per-CPU batches: they wait here until
    // the reader's watermark passes them, and leave in the order the datapath
    // stamped them (a response never overtakes its request).
    let mut waiting: BinaryHeap<Reverse<Waiting>> = BinaryHeap::new();
    let mut arrivals = 0u64;
    let mut watermark = 0u64;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(PayloadItem::Packet(packet)) => {
                arrivals += 1;
                waiting.push(Reverse(Waiting {
                    ts: packet.header.ts_ns,
                    arrival: arrivals,
                    packet,
                }));
            }
            Ok(PayloadItem::Watermark(ts)) => watermark = watermark.max(ts),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let ready = |w: &Waiting, len: usize| w.ts <= watermark || len >= config.queue;
        if waiting
            .peek()
            .is_some_and(|Reverse(w)| ready(w, waiting.len()))
        {
            let view = View::load(&snapshot, &policy);
            let global_ports = config.global_ports.load();
            while waiting
                .peek()
                .is_some_and(|Reverse(w)| ready(w, waiting.len()))
            {
                let Some(Reverse(w)) = waiting.pop() else {
                    break;
                };
                process(
                    &w.packet,
                    &view,
                    &global_ports,
                    &mut reassembler,
                    &mut engine,
                    &mut events,
                    &mut out,
                    &stats,
                );
                for flow in out.drain(..) {
                    flows.push(flow);
                }
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            reassembler.expire(SystemTime::now(), &mut events);
            let view = View::load(&snapshot, &policy);
            for event in events.drain(..) {
                engine.handle(event, &|key| context(key, None, &view), &mut out);
            }
            for flow in out.drain(..) {
                flows.push(flow);
            }
            engine.collect_workers();
            stats
                .connections
                .store(engine.connections() as u64, Ordering::Relaxed);
            report_lost(&stats, &flows, &mut reported);
        }
    }
}

/// Turns new losses into LostEvents.
fn report_lost(stats: &LiveStats, flows: &FlowStore, reported: &mut (u64, u64)) {
    let perf = stats.payload.lost.load(Ordering::Relaxed);
    let queue = stats.queue_lost.load(Ordering::Relaxed);
    if perf > reported.0 {
        flows.push_lost(LostEvent {
            source: LostEventSource::PerfEventRingBuffer as i32,
            num_events_lost: perf - reported.0,
            ..LostEvent::default()
        });
    }
    if queue > reported.1 {
        flows.push_lost(LostEvent {
            source: LostEventSource::ObserverEventsQueue as i32,
            num_events_lost: queue - reported.1,
            ..LostEvent::default()
        });
    }
    *reported = (perf, queue);
}

#[allow(clippy::too_many_arguments)]
fn process(
    packet: &PayloadPacket,
    view: &View,
    global_ports: &BTreeSet<u16>,
    reassembler: &mut Reassembler,
    engine: &mut Engine,
    events: &mut Vec<Event>,
    out: &mut Vec<loupe_proto::flow::Flow>,
    stats: &LiveStats,
) {
    let Decoded::Tcp {
        src,
        dst,
        seq,
        flags,
        payload,
    } = crate::capture::packet::decode(LinkType::Ethernet, &packet.frame)
    else {
        stats.undecodable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let ep = packet.header.ep_id;
    let observed = |port: u16| {
        global_ports.contains(&port)
            || [Direction::Ingress, Direction::Egress]
                .into_iter()
                .any(|d| view.policy.parser(ep, d, port).is_some())
    };
    // For a connection first seen without its SYN: the side on the observed
    // port is the server.
    let server = || {
        if observed(src.port()) && !observed(dst.port()) {
            src
        } else {
            dst
        }
    };
    let seg = Segment {
        time: packet.time,
        src,
        dst,
        seq,
        flags,
        payload,
    };
    reassembler.push_hinted(&seg, server, events);
    for event in events.drain(..) {
        engine.handle(event, &|key| context(key, Some(packet), view), out);
    }
}

/// Who a connection joins: endpoints from the snapshot (local ones by address),
/// the remote identity from the datapath's copy.
fn context(key: &ConnKey, packet: Option<&PayloadPacket>, view: &View) -> ConnContext {
    let snap = &view.endpoints;
    let remote_identity = packet.map_or(0, |p| p.header.remote_identity);
    let ip = |a: SocketAddr| -> IpAddr { a.ip().to_canonical() };
    let client = snap.remote(ip(key.client), remote_identity);
    let server = snap.remote(ip(key.server), remote_identity);
    let observer = packet.map(|p| p.header.ep_id);
    let at_server = observer.is_none_or(|ep| server.id == u32::from(ep));
    let (traffic_direction, policy_dir) = if at_server {
        (TrafficDirection::Ingress, Direction::Ingress)
    } else {
        (TrafficDirection::Egress, Direction::Egress)
    };
    let protocol = observer.and_then(|ep| view.protocol(ep, policy_dir, key.server.port()));
    ConnContext {
        client,
        server,
        traffic_direction,
        protocol,
    }
}

/// `loupe_l7_*` metrics.
pub struct LiveCollector(pub Arc<LiveStats>);

impl Collector for LiveCollector {
    fn collect(&self) -> Vec<MetricFamily> {
        let s = &self.0;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let mut families = vec![
            MetricFamily::new(
                "loupe_l7_packets_total",
                "Packets the datapath copied to the L7 path and the agent read",
                MetricKind::Counter,
            )
            .value(&[], get(&s.payload.packets)),
            MetricFamily::new(
                "loupe_l7_bytes_total",
                "Bytes of the packets the L7 path read",
                MetricKind::Counter,
            )
            .value(&[], get(&s.payload.bytes)),
            MetricFamily::new(
                "loupe_l7_lost_total",
                "Packet copies lost before parsing, by where",
                MetricKind::Counter,
            )
            .value(&[("source", "perf_buffer")], get(&s.payload.lost))
            .value(&[("source", "queue")], get(&s.queue_lost)),
            MetricFamily::new(
                "loupe_l7_undecodable_total",
                "Copied frames that did not decode to a TCP segment",
                MetricKind::Counter,
            )
            .value(&[], get(&s.undecodable) + get(&s.payload.malformed)),
            MetricFamily::new(
                "loupe_l7_connections",
                "Connections the L7 path follows",
                MetricKind::Gauge,
            )
            .value(&[], get(&s.connections)),
        ];
        if let Some(e) = s.engine.get() {
            families.push(
                MetricFamily::new(
                    "loupe_l7_messages_total",
                    "L7 messages parsed, by kind",
                    MetricKind::Counter,
                )
                .value(&[("kind", "request")], get(&e.requests))
                .value(&[("kind", "response")], get(&e.responses))
                .value(&[("kind", "event")], get(&e.events)),
            );
            for (name, help, c) in [
                (
                    "loupe_l7_parsed_connections_total",
                    "Connections handed to a plugin",
                    &e.connections,
                ),
                (
                    "loupe_l7_unidentified_connections_total",
                    "Connections no plugin recognised",
                    &e.unidentified,
                ),
                (
                    "loupe_l7_unpaired_responses_total",
                    "Responses whose request was not seen",
                    &e.unpaired,
                ),
                (
                    "loupe_l7_errors_total",
                    "Connections whose L7 view stopped on a parse error or plugin fault",
                    &e.errors,
                ),
                (
                    "loupe_l7_gaps_total",
                    "Holes in reassembled streams",
                    &e.gaps,
                ),
                (
                    "loupe_l7_resync_skipped_bytes_total",
                    "Bytes skipped after a hole until a message start was found",
                    &e.resync_skipped_bytes,
                ),
            ] {
                families
                    .push(MetricFamily::new(name, help, MetricKind::Counter).value(&[], get(c)));
            }
        }
        families
    }
}
