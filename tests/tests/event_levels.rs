//! Event levels (`bpf.monitorAggregation`, Cilium's): what `loupe observe` shows
//! of one HTTP connection (frontend → api-service) at each level, and that a
//! connection's policy verdicts and drops are reported at every level.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use loupe_tests::{TestAgent, TestLab, root, serial, tcp_ok, wait_for};

/// What the flows of the frontend → api-service:80 connection were.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    verdicts: usize,
    to_endpoint: usize,
    from_endpoint: usize,
}

fn http_connection(agent: &TestAgent) -> Seen {
    let mut seen = Seen::default();
    for f in agent.observe_json(&["--all", "--port", "80"]) {
        let flow = &f["flow"];
        let pods = [
            flow["source"]["pod_name"].as_str().unwrap_or(""),
            flow["destination"]["pod_name"].as_str().unwrap_or(""),
        ];
        if !pods.iter().any(|p| p.starts_with("frontend-"))
            || !pods.iter().any(|p| p.starts_with("api-service-"))
        {
            continue;
        }
        match (
            flow["event_type"]["type"].as_i64(),
            flow["trace_observation_point"].as_str(),
        ) {
            (Some(5), _) => seen.verdicts += 1,
            (Some(4), Some("TO_ENDPOINT")) => seen.to_endpoint += 1,
            (Some(4), Some("FROM_ENDPOINT")) => seen.from_endpoint += 1,
            other => panic!("unexpected flow {other:?}: {f}"),
        }
    }
    seen
}

#[test]
fn each_level_reports_what_it_says_and_never_hides_verdicts_or_drops() {
    let _guard = serial();
    let lab = TestLab::up("e2e-events", 239).unwrap();
    let db_policy = root()
        .join("examples/policies/db-allow-api-service.yaml")
        .display()
        .to_string();
    let mut seen = Vec::new();
    for level in ["none", "low", "medium"] {
        // The helper's config ends its `bpf:` section with `pinPath`: the level
        // continues it.
        let mut agent = TestAgent::start_with(
            &format!("events-{level}"),
            &format!(
                "  monitorAggregation: {level}\nendpoints:\n  labNames: [{}]\n",
                lab.name
            ),
            "",
            4,
        )
        .unwrap();
        agent
            .loupe_ok(&["policy", "apply", "-f", &db_policy])
            .unwrap();
        // One HTTP connection, closed by the client; one dropped Redis SYN.
        let code = lab
            .http_status("frontend", &[], "http://api-service/get")
            .unwrap();
        assert_eq!(code, "200");
        assert!(!tcp_ok(&lab, "frontend", "db-service", 6379, 1));
        // Both FINs have passed the hooks once the server's side is closed too.
        let settled = wait_for(Duration::from_secs(5), || {
            let s = http_connection(&agent);
            s.verdicts == 2 && s.to_endpoint >= 2
        });
        let at_level = http_connection(&agent);
        assert!(settled, "{level}: {at_level:?}");
        let drops =
            agent.observe_json(&["--verdict", "DROPPED", "--to-pod", "demo-app/db-service"]);
        assert!(
            drops.iter().any(|f| f["flow"]["source"]["pod_name"]
                .as_str()
                .is_some_and(|p| p.starts_with("frontend-"))),
            "{level}: the drop is reported: {drops:?}"
        );
        agent
            .loupe_ok(&["policy", "delete", "-f", &db_policy])
            .unwrap();
        agent.stop();
        seen.push((level, at_level));
    }
    eprintln!("event levels: {seen:?}");
    let [(_, none), (_, low), (_, medium)] = &seen[..] else {
        unreachable!()
    };
    // Every level: the connection's two policy verdicts (egress at frontend,
    // ingress at api-service).
    for (level, s) in &seen {
        assert_eq!(s.verdicts, 2, "{level}: {s:?}");
    }
    // none: every packet at both hooks.
    assert!(none.from_endpoint >= 4, "none: {none:?}");
    assert!(none.to_endpoint >= 4, "none: {none:?}");
    // low: every packet into a pod, none out of one.
    assert_eq!(low.from_endpoint, 0, "low: {low:?}");
    assert!(low.to_endpoint >= 4, "low: {low:?}");
    // medium (the default): into a pod, the first reply (SYN-ACK into frontend)
    // and each side's FIN; nothing out of a pod.
    assert_eq!(medium.from_endpoint, 0, "medium: {medium:?}");
    assert!((3..=4).contains(&medium.to_endpoint), "medium: {medium:?}");
    assert!(medium.to_endpoint < low.to_endpoint, "{seen:?}");
}
