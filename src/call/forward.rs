//! Step 5: the vendor call, and the scrubbed answer.

use super::validate::ValidCall;
use crate::app::App;
use crate::status::Failure;
use tokio::time::Instant;
use valet_access::Operation;
use valet_credentials::Lease;
use valet_egress::{Exchange, Sent};

/// Sends the call with the leased credential. It may be retried only when
/// repeating it is harmless: a READ, or a WRITE carrying our idempotency
/// key in the header the vendor dedupes by. Egress says how many attempts
/// were made and whether any may have reached the vendor.
pub async fn send(app: &App, call: &ValidCall, lease: &Lease, deadline: Option<Instant>) -> Sent<Failure> {
    let exchange = Exchange {
        limits: &app.limits,
        answers: &app.answers,
        deadline,
        repeatable: repeatable(call),
        metrics: &app.metrics,
    };
    let sent = call
        .vendor
        .send(call.request.clone(), lease.secret(), &exchange)
        .await;
    sent.map_err(|e| {
        tracing::warn!(
            vendor = call.key.vendor,
            reason = e.reason(),
            "vendor call failed"
        );
        Failure::from(e)
    })
}

fn repeatable(call: &ValidCall) -> bool {
    match call.operation {
        Operation::Read => true,
        Operation::Write => call
            .vendor
            .idempotency_header()
            .is_some_and(|h| call.request.headers.contains_key(h)),
    }
}
