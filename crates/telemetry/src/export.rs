//! OTLP exporters that say when they fail: a WARN log line while exports
//! fail (the first failure, then at most one line per [`WARN_EVERY`] with a
//! count), and an INFO line when they work again. Without this a stalled or
//! unreachable collector is silent.

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one WARN line per signal this often while exports keep failing.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// An exporter whose failures are logged.
#[derive(Debug)]
pub struct Reported<E> {
    inner: E,
    log: FailureLog,
}

impl<E> Reported<E> {
    /// Wraps `inner`, which exports `signal` (`spans`, `metrics`).
    pub fn new(inner: E, signal: &'static str) -> Self {
        Self {
            inner,
            log: FailureLog {
                signal,
                state: Mutex::new(State::default()),
            },
        }
    }
}

#[derive(Debug)]
struct FailureLog {
    signal: &'static str,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last WARN line was written.
    warned: Option<Instant>,
    /// Failures since the last WARN line.
    unreported: u64,
    /// Failures since the last success.
    failing: u64,
}

impl FailureLog {
    fn record(&self, result: &OTelSdkResult) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match result {
            Ok(()) => {
                if state.failing > 0 {
                    tracing::info!(
                        signal = self.signal,
                        failed = state.failing,
                        "OTLP exports work again"
                    );
                }
                *state = State::default();
            }
            Err(e) => {
                state.failing += 1;
                state.unreported += 1;
                let now = Instant::now();
                if state.warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
                    tracing::warn!(
                        signal = self.signal,
                        error = %e,
                        failures = state.unreported,
                        "OTLP export of {} failed; the collector is unreachable or not answering",
                        self.signal
                    );
                    state.warned = Some(now);
                    state.unreported = 0;
                }
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.log.record(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Reported<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.log.record(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
