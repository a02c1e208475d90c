//! The last step: a finished [`Call`] is reported once, however it ended.
//!
//! Observers of the finished call, in order: the server span's attributes,
//! the call's metrics, and the one JSON log line. (An anomaly detector would
//! be one more.) [`Recorder`] runs them when the call returns — and, if the
//! call's future is dropped because the caller cancelled or hung up, as
//! `CANCELLED` when it drops.

use super::Call;
use crate::app::App;
use crate::status::{Failure, Reason};
use tonic::Code;
use tracing::field::Empty;
use valet_telemetry::metrics::{CallLabels, InFlight};
use valet_telemetry::propagation;

/// Reports its call once; see the module docs.
pub struct Recorder<'a> {
    app: &'a App,
    /// The call being recorded; steps fill it in through [`Recorder::call`].
    pub call: Call,
    _in_flight: InFlight,
    done: bool,
}

impl<'a> Recorder<'a> {
    /// Starts recording `call` (it counts as in flight until recorded).
    pub fn new(app: &'a App, call: Call) -> Self {
        Self {
            app,
            call,
            _in_flight: app.metrics.call_started(),
            done: false,
        }
    }

    /// The call ended with `reason` (`Reason::Ok` for an answer).
    pub fn finish(&mut self, reason: Reason) {
        self.done = true;
        for observe in OBSERVERS {
            observe(self.app, &self.call, reason);
        }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Reason::Cancelled);
        }
    }
}

/// Reports a call refused before the Gateway handler ran (its deadline was
/// spent on arrival): the same span, metrics and log line as any other.
pub fn refused(app: &App, request_id: String, failure: &Failure) {
    let trace = propagation::TraceContext::new_trace();
    Recorder::new(app, Call::new(request_id, None, None, trace)).finish(failure.reason);
}

type Observer = fn(&App, &Call, Reason);

/// What observes a finished call, in order.
const OBSERVERS: [Observer; 3] = [span, metrics, log_line];

/// The call's server span (RPC semantic conventions), with the fields the
/// steps and the span observer fill in.
pub fn server_span(request_id: &str) -> tracing::Span {
    tracing::info_span!(
        "valet.v1.Gateway/Call",
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = "valet.v1.Gateway",
        rpc.method = "Call",
        rpc.grpc.status_code = Empty,
        valet.request_id = request_id,
        valet.tenant = Empty,
        valet.vendor = Empty,
        valet.operation = Empty,
        valet.reason = Empty,
        valet.vendor.status = Empty,
        valet.attempts = Empty,
        valet.idempotency.replayed = Empty,
        valet.quota = Empty,
        valet.vendor.circuit = Empty,
    )
}

/// Fills in what the finished call learned. Only checked values go on the
/// span: a tenant the caller was not authorized for never does.
fn span(_: &App, call: &Call, reason: Reason) {
    let span = &call.span;
    let code = reason.code();
    span.record("rpc.grpc.status_code", code as i64);
    span.record("valet.reason", reason.as_str());
    if let Some(tenant) = &call.tenant {
        span.record("valet.tenant", tenant.as_str());
    }
    if let Some(vendor) = &call.vendor {
        span.record("valet.vendor", vendor.as_str());
    }
    if let Some(operation) = call.operation {
        span.record("valet.operation", operation);
    }
    if let Some(status) = call.status {
        span.record("valet.vendor.status", i64::from(status));
    }
    span.record("valet.attempts", i64::from(call.attempts));
    span.record("valet.idempotency.replayed", call.replayed);
    if code != Code::Ok {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", reason.as_str());
    }
}

/// The call's counters and latency. No tenant label for a tenant without a
/// credential: a caller allowed every tenant cannot fill the label cap with
/// made-up names.
fn metrics(app: &App, call: &Call, reason: Reason) {
    let tenant = call
        .tenant
        .as_deref()
        .filter(|_| reason != Reason::CredentialNotFound);
    app.metrics.call_finished(
        CallLabels {
            tenant,
            vendor: call.vendor.as_deref(),
            operation: call.operation,
        },
        reason.as_str(),
        call.status,
        call.started.elapsed(),
    );
}

/// The one log line of the call.
fn log_line(_: &App, call: &Call, reason: Reason) {
    let span = &call.span;
    span.in_scope(|| {
        tracing::info!(
            request_id = %call.request_id,
            trace_id = propagation::trace_id(span, &call.trace),
            caller = call.caller.as_deref().unwrap_or("-"),
            caller_name = call.caller_name.as_deref().unwrap_or("-"),
            source = %call.source.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            tenant = call.tenant.as_deref().unwrap_or("-"),
            vendor = call.vendor.as_deref().unwrap_or("-"),
            operation = call.operation.unwrap_or("-"),
            outcome = reason.as_str(),
            grpc_status = reason.code() as i32,
            vendor_status = call.status,
            attempts = call.attempts,
            replayed = call.replayed,
            latency_ms = call.started.elapsed().as_secs_f64() * 1000.0,
            "call"
        );
    });
}
