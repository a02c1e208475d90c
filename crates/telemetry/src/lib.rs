//! Telemetry for Valet: what SREs see, and the rules that keep secrets out
//! of it.
//!
//! # Layout
//!
//! - [`settings`]: [`Settings`] — the `[telemetry]` config: OTLP endpoint,
//!   service name, sampling, resource attributes, tenant label bounds. The
//!   standard `OTEL_*` environment variables fill in what the config leaves
//!   out.
//! - [`subscriber`]: the process's `tracing` subscriber — JSON log lines and,
//!   when an endpoint is set, spans exported over OTLP/gRPC (without one, no
//!   span is recorded at all). Both are filtered
//!   so that only Valet's own crates reach the exporter and the HTTP, TLS,
//!   gRPC and AWS SDK crates never log below `info`.
//! - [`json`]: the JSON log line's format (flat, written straight into the
//!   line buffer).
//! - [`lines`]: the buffered stdout writer the log lines go through (one
//!   write per few milliseconds, not per line; bounded, drops counted).
//! - [`export`]: the OTLP exporters wrapped so that failing exports are
//!   logged (rate-limited) while they happen.
//! - [`propagation`]: W3C trace context in from gRPC metadata and out to the
//!   vendor's HTTP request.
//! - [`metrics`]: [`Metrics`] — every counter and histogram Valet keeps,
//!   rendered as Prometheus text for `/metrics` and exported over OTLP when
//!   configured.
//!
//! # What never appears here
//!
//! Spans, metrics and log lines carry tenant, vendor, operation, reason codes,
//! statuses and timings. They never carry a credential, an API key, a header
//! value, a query string or a body: no code path hands one to a span field or
//! a metric label, and the exporter only sees spans from Valet's own crates.
#![forbid(unsafe_code)]

pub mod export;
pub mod exposition;
pub mod json;
pub mod lines;
pub mod metrics;
pub mod propagation;
pub mod sampling;
pub mod settings;
pub mod subscriber;

pub use metrics::{CacheLookup, Metrics};

/// What the tests write log lines to: bytes kept in memory, for the test to
/// read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Memory(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for Memory {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Memory {
    type Writer = Memory;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
pub use settings::{LogFormat, Settings, TenantLabels};
pub use subscriber::Guard;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (a bad endpoint, usually).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}
