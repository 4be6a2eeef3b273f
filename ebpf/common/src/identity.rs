//! Security identities, numbered as Cilium numbers them.
//!
//! An identity is a `u32`. Reserved identities name entities that are not pods;
//! identities derived from label sets live in the cluster range; identities for CIDR
//! prefixes named by policy live in the node-local range.

/// Wildcard in policy keys: any remote identity.
pub const ANY: u32 = 0;
/// The local host.
pub const HOST: u32 = 1;
/// Anything outside the cluster.
pub const WORLD: u32 = 2;
/// An endpoint not managed by Loupe.
pub const UNMANAGED: u32 = 3;
/// Health-check endpoints.
pub const HEALTH: u32 = 4;
/// Endpoints whose identity is not resolved yet.
pub const INIT: u32 = 5;
/// Other nodes of the cluster.
pub const REMOTE_NODE: u32 = 6;
/// The Kubernetes API server.
pub const KUBE_APISERVER: u32 = 7;
/// The ingress proxy.
pub const INGRESS: u32 = 8;
/// IPv4 addresses outside the cluster (dual-stack split of `WORLD`).
pub const WORLD_IPV4: u32 = 9;
/// IPv6 addresses outside the cluster.
pub const WORLD_IPV6: u32 = 10;
/// First identity allocated from a label set.
pub const FIRST_CLUSTER: u32 = 256;
/// Last identity allocated from a label set.
pub const LAST_CLUSTER: u32 = 65_535;
/// First node-local identity (CIDR prefixes named by policy).
pub const FIRST_LOCAL: u32 = 1 << 24;
/// Last node-local identity.
pub const LAST_LOCAL: u32 = (1 << 24) | 0xFF_FFFF;

/// The reserved identity's name (`reserved:<name>` labels), if `id` is reserved.
pub const fn reserved_name(id: u32) -> Option<&'static str> {
    match id {
        HOST => Some("host"),
        WORLD => Some("world"),
        UNMANAGED => Some("unmanaged"),
        HEALTH => Some("health"),
        INIT => Some("init"),
        REMOTE_NODE => Some("remote-node"),
        KUBE_APISERVER => Some("kube-apiserver"),
        INGRESS => Some("ingress"),
        WORLD_IPV4 => Some("world-ipv4"),
        WORLD_IPV6 => Some("world-ipv6"),
        _ => None,
    }
}
