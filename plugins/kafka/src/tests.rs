//! Table tests of the Kafka parser through the SDK's framing.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::wire::Writer;
use loupe_sdk::{Stream, Value};

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
        assert!(
            f.contains(&(field::API_NAME.id(), "Produce".into())),
            "{f:?}"
        );
        assert!(f.contains(&(field::CLIENT_ID.id(), "cli".into())), "{f:?}");
        assert!(
            f.contains(&(field::TOPIC.id(), "orders".into())),
            "v{version} {f:?}"
        );
        assert!(f.contains(&(field::ACKS.id(), "-1".into())), "{f:?}");
        assert_eq!(m.correlation, Correlation::Id(42));
        // The deny reply parses as this request's response.
        let reply = loupe_sdk::deny_reply::<Kafka>(&req);
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
    assert!(fields(&out.messages[0], &all).contains(&(field::TOPIC.id(), "t1".into())));
    assert!(fields(&out.messages[1], &all).contains(&(field::TOPIC.id(), "t2".into())));
    // ApiVersions v3 response: header v0 (no tagged fields), then error_code 35.
    let mut w = Writer::default();
    w.i32(6).i32(9).i16(35);
    let out = s.feed(Direction::ToClient, &w.0).unwrap();
    assert!(out.error.is_none());
    let f = fields(&out.messages[0], &w.0);
    assert!(f.contains(&(field::ERROR_CODE.id(), "35".into())), "{f:?}");
    assert!(
        f.contains(&(field::API_NAME.id(), "ApiVersions".into())),
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
        let _ = loupe_sdk::deny_reply::<Kafka>(&input);
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

/// The first topic and the topic count of the topic APIs, classic and
/// flexible, from bodies built per version.
#[test]
fn topics_of_list_offsets_offset_commit_offset_fetch_create_and_delete_topics() {
    // (api key, version, body)
    let mut cases: Vec<(i16, i16, Vec<u8>)> = Vec::new();
    for v in [0i16, 1, 2, 4, 6, 9] {
        let f = apis::flexible(2, v);
        let mut w = Writer::default();
        w.i32(-1);
        if v >= 2 {
            w.0.push(0);
        }
        w.array(2, f).string(b"orders", f).array(0, f).tags(f);
        w.string(b"other", f).array(0, f).tags(f).tags(f);
        cases.push((apis::LIST_OFFSETS, v, w.0));
    }
    for v in [0i16, 1, 2, 5, 7, 8, 9] {
        let f = apis::flexible(8, v);
        let mut w = Writer::default();
        w.string(b"grp", f);
        if v >= 1 {
            w.i32(3).string(b"member", f);
        }
        if v >= 7 {
            w.null_string(f);
        }
        if (2..=4).contains(&v) {
            w.i64(-1);
        }
        w.array(2, f).string(b"orders", f).array(0, f).tags(f);
        w.string(b"other", f).array(0, f).tags(f).tags(f);
        cases.push((apis::OFFSET_COMMIT, v, w.0));
    }
    for v in [0i16, 1, 5, 6, 7] {
        let f = apis::flexible(9, v);
        let mut w = Writer::default();
        w.string(b"grp", f).array(2, f);
        w.string(b"orders", f).array(1, f).i32(0).tags(f);
        w.string(b"other", f).array(1, f).i32(0).tags(f);
        if v >= 7 {
            w.0.push(0);
        }
        w.tags(f);
        cases.push((apis::OFFSET_FETCH, v, w.0));
    }
    for v in [8i16, 9] {
        let mut w = Writer::default();
        w.array(1, true).string(b"grp", true);
        if v >= 9 {
            w.null_string(true).i32(-1);
        }
        w.array(2, true);
        w.string(b"orders", true).array(1, true).i32(0).tags(true);
        w.string(b"other", true).array(1, true).i32(0).tags(true);
        w.tags(true).uvarint(0).tags(true);
        cases.push((apis::OFFSET_FETCH, v, w.0));
    }
    for v in [0i16, 1, 4, 5, 7] {
        let f = apis::flexible(19, v);
        let mut w = Writer::default();
        w.array(2, f);
        for name in [&b"orders"[..], b"other"] {
            w.string(name, f).i32(3).i16(1).array(0, f).array(1, f);
            w.string(b"retention.ms", f)
                .string(b"1000", f)
                .tags(f)
                .tags(f);
        }
        w.i32(1000);
        if v >= 1 {
            w.0.push(0);
        }
        w.tags(f);
        cases.push((apis::CREATE_TOPICS, v, w.0));
    }
    for v in [0i16, 1, 4, 5, 6] {
        let f = apis::flexible(20, v);
        let mut w = Writer::default();
        w.array(2, f);
        for name in [&b"orders"[..], b"other"] {
            w.string(name, f);
            if v >= 6 {
                w.raw(&[0; 16]).tags(f);
            }
        }
        w.i32(1000).tags(f);
        cases.push((apis::DELETE_TOPICS, v, w.0));
    }
    for (key, v, body) in cases {
        let req = request(key, v, 5, b"c", &body);
        let mut s = Stream::<Kafka>::new();
        let out = s.feed(Direction::ToServer, &req).unwrap();
        assert!(out.error.is_none(), "key {key} v{v}: {:?}", out.error);
        let f = fields(&out.messages[0], &req);
        assert!(
            f.contains(&(field::TOPIC.id(), "orders".into())),
            "key {key} v{v}: {f:?}"
        );
        assert!(
            f.contains(&(field::TOPICS.id(), "2".into())),
            "key {key} v{v}: {f:?}"
        );
        // And its deny reply reads back as its response.
        let reply = loupe_sdk::deny_reply::<Kafka>(&req);
        assert!(!reply.is_empty(), "key {key} v{v}");
        let out = s.feed(Direction::ToClient, &reply).unwrap();
        assert!(out.error.is_none(), "key {key} v{v}: {:?}", out.error);
        assert_eq!(out.messages[0].correlation, Correlation::Id(5));
    }
}

/// Responses: the partition error summary counts non-zero codes and keeps the
/// first; the top-level code is separate.
#[test]
fn partition_error_summary() {
    let mut s = Stream::<Kafka>::new();
    // Produce v9 (flexible) with acks=-1, then its response: 3 partitions, two
    // failed (6 NOT_LEADER_OR_FOLLOWER, then 29).
    let req = request(0, 9, 11, b"c", &produce_body(9, b"orders"));
    s.feed(Direction::ToServer, &req).unwrap();
    let mut w = Writer::default();
    w.i32(0)
        .i32(11)
        .tags(true)
        .array(1, true)
        .string(b"orders", true);
    w.array(3, true);
    for (p, code) in [(0, 0i16), (1, 6), (2, 29)] {
        w.i32(p).i16(code).i64(5).i64(-1).i64(0);
        w.array(0, true).null_string(true).tags(true);
    }
    w.tags(true).i32(0).tags(true);
    let size = (w.0.len() - 4) as i32;
    w.0[..4].copy_from_slice(&size.to_be_bytes());
    let out = s.feed(Direction::ToClient, &w.0).unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    let f = fields(&out.messages[0], &w.0);
    assert!(
        f.contains(&(field::PARTITION_ERRORS.id(), "2".into())),
        "{f:?}"
    );
    assert!(
        f.contains(&(field::PARTITION_ERROR_CODE.id(), "6".into())),
        "{f:?}"
    );

    // OffsetFetch v3 (classic): top-level 0, one partition error 3.
    let mut body = Writer::default();
    body.string(b"grp", false).null_array(false);
    let req = request(9, 3, 12, b"c", &body.0);
    s.feed(Direction::ToServer, &req).unwrap();
    let mut w = Writer::default();
    w.i32(0)
        .i32(12)
        .i32(0)
        .array(1, false)
        .string(b"orders", false);
    w.array(2, false);
    w.i32(0).i64(7).string(b"", false).i16(0);
    w.i32(1).i64(-1).string(b"", false).i16(3);
    w.i16(0);
    let size = (w.0.len() - 4) as i32;
    w.0[..4].copy_from_slice(&size.to_be_bytes());
    let out = s.feed(Direction::ToClient, &w.0).unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    let f = fields(&out.messages[0], &w.0);
    assert!(f.contains(&(field::ERROR_CODE.id(), "0".into())), "{f:?}");
    assert!(
        f.contains(&(field::PARTITION_ERRORS.id(), "1".into())),
        "{f:?}"
    );
    assert!(
        f.contains(&(field::PARTITION_ERROR_CODE.id(), "3".into())),
        "{f:?}"
    );

    // A response cut short inside its partitions is a parse error.
    let req = request(9, 3, 13, b"c", &body.0);
    s.feed(Direction::ToServer, &req).unwrap();
    let mut bad = w.0.clone();
    bad[4..8].copy_from_slice(&13i32.to_be_bytes());
    bad.truncate(bad.len() - 4);
    let size = (bad.len() - 4) as i32;
    bad[..4].copy_from_slice(&size.to_be_bytes());
    let out = s.feed(Direction::ToClient, &bad).unwrap();
    assert!(out.error.is_some());
}

/// The authorization code a broker gives: 53 for a transactional Produce, 30
/// for a group's heartbeat, 31 for an idempotent producer's id.
#[test]
fn deny_reply_codes() {
    let f = apis::flexible(0, 9);
    let mut w = Writer::default();
    w.string(b"tx", f)
        .i16(-1)
        .i32(1000)
        .array(1, f)
        .string(b"t", f);
    w.array(1, f).i32(0).uvarint(1).tags(f).tags(f).tags(f);
    let req = request(0, 9, 1, b"c", &w.0);
    let reply = loupe_sdk::deny_reply::<Kafka>(&req);
    let mut s = Stream::<Kafka>::new();
    s.feed(Direction::ToServer, &req).unwrap();
    let out = s.feed(Direction::ToClient, &reply).unwrap();
    let fs = fields(&out.messages[0], &reply);
    assert!(
        fs.contains(&(field::PARTITION_ERROR_CODE.id(), "53".into())),
        "{fs:?}"
    );

    let mut w = Writer::default();
    w.string(b"grp", false).i32(1).string(b"m", false);
    let req = request(12, 1, 2, b"c", &w.0);
    let reply = loupe_sdk::deny_reply::<Kafka>(&req);
    assert_eq!(reply, [0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 0, 0, 30]);

    let mut w = Writer::default();
    w.null_string(true).i32(1000).i64(-1).i16(-1).tags(true);
    let req = request(22, 4, 3, b"c", &w.0);
    let reply = loupe_sdk::deny_reply::<Kafka>(&req);
    // size, correlation, header tags, throttle, error 31, producer id/epoch, tags
    assert_eq!(&reply[9..15], &[0, 0, 0, 0, 0, 31]);

    // Produce with acks=0 awaits no response: no reply (a broker closes).
    let mut w = Writer::default();
    w.i16(0).i32(1000).array(1, false).string(b"t", false);
    w.array(1, false).i32(0).i32(0);
    assert!(loupe_sdk::deny_reply::<Kafka>(&request(0, 2, 5, b"c", &w.0)).is_empty());

    // ApiVersions is never denied with a reply (the agent closes instead).
    assert!(loupe_sdk::deny_reply::<Kafka>(&request(18, 3, 4, b"c", &[0, 0, 0])).is_empty());
}
