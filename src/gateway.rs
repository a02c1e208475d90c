//! The `valet.v1.Gateway` service: transport in, [`crate::call`] steps under
//! one server span (its parent taken from the caller's `traceparent`), and
//! out: one log line, the call's metrics, the span's attributes.

use crate::app::App;
use crate::call::{self, CallContext, Outcome};
use crate::proto::{self, gateway_server::Gateway};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;
use tracing::field::Empty;
use valet_telemetry::metrics::CallLabels;
use valet_telemetry::propagation;

/// Margin kept before the caller's deadline, so Valet answers
/// DEADLINE_EXCEEDED itself instead of the transport cancelling the call.
const DEADLINE_MARGIN: Duration = Duration::from_millis(10);

/// The Gateway service.
#[derive(Debug, Clone)]
pub struct GatewayService {
    app: Arc<App>,
}

impl GatewayService {
    /// Serves calls with `app`.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn call(
        &self,
        request: Request<proto::CallRequest>,
    ) -> Result<Response<proto::CallResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.app.metrics.call_started();
        let ctx = CallContext {
            request_id: new_request_id(),
            deadline: deadline(request.metadata(), started),
        };
        let span = server_span(&ctx.request_id);
        propagation::continue_trace(&span, request.metadata());
        let (metadata, _, req) = request.into_parts();
        let mut outcome = Outcome::default();
        let result = call::handle(&self.app, &metadata, req, &ctx, &mut outcome)
            .instrument(span.clone())
            .await;
        let reason = result.as_ref().err().map_or("OK", |f| f.reason);
        let code = result.as_ref().err().map_or(Code::Ok, |f| f.code);
        let elapsed = started.elapsed();
        record(&span, &outcome, reason, code);
        self.app.metrics.call_finished(
            CallLabels {
                tenant: outcome.tenant.as_deref(),
                vendor: outcome.vendor.as_deref(),
                operation: outcome.operation,
            },
            reason,
            outcome.status,
            elapsed,
        );
        span.in_scope(|| {
            tracing::info!(
                request_id = %ctx.request_id,
                trace_id = propagation::trace_id(&span).as_deref().unwrap_or("-"),
                caller = outcome.caller.as_deref().unwrap_or("-"),
                caller_name = outcome.caller_name.as_deref().unwrap_or("-"),
                tenant = outcome.tenant.as_deref().unwrap_or("-"),
                vendor = outcome.vendor.as_deref().unwrap_or("-"),
                operation = outcome.operation.unwrap_or("-"),
                outcome = reason,
                grpc_status = code as i32,
                vendor_status = outcome.status,
                attempts = outcome.attempts,
                replayed = outcome.replayed,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "call"
            );
        });
        match result {
            Ok(answer) => {
                let mut response = Response::new(answer);
                if let Ok(id) = ctx.request_id.parse() {
                    response.metadata_mut().insert("x-request-id", id);
                }
                for (name, value) in &outcome.ratelimit {
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

/// The caller's deadline from `grpc-timeout` (`<digits><H|M|S|m|u|n>`).
fn deadline(metadata: &MetadataMap, now: Instant) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    now.checked_add(timeout.saturating_sub(DEADLINE_MARGIN))
}
