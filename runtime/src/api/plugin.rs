//! `loupe.plugin.v1.Plugins`: plugin install / list / inspect / remove.

use std::sync::Arc;

use super::error;
use tonic::{Request, Response, Status};

use crate::control::ControlPlane;
use crate::plugin::{
    InstallError, PluginManager, PluginSummary, Transport, host::MAX_PLUGIN_BYTES,
};
use loupe_proto::plugin::{
    self as pb, InspectRequest, InspectResponse, InstallRequest, InstallResponse, ListRequest,
    ListResponse, RemoveRequest, RemoveResponse,
    plugins_server::{Plugins, PluginsServer},
};

/// The service, over the agent's plugin manager and the control plane (to know
/// which plugins the policies in force need).
#[derive(Debug, Clone)]
pub struct PluginService {
    manager: Arc<PluginManager>,
    control: Arc<ControlPlane>,
}

impl PluginService {
    /// A service managing `manager`'s plugins for the policies of `control`.
    pub fn new(manager: Arc<PluginManager>, control: Arc<ControlPlane>) -> Self {
        Self { manager, control }
    }

    /// The gRPC server, accepting requests as large as the largest plugin.
    pub fn server(manager: Arc<PluginManager>, control: Arc<ControlPlane>) -> PluginsServer<Self> {
        PluginsServer::new(Self::new(manager, control))
            .max_decoding_message_size(MAX_PLUGIN_BYTES + 4096)
    }
}

fn status(err: InstallError) -> Status {
    match err {
        InstallError::NotInstalled(_) => error(tonic::Code::NotFound, err.to_string()),
        InstallError::InUse { .. } => error(tonic::Code::FailedPrecondition, err.to_string()),
        InstallError::Directory { .. } | InstallError::Engine(_) => {
            error(tonic::Code::Internal, err.to_string())
        }
        _ => error(tonic::Code::InvalidArgument, err.to_string()),
    }
}

fn plugin(s: &PluginSummary) -> pb::Plugin {
    let m = s.metrics;
    pb::Plugin {
        name: s.name.clone(),
        version: s.version.clone(),
        protocol: s.protocol.clone(),
        ports: s.ports.iter().map(|&p| u32::from(p)).collect(),
        sha256: s.sha256.clone(),
        state: s.state.describe(),
        contract: s.contract.clone(),
        counters: Some(pb::Counters {
            calls: m.calls,
            bytes: m.bytes,
            messages: m.messages,
            parse_nanos: m.parse_nanos,
            parse_errors: m.parse_errors,
            traps: m.traps,
            deadline_kills: m.deadline_kills,
            memory_kills: m.memory_kills,
            violations: m.violations,
            instances_created: m.instances_created,
            memory_bytes: m.memory_bytes,
        }),
    }
}

#[tonic::async_trait]
impl Plugins for PluginService {
    async fn install(
        &self,
        request: Request<InstallRequest>,
    ) -> Result<Response<InstallResponse>, Status> {
        let req = request.into_inner();
        let ports = if req.ports.is_empty() {
            None
        } else {
            let ports: Result<Vec<u16>, _> = req.ports.iter().map(|&p| u16::try_from(p)).collect();
            Some(
                ports
                    .map_err(|_| error(tonic::Code::InvalidArgument, "ports must be 1..=65535"))?,
            )
        };
        let name = (!req.name.is_empty()).then_some(req.name);
        let manager = self.manager.clone();
        let in_use = self.control.l7_protocols_in_use().await;
        let force = req.force;
        // Compiling a component takes tens of milliseconds of CPU: off the reactor.
        let summary = tokio::task::spawn_blocking(move || {
            manager.install_guarded(&req.wasm, name.as_deref(), ports, &in_use, force)
        })
        .await
        .map_err(|e| error(tonic::Code::Internal, format!("install task: {e}")))?
        .map_err(status)?;
        Ok(Response::new(InstallResponse {
            plugin: Some(plugin(&summary)),
        }))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let plugins = self.manager.list().iter().map(plugin).collect();
        Ok(Response::new(ListResponse { plugins }))
    }

    async fn inspect(
        &self,
        request: Request<InspectRequest>,
    ) -> Result<Response<InspectResponse>, Status> {
        let name = request.into_inner().name;
        let summary = self
            .manager
            .get(&name)
            .ok_or_else(|| status(InstallError::NotInstalled(name)))?;
        let (transport, default_ports, fields) = match &summary.plugin {
            Some(p) => (
                match p.info.transport {
                    Transport::Stream => "stream",
                    Transport::Datagram => "datagram",
                },
                p.info.default_ports.iter().map(|&p| u32::from(p)).collect(),
                p.info
                    .fields
                    .iter()
                    .map(|f| pb::Field {
                        name: f.name.clone(),
                        r#type: f.ty.as_str().into(),
                        description: f.description.clone(),
                        repeated: f.repeated,
                    })
                    .collect(),
            ),
            None => ("", Vec::new(), Vec::new()),
        };
        Ok(Response::new(InspectResponse {
            plugin: Some(plugin(&summary)),
            transport: transport.into(),
            default_ports,
            fields,
        }))
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<RemoveResponse>, Status> {
        let req = request.into_inner();
        let in_use = self.control.l7_protocols_in_use().await;
        self.manager
            .remove_guarded(&req.name, &in_use, req.force)
            .map_err(status)?;
        Ok(Response::new(RemoveResponse {}))
    }
}
