//! Builds the WebAssembly guests the tests and benches load — the plugins under
//! `plugins/` and the hostile ones under `tests/plugins/hostile/` — as
//! `wasm32-wasip2` components, with their own cargo invocation and target
//! directory (as `runtime/build.rs` builds the eBPF crate), so a plain
//! `cargo test` needs no special flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Guests that are `no_std` and zero-import (built together).
const ZERO_IMPORT: &[&str] = &[
    "loupe-plugin-memcached",
    "loupe-plugin-mqtt",
    "loupe-plugin-redis",
    "loupe-plugin-http",
    "loupe-plugin-kafka",
    "loupe-hostile-misbehave",
    "loupe-hostile-old-wit",
];
/// Guests that link `std`: built apart, so the SDK's `std` feature does not reach
/// the others through feature unification.
const WITH_STD: &[&str] = &["loupe-hostile-imports-wasi"];
/// The memcached parser exported through contract 0.1: built apart, in its own
/// target directory, because it links the memcached crate without its (0.2)
/// export — and cargo would put that export-less build of the memcached
/// component where the real one goes.
const CONTRACT_0_1: &[&str] = &["loupe-contract-0-1-memcached"];

include!("outer_cargo_env.rs");

fn main() -> anyhow::Result<()> {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("tests/ has a parent")?
        .to_path_buf();
    for dir in [
        "wit",
        "sdk/src",
        "sdk/Cargo.toml",
        "plugins",
        "tests/plugins",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let targets = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = targets.join("wasm-guests");
    build(&root, &target, ZERO_IMPORT)?;
    build(&root, &target, WITH_STD)?;
    let out = target.join("wasm32-wasip2/release");
    let apart = targets.join("wasm-guests-0.1");
    build(&root, &apart, CONTRACT_0_1)?;
    for p in CONTRACT_0_1 {
        let file = format!("{}.wasm", p.replace('-', "_"));
        let from = apart.join("wasm32-wasip2/release").join(&file);
        std::fs::copy(&from, out.join(&file))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    println!("cargo:rustc-env=LOUPE_GUESTS_DIR={}", out.display());
    Ok(())
}

fn build(root: &Path, target: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target);
    for p in packages {
        cmd.args(["-p", p]);
    }
    for var in OUTER_CARGO_ENV {
        cmd.env_remove(var);
    }
    let status = cmd.status().context("running cargo for the wasm guests")?;
    if !status.success() {
        bail!("building {packages:?} for wasm32-wasip2 failed ({status})");
    }
    Ok(())
}
