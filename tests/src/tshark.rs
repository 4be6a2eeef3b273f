//! Captures as tshark sees them: TCP streams reassembled by
//! `tshark -z follow,tcp,raw`, and PDML attribute access, for the parser plugins'
//! independent checks.

use std::process::Command;

use loupe_sdk::Direction::{self, ToClient, ToServer};
use loupe_sdk::harness::Observed;

/// One TCP stream of a capture: its chunks in capture order, per direction.
pub struct TcpStream {
    /// tshark's `tcp.stream` index.
    pub index: u32,
    /// Payload chunks in capture order, with their direction.
    pub chunks: Vec<(Direction, Vec<u8>)>,
}

impl TcpStream {
    /// The chunks as the SDK harness takes a conversation.
    pub fn conversation(&self) -> Vec<(Direction, &[u8])> {
        self.chunks
            .iter()
            .map(|(d, b)| (*d, b.as_slice()))
            .collect()
    }

    /// Everything one direction sent.
    pub fn bytes(&self, d: Direction) -> Vec<u8> {
        self.chunks
            .iter()
            .filter(|(x, _)| *x == d)
            .flat_map(|(_, b)| b.clone())
            .collect()
    }
}

/// Runs tshark; its stdout.
pub fn tshark(args: &[&str]) -> String {
    let out = Command::new("tshark")
        .args(args)
        .output()
        .expect("tshark (installed by scripts/bootstrap)");
    assert!(out.status.success(), "tshark {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every TCP stream of `pcap`, reassembled by `tshark -z follow,tcp,raw` (node
/// 0, the client, unindented; node 1 indented with a tab).
pub fn streams(pcap: &str) -> Vec<TcpStream> {
    let count: u32 = tshark(&["-r", pcap, "-T", "fields", "-e", "tcp.stream"])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .map_or(0, |m: u32| m + 1);
    (0..count)
        .map(|index| {
            let text = tshark(&["-r", pcap, "-q", "-z", &format!("follow,tcp,raw,{index}")]);
            let mut chunks = Vec::new();
            let mut started = false;
            for line in text.lines() {
                if line.starts_with("Node 1:") {
                    started = true;
                    continue;
                }
                if !started || line.starts_with('=') || line.trim().is_empty() {
                    continue;
                }
                let d = if line.starts_with('\t') {
                    ToClient
                } else {
                    ToServer
                };
                chunks.push((d, hex(line.trim())));
            }
            TcpStream { index, chunks }
        })
        .collect()
}

/// Bytes of a hex string (other characters ignored).
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// An attribute of a PDML line (`name`, `show`, `value`), unescaped.
pub fn attr(line: &str, name: &str) -> String {
    let key = format!(" {name}=\"");
    line.split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| {
            v.replace("&quot;", "\"")
                .replace("&#x27;", "'")
                .replace("&apos;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
        .unwrap_or_default()
}

/// tshark's fields of one dissected message: field name -> `show` text.
pub type Dissected = std::collections::BTreeMap<String, String>;

/// tshark's messages of protocol `proto` (decoded on `port`) per (tcp stream,
/// direction), in order, from PDML; each message keeps its first value of every
/// `proto.*` field.
pub fn dissect_fields(
    pcap: &str,
    proto: &str,
    port: u16,
) -> std::collections::BTreeMap<(u32, Direction), Vec<Dissected>> {
    let pdml = tshark(&[
        "-r",
        pcap,
        "-d",
        &format!("tcp.port=={port},{proto}"),
        "-T",
        "pdml",
    ]);
    let (open, prefix) = (format!("<proto name=\"{proto}\""), format!("{proto}."));
    let mut out: std::collections::BTreeMap<(u32, Direction), Vec<Dissected>> = Default::default();
    let (mut stream, mut dir) = (0u32, ToServer);
    let mut current: Option<Dissected> = None;
    for line in pdml.lines() {
        if line.trim_start().starts_with(&open) {
            current = Some(Dissected::new());
            continue;
        }
        if let Some(c) = &mut current {
            if line.starts_with("  </proto>") {
                out.entry((stream, dir)).or_default().extend(current.take());
                continue;
            }
            let name = attr(line, "name");
            if name.starts_with(&prefix) {
                c.entry(name).or_insert_with(|| attr(line, "show"));
            }
            continue;
        }
        match attr(line, "name").as_str() {
            "tcp.stream" => stream = attr(line, "show").parse().unwrap_or(0),
            "tcp.srcport" => {
                dir = if attr(line, "show") == port.to_string() {
                    ToClient
                } else {
                    ToServer
                }
            }
            _ => {}
        }
    }
    out
}

/// A field of a message the SDK harness observed, as text: slices (`slice
/// OFFSET+LEN`, relative to the message's start) resolved in `bytes`, the
/// direction's stream.
pub fn field_text(m: &Observed, bytes: &[u8], id: u16) -> Option<String> {
    let (_, v) = m.fields.iter().find(|(f, _)| *f == id)?;
    if let Some(span) = v.strip_prefix("slice ") {
        let (o, l) = span.split_once('+')?;
        let from = usize::try_from(m.start).ok()? + o.parse::<usize>().ok()?;
        let to = from + l.parse::<usize>().ok()?;
        return Some(String::from_utf8_lossy(bytes.get(from..to)?).into_owned());
    }
    v.split_once(' ').map(|(_, v)| v.to_string())
}
