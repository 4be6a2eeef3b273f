//! Starts the L7 proxy with the agent: policy routing for the redirect mark,
//! the transparent listeners, plugin inspectors chosen by port, metrics.

use std::sync::Arc;
use std::time::Duration;

use super::AgentState;
use crate::health::ComponentState;
use crate::policy::Direction;
use crate::proxy::{self, ConnInfo, FlowEvents, PluginInspectorFactory, PolicyDecider, Proxy};

/// With a kernel datapath: installs the routing, and starts the proxy unless
/// `l7.proxyEnabled` is off. Failures are reported as the `proxy`
/// component's health: L7-enforced connections then fail closed in the datapath.
pub(super) fn start(state: &AgentState) -> Routed {
    let config = &state.config;
    if !config.bpf.enabled {
        state
            .health
            .set("proxy", ComponentState::Disabled, "bpf.enabled: false");
        return Routed(None, false);
    }
    if !state.control.has_datapath() {
        // Embedded without a kernel datapath (tests, `run_with_state`): nothing
        // can be redirected, so no listener and no host routing.
        state
            .health
            .set("proxy", ComponentState::Disabled, "no kernel datapath");
        return Routed(None, false);
    }
    if let Err(e) = proxy::routing::install() {
        state
            .health
            .set("proxy", ComponentState::Error, e.to_string());
        return Routed(None, false);
    }
    if !config.l7.proxy_enabled {
        state
            .health
            .set("proxy", ComponentState::Disabled, "l7.proxyEnabled: false");
        return Routed(None, true);
    }
    let (snapshot, l7_policy) = (state.control.snapshot(), state.control.l7_policy());
    let resolver: proxy::server::Resolver = Arc::new(move |ip| {
        let snap = snapshot.read().ok()?.clone();
        snap.endpoint_by_ip(ip).cloned()
    });
    let plugins = state.plugins.clone();
    let rules = l7_policy.clone();
    // The plugin the port's L7 rules name (the server's ingress rules first,
    // then the client's egress rules), else the one installed for the port.
    let select = move |conn: &ConnInfo| {
        let policy = rules.load();
        let port = conn.server.port();
        let ep = |e: &Option<loupe_proto::flow::Endpoint>| {
            e.as_ref().and_then(|e| u16::try_from(e.id).ok())
        };
        let parser = ep(&conn.server_endpoint)
            .and_then(|id| policy.parser(id, Direction::Ingress, port))
            .or_else(|| {
                ep(&conn.client_endpoint).and_then(|id| policy.parser(id, Direction::Egress, port))
            });
        match parser {
            Some(p) => plugins.for_protocol(p.protocol()),
            None => plugins.for_port(port),
        }
    };
    let factory = PluginInspectorFactory::new(
        select,
        Arc::new(PolicyDecider::new(l7_policy)),
        Arc::new(FlowEvents::new(state.flows.clone())),
        config.l7.fail_open.clone(),
    )
    .refuse_unparsed(true);
    let settings = proxy::server::ProxySettings {
        port: config.l7.proxy_port,
        max_connections: config.l7.proxy_max_connections as usize,
        connect_timeout: Duration::from_secs(5),
    };
    match Proxy::start(settings, resolver, Arc::new(factory)) {
        Ok(proxy) => {
            let stats = proxy.stats();
            state.metrics.register_fn("proxy", move || stats.families());
            state.health.set(
                "proxy",
                ComponentState::Ok,
                format!("listening on port {}", config.l7.proxy_port),
            );
            Routed(Some(proxy), true)
        }
        Err(e) => {
            state
                .health
                .set("proxy", ComponentState::Error, e.to_string());
            Routed(None, true)
        }
    }
}

/// The running proxy, if any, and whether this agent installed the redirect's
/// policy routing (with a kernel datapath, even when the listener is off).
pub(super) struct Routed(Option<Proxy>, bool);

/// Stops the proxy and removes the routing this agent installed.
pub(super) fn stop(Routed(proxy, routed): Routed) {
    if let Some(p) = proxy {
        p.stop();
    }
    if routed {
        proxy::routing::remove();
    }
}
