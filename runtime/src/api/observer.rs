//! `observer.Observer`: Hubble's flow API over the agent's flow store.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::error;
use loupe_proto::fields::time_ns;
use loupe_proto::flow::Flow;
use loupe_proto::observer::{
    self as pb, GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest,
    GetDebugEventsResponse, GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest,
    GetNamespacesResponse, GetNodesRequest, GetNodesResponse, ServerStatusRequest,
    ServerStatusResponse, get_flows_response::ResponseTypes, observer_server::Observer,
};
use loupe_proto::relay::NodeState;
use loupe_proto::time::{now_timestamp, timestamp_ns};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::NodeInfo;
use crate::control::SummaryHandle;
use crate::flow::json::flow_response;
use crate::flow::{Event, FieldMask, FlowFilterSet, FlowStore, Subscription};

/// The service over the flow store, this node's description and the endpoint
/// summary (for namespaces).
#[derive(Debug, Clone)]
pub struct ObserverService {
    flows: FlowStore,
    node: NodeInfo,
    endpoints: SummaryHandle,
    queue: usize,
}

impl ObserverService {
    /// A service answering from `flows`; each follow client gets a queue of
    /// `queue` events (`hubble.eventQueueSize`).
    pub fn new(flows: FlowStore, node: NodeInfo, endpoints: SummaryHandle, queue: usize) -> Self {
        Self {
            flows,
            node,
            endpoints,
            queue,
        }
    }
}

/// A `GetFlows` request, checked.
#[derive(Debug)]
struct Query {
    filters: Arc<FlowFilterSet>,
    since: Option<i128>,
    until: Option<i128>,
    mask: Option<FieldMask>,
}

impl Query {
    fn new(req: &GetFlowsRequest) -> Result<Self, Status> {
        let filters = FlowFilterSet::new(&req.whitelist, &req.blacklist)
            .map_err(|e| error(tonic::Code::InvalidArgument, e.to_string()))?;
        if req.first && req.follow {
            return Err(error(
                tonic::Code::InvalidArgument,
                "first and follow cannot be combined: first reads the oldest stored flows",
            ));
        }
        let since = req.since.as_ref().map(timestamp_ns);
        let until = req.until.as_ref().map(timestamp_ns);
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(error(tonic::Code::InvalidArgument, "since is after until"));
        }
        let mask = match &req.field_mask {
            Some(m) if !m.paths.is_empty() => Some(
                FieldMask::new(&m.paths)
                    .map_err(|e| error(tonic::Code::InvalidArgument, format!("field_mask: {e}")))?,
            ),
            _ => None,
        };
        Ok(Self {
            filters: Arc::new(filters),
            since,
            until,
            mask,
        })
    }

    fn in_time(&self, flow: &Flow) -> bool {
        let t = time_ns(flow);
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// The response for a stored flow.
    fn response(&self, stored: &Flow) -> GetFlowsResponse {
        flow_response(stored, self.mask.as_ref())
    }
}

/// Flows for a request from the ring: the last (or first) `number` matching
/// ones; `number == 0` means every match (with `follow` and no `since`: none,
/// only new flows).
fn history(store: &FlowStore, req: &GetFlowsRequest, q: &Query) -> (Vec<Arc<Flow>>, u64) {
    let snapshot = store.snapshot();
    let last_seq = snapshot.last().map_or(0, |(s, _)| *s);
    let mut matching: Vec<Arc<Flow>> = snapshot
        .into_iter()
        .filter(|(_, f)| q.in_time(f) && q.filters.matches(f))
        .map(|(_, f)| f)
        .collect();
    let number = usize::try_from(req.number).unwrap_or(usize::MAX);
    if number == 0 {
        if req.follow && q.since.is_none() {
            matching.clear();
        }
    } else if req.first {
        matching.truncate(number);
    } else if matching.len() > number {
        matching.drain(..matching.len() - number);
    }
    (matching, last_seq)
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;
type EventStream<T> = tokio_stream::Empty<Result<T, Status>>;

/// A `GetFlows` answer: the matching stored flows, then (with `follow`) the live
/// subscription, read by tonic as it writes — no task or queue in between.
struct FlowResponses {
    history: std::vec::IntoIter<Arc<Flow>>,
    live: Option<Live>,
    query: Query,
}

struct Live {
    subscription: Subscription,
    /// Flows up to this store sequence number were in the history.
    last_seq: u64,
    /// `until` in the future: the stream ends then.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    node_name: String,
}

impl Stream for FlowResponses {
    type Item = Result<GetFlowsResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(flow) = this.history.next() {
            return Poll::Ready(Some(Ok(this.query.response(&flow))));
        }
        let Some(live) = this.live.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let Poll::Ready(event) = live.subscription.poll_recv(cx) else {
                // Nothing queued: `until` ends the stream once it has passed
                // (flows queued before it are delivered first).
                if let Some(deadline) = live.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    this.live = None;
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            };
            match event {
                Event::Flow { seq, flow } => {
                    if seq > live.last_seq && this.query.in_time(&flow) {
                        return Poll::Ready(Some(Ok(this.query.response(&flow))));
                    }
                }
                Event::Lost(lost) => {
                    return Poll::Ready(Some(Ok(GetFlowsResponse {
                        node_name: live.node_name.clone(),
                        time: Some(now_timestamp()),
                        response_types: Some(ResponseTypes::LostEvents(lost)),
                    })));
                }
                // The agent is stopping: the stream ends cleanly.
                Event::End => {
                    this.live = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream = EventStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = EventStream<GetDebugEventsResponse>;

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented(
            "agent events are not recorded by Loupe yet; flows are (GetFlows)",
        ))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented(
            "the datapath emits no debug events; flows are served by GetFlows",
        ))
    }

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        let query = Query::new(&req)?;
        // Subscribe before reading the ring so nothing falls between the two;
        // sequence numbers drop what both would deliver.
        let subscription = req.follow.then(|| {
            let filters = query.filters.clone();
            self.flows.subscribe(
                self.queue,
                Some(Box::new(move |f: &Flow| filters.matches(f))),
            )
        });
        let (flows, last_seq) = history(&self.flows, &req, &query);
        let live = subscription.map(|subscription| Live {
            subscription,
            last_seq,
            deadline: query.until.map(|u| {
                let now = timestamp_ns(&now_timestamp());
                let wait = u64::try_from((u - now).max(0)).unwrap_or(0);
                Box::pin(tokio::time::sleep(std::time::Duration::from_nanos(wait)))
            }),
            node_name: self.flows.node_name().to_string(),
        });
        Ok(Response::new(Box::pin(FlowResponses {
            history: flows.into_iter(),
            live,
            query,
        })))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let stats = self.flows.stats();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![pb::Node {
                name: self.node.name.clone(),
                version: crate::VERSION.into(),
                address: self.node.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: Some(pb::Tls {
                    enabled: self.node.tls,
                    server_name: String::new(),
                }),
                uptime_ns: self.node.uptime_ns(),
                num_flows: stats.stored,
                max_flows: stats.capacity,
                seen_flows: stats.seen,
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let mut names = self.endpoints.load().namespaces.clone();
        for (_, flow) in self.flows.snapshot() {
            for ep in [&flow.source, &flow.destination].into_iter().flatten() {
                if !ep.namespace.is_empty() {
                    names.insert(ep.namespace.clone());
                }
            }
        }
        Ok(Response::new(GetNamespacesResponse {
            namespaces: names
                .into_iter()
                .map(|namespace| pb::Namespace {
                    cluster: String::new(),
                    namespace,
                })
                .collect(),
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let stats = self.flows.stats();
        Ok(Response::new(ServerStatusResponse {
            num_flows: stats.stored,
            max_flows: stats.capacity,
            seen_flows: stats.seen,
            uptime_ns: self.node.uptime_ns(),
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: Vec::new(),
            version: crate::VERSION.into(),
            flows_rate: self.flows.flows_rate(),
        }))
    }
}
