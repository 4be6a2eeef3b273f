//! Filter tests: every field matching and mismatching, whitelist / blacklist,
//! plugin protocols, refused values.

use super::matches::url_path;
use super::*;
use loupe_proto::extension::{Field, L7Extension, Value, value};
use loupe_proto::flow::{
    DropReason, Endpoint, Http, HttpHeader, Ip, IpTraceId, IpVersion, Layer4, Layer7,
    NetworkInterface, Tcp, TcpFlags, TrafficDirection, Verdict, flow_filter, layer4, layer7,
};

fn flow() -> Flow {
    Flow {
        verdict: Verdict::Dropped as i32,
        drop_reason_desc: DropReason::PolicyDenied as i32,
        traffic_direction: TrafficDirection::Ingress as i32,
        node_name: "kind-worker".into(),
        ip: Some(Ip {
            source: "10.0.1.5".into(),
            destination: "10.0.2.7".into(),
            ip_version: IpVersion::IPv4 as i32,
            ..Default::default()
        }),
        source: Some(Endpoint {
            identity: 1234,
            namespace: "demo-app".into(),
            pod_name: "frontend-7d9f".into(),
            labels: vec!["k8s:app=frontend".into()],
            ..Default::default()
        }),
        destination: Some(Endpoint {
            identity: 5678,
            namespace: "demo-app".into(),
            pod_name: "api-service-5c8b".into(),
            labels: vec!["k8s:app=api-service".into()],
            ..Default::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 43210,
                destination_port: 8080,
                flags: Some(TcpFlags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                }),
            })),
        }),
        l7: Some(Layer7 {
            r#type: 2,
            latency_ns: 1_000_000,
            record: Some(layer7::Record::Http(Http {
                code: 503,
                method: "POST".into(),
                url: "http://api-service/post?x=1".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![HttpHeader {
                    key: "Content-Type".into(),
                    value: "application/json".into(),
                }],
            })),
        }),
        ..Default::default()
    }
}

fn one(f: FlowFilter) -> Result<bool, FilterError> {
    Ok(FlowFilterSet::new(&[f], &[])?.matches(&flow()))
}

#[test]
fn each_field_matches_and_mismatches() {
    let cases: Vec<(FlowFilter, bool)> = vec![
        (
            FlowFilter {
                source_ip: vec!["10.0.1.5".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                source_ip: vec!["10.0.0.0/16".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                destination_ip: vec!["10.0.1.0/24".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                source_pod: vec!["demo-app/front".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                source_pod: vec!["demo-app/".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                source_pod: vec!["other/front".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                destination_pod: vec!["demo-app/api".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                source_label: vec!["app=frontend".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                destination_label: vec!["app in (redis)".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                source_identity: vec![1, 1234],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                destination_identity: vec![1234],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                verdict: vec![Verdict::Forwarded as i32, Verdict::Dropped as i32],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                verdict: vec![Verdict::Forwarded as i32],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                drop_reason_desc: vec![DropReason::PolicyDenied as i32],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                traffic_direction: vec![TrafficDirection::Egress as i32],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                protocol: vec!["http".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                protocol: vec!["TCP".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                protocol: vec!["udp".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                destination_port: vec!["8080".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                source_port: vec!["8080".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                tcp_flags: vec![TcpFlags {
                    syn: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                tcp_flags: vec![TcpFlags {
                    fin: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                http_method: vec!["post".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                http_method: vec!["GET".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                http_path: vec!["^/post$".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                http_path: vec!["^/get".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                http_url: vec!["api-service".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                http_status_code: vec!["5+".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                http_status_code: vec!["50+".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                http_status_code: vec!["404".into(), "2+".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                http_header: vec![HttpHeader {
                    key: "content-type".into(),
                    value: "application/json".into(),
                }],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                node_name: vec!["kind-*".into()],
                ..Default::default()
            },
            true,
        ),
        (
            FlowFilter {
                node_name: vec!["other".into()],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                ip_version: vec![IpVersion::IPv6 as i32],
                ..Default::default()
            },
            false,
        ),
        (
            FlowFilter {
                reply: vec![false],
                ..Default::default()
            },
            false,
        ),
        // Fields AND: the pod matches, the verdict does not.
        (
            FlowFilter {
                source_pod: vec!["demo-app/".into()],
                verdict: vec![Verdict::Forwarded as i32],
                ..Default::default()
            },
            false,
        ),
    ];
    for (i, (filter, want)) in cases.into_iter().enumerate() {
        assert_eq!(one(filter.clone()).unwrap(), want, "case {i}: {filter:?}");
    }
}

#[test]
fn whitelist_any_blacklist_none() {
    let ns = FlowFilter {
        source_pod: vec!["demo-app/".into()],
        ..Default::default()
    };
    let other = FlowFilter {
        source_pod: vec!["kube-system/".into()],
        ..Default::default()
    };
    let http = FlowFilter {
        protocol: vec!["http".into()],
        ..Default::default()
    };
    let f = flow();
    assert!(
        FlowFilterSet::new(&[other.clone(), ns.clone()], &[])
            .unwrap()
            .matches(&f)
    );
    assert!(
        !FlowFilterSet::new(std::slice::from_ref(&other), &[])
            .unwrap()
            .matches(&f)
    );
    assert!(
        !FlowFilterSet::new(std::slice::from_ref(&ns), &[http])
            .unwrap()
            .matches(&f)
    );
    assert!(
        FlowFilterSet::new(&[ns], std::slice::from_ref(&other))
            .unwrap()
            .matches(&f)
    );
    assert!(
        !FlowFilterSet::new(&[], &[FlowFilter::default()])
            .unwrap()
            .matches(&f)
    );
    assert!(FlowFilterSet::new(&[], &[]).unwrap().matches(&f));
}

#[test]
fn plugin_protocol_names_match() {
    let ext = L7Extension {
        protocol: "redis".into(),
        fields: vec![Field {
            name: "command".into(),
            value: Some(Value {
                kind: Some(value::Kind::String("SET".into())),
            }),
        }],
        ..Default::default()
    };
    let f = Flow {
        extensions: Some(loupe_proto::fields::extension_any(&ext)),
        ..Default::default()
    };
    let set = |p: &str| {
        FlowFilterSet::new(
            &[FlowFilter {
                protocol: vec![p.into()],
                ..Default::default()
            }],
            &[],
        )
        .unwrap()
    };
    assert!(set("redis").matches(&f));
    assert!(!set("kafka").matches(&f));
}

#[test]
fn bad_values_are_refused_with_the_field() {
    let cases = [
        (
            FlowFilter {
                source_ip: vec!["10.0.0.300".into()],
                ..Default::default()
            },
            "source_ip",
        ),
        (
            FlowFilter {
                http_status_code: vec!["6+".into()],
                ..Default::default()
            },
            "http_status_code",
        ),
        (
            FlowFilter {
                http_status_code: vec!["20".into()],
                ..Default::default()
            },
            "http_status_code",
        ),
        (
            FlowFilter {
                destination_port: vec!["http".into()],
                ..Default::default()
            },
            "destination_port",
        ),
        (
            FlowFilter {
                http_path: vec!["(".into()],
                ..Default::default()
            },
            "http_path",
        ),
        (
            FlowFilter {
                source_label: vec!["a in (b".into()],
                ..Default::default()
            },
            "source_label",
        ),
        (
            FlowFilter {
                verdict: vec![42],
                ..Default::default()
            },
            "verdict",
        ),
        (
            FlowFilter {
                source_pod: vec!["/x".into()],
                ..Default::default()
            },
            "source_pod",
        ),
        (
            FlowFilter {
                experimental: Some(flow_filter::Experimental {
                    cel_expression: vec!["true".into()],
                }),
                ..Default::default()
            },
            "experimental.cel_expression",
        ),
    ];
    for (filter, field) in cases {
        let e = one(filter).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
}

#[test]
fn interface_and_ip_trace_id_match_what_the_flow_carries() {
    let mut f = flow();
    let by_trace = |ids: Vec<u64>| FlowFilter {
        ip_trace_id: ids,
        ..Default::default()
    };
    let by_interface = |index: u32, name: &str| FlowFilter {
        interface: vec![NetworkInterface {
            index,
            name: name.into(),
        }],
        ..Default::default()
    };
    let matches =
        |f: &Flow, filter: FlowFilter| FlowFilterSet::new(&[filter], &[]).unwrap().matches(f);
    // A flow without them matches no such filter (never everything), except
    // trace id 0, which Hubble reads as "none".
    assert!(!matches(&f, by_trace(vec![7])));
    assert!(matches(&f, by_trace(vec![0])));
    assert!(!matches(&f, by_interface(3, "")));
    f.ip_trace_id = Some(IpTraceId {
        trace_id: 7,
        ip_option_type: 136,
    });
    f.interface = Some(NetworkInterface {
        index: 3,
        name: "lxc1".into(),
    });
    assert!(matches(&f, by_trace(vec![1, 7])));
    assert!(!matches(&f, by_trace(vec![8])));
    assert!(matches(&f, by_interface(3, "")));
    assert!(matches(&f, by_interface(0, "lxc1")));
    assert!(matches(&f, by_interface(3, "lxc1")));
    assert!(!matches(&f, by_interface(3, "lxc2")));
    assert!(!matches(&f, by_interface(4, "")));
}

#[test]
fn url_paths() {
    assert_eq!(url_path("http://a/b/c?d"), "/b/c");
    assert_eq!(url_path("http://a"), "/");
    assert_eq!(url_path("/x#y"), "/x");
}

#[test]
fn what_a_request_may_cost_is_bounded_before_compiling() {
    let refused = |f: FlowFilter| FlowFilterSet::new(&[f], &[]).unwrap_err();
    // A 2 MB wildcard: refused by size, the message quoting a short prefix.
    let huge = refused(FlowFilter {
        node_name: vec!["*a".repeat(1 << 20)],
        ..FlowFilter::default()
    });
    assert_eq!(huge.field, "whitelist");
    assert!(huge.message.contains("at most 65536"), "{huge}");
    // Under the filter size, a pattern longer than 1 KiB is refused by itself.
    let long = refused(FlowFilter {
        http_path: vec!["a".repeat(5000)],
        ..FlowFilter::default()
    });
    assert_eq!(long.field, "http_path");
    assert!(
        long.message
            .contains("… (5000 bytes) is longer than 1024 bytes"),
        "{long}"
    );
    assert!(long.to_string().len() < 200, "{long}");
    // A short pattern that compiles too large.
    let big = refused(FlowFilter {
        http_url: vec!["(\\w{50}){50}".into()],
        ..FlowFilter::default()
    });
    assert!(big.message.contains("compiles too large"), "{big}");
    // A bad regex: the reason, without the parser's copy of the pattern.
    let bad = refused(FlowFilter {
        http_path: vec!["(unclosed".into()],
        ..FlowFilter::default()
    });
    assert!(bad.message.starts_with("\"(unclosed\": "), "{bad}");
    assert_eq!(bad.message.lines().count(), 1, "{bad}");
    // Too many filters.
    let many = vec![FlowFilter::default(); MAX_FILTERS + 1];
    let e = FlowFilterSet::new(&[], &many).unwrap_err();
    assert_eq!(e.field, "blacklist");
    // Many filters each within bounds, too many patterns in all: refused before
    // any is compiled (each one alone compiles near the per-pattern limit).
    let heavy = FlowFilter {
        http_url: vec!["\\w{20}".into(); 4],
        ..FlowFilter::default()
    };
    let e = FlowFilterSet::new(&vec![heavy.clone(); 40], &vec![heavy.clone(); 30]).unwrap_err();
    assert_eq!(e.field, "filters");
    assert!(
        e.message
            .contains("280 regular expressions and wildcard patterns; at most 256"),
        "{e}"
    );
    // Within the count, the request's 32 MiB are shared: four such patterns
    // compile (1 MiB each at most), 160 of them exceed their share (204 KiB).
    assert!(FlowFilterSet::new(std::slice::from_ref(&heavy), &[]).is_ok());
    let e = FlowFilterSet::new(&vec![heavy; 40], &[]).unwrap_err();
    assert!(e.message.contains("compiles too large"), "{e}");
}
