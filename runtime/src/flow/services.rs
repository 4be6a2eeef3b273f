//! Services by frontend address, for the `source_service` / `destination_service`
//! of flows: as Hubble does, a flow whose destination (or source) address and
//! port are a Service's frontend (a ClusterIP, an external or load-balancer IP
//! with one of its ports) names that Service. The Kubernetes source keeps the
//! table; the flow store reads it for every flow it stamps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use loupe_proto::flow::{Flow, Service, layer4};

/// Transport of a frontend, as flows carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Transport {
    /// Kubernetes' name (`TCP`, `UDP`, `SCTP`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

/// One Service's frontend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frontend {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// Transport.
    pub transport: Transport,
}

/// Frontends → `namespace/name`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceTable {
    by_frontend: HashMap<Frontend, (String, String)>,
}

impl ServiceTable {
    /// A table from `(frontend, namespace, name)` triples.
    pub fn new(entries: impl IntoIterator<Item = (Frontend, String, String)>) -> Self {
        Self {
            by_frontend: entries
                .into_iter()
                .map(|(f, ns, name)| (f, (ns, name)))
                .collect(),
        }
    }

    /// Frontends known.
    pub fn len(&self) -> usize {
        self.by_frontend.len()
    }

    /// No frontends.
    pub fn is_empty(&self) -> bool {
        self.by_frontend.is_empty()
    }

    fn lookup(&self, ip: &str, port: u32, transport: Transport) -> Option<Service> {
        let ip: IpAddr = ip.parse().ok()?;
        let port = u16::try_from(port).ok()?;
        self.by_frontend
            .get(&Frontend {
                ip,
                port,
                transport,
            })
            .map(|(namespace, name)| Service {
                name: name.clone(),
                namespace: namespace.clone(),
            })
    }

    /// Names the Services a flow's source and destination address are
    /// frontends of (leaving fields a producer already set).
    pub fn annotate(&self, flow: &mut Flow) {
        if self.is_empty() {
            return;
        }
        let Some(ip) = flow.ip.as_ref() else {
            return;
        };
        let (transport, sport, dport) = match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
            Some(layer4::Protocol::Tcp(t)) => (Transport::Tcp, t.source_port, t.destination_port),
            Some(layer4::Protocol::Udp(u)) => (Transport::Udp, u.source_port, u.destination_port),
            Some(layer4::Protocol::Sctp(s)) => (Transport::Sctp, s.source_port, s.destination_port),
            _ => return,
        };
        let (source, destination) = (
            self.lookup(&ip.source, sport, transport),
            self.lookup(&ip.destination, dport, transport),
        );
        if flow.source_service.is_none() {
            flow.source_service = source;
        }
        if flow.destination_service.is_none() {
            flow.destination_service = destination;
        }
    }
}

/// The shared table: written by the source that watches Services, read per flow.
/// Without any Service (no Kubernetes source) a flow costs one relaxed load.
#[derive(Debug, Clone, Default)]
pub struct Services {
    table: Arc<RwLock<Arc<ServiceTable>>>,
    any: Arc<AtomicBool>,
}

impl Services {
    /// Replaces the table.
    pub fn store(&self, table: ServiceTable) {
        let any = !table.is_empty();
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        self.any.store(any, Ordering::Relaxed);
    }

    /// The current table.
    pub fn load(&self) -> Arc<ServiceTable> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// [`ServiceTable::annotate`] with the current table.
    pub fn annotate(&self, flow: &mut Flow) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .annotate(flow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_proto::flow::{Ip, Layer4, Tcp, Udp};

    fn flow(src: &str, sport: u32, dst: &str, dport: u32, udp: bool) -> Flow {
        let protocol = if udp {
            layer4::Protocol::Udp(Udp {
                source_port: sport,
                destination_port: dport,
            })
        } else {
            layer4::Protocol::Tcp(Tcp {
                source_port: sport,
                destination_port: dport,
                flags: None,
            })
        };
        Flow {
            ip: Some(Ip {
                source: src.into(),
                destination: dst.into(),
                ..Ip::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(protocol),
            }),
            ..Flow::default()
        }
    }

    #[test]
    fn flows_to_and_from_a_frontend_name_its_service() {
        let services = Services::default();
        let db = Frontend {
            ip: "10.96.0.30".parse().unwrap(),
            port: 6379,
            transport: Transport::Tcp,
        };
        services.store(ServiceTable::new([(
            db,
            "demo-app".to_string(),
            "db-service".to_string(),
        )]));
        let svc = Some(Service {
            name: "db-service".into(),
            namespace: "demo-app".into(),
        });
        let mut request = flow("10.0.0.20", 40000, "10.96.0.30", 6379, false);
        services.annotate(&mut request);
        assert_eq!(
            (request.source_service, request.destination_service),
            (None, svc.clone())
        );
        let mut reply = flow("10.96.0.30", 6379, "10.0.0.20", 40000, false);
        services.annotate(&mut reply);
        assert_eq!(
            (reply.source_service, reply.destination_service),
            (svc, None)
        );
        // Another port or transport of the same address is no frontend.
        for mut other in [
            flow("10.0.0.20", 40000, "10.96.0.30", 6380, false),
            flow("10.0.0.20", 40000, "10.96.0.30", 6379, true),
        ] {
            services.annotate(&mut other);
            assert_eq!(other.destination_service, None);
        }
    }
}
