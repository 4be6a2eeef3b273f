//! `grpc.health.v1.Health` next to the Observer, checked by an independent client:
//! grpcio-health-checking (gRPC C-core, the stack most scripts use) with default
//! channel options over `hubble.listenAddress` and over the agent socket, and
//! tonic's client over the socket. `hubble status` asks for `hubble.server.Observer`.

// Test helpers panic on failure by design (the lint allows it only inside #[test]).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use loupe_runtime::agent::{self, AgentState};
use loupe_runtime::api::client;
use loupe_runtime::config::AgentConfig;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Runs grpcio-health-checking's client against `target`; one line per service:
/// `<service> <status name>` (`NOT_FOUND` for an unknown service).
fn grpcio_check(target: &str, services: &[&str]) -> String {
    let script = r#"
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in sys.argv[2:]:
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            print(service or "<server>", health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
        except grpc.RpcError as e:
            print(service or "<server>", e.code().name)
"#;
    let python = common::python();
    let out = std::process::Command::new(&python)
        .args(["-c", script, target])
        .args(services)
        .output()
        .unwrap_or_else(|e| {
            panic!("{python}: {e} (grpcio-health-checking; scripts/bootstrap installs it)")
        });
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_grpcio_and_tonic_clients() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut config = AgentConfig {
        socket_path: dir.path().join("loupe.sock"),
        node_name: Some("health-node".into()),
        ..AgentConfig::default()
    };
    config.endpoints.lab = false;
    config.hubble.listen_address = format!("127.0.0.1:{port}");
    config.validate(Path::new("test")).unwrap();
    config.state_dir = dir.path().to_path_buf();
    let socket = config.socket_path.clone();
    let state = Arc::new(AgentState::new(config).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent::run_with_state(state, async move {
        let _ = stopped.await;
    }));
    let ready = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            || !socket.exists()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("agent listening");

    let target = format!("127.0.0.1:{port}");
    let services = [
        "",
        "hubble.server.Observer",
        "observer.Observer",
        "peer.Peer",
        "nope.Nope",
    ];
    let want = "<server> SERVING\nhubble.server.Observer SERVING\nobserver.Observer SERVING\npeer.Peer SERVING\nnope.Nope NOT_FOUND\n";
    let answers = tokio::task::spawn_blocking(move || grpcio_check(&target, &services))
        .await
        .unwrap();
    assert_eq!(answers, want);
    // The agent socket with default channel options: C-core names the socket path
    // (percent-encoded) as `:authority`; five calls on one channel also take the
    // HPACK dynamic-table entry for it.
    let unix = format!("unix://{}", socket.display());
    let answers = tokio::task::spawn_blocking(move || grpcio_check(&unix, &services))
        .await
        .unwrap();
    assert_eq!(answers, want);

    // The same service on the agent socket, where `hubble --server unix://…` asks.
    let mut health = HealthClient::new(client::connect(&socket).await.unwrap());
    let status = health
        .check(HealthCheckRequest {
            service: "hubble.server.Observer".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let _ = stop.send(());
    agent_task.await.unwrap().unwrap();
}
