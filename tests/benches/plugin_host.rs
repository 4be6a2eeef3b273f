//! Plugin host costs: per-call overhead, the memcached example's parse throughput
//! as a component vs natively (64 B / 1460 B / 16 KiB feeds), instance and
//! connection set-up, and memory per idle connection. Results: BENCHMARKS.md.
//!
//! `cargo bench -p loupe-tests --bench plugin_host` (short runs: the machine is
//! shared).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use loupe_plugin_memcached::Memcached;
use loupe_runtime::plugin::{Direction, Limits, Plugin, PluginHost, Worker};
use loupe_sdk::Stream;

fn plugin(host: &PluginHost) -> Arc<Plugin> {
    let bytes = std::fs::read(loupe_tests::guest("loupe_plugin_memcached")).unwrap();
    Arc::new(host.load(&bytes, None).unwrap())
}

/// ~64 KiB of pipelined requests: mostly `get`s, some `set`s with 100-byte values.
fn workload() -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0u32;
    while out.len() < 64 << 10 {
        if i.is_multiple_of(4) {
            out.extend_from_slice(format!("set user:{i:06} 0 3600 100\r\n").as_bytes());
            out.extend_from_slice(&[b'x'; 100]);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(format!("get user:{i:06} session:{i:06}\r\n").as_bytes());
        }
        i += 1;
    }
    out
}

fn calls(c: &mut Criterion) {
    let host = PluginHost::new(Limits::default()).unwrap();
    let mut worker = Worker::new(plugin(&host));
    let conn = worker.open_eager().unwrap();
    let mut g = c.benchmark_group("call");
    g.bench_function("sniff (function, 9 B)", |b| {
        b.iter(|| worker.sniff(Direction::ToServer, b"get k\r\n..").unwrap())
    });
    g.bench_function("feed (resource method, 0 B)", |b| {
        b.iter(|| worker.feed(conn, Direction::ToServer, b"").unwrap())
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let host = PluginHost::new(Limits::default()).unwrap();
    let plugin = plugin(&host);
    let data = workload();
    let mut g = c.benchmark_group("memcached");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for feed in [64usize, 1460, 16 << 10] {
        g.bench_with_input(BenchmarkId::new("native", feed), &feed, |b, &feed| {
            let mut stream = Stream::<Memcached>::new();
            b.iter(|| {
                let mut n = 0;
                for chunk in data.chunks(feed) {
                    n += stream
                        .feed(loupe_sdk::Direction::ToServer, chunk)
                        .unwrap()
                        .messages
                        .len();
                }
                n
            })
        });
        g.bench_with_input(BenchmarkId::new("component", feed), &feed, |b, &feed| {
            let mut worker = Worker::new(plugin.clone());
            let conn = worker.open();
            b.iter(|| {
                let mut n = 0;
                for chunk in data.chunks(feed) {
                    n += worker.feed(conn, Direction::ToServer, chunk).unwrap().len();
                }
                n
            })
        });
    }
    g.finish();
}

fn setup(c: &mut Criterion) {
    let host = PluginHost::new(Limits::default()).unwrap();
    let plugin = plugin(&host);
    let mut g = c.benchmark_group("setup");
    g.bench_function("instance (pooled, from InstancePre)", |b| {
        b.iter(|| {
            let mut w = Worker::new(plugin.clone());
            w.open_eager().unwrap()
        })
    });
    let mut worker = Worker::new(plugin.clone());
    g.bench_function("connection (resource create + drop)", |b| {
        b.iter(|| {
            let c = worker.open_eager().unwrap();
            worker.close(c);
        })
    });
    g.finish();
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Not a timing: prints bytes per idle connection (guest resource + host state).
fn idle_memory(_: &mut Criterion) {
    const N: usize = 20_000;
    let host = PluginHost::new(Limits::default()).unwrap();
    let mut worker = Worker::new(plugin(&host));
    let first = worker.open_eager().unwrap();
    worker
        .feed(first, Direction::ToServer, b"get a\r\n")
        .unwrap();
    let (rss, guest) = (rss_bytes(), worker.memory_bytes());
    let conns: Vec<_> = (0..N).map(|_| worker.open_eager().unwrap()).collect();
    let rss_per = (rss_bytes().saturating_sub(rss)) / N;
    let guest_per = (worker.memory_bytes() - guest) / N;
    println!(
        "idle connection: {rss_per} B resident per connection (guest linear memory growth {guest_per} B/conn), over {N} connections with a guest resource each"
    );
    drop(conns);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = calls, throughput, setup, idle_memory
}
criterion_main!(benches);
