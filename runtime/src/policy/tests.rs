//! Table tests for parsing and compiling policies.

use std::collections::BTreeMap;

use loupe_common::{
    POLICY_PREFIX_FULL, POLICY_PREFIX_L3, POLICY_PREFIX_PROTO, action, identity as id,
};

use super::compile::{EntryKey, port_prefixes};
use super::*;
use crate::config::PolicyEnforcementMode;
use crate::identity::IdentityAllocator;

/// The article's policies, verbatim.
const API_ALLOW_FRONTEND: &str = r#"
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "api-allow-frontend"
      namespace: demo-app
    spec:
      endpointSelector:
        matchLabels:
          app: api-service
      ingress:
      - fromEndpoints:
        - matchLabels:
            app: frontend
        toPorts:
        - ports:
          - port: "80"
            protocol: TCP
          rules:
            http:
            - method: "GET"
              path: "/get"
"#;

const DB_ALLOW_API: &str = r#"
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "db-allow-api-service"
      namespace: demo-app
    spec:
      endpointSelector:
        matchLabels:
          app: db-service
      ingress:
      - fromEndpoints:
        - matchLabels:
            app: api-service
        toPorts:
        - ports:
          - port: "6379"
            protocol: TCP
"#;

fn ep(id_: u16, ns: &str, app: &str, identity: u32) -> EndpointView {
    EndpointView {
        id: id_,
        namespace: ns.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        identity,
        remote: false,
    }
}

fn demo() -> Vec<EndpointView> {
    vec![
        ep(1, "demo-app", "frontend", 1001),
        ep(2, "demo-app", "api-service", 1002),
        ep(3, "demo-app", "db-service", 1003),
        ep(4, "other", "frontend", 1004),
    ]
}

fn compile_text(text: &str, mode: PolicyEnforcementMode) -> Compiled {
    let policies = parse_policies("test.yaml", text).unwrap();
    let mut alloc = IdentityAllocator::in_memory();
    compile(&policies, &demo(), mode, true, &mut |p| {
        alloc.cidr_identity(p)
    })
    .unwrap()
}

fn key(ep: u16, dir: Direction, identity: u32, proto: u8, port: u16, prefix_len: u32) -> EntryKey {
    EntryKey {
        ep,
        dir: dir.datapath(),
        identity,
        proto,
        port,
        prefix_len,
    }
}

fn action_of(c: &Compiled, k: EntryKey) -> Option<u8> {
    c.entries.get(&k).map(|v| v.action)
}

#[test]
fn article_db_policy_compiles_to_one_allow_and_host() {
    let c = compile_text(DB_ALLOW_API, PolicyEnforcementMode::Default);
    assert_eq!(c.enforcement[&3], (true, false));
    assert_eq!(c.enforcement[&2], (false, false));
    let allow = key(3, Direction::Ingress, 1002, 6, 6379, POLICY_PREFIX_FULL);
    assert_eq!(action_of(&c, allow), Some(action::ALLOW));
    let host = key(3, Direction::Ingress, id::HOST, 0, 0, POLICY_PREFIX_L3);
    assert_eq!(action_of(&c, host), Some(action::ALLOW));
    // The frontend in another namespace has the same labels but is not selected.
    assert_eq!(c.entries.len(), 2, "{:#?}", c.entries);
    assert_eq!(c.selected["demo-app/db-allow-api-service"], vec![3]);
}

#[test]
fn pods_on_other_nodes_are_peers_never_subjects() {
    // The api-service on this node; the db-service and the frontend on others.
    let mut endpoints = demo();
    for e in &mut endpoints {
        e.remote = e.id != 2;
    }
    // Remote views carry no endpoint number of this node.
    for e in endpoints.iter_mut().filter(|e| e.remote) {
        e.id = 0;
    }
    let policies = parse_policies(
        "test.yaml",
        &format!("{DB_ALLOW_API}---\n{API_ALLOW_FRONTEND}"),
    )
    .unwrap();
    let mut alloc = IdentityAllocator::in_memory();
    let c = compile(
        &policies,
        &endpoints,
        PolicyEnforcementMode::Default,
        true,
        &mut |p| alloc.cidr_identity(p),
    )
    .unwrap();
    // The remote frontend's identity is allowed into the local api-service.
    let k = key(2, Direction::Ingress, 1001, 6, 80, POLICY_PREFIX_FULL);
    assert_eq!(action_of(&c, k), Some(action::ALLOW));
    // The db policy selects no pod here: no entries, no enforcement for number 0.
    assert_eq!(c.enforcement.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert!(c.entries.keys().all(|k| k.ep == 2), "{:#?}", c.entries);
    assert!(c.selected["demo-app/db-allow-api-service"].is_empty());
}

#[test]
fn article_http_policy_marks_the_port_for_l7() {
    let c = compile_text(API_ALLOW_FRONTEND, PolicyEnforcementMode::Default);
    let k = key(2, Direction::Ingress, 1001, 6, 80, POLICY_PREFIX_FULL);
    // `GET /get` restricts requests: the connection is enforced, not only observed.
    assert_eq!(
        c.entries[&k].flags,
        loupe_common::policy_flags::L7 | loupe_common::policy_flags::L7_ENFORCE
    );
    assert_eq!(c.l7.len(), 1);
    assert!(matches!(&c.l7[0].spec, L7Spec::Http(r) if r[0].method.as_deref() == Some("GET")));
}

#[test]
fn enforcement_modes() {
    let never = compile_text(DB_ALLOW_API, PolicyEnforcementMode::Never);
    assert!(never.entries.is_empty());
    assert!(never.enforcement.values().all(|e| *e == (false, false)));
    let always = compile_text(DB_ALLOW_API, PolicyEnforcementMode::Always);
    assert!(always.enforcement.values().all(|e| *e == (true, true)));
}

#[test]
fn deny_beats_allow_even_for_narrower_allows() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mixed, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;
    let c = compile_text(text, PolicyEnforcementMode::Default);
    assert_eq!(
        action_of(
            &c,
            key(3, Direction::Ingress, 1001, 6, 6379, POLICY_PREFIX_FULL)
        ),
        Some(action::DENY)
    );
    assert_eq!(
        action_of(&c, key(3, Direction::Ingress, 1001, 0, 0, POLICY_PREFIX_L3)),
        Some(action::DENY)
    );
}

#[test]
fn entities_cidrs_ranges_and_egress() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEntities: [host]
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
    toPorts: [{ports: [{port: "8000", endPort: 8003, protocol: UDP}]}]
  - toEndpoints: [{}]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
  - icmps: [{fields: [{type: 8}]}]
"#;
    let c = compile_text(text, PolicyEnforcementMode::Default);
    assert_eq!(c.enforcement[&1], (false, true));
    assert!(
        c.entries
            .contains_key(&key(1, Direction::Egress, id::HOST, 0, 0, POLICY_PREFIX_L3))
    );
    let wide = c.cidrs[&"10.0.0.0/8".parse().unwrap()];
    let except = c.cidrs[&"10.96.0.0/12".parse().unwrap()];
    assert!(c.entries.contains_key(&key(
        1,
        Direction::Egress,
        wide,
        17,
        8000,
        POLICY_PREFIX_PROTO + 14
    )));
    assert!(!c.entries.keys().any(|k| k.identity == except));
    // `{}` selects every endpoint of the namespace, on TCP, UDP and SCTP.
    for identity in [1001, 1002, 1003] {
        for proto in [6, 17, 132] {
            assert!(c.entries.contains_key(&key(
                1,
                Direction::Egress,
                identity,
                proto,
                53,
                POLICY_PREFIX_FULL
            )));
        }
    }
    assert!(!c.entries.keys().any(|k| k.identity == 1004));
    assert!(c.entries.contains_key(&key(
        1,
        Direction::Egress,
        id::ANY,
        1,
        8,
        POLICY_PREFIX_FULL
    )));
}

#[test]
fn world_and_all_entities() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ents, namespace: demo-app}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [world]
  - fromEntities: [all]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;
    let c = compile_text(text, PolicyEnforcementMode::Default);
    assert!(c.entries.contains_key(&key(
        1,
        Direction::Ingress,
        id::WORLD,
        0,
        0,
        POLICY_PREFIX_L3
    )));
    assert!(c.entries.contains_key(&key(
        2,
        Direction::Ingress,
        id::ANY,
        6,
        443,
        POLICY_PREFIX_FULL
    )));
    // Selecting `{}` in demo-app does not reach the other namespace.
    assert!(!c.enforcement[&4].0);
}

#[test]
fn empty_ingress_rule_is_default_deny() {
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny, namespace: demo-app}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n";
    let c = compile_text(text, PolicyEnforcementMode::Default);
    assert_eq!(c.enforcement[&1], (true, false));
    // Only the host stays allowed.
    assert!(c.entries.keys().all(|k| k.identity == id::HOST));
}

#[test]
fn port_ranges_split_into_aligned_prefixes() {
    let p = POLICY_PREFIX_PROTO;
    assert_eq!(port_prefixes(80, 80), vec![(80, p + 16)]);
    assert_eq!(port_prefixes(8000, 8003), vec![(8000, p + 14)]);
    assert_eq!(port_prefixes(1, 3), vec![(1, p + 16), (2, p + 15)]);
    assert_eq!(port_prefixes(1, 65535).len(), 16);
    let covered: u32 = port_prefixes(1000, 2000)
        .iter()
        .map(|(_, l)| 1 << (p + 16 - l))
        .sum();
    assert_eq!(covered, 1001);
}

fn err(text: &str) -> String {
    parse_policies("p.yaml", text).unwrap_err().to_string()
}

#[test]
fn bad_input_is_refused_with_document_path_and_reason() {
    let good = DB_ALLOW_API;
    let cases = [
        (
            good.replace("port: \"6379\"", "port: \"70000\""),
            "spec.ingress[0].toPorts[0].ports[0].port: 70000 is not a port",
        ),
        (
            good.replace("protocol: TCP", "protocol: ICMPX"),
            "spec.ingress[0].toPorts[0].ports[0].protocol: unknown protocol \"ICMPX\"",
        ),
        (
            good.replace("fromEndpoints:", "fromEndpoint:"),
            "unknown field `fromEndpoint`",
        ),
        // A bad top-level key, even an empty one, is the document's (found by the
        // `policy` fuzz target: the error named no field).
        (
            "{\"\": 1, \"kind\": \"CiliumNetworkPolicy\"}".to_string(),
            "document 0: (document): unknown field ``",
        ),
        (
            good.replace(
                "matchLabels:\n            app: api-service",
                "matchExpressions: [{key: app, operator: In}]",
            ),
            "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: operator In needs at least one value",
        ),
        (
            good.replace("cilium.io/v2", "cilium.io/v1"),
            "apiVersion: \"cilium.io/v1\" is not supported",
        ),
        (
            good.replace("port: \"6379\"", "port: \"redis\""),
            "named ports are not supported",
        ),
        (
            good.replace(
                "      endpointSelector:\n        matchLabels:\n          app: db-service\n",
                "",
            ),
            "spec.endpointSelector: is required",
        ),
        ("a: [unclosed".to_string(), "document 0"),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "want {want:?} in {e}");
        assert!(e.starts_with("p.yaml: document 0"), "{e}");
    }
    let e = err(&format!(
        "{good}\n---\n{}",
        good.replace("namespace: demo-app", "namespace: Bad_NS")
    ));
    assert!(
        e.contains("document 1") && e.contains("metadata.namespace"),
        "{e}"
    );
    let e = err(&API_ALLOW_FRONTEND.replace("\"/get\"", "\"/get(\""));
    assert!(e.contains("(demo-app/api-allow-frontend): spec.ingress[0].toPorts[0].rules.http[0].path: invalid regex"), "{e}");
    let e = err(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n  egress: [{toFQDNs: [{matchName: a.com}]}]\n",
    );
    assert!(
        e.contains("spec.egress[0].toFQDNs: DNS-based rules are not supported yet"),
        "{e}"
    );
}

#[test]
fn several_documents_and_empty_ones() {
    let text = format!("{DB_ALLOW_API}\n---\n{API_ALLOW_FRONTEND}\n---\n");
    let p = parse_policies("x.yaml", &text).unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].key(), "demo-app/api-allow-frontend");
    assert!(p[0].document.contains("db-allow-api-service"));
}

/// What flows name for the entry at `k`: (policy `namespace/name`s, logs, match type).
fn attributed(c: &Compiled, k: EntryKey) -> (Vec<String>, Vec<String>, u32) {
    let table = attribution::PolicyTable::build(c, 7);
    let rule = c.entries.get(&k).map(|v| v.rule).unwrap_or(0);
    let decided = table
        .get(rule)
        .unwrap_or_else(|| panic!("entry {k:?} (rule {rule}) is not attributed"));
    assert!(decided.policies.iter().all(|p| p.revision == 7));
    (
        decided
            .policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect(),
        decided.logs.clone(),
        decided.match_type,
    )
}

#[test]
fn entries_name_every_policy_and_rule_that_decides_through_them() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  log: {value: "db from api"}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: demo-app}
specs:
- endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
  - toPorts: [{ports: [{port: "9121", protocol: TCP}]}]
- endpointSelector: {matchLabels: {app: db-service}}
  log: {value: "no frontend"}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;
    let c = compile_text(text, PolicyEnforcementMode::Default);
    // Two policies allow the same peer and port: both are named, with a's log.
    let both = key(3, Direction::Ingress, 1002, 6, 6379, POLICY_PREFIX_FULL);
    assert_eq!(
        attributed(&c, both),
        (
            vec!["demo-app/a".into(), "demo-app/b".into()],
            vec!["db from api".into()],
            loupe_proto::monitor::POLICY_MATCH_L3_L4
        )
    );
    // A port from any peer.
    let any = key(3, Direction::Ingress, id::ANY, 6, 9121, POLICY_PREFIX_FULL);
    assert_eq!(
        attributed(&c, any),
        (
            vec!["demo-app/b".into()],
            vec![],
            loupe_proto::monitor::POLICY_MATCH_L4_ONLY
        )
    );
    // The deny names its own rule only, and so do the allows it covers.
    let deny = key(3, Direction::Ingress, 1001, 0, 0, POLICY_PREFIX_L3);
    let expected = (
        vec!["demo-app/b".to_string()],
        vec!["no frontend".to_string()],
        loupe_proto::monitor::POLICY_MATCH_L3_ONLY,
    );
    assert_eq!(action_of(&c, deny), Some(action::DENY));
    assert_eq!(attributed(&c, deny), expected);
    // Equal attributions share one index.
    let mut rules: Vec<u32> = c.entries.values().map(|v| v.rule).collect();
    rules.sort_unstable();
    rules.dedup();
    assert_eq!(rules.len(), c.attributions.len());
    assert!(rules.iter().all(|&r| r >= 1));
}

#[test]
fn a_deny_over_an_allow_names_only_the_deny() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: lockdown}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
"#;
    let c = compile_text(text, PolicyEnforcementMode::Default);
    let k = key(3, Direction::Ingress, 1001, 6, 6379, POLICY_PREFIX_FULL);
    assert_eq!(action_of(&c, k), Some(action::DENY));
    let table = attribution::PolicyTable::build(&c, 1);
    let decided = table.get(c.entries[&k].rule).unwrap();
    assert_eq!(decided.policies.len(), 1);
    let p = &decided.policies[0];
    assert_eq!(
        (p.name.as_str(), p.namespace.as_str(), p.kind.as_str()),
        ("lockdown", "", attribution::KIND_CCNP)
    );
    assert!(
        p.labels.contains(
            &"k8s:io.cilium.k8s.policy.derived-from=CiliumClusterwideNetworkPolicy".into()
        )
    );
}

#[test]
fn match_types_follow_the_key() {
    use loupe_proto::monitor::*;
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: m, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "0", protocol: UDP}]}]
  - toPorts: [{ports: [{port: "0", protocol: SCTP}]}]
  - fromEntities: [all]
"#;
    let c = compile_text(text, PolicyEnforcementMode::Default);
    let mt = |k| attributed(&c, k).2;
    assert_eq!(
        mt(key(3, Direction::Ingress, 1002, 0, 0, POLICY_PREFIX_L3)),
        POLICY_MATCH_L3_ONLY
    );
    assert_eq!(
        mt(key(3, Direction::Ingress, 1001, 17, 0, POLICY_PREFIX_PROTO)),
        POLICY_MATCH_L3_PROTO
    );
    assert_eq!(
        mt(key(
            3,
            Direction::Ingress,
            id::ANY,
            132,
            0,
            POLICY_PREFIX_PROTO
        )),
        POLICY_MATCH_PROTO_ONLY
    );
    assert_eq!(
        mt(key(3, Direction::Ingress, id::ANY, 0, 0, POLICY_PREFIX_L3)),
        POLICY_MATCH_ALL
    );
}

#[test]
fn log_values_are_checked() {
    let with_log = |v: &str| {
        DB_ALLOW_API.replace(
            "      ingress:\n",
            &format!("      log: {{value: {v:?}}}\n      ingress:\n"),
        )
    };
    let ok = parse_policies("p.yaml", &with_log("db from api")).unwrap();
    assert_eq!(ok[0].rules[0].log.as_deref(), Some("db from api"));
    let long = err(&with_log(&"x".repeat(33)));
    assert!(
        long.contains("spec.log.value: is 33 characters long; at most 32 are allowed"),
        "{long}"
    );
    let control = err(&with_log("a\tb"));
    assert!(
        control.contains("spec.log.value: must be printable"),
        "{control}"
    );
    let unknown = err(&DB_ALLOW_API.replace(
        "      ingress:\n",
        "      log: {value: x, level: debug}\n      ingress:\n",
    ));
    assert!(unknown.contains("unknown field `level`"), "{unknown}");
}

#[test]
fn texts_too_large_or_too_deep_are_refused_before_parsing() {
    let big = format!("{DB_ALLOW_API}\n# {}\n", "x".repeat(2 << 20));
    let e = err(&big);
    assert!(e.contains("a policy file may hold at most 1572864"), "{e}");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let e = err(&deep);
    assert!(e.contains("line 1: nested more than 64 levels deep"), "{e}");
    // Brackets in strings and comments are not nesting.
    let quoted = DB_ALLOW_API.replace(
        "    spec:\n",
        &format!("    # {}\n    spec:\n", "[".repeat(100)),
    );
    assert!(parse_policies("p.yaml", &quoted).is_ok());
}
