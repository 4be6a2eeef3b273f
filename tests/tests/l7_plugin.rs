//! An installed plugin end to end, the way an operator uses one: the MQTT
//! plugin (`plugins/mqtt`) installed into a running agent with `loupe plugin
//! install`, observed on every connection to its port with `l7.protocols`, then
//! enforced by an L7 policy — against mosquitto and real clients
//! (mosquitto_pub, mosquitto_sub, paho-mqtt) in the lab.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use loupe_tests::{
    TestAgent, TestLab, guest, l7_latency_ns, python, scratch_dir, serial, tcp_ok, wait_for,
    write_file,
};
use serde_json::Value;

/// mosquitto in the db-service pod, stopped on drop.
struct Broker {
    conf: PathBuf,
}

impl Broker {
    fn start(lab: &TestLab, dir: &std::path::Path) -> Self {
        Self::start_with(lab, dir, "")
    }

    fn start_with(lab: &TestLab, dir: &std::path::Path, extra: &str) -> Self {
        let conf = PathBuf::from(write_file(
            dir,
            &format!("mosquitto-{}.conf", extra.len()),
            &format!("listener 1883\nallow_anonymous true\npersistence false\n{extra}"),
        ));
        let out = lab.exec(
            "db-service",
            &["mosquitto", "-d", "-c", conf.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "mosquitto did not start (scripts/bootstrap installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            tcp_ok(lab, "api-service", "db-service", 1883, 10),
            "mosquitto is not listening"
        );
        Self { conf }
    }
}

impl Drop for Broker {
    /// Stops it and waits until it is gone, so that the port is free again.
    fn drop(&mut self) {
        let pattern = format!("mosquitto -d -c {}", self.conf.display());
        let _ = Command::new("pkill").args(["-f", &pattern]).status();
        wait_for(Duration::from_secs(5), || {
            Command::new("pgrep")
                .args(["-f", &pattern])
                .status()
                .is_ok_and(|s| !s.success())
        });
    }
}

/// The mqtt plugin's L7 flows in the agent's ring.
fn mqtt_flows(agent: &TestAgent) -> Vec<Value> {
    agent
        .observe_json(&["--type", "l7", "--protocol", "mqtt", "--last", "1000"])
        .into_iter()
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

fn fields(f: &Value) -> &Value {
    &f["extensions"]["value"]["fields"]
}

/// The lab pod of one side of a flow, by its app (pod names carry a suffix).
fn pod(f: &Value, side: &str) -> String {
    let name = f[side]["pod_name"].as_str().unwrap_or("");
    ["frontend", "api-service", "db-service"]
        .into_iter()
        .find(|app| name.starts_with(app))
        .unwrap_or(name)
        .to_string()
}

/// Flows of `packet-type` `ty` (and `topic`, when given) as (type, source pod,
/// destination pod, verdict).
fn packets(
    flows: &[Value],
    ty: &str,
    topic: Option<&str>,
) -> Vec<(String, String, String, String)> {
    flows
        .iter()
        .filter(|f| fields(f)["packet-type"] == ty)
        // `topic` is a list field: one topic is a list of one.
        .filter(|f| topic.is_none_or(|t| fields(f)["topic"] == serde_json::json!([t])))
        .map(|f| {
            (
                f["l7"]["type"].as_str().unwrap_or("").to_string(),
                pod(f, "source"),
                pod(f, "destination"),
                f["verdict"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

const ENFORCE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: broker-topics
  namespace: demo-app
spec:
  endpointSelector:
    matchLabels:
      app: db-service
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: api-service
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "1883"
              protocol: TCP
          rules:
            l7proto: mqtt
            l7:
              - packet-type: "CONNECT|SUBSCRIBE|UNSUBSCRIBE|PINGREQ|PUBREL|DISCONNECT"
              - packet-type: "PUBLISH"
                topic: "sensors/.*"
"#;

/// paho-mqtt on one connection: subscribes to sensors/# at QoS 1, publishes
/// to a denied topic at QoS 1 (answered by the policy's PUBACK), then waits for
/// two deliveries, acknowledging each (paho does it itself).
const SUBSCRIBER: &str = r#"
import sys, threading, paho.mqtt.client as mqtt
got, acked = [], threading.Event()
done = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-sub", protocol=mqtt.MQTTv311)
def on_message(c, u, m):
    got.append(m.topic)
    if len(got) == 2:
        done.set()
c.on_message = on_message
c.on_publish = lambda c, u, mid, rc, p: acked.set()
c.connect(sys.argv[1], 1883)
c.loop_start()
c.subscribe("sensors/#", qos=1)
c.publish("admin/shutdown", b"now", qos=1)
assert acked.wait(10), "no PUBACK for the denied publish"
print("ready", flush=True)
assert done.wait(20), f"deliveries: {got}"
print(" ".join(got))
c.disconnect()
c.loop_stop()
"#;

#[test]
fn an_installed_plugin_is_observed_everywhere_and_enforced() {
    let _guard = serial();
    let lab = TestLab::up("e2e-mqtt", 214).unwrap();
    let agent = TestAgent::start("mqtt", "e2e-mqtt", "l7:\n  protocols: [mqtt]\n", 4).unwrap();
    let dir = scratch_dir("mqtt");
    let broker = Broker::start(&lab, &dir);

    // Installed into the running agent, which lists its protocol in
    // `l7.protocols`: observed from the install on, no restart.
    let wasm = guest("loupe_plugin_mqtt").display().to_string();
    let out = agent.loupe_ok(&["plugin", "install", &wasm]).unwrap();
    assert!(
        out.starts_with("installed mqtt 0.1.0 (mqtt) on ports 1883"),
        "{out}"
    );
    let visible = wait_for(Duration::from_secs(10), || {
        agent
            .loupe_ok(&["status"])
            .is_ok_and(|s| s.contains("{1883} everywhere"))
    });
    assert!(
        visible,
        "{}",
        agent.loupe_ok(&["status"]).unwrap_or_default()
    );
    // A second install of the protocol on another port adds that port; its
    // removal takes it away again.
    let status_has = |text: &str| {
        wait_for(Duration::from_secs(10), || {
            agent.loupe_ok(&["status"]).is_ok_and(|s| s.contains(text))
        })
    };
    agent
        .loupe_ok(&[
            "plugin", "install", &wasm, "--name", "mqtt-alt", "--ports", "18830",
        ])
        .unwrap();
    assert!(status_has("{1883, 18830} everywhere"));
    agent.loupe_ok(&["plugin", "remove", "mqtt-alt"]).unwrap();
    assert!(status_has("{1883} everywhere"));

    // Observed with no policy: a subscriber in api-service, two publishes from
    // frontend, at QoS 1 and 0.
    let sub = Command::new(loupe_tests::loupe_bin())
        .args(["lab", "exec", "--lab", "e2e-mqtt", "api-service", "--"])
        .args([
            "mosquitto_sub",
            "-h",
            "db-service",
            "-q",
            "1",
            "-t",
            "sensors/#",
        ])
        .args(["-C", "2", "-W", "20", "-i", "watcher"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !packets(
            &mqtt_flows(&agent),
            "SUBACK",
            None
        )
        .is_empty()),
        "no SUBACK flow: {:#?}",
        mqtt_flows(&agent)
    );
    let publish = |topic: &str, qos: &str, id: &str| {
        lab.exec_ok(
            "frontend",
            &[
                "mosquitto_pub",
                "-h",
                "db-service",
                "-q",
                qos,
                "-t",
                topic,
                "-m",
                "21",
                "-i",
                id,
            ],
        )
        .unwrap();
    };
    publish("sensors/t", "1", "pub-1");
    publish("sensors/h", "0", "pub-0");
    let out = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "21\n21\n");
    let seen = |ty: &str, topic: Option<&str>, n: usize| {
        wait_for(Duration::from_secs(10), || {
            packets(&mqtt_flows(&agent), ty, topic).len() >= n
        })
    };
    assert!(seen("PUBACK", None, 2), "{:#?}", mqtt_flows(&agent));
    let flows = mqtt_flows(&agent);
    let row = |t: &str, s: &str, d: &str| {
        (
            t.to_string(),
            s.to_string(),
            d.to_string(),
            "FORWARDED".to_string(),
        )
    };
    // The publisher's QoS 1 publish, and the broker's delivery of it: a request
    // the broker makes of the subscriber (from db-service to api-service).
    assert_eq!(
        packets(&flows, "PUBLISH", Some("sensors/t")),
        [
            row("REQUEST", "frontend", "db-service"),
            row("REQUEST", "db-service", "api-service")
        ],
        "{flows:#?}"
    );
    // QoS 0: the publisher's is decided like any request; the delivery is an event.
    assert_eq!(
        packets(&flows, "PUBLISH", Some("sensors/h")),
        [
            row("REQUEST", "frontend", "db-service"),
            row("SAMPLE", "db-service", "api-service")
        ],
        "{flows:#?}"
    );
    // Each PUBACK answers the side that asked, and carries its latency.
    let mut pubacks = packets(&flows, "PUBACK", None);
    pubacks.sort();
    assert_eq!(
        pubacks,
        [
            row("RESPONSE", "api-service", "db-service"),
            row("RESPONSE", "db-service", "frontend")
        ],
        "{flows:#?}"
    );

    // Enforced: publishes only under sensors/; the broker holds back its next
    // delivery until the previous one is acknowledged, so a subscriber's PUBACK
    // lost behind its own denied publish would stall it.
    drop(broker);
    let broker = Broker::start_with(&lab, &dir, "max_inflight_messages 1\n");
    let policy = write_file(&dir, "enforce.yaml", ENFORCE);
    agent.loupe_ok(&["policy", "apply", "-f", &policy]).unwrap();
    let script = write_file(&dir, "subscriber.py", SUBSCRIBER);
    let mut paho = Command::new(loupe_tests::loupe_bin())
        .args(["lab", "exec", "--lab", "e2e-mqtt", "api-service", "--"])
        .args([python().as_str(), script.as_str(), "db-service"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if !seen("PUBLISH", Some("admin/shutdown"), 1) {
        let _ = paho.kill();
        let out = paho.wait_with_output().unwrap();
        panic!(
            "no flow of the denied publish; paho: {}{}\nflows: {:#?}\nagent: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            mqtt_flows(&agent)
                .iter()
                .map(|f| f["Summary"].to_string())
                .collect::<Vec<_>>(),
            agent
                .log()
                .lines()
                .rev()
                .take(25)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // A watcher of every topic proves what reaches the broker: the allowed
    // publishes, none of the denied ones.
    let watcher = Command::new(loupe_tests::loupe_bin())
        .args(["lab", "exec", "--lab", "e2e-mqtt", "frontend", "--"])
        .args([
            "mosquitto_sub",
            "-h",
            "db-service",
            "-t",
            "#",
            "-v",
            "-W",
            "6",
            "-i",
            "all-watch",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        seen("SUBSCRIBE", Some("#"), 1),
        "the watcher did not subscribe: {:#?}",
        mqtt_flows(&agent)
    );
    std::thread::sleep(Duration::from_millis(300)); // its SUBACK on the way back
    publish("admin/reboot", "1", "pub-denied"); // answered by the policy's PUBACK
    publish("sensors/a", "1", "pub-a");
    publish("sensors/b", "1", "pub-b");
    let out = paho.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "paho subscriber: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ready\nsensors/a sensors/b\n"
    );
    let watched = watcher.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&watched.stdout),
        "sensors/a 21\nsensors/b 21\n",
        "what reached the broker"
    );
    let flows = mqtt_flows(&agent);
    let dropped = |s: &str| {
        (
            String::from("REQUEST"),
            s.to_string(),
            "db-service".to_string(),
            "DROPPED".to_string(),
        )
    };
    assert_eq!(
        packets(&flows, "PUBLISH", Some("admin/shutdown")),
        [dropped("api-service")]
    );
    assert_eq!(
        packets(&flows, "PUBLISH", Some("admin/reboot")),
        [dropped("frontend")]
    );
    // Enforced connections report the broker's side too: its deliveries to the
    // subscriber (requests it makes) and the subscriber's PUBACKs.
    let deliveries = packets(&flows, "PUBLISH", Some("sensors/a"));
    assert!(
        deliveries.contains(&row("REQUEST", "db-service", "api-service")),
        "{deliveries:?}"
    );
    // One from the watcher before the policy, two from paho under it.
    let pubacks = packets(&flows, "PUBACK", None);
    let acked = row("RESPONSE", "api-service", "db-service");
    assert_eq!(
        pubacks.iter().filter(|p| **p == acked).count(),
        3,
        "{pubacks:?}"
    );
    // Each paired with the delivery it acknowledges: it carries the latency.
    let latencies: Vec<u64> = flows
        .iter()
        .filter(|f| fields(f)["packet-type"] == "PUBACK" && pod(f, "source") == "api-service")
        .map(l7_latency_ns)
        .collect();
    assert!(
        latencies.len() == 3 && latencies.iter().all(|l| *l > 0),
        "{latencies:?}"
    );
    drop(broker);
}
