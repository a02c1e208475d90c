//! Step 5: the vendor call, and the scrubbed answer.

use super::validate::ValidCall;
use crate::status::Failure;
use tokio::time::Instant;
use valet_credentials::Lease;
use valet_egress::{Limits, ProxyResponse};

/// Sends the call with the leased credential.
pub async fn send(
    call: &ValidCall,
    lease: &Lease,
    limits: &Limits,
    deadline: Option<Instant>,
) -> Result<ProxyResponse, Failure> {
    let answer = call
        .vendor
        .send(call.request.clone(), lease.secret(), limits, deadline)
        .await;
    answer.map_err(|e| {
        tracing::warn!(
            vendor = call.key.vendor,
            reason = e.reason(),
            "vendor call failed"
        );
        Failure::from(e)
    })
}
