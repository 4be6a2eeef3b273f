//! Hubble's metric option syntax: `name[:opt=val[;opt=val…]]`, e.g.
//! `httpV2:exemplars=true;labelsContext=source_pod,destination_pod` or
//! `drop:sourceContext=namespace|pod;destinationContext=pod`.

/// A metric handler Loupe implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    /// `hubble_flows_processed_total`.
    Flow,
    /// `hubble_drop_total`.
    Drop,
    /// `hubble_tcp_flags_total`.
    Tcp,
    /// `hubble_port_distribution_total`.
    PortDistribution,
    /// `hubble_icmp_total`.
    Icmp,
    /// `hubble_dns_queries_total`, `hubble_dns_responses_total`.
    Dns,
    /// `hubble_http_requests_total`, `hubble_http_request_duration_seconds`
    /// (`http` and `httpV2` differ only in Hubble's history; both count responses).
    Http,
    /// `hubble_kafka_requests_total`, `hubble_kafka_request_duration_seconds`.
    Kafka,
    /// `loupe_redis_requests_total`, `loupe_redis_request_duration_seconds`.
    Redis,
}

/// What a `sourceContext` / `destinationContext` option can name.
pub const CONTEXT_OPTIONS: &[&str] = &[
    "identity",
    "namespace",
    "pod",
    "pod-name",
    "dns",
    "ip",
    "reserved-identity",
    "workload",
    "workload-name",
    "app",
];

/// Labels `labelsContext` can add. `http_method`, `http_path` and
/// `http_status_code` are accepted for the HTTP handler (Helm values in the wild
/// list them next to the context labels).
pub const LABELS_CONTEXT: &[&str] = &[
    "source_ip",
    "source_namespace",
    "source_pod",
    "source_workload",
    "source_workload_kind",
    "source_app",
    "destination_ip",
    "destination_namespace",
    "destination_pod",
    "destination_workload",
    "destination_workload_kind",
    "destination_app",
    "traffic_direction",
    "http_method",
    "http_path",
    "http_status_code",
];

/// One entry of `hubble.metrics.enabled`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    /// The handler.
    pub handler: Handler,
    /// `sourceContext`: alternatives tried in order for the `source` label.
    pub source_context: Vec<String>,
    /// `destinationContext`.
    pub destination_context: Vec<String>,
    /// `labelsContext`: extra labels, in the order given.
    pub labels_context: Vec<String>,
    /// `exemplars=true`. Accepted; Loupe records no trace IDs, so no exemplars
    /// are attached yet.
    pub exemplars: bool,
}

/// A metric spec that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metric {spec:?}: {message}")]
pub struct OptionError {
    spec: String,
    message: String,
}

impl MetricSpec {
    /// Parses one entry; the error names the bad part.
    pub fn parse(spec: &str) -> Result<Self, OptionError> {
        let fail = |message: String| OptionError {
            spec: spec.to_string(),
            message,
        };
        let (name, options) = spec.split_once(':').unwrap_or((spec, ""));
        let handler = match name.trim() {
            "flow" => Handler::Flow,
            "drop" => Handler::Drop,
            "tcp" => Handler::Tcp,
            "port-distribution" => Handler::PortDistribution,
            "icmp" => Handler::Icmp,
            "dns" => Handler::Dns,
            "http" | "httpV2" => Handler::Http,
            "kafka" => Handler::Kafka,
            "redis" => Handler::Redis,
            other => {
                return Err(fail(format!(
                    "unknown metric {other:?} (known: flow, drop, tcp, port-distribution, icmp, dns, http, httpV2, kafka, redis)"
                )));
            }
        };
        let mut out = Self {
            handler,
            source_context: Vec::new(),
            destination_context: Vec::new(),
            labels_context: Vec::new(),
            exemplars: false,
        };
        for option in options.split(';').filter(|o| !o.trim().is_empty()) {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| fail(format!("option {option:?} is not key=value")))?;
            let value = value.trim();
            match key.trim() {
                "sourceContext" | "destinationContext" => {
                    let alternatives: Vec<String> =
                        value.split('|').map(|v| v.trim().to_string()).collect();
                    for a in &alternatives {
                        if !CONTEXT_OPTIONS.contains(&a.as_str()) {
                            return Err(fail(format!(
                                "{key}: unknown context {a:?} (known: {})",
                                CONTEXT_OPTIONS.join("|")
                            )));
                        }
                    }
                    if key.trim() == "sourceContext" {
                        out.source_context = alternatives;
                    } else {
                        out.destination_context = alternatives;
                    }
                }
                // `labels` and `exemplar` are spellings seen in published Helm values.
                "labelsContext" | "labels" => {
                    for label in value.split(',').map(str::trim) {
                        if !LABELS_CONTEXT.contains(&label) {
                            return Err(fail(format!(
                                "labelsContext: unknown label {label:?} (known: {})",
                                LABELS_CONTEXT.join(",")
                            )));
                        }
                        if !out.labels_context.iter().any(|l| l == label) {
                            out.labels_context.push(label.to_string());
                        }
                    }
                }
                "exemplars" | "exemplar" => {
                    out.exemplars = value
                        .parse()
                        .map_err(|_| fail(format!("{key}: {value:?} is not true or false")))?;
                }
                other => return Err(fail(format!("unknown option {other:?}"))),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hubble_and_article_syntax() {
        let s = MetricSpec::parse(
            "httpV2:exemplars=true;labelsContext=source_ip,source_namespace,source_pod,destination_ip,destination_namespace,destination_pod,traffic_direction",
        )
        .unwrap();
        assert_eq!(s.handler, Handler::Http);
        assert!(s.exemplars);
        assert_eq!(s.labels_context.len(), 7);
        let s = MetricSpec::parse(
            "httpV2:exemplar=true;labels=source_pod,destination_pod,http_method,http_path,http_status_code",
        )
        .unwrap();
        assert_eq!(s.labels_context[4], "http_status_code");
        let s =
            MetricSpec::parse("drop:sourceContext=namespace|pod;destinationContext=pod").unwrap();
        assert_eq!(s.source_context, vec!["namespace", "pod"]);
        assert_eq!(
            MetricSpec::parse("port-distribution").unwrap().handler,
            Handler::PortDistribution
        );
    }

    #[test]
    fn refuses_unknowns() {
        for bad in [
            "nope",
            "drop:sourceContext=planet",
            "httpV2:labelsContext=x",
            "drop:color=red",
            "drop:exemplars=maybe",
            "drop:novalue",
        ] {
            assert!(MetricSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
