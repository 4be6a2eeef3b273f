//! Which policies decided a flow, as Hubble shows it since Cilium 1.18:
//! `ingress_allowed_by`, `egress_allowed_by`, `ingress_denied_by`,
//! `egress_denied_by` (name, namespace, labels, revision and kind of each policy),
//! `policy_log` (the `log.value`s of the deciding rules) and, for policy verdicts,
//! `policy_match_type`.
//!
//! The datapath names the deciding policy map entry in each event
//! ([`loupe_common::attribution`]); [`PolicyTable`] turns that entry's
//! [`Attribution`] into what the flow carries. The L7 engine names the policies
//! itself ([`Decided`] per direction).

use loupe_proto::flow::{Flow, Policy as FlowPolicy};

use super::Direction;
use super::compile::Compiled;

/// `kind` of a namespaced policy.
pub const KIND_CNP: &str = "CiliumNetworkPolicy";
/// `kind` of a clusterwide policy.
pub const KIND_CCNP: &str = "CiliumClusterwideNetworkPolicy";

/// A policy as flows name it, with Cilium's policy labels.
pub fn flow_policy(name: &str, namespace: Option<&str>, revision: u64) -> FlowPolicy {
    let kind = if namespace.is_some() {
        KIND_CNP
    } else {
        KIND_CCNP
    };
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={kind}"),
        format!("k8s:io.cilium.k8s.policy.name={name}"),
    ];
    if let Some(ns) = namespace {
        labels.push(format!("k8s:io.cilium.k8s.policy.namespace={ns}"));
    }
    FlowPolicy {
        name: name.to_string(),
        namespace: namespace.unwrap_or_default().to_string(),
        labels,
        revision,
        kind: kind.to_string(),
    }
}

/// A policy named by its key (`namespace/name`, or `name` when clusterwide).
pub fn flow_policy_by_key(key: &str, revision: u64) -> FlowPolicy {
    match key.split_once('/') {
        Some((ns, name)) => flow_policy(name, Some(ns), revision),
        None => flow_policy(key, None, revision),
    }
}

/// What decided in one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decided {
    /// The policies, each once.
    pub policies: Vec<FlowPolicy>,
    /// The distinct `log.value`s of the deciding rules.
    pub logs: Vec<String>,
    /// Cilium's policy match type of the deciding entry (0: none).
    pub match_type: u32,
}

impl Decided {
    /// Whether nothing is named.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.logs.is_empty()
    }

    /// Writes the attribution into `flow`: allowed-by or denied-by for `ingress`
    /// or egress, and the logs.
    pub fn record(&self, flow: &mut Flow, ingress: bool, denied: bool) {
        let list = match (ingress, denied) {
            (true, false) => &mut flow.ingress_allowed_by,
            (false, false) => &mut flow.egress_allowed_by,
            (true, true) => &mut flow.ingress_denied_by,
            (false, true) => &mut flow.egress_denied_by,
        };
        for p in &self.policies {
            if !list.contains(p) {
                list.push(p.clone());
            }
        }
        for log in &self.logs {
            if !flow.policy_log.contains(log) {
                flow.policy_log.push(log.clone());
            }
        }
    }
}

/// What decided a request at L7: the server's ingress rules and the client's
/// egress rules (either may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L7Attribution {
    /// The server's ingress policies.
    pub ingress: Decided,
    /// The client's egress policies.
    pub egress: Decided,
}

impl L7Attribution {
    /// The side of `dir`.
    pub fn side_mut(&mut self, dir: Direction) -> &mut Decided {
        match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    /// Writes both directions into `flow`.
    pub fn record(&self, flow: &mut Flow, denied: bool) {
        self.ingress.record(flow, true, denied);
        self.egress.record(flow, false, denied);
    }
}

/// One compiled policy generation's attributions, by [`loupe_common::PolicyValue::rule`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyTable {
    decided: Vec<Decided>,
}

impl PolicyTable {
    /// The table of `compiled`, with the policy repository's `revision`.
    pub fn build(compiled: &Compiled, revision: u64) -> Self {
        let policies: Vec<FlowPolicy> = compiled
            .policies
            .iter()
            .map(|p| flow_policy(&p.name, p.namespace.as_deref(), revision))
            .collect();
        let decided = compiled
            .attributions
            .iter()
            .map(|a| {
                let mut out = Decided {
                    match_type: a.match_type,
                    ..Decided::default()
                };
                for rule in a
                    .rules
                    .iter()
                    .filter_map(|&r| compiled.rules.get(r as usize))
                {
                    if let Some(p) = policies.get(rule.policy as usize)
                        && !out.policies.contains(p)
                    {
                        out.policies.push(p.clone());
                    }
                    if let Some(log) = &rule.log
                        && !out.logs.contains(log)
                    {
                        out.logs.push(log.clone());
                    }
                }
                out
            })
            .collect();
        Self { decided }
    }

    /// What entry `rule` (index + 1; 0 = none) attributes to.
    pub fn get(&self, rule: u32) -> Option<&Decided> {
        self.decided
            .get(usize::try_from(rule).ok()?.checked_sub(1)?)
    }
}
