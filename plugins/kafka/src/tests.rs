//! Table tests of the Kafka parser through the SDK's framing.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::wire::Writer;
use loupe_sdk::Stream;

/// A request: header v1 (v2 when flexible) and `body`.
fn request(key: i16, version: i16, correlation: i32, client: &[u8], body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.i32(0)
        .i16(key)
        .i16(version)
        .i32(correlation)
        .string(client, false);
    w.tags(apis::flexible(key, version));
    w.0.extend_from_slice(body);
    let size = (w.0.len() - 4) as i32;
    w.0[..4].copy_from_slice(&size.to_be_bytes());
    w.0
}

fn produce_body(version: i16, topic: &[u8]) -> Vec<u8> {
    let f = apis::flexible(0, version);
    let mut w = Writer::default();
    if version >= 3 {
        w.null_string(f);
    }
    w.i16(-1)
        .i32(30000)
        .array(1, f)
        .string(topic, f)
        .array(1, f)
        .i32(0);
    if f {
        w.uvarint(4);
    } else {
        w.i32(3);
    }
    w.0.extend_from_slice(b"abc");
    w.tags(f).tags(f).tags(f);
    w.0
}

fn fields(m: &loupe_sdk::Message, bytes: &[u8]) -> Vec<(u16, String)> {
    m.fields
        .iter()
        .map(|f| {
            let v = match &f.value {
                Value::Slice(s) => {
                    let start = m.start as usize + s.offset as usize;
                    String::from_utf8_lossy(&bytes[start..start + s.len as usize]).into_owned()
                }
                Value::Computed(s) => s.clone(),
                Value::Unsigned(v) => alloc::format!("{v}"),
                Value::Signed(v) => alloc::format!("{v}"),
                Value::Flag(v) => alloc::format!("{v}"),
            };
            (f.id, v)
        })
        .collect()
}

#[test]
fn produce_requests_classic_and_flexible_pair_by_correlation_id() {
    for version in [0, 3, 7, 9, 10] {
        let req = request(0, version, 42, b"cli", &produce_body(version, b"orders"));
        let mut s = Stream::<Kafka>::new();
        let out = s.feed(Direction::ToServer, &req).unwrap();
        assert!(out.error.is_none(), "v{version}: {:?}", out.error);
        let m = &out.messages[0];
        let f = fields(m, &req);
        assert!(f.contains(&(field::API_NAME, "Produce".into())), "{f:?}");
        assert!(f.contains(&(field::CLIENT_ID, "cli".into())), "{f:?}");
        assert!(
            f.contains(&(field::TOPIC, "orders".into())),
            "v{version} {f:?}"
        );
        assert!(f.contains(&(field::ACKS, "-1".into())), "{f:?}");
        assert_eq!(m.correlation, Correlation::Id(42));
        // The deny reply parses as this request's response.
        let reply = Kafka::deny_reply(&req);
        assert!(!reply.is_empty());
        let out = s.feed(Direction::ToClient, &reply).unwrap();
        assert!(out.error.is_none(), "v{version}: {:?}", out.error);
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.messages[0].correlation, Correlation::Id(42));
        assert_eq!(out.pending, 0);
        // Error 29 on the partition.
        assert!(reply.windows(2).any(|w| w == [0, 29]));
    }
}

#[test]
fn metadata_and_api_versions() {
    let mut w = Writer::default();
    w.array(1, false).string(b"t1", false);
    let req = request(3, 1, 7, b"c", &w.0);
    let mut w = Writer::default();
    w.array(1, true);
    w.0.extend_from_slice(&[0u8; 16]);
    w.string(b"t2", true).tags(true).uvarint(1).tags(true);
    let req12 = request(3, 12, 8, b"c", &w.0);
    let av = request(18, 3, 9, b"c", &[]);
    let mut s = Stream::<Kafka>::new();
    let mut all = req.clone();
    all.extend_from_slice(&req12);
    all.extend_from_slice(&av);
    let out = s.feed(Direction::ToServer, &all).unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.messages.len(), 3);
    assert!(fields(&out.messages[0], &all).contains(&(field::TOPIC, "t1".into())));
    assert!(fields(&out.messages[1], &all).contains(&(field::TOPIC, "t2".into())));
    // ApiVersions v3 response: header v0 (no tagged fields), then error_code 35.
    let mut w = Writer::default();
    w.i32(6).i32(9).i16(35);
    let out = s.feed(Direction::ToClient, &w.0).unwrap();
    assert!(out.error.is_none());
    let f = fields(&out.messages[0], &w.0);
    assert!(f.contains(&(field::ERROR_CODE, "35".into())), "{f:?}");
    assert!(
        f.contains(&(field::API_NAME, "ApiVersions".into())),
        "{f:?}"
    );
}

#[test]
fn hostile_input_is_an_error() {
    let cases: &[&[u8]] = &[
        &[0xff, 0xff, 0xff, 0xff],
        &[0x7f, 0, 0, 0],
        &[0, 0, 0, 8, 0x7f, 0x7f, 0, 1, 0, 0, 0, 1],
        &[0, 0, 0, 10, 0, 0, 0, 99, 0, 0, 0, 1, 0, 0],
        // Produce v0 whose topic array claims 2^31 - 1 entries.
        &[
            0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
        ],
        b"GET / HTTP/1.1\r\n\r\n",
    ];
    for bytes in cases {
        let mut s = Stream::<Kafka>::new();
        let out = s.feed(Direction::ToServer, bytes).unwrap();
        assert!(out.error.is_some(), "{bytes:?}");
    }
}

/// Deterministic property test: seeded mutations never panic and every cut
/// frames the same as the whole.
#[test]
fn property_every_cut_frames_the_same_and_nothing_panics() {
    let seed = request(0, 9, 1, b"x", &produce_body(9, b"t"));
    let mut rng: u64 = 0xdead_beef_cafe_f00d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..300 {
        let mut input = seed.clone();
        input.extend_from_slice(&seed);
        for _ in 0..(next() % 3) {
            let i = (next() as usize) % input.len();
            input[i] = next() as u8;
        }
        let whole = run(&[&input]);
        for cut in 1..input.len() {
            assert_eq!(run(&[&input[..cut], &input[cut..]]), whole);
        }
        let _ = Kafka::deny_reply(&input);
    }
}

fn run(feeds: &[&[u8]]) -> (Vec<loupe_sdk::Message>, Option<u64>) {
    let mut s = Stream::<Kafka>::new();
    let mut all = Vec::new();
    for b in feeds {
        let out = s.feed(Direction::ToServer, b).unwrap();
        all.extend(out.messages);
        if let Some(e) = out.error {
            return (all, Some(e.offset));
        }
    }
    (all, None)
}
