//! The agent's configuration: one YAML file whose keys mirror the Cilium / Hubble
//! Helm values users already know (`policyEnforcementMode`, `bpf.ctGlobalTcpMax`,
//! `hubble.metrics.enabled`, …). Unknown keys and bad values are refused with their
//! path before anything starts; every default lives here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::export::config::ExportConfig;
use crate::metrics::options::MetricSpec;
use crate::{plugin, reassembly};

/// Configuration of `loupe agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentConfig {
    /// Name this node reports in flows and `GetNodes` (default: the hostname).
    pub node_name: Option<String>,
    /// Unix socket of the agent's gRPC API (mode 0600).
    pub socket_path: PathBuf,
    /// Directory for state that must survive restarts (identities, plugins).
    pub state_dir: PathBuf,
    /// `default`, `always` or `never`, with Cilium's meaning.
    pub policy_enforcement_mode: PolicyEnforcementMode,
    /// Datapath settings.
    pub bpf: BpfConfig,
    /// Endpoint sources.
    pub endpoints: EndpointsConfig,
    /// The flow store, the Observer API and flow metrics (`hubble.*`).
    pub hubble: HubbleConfig,
    /// The agent's own metrics listener (`prometheus.*`, Cilium's port 9962).
    pub prometheus: PrometheusConfig,
    /// Per-protocol L7 parsing switches (Cilium's `httpProtocol` and friends).
    pub l7: L7Config,
    /// L7 parser plugins.
    pub plugins: PluginsConfig,
    /// Port of the health endpoint on 127.0.0.1 (`/livez`, `/readyz`,
    /// `/healthz`; Cilium's agent uses 9879); 0: not served.
    pub health_port: u16,
    /// The node's devices (Cilium's `devices`): where traffic from other nodes
    /// and the world arrives; connections to local pods with L7 rules are
    /// steered to the proxy there.
    pub devices: Vec<String>,
}

/// `hubble.*`: flows, the Observer API and flow-derived metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HubbleConfig {
    /// Keep flows and serve `observer.Observer` (on the agent socket).
    pub enabled: bool,
    /// Flows kept in the ring (Hubble's default 4095).
    pub event_buffer_capacity: u32,
    /// Events queued per `GetFlows --follow` client before it starts losing
    /// flows (and is told so with a LostEvent).
    pub event_queue_size: u32,
    /// Also serve the Observer and Peer APIs on TCP (`":4244"`, `"0.0.0.0:4244"`);
    /// empty: unix socket only.
    pub listen_address: String,
    /// TLS for `listenAddress`.
    pub tls: HubbleTlsConfig,
    /// Flow-derived metrics.
    pub metrics: HubbleMetricsConfig,
    /// Flow export to files (`static`, `dynamic`).
    pub export: ExportConfig,
}

/// `hubble.tls.*` (off by default).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HubbleTlsConfig {
    /// Serve TLS on `hubble.listenAddress` (refused without certFile / keyFile).
    pub enabled: bool,
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundles; when set, clients must present a certificate they sign (mTLS).
    pub client_ca_files: Vec<PathBuf>,
}

/// `hubble.metrics.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HubbleMetricsConfig {
    /// Metric handlers with Hubble's option syntax (`"drop"`,
    /// `"httpV2:exemplars=true;labelsContext=source_pod,destination_pod"`).
    /// Empty: no flow metrics and no listener.
    pub enabled: Vec<String>,
    /// Port of the flow-metrics listener (`/metrics`).
    pub port: u16,
    /// Address the listener binds.
    pub address: String,
}

/// `prometheus.*`: the agent's metrics (`cilium_*`, `loupe_*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PrometheusConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Port (Cilium's agent uses 9962).
    pub port: u16,
    /// Address the listener binds.
    pub address: String,
}

/// `l7.*`: the L7 visibility path. Policy turns visibility on per port (a port
/// with L7 rules; `http: [{}]` observes and allows all); a protocol switch turns it
/// on for every connection to the protocol's plugin's default ports, at the
/// server's endpoint (Cilium's `httpProtocol` and friends; the article's advice is
/// to keep them off and let policy ask).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct L7Config {
    /// HTTP/1.x everywhere (the `http` plugin's ports).
    pub http_protocol: bool,
    /// gRPC (over HTTP/2): no plugin yet; refused when on.
    pub grpc_protocol: bool,
    /// Kafka everywhere (the `kafka` plugin's ports).
    pub kafka_protocol: bool,
    /// Redis everywhere (the `redis` plugin's ports).
    pub redis_protocol: bool,
    /// DNS: no plugin yet; refused when on.
    pub dns_protocol: bool,
    /// Any installed plugin's protocol everywhere (its ports), as the switches
    /// above do for the shipped ones: `[mqtt, memcached]`.
    pub protocols: Vec<String>,
    /// Port of the transparent L7 proxy the datapath steers L7-enforced
    /// connections to (0: no redirect; such ports are then only observed).
    pub proxy_port: u16,
    /// Run the proxy in the agent (false: something else listens on `proxyPort`).
    pub proxy_enabled: bool,
    /// Connections the proxy carries at once; more are refused (reset).
    pub proxy_max_connections: u32,
    /// Protocols (plugin names) whose enforced connections stay open, unparsed,
    /// when their plugin fails (traps, deadline, parse error). Default: fail closed.
    pub fail_open: Vec<String>,
    /// Pages (4 KiB) of the per-CPU buffer the datapath copies packets into, a
    /// power of two. Past it copies are lost (and counted).
    pub buffer_pages: u32,
    /// Packets queued between the buffer readers and the parsing thread.
    pub queue_size: u32,
    /// Connections followed at once (the least recently active is dropped).
    pub max_connections: u32,
    /// Out-of-order bytes held per connection and direction, in KiB.
    pub max_pending_kib: u32,
    /// Out-of-order bytes held across all connections, in MiB.
    pub max_pending_total_mib: u32,
    /// A connection without packets for this long is forgotten, in seconds.
    pub idle_timeout_seconds: u64,
}

/// Cilium's policy enforcement modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyEnforcementMode {
    /// An endpoint is default-deny in a direction once a policy selects it there.
    #[default]
    Default,
    /// Every endpoint is default-deny, with or without policies.
    Always,
    /// No enforcement at all.
    Never,
}

/// `bpf.*`: datapath map sizes and attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BpfConfig {
    /// Conntrack entries for TCP (Cilium's `bpf.ctGlobalTcpMax`).
    pub ct_global_tcp_max: u32,
    /// Conntrack entries for everything else (`bpf.ctGlobalAnyMax`).
    pub ct_global_any_max: u32,
    /// Policy map entries (`bpf.policyMapEntries`).
    pub policy_map_entries: u32,
    /// Where programs and maps are pinned.
    pub pin_path: PathBuf,
    /// Attach the datapath (false: observe endpoints only, e.g. without BPF rights).
    pub enabled: bool,
    /// Which trace events the datapath reports (Cilium's `bpf.monitorAggregation`):
    /// `none`, `lowest` / `low`, `medium` (default) / `maximum`, or 0..=4.
    pub monitor_aggregation: String,
    /// TCP flags whose packets are always reported at `medium` and above
    /// (Cilium's `bpf.monitorFlags`): `all`, or some of `syn fin rst`.
    pub monitor_flags: String,
}

impl BpfConfig {
    /// `monitorAggregation` and `monitorFlags` packed as the datapath reads them
    /// (`loupe_common::monitor`), or what is wrong with them.
    pub fn monitor(&self) -> Result<u8, (&'static str, String)> {
        use loupe_common::monitor as m;
        let level = match self
            .monitor_aggregation
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "none" | "disabled" | "0" => m::NONE,
            "lowest" | "low" | "1" | "2" => m::LOW,
            "medium" | "max" | "maximum" | "3" | "4" => m::MEDIUM,
            other => {
                return Err((
                    "bpf.monitorAggregation",
                    format!("{other:?} is not none, lowest, low, medium, maximum or 0..=4"),
                ));
            }
        };
        let mut flags = 0;
        for word in self
            .monitor_flags
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
        {
            flags |= match word.to_ascii_lowercase().as_str() {
                "all" => m::FLAGS_ALL,
                "syn" => m::FLAG_SYN,
                "fin" => m::FLAG_FIN,
                "rst" => m::FLAG_RST,
                other => {
                    return Err((
                        "bpf.monitorFlags",
                        format!("{other:?} is not all, syn, fin or rst"),
                    ));
                }
            };
        }
        Ok(level | flags)
    }
}

/// `endpoints.*`: where endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct EndpointsConfig {
    /// Register the pods of labs built by `loupe lab up`.
    pub lab: bool,
    /// Only these labs (by name); empty: every lab on the machine.
    pub lab_names: Vec<String>,
    /// How often the lab's state is re-read, in milliseconds.
    pub lab_poll_ms: u64,
    /// Register this node's pods from the Kubernetes API (`spec.nodeName` = the
    /// node name: `nodeName`, else `$K8S_NODE_NAME`, else the hostname).
    pub kubernetes: bool,
    /// kubeconfig file for the API server; empty: in-cluster service account,
    /// else `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

/// `plugins.*`: the sandboxed WebAssembly L7 parsers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PluginsConfig {
    /// Where installed plugins live (default: `<stateDir>/plugins`).
    pub dir: Option<PathBuf>,
    /// Install the plugins Loupe ships (http, redis, kafka, memcached) when they
    /// are not installed yet.
    pub bundled: bool,
    /// Wall-clock budget of one call into a plugin, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory one plugin instance may use, in MiB.
    pub memory_limit_mib: u32,
    /// Plugin instances the engine reserves room for (workers × versions in use).
    pub instances: u32,
    /// Bytes one direction of a connection may buffer waiting for the end of a
    /// message, in KiB; past it the connection's L7 view stops.
    pub max_message_kib: u32,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            bundled: true,
            deadline_ms: 100,
            memory_limit_mib: 32,
            instances: 64,
            max_message_kib: 1024,
        }
    }
}

impl PluginsConfig {
    /// The plugin directory.
    pub fn dir(&self, state_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state_dir.join("plugins"))
    }

    /// The host's limits.
    pub fn limits(&self) -> plugin::Limits {
        plugin::Limits {
            deadline: std::time::Duration::from_millis(self.deadline_ms),
            memory_bytes: (self.memory_limit_mib as usize) << 20,
            instances: self.instances,
            max_pending_bytes: (self.max_message_kib as usize) << 10,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            socket_path: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from("/var/lib/loupe"),
            policy_enforcement_mode: PolicyEnforcementMode::Default,
            bpf: BpfConfig::default(),
            endpoints: EndpointsConfig::default(),
            hubble: HubbleConfig::default(),
            prometheus: PrometheusConfig::default(),
            l7: L7Config::default(),
            plugins: PluginsConfig::default(),
            health_port: 0,
            devices: Vec::new(),
        }
    }
}

impl Default for HubbleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            event_buffer_capacity: 4095,
            event_queue_size: 4096,
            listen_address: String::new(),
            tls: HubbleTlsConfig::default(),
            metrics: HubbleMetricsConfig::default(),
            export: ExportConfig::default(),
        }
    }
}

impl Default for HubbleMetricsConfig {
    fn default() -> Self {
        Self {
            enabled: Vec::new(),
            port: 9965,
            address: "0.0.0.0".into(),
        }
    }
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 9962,
            address: "0.0.0.0".into(),
        }
    }
}

impl L7Config {
    /// Protocols observed everywhere (their plugins' ports): the switches'
    /// and `protocols`, each once.
    pub fn global_protocols(&self) -> Vec<&str> {
        let mut out: Vec<&str> = [
            ("http", self.http_protocol),
            ("kafka", self.kafka_protocol),
            ("redis", self.redis_protocol),
        ]
        .into_iter()
        .filter_map(|(p, on)| on.then_some(p))
        .collect();
        for p in &self.protocols {
            if !out.contains(&p.as_str()) {
                out.push(p);
            }
        }
        out
    }

    /// The reassembly bounds.
    pub fn reassembly(&self) -> reassembly::Limits {
        reassembly::Limits {
            max_connections: self.max_connections as usize,
            max_pending_per_direction: (self.max_pending_kib as usize) << 10,
            max_pending_total: (self.max_pending_total_mib as usize) << 20,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_seconds),
        }
    }
}

impl Default for L7Config {
    fn default() -> Self {
        Self {
            http_protocol: false,
            grpc_protocol: false,
            proxy_port: 10_480,
            proxy_enabled: true,
            proxy_max_connections: 4096,
            fail_open: Vec::new(),
            kafka_protocol: false,
            redis_protocol: false,
            dns_protocol: false,
            protocols: Vec::new(),
            buffer_pages: 256,
            queue_size: 65_536,
            max_connections: 65_536,
            max_pending_kib: 256,
            max_pending_total_mib: 64,
            idle_timeout_seconds: 120,
        }
    }
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            ct_global_tcp_max: 524_288,
            ct_global_any_max: 262_144,
            policy_map_entries: 16_384,
            pin_path: PathBuf::from(loupe_common::PIN_ROOT),
            enabled: true,
            monitor_aggregation: "medium".into(),
            monitor_flags: "all".into(),
        }
    }
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        Self {
            lab: true,
            lab_names: Vec::new(),
            lab_poll_ms: 500,
            kubernetes: false,
            kubeconfig: None,
        }
    }
}

/// The agent's socket unless configured otherwise (also where the CLI looks).
pub const DEFAULT_SOCKET: &str = "/run/loupe/loupe.sock";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key or value does not fit the schema.
    #[error("config {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted path of the field (`bpf.ctGlobalTcpMax`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl AgentConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates YAML text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|err| ConfigError::Invalid {
                path: path.to_path_buf(),
                field: err.path().to_string(),
                message: err.into_inner().to_string(),
            })?
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        // Cilium's lower bound for conntrack tables; the kernel's limit above.
        for (field, value) in [
            ("bpf.ctGlobalTcpMax", self.bpf.ct_global_tcp_max),
            ("bpf.ctGlobalAnyMax", self.bpf.ct_global_any_max),
        ] {
            if !(1 << 10..=1 << 24).contains(&value) {
                return Err(invalid(
                    field,
                    format!("{value} is outside 1024..=16777216"),
                ));
            }
        }
        if !(1 << 8..=1 << 20).contains(&self.bpf.policy_map_entries) {
            return Err(invalid(
                "bpf.policyMapEntries",
                format!("{} is outside 256..=1048576", self.bpf.policy_map_entries),
            ));
        }
        if let Err((field, message)) = self.bpf.monitor() {
            return Err(invalid(field, message));
        }
        let l7 = &self.l7;
        if !l7.buffer_pages.is_power_of_two() || l7.buffer_pages > 1 << 16 {
            return Err(invalid(
                "l7.bufferPages",
                format!("{} is not a power of two in 1..=65536", l7.buffer_pages),
            ));
        }
        for (field, value, range) in [
            ("l7.queueSize", l7.queue_size, 1..=1 << 22),
            ("l7.maxConnections", l7.max_connections, 1..=1 << 22),
            ("l7.maxPendingKib", l7.max_pending_kib, 1..=1 << 20),
            (
                "l7.maxPendingTotalMib",
                l7.max_pending_total_mib,
                1..=1 << 16,
            ),
        ] {
            if !range.contains(&value) {
                return Err(invalid(
                    field,
                    format!("{value} is outside {}..={}", range.start(), range.end()),
                ));
            }
        }
        if l7.idle_timeout_seconds == 0 {
            return Err(invalid("l7.idleTimeoutSeconds", "must be positive".into()));
        }
        for (field, on) in [
            ("l7.grpcProtocol", l7.grpc_protocol),
            ("l7.dnsProtocol", l7.dns_protocol),
        ] {
            if on {
                return Err(invalid(
                    field,
                    "no parser plugin for this protocol yet; leave it false".into(),
                ));
            }
        }
        if self.endpoints.lab_poll_ms == 0 {
            return Err(invalid("endpoints.labPollMs", "must be positive".into()));
        }
        for (field, value, range) in [
            ("plugins.deadlineMs", self.plugins.deadline_ms, 1..=10_000),
            (
                "plugins.memoryLimitMib",
                self.plugins.memory_limit_mib.into(),
                1..=4096,
            ),
            (
                "plugins.instances",
                self.plugins.instances.into(),
                1..=10_000,
            ),
            (
                "plugins.maxMessageKib",
                self.plugins.max_message_kib.into(),
                1..=65_536,
            ),
        ] {
            if !range.contains(&value) {
                let (lo, hi) = (range.start(), range.end());
                return Err(invalid(field, format!("{value} is outside {lo}..={hi}")));
            }
        }
        if self.l7.proxy_enabled && self.l7.proxy_port == 0 {
            return Err(invalid(
                "l7.proxyPort",
                "must be set while l7.proxyEnabled is true".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.l7.proxy_max_connections) {
            return Err(invalid(
                "l7.proxyMaxConnections",
                format!("{} is outside 1..=1000000", self.l7.proxy_max_connections),
            ));
        }
        let named = [
            ("l7.failOpen", &self.l7.fail_open),
            ("l7.protocols", &self.l7.protocols),
        ];
        if let Some((field, bad)) = named.iter().find_map(|(field, names)| {
            let bad = names.iter().find(|p| {
                p.is_empty()
                    || !p
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
            bad.map(|b| (*field, b))
        }) {
            return Err(invalid(field, format!("{bad:?} is not a protocol name")));
        }
        if self.node_name.as_ref().is_some_and(String::is_empty) {
            return Err(invalid("nodeName", "must not be empty".into()));
        }
        self.validate_hubble(&invalid)?;
        for (field, address) in [
            ("prometheus.address", &self.prometheus.address),
            ("hubble.metrics.address", &self.hubble.metrics.address),
        ] {
            if address.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(field, format!("{address:?} is not an IP address")));
            }
        }
        if self.prometheus.enabled
            && !self.hubble.metrics.enabled.is_empty()
            && self.prometheus.port == self.hubble.metrics.port
            && self.prometheus.port != 0
        {
            return Err(invalid(
                "hubble.metrics.port",
                format!("{} is also prometheus.port", self.prometheus.port),
            ));
        }
        Ok(())
    }

    fn validate_hubble(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let h = &self.hubble;
        if !(1..=1 << 20).contains(&h.event_buffer_capacity) {
            return Err(invalid(
                "hubble.eventBufferCapacity",
                format!("{} is outside 1..=1048576", h.event_buffer_capacity),
            ));
        }
        if !(1..=1 << 20).contains(&h.event_queue_size) {
            return Err(invalid(
                "hubble.eventQueueSize",
                format!("{} is outside 1..=1048576", h.event_queue_size),
            ));
        }
        if let Err(e) = h.export.static_.spec("hubble.export.static") {
            return Err(invalid(&e.field, e.message));
        }
        if h.export.dynamic.enabled && !h.export.dynamic.config.path.is_absolute() {
            return Err(invalid(
                "hubble.export.dynamic.config.path",
                format!(
                    "{} is not an absolute path",
                    h.export.dynamic.config.path.display()
                ),
            ));
        }
        if !h.listen_address.is_empty() && self.hubble_listen_address().is_none() {
            return Err(invalid(
                "hubble.listenAddress",
                format!("{:?} is not HOST:PORT or :PORT", h.listen_address),
            ));
        }
        if h.tls.enabled {
            if h.listen_address.is_empty() {
                return Err(invalid(
                    "hubble.tls.enabled",
                    "needs hubble.listenAddress".into(),
                ));
            }
            if h.tls.cert_file.is_none() {
                return Err(invalid("hubble.tls.certFile", "required with TLS".into()));
            }
            if h.tls.key_file.is_none() {
                return Err(invalid("hubble.tls.keyFile", "required with TLS".into()));
            }
        }
        for (i, spec) in h.metrics.enabled.iter().enumerate() {
            MetricSpec::parse(spec)
                .map_err(|e| invalid(&format!("hubble.metrics.enabled[{i}]"), e.to_string()))?;
        }
        Ok(())
    }

    /// `hubble.listenAddress` as a socket address (`:4244` means every address).
    pub fn hubble_listen_address(&self) -> Option<std::net::SocketAddr> {
        let text = self.hubble.listen_address.trim();
        if text.is_empty() {
            return None;
        }
        let text = if text.starts_with(':') {
            format!("0.0.0.0{text}")
        } else {
            text.to_string()
        };
        text.parse().ok()
    }

    /// The node name: configured, else `$K8S_NODE_NAME` (what Cilium's DaemonSet
    /// sets from `spec.nodeName`), else the hostname.
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .or_else(|| {
                std::env::var("K8S_NODE_NAME")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| "localhost".into())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("loupe.yaml"), text)
    }

    #[test]
    fn monitor_aggregation_takes_ciliums_names_and_numbers() {
        use loupe_common::monitor as m;
        let packed = |level: &str, flags: &str| {
            BpfConfig {
                monitor_aggregation: level.into(),
                monitor_flags: flags.into(),
                ..BpfConfig::default()
            }
            .monitor()
        };
        assert_eq!(BpfConfig::default().monitor(), Ok(m::MEDIUM | m::FLAGS_ALL));
        assert_eq!(packed("none", "all"), Ok(m::NONE | m::FLAGS_ALL));
        assert_eq!(packed("Lowest", ""), Ok(m::LOW));
        assert_eq!(packed("2", "syn"), Ok(m::LOW | m::FLAG_SYN));
        assert_eq!(
            packed("maximum", "syn, fin"),
            Ok(m::MEDIUM | m::FLAG_SYN | m::FLAG_FIN)
        );
        assert_eq!(packed("4", "rst"), Ok(m::MEDIUM | m::FLAG_RST));
        let (field, message) = packed("5", "all").unwrap_err();
        assert_eq!(field, "bpf.monitorAggregation");
        assert!(message.contains("\"5\" is not none"), "{message}");
        let (field, message) = packed("medium", "syn ack").unwrap_err();
        assert_eq!(field, "bpf.monitorFlags");
        assert!(message.contains("\"ack\""), "{message}");
    }

    #[test]
    fn the_config_fuzz_seed_is_a_valid_config() {
        // The fuzz target starts from it: it must reach past the parser.
        parse(include_str!("../../fuzz/seeds/config/agent.yaml")).unwrap();
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn helm_like_keys() {
        let c = parse(
            "policyEnforcementMode: always\nbpf:\n  ctGlobalTcpMax: 2000000\n  policyMapEntries: 32768\n",
        )
        .unwrap();
        assert_eq!(c.policy_enforcement_mode, PolicyEnforcementMode::Always);
        assert_eq!(c.bpf.ct_global_tcp_max, 2_000_000);
        assert_eq!(c.bpf.ct_global_any_max, 262_144);
    }

    #[test]
    fn l7_proxy_settings_are_checked() {
        let c = parse("l7:\n  proxyPort: 15001\n  failOpen: [redis]\n").unwrap();
        assert_eq!(c.l7.proxy_port, 15001);
        assert_eq!(c.l7.fail_open, ["redis"]);
        let e = parse("l7:\n  proxyPort: 0\n").unwrap_err().to_string();
        assert!(e.contains("l7.proxyPort: must be set"), "{e}");
        // Port 0 turns the redirect off, which is fine without the proxy.
        assert!(parse("l7:\n  proxyPort: 0\n  proxyEnabled: false\n").is_ok());
        let e = parse("l7:\n  proxyMaxConnections: 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("l7.proxyMaxConnections: 0 is outside"), "{e}");
        let e = parse("l7:\n  failOpen: [\"re dis\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("l7.failOpen: \"re dis\" is not a protocol name"),
            "{e}"
        );
        let c = parse("l7:\n  redisProtocol: true\n  protocols: [mqtt, redis]\n").unwrap();
        assert_eq!(c.l7.global_protocols(), ["redis", "mqtt"]);
        let e = parse("l7:\n  protocols: [\"mq/tt\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("l7.protocols: \"mq/tt\" is not a protocol name"),
            "{e}"
        );
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values_with_their_path() {
        let e = parse("bpf:\n  ctGlobalTcpMaxx: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bpf: unknown field `ctGlobalTcpMaxx`"), "{e}");
        let e = parse("policyEnforcementMode: sometimes\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("policyEnforcementMode: unknown variant `sometimes`"),
            "{e}"
        );
        let e = parse("bpf:\n  ctGlobalTcpMax: 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bpf.ctGlobalTcpMax: 10 is outside"), "{e}");
    }

    #[test]
    fn hubble_and_prometheus_keys() {
        let c = parse(
            "hubble:\n  enabled: true\n  eventBufferCapacity: 8191\n  listenAddress: \":4244\"\n  metrics:\n    enabled:\n      - dns\n      - drop\n      - \"httpV2:exemplars=true;labelsContext=source_pod,destination_pod\"\n    port: 9965\nprometheus:\n  enabled: true\n  port: 9962\nl7:\n  httpProtocol: false\n",
        )
        .unwrap();
        assert_eq!(c.hubble.event_buffer_capacity, 8191);
        assert_eq!(c.hubble.metrics.enabled.len(), 3);
        assert!(c.prometheus.enabled);
        assert!(!c.l7.http_protocol);
        assert_eq!(
            c.hubble_listen_address(),
            Some("0.0.0.0:4244".parse().unwrap())
        );
        // Defaults: Hubble's ring size, no metrics, no TCP listener.
        let d = AgentConfig::default();
        assert_eq!(d.hubble.event_buffer_capacity, 4095);
        assert!(d.hubble.metrics.enabled.is_empty());
        assert_eq!(d.hubble_listen_address(), None);
    }

    #[test]
    fn bad_hubble_values_name_their_field() {
        for (text, want) in [
            (
                "hubble:\n  eventBufferCapacity: 0\n",
                "hubble.eventBufferCapacity",
            ),
            (
                "hubble:\n  listenAddress: nowhere\n",
                "hubble.listenAddress",
            ),
            (
                "hubble:\n  listenAddress: \":4244\"\n  tls:\n    enabled: true\n",
                "hubble.tls.certFile",
            ),
            (
                "hubble:\n  metrics:\n    enabled: [drop, \"bogus\"]\n",
                "hubble.metrics.enabled[1]",
            ),
            (
                "hubble:\n  metrics:\n    enabled: [\"httpV2:labelsContext=nope\"]\n",
                "hubble.metrics.enabled[0]",
            ),
            ("prometheus:\n  address: here\n", "prometheus.address"),
            ("hubble:\n  metricz: {}\n", "hubble"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn plugins_section_defaults_and_validation() {
        let c = parse("stateDir: /srv/loupe\nplugins:\n  deadlineMs: 20\n").unwrap();
        assert_eq!(c.plugins.deadline_ms, 20);
        assert_eq!(c.plugins.memory_limit_mib, 32);
        assert_eq!(
            c.plugins.dir(&c.state_dir),
            PathBuf::from("/srv/loupe/plugins")
        );
        assert_eq!(c.plugins.limits().memory_bytes, 32 << 20);
        let e = parse("plugins:\n  deadlineMs: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plugins.deadlineMs: 0 is outside 1..=10000"),
            "{e}"
        );
        let e = parse("plugins:\n  memoryLimitMib: 9000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugins.memoryLimitMib"), "{e}");
        let e = parse("plugins:\n  dirr: /x\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `dirr`"), "{e}");
    }
}
