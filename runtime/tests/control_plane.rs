//! The control plane under churn: endpoint listings arriving while policies are
//! applied, validated, deleted and listed and endpoints are listed, all through the
//! real gRPC services, concurrently, on a multi-threaded runtime. Before the
//! registry and the controller shared one lock, a policy applied while endpoints
//! changed could leave the two tasks waiting on each other for ever (the policy
//! service held the registry and waited for the controller; an endpoint sync held
//! the controller and waited for the registry). Every task must finish in time,
//! and what the services answer afterwards must agree with the last listing.

// Test helpers panic on failure by design (the lint allows it only inside #[test]).
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_proto::daemon::daemon_server::Daemon as _;
use loupe_proto::daemon::{ListEndpointsRequest, StatusRequest};
use loupe_proto::policy::policies_server::Policies as _;
use loupe_proto::policy::{DeleteRequest, ListRequest, PolicyDocuments, PolicyFile};
use loupe_runtime::api::daemon::{DaemonService, StatusSources};
use loupe_runtime::api::policy::PolicyService;
use loupe_runtime::config::AgentConfig;
use loupe_runtime::control::ControlPlane;
use loupe_runtime::datapath::controller::Controller;
use loupe_runtime::endpoint::{EndpointSpec, Listing, SourceKind};
use loupe_runtime::metrics::MetricsRegistry;
use loupe_runtime::plugin::PluginManager;
use tonic::Request;

const ROUNDS: usize = 300;
/// Far above what the rounds take (well under a second each way); only a hang
/// gets near it.
const DEADLINE: Duration = Duration::from_secs(60);

fn pod(name: &str, app: &str, n: u8) -> EndpointSpec {
    EndpointSpec {
        source: SourceKind::Lab,
        namespace: "demo".into(),
        pod_name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ipv4: Some(Ipv4Addr::new(10, 200, 0, n)),
        ipv6: None,
        interface: format!("lxc{n}"),
        ifindex: u32::from(n),
        workload: None,
    }
}

fn policy(name: &str, app: &str) -> PolicyDocuments {
    let text = format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: {name}
  namespace: demo
spec:
  endpointSelector:
    matchLabels:
      app: {app}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: \"80\"
        protocol: TCP
"
    );
    PolicyDocuments {
        files: vec![PolicyFile {
            name: format!("{name}.yaml"),
            text,
        }],
    }
}

/// A pod churn: the frontend stays, `api-<i>` replicas come and go.
fn listing(round: usize) -> Vec<EndpointSpec> {
    let mut pods = vec![pod("frontend-0", "frontend", 1)];
    for replica in 0..(round % 4) {
        let n = u8::try_from(10 + replica).unwrap();
        pods.push(pod(&format!("api-{replica}"), "api", n));
    }
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_and_endpoint_churn_never_wait_on_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::default();
    let control = Arc::new(ControlPlane::new(Controller::in_memory(&config)));
    let plugins = Arc::new(PluginManager::open(dir.path(), config.plugins.limits()).unwrap());
    let policies = PolicyService::new(control.clone(), plugins);
    let daemon = DaemonService::new(
        control.clone(),
        StatusSources {
            started: Instant::now(),
            health: Arc::default(),
            metrics: MetricsRegistry::new(),
            flows: None,
        },
    );

    let churn = {
        let control = control.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let report = control
                    .sync_endpoints(SourceKind::Lab, Listing::local(listing(round)))
                    .await;
                assert!(report.refused.is_empty(), "{:?}", report.refused);
                report.regenerated.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let apply = {
        let policies = policies.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let name = format!("p{}", round % 3);
                let result = policies
                    .apply(Request::new(policy(&name, "api")))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(result.policies, [format!("demo/{name}")]);
                for selected in &result.selected[0].endpoints {
                    assert!(selected.starts_with("demo/api-"), "{selected}");
                }
                policies
                    .validate(Request::new(policy("candidate", "frontend")))
                    .await
                    .unwrap();
                if round % 5 == 4 {
                    policies
                        .delete(Request::new(DeleteRequest {
                            keys: vec![format!("demo/{name}")],
                        }))
                        .await
                        .unwrap();
                }
            }
        })
    };
    let read = {
        let policies = policies.clone();
        let daemon = daemon.clone();
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                policies.list(Request::new(ListRequest {})).await.unwrap();
                daemon
                    .list_endpoints(Request::new(ListEndpointsRequest {}))
                    .await
                    .unwrap();
                daemon.status(Request::new(StatusRequest {})).await.unwrap();
            }
        })
    };
    let all = async {
        for task in [churn, apply, read] {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(DEADLINE, all)
        .await
        .expect("policy changes and endpoint churn deadlocked");

    // The last listing (round ROUNDS-1: three api replicas) is what everyone sees.
    let endpoints = daemon
        .list_endpoints(Request::new(ListEndpointsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    let mut names: Vec<_> = endpoints.iter().map(|e| e.pod_name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api-0", "api-1", "api-2", "frontend-0"]);
    assert!(endpoints.iter().all(|e| e.identity != 0));
    let listed = policies
        .list(Request::new(ListRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.policies.is_empty());
    for p in &listed.policies {
        assert_eq!(
            p.selected,
            ["demo/api-0", "demo/api-1", "demo/api-2"],
            "{}",
            p.key
        );
    }
    let status = daemon
        .status(Request::new(StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.endpoints, 4);
}
