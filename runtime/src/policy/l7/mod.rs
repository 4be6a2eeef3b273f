//! The L7 policy engine: the L7 part of a [`Compiled`] policy as a lookup table
//! (endpoint, direction, port) → the rule sets that apply to each remote identity,
//! and the decision for one parsed request.
//!
//! Semantics follow Cilium:
//! - rules from every policy selecting the endpoint are OR-ed;
//! - a peer allowed on an L7 port by a rule without L7 rules (L3-only or
//!   L3/L4-only) is allowed everything at L7 there (Cilium adds a wildcard L7
//!   rule for it);
//! - an empty rule (`http: [{}]`, `kafka: [{}]`, `l7: [{}]`) allows everything:
//!   the port is parsed for visibility only;
//! - HTTP `method`, `path`, `host` are regexes anchored at both ends; `headers`
//!   are `Name: value` (exact) or `Name` (present), names case-insensitive;
//! - Kafka `role` / `apiKey`, `apiVersion`, `clientID`, `topic` match exactly; every
//!   topic of a request must be allowed (by one rule or several);
//! - generic `l7` maps (field → anchored regex on the value's text form) need all
//!   their fields to match.
//!
//! [`L7PolicyHandle`] is the snapshot the controller publishes after every change
//! and the proxy reads on its own threads.

pub mod flags;
pub mod kafka;
pub mod request;
pub(crate) mod rules;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

pub use flags::enforcement_flags;
pub use request::{FieldValue, L7Request, PluginRequest};
pub use schema::{L7SchemaError, SchemaSource, validate_l7};

use self::rules::{GenericMatcher, HttpMatcher, KafkaMatcher, KafkaView};
use super::compile::{Compiled, L7Port};
use super::{Direction, L7Spec};

/// Ranges up to this many ports are indexed port by port; wider ones are scanned.
const EXPAND_RANGE: u32 = 64;

/// Which parser a port's rules need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum L7Parser {
    /// `rules.http`.
    Http,
    /// `rules.kafka`.
    Kafka,
    /// `rules.l7proto`: the plugin of that protocol.
    Plugin(String),
}

impl L7Parser {
    /// The protocol name a request parsed for these rules reports.
    pub fn protocol(&self) -> &str {
        match self {
            Self::Http => "http",
            Self::Kafka => "kafka",
            Self::Plugin(p) => p,
        }
    }
}

/// How much the L7 path must do for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Mode {
    /// Every rule that applies allows everything: parse a copy for flows only.
    Visibility,
    /// Some rule restricts requests: the connection goes through the proxy.
    Enforce,
}

/// The rule that decided, for a flow's policy attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7RuleRef {
    /// `rules.http[i]`.
    Http(usize),
    /// `rules.kafka[i]`.
    Kafka(usize),
    /// `rules.l7[i]`.
    Generic(usize),
    /// A rule without L7 rules allows this peer on this port (so everything at L7).
    L4Only,
}

impl std::fmt::Display for L7RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(i) => write!(f, "http[{i}]"),
            Self::Kafka(i) => write!(f, "kafka[{i}]"),
            Self::Generic(i) => write!(f, "l7[{i}]"),
            Self::L4Only => f.write_str("L3/L4 rule"),
        }
    }
}

/// An allowed request: which policy and rule allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Match {
    /// The policy (`namespace/name`).
    pub policy: Arc<str>,
    /// The rule in it.
    pub rule: L7RuleRef,
    /// The `log.value` of the policy rule it belongs to.
    pub log: Option<Arc<str>>,
}

/// A denied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Denial {
    /// The policies whose L7 rules applied to the peer and matched nothing
    /// (empty: nothing allows this peer on this port at all).
    pub policies: Vec<Arc<str>>,
    /// The distinct `log.value`s of their rules.
    pub logs: Vec<Arc<str>>,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L7Decision {
    /// No L7 rules on this port (or none that concern this peer while the
    /// direction is not enforced): L3/L4 policy alone decides.
    NoPolicy,
    /// Allowed.
    Allow(L7Match),
    /// Denied.
    Deny(L7Denial),
}

impl L7Decision {
    /// Whether the request may pass.
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::Deny(_))
    }
}

/// The compiled rules of one `toPorts[].rules` for some peers.
#[derive(Debug, Clone)]
struct RuleSet {
    policy: Arc<str>,
    log: Option<Arc<str>>,
    /// Sorted; `0` = any peer.
    identities: Vec<u32>,
    first: u16,
    last: u16,
    rules: Rules,
    /// Some rule is empty: the set allows everything.
    allows_all: bool,
}

#[derive(Debug, Clone)]
enum Rules {
    Http(Vec<HttpMatcher>),
    Kafka(Vec<KafkaMatcher>),
    Generic {
        protocol: String,
        rules: Vec<GenericMatcher>,
    },
}

impl RuleSet {
    fn new(port: &L7Port) -> Self {
        let mut identities = port.identities.clone();
        identities.sort_unstable();
        identities.dedup();
        // An empty list (`http: []`) restricts nothing, like `http: [{}]`.
        let rules = match &port.spec {
            L7Spec::Http(r) if r.is_empty() => {
                Rules::Http(vec![HttpMatcher::new(&Default::default())])
            }
            L7Spec::Http(r) => Rules::Http(r.iter().map(HttpMatcher::new).collect()),
            L7Spec::Kafka(r) if r.is_empty() => {
                Rules::Kafka(vec![KafkaMatcher::new(&Default::default())])
            }
            L7Spec::Kafka(r) => Rules::Kafka(r.iter().map(KafkaMatcher::new).collect()),
            L7Spec::Generic { protocol, rules } => Rules::Generic {
                protocol: protocol.clone(),
                rules: if rules.is_empty() {
                    vec![GenericMatcher::new(&BTreeMap::new())]
                } else {
                    rules.iter().map(GenericMatcher::new).collect()
                },
            },
        };
        let allows_all = match &rules {
            Rules::Http(r) => r.iter().any(HttpMatcher::is_empty),
            Rules::Kafka(r) => r.iter().any(KafkaMatcher::is_empty),
            Rules::Generic { rules, .. } => rules.iter().any(GenericMatcher::is_empty),
        };
        Self {
            policy: Arc::from(port.policy.as_str()),
            log: port.log.as_deref().map(Arc::from),
            identities,
            first: port.first,
            last: port.last,
            rules,
            allows_all,
        }
    }

    fn applies_to(&self, identity: u32) -> bool {
        covers(&self.identities, identity)
    }

    fn parser(&self) -> L7Parser {
        match &self.rules {
            Rules::Http(_) => L7Parser::Http,
            Rules::Kafka(_) => L7Parser::Kafka,
            Rules::Generic { protocol, .. } => L7Parser::Plugin(protocol.clone()),
        }
    }
}

/// Whether a sorted identity list selects `identity` (`0` selects every peer).
pub(crate) fn covers(identities: &[u32], identity: u32) -> bool {
    identities.first() == Some(&loupe_common::identity::ANY)
        || identities.binary_search(&identity).is_ok()
}

/// Ports `first..=last` allowed without L7 rules by a policy (and the rule's log).
type PortsAllowed = (u16, u16, Arc<str>, Option<Arc<str>>);

/// The L7 rules of a compiled policy, ready for lookups.
#[derive(Debug, Clone, Default)]
pub struct L7Policy {
    sets: Vec<RuleSet>,
    /// (endpoint, direction, port) → indexes into `sets`.
    ports: HashMap<(u16, Direction, u16), Vec<usize>>,
    /// Wide port ranges, scanned: (endpoint, direction) → indexes into `sets`.
    ranges: HashMap<(u16, Direction), Vec<usize>>,
    /// Allows without L7 rules covering TCP ports of endpoints that have L7 rules:
    /// (endpoint, direction, identity) → (first, last, policy).
    l4: HashMap<(u16, Direction, u32), Vec<PortsAllowed>>,
    /// (endpoint, direction) under default-deny.
    enforced: HashMap<(u16, Direction), bool>,
    /// The policy repository's revision these rules come from.
    revision: u64,
}

impl L7Policy {
    /// Builds the table from a compilation (regexes are compiled here, once).
    pub fn build(compiled: &Compiled, revision: u64) -> Self {
        let mut out = Self {
            revision,
            ..Self::default()
        };
        for port in &compiled.l7 {
            let index = out.sets.len();
            let set = RuleSet::new(port);
            let key = (port.ep, port.dir);
            if u32::from(set.last).saturating_sub(u32::from(set.first)) < EXPAND_RANGE {
                for p in set.first..=set.last {
                    out.ports
                        .entry((port.ep, port.dir, p))
                        .or_default()
                        .push(index);
                }
            } else {
                out.ranges.entry(key).or_default().push(index);
            }
            out.sets.push(set);
        }
        let with_l7: std::collections::HashSet<(u16, Direction)> =
            compiled.l7.iter().map(|p| (p.ep, p.dir)).collect();
        for allow in &compiled.l4_allows {
            if !with_l7.contains(&(allow.ep, allow.dir)) {
                continue;
            }
            let policy: Arc<str> = Arc::from(allow.policy.as_str());
            let log: Option<Arc<str>> = allow.log.as_deref().map(Arc::from);
            for &identity in &allow.identities {
                out.l4
                    .entry((allow.ep, allow.dir, identity))
                    .or_default()
                    .push((allow.first, allow.last, policy.clone(), log.clone()));
            }
        }
        for (&ep, &(ingress, egress)) in &compiled.enforcement {
            out.enforced.insert((ep, Direction::Ingress), ingress);
            out.enforced.insert((ep, Direction::Egress), egress);
        }
        out
    }

    /// The policy repository's revision these rules come from.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether there are no L7 rules at all.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Every rule set on `port`, whoever the peer.
    fn sets_at(&self, ep: u16, dir: Direction, port: u16) -> impl Iterator<Item = &RuleSet> {
        let exact = self
            .ports
            .get(&(ep, dir, port))
            .into_iter()
            .flatten()
            .map(|&i| &self.sets[i]);
        let wide = self
            .ranges
            .get(&(ep, dir))
            .into_iter()
            .flatten()
            .map(|&i| &self.sets[i])
            .filter(move |s| s.first <= port && port <= s.last);
        exact.chain(wide)
    }

    /// The policy of a rule without L7 rules that allows `identity` on `port`.
    fn l4_allow(&self, ep: u16, dir: Direction, port: u16, identity: u32) -> Option<&PortsAllowed> {
        let any = loupe_common::identity::ANY;
        [identity, any]
            .into_iter()
            .take(if identity == any { 1 } else { 2 })
            .filter_map(|id| self.l4.get(&(ep, dir, id)))
            .flatten()
            .find(|(first, last, _, _)| *first <= port && port <= *last)
    }

    /// The parser the rules of `port` need (`None`: no L7 rules there). When
    /// policies disagree, the first one's parser is returned; requests parsed
    /// otherwise fail the others' restrictive rules.
    pub fn parser(&self, ep: u16, dir: Direction, port: u16) -> Option<L7Parser> {
        self.sets_at(ep, dir, port).next().map(RuleSet::parser)
    }

    /// Whether connections from / to `identity` on `port` need the proxy
    /// ([`L7Mode::Enforce`]) or only a copy for visibility; `None` when the port
    /// has no L7 rules.
    pub fn mode(&self, ep: u16, dir: Direction, port: u16, identity: u32) -> Option<L7Mode> {
        let mut any = false;
        let mut restrictive = false;
        let mut allows_all = false;
        for set in self.sets_at(ep, dir, port) {
            any = true;
            if set.applies_to(identity) {
                restrictive |= !set.allows_all;
                allows_all |= set.allows_all;
            }
        }
        if !any {
            return None;
        }
        if restrictive && !allows_all && self.l4_allow(ep, dir, port, identity).is_none() {
            Some(L7Mode::Enforce)
        } else {
            Some(L7Mode::Visibility)
        }
    }

    /// Decides one request from `remote_identity` (the source on ingress, the
    /// destination on egress) to `port` of endpoint `ep`.
    pub fn decide(
        &self,
        ep: u16,
        dir: Direction,
        port: u16,
        remote_identity: u32,
        request: &dyn L7Request,
    ) -> L7Decision {
        let mut at_port = self.sets_at(ep, dir, port).peekable();
        if at_port.peek().is_none() {
            return L7Decision::NoPolicy;
        }
        let applicable: Vec<&RuleSet> = at_port.filter(|s| s.applies_to(remote_identity)).collect();
        if let Some(found) = match_rules(&applicable, request) {
            return L7Decision::Allow(found);
        }
        if let Some((_, _, policy, log)) = self.l4_allow(ep, dir, port, remote_identity) {
            return L7Decision::Allow(L7Match {
                policy: policy.clone(),
                rule: L7RuleRef::L4Only,
                log: log.clone(),
            });
        }
        if applicable.is_empty() && !self.enforced.get(&(ep, dir)).copied().unwrap_or(false) {
            return L7Decision::NoPolicy;
        }
        let mut policies: Vec<Arc<str>> = Vec::new();
        for set in &applicable {
            if !policies.contains(&set.policy) {
                policies.push(set.policy.clone());
            }
        }
        let mut logs: Vec<Arc<str>> = Vec::new();
        for log in applicable.iter().filter_map(|s| s.log.as_ref()) {
            if !logs.contains(log) {
                logs.push(log.clone());
            }
        }
        L7Decision::Deny(L7Denial { policies, logs })
    }
}

/// The first rule (in policy order) that allows the request.
fn match_rules(sets: &[&RuleSet], req: &dyn L7Request) -> Option<L7Match> {
    let found = |set: &RuleSet, rule| {
        Some(L7Match {
            policy: set.policy.clone(),
            rule,
            log: set.log.clone(),
        })
    };
    let protocol = req.protocol();
    let mut kafka_rules: Vec<(&RuleSet, usize, &KafkaMatcher)> = Vec::new();
    for set in sets {
        match &set.rules {
            Rules::Http(rules) => {
                for (i, rule) in rules.iter().enumerate() {
                    if rule.is_empty() || (protocol == "http" && rule.matches(req)) {
                        return found(set, L7RuleRef::Http(i));
                    }
                }
            }
            Rules::Generic { protocol: p, rules } => {
                for (i, rule) in rules.iter().enumerate() {
                    if rule.is_empty() || (protocol == p && rule.matches(req)) {
                        return found(set, L7RuleRef::Generic(i));
                    }
                }
            }
            Rules::Kafka(rules) => {
                for (i, rule) in rules.iter().enumerate() {
                    if rule.is_empty() {
                        return found(set, L7RuleRef::Kafka(i));
                    }
                    kafka_rules.push((set, i, rule));
                }
            }
        }
    }
    if kafka_rules.is_empty() || protocol != "kafka" {
        return None;
    }
    let view = KafkaView::new(req);
    // A rule without a topic, or a request naming no topic, needs only the header
    // to match.
    let no_topics = view.topics.is_empty() && view.topics_complete;
    for (set, i, rule) in &kafka_rules {
        if (rule.topic.is_none() || no_topics) && rule.matches_header(&view) {
            return found(set, L7RuleRef::Kafka(*i));
        }
    }
    if !view.topics_complete {
        return None;
    }
    // Every topic must be allowed, possibly by different rules.
    let mut uncovered = view.topics.clone();
    for (set, i, rule) in &kafka_rules {
        let Some(topic) = &rule.topic else { continue };
        if let Some(pos) = uncovered.iter().position(|t| *t == topic.as_bytes())
            && rule.matches_header(&view)
        {
            uncovered.swap_remove(pos);
            if uncovered.is_empty() {
                return found(set, L7RuleRef::Kafka(*i));
            }
        }
    }
    None
}

/// The latest [`L7Policy`], shared between the controller (writer) and the
/// proxy (readers on other threads). Loading is one short read lock and an
/// `Arc` clone.
#[derive(Debug, Clone, Default)]
pub struct L7PolicyHandle(Arc<RwLock<Arc<L7Policy>>>);

impl L7PolicyHandle {
    /// The current table.
    pub fn load(&self) -> Arc<L7Policy> {
        // A poisoned lock only means a writer panicked between statements; the
        // value inside is always a complete table.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the table.
    pub fn store(&self, policy: L7Policy) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }
}

#[cfg(test)]
pub(crate) mod tests;
