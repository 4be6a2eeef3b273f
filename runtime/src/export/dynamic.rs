//! Dynamic exporters: the `flowLogs:` file is re-read every second and, once a new
//! content has read the same twice in a row (so a file caught half-written is not
//! applied), applied entry by entry — new names start, removed ones stop (after
//! writing what they hold), changed ones are replaced. A file that does not parse
//! changes nothing: the running exporters go on and the error is reported
//! (`hubble/exporter-config` in `loupe status`, and
//! `hubble_dynamic_exporter_reconfigurations_total{op="failure"}`).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::config::{FlowLog, FlowLogs};
use super::{Exporter, ExporterStats};
use crate::flow::FlowStore;
use crate::health::{ComponentState, Health};
use crate::metrics::{MetricFamily, MetricKind};

/// How often the file is read.
pub const POLL: Duration = Duration::from_secs(1);

const COMPONENT: &str = "hubble/exporter-config";

/// One running dynamic exporter.
#[derive(Debug)]
struct Running {
    entry: FlowLog,
    end: Option<SystemTime>,
    exporter: Exporter,
}

/// What the metrics read.
#[derive(Debug, Default)]
struct State {
    running: BTreeMap<String, Running>,
    /// `add`, `update`, `remove`, `failure` → count.
    reconfigurations: BTreeMap<&'static str, u64>,
    hash: u64,
    last_applied: Option<SystemTime>,
}

/// The dynamic exporters and the thread that watches their file; dropping it
/// stops them all.
#[derive(Debug)]
pub struct DynamicExporters {
    state: Arc<Mutex<State>>,
    /// Dropping it wakes and ends the watcher.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DynamicExporters {
    /// Applies `path` now and watches it; `static_path` is the static exporter's
    /// file, which no dynamic one may use.
    pub fn start(
        path: PathBuf,
        static_path: Option<PathBuf>,
        flows: FlowStore,
        queue: usize,
        health: Arc<Health>,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = mpsc::channel::<()>();
        let mut watcher = Watcher {
            path,
            static_path,
            flows,
            queue,
            health,
            state: state.clone(),
            seen: None,
            candidate: None,
        };
        watcher.poll(true);
        let thread = std::thread::Builder::new()
            .name("export-config".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
                    watcher.poll(false);
                }
            })
            .map_err(|e| tracing::error!(error = %e, "flow exporter config watcher did not start"))
            .ok();
        Self {
            state,
            stop: Some(stop),
            thread,
        }
    }

    /// Names and counters of the running exporters.
    pub fn stats(&self) -> Vec<(String, Arc<ExporterStats>)> {
        lock(&self.state)
            .running
            .values()
            .map(|r| (r.exporter.name().to_string(), r.exporter.stats()))
            .collect()
    }

    /// Cilium's `hubble_dynamic_exporter_*` families.
    pub fn families(&self) -> Vec<MetricFamily> {
        let state = lock(&self.state);
        let now = SystemTime::now();
        let active = |r: &Running| r.end.is_none_or(|end| now <= end);
        let count = |want: bool| state.running.values().filter(|r| active(r) == want).count();
        let mut up = MetricFamily::new(
            "hubble_dynamic_exporter_up",
            "1 for a dynamic exporter that writes, 0 for one past its end.",
            MetricKind::Gauge,
        );
        for (name, r) in &state.running {
            up = up.value(&[("name", name)], if active(r) { 1.0 } else { 0.0 });
        }
        let mut reconf = MetricFamily::new(
            "hubble_dynamic_exporter_reconfigurations_total",
            "Changes applied from the dynamic exporters' file, and files refused.",
            MetricKind::Counter,
        );
        for op in ["add", "update", "remove", "failure"] {
            let n = state.reconfigurations.get(op).copied().unwrap_or(0);
            reconf = reconf.value(&[("op", op)], n as f64);
        }
        let last = state
            .last_applied
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        vec![
            MetricFamily::new(
                "hubble_dynamic_exporter_exporters_total",
                "Dynamic exporters by status.",
                MetricKind::Gauge,
            )
            .value(&[("status", "active")], count(true) as f64)
            .value(&[("status", "inactive")], count(false) as f64),
            up,
            reconf,
            MetricFamily::new(
                "hubble_dynamic_exporter_config_hash",
                "Hash of the dynamic exporters' file last applied.",
                MetricKind::Gauge,
            )
            .value(&[], state.hash as f64),
            MetricFamily::new(
                "hubble_dynamic_exporter_config_last_applied",
                "When the dynamic exporters' file was last applied (Unix seconds).",
                MetricKind::Gauge,
            )
            .value(&[], last),
        ]
    }
}

impl Drop for DynamicExporters {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The exporters flush and stop as they drop, outside the lock.
        let running = std::mem::take(&mut lock(&self.state).running);
        drop(running);
    }
}

/// Reads the file and applies changes.
struct Watcher {
    path: PathBuf,
    static_path: Option<PathBuf>,
    flows: FlowStore,
    queue: usize,
    health: Arc<Health>,
    state: Arc<Mutex<State>>,
    /// The content last acted on (applied or refused).
    seen: Option<String>,
    /// A new content read once, applied if the next read agrees.
    candidate: Option<String>,
}

impl Watcher {
    /// Reads the file; `now` applies a new content at once (at start).
    fn poll(&mut self, now: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let message = format!("{}: {e}", self.path.display());
                if self.seen.as_deref() != Some(message.as_str()) {
                    self.refuse(&message);
                    self.seen = Some(message);
                }
                return;
            }
        };
        if self.seen.as_deref() == Some(text.as_str()) {
            self.candidate = None;
            return;
        }
        if !now && self.candidate.as_deref() != Some(text.as_str()) {
            // Read it once more before acting: a writer may be halfway through.
            self.candidate = Some(text);
            return;
        }
        self.candidate = None;
        self.seen = Some(text.clone());
        let source = self.path.display().to_string();
        let entries = match FlowLogs::parse(&source, &text, self.static_path.as_deref()) {
            Ok(e) => e,
            Err(e) => {
                self.refuse(&e.to_string());
                return;
            }
        };
        let wanted: BTreeMap<String, _> = entries
            .into_iter()
            .map(|(entry, spec)| (entry.name.clone(), (entry, spec)))
            .collect();
        // Take out what goes away or changes, then let it finish without the lock
        // (`/metrics` reads the state meanwhile).
        let mut stopping = Vec::new();
        let mut ops: Vec<&'static str> = Vec::new();
        let mut to_start = Vec::new();
        {
            let mut state = lock(&self.state);
            let gone: Vec<String> = state
                .running
                .keys()
                .filter(|n| !wanted.contains_key(*n))
                .cloned()
                .collect();
            for name in gone {
                stopping.extend(state.running.remove(&name));
                self.health.remove(&format!("hubble/exporter/{name}"));
                ops.push("remove");
            }
            for (name, (entry, spec)) in wanted {
                let op = match state.running.get(&name) {
                    Some(r) if r.entry == entry => continue,
                    Some(_) => "update",
                    None => "add",
                };
                stopping.extend(state.running.remove(&name));
                ops.push(op);
                to_start.push((name, entry, spec));
            }
        }
        // The old ones write what they hold and stop before new ones open the files.
        drop(stopping);
        let started: Vec<(String, Running)> = to_start
            .into_iter()
            .map(|(name, entry, spec)| {
                let end = spec.end;
                let exporter = Exporter::start(spec, &self.flows, self.queue, self.health.clone());
                (
                    name,
                    Running {
                        entry,
                        end,
                        exporter,
                    },
                )
            })
            .collect();
        let mut state = lock(&self.state);
        state.running.extend(started);
        for op in ops {
            *state.reconfigurations.entry(op).or_default() += 1;
        }
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        state.hash = h.finish() >> 11; // exact as a float sample
        state.last_applied = Some(SystemTime::now());
        let n = state.running.len();
        drop(state);
        tracing::info!(path = %self.path.display(), exporters = n, "flow exporters applied");
        self.health.set(
            COMPONENT,
            ComponentState::Ok,
            format!("{} exporters from {}", n, self.path.display()),
        );
    }

    fn refuse(&self, message: &str) {
        tracing::warn!(error = %message, "flow exporters' file refused; the running exporters go on");
        *lock(&self.state)
            .reconfigurations
            .entry("failure")
            .or_default() += 1;
        self.health.set(
            COMPONENT,
            ComponentState::Error,
            format!("{message} (running exporters unchanged)"),
        );
    }
}
