//! `loupe replay` against tshark on the same captures: the runtime's own TCP
//! reassembly and the shipped plugins must find the messages tshark finds, with
//! the same values for the fields both know.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use loupe_tests::{loupe_bin, root, tshark::tshark};
use serde_json::Value;

fn fixture(path: &str) -> String {
    root().join(path).display().to_string()
}

/// The flows `loupe replay -o json` prints for a capture.
fn replay(pcap: &str) -> Vec<Value> {
    let out = std::process::Command::new(loupe_bin())
        .args(["replay", pcap, "-o", "json"])
        .env("LOUPE_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "loupe replay {pcap}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| v["flow"].clone())
        .collect()
}

fn l7_type(f: &Value) -> &str {
    f["l7"]["type"].as_str().unwrap_or("")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn http_replay_matches_tshark() {
    let pcap = fixture("plugins/http/fixtures/http.pcap");
    let flows = replay(&pcap);
    let dissect = |filter: &str, fields: &[&str]| -> Vec<String> {
        let mut args = vec![
            "-r",
            &pcap,
            "-d",
            "tcp.port==18080,http",
            "-Y",
            filter,
            "-T",
            "fields",
        ];
        for f in fields {
            args.extend(["-e", f]);
        }
        tshark(&args)
            .lines()
            .map(|l| l.replace('\t', " "))
            .collect()
    };
    let tshark_requests = sorted(dissect(
        "http.request",
        &["http.request.method", "http.request.uri"],
    ));
    let ours_requests = sorted(
        flows
            .iter()
            .filter(|f| l7_type(f) == "REQUEST")
            .map(|f| {
                let url = f["l7"]["http"]["url"].as_str().unwrap();
                // http://host/path -> /path, as tshark's request URI.
                let path = url
                    .split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
                    .unwrap_or_else(|| url.to_string());
                format!("{} {path}", f["l7"]["http"]["method"].as_str().unwrap())
            })
            .collect(),
    );
    assert!(tshark_requests.len() >= 10, "{tshark_requests:?}");
    assert_eq!(ours_requests, tshark_requests);
    // Final responses (tshark also lists interim 1xx, which replay shows as
    // unpaired samples).
    let tshark_codes = sorted(
        dissect("http.response", &["http.response.code"])
            .into_iter()
            .filter(|c| !c.starts_with('1'))
            .collect(),
    );
    let ours_codes = sorted(
        flows
            .iter()
            .filter(|f| l7_type(f) == "RESPONSE")
            .map(|f| f["l7"]["http"]["code"].to_string())
            .collect(),
    );
    // Every response tshark dissects is ours, with its code; tshark misses some
    // that follow a body in the same segment (counted, not hidden).
    let mut missing = ours_codes.clone();
    for code in &tshark_codes {
        let at = missing
            .iter()
            .position(|c| c == code)
            .unwrap_or_else(|| panic!("tshark's {code} not among ours: {ours_codes:?}"));
        missing.remove(at);
    }
    assert!(missing.len() <= 2, "tshark found far fewer: {missing:?}");
    assert_eq!(
        ours_codes.len(),
        ours_requests.len(),
        "one response per request"
    );
    let interim = flows
        .iter()
        .filter(|f| l7_type(f) == "SAMPLE" && f["l7"]["http"]["code"] == 100)
        .count();
    assert_eq!(
        interim,
        dissect("http.response.code == 100", &["http.response.code"]).len()
    );
    println!(
        "compared {} requests and {} responses with tshark ({} responses tshark does not dissect: {missing:?})",
        ours_requests.len(),
        tshark_codes.len(),
        missing.len()
    );
}

#[test]
fn kafka_replay_matches_tshark() {
    let pcap = fixture("plugins/kafka/fixtures/kafka.pcap");
    let flows = replay(&pcap);
    // Every request and response, by correlation id and API key, as tshark
    // dissects them.
    let theirs = sorted(
        tshark(&[
            "-r",
            &pcap,
            "-d",
            "tcp.port==19092,kafka",
            "-Y",
            "kafka.api_key",
            "-T",
            "fields",
            "-e",
            "kafka.correlation_id",
            "-e",
            "kafka.api_key",
        ])
        .lines()
        .flat_map(|l| {
            // A frame may carry several messages: fields are comma-separated lists.
            let (ids, keys) = l.split_once('\t').unwrap_or((l, ""));
            ids.split(',')
                .zip(keys.split(','))
                .map(|(i, k)| format!("{i} {k}"))
                .collect::<Vec<_>>()
        })
        .collect(),
    );
    // Plugin fields travel as a google.protobuf.Struct: numbers as JSON numbers.
    let field = |f: &Value, name: &str| -> String {
        let v = &f["extensions"]["value"]["fields"][name];
        v.as_str()
            .map(str::to_string)
            .or_else(|| v.as_f64().map(|n| format!("{}", n as i64)))
            .unwrap_or_default()
    };
    let ours = sorted(
        flows
            .iter()
            .filter(|f| matches!(l7_type(f), "REQUEST" | "RESPONSE"))
            .map(|f| format!("{} {}", field(f, "correlation-id"), field(f, "api-key")))
            .collect(),
    );
    assert!(theirs.len() >= 20, "{theirs:?}");
    assert_eq!(ours, theirs);
    println!("compared {} Kafka messages with tshark", ours.len());
}

/// `--stats` counts each TCP connection once, as tshark's `tcp.stream` does (a
/// closed connection's last ACK opened a second one before).
#[test]
fn replay_stats_count_connections_as_tshark_does() {
    for pcap in [
        "plugins/redis/fixtures/resp2.pcap",
        "plugins/http/fixtures/http.pcap",
    ] {
        let pcap = fixture(pcap);
        let streams: std::collections::BTreeSet<String> =
            tshark(&["-r", &pcap, "-T", "fields", "-e", "tcp.stream"])
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
        let out = std::process::Command::new(loupe_bin())
            .args(["replay", &pcap, "--stats"])
            .env("LOUPE_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stats = String::from_utf8_lossy(&out.stderr);
        let ours: usize = stats
            .split(" connections")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no connection count in {stats}"));
        assert_eq!(ours, streams.len(), "{pcap}: {stats}");
    }
}
