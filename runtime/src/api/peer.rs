//! `peer.Peer`: the nodes a relay should connect to. Without a cluster view an
//! agent knows one peer, itself.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::proto::peer::{
    ChangeNotification, ChangeNotificationType, NotifyRequest, Tls, peer_server::Peer,
};
use crate::agent::AgentState;

/// The service, over the agent's shared state.
#[derive(Debug, Clone)]
pub struct PeerService {
    state: Arc<AgentState>,
}

impl PeerService {
    /// A service answering from `state`.
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }
}

type NotifyStream = Pin<Box<dyn Stream<Item = Result<ChangeNotification, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = NotifyStream;

    async fn notify(
        &self,
        _request: Request<NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let cfg = &self.state.config;
        let address = cfg
            .hubble_listen_address()
            .map_or_else(|| cfg.socket_path.display().to_string(), |a| a.to_string());
        let me = ChangeNotification {
            name: self.state.node_name.clone(),
            address,
            r#type: ChangeNotificationType::PeerAdded as i32,
            tls: cfg.hubble.tls.enabled.then(|| Tls {
                server_name: self.state.node_name.clone(),
            }),
        };
        // The stream stays open, as Hubble's does, for changes to come.
        let stream = tokio_stream::once(Ok(me)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}
