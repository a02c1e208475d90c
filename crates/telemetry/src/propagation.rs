//! W3C trace context: `traceparent`/`tracestate` in from the caller's gRPC
//! metadata, out to the vendor's HTTP request.
//!
//! Two ways, one result. With an exporter, the OpenTelemetry layer keeps
//! each span's context, and the vendor gets the attempt span's. Without one
//! no span is recorded at all (no layer is installed: nothing would read
//! them), and the call's own [`TraceContext`] — the caller's trace, or a
//! new one, and an id for Valet's hop in it — goes to the vendor and the
//! log line instead, so traces still join across Valet.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tonic::metadata::{KeyRef, MetadataMap};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct Headers<'a>(&'a mut http::HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return; // no empty `tracestate:` header
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// A call's trace context as Valet keeps it without a tracer: the caller's
/// trace id, flags and `tracestate` (or a new trace), and a fresh span id
/// for Valet's hop.
#[derive(Debug, Clone)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    state: TraceState,
}

impl TraceContext {
    /// The caller's trace from `traceparent` in `metadata`, continued; a
    /// missing or malformed one starts a new trace (not sampled).
    pub fn from_caller(metadata: &MetadataMap) -> Self {
        let ids = RandomIdGenerator::default();
        let span_id = ids.new_span_id();
        let parent = if metadata.contains_key("traceparent") {
            TraceContextPropagator::new().extract(&Metadata(metadata))
        } else {
            Context::new()
        };
        let caller = parent.span().span_context().clone();
        if caller.is_valid() {
            Self {
                trace_id: caller.trace_id(),
                span_id,
                flags: caller.trace_flags(),
                state: caller.trace_state().clone(),
            }
        } else {
            Self {
                trace_id: ids.new_trace_id(),
                span_id,
                flags: TraceFlags::default(),
                state: TraceState::default(),
            }
        }
    }

    /// A new trace (not sampled), for requests Valet makes on its own
    /// behalf (a rotation's verification call).
    pub fn new_trace() -> Self {
        Self::from_caller(&MetadataMap::new())
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(self.trace_id, self.span_id, self.flags, true, self.state.clone())
    }
}

/// Makes the caller's trace (from `traceparent` in `metadata`) the parent of
/// `span`. A missing or malformed `traceparent` starts a new trace.
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
    if span.is_disabled() {
        return; // no tracer records it
    }
    let parent = TraceContextPropagator::new().extract(&Metadata(metadata));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Whether `span` is recorded and its trace sampled: asks the sampler now
/// (it would otherwise decide when the span is built), after
/// [`continue_trace`] has given it the caller's parent.
pub fn sampled(span: &tracing::Span) -> bool {
    recorded(span).is_some_and(|context| context.span().span_context().is_sampled())
}

/// Writes `span`'s context (or, with no tracer recording it, `call`'s) into
/// `headers` as `traceparent` (and `tracestate`), replacing any the caller
/// supplied, so the vendor's trace joins Valet's.
pub fn inject(span: &tracing::Span, call: &TraceContext, headers: &mut http::HeaderMap) {
    let context =
        recorded(span).unwrap_or_else(|| Context::new().with_remote_span_context(call.span_context()));
    TraceContextPropagator::new().inject_context(&context, &mut Headers(headers));
}

/// The trace id in hex, for log lines: `span`'s if a tracer records it,
/// else `call`'s.
pub fn trace_id(span: &tracing::Span, call: &TraceContext) -> String {
    match recorded(span) {
        Some(context) => context.span().span_context().trace_id().to_string(),
        None => call.trace_id.to_string(),
    }
}

/// `span`'s OpenTelemetry context, if a tracer records it.
fn recorded(span: &tracing::Span) -> Option<Context> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    context.span().span_context().is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(traceparent: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("traceparent", traceparent.parse().unwrap());
        m
    }

    /// `traceparent` sent to the vendor for `trace` when no tracer records
    /// the span (no subscriber installed here: every span is disabled).
    fn sent(trace: &TraceContext) -> String {
        let mut headers = http::HeaderMap::new();
        inject(&tracing::Span::none(), trace, &mut headers);
        headers["traceparent"].to_str().unwrap().to_owned()
    }

    #[test]
    fn without_a_tracer_the_callers_trace_reaches_the_vendor_with_valets_own_hop() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::from_caller(&metadata(caller));
        let out = sent(&trace);
        let parts: Vec<&str> = out.split('-').collect();
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7", "Valet's hop has its own span id");
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01", "the caller's sampled flag is kept");
        assert_eq!(
            trace_id(&tracing::Span::none(), &trace),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_unsampled_trace() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let a = TraceContext::from_caller(&metadata(bad));
            let b = TraceContext::from_caller(&MetadataMap::new());
            let (out_a, out_b) = (sent(&a), sent(&b));
            assert!(out_a.ends_with("-00"), "{out_a}");
            assert_ne!(&out_a[3..35], &out_b[3..35], "each new trace has its own id");
            assert_ne!(&out_a[3..35], "00000000000000000000000000000000");
        }
    }
}
