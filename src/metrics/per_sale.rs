//! The series of each sale, kept where they can be forgotten.
//!
//! metrics-exporter-prometheus keeps every series it was ever given until the
//! process ends, and has no way to drop one (metrics-rs/metrics#243). A
//! series labelled with a sale lives as long as the sale, though: a gateway
//! that serves a year of daily sales would render, and hold, every one of
//! them. So the recorder installed is [`Routed`]: series with a `sale_id`
//! label go to a registry of ours ([`Sales`]), which can drop a sale's
//! series, and everything else to the exporter's recorder, as before.
//! `/metrics` is the exporter's text followed by ours, written with the
//! exporter's own formatting functions, so the HELP, TYPE and sample lines
//! are the ones it would have written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, sanitize_metric_name, write_help_line,
    write_type_line,
};
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_util::registry::{AtomicStorage, Registry};

/// The label that makes a series a sale's.
const SALE: &str = "sale_id";
/// The label that makes a series a webhook endpoint's: those too live only
/// as long as what they are about (an endpoint can be deleted).
pub(super) const ENDPOINT: &str = "endpoint_id";

fn is_sales(key: &Key) -> bool {
    key.labels().any(|l| l.key() == SALE || l.key() == ENDPOINT)
}

/// The process's recorder: a sale's counters and gauges to [`Sales`], the
/// rest to the exporter. Histograms always go to the exporter, which knows
/// their buckets (`set_buckets_for_metric`): none has a sale label, and one
/// that had would be kept for ever, as every series was before.
///
/// A family is either per sale or not: one with series on both sides would
/// be rendered twice, which `promtool check metrics` refuses.
pub(super) struct Routed {
    pub(super) rest: PrometheusRecorder,
    pub(super) sales: Arc<Sales>,
}

impl Recorder for Routed {
    fn describe_counter(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        self.sales.describe(&name, &description);
        self.rest.describe_counter(name, unit, description);
    }

    fn describe_gauge(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        self.sales.describe(&name, &description);
        self.rest.describe_gauge(name, unit, description);
    }

    fn describe_histogram(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        self.rest.describe_histogram(name, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if is_sales(key) {
            let counter = self.sales.registry.get_or_create_counter(key, Arc::clone);
            return Counter::from_arc(counter);
        }
        self.rest.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if is_sales(key) {
            let gauge = self.sales.registry.get_or_create_gauge(key, Arc::clone);
            return Gauge::from_arc(gauge);
        }
        self.rest.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.rest.register_histogram(key, metadata)
    }
}

/// The counters and gauges labelled with a sale, and the HELP text of
/// every family (a family's series come and go with its sales; its
/// description is given once, at start).
pub(super) struct Sales {
    registry: Registry<Key, AtomicStorage>,
    help: RwLock<HashMap<String, SharedString>>,
}

impl Sales {
    pub(super) fn new() -> Self {
        Self {
            registry: Registry::atomic(),
            help: RwLock::new(HashMap::new()),
        }
    }

    /// Like the exporter, the first description of a family is kept.
    fn describe(&self, name: &KeyName, description: &SharedString) {
        let mut help = self.help.write().unwrap_or_else(PoisonError::into_inner);
        help.entry(sanitize_metric_name(name.as_str()))
            .or_insert_with(|| description.clone());
    }

    /// The sales that have series here.
    pub(super) fn ids(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        let mut note = |key: &Key| {
            ids.extend(
                key.labels()
                    .filter(|l| l.key() == SALE)
                    .map(|l| l.value().to_string()),
            );
        };
        self.registry.visit_counters(|key, _| note(key));
        self.registry.visit_gauges(|key, _| note(key));
        ids
    }

    /// Drops every series of `sale_id`. A handle taken before keeps counting
    /// into a value no one renders; the next `counter!`/`gauge!` for the
    /// sale starts a new series (at 0 for a counter).
    pub(super) fn forget(&self, sale_id: &str) {
        self.forget_labelled(SALE, sale_id);
    }

    /// Drops every series whose label `label` is `value`.
    pub(super) fn forget_labelled(&self, label: &str, value: &str) {
        let other = |key: &Key| !key.labels().any(|l| l.key() == label && l.value() == value);
        self.registry.retain_counters(|key, _| other(key));
        self.registry.retain_gauges(|key, _| other(key));
    }

    /// Appends the families in the text format, as the exporter writes
    /// them (no unit or `_total` suffix added: it is built without them).
    pub(super) fn render(&self, out: &mut String) {
        // name -> (type, samples sorted by labels).
        let mut families: BTreeMap<String, (&str, BTreeMap<String, String>)> = BTreeMap::new();
        let mut add = |key: &Key, kind: &'static str, value: String| {
            let name = sanitize_metric_name(key.name());
            let labels: Vec<String> = key
                .labels()
                .map(|l| {
                    format!(
                        "{}=\"{}\"",
                        sanitize_label_key(l.key()),
                        sanitize_label_value(l.value())
                    )
                })
                .collect();
            let family = families.entry(name).or_insert((kind, BTreeMap::new()));
            family.1.insert(labels.join(","), value);
        };
        self.registry.visit_counters(|key, c| {
            add(key, "counter", c.load(Ordering::Acquire).to_string());
        });
        self.registry.visit_gauges(|key, g| {
            let value = f64::from_bits(g.load(Ordering::Acquire));
            add(key, "gauge", value.to_string());
        });
        let help = self.help.read().unwrap_or_else(PoisonError::into_inner);
        for (name, (kind, samples)) in families {
            if let Some(desc) = help.get(&name) {
                write_help_line(out, &name, None, None, desc);
            }
            write_type_line(out, &name, None, None, kind);
            for (labels, value) in samples {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics::{Label, Level};
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn record(r: &dyn Recorder) {
        let meta = Metadata::new("test", Level::INFO, None);
        r.describe_counter(
            "flashsale_orders_flushed_total".into(),
            Some(Unit::Count),
            "Orders \"flushed\"\nand acknowledged.".into(),
        );
        r.describe_gauge("flashsale_stock".into(), Some(Unit::Count), "Stock.".into());
        for (sale, n) in [("s-1", 3), ("s\"2", 1)] {
            let sale = Label::new(SALE, sale);
            let key = Key::from_parts("flashsale_orders_flushed_total", vec![sale.clone()]);
            r.register_counter(&key, &meta).increment(n);
            let labels = vec![sale, Label::new("figure", "sold")];
            let key = Key::from_parts("flashsale_stock", labels);
            r.register_gauge(&key, &meta).set(n as f64 / 4.0);
        }
    }

    /// A family per block, in order: the exporter's order is a hash map's.
    fn blocks(text: &str) -> Vec<String> {
        let mut blocks: Vec<String> = text
            .split("\n\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                let (head, samples): (Vec<&str>, Vec<&str>) =
                    b.lines().partition(|l| l.starts_with('#'));
                let mut samples = samples;
                samples.sort_unstable();
                format!("{}\n{}", head.join("\n"), samples.join("\n"))
            })
            .collect();
        blocks.sort();
        blocks
    }

    fn render(routed: &Routed) -> String {
        let mut text = routed.rest.handle().render();
        routed.sales.render(&mut text);
        text
    }

    #[test]
    fn a_sales_series_read_as_the_exporter_writes_them_until_forgotten() {
        let exporter = PrometheusBuilder::new().build_recorder();
        record(&exporter);
        let routed = Routed {
            rest: PrometheusBuilder::new().build_recorder(),
            sales: Arc::new(Sales::new()),
        };
        record(&routed);
        let (theirs, ours) = (exporter.handle().render(), render(&routed));
        assert!(routed.rest.handle().render().is_empty(), "{ours}");
        assert_eq!(blocks(&ours), blocks(&theirs), "{ours}\n---\n{theirs}");

        let ids: Vec<String> = routed.sales.ids().into_iter().collect();
        assert_eq!(ids, ["s\"2", "s-1"]);
        routed.sales.forget("s-1");
        let left = render(&routed);
        assert!(!left.contains("s-1"), "{left}");
        assert_eq!(left.matches("s\\\"2").count(), 2, "{left}");
        routed.sales.forget("s\"2");
        assert_eq!(render(&routed), "");
        assert!(routed.sales.ids().is_empty());
    }
}
