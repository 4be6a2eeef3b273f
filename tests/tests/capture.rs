//! Captures of real traffic, written by tcpdump and tshark, read back through
//! Loupe's capture reader and TCP reassembly.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use loupe_runtime::capture::{CaptureReader, Decoded, decode};
use loupe_runtime::reassembly::{Event, Limits, Reassembler, Side};
use loupe_tests::{TestLab, serial, wait_for};

/// Requests sent in one write each, pipelined, and the replies Redis gives.
const REQUESTS: &[u8] = b"*3\r\n$3\r\nSET\r\n$9\r\ncache:cap\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$9\r\ncache:cap\r\n*1\r\n$4\r\nPING\r\n";
const REPLIES: &[u8] = b"+OK\r\n$5\r\nhello\r\n+PONG\r\n";

fn streams(file: &[u8]) -> (Vec<u8>, Vec<u8>, usize) {
    let mut reader = CaptureReader::new(file).unwrap();
    let mut r = Reassembler::new(Limits::default());
    let mut events = Vec::new();
    let mut packets = 0;
    while let Some(p) = reader.next_packet().unwrap() {
        packets += 1;
        if let Decoded::Tcp {
            src,
            dst,
            seq,
            flags,
            payload,
        } = decode(p.link, &p.data)
        {
            let seg = loupe_runtime::reassembly::Segment {
                time: p.time,
                src,
                dst,
                seq,
                flags,
                payload,
            };
            r.push(&seg, &mut events);
        }
    }
    r.finish(&mut events);
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::Data {
                side: Side::Client,
                bytes,
                key,
                ..
            } if key.server.port() == 6379 => client.extend(bytes),
            Event::Data {
                side: Side::Server,
                bytes,
                key,
                ..
            } if key.server.port() == 6379 => server.extend(bytes),
            Event::Gap { .. } => panic!("gap in a loss-free capture"),
            _ => {}
        }
    }
    (client, server, packets)
}

#[test]
fn tcpdump_and_tshark_captures_reassemble_to_the_bytes_sent() {
    let _guard = serial();
    let lab = TestLab::up("e2e-cap", 227).unwrap();
    let state = lab.state().unwrap();
    let db = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "db-service")
        .unwrap();
    let iface = db["hostIf"].as_str().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("loupe-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("redis.pcap");
    let pcapng = dir.join("redis.pcapng");
    let mut tcpdump = Command::new("tcpdump")
        .args(["-i", &iface, "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg("tcp port 6379")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut tshark = Command::new("tshark")
        .args(["-i", &iface, "-F", "pcapng", "-f", "tcp port 6379", "-w"])
        .arg(&pcapng)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let literal: String = REQUESTS.iter().map(|b| format!("\\x{b:02x}")).collect();
    let script = format!(
        "import socket,time\ns=socket.create_connection(('db-service',6379))\ns.sendall(b'{literal}')\n\
         want={}\ngot=b''\nwhile len(got)<want: got+=s.recv(4096)\nprint(got)\ns.close()\ntime.sleep(0.2)",
        REPLIES.len()
    );
    let out = lab
        .exec_ok("api-service", &["python3", "-c", &script])
        .unwrap();
    assert!(out.contains("PONG"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    for child in [&mut tcpdump, &mut tshark] {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        assert!(wait_for(Duration::from_secs(5), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )));
    }
    for file in [&pcap, &pcapng] {
        let bytes = std::fs::read(file).unwrap();
        let (client, server, packets) = streams(&bytes);
        assert!(packets >= 6, "{}: {packets} packets", file.display());
        assert_eq!(client, REQUESTS, "{}", file.display());
        assert_eq!(server, REPLIES, "{}", file.display());
    }
    std::fs::remove_dir_all(dir).unwrap();
}
