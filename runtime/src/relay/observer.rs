//! `observer.Observer` over every node: `GetFlows` merged in time order across
//! the nodes (and kept going while nodes come and go with `follow`),
//! `ServerStatus` summed with the connected and unavailable nodes, `GetNodes`,
//! `GetNamespaces`.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;

use futures::future::join_all;
use loupe_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Node as PbNode, ServerStatusRequest, ServerStatusResponse,
    Tls, get_flows_response::ResponseTypes, observer_client::ObserverClient,
    observer_server::Observer,
};
use loupe_proto::relay::{NodeState, NodeStatusEvent};
use loupe_proto::time::now_timestamp;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::merge;
use super::peers::{Node, Peers};

/// How long a unary call to a node may take before the node counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a `follow` stream looks for nodes to (re)connect.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// At most this many unavailable nodes are named in `ServerStatus`, as Hubble Relay.
const MAX_UNAVAILABLE_NAMED: usize = 10;

/// The relay's Observer.
#[derive(Debug, Clone)]
pub struct RelayObserver {
    peers: Peers,
    sort_buffer: usize,
    drain: Duration,
    started: std::time::Instant,
}

impl RelayObserver {
    /// The service over `peers`, merging with a sort buffer of `sort_buffer`
    /// responses drained after `drain`.
    pub fn new(peers: Peers, sort_buffer: usize, drain: Duration) -> Self {
        Self {
            peers,
            sort_buffer,
            drain,
            started: std::time::Instant::now(),
        }
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;
type Unimplemented<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn node_status(state: NodeState, names: Vec<String>, message: String) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: names,
            message,
        })),
        node_name: String::new(),
        time: Some(now_timestamp()),
    }
}

/// Calls `call` on every node at once, each bounded by [`CALL_TIMEOUT`]; marks
/// each node by the outcome.
async fn on_every_node<T, F, Fut>(peers: &Peers, call: F) -> Vec<(Node, Result<T, String>)>
where
    F: Fn(ObserverClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    let nodes = peers.nodes();
    let calls = nodes.iter().map(|node| {
        let fut = call(ObserverClient::new(node.channel()));
        async move {
            match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(status)) => Err(status.message().to_string()),
                Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
            }
        }
    });
    let results = join_all(calls).await;
    nodes
        .into_iter()
        .zip(results)
        .map(|(node, result)| {
            peers.mark(
                &node.name,
                result.as_ref().map(|_| ()).map_err(Clone::clone),
            );
            (node, result)
        })
        .collect()
}

/// Streams one node's flows into `tx` until the node's stream ends or fails, or
/// `tx` closes; the outcome for the node.
async fn pump(
    node: Node,
    request: GetFlowsRequest,
    tx: mpsc::Sender<GetFlowsResponse>,
) -> Result<(), String> {
    let mut stream = ObserverClient::new(node.channel())
        .get_flows(request)
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(mut response)) => {
                if response.node_name.is_empty() {
                    response.node_name.clone_from(&node.name);
                }
                if tx.send(response).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(status.message().to_string()),
        }
    }
}

#[tonic::async_trait]
impl Observer for RelayObserver {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream = Unimplemented<GetAgentEventsResponse>;
    type GetDebugEventsStream = Unimplemented<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(1024);
        if request.follow {
            tokio::spawn(follow(
                self.peers.clone(),
                request,
                out_tx,
                self.sort_buffer,
                self.drain,
            ));
        } else {
            tokio::spawn(history(self.peers.clone(), request, out_tx));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let results = on_every_node(&self.peers, |mut c| async move {
            c.server_status(ServerStatusRequest {}).await
        })
        .await;
        let mut out = ServerStatusResponse {
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            version: crate::VERSION.into(),
            ..ServerStatusResponse::default()
        };
        let (mut connected, mut unavailable) = (0u32, Vec::new());
        for (node, result) in results {
            match result {
                Ok(s) => {
                    connected += 1;
                    out.num_flows += s.num_flows;
                    out.max_flows += s.max_flows;
                    out.seen_flows += s.seen_flows;
                    out.flows_rate += s.flows_rate;
                }
                Err(_) => unavailable.push(node.name),
            }
        }
        out.num_connected_nodes = Some(connected);
        out.num_unavailable_nodes = Some(u32::try_from(unavailable.len()).unwrap_or(u32::MAX));
        unavailable.truncate(MAX_UNAVAILABLE_NAMED);
        out.unavailable_nodes = unavailable;
        Ok(Response::new(out))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let results = on_every_node(&self.peers, |mut c| async move {
            c.get_nodes(GetNodesRequest {}).await
        })
        .await;
        let nodes = results
            .into_iter()
            .map(|(node, result)| {
                let tls = Some(Tls {
                    enabled: node.tls_server_name.is_some(),
                    server_name: node.tls_server_name.clone().unwrap_or_default(),
                });
                match result {
                    Ok(r) => {
                        let own = r.nodes.into_iter().find(|n| n.name == node.name);
                        let mut n = own.unwrap_or_default();
                        n.name.clone_from(&node.name);
                        n.address.clone_from(&node.address);
                        n.state = NodeState::NodeConnected as i32;
                        n.tls = tls;
                        n
                    }
                    Err(_) => PbNode {
                        name: node.name.clone(),
                        address: node.address.clone(),
                        state: NodeState::NodeUnavailable as i32,
                        tls,
                        ..PbNode::default()
                    },
                }
            })
            .collect();
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let results = on_every_node(&self.peers, |mut c| async move {
            c.get_namespaces(GetNamespacesRequest {}).await
        })
        .await;
        let mut all = BTreeMap::new();
        for (_, result) in results {
            for ns in result.map(|r| r.namespaces).unwrap_or_default() {
                all.insert((ns.cluster.clone(), ns.namespace.clone()), ns);
            }
        }
        Ok(Response::new(GetNamespacesResponse {
            namespaces: all.into_values().collect(),
        }))
    }

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented(
            "the agents do not record agent events; flows are served by GetFlows",
        ))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented(
            "the agents' datapath emits no debug events; flows are served by GetFlows",
        ))
    }
}

/// A finished query: every node's answer, then the first or last `number` of
/// them all in time order; unavailable nodes are named first.
async fn history(
    peers: Peers,
    request: GetFlowsRequest,
    out: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let (tx, mut rx) = mpsc::channel(1024);
    let mut tasks = Vec::new();
    for node in peers.nodes() {
        let (request, tx) = (request.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = pump(node.clone(), request, tx).await;
            (node.name, outcome)
        }));
    }
    drop(tx);
    let mut all = Vec::new();
    while let Some(response) = rx.recv().await {
        all.push(response);
    }
    let mut unavailable = Vec::new();
    for task in tasks {
        if let Ok((name, outcome)) = task.await {
            if let Err(message) = &outcome {
                unavailable.push((name.clone(), message.clone()));
            }
            peers.mark(&name, outcome);
        }
    }
    for (name, message) in unavailable {
        let event = node_status(NodeState::NodeUnavailable, vec![name], message);
        if out.send(Ok(event)).await.is_err() {
            return;
        }
    }
    for response in merge::select(all, request.number, request.first) {
        if out.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

/// A `follow` query: every node's stream through the sort buffer; nodes that
/// appear, fail or come back are (re)connected every [`RECONNECT_EVERY`], and
/// each change is told as a node status event.
async fn follow(
    peers: Peers,
    request: GetFlowsRequest,
    out: mpsc::Sender<Result<GetFlowsResponse, Status>>,
    buffer: usize,
    drain: Duration,
) {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(merge::sort(rx, out.clone(), buffer, drain));
    // Reconnections ask for new flows only; the first asks what the client asked.
    let again = GetFlowsRequest {
        number: 0,
        since: None,
        ..request.clone()
    };
    let mut running: BTreeMap<String, tokio::task::JoinHandle<Result<(), String>>> =
        BTreeMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut down: BTreeSet<String> = BTreeSet::new();
    loop {
        if tx.is_closed() || out.is_closed() {
            break;
        }
        // Finished streams: the node failed or closed; reconnect on the next round.
        let finished: Vec<String> = running
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for name in finished {
            let outcome = match running.remove(&name) {
                Some(task) => task.await.unwrap_or_else(|e| Err(e.to_string())),
                None => continue,
            };
            let message = outcome.err().unwrap_or_else(|| "stream ended".into());
            peers.mark(&name, Err(message.clone()));
            if down.insert(name.clone()) {
                let event = node_status(NodeState::NodeUnavailable, vec![name], message);
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        }
        let nodes = peers.nodes();
        let names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
        // Gone from the peer service.
        for name in running
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect::<Vec<_>>()
        {
            if let Some(task) = running.remove(&name) {
                task.abort();
            }
            let event = node_status(NodeState::NodeGone, vec![name.clone()], String::new());
            let _ = tx.send(event).await;
            down.remove(&name);
        }
        for node in nodes {
            if running.contains_key(&node.name) {
                continue;
            }
            let request = if seen.contains(&node.name) {
                again.clone()
            } else {
                request.clone()
            };
            // Open the stream before announcing the node: a node that cannot be
            // reached stays down until the next round.
            let mut client = ObserverClient::new(node.channel());
            let opened =
                tokio::time::timeout(CALL_TIMEOUT, client.server_status(ServerStatusRequest {}))
                    .await;
            match opened {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    report_down(
                        &peers,
                        &tx,
                        &mut down,
                        &node.name,
                        status.message().to_string(),
                    )
                    .await;
                    continue;
                }
                Err(_) => {
                    report_down(
                        &peers,
                        &tx,
                        &mut down,
                        &node.name,
                        format!("no answer within {CALL_TIMEOUT:?}"),
                    )
                    .await;
                    continue;
                }
            }
            peers.mark(&node.name, Ok(()));
            if down.remove(&node.name) || seen.contains(&node.name) {
                let event = node_status(
                    NodeState::NodeConnected,
                    vec![node.name.clone()],
                    String::new(),
                );
                if tx.send(event).await.is_err() {
                    break;
                }
            }
            seen.insert(node.name.clone());
            let name = node.name.clone();
            running.insert(name, tokio::spawn(pump(node, request, tx.clone())));
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
    for (_, task) in running {
        task.abort();
    }
}

async fn report_down(
    peers: &Peers,
    tx: &mpsc::Sender<GetFlowsResponse>,
    down: &mut BTreeSet<String>,
    name: &str,
    message: String,
) {
    peers.mark(name, Err(message.clone()));
    if down.insert(name.to_string()) {
        let _ = tx
            .send(node_status(
                NodeState::NodeUnavailable,
                vec![name.to_string()],
                message,
            ))
            .await;
    }
}
