//! Metric families, the collector registration API and the Prometheus text
//! exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed observations.
    Histogram,
}

/// Label pairs, in exposition order.
pub type Labels = Vec<(String, String)>;

/// One sample of a counter or gauge, or one histogram series.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A counter or gauge value.
    Value {
        /// Labels.
        labels: Labels,
        /// Value.
        value: f64,
    },
    /// A histogram series.
    Histogram {
        /// Labels.
        labels: Labels,
        /// Upper bounds (ascending, without +Inf) and cumulative counts.
        buckets: Vec<(f64, u64)>,
        /// Sum of observations.
        sum: f64,
        /// Number of observations.
        count: u64,
    },
}

/// A metric family as scraped: name, help, type and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// Full name (`cilium_drop_count_total`).
    pub name: String,
    /// One line of help.
    pub help: String,
    /// Type.
    pub kind: MetricKind,
    /// Samples.
    pub samples: Vec<Sample>,
}

impl MetricFamily {
    /// A family with no samples yet.
    pub fn new(name: impl Into<String>, help: impl Into<String>, kind: MetricKind) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a counter or gauge sample.
    pub fn value(mut self, labels: &[(&str, &str)], value: f64) -> Self {
        self.samples.push(Sample::Value {
            labels: to_labels(labels),
            value,
        });
        self
    }
}

fn to_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Something that reports metrics at scrape time.
///
/// Components whose numbers live elsewhere (the datapath's per-CPU counter
/// maps, map pressure, the plugin host) implement this, or pass a closure to
/// [`MetricsRegistry::register_fn`]. `collect` runs on every scrape, on the
/// metrics listener's task: it should read current values and return quickly.
pub trait Collector: Send + Sync {
    /// The current families.
    fn collect(&self) -> Vec<MetricFamily>;
}

impl<F> Collector for F
where
    F: Fn() -> Vec<MetricFamily> + Send + Sync,
{
    fn collect(&self) -> Vec<MetricFamily> {
        self()
    }
}

/// The collectors behind one `/metrics` endpoint.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    collectors: Arc<RwLock<BTreeMap<String, Arc<dyn Collector>>>>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .collectors
            .read()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("MetricsRegistry")
            .field("collectors", &names)
            .finish()
    }
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the collector named `name` (e.g. `"datapath"`).
    pub fn register(&self, name: &str, collector: Arc<dyn Collector>) {
        self.collectors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), collector);
    }

    /// Registers a closure as a collector.
    pub fn register_fn(
        &self,
        name: &str,
        collect: impl Fn() -> Vec<MetricFamily> + Send + Sync + 'static,
    ) {
        self.register(name, Arc::new(collect));
    }

    /// Removes a collector.
    pub fn unregister(&self, name: &str) {
        self.collectors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Every family from every collector; families of the same name are merged.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let collectors: Vec<Arc<dyn Collector>> = self
            .collectors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut merged: BTreeMap<String, MetricFamily> = BTreeMap::new();
        for c in collectors {
            for family in c.collect() {
                match merged.get_mut(&family.name) {
                    Some(existing) => existing.samples.extend(family.samples),
                    None => {
                        merged.insert(family.name.clone(), family);
                    }
                }
            }
        }
        merged.into_values().collect()
    }

    /// The text exposition of [`gather`](Self::gather).
    pub fn render(&self) -> String {
        encode(&self.gather())
    }
}

/// Prometheus text format 0.0.4.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for f in families {
        let kind = match f.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.samples {
            match s {
                Sample::Value { labels, value } => {
                    let _ = writeln!(
                        out,
                        "{}{} {}",
                        f.name,
                        render_labels(labels, None),
                        num(*value)
                    );
                }
                Sample::Histogram {
                    labels,
                    buckets,
                    sum,
                    count,
                } => {
                    for (le, c) in buckets {
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {c}",
                            f.name,
                            render_labels(labels, Some(&num(*le)))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {count}",
                        f.name,
                        render_labels(labels, Some("+Inf"))
                    );
                    let _ = writeln!(
                        out,
                        "{}_sum{} {}",
                        f.name,
                        render_labels(labels, None),
                        num(*sum)
                    );
                    let _ = writeln!(
                        out,
                        "{}_count{} {count}",
                        f.name,
                        render_labels(labels, None)
                    );
                }
            }
        }
    }
    out
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_and_histograms() {
        let reg = MetricsRegistry::new();
        reg.register_fn("a", || {
            vec![
                MetricFamily::new("x_total", "X.", MetricKind::Counter)
                    .value(&[("r", "a\"b")], 2.0),
                MetricFamily {
                    name: "d_seconds".into(),
                    help: "D.".into(),
                    kind: MetricKind::Histogram,
                    samples: vec![Sample::Histogram {
                        labels: vec![],
                        buckets: vec![(0.1, 1), (1.0, 2)],
                        sum: 1.5,
                        count: 3,
                    }],
                },
            ]
        });
        reg.register_fn("b", || {
            vec![MetricFamily::new("x_total", "X.", MetricKind::Counter).value(&[("r", "c")], 1.0)]
        });
        let text = reg.render();
        assert_eq!(
            text,
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\nd_seconds_bucket{le=\"0.1\"} 1\nd_seconds_bucket{le=\"1\"} 2\nd_seconds_bucket{le=\"+Inf\"} 3\nd_seconds_sum 1.5\nd_seconds_count 3\n# HELP x_total X.\n# TYPE x_total counter\nx_total{r=\"a\\\"b\"} 2\nx_total{r=\"c\"} 1\n"
        );
    }
}
