//! Table tests of the Redis parser through the SDK's framing.
#![allow(clippy::unwrap_used)]

use super::*;
use loupe_sdk::{Message, Stream, Value};

fn text(bytes: &[u8], m: &Message, id: u16) -> Option<String> {
    let f = m.fields.iter().find(|f| f.id == id)?;
    Some(match &f.value {
        Value::Slice(s) => {
            let start = s.offset as usize;
            String::from_utf8_lossy(&bytes[start..start + s.len as usize]).into_owned()
        }
        Value::Computed(s) => s.clone(),
        Value::Unsigned(v) => format!("{v}"),
        Value::Signed(v) => format!("{v}"),
        Value::Flag(v) => format!("{v}"),
    })
}

/// Feeds `bytes` in `direction` and returns each message's chosen fields as text.
fn feed(s: &mut Stream<Redis>, d: Direction, bytes: &[u8], ids: &[u16]) -> Vec<Vec<String>> {
    let out = s.feed(d, bytes).unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.pending, 0);
    out.messages
        .iter()
        .map(|m| {
            let base = (m.start - s_base(&out.messages, m)) as usize;
            let body = &bytes[base..base + m.len as usize];
            let mut row: Vec<String> = ids
                .iter()
                .map(|&id| text(body, m, id).unwrap_or_else(|| "-".into()))
                .collect();
            row.push(
                match m.correlation {
                    Correlation::InOrder => "paired",
                    Correlation::None => "unpaired",
                    Correlation::Id(_) => "id",
                }
                .into(),
            );
            row
        })
        .collect()
}

/// Stream offset of the first byte of this feed (messages of one feed are
/// contiguous and start at its first byte in these tests).
fn s_base(all: &[Message], _m: &Message) -> u64 {
    all[0].start
}

fn rows(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|s| (*s).into()).collect())
        .collect()
}

#[test]
fn requests_carry_command_subcommand_key_args_and_db() {
    let mut s = Stream::<Redis>::new();
    let ids = [
        field::COMMAND.id(),
        field::SUBCOMMAND.id(),
        field::KEY.id(),
        field::ARGS.id(),
        field::DB.id(),
    ];
    let got = feed(
        &mut s,
        Direction::ToServer,
        b"*3\r\n$3\r\nset\r\n$3\r\nfoo\r\n$3\r\nbar\r\n\
          *3\r\n$6\r\nCONFIG\r\n$3\r\nget\r\n$10\r\nmaxmemory*\r\n\
          *2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n\
          *1\r\n$4\r\nPING\r\n\
          ping hello\r\n\
          *5\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n$2\r\nk1\r\n$1\r\nx\r\n\
          *6\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$1\r\n2\r\n$7\r\nstreams\r\n$2\r\ns1\r\n$1\r\n0\r\n\
          *3\r\n$6\r\nOBJECT\r\n$8\r\nencoding\r\n$1\r\nk\r\n",
        &ids,
    );
    assert_eq!(
        got,
        rows(&[
            &["SET", "-", "foo", "2", "0", "paired"],
            &["CONFIG", "GET", "-", "2", "0", "paired"],
            &["SELECT", "-", "-", "1", "3", "paired"],
            &["PING", "-", "-", "0", "3", "paired"],
            &["PING", "-", "-", "1", "3", "paired"],
            &["EVAL", "-", "k1", "4", "3", "paired"],
            &["XREAD", "-", "s1", "5", "3", "paired"],
            &["OBJECT", "ENCODING", "k", "2", "3", "paired"],
        ])
    );
}

#[test]
fn select_error_is_undone() {
    let mut s = Stream::<Redis>::new();
    let ids = [field::COMMAND.id(), field::DB.id()];
    feed(
        &mut s,
        Direction::ToServer,
        b"*2\r\n$6\r\nSELECT\r\n$2\r\n99\r\n",
        &ids,
    );
    let got = feed(
        &mut s,
        Direction::ToClient,
        b"-ERR DB index is out of range\r\n",
        &[
            field::REPLY_TYPE.id(),
            field::ERROR_CODE.id(),
            field::ERROR.id(),
        ],
    );
    assert_eq!(
        got,
        rows(&[&["error", "ERR", "ERR DB index is out of range", "paired"]])
    );
    let got = feed(&mut s, Direction::ToServer, b"GET k\r\n", &ids);
    assert_eq!(got, rows(&[&["GET", "0", "paired"]]));
}

#[test]
fn resp3_replies_and_pushes() {
    let mut s = Stream::<Redis>::new();
    let ids = [field::REPLY_TYPE.id(), field::ERROR_CODE.id()];
    feed(
        &mut s,
        Direction::ToServer,
        b"HELLO 3\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n*1\r\n$4\r\nPING\r\n",
        &[],
    );
    let got = feed(
        &mut s,
        Direction::ToClient,
        b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n\
          >3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
          >3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n\
          +PONG\r\n",
        &ids,
    );
    assert_eq!(
        got,
        rows(&[
            &["map", "-", "paired"],
            &["push", "-", "unpaired"],
            &["push", "-", "unpaired"],
            &["simple-string", "-", "paired"],
        ])
    );
}

#[test]
fn resp2_pubsub_pairs_first_confirmation_only() {
    let mut s = Stream::<Redis>::new();
    let got = feed(
        &mut s,
        Direction::ToServer,
        b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n",
        &[field::COMMAND.id()],
    );
    assert_eq!(got, rows(&[&["SUBSCRIBE", "paired"]]));
    let got = feed(
        &mut s,
        Direction::ToClient,
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
          *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n",
        &[field::REPLY_TYPE.id()],
    );
    assert_eq!(
        got,
        rows(&[
            &["array", "paired"],
            &["array", "unpaired"],
            &["array", "unpaired"],
        ])
    );
}

#[test]
fn multi_exec_pairs_in_order() {
    let mut s = Stream::<Redis>::new();
    let got = feed(
        &mut s,
        Direction::ToServer,
        b"MULTI\r\nINCR a\r\nINCR b\r\nEXEC\r\n",
        &[field::COMMAND.id(), field::KEY.id()],
    );
    assert_eq!(got.len(), 4);
    let got = feed(
        &mut s,
        Direction::ToClient,
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n:0\r\n",
        &[field::REPLY_TYPE.id()],
    );
    // The last reply has no request: an event.
    assert_eq!(
        got,
        rows(&[
            &["simple-string", "paired"],
            &["simple-string", "paired"],
            &["simple-string", "paired"],
            &["array", "paired"],
            &["integer", "unpaired"],
        ])
    );
}

#[test]
fn hostile_input_is_an_error_not_a_hang() {
    let cases: &[(Direction, &[u8])] = &[
        (Direction::ToServer, b"*2\r\n:1\r\n:2\r\n"),
        (Direction::ToServer, b"*-3\r\n"),
        (Direction::ToServer, b"*1\r\n$999999999999\r\n"),
        (Direction::ToServer, b"*99999999\r\n"),
        (Direction::ToServer, b"GET \xff\xfe\r\n"),
        (Direction::ToServer, b"\x00\x01\x02\r\n"),
        (Direction::ToServer, b"*1\r\n$2\r\n\xff\xff\r\n"),
        (Direction::ToClient, b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n"),
        (Direction::ToClient, b"HTTP/1.1 200 OK\r\n"),
        (Direction::ToClient, b"$-7\r\n"),
    ];
    for (d, bytes) in cases {
        let mut s = Stream::<Redis>::new();
        let out = s.feed(*d, bytes).unwrap();
        assert!(out.error.is_some(), "{:?}", String::from_utf8_lossy(bytes));
    }
    // A line that never ends is refused past 64 KiB, not buffered forever.
    let mut s = Stream::<Redis>::new();
    let chunk = [b'a'; 4096];
    let mut failed = false;
    for _ in 0..32 {
        if s.feed(Direction::ToServer, &chunk).unwrap().error.is_some() {
            failed = true;
            break;
        }
    }
    assert!(failed);
}

#[test]
fn a_large_value_is_not_rescanned_per_segment() {
    let mut s = Stream::<Redis>::new();
    let out = s.feed(Direction::ToClient, b"$1000000\r\n").unwrap();
    assert_eq!(out.pending, 10);
    let chunk = [b'x'; 1000];
    for _ in 0..999 {
        assert!(
            s.feed(Direction::ToClient, &chunk)
                .unwrap()
                .messages
                .is_empty()
        );
    }
    let out = s.feed(Direction::ToClient, &chunk).unwrap();
    assert!(out.messages.is_empty());
    let out = s.feed(Direction::ToClient, b"\r\n").unwrap();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.messages[0].len, 1_000_012);
}

#[test]
fn deny_reply_names_the_command() {
    assert_eq!(
        loupe_sdk::deny_reply::<Redis>(b"*2\r\n$8\r\nFLUSHALL\r\n$5\r\nASYNC\r\n"),
        b"-NOPERM policy denies running the 'flushall' command\r\n"
    );
    assert_eq!(
        loupe_sdk::deny_reply::<Redis>(b"\xff\r\n"),
        b"-NOPERM policy denies this command\r\n"
    );
}

#[test]
fn sniffs() {
    assert_eq!(
        Redis::sniff(Direction::ToServer, b"*1\r\n$4\r\nPING"),
        Sniff::Yes
    );
    assert_eq!(
        Redis::sniff(Direction::ToServer, b"get foo\r\n"),
        Sniff::Yes
    );
    assert_eq!(
        Redis::sniff(Direction::ToServer, b"GET / HTTP/1.1\r\n"),
        Sniff::Yes
    );
    assert_eq!(
        Redis::sniff(Direction::ToServer, b"\x16\x03\x01"),
        Sniff::No
    );
    assert_eq!(Redis::sniff(Direction::ToClient, b"+PONG\r\n"), Sniff::Yes);
    assert_eq!(
        Redis::sniff(Direction::ToClient, b"HTTP/1.1 200"),
        Sniff::No
    );
}

/// A deterministic property test (in place of a fuzz run): seeded random and
/// mutated inputs never panic, and every cut frames the same as the whole.
#[test]
fn property_every_cut_frames_the_same_and_nothing_panics() {
    let seeds: &[&[u8]] = &[
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"%2\r\n+a\r\n:1\r\n+b\r\n*?\r\n,1.5\r\n(12\r\n.\r\n|1\r\n+t\r\n#t\r\n=7\r\ntxt:abc\r\n",
        b"HELLO 3\r\nSUBSCRIBE a\r\n",
        b">2\r\n$7\r\nmessage\r\n_\r\n$?\r\n;2\r\nab\r\n;0\r\n!3\r\nERR\r\n",
    ];
    let mut rng: u64 = 0x5eed_1234_abcd_ef01;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..600 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..(next() % 4) {
            let i = (next() as usize) % input.len();
            match next() % 4 {
                0 => input[i] = next() as u8,
                1 => input.insert(i, b"*$:-+\r\n9?."[(next() % 10) as usize]),
                2 => {
                    input.remove(i);
                }
                _ => input.truncate(i + 1),
            }
        }
        for d in [Direction::ToServer, Direction::ToClient] {
            let whole = run(&[(d, &input)]);
            for cut in 1..input.len() {
                let parts = run(&[(d, &input[..cut]), (d, &input[cut..])]);
                assert_eq!(parts, whole, "{input:?} cut at {cut}");
            }
        }
    }
}

fn run(feeds: &[(Direction, &[u8])]) -> (Vec<Message>, Option<u64>) {
    let mut s = Stream::<Redis>::new();
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
