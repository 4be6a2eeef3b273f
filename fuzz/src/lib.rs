//! One fuzz body for every parser plugin: arbitrary bytes, cut arbitrarily and
//! interleaved in both directions, through the plugin's `Parser` and the SDK's
//! `Stream` — the same code the component runs.
//!
//! The input is a script of chunks: a control byte (bit 0: direction, bits 1–7:
//! length − 1) then that many bytes. Checked on every input:
//!
//! - nothing panics (libFuzzer reports it), nothing hangs (`-timeout`);
//! - the same bytes with consecutive same-direction chunks joined frame exactly
//!   the same messages and error (framing never depends on how bytes arrived);
//! - every message lies inside what was fed, and fields inside their message;
//! - `deny_reply` of every framed request, and `sniff` of each direction's
//!   first bytes, return (no panic).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use loupe_sdk::{Direction, Message, Parser, Stream, StreamError, Value};

/// The direction and bytes of each chunk of `data`.
pub fn chunks(data: &[u8]) -> Vec<(Direction, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let direction = if control & 1 == 0 {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        let len = (usize::from(control >> 1) + 1).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        out.push((direction, chunk));
        rest = tail;
    }
    out
}

/// What a conversation framed: messages per direction, then the first error.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Messages framed, with their direction, in framing order.
    pub messages: Vec<(Direction, Message)>,
    /// The error that stopped a direction, and that direction.
    pub error: Option<(Direction, StreamError)>,
}

/// Feeds `chunks` in order into one connection.
pub fn run<P: Parser>(chunks: &[(Direction, &[u8])]) -> Outcome {
    let mut stream = Stream::<P>::new();
    let mut fed = [0u64; 2];
    let mut messages = Vec::new();
    for &(direction, bytes) in chunks {
        let out = match stream.feed(direction, bytes) {
            Ok(out) => out,
            // Failed before: the stream stays failed.
            Err(_) => break,
        };
        fed[direction.index()] += bytes.len() as u64;
        for m in out.messages {
            assert!(m.len >= 1);
            assert!(m.start + u64::from(m.len) <= fed[direction.index()]);
            for f in &m.fields {
                if let Value::Slice(s) = f.value {
                    assert!(u64::from(s.offset) + u64::from(s.len) <= u64::from(m.len));
                }
                assert!((f.id as usize) < P::INFO.fields.len());
            }
            messages.push((direction, m));
        }
        assert!(u64::from(out.pending) <= fed[direction.index()]);
        if let Some(e) = out.error {
            return Outcome {
                messages,
                error: Some((direction, e)),
            };
        }
    }
    Outcome {
        messages,
        error: None,
    }
}

/// Joins consecutive chunks of the same direction.
pub fn joined(chunks: &[(Direction, &[u8])]) -> Vec<(Direction, Vec<u8>)> {
    let mut out: Vec<(Direction, Vec<u8>)> = Vec::new();
    for &(direction, bytes) in chunks {
        match out.last_mut() {
            Some((d, b)) if *d == direction => b.extend_from_slice(bytes),
            _ => out.push((direction, bytes.to_vec())),
        }
    }
    out
}

/// The fuzz body.
pub fn fuzz<P: Parser>(data: &[u8]) {
    let split = chunks(data);
    let outcome = run::<P>(&split);
    let whole = joined(&split);
    let whole_refs: Vec<(Direction, &[u8])> =
        whole.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    assert_eq!(
        run::<P>(&whole_refs),
        outcome,
        "cut differently, framed differently"
    );

    // Bytes of each direction, to hand requests to deny_reply.
    for direction in [Direction::ToServer, Direction::ToClient] {
        let stream: Vec<u8> = whole
            .iter()
            .filter(|(d, _)| *d == direction)
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        let _ = P::sniff(direction, &stream[..stream.len().min(64)]);
        if direction == Direction::ToServer {
            for (d, m) in &outcome.messages {
                if *d == direction {
                    let start = m.start as usize;
                    let _ = loupe_sdk::deny_reply::<P>(&stream[start..start + m.len as usize]);
                }
            }
        }
    }
}

/// The input as text: the runtime's parsers take `&str` (files are read as
/// UTF-8 first); other bytes are cut at the first invalid sequence.
fn text(data: &[u8]) -> &str {
    match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap(),
    }
}

/// A policy text through `parse_policies`. Checked: no panic or hang; an error
/// names the field (or `(file)` / `(document)`) it is about; every accepted
/// policy parses again from the document it keeps (what the agent persists and
/// serves back) into the same policy.
pub fn policy(data: &[u8]) {
    use loupe_runtime::policy::parse::parse_policies;
    match parse_policies("fuzz.yaml", text(data)) {
        Ok(policies) => {
            for policy in policies {
                let again = parse_policies("fuzz.yaml", &policy.document)
                    .unwrap_or_else(|e| panic!("a kept document does not parse again: {e}"));
                assert_eq!(again, vec![policy], "a kept document parses differently");
            }
        }
        Err(e) => assert!(!e.field.is_empty(), "an error names no field: {e}"),
    }
}

/// An agent config through `AgentConfig::parse` (parsing and validation).
/// Checked: no panic or hang.
pub fn agent_config(data: &[u8]) {
    let _ = loupe_runtime::config::AgentConfig::parse(std::path::Path::new("fuzz.yaml"), text(data));
}

/// A lab file through `LabFile::parse` and `validate` (every program exists).
/// Checked: no panic or hang; an accepted lab's topology is possible: distinct
/// pod names and addresses, each inside the lab's range and none the gateway,
/// the range's network or its broadcast address.
pub fn lab_file(data: &[u8]) {
    use loupe_runtime::lab::config::LabFile;
    let path = std::path::Path::new("fuzz.yaml");
    let Ok(file) = LabFile::parse(path, text(data)) else {
        return;
    };
    let Ok(lab) = file.validate(path, ".".into(), &|_| true) else {
        return;
    };
    let mut names = std::collections::HashSet::new();
    let mut addresses = std::collections::HashSet::new();
    for pod in &lab.pods {
        assert!(names.insert(&pod.name), "two pods named {}", pod.name);
        assert!(addresses.insert(pod.ipv4), "two pods at {}", pod.ipv4);
        assert!(lab.cidr.contains(&pod.ipv4), "{} outside {}", pod.ipv4, lab.cidr);
        assert!(
            pod.ipv4 != lab.gateway
                && pod.ipv4 != lab.cidr.network()
                && pod.ipv4 != lab.cidr.broadcast(),
            "{} is not a host address of {}",
            pod.ipv4,
            lab.cidr
        );
        if let (Some(v6), Some(cidr6)) = (pod.ipv6, lab.cidr6) {
            assert!(cidr6.contains(&v6), "{v6} outside {cidr6}");
            assert!(Some(v6) != lab.gateway6, "{v6} is the gateway");
        }
    }
}
