//! Helpers for Loupe's end-to-end tests: the `loupe` binary, labs on network
//! namespaces with real servers, and commands run inside their pods.
//!
//! Every test here needs root (network namespaces, BPF). They build real state on the
//! machine, so the tests of one binary take [`serial`] before they start.

// Test support: a panic is how a test fails, so expect() is the right tool here.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod tshark;

include!("../outer_cargo_env.rs");

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The `loupe` binary: `$LOUPE_BIN`, else the one cargo built beside this test.
pub fn loupe_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LOUPE_BIN") {
        return PathBuf::from(bin);
    }
    // target/<profile>/deps/<test> -> target/<profile>/loupe
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("loupe");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bins`, as scripts/test does)",
        bin.display()
    );
    bin
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of one binary: they share the host's network state.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `loupe ARGS…` to completion.
pub fn loupe(args: &[&str]) -> Output {
    Command::new(loupe_bin())
        .args(args)
        .env("LOUPE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run loupe")
}

/// Runs `loupe ARGS…` and returns stdout, failing with stderr if it exits non-zero.
pub fn loupe_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = loupe(args);
    if !out.status.success() {
        bail!(
            "loupe {args:?} exited {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A lab built from `lab/demo-app.yaml` under another name and range, so tests
/// never touch a demo lab a developer has running. Torn down on drop.
pub struct TestLab {
    /// Lab name.
    pub name: String,
    /// The lab file written for this test.
    pub file: PathBuf,
    _dir: PathBuf,
}

impl TestLab {
    /// Writes the lab file (`name`, IPv4 `10.<octet>.0.0/24`) without building it.
    pub fn file(name: &str, octet: u8) -> anyhow::Result<Self> {
        let demo = std::fs::read_to_string(root().join("lab/demo-app.yaml"))?;
        let text = demo
            .replace("name: demo\n", &format!("name: {name}\n"))
            .replace("10.200.0.", &format!("10.{octet}.0."))
            .replace("fd00:10:200::", &format!("fd00:10:{octet}::"))
            .replace("{lab}/", &format!("{}/", root().join("lab").display()));
        let dir = std::env::temp_dir().join(format!("loupe-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("lab.yaml");
        std::fs::write(&file, text)?;
        Ok(Self {
            name: name.to_string(),
            file,
            _dir: dir,
        })
    }

    /// Writes the lab file and builds the lab.
    pub fn up(name: &str, octet: u8) -> anyhow::Result<Self> {
        let lab = Self::file(name, octet)?;
        lab.loupe_up()?;
        Ok(lab)
    }

    /// `loupe lab up --file …`.
    pub fn loupe_up(&self) -> anyhow::Result<String> {
        loupe_ok(&["lab", "up", "--file", self.path()])
    }

    /// The lab file's path as a string.
    pub fn path(&self) -> &str {
        self.file.to_str().unwrap_or_default()
    }

    /// Runs a command in a pod; its output, whatever the exit code.
    pub fn exec(&self, pod: &str, argv: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", "--lab", &self.name, pod, "--"];
        args.extend_from_slice(argv);
        loupe(&args)
    }

    /// Runs a command in a pod and returns its stdout, failing on a non-zero exit.
    pub fn exec_ok(&self, pod: &str, argv: &[&str]) -> anyhow::Result<String> {
        let out = self.exec(pod, argv);
        if !out.status.success() {
            bail!(
                "{pod}: {argv:?} exited {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `curl` from a pod; the HTTP status code (`-o /dev/null`), with extra curl
    /// arguments before the URL.
    pub fn http_status(&self, pod: &str, extra: &[&str], url: &str) -> anyhow::Result<String> {
        let mut argv = vec![
            "curl",
            "-sS",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        argv.extend_from_slice(extra);
        argv.push(url);
        self.exec_ok(pod, &argv)
    }

    /// The lab's recorded state (`loupe lab status --json`).
    pub fn state(&self) -> anyhow::Result<serde_json::Value> {
        let out = loupe(&["lab", "status", "--lab", &self.name, "--json"]);
        serde_json::from_slice(&out.stdout).context("lab status --json")
    }

    /// `loupe lab down --file …`.
    pub fn down(&self) -> anyhow::Result<()> {
        loupe_ok(&["lab", "down", "--file", self.path()]).map(|_| ())
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = loupe(&["lab", "down", "--file", self.path()]);
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Whether a process is alive (zombies count as gone).
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Output of a host command.
pub fn sh(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A client script under `tests/clients/`.
pub fn client(name: &str) -> String {
    root()
        .join("tests/clients")
        .join(name)
        .display()
        .to_string()
}

/// A `loupe agent` process with its own socket, state and pin path, stopped (and
/// its pinned datapath removed) on drop.
pub struct TestAgent {
    /// Name (socket, state and pin directories derive from it).
    pub name: String,
    /// The API socket.
    pub socket: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Pin path.
    pub pin_path: PathBuf,
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl TestAgent {
    /// Writes a config (`extra` is appended as YAML) and starts the agent; waits
    /// until it serves its API and has registered `endpoints` endpoints.
    pub fn start(name: &str, lab: &str, extra: &str, endpoints: usize) -> anyhow::Result<Self> {
        Self::start_with(
            name,
            &format!("endpoints:\n  labNames: [{lab}]\n"),
            extra,
            endpoints,
        )
    }

    /// As [`start`](Self::start), with the config's whole `endpoints:` section given.
    pub fn start_with(
        name: &str,
        endpoints_section: &str,
        extra: &str,
        endpoints: usize,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("loupe-agent-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/loupe-test-{name}"));
        remove_pins(&pin_path);
        let socket = dir.join("loupe.sock");
        let state_dir = dir.join("state");
        let config = dir.join("loupe.yaml");
        std::fs::write(
            &config,
            format!(
                "socketPath: {}\nstateDir: {}\nbpf:\n  pinPath: {}\n{endpoints_section}{extra}",
                socket.display(),
                state_dir.display(),
                pin_path.display()
            ),
        )?;
        let mut agent = Self {
            name: name.to_string(),
            socket,
            config,
            state_dir,
            pin_path,
            child: None,
            log: dir.join("agent.log"),
        };
        agent.spawn(endpoints)?;
        Ok(agent)
    }

    /// (Re)starts the process with the same config.
    pub fn spawn(&mut self, endpoints: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(loupe_bin())
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("LOUPE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(20), || {
            self.endpoints()
                .map(|e| e.len() >= endpoints)
                .unwrap_or(false)
        });
        if !ready {
            bail!(
                "agent {} did not come up with {endpoints} endpoints; log:\n{}",
                self.name,
                self.log()
            );
        }
        Ok(())
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `loupe --socket … ARGS…`.
    pub fn loupe(&self, args: &[&str]) -> Output {
        let mut full = vec!["--socket", self.socket.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        loupe(&full)
    }

    /// Like [`TestAgent::loupe`], failing on a non-zero exit.
    pub fn loupe_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["--socket", self.socket.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        loupe_ok(&full)
    }

    /// `loupe observe <args> -o json`, one value per line; a failing command fails
    /// the test.
    pub fn observe_json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut argv = vec!["observe"];
        argv.extend_from_slice(args);
        argv.extend(["-o", "json"]);
        self.loupe_ok(&argv)
            .unwrap_or_else(|e| panic!("loupe {argv:?}: {e}"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `loupe endpoint list --json`, parsed.
    pub fn endpoints(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.loupe(&["endpoint", "list", "--json"]);
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).context("endpoint json"))
            .collect()
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            if !wait_for(Duration::from_secs(5), || {
                matches!(child.try_wait(), Ok(Some(_)))
            }) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop();
        remove_pins(&self.pin_path);
    }
}

/// Removes a pin directory: links first (detaching the programs), then maps.
pub fn remove_pins(pin_path: &Path) {
    let _ = std::fs::remove_dir_all(pin_path.join("links"));
    let _ = std::fs::remove_dir_all(pin_path);
}

/// Whether a TCP connection from a pod to `host:port` succeeds within `secs`.
pub fn tcp_ok(lab: &TestLab, pod: &str, host: &str, port: u16, secs: u32) -> bool {
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('{host}',{port}),timeout={secs})\ns.close()"
    );
    lab.exec(pod, &["python3", "-c", &script]).status.success()
}

/// A WebAssembly guest built by `tests/build.rs` (`loupe_plugin_memcached`,
/// `loupe_hostile_misbehave`, …).
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("LOUPE_GUESTS_DIR")).join(format!("{name}.wasm"))
}

/// A fresh, empty directory under the system's temporary directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "loupe-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// An L7 flow's latency in `observe -o json` (protobuf's JSON writes a 64-bit
/// integer as a string); 0 when absent.
pub fn l7_latency_ns(flow: &serde_json::Value) -> u64 {
    match &flow["l7"]["latency_ns"] {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

/// The sum of the samples of metric `name` on `127.0.0.1:port/metrics` whose
/// labels contain every `labels` fragment (`command="SET"`); 0 when absent.
pub fn metric(port: u16, name: &str, labels: &[&str]) -> f64 {
    scrape(port)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && labels.iter().all(|f| series.contains(f)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The exposition text of `127.0.0.1:port/metrics` (empty if it does not answer).
pub fn scrape(port: u16) -> String {
    sh(
        "curl",
        &["-s", "-m", "5", &format!("http://127.0.0.1:{port}/metrics")],
    )
}

/// The sample lines of `127.0.0.1:port/metrics` whose metric starts with one of
/// `prefixes`, for a failing assertion's message.
pub fn samples(port: u16, prefixes: &[&str]) -> String {
    scrape(port)
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    std::fs::create_dir_all(dir).expect("creating a directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a file");
    path.display().to_string()
}

/// The lab's Python with the test clients' packages (`scripts/bootstrap` installs
/// it into `/opt/loupe/venv`), or `$LOUPE_VENV/bin/python`.
pub fn python() -> String {
    let venv = std::env::var("LOUPE_VENV").unwrap_or_else(|_| "/opt/loupe/venv".into());
    format!("{venv}/bin/python")
}
