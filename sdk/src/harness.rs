//! Runs a parser natively *and* as its compiled component through the agent's real
//! plugin host, on the same bytes cut at every position, and checks that both
//! frame exactly the same messages (feature `harness`, for tests).
//!
//! ```no_run
//! # #[derive(Default)] struct MyParser;
//! # impl loupe_sdk::Parser for MyParser {
//! #   const INFO: loupe_sdk::Info = loupe_sdk::Info { name: "x", version: "0", protocol: "x", default_ports: &[], fields: &[] };
//! #   fn sniff(_: loupe_sdk::Direction, _: &[u8]) -> loupe_sdk::Sniff { loupe_sdk::Sniff::No }
//! #   fn parse(&mut self, _: loupe_sdk::Direction, _: &[u8]) -> Result<Option<loupe_sdk::Frame>, loupe_sdk::ParseError> { Ok(None) }
//! #   fn deny_reply(_: &loupe_sdk::Request<'_>) -> Vec<u8> { Vec::new() }
//! # }
//! use loupe_sdk::{Direction::*, harness::Harness};
//!
//! let harness = Harness::<MyParser>::load("target/wasm32-wasip2/release/my_parser.wasm").unwrap();
//! let report = harness
//!     .check(&[(ToServer, b"get k\r\n"), (ToClient, b"END\r\n")])
//!     .unwrap();
//! assert_eq!(report.messages, 2);
//! ```

extern crate std;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::marker::PhantomData;
use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use loupe_runtime::plugin as host;

use crate::{Correlation, Direction, Parser, Stream, Value};

/// One observed message, in a form both sides produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Direction.
    pub direction: Direction,
    /// `request`, `response`, `event`.
    pub kind: &'static str,
    /// Stream offset.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// `order n`, `id n` or `none` (in-order messages numbered per direction).
    pub correlation: String,
    /// Fields as (id, rendered value).
    pub fields: Vec<(u16, String)>,
}

/// Everything a conversation produced: messages, then the error that stopped it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Messages in the order they were framed.
    pub messages: Vec<Observed>,
    /// `(stream offset, reason)` of a parse error.
    pub error: Option<(u64, String)>,
}

/// What [`Harness::check`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Messages in the conversation.
    pub messages: usize,
    /// Ways of cutting the conversation that were run (each natively and as a
    /// component).
    pub splits: usize,
}

/// A parser type and its compiled component, loaded into a real plugin host.
pub struct Harness<P> {
    plugin: Arc<host::Plugin>,
    _parser: PhantomData<P>,
}

impl<P: Parser> Harness<P> {
    /// Loads the component at `wasm` with the agent's checks (no imports, a
    /// supported contract, a sane `describe()`) and compares its `describe()`
    /// with `P::INFO`.
    pub fn load(wasm: impl AsRef<Path>) -> anyhow::Result<Self> {
        let wasm = wasm.as_ref();
        let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let plugin_host = host::PluginHost::new(host::Limits::default())?;
        let plugin = plugin_host
            .load(&bytes, None)
            .with_context(|| format!("loading {}", wasm.display()))?;
        let info = &plugin.info;
        ensure!(
            info.name == P::INFO.name,
            "component describes itself as {:?}, the parser as {:?}",
            info.name,
            P::INFO.name
        );
        ensure!(
            info.version == P::INFO.version,
            "version {} vs {}",
            info.version,
            P::INFO.version
        );
        ensure!(
            info.protocol == P::INFO.protocol,
            "protocol {} vs {}",
            info.protocol,
            P::INFO.protocol
        );
        ensure!(
            info.default_ports == P::INFO.default_ports,
            "default ports differ"
        );
        let names: Vec<&str> = info.fields.iter().map(|f| f.name.as_str()).collect();
        let native: Vec<&str> = P::INFO.fields.iter().map(|f| f.name).collect();
        ensure!(names == native, "field schema {names:?} vs {native:?}");
        let lists = |repeated: Vec<bool>| -> Vec<&str> {
            names
                .iter()
                .zip(repeated)
                .filter_map(|(n, r)| r.then_some(*n))
                .collect()
        };
        let (theirs, ours) = (
            lists(info.fields.iter().map(|f| f.repeated).collect()),
            lists(P::INFO.fields.iter().map(|f| f.repeated).collect()),
        );
        ensure!(theirs == ours, "list fields {theirs:?} vs {ours:?}");
        Ok(Self {
            plugin: Arc::new(plugin),
            _parser: PhantomData,
        })
    }

    /// Feeds `conversation` natively and through the component, whole and then
    /// with each segment cut in two at every byte position, and fails at the first
    /// difference (or if any cut frames differently from the whole).
    pub fn check(&self, conversation: &[(Direction, &[u8])]) -> anyhow::Result<Report> {
        let whole: Vec<Vec<(Direction, &[u8])>> = Vec::from([conversation.to_vec()]);
        let reference = native::<P>(conversation);
        let mut worker = host::Worker::new(self.plugin.clone());
        let mut splits = 0;
        let cuts = conversation
            .iter()
            .enumerate()
            .flat_map(|(i, (_, bytes))| (1..bytes.len()).map(move |at| (i, at)));
        for feeds in whole
            .into_iter()
            .chain(cuts.map(|(i, at)| cut(conversation, i, at)))
        {
            let native = native::<P>(&feeds);
            let component = component(&mut worker, &feeds)?;
            if native != reference {
                bail!(
                    "native parsing depends on how the bytes are cut: {feeds:?}\n{native:#?}\nvs whole\n{reference:#?}"
                );
            }
            if component != native {
                bail!(
                    "component and native differ for {feeds:?}\ncomponent: {component:#?}\nnative: {native:#?}"
                );
            }
            splits += 1;
        }
        Ok(Report {
            messages: reference.messages.len(),
            splits,
        })
    }

    /// Runs a conversation through the component only.
    pub fn component(&self, conversation: &[(Direction, &[u8])]) -> anyhow::Result<Outcome> {
        component(&mut host::Worker::new(self.plugin.clone()), conversation)
    }

    /// Runs a conversation natively only.
    pub fn native(&self, conversation: &[(Direction, &[u8])]) -> Outcome {
        native::<P>(conversation)
    }
}

fn cut<'a>(c: &[(Direction, &'a [u8])], i: usize, at: usize) -> Vec<(Direction, &'a [u8])> {
    let mut out = Vec::with_capacity(c.len() + 1);
    for (j, &(d, bytes)) in c.iter().enumerate() {
        if j == i {
            out.push((d, &bytes[..at]));
            out.push((d, &bytes[at..]));
        } else {
            out.push((d, bytes));
        }
    }
    out
}

fn native<P: Parser>(feeds: &[(Direction, &[u8])]) -> Outcome {
    let mut stream = Stream::<P>::new();
    let mut order = [0u64; 2];
    let mut out = Outcome::default();
    for &(d, bytes) in feeds {
        match stream.feed(d, bytes) {
            Ok(feed) => {
                for m in feed.messages {
                    let correlation = match m.correlation {
                        Correlation::InOrder => {
                            order[d.index()] += 1;
                            format!("order {}", order[d.index()] - 1)
                        }
                        Correlation::Id(id) => format!("id {id}"),
                        Correlation::None => "none".into(),
                    };
                    out.messages.push(Observed {
                        direction: d,
                        kind: match m.kind {
                            crate::MessageKind::Request => "request",
                            crate::MessageKind::Response => "response",
                            crate::MessageKind::Event => "event",
                        },
                        start: m.start,
                        len: u64::from(m.len),
                        correlation,
                        fields: m
                            .fields
                            .into_iter()
                            .map(|f| {
                                let v = match f.value {
                                    Value::Slice(s) => format!("slice {}+{}", s.offset, s.len),
                                    Value::Computed(s) => format!("text {s}"),
                                    Value::Unsigned(v) => format!("unsigned {v}"),
                                    Value::Signed(v) => format!("signed {v}"),
                                    Value::Flag(v) => format!("flag {v}"),
                                };
                                (f.id, v)
                            })
                            .collect(),
                    });
                }
                if let Some(e) = feed.error {
                    out.error = Some((e.offset, e.reason));
                    break;
                }
            }
            Err(e) => {
                out.error = Some((e.offset, e.reason));
                break;
            }
        }
    }
    out
}

fn component(worker: &mut host::Worker, feeds: &[(Direction, &[u8])]) -> anyhow::Result<Outcome> {
    let conn = worker.open();
    let mut out = Outcome::default();
    for &(d, bytes) in feeds {
        let hd = match d {
            Direction::ToServer => host::Direction::ToServer,
            Direction::ToClient => host::Direction::ToClient,
        };
        match worker.feed(conn, hd, bytes) {
            Ok(messages) => {
                for m in messages {
                    out.messages.push(Observed {
                        direction: d,
                        kind: match m.kind {
                            host::MessageKind::Request => "request",
                            host::MessageKind::Response => "response",
                            host::MessageKind::Event => "event",
                        },
                        start: m.start,
                        len: m.bytes.len() as u64,
                        correlation: match m.correlation {
                            host::Correlation::Order(n) => format!("order {n}"),
                            host::Correlation::Id(id) => format!("id {id}"),
                            host::Correlation::None => "none".into(),
                        },
                        fields: m
                            .fields
                            .iter()
                            .map(|f| {
                                let v = match &f.value {
                                    host::Value::Slice { offset, len } => {
                                        format!("slice {offset}+{len}")
                                    }
                                    host::Value::Text(s) => format!("text {s}"),
                                    host::Value::Unsigned(v) => format!("unsigned {v}"),
                                    host::Value::Signed(v) => format!("signed {v}"),
                                    host::Value::Flag(v) => format!("flag {v}"),
                                };
                                (f.id, v)
                            })
                            .collect(),
                    });
                }
                if let Some(host::ConnError::Parse { offset, reason }) = worker.error(conn) {
                    out.error = Some((*offset, reason.clone()));
                    break;
                }
            }
            Err(host::ConnError::Parse { offset, reason }) => {
                out.error = Some((offset, reason));
                break;
            }
            Err(other) => {
                worker.close(conn);
                bail!("the component failed: {other}");
            }
        }
    }
    worker.close(conn);
    Ok(out)
}
