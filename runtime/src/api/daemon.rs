//! `loupe.daemon.v1.Daemon`: endpoints and status for the CLI.

use std::sync::Arc;
use std::time::Instant;

use loupe_proto::daemon::{
    self as pb, ListEndpointsRequest, ListEndpointsResponse, StatusRequest, StatusResponse,
    daemon_server::Daemon,
};
use tonic::{Request, Response, Status};

use crate::control::ControlPlane;
use crate::endpoint::SourceKind;
use crate::flow::FlowStore;
use crate::health::{ComponentState, Health};
use crate::metrics::MetricsRegistry;

/// What `loupe status` reads besides the control plane.
#[derive(Debug, Clone)]
pub struct StatusSources {
    /// When the agent started.
    pub started: Instant,
    /// Component health.
    pub health: Arc<Health>,
    /// The agent's metrics (map pressure, identities, policies, plugins).
    pub metrics: MetricsRegistry,
    /// The flow store, when Hubble is on.
    pub flows: Option<FlowStore>,
}

/// The service over the control plane and the status sources.
#[derive(Debug, Clone)]
pub struct DaemonService {
    control: Arc<ControlPlane>,
    status: StatusSources,
}

impl DaemonService {
    /// A service answering from `control` and `status`.
    pub fn new(control: Arc<ControlPlane>, status: StatusSources) -> Self {
        Self { control, status }
    }
}

#[tonic::async_trait]
impl Daemon for DaemonService {
    async fn list_endpoints(
        &self,
        _request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        let endpoints = self
            .control
            .endpoints()
            .await
            .into_iter()
            .map(|(ep, identity)| {
                let (workload_kind, workload_name) = ep
                    .spec
                    .workload
                    .as_ref()
                    .map(|w| (w.kind.clone(), w.name.clone()))
                    .unwrap_or_default();
                pb::Endpoint {
                    id: u32::from(ep.id),
                    labels: ep
                        .spec
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect(),
                    ips: ep.spec.ips().map(|ip| ip.to_string()).collect(),
                    namespace: ep.spec.namespace,
                    pod_name: ep.spec.pod_name,
                    interface: ep.spec.interface,
                    ifindex: ep.spec.ifindex,
                    identity,
                    source: match ep.spec.source {
                        SourceKind::Lab => "lab".into(),
                        SourceKind::Kubernetes => "kubernetes".into(),
                    },
                    workload_kind,
                    workload_name,
                }
            })
            .collect();
        Ok(Response::new(ListEndpointsResponse { endpoints }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let endpoints = self.control.summary().load().endpoints;
        let components: Vec<pb::ComponentStatus> = self
            .status
            .health
            .components()
            .into_iter()
            .map(|(name, c)| pb::ComponentStatus {
                name,
                state: c.state.as_str().into(),
                detail: c.detail,
            })
            .collect();
        let healthy = components
            .iter()
            .all(|c| c.state != ComponentState::Error.as_str());
        let inventory = crate::metrics::status::inventory(&self.status.metrics);
        let flows = self.status.flows.as_ref().map(|store| {
            let s = store.stats();
            pb::FlowStatus {
                stored: s.stored,
                capacity: s.capacity,
                seen: s.seen,
                lost_to_subscribers: s.lost_to_subscribers,
                lost_upstream: s.lost_upstream,
                subscribers: s.subscribers,
                flows_per_second: store.flows_rate(),
            }
        });
        Ok(Response::new(StatusResponse {
            version: crate::VERSION.into(),
            uptime_ns: u64::try_from(self.status.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
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
