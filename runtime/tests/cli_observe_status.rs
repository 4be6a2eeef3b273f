//! The `loupe` binary end to end: `loupe agent --config` with Hubble and
//! Prometheus keys, then `loupe status`, `loupe observe` (formats, a refused
//! filter) and `/metrics` served by the agent process.

// Test helpers panic on failure by design (the lint allows it only inside #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Agent(Child);

impl Agent {
    /// `loupe agent --config <config>`, killed when dropped.
    fn start(config: &std::path::Path) -> Self {
        Self::start_with(config, &[])
    }

    /// `loupe agent --config <config> <extra>…`.
    fn start_with(config: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Self {
        Self(
            Command::new(env!("CARGO_BIN_EXE_loupe"))
                .args(["agent", "--config"])
                .arg(config)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn loupe(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loupe"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn agent_status_observe_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("loupe.sock");
    let metrics_port = common::free_port();
    let config = dir.path().join("loupe.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: cli-node\nsocketPath: {}\nstateDir: {}\nbpf:\n  enabled: false\nendpoints:\n  lab: false\nhubble:\n  enabled: true\n  eventBufferCapacity: 1023\n  metrics:\n    enabled: [drop, flow]\n    address: 127.0.0.1\n    port: {}\nprometheus:\n  enabled: true\n  address: 127.0.0.1\n  port: {}\n",
            socket.display(),
            dir.path().join("state").display(),
            common::free_port(),
            metrics_port
        ),
    )
    .unwrap();
    let _agent = Agent::start(&config);

    // `status --wait` returns once the agent answers and is healthy.
    let out = loupe(&socket, &["status", "--wait", "--wait-duration", "30"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Loupe:          Ok"), "{text}");
    assert!(text.contains("Current/Max Flows: 0/1023"), "{text}");
    assert!(text.contains("metrics/prometheus"), "{text}");

    for format in ["compact", "json", "jsonpb", "dict", "table"] {
        let out = loupe(
            &socket,
            &[
                "observe",
                "-o",
                format,
                "--namespace",
                "demo-app",
                "--verdict",
                "DROPPED",
            ],
        );
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{format}: no flows were pushed");
    }
    let out = loupe(&socket, &["observe", "--http-status", "9+"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http_status_code"), "{err}");

    let start = Instant::now();
    let body = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", metrics_port)) {
            use std::io::{Read as _, Write as _};
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no metrics listener"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("loupe_flow_store_capacity 1023"), "{body}");

    // Without an agent: a clear error and a non-zero exit.
    let out = loupe(&dir.path().join("nobody.sock"), &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Loupe agent"));
}

/// SIGTERM stops the agent even while `observe --follow` streams are open (a
/// graceful stop would wait for them forever).
#[test]
fn sigterm_stops_the_agent_with_followers_attached() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("loupe.sock");
    let config = dir.path().join("loupe.yaml");
    std::fs::write(
        &config,
        format!(
            "socketPath: {}\nstateDir: {}\nbpf:\n  enabled: false\nendpoints:\n  lab: false\nplugins:\n  bundled: false\n",
            socket.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&config);
    let started = Instant::now();
    while !loupe(&socket, &["status"]).status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut followers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_loupe"))
                .arg("--socket")
                .arg(&socket)
                .args(["observe", "--follow"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = Instant::now();
    let stopped = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break Some(status);
        }
        if stopping.elapsed() > Duration::from_secs(15) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for f in &mut followers {
        let _ = f.kill();
        let _ = f.wait();
    }
    let status = stopped.expect("the agent did not stop within 15 s of SIGTERM");
    assert!(status.success(), "{status}");
}

/// `loupe agent --config F --socket S` listens on S, not on the file's
/// `socketPath`: flags win over the file.
#[test]
fn the_socket_flag_wins_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let in_file = dir.path().join("from-file.sock");
    let flag = dir.path().join("from-flag.sock");
    let config = dir.path().join("loupe.yaml");
    std::fs::write(
        &config,
        format!(
            "socketPath: {}\nstateDir: {}\nbpf:\n  enabled: false\nendpoints:\n  lab: false\nplugins:\n  bundled: false\n",
            in_file.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let _agent = Agent::start_with(&config, &["--socket".as_ref(), flag.as_os_str()]);
    let started = Instant::now();
    while !loupe(&flag, &["status"]).status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent is not on the flag's socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!in_file.exists(), "the file's socketPath was used too");
}
