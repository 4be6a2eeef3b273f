//! Generates the protobuf and gRPC code from `proto/`, and the descriptor set
//! used for protobuf JSON and field masks.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context("vendored protoc")?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    tonic_prost_build::configure()
        // The descriptors let the CLI print flows in protobuf's JSON
        // mapping (including `Any` extensions) without hand-written serializers,
        // and the Observer check field masks.
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
