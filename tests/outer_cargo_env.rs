/// What an outer cargo sets for its own build that must not leak into a cargo it
/// runs (clippy as a wrapper, host rustflags, the build script's own target and
/// target directory). Shared by `tests/build.rs`, `runtime/build.rs` and the
/// tests that run cargo (`include!`d: build scripts cannot share a crate).
pub const OUTER_CARGO_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_PRIMARY_PACKAGE",
];
