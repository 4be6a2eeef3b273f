//! `peer.Peer`: the nodes a relay should connect to. With a cluster view (the
//! Kubernetes source's node watch) every node of the cluster is announced, and
//! then each change (added, address updated, deleted), as Cilium's peer service
//! does; without one an agent knows one peer, itself.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;

use loupe_proto::peer::{
    ChangeNotification, ChangeNotificationType, NotifyRequest, Tls, peer_server::Peer,
};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::NodeInfo;
use crate::endpoint::kubernetes::nodes::{ClusterNode, ClusterNodes};

/// The service, over this node's description and the cluster's nodes.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: NodeInfo,
    cluster: ClusterNodes,
}

impl PeerService {
    /// A service announcing `cluster`'s nodes once known, `node` until then.
    pub fn new(node: NodeInfo, cluster: ClusterNodes) -> Self {
        Self { node, cluster }
    }
}

type NotifyStream = Pin<Box<dyn Stream<Item = Result<ChangeNotification, Status>> + Send>>;

/// What a follower of the peer service has been told, and what to tell it next.
struct Follower {
    nodes: watch::Receiver<Option<Vec<ClusterNode>>>,
    me: NodeInfo,
    told: BTreeMap<String, String>,
    queue: VecDeque<ChangeNotification>,
    /// The node list was read at least once.
    started: bool,
}

impl Follower {
    fn change(
        &self,
        name: &str,
        address: &str,
        kind: ChangeNotificationType,
    ) -> ChangeNotification {
        ChangeNotification {
            name: name.to_string(),
            address: address.to_string(),
            r#type: kind as i32,
            tls: self.me.tls.then(|| Tls {
                server_name: name.to_string(),
            }),
        }
    }

    /// Queues the differences between what was told and what is now.
    fn diff(&mut self) {
        let now: BTreeMap<String, String> = match &*self.nodes.borrow_and_update() {
            Some(list) => list
                .iter()
                .map(|n| (n.name.clone(), n.address.clone()))
                .collect(),
            None => BTreeMap::from([(self.me.name.clone(), self.me.address.clone())]),
        };
        for (name, address) in &now {
            match self.told.get(name) {
                None => self.queue.push_back(self.change(
                    name,
                    address,
                    ChangeNotificationType::PeerAdded,
                )),
                Some(old) if old != address => self.queue.push_back(self.change(
                    name,
                    address,
                    ChangeNotificationType::PeerUpdated,
                )),
                Some(_) => {}
            }
        }
        for (name, address) in &self.told {
            if !now.contains_key(name) {
                self.queue.push_back(self.change(
                    name,
                    address,
                    ChangeNotificationType::PeerDeleted,
                ));
            }
        }
        self.told = now;
    }

    async fn next(mut self) -> Option<(Result<ChangeNotification, Status>, Self)> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Some((Ok(change), self));
            }
            if self.started {
                // The stream stays open, as Hubble's does, for changes to come.
                if self.nodes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            self.started = true;
            self.diff();
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = NotifyStream;

    async fn notify(
        &self,
        _request: Request<NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let follower = Follower {
            nodes: self.cluster.subscribe(),
            me: self.node.clone(),
            told: BTreeMap::new(),
            queue: VecDeque::new(),
            started: false,
        };
        let stream = futures::stream::unfold(follower, Follower::next);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    fn node(name: &str, address: &str) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            address: address.into(),
        }
    }

    #[tokio::test]
    async fn followers_hear_every_node_then_each_change() {
        let me = NodeInfo {
            name: "node-a".into(),
            address: "0.0.0.0:4244".into(),
            tls: true,
            started: std::time::Instant::now(),
        };
        let cluster = ClusterNodes::default();
        let service = PeerService::new(me, cluster.clone());
        let mut stream = service
            .notify(Request::new(NotifyRequest {}))
            .await
            .unwrap()
            .into_inner();
        let mut next = async || {
            let c = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("a notification")
                .unwrap()
                .unwrap();
            let kind = ChangeNotificationType::try_from(c.r#type).unwrap();
            (kind, c.name, c.address, c.tls.map(|t| t.server_name))
        };
        use ChangeNotificationType::{PeerAdded, PeerDeleted, PeerUpdated};
        let tls = |n: &str| Some(n.to_string());
        // No cluster view yet: itself.
        assert_eq!(
            next().await,
            (
                PeerAdded,
                "node-a".into(),
                "0.0.0.0:4244".into(),
                tls("node-a")
            )
        );
        // The node list arrives: the others are added.
        cluster.set(vec![
            node("node-b", "10.0.0.2:4244"),
            node("node-a", "10.0.0.1:4244"),
        ]);
        assert_eq!(
            next().await,
            (
                PeerUpdated,
                "node-a".into(),
                "10.0.0.1:4244".into(),
                tls("node-a")
            )
        );
        assert_eq!(
            next().await,
            (
                PeerAdded,
                "node-b".into(),
                "10.0.0.2:4244".into(),
                tls("node-b")
            )
        );
        // node-b leaves, node-c joins.
        cluster.set(vec![
            node("node-a", "10.0.0.1:4244"),
            node("node-c", "10.0.0.3:4244"),
        ]);
        assert_eq!(
            next().await,
            (
                PeerAdded,
                "node-c".into(),
                "10.0.0.3:4244".into(),
                tls("node-c")
            )
        );
        assert_eq!(
            next().await,
            (
                PeerDeleted,
                "node-b".into(),
                "10.0.0.2:4244".into(),
                tls("node-b")
            )
        );
    }
}
