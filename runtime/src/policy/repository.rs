//! The policies in force, persisted so a restarted agent enforces exactly what the
//! previous one did (as Kubernetes keeps them in its API server).
//!
//! The whole set lives in one file, `policies.json` (revision + every document),
//! replaced atomically: written to a temporary file, flushed to disk, renamed over
//! the old one, and the directory flushed. A crash at any point leaves exactly
//! the old set or exactly the new one — never part of an all-or-none apply.
//! (The datapath is written before the file: after a crash in between, the
//! restarted agent reconciles the kernel back to the set on disk.)
//!
//! A directory from an older release (one `<namespace>__<name>.yaml` per policy)
//! is read once and replaced by `policies.json` on the next change.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Policy, PolicyError, parse_policies};

/// The set's file in the store directory.
const MANIFEST: &str = "policies.json";

/// Policies by `namespace/name`.
#[derive(Debug, Default, Clone)]
pub struct PolicyRepository {
    policies: BTreeMap<String, Policy>,
    dir: Option<PathBuf>,
    revision: u64,
    /// Per-policy files of an older layout, removed once the manifest is written.
    legacy: Vec<PathBuf>,
}

/// Persisting the policy set failed.
#[derive(Debug, thiserror::Error)]
#[error("policy store {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    source: std::io::Error,
}

/// `policies.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    revision: u64,
    policies: Vec<StoredPolicy>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredPolicy {
    /// Where it was applied from.
    source: String,
    /// The document as applied.
    document: String,
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
        let file_error = |path: &Path, message: String| PolicyError {
            source_name: path.display().to_string(),
            document: 0,
            name: String::new(),
            field: "(file)".into(),
            message,
        };
        let manifest_path = dir.join(MANIFEST);
        let entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        // Leftovers of a write a crash interrupted: never part of the set.
        for tmp in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        {
            let _ = std::fs::remove_file(tmp);
        }
        repo.legacy = entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .cloned()
            .collect();
        repo.legacy.sort();
        match std::fs::read(&manifest_path) {
            Ok(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(manifest) => {
                    repo.revision = manifest.revision;
                    for stored in manifest.policies {
                        match parse_policies(&stored.source, &stored.document) {
                            Ok(policies) => {
                                for p in policies {
                                    repo.policies.insert(p.key(), p);
                                }
                            }
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => errors.push(file_error(&manifest_path, e.to_string())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The older layout: one file per policy.
                for file in &repo.legacy {
                    match std::fs::read_to_string(file) {
                        Ok(text) => match parse_policies(&file.display().to_string(), &text) {
                            Ok(policies) => {
                                for p in policies {
                                    repo.policies.insert(p.key(), p);
                                }
                            }
                            Err(e) => errors.push(e),
                        },
                        Err(e) => errors.push(file_error(file, e.to_string())),
                    }
                }
            }
            Err(e) => errors.push(file_error(&manifest_path, e.to_string())),
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

    /// Bumped on every change; kept across restarts.
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

    /// The policies as they would be with every policy read from `source`
    /// replaced by `new` (a source's full listing, as a watch relists it); `new`
    /// also replaces policies of other sources with the same key.
    pub fn with_source(&self, source: &str, new: &[Policy]) -> Vec<Policy> {
        let mut next: BTreeMap<String, Policy> = self
            .policies
            .iter()
            .filter(|(_, p)| p.source != source)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
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

    /// Commits a new set of policies (after the datapath accepted it) and persists
    /// it in one atomic, durable replacement of the set's file.
    pub fn commit(&mut self, policies: Vec<Policy>) -> Result<(), StoreError> {
        let next: BTreeMap<String, Policy> = policies.into_iter().map(|p| (p.key(), p)).collect();
        let revision = self.revision + 1;
        if let Some(dir) = &self.dir {
            let manifest = Manifest {
                revision,
                policies: next
                    .values()
                    .map(|p| StoredPolicy {
                        source: p.source.clone(),
                        document: p.document.clone(),
                    })
                    .collect(),
            };
            write_atomically(dir, MANIFEST, &manifest)?;
            for old in std::mem::take(&mut self.legacy) {
                let _ = std::fs::remove_file(old);
            }
        }
        self.policies = next;
        self.revision = revision;
        Ok(())
    }
}

/// Replaces `dir/name` by `value` as JSON: a temporary file flushed to disk,
/// renamed over the old one, then the directory flushed.
fn write_atomically(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), StoreError> {
    let err = |path: &Path, source| StoreError {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = serde_json::to_vec(value).map_err(|e| err(&path, std::io::Error::other(e)))?;
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(&tmp, e));
    }
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress: [{fromEndpoints: [{matchLabels: {app: api-service}}]}]
"#;

    fn policies(text: &str) -> Vec<Policy> {
        parse_policies("test.yaml", text).unwrap()
    }

    #[test]
    fn the_set_and_its_revision_survive_a_restart_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, errors) = PolicyRepository::open(dir.path());
        assert!(errors.is_empty());
        let b = A.replace("name: a,", "name: b,");
        repo.commit(repo.with_applied(&policies(A))).unwrap();
        repo.commit(repo.with_applied(&policies(&b))).unwrap();
        let (deleted, missing) = repo.with_deleted(&["demo-app/a".into()]);
        assert!(missing.is_empty());
        repo.commit(deleted).unwrap();

        let (again, errors) = PolicyRepository::open(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(again.revision(), 3);
        let keys: Vec<String> = again.policies().map(Policy::key).collect();
        assert_eq!(keys, ["demo-app/b"]);
        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, [MANIFEST]);
    }

    #[test]
    fn an_interrupted_write_leaves_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = PolicyRepository::open(dir.path());
        repo.commit(repo.with_applied(&policies(A))).unwrap();
        // A crash after the temporary file was written, before the rename.
        std::fs::write(
            dir.path().join("policies.json.tmp"),
            b"{\"revision\": 9, \"polic",
        )
        .unwrap();
        let (again, errors) = PolicyRepository::open(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(again.revision(), 1);
        assert_eq!(again.policies().count(), 1);
        assert!(!dir.path().join("policies.json.tmp").exists());
    }

    #[test]
    fn the_per_policy_layout_is_read_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("demo-app__a.yaml"), A).unwrap();
        std::fs::write(dir.path().join("demo-app__old.yaml.tmp"), "half").unwrap();
        let (mut repo, errors) = PolicyRepository::open(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(repo.policies().count(), 1);
        let b = A.replace("name: a,", "name: b,");
        repo.commit(repo.with_applied(&policies(&b))).unwrap();
        let (again, _) = PolicyRepository::open(dir.path());
        let keys: Vec<String> = again.policies().map(Policy::key).collect();
        assert_eq!(keys, ["demo-app/a", "demo-app/b"]);
        assert!(!dir.path().join("demo-app__a.yaml").exists());
        assert!(!dir.path().join("demo-app__old.yaml.tmp").exists());
    }

    #[test]
    fn a_damaged_set_is_reported_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), b"{not json").unwrap();
        let (repo, errors) = PolicyRepository::open(dir.path());
        assert_eq!(repo.policies().count(), 0);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("policies.json"),
            "{}",
            errors[0]
        );
    }
}
