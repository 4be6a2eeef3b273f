//! The Kafka plugin against an independent codec: kafka-python's copy of Apache
//! Kafka's JSON message schemas (`fixtures/schemas.py`) encodes a request of
//! every version of every API the plugin reads or denies; the plugin must read
//! each (topic, topic count), answer it with a deny reply that the schemas
//! decode to exactly its bytes, carrying the right authorization code, and read
//! that reply back (error code or partition error summary); and the schemas'
//! response to each, every error code set, must read with that code.
//!
//! Needs `/opt/loupe/venv` (`scripts/bootstrap`), or `LOUPE_VENV`.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use loupe_plugin_kafka::{Kafka, field};
use loupe_sdk::{Correlation, Direction, Message, Stream, Value};

fn python() -> String {
    let venv = std::env::var("LOUPE_VENV").unwrap_or_else(|_| "/opt/loupe/venv".into());
    format!("{venv}/bin/python")
}

fn script() -> String {
    format!("{}/fixtures/schemas.py", env!("CARGO_MANIFEST_DIR"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn text(m: &Message, bytes: &[u8], id: impl Into<u16>) -> Option<String> {
    let id = id.into();
    m.fields
        .iter()
        .find(|f| f.id == id)
        .map(|f| match &f.value {
            Value::Slice(s) => {
                let start = m.start as usize + s.offset as usize;
                String::from_utf8_lossy(&bytes[start..start + s.len as usize]).into_owned()
            }
            Value::Computed(s) => s.clone(),
            Value::Unsigned(v) => v.to_string(),
            Value::Signed(v) => v.to_string(),
            Value::Flag(v) => v.to_string(),
        })
}

/// The authorization error a broker answers for a denied request.
fn expected(key: i16, version: i16, variant: &str) -> i16 {
    // Produce has a transactional_id from v3, FindCoordinator a key type from v1.
    match (key, variant) {
        (0, "transactional") if version >= 3 => 53,
        (10, "transaction") if version >= 1 => 53,
        (22, "transactional") => 53,
        (22, _) => 31,
        (0 | 1 | 2 | 3 | 19 | 20, _) => 29,
        (8 | 9 | 10 | 11 | 12 | 13 | 14 | 42 | 47, _) => 30,
        (24 | 25 | 26 | 28, _) => 53,
        _ => unreachable!("{key}"),
    }
}

/// APIs and versions that get no deny reply: AddPartitionsToTxn v4+ (broker to
/// broker), and versions newer than the plugin reads.
fn exempt(key: i16, version: i16) -> bool {
    matches!(
        (key, version),
        (24, 4..) | (0, 14..) | (1, 18..) | (8, 11..) | (9, 11..) | (28, 6..)
    )
}

/// Topic APIs whose requests name topics (not ids) in `version`.
fn names_topics(key: i16, version: i16) -> bool {
    match key {
        0 | 1 => version <= 12,
        8 | 9 => version <= 9,
        2 | 3 | 19 | 20 => true,
        _ => false,
    }
}

#[test]
fn every_version_reads_and_denies_as_the_schemas_say() {
    let out = Command::new(python())
        .arg(script())
        .arg("requests")
        .output()
        .expect("run fixtures/schemas.py (needs /opt/loupe/venv: scripts/bootstrap)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();

    let mut replies = String::new();
    let mut wanted = Vec::new();
    let mut denied = 0;
    let mut responses = 0;
    for line in listing.lines() {
        let mut parts = line.split_whitespace();
        let key: i16 = parts.next().unwrap().parse().unwrap();
        let version: i16 = parts.next().unwrap().parse().unwrap();
        let variant = parts.next().unwrap();
        let request = hex(parts.next().unwrap());
        let response = hex(parts.next().unwrap());
        let what = format!("key {key} v{version} {variant}");

        // The schemas' response, every error code 3.
        let mut s = Stream::<Kafka>::new();
        s.feed(Direction::ToServer, &request).unwrap();
        let fed = s.feed(Direction::ToClient, &response).unwrap();
        assert!(
            fed.error.is_none(),
            "{what}: reading the response: {:?}",
            fed.error
        );
        assert_eq!(fed.messages.len(), 1, "{what}");
        let r = &fed.messages[0];
        let top = text(r, &response, field::ERROR_CODE);
        let partition = text(r, &response, field::PARTITION_ERROR_CODE);
        if !exempt(key, version) {
            assert!(
                top.as_deref() == Some("3") || partition.as_deref() == Some("3"),
                "{what}: response error-code {top:?}, partition-error-code {partition:?}"
            );
        }
        if partition.is_some() {
            let n = text(r, &response, field::PARTITION_ERRORS).unwrap();
            assert!(n.parse::<u32>().unwrap() >= 1, "{what}");
        }
        responses += 1;

        let mut s = Stream::<Kafka>::new();
        let fed = s.feed(Direction::ToServer, &request).unwrap();
        assert!(fed.error.is_none(), "{what}: {:?}", fed.error);
        assert_eq!(fed.messages.len(), 1, "{what}");
        let m = &fed.messages[0];
        assert_eq!(
            text(m, &request, field::API_VERSION).as_deref(),
            Some(version.to_string().as_str()),
            "{what}"
        );
        if names_topics(key, version) {
            assert_eq!(
                text(m, &request, field::TOPIC).as_deref(),
                Some("orders"),
                "{what}"
            );
            assert_eq!(
                text(m, &request, field::TOPICS).as_deref(),
                Some("1"),
                "{what}"
            );
        }

        let reply = loupe_sdk::deny_reply::<Kafka>(&request);
        if reply.is_empty() {
            assert!(exempt(key, version), "{what}: no deny reply");
            continue;
        }
        denied += 1;
        let code = expected(key, version, variant);
        let fed = s.feed(Direction::ToClient, &reply).unwrap();
        assert!(
            fed.error.is_none(),
            "{what}: reading the reply: {:?}",
            fed.error
        );
        assert_eq!(fed.messages.len(), 1, "{what}");
        assert_eq!(fed.pending, 0, "{what}");
        let r = &fed.messages[0];
        assert_eq!(
            r.correlation,
            Correlation::Id(1000 + version as u64),
            "{what}"
        );
        let top = text(r, &reply, field::ERROR_CODE);
        let partition = text(r, &reply, field::PARTITION_ERROR_CODE);
        // Metadata v0 with the topic list empty would mean "all topics": not
        // generated here, so every reply carries the code somewhere.
        assert!(
            top.as_deref() == Some(code.to_string().as_str())
                || partition.as_deref() == Some(code.to_string().as_str()),
            "{what}: error-code {top:?}, partition-error-code {partition:?}, want {code}"
        );
        replies.push_str(&format!(
            "{key} {version} {}\n",
            reply.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        wanted.push((what, code));
    }

    let mut child = Command::new(python())
        .arg(script())
        .arg("check")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(replies.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let decoded = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "the schemas refused deny replies:\n{decoded}"
    );
    let lines: Vec<&str> = decoded.lines().collect();
    assert_eq!(lines.len(), wanted.len());
    for (line, (what, code)) in lines.iter().zip(&wanted) {
        let codes: Vec<i16> = line
            .split_whitespace()
            .skip(2)
            .map(|c| c.parse().unwrap())
            .collect();
        assert!(codes.contains(code), "{what}: schema decode gave {line}");
        assert!(
            codes.iter().all(|c| *c == 0 || c == code),
            "{what}: schema decode gave {line}"
        );
    }
    println!("{responses} responses read, {denied} deny replies decoded by the schemas");
    assert!(denied >= 150);
}
