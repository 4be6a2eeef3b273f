//! Golden tests for every `loupe observe` output format, and the flag → request
//! mapping. `UPDATE_GOLDEN=1 cargo test --test observe_output` rewrites the files.

// Test helpers panic on failure by design (the lint allows it only inside #[test]).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use loupe_proto::extension::{Field, L7Extension, Value, ValueList, value};
use loupe_proto::fields::extension_any;
use loupe_proto::flow::{
    CiliumEventType, DropReason, Endpoint, Flow, FlowType, Http, Ip, IpVersion, Kafka, L7FlowType,
    Layer4, Layer7, LostEvent, LostEventSource, Tcp, TcpFlags, TraceObservationPoint,
    TrafficDirection, Udp, Verdict, Workload, layer4, layer7,
};
use loupe_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use loupe_runtime::cli::observe;
use loupe_runtime::cli::print::{Output, PrintOptions, Printer};
use prost::Message as _;

fn ts(seconds: i64, millis: i32) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds,
        nanos: millis * 1_000_000,
    }
}

fn ep(ns: &str, pod: &str, app: &str, identity: u32) -> Endpoint {
    Endpoint {
        identity,
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: vec![
            format!("k8s:app={app}"),
            format!("k8s:io.kubernetes.pod.namespace={ns}"),
        ],
        workloads: vec![Workload {
            name: app.into(),
            kind: "Deployment".into(),
        }],
        ..Default::default()
    }
}

fn ip4(src: &str, dst: &str) -> Option<Ip> {
    Some(Ip {
        source: src.into(),
        destination: dst.into(),
        ip_version: IpVersion::IPv4 as i32,
        ..Default::default()
    })
}

fn tcp(sport: u32, dport: u32, flags: TcpFlags) -> Option<Layer4> {
    Some(Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port: sport,
            destination_port: dport,
            flags: Some(flags),
        })),
    })
}

fn redis(fields: Vec<(&str, value::Kind)>) -> Option<prost_types::Any> {
    Some(extension_any(&L7Extension {
        protocol: "redis".into(),
        plugin: "redis".into(),
        plugin_version: "0.1.0".into(),
        fields: fields
            .into_iter()
            .map(|(name, kind)| Field {
                name: name.into(),
                value: Some(Value { kind: Some(kind) }),
            })
            .collect(),
    }))
}

/// A fixed set of responses covering each summary and type.
fn responses() -> Vec<GetFlowsResponse> {
    let frontend = || ep("demo-app", "frontend-6d8f9", "frontend", 12345);
    let api = || ep("demo-app", "api-service-7c4b2", "api-service", 23456);
    let db = || ep("demo-app", "db-service-5f7d1", "db-service", 34567);
    let base = |t: i64, ms: i32| Flow {
        time: Some(ts(t, ms)),
        node_name: "lab-node".into(),
        uuid: format!("00000000-0000-4000-8000-{t:012}"),
        ..Default::default()
    };
    let http_req = Flow {
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L7 as i32,
        is_reply: Some(false),
        traffic_direction: TrafficDirection::Ingress as i32,
        ip: ip4("10.244.1.10", "10.244.1.20"),
        l4: tcp(51234, 80, TcpFlags::default()),
        source: Some(frontend()),
        destination: Some(api()),
        event_type: Some(CiliumEventType {
            r#type: 129,
            sub_type: 0,
        }),
        l7: Some(Layer7 {
            r#type: L7FlowType::Request as i32,
            latency_ns: 0,
            record: Some(layer7::Record::Http(Http {
                code: 0,
                method: "GET".into(),
                url: "http://api-service/get".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            })),
        }),
        ..base(1_772_119_810, 123)
    };
    let http_resp = Flow {
        is_reply: Some(true),
        traffic_direction: TrafficDirection::Ingress as i32,
        ip: ip4("10.244.1.20", "10.244.1.10"),
        l4: tcp(80, 51234, TcpFlags::default()),
        source: Some(api()),
        destination: Some(frontend()),
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 3_400_000,
            record: Some(layer7::Record::Http(Http {
                code: 403,
                method: "POST".into(),
                url: "http://api-service/post".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            })),
        }),
        ..http_req.clone()
    };
    let drop = Flow {
        verdict: Verdict::Dropped as i32,
        drop_reason_desc: DropReason::PolicyDenied as i32,
        r#type: FlowType::L3L4 as i32,
        is_reply: Some(false),
        traffic_direction: TrafficDirection::Ingress as i32,
        ip: ip4("10.244.1.10", "10.244.1.30"),
        l4: tcp(
            40000,
            6379,
            TcpFlags {
                syn: true,
                ..Default::default()
            },
        ),
        source: Some(frontend()),
        destination: Some(db()),
        event_type: Some(CiliumEventType {
            r#type: 1,
            sub_type: 133,
        }),
        ..base(1_772_119_811, 5)
    };
    let trace = Flow {
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L3L4 as i32,
        is_reply: Some(true),
        traffic_direction: TrafficDirection::Egress as i32,
        trace_observation_point: TraceObservationPoint::ToEndpoint as i32,
        ip: ip4("10.244.1.20", "10.244.1.10"),
        l4: tcp(
            80,
            51234,
            TcpFlags {
                syn: true,
                ack: true,
                ..Default::default()
            },
        ),
        source: Some(api()),
        destination: Some(frontend()),
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 0,
        }),
        ..base(1_772_119_812, 40)
    };
    let world = Flow {
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L3L4 as i32,
        ip: Some(Ip {
            source: "fd00::10".into(),
            destination: "2001:db8::1".into(),
            ip_version: IpVersion::IPv6 as i32,
            ..Default::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: 5353,
                destination_port: 53,
            })),
        }),
        source: Some(frontend()),
        destination: Some(Endpoint {
            identity: 2,
            labels: vec!["reserved:world".into()],
            ..Default::default()
        }),
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 11,
        }),
        trace_observation_point: TraceObservationPoint::ToStack as i32,
        ..base(1_772_119_813, 0)
    };
    let redis_req = Flow {
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L7 as i32,
        is_reply: Some(false),
        traffic_direction: TrafficDirection::Ingress as i32,
        ip: ip4("10.244.1.20", "10.244.1.30"),
        l4: tcp(43000, 6379, TcpFlags::default()),
        source: Some(api()),
        destination: Some(db()),
        l7: Some(Layer7 {
            r#type: L7FlowType::Request as i32,
            latency_ns: 0,
            record: None,
        }),
        extensions: redis(vec![
            ("command", value::Kind::String("SET".into())),
            ("key", value::Kind::String("session:42".into())),
            (
                "args",
                value::Kind::List(ValueList {
                    values: vec![Value {
                        kind: Some(value::Kind::String("alice".into())),
                    }],
                }),
            ),
        ]),
        ..base(1_772_119_814, 250)
    };
    let redis_resp = Flow {
        is_reply: Some(true),
        ip: ip4("10.244.1.30", "10.244.1.20"),
        l4: tcp(6379, 43000, TcpFlags::default()),
        source: Some(db()),
        destination: Some(api()),
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 1_200_000,
            record: None,
        }),
        extensions: redis(vec![
            ("command", value::Kind::String("FLUSHALL".into())),
            ("reply-type", value::Kind::String("error".into())),
            (
                "error",
                value::Kind::String("NOPERM this user has no permissions".into()),
            ),
        ]),
        ..redis_req.clone()
    };
    let kafka = Flow {
        verdict: Verdict::Forwarded as i32,
        r#type: FlowType::L7 as i32,
        is_reply: Some(true),
        ip: ip4("10.244.1.40", "10.244.1.20"),
        l4: tcp(9092, 44000, TcpFlags::default()),
        source: Some(ep("demo-app", "kafka-0", "kafka", 45678)),
        destination: Some(api()),
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 7_000_000,
            record: Some(layer7::Record::Kafka(Kafka {
                error_code: 29,
                api_version: 8,
                api_key: "produce".into(),
                correlation_id: 12,
                topic: "orders".into(),
            })),
        }),
        ..base(1_772_119_815, 999)
    };
    let memcached = Flow {
        ip: ip4("10.244.1.20", "10.244.1.50"),
        l4: tcp(45000, 11211, TcpFlags::default()),
        destination: Some(ep("demo-app", "cache-0", "cache", 56789)),
        extensions: Some(extension_any(&L7Extension {
            protocol: "memcached".into(),
            plugin: "memcached".into(),
            plugin_version: "0.1.0".into(),
            fields: vec![
                Field {
                    name: "command".into(),
                    value: Some(Value {
                        kind: Some(value::Kind::String("set".into())),
                    }),
                },
                Field {
                    name: "key".into(),
                    value: Some(Value {
                        kind: Some(value::Kind::String("user:1".into())),
                    }),
                },
                Field {
                    name: "bytes".into(),
                    value: Some(Value {
                        kind: Some(value::Kind::Uint(42)),
                    }),
                },
            ],
        })),
        ..redis_req.clone()
    };
    let mut out: Vec<GetFlowsResponse> = [
        http_req, http_resp, drop, trace, world, redis_req, redis_resp, kafka, memcached,
    ]
    .into_iter()
    .map(|f| GetFlowsResponse {
        node_name: f.node_name.clone(),
        time: f.time,
        response_types: Some(ResponseTypes::Flow(f)),
    })
    .collect();
    out.push(GetFlowsResponse {
        node_name: "lab-node".into(),
        time: Some(ts(1_772_119_816, 0)),
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: LostEventSource::ObserverEventsQueue as i32,
            num_events_lost: 1234,
            cpu: None,
            first: Some(ts(1_772_119_815, 0)),
            last: Some(ts(1_772_119_816, 0)),
        })),
    });
    out
}

fn render(output: Output, node_name: bool) -> String {
    let mut printer = Printer::new(PrintOptions {
        output,
        node_name,
        policy_names: false,
    });
    let mut text = String::new();
    for r in responses() {
        text.push_str(&printer.format(&r).unwrap());
    }
    text.push_str(&printer.finish());
    text
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, want, "{name} differs from the golden file");
}

#[test]
fn compact_golden() {
    golden("observe_compact.txt", &render(Output::Compact, false));
    golden("observe_compact_node.txt", &render(Output::Compact, true));
}

#[test]
fn json_golden() {
    let text = render(Output::Json, false);
    assert_eq!(text, render(Output::Jsonpb, false));
    // Every line is one JSON object in protobuf's mapping, with proto field names
    // as `hubble observe -o json` prints them.
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("node_name").is_some(), "{line}");
        assert!(v["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["flow"]["verdict"], "FORWARDED");
    assert_eq!(first["flow"]["l7"]["http"]["method"], "GET");
    assert_eq!(first["flow"]["IP"]["ipVersion"], "IPv4");
    assert_eq!(first["flow"]["l4"]["TCP"]["source_port"], 51234);
    assert_eq!(first["flow"]["source"]["pod_name"], "frontend-6d8f9");
    assert_eq!(first["flow"]["is_reply"], false);
    assert_eq!(first["flow"]["time"], "2026-02-26T15:30:10.123Z");
    let redis: serde_json::Value = serde_json::from_str(text.lines().nth(5).unwrap()).unwrap();
    // Plugin fields travel as a google.protobuf.Struct, named as keys.
    let ext = &redis["flow"]["extensions"];
    assert_eq!(ext["@type"], "type.googleapis.com/google.protobuf.Struct");
    assert_eq!(ext["value"]["protocol"], "redis");
    assert_eq!(ext["value"]["fields"]["command"], "SET");
    assert_eq!(ext["value"]["fields"]["args"][0], "alice");
    golden("observe_json.txt", &text);
}

/// `responses` printed by protobuf's own JSON printer (Python's `json_format`, an
/// implementation independent of ours, with proto field names as Hubble's printer
/// uses them), from their bytes. With `hubble_only`, the printer knows Hubble's
/// protos and the well-known types but none of Loupe's.
fn protobuf_printer(responses: &[GetFlowsResponse], hubble_only: bool) -> Vec<serde_json::Value> {
    let python = common::python();
    let dir = tempfile::tempdir().unwrap();
    let descriptors = dir.path().join("descriptors.bin");
    std::fs::write(&descriptors, loupe_proto::FILE_DESCRIPTOR_SET).unwrap();
    let hex: Vec<String> = responses
        .iter()
        .map(|r| {
            r.encode_to_vec()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    let script = r#"
import sys
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
files = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], "rb").read())
hubble_only = sys.argv[2] == "hubble-only"
pool = descriptor_pool.DescriptorPool()
for f in files.file:
    if hubble_only and f.package.startswith("loupe."):
        continue
    pool.Add(f)
cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("observer.GetFlowsResponse"))
for line in sys.stdin:
    msg = cls.FromString(bytes.fromhex(line.strip()))
    print(json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=None, descriptor_pool=pool))
"#;
    let mode = if hubble_only { "hubble-only" } else { "all" };
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&descriptors)
        .arg(mode)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{python}: {e} (protobuf's Python printer; scripts/bootstrap installs it)")
        });
    // A printer that died early shows up in its exit status and stderr below.
    let _ = std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        (hex.join("\n") + "\n").as_bytes(),
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{python}: protobuf's printer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `loupe observe -o json` writes what protobuf's own printer writes for the same
/// bytes: L3/L4, drop, trace, HTTP, Kafka, Redis and memcached flows, lost events.
#[test]
fn json_is_protobufs_own_mapping() {
    let responses = responses();
    let theirs = protobuf_printer(&responses, false);
    let ours = render(Output::Json, false);
    let ours: Vec<serde_json::Value> = ours
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(theirs.len(), responses.len());
    assert_eq!(ours.len(), responses.len());
    for (i, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(
            by_value(o),
            by_value(t),
            "response {i}: ours differs from protobuf's printer"
        );
    }
}

/// Numbers compared by value: `google.protobuf.Value` numbers are doubles, which
/// Go's printer (and ours, as Hubble's) writes `42` and Python's `42.0`.
fn by_value(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| v.clone(), Value::Number),
        Value::Array(items) => Value::Array(items.iter().map(by_value).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), by_value(v))).collect())
        }
        other => other.clone(),
    }
}

/// A client with Hubble's protos and the well-known types only (no Loupe protos)
/// decodes every plugin's fields.
#[test]
fn extensions_need_no_loupe_protos() {
    let responses = responses();
    let printed = protobuf_printer(&responses, true);
    let plugin_fields: Vec<(String, serde_json::Value)> = printed
        .iter()
        .filter_map(|r| {
            let ext = r["flow"].get("extensions")?;
            assert_eq!(ext["@type"], "type.googleapis.com/google.protobuf.Struct");
            Some((
                ext["value"]["protocol"].as_str().unwrap().to_string(),
                ext["value"]["fields"].clone(),
            ))
        })
        .collect();
    assert_eq!(
        plugin_fields,
        [
            (
                "redis".to_string(),
                serde_json::json!({"command": "SET", "key": "session:42", "args": ["alice"]})
            ),
            (
                "redis".to_string(),
                serde_json::json!({
                    "command": "FLUSHALL",
                    "reply-type": "error",
                    "error": "NOPERM this user has no permissions"
                })
            ),
            (
                "memcached".to_string(),
                serde_json::json!({"command": "set", "key": "user:1", "bytes": 42.0})
            ),
        ]
    );
}

#[test]
fn dict_golden() {
    golden("observe_dict.txt", &render(Output::Dict, false));
}

#[test]
fn table_golden() {
    golden("observe_table.txt", &render(Output::Table, true));
}

fn request(args: &[&str]) -> loupe_proto::observer::GetFlowsRequest {
    let mut argv = vec!["loupe", "observe"];
    argv.extend_from_slice(args);
    let parsed = observe::parse_args(&argv[1..]).unwrap();
    let os: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
    observe::build_request(&parsed, &os).unwrap()
}

#[test]
fn flags_build_hubble_filters() {
    // The article's query: namespace on either side, AND verdict.
    let r = request(&["--namespace", "demo-app", "--verdict", "DROPPED"]);
    assert_eq!(r.number, 20);
    assert_eq!(r.whitelist.len(), 2);
    assert_eq!(r.whitelist[0].source_pod, vec!["demo-app/"]);
    assert_eq!(r.whitelist[1].destination_pod, vec!["demo-app/"]);
    assert!(
        r.whitelist
            .iter()
            .all(|f| f.verdict == vec![Verdict::Dropped as i32])
    );
    // --from/--to only: one filter; repeated values OR inside it.
    let r = request(&[
        "--from-pod",
        "demo-app/frontend",
        "--to-port",
        "80",
        "--to-port",
        "8080",
        "--http-status",
        "5+",
        "--last",
        "5",
    ]);
    assert_eq!(r.whitelist.len(), 1);
    assert_eq!(r.whitelist[0].destination_port, vec!["80", "8080"]);
    assert_eq!(r.number, 5);
    // --not moves the next filter flag to the blacklist.
    let r = request(&[
        "--protocol",
        "http",
        "--not",
        "--http-method",
        "GET",
        "--follow",
    ]);
    assert_eq!(r.whitelist[0].protocol, vec!["http"]);
    assert!(r.whitelist[0].http_method.is_empty());
    assert_eq!(r.blacklist[0].http_method, vec!["GET"]);
    assert!(r.follow);
    assert_eq!(r.number, 0);
    let r = request(&[
        "--type",
        "trace:to-endpoint",
        "--first",
        "3",
        "--since",
        "2026-02-26T15:00:00Z",
    ]);
    assert!(r.first);
    assert_eq!(r.whitelist[0].event_type[0].sub_type, 0);
    assert!(r.whitelist[0].event_type[0].match_sub_type);
    assert_eq!(r.since.unwrap().seconds, 1_772_118_000);
    let bad = observe::parse_args(&["observe", "--verdict", "MAYBE"]).unwrap();
    assert!(observe::build_request(&bad, &[]).is_err());
}
