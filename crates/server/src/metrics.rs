//! `GET /metrics` on a service's own port, beside gRPC: the OpenMetrics text format that
//! Prometheus scrapes, made at scrape time from the service's own counters ([`Metrics`]).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// The response's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label pairs of one series, e.g. `[("stage", "decoder")]`.
pub type Labels = Vec<(String, String)>;

/// What a service reports: a function that registers its metrics, with their current values,
/// into a fresh registry at every scrape.
#[derive(Clone)]
pub struct Metrics(Arc<dyn Fn(&mut Registry) + Send + Sync>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl Metrics {
    /// Metrics that `collect` registers.
    pub fn new(collect: impl Fn(&mut Registry) + Send + Sync + 'static) -> Self {
        Self(Arc::new(collect))
    }

    /// Registers these metrics into `registry`, beside others (one scrape of several sources).
    pub fn collect(&self, registry: &mut Registry) {
        (self.0)(registry)
    }

    /// The scrape: every metric, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        (self.0)(&mut registry);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

/// Registers the counter `name` (exposed as `name_total`) with one series per row.
pub fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

/// Registers the gauge `name` with one series per row.
pub fn gauges(
    registry: &mut Registry,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

/// One metric read off an item: its name, its help text and how to read its value.
pub type Reading<'a, T, V> = (&'a str, &'a str, fn(&T) -> V);

/// For each `(name, help, value)` of `metrics`, registers the counter `name` with one series
/// per item of `items`, labelled by the item's labels.
pub fn counters_over<T>(
    registry: &mut Registry,
    items: &[(Labels, T)],
    metrics: &[Reading<'_, T, u64>],
) {
    for (name, help, value) in metrics {
        counters(
            registry,
            name,
            help,
            items.iter().map(|(l, t)| (l.clone(), value(t))),
        );
    }
}

/// [`counters_over`] for gauges.
pub fn gauges_over<T>(
    registry: &mut Registry,
    items: &[(Labels, T)],
    metrics: &[Reading<'_, T, i64>],
) {
    for (name, help, value) in metrics {
        gauges(
            registry,
            name,
            help,
            items.iter().map(|(l, t)| (l.clone(), value(t))),
        );
    }
}

/// `[(key, value)]` as owned labels.
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters get `_total`, series carry their labels, and the text ends with `# EOF`.
    #[test]
    fn renders_openmetrics_text() {
        let metrics = Metrics::new(|registry| {
            counters(
                registry,
                "unclip_test_calls",
                "Calls.",
                [(labels([("stage", "decoder")]), 3)],
            );
            gauges(
                registry,
                "unclip_test_in_flight",
                "In flight.",
                [(Labels::new(), 2)],
            );
        });
        let text = metrics.render();
        assert!(text.contains("# TYPE unclip_test_calls counter"), "{text}");
        assert!(
            text.contains("unclip_test_calls_total{stage=\"decoder\"} 3"),
            "{text}"
        );
        assert!(text.contains("unclip_test_in_flight 2"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
