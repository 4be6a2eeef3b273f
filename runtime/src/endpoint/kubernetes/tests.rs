//! The Kubernetes source against kube-rs's own mock transport (`tower-test`
//! behind `kube::Client`), answering with API server responses as recorded:
//! LISTs, WATCH streams, and the `410 Gone` that makes the watcher relist.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::mock::{self, api_server};
use super::*;
use crate::health::ComponentStatus;

fn pod(name: &str, ip: &str, extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "demo-app", "resourceVersion": "1",
            "labels": {"app": name.split('-').next().unwrap_or(name), "pod-template-hash": "7d9f8b6c5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{}-7d9f8b6c5", name.split('-').next().unwrap_or(name)),
                "uid": "u1", "controller": true}]
        },
        "spec": {"nodeName": "node-a", "serviceAccountName": "api",
                 "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    });
    merge(&mut pod, extra);
    pod
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "resourceVersion": "1", "labels": labels}})
}

fn list(kind: &str, rv: &str, items: Vec<Value>) -> Value {
    mock::list("v1", kind, rv, items)
}

/// Every pod address is routed through `lxc<last octet>`.
fn resolver() -> Resolver {
    Arc::new(|ip: IpAddr| match ip {
        IpAddr::V4(v4) => Some((format!("lxc{}", v4.octets()[3]), u32::from(v4.octets()[3]))),
        IpAddr::V6(_) => None,
    })
}

#[test]
fn a_pod_becomes_an_endpoint_with_its_namespace_labels_and_workload() {
    let p: Pod =
        serde_json::from_value(pod("api-service-7d9f8b6c5-x2k4q", "10.0.0.20", json!({}))).unwrap();
    let ns = BTreeMap::from([(
        "demo-app".to_string(),
        BTreeMap::from([("team".to_string(), "core".to_string())]),
    )]);
    let e = endpoint(&p, &ns, resolver().as_ref()).unwrap();
    assert_eq!(e.key(), "demo-app/api-service-7d9f8b6c5-x2k4q");
    assert_eq!((e.interface.as_str(), e.ifindex), ("lxc20", 20));
    assert_eq!(e.ipv4, Some("10.0.0.20".parse().unwrap()));
    assert_eq!(e.labels["app"], "api");
    assert_eq!(e.labels["io.cilium.k8s.namespace.labels.team"], "core");
    assert_eq!(e.labels[SERVICE_ACCOUNT_LABEL], "api");
    assert_eq!(
        e.workload,
        Some(Workload {
            name: "api".into(),
            kind: "Deployment".into()
        })
    );
    // Host network, finished, not yet addressed or not routed: no endpoint.
    for extra in [
        json!({"spec": {"hostNetwork": true}}),
        json!({"status": {"phase": "Succeeded"}}),
        json!({"status": {"podIP": null, "podIPs": []}}),
        json!({"status": {"podIP": "fd00::1", "podIPs": [{"ip": "fd00::1"}]}}),
    ] {
        let p: Pod = serde_json::from_value(pod("x-1", "10.0.0.9", extra.clone())).unwrap();
        assert!(endpoint(&p, &ns, resolver().as_ref()).is_none(), "{extra}");
    }
}

#[test]
fn workloads_are_named_as_hubble_names_them() {
    let owned = |kind: &str, name: &str, hash: Option<&str>| {
        let mut p: Pod = serde_json::from_value(pod("w-1", "10.0.0.9", json!({}))).unwrap();
        let refs = p.metadata.owner_references.as_mut().unwrap();
        refs[0].kind = kind.into();
        refs[0].name = name.into();
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.remove("pod-template-hash");
        if let Some(h) = hash {
            labels.insert("pod-template-hash".into(), h.into());
        }
        workload(&p).map(|w| (w.kind, w.name))
    };
    let w = |k: &str, n: &str| Some((k.to_string(), n.to_string()));
    assert_eq!(
        owned("ReplicaSet", "web-5c9d", Some("5c9d")),
        w("Deployment", "web")
    );
    assert_eq!(
        owned("ReplicaSet", "web-5c9d", None),
        w("ReplicaSet", "web-5c9d")
    );
    assert_eq!(
        owned("Job", "backup-29012345", None),
        w("CronJob", "backup")
    );
    assert_eq!(owned("Job", "migrate-v2", None), w("Job", "migrate-v2"));
    assert_eq!(owned("StatefulSet", "db", None), w("StatefulSet", "db"));
    assert_eq!(owned("DaemonSet", "agent", None), w("DaemonSet", "agent"));
}

/// Reads listings until one is `expected` (events of the two watches interleave,
/// so intermediate listings may differ); panics after a minute of test time.
async fn wait_for(rx: &mut mpsc::Receiver<Listing>, expected: &[&str]) -> Listing {
    let mut seen = Vec::new();
    loop {
        let listing = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("never {expected:?}; saw {seen:?}"))
            .expect("source ended");
        let keys: Vec<String> = listing.local.iter().map(EndpointSpec::key).collect();
        if keys == expected {
            return listing;
        }
        seen.push(keys);
    }
}

#[tokio::test(start_paused = true)]
async fn watches_this_nodes_pods_and_relists_after_410_gone() {
    let pods_v1 = list(
        "PodList",
        "100",
        vec![
            pod("api-service-7d9f8b6c5-a", "10.0.0.20", json!({})),
            pod(
                "node-exporter-b",
                "192.168.1.5",
                json!({"spec": {"hostNetwork": true}}),
            ),
            // On another node: a remote pod, not this node's endpoint.
            pod(
                "web-7d9f8b6c5-r",
                "10.0.1.5",
                json!({"spec": {"nodeName": "node-b"}, "metadata": {"labels": {"app": "web"}}}),
            ),
        ],
    );
    // After `410 Gone` the relist no longer has api-service-…-a: it must leave.
    let pods_v2 = list(
        "PodList",
        "200",
        vec![pod("db-service-7d9f8b6c5-c", "10.0.0.30", json!({}))],
    );
    let namespaces = list(
        "NamespaceList",
        "50",
        vec![namespace("demo-app", json!({"team": "core"}))],
    );
    let added = pod(
        "frontend-7d9f8b6c5-f",
        "10.0.0.10",
        json!({"metadata": {"resourceVersion": "101"}}),
    );
    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
        "message": "too old resource version: 100 (150)"}});
    let (client, mut server) = api_server(
        BTreeMap::from([
            ("/api/v1/pods", vec![pods_v1, pods_v2]),
            ("/api/v1/namespaces", vec![namespaces]),
        ]),
        // The first watch adds frontend, says where it is (a BOOKMARK) and drops
        // the connection; the second, resumed from the bookmark, expires.
        BTreeMap::from([(
            "/api/v1/pods",
            vec![
                vec![
                    json!({"type": "ADDED", "object": added}),
                    json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"resourceVersion": "130"}}}),
                    json!("drop"),
                ],
                vec![gone],
            ],
        )]),
    );
    let health = Arc::new(Health::default());
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(watch(
        client,
        "node-a".into(),
        resolver(),
        health.clone(),
        Arc::default(),
        tx,
    ));

    // The list (the host-network pod is skipped), then the watch adds frontend…
    let first = wait_for(
        &mut rx,
        &[
            "demo-app/api-service-7d9f8b6c5-a",
            "demo-app/frontend-7d9f8b6c5-f",
        ],
    )
    .await;
    // …with node-b's pod as a remote pod: its address and labels, no interface.
    assert_eq!(first.remote.len(), 1, "{:?}", first.remote);
    let web = &first.remote[0];
    assert_eq!(web.key(), "demo-app/web-7d9f8b6c5-r");
    assert_eq!(web.ipv4, Some("10.0.1.5".parse().unwrap()));
    assert_eq!((web.interface.as_str(), web.ifindex), ("", 0));
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    // …then expires: the relist replaces the store whole.
    wait_for(&mut rx, &["demo-app/db-service-7d9f8b6c5-c"]).await;
    let status = health
        .components()
        .into_iter()
        .find(|(name, _)| name == HEALTH_COMPONENT)
        .map(|(_, status)| status);
    assert_eq!(
        status,
        Some(ComponentStatus {
            state: ComponentState::Ok,
            detail: "1 endpoints (pods skipped: 0), 0 pods on other nodes".into()
        })
    );

    // Requests as kube-rs sends them: every pod (other nodes' are remote pods),
    // bookmarks on.
    let uris = server.seen();
    let pod_requests: Vec<&String> = uris.iter().filter(|u| u.contains("/api/v1/pods")).collect();
    assert!(
        pod_requests.iter().all(|u| !u.contains("fieldSelector")),
        "{uris:#?}"
    );
    assert!(
        pod_requests
            .iter()
            .any(|u| u.contains("watch=true") && u.contains("resourceVersion=100")),
        "{uris:#?}"
    );
    assert!(
        pod_requests
            .iter()
            .any(|u| u.contains("watch=true") && u.contains("resourceVersion=130")),
        "the dropped watch resumes from its bookmark: {uris:#?}"
    );
    assert_eq!(
        pod_requests
            .iter()
            .filter(|u| !u.contains("watch=true"))
            .count(),
        2,
        "one list, one relist after 410: {uris:#?}"
    );
}

fn service(name: &str, rv: &str, spec: Value, status: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "demo-app", "resourceVersion": rv},
           "spec": spec, "status": status})
}

#[tokio::test(start_paused = true)]
async fn services_frontends_name_flows_and_follow_the_watch() {
    use crate::flow::services::Services;
    use loupe_proto::flow::{Flow, Ip, Layer4, Service as FlowService, Tcp, Udp, layer4};

    let db = service(
        "db-service",
        "1",
        json!({"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00:96::30"],
               "ports": [{"port": 6379, "protocol": "TCP", "targetPort": 6379}]}),
        json!({}),
    );
    let headless = service(
        "kafka-headless",
        "2",
        json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 9092}]}),
        json!({}),
    );
    let dns = service(
        "edge",
        "3",
        json!({"clusterIP": "10.96.0.53", "type": "LoadBalancer",
               "ports": [{"port": 53, "protocol": "UDP"}]}),
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
    );
    let (client, _server) = api_server(
        BTreeMap::from([(
            "/api/v1/services",
            vec![mock::list(
                "v1",
                "ServiceList",
                "10",
                vec![db.clone(), headless.clone(), dns.clone()],
            )],
        )]),
        BTreeMap::from([(
            "/api/v1/services",
            vec![vec![json!({"type": "DELETED", "object": db})]],
        )]),
    );
    let services = Services::default();
    let health = Arc::new(Health::default());
    // Hold the watch back until the listing has been seen.
    let table_after_list = {
        let (client, services, health) = (client.clone(), services.clone(), health.clone());
        tokio::spawn(services::watch(client, services, health, Arc::default()))
    };
    let tcp = |src: &str, sport: u32, dst: &str, dport: u32| Flow {
        ip: Some(Ip {
            source: src.into(),
            destination: dst.into(),
            ..Ip::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: sport,
                destination_port: dport,
                flags: None,
            })),
        }),
        ..Flow::default()
    };
    let name = |n: &str| {
        Some(FlowService {
            name: n.into(),
            namespace: "demo-app".into(),
        })
    };
    // The listing (2 ClusterIPs × 1 port, ClusterIP + LB IP × 1 UDP port, none for
    // the headless one), then the watch's DELETED of db-service.
    let mut table = crate::flow::services::ServiceTable::default();
    let mut writer = reflector::store::Writer::<k8s_openapi::api::core::v1::Service>::default();
    for svc in [&db, &headless, &dns] {
        writer.apply_watcher_event(&watcher::Event::Apply(
            serde_json::from_value((*svc).clone()).unwrap(),
        ));
    }
    assert_eq!(services::table(&writer.as_reader()).len(), 4);
    for _ in 0..600 {
        table = (*services.load()).clone();
        if table.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(table.len(), 2);
    let mut udp = tcp("10.0.0.10", 5353, "203.0.113.7", 53);
    udp.l4 = Some(Layer4 {
        protocol: Some(layer4::Protocol::Udp(Udp {
            source_port: 5353,
            destination_port: 53,
        })),
    });
    services.annotate(&mut udp);
    assert_eq!(udp.destination_service, name("edge"));
    let mut to_db = tcp("10.0.0.20", 40000, "10.96.0.30", 6379);
    services.annotate(&mut to_db);
    assert_eq!(to_db.destination_service, None, "db-service was deleted");
    let (_, status) = health
        .components()
        .into_iter()
        .find(|(n, _)| n == services::HEALTH_COMPONENT)
        .unwrap();
    assert_eq!(
        (status.state, status.detail.as_str()),
        (ComponentState::Ok, "2 services, 2 frontends")
    );
    table_after_list.abort();
}

#[tokio::test(start_paused = true)]
async fn nodes_are_announced_at_their_internal_address() {
    use nodes::{ClusterNode, ClusterNodes};
    let node = |name: &str, addresses: Value| {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "resourceVersion": "1"},
               "status": {"addresses": addresses}})
    };
    let listed = mock::list(
        "v1",
        "NodeList",
        "7",
        vec![
            node(
                "node-b",
                json!([{"type": "Hostname", "address": "node-b"},
                       {"type": "InternalIP", "address": "fd00::2"},
                       {"type": "InternalIP", "address": "10.0.0.2"}]),
            ),
            node(
                "node-a",
                json!([{"type": "InternalIP", "address": "10.0.0.1"}]),
            ),
            // Not addressable yet: not a peer.
            node("node-c", json!([{"type": "Hostname", "address": "node-c"}])),
        ],
    );
    let (client, _server) = api_server(
        BTreeMap::from([("/api/v1/nodes", vec![listed])]),
        BTreeMap::new(),
    );
    let cluster = ClusterNodes::default();
    let mut seen = cluster.subscribe();
    let health = Arc::new(Health::default());
    tokio::spawn(nodes::watch(
        client,
        cluster.clone(),
        4244,
        health.clone(),
        Arc::default(),
    ));
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(list) = seen.borrow_and_update().clone() {
                return list;
            }
            seen.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let peer = |name: &str, address: &str| ClusterNode {
        name: name.into(),
        address: address.into(),
    };
    assert_eq!(
        got,
        vec![
            peer("node-a", "10.0.0.1:4244"),
            peer("node-b", "10.0.0.2:4244")
        ]
    );
}
