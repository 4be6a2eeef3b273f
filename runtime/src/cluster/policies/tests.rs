//! Policy objects judged one by one, and the watch against a recorded API server
//! (kube-rs's own mock transport): four kinds listed, one kind's CRD missing, an
//! invalid new version that leaves the previous one in force, a deletion, and a
//! Loupe object winning over a CNP of the same name.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::config::AgentConfig;
use crate::datapath::controller::Controller;
use crate::endpoint::kubernetes::mock::{Calls, api_server, api_server_with, list, status};
use crate::plugin::{FieldSpec, FieldType};

fn redis_schema() -> BTreeMap<String, Vec<FieldSpec>> {
    let spec = |name: &str| FieldSpec {
        name: name.into(),
        ty: FieldType::Text,
        repeated: false,
        description: String::new(),
    };
    BTreeMap::from([("redis".to_string(), vec![spec("command"), spec("key")])])
}

fn spec(rules: Value) -> Value {
    json!({
        "endpointSelector": {"matchLabels": {"app": "db-service"}},
        "ingress": [{
            "fromEndpoints": [{"matchLabels": {"app": "api-service"}}],
            "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}], "rules": rules}]
        }]
    })
}

/// An object as the API server returns it.
fn object(kind: PolicyKind, name: &str, rv: &str, spec: Value) -> Value {
    let resource = kind.resource();
    let mut metadata = json!({"name": name, "resourceVersion": rv, "uid": format!("uid-{name}"),
                              "generation": 1, "labels": {"team": "shop"}});
    if !kind.clusterwide() {
        metadata["namespace"] = json!("demo-app");
    }
    json!({"apiVersion": resource.api_version, "kind": resource.kind,
           "metadata": metadata, "spec": spec,
           "status": {"conditions": []}})
}

fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

#[test]
fn objects_become_policies_with_the_parsers_errors() {
    let schemas = redis_schema();
    let l7 = spec(json!({"l7proto": "redis", "l7": [{"command": "GET"}]}));
    let p = evaluate(
        PolicyKind::LoupeNetworkPolicy,
        &dynamic(object(
            PolicyKind::LoupeNetworkPolicy,
            "db",
            "1",
            l7.clone(),
        )),
        &schemas,
    )
    .unwrap();
    assert_eq!(p.key(), "demo-app/db");
    assert_eq!(p.source, SOURCE);
    assert_eq!(p.labels["team"], "shop");
    assert_eq!(p.l7_protocols().into_iter().collect::<Vec<_>>(), ["redis"]);
    // The document kept is the Cilium kind's, without the server's fields.
    assert!(
        p.document.contains("kind: CiliumNetworkPolicy"),
        "{}",
        p.document
    );
    assert!(!p.document.contains("resourceVersion"), "{}", p.document);

    let ccnp = evaluate(
        PolicyKind::CiliumClusterwideNetworkPolicy,
        &dynamic(object(
            PolicyKind::CiliumClusterwideNetworkPolicy,
            "all",
            "1",
            spec(json!(null)),
        )),
        &schemas,
    )
    .unwrap();
    assert_eq!((ccnp.key().as_str(), ccnp.namespace.clone()), ("all", None));

    // The parser's field path, and the plugin schema's.
    let bad_port = spec(json!(null));
    let mut bad_port = object(PolicyKind::CiliumNetworkPolicy, "db", "2", bad_port);
    bad_port["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("70000");
    let err = evaluate(
        PolicyKind::CiliumNetworkPolicy,
        &dynamic(bad_port),
        &schemas,
    )
    .unwrap_err();
    assert!(
        err.starts_with(
            "CiliumNetworkPolicy demo-app/db: spec.ingress[0].toPorts[0].ports[0].port"
        ),
        "{err}"
    );
    let unknown_field = spec(json!({"l7proto": "redis", "l7": [{"verb": "GET"}]}));
    let err = evaluate(
        PolicyKind::LoupeNetworkPolicy,
        &dynamic(object(
            PolicyKind::LoupeNetworkPolicy,
            "db",
            "3",
            unknown_field,
        )),
        &schemas,
    )
    .unwrap_err();
    assert!(err.contains("verb"), "{err}");
    let no_plugin = spec(json!({"l7proto": "mqtt", "l7": [{"topic": "a"}]}));
    let err = evaluate(
        PolicyKind::LoupeNetworkPolicy,
        &dynamic(object(PolicyKind::LoupeNetworkPolicy, "db", "4", no_plugin)),
        &schemas,
    )
    .unwrap_err();
    assert!(err.contains("mqtt"), "{err}");
}

#[test]
fn a_cnp_whose_plugin_rules_the_crd_pruned_is_refused_by_name() {
    // What `kubectl apply` sent, and what an API server with Cilium 1.20's CRD kept.
    let sent = object(
        PolicyKind::CiliumNetworkPolicy,
        "db",
        "1",
        spec(json!({"l7proto": "redis", "l7": [{"command": "GET"}]})),
    );
    let mut stored = sent.clone();
    stored["spec"]["ingress"][0]["toPorts"][0]["rules"] = json!({});
    stored["metadata"]["annotations"] = json!({LAST_APPLIED: sent.to_string()});
    let err = evaluate(
        PolicyKind::CiliumNetworkPolicy,
        &dynamic(stored.clone()),
        &redis_schema(),
    )
    .unwrap_err();
    assert!(
        err.contains(
            "spec.ingress[0].toPorts[0].rules.l7, spec.ingress[0].toPorts[0].rules.l7proto"
        ),
        "{err}"
    );
    assert!(err.contains("LoupeNetworkPolicy (loupe.dev/v1)"), "{err}");
    // The same object unpruned, annotation and all, is fine.
    let mut whole = sent.clone();
    whole["metadata"]["annotations"] = json!({LAST_APPLIED: sent.to_string()});
    evaluate(
        PolicyKind::CiliumNetworkPolicy,
        &dynamic(whole),
        &redis_schema(),
    )
    .unwrap();
}

/// What a test's watch needs over `control`: fresh health and counters, and the
/// Redis plugin's schema.
fn watch_over(control: &Arc<ControlPlane>) -> PolicyWatch {
    PolicyWatch {
        control: control.clone(),
        schemas: Arc::new(redis_schema()),
        health: Arc::new(Health::default()),
        stats: Arc::new(PolicyWatchStats::default()),
        api_stats: Arc::new(KubernetesStats::default()),
        node: "node-a".into(),
    }
}

/// A control plane in memory.
fn control_plane() -> Arc<ControlPlane> {
    Arc::new(ControlPlane::new(Controller::in_memory(
        &AgentConfig::default(),
    )))
}

fn watch_state(health: &Health) -> Option<(ComponentState, String)> {
    health
        .components()
        .into_iter()
        .find(|(n, _)| n == HEALTH_COMPONENT)
        .map(|(_, s)| (s.state, s.detail))
}

/// Polls (in paused test time) until `check` holds, for up to a minute.
async fn until(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..600 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(start_paused = true)]
async fn the_watch_keeps_valid_objects_in_force_and_the_previous_version_of_invalid_ones() {
    let cnp = PolicyKind::CiliumNetworkPolicy;
    let lnp = PolicyKind::LoupeNetworkPolicy;
    let path = |kind: PolicyKind| -> &'static str {
        match kind {
            PolicyKind::CiliumNetworkPolicy => "/apis/cilium.io/v2/ciliumnetworkpolicies",
            PolicyKind::LoupeNetworkPolicy => "/apis/loupe.dev/v1/loupenetworkpolicies",
            PolicyKind::LoupeClusterwideNetworkPolicy => {
                "/apis/loupe.dev/v1/loupeclusterwidenetworkpolicies"
            }
            PolicyKind::CiliumClusterwideNetworkPolicy => "(not installed)",
        }
    };
    let db_l4 = object(cnp, "db", "10", spec(json!(null)));
    let other = object(cnp, "other", "11", spec(json!(null)));
    let db_l7 = object(
        lnp,
        "db",
        "12",
        spec(json!({"l7proto": "redis", "l7": [{"command": "GET"}]})),
    );
    let db_l7_status = db_l7.clone();
    // New versions: `other` gets an invalid port, then db's CNP is deleted.
    let mut other_bad = object(cnp, "other", "20", spec(json!(null)));
    other_bad["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("http");
    let db_status = "/apis/loupe.dev/v1/namespaces/demo-app/loupenetworkpolicies/db/status";
    let (client, mut server) = api_server_with(
        BTreeMap::from([
            (
                path(cnp),
                vec![list(
                    "cilium.io/v2",
                    "CiliumNetworkPolicyList",
                    "15",
                    vec![db_l4.clone(), other],
                )],
            ),
            (
                path(lnp),
                vec![list(
                    "loupe.dev/v1",
                    "LoupeNetworkPolicyList",
                    "15",
                    vec![db_l7],
                )],
            ),
            (
                path(PolicyKind::LoupeClusterwideNetworkPolicy),
                vec![list(
                    "loupe.dev/v1",
                    "LoupeClusterwideNetworkPolicyList",
                    "15",
                    vec![],
                )],
            ),
        ]),
        BTreeMap::from([(
            path(cnp),
            vec![vec![
                json!({"type": "MODIFIED", "object": other_bad}),
                json!({"type": "DELETED", "object": db_l4}),
            ]],
        )]),
        Calls::from([(("PATCH", db_status.to_string()), vec![db_l7_status.clone()])]),
    );
    let control = control_plane();
    // A policy applied by hand stays: the watch replaces its own source only.
    let by_hand = crate::policy::parse_policies(
        "by-hand.yaml",
        &serde_json::to_string(&json!({"apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy", "metadata": {"name": "manual", "namespace": "ops"},
            "spec": spec(json!(null))}))
        .unwrap(),
    )
    .unwrap();
    control.apply(by_hand).await.unwrap();
    let w = watch_over(&control);
    let (health, stats) = (w.health.clone(), w.stats.clone());
    tokio::spawn(watch(client, w));

    let in_force = async || {
        let (listings, _) = control.policies().await;
        listings
            .into_iter()
            .map(|p| (p.key, p.source, p.document.contains("l7proto")))
            .collect::<Vec<_>>()
    };
    let policy = |key: &str, source: &str, l7: bool| (key.to_string(), source.to_string(), l7);
    // Listed: the Loupe object wins demo-app/db; `other` is replaced by an invalid
    // version and keeps its first one; then db's CNP goes, and the LNP stays.
    let done = until(async || {
        in_force().await
            == vec![
                policy("demo-app/db", SOURCE, true),
                policy("demo-app/other", SOURCE, false),
                policy("ops/manual", "by-hand.yaml", false),
            ]
            && stats.errors[0].load(Ordering::Relaxed) == 1
            && watch_state(&health).is_some_and(|(_, d)| d.contains("2 objects"))
    })
    .await;
    assert!(
        done,
        "{:?} {:?} {:?}",
        in_force().await,
        watch_state(&health),
        server.seen()
    );
    let (state, detail) = watch_state(&health).unwrap();
    assert_eq!(state, ComponentState::Warning, "{detail}");
    assert!(
        detail.starts_with(
            "in force: 2 from 2 objects; not installed: CiliumClusterwideNetworkPolicy; 1 invalid, \
             previous versions kept: CiliumNetworkPolicy demo-app/other: spec.ingress[0].toPorts[0].ports[0].port"
        ),
        "{detail}"
    );
    let families = stats.families();
    let rendered = crate::metrics::registry::encode(&families);
    assert!(
        rendered
            .contains("loupe_kubernetes_policies{kind=\"CiliumNetworkPolicy\",valid=\"false\"} 1"),
        "{rendered}"
    );

    // Every kind was listed and watched from its list's version; the missing
    // CRD's kind was asked for and answered 404.
    let uris = server.seen();
    // Loupe's object got its condition; Cilium's objects get none from Loupe.
    let patches: Vec<&String> = uris.iter().filter(|u| u.starts_with("PATCH ")).collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    let body: Value = serde_json::from_str(patches[0].splitn(3, ' ').nth(2).unwrap()).unwrap();
    assert!(patches[0].contains(db_status), "{patches:#?}");
    let valid = &body["status"]["conditions"][0];
    assert_eq!(
        (
            &valid["type"],
            &valid["status"],
            &valid["reason"],
            &valid["observedGeneration"]
        ),
        (&json!("Valid"), &json!("True"), &json!("Valid"), &json!(1)),
        "{body}"
    );
    for kind in [cnp, lnp] {
        assert!(
            uris.iter().any(|u| u.starts_with(path(kind))
                && u.contains("watch=true")
                && u.contains("resourceVersion=15")),
            "{uris:#?}"
        );
    }
    assert!(
        uris.iter()
            .any(|u| u.starts_with("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies")),
        "{uris:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_api_error_keeps_the_policies_in_force() {
    // No RBAC for CNPs: nothing of the source may be removed.
    let forbidden = status(
        403,
        "Forbidden",
        "ciliumnetworkpolicies.cilium.io is forbidden: User \"system:serviceaccount:kube-system:loupe\" cannot list resource",
    );
    let (client, _server) = api_server(
        BTreeMap::from([("/apis/cilium.io/v2/ciliumnetworkpolicies", vec![forbidden])]),
        BTreeMap::new(),
    );
    let control = control_plane();
    let kept = evaluate(
        PolicyKind::CiliumNetworkPolicy,
        &dynamic(object(
            PolicyKind::CiliumNetworkPolicy,
            "db",
            "1",
            spec(json!(null)),
        )),
        &redis_schema(),
    )
    .unwrap();
    control.apply(vec![kept]).await.unwrap();
    let w = watch_over(&control);
    let (health, api_stats) = (w.health.clone(), w.api_stats.clone());
    tokio::spawn(watch(client, w));
    let reported = until(async || {
        watch_state(&health).is_some_and(|(s, d)| s == ComponentState::Error && d.contains("403"))
    })
    .await;
    assert!(reported, "{:?}", watch_state(&health));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (listings, _) = control.policies().await;
    assert_eq!(
        listings.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["demo-app/db"]
    );
    let (_, detail) = watch_state(&health).unwrap();
    assert!(detail.starts_with("API: CiliumNetworkPolicy: "), "{detail}");
    // Counted, once per failed try (the watcher backs off between them).
    let rendered = crate::metrics::registry::encode(&api_stats.families());
    let errors: f64 = rendered
        .lines()
        .find_map(|l| l.strip_prefix("loupe_kubernetes_api_errors_total{watch=\"policies\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{rendered}"));
    assert!((1.0..30.0).contains(&errors), "{rendered}");
}

#[test]
fn an_invalid_loupe_object_says_so_in_its_condition() {
    let schemas = redis_schema();
    let good = dynamic(object(
        PolicyKind::LoupeNetworkPolicy,
        "db",
        "1",
        spec(json!(null)),
    ));
    let mut bad_value = object(PolicyKind::LoupeNetworkPolicy, "db", "2", spec(json!(null)));
    bad_value["metadata"]["generation"] = json!(2);
    bad_value["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("http");
    let bad = dynamic(bad_value);
    let stats = PolicyWatchStats::default();
    let first = judge(PolicyKind::LoupeNetworkPolicy, good, None, &schemas, &stats);
    assert_eq!(condition(&first)["status"], "True");
    let second = judge(
        PolicyKind::LoupeNetworkPolicy,
        bad,
        Some(first),
        &schemas,
        &stats,
    );
    let c = condition(&second);
    assert_eq!(
        (&c["status"], &c["reason"], &c["observedGeneration"]),
        (&json!("False"), &json!("Invalid"), &json!(2))
    );
    let message = c["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "LoupeNetworkPolicy demo-app/db: spec.ingress[0].toPorts[0].ports[0].port"
        ) && message.ends_with("(the previous valid version stays in force)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_loupe_object_gets_a_warning_event() {
    let lnp = PolicyKind::LoupeNetworkPolicy;
    let path = "/apis/loupe.dev/v1/loupenetworkpolicies";
    let mut bad = object(lnp, "db", "3", spec(json!(null)));
    bad["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("redis");
    let status_path = "/apis/loupe.dev/v1/namespaces/demo-app/loupenetworkpolicies/db/status";
    let events_path = "/apis/events.k8s.io/v1/namespaces/demo-app/events";
    let recorded = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "db.1", "namespace": "demo-app"},
        "eventTime": "2026-12-07T00:00:00.000000Z", "reportingController": "loupe-agent",
        "reportingInstance": "node-a", "action": "Validate", "reason": "InvalidPolicy", "type": "Warning"});
    let (client, mut server) = api_server_with(
        BTreeMap::from([(
            path,
            vec![list(
                "loupe.dev/v1",
                "LoupeNetworkPolicyList",
                "4",
                vec![bad.clone()],
            )],
        )]),
        BTreeMap::new(),
        Calls::from([
            (("PATCH", status_path.to_string()), vec![bad]),
            (("POST", events_path.to_string()), vec![recorded]),
        ]),
    );
    let control = control_plane();
    tokio::spawn(watch(client, watch_over(&control)));
    let mut seen = Vec::new();
    let posted = until(async || {
        seen.extend(server.seen());
        seen.iter()
            .any(|r| r.starts_with(&format!("POST {events_path}")))
    })
    .await;
    assert!(posted, "{seen:#?}");
    let event: Value = seen
        .iter()
        .find(|r| r.starts_with(&format!("POST {events_path}")))
        .and_then(|r| r.splitn(3, ' ').nth(2))
        .map(|b| serde_json::from_str(b).unwrap())
        .unwrap();
    assert_eq!(
        (
            &event["type"],
            &event["reason"],
            &event["regarding"]["name"],
            &event["regarding"]["kind"]
        ),
        (
            &json!("Warning"),
            &json!("InvalidPolicy"),
            &json!("db"),
            &json!("LoupeNetworkPolicy")
        ),
        "{event}"
    );
    assert!(
        event["note"].as_str().unwrap().contains("ports[0].port"),
        "{event}"
    );
    // The condition was written first, to the status subresource.
    assert!(
        seen.iter()
            .any(|r| r.starts_with(&format!("PATCH {status_path}"))),
        "{seen:#?}"
    );
}
