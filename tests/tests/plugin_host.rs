//! The plugin host against deliberately hostile plugins, install-time refusals,
//! and the install / activate / remove lifecycle.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_runtime::plugin::{
    ConnError, Correlation, Direction, InstallError, Limits, Plugin, PluginHost, PluginManager,
    Worker,
};
use loupe_tests::{guest, scratch_dir};

/// The deadline under test. Generous enough that a loaded (shared, 2-core) machine
/// does not stop honest calls; the loop test checks the upper bound.
const DEADLINE: Duration = Duration::from_millis(100);

fn limits() -> Limits {
    Limits {
        deadline: DEADLINE,
        memory_bytes: 8 << 20,
        instances: 16,
        max_pending_bytes: 64 << 10,
    }
}

fn load(host: &PluginHost, name: &str) -> Arc<Plugin> {
    let bytes = std::fs::read(guest(name)).unwrap();
    Arc::new(host.load(&bytes, None).unwrap())
}

/// Feeds `misdeed` on one connection while another has a half-read message, and
/// checks: the first is marked, the second keeps parsing (same offsets, same
/// order), a new connection works, the fault is counted.
fn contained(misdeed: &str, check: impl Fn(&ConnError)) -> (Arc<Plugin>, Duration) {
    let host = PluginHost::new(limits()).unwrap();
    let plugin = load(&host, "loupe_hostile_misbehave");
    let mut worker = Worker::new(plugin.clone());
    let good = worker.open();
    let bad = worker.open();
    let first = worker.feed(good, Direction::ToServer, b"one\npar").unwrap();
    assert_eq!(first.len(), 1);
    let started = Instant::now();
    let err = match worker.feed(
        bad,
        Direction::ToServer,
        format!("ok\n{misdeed}\n").as_bytes(),
    ) {
        Err(err) => err,
        // A parse error after a message: the message is delivered, the
        // connection marked.
        Ok(messages) => {
            assert_eq!(messages.len(), 1);
            worker
                .error(bad)
                .cloned()
                .expect("the connection is marked")
        }
    };
    let took = started.elapsed();
    check(&err);
    assert_eq!(worker.error(bad), Some(&err), "the connection stays marked");
    assert!(worker.feed(bad, Direction::ToServer, b"more\n").is_err());
    // The other connection resumes on a new instance exactly where it was.
    let next = worker.feed(good, Direction::ToServer, b"tial\n").unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(&next[0].bytes[..], b"partial\n");
    assert_eq!(next[0].start, 4);
    assert_eq!(next[0].correlation, Correlation::Order(1));
    let fresh = worker.open();
    let m = worker.feed(fresh, Direction::ToServer, b"hello\n").unwrap();
    assert_eq!(&m[0].bytes[..], b"hello\n");
    (plugin, took)
}

#[test]
fn hostile_loop_is_stopped_within_twice_the_deadline() {
    let (plugin, took) = contained("loop", |e| {
        assert!(
            matches!(
                e,
                ConnError::Fault {
                    kind: "hit its deadline",
                    ..
                }
            ),
            "{e}"
        )
    });
    assert!(
        took < DEADLINE * 2,
        "stopped after {took:?} (deadline {DEADLINE:?})"
    );
    let m = plugin.metrics.snapshot();
    assert_eq!((m.traps, m.deadline_kills), (1, 1));
    assert_eq!(
        m.instances_created, 3,
        "install check, first instance, re-created"
    );
}

#[test]
fn hostile_memory_hog_hits_the_cap_and_is_contained() {
    let (plugin, _) = contained("oom", |e| {
        assert!(
            matches!(
                e,
                ConnError::Fault {
                    kind: "ran out of memory",
                    ..
                }
            ),
            "{e}"
        )
    });
    let m = plugin.metrics.snapshot();
    assert_eq!((m.traps, m.memory_kills), (1, 1));
}

#[test]
fn hostile_trap_and_panic_are_contained() {
    for misdeed in ["trap", "panic"] {
        let (plugin, _) = contained(misdeed, |e| {
            assert!(
                matches!(
                    e,
                    ConnError::Fault {
                        kind: "trapped",
                        ..
                    }
                ),
                "{e}"
            )
        });
        let m = plugin.metrics.snapshot();
        assert_eq!((m.traps, m.deadline_kills, m.memory_kills), (1, 0, 0));
    }
}

#[test]
fn hostile_results_are_refused_without_losing_the_instance() {
    for misdeed in ["flood", "span", "field", "twice", "range", "text"] {
        let (plugin, _) = contained(misdeed, |e| {
            assert!(matches!(e, ConnError::Violation { .. }), "{misdeed}: {e}")
        });
        let m = plugin.metrics.snapshot();
        assert_eq!((m.violations, m.traps), (1, 0), "{misdeed}");
    }
}

#[test]
fn parse_errors_mark_only_their_connection() {
    let (plugin, _) = contained("bad", |e| {
        assert_eq!(
            e,
            &ConnError::Parse {
                offset: 3,
                reason: "asked to refuse".into()
            }
        )
    });
    assert_eq!(plugin.metrics.snapshot().parse_errors, 1);
}

#[test]
fn a_message_without_an_end_is_bounded() {
    let host = PluginHost::new(limits()).unwrap();
    let mut worker = Worker::new(load(&host, "loupe_hostile_misbehave"));
    let conn = worker.open();
    let chunk = vec![b'x'; 16 << 10];
    let mut result = Ok(Vec::new());
    for _ in 0..5 {
        result = worker.feed(conn, Direction::ToServer, &chunk);
    }
    assert_eq!(result.unwrap_err(), ConnError::TooLong { limit: 64 << 10 });
}

#[test]
fn sniff_and_deny_reply_run_under_the_same_deadline() {
    let host = PluginHost::new(limits()).unwrap();
    let mut worker = Worker::new(load(&host, "loupe_hostile_misbehave"));
    let started = Instant::now();
    assert_eq!(worker.sniff(Direction::ToServer, b"loop"), None);
    assert!(started.elapsed() < DEADLINE * 2);
    assert!(worker.sniff(Direction::ToServer, b"hi").is_some());
    assert_eq!(worker.deny_reply(b"x\n").unwrap(), b"denied\n");
}

fn refusal(bytes: &[u8]) -> String {
    let host = PluginHost::new(limits()).unwrap();
    host.load(bytes, None).unwrap_err().to_string()
}

#[test]
fn install_refuses_bad_plugins_with_clear_messages() {
    let memcached = std::fs::read(guest("loupe_plugin_memcached")).unwrap();
    // A core module: the smallest valid one.
    let e = refusal(b"\0asm\x01\0\0\0");
    assert!(e.starts_with("not a component"), "{e}");
    let e = refusal(&std::fs::read(guest("loupe_hostile_old_wit")).unwrap());
    assert!(e.contains("unsupported contract"), "{e}");
    assert!(e.contains("loupe:plugin/parser@2.0.0"), "{e}");
    assert!(e.contains("0.1"), "{e}");
    let e = refusal(&std::fs::read(guest("loupe_hostile_imports_wasi")).unwrap());
    assert!(e.starts_with("forbidden import \"wasi:"), "{e}");
    let e = refusal(&memcached[..memcached.len() / 2]);
    assert!(e.starts_with("corrupt plugin file"), "{e}");
    let e = refusal(b"#!/bin/sh\nrm -rf /\n");
    assert!(e.contains("not a WebAssembly file"), "{e}");

    let dir = scratch_dir("plugins-refuse");
    let manager = PluginManager::open(&dir, limits()).unwrap();
    for name in ["../escape", "a/b", "/etc/passwd", ".hidden", "UPPER", ""] {
        let e = manager.install(&memcached, Some(name), None).unwrap_err();
        assert!(matches!(e, InstallError::InvalidName(_)), "{name}: {e}");
        assert!(e.to_string().contains("invalid plugin name"), "{e}");
    }
    assert!(manager.list().is_empty());
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec!["cache"], "nothing written but the cache dir");
    assert!(!dir.parent().unwrap().join("escape.wasm").exists());
}

#[test]
fn install_activates_without_restart_and_old_connections_finish_on_the_old_version() {
    let dir = scratch_dir("plugins-lifecycle");
    let memcached = std::fs::read(guest("loupe_plugin_memcached")).unwrap();
    let lines = std::fs::read(guest("loupe_hostile_misbehave")).unwrap();
    let manager = PluginManager::open(&dir, limits()).unwrap();

    let v1 = manager
        .install(&memcached, None, Some(vec![11211, 21211]))
        .unwrap();
    assert_eq!(
        (v1.name.as_str(), v1.protocol.as_str()),
        ("memcached", "memcached")
    );
    assert_eq!(v1.ports, [11211, 21211]);
    let old = manager.active("memcached").unwrap();
    let mut old_worker = Worker::new(old.clone());
    let old_conn = old_worker.open();
    old_worker
        .feed(old_conn, Direction::ToServer, b"get a\r\n")
        .unwrap();

    // Replace it (same name, other component) while the connection is open.
    let v2 = manager.install(&lines, Some("memcached"), None).unwrap();
    assert_ne!(v1.sha256, v2.sha256);
    let new = manager.active("memcached").unwrap();
    assert_eq!(new.info.protocol, "lines");
    assert_eq!(manager.for_port(9999).unwrap().sha256, v2.sha256);
    // The old connection finishes on the old version…
    let m = old_worker
        .feed(old_conn, Direction::ToClient, b"END\r\n")
        .unwrap();
    assert_eq!(m[0].correlation, Correlation::Order(0));
    assert_eq!(old_worker.plugin().sha256, v1.sha256);
    // …new ones use the new one.
    let mut new_worker = Worker::new(new);
    let c = new_worker.open();
    assert_eq!(
        new_worker
            .feed(c, Direction::ToServer, b"hi\n")
            .unwrap()
            .len(),
        1
    );

    let list = manager.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].metrics.messages, 1);
    assert_eq!(list[0].state.describe(), "active");

    // Persisted: a restarted agent loads it from the directory (and the cache).
    drop(manager);
    let manager = PluginManager::open(&dir, limits()).unwrap();
    let listed = manager.get("memcached").unwrap();
    assert_eq!(listed.sha256, v2.sha256);
    assert_eq!(listed.state.describe(), "active");
    assert!(std::fs::read_dir(dir.join("cache")).unwrap().count() >= 2);

    manager.remove("memcached").unwrap();
    assert!(manager.list().is_empty());
    assert!(!dir.join("memcached.wasm").exists());
    assert!(matches!(
        manager.remove("memcached"),
        Err(InstallError::NotInstalled(_))
    ));
    // The old version keeps working for its last connection.
    old_worker
        .feed(old_conn, Direction::ToServer, b"get b\r\n")
        .unwrap();
}

#[test]
fn a_tampered_plugin_file_is_listed_as_failed_not_fatal() {
    let dir = scratch_dir("plugins-tamper");
    let memcached = std::fs::read(guest("loupe_plugin_memcached")).unwrap();
    let manager = PluginManager::open(&dir, limits()).unwrap();
    manager.install(&memcached, None, None).unwrap();
    drop(manager);
    std::fs::write(dir.join("memcached.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    let manager = PluginManager::open(&dir, limits()).unwrap();
    let s = manager.get("memcached").unwrap();
    assert!(
        s.state
            .describe()
            .starts_with("failed: corrupt plugin file"),
        "{}",
        s.state.describe()
    );
    assert!(manager.active("memcached").is_none());
}

/// A plugin built against contract 0.1 (the memcached parser with the 0.1 SDK's
/// export glue) keeps loading: the host adapts its answers, and every message —
/// bytes, kind, pairing, fields, a multi-key `get`'s list included — equals the
/// same parser's through 0.2, at every split of the stream.
#[test]
fn a_contract_0_1_plugin_loads_and_frames_as_its_0_2_build() {
    use loupe_runtime::plugin::ContractVersion;
    let host = PluginHost::new(limits()).unwrap();
    let old = load(&host, "loupe_contract_0_1_memcached");
    let new = load(&host, "loupe_plugin_memcached");
    assert_eq!(old.contract, ContractVersion::V0_1);
    assert_eq!(new.contract, ContractVersion::V0_2);
    assert_eq!(old.info.name, new.info.name);
    // 0.1 could not say which fields repeat: all may.
    assert!(old.info.fields.iter().all(|f| f.repeated));
    let key = new.info.fields.iter().find(|f| f.name == "key").unwrap();
    assert!(key.repeated, "memcached's key is a list in 0.2");
    assert!(new.info.fields.iter().any(|f| !f.repeated));
    let requests: &[u8] =
        b"get a bb ccc\r\nset k 0 0 5\r\nhello\r\ndelete k noreply\r\nincr n 1\r\ngat 10 x y\r\n";
    let responses: &[u8] = b"VALUE a 0 1\r\n1\r\nEND\r\nSTORED\r\n7\r\nVALUE x 0 1\r\n2\r\nEND\r\n";
    for split in 1..requests.len() {
        let mut frames = Vec::new();
        for plugin in [&old, &new] {
            let mut worker = Worker::new(plugin.clone());
            let conn = worker.open();
            let mut out = Vec::new();
            for part in [&requests[..split], &requests[split..]] {
                out.extend(worker.feed(conn, Direction::ToServer, part).unwrap());
            }
            out.extend(worker.feed(conn, Direction::ToClient, responses).unwrap());
            frames.push(out);
        }
        assert_eq!(frames[0], frames[1], "split at {split}");
        assert_eq!(frames[0].len(), 9, "split at {split}");
        let keys: Vec<&[u8]> = frames[1][0]
            .fields
            .iter()
            .filter(|f| f.id == 1)
            .filter_map(|f| frames[1][0].slice(f))
            .collect();
        assert_eq!(keys, [&b"a"[..], b"bb", b"ccc"]);
    }
}
