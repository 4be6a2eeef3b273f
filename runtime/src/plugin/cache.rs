//! Precompiled plugins (`.cwasm`), keyed by the component's SHA-256 and the
//! engine's compatibility hash: compiling costs ~40 ms, loading ~0.1 ms, and a
//! file compiled by another wasmtime version or configuration is never loaded.

use std::io::Write as _;

use cap_std::fs::Dir;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::InstallError;

/// A hex key identifying `engine`'s code format: a precompiled plugin only loads
/// into an engine with the same key.
pub fn compatibility_key(engine: &Engine) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// A directory of precompiled components, reached only through its handle.
#[derive(Debug)]
pub struct Cache {
    dir: Dir,
}

impl Cache {
    /// A cache in `dir` (opened by the caller, e.g. `<plugins>/cache`).
    pub fn new(dir: Dir) -> Self {
        Self { dir }
    }

    /// The compiled component for `bytes` (hex SHA-256 `sha256`): from the cache,
    /// or compiled and stored.
    pub(crate) fn component(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<Component, InstallError> {
        let name = format!("{sha256}-{}.cwasm", compatibility_key(engine));
        if let Ok(compiled) = self.dir.read(&name) {
            // SAFETY: the file is one this host wrote (below) into its own plugin
            // directory, under a name binding it to these exact component bytes and
            // this engine's configuration; wasmtime still checks its header.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => return Ok(component),
                Err(err) => {
                    tracing::warn!(file = %name, error = %format!("{err:#}"), "discarding unusable precompiled plugin");
                    let _ = self.dir.remove_file(&name);
                }
            }
        }
        let component =
            Component::new(engine, bytes).map_err(|e| InstallError::Corrupt(format!("{e:#}")))?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(err) = self.store(&name, &compiled) {
                    tracing::warn!(file = %name, error = %err, "cannot cache precompiled plugin");
                }
            }
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "cannot serialize plugin"),
        }
        Ok(component)
    }

    /// Precompiled files present.
    pub fn entries(&self) -> usize {
        self.dir
            .entries()
            .map(|e| e.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    }

    fn store(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = format!(".{name}.tmp");
        let mut file = self.dir.create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        self.dir.rename(&tmp, &self.dir, name)
    }
}
