//! `loupe.policy.v1.Policies`: validate, apply, delete and list policies.

use std::sync::Arc;

use super::error;
use loupe_proto::policy::{
    DeleteRequest, ListRequest, ListResponse, PolicyDocuments, PolicyResult, PolicySummary,
    SelectedEndpoints, policies_server::Policies,
};
use tonic::{Request, Response, Status};

use crate::control::{ControlPlane, PolicyOutcome};
use crate::datapath::DatapathError;
use crate::datapath::controller::ControllerError;
use crate::plugin::PluginManager;
use crate::policy::l7::validate_l7;
use crate::policy::{Policy, parse_policies};

/// The service over the control plane; generic L7 rules are checked against the
/// installed plugins' schemas.
#[derive(Debug, Clone)]
pub struct PolicyService {
    control: Arc<ControlPlane>,
    plugins: Arc<PluginManager>,
}

impl PolicyService {
    /// A service over `control`, checking L7 rules against `plugins`.
    pub fn new(control: Arc<ControlPlane>, plugins: Arc<PluginManager>) -> Self {
        Self { control, plugins }
    }

    fn parse(&self, docs: PolicyDocuments) -> Result<Vec<Policy>, Status> {
        let mut out = Vec::new();
        for file in docs.files {
            out.extend(
                parse_policies(&file.name, &file.text)
                    .map_err(|e| error(tonic::Code::InvalidArgument, e.to_string()))?,
            );
        }
        if out.is_empty() {
            return Err(error(
                tonic::Code::InvalidArgument,
                "no policy documents given",
            ));
        }
        // Generic L7 rules must fit an installed plugin's schema; refused here,
        // before the controller sees them, so the policy in force stays.
        for policy in &out {
            validate_l7(policy, self.plugins.as_ref())
                .map_err(|e| error(tonic::Code::InvalidArgument, e.to_string()))?;
        }
        Ok(out)
    }
}

fn result(outcome: PolicyOutcome) -> Response<PolicyResult> {
    Response::new(PolicyResult {
        selected: outcome
            .selected
            .into_iter()
            .map(|endpoints| SelectedEndpoints { endpoints })
            .collect(),
        policies: outcome.policies,
        entries: outcome.entries as u64,
        revision: outcome.revision,
    })
}

fn status(err: ControllerError) -> Status {
    match err {
        ControllerError::NotFound(m) => {
            error(tonic::Code::NotFound, format!("no such policy: {m}"))
        }
        ControllerError::Datapath(DatapathError::PolicyMapFull { .. }) => {
            error(tonic::Code::ResourceExhausted, err.to_string())
        }
        other => error(tonic::Code::Internal, other.to_string()),
    }
}

#[tonic::async_trait]
impl Policies for PolicyService {
    async fn validate(
        &self,
        request: Request<PolicyDocuments>,
    ) -> Result<Response<PolicyResult>, Status> {
        let policies = self.parse(request.into_inner())?;
        let outcome = self.control.validate(&policies).await.map_err(status)?;
        Ok(result(outcome))
    }

    async fn apply(
        &self,
        request: Request<PolicyDocuments>,
    ) -> Result<Response<PolicyResult>, Status> {
        let policies = self.parse(request.into_inner())?;
        let outcome = self.control.apply(policies).await.map_err(status)?;
        tracing::info!(policies = ?outcome.policies, entries = outcome.entries, "policy applied");
        Ok(result(outcome))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<PolicyResult>, Status> {
        let keys = request.into_inner().keys;
        if keys.is_empty() {
            return Err(error(tonic::Code::InvalidArgument, "no policy names given"));
        }
        let outcome = self.control.delete(&keys).await.map_err(status)?;
        tracing::info!(policies = ?outcome.policies, "policy deleted");
        Ok(result(outcome))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (listings, revision) = self.control.policies().await;
        let policies = listings
            .into_iter()
            .map(|p| PolicySummary {
                key: p.key,
                source: p.source,
                selected: p.selected,
                document: p.document,
            })
            .collect();
        Ok(Response::new(ListResponse { policies, revision }))
    }
}
