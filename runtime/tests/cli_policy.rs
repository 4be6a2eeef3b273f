//! `loupe policy` on the command line, without an agent.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn loupe(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loupe"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `validate` takes files as `apply` does (`-f`, kubectl's habit) and as
/// arguments; either way, a bad file is named.
#[test]
fn validate_takes_files_with_or_without_f() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let db = examples.join("db-allow-api-service.yaml");
    let api = examples.join("api-allow-frontend.yaml");
    let (db, api) = (db.to_str().unwrap(), api.to_str().unwrap());
    for args in [
        vec!["policy", "validate", "--offline", "-f", db, "-f", api],
        vec!["policy", "validate", "--offline", db, api],
        vec!["policy", "validate", "--offline", db, "--file", api],
    ] {
        let (ok, out) = loupe(&args);
        assert!(ok, "{args:?}: {out}");
        assert_eq!(out.trim(), "2 policies valid", "{args:?}");
    }
    let (ok, out) = loupe(&["policy", "validate", "--offline"]);
    assert!(!ok, "no files must be refused: {out}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"70000\"}]}]}]}\n",
    )
    .unwrap();
    let (ok, out) = loupe(&[
        "policy",
        "validate",
        "--offline",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("ports[0].port"), "{out}");
}
