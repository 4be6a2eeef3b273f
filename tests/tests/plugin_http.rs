//! The HTTP plugin as its component: native vs component at every split, on a
//! crafted session and on `plugins/http/fixtures/http.pcap` (curl against httpbin,
//! see `capture.sh` there); and an independent check of every head it frames
//! against tshark's HTTP dissector on the same capture.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use loupe_plugin_http::{Http, field};
use loupe_sdk::Direction::{self, ToClient, ToServer};
use loupe_sdk::harness::{Harness, Observed};
use loupe_tests::tshark::{Dissected, dissect_fields, field_text, streams};
use loupe_tests::{guest, root};

/// The port the fixture was captured on (`capture.sh`).
const PORT: u16 = 18080;

fn harness() -> Harness<Http> {
    Harness::load(guest("loupe_plugin_http")).unwrap()
}

fn fixture() -> String {
    root()
        .join("plugins/http/fixtures/http.pcap")
        .display()
        .to_string()
}

#[test]
fn http_component_matches_native_at_every_split() {
    let report = harness()
        .check(&[
            (
                ToServer,
                b"POST /post?x=1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            ),
            (ToClient, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (ToServer, b"abcdHEAD / HTTP/1.1\r\nHost: h\r\n\r\n"),
            (
                ToClient,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            ),
            (ToServer, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            (ToClient, b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x00"),
        ])
        .unwrap();
    assert_eq!(report.messages, 10);
}

#[test]
fn http_capture_frames_the_same_at_every_split() {
    let h = harness();
    let mut messages = 0;
    for stream in streams(&fixture()) {
        let conversation = stream.conversation();
        messages += h.check(&conversation).unwrap().messages;
    }
    println!("{messages} messages from http.pcap, native = component at every split");
    assert!(messages > 30);
}

/// One HTTP message as tshark dissected it: field name → `show` values.
fn dissect(pcap: &str) -> BTreeMap<(u32, Direction), Vec<Dissected>> {
    dissect_fields(pcap, "http", PORT)
}

#[test]
fn http_capture_matches_tshark() {
    let pcap = fixture();
    let h = harness();
    let dissected = dissect(&pcap);
    let (mut compared, mut skipped) = (0, 0);
    for stream in streams(&pcap) {
        let conversation = stream.conversation();
        let outcome = h.component(&conversation).unwrap();
        assert_eq!(outcome.error, None, "stream {}", stream.index);
        for d in [ToServer, ToClient] {
            let bytes = stream.bytes(d);
            // Heads only: body pieces are ours, tshark folds bodies into messages.
            let ours: Vec<&Observed> = outcome
                .messages
                .iter()
                .filter(|m| m.direction == d)
                .filter(|m| m.fields.iter().all(|(f, _)| *f != field::BODY_BYTES.id()))
                .collect();
            let theirs = dissected
                .get(&(stream.index, d))
                .cloned()
                .unwrap_or_default();
            // tshark does not pair pipelined responses with HEAD requests: it reads
            // the body a HEAD response announces into the next response and shows
            // the rest as "Continuation" (no start line). Where it lost the framing
            // like this, compare nothing.
            if theirs.iter().any(|t| {
                !t.contains_key("http.request.method") && !t.contains_key("http.response.code")
            }) {
                skipped += 1;
                continue;
            }
            let at = format!("stream {} {d:?}", stream.index);
            assert_eq!(ours.len(), theirs.len(), "{at}\n{ours:#?}\n{theirs:#?}");
            for (i, (m, t)) in ours.iter().zip(&theirs).enumerate() {
                let at = format!("{at} message {i}");
                let pairs: &[(u16, &str)] = &[
                    (field::METHOD.id(), "http.request.method"),
                    (field::URL.id(), "http.request.uri"),
                    (field::PATH.id(), "http.request.uri.path"),
                    (field::HOST.id(), "http.host"),
                    (field::USER_AGENT.id(), "http.user_agent"),
                    (field::CONTENT_TYPE.id(), "http.content_type"),
                    (field::CONTENT_LENGTH.id(), "http.content_length_header"),
                    (field::STATUS.id(), "http.response.code"),
                ];
                for &(id, name) in pairs {
                    let ours = field_text(m, &bytes, id);
                    let mut theirs = t.get(name).cloned();
                    if name == "http.request.uri.path" && theirs.is_none() {
                        // tshark names the path only when there is a query.
                        theirs = t.get("http.request.uri").cloned();
                    }
                    assert_eq!(ours, theirs, "{at}: {name}");
                }
                let version = field_text(m, &bytes, field::VERSION.id());
                let theirs = t
                    .get("http.request.version")
                    .or(t.get("http.response.version"))
                    .cloned();
                assert_eq!(version, theirs, "{at}: version");
                compared += 1;
            }
        }
    }
    println!(
        "http.pcap: {compared} messages compared with tshark ({skipped} directions where tshark lost the framing skipped)"
    );
    assert!(compared >= 25, "only {compared} messages compared");
}
