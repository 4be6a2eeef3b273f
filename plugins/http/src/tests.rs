//! Table tests of the HTTP parser through the SDK's framing.
#![allow(clippy::unwrap_used)]

use super::*;
use loupe_sdk::{Message, Stream, Value};

fn field_text(bytes: &[u8], m: &Message, id: u16) -> String {
    let Some(f) = m.fields.iter().find(|f| f.id == id) else {
        return "-".into();
    };
    match &f.value {
        Value::Slice(s) => {
            let start = (m.start as usize) + s.offset as usize;
            String::from_utf8_lossy(&bytes[start..start + s.len as usize]).into_owned()
        }
        Value::Computed(s) => s.clone(),
        Value::Unsigned(v) => format!("{v}"),
        Value::Signed(v) => format!("{v}"),
        Value::Flag(v) => format!("{v}"),
    }
}

/// Feeds one direction's whole stream; returns (kind, chosen fields) per message.
fn frames(s: &mut Stream<Http>, d: Direction, bytes: &[u8], ids: &[u16]) -> Vec<String> {
    let out = s.feed(d, bytes).unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    out.messages
        .iter()
        .map(|m| {
            let mut row = format!("{:?}", m.kind);
            for &id in ids {
                row.push(' ');
                row.push_str(&field_text(bytes, m, id));
            }
            row
        })
        .collect()
}

#[test]
fn pipelined_requests_with_bodies() {
    let mut s = Stream::<Http>::new();
    let req = b"GET /get?a=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: curl/8\r\n\r\n\
POST /post HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello\
PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HEAD / HTTP/1.0\r\n\r\n";
    let got = frames(
        &mut s,
        Direction::ToServer,
        req,
        &[
            field::METHOD.id(),
            field::PATH.id(),
            field::URL.id(),
            field::HOST.id(),
            field::CONTENT_LENGTH.id(),
            field::BODY_BYTES.id(),
        ],
    );
    assert_eq!(
        got,
        [
            "Request GET /get /get?a=1 example - -",
            "Request POST /post /post example 5 -",
            "Event - - - - - 5",
            "Request PUT /c /c - - -",
            "Event - - - - - 3",
            "Event - - - - - 0",
            "Request HEAD / / - - -",
        ]
    );
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n";
    let got = frames(
        &mut s,
        Direction::ToClient,
        resp,
        &[field::STATUS.id(), field::BODY_BYTES.id()],
    );
    assert_eq!(
        got,
        [
            "Response 200 -",
            "Event - 2",
            "Event 100 -",
            "Response 201 -",
            "Event - 2",
            "Event - 0",
            "Response 204 -",
            // HEAD: no body despite Content-Length.
            "Response 200 -",
        ]
    );
}

#[test]
fn upgrade_stops_parsing() {
    let mut s = Stream::<Http>::new();
    s.feed(
        Direction::ToServer,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let out = s
        .feed(
            Direction::ToClient,
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello",
        )
        .unwrap();
    assert_eq!(out.messages.len(), 1);
    assert!(out.error.unwrap().reason.contains("switched protocols"));
}

#[test]
fn hostile_input_is_an_error() {
    let cases: &[(Direction, &[u8])] = &[
        (Direction::ToServer, b"\x16\x03\x01\x02\x00"),
        (Direction::ToServer, b"GET / HTTP/2.0\r\n\r\n"),
        (
            Direction::ToServer,
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n",
        ),
        (
            Direction::ToServer,
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ),
        (Direction::ToServer, b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
        (Direction::ToClient, b"SSH-2.0-OpenSSH\r\n"),
        (Direction::ToClient, b"HTTP/1.1 2x0 OK\r\n\r\n"),
    ];
    for (d, bytes) in cases {
        let mut s = Stream::<Http>::new();
        let out = s.feed(*d, bytes).unwrap();
        assert!(out.error.is_some(), "{:?}", String::from_utf8_lossy(bytes));
    }
    let mut s = Stream::<Http>::new();
    let mut failed = false;
    s.feed(Direction::ToServer, b"GET / HTTP/1.1\r\n").unwrap();
    for _ in 0..20 {
        if s.feed(Direction::ToServer, &[b'a'; 4096])
            .unwrap()
            .error
            .is_some()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "a head that never ends is refused past 64 KiB");
}

#[test]
fn deny_reply_is_a_403() {
    let reply = loupe_sdk::deny_reply::<Http>(b"GET / HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
    assert!(reply.ends_with(b"\r\n\r\nAccess denied"));
}

/// Deterministic property test (in place of a fuzz run): seeded mutations never
/// panic and every cut frames the same as the whole.
#[test]
fn property_every_cut_frames_the_same_and_nothing_panics() {
    let seeds: &[&[u8]] = &[
        b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    ];
    let mut rng: u64 = 0x0123_4567_89ab_cdef;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..400 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..(next() % 4) {
            let i = (next() as usize) % input.len();
            match next() % 3 {
                0 => input[i] = next() as u8,
                1 => input.insert(i, b"\r\n 0:9aZ"[(next() % 8) as usize]),
                _ => {
                    input.remove(i);
                }
            }
        }
        for d in [Direction::ToServer, Direction::ToClient] {
            let whole = run(&[(d, &input)]);
            for cut in 1..input.len() {
                assert_eq!(run(&[(d, &input[..cut]), (d, &input[cut..])]), whole);
            }
        }
    }
}

fn run(feeds: &[(Direction, &[u8])]) -> (Vec<Message>, Option<u64>) {
    let mut s = Stream::<Http>::new();
    let mut all = Vec::new();
    for (d, b) in feeds {
        let out = s.feed(*d, b).unwrap();
        all.extend(out.messages);
        if let Some(e) = out.error {
            return (all, Some(e.offset));
        }
    }
    (all, None)
}
