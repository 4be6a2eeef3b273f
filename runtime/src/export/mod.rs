//! Flow export to files, as Cilium's Hubble exporter writes them: one JSON
//! `GetFlowsResponse` per line (`{"flow":{…},"node_name":…,"time":…}`, the bytes
//! `hubble observe -o json` prints), filtered by allow / deny lists of
//! `FlowFilter`s, cut down by a field mask or counted by groups of fields over an
//! interval (`fieldAggregate`), in files rotated by size with optional gzip.
//!
//! Exporters never slow the flow pipeline: each reads the store through its own
//! bounded [`Subscription`](crate::flow::Subscription) on its own thread. Flows it
//! cannot keep up with are lost at its queue, and lines it cannot write (a full
//! disk, a path it may not create) are dropped; both are counted
//! ([`ExporterStats`], `hubble_exporter_*` on `/metrics`) and the exporter's
//! health (`hubble/exporter/<name>` in `loupe status`) says why.
//!
//! The static exporter comes from `hubble.export.static`; the dynamic ones from
//! the `flowLogs:` file of `hubble.export.dynamic.config.path`, re-read every
//! second and applied when its content changes ([`dynamic`]).

pub mod aggregate;
pub mod config;
pub mod dynamic;
pub mod file;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use loupe_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use tokio::sync::watch;

use self::aggregate::Aggregator;
use self::config::ExportSpec;
use self::file::Sink;
use crate::flow::json::{flow_response, to_json};
use crate::flow::{Event, FlowStore};
use crate::health::{ComponentState, Health};
use crate::metrics::{MetricFamily, MetricKind};

/// What one exporter has done.
#[derive(Debug, Default)]
pub struct ExporterStats {
    /// Lines written: flows, lost-event notices, aggregates.
    pub lines: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Flows lost at the exporter's queue (it fell behind).
    pub queue_lost: AtomicU64,
    /// Lines that could not be written (each one lost).
    pub write_errors: AtomicU64,
    /// Files rotated.
    pub rotations: AtomicU64,
}

/// A running exporter: stops (after a last aggregate flush) when dropped.
#[derive(Debug)]
pub struct Exporter {
    name: String,
    stats: Arc<ExporterStats>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Starts exporting what `flows` receives from now on, through a queue of
    /// `queue` events; health goes to `health` as `hubble/exporter/<name>`.
    pub fn start(spec: ExportSpec, flows: &FlowStore, queue: usize, health: Arc<Health>) -> Self {
        let stats = Arc::new(ExporterStats::default());
        let filters = spec.filters.clone();
        let subscription = flows.subscribe(queue, Some(Box::new(move |f| filters.matches(f))));
        let (stop, stopped) = watch::channel(false);
        let name = spec.name.clone();
        let run = Run {
            node_name: flows.node_name().to_string(),
            sink: Sink::new(&spec.file_path, spec.rotation),
            aggregator: spec.aggregation.clone().map(Aggregator::new),
            component: format!("hubble/exporter/{name}"),
            failing: None,
            stats: stats.clone(),
            health,
            spec,
        };
        run.health
            .set(&run.component, ComponentState::Ok, run.describe());
        let thread = std::thread::Builder::new()
            .name(format!("export-{name}"))
            .spawn(move || run.main(subscription, stopped))
            .map_err(|e| tracing::error!(error = %e, "flow exporter thread did not start"))
            .ok();
        Self {
            name,
            stats,
            stop: Some(stop),
            thread,
        }
    }

    /// The exporter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ExporterStats> {
        self.stats.clone()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An exporter's thread.
struct Run {
    spec: ExportSpec,
    node_name: String,
    sink: Sink,
    aggregator: Option<Aggregator>,
    component: String,
    /// The write error being reported, while writes fail.
    failing: Option<String>,
    stats: Arc<ExporterStats>,
    health: Arc<Health>,
}

impl Run {
    fn main(
        mut self,
        mut subscription: crate::flow::Subscription,
        mut stopped: watch::Receiver<bool>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                self.health
                    .set(&self.component, ComponentState::Error, e.to_string());
                return;
            }
        };
        runtime.block_on(async {
            let window = self
                .aggregator
                .as_ref()
                .map_or(Duration::from_secs(3600), Aggregator::interval);
            let mut flush = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
            loop {
                tokio::select! {
                    event = subscription.recv() => match event {
                        Event::End => break,
                        event => self.event(event),
                    },
                    _ = flush.tick() => self.flush(),
                    _ = stopped.changed() => break,
                }
                self.stats
                    .queue_lost
                    .store(subscription.lost(), Ordering::Relaxed);
            }
            // What is queued, then the last window.
            while let Some(event) = subscription.try_recv() {
                if matches!(event, Event::End) {
                    break;
                }
                self.event(event);
            }
            self.flush();
        });
        self.stats
            .queue_lost
            .store(subscription.lost(), Ordering::Relaxed);
        self.health
            .set(&self.component, ComponentState::Disabled, "stopped");
    }

    fn ended(&self) -> bool {
        self.spec.end.is_some_and(|end| SystemTime::now() > end)
    }

    fn event(&mut self, event: Event) {
        if self.ended() {
            return;
        }
        match event {
            Event::Flow { flow, .. } => match self.aggregator.as_mut() {
                Some(agg) => agg.add(&flow),
                None => {
                    let resp = flow_response(&flow, self.spec.mask.as_ref());
                    self.write(&resp);
                }
            },
            Event::Lost(lost) => {
                let resp = GetFlowsResponse {
                    node_name: self.node_name.clone(),
                    time: Some(loupe_proto::time::now_timestamp()),
                    response_types: Some(ResponseTypes::LostEvents(lost)),
                };
                self.write(&resp);
            }
            // The caller stops reading at the end.
            Event::End => {}
        }
    }

    /// Writes the window (its flows were all counted before any `end`).
    fn flush(&mut self) {
        let Some(agg) = self.aggregator.as_mut() else {
            return;
        };
        for flow in agg.take() {
            let resp = GetFlowsResponse {
                node_name: flow.node_name.clone(),
                time: flow.time,
                response_types: Some(ResponseTypes::Flow(flow)),
            };
            self.write(&resp);
        }
    }

    fn write(&mut self, resp: &GetFlowsResponse) {
        let result = to_json(resp)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push('\n');
                self.sink
                    .write_line(line.as_bytes())
                    .map(|r| (r, line.len()))
            });
        match result {
            Ok((rotated, len)) => {
                self.stats.lines.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
                if rotated {
                    self.stats.rotations.fetch_add(1, Ordering::Relaxed);
                }
                if self.failing.take().is_some() {
                    tracing::info!(exporter = %self.spec.name, "flow export writes again");
                    self.health
                        .set(&self.component, ComponentState::Ok, self.describe());
                }
            }
            Err(e) => {
                let errors = self.stats.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
                let message = format!("write {}: {e}", self.spec.file_path.display());
                let changed = self.failing.as_deref() != Some(message.as_str());
                if changed {
                    tracing::warn!(exporter = %self.spec.name, error = %message, "flow export failing; lines are dropped");
                    self.failing = Some(message.clone());
                }
                // Reported when the error changes and every thousandth line, so a
                // full disk costs no status update per flow.
                if changed || errors.is_multiple_of(1000) {
                    self.health.set(
                        &self.component,
                        ComponentState::Error,
                        format!("{message} ({errors} lines dropped)"),
                    );
                }
            }
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("writing {}", self.spec.file_path.display());
        if let Some(agg) = &self.spec.aggregation {
            s.push_str(&format!(", aggregated every {:?}", agg.interval));
        }
        s
    }
}

/// The running exporters' counters as `hubble_exporter_*` families.
pub fn families(exporters: &[(String, Arc<ExporterStats>)]) -> Vec<MetricFamily> {
    let counter = |name: &str, help: &str, read: &dyn Fn(&ExporterStats) -> u64| {
        let mut f = MetricFamily::new(name, help, MetricKind::Counter);
        for (exporter, stats) in exporters {
            f = f.value(&[("name", exporter)], read(stats) as f64);
        }
        f
    };
    vec![
        counter(
            "hubble_exporter_lines_total",
            "Lines the flow exporter wrote (flows, lost-event notices, aggregates).",
            &|s| s.lines.load(Ordering::Relaxed),
        ),
        counter(
            "hubble_exporter_bytes_total",
            "Bytes the flow exporter wrote.",
            &|s| s.bytes.load(Ordering::Relaxed),
        ),
        counter(
            "hubble_exporter_queue_lost_total",
            "Flows the exporter lost because it fell behind (its queue was full).",
            &|s| s.queue_lost.load(Ordering::Relaxed),
        ),
        counter(
            "hubble_exporter_write_errors_total",
            "Lines the exporter could not write (each one dropped).",
            &|s| s.write_errors.load(Ordering::Relaxed),
        ),
        counter(
            "hubble_exporter_rotations_total",
            "Times the exporter rotated its file.",
            &|s| s.rotations.load(Ordering::Relaxed),
        ),
    ]
}

/// Every exporter the configuration asks for; dropping it stops them.
#[derive(Debug, Default)]
pub struct Exports {
    static_: Option<Exporter>,
    dynamic: Option<dynamic::DynamicExporters>,
}

impl Exports {
    /// Starts `hubble.export.static` and `hubble.export.dynamic` over `flows`,
    /// each exporter with a queue of `queue` events.
    pub fn start(
        cfg: &config::ExportConfig,
        flows: &FlowStore,
        queue: usize,
        health: Arc<Health>,
    ) -> Result<Self, config::ExportConfigError> {
        let static_ = cfg
            .static_
            .spec("hubble.export.static")?
            .map(|spec| Exporter::start(spec, flows, queue, health.clone()));
        let static_path = cfg.static_.enabled.then(|| cfg.static_.file_path.clone());
        let dynamic = cfg.dynamic.enabled.then(|| {
            dynamic::DynamicExporters::start(
                cfg.dynamic.config.path.clone(),
                static_path,
                flows.clone(),
                queue,
                health,
            )
        });
        Ok(Self { static_, dynamic })
    }

    /// Whether any exporter is configured.
    pub fn is_empty(&self) -> bool {
        self.static_.is_none() && self.dynamic.is_none()
    }

    /// `hubble_exporter_*` for every exporter, and `hubble_dynamic_exporter_*`.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut stats: Vec<(String, Arc<ExporterStats>)> = self
            .static_
            .iter()
            .map(|e| (e.name().to_string(), e.stats()))
            .collect();
        if let Some(d) = &self.dynamic {
            stats.extend(d.stats());
        }
        let mut out = families(&stats);
        if let Some(d) = &self.dynamic {
            out.extend(d.families());
        }
        out
    }
}
