//! The real agent with its Kubernetes endpoint source, against an API server that
//! replays a recorded conversation (`tests/clients/kube_api.py`) describing the
//! lab's pods as a cluster would: this node's pods with their addresses, labels,
//! owners and namespace. The agent finds each pod's interface from the node's
//! route to it, follows the watch when a pod is deleted, and enforces the
//! article's policies arriving as API objects: a CiliumNetworkPolicy listed at
//! start (in the kernel), the same policy moved into a LoupeNetworkPolicy with
//! Redis rules added (it takes over the name; the proxy enforces its rules), and
//! an invalid new version of it that leaves the previous one in force.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use loupe_tests::{
    TestAgent, TestLab, client, free_port, scratch_dir, serial, tcp_ok, wait_for, write_file,
};
use serde_json::{Value, json};

const NODE: &str = "lab-node-1";
/// api-service's ClusterIP in the recorded conversation.
const CLUSTER_IP: &str = "10.96.218.20";

/// The host's DNAT of a ClusterIP to a pod, as kube-proxy's nftables mode installs
/// it; removed on drop.
struct KubeProxy;

impl KubeProxy {
    const TABLE: &str = "loupe-e2e-kube-proxy";

    fn dnat(cluster_ip: &str, port: u16, pod_ip: &str) -> Self {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", Self::TABLE])
            .output();
        let rules = format!(
            "table ip {t} {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat;\n  \
             ip daddr {cluster_ip} tcp dport {port} dnat to {pod_ip}:{port}\n }}\n}}\n",
            t = Self::TABLE
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (scripts/bootstrap installs nftables)");
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft -f: {rules}");
        Self
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", Self::TABLE])
            .output();
    }
}

/// A pod of this node as the API server lists it.
fn pod(name: &str, app: &str, ip: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-6c9f7d8b5-{name}"), "namespace": "demo-app",
            "uid": format!("uid-{name}"), "resourceVersion": rv,
            "labels": {"app": app, "pod-template-hash": "6c9f7d8b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-6c9f7d8b5"), "uid": format!("rs-{app}"),
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": NODE, "serviceAccountName": app,
                 "containers": [{"name": app, "image": format!("{app}:1")}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// A policy object as the API server returns it (the article's database policy
/// shape: `app: db-service` ingress from `app: api-service` on 6379).
fn policy(api_version: &str, kind: &str, name: &str, rv: &str, rules: Value) -> Value {
    let mut port = json!({"ports": [{"port": "6379", "protocol": "TCP"}]});
    if !rules.is_null() {
        port["rules"] = rules;
    }
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": "demo-app", "resourceVersion": rv,
                     "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "db-service"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api-service"}}],
                         "toPorts": [port]}]
        }
    })
}

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> String {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"resourceVersion": "110"}, "items": items})
    .to_string()
}

/// `GET path` on the agent's health port: the status line and the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let status = reply.lines().next().unwrap_or_default().to_string();
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    format!("{status} {body}")
}

struct ApiServer(Child);

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pods_from_the_api_server_are_enforced_and_followed() {
    let _guard = serial();
    let lab = TestLab::up("e2e-k8s", 218).unwrap();
    let dir = scratch_dir("k8s-api");
    let frontend = pod("x7k2p", "frontend", "10.218.0.10", "101");
    let pods = vec![
        frontend.clone(),
        pod("q4m9t", "api-service", "10.218.0.20", "102"),
        pod("z8w3r", "db-service", "10.218.0.30", "103"),
        pod("c5n6v", "kafka", "10.218.0.40", "104"),
        // A host-network pod (the agent's to skip) and another node's pod (a
        // remote pod: its address gets its cluster identity, no endpoint).
        {
            let mut p = pod("h1h1h", "node-exporter", "192.0.2.1", "105");
            p["spec"]["hostNetwork"] = json!(true);
            p
        },
        {
            let mut p = pod("r3m0t", "web", "10.219.0.5", "106");
            p["spec"]["nodeName"] = json!("lab-node-2");
            p
        },
    ];
    write_file(
        &dir,
        "pods.list.json",
        &json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": "110"}, "items": pods})
        .to_string(),
    );
    write_file(
        &dir,
        "namespaces.list.json",
        &json!({"apiVersion": "v1", "kind": "NamespaceList",
                "metadata": {"resourceVersion": "110"},
                "items": [{"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "demo-app", "resourceVersion": "5",
                                        "labels": {"team": "shop"}}}]})
        .to_string(),
    );
    // The policies: the article's CNP listed; 3 s into the watch it arrives as a
    // LoupeNetworkPolicy with Redis rules added; at 6 s that gets an invalid version.
    let cnp = policy(
        "cilium.io/v2",
        "CiliumNetworkPolicy",
        "db-allow-api-service",
        "106",
        Value::Null,
    );
    write_file(
        &dir,
        "ciliumnetworkpolicies.list.json",
        &list("cilium.io/v2", "CiliumNetworkPolicyList", vec![cnp]),
    );
    write_file(
        &dir,
        "loupenetworkpolicies.list.json",
        &list("loupe.dev/v1", "LoupeNetworkPolicyList", vec![]),
    );
    let redis_rules = json!({"l7proto": "redis",
                             "l7": [{"command": "GET"}, {"command": "SET", "key": "cache:.*"}]});
    let lnp = policy(
        "loupe.dev/v1",
        "LoupeNetworkPolicy",
        "db-allow-api-service",
        "125",
        redis_rules,
    );
    let mut invalid = lnp.clone();
    invalid["metadata"]["resourceVersion"] = json!("130");
    invalid["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("redis");
    write_file(
        &dir,
        "loupenetworkpolicies.watch.jsonl",
        &[
            json!({"after": 3.0, "event": {"type": "ADDED", "object": lnp}}).to_string(),
            json!({"after": 6.0, "event": {"type": "MODIFIED", "object": invalid}}).to_string(),
        ]
        .join("\n"),
    );
    // The cluster's one node, announced by the agent's peer service.
    write_file(
        &dir,
        "nodes.list.json",
        &list(
            "v1",
            "NodeList",
            vec![json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE, "resourceVersion": "3"},
                "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}})],
        ),
    );
    // No identities yet: the agent creates one per label set.
    write_file(
        &dir,
        "loupeidentities.list.json",
        &list("loupe.dev/v1", "LoupeIdentityList", vec![]),
    );
    // No clusterwide kinds: their CRDs are not installed (404).
    // api-service's Service, whose ClusterIP the host DNATs as kube-proxy would.
    write_file(
        &dir,
        "services.list.json",
        &list(
            "v1",
            "ServiceList",
            vec![json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "api-service", "namespace": "demo-app", "resourceVersion": "107"},
                "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                         "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}})],
        ),
    );
    let _kube_proxy = KubeProxy::dnat(CLUSTER_IP, 80, "10.218.0.20");

    // Eight seconds into the watch, frontend's pod is deleted.
    let mut deleted = frontend.clone();
    deleted["metadata"]["resourceVersion"] = json!("120");
    write_file(
        &dir,
        "pods.watch.jsonl",
        &json!({"after": 8.0, "event": {"type": "DELETED", "object": deleted}}).to_string(),
    );
    let port = free_port();
    let _api = ApiServer(
        Command::new("python3")
            .arg(client("kube_api.py"))
            .arg(&dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Listening before the agent starts, so no watch begins in backoff.
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let kubeconfig = write_file(
        &dir,
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: lab\n\
             clusters: [{{name: lab, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: agent, user: {{token: recorded}}}}]\n\
             contexts: [{{name: lab, context: {{cluster: lab, user: agent}}}}]\n"
        ),
    );
    let health_port = free_port();
    let mut agent = TestAgent::start_with(
        "k8s",
        &format!("endpoints:\n  lab: false\n  kubernetes: true\n  kubeconfig: {kubeconfig}\n"),
        &format!("nodeName: {NODE}\nhealthPort: {health_port}\n"),
        4,
    )
    .unwrap();

    // The API's pod names and labels; the lab's interfaces.
    let endpoints = agent.endpoints().unwrap();
    let names: Vec<&str> = endpoints
        .iter()
        .map(|e| e["podName"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names.len(),
        4,
        "host-network pod skipped, four endpoints: {endpoints:#?}"
    );
    let api = endpoints
        .iter()
        .find(|e| e["podName"] == "api-service-6c9f7d8b5-q4m9t")
        .unwrap_or_else(|| panic!("{endpoints:#?}"));
    assert_eq!(api["source"], "kubernetes", "{api}");
    assert!(
        api["interface"].as_str().unwrap().starts_with("lxc"),
        "{api}"
    );
    let labels = api["labels"].to_string();
    assert!(
        labels.contains("io.cilium.k8s.namespace.labels.team=shop"),
        "{api}"
    );
    assert!(
        labels.contains("io.cilium.k8s.policy.serviceaccount=api-service"),
        "{api}"
    );

    // Every endpoint's identity is the number of a LoupeIdentity the agent created
    // in the API with the endpoint's labels (what every other node then reuses).
    let created: Vec<Value> = std::fs::read_to_string(dir.join("loupeidentities.created.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One per label set, the other node's pod's too.
    assert_eq!(created.len(), 5, "one per label set: {created:#?}");
    assert!(
        created
            .iter()
            .any(|o| o["securityLabels"].to_string().contains("k8s:app=web")),
        "{created:#?}"
    );
    for ep in &endpoints {
        let id = ep["identity"].as_u64().unwrap().to_string();
        let object = created
            .iter()
            .find(|o| o["metadata"]["name"] == id)
            .unwrap_or_else(|| panic!("no LoupeIdentity {id} for {ep}: {created:#?}"));
        let app = format!(
            "k8s:app={}",
            ep["labels"]["app"].as_str().unwrap_or_default()
        );
        let labels = object["securityLabels"].to_string();
        assert!(
            labels.contains(&app) && labels.contains("k8s:io.kubernetes.pod.namespace=demo-app"),
            "{labels} for {ep}"
        );
    }

    // The article's database policy from the API server, enforced on the
    // interfaces the routes named.
    let in_force = |key: &str, l7: bool| {
        agent.loupe_ok(&["policy", "list", "-v"]).is_ok_and(|l| {
            l.lines()
                .any(|line| line.starts_with(key) && line.contains(" kubernetes "))
                && l.contains("l7proto: redis") == l7
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), || in_force(
            "demo-app/db-allow-api-service",
            false
        )),
        "{}\n{}",
        agent.loupe_ok(&["policy", "list"]).unwrap_or_default(),
        agent.log()
    );
    assert!(
        tcp_ok(&lab, "api-service", "db-service", 6379, 2),
        "api-service must reach db-service"
    );
    assert!(
        !tcp_ok(&lab, "frontend", "db-service", 6379, 2),
        "frontend must be denied by the policy"
    );

    assert!(
        wait_for(Duration::from_secs(20), || agent
            .loupe_ok(&["status"])
            .is_ok_and(|s| s.contains("services/kubernetes    ok"))),
        "{}",
        agent.loupe_ok(&["status"]).unwrap_or_default()
    );
    // frontend → api-service's ClusterIP: the flows at frontend's interface name the
    // Service, both ways, as Hubble's do. (Lab pods route only the lab's CIDR; a
    // cluster's pods reach the service range through their default route.)
    lab.exec_ok(
        "frontend",
        &[
            "ip",
            "route",
            "replace",
            "10.96.0.0/12",
            "via",
            "169.254.1.1",
        ],
    )
    .unwrap();
    let code = lab
        .exec_ok(
            "frontend",
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                &format!("http://{CLUSTER_IP}/get"),
            ],
        )
        .unwrap();
    assert_eq!(code, "200");
    let service_flows =
        |flag: &str| agent.observe_json(&[flag, "demo-app/api-service", "--last", "50"]);
    // The datapath's events reach the store a moment after the request ends.
    assert!(
        wait_for(Duration::from_secs(10), || !service_flows("--to-service")
            .is_empty()
            && !service_flows("--from-service").is_empty()),
        "no flows named the Service"
    );
    let to = service_flows("--to-service");
    assert!(
        !to.is_empty()
            && to.iter().all(
                |f| f["flow"]["destination_service"]["name"] == "api-service"
                    && f["flow"]["destination"]["pod_name"].is_null()
                    && f["flow"]["IP"]["destination"] == CLUSTER_IP
            ),
        "{to:#?}"
    );
    let from = service_flows("--from-service");
    assert!(
        !from.is_empty()
            && from
                .iter()
                .all(|f| f["flow"]["source_service"]["namespace"] == "demo-app"),
        "{from:#?}"
    );
    // At api-service's interface the same request names the pod, its namespace
    // and its workload, as Hubble's flows do.
    let at_server = agent.observe_json(&["--to-pod", "demo-app/api-service", "--last", "50"]);
    assert!(
        at_server.iter().any(|f| {
            let d = &f["flow"]["destination"];
            d["pod_name"] == "api-service-6c9f7d8b5-q4m9t"
                && d["namespace"] == "demo-app"
                && d["workloads"][0] == json!({"name": "api-service", "kind": "Deployment"})
        }),
        "{at_server:#?}"
    );
    assert!(
        agent
            .loupe_ok(&["status"])
            .unwrap()
            .contains("services/kubernetes    ok        1 services, 1 frontends"),
        "{}",
        agent.loupe_ok(&["status"]).unwrap()
    );

    // Moved into a LoupeNetworkPolicy with Redis rules, the policy takes over its
    // name and the proxy enforces the rules.
    assert!(
        wait_for(Duration::from_secs(20), || in_force(
            "demo-app/db-allow-api-service",
            true
        )),
        "{}",
        agent
            .loupe_ok(&["policy", "list", "-v"])
            .unwrap_or_default()
    );
    let redis = |args: &[&str]| {
        let mut argv = vec!["redis-cli", "-h", "db-service"];
        argv.extend_from_slice(args);
        lab.exec_ok("api-service", &argv).unwrap()
    };
    assert_eq!(redis(&["SET", "cache:k8s", "v"]).trim(), "OK");
    let flush = redis(&["FLUSHALL"]);
    assert!(flush.contains("NOPERM"), "{flush}");

    // Its invalid version is reported; the valid one stays in force.
    let warned = wait_for(Duration::from_secs(20), || {
        agent
            .loupe_ok(&["status"])
            .is_ok_and(|s| s.contains("policy/kubernetes      warning"))
    });
    let status = agent.loupe_ok(&["status"]).unwrap();
    assert!(warned, "{status}");
    assert!(
        status.contains(
            "in force: 1 from 2 objects; not installed: CiliumClusterwideNetworkPolicy, \
             LoupeClusterwideNetworkPolicy; 1 invalid, previous versions kept: \
             LoupeNetworkPolicy demo-app/db-allow-api-service: spec.ingress[0].toPorts[0].ports[0].port"
        ),
        "{status}"
    );
    let flush = redis(&["FLUSHALL"]);
    assert!(flush.contains("NOPERM"), "{flush}");
    assert_eq!(redis(&["GET", "cache:k8s"]).trim(), "v");
    assert!(
        status.contains("nodes/kubernetes       ok        1 nodes (1 with an internal address)"),
        "{status}"
    );
    // Three endpoints and the remote pod use their identities now (frontend's pod
    // is gone); all five objects stay in the cluster until they have gone unused
    // long enough.
    assert!(
        status.contains("identities/kubernetes  ok        5 in the cluster, 5 used here")
            || status.contains("identities/kubernetes  ok        5 in the cluster, 4 used here"),
        "{status}"
    );
    // An invalid object is not the node's failure: the readiness probe holds.
    assert_eq!(
        http_get(health_port, "/readyz"),
        "HTTP/1.1 200 OK ok\n",
        "{status}"
    );
    assert!(
        !tcp_ok(&lab, "frontend", "db-service", 6379, 2),
        "the previous version still denies frontend"
    );

    // The recorded DELETED event: frontend leaves the registry.
    let gone = wait_for(Duration::from_secs(30), || {
        agent.endpoints().is_ok_and(|e| {
            e.len() == 3 && !e.iter().any(|x| x["podName"] == "frontend-6c9f7d8b5-x7k2p")
        })
    });
    assert!(gone, "{:#?}", agent.endpoints());
    // The source reports its state before it hands a listing on.
    let status = agent.loupe_ok(&["status"]).unwrap();
    assert!(
        status.contains(
            "endpoints/kubernetes   ok        3 endpoints (pods skipped: 1), 1 pods on other nodes"
        ),
        "{status}"
    );

    // What the agent asked: every pod (others' are remote pods), then a watch from
    // the list's version.
    let requests = std::fs::read_to_string(dir.join("requests.log")).unwrap();
    assert!(
        requests
            .lines()
            .filter(|l| l.starts_with("/api/v1/pods"))
            .all(|l| !l.contains("fieldSelector")),
        "{requests}"
    );
    for path in [
        "/api/v1/pods",
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        "/apis/loupe.dev/v1/loupenetworkpolicies",
    ] {
        assert!(
            requests.lines().any(|l| l.starts_with(path)
                && l.contains("watch=true")
                && l.contains("resourceVersion=110")),
            "{path}: {requests}"
        );
    }
    assert!(
        requests
            .lines()
            .any(|l| l.starts_with("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies")),
        "{requests}"
    );

    // api-service's pod is deleted while the agent is down: the restarted agent
    // lists the pods again and removes its endpoint and its pinned links; the
    // other identities are found in the API again (the creates answer 409 and
    // the objects carry the same labels), so their numbers hold.
    let api_iface = api["interface"].as_str().unwrap().to_string();
    let before: Vec<(String, u64)> = agent
        .endpoints()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["podName"].as_str().unwrap().to_string(),
                e["identity"].as_u64().unwrap(),
            )
        })
        .collect();
    let pinned = || -> Vec<String> {
        std::fs::read_dir("/sys/fs/bpf/loupe-test-k8s/links")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        pinned().iter().any(|l| l.starts_with(&api_iface)),
        "{api_iface} pinned: {:?}",
        pinned()
    );
    agent.kill9();
    write_file(
        &dir,
        "pods.list.json",
        &json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": "140"},
                "items": [pod("z8w3r", "db-service", "10.218.0.30", "103"),
                          pod("c5n6v", "kafka", "10.218.0.40", "104")]})
        .to_string(),
    );
    agent.spawn(2).unwrap();
    let cleaned = wait_for(Duration::from_secs(30), || {
        agent.endpoints().is_ok_and(|e| e.len() == 2)
            && !pinned().iter().any(|l| l.starts_with(&api_iface))
    });
    assert!(cleaned, "{:#?} {:?}", agent.endpoints(), pinned());
    for ep in agent.endpoints().unwrap() {
        let name = ep["podName"].as_str().unwrap();
        let was = before.iter().find(|(n, _)| n == name).map(|(_, id)| *id);
        assert_eq!(was, ep["identity"].as_u64(), "{name} kept its identity");
    }
}
