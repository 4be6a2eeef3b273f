//! The SDK's harness on the guide's example plugin: the memcached parser natively
//! and as its component, on the same bytes cut at every position — on a crafted
//! session and on traffic recorded from a real memcached server.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loupe_plugin_memcached::{Memcached, field};
use loupe_runtime::plugin::{self as host, Direction as HostDirection, Limits, PluginHost, Worker};
use loupe_sdk::Direction::{ToClient, ToServer};
use loupe_sdk::harness::Harness;
use loupe_tests::guest;

fn harness() -> Harness<Memcached> {
    Harness::load(guest("loupe_plugin_memcached")).unwrap()
}

#[test]
fn memcached_component_matches_native_at_every_split() {
    let report = harness()
        .check(&[
            (ToServer, b"set greeting 0 0 5\r\nhello\r\n"),
            (ToClient, b"STORED\r\n"),
            (ToServer, b"get greeting missing\r\ngets a b c\r\n"),
            (
                ToClient,
                b"VALUE greeting 0 5\r\nhello\r\nEND\r\nVALUE a 1 2 99\r\nhi\r\nEND\r\n",
            ),
            (
                ToServer,
                b"delete greeting noreply\r\nincr n 5\r\nstats\r\n",
            ),
            (
                ToClient,
                b"NOT_FOUND\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\n",
            ),
            (ToServer, b"cas k 0 0 1 7\r\nx\r\nversion\r\n"),
            (
                ToClient,
                b"EXISTS\r\nVERSION 1.6.18\r\nSERVER_ERROR out of memory\r\n",
            ),
        ])
        .unwrap();
    assert_eq!(report.messages, 16);
    assert!(report.splits > 250, "{report:?}");
}

#[test]
fn memcached_parse_errors_match_too() {
    let h = harness();
    h.check(&[(ToServer, b"get a\r\nGET / HTTP/1.1\r\n")])
        .unwrap();
    let outcome = h
        .component(&[(ToServer, b"get a\r\nGET / HTTP/1.1\r\n")])
        .unwrap();
    assert_eq!(outcome.messages.len(), 1);
    assert_eq!(outcome.error, Some((7, "unknown command".into())));
    h.check(&[(ToServer, b"set k 0 0 2\r\nabcd\r\n")]).unwrap();
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn memcached_server() -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("memcached")
        .args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-u",
            "root",
            "-m",
            "16",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("memcached (installed by scripts/bootstrap)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "memcached did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child, port)
}

/// Sends `request` and reads until the reply ends with `until`.
fn exchange(conn: &mut TcpStream, request: &[u8], until: &[u8]) -> Vec<u8> {
    conn.write_all(request).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(until) {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

#[test]
fn memcached_parses_real_traffic_from_a_real_server() {
    let server = memcached_server();
    let mut conn = TcpStream::connect(("127.0.0.1", server.1)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let value = vec![b'v'; 3000];
    let mut set = b"set big 0 0 3000\r\n".to_vec();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    let requests: Vec<(Vec<u8>, &[u8])> = vec![
        (set, b"\r\n"),
        (b"get big nothere\r\n".to_vec(), b"END\r\n"),
        (b"add big 0 0 1\r\nx\r\n".to_vec(), b"\r\n"),
        (b"incr counter 1\r\n".to_vec(), b"\r\n"),
        (
            b"set counter 0 0 1\r\n5\r\nincr counter 10\r\n".to_vec(),
            b"15\r\n",
        ),
        (b"gets counter\r\n".to_vec(), b"END\r\n"),
        (b"bogus\r\n".to_vec(), b"\r\n"),
        (b"version\r\n".to_vec(), b"\r\n"),
        (b"stats\r\n".to_vec(), b"END\r\n"),
    ];
    let mut recorded: Vec<(loupe_sdk::Direction, Vec<u8>)> = Vec::new();
    for (request, until) in &requests {
        let reply = exchange(&mut conn, request, until);
        recorded.push((ToServer, request.clone()));
        recorded.push((ToClient, reply));
    }
    let conversation: Vec<(loupe_sdk::Direction, &[u8])> =
        recorded.iter().map(|(d, b)| (*d, b.as_slice())).collect();

    // The component, as the agent runs it: every request paired with its reply.
    let host = PluginHost::new(Limits::default()).unwrap();
    let plugin = host
        .load(
            &std::fs::read(guest("loupe_plugin_memcached")).unwrap(),
            None,
        )
        .unwrap();
    let mut worker = Worker::new(std::sync::Arc::new(plugin));
    let c = worker.open();
    let mut requests_seen = Vec::new();
    let mut responses_seen = Vec::new();
    for (d, bytes) in &conversation {
        let d = match d {
            ToServer => HostDirection::ToServer,
            ToClient => HostDirection::ToClient,
        };
        for m in worker.feed(c, d, bytes).unwrap() {
            match m.kind {
                host::MessageKind::Request => requests_seen.push(m),
                _ => responses_seen.push(m),
            }
        }
    }
    assert_eq!(requests_seen.len(), 10);
    assert_eq!(responses_seen.len(), 10);
    let text = |m: &host::Message, id| {
        String::from_utf8(m.slice(m.field(id).unwrap()).unwrap().to_vec()).unwrap()
    };
    assert_eq!(text(&requests_seen[0], field::COMMAND.id()), "set");
    assert_eq!(text(&requests_seen[0], field::KEY.id()), "big");
    assert_eq!(text(&responses_seen[0], field::STATUS.id()), "STORED");
    assert_eq!(
        responses_seen[1].field(field::HITS.id()).unwrap().value,
        host::Value::Unsigned(1)
    );
    assert_eq!(
        responses_seen[1]
            .field(field::VALUE_BYTES.id())
            .unwrap()
            .value,
        host::Value::Unsigned(3000)
    );
    assert_eq!(text(&responses_seen[2], field::STATUS.id()), "NOT_STORED");
    assert_eq!(text(&responses_seen[3], field::STATUS.id()), "NOT_FOUND");
    assert_eq!(text(&responses_seen[4], field::STATUS.id()), "STORED");
    assert_eq!(text(&responses_seen[5], field::STATUS.id()), "15");
    assert_eq!(text(&requests_seen[7], field::COMMAND.id()), "bogus");
    assert_eq!(text(&responses_seen[7], field::STATUS.id()), "ERROR");
    assert_eq!(text(&responses_seen[8], field::STATUS.id()), "VERSION");
    assert_eq!(text(&responses_seen[9], field::STATUS.id()), "STAT");
    // Pairing: each response carries the order number of its request.
    for (q, r) in requests_seen.iter().zip(&responses_seen) {
        assert_eq!(q.correlation, r.correlation);
    }

    // And natively vs component at every cut of the real bytes (the big value
    // makes this ~7000 runs each way; the stats reply is left out to keep it short).
    let report = harness()
        .check(&conversation[..conversation.len() - 2])
        .unwrap();
    assert_eq!(report.messages, 18);
}
