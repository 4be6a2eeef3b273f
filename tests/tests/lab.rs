//! `loupe lab`: the demo-app on network namespaces, with its real servers.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use loupe_tests::{TestLab, alive, client, loupe, serial, sh, wait_for};

/// Everything a lab leaves on the host that names it.
fn leftovers(lab: &str, octet: u8, veths: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for ns in sh("ip", &["netns", "list"]).lines() {
        if ns.starts_with(&format!("loupe-{lab}-")) {
            found.push(format!("netns {ns}"));
        }
    }
    let links = sh("ip", &["-o", "link", "show"]);
    for veth in veths {
        if links.contains(&format!(" {veth}@")) || links.contains(&format!(" {veth}:")) {
            found.push(format!("link {veth}"));
        }
    }
    let prefix = format!("10.{octet}.0.");
    for route in sh("ip", &["route", "show"]).lines() {
        if route.contains(&prefix) {
            found.push(format!("route {route}"));
        }
    }
    let prefix6 = format!("fd00:10:{octet}:");
    for route in sh("ip", &["-6", "route", "show"]).lines() {
        if route.contains(&prefix6) {
            found.push(format!("route {route}"));
        }
    }
    let lo = sh("ip", &["addr", "show", "dev", "lo"]);
    if lo.contains(&prefix) || lo.contains(&prefix6) {
        found.push("gateway address on lo".into());
    }
    if std::path::Path::new(&format!("/run/loupe/lab/{lab}")).exists() {
        found.push("state directory".into());
    }
    for ns in std::fs::read_dir("/etc/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if ns
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("loupe-{lab}-"))
        {
            found.push(format!("/etc/netns/{}", ns.file_name().to_string_lossy()));
        }
    }
    found
}

fn pids_and_veths(lab: &TestLab) -> (Vec<i64>, Vec<String>) {
    let state = lab.state().unwrap();
    let pods = state["pods"].as_array().unwrap();
    let pids = pods.iter().filter_map(|p| p["pid"].as_i64()).collect();
    let veths = pods
        .iter()
        .map(|p| p["hostIf"].as_str().unwrap().to_string())
        .collect();
    (pids, veths)
}

#[test]
fn lab_serves_the_demo_app_and_down_leaves_nothing() {
    let _guard = serial();
    let lab = TestLab::up("e2e-up", 211).unwrap();

    // frontend -> api-service: httpbin's JSON, by service name.
    let body = lab
        .exec_ok(
            "frontend",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-w",
                "\n%{http_code}",
                "http://api-service/get",
            ],
        )
        .unwrap();
    let (json, code) = body.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{body}");
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(json["url"], "http://api-service/get");
    assert_eq!(json["headers"]["Host"], "api-service");
    // httpbin's other endpoints the scenarios use.
    let status = lab
        .http_status("frontend", &["-X", "POST"], "http://api-service/post")
        .unwrap();
    assert_eq!(status, "200");
    let status = lab
        .http_status("frontend", &[], "http://api-service/status/503")
        .unwrap();
    assert_eq!(status, "503");

    // api-service -> db-service: a Redis round trip with the real client.
    let key = format!("e2e:{}", std::process::id());
    let set = lab
        .exec_ok(
            "api-service",
            &["redis-cli", "-h", "db-service", "SET", &key, "loupe"],
        )
        .unwrap();
    assert_eq!(set.trim(), "OK");
    let get = lab
        .exec_ok(
            "api-service",
            &["redis-cli", "-h", "db-service", "GET", &key],
        )
        .unwrap();
    assert_eq!(get.trim(), "loupe");

    // A real Kafka client in a pod produces and consumes through the broker.
    let out = lab
        .exec_ok(
            "api-service",
            &["python3", &client("kafka_roundtrip.py"), "kafka:9092"],
        )
        .unwrap();
    assert!(out.starts_with("consumed hello-"), "{out}");

    // IPv6 between pods too.
    let status = lab
        .http_status("frontend", &["-6"], "http://api-service/get")
        .unwrap();
    assert_eq!(status, "200");

    // Pods reach only the lab: no route beyond it.
    let out = lab.exec("frontend", &["ip", "route", "get", "192.0.2.1"]);
    assert!(!out.status.success(), "a pod has a route out of the lab");

    let (pids, veths) = pids_and_veths(&lab);
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| alive(*p)));
    lab.down().unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p))),
        "servers survive down"
    );
    assert_eq!(leftovers("e2e-up", 211, &veths), Vec::<String>::new());
}

#[test]
fn up_is_idempotent_and_recovers_after_kill_9() {
    let _guard = serial();
    let lab = TestLab::up("e2e-kill", 212).unwrap();
    let (pids, _) = pids_and_veths(&lab);
    let again = lab.loupe_up().unwrap();
    assert!(again.contains("already up"), "{again}");
    assert_eq!(
        pids_and_veths(&lab).0,
        pids,
        "a second up restarted the servers"
    );

    // Kill a pod's server: the lab is degraded, and up repairs it.
    nix_kill(pids[1]);
    assert!(wait_for(Duration::from_secs(5), || !alive(pids[1])));
    assert!(
        !loupe(&["lab", "status", "--lab", "e2e-kill"])
            .status
            .success()
    );
    lab.loupe_up().unwrap();
    assert!(
        loupe(&["lab", "status", "--lab", "e2e-kill"])
            .status
            .success()
    );

    // Tear it down, then kill -9 an `up` half-way through and run `up` again.
    lab.down().unwrap();
    let mut child = Command::new(loupe_tests::loupe_bin())
        .args(["lab", "up", "--file", lab.path()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has made pods, then kill it without a chance to clean up.
    assert!(wait_for(Duration::from_secs(10), || {
        lab.state()
            .ok()
            .and_then(|s| s["pods"].as_array().map(|p| p.len()))
            .unwrap_or(0)
            >= 2
    }));
    child.kill().unwrap();
    child.wait().unwrap();
    lab.loupe_up().unwrap();
    assert!(
        loupe(&["lab", "status", "--lab", "e2e-kill"])
            .status
            .success()
    );
    let get = lab
        .http_status("frontend", &[], "http://api-service/get")
        .unwrap();
    assert_eq!(get, "200");
    let (_, veths) = pids_and_veths(&lab);
    lab.down().unwrap();
    assert_eq!(leftovers("e2e-kill", 212, &veths), Vec::<String>::new());
}

fn nix_kill(pid: i64) {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

#[test]
fn bad_lab_files_are_refused_and_create_nothing() {
    let _guard = serial();
    let base = TestLab::file("e2e-bad", 213).unwrap();
    let good = std::fs::read_to_string(&base.file).unwrap();
    let cases = [
        (
            good.replace("readyPort: 80\n", "readyPort: 80\n    replicas: 2\n"),
            "pods[0]: unknown field `replicas`",
        ),
        (
            good.replace("- name: db-service", "- name: frontend"),
            "pods[2].name: duplicate pod name \"frontend\"",
        ),
        (
            good.replace("address: 10.213.0.30", "address: 10.9.0.30"),
            "pods[2].address: 10.9.0.30 is outside",
        ),
        (
            good.replace("command: [redis-server,", "command: [no-such-server,"),
            "pods[2].command[0]: program \"no-such-server\" not found",
        ),
    ];
    for (text, expected) in cases {
        assert_ne!(text, good, "case {expected:?} did not change the file");
        std::fs::write(&base.file, &text).unwrap();
        let out = loupe(&["lab", "up", "--file", base.path()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{expected}: accepted");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
        assert_eq!(
            leftovers("e2e-bad", 213, &[]),
            Vec::<String>::new(),
            "{expected}"
        );
    }
}

/// Lab `e2e-cl` with pod `x-frontend` and lab `e2e-cl-x` with pod `frontend` would
/// share a namespace name: the second is refused, and tearing down `e2e-cl` from
/// its file never touches `e2e-cl-x`'s namespaces (they carry its prefix too).
#[test]
fn labs_whose_names_join_alike_never_touch_each_other() {
    let _guard = serial();
    let other = TestLab::up("e2e-cl-x", 216).unwrap();
    let theirs = || {
        sh("ip", &["netns", "list"])
            .lines()
            .filter(|n| n.starts_with("loupe-e2e-cl-x-"))
            .count()
    };
    assert_eq!(theirs(), 4);
    let mine = TestLab::file("e2e-cl", 215).unwrap();
    let text = std::fs::read_to_string(&mine.file)
        .unwrap()
        .replace("- name: frontend", "- name: x-frontend");
    std::fs::write(&mine.file, text).unwrap();
    let out = loupe(&["lab", "up", "--file", mine.path()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a clashing lab was built");
    assert!(
        stderr.contains(
            "pod x-frontend: its network namespace loupe-e2e-cl-x-frontend is lab e2e-cl-x's"
        ),
        "{stderr}"
    );
    assert_eq!(
        theirs(),
        4,
        "refusing the lab removed the other's namespaces"
    );
    let out = loupe(&["lab", "down", "--file", mine.path()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(theirs(), 4, "lab down removed another lab's namespaces");
    let left: Vec<String> = leftovers("e2e-cl", 215, &[])
        .into_iter()
        .filter(|l| !l.contains("loupe-e2e-cl-x-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    drop(other);
}
