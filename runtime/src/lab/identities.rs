//! Identities every node of a multi-node lab agrees on, by the contract the
//! Kubernetes allocator (`cluster::identities`) keeps with the API server, here
//! kept with a directory the lab's agents share (as Cilium's kvstore mode keeps
//! it with etcd):
//!
//! - one file per identity, named by its number, holding the label set;
//! - a label set with no file is created at the first free number of its
//!   hash-derived probe sequence ([`LabelSet::cluster_slot`]), so agents racing
//!   for a new label set race for one name;
//! - creation is a hard link of a complete temporary file, which fails with
//!   `EEXIST` when another agent won: the loser reads the winner's file and uses
//!   its number when the labels are the same, or probes on.
//!
//! The files live as long as the lab (`loupe lab down` removes them); a lab's
//! label sets are few, so nothing is collected while it runs.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::identity::LabelSet;

/// Probes of the slot sequence before giving up on a label set.
const PROBES: u32 = 64;
/// Names this process's temporary files apart.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Allocation through the shared directory failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedIdentityError {
    /// The directory or a file could not be used.
    #[error("lab identities {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Every probed number belongs to other labels.
    #[error("no free identity number for {0} in {PROBES} probes")]
    Exhausted(String),
}

/// The allocator of one lab: a directory shared by its nodes' agents.
#[derive(Debug, Clone)]
pub struct SharedIdentities {
    dir: PathBuf,
}

impl SharedIdentities {
    /// The allocator of the lab named `lab`.
    pub fn of_lab(lab: &str) -> Self {
        Self::at(super::state::lab_dir(lab).join("identities"))
    }

    /// An allocator over `dir` (created when first needed).
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The lab's number for each of `sets`, creating those that have none.
    pub fn ensure(&self, sets: &[LabelSet]) -> Result<Vec<(LabelSet, u32)>, SharedIdentityError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| self.io(&self.dir, source))?;
        sets.iter()
            .map(|labels| Ok((labels.clone(), self.number(labels)?)))
            .collect()
    }

    fn io(&self, path: &Path, source: std::io::Error) -> SharedIdentityError {
        SharedIdentityError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn number(&self, labels: &LabelSet) -> Result<u32, SharedIdentityError> {
        let text = labels.0.join("\n");
        for probe in 0..PROBES {
            let id = labels.cluster_slot(probe);
            let path = self.dir.join(id.to_string());
            match std::fs::read_to_string(&path) {
                Ok(held) if held == text => return Ok(id),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&path, e)),
            }
            // A complete file under a name of this process, then linked to the
            // number: readers never see a partial file, and one creator wins.
            let unique = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
            let tmp = self
                .dir
                .join(format!(".{id}.{}.{unique}.tmp", std::process::id()));
            std::fs::write(&tmp, &text).map_err(|e| self.io(&tmp, e))?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(id, labels = %labels.0.join(","), "lab identity created");
                    return Ok(id);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&path).map_err(|e| self.io(&path, e))?;
                    if held == text {
                        return Ok(id);
                    }
                }
                Err(e) => return Err(self.io(&path, e)),
            }
        }
        Err(SharedIdentityError::Exhausted(labels.0.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(app: &str) -> LabelSet {
        LabelSet::from_k8s(&BTreeMap::from([
            ("app".to_string(), app.to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                "demo-app".to_string(),
            ),
        ]))
    }

    #[test]
    fn every_node_gets_the_same_numbers_and_a_taken_slot_is_probed_past() {
        let dir = tempfile::tempdir().unwrap();
        let a = SharedIdentities::at(dir.path().join("ids"));
        let b = SharedIdentities::at(dir.path().join("ids"));
        let frontend = labels("frontend");
        // Another label set already holds the frontend's first slot.
        std::fs::create_dir_all(dir.path().join("ids")).unwrap();
        let first = frontend.cluster_slot(0);
        std::fs::write(
            dir.path().join("ids").join(first.to_string()),
            "k8s:app=other",
        )
        .unwrap();

        let on_a = a.ensure(&[frontend.clone(), labels("db")]).unwrap();
        let on_b = b.ensure(&[labels("db"), frontend.clone()]).unwrap();
        assert_eq!(on_a[0], (frontend.clone(), frontend.cluster_slot(1)));
        assert_eq!(on_b[1], on_a[0]);
        assert_eq!(on_b[0], on_a[1]);
    }

    #[test]
    fn nodes_racing_for_new_labels_agree() {
        let dir = tempfile::tempdir().unwrap();
        let sets: Vec<LabelSet> = (0..20).map(|i| labels(&format!("app-{i}"))).collect();
        let results: Vec<Vec<(LabelSet, u32)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let ids = SharedIdentities::at(dir.path().join("ids"));
                    let sets = sets.clone();
                    s.spawn(move || ids.ensure(&sets).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results[1..] {
            assert_eq!(r, &results[0]);
        }
        let mut numbers: Vec<u32> = results[0].iter().map(|(_, id)| *id).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), sets.len(), "one number per label set");
    }

    #[test]
    fn an_unusable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let err = SharedIdentities::at(file.join("ids"))
            .ensure(&[labels("x")])
            .unwrap_err();
        assert!(err.to_string().contains("not-a-dir/ids"), "{err}");
    }
}
