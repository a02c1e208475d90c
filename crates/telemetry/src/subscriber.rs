//! The process's `tracing` subscriber: JSON log lines on stdout, and spans
//! exported over OTLP/gRPC when an endpoint is known.
//!
//! Two filters keep secrets out:
//!
//! - Log lines follow `RUST_LOG` (default `info`), but every crate other
//!   than Valet's own (the HTTP, TLS, gRPC, Redis and AWS SDK crates among
//!   them) is capped at `info` whatever it says: their debug and trace output
//!   can print request URLs, headers and bodies, which is where credentials
//!   (and a master key read from Secrets Manager) travel.
//! - The span exporter sees only Valet's own crates, at `info` and above.
//!   Library spans (hyper's, h2's, the AWS SDK's) are never exported, so their
//!   fields never reach a collector.

use crate::{LogFormat, Settings, TelemetryError};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The `target` of lines for a person at a terminal (the bootstrap-key
/// notice, a failed start): written as JSON to stderr, whatever `RUST_LOG`
/// says, and not to stdout.
pub const CONSOLE: &str = "valet::console";

/// Keeps the span exporter running; [`flush`] (or dropping it) flushes the
/// spans still queued.
#[derive(Debug)]
pub struct Guard {
    tracer: Option<SdkTracerProvider>,
    /// Which log line format is written.
    log_format: LogSwitch,
    /// The sampler, when traces are exported.
    sampling: Option<crate::sampling::Sampling>,
    /// The buffered stdout writer, written out at exit.
    lines: Option<crate::lines::Lines>,
    /// Whether anything is exported, so a flush may have to wait.
    exports: bool,
}

/// The log line format in force, changed whole by a config reload: both
/// formatters are installed, and each writes only while it is the one
/// switched on (an atomic load per line).
#[derive(Debug, Clone, Default)]
pub struct LogSwitch {
    text: Arc<AtomicBool>,
}

impl LogSwitch {
    /// Writes lines as `format` from now on (`Auto`: text on a terminal,
    /// else JSON).
    pub fn set(&self, format: LogFormat) {
        self.text
            .store(resolve(format) == LogFormat::Text, Ordering::Relaxed);
    }

    /// A filter letting events through while `text` is what is switched on.
    fn only(&self, text: bool) -> Active {
        Active {
            text: self.text.clone(),
            want: text,
        }
    }
}

/// See [`LogSwitch::only`].
struct Active {
    text: Arc<AtomicBool>,
    want: bool,
}

impl<S> tracing_subscriber::layer::Filter<S> for Active {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.text.load(Ordering::Relaxed) == self.want
    }

    // Decided per event, never cached per callsite: the switch can flip.
    fn callsite_enabled(&self, _meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
}

/// `Auto` made definite for stdout.
fn resolve(format: LogFormat) -> LogFormat {
    use std::io::IsTerminal as _;
    match format {
        LogFormat::Auto if std::io::stdout().is_terminal() => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        definite => definite,
    }
}

impl Guard {
    /// The log format switch, to change on a config reload.
    pub fn log_format(&self) -> LogSwitch {
        self.log_format.clone()
    }

    /// The sampler in force, to change on a config reload; None when no
    /// traces are exported.
    pub fn sampling(&self) -> Option<crate::sampling::Sampling> {
        self.sampling.clone()
    }

    /// Flushes and stops the exporter (also done on drop), however long the
    /// collector takes; [`flush`] bounds it.
    pub fn shutdown(self) {}
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take()
            && let Err(e) = tracer.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at exit failed");
        }
        if let Some(lines) = self.lines.take() {
            lines.close(std::time::Duration::from_secs(5));
        }
    }
}

/// Flushes the spans still queued and the last metrics push, giving up
/// after `within` so the process exits on time however stalled the
/// collector is. Each failure (or the deadline) is one WARN line.
pub fn flush(mut guard: Guard, metrics: crate::Metrics, within: std::time::Duration) {
    let started = std::time::Instant::now();
    flush_exports(&mut guard, metrics, within);
    // The log lines last, so the warnings above are among them.
    if let Some(lines) = guard.lines.take() {
        lines.close(
            within
                .saturating_sub(started.elapsed())
                .max(std::time::Duration::from_millis(500)),
        );
    }
}

fn flush_exports(guard: &mut Guard, metrics: crate::Metrics, within: std::time::Duration) {
    let tracer = guard.tracer.take();
    let spans = move || tracer.map_or(Ok(()), |t| t.shutdown().map_err(|e| e.to_string()));
    let pushes = move || metrics.shutdown();
    if !guard.exports {
        // Nothing leaves the process: both return at once.
        for (signal, result) in [("spans", spans()), ("metrics", pushes())] {
            if let Err(e) = result {
                tracing::warn!(signal, error = %e, "flushing telemetry at exit failed");
            }
        }
        return;
    }
    let deadline = std::time::Instant::now() + within;
    let (done, results) = std::sync::mpsc::channel();
    let flushes: [(&'static str, Flush); 2] = [("spans", Box::new(spans)), ("metrics", Box::new(pushes))];
    for (signal, work) in flushes {
        let done = done.clone();
        // Detached: a flush still blocked at the deadline dies with the process.
        std::thread::spawn(move || {
            let _ = done.send((signal, work()));
        });
    }
    let mut pending = vec!["spans", "metrics"];
    while !pending.is_empty() {
        match results.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok((signal, result)) => {
                pending.retain(|s| *s != signal);
                if let Err(e) = result {
                    tracing::warn!(signal, error = %e, "flushing telemetry at exit failed");
                }
            }
            Err(_) => {
                tracing::warn!(
                    unflushed = ?pending,
                    within_ms = within.as_millis() as u64,
                    "telemetry not flushed before the shutdown deadline; exiting without it"
                );
                return;
            }
        }
    }
}

/// One exit flush, run on its own thread.
type Flush = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Writes one [`CONSOLE`] line at `ERROR` before (or without) [`init`]: a
/// start that failed before the subscriber was installed still says why in
/// the same JSON form.
pub fn console_error(message: &str) {
    let subscriber = tracing_subscriber::registry().with(console_layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::error!(target: CONSOLE, "{message}");
    });
}

/// [`CONSOLE`] lines as JSON on stderr.
fn console_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(crate::json::FlatJson)
        .with_filter(filter_fn(|meta| meta.is_event() && meta.target() == CONSOLE))
}

/// Installs the global subscriber, logging to stdout. Without an endpoint,
/// no spans are recorded; log lines and the vendor still get the call's
/// trace id (see [`crate::propagation`]).
pub fn init(settings: &Settings) -> Result<Guard, TelemetryError> {
    let lines = crate::lines::Lines::start(std::io::stdout());
    let mut guard = init_with(settings, resolve(settings.log_format), lines.clone())?;
    guard.lines = Some(lines);
    Ok(guard)
}

/// [`init`] with log lines written to `logs` as `format` (`Auto` is JSON:
/// `logs` is no terminal).
pub fn init_with<W>(settings: &Settings, format: LogFormat, logs: W) -> Result<Guard, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let switch = LogSwitch::default();
    switch.set(match format {
        LogFormat::Auto => LogFormat::Json,
        definite => definite,
    });
    // Events only: the log lines print no span context, and a span the
    // formatter sees is a span whose fields it formats on every record.
    let events = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .and(capped())
            .and(filter_fn(|meta| meta.is_event() && meta.target() != CONSOLE))
    };
    // Both formats, each writing only while switched on (a reload flips it).
    let text_lines = tracing_subscriber::fmt::layer()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_filter(switch.only(true).and(events()));
    let json_lines = tracing_subscriber::fmt::layer()
        .with_writer(logs)
        .event_format(crate::json::FlatJson)
        .with_filter(switch.only(false).and(events()));
    let logs = text_lines.and_then(json_lines);

    // No exporter, no span layer: nothing would read a recorded span, and
    // recording them (ids, fields, timings, the layer's lock) was a tenth of
    // a call's CPU. Trace ids still flow, from the call's own
    // `propagation::TraceContext`.
    let (tracer, sampling) = match settings.exports_traces() {
        true => {
            let (tracer, sampling) = tracer_provider(settings)?;
            (Some(tracer), Some(sampling))
        }
        false => (None, None),
    };
    let spans = tracer.as_ref().map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer.tracer("valet"))
            .with_location(false)
            .with_threads(false)
            .with_filter(filter_fn(|meta| {
                own_crate(meta.target()) && *meta.level() <= Level::INFO
            }))
    });
    // Not `.with(Option<Layer>)`: a `None` layer enables every span, and the
    // registry would still create (and close) each one.
    let registry = tracing_subscriber::registry().with(logs).with(console_layer());
    match spans {
        Some(spans) => registry.with(spans).init(),
        None => registry.init(),
    }
    Ok(Guard {
        tracer,
        log_format: switch,
        sampling,
        lines: None,
        exports: settings.exports_traces() || settings.exports_metrics(),
    })
}

/// Every crate but Valet's own is capped at `info`: an allow-list, so a
/// dependency added later cannot print URLs or headers at `debug`.
fn capped() -> Targets {
    Targets::new()
        .with_default(Level::INFO)
        .with_target("valet", Level::TRACE)
}

/// `valet` and `valet_*` targets.
fn own_crate(target: &str) -> bool {
    let root = target.split("::").next().unwrap_or(target);
    root == "valet" || root.starts_with("valet_")
}

/// `builder` aimed at the configured OTLP endpoint, if one is set (else the
/// exporter's own default, from the standard `OTEL_*` variables).
pub(crate) fn otlp_endpoint<B: opentelemetry_otlp::WithExportConfig>(builder: B, settings: &Settings) -> B {
    match &settings.otlp_endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint.clone()),
        None => builder,
    }
}

/// The tracer exporting to the configured OTLP endpoint.
fn tracer_provider(
    settings: &Settings,
) -> Result<(SdkTracerProvider, crate::sampling::Sampling), TelemetryError> {
    let mut builder = SdkTracerProvider::builder().with_resource(resource(settings));
    let exporter = otlp_endpoint(opentelemetry_otlp::SpanExporter::builder().with_tonic(), settings)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    builder = builder.with_batch_exporter(crate::export::Reported::new(exporter, "spans"));
    let sampling = crate::sampling::Sampling::new(settings.sampling_ratio);
    builder = builder.with_sampler(sampling.clone());
    Ok((builder.build(), sampling))
}

/// `service.name`, the file's resource attributes, and whatever
/// `OTEL_RESOURCE_ATTRIBUTES` adds. A `service.name` given in
/// `OTEL_RESOURCE_ATTRIBUTES` stands unless the file or `OTEL_SERVICE_NAME`
/// names one; with none at all it is `valet`.
// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME are OpenTelemetry's own
// settings, read where the resource is built so the SDK's reading agrees.
#[allow(clippy::disallowed_methods)]
pub fn resource(settings: &Settings) -> Resource {
    let builder = Resource::builder().with_attributes(
        settings
            .resource_attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    let from_env_attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
        v.split(',')
            .any(|kv| kv.trim_start().starts_with("service.name="))
    });
    let named = settings.service_name.is_some() || std::env::var_os("OTEL_SERVICE_NAME").is_some();
    if from_env_attributes && !named {
        builder.build()
    } else {
        builder.with_service_name(settings.service_name()).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valet_crates_are_exported() {
        for own in [
            "valet",
            "valet::gateway",
            "valet_egress",
            "valet_credentials::aws",
        ] {
            assert!(own_crate(own), "{own}");
        }
        for other in ["hyper::proto", "h2", "valetx", "aws_sdk_secretsmanager", "tonic"] {
            assert!(!own_crate(other), "{other}");
        }
    }
}
