//! The one registry of endpoints on this node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Endpoint, EndpointSpec, SourceKind};

/// Why the registry refused an endpoint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// All 65535 endpoint numbers are in use.
    #[error("no free endpoint number for {0}")]
    Full(String),
    /// Another endpoint already has this address.
    #[error("{key}: address {ip} already belongs to {owner}")]
    AddressInUse {
        /// The refused endpoint.
        key: String,
        /// The contested address.
        ip: IpAddr,
        /// Its current owner.
        owner: String,
    },
}

/// Endpoints by `namespace/pod`, with their numbers. Held only by the control
/// plane (`control::ControlPlane`), under the same lock as the policy controller.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    endpoints: BTreeMap<String, Endpoint>,
}

impl EndpointRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or updates an endpoint; returns it if anything changed. `preferred_id`
    /// keeps a number the datapath already uses (after an agent restart).
    pub fn upsert(
        &mut self,
        spec: EndpointSpec,
        preferred_id: Option<u16>,
    ) -> Result<Option<Endpoint>, RegistryError> {
        let key = spec.key();
        for ip in spec.ips() {
            if let Some(owner) = self.by_ip(ip).filter(|e| e.spec.key() != key) {
                return Err(RegistryError::AddressInUse {
                    key,
                    ip,
                    owner: owner.spec.key(),
                });
            }
        }
        if let Some(existing) = self.endpoints.get_mut(&key) {
            if existing.spec == spec {
                return Ok(None);
            }
            existing.spec = spec;
            return Ok(Some(existing.clone()));
        }
        let id = self
            .allocate_id(preferred_id)
            .ok_or_else(|| RegistryError::Full(key.clone()))?;
        let ep = Endpoint { id, spec };
        self.endpoints.insert(key, ep.clone());
        Ok(Some(ep))
    }

    fn allocate_id(&self, preferred: Option<u16>) -> Option<u16> {
        let used: std::collections::BTreeSet<u16> = self.endpoints.values().map(|e| e.id).collect();
        if let Some(p) = preferred.filter(|p| *p != 0 && !used.contains(p)) {
            return Some(p);
        }
        (1..=u16::MAX).find(|id| !used.contains(id))
    }

    /// Removes an endpoint.
    pub fn remove(&mut self, key: &str) -> Option<Endpoint> {
        self.endpoints.remove(key)
    }

    /// Replaces everything one source reported with its new full list (a watch's
    /// re-list); errors for single endpoints are returned, the rest is applied.
    pub fn sync_source(
        &mut self,
        source: SourceKind,
        specs: Vec<EndpointSpec>,
        preferred_id: impl Fn(&EndpointSpec) -> Option<u16>,
    ) -> Vec<RegistryError> {
        let keep: std::collections::BTreeSet<String> =
            specs.iter().map(EndpointSpec::key).collect();
        let stale: Vec<String> = self
            .endpoints
            .values()
            .filter(|e| e.spec.source == source && !keep.contains(&e.spec.key()))
            .map(|e| e.spec.key())
            .collect();
        for key in stale {
            self.remove(&key);
        }
        let mut errors = Vec::new();
        for spec in specs {
            let preferred = preferred_id(&spec);
            if let Err(e) = self.upsert(spec, preferred) {
                errors.push(e);
            }
        }
        errors
    }

    /// All endpoints, by `namespace/pod`.
    pub fn list(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoint owning an address.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints
            .values()
            .find(|e| e.spec.ips().any(|a| a == ip))
    }

    /// The endpoint behind a host-side interface.
    pub fn by_ifindex(&self, ifindex: u32) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.spec.ifindex == ifindex)
    }

    /// The endpoint with a number.
    pub fn by_id(&self, id: u16) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn spec(pod: &str, ip: [u8; 4], ifindex: u32) -> EndpointSpec {
        EndpointSpec {
            source: SourceKind::Lab,
            namespace: "demo-app".into(),
            pod_name: pod.into(),
            labels: [("app".to_string(), pod.to_string())].into(),
            ipv4: Some(Ipv4Addr::from(ip)),
            ipv6: None,
            interface: format!("lxc{ifindex}"),
            ifindex,
            workload: None,
        }
    }

    #[test]
    fn upsert_assigns_ids_and_reports_changes() {
        let mut reg = EndpointRegistry::new();
        let a = reg
            .upsert(spec("a", [10, 0, 0, 2], 5), None)
            .unwrap()
            .unwrap();
        assert_eq!(a.id, 1);
        assert!(
            reg.upsert(spec("a", [10, 0, 0, 2], 5), None)
                .unwrap()
                .is_none()
        );
        let b = reg
            .upsert(spec("b", [10, 0, 0, 3], 6), Some(7))
            .unwrap()
            .unwrap();
        assert_eq!(b.id, 7);
        assert_eq!(reg.by_ip("10.0.0.3".parse().unwrap()).unwrap().id, 7);
        assert_eq!(reg.by_ifindex(5).unwrap().spec.pod_name, "a");
    }

    #[test]
    fn refuses_address_of_another_endpoint() {
        let mut reg = EndpointRegistry::new();
        reg.upsert(spec("a", [10, 0, 0, 2], 5), None).unwrap();
        let err = reg.upsert(spec("b", [10, 0, 0, 2], 6), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "demo-app/b: address 10.0.0.2 already belongs to demo-app/a"
        );
    }

    #[test]
    fn sync_replaces_only_that_source() {
        let mut reg = EndpointRegistry::new();
        reg.upsert(spec("a", [10, 0, 0, 2], 5), None).unwrap();
        let mut k8s = spec("k", [10, 0, 0, 9], 9);
        k8s.source = SourceKind::Kubernetes;
        reg.upsert(k8s, None).unwrap();
        let errors = reg.sync_source(SourceKind::Lab, vec![spec("b", [10, 0, 0, 3], 6)], |_| None);
        assert!(errors.is_empty());
        let pods: Vec<_> = reg.list().map(|e| e.spec.pod_name.clone()).collect();
        assert_eq!(pods, vec!["b", "k"]);
    }
}
