#![allow(clippy::unwrap_used)]

use loupe_sdk::{Correlation, Direction::*, Message, MessageKind, Stream, Value};

use super::*;

/// A packet: first byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn connect(client: &str, user: Option<&str>) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend_from_slice(&[4, if user.is_some() { 0x82 } else { 0x02 }, 0, 60]);
    body.extend(string(client));
    if let Some(user) = user {
        body.extend(string(user));
    }
    packet(0x10, &body)
}

fn publish(qos: u8, id: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | qos << 1, &body)
}

fn subscribe(id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for (topic, qos) in filters {
        body.extend(string(topic));
        body.push(*qos);
    }
    packet(0x82, &body)
}

/// `packet-type` and the fields named, as text, for each message.
fn show(m: &Message, stream: &[u8]) -> String {
    let bytes = &stream[m.start as usize..][..m.len as usize];
    let mut out = format!("{:?}", m.kind);
    for f in &m.fields {
        let name = field::FIELDS[usize::from(f.id)].name;
        let v = match &f.value {
            Value::Slice(s) => {
                String::from_utf8_lossy(&bytes[s.offset as usize..][..s.len as usize]).into()
            }
            Value::Computed(s) => s.clone(),
            Value::Unsigned(v) => v.to_string(),
            Value::Signed(v) => v.to_string(),
            Value::Flag(v) => v.to_string(),
        };
        out.push_str(&format!(" {name}={v}"));
    }
    out
}

#[test]
fn a_subscriber_session_pairs_both_ways() {
    let mut s = Stream::<Mqtt>::new();
    let mut client = connect("sub-1", Some("alice"));
    client.extend(subscribe(1, &[("sensors/#", 1), ("alerts", 0)]));
    client.extend(packet(0x40, &[0, 7])); // PUBACK of the broker's publish 7
    client.extend(publish(0, 0, "sensors/t", b"21"));
    client.extend(packet(0xc0, &[])); // PINGREQ
    client.extend(packet(0xe0, &[])); // DISCONNECT
    let mut broker = packet(0x20, &[0, 0]);
    broker.extend(packet(0x90, &[0, 1, 1, 0]));
    broker.extend(publish(1, 7, "sensors/h", b"55%"));
    broker.extend(publish(0, 0, "alerts", b"!"));
    broker.extend(packet(0xd0, &[]));

    let up = s.feed(ToServer, &client).unwrap();
    assert_eq!(up.error, None);
    let shown: Vec<_> = up.messages.iter().map(|m| show(m, &client)).collect();
    assert_eq!(
        shown,
        [
            "Request packet-type=CONNECT client-id=sub-1 username=alice",
            "Request packet-type=SUBSCRIBE packet-id=1 topic=sensors/# qos=1 topic=alerts qos=0 topics=2",
            "Response packet-type=PUBACK packet-id=7",
            "Request packet-type=PUBLISH topic=sensors/t qos=0 retain=false dup=false payload-bytes=2",
            "Request packet-type=PINGREQ",
            "Request packet-type=DISCONNECT",
        ]
    );
    let down = s.feed(ToClient, &broker).unwrap();
    assert_eq!(down.error, None);
    let shown: Vec<_> = down.messages.iter().map(|m| show(m, &broker)).collect();
    assert_eq!(
        shown,
        [
            "Response packet-type=CONNACK return-code=0",
            "Response packet-type=SUBACK packet-id=1 return-code=1",
            "Request packet-type=PUBLISH packet-id=7 topic=sensors/h qos=1 retain=false dup=false payload-bytes=3",
            "Event packet-type=PUBLISH topic=alerts qos=0 retain=false dup=false payload-bytes=1",
            "Response packet-type=PINGRESP",
        ]
    );
    let corr = |ms: &[Message]| ms.iter().map(|m| m.correlation).collect::<Vec<_>>();
    // The client's SUBSCRIBE 1 and the broker's SUBACK 1 share a key; the
    // broker's PUBLISH 7 and the client's PUBACK 7 share another (tagged with
    // the broker's side), so the two sides' packet ids never collide.
    assert_eq!(
        corr(&up.messages),
        [
            Correlation::InOrder,
            Correlation::Id(1),
            Correlation::Id(7 | 1 << 16),
            Correlation::None,
            Correlation::InOrder,
            Correlation::None,
        ]
    );
    assert_eq!(
        corr(&down.messages),
        [
            Correlation::InOrder,
            Correlation::Id(1),
            Correlation::Id(7 | 1 << 16),
            Correlation::None,
            Correlation::InOrder,
        ]
    );
}

#[test]
fn connect_with_a_will_and_credentials() {
    let mut body = string("MQIsdp");
    // MQTT 3.1, flags: user name, password, will (QoS 1), clean session.
    body.extend_from_slice(&[3, 0xce, 0, 30]);
    for s in ["dev-7", "dev/7/status", "offline", "bob", "secret"] {
        body.extend(string(s));
    }
    let c = packet(0x10, &body);
    let out = Stream::<Mqtt>::new().feed(ToServer, &c).unwrap();
    assert_eq!(out.error, None);
    assert_eq!(
        show(&out.messages[0], &c),
        "Request packet-type=CONNECT client-id=dev-7 username=bob"
    );
}

#[test]
fn qos2_handshake_pairs_publish_with_pubrec_and_pubrel_with_pubcomp() {
    let mut s = Stream::<Mqtt>::new();
    let mut client = publish(2, 9, "t", b"x");
    client.extend(packet(0x62, &[0, 9])); // PUBREL
    let up = s.feed(ToServer, &client).unwrap();
    let down = s
        .feed(
            ToClient,
            &[packet(0x50, &[0, 9]), packet(0x70, &[0, 9])].concat(),
        )
        .unwrap();
    let kinds = |ms: &[Message]| {
        ms.iter()
            .map(|m| (m.kind, m.correlation))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&up.messages),
        [(MessageKind::Request, Correlation::Id(9)); 2]
    );
    assert_eq!(
        kinds(&down.messages),
        [(MessageKind::Response, Correlation::Id(9)); 2]
    );
}

#[test]
fn waits_for_whole_packets_and_long_lengths() {
    let big = publish(0, 0, "t", &[7; 300]); // a two-byte remaining length
    let mut s = Stream::<Mqtt>::new();
    let out = s.feed(ToServer, &big[..1]).unwrap();
    assert_eq!((out.messages.len(), out.pending), (0, 1));
    let out = s.feed(ToServer, &big[1..200]).unwrap();
    assert_eq!((out.messages.len(), out.pending), (0, 200));
    let out = s.feed(ToServer, &big[200..]).unwrap();
    assert_eq!((out.messages.len(), out.pending), (1, 0));
    assert_eq!(out.messages[0].len as usize, big.len());
}

#[test]
fn refuses_what_it_does_not_parse() {
    let refuse = |d, bytes: &[u8]| {
        let out = Stream::<Mqtt>::new().feed(d, bytes).unwrap();
        out.error.map(|e| e.reason)
    };
    // MQTT 5.
    let mut v5 = string("MQTT");
    v5.extend_from_slice(&[5, 2, 0, 60, 0, 0, 0]);
    assert_eq!(
        refuse(ToServer, &packet(0x10, &v5)).as_deref(),
        Some("only MQTT 3.1 and 3.1.1 are parsed")
    );
    // HTTP.
    assert!(refuse(ToServer, b"GET / HTTP/1.1\r\n\r\n").is_some());
    // A SUBSCRIBE without its 0010 flags (DUP aside, which 3.1 clients set on
    // retries), or without a filter.
    assert!(refuse(ToServer, &packet(0x80, &[0, 1, 0, 1, b'a', 0])).is_some());
    assert_eq!(
        refuse(ToServer, &packet(0x8a, &[0, 1, 0, 1, b'a', 0])),
        None
    );
    assert!(refuse(ToServer, &packet(0x82, &[0, 1])).is_some());
    // A topic that runs past its packet.
    assert!(refuse(ToServer, &packet(0x30, &[0, 9, b'a'])).is_some());
    // A CONNACK sent by the client.
    assert!(refuse(ToServer, &packet(0x20, &[0, 0])).is_some());
    // A remaining length in five bytes (four at most).
    assert!(refuse(ToServer, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_some());
}

#[test]
fn denied_requests_get_the_answer_a_refusing_broker_gives() {
    let deny = |bytes: &[u8]| loupe_sdk::deny_reply::<Mqtt>(bytes);
    assert_eq!(deny(&connect("c", None)), [0x20, 2, 0, 5]);
    assert_eq!(deny(&publish(1, 0x0102, "t", b"x")), [0x40, 2, 1, 2]);
    assert_eq!(deny(&publish(2, 3, "t", b"x")), [0x50, 2, 0, 3]);
    assert!(deny(&publish(0, 0, "t", b"x")).is_empty());
    assert_eq!(
        deny(&subscribe(5, &[("a", 0), ("b", 1)])),
        [0x90, 4, 0, 5, 0x80, 0x80]
    );
    let many: Vec<(String, u8)> = (0..200).map(|i| (format!("t{i}"), 0)).collect();
    let many: Vec<(&str, u8)> = many.iter().map(|(t, q)| (t.as_str(), *q)).collect();
    let reply = deny(&subscribe(6, &many));
    // The SUBACK's remaining length (202) takes two bytes; it frames as one packet.
    assert_eq!(&reply[..5], [0x90, 0xca, 0x01, 0, 6]);
    assert_eq!(reply.len(), 3 + 202);
    let out = Stream::<Mqtt>::new().feed(ToClient, &reply).unwrap();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(deny(&packet(0xc0, &[])), [0xd0, 0]);
}

#[test]
fn sniffs() {
    let c = connect("c", None);
    assert_eq!(Mqtt::sniff(ToServer, &c), Sniff::Yes);
    assert_eq!(Mqtt::sniff(ToServer, &c[..4]), Sniff::Maybe);
    assert_eq!(Mqtt::sniff(ToServer, b"GET /"), Sniff::No);
    assert_eq!(Mqtt::sniff(ToClient, &[0x20, 2, 0, 0]), Sniff::Yes);
    assert_eq!(Mqtt::sniff(ToClient, b"HTTP/1.1"), Sniff::No);
}
