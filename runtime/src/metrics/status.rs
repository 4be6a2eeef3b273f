//! What `loupe status` reads from the metrics other components register, so
//! they report once (as metrics) and both Prometheus and `status` see it.

use super::{MetricsRegistry, Sample};

/// Inventory gathered from registered collectors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// `cilium_bpf_map_pressure{map_name}`, by map.
    pub map_pressure: Vec<(String, f64)>,
    /// Sum of `cilium_identity`.
    pub identities: Option<u32>,
    /// Sum of `cilium_policy`.
    pub policies: Option<u32>,
    /// Sum of `loupe_plugins`.
    pub plugins: Option<u32>,
}

fn sum(values: &[f64]) -> Option<u32> {
    (!values.is_empty())
        .then(|| values.iter().sum::<f64>().max(0.0).min(f64::from(u32::MAX)) as u32)
}

/// Reads the inventory families from `registry`.
pub fn inventory(registry: &MetricsRegistry) -> Inventory {
    let mut out = Inventory::default();
    let (mut identities, mut policies, mut plugins) = (Vec::new(), Vec::new(), Vec::new());
    for family in registry.gather() {
        for sample in &family.samples {
            let Sample::Value { labels, value } = sample else {
                continue;
            };
            match family.name.as_str() {
                "cilium_bpf_map_pressure" => {
                    let name = labels
                        .iter()
                        .find(|(k, _)| k == "map_name")
                        .map_or_else(String::new, |(_, v)| v.clone());
                    out.map_pressure.push((name, *value));
                }
                "cilium_identity" => identities.push(*value),
                "cilium_policy" => policies.push(*value),
                "loupe_plugins" => plugins.push(*value),
                _ => {}
            }
        }
    }
    out.identities = sum(&identities);
    out.policies = sum(&policies);
    out.plugins = sum(&plugins);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricFamily, MetricKind};

    #[test]
    fn reads_registered_gauges() {
        let reg = MetricsRegistry::new();
        assert_eq!(inventory(&reg), Inventory::default());
        reg.register_fn("datapath", || {
            vec![
                MetricFamily::new("cilium_bpf_map_pressure", "p", MetricKind::Gauge)
                    .value(&[("map_name", "ct4_global")], 0.25),
                MetricFamily::new("cilium_identity", "i", MetricKind::Gauge)
                    .value(&[("type", "cluster_local")], 4.0)
                    .value(&[("type", "reserved")], 3.0),
            ]
        });
        let inv = inventory(&reg);
        assert_eq!(inv.map_pressure, vec![("ct4_global".to_string(), 0.25)]);
        assert_eq!(inv.identities, Some(7));
        assert_eq!(inv.policies, None);
    }
}
