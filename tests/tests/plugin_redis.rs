//! The Redis plugin as its component: native vs component at every split, on a
//! crafted session and on the captures under `plugins/redis/fixtures/` (made by
//! real clients against a real server, see `capture.sh` there); and an
//! independent check of what it frames against tshark's RESP dissector on the
//! same captures.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use loupe_plugin_redis::{Redis, field};
use loupe_sdk::Direction::{self, ToClient, ToServer};
use loupe_sdk::harness::{Harness, Observed};
use loupe_tests::tshark::{attr, field_text, hex, streams, tshark};
use loupe_tests::{guest, root};

fn harness() -> Harness<Redis> {
    Harness::load(guest("loupe_plugin_redis")).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    root().join("plugins/redis/fixtures").join(name)
}

/// The port the fixtures were captured on (`capture.sh`).
const PORT: u16 = 16379;

#[test]
fn redis_component_matches_native_at_every_split() {
    let report = harness()
        .check(&[
            (ToServer, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\nSELECT 4\r\n"),
            (
                ToClient,
                b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n+OK\r\n",
            ),
            (
                ToServer,
                b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n",
            ),
            (
                ToClient,
                b"+OK\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n|1\r\n+ttl\r\n:3\r\n,1.5\r\n",
            ),
            (
                ToClient,
                b"~2\r\n+a\r\n#f\r\n!10\r\nERR broken\r\n=7\r\ntxt:abc\r\n(123\r\n_\r\n*?\r\n:1\r\n.\r\n",
            ),
            (ToServer, b"*1\r\n$4\r\nPING\r\n\x00garbage"),
        ])
        .unwrap();
    assert_eq!(report.messages, 16);
}

/// A top-level RESP item as tshark dissected it.
#[derive(Debug, Default, Clone)]
struct Dissected {
    /// `string`, `error`, `integer`, `bulk_string`, `array`, `fragment`…
    kind: String,
    /// `show` of the item (string / error / integer text).
    show: String,
    /// Array length.
    array_len: Option<i64>,
    /// Bulk string length (top-level bulk strings).
    bulk_len: Option<i64>,
    /// Values of an array's bulk strings.
    bulks: Vec<Vec<u8>>,
}

/// tshark's RESP items per (tcp stream, direction), in order, from PDML.
fn dissect(pcap: &str) -> std::collections::BTreeMap<(u32, Direction), Vec<Dissected>> {
    let pdml = tshark(&[
        "-r",
        pcap,
        "-d",
        &format!("tcp.port=={PORT},resp"),
        "-T",
        "pdml",
    ]);
    let mut out: std::collections::BTreeMap<(u32, Direction), Vec<Dissected>> = Default::default();
    let (mut stream, mut dir) = (0u32, ToServer);
    let mut current: Option<Dissected> = None;
    let mut flush = |current: &mut Option<Dissected>, stream, dir| {
        if let Some(item) = current.take() {
            out.entry((stream, dir)).or_default().push(item);
        }
    };
    for line in pdml.lines() {
        let indent = line.len() - line.trim_start().len();
        let name = attr(line, "name");
        match (indent, name.as_str()) {
            (_, "tcp.stream") => stream = attr(line, "show").parse().unwrap(),
            (_, "tcp.srcport") => {
                dir = if attr(line, "show") == PORT.to_string() {
                    ToClient
                } else {
                    ToServer
                }
            }
            (4, n) if n.starts_with("resp.") => {
                flush(&mut current, stream, dir);
                current = Some(Dissected {
                    kind: n.trim_start_matches("resp.").into(),
                    show: attr(line, "show"),
                    ..Default::default()
                });
            }
            (6, "resp.array.length") => {
                if let Some(c) = &mut current {
                    c.array_len = attr(line, "show").parse().ok();
                }
            }
            (6, "resp.bulk_string.length") => {
                if let Some(c) = &mut current {
                    c.bulk_len = attr(line, "show").parse().ok();
                }
            }
            (8, "resp.bulk_string.value") => {
                if let Some(c) = &mut current {
                    c.bulks.push(hex(&attr(line, "value")));
                }
            }
            (6, "resp.bulk_string") if !line.trim_end().ends_with('>') => {}
            (_, _) if line.trim_start().starts_with("</proto>") => flush(&mut current, stream, dir),
            _ => {}
        }
    }
    flush(&mut current, stream, dir);
    out
}

/// Compares the component's messages with tshark's items on every direction
/// tshark fully understood; returns (messages compared, directions skipped).
fn compare_with_tshark(pcap: &str) -> (usize, usize) {
    let h = harness();
    let dissected = dissect(pcap);
    let (mut compared, mut skipped) = (0, 0);
    for stream in streams(pcap) {
        let conversation = stream.conversation();
        let outcome = h.component(&conversation).unwrap();
        assert_eq!(
            outcome.error, None,
            "stream {} of {pcap} failed to parse",
            stream.index
        );
        for d in [ToServer, ToClient] {
            let bytes = stream.bytes(d);
            let ours: Vec<&Observed> = outcome
                .messages
                .iter()
                .filter(|m| m.direction == d)
                // Blank inline lines (`redis-cli --pipe` sends one) are framed as
                // empty requests; tshark shows nothing for them.
                .filter(|m| {
                    d == ToClient || m.fields.iter().any(|(f, _)| *f == field::COMMAND.id())
                })
                .collect();
            let theirs = dissected
                .get(&(stream.index, d))
                .cloned()
                .unwrap_or_default();
            // tshark 4.0 knows RESP2 arrays/strings only: inline commands and
            // RESP3 types come out as fragments or malformed.
            if theirs.iter().any(|t| {
                !["string", "error", "integer", "bulk_string", "array"].contains(&t.kind.as_str())
            }) {
                skipped += 1;
                continue;
            }
            let at = format!("{pcap} stream {} {d:?}", stream.index);
            assert_eq!(
                ours.len(),
                theirs.len(),
                "{at}: message count\n{ours:#?}\n{theirs:#?}"
            );
            for (i, (m, t)) in ours.iter().zip(&theirs).enumerate() {
                let at = format!("{at} message {i}");
                let reply_type = field_text(m, &bytes, field::REPLY_TYPE.id());
                match t.kind.as_str() {
                    "array" if d == ToServer => {
                        let command = field_text(m, &bytes, field::COMMAND.id()).unwrap();
                        assert_eq!(
                            command,
                            String::from_utf8_lossy(&t.bulks[0]).to_ascii_uppercase(),
                            "{at}"
                        );
                        let args = field_text(m, &bytes, field::ARGS.id()).unwrap();
                        assert_eq!(Some(args.parse::<i64>().unwrap() + 1), t.array_len, "{at}");
                        if let Some(key) = field_text(m, &bytes, field::KEY.id()) {
                            assert!(
                                t.bulks[1..]
                                    .iter()
                                    .any(|b| String::from_utf8_lossy(b) == key),
                                "{at}: key {key}"
                            );
                        }
                    }
                    "array" => {
                        let expect = if t.array_len == Some(-1) {
                            "null"
                        } else {
                            "array"
                        };
                        assert_eq!(reply_type.as_deref(), Some(expect), "{at}");
                    }
                    "bulk_string" => {
                        let expect = if t.bulk_len == Some(-1) {
                            "null"
                        } else {
                            "bulk-string"
                        };
                        assert_eq!(reply_type.as_deref(), Some(expect), "{at}");
                    }
                    "string" => assert_eq!(reply_type.as_deref(), Some("simple-string"), "{at}"),
                    "integer" => assert_eq!(reply_type.as_deref(), Some("integer"), "{at}"),
                    "error" => {
                        assert_eq!(reply_type.as_deref(), Some("error"), "{at}");
                        let error = field_text(m, &bytes, field::ERROR.id()).unwrap();
                        assert_eq!(error, t.show, "{at}");
                        let code = field_text(m, &bytes, field::ERROR_CODE.id()).unwrap();
                        assert!(t.show.starts_with(&code), "{at}");
                    }
                    other => panic!("{at}: {other}"),
                }
                compared += 1;
            }
        }
    }
    (compared, skipped)
}

#[test]
fn redis_resp2_capture_matches_tshark() {
    let pcap = fixture("resp2.pcap");
    let (compared, skipped) = compare_with_tshark(pcap.to_str().unwrap());
    println!(
        "resp2.pcap: {compared} messages compared with tshark ({skipped} directions tshark cannot dissect skipped)"
    );
    assert!(compared >= 150, "only {compared} messages compared");
}

#[test]
fn redis_resp3_capture_matches_tshark_on_requests() {
    let pcap = fixture("resp3.pcap");
    let (compared, skipped) = compare_with_tshark(pcap.to_str().unwrap());
    println!(
        "resp3.pcap: {compared} messages compared with tshark ({skipped} directions tshark cannot dissect skipped)"
    );
    assert!(compared >= 20, "only {compared} messages compared");
}

#[test]
fn redis_captures_frame_the_same_at_every_split() {
    let h = harness();
    let mut messages = 0;
    for name in ["resp2.pcap", "resp3.pcap"] {
        for stream in streams(fixture(name).to_str().unwrap()) {
            let conversation = stream.conversation();
            messages += h.check(&conversation).unwrap().messages;
        }
    }
    println!("{messages} messages from the captures, native = component at every split");
    assert!(messages > 200);
}
