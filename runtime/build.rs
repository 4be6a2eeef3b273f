//! Generates the gRPC code from `proto/`, and builds the eBPF datapath (`ebpf/`)
//! with the pinned nightly so the runtime can embed it.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    compile_protos()?;
    build_datapath()
}

/// Loupe's `.proto` files: the Hubble-compatible API and Loupe's own control API.
fn compile_protos() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context("vendored protoc")?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    tonic_prost_build::configure()
        // The descriptors let the CLI print flows in the canonical protobuf JSON
        // mapping (including `Any` extensions) without hand-written serializers.
        .file_descriptor_set_path(out_dir.join("loupe_descriptor.bin"))
        .compile_protos(
            &[
                "proto/loupe/daemon/v1/daemon.proto",
                "proto/loupe/policy/v1/policy.proto",
                "proto/flow/flow.proto",
                "proto/relay/relay.proto",
                "proto/observer/observer.proto",
                "proto/peer/peer.proto",
                "proto/loupe/flow/v1/extension.proto",
                "proto/loupe/plugin/v1/plugin.proto",
            ],
            &["proto"],
        )
        .context("compiling protos")?;
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
