//! Metrics derived from flows (`hubble_*`, `loupe_redis_*`,
//! `cilium_policy_enforcement_total`), counted by a synchronous hook of
//! `FlowStore::push`, so no flow is missed; losses reported upstream of the store
//! reach the metrics through a subscription (`loupe_flow_metrics_lost_total`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::options::{Handler, MetricSpec};
use super::registry::{MetricFamily, MetricKind, Sample};
use crate::flow::{Event, FlowStore};
use loupe_proto::extension::{L7Extension, value};
use loupe_proto::flow::{
    DropReason, Endpoint, Flow, FlowType, L7FlowType, TrafficDirection, Verdict, layer4, layer7,
};

/// Latency buckets, in seconds (Hubble's HTTP duration buckets).
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct CounterVec {
    values: BTreeMap<Vec<(String, String)>, f64>,
}

impl CounterVec {
    fn inc(&mut self, labels: Vec<(String, String)>) {
        *self.values.entry(labels).or_insert(0.0) += 1.0;
    }
}

/// Per-bucket counts (not cumulative yet: each observation lands in every
/// bucket whose bound it fits), sum, count.
type Series = (Vec<u64>, f64, u64);

#[derive(Debug, Default)]
struct HistogramVec {
    series: BTreeMap<Vec<(String, String)>, Series>,
}

impl HistogramVec {
    fn observe(&mut self, labels: Vec<(String, String)>, v: f64) {
        let entry = self
            .series
            .entry(labels)
            .or_insert_with(|| (vec![0; DURATION_BUCKETS.len()], 0.0, 0));
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            if v <= *le {
                entry.0[i] += 1;
            }
        }
        entry.1 += v;
        entry.2 += 1;
    }
}

/// The families one handler owns.
#[derive(Debug, Default)]
struct State {
    counters: BTreeMap<&'static str, (&'static str, CounterVec)>,
    histograms: BTreeMap<&'static str, (&'static str, HistogramVec)>,
    /// Flows the metrics subscriber lost to its full queue.
    lost: u64,
}

impl State {
    fn inc(&mut self, name: &'static str, help: &'static str, labels: Vec<(String, String)>) {
        self.counters
            .entry(name)
            .or_insert_with(|| (help, CounterVec::default()))
            .1
            .inc(labels);
    }

    fn observe(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(String, String)>,
        v: f64,
    ) {
        self.histograms
            .entry(name)
            .or_insert_with(|| (help, HistogramVec::default()))
            .1
            .observe(labels, v);
    }
}

/// Flow-derived metrics for a set of handlers.
#[derive(Debug, Clone)]
pub struct FlowMetrics {
    specs: Arc<Vec<MetricSpec>>,
    policy: bool,
    state: Arc<Mutex<State>>,
}

fn l(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

impl FlowMetrics {
    /// Metrics for `hubble.metrics.enabled`, plus `cilium_policy_enforcement_total`
    /// when `policy` is set.
    pub fn new(specs: Vec<MetricSpec>, policy: bool) -> Self {
        Self {
            specs: Arc::new(specs),
            policy,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Feeds the metrics from every flow the store receives (synchronously, so
    /// no flow is missed), and counts upstream losses from a subscription until
    /// the task is dropped.
    pub fn spawn(&self, store: &FlowStore, queue: usize) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        store.add_hook(Arc::new(move |flow: &Flow| this.process(flow)));
        // Flows are counted by the hook; this feed only carries LostEvents.
        let mut sub = store.subscribe(queue, Some(Box::new(|_: &Flow| false)));
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Event::Flow { .. } => {}
                    Event::Lost(lost) => {
                        this.lock().lost += lost.num_events_lost;
                    }
                    Event::End => return,
                }
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one flow.
    pub fn process(&self, flow: &Flow) {
        let mut state = self.lock();
        if self.policy {
            policy_enforcement(&mut state, flow);
        }
        for spec in self.specs.iter() {
            let ctx = context_labels(spec, flow);
            match spec.handler {
                Handler::Flow => flow_processed(&mut state, flow, ctx),
                Handler::Drop => drop_metric(&mut state, flow, ctx),
                Handler::Tcp => tcp_flags(&mut state, flow, ctx),
                Handler::PortDistribution => port_distribution(&mut state, flow, ctx),
                Handler::Icmp => icmp(&mut state, flow, ctx),
                Handler::Dns => dns(&mut state, flow, ctx),
                Handler::Http => http(&mut state, spec, flow, ctx),
                Handler::Kafka => kafka(&mut state, flow, ctx),
                Handler::Redis => redis(&mut state, flow, ctx),
            }
        }
    }

    /// Current families, for a [`super::MetricsRegistry`] collector.
    pub fn families(&self) -> Vec<MetricFamily> {
        let state = self.lock();
        let mut out = Vec::new();
        for (name, (help, c)) in &state.counters {
            let mut f = MetricFamily::new(*name, *help, MetricKind::Counter);
            f.samples = c
                .values
                .iter()
                .map(|(labels, v)| Sample::Value {
                    labels: labels.clone(),
                    value: *v,
                })
                .collect();
            out.push(f);
        }
        for (name, (help, h)) in &state.histograms {
            let mut f = MetricFamily::new(*name, *help, MetricKind::Histogram);
            f.samples = h
                .series
                .iter()
                .map(|(labels, (buckets, sum, count))| Sample::Histogram {
                    labels: labels.clone(),
                    buckets: DURATION_BUCKETS
                        .iter()
                        .copied()
                        .zip(buckets.iter().copied())
                        .collect(),
                    sum: *sum,
                    count: *count,
                })
                .collect();
            out.push(f);
        }
        out.push(
            MetricFamily::new(
                "loupe_flow_metrics_lost_total",
                "Flows the metrics subscriber skipped because its queue was full.",
                MetricKind::Counter,
            )
            .value(&[], state.lost as f64),
        );
        out
    }
}

fn endpoint_context(option: &str, ep: Option<&Endpoint>, ip: &str, names: &[String]) -> String {
    let Some(ep) = ep else {
        return match option {
            "ip" => ip.to_string(),
            _ => String::new(),
        };
    };
    match option {
        "identity" => ep.identity.to_string(),
        "namespace" => ep.namespace.clone(),
        "pod" if !ep.pod_name.is_empty() => format!("{}/{}", ep.namespace, ep.pod_name),
        "pod-name" => ep.pod_name.clone(),
        "dns" => names.first().cloned().unwrap_or_default(),
        "ip" => ip.to_string(),
        "reserved-identity" => ep
            .labels
            .iter()
            .find_map(|l| l.strip_prefix("reserved:"))
            .map(|r| format!("reserved:{r}"))
            .unwrap_or_default(),
        "workload" => ep
            .workloads
            .first()
            .map(|w| format!("{}/{}", ep.namespace, w.name))
            .unwrap_or_default(),
        "workload-name" => ep
            .workloads
            .first()
            .map(|w| w.name.clone())
            .unwrap_or_default(),
        "app" => app_label(ep),
        _ => String::new(),
    }
}

fn app_label(ep: &Endpoint) -> String {
    ep.labels
        .iter()
        .find_map(|l| {
            let bare = l.split_once(':').map_or(l.as_str(), |(_, r)| r);
            bare.strip_prefix("app=")
                .or_else(|| bare.strip_prefix("app.kubernetes.io/name="))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn direction_name(flow: &Flow) -> &'static str {
    match TrafficDirection::try_from(flow.traffic_direction) {
        Ok(TrafficDirection::Ingress) => "ingress",
        Ok(TrafficDirection::Egress) => "egress",
        _ => "unknown",
    }
}

/// `source` / `destination` from the contexts, then `labelsContext` labels.
fn context_labels(spec: &MetricSpec, flow: &Flow) -> Vec<(String, String)> {
    let src = flow.source.as_ref();
    let dst = flow.destination.as_ref();
    let (sip, dip) = flow
        .ip
        .as_ref()
        .map_or(("", ""), |i| (i.source.as_str(), i.destination.as_str()));
    let mut out = Vec::new();
    if !spec.source_context.is_empty() {
        let v = spec
            .source_context
            .iter()
            .map(|o| endpoint_context(o, src, sip, &flow.source_names))
            .find(|v| !v.is_empty())
            .unwrap_or_default();
        out.push(l("source", v));
    }
    if !spec.destination_context.is_empty() {
        let v = spec
            .destination_context
            .iter()
            .map(|o| endpoint_context(o, dst, dip, &flow.destination_names))
            .find(|v| !v.is_empty())
            .unwrap_or_default();
        out.push(l("destination", v));
    }
    for label in &spec.labels_context {
        let (ep, ip) = if label.starts_with("source_") {
            (src, sip)
        } else {
            (dst, dip)
        };
        let value = match label.split_once('_').map_or("", |(_, r)| r) {
            "ip" => ip.to_string(),
            "namespace" => ep.map(|e| e.namespace.clone()).unwrap_or_default(),
            "pod" => ep.map(|e| e.pod_name.clone()).unwrap_or_default(),
            "workload" => ep
                .and_then(|e| e.workloads.first())
                .map(|w| w.name.clone())
                .unwrap_or_default(),
            "workload_kind" => ep
                .and_then(|e| e.workloads.first())
                .map(|w| w.kind.clone())
                .unwrap_or_default(),
            "app" => ep.map(app_label).unwrap_or_default(),
            "direction" => direction_name(flow).to_string(),
            // http_* labels belong to the HTTP handler, which adds them itself.
            _ => continue,
        };
        out.push(l(label, value));
    }
    out
}

fn protocol_label(flow: &Flow) -> &'static str {
    match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => "TCP",
        Some(layer4::Protocol::Udp(_)) => "UDP",
        Some(layer4::Protocol::IcmPv4(_)) => "ICMPv4",
        Some(layer4::Protocol::IcmPv6(_)) => "ICMPv6",
        Some(layer4::Protocol::Sctp(_)) => "SCTP",
        Some(layer4::Protocol::Vrrp(_)) => "VRRP",
        Some(layer4::Protocol::Igmp(_)) => "IGMP",
        None => "",
    }
}

fn with(mut base: Vec<(String, String)>, ctx: Vec<(String, String)>) -> Vec<(String, String)> {
    base.extend(ctx);
    base
}

fn flow_processed(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    let (kind, subtype) = match FlowType::try_from(flow.r#type) {
        Ok(FlowType::L7) => (
            "L7",
            loupe_proto::fields::l7_protocol(flow).unwrap_or_default(),
        ),
        Ok(FlowType::L3L4) if flow.verdict == Verdict::Dropped as i32 => ("Drop", String::new()),
        Ok(FlowType::L3L4) => ("Trace", observation_point(flow)),
        _ => ("Unknown", String::new()),
    };
    let verdict = Verdict::try_from(flow.verdict).map_or("VERDICT_UNKNOWN", |v| v.as_str_name());
    state.inc(
        "hubble_flows_processed_total",
        "Flows processed, by type, subtype and verdict.",
        with(
            vec![
                l("protocol", protocol_label(flow)),
                l("subtype", subtype),
                l("type", kind),
                l("verdict", verdict),
            ],
            ctx,
        ),
    );
}

fn observation_point(flow: &Flow) -> String {
    use loupe_proto::flow::TraceObservationPoint as P;
    match P::try_from(flow.trace_observation_point) {
        Ok(P::UnknownPoint) | Err(_) => String::new(),
        Ok(p) => p.as_str_name().to_ascii_lowercase().replace('_', "-"),
    }
}

fn drop_metric(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    if flow.verdict != Verdict::Dropped as i32 {
        return;
    }
    let reason = DropReason::try_from(flow.drop_reason_desc)
        .map_or("DROP_REASON_UNKNOWN", |r| r.as_str_name());
    state.inc(
        "hubble_drop_total",
        "Dropped packets, by drop reason and protocol.",
        with(
            vec![l("protocol", protocol_label(flow)), l("reason", reason)],
            ctx,
        ),
    );
}

fn family(flow: &Flow) -> &'static str {
    match flow.ip.as_ref().map(|i| i.ip_version) {
        Some(2) => "IPv6",
        _ => "IPv4",
    }
}

fn tcp_flags(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    let Some(layer4::Protocol::Tcp(tcp)) = flow.l4.as_ref().and_then(|l| l.protocol.as_ref())
    else {
        return;
    };
    let Some(f) = tcp.flags.as_ref() else { return };
    let flag = if f.syn && f.ack {
        "SYN-ACK"
    } else if f.syn {
        "SYN"
    } else if f.fin {
        "FIN"
    } else if f.rst {
        "RST"
    } else {
        return;
    };
    state.inc(
        "hubble_tcp_flags_total",
        "TCP packets, by flag.",
        with(vec![l("family", family(flow)), l("flag", flag)], ctx),
    );
}

fn port_distribution(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    if flow.verdict != Verdict::Forwarded as i32 || flow.r#type != FlowType::L3L4 as i32 {
        return;
    }
    let Some((_, port)) = loupe_proto::fields::ports(flow) else {
        return;
    };
    state.inc(
        "hubble_port_distribution_total",
        "Forwarded packets, by destination port and protocol.",
        with(
            vec![
                l("port", port.to_string()),
                l("protocol", protocol_label(flow)),
            ],
            ctx,
        ),
    );
}

fn icmp(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    let (fam, t) = match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::IcmPv4(i)) => ("IPv4", i.r#type),
        Some(layer4::Protocol::IcmPv6(i)) => ("IPv6", i.r#type),
        _ => return,
    };
    state.inc(
        "hubble_icmp_total",
        "ICMP messages, by family and type.",
        with(vec![l("family", fam), l("type", t.to_string())], ctx),
    );
}

fn dns(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    let Some(l7) = flow.l7.as_ref() else { return };
    let Some(layer7::Record::Dns(d)) = l7.record.as_ref() else {
        return;
    };
    let qtypes = d.qtypes.join(",");
    if l7.r#type == L7FlowType::Response as i32 {
        state.inc(
            "hubble_dns_responses_total",
            "DNS responses, by return code and query type.",
            with(
                vec![
                    l("ips_returned", d.ips.len().to_string()),
                    l("qtypes", qtypes),
                    l("rcode", rcode(d.rcode)),
                ],
                ctx,
            ),
        );
    } else {
        state.inc(
            "hubble_dns_queries_total",
            "DNS queries, by query type.",
            with(vec![l("qtypes", qtypes)], ctx),
        );
    }
}

fn rcode(code: u32) -> String {
    match code {
        0 => "No Error".into(),
        1 => "Format Error".into(),
        2 => "Server Failure".into(),
        3 => "Non-Existent Domain".into(),
        4 => "Not Implemented".into(),
        5 => "Query Refused".into(),
        other => other.to_string(),
    }
}

fn reporter(flow: &Flow) -> &'static str {
    match TrafficDirection::try_from(flow.traffic_direction) {
        Ok(TrafficDirection::Ingress) => "server",
        Ok(TrafficDirection::Egress) => "client",
        _ => "unknown",
    }
}

fn http(state: &mut State, spec: &MetricSpec, flow: &Flow, ctx: Vec<(String, String)>) {
    let Some(l7) = flow.l7.as_ref() else { return };
    let Some(layer7::Record::Http(h)) = l7.record.as_ref() else {
        return;
    };
    // A request is counted when its response arrives: that is when the status
    // and the latency are known.
    if l7.r#type != L7FlowType::Response as i32 {
        return;
    }
    let status = h.code.to_string();
    let mut labels = vec![
        l("method", h.method.clone()),
        l("protocol", h.protocol.clone()),
        l("reporter", reporter(flow)),
        l("status", status.clone()),
    ];
    let wants = |name: &str| spec.labels_context.iter().any(|l| l == name);
    if wants("http_method") {
        labels.push(l("http_method", h.method.clone()));
    }
    if wants("http_path") {
        let path = h.url.split_once("://").map_or(h.url.as_str(), |(_, r)| {
            r.find('/').map_or("/", |i| &r[i..])
        });
        labels.push(l("http_path", path.split('?').next().unwrap_or(path)));
    }
    if wants("http_status_code") {
        labels.push(l("http_status_code", status));
    }
    let mut duration_labels = vec![l("method", h.method.clone()), l("reporter", reporter(flow))];
    duration_labels.extend(ctx.iter().cloned());
    state.inc(
        "hubble_http_requests_total",
        "HTTP requests, counted at their response.",
        with(labels, ctx),
    );
    state.observe(
        "hubble_http_request_duration_seconds",
        "HTTP request to response latency.",
        duration_labels,
        l7.latency_ns as f64 / 1e9,
    );
}

fn ext_field(ext: &L7Extension, name: &str) -> Option<String> {
    let v = ext.fields.iter().find(|f| f.name == name)?.value.as_ref()?;
    Some(match v.kind.as_ref()? {
        value::Kind::String(s) => s.clone(),
        value::Kind::Int(i) => i.to_string(),
        value::Kind::Uint(u) => u.to_string(),
        value::Kind::Bool(b) => b.to_string(),
        value::Kind::Float(f) => f.to_string(),
        value::Kind::Bytes(_) | value::Kind::List(_) => return None,
    })
}

fn kafka(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    let Some(l7) = flow.l7.as_ref() else { return };
    if l7.r#type != L7FlowType::Response as i32 {
        return;
    }
    let (topic, api_key, error_code) = match l7.record.as_ref() {
        Some(layer7::Record::Kafka(k)) => {
            (k.topic.clone(), k.api_key.clone(), k.error_code.to_string())
        }
        _ => match loupe_proto::fields::l7_extension(flow) {
            Some(ext) if ext.protocol == "kafka" => (
                ext_field(&ext, "topic").unwrap_or_default(),
                ext_field(&ext, "api-key").unwrap_or_default(),
                ext_field(&ext, "error-code").unwrap_or_else(|| "0".into()),
            ),
            _ => return,
        },
    };
    let mut duration_labels = vec![l("api_key", api_key.clone()), l("topic", topic.clone())];
    duration_labels.extend(ctx.iter().cloned());
    state.inc(
        "hubble_kafka_requests_total",
        "Kafka requests, counted at their response.",
        with(
            vec![
                l("api_key", api_key),
                l("error_code", error_code),
                l("reporter", reporter(flow)),
                l("topic", topic),
            ],
            ctx,
        ),
    );
    state.observe(
        "hubble_kafka_request_duration_seconds",
        "Kafka request to response latency.",
        duration_labels,
        l7.latency_ns as f64 / 1e9,
    );
}

fn redis(state: &mut State, flow: &Flow, ctx: Vec<(String, String)>) {
    let Some(l7) = flow.l7.as_ref() else { return };
    if l7.r#type != L7FlowType::Response as i32 {
        return;
    }
    let Some(ext) = loupe_proto::fields::l7_extension(flow).filter(|e| e.protocol == "redis")
    else {
        return;
    };
    let command = ext_field(&ext, "command")
        .unwrap_or_default()
        .to_ascii_uppercase();
    let failed = ext_field(&ext, "error").is_some_and(|e| !e.is_empty())
        || ext_field(&ext, "reply-type").as_deref() == Some("error");
    let mut duration_labels = vec![l("command", command.clone())];
    duration_labels.extend(ctx.iter().cloned());
    state.inc(
        "loupe_redis_requests_total",
        "Redis commands, counted at their reply.",
        with(
            vec![
                l("command", command),
                l("outcome", if failed { "error" } else { "ok" }),
                l("reporter", reporter(flow)),
            ],
            ctx,
        ),
    );
    state.observe(
        "loupe_redis_request_duration_seconds",
        "Redis command to reply latency.",
        duration_labels,
        l7.latency_ns as f64 / 1e9,
    );
}

/// `cilium_policy_enforcement_total{namespace,direction,verdict}`: L3/L4 policy
/// decisions, counted for the endpoint whose policy decided (the destination
/// on ingress, the source on egress).
fn policy_enforcement(state: &mut State, flow: &Flow) {
    if flow.r#type != FlowType::L3L4 as i32 {
        return;
    }
    // Only decisions count: policy verdicts for new connections and policy drops,
    // not every trace of an established connection.
    let event = flow.event_type.as_ref().map(|e| e.r#type).unwrap_or(0);
    if event != loupe_proto::monitor::POLICY_VERDICT && event != loupe_proto::monitor::DROP {
        return;
    }
    let verdict = match Verdict::try_from(flow.verdict) {
        Ok(Verdict::Forwarded) => "allowed",
        Ok(Verdict::Dropped)
            if flow.drop_reason_desc == DropReason::PolicyDenied as i32
                || flow.drop_reason_desc == DropReason::PolicyDeny as i32 =>
        {
            "denied"
        }
        Ok(Verdict::Audit) => "audit",
        _ => return,
    };
    let direction = direction_name(flow);
    let ep = match direction {
        "ingress" => flow.destination.as_ref(),
        _ => flow.source.as_ref(),
    };
    state.inc(
        "cilium_policy_enforcement_total",
        "L3/L4 policy decisions, by the deciding endpoint's namespace and direction.",
        vec![
            l("direction", direction),
            l(
                "namespace",
                ep.map(|e| e.namespace.clone()).unwrap_or_default(),
            ),
            l("verdict", verdict),
        ],
    );
}
