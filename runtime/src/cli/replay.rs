//! `loupe replay <capture>`: runs a pcap / pcapng capture through the agent's own
//! TCP reassembly and L7 engine with real plugins, and prints the L7 flows in any
//! `observe` output format. How plugin authors test against real traffic.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::print::{Output, PrintOptions, Printer};
use crate::capture::{CaptureReader, Decoded, decode};
use crate::l7::{ConnContext, Engine, EngineLimits};
use crate::plugin::{Limits, PluginManager};
use crate::reassembly::{Event, Reassembler, Segment};
use loupe_proto::flow::TrafficDirection;
use loupe_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

/// `loupe replay` arguments.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture (pcap or pcapng; Ethernet, Linux cooked, raw IP or loopback).
    pub file: PathBuf,
    /// A plugin component to use (repeatable); the shipped plugins are used too
    /// unless `--no-bundled`.
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// Use the plugins installed in this directory (an agent's `plugins.dir`).
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
    /// Do not load the shipped plugins.
    #[arg(long)]
    pub no_bundled: bool,
    /// Parse every connection with this protocol's plugin (as a policy's
    /// `l7proto` would), instead of port and sniffing.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    pub output: Output,
    /// Print counts (packets, connections, flows, errors) on stderr at the end.
    #[arg(long)]
    pub stats: bool,
}

/// Runs the replay; the exit code.
pub fn run(args: ReplayArgs) -> anyhow::Result<i32> {
    let data = std::fs::read(&args.file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.file.display()))?;
    let mut reader =
        CaptureReader::new(&data).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let scratch;
    let manager = match &args.plugins_dir {
        Some(dir) => PluginManager::open(dir, Limits::default())?,
        None => {
            scratch = tempfile::tempdir()?;
            PluginManager::open(scratch.path(), Limits::default())?
        }
    };
    if !args.no_bundled && args.plugins_dir.is_none() {
        crate::plugin::bundled::install_missing(&manager);
    }
    for path in &args.plugins {
        let wasm =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        manager
            .install(&wasm, None, None)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(p) = &args.protocol
        && manager.for_protocol(p).is_none()
    {
        anyhow::bail!(
            "no plugin for protocol {p:?} (loaded: {:?})",
            names(&manager)
        );
    }
    let mut engine = Engine::new(Arc::new(manager), EngineLimits::default());
    let mut reassembler = Reassembler::new(crate::reassembly::Limits::default());
    let mut printer = Printer::new(PrintOptions {
        output: args.output,
        node_name: false,
        policy_names: false,
    });
    let context = |_: &crate::reassembly::ConnKey| ConnContext {
        protocol: args.protocol.clone(),
        traffic_direction: TrafficDirection::Unknown,
        ..ConnContext::default()
    };
    let mut stdout = std::io::stdout().lock();
    let mut events: Vec<Event> = Vec::new();
    let mut flows = Vec::new();
    let (mut packets, mut skipped, mut malformed, mut printed) = (0u64, 0u64, 0u64, 0u64);
    let mut emit =
        |flows: &mut Vec<loupe_proto::flow::Flow>, printer: &mut Printer| -> anyhow::Result<()> {
            for flow in flows.drain(..) {
                printed += 1;
                let resp = GetFlowsResponse {
                    node_name: String::new(),
                    time: flow.time,
                    response_types: Some(ResponseTypes::Flow(flow)),
                };
                let text = printer.format(&resp).map_err(anyhow::Error::msg)?;
                std::io::Write::write_all(&mut stdout, text.as_bytes())?;
            }
            Ok(())
        };
    while let Some(packet) = reader
        .next_packet()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?
    {
        packets += 1;
        match decode(packet.link, &packet.data) {
            Decoded::Tcp {
                src,
                dst,
                seq,
                flags,
                payload,
            } => {
                let seg = Segment {
                    time: packet.time,
                    src,
                    dst,
                    seq,
                    flags,
                    payload,
                };
                reassembler.push(&seg, &mut events);
            }
            Decoded::Other => skipped += 1,
            Decoded::Malformed(_) => malformed += 1,
        }
        for event in events.drain(..) {
            engine.handle(event, &context, &mut flows);
        }
        emit(&mut flows, &mut printer)?;
    }
    reassembler.finish(&mut events);
    for event in events.drain(..) {
        engine.handle(event, &context, &mut flows);
    }
    emit(&mut flows, &mut printer)?;
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(&mut stdout, printer.finish().as_bytes())?;
    if args.stats {
        let s = engine.stats();
        let r = reassembler.stats();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "{packets} packets ({skipped} not TCP, {malformed} malformed), {} connections ({} parsed, {} unidentified), {} requests, {} responses, {} events, {printed} flows, {} errors, {} gaps ({} bytes skipped)",
            r.opened,
            get(&s.connections),
            get(&s.unidentified),
            get(&s.requests),
            get(&s.responses),
            get(&s.events),
            get(&s.errors),
            r.gaps,
            r.skipped_bytes,
        );
    }
    Ok(0)
}

fn names(manager: &PluginManager) -> Vec<String> {
    manager.list().into_iter().map(|p| p.name).collect()
}
