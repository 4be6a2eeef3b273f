//! The engine every plugin runs on, and loading a component into a checked,
//! ready-to-instantiate [`Plugin`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use super::cache::Cache;
use super::contract::{ContractVersion, PARSER_INTERFACE, Pre};
use super::error::InstallError;
use super::info::PluginInfo;
use super::limits::{Limiter, Limits};
use super::metrics::PluginMetrics;

/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// A store's data: only its limiter — plugins get no host state at all.
pub(crate) struct StoreData {
    pub(crate) limiter: Limiter,
}

/// The wasmtime engine plugins run on (component model, epoch interruption,
/// pooling allocator) and the thread that advances its epoch.
pub struct PluginHost {
    engine: Engine,
    limits: Limits,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// An engine configured for `limits`.
    pub fn new(limits: Limits) -> Result<Self, InstallError> {
        let mut pool = PoolingAllocationConfig::default();
        // A plugin component has one core instance with one memory and one table;
        // the slack covers adapter-free components with a few more.
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances.saturating_mul(4))
            .total_memories(limits.instances.saturating_mul(2))
            .total_tables(limits.instances.saturating_mul(4))
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // For `perf`: name the plugins' compiled functions in /tmp/perf-PID.map
        // (BENCHMARKS.md, "Parsers": where the component's time goes).
        if std::env::var_os("LOUPE_PLUGIN_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| InstallError::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), limits.tick(), stop.clone())?;
        Ok(Self {
            engine,
            limits,
            stop,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A hex key identifying this engine's code format: a precompiled plugin only
    /// loads into an engine with the same key.
    pub fn compatibility_key(&self) -> String {
        super::cache::compatibility_key(&self.engine)
    }

    /// Checks and loads a plugin: WebAssembly, a component, no imports, a
    /// supported contract version, a sane `describe()`. Compiled code is taken
    /// from / put into `cache` when given.
    pub fn load(&self, bytes: &[u8], cache: Option<&Cache>) -> Result<Plugin, InstallError> {
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(InstallError::TooLarge {
                size: bytes.len(),
                max: MAX_PLUGIN_BYTES,
            });
        }
        check_header(bytes)?;
        let sha256 = hex(&Sha256::digest(bytes));
        let component = match cache {
            Some(cache) => cache.component(&self.engine, &sha256, bytes)?,
            None => Component::new(&self.engine, bytes)
                .map_err(|e| InstallError::Corrupt(format!("{e:#}")))?,
        };
        let ty = component.component_type();
        let mut imports = ty.imports(&self.engine).map(|(name, _)| name.to_string());
        if let Some(import) = imports.next() {
            let rest = imports.count();
            return Err(InstallError::ForbiddenImport {
                import,
                more: if rest > 0 {
                    format!(", and {rest} more")
                } else {
                    String::new()
                },
            });
        }
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let contract = exports
            .iter()
            .filter_map(|name| name.strip_prefix(PARSER_INTERFACE)?.strip_prefix('@'))
            .find_map(ContractVersion::from_version)
            .ok_or_else(|| InstallError::UnsupportedContract {
                found: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
                supported: ContractVersion::SUPPORTED.join(","),
            })?;
        // The empty linker is the sandbox: nothing to import, so nothing reachable.
        let linker = Linker::<StoreData>::new(&self.engine);
        let pre = linker
            .instantiate_pre(&component)
            .and_then(|pre| Pre::new(contract, pre))
            .map_err(|e| InstallError::Load(format!("{e:#}")))?;
        let metrics = Arc::new(PluginMetrics::default());
        let mut store = self.store();
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| InstallError::Load(format!("{e:#}")))?;
        metrics.instance_created();
        store.set_epoch_deadline(Limits::TICKS_PER_DEADLINE);
        let info = instance
            .describe(&mut store)
            .map_err(|e| InstallError::Describe(format!("{e:#}")))?;
        let info = PluginInfo::from_wit(info)?;
        Ok(Plugin {
            info,
            sha256,
            contract,
            pre,
            metrics,
            engine: self.engine.clone(),
            limits: self.limits,
        })
    }

    pub(crate) fn store(&self) -> Store<StoreData> {
        new_store(&self.engine, &self.limits)
    }
}

pub(crate) fn new_store(engine: &Engine, limits: &Limits) -> Store<StoreData> {
    let mut store = Store::new(
        engine,
        StoreData {
            limiter: Limiter::new(limits),
        },
    );
    store.limiter(|data| &mut data.limiter);
    store.epoch_deadline_trap();
    // Instantiation runs guest code too (initialisers): it gets a deadline.
    store.set_epoch_deadline(Limits::TICKS_PER_DEADLINE);
    store
}

/// A loaded plugin version: checked, described, ready to instantiate cheaply.
pub struct Plugin {
    /// What it says it is.
    pub info: PluginInfo,
    /// Hex SHA-256 of the component file.
    pub sha256: String,
    /// The contract version it speaks.
    pub contract: ContractVersion,
    pub(crate) pre: Pre<StoreData>,
    /// Its counters (all instances of this version).
    pub metrics: Arc<PluginMetrics>,
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .field("sha256", &self.sha256)
            .field("contract", &self.contract)
            .finish_non_exhaustive()
    }
}

/// The component-model preamble: magic, then version 0x0d and layer 1.
fn check_header(bytes: &[u8]) -> Result<(), InstallError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(InstallError::Corrupt(
            "not a WebAssembly file (no \\0asm header)".into(),
        ));
    }
    match &bytes[4..8] {
        [1, 0, 0, 0] => Err(InstallError::NotAComponent),
        [0x0d, 0, 1, 0] => Ok(()),
        other => Err(InstallError::Corrupt(format!(
            "unknown WebAssembly version/layer {other:02x?}"
        ))),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Advances the engine's epoch every `tick` until `stop`. Holding a clone of the
/// engine is fine: it is reference-counted and the thread exits with the host.
fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> Result<(), InstallError> {
    std::thread::Builder::new()
        .name("loupe-plugin-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(drop)
        .map_err(|e| InstallError::Engine(format!("epoch thread: {e}")))
}
