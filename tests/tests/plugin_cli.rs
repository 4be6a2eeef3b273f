//! `loupe plugin …` against a running `loupe agent`: install without restart,
//! list, inspect, refusals with clear messages, remove, and reload on restart.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use loupe_tests::{guest, loupe, loupe_bin, loupe_ok, scratch_dir, wait_for};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(config: &std::path::Path, socket: &str) -> Agent {
    let child = Command::new(loupe_bin())
        .args(["agent", "--config"])
        .arg(config)
        .env("LOUPE_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start loupe agent");
    let agent = Agent(child);
    assert!(
        wait_for(Duration::from_secs(20), || loupe(&[
            "--socket", socket, "plugin", "list"
        ])
        .status
        .success()),
        "the agent did not answer"
    );
    agent
}

/// `loupe status` says one plugin is installed, and its `plugins` line carries
/// no count of its own (it kept the count from start-up, 0 here, before).
fn status_counts_one_plugin(socket: &str) {
    let status = loupe_ok(&["--socket", socket, "status"]).unwrap();
    assert!(status.contains("Plugins:        1\n"), "{status}");
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("plugins "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("installed in"), "{line}");
    assert!(!line.contains("0 installed"), "a stale count: {line}");
}

#[test]
fn plugin_lifecycle_through_the_cli_and_a_running_agent() {
    let dir = scratch_dir("plugin-cli");
    let socket = dir.join("loupe.sock").display().to_string();
    let config = dir.join("loupe.yaml");
    std::fs::write(
        &config,
        format!(
            "socketPath: {socket}\nstateDir: {}\nbpf:\n  enabled: false\nendpoints:\n  lab: false\nplugins:\n  bundled: false\n  deadlineMs: 50\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let memcached = guest("loupe_plugin_memcached").display().to_string();
    let s = socket.as_str();

    let running = agent(&config, s);
    let out = loupe_ok(&[
        "--socket",
        s,
        "plugin",
        "install",
        &memcached,
        "--ports",
        "11211,11311",
    ])
    .unwrap();
    assert!(
        out.starts_with("installed memcached 0.1.0 (memcached) on ports 11211,11311 sha256:"),
        "{out}"
    );
    let list = loupe_ok(&["--socket", s, "plugin", "list"]).unwrap();
    assert!(
        list.contains("memcached") && list.contains("active"),
        "{list}"
    );
    // `status` tells one count: the one the install changed.
    status_counts_one_plugin(s);
    let json = loupe_ok(&["--socket", s, "plugin", "list", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["ports"], serde_json::json!([11211, 11311]));
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["contract"], "0.2");
    let inspect = loupe_ok(&["--socket", s, "plugin", "inspect", "memcached"]).unwrap();
    assert!(
        inspect.contains("command") && inspect.contains("text"),
        "{inspect}"
    );
    assert!(
        inspect.contains("hits") && inspect.contains("unsigned"),
        "{inspect}"
    );
    // A list field says so.
    assert!(
        inspect
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["key", "[text]"])),
        "{inspect}"
    );

    // A build of the same parser against contract 0.1 installs as an upgrade
    // and runs (through the host's adapter); then the 0.2 build goes back.
    let old = guest("loupe_contract_0_1_memcached").display().to_string();
    loupe_ok(&["--socket", s, "plugin", "install", &old]).unwrap();
    let json = loupe_ok(&["--socket", s, "plugin", "list", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (v["contract"].as_str(), v["state"].as_str()),
        (Some("0.1"), Some("active")),
        "{v}"
    );
    loupe_ok(&["--socket", s, "plugin", "install", &memcached]).unwrap();

    for (file, name, expected) in [
        (
            guest("loupe_hostile_imports_wasi"),
            None,
            "forbidden import \"wasi:",
        ),
        (guest("loupe_hostile_old_wit"), None, "unsupported contract"),
        (
            guest("loupe_plugin_memcached"),
            Some("../../etc/x"),
            "invalid plugin name",
        ),
        (config.clone(), None, "corrupt plugin file"),
    ] {
        let mut args = vec!["--socket", s, "plugin", "install"];
        let file = file.display().to_string();
        args.push(&file);
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        let out = loupe(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{expected}: {err}");
    }

    // Restart: the plugin is still there.
    drop(running);
    let _running = agent(&config, s);
    let list = loupe_ok(&["--socket", s, "plugin", "list"]).unwrap();
    assert!(
        list.contains("memcached") && list.contains("active"),
        "{list}"
    );
    status_counts_one_plugin(s);
    loupe_ok(&["--socket", s, "plugin", "remove", "memcached"]).unwrap();
    let list = loupe_ok(&["--socket", s, "plugin", "list", "--json"]).unwrap();
    assert!(list.trim().is_empty(), "{list}");
    let out = loupe(&["--socket", s, "plugin", "remove", "memcached"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin named \"memcached\""));
}

#[test]
fn plugins_policies_need_stay_and_concurrent_installs_agree() {
    let dir = scratch_dir("plugin-inuse");
    let socket = dir.join("loupe.sock").display().to_string();
    let config = dir.join("loupe.yaml");
    std::fs::write(
        &config,
        format!(
            "socketPath: {socket}\nstateDir: {}\nbpf:\n  enabled: false\nendpoints:\n  lab: false\nplugins:\n  bundled: false\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let s = socket.as_str();
    let redis = guest("loupe_plugin_redis").display().to_string();
    let memcached = guest("loupe_plugin_memcached").display().to_string();
    let policy = loupe_tests::root()
        .join("examples/policies/db-redis-l7.yaml")
        .display()
        .to_string();
    let running = agent(&config, s);
    loupe_ok(&["--socket", s, "plugin", "install", &redis]).unwrap();
    loupe_ok(&["--socket", s, "policy", "apply", "-f", &policy]).unwrap();
    let refused = |args: &[&str], expected: &str| {
        let mut argv = vec!["--socket", s, "plugin"];
        argv.extend_from_slice(args);
        let out = loupe(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was not refused");
        assert!(err.contains(expected), "{args:?}: {err}");
    };
    // The policy's parser cannot be removed or swapped for another protocol's.
    refused(
        &["remove", "redis"],
        "plugin \"redis\" parses \"redis\" for policies in force (demo-app/db-redis-l7); removing it would make their connections fail closed",
    );
    refused(
        &["install", &memcached, "--name", "redis"],
        "replacing it with a \"memcached\" parser",
    );
    // A new build of the same protocol is fine, and so is removing one of two.
    loupe_ok(&["--socket", s, "plugin", "install", &redis]).unwrap();
    loupe_ok(&[
        "--socket", s, "plugin", "install", &redis, "--name", "redis2", "--ports", "16379",
    ])
    .unwrap();
    loupe_ok(&["--socket", s, "plugin", "remove", "redis"]).unwrap();
    refused(&["remove", "redis2"], "pass --force");
    loupe_ok(&["--socket", s, "plugin", "remove", "redis2", "--force"]).unwrap();

    // Eight installs of one file at once: each succeeds, and what is stored
    // loads after a restart.
    let installs: Vec<_> = (0..8)
        .map(|_| {
            let (s, m) = (s.to_string(), memcached.clone());
            std::thread::spawn(move || loupe(&["--socket", &s, "plugin", "install", &m]))
        })
        .collect();
    for install in installs {
        let out = install.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(running);
    let _running = agent(&config, s);
    let list = loupe_ok(&["--socket", s, "plugin", "list"]).unwrap();
    assert!(
        list.lines()
            .any(|l| l.contains("memcached") && l.contains("active")),
        "{list}"
    );
}
