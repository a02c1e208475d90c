//! `/metrics`: the OpenTelemetry SDK's metrics, read on demand and written
//! in the Prometheus text exposition format (version 0.0.4).
//!
//! `opentelemetry-prometheus` did this before and is discontinued upstream;
//! reading the SDK through its own `ManualReader` keeps one set of
//! instruments for both `/metrics` and OTLP, and the names the dashboard
//! and alert rules use: dots become underscores, a seconds unit adds
//! `_seconds`, a counter adds `_total`; an up-down counter is a gauge.

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Weak};

/// The reader the meter provider owns, shared with [`render`]: a pull
/// reader with cumulative temporality, as Prometheus expects.
#[derive(Debug, Clone, Default)]
pub struct PullReader(Arc<ManualReader>);

impl MetricReader for PullReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, _kind: InstrumentKind) -> Temporality {
        Temporality::Cumulative
    }
}

/// One metric family: its `# TYPE`, `# HELP` and, per series (by its
/// labels), its sample lines in order (a histogram's buckets by `le`).
struct Family {
    kind: &'static str,
    help: String,
    samples: Vec<(String, Vec<String>)>,
}

/// Every metric `reader` collects now, as Prometheus text; families sorted
/// by name, samples by labels.
pub fn render(reader: &PullReader) -> String {
    let mut collected = ResourceMetrics::default();
    if reader.collect(&mut collected).is_err() {
        return String::new();
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            add(&mut families, metric);
        }
    }
    let mut out = String::new();
    for (name, mut family) in families {
        family.samples.sort();
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        for (_, lines) in family.samples {
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out
}

fn add(families: &mut BTreeMap<String, Family>, metric: &Metric) {
    let base = match metric.unit() {
        "s" => format!("{}_seconds", sanitize(metric.name())),
        _ => sanitize(metric.name()),
    };
    match metric.data() {
        AggregatedMetrics::F64(data) => add_data(families, metric, &base, data, |v| number(*v)),
        AggregatedMetrics::U64(data) => add_data(families, metric, &base, data, |v| v.to_string()),
        AggregatedMetrics::I64(data) => add_data(families, metric, &base, data, |v| v.to_string()),
    }
}

fn add_data<T: Copy>(
    families: &mut BTreeMap<String, Family>,
    metric: &Metric,
    base: &str,
    data: &MetricData<T>,
    show: impl Fn(&T) -> String,
) {
    let help = metric.description();
    match data {
        MetricData::Gauge(gauge) => {
            let family = family(families, base.to_owned(), "gauge", help);
            for point in gauge.data_points() {
                let value = point.value();
                let series = labels(point.attributes(), None);
                let line = sample(base, &series, &show(&value));
                family.samples.push((series, vec![line]));
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = match sum.is_monotonic() {
                true => (format!("{base}_total"), "counter"),
                false => (base.to_owned(), "gauge"),
            };
            let family = family(families, name.clone(), kind, help);
            for point in sum.data_points() {
                let value = point.value();
                let series = labels(point.attributes(), None);
                let line = sample(&name, &series, &show(&value));
                family.samples.push((series, vec![line]));
            }
        }
        MetricData::Histogram(histogram) => {
            let family = family(families, base.to_owned(), "histogram", help);
            for point in histogram.data_points() {
                let mut lines = Vec::new();
                let mut cumulative = 0;
                for (bound, count) in point.bounds().zip(point.bucket_counts()) {
                    cumulative += count;
                    let le = labels(point.attributes(), Some(&number(bound)));
                    lines.push(sample(&format!("{base}_bucket"), &le, &cumulative.to_string()));
                }
                let inf = labels(point.attributes(), Some("+Inf"));
                let count = point.count().to_string();
                lines.push(sample(&format!("{base}_bucket"), &inf, &count));
                let series = labels(point.attributes(), None);
                let sum = point.sum();
                lines.push(sample(&format!("{base}_sum"), &series, &show(&sum)));
                lines.push(sample(&format!("{base}_count"), &series, &count));
                family.samples.push((series, lines));
            }
        }
        // Not used by Valet's instruments.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn family<'f>(
    families: &'f mut BTreeMap<String, Family>,
    name: String,
    kind: &'static str,
    help: &str,
) -> &'f mut Family {
    families.entry(name).or_insert_with(|| Family {
        kind,
        help: help.to_owned(),
        samples: Vec::new(),
    })
}

fn sample(name: &str, labels: &str, value: &str) -> String {
    format!("{name}{labels} {value}")
}

/// `{a="1",b="2"}` sorted by name, with `le` last; empty without labels.
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = attributes
        .map(|kv| (sanitize(kv.key.as_str()), escape_value(&kv.value.to_string())))
        .collect();
    pairs.sort();
    if let Some(le) = le {
        pairs.push(("le".to_owned(), le.to_owned()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(","))
}

/// A metric or label name: `[a-zA-Z0-9_]`, everything else `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn number(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".to_owned(),
        f64::NEG_INFINITY => "-Inf".to_owned(),
        v if v.is_nan() => "NaN".to_owned(),
        v => v.to_string(),
    }
}

fn escape_value(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    /// The exposition format, exactly: families by name, HELP then TYPE,
    /// series by labels, a histogram's buckets cumulative in `le` order
    /// ending at +Inf, then _sum and _count; label values escaped.
    #[test]
    fn writes_the_prometheus_text_format() {
        let reader = PullReader::default();
        let provider = SdkMeterProvider::builder().with_reader(reader.clone()).build();
        let meter = provider.meter("t");
        let calls = meter.u64_counter("t.calls").with_description("Calls").build();
        calls.add(2, &[KeyValue::new("vendor", "b\"q")]);
        calls.add(1, &[KeyValue::new("vendor", "a")]);
        let open = meter
            .i64_up_down_counter("t.open")
            .with_description("Open\nnow")
            .build();
        open.add(-1, &[]);
        let latency = meter
            .f64_histogram("t.latency")
            .with_unit("s")
            .with_description("Latency")
            .with_boundaries(vec![0.5, 1.0, 2.5])
            .build();
        latency.record(0.7, &[]);
        latency.record(3.0, &[]);
        assert_eq!(
            render(&reader),
            "# HELP t_calls_total Calls\n\
             # TYPE t_calls_total counter\n\
             t_calls_total{vendor=\"a\"} 1\n\
             t_calls_total{vendor=\"b\\\"q\"} 2\n\
             # HELP t_latency_seconds Latency\n\
             # TYPE t_latency_seconds histogram\n\
             t_latency_seconds_bucket{le=\"0.5\"} 0\n\
             t_latency_seconds_bucket{le=\"1\"} 1\n\
             t_latency_seconds_bucket{le=\"2.5\"} 1\n\
             t_latency_seconds_bucket{le=\"+Inf\"} 2\n\
             t_latency_seconds_sum 3.7\n\
             t_latency_seconds_count 2\n\
             # HELP t_open Open\\nnow\n\
             # TYPE t_open gauge\n\
             t_open -1\n"
        );
    }
}
