//! The policies in force, persisted so a restarted agent enforces exactly what the
//! previous one did (as Kubernetes keeps them in its API server).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Policy, PolicyError, parse_policies};

/// Policies by `namespace/name`.
#[derive(Debug, Default, Clone)]
pub struct PolicyRepository {
    policies: BTreeMap<String, Policy>,
    dir: Option<PathBuf>,
    revision: u64,
}

/// Persisting a policy failed.
#[derive(Debug, thiserror::Error)]
#[error("policy store {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    source: std::io::Error,
}

impl PolicyRepository {
    /// An in-memory repository.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Opens the store under `dir`, loading what was applied before. Documents that
    /// no longer parse (an upgrade changed a rule) are returned, not loaded.
    pub fn open(dir: &Path) -> (Self, Vec<PolicyError>) {
        let mut repo = Self {
            dir: Some(dir.to_path_buf()),
            ..Self::default()
        };
        let mut errors = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => match parse_policies(&file.display().to_string(), &text) {
                    Ok(policies) => {
                        for p in policies {
                            repo.policies.insert(p.key(), p);
                        }
                    }
                    Err(e) => errors.push(e),
                },
                Err(e) => errors.push(PolicyError {
                    source_name: file.display().to_string(),
                    document: 0,
                    name: String::new(),
                    field: "(file)".into(),
                    message: e.to_string(),
                }),
            }
        }
        (repo, errors)
    }

    /// The policies, by key.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// A copy of the policies.
    pub fn to_vec(&self) -> Vec<Policy> {
        self.policies.values().cloned().collect()
    }

    /// Bumped on every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The policies as they would be with `new` applied (same keys replaced).
    pub fn with_applied(&self, new: &[Policy]) -> Vec<Policy> {
        let mut next = self.policies.clone();
        for p in new {
            next.insert(p.key(), p.clone());
        }
        next.into_values().collect()
    }

    /// The policies as they would be without `keys`; also which keys do not exist.
    pub fn with_deleted(&self, keys: &[String]) -> (Vec<Policy>, Vec<String>) {
        let missing = keys
            .iter()
            .filter(|k| !self.policies.contains_key(*k))
            .cloned()
            .collect();
        let next = self
            .policies
            .iter()
            .filter(|(k, _)| !keys.contains(k))
            .map(|(_, p)| p.clone())
            .collect();
        (next, missing)
    }

    /// Commits a new set of policies (after the datapath accepted it) and persists it.
    pub fn commit(&mut self, policies: Vec<Policy>) -> Result<(), StoreError> {
        let next: BTreeMap<String, Policy> = policies.into_iter().map(|p| (p.key(), p)).collect();
        if let Some(dir) = &self.dir {
            let err = |path: PathBuf, source| StoreError { path, source };
            std::fs::create_dir_all(dir).map_err(|e| err(dir.clone(), e))?;
            for (key, policy) in &next {
                if self.policies.get(key).map(|p| &p.document) == Some(&policy.document) {
                    continue;
                }
                let path = dir.join(file_name(key));
                let tmp = path.with_extension("yaml.tmp");
                std::fs::write(&tmp, &policy.document).map_err(|e| err(tmp.clone(), e))?;
                std::fs::rename(&tmp, &path).map_err(|e| err(path.clone(), e))?;
            }
            for key in self.policies.keys().filter(|k| !next.contains_key(*k)) {
                let path = dir.join(file_name(key));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(err(path, e)),
                }
            }
        }
        self.policies = next;
        self.revision += 1;
        Ok(())
    }
}

/// `namespace/name` as a file name (names are DNS labels/subdomains: no `/`).
fn file_name(key: &str) -> String {
    format!("{}.yaml", key.replace('/', "__"))
}
