//! The plugin directory: `<name>.wasm` and `<name>.json` (its manifest) per
//! installed plugin, and `cache/` for precompiled code. Every access goes through a
//! `cap-std` directory handle, so no name — whatever it contains — reaches a file
//! outside it; names are also checked up front for a clear error.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use super::cache::Cache;
use super::error::InstallError;
use super::info::is_identifier;

/// What is recorded about an installed plugin next to its component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    /// Installed name.
    pub name: String,
    /// Hex SHA-256 of `<name>.wasm`.
    pub sha256: String,
    /// Ports it is attached to.
    pub ports: Vec<u16>,
}

/// The plugin directory.
#[derive(Debug)]
pub struct PluginDir {
    path: PathBuf,
    dir: Dir,
}

impl PluginDir {
    /// Opens (creating if needed, mode 0700) the directory at `path`.
    pub fn open(path: &Path) -> Result<Self, InstallError> {
        let err = |source| InstallError::Directory {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(path).map_err(err)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        let dir = Dir::open_ambient_dir(path, ambient_authority()).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The precompiled-code cache inside it.
    pub fn cache(&self) -> Result<Cache, InstallError> {
        self.dir
            .create_dir_all("cache")
            .and_then(|()| self.dir.open_dir("cache"))
            .map(Cache::new)
            .map_err(|source| self.error("cache", source))
    }

    /// Stores a plugin's component and manifest (atomically each).
    pub fn write(&self, manifest: &Manifest, wasm: &[u8]) -> Result<(), InstallError> {
        check_name(&manifest.name)?;
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| self.error(&manifest.name, std::io::Error::other(e)))?;
        self.write_file(&format!("{}.wasm", manifest.name), wasm)?;
        self.write_file(&format!("{}.json", manifest.name), &json)
    }

    /// Reads a plugin's component.
    pub fn read_wasm(&self, name: &str) -> Result<Vec<u8>, InstallError> {
        check_name(name)?;
        let file = format!("{name}.wasm");
        self.dir.read(&file).map_err(|e| self.error(&file, e))
    }

    /// Every manifest in the directory (unreadable ones are skipped, with a warning).
    pub fn manifests(&self) -> Result<Vec<Manifest>, InstallError> {
        let mut out = Vec::new();
        for entry in self.dir.entries().map_err(|e| self.error(".", e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !is_identifier(name) {
                continue;
            }
            let parsed = self
                .dir
                .read(format!("{name}.json"))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(m) if m.name == name => out.push(m),
                Ok(_) => tracing::warn!(plugin = name, "manifest names another plugin; skipped"),
                Err(error) => tracing::warn!(plugin = name, %error, "unreadable manifest; skipped"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a plugin's files.
    pub fn remove(&self, name: &str) -> Result<(), InstallError> {
        check_name(name)?;
        for file in [format!("{name}.json"), format!("{name}.wasm")] {
            match self.dir.remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.error(&file, e)),
            }
        }
        Ok(())
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), InstallError> {
        let tmp = format!(".{name}.tmp");
        let result = (|| {
            let mut file = self.dir.create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            self.dir.rename(&tmp, &self.dir, name)
        })();
        result.map_err(|e| self.error(name, e))
    }

    fn error(&self, file: &str, source: std::io::Error) -> InstallError {
        InstallError::Directory {
            path: self.path.join(file).display().to_string(),
            source,
        }
    }
}

/// Refuses names that are not plain identifiers (`../x`, `a/b`, `.hidden`, …).
pub fn check_name(name: &str) -> Result<(), InstallError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(InstallError::InvalidName(name.to_string()))
    }
}
