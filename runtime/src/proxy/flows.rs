//! Proxy decisions as Hubble L7 flows, built with the L7 path's flow builders so
//! an enforced connection reads in `loupe observe` as an observed one does, plus
//! the verdict: a denied request is `DROPPED`, a plugin failure `ERROR`.

use std::time::{Duration, SystemTime};

use super::inspect::ConnInfo;
use super::plugin::{ProxyEvents, Verdict};
use crate::api::proto::flow::{TrafficDirection, Verdict as FlowVerdict};
use crate::flow::FlowStore;
use crate::l7::flows::{ConnContext, error_flow, message_flow, summarize_request};
use crate::plugin::{Message, Plugin};
use crate::reassembly::ConnKey;

/// Pushes a flow per request, response and failure into the flow store.
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

fn context(conn: &ConnInfo, plugin: &Plugin) -> (ConnContext, ConnKey) {
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
    (ctx, key)
}

impl ProxyEvents for FlowEvents {
    fn request(&self, conn: &ConnInfo, plugin: &Plugin, request: &Message, verdict: &Verdict) {
        let (ctx, key) = context(conn, plugin);
        let mut flow = message_flow(&ctx, &key, plugin, request, SystemTime::now(), None);
        if matches!(verdict, Verdict::Deny { .. }) {
            flow.verdict = FlowVerdict::Dropped as i32;
        }
        self.flows.push(flow);
    }

    fn response(
        &self,
        conn: &ConnInfo,
        plugin: &Plugin,
        request: &Message,
        response: &Message,
        latency: Duration,
    ) {
        let (ctx, key) = context(conn, plugin);
        let now = SystemTime::now();
        let summary = summarize_request(plugin, request, now.checked_sub(latency).unwrap_or(now));
        self.flows.push(message_flow(
            &ctx,
            &key,
            plugin,
            response,
            now,
            Some(&summary),
        ));
    }

    fn error(&self, conn: &ConnInfo, plugin: &Plugin, reason: &str, _closed: bool) {
        let (ctx, key) = context(conn, plugin);
        self.flows
            .push(error_flow(&ctx, &key, plugin, reason, SystemTime::now()));
    }
}
