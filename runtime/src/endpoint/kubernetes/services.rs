//! The cluster's Services, watched in a kube-rs reflector: every frontend (each
//! ClusterIP, external IP and load-balancer ingress IP with each port) goes into
//! the flow store's Service table, so flows to and from a frontend name their
//! Service as Hubble's do. Headless Services have no frontend.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use crate::flow::services::{Frontend, ServiceTable, Services, Transport};
use crate::health::Health;

/// The component the watch reports under in `loupe status`.
pub const HEALTH_COMPONENT: &str = "services/kubernetes";

/// Watches every Service and keeps `services` equal to their frontends, until
/// the task is dropped.
pub async fn watch(
    client: Client,
    services: Services,
    health: Arc<Health>,
    stats: Arc<super::KubernetesStats>,
) {
    let api = Api::<Service>::all(client);
    super::follow_all(api, "services", HEALTH_COMPONENT, health, stats, |store| {
        let table = table(store);
        let detail = format!("{} services, {} frontends", store.len(), table.len());
        if *services.load() != table {
            services.store(table);
        }
        detail
    })
    .await;
}

/// Every frontend of the Services in `store`.
pub fn table(store: &Store<Service>) -> ServiceTable {
    let mut entries = Vec::new();
    for svc in store.state() {
        let (Some(namespace), Some(name)) =
            (svc.metadata.namespace.clone(), svc.metadata.name.clone())
        else {
            continue;
        };
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .chain(spec.external_ips.iter().flatten())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        ips.extend(
            ingress
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok()),
        );
        ips.sort();
        ips.dedup();
        for port in spec.ports.iter().flatten() {
            let transport = Transport::parse(port.protocol.as_deref().unwrap_or("TCP"));
            let (Some(transport), Ok(number)) = (transport, u16::try_from(port.port)) else {
                continue;
            };
            for ip in &ips {
                entries.push((
                    Frontend {
                        ip: *ip,
                        port: number,
                        transport,
                    },
                    namespace.clone(),
                    name.clone(),
                ));
            }
        }
    }
    ServiceTable::new(entries)
}
