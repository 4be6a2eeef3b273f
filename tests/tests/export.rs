//! Flow export to files by a real agent over lab traffic: each line is the JSON
//! `loupe observe -o json` (and `hubble observe -o json`) prints for the same flow,
//! parsed back by protobuf's own JSON parser; allow / deny lists, field masks,
//! aggregation, rotation, dynamic exporters re-read on change, and a full disk
//! that is counted while `observe --follow` goes on.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use loupe_tests::{TestAgent, TestLab, metric, python, scratch_dir, serial, wait_for};

/// `n` HTTP requests from `pod` to api-service (one connection each).
fn requests(lab: &TestLab, pod: &str, n: usize) {
    let script =
        format!("for i in $(seq {n}); do curl -s -m 5 -o /dev/null http://api-service/get; done");
    lab.exec_ok(pod, &["sh", "-c", &script]).unwrap();
}

/// The lines of a file (empty when missing).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Parses every line with protobuf's own JSON parser (Python's `json_format`) as
/// an `observer.GetFlowsResponse`; returns how many parsed, panicking with the
/// parser's message on the first that does not.
fn parse_with_protobuf(lines: &[String]) -> usize {
    let dir = scratch_dir("export-pb");
    let descriptors = dir.join("descriptors.bin");
    std::fs::write(&descriptors, loupe_proto::FILE_DESCRIPTOR_SET).unwrap();
    let script = r#"
import sys
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
files = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], "rb").read())
pool = descriptor_pool.DescriptorPool()
for f in files.file:
    pool.Add(f)
cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("observer.GetFlowsResponse"))
n = 0
for line in sys.stdin:
    msg = json_format.Parse(line, cls(), descriptor_pool=pool)
    assert msg.WhichOneof("response_types") in ("flow", "lost_events"), line
    n += 1
print(n)
"#;
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", script])
        .arg(&descriptors)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (scripts/bootstrap installs it)"));
    let _ = std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        (lines.join("\n") + "\n").as_bytes(),
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protobuf's JSON parser refused a line: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// An RFC 3339 UTC time (`…:24.17364Z`) with its fraction padded to nanoseconds,
/// so times compare as strings.
fn sortable(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{secs}.{frac:0<9}")
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn static_export_writes_what_observe_prints_for_the_flows_it_selects() {
    let _guard = serial();
    let lab = TestLab::up("e2e-exp", 236).unwrap();
    let dir = scratch_dir("export-static");
    let file = dir.join("events.log");
    let agent = TestAgent::start(
        "exp",
        "e2e-exp",
        &format!(
            r#"hubble:
  export:
    static:
      enabled: true
      filePath: {}
      allowList: ['{{"source_pod":["demo-app/frontend"]}}']
      denyList: [{{destination_port: ["6379"]}}]
"#,
            file.display()
        ),
        4,
    )
    .unwrap();
    requests(&lab, "frontend", 5);
    requests(&lab, "api-service", 3);
    let pong = lab
        .exec_ok("frontend", &["redis-cli", "-h", "db-service", "PING"])
        .unwrap();
    assert_eq!(pong.trim(), "PONG");
    // The denied Redis flows are in the store before the last request; once the
    // exporter wrote that request's flows (it reads in order), it has seen them.
    let redis_flows = || {
        agent
            .loupe_ok(&[
                "observe",
                "--from-pod",
                "demo-app/frontend",
                "--to-port",
                "6379",
                "-o",
                "json",
            ])
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(5), || !redis_flows().trim().is_empty()),
        "no Redis flows to deny"
    );
    let redis = redis_flows();
    let last_redis = redis
        .lines()
        .map(|l| sortable(json(l)["time"].as_str().unwrap()))
        .max()
        .unwrap();
    requests(&lab, "frontend", 1);
    assert!(
        wait_for(Duration::from_secs(5), || {
            lines(&file).iter().any(|l| {
                json(l)["time"]
                    .as_str()
                    .is_some_and(|t| t > last_redis.as_str())
            })
        }),
        "{:?}\n{}",
        lines(&file),
        agent.log()
    );
    let exported = lines(&file);
    for line in &exported {
        let f = &json(line)["flow"];
        assert!(
            f["source"]["pod_name"]
                .as_str()
                .is_some_and(|p| p.starts_with("frontend-")),
            "allowList let through: {line}"
        );
        assert_ne!(
            f["l4"]["TCP"]["destination_port"], 6379,
            "denyList let through: {line}"
        );
    }
    // Byte for byte what `observe -o json` prints for the same flows (which is what
    // `hubble observe -o json` prints: checked by hand with the real Hubble CLI,
    // and `flow::json`'s unit tests pin Go's field order, numbers and escapes).
    let observed = agent
        .loupe_ok(&[
            "observe",
            "--from-pod",
            "demo-app/frontend",
            "--last",
            "1000",
            "-o",
            "json",
        ])
        .unwrap();
    let observed: std::collections::HashSet<&str> = observed.lines().collect();
    for line in &exported {
        assert!(
            observed.contains(line.as_str()),
            "not as observe prints it: {line}"
        );
    }
    assert_eq!(parse_with_protobuf(&exported), exported.len());
    let status = agent.loupe_ok(&["status"]).unwrap();
    assert!(status.contains("hubble/exporter/static"), "{status}");
}

#[test]
fn dynamic_exporters_mask_aggregate_rotate_and_survive_a_full_disk() {
    let _guard = serial();
    let lab = TestLab::up("e2e-expd", 237).unwrap();
    let dir = scratch_dir("export-dynamic");
    // A disk that fills after a few lines.
    let full = dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs at {}", full.display());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&full);

    let config = dir.join("flowlogs.yaml");
    let masked = dir.join("masked.log");
    let rotated = dir.join("rotated.log");
    let on_full = full.join("events.log");
    let flowlogs = format!(
        r#"flowLogs:
- name: masked
  filePath: {masked}
  fieldMask: [time, verdict, source.pod_name, destination.pod_name]
  includeFilters: [{{destination_pod: ["demo-app/api-service"]}}]
- name: rotated
  filePath: {rotated}
  fileMaxSizeMb: 1
  fileMaxBackups: 1
- name: full
  filePath: {on_full}
"#,
        masked = masked.display(),
        rotated = rotated.display(),
        on_full = on_full.display()
    );
    std::fs::write(&config, &flowlogs).unwrap();
    let agent = TestAgent::start(
        "expd",
        "e2e-expd",
        &format!(
            "prometheus:\n  enabled: true\n  port: 19482\nhubble:\n  export:\n    dynamic:\n      enabled: true\n      config:\n        path: {}\n",
            config.display()
        ),
        4,
    )
    .unwrap();
    let prom = 19482;

    // A follower that must keep receiving flows while the full disk refuses lines.
    let mut follow = Command::new(loupe_tests::loupe_bin())
        .args(["--socket"])
        .arg(&agent.socket)
        .args([
            "observe",
            "--follow",
            "--to-pod",
            "demo-app/api-service",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let followed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = followed.clone();
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() {
                break;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    // Traffic until the 1 MiB file rotates (about 1 KiB a line, 5 lines a
    // request at the default event level), in bounded batches.
    let rotations = || {
        metric(
            prom,
            "hubble_exporter_rotations_total",
            &["name=\"rotated\""],
        )
    };
    let mut sent = 0;
    while sent < 800 && rotations() < 1.0 {
        requests(&lab, "frontend", 80);
        sent += 80;
        wait_for(Duration::from_secs(2), || rotations() >= 1.0);
    }
    assert!(
        rotations() >= 1.0,
        "no rotation after {sent} requests: {}",
        loupe_tests::samples(prom, &["hubble_exporter"])
    );
    // The full disk: counted, reported, and no partial line left behind.
    let errors = metric(
        prom,
        "hubble_exporter_write_errors_total",
        &["name=\"full\""],
    );
    assert!(
        errors > 0.0,
        "{}",
        loupe_tests::samples(prom, &["hubble_exporter"])
    );
    // `status` reports the failing exporter (and exits non-zero for it).
    let status = String::from_utf8_lossy(&agent.loupe(&["status"]).stdout).into_owned();
    assert!(
        status.contains("hubble/exporter/full") && status.contains("No space left on device"),
        "{status}"
    );
    let on_disk = lines(&on_full);
    assert!(!on_disk.is_empty());
    assert_eq!(parse_with_protobuf(&on_disk), on_disk.len());
    // The follower got every request's flows to api-service meanwhile: at the
    // default event level (`docs/event-levels.md`) the two policy verdicts and
    // the client's FIN into api-service.
    assert!(
        wait_for(Duration::from_secs(5), || {
            followed.load(std::sync::atomic::Ordering::Relaxed) >= sent * 3
        }),
        "follow stalled at {} lines",
        followed.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();

    // Rotation kept one backup; the live file and the backup parse whole.
    let backups: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rotated-") && n.ends_with(".log"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let backup = lines(&dir.join(&backups[0]));
    assert!(backup.iter().map(|l| l.len() + 1).sum::<usize>() <= 1 << 20);
    assert_eq!(parse_with_protobuf(&backup), backup.len());

    // The mask kept exactly its fields.
    let masked_lines = lines(&masked);
    assert!(!masked_lines.is_empty());
    for line in &masked_lines {
        let flow = json(line)["flow"].clone();
        let mut keys: Vec<&str> = flow
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert!(
            keys.iter()
                .all(|k| ["destination", "source", "time", "verdict"].contains(k)),
            "{line}"
        );
        assert!(
            flow["destination"]["pod_name"]
                .as_str()
                .unwrap()
                .starts_with("api-service-")
        );
        assert!(flow["destination"].get("namespace").is_none(), "{line}");
    }

    // A changed file: one exporter replaced by an aggregating one, applied live.
    let aggregated = dir.join("aggregated.log");
    std::fs::write(
        &config,
        format!(
            r#"flowLogs:
- name: aggregated
  filePath: {}
  fieldAggregate: [source.namespace, destination.namespace, verdict]
  aggregationInterval: 1s
"#,
            aggregated.display()
        ),
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || {
            metric(
                prom,
                "hubble_dynamic_exporter_reconfigurations_total",
                &["op=\"remove\""],
            ) >= 3.0
        }),
        "{}",
        loupe_tests::samples(prom, &["hubble_dynamic_exporter"])
    );
    let before = lines(&masked).len();
    requests(&lab, "frontend", 10);
    // Windows close every second: wait until they hold every request's flows.
    let groups =
        || -> Vec<serde_json::Value> { lines(&aggregated).iter().map(|l| json(l)).collect() };
    let counted = |groups: &[serde_json::Value]| -> u64 {
        groups
            .iter()
            .map(|g| {
                let a = &g["flow"]["aggregate"];
                [
                    "ingress_flow_count",
                    "egress_flow_count",
                    "unknown_direction_flow_count",
                ]
                .iter()
                .map(|k| a[k].as_u64().unwrap_or(0))
                .sum::<u64>()
            })
            .sum()
    };
    assert!(
        wait_for(Duration::from_secs(5), || counted(&groups()) >= 10 * 4),
        "{:?}",
        groups()
    );
    let groups = groups();
    assert!(
        groups
            .iter()
            .all(|g| g["flow"]["source"]["pod_name"].is_null())
    );
    assert_eq!(
        lines(&masked).len(),
        before,
        "the removed exporter still writes"
    );

    // A file that does not parse changes nothing and says why.
    std::fs::write(&config, "flowLogs:\n- name: x\n  filePath: relative.log\n").unwrap();
    assert!(wait_for(Duration::from_secs(5), || {
        String::from_utf8_lossy(&agent.loupe(&["status"]).stdout)
            .contains("is not an absolute path")
    }));
    let written = lines(&aggregated).len();
    requests(&lab, "frontend", 3);
    assert!(
        wait_for(Duration::from_secs(5), || lines(&aggregated).len()
            > written),
        "the running exporter stopped"
    );
    drop(agent);
    drop(lab);
}
