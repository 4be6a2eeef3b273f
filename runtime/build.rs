//! Builds what the runtime embeds: the shipped parser plugins (wasm32-wasip2
//! components) and the eBPF datapath (`ebpf/`, with the pinned nightly).

use anyhow::{Context as _, anyhow};

include!("../tests/outer_cargo_env.rs");

fn main() -> anyhow::Result<()> {
    // A cargo-fuzz build (`--cfg fuzzing`) exercises the runtime's parsers only: it
    // embeds empty stand-ins instead of building the guests and the eBPF object
    // under the sanitizer's flags. Such a binary can load no datapath or plugin.
    println!("cargo:rerun-if-env-changed=CARGO_CFG_FUZZING");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        return embed_nothing();
    }
    if std::env::var_os("CARGO_FEATURE_BUNDLED_PLUGINS").is_some() {
        build_plugins()?;
    } else {
        // A library build without the shipped plugins (the SDK's harness, the
        // tests crate): editing `plugins/` then reruns nothing here.
        embed_no_plugins()?;
    }
    build_datapath()
}

/// Empty files where the plugins and the datapath object would be.
fn embed_nothing() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    std::fs::write(out.join("loupe-datapath"), b"")?;
    embed_no_plugins()
}

/// Empty files where the plugins would be.
fn embed_no_plugins() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let plugins = out.join("no-plugins");
    std::fs::create_dir_all(&plugins)?;
    for p in ["memcached", "redis", "http", "kafka"] {
        std::fs::write(plugins.join(format!("loupe_plugin_{p}.wasm")), b"")?;
    }
    println!(
        "cargo:rustc-env=LOUPE_BUNDLED_PLUGINS={}",
        plugins.display()
    );
    Ok(())
}

/// The parser plugins Loupe ships (`plugins/`), built as wasm32-wasip2 components
/// with their own cargo invocation and target directory; the agent embeds them
/// and installs them on first start.
fn build_plugins() -> anyhow::Result<()> {
    let manifest_dir = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?,
    );
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("runtime/ has no parent"))?;
    for dir in ["wit", "sdk/src", "sdk/Cargo.toml", "plugins"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target);
    for p in [
        "loupe-plugin-memcached",
        "loupe-plugin-redis",
        "loupe-plugin-http",
        "loupe-plugin-kafka",
    ] {
        cmd.args(["-p", p]);
    }
    for var in OUTER_CARGO_ENV {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .context("running cargo for the bundled plugins")?;
    if !status.success() {
        anyhow::bail!("building the bundled plugins for wasm32-wasip2 failed ({status})");
    }
    println!(
        "cargo:rustc-env=LOUPE_BUNDLED_PLUGINS={}",
        target.join("wasm32-wasip2/release").display()
    );
    Ok(())
}

fn build_datapath() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("runtime/ has no parent"))?;
    let toolchain_file = root.join("ebpf/toolchain");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let toolchain = toolchain.trim();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "loupe-ebpf")
        .ok_or_else(|| anyhow!("the loupe-ebpf package is not in the workspace"))?;
    let ebpf_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The shared contract changes the object too.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("ebpf/common/src").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "loupe-ebpf",
            root_dir: ebpf_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
}
