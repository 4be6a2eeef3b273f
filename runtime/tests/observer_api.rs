//! The Observer API end to end in-process: the agent library on a temp unix
//! socket, flows pushed through `FlowStore::push`, queried with a client
//! generated from Loupe's protos.

// Test helpers panic on failure by design (the lint allows it only inside #[test]).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use loupe_proto::flow::{
    DropReason, Endpoint, Flow, FlowFilter, FlowType, Http, Ip, IpVersion, L7FlowType, Layer4,
    Layer7, LostEventSource, Tcp, TrafficDirection, Verdict, layer4, layer7,
};
use loupe_proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNodesRequest, ServerStatusRequest,
    get_flows_response::ResponseTypes, observer_client::ObserverClient,
};
use loupe_proto::peer::{NotifyRequest, peer_client::PeerClient};
use loupe_runtime::agent::{self, AgentState};
use loupe_runtime::api::client;
use loupe_runtime::config::AgentConfig;

struct Agent {
    state: Arc<AgentState>,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start_agent(mut config: AgentConfig) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("loupe.sock");
    config.socket_path = socket.clone();
    config.endpoints.lab = false;
    config.node_name = Some("test-node".into());
    config.state_dir = dir.path().to_path_buf();
    let state = Arc::new(AgentState::new(config).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(agent::run_with_state(state.clone(), async move {
        let _ = rx.await;
    }));
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Agent {
        state,
        socket,
        _dir: dir,
        stop: Some(tx),
    }
}

fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn http_flow(t: i64, src_pod: &str, dst_pod: &str, method: &str, code: u32) -> Flow {
    Flow {
        time: Some(ts(t)),
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L7 as i32,
        traffic_direction: TrafficDirection::Ingress as i32,
        ip: Some(Ip {
            source: "10.0.1.5".into(),
            destination: "10.0.2.7".into(),
            ip_version: IpVersion::IPv4 as i32,
            ..Default::default()
        }),
        source: Some(Endpoint {
            namespace: "demo-app".into(),
            pod_name: src_pod.into(),
            labels: vec![format!("k8s:app={}", src_pod.split('-').next().unwrap())],
            identity: 1001,
            ..Default::default()
        }),
        destination: Some(Endpoint {
            namespace: "demo-app".into(),
            pod_name: dst_pod.into(),
            labels: vec!["k8s:app=api".into()],
            identity: 1002,
            ..Default::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40000,
                destination_port: 80,
                flags: None,
            })),
        }),
        l7: Some(Layer7 {
            r#type: if code == 0 {
                L7FlowType::Request as i32
            } else {
                L7FlowType::Response as i32
            },
            latency_ns: if code == 0 { 0 } else { 2_000_000 },
            record: Some(layer7::Record::Http(Http {
                code,
                method: method.into(),
                url: format!("http://api-service/{}", method.to_lowercase()),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            })),
        }),
        ..Default::default()
    }
}

fn drop_flow(t: i64) -> Flow {
    Flow {
        time: Some(ts(t)),
        verdict: Verdict::Dropped as i32,
        drop_reason_desc: DropReason::PolicyDenied as i32,
        r#type: FlowType::L3L4 as i32,
        traffic_direction: TrafficDirection::Ingress as i32,
        source: Some(Endpoint {
            namespace: "demo-app".into(),
            pod_name: "frontend-abc".into(),
            ..Default::default()
        }),
        destination: Some(Endpoint {
            namespace: "demo-app".into(),
            pod_name: "api-service-xyz".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn collect(
    client: &mut ObserverClient<tonic::transport::Channel>,
    req: GetFlowsRequest,
) -> Vec<Flow> {
    let mut stream = client.get_flows(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        if let Some(ResponseTypes::Flow(f)) = msg.response_types {
            out.push(f);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_flows_with_combined_filters() {
    let agent = start_agent(AgentConfig::default()).await;
    let store = &agent.state.flows;
    store.push(http_flow(100, "frontend-abc", "api-service-xyz", "GET", 0));
    store.push(http_flow(
        101,
        "frontend-abc",
        "api-service-xyz",
        "GET",
        200,
    ));
    store.push(http_flow(
        102,
        "frontend-abc",
        "api-service-xyz",
        "POST",
        503,
    ));
    store.push(drop_flow(103));
    store.push(http_flow(104, "loadgen-1", "api-service-xyz", "GET", 404));
    let mut client = ObserverClient::new(client::connect(&agent.socket).await.unwrap());

    // Whitelist: frontend's flows OR any dropped flow; blacklist: HTTP 5xx.
    let flows = collect(
        &mut client,
        GetFlowsRequest {
            whitelist: vec![
                FlowFilter {
                    source_pod: vec!["demo-app/frontend".into()],
                    protocol: vec!["http".into()],
                    ..Default::default()
                },
                FlowFilter {
                    verdict: vec![Verdict::Dropped as i32],
                    ..Default::default()
                },
            ],
            blacklist: vec![FlowFilter {
                http_status_code: vec!["5+".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let times: Vec<i64> = flows.iter().map(|f| f.time.unwrap().seconds).collect();
    assert_eq!(times, vec![100, 101, 103]);

    // number = last N; first = first N; since/until bound.
    let last2 = collect(
        &mut client,
        GetFlowsRequest {
            number: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        last2
            .iter()
            .map(|f| f.time.unwrap().seconds)
            .collect::<Vec<_>>(),
        vec![103, 104]
    );
    let first2 = collect(
        &mut client,
        GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        first2
            .iter()
            .map(|f| f.time.unwrap().seconds)
            .collect::<Vec<_>>(),
        vec![100, 101]
    );
    let window = collect(
        &mut client,
        GetFlowsRequest {
            since: Some(ts(101)),
            until: Some(ts(103)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(window.len(), 3);

    // Labels with selector syntax, and node names.
    let by_label = collect(
        &mut client,
        GetFlowsRequest {
            whitelist: vec![FlowFilter {
                source_label: vec!["app in (loadgen)".into()],
                node_name: vec!["test-*".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].source.as_ref().unwrap().pod_name, "loadgen-1");

    // Invalid requests are refused with the reason.
    let err = client
        .get_flows(GetFlowsRequest {
            whitelist: vec![FlowFilter {
                http_status_code: vec!["9+".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("http_status_code"),
        "{}",
        err.message()
    );
    let err = client
        .get_flows(GetFlowsRequest {
            field_mask: Some(prost_types::FieldMask {
                paths: vec!["nonsense".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let err = client
        .get_flows(GetFlowsRequest {
            first: true,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .get_flows(GetFlowsRequest {
            since: Some(ts(200)),
            until: Some(ts(100)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("since is after until"),
        "{}",
        err.message()
    );

    // Field mask.
    let masked = collect(
        &mut client,
        GetFlowsRequest {
            number: 1,
            field_mask: Some(prost_types::FieldMask {
                paths: vec!["time".into(), "source.pod_name".into()],
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(masked[0].source.as_ref().unwrap().pod_name, "loadgen-1");
    assert_eq!(masked[0].source.as_ref().unwrap().namespace, "");
    assert!(masked[0].l7.is_none());

    // Status, nodes, namespaces, peers.
    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.num_flows, status.max_flows, status.seen_flows),
        (5, 4095, 5)
    );
    let nodes = client
        .get_nodes(GetNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes[0].name, "test-node");
    let namespaces = client
        .get_namespaces(GetNamespacesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(namespaces.namespaces[0].namespace, "demo-app");
    // `loupe status` sees the same store through the control API.
    let daemon = loupe_proto::daemon::daemon_client::DaemonClient::new(
        client::connect(&agent.socket).await.unwrap(),
    )
    .status(loupe_proto::daemon::StatusRequest {})
    .await
    .unwrap()
    .into_inner();
    assert!(daemon.healthy);
    let flows = daemon.flows.unwrap();
    assert_eq!((flows.stored, flows.seen, flows.capacity), (5, 5, 4095));
    assert!(
        daemon
            .components
            .iter()
            .any(|c| c.name == "hubble" && c.state == "ok")
    );
    let mut peers = PeerClient::new(client::connect(&agent.socket).await.unwrap())
        .notify(NotifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(peers.message().await.unwrap().unwrap().name, "test-node");
}

/// Every top-level field of Cilium v1.19's `flow.Flow`.
const CILIUM_1_19_FLOW_FIELDS: &[&str] = &[
    "time",
    "uuid",
    "emitter",
    "verdict",
    "drop_reason",
    "auth_type",
    "ethernet",
    "IP",
    "l4",
    "tunnel",
    "source",
    "destination",
    "Type",
    "node_name",
    "node_labels",
    "source_names",
    "destination_names",
    "l7",
    "reply",
    "event_type",
    "source_service",
    "destination_service",
    "traffic_direction",
    "policy_match_type",
    "trace_observation_point",
    "trace_reason",
    "file",
    "drop_reason_desc",
    "is_reply",
    "debug_capture_point",
    "interface",
    "proxy_port",
    "trace_context",
    "sock_xlate_point",
    "socket_cookie",
    "cgroup_id",
    "Summary",
    "extensions",
    "egress_allowed_by",
    "ingress_allowed_by",
    "egress_denied_by",
    "ingress_denied_by",
    "policy_log",
    "aggregate",
    "ip_trace_id",
];

/// What `hubble observe` sends by default in compact, dict and table output.
const HUBBLE_DEFAULT_FIELD_MASK: &[&str] = &[
    "time",
    "verdict",
    "ethernet",
    "IP",
    "l4",
    "source.identity",
    "source.namespace",
    "source.pod_name",
    "destination.identity",
    "destination.namespace",
    "destination.pod_name",
    "Type",
    "node_name",
    "l7",
    "event_type",
    "source_service",
    "destination_service",
    "is_reply",
    "Summary",
    "ip_trace_id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubbles_field_masks_are_accepted_and_applied() {
    let agent = start_agent(AgentConfig::default()).await;
    let mut flow = http_flow(100, "frontend-abc", "api-service-xyz", "GET", 200);
    // Summary is deprecated in Hubble's proto, and still what its CLI prints.
    #[allow(deprecated)]
    {
        flow.summary = "HTTP/1.1 GET http://api-service/get".into();
    }
    flow.extensions = Some(prost_types::Any {
        type_url: "type.googleapis.com/google.protobuf.Empty".into(),
        value: Vec::new(),
    });
    agent.state.flows.push(flow);
    let mut client = ObserverClient::new(client::connect(&agent.socket).await.unwrap());
    let mask = |paths: &[&str]| GetFlowsRequest {
        number: 1,
        field_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
        ..Default::default()
    };

    // The default mask: accepted, and only what it names comes back.
    let flows = collect(&mut client, mask(HUBBLE_DEFAULT_FIELD_MASK)).await;
    let f = &flows[0];
    assert!(f.time.is_some() && f.l7.is_some() && f.ip.is_some() && f.l4.is_some());
    #[allow(deprecated)]
    let summary = f.summary.as_str();
    assert_eq!(summary, "HTTP/1.1 GET http://api-service/get");
    let src = f.source.as_ref().unwrap();
    assert_eq!(
        (src.namespace.as_str(), src.pod_name.as_str()),
        ("demo-app", "frontend-abc")
    );
    assert!(src.labels.is_empty() && src.workloads.is_empty(), "{src:?}");
    assert!(f.uuid.is_empty() && f.extensions.is_none(), "{f:?}");

    // Each top-level field of Cilium v1.19's Flow exists and is a valid mask.
    let descriptor = loupe_proto::descriptor_pool()
        .get_message_by_name("flow.Flow")
        .unwrap();
    let mut ours: Vec<String> = descriptor.fields().map(|f| f.name().to_string()).collect();
    let mut theirs: Vec<String> = CILIUM_1_19_FLOW_FIELDS
        .iter()
        .map(|f| f.to_string())
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    for field in CILIUM_1_19_FLOW_FIELDS {
        client
            .get_flows(mask(&[field]))
            .await
            .unwrap_or_else(|e| panic!("mask {field}: {}", e.message()));
    }

    // An unknown path is refused, naming it.
    let err = client.get_flows(mask(&["time", "nope"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("\"nope\""), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_fills_summary_as_observe_prints_it() {
    use loupe_proto::extension::{Field, L7Extension, Value, value};
    let agent = start_agent(AgentConfig::default()).await;
    let mut syn = drop_flow(100);
    syn.l4 = Some(Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port: 40000,
            destination_port: 6379,
            flags: Some(loupe_proto::flow::TcpFlags {
                syn: true,
                ..Default::default()
            }),
        })),
    });
    let mut redis = http_flow(103, "api-service-xyz", "db-service-1", "GET", 0);
    if let Some(l7) = redis.l7.as_mut() {
        l7.record = None;
    }
    redis.extensions = Some(loupe_proto::fields::extension_any(&L7Extension {
        protocol: "redis".into(),
        plugin: "redis".into(),
        plugin_version: "0.1.0".into(),
        fields: vec![Field {
            name: "command".into(),
            value: Some(Value {
                kind: Some(value::Kind::String("SET".into())),
            }),
        }],
    }));
    let flows = [
        syn,
        http_flow(101, "frontend-abc", "api-service-xyz", "GET", 0),
        http_flow(102, "frontend-abc", "api-service-xyz", "POST", 403),
        redis,
    ];
    for f in &flows {
        agent.state.flows.push(f.clone());
    }
    let mut client = ObserverClient::new(client::connect(&agent.socket).await.unwrap());
    let received = collect(
        &mut client,
        GetFlowsRequest {
            number: 4,
            // What `hubble observe` sends by default.
            field_mask: Some(prost_types::FieldMask {
                paths: HUBBLE_DEFAULT_FIELD_MASK
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            }),
            ..Default::default()
        },
    )
    .await;
    #[allow(deprecated)]
    let summaries: Vec<&str> = received.iter().map(|f| f.summary.as_str()).collect();
    assert_eq!(
        summaries,
        [
            "TCP Flags: SYN",
            "HTTP/1.1 GET http://api-service/get",
            "HTTP/1.1 403 2ms (POST http://api-service/post)",
            "redis request command=SET",
        ]
    );

    // The response keeps its node and time whatever the mask keeps of the flow.
    let mut stream = client
        .get_flows(GetFlowsRequest {
            number: 1,
            field_mask: Some(prost_types::FieldMask {
                paths: vec!["verdict".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert_eq!(response.node_name, "test-node");
    assert_eq!(response.time, Some(ts(103)));
    let Some(ResponseTypes::Flow(flow)) = response.response_types else {
        panic!("not a flow");
    };
    assert!(flow.node_name.is_empty() && flow.time.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_with_since_streams_history_then_live_flows() {
    let agent = start_agent(AgentConfig::default()).await;
    let store = agent.state.flows.clone();
    store.push(http_flow(
        100,
        "frontend-abc",
        "api-service-xyz",
        "GET",
        200,
    ));
    store.push(http_flow(
        200,
        "frontend-abc",
        "api-service-xyz",
        "GET",
        200,
    ));
    let mut client = ObserverClient::new(client::connect(&agent.socket).await.unwrap());
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            since: Some(ts(150)),
            whitelist: vec![FlowFilter {
                http_method: vec!["GET".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(ResponseTypes::Flow(f)) = first.response_types else {
        panic!("{first:?}")
    };
    assert_eq!(f.time.unwrap().seconds, 200);
    assert_eq!(first.node_name, "test-node");
    // Live: a POST (filtered out), an old GET (before since), then a new GET.
    store.push(http_flow(
        300,
        "frontend-abc",
        "api-service-xyz",
        "POST",
        201,
    ));
    store.push(http_flow(
        120,
        "frontend-abc",
        "api-service-xyz",
        "GET",
        200,
    ));
    store.push(http_flow(
        301,
        "frontend-abc",
        "api-service-xyz",
        "GET",
        200,
    ));
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(ResponseTypes::Flow(f)) = next.response_types else {
        panic!("{next:?}")
    };
    assert_eq!(f.time.unwrap().seconds, 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_gets_lost_events_and_stalls_nobody() {
    let mut config = AgentConfig::default();
    config.hubble.event_queue_size = 1000;
    let agent = start_agent(config).await;
    let store = agent.state.flows.clone();

    let mut slow_client = ObserverClient::new(client::connect(&agent.socket).await.unwrap());
    let mut slow = slow_client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut fast_client = ObserverClient::new(client::connect(&agent.socket).await.unwrap());
    let mut fast = fast_client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Both subscriptions are registered once the store has two subscribers.
    for _ in 0..100 {
        if store.stats().subscribers == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.stats().subscribers, 2);

    // The fast client reads concurrently; the slow one reads nothing. The test
    // paces the producer to the fast client (never more than 500 flows ahead,
    // half its queue), so the fast client must get every flow; the slow client
    // is never waited for.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen_by_reader = received.clone();
    let reader = tokio::spawn(async move {
        let mut flows = 0_u64;
        let mut lost = 0_u64;
        while flows + lost < 100_000 {
            match fast.message().await {
                Ok(Some(m)) => match m.response_types {
                    Some(ResponseTypes::Flow(_)) => flows += 1,
                    Some(ResponseTypes::LostEvents(l)) => lost += l.num_events_lost,
                    _ => {}
                },
                _ => break,
            }
            seen_by_reader.store(flows + lost, std::sync::atomic::Ordering::Relaxed);
        }
        (flows, lost)
    });
    let pushed = tokio::task::spawn_blocking(move || {
        let mut pushing = Duration::ZERO;
        let mut slowest = Duration::ZERO;
        for n in 0..100_000_u64 {
            let flow = http_flow(n as i64, "frontend-abc", "api-service-xyz", "GET", 200);
            let start = std::time::Instant::now();
            store.push(flow);
            let took = start.elapsed();
            pushing += took;
            slowest = slowest.max(took);
            if n % 500 == 499 {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while received.load(std::sync::atomic::Ordering::Relaxed) + 500 < n + 1
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        (pushing, slowest, store)
    })
    .await
    .unwrap();
    let (pushing, slowest, store) = pushed;
    // The pipeline never waited on the slow reader: 100k pushes took little
    // time in total and no single push stalled.
    assert!(pushing < Duration::from_secs(5), "{pushing:?}");
    assert!(slowest < Duration::from_millis(200), "{slowest:?}");
    assert_eq!(store.stats().seen, 100_000);

    let (fast_flows, fast_lost) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((fast_flows, fast_lost), (100_000, 0));

    // Now the slow client reads: some flows, then a LostEvent from its queue.
    let mut slow_flows = 0_u64;
    let mut slow_lost = 0_u64;
    while slow_flows + slow_lost < 100_000 {
        let m = tokio::time::timeout(Duration::from_secs(5), slow.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m.response_types {
            Some(ResponseTypes::Flow(_)) => slow_flows += 1,
            Some(ResponseTypes::LostEvents(l)) => {
                assert_eq!(l.source, LostEventSource::HubbleRingBuffer as i32);
                slow_lost += l.num_events_lost;
            }
            _ => {}
        }
    }
    assert!(slow_lost > 50_000, "slow client lost only {slow_lost}");
    assert!(slow_flows < 50_000);
    assert!(store.stats().lost_to_subscribers >= slow_lost);
}

/// Hostile requests get an error naming what is wrong, and the agent keeps serving:
/// an oversize frame, too many patterns across filters, a field mask of 2,000 paths.
#[tokio::test]
async fn hostile_requests_are_refused_and_the_agent_keeps_serving() {
    let agent = start_agent(AgentConfig::default()).await;
    agent.state.flows.push(drop_flow(100));
    let mut client = ObserverClient::new(client::connect(&agent.socket).await.unwrap());
    let refused = |e: Result<
        tonic::Response<tonic::Streaming<GetFlowsResponse>>,
        tonic::Status,
    >| { e.expect_err("a hostile request was served") };
    // 5 MiB in one frame: over the server's 4 MiB decoding limit.
    let frame = refused(
        client
            .get_flows(GetFlowsRequest {
                blacklist: vec![FlowFilter {
                    source_pod: vec!["x".repeat(5 << 20)],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await,
    );
    assert_eq!(frame.code(), tonic::Code::OutOfRange, "{frame}");
    assert!(
        frame.message().contains("message length too large"),
        "{frame}"
    );
    // 300 patterns, each filter within bounds.
    let patterns = refused(
        client
            .get_flows(GetFlowsRequest {
                whitelist: vec![
                    FlowFilter {
                        http_path: vec!["^/a$".into(); 3],
                        ..Default::default()
                    };
                    100
                ],
                ..Default::default()
            })
            .await,
    );
    assert_eq!(patterns.code(), tonic::Code::InvalidArgument);
    assert!(
        patterns.message().contains("300 regular expressions"),
        "{patterns}"
    );
    // 2,000 field-mask paths.
    let mask = refused(
        client
            .get_flows(GetFlowsRequest {
                field_mask: Some(prost_types::FieldMask {
                    paths: vec!["time".into(); 2000],
                }),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(mask.code(), tonic::Code::InvalidArgument);
    assert!(mask.message().contains("at most 1024"), "{mask}");
    // Still serving, on the same connection.
    let flows = collect(&mut client, GetFlowsRequest::default()).await;
    assert_eq!(flows.len(), 1);
}
