//! `loupe plugin new`: a plugin crate made outside the repository passes its own
//! native tests, builds as a component with plain cargo, and installs into a
//! running agent with the schema it declares.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use loupe_tests::{OUTER_CARGO_ENV, TestAgent, loupe_ok, root, scratch_dir};

/// `cargo ARGS` in `dir`, with the outer cargo's build settings removed and a
/// target directory kept between runs.
fn cargo(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir).args(args);
    for var in OUTER_CARGO_ENV {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_TARGET_DIR", root().join("target/plugin-template"));
    let out = cmd.output().expect("running cargo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cargo {args:?} in {}:\n{text}",
        dir.display()
    );
    text
}

#[test]
fn a_new_plugin_builds_tests_and_installs() {
    let dir = scratch_dir("plugin-new");
    let made = loupe_ok(&["plugin", "new", "demo-line", "--dir", dir.to_str().unwrap()]).unwrap();
    assert!(made.contains("created"), "{made}");
    let krate = dir.join("loupe-plugin-demo-line");

    let tests = cargo(&krate, &["test"]);
    assert!(
        tests.contains("test result: ok. 3 passed"),
        "the skeleton's native tests: {tests}"
    );
    cargo(&krate, &["build", "--release", "--target", "wasm32-wasip2"]);
    let wasm =
        root().join("target/plugin-template/wasm32-wasip2/release/loupe_plugin_demo_line.wasm");
    assert!(wasm.is_file(), "{}", wasm.display());

    let agent = TestAgent::start_with("plugin-new", "endpoints:\n  lab: false\n", "", 0).unwrap();
    let installed = agent
        .loupe_ok(&[
            "plugin",
            "install",
            wasm.to_str().unwrap(),
            "--ports",
            "7000",
        ])
        .unwrap();
    assert!(
        installed.contains("installed demo-line 0.1.0 (demo-line) on ports 7000"),
        "{installed}"
    );
    let schema = agent.loupe_ok(&["plugin", "inspect", "demo-line"]).unwrap();
    for field in ["command", "argument", "status", "error"] {
        assert!(schema.contains(field), "{field} in {schema}");
    }
    // A second `new` into the same place writes nothing.
    let out = loupe_tests::loupe(&["plugin", "new", "demo-line", "--dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
}
