//! The L7 policy engine as the proxy's [`Decider`]: each request is decided
//! against the server's ingress rules (for the client's identity) and the
//! client's egress rules (for the server's identity), whichever endpoints are
//! local; a denial by either wins. The verdict names the policies that decided,
//! per direction, for the request's flow.

use loupe_common::identity;

use super::inspect::ConnInfo;
use super::plugin::{Decider, Verdict};
use crate::plugin::{Message, PluginInfo};
use crate::policy::Direction;
use crate::policy::attribution::{Decided, L7Attribution, flow_policy_by_key};
use crate::policy::l7::{L7Decision, L7PolicyHandle, PluginRequest};

/// Decides with the policies in force (the controller's [`L7PolicyHandle`]).
#[derive(Debug, Clone)]
pub struct PolicyDecider {
    policy: L7PolicyHandle,
}

impl PolicyDecider {
    /// A decider reading `policy` (swapped by the controller on every change).
    pub fn new(policy: L7PolicyHandle) -> Self {
        Self { policy }
    }
}

impl Decider for PolicyDecider {
    fn decide(&self, conn: &ConnInfo, plugin: &PluginInfo, request: &Message) -> Verdict {
        let policy = self.policy.load();
        let req = PluginRequest {
            info: plugin,
            message: request,
        };
        let port = conn.server.port();
        let id_of = |e: &Option<loupe_proto::flow::Endpoint>| {
            e.as_ref().map_or(identity::WORLD, |e| e.identity)
        };
        let (client_id, server_id) = (id_of(&conn.client_endpoint), id_of(&conn.server_endpoint));
        let checks = [
            (
                &conn.server_endpoint,
                Direction::Ingress,
                client_id,
                "ingress",
            ),
            (
                &conn.client_endpoint,
                Direction::Egress,
                server_id,
                "egress",
            ),
        ];
        let revision = policy.revision();
        let named = |policies: &[std::sync::Arc<str>], logs: &[std::sync::Arc<str>]| Decided {
            policies: policies
                .iter()
                .map(|p| flow_policy_by_key(p, revision))
                .collect(),
            logs: logs.iter().map(|l| l.to_string()).collect(),
            match_type: 0,
        };
        let mut allowed = L7Attribution::default();
        for (endpoint, dir, remote, name) in checks {
            let Some(ep) = endpoint.as_ref().and_then(|e| u16::try_from(e.id).ok()) else {
                continue;
            };
            match policy.decide(ep, dir, port, remote, &req) {
                L7Decision::Deny(denial) => {
                    let mut by = L7Attribution::default();
                    *by.side_mut(dir) = named(&denial.policies, &denial.logs);
                    return Verdict::Deny {
                        by,
                        reason: format!("no {name} L7 rule allows this request"),
                    };
                }
                L7Decision::Allow(found) => {
                    *allowed.side_mut(dir) =
                        named(std::slice::from_ref(&found.policy), found.log.as_slice());
                }
                L7Decision::NoPolicy => {}
            }
        }
        Verdict::Allow(allowed)
    }
}
