//! The `valet.v1.Gateway` service: transport in, [`crate::call`] steps under
//! one server span (its parent taken from the caller's `traceparent`), and
//! out: one log line, the call's metrics, the span's attributes.

use crate::app::App;
use crate::call::{self, CallContext, Outcome, authenticate};
use crate::deadline::CallerDeadline;
use crate::proto::{self, gateway_server::Gateway};
use crate::status::{Failure, Reason};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;
use tracing::field::Empty;
use valet_telemetry::metrics::{CallLabels, InFlight};
use valet_telemetry::propagation;

/// The Gateway service.
#[derive(Debug, Clone)]
pub struct GatewayService {
    app: Arc<App>,
    /// One permit per call being handled.
    slots: Arc<Semaphore>,
}

impl GatewayService {
    /// Serves calls with `app`, at most `max_concurrent_calls` at once.
    pub fn new(app: Arc<App>, max_concurrent_calls: usize) -> Self {
        Self {
            app,
            slots: Arc::new(Semaphore::new(max_concurrent_calls)),
        }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn call(
        &self,
        request: Request<proto::CallRequest>,
    ) -> Result<Response<proto::CallResponse>, Status> {
        let started = Instant::now();
        // Read on arrival by the DeadlineLayer; read here if it is absent.
        let arrival = request
            .extensions()
            .get::<CallerDeadline>()
            .copied()
            .unwrap_or_else(|| CallerDeadline::read(request.metadata().as_ref(), started));
        let ctx = CallContext {
            request_id: new_request_id(),
            deadline: match arrival {
                CallerDeadline::At(at) => Some(at),
                CallerDeadline::None | CallerDeadline::Invalid => None,
            },
            identity: authenticate::peer_identity(&request),
        };
        let span = server_span(&ctx.request_id);
        propagation::continue_trace(&span, request.metadata());
        let mut report = Report {
            app: &self.app,
            span: span.clone(),
            started,
            request_id: ctx.request_id.clone(),
            outcome: Outcome::default(),
            _in_flight: self.app.metrics.call_started(),
            done: false,
        };
        // A malformed deadline is refused before any step runs (a spent one
        // was answered on arrival by the DeadlineLayer).
        if arrival == CallerDeadline::Invalid {
            let failure = Failure::invalid(
                "grpc-timeout",
                Reason::DeadlineInvalid,
                "must be 1 to 8 digits and a unit (H, M, S, m, u or n), sent once",
            );
            report.finish(failure.reason);
            return Err(failure.into_status(Some(&ctx.request_id)));
        }
        // Shed load at once rather than queue it without bound.
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            let failure = Failure::new(
                Reason::Overloaded,
                "Valet is handling as many calls as it is configured for; retry shortly",
            )
            .with_retry_after(Duration::from_secs(1));
            report.finish(failure.reason);
            return Err(failure.into_status(Some(&ctx.request_id)));
        };
        let (metadata, _, req) = request.into_parts();
        let result = call::handle(&self.app, &metadata, req, &ctx, &mut report.outcome)
            .instrument(span)
            .await;
        report.finish(result.as_ref().err().map_or(Reason::Ok, |f| f.reason));
        match result {
            Ok(answer) => {
                let mut response = Response::new(answer);
                if let Ok(id) = ctx.request_id.parse() {
                    response.metadata_mut().insert("x-request-id", id);
                }
                for (name, value) in &report.outcome.ratelimit {
                    if let Ok(value) = value.parse() {
                        response.metadata_mut().insert(*name, value);
                    }
                }
                Ok(response)
            }
            Err(failure) => Err(failure.into_status(Some(&ctx.request_id))),
        }
    }
}

/// Reports a call once, however it ends: the span's attributes, the metrics
/// and the log line. A call whose future is dropped — the caller cancelled
/// or hung up — is reported as `CANCELLED` when the guard drops.
struct Report<'a> {
    app: &'a App,
    span: tracing::Span,
    started: Instant,
    request_id: String,
    outcome: Outcome,
    _in_flight: InFlight,
    done: bool,
}

impl Report<'_> {
    fn finish(&mut self, reason: Reason) {
        let code = reason.code();
        self.done = true;
        let (span, outcome) = (&self.span, &self.outcome);
        let elapsed = self.started.elapsed();
        record(span, outcome, reason.as_str(), code);
        // No tenant label for a tenant without a credential: a caller
        // allowed every tenant cannot fill the label cap with made-up names.
        let tenant = outcome
            .tenant
            .as_deref()
            .filter(|_| reason != Reason::CredentialNotFound);
        self.app.metrics.call_finished(
            CallLabels {
                tenant,
                vendor: outcome.vendor.as_deref(),
                operation: outcome.operation,
            },
            reason.as_str(),
            outcome.status,
            elapsed,
        );
        span.in_scope(|| {
            tracing::info!(
                request_id = %self.request_id,
                trace_id = propagation::trace_id(span).as_deref().unwrap_or("-"),
                caller = outcome.caller.as_deref().unwrap_or("-"),
                caller_name = outcome.caller_name.as_deref().unwrap_or("-"),
                tenant = outcome.tenant.as_deref().unwrap_or("-"),
                vendor = outcome.vendor.as_deref().unwrap_or("-"),
                operation = outcome.operation.unwrap_or("-"),
                outcome = reason.as_str(),
                grpc_status = code as i32,
                vendor_status = outcome.status,
                attempts = outcome.attempts,
                replayed = outcome.replayed,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "call"
            );
        });
    }
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Reason::Cancelled);
        }
    }
}

/// The call's server span (RPC semantic conventions), with the fields the
/// steps and [`record`] fill in.
fn server_span(request_id: &str) -> tracing::Span {
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
fn record(span: &tracing::Span, outcome: &Outcome, reason: &'static str, code: Code) {
    span.record("rpc.grpc.status_code", code as i64);
    span.record("valet.reason", reason);
    if let Some(tenant) = &outcome.tenant {
        span.record("valet.tenant", tenant.as_str());
    }
    if let Some(vendor) = &outcome.vendor {
        span.record("valet.vendor", vendor.as_str());
    }
    if let Some(operation) = outcome.operation {
        span.record("valet.operation", operation);
    }
    if let Some(status) = outcome.status {
        span.record("valet.vendor.status", i64::from(status));
    }
    span.record("valet.attempts", i64::from(outcome.attempts));
    span.record("valet.idempotency.replayed", outcome.replayed);
    if code != Code::Ok {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", reason);
    }
}

/// A fresh request id: `req_` and 24 hex digits.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    format!("req_{}", hex::encode(bytes))
}

/// Reports a call refused before it reached [`GatewayService::call`] (its
/// deadline was spent on arrival): the same log line and metrics as any
/// other refused call.
pub fn report_refused(app: &App, request_id: &str, failure: &Failure) {
    let span = server_span(request_id);
    let mut report = Report {
        app,
        span,
        started: Instant::now(),
        request_id: request_id.to_owned(),
        outcome: Outcome::default(),
        _in_flight: app.metrics.call_started(),
        done: false,
    };
    report.finish(failure.reason);
}
