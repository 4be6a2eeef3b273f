//! The datapath's view of L7 rules: which policy entries carry L7 rules
//! ([`policy_flags::L7`]: the payload goes to the L7 path) and which of those
//! must be enforced ([`policy_flags::L7_ENFORCE`]: the connection goes through
//! the proxy) rather than merely copied for visibility.

use std::collections::HashMap;

use loupe_common::{POLICY_PREFIX_PROTO, action, policy_flags};

use super::covers;
use super::rules::{http_rule_is_empty, kafka_rule_is_empty};
use crate::policy::compile::{Compiled, EntryKey, L4Allow, L7Port};
use crate::policy::{Direction, L7Spec};

/// Whether a port's L7 rules allow everything (an empty rule, or no rules).
pub fn allows_all(spec: &L7Spec) -> bool {
    match spec {
        L7Spec::Http(r) => r.is_empty() || r.iter().any(http_rule_is_empty),
        L7Spec::Kafka(r) => r.is_empty() || r.iter().any(kafka_rule_is_empty),
        L7Spec::Generic { rules, .. } => rules.is_empty() || rules.iter().any(|r| r.is_empty()),
    }
}

/// Sets [`policy_flags::L7_ENFORCE`] on every allow entry with
/// [`policy_flags::L7`] for which, at some port of its block, a restrictive L7
/// rule applies to the entry's identity and neither an empty rule nor an allow
/// without L7 rules does (those make everything at L7 allowed, as in Cilium).
pub fn enforcement_flags(compiled: &mut Compiled) {
    type Group<'a> = (Vec<&'a L7Port>, Vec<&'a L4Allow>);
    let mut groups: HashMap<(u16, u8), Group<'_>> = HashMap::new();
    for port in &compiled.l7 {
        groups
            .entry((port.ep, port.dir.datapath()))
            .or_default()
            .0
            .push(port);
    }
    for allow in &compiled.l4_allows {
        if let Some(group) = groups.get_mut(&(allow.ep, allow.dir.datapath())) {
            group.1.push(allow);
        }
    }
    let mut enforce = Vec::new();
    for (key, value) in &compiled.entries {
        if value.action != action::ALLOW || value.flags & policy_flags::L7 == 0 {
            continue;
        }
        let Some((ports, allows)) = groups.get(&(key.ep, key.dir)) else {
            continue;
        };
        if block_enforced(key, ports, allows) {
            enforce.push(*key);
        }
    }
    for key in enforce {
        if let Some(value) = compiled.entries.get_mut(&key) {
            value.flags |= policy_flags::L7_ENFORCE;
        }
    }
}

/// The ports an entry's key covers.
fn block(key: &EntryKey) -> (u16, u16) {
    if key.prefix_len <= POLICY_PREFIX_PROTO {
        return (0, u16::MAX);
    }
    let wild = 16u32.saturating_sub(key.prefix_len - POLICY_PREFIX_PROTO);
    let size = 1u32 << wild;
    let last = (u32::from(key.port) + size - 1).min(u32::from(u16::MAX));
    (key.port, u16::try_from(last).unwrap_or(u16::MAX))
}

fn block_enforced(key: &EntryKey, ports: &[&L7Port], allows: &[&L4Allow]) -> bool {
    let (first, last) = block(key);
    // What applies changes only where a range starts or ends.
    let mut points = vec![first];
    for (a, b) in ports
        .iter()
        .map(|p| (p.first, p.last))
        .chain(allows.iter().map(|a| (a.first, a.last)))
    {
        for p in [Some(a), b.checked_add(1)].into_iter().flatten() {
            if first < p && p <= last {
                points.push(p);
            }
        }
    }
    points.sort_unstable();
    points.dedup();
    let dir = if key.dir == Direction::Ingress.datapath() {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    points.into_iter().any(|p| {
        let mut restrictive = false;
        for port in ports
            .iter()
            .filter(|l| l.dir == dir && l.first <= p && p <= l.last)
        {
            if covers(&port.identities, key.identity) {
                if allows_all(&port.spec) {
                    return false;
                }
                restrictive = true;
            }
        }
        restrictive
            && !allows
                .iter()
                .any(|a| a.first <= p && p <= a.last && covers(&a.identities, key.identity))
    })
}
