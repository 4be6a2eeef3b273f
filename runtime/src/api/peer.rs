//! `peer.Peer`: the nodes a relay should connect to. Without a cluster view an
//! agent knows one peer, itself.

use std::pin::Pin;

use loupe_proto::peer::{
    ChangeNotification, ChangeNotificationType, NotifyRequest, Tls, peer_server::Peer,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::NodeInfo;

/// The service, over this node's description.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: NodeInfo,
}

impl PeerService {
    /// A service announcing `node`.
    pub fn new(node: NodeInfo) -> Self {
        Self { node }
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
        let me = ChangeNotification {
            name: self.node.name.clone(),
            address: self.node.address.clone(),
            r#type: ChangeNotificationType::PeerAdded as i32,
            tls: self.node.tls.then(|| Tls {
                server_name: self.node.name.clone(),
            }),
        };
        // The stream stays open, as Hubble's does, for changes to come.
        let stream = tokio_stream::once(Ok(me)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}
