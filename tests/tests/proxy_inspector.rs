//! The proxy's plugin-backed inspector on the real Redis plugin, without
//! sockets: forwarding byte for byte, deny replies in pipeline order across
//! arbitrary splits, bounded buffering, fail-closed and fail-open.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loupe_runtime::plugin::{Limits, Message, Plugin, PluginHost, PluginInfo, Worker};
use loupe_runtime::proxy::{
    Action, ConnEvents, ConnInfo, Decider, Inspector, PluginInspector, ProxyEvents, Verdict,
    field_text,
};
use loupe_tests::guest;

/// Denies Redis FLUSHALL, HTTP paths under `/deny` and MQTT topics under `admin/`.
struct DenyFlushall;

impl Decider for DenyFlushall {
    fn decide(&self, _: &ConnInfo, plugin: &PluginInfo, request: &Message) -> Verdict {
        let deny = match plugin.name.as_str() {
            "http" => field_text(plugin, request, "path").is_some_and(|p| p.starts_with("/deny")),
            "mqtt" => field_text(plugin, request, "topic").is_some_and(|t| t.starts_with("admin/")),
            _ => field_text(plugin, request, "command")
                .is_some_and(|c| c.eq_ignore_ascii_case("flushall")),
        };
        if deny {
            Verdict::Deny {
                by: Default::default(),
                reason: "denied".into(),
            }
        } else {
            Verdict::allow()
        }
    }
}

#[derive(Default)]
struct Recorded {
    log: Arc<Mutex<Vec<String>>>,
}

struct RecordedConn {
    plugin: Arc<Plugin>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProxyEvents for Recorded {
    fn connection(&self, _: &ConnInfo, plugin: &Arc<Plugin>) -> Box<dyn ConnEvents> {
        Box::new(RecordedConn {
            plugin: plugin.clone(),
            log: self.log.clone(),
        })
    }
}

impl ConnEvents for RecordedConn {
    fn request(&mut self, request: &Message, verdict: &Verdict) {
        let command = field_text(&self.plugin.info, request, "command").unwrap_or_default();
        let v = if matches!(verdict, Verdict::Allow(_)) {
            "allow"
        } else {
            "deny"
        };
        self.log.lock().unwrap().push(format!("{command} {v}"));
    }
    fn response(&mut self, req: &Message, _: &Message, _: Duration) {
        let command = field_text(&self.plugin.info, req, "command").unwrap_or_default();
        self.log.lock().unwrap().push(format!("{command} answered"));
    }
    fn message(&mut self, message: &Message) {
        let kind = format!("{:?}", message.kind).to_lowercase();
        self.log.lock().unwrap().push(format!("{kind} seen"));
    }
    fn error(&mut self, reason: &str, closed: bool) {
        self.log
            .lock()
            .unwrap()
            .push(format!("error closed={closed}: {reason}"));
    }
}

fn conn() -> ConnInfo {
    ConnInfo {
        id: 1,
        client: "10.0.0.1:40000".parse().unwrap(),
        server: "10.0.0.2:6379".parse().unwrap(),
        client_endpoint: None,
        server_endpoint: None,
        accepted: Instant::now(),
    }
}

fn redis(limits: Limits) -> Arc<Plugin> {
    load("loupe_plugin_redis", limits)
}

fn load(name: &str, limits: Limits) -> Arc<Plugin> {
    let host = PluginHost::new(limits).unwrap();
    let bytes = std::fs::read(guest(name)).unwrap();
    Arc::new(host.load(&bytes, None).unwrap())
}

fn inspector(limits: Limits, fail_open: bool) -> (PluginInspector, Arc<Recorded>) {
    inspector_on(redis(limits), fail_open)
}

fn inspector_on(plugin: Arc<Plugin>, fail_open: bool) -> (PluginInspector, Arc<Recorded>) {
    let worker = Arc::new(Mutex::new(Worker::new(plugin)));
    let events = Arc::new(Recorded::default());
    let insp = PluginInspector::new(
        worker,
        conn(),
        Arc::new(DenyFlushall),
        events.clone(),
        fail_open,
    );
    (insp, events)
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Concatenates the bytes of each side, in the order the actions give them.
fn sides(actions: &[Action]) -> (Vec<u8>, Vec<u8>, Option<String>) {
    let (mut server, mut client, mut reset) = (Vec::new(), Vec::new(), None);
    for a in actions {
        match a {
            Action::ToServer(b) => server.extend_from_slice(b),
            Action::ToClient(b) => client.extend_from_slice(b),
            Action::Reset(r) => reset = Some(r.clone()),
        }
    }
    (server, client, reset)
}

#[test]
fn pipelined_denies_are_answered_in_order_whatever_the_splits() {
    let (set, get) = (cmd(&["SET", "a", "1"]), cmd(&["GET", "a"]));
    let requests = [
        set.clone(),
        cmd(&["FLUSHALL"]),
        get.clone(),
        cmd(&["FLUSHALL"]),
    ]
    .concat();
    // The server answers what reaches it: SET, then GET.
    let replies = b"+OK\r\n$1\r\n1\r\n".to_vec();
    let answered = |to_server: &[u8]| -> usize {
        if to_server.starts_with(&[set.clone(), get.clone()].concat()) {
            replies.len()
        } else if to_server.starts_with(&set) {
            5
        } else {
            0
        }
    };
    let plugin = redis(Limits::default());
    let mut compared = 0;
    for cut in 1..requests.len() {
        for rcut in 1..replies.len() {
            let (mut insp, _) = inspector_on(plugin.clone(), false);
            let mut actions = insp.client_bytes(&requests[..cut]);
            actions.extend(insp.client_bytes(&requests[cut..]));
            let (mut to_server, early, reset) = sides(&actions);
            assert_eq!(reset, None);
            // Nothing is forwarded behind the pending deny reply, and nothing
            // reaches the client before the SET is answered.
            assert_eq!(to_server, set, "cut {cut}");
            assert!(early.is_empty(), "cut {cut}: {early:?}");
            // The server's replies arrive split at `rcut` (and wherever a
            // request reaches it): the GET only once the first deny reply left.
            let mut to_client = Vec::new();
            let mut delivered = 0;
            while delivered < answered(&to_server) {
                let end = if delivered < rcut {
                    rcut.min(answered(&to_server))
                } else {
                    answered(&to_server)
                };
                let (more_server, more_client, reset) =
                    sides(&insp.server_bytes(&replies[delivered..end]));
                assert_eq!(reset, None);
                delivered = end;
                to_server.extend(more_server);
                to_client.extend(more_client);
            }
            assert_eq!(to_server, [set.clone(), get.clone()].concat(), "cut {cut}");
            let denied = String::from_utf8_lossy(&to_client).to_string();
            // +OK, deny, $1 1, deny — the deny replies' text is the plugin's.
            let parts: Vec<&str> = denied.split("\r\n").collect();
            assert_eq!(parts[0], "+OK", "{denied:?}");
            assert!(parts[1].starts_with("-NOPERM"), "{denied:?}");
            assert_eq!(&parts[2..4], ["$1", "1"], "{denied:?}");
            assert!(parts[4].starts_with("-NOPERM"), "{denied:?}");
            assert_eq!(to_client.len(), replies.len() + 2 * parts[1].len() + 4);
            compared += 1;
        }
    }
    println!("{compared} split pairs compared");
}

#[test]
fn server_bytes_stream_through_while_nothing_is_denied_and_events_pair() {
    let (mut insp, events) = inspector(Limits::default(), false);
    let (to_server, _, _) = sides(&insp.client_bytes(&cmd(&["GET", "k"])));
    assert_eq!(to_server, cmd(&["GET", "k"]));
    // A partial bulk reply goes out at once: nothing needs to wait for it.
    let (_, to_client, _) = sides(&insp.server_bytes(b"$5\r\nhel"));
    assert_eq!(to_client, b"$5\r\nhel");
    let (_, to_client, _) = sides(&insp.server_bytes(b"lo\r\n"));
    assert_eq!(to_client, b"lo\r\n");
    let (_, to_client, _) = sides(&insp.client_bytes(&cmd(&["FLUSHALL"])));
    assert!(String::from_utf8_lossy(&to_client).starts_with("-NOPERM"));
    let log = events.log.lock().unwrap().clone();
    assert_eq!(
        log,
        ["GET allow", "GET answered", "FLUSHALL deny"],
        "{log:?}"
    );
}

#[test]
fn a_request_without_an_end_fails_closed_within_the_bound() {
    let limits = Limits {
        max_pending_bytes: 4096,
        ..Limits::default()
    };
    let (mut insp, events) = inspector(limits, false);
    let mut head = b"*1\r\n$100000\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'x', 1000));
    let (to_server, _, reset) = sides(&insp.client_bytes(&head));
    assert!(to_server.is_empty());
    assert_eq!(reset, None);
    let mut reset = None;
    for _ in 0..10 {
        let (to_server, _, r) = sides(&insp.client_bytes(&[b'x'; 1000]));
        assert!(
            to_server.is_empty(),
            "nothing of an undecided request leaves"
        );
        if r.is_some() {
            reset = r;
            break;
        }
    }
    let reason = reset.expect("reset past the bound");
    assert!(reason.contains("4096"), "{reason}");
    let log = events.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.starts_with("error closed=true")),
        "{log:?}"
    );
}

#[test]
fn fail_open_passes_the_rest_through_unparsed() {
    let limits = Limits {
        max_pending_bytes: 4096,
        ..Limits::default()
    };
    let (mut insp, _) = inspector(limits, true);
    let mut sent = Vec::new();
    let mut head = b"*1\r\n$100000\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'x', 3000));
    sent.extend(sides(&insp.client_bytes(&head)).0);
    let (to_server, _, reset) = sides(&insp.client_bytes(&[b'y'; 2000]));
    assert_eq!(reset, None);
    sent.extend(to_server);
    // Everything held was released in order, then bytes flow unchanged.
    assert_eq!(sent.len(), head.len() + 2000);
    assert!(sent.starts_with(&head));
    let (to_server, _, _) = sides(&insp.client_bytes(&cmd(&["FLUSHALL"])));
    assert_eq!(to_server, cmd(&["FLUSHALL"]));
}

#[test]
fn requests_held_behind_a_denial_pause_the_client_until_it_is_answered() {
    let (mut insp, _) = inspector(Limits::default(), false);
    let first = cmd(&["SET", "a", "1"]);
    let big = "x".repeat(1000);
    let held: Vec<u8> = (0..300)
        .flat_map(|i| cmd(&["SET", &format!("k{i}"), &big]))
        .collect();
    let (to_server, to_client, _) = sides(&insp.client_bytes(&first));
    assert_eq!(to_server, first);
    assert!(to_client.is_empty());
    assert!(!insp.client_paused());
    let (to_server, _, _) = sides(&insp.client_bytes(&cmd(&["FLUSHALL"])));
    assert!(to_server.is_empty());
    let (to_server, _, _) = sides(&insp.client_bytes(&held));
    assert!(to_server.is_empty(), "held behind the pending deny reply");
    assert!(insp.client_paused(), "{} bytes held", held.len());
    let (to_server, to_client, reset) = sides(&insp.server_bytes(b"+OK\r\n"));
    assert_eq!(reset, None);
    assert_eq!(
        to_server, held,
        "released in order once the deny reply left"
    );
    assert!(String::from_utf8_lossy(&to_client).starts_with("+OK\r\n-NOPERM"));
    assert!(!insp.client_paused());
}

#[test]
fn http_bodies_follow_their_request_held_forwarded_or_dropped() {
    let get: &[u8] = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    let post: &[u8] = b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let denied_get: &[u8] = b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n";
    let denied_post: &[u8] = b"POST /deny/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nxxxxx";
    let requests = [get, denied_get, post, denied_post, get].concat();
    // What reaches the server, in order: the allowed requests with their bodies.
    let forwarded = [get, post, get];
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let plugin = load("loupe_plugin_http", Limits::default());
    for cut in 1..requests.len() {
        let (mut insp, events) = inspector_on(plugin.clone(), false);
        let mut actions = insp.client_bytes(&requests[..cut]);
        actions.extend(insp.client_bytes(&requests[cut..]));
        let (mut to_server, mut to_client, reset) = sides(&actions);
        assert_eq!(reset, None);
        assert_eq!(
            to_server, get,
            "cut {cut}: only the first GET goes before a deny reply"
        );
        // The server answers each request once it has all of it.
        let mut answered = 0;
        while answered < forwarded.len() && to_server.len() >= forwarded[..=answered].concat().len()
        {
            answered += 1;
            let (more_server, more_client, reset) = sides(&insp.server_bytes(ok));
            assert_eq!(reset, None, "cut {cut}");
            to_server.extend(more_server);
            to_client.extend(more_client);
        }
        assert_eq!(to_server, forwarded.concat(), "cut {cut}");
        let text = String::from_utf8_lossy(&to_client).to_string();
        let statuses: Vec<&str> = text.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
        assert_eq!(
            statuses,
            ["200", "403", "200", "403", "200"],
            "cut {cut}: {text:?}"
        );
        assert_eq!(text.matches("Access denied").count(), 2, "{text:?}");
        // Five decisions and three answered requests; no failure. The server's
        // bodies reach the events as messages (the flow builder drops them as
        // body pieces).
        let log = events.log.lock().unwrap().clone();
        assert_eq!(
            log.iter().filter(|l| !l.ends_with(" seen")).count(),
            8,
            "{log:?}"
        );
        assert_eq!(
            log.iter().filter(|l| *l == "event seen").count(),
            3,
            "{log:?}"
        );
        assert!(!log.iter().any(|l| l.starts_with("error")), "{log:?}");
    }
}

#[test]
fn fail_open_delivers_the_server_bytes_that_failed_to_parse() {
    let (mut insp, events) = inspector(Limits::default(), true);
    let (to_server, _, _) = sides(&insp.client_bytes(&cmd(&["GET", "k"])));
    assert_eq!(to_server, cmd(&["GET", "k"]));
    // Not RESP: the view fails, the connection goes on unparsed, nothing is lost.
    let (_, to_client, reset) = sides(&insp.server_bytes(b"?not resp\r\n"));
    assert_eq!(reset, None);
    assert_eq!(to_client, b"?not resp\r\n");
    let (_, to_client, _) = sides(&insp.server_bytes(b"more"));
    assert_eq!(to_client, b"more");
    let log = events.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.starts_with("error closed=false")),
        "{log:?}"
    );
}

/// An MQTT packet: first byte, remaining length (< 128), body.
fn mqtt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first, u8::try_from(body.len()).unwrap()];
    out.extend_from_slice(body);
    out
}

/// An MQTT PUBLISH of `topic` at `qos` (with packet id `id` when above 0).
fn mqtt_publish(qos: u8, id: u16, topic: &str) -> Vec<u8> {
    let mut body = u16::try_from(topic.len()).unwrap().to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(b"payload");
    mqtt(0x30 | qos << 1, &body)
}

#[test]
fn a_clients_answers_to_the_server_pass_its_denied_requests() {
    // A subscriber acknowledges the broker's QoS 1 deliveries (PUBACK 7, 8)
    // while its own publishes to admin/ are denied: the acknowledgements belong
    // to the broker's requests, not to the denied ones, and must reach it.
    let plugin = load("loupe_plugin_mqtt", Limits::default());
    let connect = mqtt(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x03sub");
    let subscribe = mqtt(0x82, b"\x00\x01\x00\x09sensors/#\x01");
    let puback = |id: u8| mqtt(0x40, &[0, id]);
    let allowed = mqtt_publish(1, 3, "sensors/ok");
    let session = [
        mqtt_publish(1, 2, "admin/x"),
        puback(7),
        mqtt_publish(0, 0, "admin/y"),
        puback(8),
        allowed.clone(),
    ]
    .concat();
    for cut in 1..session.len() {
        let (mut insp, events) = inspector_on(plugin.clone(), false);
        let (to_server, _, _) =
            sides(&insp.client_bytes(&[connect.clone(), subscribe.clone()].concat()));
        assert_eq!(to_server, [connect.clone(), subscribe.clone()].concat());
        let suback = mqtt(0x90, &[0, 1, 1]);
        let delivery = mqtt_publish(1, 7, "sensors/t");
        let (_, to_client, _) = sides(
            &insp.server_bytes(&[mqtt(0x20, &[0, 0]), suback.clone(), delivery.clone()].concat()),
        );
        assert_eq!(to_client, [mqtt(0x20, &[0, 0]), suback, delivery].concat());

        let mut actions = insp.client_bytes(&session[..cut]);
        actions.extend(insp.client_bytes(&session[cut..]));
        let (to_server, to_client, reset) = sides(&actions);
        assert_eq!(reset, None, "cut {cut}");
        assert_eq!(
            to_server,
            [puback(7), puback(8), allowed.clone()].concat(),
            "cut {cut}: the acknowledgements and the allowed publish reach the broker"
        );
        // The denied QoS 1 publish gets the PUBACK a refusing 3.1.1 broker gives;
        // the QoS 0 one expects no answer.
        assert_eq!(to_client, puback(2), "cut {cut}");
        let log = events.log.lock().unwrap().clone();
        assert!(!log.iter().any(|l| l.starts_with("error")), "{log:?}");
        // Reported: the broker's delivery (a request it makes); the PUBACK of it
        // paired with it (the third "answered", after CONNACK and SUBACK), the
        // other (id 8, never asked) alone.
        let seen = |what: &str| log.iter().filter(|l| *l == what).count();
        assert_eq!(
            (
                seen("request seen"),
                seen(" answered"),
                seen("response seen")
            ),
            (1, 3, 1),
            "{log:?}"
        );
    }
}

#[test]
fn a_clients_answer_is_not_held_behind_a_pending_deny_reply() {
    // The broker has not answered the client's PINGREQ yet, so the reply to the
    // denied publish waits, and the allowed publish after it is held. The
    // client's PUBACK of the broker's delivery goes out at once: the broker may
    // wait for it before it answers anything.
    let plugin = load("loupe_plugin_mqtt", Limits::default());
    let allowed = mqtt_publish(1, 4, "sensors/ok");
    let puback = mqtt(0x40, &[0, 9]);
    let session = [
        mqtt_publish(1, 3, "admin/x"),
        allowed.clone(),
        puback.clone(),
    ]
    .concat();
    for cut in 1..session.len() {
        let (mut insp2, _) = inspector_on(plugin.clone(), false);
        let opening = mqtt(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x03sub");
        let ping = mqtt(0xc0, &[]);
        let (to_server, _, _) =
            sides(&insp2.client_bytes(&[opening.clone(), ping.clone()].concat()));
        assert_eq!(to_server, [opening, ping].concat());
        let delivery = [mqtt(0x20, &[0, 0]), mqtt_publish(1, 9, "sensors/t")].concat();
        let (_, to_client, _) = sides(&insp2.server_bytes(&delivery));
        assert_eq!(to_client, delivery);
        let mut actions = insp2.client_bytes(&session[..cut]);
        actions.extend(insp2.client_bytes(&session[cut..]));
        let (to_server, to_client, reset) = sides(&actions);
        assert_eq!(reset, None, "cut {cut}");
        assert_eq!(to_server, puback, "cut {cut}: only the PUBACK, at once");
        assert_eq!(
            to_client, b"",
            "cut {cut}: the deny reply waits for PINGRESP"
        );
        // PINGRESP: the deny reply goes, then the held publish.
        let (to_server, to_client, _) = sides(&insp2.server_bytes(&mqtt(0xd0, &[])));
        assert_eq!(
            to_client,
            [mqtt(0xd0, &[]), mqtt(0x40, &[0, 3])].concat(),
            "cut {cut}"
        );
        assert_eq!(to_server, allowed, "cut {cut}");
    }
}
