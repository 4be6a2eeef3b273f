//! The Observer API on TCP with TLS (`hubble.listenAddress` + `hubble.tls`),
//! with a certificate made by `openssl` for the test, and mutual TLS refusing a
//! client without a certificate, a client whose certificate another CA signed,
//! and a plaintext client.

// Test helpers panic on failure by design (the lint allows it only inside #[test]).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use loupe_proto::flow::{Flow, Verdict};
use loupe_proto::observer::{
    GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes,
    observer_client::ObserverClient,
};
use loupe_runtime::agent::{self, AgentState};
use loupe_runtime::config::AgentConfig;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

async fn connect(port: u16, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Whether a client was refused: at connection, or at its first call.
async fn is_refused(channel: Result<Channel, tonic::transport::Error>) -> bool {
    match channel {
        Err(_) => true,
        Ok(ch) => ObserverClient::new(ch)
            .server_status(ServerStatusRequest {})
            .await
            .is_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    common::make_pki(dir.path());
    let port = common::free_port();
    let mut config = AgentConfig {
        socket_path: dir.path().join("loupe.sock"),
        node_name: Some("tls-node".into()),
        ..AgentConfig::default()
    };
    config.endpoints.lab = false;
    config.hubble.listen_address = format!("127.0.0.1:{port}");
    config.hubble.tls.enabled = true;
    config.hubble.tls.cert_file = Some(dir.path().join("server.pem"));
    config.hubble.tls.key_file = Some(dir.path().join("server.key"));
    config.hubble.tls.client_ca_files = vec![dir.path().join("ca.pem")];
    config.validate(Path::new("test")).unwrap();
    config.state_dir = dir.path().to_path_buf();
    let state = Arc::new(AgentState::new(config).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent::run_with_state(state.clone(), async move {
        let _ = stopped.await;
    }));
    state.flows.push(Flow {
        verdict: Verdict::Dropped as i32,
        ..Default::default()
    });

    let ca = Certificate::from_pem(std::fs::read(dir.path().join("ca.pem")).unwrap());
    let identity = Identity::from_pem(
        std::fs::read(dir.path().join("client.pem")).unwrap(),
        std::fs::read(dir.path().join("client.key")).unwrap(),
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("localhost");

    let mut channel = None;
    for _ in 0..50 {
        match connect(port, tls.clone().identity(identity.clone())).await {
            Ok(c) => {
                channel = Some(c);
                break;
            }
            Err(_) => {
                if agent_task.is_finished() {
                    panic!("agent stopped: {:?}", agent_task.await);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut client = ObserverClient::new(channel.expect("TLS listener never came up"));
    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.seen_flows, 1);
    let mut stream = client
        .get_flows(GetFlowsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(msg.node_name, "tls-node");
    assert!(
        matches!(msg.response_types, Some(ResponseTypes::Flow(f)) if f.verdict == Verdict::Dropped as i32)
    );

    // Without a client certificate the server refuses (mTLS is on).
    let refused = is_refused(connect(port, tls.clone()).await).await;
    assert!(refused, "a client without a certificate was served");

    // A certificate from another CA (same names, same extensions) is refused.
    let rogue = dir.path().join("rogue");
    std::fs::create_dir(&rogue).unwrap();
    common::make_pki(&rogue);
    let rogue_identity = Identity::from_pem(
        std::fs::read(rogue.join("client.pem")).unwrap(),
        std::fs::read(rogue.join("client.key")).unwrap(),
    );
    let refused = is_refused(connect(port, tls.clone().identity(rogue_identity)).await).await;
    assert!(refused, "a client certificate from another CA was served");

    // Plaintext HTTP/2 on the TLS port gets nothing.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    let refused = is_refused(plain).await;
    assert!(refused, "a plaintext client was served on the TLS port");
    // The agent kept serving the good client throughout.
    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.seen_flows, 1);
    let _ = stop.send(());
}
