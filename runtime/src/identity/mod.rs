//! Security identities: one number per distinct label set, as Cilium allocates them.
//!
//! The same labels always get the same identity on this node, across restarts: the
//! allocation table is persisted, and a new label set first tries a slot derived
//! from a hash of its labels (so even a lost table tends to give the same numbers).
//! CIDR prefixes named by policies get node-local identities the same way.
//!
//! Allocation is transactional, so trying a policy costs nothing lasting: numbers
//! allocated since the last [`IdentityAllocator::commit`] are taken back by
//! [`IdentityAllocator::rollback`] (a refused apply, `policy validate`), and the
//! table is written once per commit, not once per identity. After a change is in
//! force, [`IdentityAllocator::retain`] releases the identities nothing uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loupe_common::identity as reserved;
use serde::{Deserialize, Serialize};

/// A canonical label set: sorted `source:key=value` strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LabelSet(pub Vec<String>);

impl LabelSet {
    /// Pod labels (plain `key=value`) as Cilium's `k8s:`-sourced labels.
    pub fn from_k8s(labels: &BTreeMap<String, String>) -> Self {
        let mut v: Vec<String> = labels
            .iter()
            .map(|(k, val)| format!("k8s:{k}={val}"))
            .collect();
        v.sort();
        Self(v)
    }

    /// The label set of a CIDR identity.
    pub fn cidr(prefix: &ipnet::IpNet) -> Self {
        Self(vec![format!("cidr:{prefix}")])
    }

    fn key(&self) -> String {
        self.0.join(";")
    }

    /// The `probe`-th number this label set tries in the cluster range: the same
    /// on every node, so nodes allocating the same labels at once race for one
    /// number (and the API server lets one of them create it).
    pub fn cluster_slot(&self, probe: u32) -> u32 {
        let span = u64::from(reserved::LAST_CLUSTER - reserved::FIRST_CLUSTER) + 1;
        let start = fnv1a(self.key().as_bytes()) % span;
        reserved::FIRST_CLUSTER + u32::try_from((start + u64::from(probe)) % span).unwrap_or(0)
    }
}

/// Why an identity could not be allocated or persisted.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Every identity of the range is taken.
    #[error("no free identity in {range} for {labels}")]
    Exhausted {
        /// Which range.
        range: &'static str,
        /// The label set.
        labels: String,
    },
    /// The table could not be read or written.
    #[error("identity table {path}: {source}")]
    Io {
        /// The table file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    identities: BTreeMap<u32, LabelSet>,
}

/// Allocates and remembers identities.
#[derive(Debug, Default)]
pub struct IdentityAllocator {
    by_id: BTreeMap<u32, LabelSet>,
    by_labels: BTreeMap<String, u32>,
    path: Option<PathBuf>,
    /// Allocated since the last commit or rollback.
    pending: Vec<u32>,
    /// The table on disk is behind.
    dirty: bool,
}

impl IdentityAllocator {
    /// An allocator that keeps its table in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// An allocator persisted at `path`, loading what an earlier run allocated. A
    /// corrupt table is reported and replaced (hash-derived slots keep most numbers).
    pub fn open(path: &Path) -> Result<Self, IdentityError> {
        let mut alloc = Self {
            path: Some(path.to_path_buf()),
            ..Self::default()
        };
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Table>(&bytes) {
                Ok(table) => {
                    for (id, labels) in table.identities {
                        alloc.by_labels.insert(labels.key(), id);
                        alloc.by_id.insert(id, labels);
                    }
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "identity table unreadable; starting afresh");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        Ok(alloc)
    }

    /// The identity of an endpoint's label set, allocating one if needed.
    pub fn endpoint_identity(&mut self, labels: &LabelSet) -> Result<u32, IdentityError> {
        self.allocate(
            labels,
            reserved::FIRST_CLUSTER,
            reserved::LAST_CLUSTER,
            "cluster range",
        )
    }

    /// Records an identity the cluster assigned to a label set (through the API
    /// server, so every node agrees). It replaces whatever this node had for the
    /// labels, and evicts a node-local allocation that held the number for other
    /// labels (it gets a new number when next asked). Kept like a commit: the
    /// cluster's assignment is not taken back by a rollback.
    pub fn assign(&mut self, labels: &LabelSet, id: u32) {
        let key = labels.key();
        if self.by_labels.get(&key) == Some(&id) {
            return;
        }
        if let Some(old) = self.by_labels.remove(&key) {
            self.by_id.remove(&old);
            self.pending.retain(|p| *p != old);
        }
        if let Some(other) = self.by_id.remove(&id) {
            self.by_labels.remove(&other.key());
            self.pending.retain(|p| *p != id);
        }
        self.by_id.insert(id, labels.clone());
        self.by_labels.insert(key, id);
        self.dirty = true;
    }

    /// The node-local identity of a CIDR prefix.
    pub fn cidr_identity(&mut self, prefix: &ipnet::IpNet) -> Result<u32, IdentityError> {
        let labels = LabelSet::cidr(&prefix.trunc());
        self.allocate(
            &labels,
            reserved::FIRST_LOCAL,
            reserved::LAST_LOCAL,
            "local range",
        )
    }

    fn allocate(
        &mut self,
        labels: &LabelSet,
        first: u32,
        last: u32,
        range: &'static str,
    ) -> Result<u32, IdentityError> {
        let key = labels.key();
        if let Some(id) = self.by_labels.get(&key) {
            return Ok(*id);
        }
        let span = u64::from(last - first) + 1;
        let start = fnv1a(key.as_bytes()) % span;
        let id = (0..span)
            .map(|i| first + u32::try_from((start + i) % span).unwrap_or(0))
            .find(|id| !self.by_id.contains_key(id))
            .ok_or_else(|| IdentityError::Exhausted {
                range,
                labels: key.clone(),
            })?;
        self.by_id.insert(id, labels.clone());
        self.by_labels.insert(key, id);
        self.pending.push(id);
        Ok(id)
    }

    /// Keeps what was allocated since the last commit and writes the table if it
    /// changed (once, however many identities were allocated).
    pub fn commit(&mut self) -> Result<(), IdentityError> {
        if !self.pending.is_empty() {
            self.dirty = true;
        }
        self.pending.clear();
        if self.dirty {
            self.persist()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Takes back what was allocated since the last commit.
    pub fn rollback(&mut self) {
        for id in self.pending.drain(..) {
            if let Some(labels) = self.by_id.remove(&id) {
                self.by_labels.remove(&labels.key());
            }
        }
    }

    /// Releases every committed identity `used` says nothing uses; returns how many
    /// (written with the next commit).
    pub fn retain(&mut self, used: impl Fn(u32) -> bool) -> usize {
        let unused: Vec<u32> = self
            .by_id
            .keys()
            .copied()
            .filter(|id| !used(*id) && !self.pending.contains(id))
            .collect();
        for id in &unused {
            if let Some(labels) = self.by_id.remove(id) {
                self.by_labels.remove(&labels.key());
            }
        }
        if !unused.is_empty() {
            self.dirty = true;
        }
        unused.len()
    }

    /// The labels of an identity (reserved identities as `reserved:<name>`).
    pub fn labels(&self, id: u32) -> Option<LabelSet> {
        if let Some(name) = reserved::reserved_name(id) {
            return Some(LabelSet(vec![format!("reserved:{name}")]));
        }
        self.by_id.get(&id).cloned()
    }

    /// Number of allocated identities.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none are allocated.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn persist(&self) -> Result<(), IdentityError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let table = Table {
            identities: self.by_id.clone(),
        };
        let bytes = serde_json::to_vec(&table)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()
        };
        write().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        LabelSet::from_k8s(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_clusters_assignment_wins_over_a_local_number() {
        let mut alloc = IdentityAllocator::in_memory();
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);
        let local = alloc.endpoint_identity(&web).unwrap();
        alloc.commit().unwrap();
        // The cluster gives web another number, and db the number web had here.
        alloc.assign(&web, 40_000);
        alloc.assign(&db, local);
        assert_eq!(alloc.endpoint_identity(&web).unwrap(), 40_000);
        assert_eq!(alloc.endpoint_identity(&db).unwrap(), local);
        assert_eq!(alloc.labels(local), Some(db.clone()));
        assert_eq!(alloc.len(), 2);
        // Not taken back by a rollback; assigning again changes nothing.
        alloc.rollback();
        alloc.assign(&db, local);
        assert_eq!(alloc.endpoint_identity(&db).unwrap(), local);
        assert_eq!(alloc.len(), 2);
    }

    #[test]
    fn same_labels_same_identity_across_restarts() {
        let dir = std::env::temp_dir().join(format!("loupe-id-{}", std::process::id()));
        let path = dir.join("identities.json");
        let a = labels(&[
            ("app", "frontend"),
            ("io.kubernetes.pod.namespace", "demo-app"),
        ]);
        let b = labels(&[("app", "api"), ("io.kubernetes.pod.namespace", "demo-app")]);
        let (ia, ib) = {
            let mut alloc = IdentityAllocator::open(&path).unwrap();
            let ids = (
                alloc.endpoint_identity(&a).unwrap(),
                alloc.endpoint_identity(&b).unwrap(),
            );
            alloc.commit().unwrap();
            ids
        };
        assert_ne!(ia, ib);
        assert!((256..=65535).contains(&ia));
        let mut again = IdentityAllocator::open(&path).unwrap();
        // Reverse order: still the same numbers.
        assert_eq!(again.endpoint_identity(&b).unwrap(), ib);
        assert_eq!(again.endpoint_identity(&a).unwrap(), ia);
        assert_eq!(again.len(), 2);
        // Without the table, the hash-derived slot gives the same number too.
        let mut fresh = IdentityAllocator::in_memory();
        assert_eq!(fresh.endpoint_identity(&a).unwrap(), ia);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cidr_identities_are_local_and_reserved_have_names() {
        let mut alloc = IdentityAllocator::in_memory();
        let id = alloc
            .cidr_identity(&"10.1.0.0/16".parse().unwrap())
            .unwrap();
        assert!(id >= reserved::FIRST_LOCAL);
        // The same prefix written differently is the same identity.
        assert_eq!(
            alloc
                .cidr_identity(&"10.1.2.3/16".parse().unwrap())
                .unwrap(),
            id
        );
        assert_eq!(alloc.labels(id).unwrap().0, vec!["cidr:10.1.0.0/16"]);
        assert_eq!(
            alloc.labels(reserved::WORLD).unwrap().0,
            vec!["reserved:world"]
        );
    }

    #[test]
    fn tries_leave_nothing_and_unused_identities_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        let mut alloc = IdentityAllocator::open(&path).unwrap();
        let kept = alloc.cidr_identity(&"10.0.0.0/8".parse().unwrap()).unwrap();
        alloc.commit().unwrap();
        // A validation (or a refused apply) of 2,000 new prefixes: nothing stays.
        for i in 0..2000u32 {
            let net = ipnet::IpNet::from(ipnet::Ipv4Net::new(i.into(), 32).unwrap());
            alloc.cidr_identity(&net).unwrap();
        }
        assert_eq!(alloc.len(), 2001);
        alloc.rollback();
        assert_eq!(alloc.len(), 1);
        let on_disk = IdentityAllocator::open(&path).unwrap();
        assert_eq!(on_disk.len(), 1);
        assert_eq!(on_disk.labels(kept).unwrap().0, vec!["cidr:10.0.0.0/8"]);
        // A policy that no longer names the prefix releases its identity.
        assert_eq!(alloc.retain(|id| id != kept), 1);
        alloc.commit().unwrap();
        assert!(IdentityAllocator::open(&path).unwrap().is_empty());
        assert!(!path.with_extension("json.tmp").exists());
    }
}
