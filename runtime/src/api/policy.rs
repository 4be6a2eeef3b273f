//! `loupe.policy.v1.Policies`: validate, apply, delete and list policies.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto::policy::{
    DeleteRequest, ListRequest, ListResponse, PolicyDocuments, PolicyResult, PolicySummary,
    SelectedEndpoints, policies_server::Policies,
};
use crate::agent::AgentState;
use crate::datapath::controller::{ApplyReport, ControllerError};
use crate::policy::l7::validate_l7;
use crate::policy::{Policy, parse_policies};

/// The service over the agent's controller.
#[derive(Debug, Clone)]
pub struct PolicyService {
    state: Arc<AgentState>,
}

impl PolicyService {
    /// A service over `state`.
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }

    fn parse(&self, docs: PolicyDocuments) -> Result<Vec<Policy>, Status> {
        let mut out = Vec::new();
        for file in docs.files {
            out.extend(
                parse_policies(&file.name, &file.text)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            );
        }
        if out.is_empty() {
            return Err(Status::invalid_argument("no policy documents given"));
        }
        // Generic L7 rules must fit an installed plugin's schema; refused here,
        // before the controller sees them, so the policy in force stays.
        for policy in &out {
            validate_l7(policy, self.state.plugins.as_ref())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        Ok(out)
    }

    async fn result(&self, report: ApplyReport) -> PolicyResult {
        let registry = self.state.registry.read().await;
        let name = |id: u16| {
            registry
                .by_id(id)
                .map(|e| e.spec.key())
                .unwrap_or_else(|| format!("endpoint {id}"))
        };
        let revision = self.state.controller.lock().await.policies().revision();
        PolicyResult {
            selected: report
                .policies
                .iter()
                .map(|k| SelectedEndpoints {
                    endpoints: report
                        .selected
                        .get(k)
                        .into_iter()
                        .flatten()
                        .map(|id| name(*id))
                        .collect(),
                })
                .collect(),
            policies: report.policies,
            entries: report.entries as u64,
            revision,
        }
    }
}

fn status(err: ControllerError) -> Status {
    match err {
        ControllerError::NotFound(m) => Status::not_found(format!("no such policy: {m}")),
        ControllerError::Datapath(crate::datapath::DatapathError::PolicyMapFull { .. }) => {
            Status::resource_exhausted(err.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Policies for PolicyService {
    async fn validate(
        &self,
        request: Request<PolicyDocuments>,
    ) -> Result<Response<PolicyResult>, Status> {
        let policies = self.parse(request.into_inner())?;
        let keys: Vec<String> = policies.iter().map(Policy::key).collect();
        let compiled = self
            .state
            .controller
            .lock()
            .await
            .validate(&policies)
            .map_err(status)?;
        let report = ApplyReport {
            selected: keys
                .iter()
                .map(|k| {
                    (
                        k.clone(),
                        compiled.selected.get(k).cloned().unwrap_or_default(),
                    )
                })
                .collect(),
            policies: keys,
            entries: compiled.entries.len(),
        };
        Ok(Response::new(self.result(report).await))
    }

    async fn apply(
        &self,
        request: Request<PolicyDocuments>,
    ) -> Result<Response<PolicyResult>, Status> {
        let policies = self.parse(request.into_inner())?;
        let report = self
            .state
            .controller
            .lock()
            .await
            .apply(policies)
            .map_err(status)?;
        tracing::info!(policies = ?report.policies, entries = report.entries, "policy applied");
        Ok(Response::new(self.result(report).await))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<PolicyResult>, Status> {
        let keys = request.into_inner().keys;
        if keys.is_empty() {
            return Err(Status::invalid_argument("no policy names given"));
        }
        let report = self
            .state
            .controller
            .lock()
            .await
            .delete(&keys)
            .map_err(status)?;
        tracing::info!(policies = ?report.policies, "policy deleted");
        Ok(Response::new(self.result(report).await))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let controller = self.state.controller.lock().await;
        let registry = self.state.registry.read().await;
        let compiled = controller.compiled();
        let policies = controller
            .policies()
            .policies()
            .map(|p| PolicySummary {
                key: p.key(),
                source: p.source.clone(),
                selected: compiled
                    .and_then(|c| c.selected.get(&p.key()))
                    .into_iter()
                    .flatten()
                    .filter_map(|id| registry.by_id(*id).map(|e| e.spec.key()))
                    .collect(),
                document: p.document.clone(),
            })
            .collect();
        Ok(Response::new(ListResponse {
            policies,
            revision: controller.policies().revision(),
        }))
    }
}
