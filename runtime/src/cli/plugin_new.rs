//! `loupe plugin new NAME`: a plugin crate of one's own, from `sdk/template/`
//! (embedded in the binary), with the names and paths filled in.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The template's files: path (with `__NAME__` for the protocol name) and text.
const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../sdk/template/Cargo.toml"),
    ),
    (
        "rust-toolchain.toml",
        include_str!("../../../sdk/template/rust-toolchain.toml"),
    ),
    (
        ".gitignore",
        include_str!("../../../sdk/template/.gitignore"),
    ),
    ("README.md", include_str!("../../../sdk/template/README.md")),
    (
        "src/lib.rs",
        include_str!("../../../sdk/template/src/lib.rs"),
    ),
    (
        "tests/harness.rs",
        include_str!("../../../sdk/template/tests/harness.rs"),
    ),
    (
        "fuzz/Cargo.toml",
        include_str!("../../../sdk/template/fuzz/Cargo.toml"),
    ),
    (
        "fuzz/fuzz_targets/__NAME__.rs",
        include_str!("../../../sdk/template/fuzz/fuzz_targets/__NAME__.rs"),
    ),
];

/// The nightly Loupe pins for sanitizer builds (cargo-fuzz) and the eBPF object.
const FUZZ_TOOLCHAIN: &str = include_str!("../../../ebpf/toolchain");
/// The workspace's pinned toolchain (`rust-toolchain.toml`'s channel).
const WORKSPACE_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// Creates `dir/loupe-plugin-NAME`; returns its path. Refuses a bad name, a
/// missing SDK and an existing directory (nothing is overwritten).
pub(super) fn create(name: &str, dir: &Path, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    let valid = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        anyhow::bail!(
            "plugin name {name:?}: use [a-z][a-z0-9-]* (at most 40 characters, no trailing -)"
        );
    }
    let source_sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let sdk = sdk.map_or(source_sdk, Path::to_path_buf);
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "Loupe's SDK at {}: give --sdk <Loupe's sdk/ directory>",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        anyhow::bail!(
            "{} is not Loupe's sdk/ directory (no Cargo.toml)",
            sdk.display()
        );
    }
    let fuzz = sdk.join("../fuzz");
    let crate_name = format!("loupe-plugin-{name}");
    let out = dir.join(&crate_name);
    if out.exists() {
        anyhow::bail!("{} exists already: nothing was written", out.display());
    }
    let toolchain = WORKSPACE_TOOLCHAIN
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|c| c.trim_matches('"'))
        .unwrap_or("stable");
    let fill = |text: &str| {
        text.replace("__CRATE__", &crate_name)
            .replace("__LIB__", &crate_name.replace('-', "_"))
            .replace("__TYPE__", &type_name(name))
            .replace("__NAME__", name)
            .replace("__SDK__", &sdk.display().to_string())
            .replace("__FUZZ__", &fuzz.display().to_string())
            .replace("__TOOLCHAIN__", toolchain)
            .replace("__NIGHTLY__", FUZZ_TOOLCHAIN.trim())
    };
    for (path, text) in TEMPLATE {
        let file = out.join(fill(path));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&file, fill(text)).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(out)
}

/// `demo-line` → `DemoLine`.
fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_refusals() {
        assert_eq!(type_name("demo-line"), "DemoLine");
        assert_eq!(type_name("mqtt5"), "Mqtt5");
        let dir = tempfile::tempdir().unwrap();
        for bad in ["Demo", "1x", "a_b", "x-", "../x", ""] {
            let e = create(bad, dir.path(), None).unwrap_err().to_string();
            assert!(e.contains("use [a-z][a-z0-9-]*"), "{bad}: {e}");
        }
        let e = create("x", dir.path(), Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not Loupe's sdk/ directory"), "{e}");
        let made = create("demo-line", dir.path(), None).unwrap();
        let lib = std::fs::read_to_string(made.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("pub struct DemoLine;") && !lib.contains("__"),
            "{lib}"
        );
        assert!(made.join("fuzz/fuzz_targets/demo-line.rs").is_file());
        let e = create("demo-line", dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exists already"), "{e}");
    }
}
