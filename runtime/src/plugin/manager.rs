//! The agent's installed plugins: install (check, store, activate), list,
//! inspect, remove — all without restarting the agent.
//!
//! Activation swaps an `Arc<Plugin>`: whoever opens a connection asks
//! [`PluginManager::active`] and keeps the version it got in a [`super::Worker`]
//! for that version, so new connections use a new version at once while
//! existing ones finish on the one they started with; a version is freed when its
//! last worker goes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::cache::Cache;
use super::directory::{Manifest, PluginDir, check_name};
use super::error::InstallError;
use super::host::{Plugin, PluginHost};
use super::limits::Limits;
use super::metrics::MetricsSnapshot;
use crate::metrics::{MetricFamily, MetricKind};

/// An installed plugin's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    /// Loaded; new connections use it.
    Active,
    /// On disk but does not load (reason).
    Failed(String),
}

impl PluginState {
    /// For `plugin list`.
    pub fn describe(&self) -> String {
        match self {
            Self::Active => "active".into(),
            Self::Failed(why) => format!("failed: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Installed {
    manifest: Manifest,
    plugin: Option<Arc<Plugin>>,
    state: PluginState,
}

/// One line of `plugin list`.
#[derive(Debug, Clone)]
pub struct PluginSummary {
    /// Installed name.
    pub name: String,
    /// Plugin version (empty if it does not load).
    pub version: String,
    /// Protocol.
    pub protocol: String,
    /// Attached ports.
    pub ports: Vec<u16>,
    /// Hex SHA-256.
    pub sha256: String,
    /// State.
    pub state: PluginState,
    /// Contract version (`0.1`).
    pub contract: String,
    /// Counters of the active version.
    pub metrics: MetricsSnapshot,
    /// The loaded plugin, for `inspect`.
    pub plugin: Option<Arc<Plugin>>,
}

/// Installed plugins and the engine they run on.
#[derive(Debug)]
pub struct PluginManager {
    host: PluginHost,
    dir: PluginDir,
    cache: Cache,
    installed: RwLock<BTreeMap<String, Installed>>,
    /// Held by installs and removals, so concurrent ones under one name never
    /// mix one's component with the other's manifest.
    changes: std::sync::Mutex<()>,
    /// Counts installs and removals, for those who follow them.
    generation: tokio::sync::watch::Sender<u64>,
}

/// Which policies in force need a parser for each protocol (protocol →
/// `namespace/name`s), for refusing changes that would take theirs away.
pub type ProtocolUse = BTreeMap<String, Vec<String>>;

impl PluginManager {
    /// Opens the plugin directory and loads every plugin in it; one that fails to
    /// load is listed as failed, never fatal.
    pub fn open(path: &std::path::Path, limits: Limits) -> Result<Self, InstallError> {
        let host = PluginHost::new(limits)?;
        let dir = PluginDir::open(path)?;
        let cache = dir.cache()?;
        let mut installed = BTreeMap::new();
        for manifest in dir.manifests()? {
            let loaded = dir.read_wasm(&manifest.name).and_then(|wasm| {
                let plugin = host.load(&wasm, Some(&cache))?;
                if plugin.sha256 != manifest.sha256 {
                    return Err(InstallError::Corrupt(format!(
                        "sha256 {} does not match the recorded {}",
                        plugin.sha256, manifest.sha256
                    )));
                }
                Ok(plugin)
            });
            let entry = match loaded {
                Ok(plugin) => Installed {
                    manifest,
                    plugin: Some(Arc::new(plugin)),
                    state: PluginState::Active,
                },
                Err(err) => {
                    tracing::warn!(plugin = %manifest.name, error = %err, "installed plugin does not load");
                    Installed {
                        manifest,
                        plugin: None,
                        state: PluginState::Failed(err.to_string()),
                    }
                }
            };
            installed.insert(entry.manifest.name.clone(), entry);
        }
        Ok(Self {
            host,
            dir,
            cache,
            installed: RwLock::new(installed),
            changes: std::sync::Mutex::new(()),
            generation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes on every install and removal (the count of them so far).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// The engine.
    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// Checks, stores and activates a plugin. `name` defaults to the plugin's own,
    /// `ports` to its default ports. Replaces an installed plugin of that name.
    pub fn install(
        &self,
        wasm: &[u8],
        name: Option<&str>,
        ports: Option<Vec<u16>>,
    ) -> Result<PluginSummary, InstallError> {
        self.install_guarded(wasm, name, ports, &ProtocolUse::new(), true)
    }

    /// [`Self::install`], refused (unless `force`) when it replaces a plugin of
    /// another protocol that policies in `in_use` still need.
    pub fn install_guarded(
        &self,
        wasm: &[u8],
        name: Option<&str>,
        ports: Option<Vec<u16>>,
        in_use: &ProtocolUse,
        force: bool,
    ) -> Result<PluginSummary, InstallError> {
        if let Some(name) = name {
            check_name(name)?;
        }
        let plugin = self.host.load(wasm, Some(&self.cache))?;
        let name = name.unwrap_or(&plugin.info.name).to_string();
        let _change = self
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force {
            let change = format!("replacing it with a {:?} parser", plugin.info.protocol);
            self.check_in_use(&name, Some(&plugin.info.protocol), in_use, change)?;
        }
        let ports = ports.unwrap_or_else(|| plugin.info.default_ports.clone());
        if ports.contains(&0) {
            return Err(InstallError::Describe("port 0".into()));
        }
        let manifest = Manifest {
            name: name.clone(),
            sha256: plugin.sha256.clone(),
            ports,
        };
        self.dir.write(&manifest, wasm)?;
        let entry = Installed {
            manifest,
            plugin: Some(Arc::new(plugin)),
            state: PluginState::Active,
        };
        tracing::info!(plugin = %name, sha256 = %entry.manifest.sha256, "plugin installed and active");
        let summary = summary(&entry);
        self.write_lock().insert(name, entry);
        self.changed();
        Ok(summary)
    }

    /// Removes a plugin; connections still using it finish on it.
    pub fn remove(&self, name: &str) -> Result<(), InstallError> {
        self.remove_guarded(name, &ProtocolUse::new(), true)
    }

    /// [`Self::remove`], refused (unless `force`) while policies in `in_use` need
    /// the plugin and no other installed one parses their protocol.
    pub fn remove_guarded(
        &self,
        name: &str,
        in_use: &ProtocolUse,
        force: bool,
    ) -> Result<(), InstallError> {
        check_name(name)?;
        let _change = self
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force {
            self.check_in_use(name, None, in_use, "removing it".into())?;
        }
        if self.write_lock().remove(name).is_none() {
            return Err(InstallError::NotInstalled(name.into()));
        }
        self.changed();
        self.dir.remove(name)
    }

    /// Whether replacing plugin `name` by one parsing `next` (`None`: removing it)
    /// takes away the parser of policies in `in_use`.
    fn check_in_use(
        &self,
        name: &str,
        next: Option<&str>,
        in_use: &ProtocolUse,
        change: String,
    ) -> Result<(), InstallError> {
        let installed = self.read_lock();
        let Some(protocol) = installed
            .get(name)
            .and_then(|e| e.plugin.as_ref())
            .map(|p| p.info.protocol.clone())
        else {
            return Ok(());
        };
        if next == Some(protocol.as_str()) {
            return Ok(());
        }
        // Another plugin of the same protocol keeps serving it.
        let others = installed
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .filter_map(|(_, e)| e.plugin.as_ref())
            .any(|p| p.info.protocol == protocol);
        // With another plugin of that protocol installed, only policies naming
        // this one by an installed name other than the protocol lose their parser.
        let names: &[&str] = match (others, name == protocol) {
            (true, true) => &[],
            (true, false) => &[name],
            (false, _) => &[protocol.as_str(), name],
        };
        let mut users: Vec<&str> = names
            .iter()
            .filter_map(|n| in_use.get(*n))
            .flatten()
            .map(String::as_str)
            .collect();
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            return Ok(());
        }
        Err(InstallError::InUse {
            plugin: name.to_string(),
            protocol,
            policies: users.join(", "),
            change,
        })
    }

    /// The version new connections of `name` use.
    pub fn active(&self, name: &str) -> Option<Arc<Plugin>> {
        self.read_lock().get(name).and_then(|e| e.plugin.clone())
    }

    /// The active plugin for `protocol` (a plugin's protocol or its installed name).
    pub fn for_protocol(&self, protocol: &str) -> Option<Arc<Plugin>> {
        let installed = self.read_lock();
        if let Some(p) = installed.get(protocol).and_then(|e| e.plugin.clone()) {
            return Some(p);
        }
        installed
            .values()
            .filter_map(|e| e.plugin.clone())
            .find(|p| p.info.protocol == protocol)
    }

    /// The ports the active plugins of `protocol` (by protocol, or installed
    /// under that name) are attached to (`install --ports`, else their
    /// defaults); `None` when no active plugin serves it.
    pub fn ports_for_protocol(&self, protocol: &str) -> Option<Vec<u16>> {
        let installed = self.read_lock();
        let mut ports = std::collections::BTreeSet::new();
        let mut served = false;
        for (name, e) in installed.iter() {
            let Some(plugin) = &e.plugin else { continue };
            if name == protocol || plugin.info.protocol == protocol {
                served = true;
                ports.extend(e.manifest.ports.iter().copied());
            }
        }
        served.then(|| ports.into_iter().collect())
    }

    /// Every active plugin (for sniffing a stream no port or rule names).
    pub fn active_plugins(&self) -> Vec<Arc<Plugin>> {
        self.read_lock()
            .values()
            .filter_map(|e| e.plugin.clone())
            .collect()
    }

    /// The active plugin attached to `port`, if any.
    pub fn for_port(&self, port: u16) -> Option<Arc<Plugin>> {
        self.read_lock()
            .values()
            .find(|e| e.manifest.ports.contains(&port))
            .and_then(|e| e.plugin.clone())
    }

    /// Every installed plugin.
    pub fn list(&self) -> Vec<PluginSummary> {
        self.read_lock().values().map(summary).collect()
    }

    /// One installed plugin.
    pub fn get(&self, name: &str) -> Option<PluginSummary> {
        self.read_lock().get(name).map(summary)
    }

    /// The plugins as Prometheus families: `loupe_plugins{state}` and, per
    /// active plugin, its counters (`loupe_plugin_*{plugin}`).
    pub fn families(&self) -> Vec<MetricFamily> {
        let installed = self.read_lock();
        let failed = installed
            .values()
            .filter(|e| matches!(e.state, PluginState::Failed(_)))
            .count();
        let mut families = vec![
            MetricFamily::new(
                "loupe_plugins",
                "Installed L7 parser plugins, by state.",
                MetricKind::Gauge,
            )
            .value(&[("state", "active")], (installed.len() - failed) as f64)
            .value(&[("state", "failed")], failed as f64),
        ];
        type Read = fn(&MetricsSnapshot) -> f64;
        let counters: [(&str, &str, MetricKind, Read); 9] = [
            (
                "loupe_plugin_calls_total",
                "Calls into the plugin.",
                MetricKind::Counter,
                |m| m.calls as f64,
            ),
            (
                "loupe_plugin_bytes_total",
                "Bytes fed to the plugin.",
                MetricKind::Counter,
                |m| m.bytes as f64,
            ),
            (
                "loupe_plugin_messages_total",
                "Messages the plugin framed.",
                MetricKind::Counter,
                |m| m.messages as f64,
            ),
            (
                "loupe_plugin_call_seconds_total",
                "Time spent inside the plugin.",
                MetricKind::Counter,
                |m| m.parse_nanos as f64 / 1e9,
            ),
            (
                "loupe_plugin_parse_errors_total",
                "Connections the plugin found not to speak its protocol.",
                MetricKind::Counter,
                |m| m.parse_errors as f64,
            ),
            (
                "loupe_plugin_traps_total",
                "Calls that trapped, deadline and memory kills included.",
                MetricKind::Counter,
                |m| m.traps as f64,
            ),
            (
                "loupe_plugin_violations_total",
                "Plugin results the host refused.",
                MetricKind::Counter,
                |m| m.violations as f64,
            ),
            (
                "loupe_plugin_instances_created_total",
                "Plugin instances created.",
                MetricKind::Counter,
                |m| m.instances_created as f64,
            ),
            (
                "loupe_plugin_memory_bytes",
                "Linear memory of the plugin's latest grown instance.",
                MetricKind::Gauge,
                |m| m.memory_bytes as f64,
            ),
        ];
        let active: Vec<(&str, MetricsSnapshot)> = installed
            .iter()
            .filter_map(|(name, e)| Some((name.as_str(), e.plugin.as_ref()?.metrics.snapshot())))
            .collect();
        for (name, help, kind, read) in counters {
            let mut family = MetricFamily::new(name, help, kind);
            for (plugin, snapshot) in &active {
                family = family.value(&[("plugin", plugin)], read(snapshot));
            }
            families.push(family);
        }
        let mut kills = MetricFamily::new(
            "loupe_plugin_kills_total",
            "Calls the host stopped, by reason.",
            MetricKind::Counter,
        );
        for (plugin, m) in &active {
            kills = kills
                .value(
                    &[("plugin", plugin), ("reason", "deadline")],
                    m.deadline_kills as f64,
                )
                .value(
                    &[("plugin", plugin), ("reason", "memory")],
                    m.memory_kills as f64,
                );
        }
        families.push(kills);
        families
    }

    // A poisoned lock only means a panic elsewhere while holding it; the map is
    // always consistent between statements, so keep serving.
    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Installed>> {
        self.installed.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Installed>> {
        self.installed.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn summary(e: &Installed) -> PluginSummary {
    PluginSummary {
        name: e.manifest.name.clone(),
        version: e
            .plugin
            .as_ref()
            .map(|p| p.info.version.clone())
            .unwrap_or_default(),
        protocol: e
            .plugin
            .as_ref()
            .map(|p| p.info.protocol.clone())
            .unwrap_or_default(),
        ports: e.manifest.ports.clone(),
        sha256: e.manifest.sha256.clone(),
        state: e.state.clone(),
        contract: e
            .plugin
            .as_ref()
            .map(|p| p.contract.as_str().to_string())
            .unwrap_or_default(),
        metrics: e
            .plugin
            .as_ref()
            .map(|p| p.metrics.snapshot())
            .unwrap_or_default(),
        plugin: e.plugin.clone(),
    }
}
