//! The kernel side, from user space: loads the eBPF object, pins its maps and
//! links under the pin path so they outlive the agent, attaches the TC programs to
//! endpoint interfaces, and reads and writes the maps.
//!
//! A restarted agent adopts what is pinned: maps are reused as they are, and each
//! pinned TCX link gets the newly loaded program by an atomic link update, so
//! enforcement never has a gap.

pub mod controller;
pub mod events;
pub mod flows;
pub mod metrics;
pub mod payload;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{LinkOrder, SchedClassifier, TcAttach, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use loupe_common::{
    COUNTER_ENTRIES, Counter, CtKey, CtValue, DatapathConfig, EndpointInfo, IpcacheValue,
    PolicyKey, PolicyValue, maps, programs,
};

use crate::config::BpfConfig;

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe-datapath"));

/// A datapath operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Loading the object or a program failed (verifier, permissions, BTF).
    #[error("loading the datapath: {0}")]
    Load(String),
    /// A map is missing from the object or has the wrong type.
    #[error("datapath map {name}: {message}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Attaching to an interface failed.
    #[error("attaching to {interface}: {message}")]
    Attach {
        /// Interface name.
        interface: String,
        /// What went wrong.
        message: String,
    },
    /// The pin directory could not be used.
    #[error("pin path {path}: {source}")]
    Pin {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The policy does not fit the policy map.
    #[error(
        "policy needs {needed} policy map entries but bpf.policyMapEntries is {capacity}; \
         raise it or narrow the policy"
    )]
    PolicyMapFull {
        /// Entries the compiled policy needs.
        needed: usize,
        /// Configured capacity.
        capacity: usize,
    },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        name,
        message: e.to_string(),
    }
}

/// Handles on the loaded object and its maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_path: PathBuf,
    ipcache: LpmTrie<MapData, [u8; 16], IpcacheValue>,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    counters: PerCpuArray<MapData, Counter>,
    config: Array<MapData, DatapathConfig>,
    l7_ports: HashMap<MapData, u16, u8>,
    events: Option<Map>,
    payload: Option<Map>,
    /// Sizes the maps were created with.
    pub sizes: MapSizes,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_path", &self.pin_path)
            .field("sizes", &self.sizes)
            .finish_non_exhaustive()
    }
}

/// Capacities of the sized maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Conntrack entries.
    pub conntrack: u32,
    /// Policy entries per generation.
    pub policy: u32,
    /// Ipcache entries.
    pub ipcache: u32,
    /// Endpoints.
    pub endpoints: u32,
}

impl Datapath {
    /// Loads the datapath, reusing maps pinned by an earlier agent.
    pub fn load(config: &BpfConfig) -> Result<Self, DatapathError> {
        let pin_path = config.pin_path.clone();
        std::fs::create_dir_all(pin_path.join("links")).map_err(|source| DatapathError::Pin {
            path: pin_path.clone(),
            source,
        })?;
        let sizes = MapSizes {
            conntrack: config
                .ct_global_tcp_max
                .saturating_add(config.ct_global_any_max),
            policy: config.policy_map_entries,
            ipcache: loupe_common::sizes::IPCACHE,
            endpoints: loupe_common::sizes::ENDPOINTS,
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_path)
            .map_max_entries(maps::CONNTRACK, sizes.conntrack)
            // Two generations share the policy map.
            .map_max_entries(maps::POLICY, sizes.policy.saturating_mul(2))
            .load(OBJECT)
            .map_err(|e| DatapathError::Load(format!("{e:#}")))?;
        for name in [
            programs::FROM_ENDPOINT,
            programs::TO_ENDPOINT,
            programs::FROM_NETDEV,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| DatapathError::Load(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| DatapathError::Load(format!("{name}: {e}")))?;
            prog.load()
                .map_err(|e| DatapathError::Load(format!("{name}: {e:#}")))?;
        }
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::Map {
                name,
                message: "not in the object".into(),
            })
        };
        let ipcache = LpmTrie::try_from(take(maps::IPCACHE)?).map_err(map_err(maps::IPCACHE))?;
        let endpoints =
            HashMap::try_from(take(maps::ENDPOINTS)?).map_err(map_err(maps::ENDPOINTS))?;
        let policy = LpmTrie::try_from(take(maps::POLICY)?).map_err(map_err(maps::POLICY))?;
        let conntrack =
            HashMap::try_from(take(maps::CONNTRACK)?).map_err(map_err(maps::CONNTRACK))?;
        let counters =
            PerCpuArray::try_from(take(maps::COUNTERS)?).map_err(map_err(maps::COUNTERS))?;
        let config_map = Array::try_from(take(maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
        let l7_ports = HashMap::try_from(take(maps::L7_PORTS)?).map_err(map_err(maps::L7_PORTS))?;
        let events = take(maps::EVENTS).ok();
        let payload = take(maps::PAYLOAD).ok();
        Ok(Self {
            l7_ports,
            ebpf,
            pin_path,
            ipcache,
            endpoints,
            policy,
            conntrack,
            counters,
            config: config_map,
            events,
            payload,
            sizes,
        })
    }

    /// Makes exactly `ports` L7-visible without policy (the `l7.*Protocol`
    /// switches); new connections to them are copied to the L7 path.
    pub fn set_l7_ports(
        &mut self,
        ports: &std::collections::BTreeSet<u16>,
    ) -> Result<(), DatapathError> {
        let stale: Vec<u16> = self
            .l7_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        for port in ports {
            self.l7_ports
                .insert(port, &1, 0)
                .map_err(map_err(maps::L7_PORTS))?;
        }
        for port in stale {
            self.l7_ports
                .remove(&port)
                .map_err(map_err(maps::L7_PORTS))?;
        }
        Ok(())
    }

    /// The event ring buffer (taken once, by the event reader).
    pub fn take_events(&mut self) -> Option<Map> {
        self.events.take()
    }

    /// The payload perf array (taken once, by the payload reader).
    pub fn take_payload(&mut self) -> Option<Map> {
        self.payload.take()
    }

    fn link_pin(&self, interface: &str, hook: TcAttachType) -> PathBuf {
        let side = match hook {
            TcAttachType::Ingress => "ingress",
            TcAttachType::Egress => "egress",
        };
        self.pin_path
            .join("links")
            .join(format!("{interface}-{side}"))
    }

    /// Attaches both programs to an endpoint's host-side interface. A link pinned by
    /// an earlier agent is updated in place (atomic); a stale pin (the interface
    /// was re-created) is replaced.
    pub fn attach(&mut self, interface: &str, ifindex: u32) -> Result<(), DatapathError> {
        for (name, hook) in [
            (programs::FROM_ENDPOINT, TcAttachType::Ingress),
            (programs::TO_ENDPOINT, TcAttachType::Egress),
        ] {
            let pin = self.link_pin(interface, hook);
            self.attach_program(name, hook, interface, ifindex, &pin)?;
        }
        Ok(())
    }

    /// Attaches the device program to a node's device (`devices`: where other
    /// nodes' traffic arrives), pinned apart from the endpoints' links.
    pub fn attach_device(&mut self, device: &str, ifindex: u32) -> Result<(), DatapathError> {
        let dir = self.pin_path.join("devices");
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Pin {
            path: dir.clone(),
            source,
        })?;
        let pin = dir.join(format!("{device}-ingress"));
        self.attach_program(
            programs::FROM_NETDEV,
            TcAttachType::Ingress,
            device,
            ifindex,
            &pin,
        )
    }

    /// Detaches the device program from every device not in `devices` (an earlier
    /// agent's configuration named more).
    pub fn keep_devices(&mut self, devices: &[String]) {
        let dir = self.pin_path.join("devices");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let device = name.strip_suffix("-ingress").unwrap_or(&name);
            if !devices.iter().any(|d| d == device) {
                if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                    // Unpinning drops the last reference: the kernel detaches.
                    let _ = link.unpin();
                }
                let _ = std::fs::remove_file(entry.path());
                tracing::info!(device, "device program detached (no longer in devices)");
            }
        }
    }

    fn attach_program(
        &mut self,
        name: &str,
        hook: TcAttachType,
        interface: &str,
        ifindex: u32,
        pin: &Path,
    ) -> Result<(), DatapathError> {
        let attach_err = |message: String| DatapathError::Attach {
            interface: interface.to_string(),
            message,
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| attach_err(format!("program {name} missing")))?
            .try_into()
            .map_err(|e| attach_err(format!("{e}")))?;
        let mut adopted = None;
        match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let link: aya::programs::tc::SchedClassifierLink = FdLink::from(old)
                    .try_into()
                    .map_err(|e: LinkError| attach_err(format!("pinned link: {e}")))?;
                match prog.attach_to_link(link) {
                    Ok(id) => adopted = Some(id),
                    Err(e) => {
                        tracing::info!(interface, error = %e, "replacing stale pinned link");
                        let _ = std::fs::remove_file(pin);
                    }
                }
            }
            Err(LinkError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::info!(interface, error = %e, "replacing unreadable pinned link");
                let _ = std::fs::remove_file(pin);
            }
        }
        let id = match adopted {
            Some(id) => id,
            None => prog
                .attach(
                    ifindex,
                    TcAttach::Tcx {
                        attach_type: hook,
                        order: LinkOrder::default(),
                    },
                )
                .map_err(|e| attach_err(format!("{name}: {e:#}")))?,
        };
        let link = prog.take_link(id).map_err(|e| attach_err(format!("{e}")))?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(|e: LinkError| attach_err(format!("not a TCX link: {e}")))?;
        // A link updated in place is pinned already; pinning it again would fail.
        if !pin.exists() {
            fd_link
                .pin(pin)
                .map_err(|e| attach_err(format!("pinning {}: {e}", pin.display())))?;
        }
        Ok(())
    }

    /// Detaches from an interface (unpins its links).
    pub fn detach(&mut self, interface: &str) {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let pin = self.link_pin(interface, hook);
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                // Unpinning drops the last reference: the kernel detaches.
                let _ = link.unpin();
            }
            let _ = std::fs::remove_file(&pin);
        }
    }

    /// Interfaces with pinned links.
    pub fn pinned_interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.pin_path.join("links"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.rsplit_once('-').map(|(iface, _)| iface.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The endpoint map: ifindex -> endpoint info.
    pub fn endpoints(&self) -> BTreeMap<u32, EndpointInfo> {
        self.endpoints.iter().filter_map(Result::ok).collect()
    }

    /// Writes an endpoint's entry.
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DatapathError> {
        self.endpoints
            .insert(&ifindex, &info, 0)
            .map_err(map_err(maps::ENDPOINTS))
    }

    /// Removes an endpoint's entry.
    pub fn remove_endpoint(&mut self, ifindex: u32) {
        let _ = self.endpoints.remove(&ifindex);
    }

    /// The ipcache: (prefix, prefix length over the 16-byte address) -> value.
    pub fn ipcache(&self) -> BTreeMap<([u8; 16], u32), IpcacheValue> {
        self.ipcache
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k.data(), k.prefix_len()), v))
            .collect()
    }

    /// Sets an ipcache entry.
    pub fn set_ipcache(
        &mut self,
        addr: [u8; 16],
        prefix_len: u32,
        value: IpcacheValue,
    ) -> Result<(), DatapathError> {
        self.ipcache
            .insert(&Key::new(prefix_len, addr), &value, 0)
            .map_err(map_err(maps::IPCACHE))
    }

    /// Removes an ipcache entry.
    pub fn remove_ipcache(&mut self, addr: [u8; 16], prefix_len: u32) {
        let _ = self.ipcache.remove(&Key::new(prefix_len, addr));
    }

    /// Every policy map key with its prefix length.
    pub fn policy_keys(&self) -> Vec<(u32, PolicyKey)> {
        self.policy
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), k.data()))
            .collect()
    }

    /// Inserts a policy entry.
    pub fn set_policy(
        &mut self,
        prefix_len: u32,
        key: PolicyKey,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        self.policy
            .insert(&Key::new(prefix_len, key), &value, 0)
            .map_err(map_err(maps::POLICY))
    }

    /// Removes a policy entry.
    pub fn remove_policy(&mut self, prefix_len: u32, key: PolicyKey) {
        let _ = self.policy.remove(&Key::new(prefix_len, key));
    }

    /// The global datapath config.
    pub fn config(&self) -> DatapathConfig {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Writes the global datapath config.
    pub fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, &config, 0)
            .map_err(map_err(maps::CONFIG))
    }

    /// Counters summed over CPUs, by index (see [`loupe_common::counter_index`]).
    pub fn counters(&self) -> Vec<Counter> {
        (0..COUNTER_ENTRIES)
            .map(|i| {
                self.counters
                    .get(&i, 0)
                    .map(|per_cpu| {
                        per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                            packets: acc.packets + c.packets,
                            bytes: acc.bytes + c.bytes,
                        })
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Number of conntrack entries (walks the map; for status and map pressure).
    pub fn conntrack_len(&self) -> usize {
        self.conntrack.keys().filter(Result::is_ok).count()
    }

    /// Conntrack entries.
    pub fn conntrack_entries(&self) -> Vec<(CtKey, CtValue)> {
        self.conntrack.iter().filter_map(Result::ok).collect()
    }

    /// Removes a conntrack entry.
    pub fn remove_conntrack(&mut self, key: &CtKey) {
        let _ = self.conntrack.remove(key);
    }

    /// Where everything is pinned.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }
}

/// An address as the datapath stores it (IPv4 as `::ffff:a.b.c.d`), with the
/// prefix length shifted accordingly.
pub fn mapped(ip: IpAddr, prefix_len: u8) -> ([u8; 16], u32) {
    match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + u32::from(prefix_len)),
        IpAddr::V6(v6) => (v6.octets(), u32::from(prefix_len)),
    }
}

/// The address back from its 16-byte form.
pub fn unmapped(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
