//! Step 5: the vendor call, and the scrubbed answer.

use super::validate::ValidCall;
use crate::status::Failure;
use tokio::time::Instant;
use valet_credentials::Lease;
use valet_egress::{Limits, ProxyResponse};
use valet_telemetry::Metrics;

/// Sends the call with the leased credential.
pub async fn send(
    call: &ValidCall,
    lease: &Lease,
    limits: &Limits,
    metrics: &Metrics,
    deadline: Option<Instant>,
) -> Result<ProxyResponse, Failure> {
    let started = std::time::Instant::now();
    let answer = call
        .vendor
        .send(call.request.clone(), lease.secret(), limits, deadline)
        .await;
    let status = answer.as_ref().ok().map(|a| a.status);
    metrics.vendor_attempt(&call.key.vendor, status, started.elapsed());
    answer.map_err(|e| {
        tracing::warn!(
            vendor = call.key.vendor,
            reason = e.reason(),
            "vendor call failed"
        );
        Failure::from(e)
    })
}
