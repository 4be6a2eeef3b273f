//! Flow store throughput: push + per-subscriber filter + fan-out + drain, with 0,
//! 1 and 10 subscribers; and memory per stored flow (counted by a wrapping
//! allocator). `cargo bench -p loupe-runtime --bench flow_store`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{Criterion, Throughput, criterion_group};
use loupe_proto::flow::{
    Endpoint, Flow, FlowFilter, FlowType, Http, Ip, IpVersion, L7FlowType, Layer4, Layer7, Tcp,
    TcpFlags, TrafficDirection, Verdict, layer4, layer7,
};
use loupe_runtime::flow::{FlowFilterSet, FlowStore};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A typical L7 flow: two pod endpoints with labels, TCP, an HTTP record.
fn flow(n: u64) -> Flow {
    let ep = |pod: &str, app: &str| Endpoint {
        identity: 12345,
        namespace: "demo-app".into(),
        pod_name: pod.into(),
        labels: vec![
            format!("k8s:app={app}"),
            "k8s:io.kubernetes.pod.namespace=demo-app".into(),
        ],
        ..Default::default()
    };
    Flow {
        verdict: if n.is_multiple_of(10) {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        } as i32,
        r#type: FlowType::L7 as i32,
        traffic_direction: TrafficDirection::Ingress as i32,
        node_name: "bench-node".into(),
        ip: Some(Ip {
            source: "10.244.1.10".into(),
            destination: "10.244.1.20".into(),
            ip_version: IpVersion::IPv4 as i32,
            ..Default::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40000 + (n % 1000) as u32,
                destination_port: 80,
                flags: Some(TcpFlags {
                    ack: true,
                    psh: true,
                    ..Default::default()
                }),
            })),
        }),
        source: Some(ep("frontend-6d8f9", "frontend")),
        destination: Some(ep("api-service-7c4b2", "api-service")),
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 1_000_000,
            record: Some(layer7::Record::Http(Http {
                code: 200,
                method: "GET".into(),
                url: "http://api-service/get".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            })),
        }),
        ..Default::default()
    }
}

/// The filter each subscriber runs: `--namespace demo-app --protocol http --not --verdict DROPPED`.
fn filter() -> FlowFilterSet {
    let side = |src: bool| FlowFilter {
        source_pod: if src {
            vec!["demo-app/".into()]
        } else {
            vec![]
        },
        destination_pod: if src {
            vec![]
        } else {
            vec!["demo-app/".into()]
        },
        protocol: vec!["http".into()],
        ..Default::default()
    };
    FlowFilterSet::new(
        &[side(true), side(false)],
        &[FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..Default::default()
        }],
    )
    .unwrap()
}

fn throughput(c: &mut Criterion) {
    const BATCH: u64 = 1000;
    let flows: Vec<Flow> = (0..BATCH).map(flow).collect();
    let mut group = c.benchmark_group("flow_store");
    group.throughput(Throughput::Elements(BATCH));
    for subscribers in [0_usize, 1, 10] {
        let store = FlowStore::new(4095, "bench-node");
        let mut subs: Vec<_> = (0..subscribers)
            .map(|_| {
                let f = filter();
                store.subscribe(4096, Some(Box::new(move |fl: &Flow| f.matches(fl))))
            })
            .collect();
        group.bench_function(
            format!("push_filter_fanout/{subscribers}_subscribers"),
            |b| {
                b.iter(|| {
                    for f in &flows {
                        store.push(f.clone());
                    }
                    for s in &mut subs {
                        while let Some(e) = s.try_recv() {
                            black_box(e);
                        }
                    }
                });
            },
        );
        assert!(subs.iter().all(|s| s.lost() == 0));
    }
    group.finish();
}

/// Bytes the ring holds per flow once full (flow, `Arc`, ring slot).
fn memory_per_flow() -> f64 {
    const N: usize = 4095;
    let store = FlowStore::new(N, "bench-node");
    let before = ALLOCATED.load(Ordering::Relaxed);
    for n in 0..N as u64 {
        store.push(flow(n));
    }
    let after = ALLOCATED.load(Ordering::Relaxed);
    black_box(&store);
    (after - before) as f64 / N as f64
}

criterion_group!(benches, throughput);

fn main() {
    eprintln!(
        "flow_store/memory_per_stored_flow: {:.0} bytes",
        memory_per_flow()
    );
    benches();
    Criterion::default().configure_from_args().final_summary();
}
