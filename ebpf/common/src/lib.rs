//! The kernel <-> user-space contract of the Loupe datapath.
//!
//! Every map key, map value and ring-buffer record the eBPF programs share with the
//! runtime is defined here, once, as a `#[repr(C)]` struct whose fields are laid out
//! without implicit padding (each struct's size is asserted below), so both sides agree
//! on the bytes. Multi-byte fields that the kernel compares as bytes (LPM keys) are
//! byte arrays in network order; everything else is in host order unless named `_be`.
//!
//! The user side enables the `user` feature, which implements [`aya::Pod`] for the
//! types that cross the boundary.
#![no_std]
#![warn(missing_docs)]

pub mod identity;

/// Where programs and maps are pinned (bpffs). Everything Loupe owns in the kernel
/// lives below this directory, so a restarted agent can adopt it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/loupe";

/// Map names, shared by the eBPF object and the loader.
pub mod maps {
    /// LPM trie: IP prefix (v4-mapped v6) -> [`crate::IpcacheValue`].
    pub const IPCACHE: &str = "LOUPE_IPCACHE";
    /// Hash: host-side ifindex -> [`crate::EndpointInfo`].
    pub const ENDPOINTS: &str = "LOUPE_ENDPOINTS";
    /// LPM trie: [`crate::PolicyKey`] -> [`crate::PolicyValue`].
    pub const POLICY: &str = "LOUPE_POLICY";
    /// LRU hash: [`crate::CtKey`] -> [`crate::CtValue`].
    pub const CONNTRACK: &str = "LOUPE_CT";
    /// Ring buffer of [`crate::FlowEvent`] records.
    pub const EVENTS: &str = "LOUPE_EVENTS";
    /// Per-CPU array of [`crate::Counter`], indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "LOUPE_COUNTERS";
    /// Array with one [`crate::DatapathConfig`] at index 0.
    pub const CONFIG: &str = "LOUPE_CONFIG";
    /// Perf event array of [`crate::PayloadEvent`] records, each followed by the
    /// packet's bytes (from the Ethernet header).
    pub const PAYLOAD: &str = "LOUPE_PAYLOAD";
    /// Hash: host-order TCP port -> 1, ports observed at L7 without policy.
    pub const L7_PORTS: &str = "LOUPE_L7_PORTS";
}

/// Program names in the eBPF object.
pub mod programs {
    /// TC ingress of an endpoint's host-side veth: traffic leaving the endpoint.
    pub const FROM_ENDPOINT: &str = "loupe_from_endpoint";
    /// TC egress of an endpoint's host-side veth: traffic entering the endpoint.
    pub const TO_ENDPOINT: &str = "loupe_to_endpoint";
    /// TC ingress of a node's device (`devices`): traffic from other nodes and
    /// the world, steered to the L7 proxy when the local server's policy says so.
    pub const FROM_NETDEV: &str = "loupe_from_netdev";
}

/// Default map sizes (overridden by the agent's config before the maps are created).
pub mod sizes {
    /// `bpf.ctGlobalTcpMax` + `bpf.ctGlobalAnyMax` default total.
    pub const CONNTRACK: u32 = 524_288 + 262_144;
    /// `bpf.policyMapEntries` default (Cilium's default is 16384 per endpoint).
    pub const POLICY: u32 = 65_536;
    /// Entries of the ipcache.
    pub const IPCACHE: u32 = 512_000;
    /// Endpoints on one node.
    pub const ENDPOINTS: u32 = 4_096;
    /// Bytes of the event ring buffer (a power of two, multiple of the page size).
    pub const EVENTS_BYTES: u32 = 4 << 20;
    /// Globally L7-visible ports.
    pub const L7_PORTS: u32 = 256;
}

/// Traffic direction relative to the endpoint, numbered like Hubble's
/// `TrafficDirection` (`INGRESS = 1`, `EGRESS = 2`).
pub mod direction {
    /// Into the endpoint.
    pub const INGRESS: u8 = 1;
    /// Out of the endpoint.
    pub const EGRESS: u8 = 2;
    /// Conntrack keys only: a connection arriving on a node's device, kept
    /// under endpoint number 0 (never an endpoint's direction in events).
    pub const FROM_NETDEV: u8 = 3;
}

/// Drop reasons, numbered like Hubble's `DropReason` enum so a record maps onto a
/// flow without a table.
pub mod drop_reason {
    /// Not a drop: the packet was forwarded.
    pub const NONE: u8 = 0;
    /// No rule allows the packet (`POLICY_DENIED`, "Policy denied").
    pub const POLICY_DENIED: u8 = 133;
    /// A packet too short or with a malformed header.
    pub const INVALID_PACKET: u8 = 134;
    /// Truncated or invalid header for connection tracking.
    pub const CT_TRUNCATED_OR_INVALID_HEADER: u8 = 135;
    /// The conntrack map refused a new entry.
    pub const CT_MAP_INSERTION_FAILED: u8 = 155;
    /// An IPv6 extension header chain we do not walk.
    pub const INVALID_IPV6_EXTENSION_HEADER: u8 = 156;
    /// A non-first IP fragment on an enforced endpoint.
    pub const IP_FRAGMENTATION_NOT_SUPPORTED: u8 = 157;
    /// The L7 proxy's socket was not found (the agent's proxy is not listening):
    /// an L7-enforced connection fails closed.
    pub const SOCKET_LOOKUP_FAILED: u8 = 178;
    /// Assigning the packet to the L7 proxy's socket failed.
    pub const SOCKET_ASSIGN_FAILED: u8 = 179;
    /// A connection to a port with enforcing L7 rules reached the server without
    /// passing the proxy (its client is not an endpoint of this node, whose own
    /// hook redirects): it fails closed (`PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL`).
    pub const PROXY_REDIRECTION_NOT_SUPPORTED: u8 = 180;
    /// An explicit deny rule matched (`POLICY_DENY`, "Policy denied by denylist").
    pub const POLICY_DENY: u8 = 181;
}

/// Kinds of [`FlowEvent`].
pub mod event_kind {
    /// A packet was dropped; `reason` says why.
    pub const DROP: u8 = 1;
    /// A connection-level trace point: new connection, first reply, FIN or RST.
    pub const TRACE: u8 = 2;
}

/// Conntrack state of the packet an event describes.
pub mod ct_status {
    /// The first packet of a connection (a policy decision was made).
    pub const NEW: u8 = 0;
    /// A packet in the original direction of a known connection.
    pub const ESTABLISHED: u8 = 1;
    /// A packet in the reply direction of a known connection.
    pub const REPLY: u8 = 2;
}

/// Policy actions stored in [`PolicyValue::action`].
pub mod action {
    /// Allow at L3/L4.
    pub const ALLOW: u8 = 1;
    /// Deny (explicit deny rule).
    pub const DENY: u8 = 2;
}

/// Flags of [`PolicyValue::flags`].
pub mod policy_flags {
    /// The port carries L7 rules: the connection's payload is for the L7 path.
    pub const L7: u8 = 1;
    /// With [`L7`]: some L7 rule restricts this peer's requests, so the connection
    /// goes through the runtime's proxy; without it the payload is only copied
    /// for visibility.
    pub const L7_ENFORCE: u8 = 2;
}

/// Flags of [`EndpointInfo::flags`]. Enforcement is kept per policy generation
/// (shift by `2 * generation`), so switching generations switches enforcement too.
pub mod endpoint_flags {
    /// Ingress is under default-deny enforcement (generation 0).
    pub const ENFORCE_INGRESS: u16 = 1;
    /// Egress is under default-deny enforcement (generation 0).
    pub const ENFORCE_EGRESS: u16 = 2;

    /// The enforcement flag for a direction in a policy generation.
    pub const fn enforce(dir: u8, generation: u8) -> u16 {
        let base = if dir == crate::direction::INGRESS {
            ENFORCE_INGRESS
        } else {
            ENFORCE_EGRESS
        };
        base << (2 * (generation & 1))
    }
}

/// Flags of [`CtValue::flags`].
pub mod ct_flags {
    /// A reply has been seen (the first one was traced).
    pub const SEEN_REPLY: u16 = 1;
    /// FIN seen in the original direction.
    pub const FIN_FWD: u16 = 2;
    /// FIN seen in the reply direction.
    pub const FIN_REV: u16 = 4;
    /// RST seen.
    pub const RST: u16 = 8;
    /// The connection's port carries L7 rules.
    pub const L7: u16 = 16;
    /// The connection is steered to the runtime's L7 proxy (client side).
    pub const PROXY: u16 = 32;
    /// The connection was opened by the runtime's L7 proxy towards the server;
    /// its replies go back to the proxy.
    pub const FROM_PROXY: u16 = 64;
    /// The entry was created by a SYN (its sequence number is
    /// [`CtValue::syn_seq`](super::CtValue::syn_seq)), not by a packet in mid-stream.
    pub const OPENED_BY_SYN: u16 = 128;
}

/// Packet marks and policy routing of the L7 proxy redirect. The datapath marks
/// packets for the proxy with [`proxy::TO_PROXY`]; the agent installs a policy
/// routing rule sending that mark to a table whose only route is `local` (IPv4
/// and IPv6), so the kernel delivers them to the proxy's sockets whatever their
/// destination address. The proxy's upstream sockets carry [`proxy::FROM_PROXY`]
/// (`SO_MARK`) so the datapath knows them and never redirects them again.
pub mod proxy {
    /// Bits of `skb->mark` the proxy marks use.
    pub const MARK_MASK: u32 = 0x0F00;
    /// Deliver to the proxy (local routing).
    pub const TO_PROXY: u32 = 0x0C00;
    /// Sent by the proxy's upstream socket; already enforced at L7.
    pub const FROM_PROXY: u32 = 0x0D00;
    /// Routing table of the `local` default routes.
    pub const ROUTE_TABLE: u32 = 2046;
    /// Priority of the `fwmark` rule (before the main table's 32766).
    pub const RULE_PRIORITY: u32 = 95;
}

/// Value of the ipcache LPM trie; its key is a 16-byte address (IPv4 as `::ffff:a.b.c.d`)
/// with a prefix length counted on those 128 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpcacheValue {
    /// The security identity of addresses under this prefix.
    pub identity: u32,
    /// The endpoint number when the address is a local endpoint's, 0 otherwise
    /// (the client's hook reads the server's ingress policy with it).
    pub ep_id: u16,
    /// Reserved, zero.
    pub flags: u16,
}

/// Value of the endpoint map, keyed by the host-side interface index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Endpoint number on this node (1..=65535), part of every policy key.
    pub ep_id: u16,
    /// [`endpoint_flags`].
    pub flags: u16,
    /// The endpoint's own security identity.
    pub identity: u32,
}

/// Data of an LPM policy key. Fields are in the order the trie compares them: the
/// policy generation, the endpoint, the direction and the remote identity always
/// fully, then the protocol and the destination port as far as the prefix length
/// says, so "any protocol" and port ranges (split into aligned prefixes) are single
/// entries.
///
/// Two generations share the map: the runtime writes a complete new policy under the
/// inactive generation, then flips [`DatapathConfig::active_gen`] — one word — so a
/// policy change is atomic for the datapath — then removes the old generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// Policy generation (0 or 1).
    pub generation: u8,
    /// Endpoint number, big-endian.
    pub ep_id: [u8; 2],
    /// [`direction`] of the traffic relative to the endpoint.
    pub dir: u8,
    /// Remote identity, big-endian; 0 means any identity.
    pub identity: [u8; 4],
    /// IP protocol number.
    pub proto: u8,
    /// Destination port, big-endian.
    pub port: [u8; 2],
}

/// Bits of a [`PolicyKey`] that are always matched exactly.
pub const POLICY_PREFIX_L3: u32 = (1 + 2 + 1 + 4) * 8;
/// Bits of a [`PolicyKey`] up to and including the protocol.
pub const POLICY_PREFIX_PROTO: u32 = POLICY_PREFIX_L3 + 8;
/// All bits of a [`PolicyKey`].
pub const POLICY_PREFIX_FULL: u32 = POLICY_PREFIX_PROTO + 16;

/// Value of the policy map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// [`action`].
    pub action: u8,
    /// [`policy_flags`].
    pub flags: u8,
    /// Port of the runtime's L7 proxy for this entry, 0 if none.
    pub proxy_port: u16,
    /// Which policies (and rules) decide through this entry: index + 1 into the
    /// compiled attribution table of its generation, 0 if none (flow attribution).
    pub rule: u32,
}

/// Conntrack key: the tuple as the endpoint's hook first saw it, plus which
/// endpoint and direction own the entry (each hook tracks its own connections).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address, 16 bytes (IPv4 as `::ffff:a.b.c.d`).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port (host order); ICMP: the echo identifier.
    pub sport: u16,
    /// Destination port (host order); ICMP: 0.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`direction`] relative to the endpoint.
    pub dir: u8,
    /// Endpoint number.
    pub ep_id: u16,
}

/// Conntrack value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_boot_ns` at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_boot_ns` of the last packet.
    pub last_seen_ns: u64,
    /// Policy revision the entry was last checked against ([`DatapathConfig::policy_rev`]).
    pub policy_rev: u32,
    /// Identity of the remote side.
    pub remote_identity: u32,
    /// [`ct_flags`].
    pub flags: u16,
    /// Reserved, zero.
    pub pad: [u8; 2],
    /// Sequence number of the SYN that opened the entry ([`ct_flags::OPENED_BY_SYN`]):
    /// a SYN with another one is a new connection on the same tuple.
    pub syn_seq: u32,
}

/// Index into the counters array.
pub const fn counter_index(dir: u8, reason: u8) -> u32 {
    (dir as u32) * 256 + reason as u32
}

/// Counter slot (direction 0) for events lost because the event ring was full.
pub const COUNTER_LOST_EVENTS: u32 = counter_index(0, 1);
/// Counter slot (direction 0) for packets copied to the L7 path.
pub const COUNTER_PAYLOAD: u32 = counter_index(0, 2);

/// Most bytes of one packet copied to the L7 path (a GSO super-packet fits).
pub const MAX_PAYLOAD_COPY: u32 = 65_535;

/// Entries of the counters array: directions 0..=2 times 256 reasons.
pub const COUNTER_ENTRIES: u32 = 3 * 256;

/// A per-CPU packet / byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (L3 length as seen by TC).
    pub bytes: u64,
}

/// Global datapath configuration, written by the runtime.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Bumped on every policy change; conntrack entries from an older revision are
    /// re-checked against policy once, so a policy change reaches open connections
    /// it no longer allows without touching those it still allows.
    pub policy_rev: u32,
    /// The policy generation in force (0 or 1).
    pub active_gen: u8,
    /// Which trace events the hooks report ([`monitor`]: level and TCP flags).
    pub monitor: u8,
    /// Port of the runtime's transparent L7 proxy (host order); 0: no redirect,
    /// L7-enforced ports are only copied to the L7 path.
    pub proxy_port: u16,
}

/// Trace event aggregation (Cilium's `bpf.monitorAggregation` and
/// `bpf.monitorFlags`), packed in [`DatapathConfig::monitor`]: the level in the
/// low 3 bits, the TCP flags that are always reported above them. New
/// connections (they carry the policy verdicts) and drops are reported at every
/// level.
pub mod monitor {
    /// Every packet, at both hooks.
    pub const NONE: u8 = 0;
    /// Every packet, at the hook into the endpoint only (`to-endpoint`).
    pub const LOW: u8 = 1;
    /// At the hook into the endpoint only: a connection's first reply and
    /// packets carrying one of the flags; Cilium's default.
    pub const MEDIUM: u8 = 3;
    /// The level's bits.
    pub const LEVEL_MASK: u8 = 0x07;
    /// Report packets with SYN.
    pub const FLAG_SYN: u8 = 0x08;
    /// Report packets with FIN.
    pub const FLAG_FIN: u8 = 0x10;
    /// Report packets with RST.
    pub const FLAG_RST: u8 = 0x20;
    /// Every flag (`all`, the default).
    pub const FLAGS_ALL: u8 = FLAG_SYN | FLAG_FIN | FLAG_RST;
}

/// A record on the event ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_boot_ns` when the packet was seen.
    pub ts_ns: u64,
    /// Source address (IPv4 as `::ffff:a.b.c.d`).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port (host order); ICMP: type.
    pub sport: u16,
    /// Destination port (host order); ICMP: code.
    pub dport: u16,
    /// Host-side interface the hook ran on.
    pub ifindex: u32,
    /// Identity of the endpoint owning the hook.
    pub local_identity: u32,
    /// Identity of the other side.
    pub remote_identity: u32,
    /// Endpoint number.
    pub ep_id: u16,
    /// [`event_kind`].
    pub kind: u8,
    /// [`drop_reason`] for drops, 0 otherwise.
    pub reason: u8,
    /// [`direction`].
    pub dir: u8,
    /// IP protocol number.
    pub proto: u8,
    /// TCP flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128).
    pub tcp_flags: u8,
    /// 4 or 6.
    pub family: u8,
    /// [`ct_status`].
    pub ct_status: u8,
    /// [`policy_flags`] of the matched entry.
    pub policy_flags: u8,
    /// Which policy decided: [`attribution::tag`] of the deciding entry's
    /// [`PolicyValue::rule`] under the policy revision that decided, 0 if none did.
    pub policy: u16,
    /// Packet length.
    pub len: u32,
}

/// The policy tag a [`FlowEvent`] carries: the low two bits of the policy
/// revision in force when it was decided ([`DatapathConfig::policy_rev`], bits
/// 14–15) and the deciding entry's [`PolicyValue::rule`] (bits 0–13), so the
/// runtime reads it against that revision's policy table even after three more
/// policy changes.
pub mod attribution {
    /// Largest [`super::PolicyValue::rule`] a tag can carry.
    pub const MAX_RULE: u32 = 0x3fff;
    /// How many revisions' tables the runtime keeps (revisions are told apart
    /// modulo this).
    pub const REVISIONS: usize = 4;

    /// The tag for `rule` under revision `rev`; 0 (none) when `rule` is 0 or too
    /// large.
    #[inline(always)]
    pub fn tag(rev: u32, rule: u32) -> u16 {
        if rule == 0 || rule > MAX_RULE {
            return 0;
        }
        (((rev & 3) as u16) << 14) | rule as u16
    }

    /// The revision slot (`rev % REVISIONS`) and rule of a non-zero tag.
    pub fn split(tag: u16) -> (usize, u32) {
        (usize::from(tag >> 14), u32::from(tag & 0x3fff))
    }
}

/// Header of a payload record; the packet's first `len` bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadEvent {
    /// `bpf_ktime_get_boot_ns` when the packet was seen.
    pub ts_ns: u64,
    /// Host-side interface.
    pub ifindex: u32,
    /// Bytes of the packet that follow (from the Ethernet header).
    pub len: u32,
    /// The packet's length.
    pub orig_len: u32,
    /// Identity of the endpoint owning the hook.
    pub local_identity: u32,
    /// Identity of the other side.
    pub remote_identity: u32,
    /// Endpoint number.
    pub ep_id: u16,
    /// [`direction`] of the packet relative to the endpoint.
    pub dir: u8,
    /// Reserved, zero.
    pub pad: u8,
}

// The layout is the contract: a change in size is a change of the contract.
const _: () = assert!(core::mem::size_of::<IpcacheValue>() == 8);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 8);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 11);
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 8);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 72);
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers and byte
    // arrays, and has no implicit padding (sizes asserted above), so any bit pattern
    // is a valid value.
    unsafe impl aya::Pod for IpcacheValue {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for PayloadEvent {}
}
