//! The Kafka plugin as its component: native vs component at every split on
//! `plugins/kafka/fixtures/kafka.pcap` (kafka-python against the tansu broker, see
//! `capture.sh` there: admin, producer, consumer with and without a group), and an
//! independent check of every message it frames against tshark's Kafka dissector
//! on the same capture; and on `group.pcap`
//! (confluent-kafka and kafka-python at the versions they negotiate: admin,
//! producer, consumer group), which tshark 4.0 cannot dissect, every message
//! framed without error and the topics of every topic API read.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use loupe_plugin_kafka::{Kafka, field};
use loupe_sdk::Direction::{self, ToClient, ToServer};
use loupe_sdk::harness::{Harness, Observed};
use loupe_tests::tshark::{Dissected, dissect_fields, field_text, streams};
use loupe_tests::{guest, root};

/// The port the fixture was captured on (`capture.sh`).
const PORT: u16 = 19092;

fn harness() -> Harness<Kafka> {
    Harness::load(guest("loupe_plugin_kafka")).unwrap()
}

fn fixture() -> String {
    root()
        .join("plugins/kafka/fixtures/kafka.pcap")
        .display()
        .to_string()
}

fn group_fixture() -> String {
    root()
        .join("plugins/kafka/fixtures/group.pcap")
        .display()
        .to_string()
}

#[test]
fn kafka_capture_frames_the_same_at_every_split() {
    let h = harness();
    let mut messages = 0;
    for stream in streams(&fixture()) {
        messages += h.check(&stream.conversation()).unwrap().messages;
    }
    println!("{messages} messages from kafka.pcap, native = component at every split");
    assert!(messages >= 30);
}

/// One Kafka message as tshark dissected it: first `show` of each field.
fn dissect(pcap: &str) -> BTreeMap<(u32, Direction), Vec<Dissected>> {
    dissect_fields(pcap, "kafka", PORT)
}

#[test]
fn kafka_capture_matches_tshark() {
    let pcap = fixture();
    let h = harness();
    let dissected = dissect(&pcap);
    let mut compared = 0;
    // APIs whose request topics were compared.
    let mut topics_compared = std::collections::BTreeSet::new();
    for stream in streams(&pcap) {
        let outcome = h.component(&stream.conversation()).unwrap();
        assert_eq!(outcome.error, None, "stream {}", stream.index);
        for d in [ToServer, ToClient] {
            let bytes = stream.bytes(d);
            let ours: Vec<&Observed> = outcome
                .messages
                .iter()
                .filter(|m| m.direction == d)
                .collect();
            let theirs = dissected
                .get(&(stream.index, d))
                .cloned()
                .unwrap_or_default();
            let at = format!("stream {} {d:?}", stream.index);
            assert_eq!(ours.len(), theirs.len(), "{at}\n{ours:#?}\n{theirs:#?}");
            for (i, (m, t)) in ours.iter().zip(&theirs).enumerate() {
                let at = format!("{at} message {i}");
                let same = |id: u16, name: &str| {
                    assert_eq!(
                        field_text(m, &bytes, id).as_deref(),
                        t.get(name).map(String::as_str),
                        "{at}: {name}\n{m:?}\n{t:?}"
                    );
                };
                same(field::CORRELATION_ID.id(), "kafka.correlation_id");
                same(field::API_KEY.id(), "kafka.api_key");
                if d == ToServer {
                    same(field::API_VERSION.id(), "kafka.api_version");
                    same(field::CLIENT_ID.id(), "kafka.client_id");
                    if field_text(m, &bytes, field::TOPIC.id()).is_some() {
                        same(field::TOPIC.id(), "kafka.topic_name");
                        topics_compared.insert(
                            field_text(m, &bytes, field::API_NAME.id()).unwrap_or_default(),
                        );
                    }
                    if field_text(m, &bytes, field::ACKS.id()).is_some() {
                        same(field::ACKS.id(), "kafka.required_acks");
                    }
                } else if field_text(m, &bytes, field::ERROR_CODE.id()).is_some() {
                    same(field::ERROR_CODE.id(), "kafka.error");
                }
                compared += 1;
            }
        }
    }
    println!("kafka.pcap: {compared} messages compared with tshark; topics of {topics_compared:?}");
    assert!(compared >= 30, "only {compared} messages compared");
    for api in [
        "Produce",
        "Fetch",
        "ListOffsets",
        "Metadata",
        "OffsetCommit",
        "OffsetFetch",
        "CreateTopics",
        "DeleteTopics",
    ] {
        assert!(topics_compared.contains(api), "no {api} topic compared");
    }
}

#[test]
fn group_capture_frames_the_same_at_every_split_and_reads_every_topic_api() {
    let h = harness();
    let mut messages = 0;
    // (API name, topic) of every request whose topic the plugin read.
    let mut topics = std::collections::BTreeSet::new();
    let mut responses_with_summary = 0;
    for stream in streams(&group_fixture()) {
        let conv = stream.conversation();
        messages += h.check(&conv).unwrap().messages;
        let outcome = h.native(&conv);
        assert_eq!(outcome.error, None, "stream {}", stream.index);
        for m in &outcome.messages {
            let bytes = stream.bytes(m.direction);
            let api = field_text(m, &bytes, field::API_NAME.id()).unwrap_or_default();
            if let Some(t) = field_text(m, &bytes, field::TOPIC.id()) {
                topics.insert((api.clone(), t));
            }
            if field_text(m, &bytes, field::PARTITION_ERRORS.id()).is_some() {
                responses_with_summary += 1;
            }
        }
    }
    println!("{messages} messages from group.pcap; topics read: {topics:?}");
    for (api, topic) in [
        ("CreateTopics", "scratch"),
        ("DeleteTopics", "scratch"),
        ("CreateTopics", "payments"),
        ("ListOffsets", "payments"),
        ("Produce", "payments"),
        ("OffsetCommit", "payments"),
        ("OffsetFetch", "payments"),
        ("Metadata", "payments"),
    ] {
        assert!(
            topics.contains(&(api.to_string(), topic.to_string())),
            "no {api} request for {topic} read: {topics:?}"
        );
    }
    assert!(responses_with_summary >= 20, "{responses_with_summary}");
    assert!(messages >= 80, "{messages}");
}
