//! `loupe.daemon.v1.Daemon`: endpoints and status for the CLI.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto::daemon::{
    self as pb, ListEndpointsRequest, ListEndpointsResponse, StatusRequest, StatusResponse,
    daemon_server::Daemon,
};
use crate::agent::AgentState;
use crate::endpoint::SourceKind;

/// The service, over the agent's shared state.
#[derive(Debug, Clone)]
pub struct DaemonService {
    state: Arc<AgentState>,
}

impl DaemonService {
    /// A service answering from `state`.
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Daemon for DaemonService {
    async fn list_endpoints(
        &self,
        _request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        let controller = self.state.controller.lock().await;
        let registry = self.state.registry.read().await;
        let endpoints = registry
            .list()
            .map(|ep| pb::Endpoint {
                id: u32::from(ep.id),
                namespace: ep.spec.namespace.clone(),
                pod_name: ep.spec.pod_name.clone(),
                labels: ep
                    .spec
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
                ips: ep.spec.ips().map(|ip| ip.to_string()).collect(),
                interface: ep.spec.interface.clone(),
                ifindex: ep.spec.ifindex,
                identity: controller.endpoint_identity(&ep.spec.key()).unwrap_or(0),
                source: match ep.spec.source {
                    SourceKind::Lab => "lab".into(),
                    SourceKind::Kubernetes => "kubernetes".into(),
                },
                workload_kind: ep
                    .spec
                    .workload
                    .as_ref()
                    .map(|w| w.kind.clone())
                    .unwrap_or_default(),
                workload_name: ep
                    .spec
                    .workload
                    .as_ref()
                    .map(|w| w.name.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(ListEndpointsResponse { endpoints }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let endpoints = self.state.registry.read().await.len();
        let components: Vec<pb::ComponentStatus> = self
            .state
            .components
            .read()
            .await
            .iter()
            .map(|(name, c)| pb::ComponentStatus {
                name: name.clone(),
                state: c.state.as_str().into(),
                detail: c.detail.clone(),
            })
            .collect();
        let healthy = components.iter().all(|c| c.state != "error");
        let inventory = crate::metrics::status::inventory(&self.state.metrics);
        let flows = self.state.config.hubble.enabled.then(|| {
            let s = self.state.flows.stats();
            pb::FlowStatus {
                stored: s.stored,
                capacity: s.capacity,
                seen: s.seen,
                lost_to_subscribers: s.lost_to_subscribers,
                lost_upstream: s.lost_upstream,
                subscribers: s.subscribers,
                flows_per_second: self.state.flows.flows_rate(),
            }
        });
        Ok(Response::new(StatusResponse {
            version: crate::VERSION.into(),
            uptime_ns: u64::try_from(self.state.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            endpoints: u32::try_from(endpoints).unwrap_or(u32::MAX),
            components,
            flows,
            map_pressure: inventory
                .map_pressure
                .into_iter()
                .map(|(map_name, pressure)| pb::MapPressure { map_name, pressure })
                .collect(),
            identities: inventory.identities,
            policies: inventory.policies,
            plugins: inventory.plugins,
            healthy,
        }))
    }
}
