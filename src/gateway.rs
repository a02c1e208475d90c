//! The `valet.v1.Gateway` service: transport in, [`crate::call`] steps, one
//! log line per call out.

use crate::app::App;
use crate::call::{self, CallContext, Outcome};
use crate::proto::{self, gateway_server::Gateway};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

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
        let ctx = CallContext {
            request_id: new_request_id(),
            deadline: deadline(request.metadata(), started),
        };
        let (metadata, _, req) = request.into_parts();
        let (tenant, vendor, operation) = (clip(&req.tenant), clip(&req.vendor), req.operation);
        let mut outcome = Outcome::default();
        let result = call::handle(&self.app, &metadata, req, &ctx, &mut outcome).await;
        let reason = result.as_ref().err().map_or("OK", |f| f.reason);
        tracing::info!(
            request_id = %ctx.request_id,
            caller = outcome.caller.as_deref().unwrap_or("-"),
            tenant,
            vendor,
            operation,
            outcome = reason,
            vendor_status = outcome.status,
            attempts = outcome.attempts,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "call"
        );
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

/// Caller-supplied text bounded for a log line.
fn clip(s: &str) -> String {
    s.chars().take(128).collect()
}
