//! Proxy decisions as Hubble L7 flows, built with the L7 path's flow builders so
//! an enforced connection reads in `loupe observe` as an observed one does, plus
//! the verdict: a denied request is `DROPPED`, a plugin failure `ERROR`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::inspect::ConnInfo;
use super::plugin::{ConnEvents, ProxyEvents, Verdict};
use crate::flow::FlowStore;
use crate::l7::flows::{ConnContext, error_flow, message_flow, summarize_request};
use crate::l7::is_body_piece;
use crate::plugin::{Message, Plugin};
use crate::reassembly::ConnKey;
use loupe_proto::flow::{DropReason, TrafficDirection, Verdict as FlowVerdict};

/// Pushes a flow per request, response, other message and failure into the
/// flow store.
#[derive(Debug, Clone)]
pub struct FlowEvents {
    flows: FlowStore,
}

impl FlowEvents {
    /// Flows go to `flows`.
    pub fn new(flows: FlowStore) -> Self {
        Self { flows }
    }
}

impl ProxyEvents for FlowEvents {
    fn connection(&self, conn: &ConnInfo, plugin: &Arc<Plugin>) -> Box<dyn ConnEvents> {
        let ctx = ConnContext {
            client: conn.client_endpoint.clone().unwrap_or_default(),
            server: conn.server_endpoint.clone().unwrap_or_default(),
            // Observed where the rules are: the server's ingress when it is local.
            traffic_direction: if conn.server_endpoint.is_some() {
                TrafficDirection::Ingress
            } else {
                TrafficDirection::Egress
            },
            protocol: Some(plugin.info.protocol.clone()),
        };
        let key = ConnKey {
            client: conn.client,
            server: conn.server,
        };
        Box::new(ConnFlows {
            flows: self.flows.clone(),
            plugin: plugin.clone(),
            ctx,
            key,
        })
    }
}

/// One connection's flows.
struct ConnFlows {
    flows: FlowStore,
    plugin: Arc<Plugin>,
    ctx: ConnContext,
    key: ConnKey,
}

impl ConnEvents for ConnFlows {
    fn request(&mut self, request: &Message, verdict: &Verdict) {
        let mut flow = message_flow(
            &self.ctx,
            &self.key,
            &self.plugin.info,
            request,
            SystemTime::now(),
            None,
        );
        match verdict {
            Verdict::Allow(by) => by.record(&mut flow, false),
            Verdict::Deny { by, .. } => {
                flow.verdict = FlowVerdict::Dropped as i32;
                flow.drop_reason_desc = DropReason::PolicyDenied as i32;
                by.record(&mut flow, true);
            }
        }
        self.flows.push(flow);
    }

    fn response(&mut self, request: &Message, response: &Message, latency: Duration) {
        let now = SystemTime::now();
        let summary = summarize_request(
            &self.plugin.info,
            request,
            now.checked_sub(latency).unwrap_or(now),
        );
        self.flows.push(message_flow(
            &self.ctx,
            &self.key,
            &self.plugin.info,
            response,
            now,
            Some(&summary),
        ));
    }

    fn message(&mut self, message: &Message) {
        if is_body_piece(&self.plugin, message) {
            return;
        }
        self.flows.push(message_flow(
            &self.ctx,
            &self.key,
            &self.plugin.info,
            message,
            SystemTime::now(),
            None,
        ));
    }

    fn error(&mut self, reason: &str, _closed: bool) {
        self.flows.push(error_flow(
            &self.ctx,
            &self.key,
            &self.plugin.info,
            reason,
            SystemTime::now(),
        ));
    }
}
