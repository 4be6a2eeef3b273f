//! The allocator against a recorded API server (kube-rs's own mock transport):
//! a known label set, a new one created at its slot, a race lost to another node
//! with the same labels, a slot held by other labels, and an API server that
//! never lists.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::endpoint::kubernetes::mock::{Calls, api_server_with, list, status};

const PATH: &str = "/apis/loupe.dev/v1/loupeidentities";

fn labels(app: &str) -> LabelSet {
    LabelSet(vec![
        format!("k8s:app={app}"),
        "k8s:io.kubernetes.pod.namespace=demo-app".to_string(),
    ])
}

fn identity(id: u32, labels: &LabelSet, rv: &str) -> Value {
    json!({"apiVersion": "loupe.dev/v1", "kind": "LoupeIdentity",
           "metadata": {"name": id.to_string(), "resourceVersion": rv,
                        "annotations": {LAST_USED: rfc3339(SystemTime::now())}},
           "securityLabels": labels.0})
}

/// The bodies of the POSTs the server saw.
fn posts(seen: &[String]) -> Vec<Value> {
    seen.iter()
        .filter(|r| r.starts_with("POST "))
        .filter_map(|r| r.splitn(3, ' ').nth(2))
        .map(|body| serde_json::from_str(body).unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_node_gets_the_same_number_for_the_same_labels() {
    let (api, db, web, cache) = (labels("api"), labels("db"), labels("web"), labels("cache"));
    // api is known; db is new and its slot is free; web's slot is taken by a
    // node that created web at the same moment (409, then the object says web);
    // cache's first slot holds other labels (409, a stranger), its second is free.
    let api_id = 300;
    let (db_id, web_id) = (db.cluster_slot(0), web.cluster_slot(0));
    let (cache_taken, cache_id) = (cache.cluster_slot(0), cache.cluster_slot(1));
    let conflict = status(409, "AlreadyExists", "already exists");
    let one = |id: u32| format!("{PATH}/{id}");
    let calls: Calls = BTreeMap::from([
        (
            ("POST", PATH.to_string()),
            vec![
                identity(db_id, &db, "20"),
                conflict.clone(),
                conflict,
                identity(cache_id, &cache, "23"),
            ],
        ),
        (("GET", one(web_id)), vec![identity(web_id, &web, "21")]),
        (
            ("GET", one(cache_taken)),
            vec![identity(cache_taken, &labels("stranger"), "22")],
        ),
    ]);
    let (client, mut server) = api_server_with(
        BTreeMap::from([(
            PATH,
            vec![list(
                "loupe.dev/v1",
                "LoupeIdentityList",
                "10",
                vec![identity(api_id, &api, "5")],
            )],
        )]),
        BTreeMap::new(),
        calls,
    );
    let alloc = ClusterIdentities::new(client);
    let health = Arc::new(Health::default());
    tokio::spawn(alloc.clone().run(health.clone(), Arc::default()));
    let got = alloc
        .ensure(&[api.clone(), db.clone(), web.clone(), cache.clone()])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            (api, api_id),
            (db.clone(), db_id),
            (web, web_id),
            (cache, cache_id)
        ]
    );
    // What was created, and how.
    let created = posts(&server.seen());
    assert_eq!(created.len(), 4, "{created:#?}");
    assert_eq!(created[0]["metadata"]["name"], db_id.to_string());
    assert_eq!(created[0]["securityLabels"], json!(db.0));
    assert!(created[0]["metadata"]["annotations"][LAST_USED].is_string());
    assert_eq!(created[3]["metadata"]["name"], cache_id.to_string());
    // A second listing asks the API nothing new for known label sets.
    let again = alloc.ensure(&[db]).await.unwrap();
    assert_eq!(again[0].1, db_id);
    assert!(
        posts(&server.seen()).is_empty(),
        "no new object for a known label set"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_listing_nothing_is_allocated() {
    let forbidden = status(403, "Forbidden", "loupeidentities.loupe.dev is forbidden");
    let (client, mut server) = api_server_with(
        BTreeMap::from([(PATH, vec![forbidden])]),
        BTreeMap::new(),
        Calls::new(),
    );
    let alloc = ClusterIdentities::new(client);
    let health = Arc::new(Health::default());
    tokio::spawn(alloc.clone().run(health.clone(), Arc::default()));
    let err = alloc.ensure(&[labels("api")]).await.unwrap_err();
    assert!(matches!(err, AllocateError::NotSynced(_)), "{err}");
    assert!(posts(&server.seen()).is_empty());
    let (_, status) = health
        .components()
        .into_iter()
        .find(|(n, _)| n == HEALTH_COMPONENT)
        .unwrap();
    assert_eq!(status.state, ComponentState::Error);
    assert!(status.detail.contains("403"), "{}", status.detail);
}

#[test]
fn objects_that_are_not_identities_are_ignored() {
    let ok = identity(300, &labels("api"), "1");
    let parse_value = |v: Value| parse(&serde_json::from_value(v).unwrap());
    assert_eq!(parse_value(ok.clone()).map(|(id, _)| id), Some(300));
    for (field, value) in [
        ("/metadata/name", json!("web")),
        ("/metadata/name", json!("12")),
        ("/metadata/name", json!("70000")),
        ("/securityLabels", json!("k8s:app=api")),
        ("/securityLabels", json!([1, 2])),
    ] {
        let mut bad = ok.clone();
        *bad.pointer_mut(field).unwrap() = value.clone();
        assert!(parse_value(bad).is_none(), "{field} = {value}");
    }
}
