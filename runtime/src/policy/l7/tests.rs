//! Table tests for the L7 engine: rule kinds, per-identity application, OR across
//! policies, visibility-only ports, Kafka roles and topics, schema validation.

use std::collections::BTreeMap;

use loupe_common::{POLICY_PREFIX_FULL, policy_flags};

use super::*;
use crate::config::PolicyEnforcementMode;
use crate::identity::IdentityAllocator;
use crate::plugin::{FieldSpec, FieldType};
use crate::policy::compile::EntryKey;
use crate::policy::{EndpointView, compile, parse_policies};

const FRONTEND: u32 = 1001;
const API: u32 = 1002;
const DB: u32 = 1003;
const OTHER: u32 = 1004;

fn ep(id: u16, app: &str, identity: u32) -> EndpointView {
    EndpointView {
        id,
        namespace: "demo".into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        identity,
        remote: false,
    }
}

fn endpoints() -> Vec<EndpointView> {
    vec![
        ep(1, "frontend", FRONTEND),
        ep(2, "api", API),
        ep(3, "db", DB),
        ep(4, "other", OTHER),
    ]
}

fn compiled(text: &str) -> Compiled {
    let policies = parse_policies("test.yaml", text).unwrap();
    let mut alloc = IdentityAllocator::in_memory();
    compile(
        &policies,
        &endpoints(),
        PolicyEnforcementMode::Default,
        true,
        &mut |p| alloc.cidr_identity(p),
    )
    .unwrap()
}

fn table(text: &str) -> L7Policy {
    L7Policy::build(&compiled(text), 1)
}

/// A policy on `app: api` with one ingress rule per `(from app, port, rules)`.
pub(crate) fn policy(name: &str, ingress: &[(&str, u16, &str)]) -> String {
    let mut out = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  \
         namespace: demo\nspec:\n  endpointSelector:\n    matchLabels:\n      app: api\n  ingress:\n"
    );
    for (from, port, rules) in ingress {
        out.push_str(&format!(
            "  - fromEndpoints:\n    - matchLabels:\n        app: {from}\n    toPorts:\n    \
             - ports:\n      - port: \"{port}\"\n        protocol: TCP\n"
        ));
        if !rules.is_empty() {
            out.push_str("      rules:\n");
            for line in rules.lines() {
                out.push_str(&format!("        {line}\n"));
            }
        }
    }
    out
}

/// A request over owned values.
#[derive(Default)]
pub(crate) struct Req {
    protocol: &'static str,
    fields: Vec<(&'static str, Owned)>,
    headers: Vec<(&'static str, &'static str)>,
}

enum Owned {
    Text(&'static str),
    Unsigned(u64),
}

impl Req {
    fn new(protocol: &'static str) -> Self {
        Self {
            protocol,
            ..Self::default()
        }
    }
    fn text(mut self, name: &'static str, v: &'static str) -> Self {
        self.fields.push((name, Owned::Text(v)));
        self
    }
    fn num(mut self, name: &'static str, v: u64) -> Self {
        self.fields.push((name, Owned::Unsigned(v)));
        self
    }
    fn header(mut self, name: &'static str, v: &'static str) -> Self {
        self.headers.push((name, v));
        self
    }
}

impl L7Request for Req {
    fn protocol(&self) -> &str {
        self.protocol
    }
    fn values(&self, name: &str) -> Vec<FieldValue<'_>> {
        self.fields
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| match v {
                Owned::Text(t) => FieldValue::Text(t.as_bytes()),
                Owned::Unsigned(n) => FieldValue::Unsigned(*n),
            })
            .collect()
    }
    fn headers(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
            .collect()
    }
}

pub(crate) fn http(method: &'static str, path: &'static str) -> Req {
    Req::new("http").text("method", method).text("path", path)
}

fn decide(t: &L7Policy, port: u16, from: u32, req: &Req) -> L7Decision {
    t.decide(2, Direction::Ingress, port, from, req)
}

fn allowed_by(policy: &str, rule: L7RuleRef) -> L7Decision {
    L7Decision::Allow(L7Match {
        policy: Arc::from(policy),
        rule,
        log: None,
    })
}

fn denied(policies: &[&str]) -> L7Decision {
    L7Decision::Deny(L7Denial {
        policies: policies.iter().map(|p| Arc::from(*p)).collect(),
        logs: Vec::new(),
    })
}

fn flags(c: &Compiled, identity: u32, port: u16) -> u8 {
    let key = EntryKey {
        ep: 2,
        dir: Direction::Ingress.datapath(),
        identity,
        proto: 6,
        port,
        prefix_len: POLICY_PREFIX_FULL,
    };
    c.entries.get(&key).map(|v| v.flags).unwrap_or(0xff)
}

pub(crate) const GET_GET: &str = "http:\n- method: GET\n  path: /get";

#[test]
fn http_method_and_path_are_anchored() {
    let t = table(&policy("p", &[("frontend", 80, GET_GET)]));
    let ok = allowed_by("demo/p", L7RuleRef::Http(0));
    assert_eq!(decide(&t, 80, FRONTEND, &http("GET", "/get")), ok);
    for (method, path) in [
        ("GETX", "/get"),
        ("XGET", "/get"),
        ("GET", "/get/x"),
        ("GET", "/getx"),
        ("POST", "/get"),
    ] {
        assert_eq!(
            decide(&t, 80, FRONTEND, &http(method, path)),
            denied(&["demo/p"]),
            "{method} {path}"
        );
    }
    // A request without the field does not match a rule that names it.
    assert_eq!(
        decide(&t, 80, FRONTEND, &Req::new("http").text("method", "GET")),
        denied(&["demo/p"])
    );
}

#[test]
fn http_regex_alternatives_stay_anchored() {
    let t = table(&policy(
        "p",
        &[("frontend", 80, "http:\n- method: GET|HEAD\n  path: /api/.*")],
    ));
    assert!(decide(&t, 80, FRONTEND, &http("HEAD", "/api/v1")).allowed());
    assert!(!decide(&t, 80, FRONTEND, &http("HEADER", "/api/v1")).allowed());
    assert!(!decide(&t, 80, FRONTEND, &http("GET", "/x/api/v1")).allowed());
}

#[test]
fn http_host_and_headers() {
    let rules = "http:\n- host: \"api\\\\.example\\\\.com(:80)?\"\n  headers:\n  - \"X-Token: s3cret\"\n  - X-Trace";
    let t = table(&policy("p", &[("frontend", 80, rules)]));
    let base = || http("GET", "/").text("host", "api.example.com");
    let full = base().header("x-token", "s3cret").header("X-TRACE", "1");
    assert!(
        decide(&t, 80, FRONTEND, &full).allowed(),
        "names are case-insensitive"
    );
    let with_port = http("GET", "/")
        .text("host", "api.example.com:80")
        .header("X-Token", "s3cret")
        .header("X-Trace", "");
    assert!(decide(&t, 80, FRONTEND, &with_port).allowed());
    let wrong_value = base().header("X-Token", "S3CRET").header("X-Trace", "1");
    assert!(
        !decide(&t, 80, FRONTEND, &wrong_value).allowed(),
        "values are exact"
    );
    let missing = base().header("X-Token", "s3cret");
    assert!(
        !decide(&t, 80, FRONTEND, &missing).allowed(),
        "presence is required"
    );
    let other_host = http("GET", "/")
        .text("host", "api.example.community")
        .header("X-Token", "s3cret")
        .header("X-Trace", "1");
    assert!(!decide(&t, 80, FRONTEND, &other_host).allowed());
}

#[test]
fn rules_apply_per_identity() {
    let t = table(&policy(
        "p",
        &[
            ("frontend", 80, "http:\n- method: GET"),
            ("db", 80, "http:\n- method: POST"),
        ],
    ));
    assert!(decide(&t, 80, FRONTEND, &http("GET", "/")).allowed());
    assert!(!decide(&t, 80, FRONTEND, &http("POST", "/")).allowed());
    assert!(decide(&t, 80, DB, &http("POST", "/")).allowed());
    assert!(!decide(&t, 80, DB, &http("GET", "/")).allowed());
    // A peer no rule names: denied (ingress is enforced), and no policy applied.
    assert_eq!(decide(&t, 80, OTHER, &http("GET", "/")), denied(&[]));
}

#[test]
fn rules_from_several_policies_are_ored() {
    let text = format!(
        "{}---\n{}",
        policy("reads", &[("frontend", 80, "http:\n- method: GET")]),
        policy("writes", &[("frontend", 80, "http:\n- method: POST")])
    );
    let t = table(&text);
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("GET", "/")),
        allowed_by("demo/reads", L7RuleRef::Http(0))
    );
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("POST", "/")),
        allowed_by("demo/writes", L7RuleRef::Http(0))
    );
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("DELETE", "/")),
        denied(&["demo/reads", "demo/writes"])
    );
}

#[test]
fn empty_rule_is_visibility_only() {
    let text = policy("p", &[("frontend", 80, "http:\n- {}"), ("db", 80, GET_GET)]);
    let c = compiled(&text);
    let t = L7Policy::build(&c, 1);
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("DELETE", "/anything")),
        allowed_by("demo/p", L7RuleRef::Http(0))
    );
    assert_eq!(
        t.mode(2, Direction::Ingress, 80, FRONTEND),
        Some(L7Mode::Visibility)
    );
    assert_eq!(t.mode(2, Direction::Ingress, 80, DB), Some(L7Mode::Enforce));
    assert_eq!(t.mode(2, Direction::Ingress, 81, DB), None);
    assert_eq!(flags(&c, FRONTEND, 80), policy_flags::L7);
    assert_eq!(
        flags(&c, DB, 80),
        policy_flags::L7 | policy_flags::L7_ENFORCE
    );
    assert_eq!(t.parser(2, Direction::Ingress, 80), Some(L7Parser::Http));
    // Empty strings and empty header lists are unset, as in Cilium.
    let c = compiled(&policy(
        "p",
        &[("frontend", 80, "http:\n- method: \"\"\n  headers: []")],
    ));
    let t = L7Policy::build(&c, 1);
    assert!(decide(&t, 80, FRONTEND, &http("PATCH", "/")).allowed());
    assert_eq!(flags(&c, FRONTEND, 80), policy_flags::L7);
    let c = compiled(&policy("p", &[("frontend", 9092, "kafka:\n- topic: \"\"")]));
    assert_eq!(flags(&c, FRONTEND, 9092), policy_flags::L7);
    // An empty rule next to restrictive ones allows everything too.
    let t = table(&policy(
        "p",
        &[("frontend", 80, "http:\n- method: GET\n- {}")],
    ));
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("PUT", "/")),
        allowed_by("demo/p", L7RuleRef::Http(1))
    );
    assert_eq!(
        t.mode(2, Direction::Ingress, 80, FRONTEND),
        Some(L7Mode::Visibility)
    );
}

#[test]
fn l4_only_rule_on_an_l7_port_allows_everything_at_l7() {
    // Same peer: one policy restricts, another allows the port without L7 rules.
    let text = format!(
        "{}---\n{}",
        policy("l7", &[("frontend", 80, GET_GET)]),
        policy("l4", &[("frontend", 80, "")])
    );
    let c = compiled(&text);
    let t = L7Policy::build(&c, 1);
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("DELETE", "/x")),
        allowed_by("demo/l4", L7RuleRef::L4Only)
    );
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("GET", "/get")),
        allowed_by("demo/l7", L7RuleRef::Http(0))
    );
    assert_eq!(
        t.mode(2, Direction::Ingress, 80, FRONTEND),
        Some(L7Mode::Visibility)
    );
    assert_eq!(
        flags(&c, FRONTEND, 80),
        policy_flags::L7,
        "observed, not enforced"
    );

    // Another peer allowed by an L4-only rule: everything, and no L7 on its entry.
    let c = compiled(&policy("p", &[("frontend", 80, GET_GET), ("db", 80, "")]));
    let t = L7Policy::build(&c, 1);
    assert_eq!(
        decide(&t, 80, DB, &http("POST", "/")),
        allowed_by("demo/p", L7RuleRef::L4Only)
    );
    assert!(!decide(&t, 80, FRONTEND, &http("POST", "/")).allowed());
    assert_eq!(flags(&c, DB, 80), 0);
    assert_eq!(
        flags(&c, FRONTEND, 80),
        policy_flags::L7 | policy_flags::L7_ENFORCE
    );
}

#[test]
fn l3_only_rule_allows_everything_at_l7() {
    let text = format!(
        "{}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: l3\n  \
         namespace: demo\nspec:\n  endpointSelector:\n    matchLabels:\n      app: api\n  \
         ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: frontend\n",
        policy("l7", &[("frontend", 80, GET_GET)])
    );
    let c = compiled(&text);
    let t = L7Policy::build(&c, 1);
    assert_eq!(
        decide(&t, 80, FRONTEND, &http("POST", "/")),
        allowed_by("demo/l3", L7RuleRef::L4Only)
    );
    assert_eq!(flags(&c, FRONTEND, 80), policy_flags::L7);
}

#[test]
fn ports_without_l7_rules_and_unenforced_directions_have_no_l7_policy() {
    let t = table(&policy("p", &[("frontend", 80, GET_GET)]));
    assert_eq!(
        decide(&t, 81, FRONTEND, &http("POST", "/")),
        L7Decision::NoPolicy
    );
    assert_eq!(
        t.decide(2, Direction::Egress, 80, FRONTEND, &http("POST", "/")),
        L7Decision::NoPolicy
    );
    assert_eq!(
        t.decide(3, Direction::Ingress, 80, FRONTEND, &http("POST", "/")),
        L7Decision::NoPolicy
    );
    // Ingress default-deny switched off: peers no rule names are not L7's business.
    let open = policy("p", &[("frontend", 80, GET_GET)]).replace(
        "  ingress:\n",
        "  enableDefaultDeny:\n    ingress: false\n  ingress:\n",
    );
    let t = table(&open);
    assert_eq!(
        decide(&t, 80, OTHER, &http("POST", "/")),
        L7Decision::NoPolicy
    );
    assert!(!decide(&t, 80, FRONTEND, &http("POST", "/")).allowed());
}

#[test]
fn wide_port_ranges_are_looked_up() {
    let text = policy("p", &[("frontend", 8000, GET_GET)])
        .replace("protocol: TCP\n", "endPort: 9000\n        protocol: TCP\n");
    let t = table(&text);
    assert!(decide(&t, 8500, FRONTEND, &http("GET", "/get")).allowed());
    assert!(!decide(&t, 8500, FRONTEND, &http("PUT", "/get")).allowed());
    assert_eq!(
        decide(&t, 9001, FRONTEND, &http("PUT", "/get")),
        L7Decision::NoPolicy
    );
    assert_eq!(
        t.mode(2, Direction::Ingress, 9000, FRONTEND),
        Some(L7Mode::Enforce)
    );

    // Blocks of the range are enforced, except one that an L4-only rule for the
    // same peer covers whole (one it covers in part still has restricted ports).
    let l4 = |name: &str, first: u16, last: u16| {
        policy(name, &[("frontend", first, "")]).replace(
            "protocol: TCP\n",
            &format!("endPort: {last}\n        protocol: TCP\n"),
        )
    };
    let c = compiled(&format!(
        "{text}---\n{}---\n{}",
        l4("whole", 8704, 8959),
        l4("part", 8192, 8447)
    ));
    let blocks = crate::policy::compile::port_prefixes(8000, 9000);
    assert!(
        blocks.contains(&(8704, POLICY_PREFIX_FULL - 8)),
        "{blocks:?}"
    );
    assert!(
        blocks.contains(&(8192, POLICY_PREFIX_FULL - 9)),
        "{blocks:?}"
    );
    for (port, prefix_len) in blocks {
        let key = EntryKey {
            ep: 2,
            dir: Direction::Ingress.datapath(),
            identity: FRONTEND,
            proto: 6,
            port,
            prefix_len,
        };
        let want = if port == 8704 {
            policy_flags::L7
        } else {
            policy_flags::L7 | policy_flags::L7_ENFORCE
        };
        assert_eq!(c.entries[&key].flags, want, "block {port}/{prefix_len}");
    }
}

fn kafka_req(api_key: u64, version: u64, client: &'static str) -> Req {
    Req::new("kafka")
        .num("api-key", api_key)
        .num("api-version", version)
        .text("client-id", client)
}

fn produce(topics: &[&'static str]) -> Req {
    let mut r = kafka_req(0, 7, "app").num("topics", topics.len() as u64);
    for t in topics {
        r = r.text("topic", t);
    }
    r
}

fn fetch(topic: &'static str) -> Req {
    kafka_req(1, 11, "app")
        .num("topics", 1)
        .text("topic", topic)
}

#[test]
fn kafka_roles() {
    let t = table(&policy(
        "p",
        &[
            ("frontend", 9092, "kafka:\n- role: produce\n  topic: orders"),
            ("db", 9092, "kafka:\n- role: Consume\n  topic: orders"),
        ],
    ));
    let ok = |from, req: &Req| decide(&t, 9092, from, req).allowed();
    // produce: Produce, Metadata, ApiVersions.
    assert!(ok(FRONTEND, &produce(&["orders"])));
    assert!(!ok(FRONTEND, &produce(&["payments"])));
    assert!(ok(
        FRONTEND,
        &kafka_req(3, 9, "app")
            .num("topics", 1)
            .text("topic", "orders")
    ));
    assert!(
        ok(FRONTEND, &kafka_req(18, 3, "app")),
        "ApiVersions names no topic"
    );
    assert!(!ok(FRONTEND, &fetch("orders")));
    assert!(
        !ok(FRONTEND, &kafka_req(22, 1, "app")),
        "InitProducerId is not in Cilium's produce role"
    );
    // consume: Fetch, offsets, group APIs, Metadata, ApiVersions.
    assert!(ok(DB, &fetch("orders")));
    assert!(!ok(DB, &fetch("payments")));
    assert!(!ok(DB, &produce(&["orders"])));
    for key in [10, 11, 12, 13, 14, 18] {
        assert!(ok(DB, &kafka_req(key, 1, "app")), "api key {key}");
    }
    assert!(!ok(DB, &kafka_req(19, 1, "app")), "CreateTopics");
    // OffsetCommit names topics; the parser did not report them, so a topic rule
    // cannot be checked and does not allow it.
    assert!(!ok(DB, &kafka_req(8, 1, "app")));
}

#[test]
fn kafka_every_topic_must_be_allowed() {
    let two = "kafka:\n- role: produce\n  topic: a\n- role: produce\n  topic: b";
    let t = table(&policy("p", &[("frontend", 9092, two)]));
    assert_eq!(
        decide(&t, 9092, FRONTEND, &produce(&["a", "b"])),
        allowed_by("demo/p", L7RuleRef::Kafka(1))
    );
    assert!(!decide(&t, 9092, FRONTEND, &produce(&["a", "c"])).allowed());
    // Two topics, only the first reported: the second cannot be checked.
    let partial = kafka_req(0, 7, "app").num("topics", 2).text("topic", "a");
    assert!(!decide(&t, 9092, FRONTEND, &partial).allowed());
    // Produce v13 names topics by id: no names at all, denied under topic rules.
    assert!(!decide(&t, 9092, FRONTEND, &kafka_req(0, 13, "app")).allowed());
    // A rule without a topic allows whatever topics.
    let t = table(&policy(
        "p",
        &[("frontend", 9092, "kafka:\n- apiKey: produce")],
    ));
    assert!(decide(&t, 9092, FRONTEND, &partial).allowed());
    assert!(decide(&t, 9092, FRONTEND, &produce(&["x", "y", "z"])).allowed());
}

#[test]
fn kafka_api_key_version_and_client_id() {
    let rule = "kafka:\n- apiKey: Fetch\n  apiVersion: \"11\"\n  clientID: consumer-1";
    let t = table(&policy("p", &[("frontend", 9092, rule)]));
    let ok = |req: &Req| decide(&t, 9092, FRONTEND, req).allowed();
    let fetch = |version, client| {
        kafka_req(1, version, client)
            .num("topics", 1)
            .text("topic", "t")
    };
    assert!(ok(&fetch(11, "consumer-1")));
    assert!(!ok(&fetch(10, "consumer-1")));
    assert!(!ok(&fetch(11, "consumer-2")));
    assert!(!ok(&fetch(11, "consumer-1x")));
    assert!(!ok(&kafka_req(0, 11, "consumer-1")));
    // Empty Kafka rule: visibility.
    let t = table(&policy("p", &[("frontend", 9092, "kafka:\n- {}")]));
    assert!(decide(&t, 9092, FRONTEND, &kafka_req(20, 4, "admin")).allowed());
    assert_eq!(
        t.mode(2, Direction::Ingress, 9092, FRONTEND),
        Some(L7Mode::Visibility)
    );
}

fn redis(command: &'static str, key: &'static str) -> Req {
    Req::new("redis").text("command", command).text("key", key)
}

#[test]
fn generic_rules() {
    let rules =
        "l7proto: redis\nl7:\n- command: GET|SET\n  key: \"user:.*\"\n- command: PING\n- db: \"0\"";
    let t = table(&policy("p", &[("frontend", 6379, rules)]));
    let d = |req: &Req| decide(&t, 6379, FRONTEND, req);
    assert_eq!(
        d(&redis("GET", "user:1")),
        allowed_by("demo/p", L7RuleRef::Generic(0))
    );
    assert!(
        !d(&redis("GET", "admin:1")).allowed(),
        "all fields of a map must match"
    );
    assert!(!d(&redis("GETDEL", "user:1")).allowed(), "anchored");
    assert!(!d(&redis("FLUSHALL", "user:1")).allowed());
    assert_eq!(
        d(&Req::new("redis").text("command", "PING")),
        allowed_by("demo/p", L7RuleRef::Generic(1))
    );
    // Unsigned values match in decimal.
    let select0 = Req::new("redis").text("command", "FLUSHDB").num("db", 0);
    assert_eq!(d(&select0), allowed_by("demo/p", L7RuleRef::Generic(2)));
    let select10 = Req::new("redis").text("command", "FLUSHDB").num("db", 10);
    assert!(!d(&select10).allowed());
    // A second value of a field cannot slip past the pattern.
    let twice = redis("GET", "user:1").text("key", "admin:1");
    assert!(!d(&twice).allowed());
    // Parsed by another plugin: restrictive rules do not match.
    let mut other = redis("GET", "user:1");
    other.protocol = "memcached";
    assert!(!d(&other).allowed());
    assert_eq!(
        t.parser(2, Direction::Ingress, 6379),
        Some(L7Parser::Plugin("redis".into()))
    );
    // `l7proto` alone, or `l7: [{}]`: visibility.
    for rules in ["l7proto: redis", "l7proto: redis\nl7:\n- {}"] {
        let t = table(&policy("p", &[("frontend", 6379, rules)]));
        assert!(
            decide(&t, 6379, FRONTEND, &redis("FLUSHALL", "")).allowed(),
            "{rules}"
        );
        assert_eq!(
            t.mode(2, Direction::Ingress, 6379, FRONTEND),
            Some(L7Mode::Visibility)
        );
    }
}

fn redis_schema() -> BTreeMap<String, Vec<FieldSpec>> {
    let f = |name: &str, ty| FieldSpec {
        name: name.into(),
        ty,
        repeated: false,
        description: String::new(),
    };
    BTreeMap::from([(
        "redis".to_string(),
        vec![
            f("command", FieldType::Text),
            f("key", FieldType::Text),
            f("db", FieldType::Unsigned),
        ],
    )])
}

#[test]
fn schema_validation_names_the_field_and_lists_the_schema() {
    let schemas = redis_schema();
    let ok = parse_policies(
        "ok.yaml",
        &policy(
            "p",
            &[(
                "frontend",
                6379,
                "l7proto: redis\nl7:\n- command: GET\n  db: \"1\"",
            )],
        ),
    )
    .unwrap();
    assert_eq!(validate_l7(&ok[0], &schemas), Ok(()));

    let bad_field = policy(
        "p",
        &[
            ("frontend", 80, GET_GET),
            (
                "db",
                6379,
                "l7proto: redis\nl7:\n- command: GET\n- cmd: SET",
            ),
        ],
    );
    let policies = parse_policies("bad.yaml", &bad_field).unwrap();
    let err = validate_l7(&policies[0], &schemas).unwrap_err();
    assert_eq!(err.field, "spec.ingress[1].toPorts[0].rules.l7[1].cmd");
    assert_eq!(
        err.message,
        "redis has no field \"cmd\"; its fields: command (text), key (text), db (unsigned)"
    );
    assert_eq!(err.policy, "demo/p");
    assert!(
        err.to_string()
            .starts_with("bad.yaml (demo/p): spec.ingress[1]"),
        "{err}"
    );

    let no_plugin = policy(
        "p",
        &[("frontend", 11211, "l7proto: memcached\nl7:\n- command: get")],
    );
    let policies = parse_policies("m.yaml", &no_plugin).unwrap();
    let err = validate_l7(&policies[0], &schemas).unwrap_err();
    assert_eq!(err.field, "spec.ingress[0].toPorts[0].rules.l7proto");
    assert_eq!(
        err.message,
        "no installed plugin parses \"memcached\" (installed: redis)"
    );
    let err = validate_l7(&policies[0], &BTreeMap::new()).unwrap_err();
    assert!(
        err.message.ends_with("(installed: none)"),
        "{}",
        err.message
    );
}

#[test]
fn schema_validation_walks_specs_and_egress() {
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: e\n  \
                namespace: demo\nspecs:\n- endpointSelector: {}\n- endpointSelector:\n    \
                matchLabels:\n      app: api\n  egress:\n  - toPorts:\n    - ports:\n      \
                - port: \"6379\"\n      rules:\n        l7proto: redis\n        l7:\n        \
                - key: x\n          reply: y\n";
    let policies = parse_policies("e.yaml", text).unwrap();
    let err = validate_l7(&policies[0], &redis_schema()).unwrap_err();
    assert_eq!(err.field, "specs[1].egress[0].toPorts[0].rules.l7[0].reply");
}

#[test]
fn parse_refuses_bad_kafka_and_header_rules() {
    for (rules, field, needle) in [
        (
            "kafka:\n- apiKey: produces",
            "kafka[0].apiKey",
            "unknown Kafka API key \"produces\"",
        ),
        (
            "kafka:\n- apiVersion: \"x\"",
            "kafka[0].apiVersion",
            "is not an API version",
        ),
        (
            "kafka:\n- topic: \"a b\"",
            "kafka[0].topic",
            "is not a topic name",
        ),
        (
            "kafka:\n- role: admin",
            "kafka[0].role",
            "is not produce or consume",
        ),
        (
            "kafka:\n- role: produce\n  apiKey: fetch",
            "kafka[0]",
            "not both",
        ),
        (
            "http:\n- headers:\n  - \"Bad Name: x\"",
            "http[0].headers[0]",
            "is not",
        ),
        ("http:\n- path: \"/(\"", "http[0].path", "invalid regex"),
        (
            "l7proto: redis\nl7:\n- command: \"(\"",
            "l7[0].command",
            "invalid regex",
        ),
    ] {
        let err = parse_policies("k.yaml", &policy("p", &[("frontend", 9092, rules)])).unwrap_err();
        assert_eq!(
            err.field,
            format!("spec.ingress[0].toPorts[0].rules.{field}"),
            "{rules}"
        );
        assert!(err.message.contains(needle), "{rules}: {}", err.message);
    }
}

#[test]
fn header_rules_split_as_cilium() {
    use super::rules::split_header;
    assert_eq!(split_header("X-Token: a b"), ("X-Token", Some("a b")));
    assert_eq!(split_header("X-Token true"), ("X-Token", Some("true")));
    assert_eq!(split_header("X-Token"), ("X-Token", None));
}

#[test]
fn http_headers_are_read_from_the_head() {
    let head =
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Token:  s3cret \r\nx-token: two\r\n\r\nX-Token: body\r\n";
    assert_eq!(
        request::http_headers(head, "X-TOKEN"),
        vec![&b"s3cret"[..], &b"two"[..]]
    );
    assert!(request::http_headers(head, "Cookie").is_empty());
}

#[test]
fn handle_publishes_new_tables() {
    let handle = L7PolicyHandle::default();
    let reader = handle.clone();
    assert!(reader.load().is_empty());
    let before = reader.load();
    handle.store(table(&policy("p", &[("frontend", 80, GET_GET)])));
    assert!(!reader.load().is_empty());
    assert!(
        before.is_empty(),
        "a loaded snapshot does not change under its reader"
    );
}

#[test]
fn plugin_messages_are_read_by_schema_name() {
    use crate::plugin::{
        Correlation, Direction as Dir, Field, Message, MessageKind, PluginInfo, Transport, Value,
    };

    let spec = |name: &str, ty| FieldSpec {
        name: name.into(),
        ty,
        repeated: false,
        description: String::new(),
    };
    let info = PluginInfo {
        name: "http".into(),
        version: "0.1.0".into(),
        protocol: "http".into(),
        default_ports: vec![80],
        transport: Transport::Stream,
        fields: vec![
            spec("method", FieldType::Text),
            spec("path", FieldType::Text),
            spec("host", FieldType::Text),
            spec("content-length", FieldType::Unsigned),
        ],
    };
    let head = b"GET /get?x=1 HTTP/1.1\r\nHost: api\r\nX-Token: s3cret\r\n\r\n";
    let message = Message {
        direction: Dir::ToServer,
        kind: MessageKind::Request,
        start: 0,
        bytes: bytes::Bytes::from_static(head),
        correlation: Correlation::Order(0),
        fields: vec![
            Field {
                id: 0,
                value: Value::Slice { offset: 0, len: 3 },
            },
            Field {
                id: 1,
                value: Value::Text("/get".into()),
            },
            Field {
                id: 2,
                value: Value::Slice { offset: 29, len: 3 },
            },
            Field {
                id: 3,
                value: Value::Unsigned(0),
            },
            // Outside the message: never read.
            Field {
                id: 2,
                value: Value::Slice {
                    offset: 500,
                    len: 3,
                },
            },
        ],
    };
    let req = PluginRequest {
        info: &info,
        message: &message,
    };
    assert_eq!(req.protocol(), "http");
    assert_eq!(req.values("method"), vec![FieldValue::Text(b"GET")]);
    assert_eq!(req.values("host"), vec![FieldValue::Text(b"api")]);
    assert_eq!(req.value("content-length"), Some(FieldValue::Unsigned(0)));
    assert!(req.values("status").is_empty());
    assert_eq!(req.headers("x-token"), vec![&b"s3cret"[..]]);

    let rules = "http:\n- method: GET\n  path: /get\n  host: api\n  headers: [\"X-Token: s3cret\"]";
    let t = table(&policy("p", &[("frontend", 80, rules)]));
    assert!(
        t.decide(2, Direction::Ingress, 80, FRONTEND, &req)
            .allowed()
    );
    let t = table(&policy(
        "p",
        &[("frontend", 80, "http:\n- headers: [\"X-Token: other\"]")],
    ));
    assert!(
        !t.decide(2, Direction::Ingress, 80, FRONTEND, &req)
            .allowed()
    );
}

#[test]
fn egress_rules_apply_to_the_destination_identity() {
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: out\n  \
                namespace: demo\nspec:\n  endpointSelector:\n    matchLabels:\n      app: frontend\n  \
                egress:\n  - toEndpoints:\n    - matchLabels:\n        app: api\n    toPorts:\n    \
                - ports:\n      - port: \"80\"\n        protocol: TCP\n      rules:\n        http:\n        \
                - method: GET\n";
    let c = compiled(text);
    let t = L7Policy::build(&c, 1);
    let d = |to, req: &Req| t.decide(1, Direction::Egress, 80, to, req);
    assert_eq!(
        d(API, &http("GET", "/")),
        allowed_by("demo/out", L7RuleRef::Http(0))
    );
    assert_eq!(d(API, &http("POST", "/")), denied(&["demo/out"]));
    assert_eq!(d(DB, &http("GET", "/")), denied(&[]));
    assert_eq!(
        t.decide(1, Direction::Ingress, 80, API, &http("POST", "/")),
        L7Decision::NoPolicy
    );
    assert_eq!(t.mode(1, Direction::Egress, 80, API), Some(L7Mode::Enforce));
}
