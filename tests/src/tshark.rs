//! Captures as tshark sees them: TCP streams reassembled by
//! `tshark -z follow,tcp,raw`, and PDML attribute access, for the parser plugins'
//! independent checks.

use std::process::Command;

use loupe_sdk::Direction::{self, ToClient, ToServer};

/// One TCP stream of a capture: its chunks in capture order, per direction.
pub struct TcpStream {
    /// tshark's `tcp.stream` index.
    pub index: u32,
    /// Payload chunks in capture order, with their direction.
    pub chunks: Vec<(Direction, Vec<u8>)>,
}

impl TcpStream {
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
