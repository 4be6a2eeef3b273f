//! The MQTT plugin (the SDK guide's example of a protocol where both sides ask)
//! as its component: native vs component at every split on traffic from real
//! clients and a real broker (`plugins/mqtt/fixtures/capture.sh`: mosquitto,
//! mosquitto_pub, mosquitto_sub), and an independent check against tshark's
//! MQTT dissector on the same capture — every packet's type, direction, topic,
//! packet id, QoS, client id and return code — and of the pairing: every
//! answer pairs with the packet it answers, whichever side asked.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use loupe_plugin_mqtt::{Mqtt, PACKET_TYPES, field};
use loupe_sdk::Direction::{self, ToClient, ToServer};
use loupe_sdk::harness::{Harness, Observed};
use loupe_tests::tshark::{Dissected, dissect_fields, field_text, streams};
use loupe_tests::{guest, root};

/// The port the fixture was captured on (`capture.sh`).
const PORT: u16 = 18830;

fn harness() -> Harness<Mqtt> {
    Harness::load(guest("loupe_plugin_mqtt")).unwrap()
}

fn fixture() -> String {
    root()
        .join("plugins/mqtt/fixtures/mqtt.pcap")
        .display()
        .to_string()
}

#[test]
fn mqtt_component_matches_native_at_every_split() {
    let h = harness();
    let mut messages = 0;
    for stream in streams(&fixture()) {
        messages += h.check(&stream.conversation()).unwrap().messages;
    }
    println!("{messages} packets from mqtt.pcap, native = component at every split");
    assert!(messages >= 60, "{messages}");
}

#[test]
fn mqtt_capture_matches_tshark() {
    let pcap = fixture();
    let h = harness();
    let dissected: BTreeMap<(u32, Direction), Vec<Dissected>> = dissect_fields(&pcap, "mqtt", PORT);
    let mut compared = 0;
    let mut types = BTreeSet::new();
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
                let at = format!("{at} packet {i}");
                let theirs = |name: &str| t.get(name).cloned();
                let ty = field_text(m, &bytes, field::PACKET_TYPE.id()).unwrap();
                let number: usize = theirs("mqtt.msgtype").unwrap().parse().unwrap();
                assert_eq!(ty, PACKET_TYPES[number], "{at}");
                types.insert(ty.clone());
                let same = |id: u16, name: &str| {
                    assert_eq!(
                        field_text(m, &bytes, id),
                        theirs(name),
                        "{at}: {name}\n{m:?}\n{t:?}"
                    );
                };
                same(field::PACKET_ID.id(), "mqtt.msgid");
                same(field::CLIENT_ID.id(), "mqtt.clientid");
                same(field::USERNAME.id(), "mqtt.username");
                match ty.as_str() {
                    "PUBLISH" => {
                        same(field::TOPIC.id(), "mqtt.topic");
                        same(field::QOS.id(), "mqtt.qos");
                        let retain = field_text(m, &bytes, field::RETAIN.id()).unwrap();
                        assert_eq!(
                            Some(retain == "true"),
                            theirs("mqtt.retain").map(|r| r == "1" || r == "True"),
                            "{at}"
                        );
                    }
                    "SUBSCRIBE" => {
                        same(field::TOPIC.id(), "mqtt.topic");
                        same(field::QOS.id(), "mqtt.sub.qos");
                    }
                    "UNSUBSCRIBE" => same(field::TOPIC.id(), "mqtt.topic"),
                    "CONNACK" => same(field::RETURN_CODE.id(), "mqtt.conack.val"),
                    "SUBACK" => same(field::RETURN_CODE.id(), "mqtt.suback.qos"),
                    _ => {}
                }
                compared += 1;
            }
        }
    }
    println!("{compared} packets equal to tshark's; types {types:?}");
    // Every type but the reserved ones and AUTH (MQTT 5).
    for ty in &PACKET_TYPES[1..15] {
        assert!(types.contains(*ty), "the capture has no {ty}");
    }
    assert!(compared >= 60, "{compared}");
}

/// Every answer pairs with the packet it answers — the broker's deliveries
/// acknowledged by subscribers included — and nothing that expects an answer
/// is left without one.
#[test]
fn mqtt_capture_pairs_every_answer_with_its_question() {
    let pcap = fixture();
    let h = harness();
    let (mut paired, mut server_asked) = (0, 0);
    for stream in streams(&pcap) {
        let outcome = h.native(&stream.conversation());
        let mut waiting: BTreeMap<String, (Direction, String)> = BTreeMap::new();
        let mut in_order: BTreeMap<Direction, Vec<String>> = BTreeMap::new();
        for m in &outcome.messages {
            let bytes = stream.bytes(m.direction);
            let ty = field_text(m, &bytes, field::PACKET_TYPE.id()).unwrap();
            let at = format!("stream {} {:?} {ty}", stream.index, m.direction);
            match (m.kind, m.correlation.split_once(' ')) {
                ("request", Some(("id", _))) => {
                    if m.direction == ToClient {
                        server_asked += 1;
                    }
                    waiting.insert(m.correlation.clone(), (m.direction, ty));
                }
                ("request", Some(("order", _))) => {
                    in_order.entry(m.direction).or_default().push(ty);
                }
                ("response", Some(("id", _))) => {
                    let (asker, question) = waiting
                        .remove(&m.correlation)
                        .unwrap_or_else(|| panic!("{at}: answers nothing ({m:?})"));
                    assert_ne!(asker, m.direction, "{at}");
                    let expected: &[&str] = match question.as_str() {
                        "PUBLISH" => &["PUBACK", "PUBREC"],
                        "PUBREL" => &["PUBCOMP"],
                        "SUBSCRIBE" => &["SUBACK"],
                        "UNSUBSCRIBE" => &["UNSUBACK"],
                        other => panic!("{at}: {other} is not asked by id"),
                    };
                    assert!(expected.contains(&ty.as_str()), "{at} answers {question}");
                    paired += 1;
                }
                ("response", Some(("order", _))) => {
                    let queue = in_order.entry(m.direction.reverse()).or_default();
                    assert!(!queue.is_empty(), "{at}: answers nothing");
                    let question = queue.remove(0);
                    let expected = match question.as_str() {
                        "CONNECT" => "CONNACK",
                        "PINGREQ" => "PINGRESP",
                        q => panic!("{at}: {q} is not asked in order"),
                    };
                    assert_eq!(ty, expected, "{at}");
                    paired += 1;
                }
                _ => {}
            }
        }
        assert!(
            waiting.is_empty() && in_order.values().all(Vec::is_empty),
            "stream {}: unanswered {waiting:?} {in_order:?}",
            stream.index
        );
    }
    println!("{paired} answers paired, {server_asked} asked by the broker");
    assert!(paired >= 25 && server_asked >= 4, "{paired} {server_asked}");
}
