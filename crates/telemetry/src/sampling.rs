//! The trace sampler, replaceable while spans are made, so a config reload
//! changes `telemetry.sampling_ratio` without a restart; and the call's
//! sampling decision, so a call whose trace is not sampled makes no spans.
//!
//! The OpenTelemetry layer records a span's fields whether or not it is
//! sampled (the sampler decides when the span is built): an unsampled call
//! cost two fifths of a sampled one. So the Gateway asks once, on arrival,
//! whether the call's server span is sampled ([`crate::propagation::sampled`]),
//! drops it if not, and runs the call [`within_call`]; the steps make their
//! child spans through [`span`], which makes none for an unsampled call.

use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Config, Sampler, SamplingResult, ShouldSample};
use std::sync::{Arc, RwLock};

/// The sampler in force: parent-based over the configured ratio, or with
/// no ratio what the SDK reads from `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone)]
pub struct Sampling(Arc<RwLock<Box<dyn ShouldSample>>>);

impl Sampling {
    /// Samples `ratio` of new traces (None: the environment's sampler).
    pub fn new(ratio: Option<f64>) -> Self {
        Self(Arc::new(RwLock::new(sampler(ratio))))
    }

    /// Samples `ratio` from now on.
    pub fn set(&self, ratio: Option<f64>) {
        *self.0.write().expect("lock") = sampler(ratio);
    }
}

fn sampler(ratio: Option<f64>) -> Box<dyn ShouldSample> {
    match ratio {
        Some(ratio) => Box::new(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))),
        None => Config::default().sampler,
    }
}

impl ShouldSample for Sampling {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        self.0.read().expect("lock").should_sample(
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}

tokio::task_local! {
    /// Whether the call this task is running has its trace sampled.
    static CALL_SAMPLED: bool;
}

/// Runs `call` (one Gateway call) with its sampling decision in force for
/// [`span`].
pub async fn within_call<F: Future>(sampled: bool, call: F) -> F::Output {
    CALL_SAMPLED.scope(sampled, call).await
}

/// The span `make` makes — or, inside a call whose trace is not sampled, a
/// disabled one, without making it. Outside a call (background work) the
/// span is made and the sampler decides as usual.
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if CALL_SAMPLED.try_with(|sampled| *sampled).unwrap_or(true) {
        make()
    } else {
        tracing::Span::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::SamplingDecision;

    fn decide(sampling: &Sampling) -> SamplingDecision {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        sampling
            .should_sample(None, trace, "call", &SpanKind::Server, &[], &[])
            .decision
    }

    #[test]
    fn a_new_ratio_applies_to_the_next_trace() {
        let sampling = Sampling::new(Some(1.0));
        let shared = sampling.clone(); // as the tracer provider holds it
        assert_eq!(decide(&shared), SamplingDecision::RecordAndSample);
        sampling.set(Some(0.0));
        assert_eq!(decide(&shared), SamplingDecision::Drop);
        sampling.set(Some(1.0));
        assert_eq!(decide(&shared), SamplingDecision::RecordAndSample);
    }

    #[tokio::test]
    async fn an_unsampled_call_makes_no_spans() {
        let make = || tracing::Span::current(); // stands for info_span!
        let mut made = false;
        let none = within_call(false, async {
            span(|| {
                made = true;
                make()
            })
        })
        .await;
        assert!(!made && none.is_disabled());
        let mut made = false;
        within_call(true, async {
            span(|| {
                made = true;
                make()
            })
        })
        .await;
        assert!(made, "a sampled call makes its spans");
        let mut made = false;
        span(|| {
            made = true;
            make()
        });
        assert!(made, "outside a call, spans are made");
    }
}
