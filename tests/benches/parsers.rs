//! Parser throughput: each shipped parser (HTTP, Redis, Kafka, memcached) on
//! generated pipelined traffic in both directions, natively (the plugin's
//! `Parser` through the SDK's `Stream`, what the component runs inside) and as
//! its component through the real host (`Worker::feed`). Results: BENCHMARKS.md.
//!
//! `cargo bench -p loupe-tests --bench parsers` (short runs: the machine is
//! shared). Each workload prints its bytes and messages per iteration; criterion
//! reports the time and MiB/s.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use loupe_runtime::plugin::{Direction as HostDirection, Limits, PluginHost, Worker};
use loupe_sdk::{Direction, Parser, Stream};

/// TCP payloads of at most one MSS, each with its direction.
type Conversation = Vec<(Direction, Vec<u8>)>;

/// Segments of ~1460 bytes: `rounds` of `depth` pipelined requests then their
/// responses, the way a pipelining client and its server fill segments.
fn conversation(pairs: &[(Vec<u8>, Vec<u8>)], depth: usize) -> Conversation {
    let mut out = Vec::new();
    for round in pairs.chunks(depth) {
        for (direction, side) in [(Direction::ToServer, 0), (Direction::ToClient, 1)] {
            let bytes: Vec<u8> = round
                .iter()
                .flat_map(|p| if side == 0 { &p.0 } else { &p.1 }.iter().copied())
                .collect();
            for segment in bytes.chunks(1460) {
                out.push((direction, segment.to_vec()));
            }
        }
    }
    out
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect()
}

/// Redis: 1 in 4 `SET key:N <100 B>` (→ `+OK`), else `GET key:N` (→ 100 B bulk).
fn redis() -> Conversation {
    let pairs: Vec<_> = (0..600)
        .map(|i| {
            let key = format!("key:{i:06}");
            if i % 4 == 0 {
                let mut req =
                    format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$100\r\n", key.len()).into_bytes();
                req.extend(value(i, 100));
                req.extend(b"\r\n");
                (req, b"+OK\r\n".to_vec())
            } else {
                let req = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes();
                let mut resp = b"$100\r\n".to_vec();
                resp.extend(value(i, 100));
                resp.extend(b"\r\n");
                (req, resp)
            }
        })
        .collect();
    conversation(&pairs, 16)
}

/// HTTP/1.1: GETs with browser-like headers, JSON responses of 1 KiB
/// (Content-Length) and, 1 in 4, 4 KiB chunked in 1 KiB chunks.
fn http() -> Conversation {
    let pairs: Vec<_> = (0..200)
        .map(|i| {
            let req = format!(
                "GET /api/v1/orders/{i}?expand=items HTTP/1.1\r\nHost: shop.demo.svc\r\n\
                 User-Agent: Mozilla/5.0 (X11; Linux x86_64) loupe-bench\r\n\
                 Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\n\
                 Cookie: session=0123456789abcdef0123456789abcdef\r\n\r\n"
            )
            .into_bytes();
            let mut resp = Vec::new();
            if i % 4 == 0 {
                resp.extend(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Transfer-Encoding: chunked\r\nServer: demo\r\n\r\n",
                );
                for c in 0..4 {
                    resp.extend(b"400\r\n");
                    resp.extend(value(i + c, 1024));
                    resp.extend(b"\r\n");
                }
                resp.extend(b"0\r\n\r\n");
            } else {
                resp.extend(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Content-Length: 1024\r\nServer: demo\r\n\
                      Date: Thu, 26 Nov 2026 15:00:00 GMT\r\n\r\n",
                );
                resp.extend(value(i, 1024));
            }
            (req, resp)
        })
        .collect();
    conversation(&pairs, 8)
}

fn uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn compact(out: &mut Vec<u8>, s: &[u8]) {
    uvarint(out, s.len() as u64 + 1);
    out.extend(s);
}

fn framed(mut body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.append(&mut body);
    out
}

/// A request header v2 (flexible) for `key`/`version`.
fn kafka_header(key: i16, version: i16, correlation: i32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(key.to_be_bytes());
    h.extend(version.to_be_bytes());
    h.extend(correlation.to_be_bytes());
    h.extend(14i16.to_be_bytes());
    h.extend(b"bench-producer");
    h.push(0); // tagged fields
    h
}

/// Kafka (flexible versions, as current clients send): Produce v9 of one
/// 1 KiB record batch (→ its response), and Fetch v12 (→ a response carrying
/// 4 KiB of records), 3 to 1.
fn kafka() -> Conversation {
    let pairs: Vec<_> = (0..240i32)
        .map(|i| {
            let mut req = kafka_header(if i % 4 == 3 { 1 } else { 0 }, 0, i);
            let mut resp = i.to_be_bytes().to_vec();
            resp.push(0); // response header tagged fields
            if i % 4 == 3 {
                req.splice(2..4, 12i16.to_be_bytes());
                req.extend((-1i32).to_be_bytes()); // replica_id
                req.extend(500i32.to_be_bytes()); // max_wait_ms
                req.extend(1i32.to_be_bytes()); // min_bytes
                req.extend((50i32 << 20).to_be_bytes()); // max_bytes
                req.push(0); // isolation_level
                req.extend(0i32.to_be_bytes()); // session_id
                req.extend((-1i32).to_be_bytes()); // session_epoch
                uvarint(&mut req, 2);
                compact(&mut req, b"orders");
                uvarint(&mut req, 2);
                req.extend(0i32.to_be_bytes()); // partition
                req.extend(0i32.to_be_bytes()); // current_leader_epoch
                req.extend(i64::from(i).to_be_bytes()); // fetch_offset
                req.extend((-1i32).to_be_bytes()); // last_fetched_epoch
                req.extend((-1i64).to_be_bytes()); // log_start_offset
                req.extend((1i32 << 20).to_be_bytes()); // partition_max_bytes
                req.extend([0, 0]); // partition, topic tags
                uvarint(&mut req, 1); // forgotten_topics_data
                compact(&mut req, b""); // rack_id
                req.push(0);
                resp.extend(0i32.to_be_bytes()); // throttle_time_ms
                resp.extend(0i16.to_be_bytes()); // error_code
                resp.extend(0i32.to_be_bytes()); // session_id
                uvarint(&mut resp, 2);
                compact(&mut resp, b"orders");
                uvarint(&mut resp, 2);
                resp.extend(0i32.to_be_bytes());
                resp.extend(0i16.to_be_bytes());
                resp.extend([0u8; 24]); // high_watermark, last_stable, log_start
                uvarint(&mut resp, 1); // aborted_transactions
                resp.extend((-1i32).to_be_bytes()); // preferred_read_replica
                compact(&mut resp, &value(i as usize, 4096)); // records
                resp.extend([0, 0, 0]); // partition, topic, response tags
            } else {
                req.splice(2..4, 9i16.to_be_bytes());
                req.push(0); // transactional_id: null
                req.extend((-1i16).to_be_bytes()); // acks
                req.extend(30_000i32.to_be_bytes()); // timeout_ms
                uvarint(&mut req, 2);
                compact(&mut req, b"orders");
                uvarint(&mut req, 2);
                req.extend(0i32.to_be_bytes()); // partition
                compact(&mut req, &value(i as usize, 1024)); // records
                req.extend([0, 0, 0]); // partition, topic, request tags
                uvarint(&mut resp, 2);
                compact(&mut resp, b"orders");
                uvarint(&mut resp, 2);
                resp.extend(0i32.to_be_bytes());
                resp.extend(0i16.to_be_bytes());
                resp.extend(i64::from(i).to_be_bytes()); // base_offset
                resp.extend((-1i64).to_be_bytes()); // log_append_time_ms
                resp.extend(0i64.to_be_bytes()); // log_start_offset
                uvarint(&mut resp, 1); // record_errors
                resp.push(0); // error_message: null
                resp.extend([0, 0]); // partition, topic tags
                resp.extend(0i32.to_be_bytes()); // throttle_time_ms
                resp.push(0);
            }
            (framed(req), framed(resp))
        })
        .collect();
    conversation(&pairs, 8)
}

/// memcached: 1 in 4 `set` of 100 B (→ `STORED`), else `get` of two keys
/// (→ one value).
fn memcached() -> Conversation {
    let pairs: Vec<_> = (0..600)
        .map(|i| {
            if i % 4 == 0 {
                let mut req = format!("set user:{i:06} 0 3600 100\r\n").into_bytes();
                req.extend(value(i, 100));
                req.extend(b"\r\n");
                (req, b"STORED\r\n".to_vec())
            } else {
                let req = format!("get user:{i:06} session:{i:06}\r\n").into_bytes();
                let mut resp = format!("VALUE user:{i:06} 0 100\r\n").into_bytes();
                resp.extend(value(i, 100));
                resp.extend(b"\r\nEND\r\n");
                (req, resp)
            }
        })
        .collect();
    conversation(&pairs, 16)
}

fn host_direction(d: Direction) -> HostDirection {
    match d {
        Direction::ToServer => HostDirection::ToServer,
        Direction::ToClient => HostDirection::ToClient,
    }
}

/// Messages framed natively over one pass (and a check that it parses cleanly).
fn native_pass<P: Parser>(conv: &Conversation) -> usize {
    let mut s = Stream::<P>::new();
    let mut n = 0;
    for (d, b) in conv {
        let out = s.feed(*d, b).unwrap();
        assert!(
            out.error.is_none(),
            "{} workload: {:?}",
            P::INFO.name,
            out.error
        );
        n += out.messages.len();
    }
    n
}

fn parser<P: Parser>(c: &mut Criterion, host: &PluginHost, guest: &str, conv: Conversation) {
    let name = P::INFO.name;
    // `LOUPE_BENCH_PARSERS=redis,http` loads only those (for `perf`: one
    // plugin's code in the process, so its perf map names stay true).
    if let Ok(only) = std::env::var("LOUPE_BENCH_PARSERS")
        && !only.split(',').any(|p| p == name)
    {
        return;
    }
    let bytes: usize = conv.iter().map(|(_, b)| b.len()).sum();
    let messages = native_pass::<P>(&conv);
    println!(
        "{name}: {bytes} bytes, {messages} messages, {} segments per iteration",
        conv.len()
    );
    // The guest as built now, and as other builds of it where given: the 0.1
    // export of the same parser, and `LOUPE_BASELINE_GUESTS` (a directory of
    // guests from an earlier build, e.g. before a contract change), so that a
    // comparison runs side by side in one process.
    let mut guests = vec![("component".to_string(), loupe_tests::guest(guest))];
    if let Some(v0_1) = contract_0_1(guest) {
        guests.push(("component (contract 0.1)".into(), v0_1));
    }
    if let Some(dir) = std::env::var_os("LOUPE_BASELINE_GUESTS") {
        let path = std::path::Path::new(&dir).join(format!("{guest}.wasm"));
        assert!(
            path.exists(),
            "LOUPE_BASELINE_GUESTS has no {}",
            path.display()
        );
        guests.push(("component (baseline)".into(), path));
    }
    let mut g = c.benchmark_group("parsers");
    g.throughput(Throughput::Bytes(bytes as u64));
    // A fresh connection per pass: pairing state stays that of one conversation.
    g.bench_function(BenchmarkId::new(name, "native"), |b| {
        b.iter(|| native_pass::<P>(&conv))
    });
    for (label, path) in guests {
        let plugin = Arc::new(host.load(&std::fs::read(&path).unwrap(), None).unwrap());
        let mut worker = Worker::new(plugin);
        g.bench_function(BenchmarkId::new(name, label), |b| {
            b.iter(|| {
                let conn = worker.open();
                let mut n = 0;
                for (d, seg) in &conv {
                    n += worker.feed(conn, host_direction(*d), seg).unwrap().len();
                }
                worker.close(conn);
                assert_eq!(n, messages);
                n
            })
        });
    }
    g.finish();
}

/// The same parser exported through contract 0.1, where the tests build one.
fn contract_0_1(guest: &str) -> Option<std::path::PathBuf> {
    (guest == "loupe_plugin_memcached").then(|| loupe_tests::guest("loupe_contract_0_1_memcached"))
}

fn parsers(c: &mut Criterion) {
    let host = PluginHost::new(Limits::default()).unwrap();
    parser::<loupe_plugin_http::Http>(c, &host, "loupe_plugin_http", http());
    parser::<loupe_plugin_redis::Redis>(c, &host, "loupe_plugin_redis", redis());
    parser::<loupe_plugin_kafka::Kafka>(c, &host, "loupe_plugin_kafka", kafka());
    parser::<loupe_plugin_memcached::Memcached>(c, &host, "loupe_plugin_memcached", memcached());
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = parsers
}
criterion_main!(benches);
