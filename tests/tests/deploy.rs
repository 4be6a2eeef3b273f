//! Loupe's Kubernetes manifests, checked offline (no API server can run here):
//! the Helm chart rendered by Helm's own engine (`scripts/render-deploy`, the
//! helm-python-sdk wheel), `deploy/kubernetes` equal to the chart's defaults and
//! built by `kubectl kustomize`, every object validated against the Kubernetes
//! OpenAPI schemas (`kubernetes-validate --strict`, on the oldest and newest
//! Kubernetes the chart supports), the article's values turned into an agent
//! config the agent itself accepts, the DaemonSet's capabilities equal to what
//! the agent keeps, and the article's policies valid against the shipped CRDs.
// Integration tests: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use clap::Parser as _;
use loupe_runtime::agent::privileges::kept_names;
use loupe_runtime::cli::{Cli, Command as LoupeCommand};
use loupe_runtime::config::{AgentConfig, PolicyEnforcementMode};
use loupe_tests::{python, root, scratch_dir, write_file};
use serde_json::Value;

/// The Kubernetes versions the chart supports, oldest and newest.
const KUBERNETES: [&str; 2] = ["1.30.0", "1.37.0"];

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/bootstrap installs it)"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn render(values: &[&str], out: &Path) -> Output {
    let mut cmd = Command::new(root().join("scripts/render-deploy"));
    cmd.arg("--out").arg(out);
    for v in values {
        cmd.arg("-f").arg(v);
    }
    run(&mut cmd)
}

/// `kubernetes-validate --strict` on every supported version; the output.
fn validate(file: &Path) -> Result<String, String> {
    let venv = Path::new(&python()).parent().unwrap().to_path_buf();
    let mut all = String::new();
    for version in KUBERNETES {
        let out = run(Command::new(venv.join("kubernetes-validate"))
            .args(["--strict", "--no-warn", "-k", version])
            .arg(file));
        all.push_str(&text(&out));
        if !out.status.success() {
            return Err(all);
        }
    }
    Ok(all)
}

fn objects(file: &Path) -> Value {
    let out = run(Command::new(python())
        .arg(root().join("tests/clients/deploy_check.py"))
        .arg("objects")
        .arg(file));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn deploy_kubernetes_is_the_chart_rendered_and_valid() {
    let check = run(Command::new(root().join("scripts/render-deploy")).arg("--check"));
    assert!(check.status.success(), "{}", text(&check));

    let dir = scratch_dir("deploy-kustomize");
    for (name, kustomization) in [
        ("loupe.yaml", "deploy/kubernetes"),
        ("cilium-crds.yaml", "deploy/kubernetes/cilium-crds"),
    ] {
        let built = run(Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join(kustomization)));
        assert!(built.status.success(), "{}", text(&built));
        let file = dir.join(name);
        std::fs::write(&file, &built.stdout).unwrap();
        let report = validate(&file).unwrap_or_else(|e| panic!("{kustomization}: {e}"));
        // Every object was checked (nothing skipped as unknown).
        let objects = String::from_utf8_lossy(&built.stdout)
            .lines()
            .filter(|l| l.starts_with("kind: "))
            .count();
        assert_eq!(
            report.matches(" passed for resource ").count(),
            objects * KUBERNETES.len(),
            "{report}"
        );
    }
    let listed = objects(&dir.join("loupe.yaml"));
    assert_eq!(
        listed["objects"],
        serde_json::json!([
            "CustomResourceDefinition/loupeclusterwidenetworkpolicies.loupe.dev",
            "CustomResourceDefinition/loupeidentities.loupe.dev",
            "CustomResourceDefinition/loupenetworkpolicies.loupe.dev",
            "ServiceAccount/loupe",
            "ClusterRole/loupe",
            "ClusterRoleBinding/loupe",
            "ConfigMap/loupe-config",
            "Service/hubble-peer",
            "Service/loupe-agent",
            "DaemonSet/loupe",
        ]),
    );

    // The validator does reject what the API server would: a misspelt field.
    let broken = std::fs::read_to_string(dir.join("loupe.yaml"))
        .unwrap()
        .replace("hostNetwork: true", "hostNetwrk: true");
    let broken = write_file(&dir, "broken.yaml", &broken);
    let refused = validate(Path::new(&broken)).unwrap_err();
    assert!(refused.contains("'hostNetwrk' was unexpected"), "{refused}");
}

#[test]
fn the_articles_values_become_a_config_the_agent_accepts() {
    let dir = scratch_dir("deploy-article");
    let article = root().join("examples/helm/article-values.yaml");
    let out = render(&[article.to_str().unwrap()], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let manifest = dir.join("loupe.yaml");
    let rendered = objects(&manifest);
    let kinds = rendered["objects"].to_string();
    // Flow metrics get their Service; the Operator's ServiceMonitors are asked for.
    for object in [
        "Service/hubble-metrics",
        "ServiceMonitor/loupe-agent",
        "ServiceMonitor/hubble",
        "Deployment/hubble-relay",
        "Service/hubble-relay",
    ] {
        assert!(kinds.contains(object), "{kinds}");
    }
    // ServiceMonitor is the Operator's CRD: validate what Kubernetes itself knows.
    let core: String = std::fs::read_to_string(&manifest)
        .unwrap()
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: ServiceMonitor"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    let core = write_file(&dir, "core.yaml", &core);
    validate(Path::new(&core)).unwrap();

    let config_text = rendered["config"].as_str().unwrap();
    let config = AgentConfig::parse(Path::new("loupe-config/loupe.yaml"), config_text)
        .unwrap_or_else(|e| panic!("{e}\n{config_text}"));
    assert_eq!(
        config.policy_enforcement_mode,
        PolicyEnforcementMode::Always
    );
    assert_eq!(config.bpf.ct_global_tcp_max, 2_000_000);
    assert!(config.l7.http_protocol && config.prometheus.enabled);
    assert!(config.endpoints.kubernetes && !config.endpoints.lab);
    assert_eq!(config.health_port, 9879);
    assert_eq!(config.hubble.listen_address, ":4244");
    assert_eq!(
        config.hubble.metrics.enabled,
        [
            "dns",
            "drop",
            "tcp",
            "flow",
            "port-distribution",
            "icmp",
            "httpV2:exemplar=true;labels=source_ip,source_namespace,source_pod,destination_ip,\
             destination_namespace,destination_pod,traffic_direction,http_method,http_path,\
             http_status_code"
        ]
    );

    // The DaemonSet grants exactly what the agent keeps with this config.
    let mut kept: Vec<String> = kept_names(&config)
        .iter()
        .map(|c| c.trim_start_matches("cap_").to_ascii_uppercase())
        .collect();
    let mut granted: Vec<String> = rendered["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    kept.sort();
    granted.sort();
    assert_eq!(granted, kept);

    // The relay's command is one `loupe relay` accepts, asking the node-local
    // peer Service of the release's namespace.
    let relay: Vec<String> = rendered["relay"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        relay.contains(&"--peer-service=hubble-peer.kube-system.svc.cluster.local:80".to_string()),
        "{relay:?}"
    );
    let argv: Vec<&str> = std::iter::once("loupe")
        .chain(relay.iter().skip(1).map(String::as_str))
        .collect();
    let parsed = Cli::try_parse_from(argv);
    assert!(
        matches!(
            parsed.as_ref().map(|c| &c.command),
            Ok(LoupeCommand::Relay(_))
        ),
        "{relay:?}: {:?}",
        parsed.err()
    );

    // Any installed plugin's protocol observed everywhere.
    let protocols = write_file(&dir, "protocols.yaml", "l7Protocols: [mqtt, memcached]\n");
    let out = render(
        &[article.to_str().unwrap(), &protocols],
        &dir.join("protocols"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let rendered = objects(&dir.join("protocols/loupe.yaml"));
    let config_text = rendered["config"].as_str().unwrap();
    let config = AgentConfig::parse(Path::new("loupe-config/loupe.yaml"), config_text)
        .unwrap_or_else(|e| panic!("{e}\n{config_text}"));
    assert_eq!(config.l7.global_protocols(), ["http", "mqtt", "memcached"]);

    // What the chart cannot do is refused by name, not rendered wrong.
    let grpc = write_file(&dir, "grpc.yaml", "grpcProtocol: true\n");
    let out = render(&[article.to_str().unwrap(), &grpc], &dir.join("grpc"));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("grpcProtocol: Loupe has no gRPC parser yet"),
        "{}",
        text(&out)
    );
    // Mutual TLS between the relay and the agents needs the relay's certificate.
    let tls = write_file(
        &dir,
        "tls.yaml",
        "hubble:\n  tls:\n    enabled: true\n    existingSecret: hubble-server-certs\n  relay:\n    enabled: true\n",
    );
    let out = render(&[&tls], &dir.join("tls"));
    assert!(
        text(&out).contains("hubble.relay.tls.client.existingSecret"),
        "{}",
        text(&out)
    );
    let client = write_file(
        &dir,
        "client.yaml",
        "hubble:\n  relay:\n    tls:\n      client:\n        existingSecret: hubble-relay-client-certs\n",
    );
    let out = render(&[&tls, &client], &dir.join("mtls"));
    assert!(out.status.success(), "{}", text(&out));
    let mtls = dir.join("mtls/loupe.yaml");
    validate(&mtls).unwrap();
    let relay = objects(&mtls)["relay"].to_string();
    for flag in [
        "--peer-service=hubble-peer.kube-system.svc.cluster.local:443",
        "--tls-hubble-server-ca-files=/var/lib/loupe/tls/ca.crt",
        "--tls-client-cert-file=/var/lib/loupe/relay-client/tls.crt",
    ] {
        assert!(relay.contains(flag), "{relay}");
    }
    let mode = write_file(&dir, "mode.yaml", "policyEnforcementMode: strict\n");
    let out = render(&[&mode], &dir.join("mode"));
    assert!(
        text(&out).contains("policyEnforcementMode: \"strict\" is not default, always or never"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_articles_policies_fit_the_shipped_crds() {
    let policies: Vec<String> = std::fs::read_dir(root().join("examples/policies"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    assert!(policies.len() >= 3, "{policies:?}");
    for (crd, kind) in [
        (
            "deploy/kubernetes/crds/loupenetworkpolicies.yaml",
            "LoupeNetworkPolicy",
        ),
        (
            "deploy/kubernetes/cilium-crds/ciliumnetworkpolicies.yaml",
            "CiliumNetworkPolicy",
        ),
    ] {
        let out = run(Command::new(python())
            .arg(root().join("tests/clients/deploy_check.py"))
            .arg("policies")
            .arg(root().join(crd))
            .arg(kind)
            .args(&policies));
        assert!(out.status.success(), "{crd}: {}", text(&out));
        assert_eq!(
            text(&out).lines().filter(|l| l.starts_with("ok ")).count(),
            policies.len(),
            "{}",
            text(&out)
        );
    }
    // A document the schema cannot take is refused.
    let dir = scratch_dir("deploy-crd");
    let bad = write_file(
        &dir,
        "bad.yaml",
        "apiVersion: loupe.dev/v1\nkind: LoupeNetworkPolicy\nmetadata: {name: bad}\nspec: [1]\n",
    );
    let out = run(Command::new(python())
        .arg(root().join("tests/clients/deploy_check.py"))
        .arg("policies")
        .arg(root().join("deploy/kubernetes/crds/loupenetworkpolicies.yaml"))
        .arg("LoupeNetworkPolicy")
        .arg(&bad));
    assert!(!out.status.success(), "{}", text(&out));
}
