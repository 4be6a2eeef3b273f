//! Compiles validated policies against this node's endpoints into datapath
//! entries: `(endpoint, direction, remote identity, protocol, port prefix)` →
//! allow / deny, plus which endpoints are under default-deny and which CIDR
//! prefixes need identities in the ipcache.
//!
//! Pure: the same policies and endpoints always give the same entries, so a
//! restarted agent writes exactly what is already in the kernel.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use loupe_common::{
    POLICY_PREFIX_FULL, POLICY_PREFIX_L3, POLICY_PREFIX_PROTO, PolicyKey, PolicyValue, action,
    attribution, identity as id, policy_flags,
};
use loupe_proto::monitor;

use super::{Direction, Entity, L7Spec, Peer, PeerRule, Policy};
use crate::config::PolicyEnforcementMode;
use crate::endpoint::NAMESPACE_LABEL;
use crate::identity::IdentityError;

/// What compilation needs to know about an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    /// Endpoint number.
    pub id: u16,
    /// Namespace.
    pub namespace: String,
    /// Pod labels (plain Kubernetes keys).
    pub labels: BTreeMap<String, String>,
    /// Security identity.
    pub identity: u32,
    /// A pod on another node: a peer that policies name, never a subject here
    /// (its own node enforces its policy).
    pub remote: bool,
}

impl EndpointView {
    fn selector_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        l.insert(NAMESPACE_LABEL.into(), self.namespace.clone());
        l
    }
}

/// A policy map key in readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    /// Endpoint number.
    pub ep: u16,
    /// Datapath direction.
    pub dir: u8,
    /// Remote identity (0 = any).
    pub identity: u32,
    /// IP protocol (0 with an L3 prefix = any).
    pub proto: u8,
    /// Port (first port of an aligned block).
    pub port: u16,
    /// LPM prefix length over [`PolicyKey`].
    pub prefix_len: u32,
}

impl EntryKey {
    /// The kernel key in a policy generation.
    pub fn datapath(&self, generation: u8) -> PolicyKey {
        PolicyKey {
            generation,
            ep_id: self.ep.to_be_bytes(),
            dir: self.dir,
            identity: self.identity.to_be_bytes(),
            proto: self.proto,
            port: self.port.to_be_bytes(),
        }
    }
}

/// A port that carries L7 rules, for the L7 engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Port {
    /// Endpoint number.
    pub ep: u16,
    /// Direction.
    pub dir: Direction,
    /// Remote identities the rules apply to (`[0]` = any).
    pub identities: Vec<u32>,
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
    /// The rules.
    pub spec: L7Spec,
    /// The policy they come from (`namespace/name`).
    pub policy: String,
    /// The `log.value` of the policy rule they come from.
    pub log: Option<String>,
}

/// An allow without L7 rules that covers TCP ports (an L3-only rule covers them
/// all): on a port with L7 rules, it allows its peers everything at L7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4Allow {
    /// Endpoint number.
    pub ep: u16,
    /// Direction.
    pub dir: Direction,
    /// Remote identities (sorted; `[0]` = any).
    pub identities: Vec<u32>,
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
    /// The policy it comes from (`namespace/name`).
    pub policy: String,
    /// The `log.value` of the policy rule it comes from.
    pub log: Option<String>,
}

/// A policy entries are attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; `None` for a clusterwide policy.
    pub namespace: Option<String>,
}

/// One rule of a policy, as entries are attributed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSource {
    /// Index into [`Compiled::policies`].
    pub policy: u32,
    /// Its `log.value`.
    pub log: Option<String>,
}

/// What decides through one policy map entry: the rules whose entries merged into
/// it and how specific its key is. [`PolicyValue::rule`] is an index + 1 into
/// [`Compiled::attributions`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attribution {
    /// Indices into [`Compiled::rules`], ascending.
    pub rules: Vec<u32>,
    /// Cilium's policy match type ([`loupe_proto::monitor`]'s `POLICY_MATCH_*`).
    pub match_type: u32,
}

/// The result of compilation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Policy map entries.
    pub entries: BTreeMap<EntryKey, PolicyValue>,
    /// Per endpoint: (ingress enforced, egress enforced).
    pub enforcement: BTreeMap<u16, (bool, bool)>,
    /// CIDR prefixes named by policies and their identities (for the ipcache).
    pub cidrs: BTreeMap<IpNet, u32>,
    /// Ports with L7 rules.
    pub l7: Vec<L7Port>,
    /// Allows without L7 rules on TCP ports, for the L7 engine.
    pub l4_allows: Vec<L4Allow>,
    /// The policies entries are attributed to.
    pub policies: Vec<PolicyRef>,
    /// Their rules.
    pub rules: Vec<RuleSource>,
    /// What decides through each entry ([`PolicyValue::rule`] − 1).
    pub attributions: Vec<Attribution>,
    /// Which endpoints each policy selects.
    pub selected: BTreeMap<String, Vec<u16>>,
}

/// Compiles `policies` for `endpoints` into L3/L4 entries and the ports that carry
/// L7 rules (which of those the proxy enforces is decided after, by
/// [`super::l7::enforcement_flags`]). `cidr_identity` allocates the identity of a
/// CIDR prefix.
pub fn compile_rules(
    policies: &[Policy],
    endpoints: &[EndpointView],
    mode: PolicyEnforcementMode,
    allow_localhost: bool,
    cidr_identity: &mut dyn FnMut(&IpNet) -> Result<u32, IdentityError>,
) -> Result<Compiled, IdentityError> {
    let mut out = Compiled::default();
    for ep in endpoints.iter().filter(|e| !e.remote) {
        let all = mode == PolicyEnforcementMode::Always;
        out.enforcement.insert(ep.id, (all, all));
    }
    // Every prefix any policy names gets an identity first: selecting a prefix
    // means selecting every named prefix inside it.
    for policy in policies {
        for rule in &policy.rules {
            for peer_rule in rule
                .ingress
                .iter()
                .chain(&rule.ingress_deny)
                .chain(&rule.egress)
                .chain(&rule.egress_deny)
            {
                for peer in peer_rule.peers.iter().flatten() {
                    if let Peer::Cidr { net, except } = peer {
                        for p in std::iter::once(net).chain(except) {
                            if !out.cidrs.contains_key(p) {
                                out.cidrs.insert(*p, cidr_identity(p)?);
                            }
                        }
                    }
                }
            }
        }
    }
    if mode == PolicyEnforcementMode::Never {
        return Ok(out);
    }

    let mut sources = Sources::new();
    for policy in policies {
        let policy_index = u32::try_from(out.policies.len()).unwrap_or(u32::MAX);
        out.policies.push(PolicyRef {
            name: policy.name.clone(),
            namespace: policy.namespace.clone(),
        });
        let mut selected = BTreeSet::new();
        for rule in &policy.rules {
            out.rules.push(RuleSource {
                policy: policy_index,
                log: rule.log.clone(),
            });
            let source = Source {
                rule: u32::try_from(out.rules.len() - 1).unwrap_or(u32::MAX),
                log: rule.log.as_deref(),
            };
            for ep in endpoints.iter().filter(|e| !e.remote) {
                if !selects(policy, &rule.endpoint_selector, ep) {
                    continue;
                }
                selected.insert(ep.id);
                let enforcement = out.enforcement.entry(ep.id).or_insert((false, false));
                if rule.default_deny_ingress
                    && !(rule.ingress.is_empty() && rule.ingress_deny.is_empty())
                {
                    enforcement.0 = true;
                }
                if rule.default_deny_egress
                    && !(rule.egress.is_empty() && rule.egress_deny.is_empty())
                {
                    enforcement.1 = true;
                }
                for (list, dir, act) in [
                    (&rule.ingress, Direction::Ingress, action::ALLOW),
                    (&rule.ingress_deny, Direction::Ingress, action::DENY),
                    (&rule.egress, Direction::Egress, action::ALLOW),
                    (&rule.egress_deny, Direction::Egress, action::DENY),
                ] {
                    for peer_rule in list {
                        add_rule(
                            &mut out,
                            &mut sources,
                            policy,
                            ep,
                            dir,
                            act,
                            peer_rule,
                            endpoints,
                            &source,
                        );
                    }
                }
            }
        }
        out.selected
            .insert(policy.key(), selected.into_iter().collect());
    }
    deny_covered_allows(&mut out.entries, &mut sources);
    if allow_localhost {
        let enforced: Vec<u16> = out
            .enforcement
            .iter()
            .filter(|(_, e)| e.0)
            .map(|(ep, _)| *ep)
            .collect();
        for ep in enforced {
            let key = EntryKey {
                ep,
                dir: Direction::Ingress.datapath(),
                identity: id::HOST,
                proto: 0,
                port: 0,
                prefix_len: POLICY_PREFIX_L3,
            };
            merge(&mut out.entries, &mut sources, key, action::ALLOW, 0, None);
        }
    }
    attribute(&mut out, &sources);
    Ok(out)
}

/// The rules merged into each entry (indices into [`Compiled::rules`]).
type Sources = BTreeMap<EntryKey, BTreeSet<u32>>;

/// The rule entries are being added for.
struct Source<'a> {
    rule: u32,
    log: Option<&'a str>,
}

/// Gives every entry its attribution: equal attributions share one index.
/// Entries past what a flow event's tag can carry keep 0 (unattributed).
fn attribute(out: &mut Compiled, sources: &Sources) {
    let mut index: BTreeMap<Attribution, u32> = BTreeMap::new();
    for (key, value) in out.entries.iter_mut() {
        let attribution = Attribution {
            rules: sources
                .get(key)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            match_type: match_type(key),
        };
        value.rule = match index.get(&attribution) {
            Some(&i) => i,
            None if out.attributions.len() < attribution::MAX_RULE as usize => {
                out.attributions.push(attribution.clone());
                let i = u32::try_from(out.attributions.len()).unwrap_or(0);
                index.insert(attribution, i);
                i
            }
            None => 0,
        };
    }
}

/// Cilium's policy match type of an entry: which of peer, protocol and port its
/// key names.
fn match_type(key: &EntryKey) -> u32 {
    let l3 = key.identity != id::ANY;
    match (l3, key.prefix_len) {
        (true, POLICY_PREFIX_L3) => monitor::POLICY_MATCH_L3_ONLY,
        (true, POLICY_PREFIX_PROTO) => monitor::POLICY_MATCH_L3_PROTO,
        (true, _) => monitor::POLICY_MATCH_L3_L4,
        (false, POLICY_PREFIX_L3) => monitor::POLICY_MATCH_ALL,
        (false, POLICY_PREFIX_PROTO) => monitor::POLICY_MATCH_PROTO_ONLY,
        (false, _) => monitor::POLICY_MATCH_L4_ONLY,
    }
}

/// Whether a rule's endpoint selector selects `ep` (a namespaced policy selects
/// only in its namespace).
fn selects(policy: &Policy, selector: &super::LabelSelector, ep: &EndpointView) -> bool {
    if let Some(ns) = &policy.namespace
        && ep.namespace != *ns
    {
        return false;
    }
    selector.matches(&ep.selector_labels())
}

#[allow(clippy::too_many_arguments)]
fn add_rule(
    out: &mut Compiled,
    sources: &mut Sources,
    policy: &Policy,
    ep: &EndpointView,
    dir: Direction,
    act: u8,
    rule: &PeerRule,
    endpoints: &[EndpointView],
    source: &Source<'_>,
) {
    let identities: Vec<u32> = match &rule.peers {
        None if rule.ports.is_empty() && rule.icmps.is_empty() => return, // `{}`: deny all
        None => vec![id::ANY],
        Some(peers) => {
            let mut ids = BTreeSet::new();
            for peer in peers {
                peer_identities(policy, peer, endpoints, &out.cidrs, &mut ids);
            }
            ids.into_iter().collect()
        }
    };
    if identities.is_empty() {
        return;
    }
    let dir_n = dir.datapath();
    let base = |identity: u32| EntryKey {
        ep: ep.id,
        dir: dir_n,
        identity,
        proto: 0,
        port: 0,
        prefix_len: POLICY_PREFIX_L3,
    };
    if rule.ports.is_empty() && rule.icmps.is_empty() {
        for &identity in &identities {
            merge(
                &mut out.entries,
                sources,
                base(identity),
                act,
                0,
                Some(source.rule),
            );
        }
        if act == action::ALLOW {
            out.l4_allows.push(L4Allow {
                ep: ep.id,
                dir,
                identities,
                first: 0,
                last: u16::MAX,
                policy: policy.key(),
                log: source.log.map(str::to_owned),
            });
        }
        return;
    }
    for (ranges, l7) in &rule.ports {
        let flags = if l7.is_some() { policy_flags::L7 } else { 0 };
        for range in ranges {
            for &proto in range.protocol.numbers() {
                let blocks = if range.first == 0 {
                    vec![(0u16, POLICY_PREFIX_PROTO)]
                } else {
                    port_prefixes(range.first, range.last)
                };
                for &identity in &identities {
                    for &(port, prefix_len) in &blocks {
                        let key = EntryKey {
                            proto,
                            port,
                            prefix_len,
                            ..base(identity)
                        };
                        merge(
                            &mut out.entries,
                            sources,
                            key,
                            act,
                            flags,
                            Some(source.rule),
                        );
                    }
                }
            }
            if l7.is_none() && act == action::ALLOW && range.protocol.numbers().contains(&6) {
                out.l4_allows.push(L4Allow {
                    ep: ep.id,
                    dir,
                    identities: identities.clone(),
                    first: range.first,
                    last: if range.first == 0 {
                        u16::MAX
                    } else {
                        range.last
                    },
                    policy: policy.key(),
                    log: source.log.map(str::to_owned),
                });
            }
            if let Some(spec) = l7 {
                out.l7.push(L7Port {
                    ep: ep.id,
                    dir,
                    identities: identities.clone(),
                    first: range.first,
                    last: if range.first == 0 {
                        u16::MAX
                    } else {
                        range.last
                    },
                    spec: spec.clone(),
                    policy: policy.key(),
                    log: source.log.map(str::to_owned),
                });
            }
        }
    }
    for &(v6, ty) in &rule.icmps {
        let proto = if v6 { 58 } else { 1 };
        for &identity in &identities {
            let key = EntryKey {
                proto,
                port: u16::from(ty),
                prefix_len: POLICY_PREFIX_FULL,
                ..base(identity)
            };
            merge(&mut out.entries, sources, key, act, 0, Some(source.rule));
        }
    }
}

fn peer_identities(
    policy: &Policy,
    peer: &Peer,
    endpoints: &[EndpointView],
    cidrs: &BTreeMap<IpNet, u32>,
    ids: &mut BTreeSet<u32>,
) {
    match peer {
        Peer::Endpoints(sel) => {
            for ep in endpoints {
                // In a namespaced policy, a selector that does not name a namespace
                // selects only in the policy's namespace.
                if let Some(ns) = &policy.namespace
                    && !sel.mentions(NAMESPACE_LABEL)
                    && ep.namespace != *ns
                {
                    continue;
                }
                if sel.matches(&ep.selector_labels()) {
                    ids.insert(ep.identity);
                }
            }
        }
        Peer::Entity(entity) => match entity {
            Entity::All => {
                ids.insert(id::ANY);
            }
            Entity::World => {
                ids.extend([id::WORLD, id::WORLD_IPV4, id::WORLD_IPV6]);
                ids.extend(cidrs.values().copied());
            }
            Entity::Cluster => {
                ids.extend([
                    id::HOST,
                    id::REMOTE_NODE,
                    id::HEALTH,
                    id::INIT,
                    id::UNMANAGED,
                    id::KUBE_APISERVER,
                    id::INGRESS,
                ]);
                ids.extend(endpoints.iter().map(|e| e.identity));
            }
            Entity::Host => {
                ids.insert(id::HOST);
            }
            Entity::RemoteNode => {
                ids.insert(id::REMOTE_NODE);
            }
            Entity::Health => {
                ids.insert(id::HEALTH);
            }
            Entity::Init => {
                ids.insert(id::INIT);
            }
            Entity::Unmanaged => {
                ids.insert(id::UNMANAGED);
            }
            Entity::KubeApiserver => {
                ids.insert(id::KUBE_APISERVER);
            }
            Entity::Ingress => {
                ids.insert(id::INGRESS);
            }
        },
        Peer::Cidr { net, except } if net.prefix_len() == net.max_prefix_len() => {
            // A host prefix contains only itself: no scan (10,000 /32 rules stay fast).
            if let Some(identity) = cidrs.get(net).filter(|_| !except.contains(net)) {
                ids.insert(*identity);
            }
        }
        Peer::Cidr { net, except } => {
            for (prefix, identity) in cidrs {
                if net.contains(prefix) && !except.iter().any(|e| e.contains(prefix)) {
                    ids.insert(*identity);
                }
            }
            if net.prefix_len() == 0 {
                ids.extend([id::WORLD, id::WORLD_IPV4, id::WORLD_IPV6]);
            }
        }
    }
}

/// The kernel takes the longest match per lookup, so an allow for a narrower
/// prefix would hide a broader deny for the same identity (deny from X on every
/// port, allow from X on port 80). Such allows become denies: deny always wins.
fn deny_covered_allows(entries: &mut BTreeMap<EntryKey, PolicyValue>, sources: &mut Sources) {
    let denies: Vec<EntryKey> = entries
        .iter()
        .filter(|(_, v)| v.action == action::DENY)
        .map(|(k, _)| *k)
        .collect();
    if denies.is_empty() {
        return;
    }
    for (key, value) in entries.iter_mut() {
        if value.action == action::DENY {
            continue;
        }
        let covered = denies.iter().find(|d| {
            d.ep == key.ep
                && d.dir == key.dir
                && d.identity == key.identity
                && d.prefix_len < key.prefix_len
                && covers(d, key)
        });
        if let Some(deny) = covered {
            *value = PolicyValue {
                action: action::DENY,
                flags: 0,
                proxy_port: 0,
                rule: 0,
            };
            let by = sources.get(deny).cloned().unwrap_or_default();
            sources.insert(*key, by);
        }
    }
}

/// Whether `broad`'s prefix matches `narrow`'s key bits.
fn covers(broad: &EntryKey, narrow: &EntryKey) -> bool {
    let a = key_bits(broad);
    let b = key_bits(narrow);
    let shift = 88 - broad.prefix_len;
    (a >> shift) == (b >> shift)
}

fn key_bits(k: &EntryKey) -> u128 {
    let mut bytes = [0u8; 16];
    let key = k.datapath(0);
    bytes[5] = key.generation;
    bytes[6..8].copy_from_slice(&key.ep_id);
    bytes[8] = key.dir;
    bytes[9..13].copy_from_slice(&key.identity);
    bytes[13] = key.proto;
    bytes[14..16].copy_from_slice(&key.port);
    u128::from_be_bytes(bytes)
}

/// Adds an entry from `rule` (`None`: not from a policy); on a clash a deny
/// wins, and allows merge their flags and rules.
fn merge(
    entries: &mut BTreeMap<EntryKey, PolicyValue>,
    sources: &mut Sources,
    key: EntryKey,
    act: u8,
    flags: u8,
    rule: Option<u32>,
) {
    let value = entries.entry(key).or_insert(PolicyValue {
        action: act,
        flags,
        proxy_port: 0,
        rule: 0,
    });
    let by = sources.entry(key).or_default();
    if act == action::DENY && value.action != action::DENY {
        *value = PolicyValue {
            action: act,
            flags: 0,
            proxy_port: 0,
            rule: 0,
        };
        by.clear();
    } else if act == value.action {
        value.flags |= flags;
    } else {
        return;
    }
    by.extend(rule);
}

/// Splits `first..=last` into aligned power-of-two blocks: (start, LPM prefix length).
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        let mut size = 1u32;
        while lo % (size * 2) == 0 && lo + size * 2 - 1 <= hi && size < 1 << 16 {
            size *= 2;
        }
        let bits = 16 - size.trailing_zeros();
        out.push((
            u16::try_from(lo).unwrap_or(u16::MAX),
            POLICY_PREFIX_PROTO + bits,
        ));
        lo += size;
    }
    out
}
